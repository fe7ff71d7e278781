//! Streaming ingest between members: `/xnode/ingest/1.0.0`, a request-response protocol over which the member that
//! receives an upload sends each block, as the importer makes it, to the members placement gives it to. The
//! receiver verifies every block against its CID, checks its room and stores the batch as *staged* (kept from
//! eviction, claimed when a catalog file lists it, reclaimed after a while otherwise).
//!
//! Owns: the wire messages, their bounds, the checks of one request before the node sees it (a plain function over
//! an injected [`Ingest`], tested without sockets), and the per-peer limit on requests served at once. Never does:
//! decide who gets which block (the instance does, from the placement layout) or touch the store itself (the node
//! injects its [`Ingest`]). docs/p2p.md describes the protocol.

use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/xnode/ingest/1.0.0");

/// Blocks one request may carry.
pub const MAX_BLOCKS: usize = 64;

/// Bytes of one block at most (as Bitswap: 2 MiB).
pub const MAX_BLOCK_BYTES: usize = 2 * 1024 * 1024;

/// Block bytes one request may carry in all: a batch of 16 default 256 KiB chunks, or one block of the largest
/// size.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Encoded request size a node reads at most: a full batch plus its CIDs and framing (64 CIDs of at most ~70
/// bytes, a few bytes of CBOR per item).
pub const MAX_REQUEST_BYTES: u64 = MAX_BATCH_BYTES as u64 + 64 * 1024;

/// Encoded response size a node reads at most (a response is a few dozen bytes).
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024;

/// How long one request may take, from opening the stream to reading the answer: 4 MiB over a slow link, then a
/// write and an fsync on the receiver.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests of one peer served at once; more are answered [`Refusal::Busy`] (and the sending side keeps at most
/// this many on the wire to one peer, so a well-behaved member is never refused).
pub const MAX_INBOUND_PER_PEER: usize = 4;

/// Requests served at once over every peer: each holds its batch in memory (up to [`MAX_BATCH_BYTES`]) and a
/// blocking thread while it is written.
pub const MAX_INBOUND_TOTAL: usize = 16;

/// Streams of this protocol open at once on one connection (both directions).
const MAX_STREAMS_PER_CONNECTION: usize = 16;

/// Where a member's verified ingest batches go: the node injects its store. Called on a blocking thread.
pub trait Ingest: Send + Sync + 'static {
    /// Stores `blocks` (each already verified against its CID) as staged by `session`, all or nothing. Blocks already
    /// stored are not written again (their staging mark is refreshed). Returns how many were already stored, or why
    /// the batch was refused ([`Refusal::Full`] when they do not fit).
    fn stage(&self, session: u64, blocks: &[(Cid, Bytes)]) -> Result<u32, Refusal>;
}

/// An ingest that refuses everything: for nodes without a store (this crate's tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIngest;

impl Ingest for NoIngest {
    fn stage(&self, _session: u64, _blocks: &[(Cid, Bytes)]) -> Result<u32, Refusal> {
        Err(Refusal::Failed)
    }
}

/// One block on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlock {
    /// The CID in its binary form.
    pub cid: ByteBuf,
    /// The block's bytes.
    pub data: ByteBuf,
}

/// A batch to stage (CBOR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The sender's add this batch belongs to: staged blocks are reclaimed per session, once it has been quiet for
    /// the receiver's staging time.
    pub session: u64,
    /// At most [`MAX_BLOCKS`] blocks of at most [`MAX_BLOCK_BYTES`] each, [`MAX_BATCH_BYTES`] in all.
    pub blocks: Vec<WireBlock>,
}

/// An answer (CBOR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Every block of the batch is stored (and staged, unless the node already keeps it).
    Stored {
        /// How many of them were already stored (not written again).
        already: u32,
    },
    /// Nothing of the batch was stored, and why.
    Refused(Refusal),
}

/// Why a member refused a batch; nothing of it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The request is over the protocol's bounds.
    #[error("the batch is over the protocol's bounds")]
    TooLarge,
    /// The member is already serving the most batches it serves at once for us.
    #[error("too many batches at once")]
    Busy,
    /// A CID in the batch does not decode.
    #[error("a CID in the batch does not decode")]
    Malformed,
    /// A block's bytes do not hash to its CID: the whole batch is refused and the sender is banned.
    #[error("a block does not match its CID")]
    Invalid,
    /// The batch does not fit in the member's store.
    #[error("its store is full ({free} bytes free, {needed} needed)")]
    Full {
        /// Bytes free in the member's store (after evicting read caches).
        free: u64,
        /// Bytes the batch needed.
        needed: u64,
    },
    /// The member failed to store the batch (a disk error).
    #[error("it failed to store the batch")]
    Failed,
    /// The sender is not a live member of the receiver's cluster.
    #[error("not a live member of the cluster")]
    NotMember,
}

impl Request {
    /// Bytes of block data the request carries.
    pub fn data_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.data.len()).sum()
    }

    /// The bound this request is over, if any.
    pub(crate) fn check(&self) -> Result<(), Refusal> {
        let fits = self.blocks.len() <= MAX_BLOCKS
            && self.blocks.iter().all(|b| b.data.len() <= MAX_BLOCK_BYTES)
            && (self.data_bytes() <= MAX_BATCH_BYTES || self.blocks.len() == 1);
        if fits {
            Ok(())
        } else {
            Err(Refusal::TooLarge)
        }
    }

    /// The CID and size of each block whose CID parses: what the transfer log and the metrics count once the batch
    /// is stored.
    pub(crate) fn carried(&self) -> Vec<(Cid, u64)> {
        self.blocks.iter().filter_map(|b| Some((Cid::try_from(b.cid.as_slice()).ok()?, b.data.len() as u64))).collect()
    }

    /// Builds a request from verified blocks (the caller keeps within the bounds).
    pub fn of(session: u64, blocks: &[(Cid, Bytes)]) -> Request {
        Request {
            session,
            blocks: blocks
                .iter()
                .map(|(cid, data)| WireBlock { cid: ByteBuf::from(cid.to_bytes()), data: ByteBuf::from(data.to_vec()) })
                .collect(),
        }
    }
}

/// The answer to one request and whether the sender lied (a block that does not match its CID: ban it). Checks the
/// bounds, decodes every CID and verifies every block before `ingest` sees anything. Runs on a blocking thread.
pub(crate) fn answer(ingest: &dyn Ingest, request: Request) -> (Response, bool) {
    if let Err(refusal) = request.check() {
        return (Response::Refused(refusal), false);
    }
    let mut blocks = Vec::with_capacity(request.blocks.len());
    for b in request.blocks {
        let Ok(cid) = Cid::try_from(b.cid.as_slice()) else { return (Response::Refused(Refusal::Malformed), false) };
        if xnode_dag::verify(&cid, &b.data).is_err() {
            return (Response::Refused(Refusal::Invalid), true);
        }
        blocks.push((cid, Bytes::from(b.data.into_vec())));
    }
    match ingest.stage(request.session, &blocks) {
        Ok(already) => (Response::Stored { already }, false),
        Err(refusal) => (Response::Refused(refusal), false),
    }
}

/// The request-response behaviour of this protocol, with its size limits, timeout and stream cap.
pub(crate) fn behaviour() -> cbor::Behaviour<Request, Response> {
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_REQUEST_BYTES)
        .set_response_size_maximum(MAX_RESPONSE_BYTES);
    let config = request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    request_response::Behaviour::with_codec(codec, [(PROTOCOL, ProtocolSupport::Full)], config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;
    use std::sync::Mutex;

    fn block(n: u32, len: usize) -> (Cid, Bytes) {
        let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(n) as u8 ^ n as u8).collect();
        (xnode_dag::cid_v1(0x55, &data), Bytes::from(data))
    }

    /// Records what it was asked to stage; full beyond `room` bytes.
    struct Fake {
        room: usize,
        staged: Mutex<Vec<(u64, Cid)>>,
    }

    impl Ingest for Fake {
        fn stage(&self, session: u64, blocks: &[(Cid, Bytes)]) -> Result<u32, Refusal> {
            let needed: usize = blocks.iter().map(|(_, d)| d.len()).sum();
            if needed > self.room {
                return Err(Refusal::Full { free: self.room as u64, needed: needed as u64 });
            }
            self.staged.lock().unwrap().extend(blocks.iter().map(|(c, _)| (session, *c)));
            Ok(0)
        }
    }

    #[test]
    fn a_batch_is_verified_whole_before_anything_is_staged() {
        let fake = Fake { room: 1 << 20, staged: Mutex::new(Vec::new()) };
        let good = [block(1, 1000), block(2, 2000)];
        assert_eq!(answer(&fake, Request::of(9, &good)), (Response::Stored { already: 0 }, false));
        assert_eq!(fake.staged.lock().unwrap().len(), 2);

        // One lying block among good ones: nothing staged, the sender is to be banned.
        let mut lying = Request::of(9, &[block(3, 100), block(4, 100)]);
        lying.blocks[1].data = ByteBuf::from(vec![0u8; 100]);
        assert_eq!(answer(&fake, lying), (Response::Refused(Refusal::Invalid), true));
        assert_eq!(fake.staged.lock().unwrap().len(), 2, "nothing of a lying batch is stored");

        let mut malformed = Request::of(9, &[block(5, 10)]);
        malformed.blocks[0].cid = ByteBuf::from(vec![0x01, 0x55]);
        assert_eq!(answer(&fake, malformed), (Response::Refused(Refusal::Malformed), false));

        let full = Fake { room: 500, staged: Mutex::new(Vec::new()) };
        assert_eq!(
            answer(&full, Request::of(1, &[block(6, 1000)])),
            (Response::Refused(Refusal::Full { free: 500, needed: 1000 }), false)
        );
    }

    #[test]
    fn requests_over_the_bounds_are_refused() {
        let fake = Fake { room: usize::MAX, staged: Mutex::new(Vec::new()) };
        let many: Vec<_> = (0..MAX_BLOCKS as u32 + 1).map(|n| block(n, 10)).collect();
        assert_eq!(answer(&fake, Request::of(1, &many)).0, Response::Refused(Refusal::TooLarge));
        let heavy: Vec<_> = (0..17).map(|n| block(n, 256 * 1024)).collect();
        assert_eq!(answer(&fake, Request::of(1, &heavy)).0, Response::Refused(Refusal::TooLarge));
        let huge = block(1, MAX_BLOCK_BYTES + 1);
        assert_eq!(answer(&fake, Request::of(1, &[huge])).0, Response::Refused(Refusal::TooLarge));
        assert!(fake.staged.lock().unwrap().is_empty());
        // The largest valid request fits the codec's limit.
        let full: Vec<_> = (0..16).map(|n| block(n, 256 * 1024)).collect();
        let mut out = futures::io::Cursor::new(Vec::new());
        let mut codec = cbor::codec::Codec::<Request, Response>::default();
        futures::executor::block_on(codec.write_request(&PROTOCOL, &mut out, Request::of(u64::MAX, &full))).unwrap();
        assert!(out.into_inner().len() as u64 <= MAX_REQUEST_BYTES);
        let mut out = futures::io::Cursor::new(Vec::new());
        let refusal = Response::Refused(Refusal::Full { free: u64::MAX, needed: u64::MAX });
        futures::executor::block_on(codec.write_response(&PROTOCOL, &mut out, refusal)).unwrap();
        assert!(out.into_inner().len() as u64 <= MAX_RESPONSE_BYTES);
    }
}
