//! The one error type of the crate: every failure a caller of [`crate::Client`] can act on.

use std::time::Duration;

use cid::Cid;
use libp2p::{Multiaddr, PeerId};

use crate::holdings::{Refusal, RequestFailure};

/// Why a p2p operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum P2pError {
    /// The identity key file could not be read, written or decoded.
    #[error("identity key {path}: {reason}")]
    Identity {
        /// The key file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The swarm could not be built (transport or behaviour setup).
    #[error("building the libp2p swarm failed: {0}")]
    Build(String),
    /// Listening on an address failed (port in use, bad address).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: Multiaddr,
        /// What the transport said.
        reason: String,
    },
    /// A multiaddr lacked something the operation needs (a `/p2p/<peer id>` suffix, say).
    #[error("unusable address {addr}: {reason}")]
    InvalidAddress {
        /// The address given.
        addr: Multiaddr,
        /// What is missing.
        reason: &'static str,
    },
    /// No peer had the block within the fetch's timeout.
    #[error("block {cid} not found on any reachable peer within {timeout:?}")]
    NotFound {
        /// The first block still missing when time ran out.
        cid: Cid,
        /// The timeout the caller set.
        timeout: Duration,
    },
    /// A fetched block's bytes could not be decoded to find its links.
    #[error("block {cid} is not a UnixFS node this node can walk: {reason}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// The decoder's complaint.
        reason: String,
    },
    /// The node's block sink refused a verified block (disk full, say).
    #[error("storing block {cid} failed: {reason}")]
    Sink {
        /// The block.
        cid: Cid,
        /// The sink's error.
        reason: String,
    },
    /// The peer could be reached neither directly nor through a relay.
    #[error("cannot reach peer {peer}: {reason}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// The last error seen.
        reason: String,
    },
    /// A DHT operation failed (no known peers, timeout).
    #[error("DHT: {0}")]
    Dht(String),
    /// A holdings request names more items than the protocol allows (see `holdings::MAX_*`); it was not sent.
    #[error("holdings request too large: {len} {what}, at most {max}")]
    RequestTooLarge {
        /// What is counted: "partitions", "CIDs" or "bitmap bytes".
        what: &'static str,
        /// How many the request named.
        len: usize,
        /// The protocol's bound.
        max: usize,
    },
    /// The peer answered a holdings request with a refusal.
    #[error("peer {peer} refused the holdings request: {reason}")]
    Refused {
        /// The peer asked.
        peer: PeerId,
        /// Why it refused.
        reason: Refusal,
    },
    /// The peer refused an ingest batch; nothing of it was stored.
    #[error("peer {peer} refused the blocks: {reason}")]
    IngestRefused {
        /// The peer asked.
        peer: PeerId,
        /// Why it refused.
        reason: crate::ingest::Refusal,
    },
    /// A holdings request got no usable answer (a peer of another group, or one that has not admitted us, gets
    /// its stream closed: [`RequestFailure::Stream`]).
    #[error("holdings request to {peer} failed: {reason}")]
    NoAnswer {
        /// The peer asked.
        peer: PeerId,
        /// What happened.
        reason: RequestFailure,
    },
    /// The event loop has stopped; the node is shutting down.
    #[error("the p2p event loop has stopped")]
    Stopped,
}
