//! The block store: content-addressed blocks on local disk, with pins and a hard capacity.
//!
//! It owns the storage directory: block bodies in append-only pack files (`<dir>/packs/pack-NNNNNNNNNN.dat`)
//! and a sled index (`<dir>/index/`) saying where each block is, how many pins need it and which files are
//! pinned. Pack data is written and read around the page cache (`O_DIRECT`) unless the config turns that
//! off or the file system refuses it. Blocks become "stored" only when a [`BlockWriter`] commits; a crash at
//! any point leaves every committed block readable and never serves a half-written one. Every read is checked against its CID, except
//! [`Store::get_unchecked`]'s (for readers that hash anyway). A block found corrupt is taken out of service with
//! [`Store::quarantine`] until a good copy is stored again.
//!
//! It never builds DAGs, talks to the network or reads the environment: callers hand it CIDs and bytes
//! (from `xnode-dag` or from peers) and a [`StoreConfig`]. It does not check a body against its CID on
//! `put` (the caller just computed or verified that hash); it checks on every `get`.
//!
//! The API is synchronous; async callers use `spawn_blocking`. The design and its measurements are in
//! `docs/storage.md`.

mod direct;
mod error;
mod index;
mod open;
mod pack;
mod store;
mod verify;
mod writer;

use cid::Cid;
use serde::{Deserialize, Serialize};

pub use error::StoreError;
pub use index::Staged;
pub use store::Store;
pub use writer::{BlockWriter, CommitStats};

/// The smallest capacity a store may be given (`XNODE_STORAGE_MAX`, a resize): four 256 KiB blocks. Less cannot hold
/// one file of any use, and a value this small is almost always a unit mistake (`1` meant as 1 GiB).
pub const MIN_CAPACITY: u64 = 1 << 20;

/// How the store is sized. Built by the node from its own config; the store never reads the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Most bytes of blocks the store holds; a put past it fails with [`StoreError::Full`].
    /// Bytes; `u64::MAX` (the default) means unlimited. Applies until a capacity is set at run time
    /// (`Store::set_capacity`): that one is saved in the index and wins at every later open.
    pub capacity: u64,
    /// A writer starts a new pack file once its pack has reached this many bytes. Bytes; default 1 GiB.
    /// Smaller packs are deleted sooner once their blocks go; larger ones mean fewer files.
    pub pack_target_size: u64,
    /// Whether pack data is written and read around the page cache (`O_DIRECT`); default true. Where the file
    /// system refuses direct I/O, the store says so once in the log and uses the page cache instead.
    /// Why: on a VM, filling fresh page-cache pages costs far more CPU than the disk transfer (`docs/storage.md`).
    pub direct_io: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { capacity: u64::MAX, pack_target_size: 1 << 30, direct_io: true }
    }
}

/// A file the store keeps: its root block and every block committed with it stay until it is unpinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The file's root CID.
    #[serde(with = "cid_string")]
    pub root: Cid,
    /// The file's name as added.
    pub name: String,
    /// The file's size in bytes (its content, not its blocks).
    pub size: u64,
    /// When it was added, in seconds since the Unix epoch.
    pub added_at: u64,
}

/// What the store holds, for status pages and placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Blocks stored.
    pub blocks: u64,
    /// Of those, the blocks a pin or the allocation needs (the rest is read cache); `needed_blocks`' count.
    pub needed_blocks: u64,
    /// Bytes of the stored blocks (each block counted once however many files share it).
    pub bytes_held: u64,
    /// The capacity in bytes (`u64::MAX` = unlimited).
    pub capacity: u64,
    /// Bytes that puts may still add: capacity minus held bytes minus bytes pending in open writers.
    pub free: u64,
    /// Bytes the storage directory occupies on disk (allocated blocks of packs and index).
    pub disk_bytes: u64,
    /// Files pinned.
    pub pins: u64,
}

/// What an `unpin` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpinStats {
    /// Blocks whose pin count went down.
    pub blocks_released: u64,
    /// Blocks deleted because nothing needs them any more.
    pub blocks_deleted: u64,
    /// Bytes of the deleted blocks.
    pub bytes_freed: u64,
}

/// What a [`Store::quarantine`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quarantined {
    /// The node's allocation held the block (so the allocation must be told its copy is gone).
    pub kept: bool,
    /// Bytes taken out of service.
    pub bytes: u64,
}

/// What a `gc` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    /// Unpinned blocks deleted.
    pub blocks_deleted: u64,
    /// Bytes of the deleted blocks.
    pub bytes_freed: u64,
}

/// Serialises a CID as its canonical string so pin records stay readable.
mod cid_string {
    use cid::Cid;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(cid)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        let s = String::deserialize(d)?;
        Cid::try_from(s.as_str()).map_err(D::Error::custom)
    }
}
