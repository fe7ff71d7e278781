//! Bitswap 1.2.0, client and server, as a libp2p [`NetworkBehaviour`](libp2p::swarm::NetworkBehaviour) that
//! interoperates with Kubo (which also speaks 1.1.0 and 1.0.0; we accept and offer those too).
//!
//! Owns: the Bitswap wire format and framing, per-peer ledgers (what each peer wants from us, full and incremental
//! wantlists, cancels), our own wants, HAVE/DONT_HAVE, and verification of every received block against the CID
//! it hashes to. Never does: storing blocks (the caller stores what [`Event::Block`] delivers, then calls
//! [`Behaviour::notify_new_blocks`]), choosing whom to ask (that is retrieval's job in `p2p`), building the swarm or
//! its transports, or penalising peers (it reports [`Event::InvalidBlock`]; the caller decides).
//!
//! The protocol rules live in a socket-free engine (`engine.rs`) with unit tests; `handler.rs` moves frames;
//! `behaviour.rs` connects the two. Design notes and interop details: `docs/bitswap.md`.

mod behaviour;
mod engine;
pub mod handler;
mod message;
mod proto;
mod reader;

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;

pub use behaviour::Behaviour;

/// The current protocol: want-have and HAVE/DONT_HAVE.
pub const PROTOCOL_1_2_0: &str = "/ipfs/bitswap/1.2.0";
/// CIDv1 payloads with prefixes, no presences.
pub const PROTOCOL_1_1_0: &str = "/ipfs/bitswap/1.1.0";
/// The original: CIDv0 blocks only.
pub const PROTOCOL_1_0_0: &str = "/ipfs/bitswap/1.0.0";

/// The largest message Kubo reads or writes (boxo's `network.MessageSizeMax`), in bytes.
pub const KUBO_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Where the server side reads blocks from (the node passes its store).
///
/// [`BlockStore::has`] is called on the swarm's task, so it must be quick (an index hit, not a network fetch);
/// [`BlockStore::read_to_send`] is called on the behaviour's own reader thread, so it may read from disk.
pub trait BlockStore: Send + Sync + 'static {
    /// Whether the block is stored locally.
    fn has(&self, cid: &Cid) -> bool;
    /// The block's bytes, already verified against `cid`, or `None` if not stored. For local use (retrieval in
    /// `p2p` walks the blocks it already holds with it); the server does not call it.
    fn get(&self, cid: &Cid) -> Option<Bytes>;
    /// The block's bytes to send to a peer, or `None` if not stored: the only read the server makes. A store may
    /// skip checking them against `cid` here (Kubo's default `HashOnRead=false`), because every receiver hashes
    /// each block it gets (this crate does, in the handler); bad bytes cost the receiver a rejected block, never a
    /// wrong one. The default is [`BlockStore::get`].
    fn read_to_send(&self, cid: &Cid) -> Option<Bytes> {
        self.get(cid)
    }
}

/// Bitswap settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest message read or written, in bytes; larger inbound frames end the stream they came on. Default
    /// 4 MiB, Kubo's limit: larger messages would be refused by Kubo, and a 2 MiB block must fit with its envelope.
    pub max_message_size: usize,
    /// Answer DONT_HAVE when a peer asks for it (send-dont-have) and we lack the block. Default `true`; Kubo's
    /// sessions move on to other peers sooner when told. Our own wants always ask for DONT_HAVE.
    pub send_dont_have: bool,
    /// Most unanswered wants remembered per remote peer, so a peer cannot grow our memory without bound.
    /// Default 8192 (a 2 GiB file at 256 KiB chunks asks for about that many leaves at once).
    pub max_wants_per_peer: usize,
    /// Most inbound Bitswap streams read at once per connection. Default 32; Kubo uses one stream for its
    /// wantlist plus one short-lived stream per reply batch.
    pub max_inbound_streams: usize,
    /// Server: blocks read for a peer go out together, several per message, until the next one would take the
    /// message's block data past this many bytes (a single larger block goes alone). Default 1 MiB: few enough
    /// messages that framing costs nothing, small enough that the first blocks of a large request are on the wire
    /// while the rest are still being read. Capped by `max_message_size`.
    pub send_batch_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: KUBO_MAX_MESSAGE_SIZE,
            send_dont_have: true,
            max_wants_per_peer: 8192,
            max_inbound_streams: 32,
            send_batch_bytes: 1024 * 1024,
        }
    }
}

/// What the behaviour reports to the swarm's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `peer` has the block (answer to [`Behaviour::want_have`]).
    Have {
        /// Who has it.
        peer: PeerId,
        /// The block.
        cid: Cid,
    },
    /// `peer` does not have the block, or can no longer be asked: it disconnected, could not be dialed, or does
    /// not speak Bitswap while we were waiting on it. Either way, ask someone else.
    DontHave {
        /// Who lacks it.
        peer: PeerId,
        /// The block.
        cid: Cid,
    },
    /// A block we wanted, already verified: `data` hashes to `cid`. The want is closed at every peer.
    Block {
        /// Who sent it.
        peer: PeerId,
        /// The block's CID (computed from the data, and one we asked for).
        cid: Cid,
        /// The bytes.
        data: Bytes,
    },
    /// `peer` sent bytes that hash to nothing we asked for (wrong bytes for a wanted CID, or unsolicited junk), or
    /// a block whose hash we cannot check. Nothing was delivered; the caller should penalise or drop the peer.
    InvalidBlock {
        /// The sender.
        peer: PeerId,
        /// The CID the bytes actually hash to, when the payload's prefix could be read.
        cid: Option<Cid>,
        /// What was wrong, for logs.
        reason: String,
    },
    /// The server side wrote a block to `peer` (for the transfer log).
    Sent {
        /// The receiver.
        peer: PeerId,
        /// The block.
        cid: Cid,
        /// Its size in bytes.
        bytes: usize,
    },
}

#[cfg(test)]
#[path = "../../dag/src/fuzz_support.rs"]
mod fuzz_support;

#[cfg(test)]
mod fuzz;
