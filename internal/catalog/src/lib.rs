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
