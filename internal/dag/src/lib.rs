//! UnixFS on dag-pb: chunking files, building the same Merkle DAGs (and so the same CIDs) as Kubo's `ipfs add`,
//! and reading files and directories back from any source of blocks.
//!
//! Owns: the dag-pb and UnixFS encodings, the balanced file layout, flat and HAMT-sharded directories, CID
//! computation and verification. Never does I/O on blocks itself: building hands blocks to a [`BlockSink`], reading
//! asks a [`BlockSource`]; where they live (disk, network) is the caller's business.

mod block;
pub mod car;
mod dir;
mod file;
mod options;
pub mod pb;
mod reader;
mod scope;

pub use block::{cid_v0, cid_v1, verify, Block, VerifyError, DAG_PB, IDENTITY, RAW, SHA2_256};
pub use dir::{import_path, import_symlink, murmur3_64, DirectoryBuilder, TreeBuilder, HAMT_MURMUR3};
pub use file::{import_file, import_file_single_threaded, Added};
pub use options::{ImportOptions, Profile, SizeEstimation};
pub use reader::{block_links, list_directory, stat, BlockSource, DirEntry, FileReader, NodeKind, ReadError};
pub use scope::{resolve_path, select_blocks, DagScope, EntityBytes, Resolved, Selection};

use std::path::PathBuf;

/// The largest block Xnode builds or accepts: Bitswap peers refuse blocks over 2 MiB, and Kubo's own limit for
/// imported blocks is 1 MiB plus framing.
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Where blocks go while a DAG is built.
pub trait BlockSink {
    /// Takes one block. Children always arrive before the nodes that link to them.
    fn put(&mut self, block: Block) -> Result<(), SinkError>;
}

/// The error a [`BlockSink`] reports; kept boxed so the sink's own type (a full store, say) survives to the caller.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

impl BlockSink for Vec<Block> {
    fn put(&mut self, block: Block) -> Result<(), SinkError> {
        self.push(block);
        Ok(())
    }
}

/// A sink that keeps nothing: `add --only-hash`.
#[derive(Debug, Default)]
pub struct Discard;

impl BlockSink for Discard {
    fn put(&mut self, _block: Block) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input could not be read.
    #[error("reading the input failed: {0}")]
    Read(#[source] std::io::Error),
    /// A path could not be read.
    #[error("cannot read {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file name is not UTF-8, which UnixFS link names must be.
    #[error("file name {name:?} is not valid UTF-8; rename it to add it")]
    BadName {
        /// The name.
        name: PathBuf,
    },
    /// The options are inconsistent.
    #[error("invalid import options: {0}")]
    Options(String),
    /// Two names share a 64-bit hash: the HAMT cannot place them.
    #[error("directory too large to shard: two names collide in all 64 hash bits")]
    HamtTooDeep,
    /// The sink refused a block (for example, the store is full).
    #[error("{0}")]
    Sink(#[source] SinkError),
}

#[cfg(test)]
mod fuzz_support;

#[cfg(test)]
mod fuzz;
