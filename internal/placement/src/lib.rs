//! Placement: which nodes must hold each block, decided by every node on its own from the same membership view.
//!
//! Owns: the capacity-weighted rendezvous (HRW) ranking of nodes for a block, the bounded-load assignment of a
//! whole block set to nodes, and the accounting of how many copies a change of view moves. Never does I/O, reads
//! the environment, keeps state between calls or looks at the clock: the caller passes the view, the replication
//! factor and the block list, and gets a value back; the same inputs give the same answer on every machine.
//! Why this scheme, what it guarantees and what it costs: `docs/placement.md`.

mod assignment;
mod hash;
mod layout;
mod moves;
mod placement;

pub use assignment::{Assignment, BlockRef, NodeLoad};
pub use hash::BlockKey;
pub use layout::{bitmap, partition_of, Layout, DEFAULT_PARTITIONS, MAX_PARTITIONS};
pub use moves::{moves, MoveStats};
pub use placement::{LoadLimit, NodeInfo, Placement, PlacementError};

/// The replication factor when `XNODE_REPLICATION` is unset: two copies survive the loss of any one node.
pub const DEFAULT_REPLICATION: usize = 2;
