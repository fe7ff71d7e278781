//! The cluster catalog (seed 002's single-writer "books"): every node appends file entries (added, removed) to its
//! own append-only log, signed with its libp2p identity key; everyone else replicates those logs and merges them
//! into one list of files.
//!
//! Owns: the entry format and its signature ([`entry`]), the rules that admit an entry into a log and merge the
//! logs into files ([`CatalogState`], pure, no I/O), and the log's persistence in a small sled tree ([`Catalog`]).
//! Never does: networking. An entry is a raw block whose CID is its hash, so the node moves entries over Bitswap
//! like any block; it learns of new entries from the log heads its peers gossip and asks this crate whether a
//! fetched entry fits ([`CatalogState::apply`]). Design notes: `docs/catalog.md`.

pub mod entry;
mod state;
mod store;

pub use entry::{Entry, EntryError, FileRecord, Op};
pub use state::{Applied, CatalogState, Head, Heads};
pub use store::{Catalog, CatalogError};

#[cfg(test)]
#[path = "../../dag/src/fuzz_support.rs"]
mod fuzz_support;

#[cfg(test)]
mod fuzz {
    //! The catalog entry decoder fuzzed (see `fuzz_support.rs`): mutated entry blocks, checked against their own
    //! CID and applied to a catalog holding their author's log. Nothing may panic, and nothing verifies as an
    //! entry its author did not sign.

    use libp2p_identity::Keypair;

    use crate::entry::{cid_of, Entry, FileRecord, Op};
    use crate::fuzz_support::fuzz;
    use crate::CatalogState;

    #[test]
    fn catalog_entries_never_panic_and_forgeries_never_enter() {
        let key = Keypair::generate_ed25519();
        let mut author = CatalogState::new();
        let file = |name: &str| FileRecord {
            root: cid_of(name.as_bytes()),
            name: name.into(),
            size: 12_345,
            blocks: 3,
            added_at: 1_700_000_000,
            added_by: "xnode-1".into(),
        };
        let mut seeds = Vec::new();
        for (i, op) in [
            Op::Add(file("a.txt")),
            Op::Add(file("dir/ü.bin")),
            Op::Remove { root: cid_of(b"a.txt"), admin: false },
            Op::Remove { root: cid_of(b"x"), admin: true },
        ]
        .into_iter()
        .enumerate()
        {
            seeds.push(author.append(&key, op, 1_000 + i as u64).1);
        }
        // What the author signed. Bytes around the signed text (the wrapper's whitespace, say) may change and still
        // verify, but never into an entry the author did not sign.
        let genuine: Vec<Entry> = seeds.iter().map(|b| Entry::verify(&cid_of(b), b).unwrap()).collect();
        fuzz("catalog Entry::verify and CatalogState::apply", 21, &seeds, |input| {
            let cid = cid_of(input);
            if let Ok(entry) = Entry::verify(&cid, input) {
                assert!(genuine.contains(&entry), "an entry its author never signed verified: {entry:?}");
            }
            let mut reader = author.clone();
            let _ = reader.apply(&cid, input);
            let _ = reader.files();
            // Under a CID that is not its own hash, nothing verifies.
            assert!(Entry::verify(&cid_of(b"other"), input).is_err());
        });
    }
}
