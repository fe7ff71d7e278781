//! The catalog on disk: every accepted entry in a sled tree, replayed into a [`CatalogState`] at open.
//!
//! Keys are `author peer id bytes ++ seq (u64 BE)`, values the entry's block bytes, so a log reads back in order
//! and replaying it re-checks every signature and link.

use std::path::Path;

use cid::Cid;
use libp2p_identity::{Keypair, PeerId};

use crate::entry::{cid_of, Op};
use crate::state::{Applied, ApplyError, CatalogState};

/// Why the catalog could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The sled tree failed.
    #[error("catalog database: {0}")]
    Db(#[from] sled::Error),
    /// An entry was refused.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The catalog with its on-disk copy. Synchronous: callers on async tasks use `spawn_blocking`.
pub struct Catalog {
    db: sled::Db,
    state: CatalogState,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("entries", &self.state.total_entries()).finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens (creating) the catalog in `dir` and replays every stored entry. Entries that no longer check out
    /// (a damaged value) end their log there; the rest is fetched again from peers.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let db = sled::Config::new().path(dir).cache_capacity(8 << 20).open()?;
        let mut state = CatalogState::new();
        let mut broken: Option<Vec<u8>> = None;
        for item in db.iter() {
            let (key, value) = item?;
            if let Some(author) = &broken {
                if key.starts_with(author) {
                    db.remove(&key)?;
                    continue;
                }
            }
            if let Err(e) = state.apply(&cid_of(&value), &value) {
                tracing_warn(&e);
                broken = Some(key[..key.len() - 8].to_vec());
                db.remove(&key)?;
            }
        }
        Ok(Catalog { db, state })
    }

    /// The merged view.
    pub fn state(&self) -> &CatalogState {
        &self.state
    }

    /// Appends to this node's own log and stores the entry. Returns its CID and block bytes.
    pub fn append(&mut self, key: &Keypair, op: Op, at_ms: u64) -> Result<(Cid, Vec<u8>), CatalogError> {
        let author = key.public().to_peer_id();
        let seq = self.state.len_of(&author);
        let (cid, bytes) = self.state.append(key, op, at_ms);
        self.db.insert(key_of(&author, seq), bytes.as_slice())?;
        self.db.flush()?;
        Ok((cid, bytes))
    }

    /// Admits a fetched entry (see [`CatalogState::apply`]) and stores it.
    pub fn apply(&mut self, cid: &Cid, bytes: &[u8]) -> Result<Applied, CatalogError> {
        self.apply_by(cid, bytes, |_| true)
    }

    /// [`Catalog::apply`] admitting only authors `may_author` accepts ([`CatalogState::apply_by`]).
    pub fn apply_by(
        &mut self,
        cid: &Cid,
        bytes: &[u8],
        may_author: impl Fn(&PeerId) -> bool,
    ) -> Result<Applied, CatalogError> {
        let (entry, applied) = self.state.apply_by(cid, bytes, may_author)?;
        if applied == Applied::Appended {
            self.db.insert(key_of(&entry.author, entry.seq), bytes)?;
        }
        Ok(applied)
    }

    /// Makes applied entries durable.
    pub fn flush(&self) -> Result<(), CatalogError> {
        self.db.flush()?;
        Ok(())
    }

    /// A handle to flush the catalog with, without holding whatever lock guards the catalog (a flush is an fsync).
    pub fn flush_handle(&self) -> sled::Db {
        self.db.clone()
    }

    /// The stored bytes of `author`'s entry `seq`.
    pub fn entry_bytes(&self, author: &PeerId, seq: u64) -> Result<Option<Vec<u8>>, CatalogError> {
        Ok(self.db.get(key_of(author, seq))?.map(|v| v.to_vec()))
    }
}

fn key_of(author: &PeerId, seq: u64) -> Vec<u8> {
    let mut key = author.to_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn tracing_warn(e: &ApplyError) {
    // The crate has no tracing dependency of its own; stderr reaches the node's log.
    eprintln!("catalog: dropping a stored entry that no longer checks out: {e}");
}
