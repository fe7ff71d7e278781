//! Placement evidence asked directly of a peer: `/xnode/holdings/1.0.0`, a request-response protocol over which a
//! cluster member answers what it keeps, per placement partition ([`SetDigest`]s), summed over a set of partitions,
//! or block by block.
//!
//! Owns: the wire messages, their bounds, the answer to one request (a plain function over an injected
//! [`Holdings`], tested without sockets) and the per-peer limit on requests served at once. Never does: decide
//! what a node must hold or may release (the instance does, with these answers), or touch the store itself (the
//! node injects its [`Holdings`]). The event loop carries requests and answers; docs/p2p.md describes the protocol.

use std::collections::HashMap;
use std::time::Duration;

use cid::Cid;
use libp2p::request_response::{self, cbor, ProtocolSupport};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/xnode/holdings/1.0.0");

/// Partitions one [`Request::Digests`] may name: every partition of the default layout (65,536) at once.
pub const MAX_PARTITIONS: usize = 65_536;

/// CIDs one [`Request::Have`] may name.
pub const MAX_CIDS: usize = 8_192;

/// CIDs one [`Request::Kinds`] may name: each is read from the store to answer (blocks asked this way are at most
/// one chunk, 256 KiB, so at most 128 MiB are read for one request; a directory of small files, 2 MiB).
pub const MAX_KINDS: usize = 512;

/// Bytes of one [`Request::Summary`] bitmap: 8 KiB, one bit for each of 65,536 partitions.
pub const MAX_BITMAP: usize = 8 * 1024;

/// Encoded request size a node reads at most. The largest valid request, 8,192 CIDs of the largest multihash the
/// `cid` crate decodes (64 bytes), is about 700 KB; anything longer is cut off and fails to decode.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// Encoded response size a node reads at most. The largest valid response, 65,536 digests of at most 54 bytes of
/// CBOR each, is about 3.5 MB.
pub const MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// How long one request may take, from opening the stream to reading the answer, on either side.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests of one peer served at once; more are answered [`Refusal::Busy`] (and the asking side queues its own
/// requests beyond this number, so a well-behaved peer is never refused).
pub const MAX_INBOUND_PER_PEER: usize = 4;

/// Requests served at once over every peer: each holds a blocking thread that may be reading the disk.
pub const MAX_INBOUND_TOTAL: usize = 64;

/// Streams of this protocol open at once on one connection (both directions). Beyond it libp2p drops the stream
/// before anyone reads it: a flood from one peer stops there, whatever the event loop's own accounting.
const MAX_STREAMS_PER_CONNECTION: usize = 16;

/// Count and set digest of a set of blocks: XOR of SHA-256 over each block's CID bytes. Order-free, so it can be
/// kept up to date block by block; two nodes holding the same blocks of a partition have the same digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetDigest {
    /// How many blocks.
    pub count: u64,
    /// XOR over the blocks of `sha256(cid.to_bytes())`.
    #[serde(with = "serde_bytes")]
    pub xor: [u8; 32],
}

impl SetDigest {
    /// The digest of a set holding only `cid`.
    pub fn of_cid(cid: &Cid) -> Self {
        Self::of_cid_bytes(&cid.to_bytes())
    }

    /// The digest of a set holding only the block whose CID, in binary form, is `cid`.
    pub fn of_cid_bytes(cid: &[u8]) -> Self {
        use sha2::Digest;
        SetDigest { count: 1, xor: sha2::Sha256::digest(cid).into() }
    }

    /// The form members gossip: `<count>:<hex of the XOR>`.
    pub fn to_gossip(&self) -> String {
        let hex: String = self.xor.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.count)
    }

    /// Adds the blocks `other` stands for (a disjoint set: adding a block twice cancels its hash).
    pub fn add(&mut self, other: &SetDigest) {
        self.count = self.count.wrapping_add(other.count);
        self.xor_in(other);
    }

    /// Removes the blocks `other` stands for (which this set holds).
    pub fn remove(&mut self, other: &SetDigest) {
        self.count = self.count.wrapping_sub(other.count);
        self.xor_in(other);
    }

    /// Whether the set is empty (no block, no hash).
    pub fn is_empty(&self) -> bool {
        *self == SetDigest::default()
    }

    fn xor_in(&mut self, other: &SetDigest) {
        for (a, b) in self.xor.iter_mut().zip(other.xor) {
            *a ^= b;
        }
    }
}

/// What a node keeps, per placement partition, answered to cluster members. Injected into [`crate::Node::spawn`]
/// like the block store; every method runs on a blocking thread and may read the disk.
pub trait Holdings: Send + Sync + 'static {
    /// The digest of the blocks this node keeps in each partition asked, in the order asked.
    fn digests(&self, partitions: &[u32]) -> Vec<SetDigest>;
    /// The combined digest (sum) over every partition whose bit is set in `bitmap` (bit i of byte i/8, LSB first,
    /// is partition i; bits past the partition count are ignored).
    fn summary(&self, bitmap: &[u8]) -> SetDigest;
    /// Whether this node stores each block, in the order asked.
    fn have(&self, cids: &[Cid]) -> Vec<bool>;
    /// What each block is, read from this node's store, in the order asked ([`BlockKind::Absent`] for a block it
    /// does not hold, or holds corrupted). The default knows nothing.
    fn kinds(&self, cids: &[Cid]) -> Vec<BlockKind> {
        vec![BlockKind::Absent; cids.len()]
    }
}

/// What a block is, as far as placement cares: a block without links (a leaf, placed at the replication factor) or
/// one with links (interior, kept by every member). Answers [`Request::Kinds`], so a member indexing a directory of
/// small files learns which entries are files of one block without fetching each of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockKind {
    /// The node does not hold the block (or its copy failed verification).
    Absent,
    /// The block has no links: a raw block, or a dag-pb node without links (a file of one block). Its size in bytes.
    Leaf(u32),
    /// The block has links (a directory, or a file of several blocks).
    Interior,
}

/// Holdings of a node that keeps nothing: empty digests, `false` for every block. A placeholder until the
/// allocation side answers for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHoldings;

impl Holdings for NoHoldings {
    fn digests(&self, partitions: &[u32]) -> Vec<SetDigest> {
        vec![SetDigest::default(); partitions.len()]
    }
    fn summary(&self, _bitmap: &[u8]) -> SetDigest {
        SetDigest::default()
    }
    fn have(&self, cids: &[Cid]) -> Vec<bool> {
        vec![false; cids.len()]
    }
}

/// A question on the wire (CBOR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// [`Holdings::digests`] of these partitions.
    Digests {
        /// At most [`MAX_PARTITIONS`].
        partitions: Vec<u32>,
    },
    /// [`Holdings::summary`] of this bitmap.
    Summary {
        /// At most [`MAX_BITMAP`] bytes.
        #[serde(with = "serde_bytes")]
        bitmap: Vec<u8>,
    },
    /// [`Holdings::have`] of these blocks.
    Have {
        /// CIDs in their binary form; at most [`MAX_CIDS`].
        cids: Vec<ByteBuf>,
    },
    /// [`Holdings::kinds`] of these blocks.
    Kinds {
        /// CIDs in their binary form; at most [`MAX_KINDS`].
        cids: Vec<ByteBuf>,
    },
}

/// An answer on the wire (CBOR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One digest per partition asked, in order.
    Digests(Vec<SetDigest>),
    /// The sum over the partitions of the bitmap.
    Summary(SetDigest),
    /// One answer per CID asked, in order.
    Have(Vec<bool>),
    /// One kind per CID asked, in order.
    Kinds(Vec<BlockKind>),
    /// The request was not answered, and why.
    Refused(Refusal),
}

/// Why a member refused to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The request names more partitions, CIDs or bitmap bytes than the protocol's bounds.
    #[error("the request is over the protocol's bounds")]
    TooLarge,
    /// The peer is already serving the most requests it serves at once for us ([`MAX_INBOUND_PER_PEER`]).
    #[error("too many requests at once")]
    Busy,
    /// A CID in the request does not decode.
    #[error("a CID in the request does not decode")]
    Malformed,
    /// The answering node failed while answering (its holdings panicked).
    #[error("the peer failed to answer")]
    Failed,
    /// The asker is not a live member of the answering node's cluster (by its authenticated gossip).
    #[error("not a live member of the cluster")]
    NotMember,
}

/// Why a holdings request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestFailure {
    /// No answer within [`REQUEST_TIMEOUT`].
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The peer could not be dialled.
    #[error("the peer could not be reached")]
    Unreachable,
    /// The connection closed before the answer came.
    #[error("the connection closed before the answer")]
    ConnectionClosed,
    /// The peer does not speak the protocol (not an Xnode, or an older one).
    #[error("the peer does not speak {PROTOCOL}")]
    Unsupported,
    /// The stream ended or broke without an answer that decodes: the peer did not answer us (not of its group,
    /// not admitted yet, over its limits) or sent garbage.
    #[error("the stream ended without an answer: {0}")]
    Stream(String),
    /// The answer decoded but does not answer the request (wrong kind, or not one entry per item asked).
    #[error("the answer does not match the request")]
    Mismatch,
}

impl RequestFailure {
    pub(crate) fn from_outbound(failure: request_response::OutboundFailure) -> Self {
        match failure {
            request_response::OutboundFailure::DialFailure => RequestFailure::Unreachable,
            request_response::OutboundFailure::Timeout => RequestFailure::Timeout,
            request_response::OutboundFailure::ConnectionClosed => RequestFailure::ConnectionClosed,
            request_response::OutboundFailure::UnsupportedProtocols => RequestFailure::Unsupported,
            request_response::OutboundFailure::Io(e) => RequestFailure::Stream(e.to_string()),
        }
    }
}

impl Request {
    /// The bound this request is over, if any.
    pub(crate) fn check(&self) -> Result<(), Refusal> {
        let fits = match self {
            Request::Digests { partitions } => partitions.len() <= MAX_PARTITIONS,
            Request::Summary { bitmap } => bitmap.len() <= MAX_BITMAP,
            Request::Have { cids } => cids.len() <= MAX_CIDS,
            Request::Kinds { cids } => cids.len() <= MAX_KINDS,
        };
        if fits {
            Ok(())
        } else {
            Err(Refusal::TooLarge)
        }
    }

    /// Whether `response` answers this request (the right kind, one entry per item asked).
    pub(crate) fn answered_by(&self, response: &Response) -> bool {
        match (self, response) {
            (Request::Digests { partitions }, Response::Digests(d)) => d.len() == partitions.len(),
            (Request::Summary { .. }, Response::Summary(_)) => true,
            (Request::Have { cids }, Response::Have(h)) => h.len() == cids.len(),
            (Request::Kinds { cids }, Response::Kinds(k)) => k.len() == cids.len(),
            (_, Response::Refused(_)) => true,
            _ => false,
        }
    }
}

/// Answers one request from `holdings`: refuses it when it is over the bounds or a CID is malformed, and pads or
/// cuts the holdings' answer to one entry per item asked (so a faulty `Holdings` cannot make us send an answer
/// the asker rejects). Runs on a blocking thread.
pub(crate) fn answer(holdings: &dyn Holdings, request: Request) -> Response {
    if let Err(refusal) = request.check() {
        return Response::Refused(refusal);
    }
    match request {
        Request::Digests { partitions } => {
            let mut digests = holdings.digests(&partitions);
            digests.resize(partitions.len(), SetDigest::default());
            Response::Digests(digests)
        }
        Request::Summary { bitmap } => Response::Summary(holdings.summary(&bitmap)),
        Request::Have { cids } => {
            let Ok(cids) = decode_cids(&cids) else { return Response::Refused(Refusal::Malformed) };
            let mut have = holdings.have(&cids);
            have.resize(cids.len(), false);
            Response::Have(have)
        }
        Request::Kinds { cids } => {
            let Ok(cids) = decode_cids(&cids) else { return Response::Refused(Refusal::Malformed) };
            let mut kinds = holdings.kinds(&cids);
            kinds.resize(cids.len(), BlockKind::Absent);
            Response::Kinds(kinds)
        }
    }
}

fn decode_cids(cids: &[ByteBuf]) -> Result<Vec<Cid>, cid::Error> {
    cids.iter().map(|c| Cid::try_from(c.as_slice())).collect()
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

/// Requests being served, per peer and in all: a request is taken only while both are under their limit.
#[derive(Debug)]
pub(crate) struct InboundGate {
    per_peer: HashMap<PeerId, usize>,
    total: usize,
    max_per_peer: usize,
    max_total: usize,
}

impl InboundGate {
    pub(crate) fn new(max_per_peer: usize, max_total: usize) -> Self {
        InboundGate { per_peer: HashMap::new(), total: 0, max_per_peer, max_total }
    }

    /// Takes a slot for one request of `peer`; false when the peer or the node is at its limit.
    pub(crate) fn try_acquire(&mut self, peer: PeerId) -> bool {
        let held = self.per_peer.get(&peer).copied().unwrap_or(0);
        if held >= self.max_per_peer || self.total >= self.max_total {
            return false;
        }
        self.per_peer.insert(peer, held + 1);
        self.total += 1;
        true
    }

    /// Gives back a slot [`InboundGate::try_acquire`] took.
    pub(crate) fn release(&mut self, peer: PeerId) {
        if let Some(held) = self.per_peer.get_mut(&peer) {
            *held -= 1;
            self.total -= 1;
            if *held == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    fn cid(n: u32) -> Cid {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(n.to_le_bytes());
        Cid::new_v1(0x55, cid::multihash::Multihash::<64>::wrap(0x12, &hash).unwrap())
    }

    #[test]
    fn set_digest_is_order_free_and_undoes_itself() {
        let (a, b, c) = (SetDigest::of_cid(&cid(1)), SetDigest::of_cid(&cid(2)), SetDigest::of_cid(&cid(3)));
        assert_eq!(a.count, 1);
        assert_ne!(a, b);
        let mut abc = SetDigest::default();
        for d in [&a, &b, &c] {
            abc.add(d);
        }
        let mut cba = SetDigest::default();
        for d in [&c, &b, &a] {
            cba.add(d);
        }
        assert_eq!(abc, cba);
        assert_eq!(abc.count, 3);
        // Adding sums combine: (a + b) + c is a + (b + c).
        let mut ab = a;
        ab.add(&b);
        let mut bc = b;
        bc.add(&c);
        let mut left = ab;
        left.add(&c);
        let mut right = a;
        right.add(&bc);
        assert_eq!(left, right);
        // Removing brings back the smaller set, down to empty.
        abc.remove(&b);
        let mut ac = a;
        ac.add(&c);
        assert_eq!(abc, ac);
        abc.remove(&a);
        abc.remove(&c);
        assert!(abc.is_empty());
        // Same count, different blocks: different digests.
        assert_ne!(ab, bc);
    }

    /// A fake that answers from a map and counts its calls.
    struct Fake(HashMap<u32, SetDigest>);

    impl Holdings for Fake {
        fn digests(&self, partitions: &[u32]) -> Vec<SetDigest> {
            partitions.iter().map(|p| self.0.get(p).copied().unwrap_or_default()).collect()
        }
        fn summary(&self, bitmap: &[u8]) -> SetDigest {
            let mut sum = SetDigest::default();
            for (p, d) in &self.0 {
                if bitmap.get(*p as usize / 8).is_some_and(|byte| byte & (1 << (p % 8)) != 0) {
                    sum.add(d);
                }
            }
            sum
        }
        fn have(&self, cids: &[Cid]) -> Vec<bool> {
            // Short on purpose: the answer must still have one entry per CID asked.
            cids.iter().skip(1).map(|c| *c == cid(7)).collect()
        }
        fn kinds(&self, cids: &[Cid]) -> Vec<BlockKind> {
            // Short on purpose too.
            cids.iter().skip(1).map(|c| if *c == cid(7) { BlockKind::Leaf(7) } else { BlockKind::Interior }).collect()
        }
    }

    #[test]
    fn answers_within_bounds_and_refuses_beyond() {
        let fake = Fake(HashMap::from([(3, SetDigest::of_cid(&cid(3))), (9, SetDigest::of_cid(&cid(9)))]));
        assert_eq!(
            answer(&fake, Request::Digests { partitions: vec![9, 4, 3] }),
            Response::Digests(vec![SetDigest::of_cid(&cid(9)), SetDigest::default(), SetDigest::of_cid(&cid(3))])
        );
        let mut both = SetDigest::of_cid(&cid(3));
        both.add(&SetDigest::of_cid(&cid(9)));
        assert_eq!(answer(&fake, Request::Summary { bitmap: vec![0b0000_1000, 0b0000_0010] }), Response::Summary(both));
        let have = Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes()), ByteBuf::from(cid(7).to_bytes())] };
        assert_eq!(answer(&fake, have), Response::Have(vec![true, false]), "padded to one answer per CID");

        let over = Request::Digests { partitions: vec![0; MAX_PARTITIONS + 1] };
        assert_eq!(answer(&fake, over), Response::Refused(Refusal::TooLarge));
        let over = Request::Summary { bitmap: vec![0xff; MAX_BITMAP + 1] };
        assert_eq!(answer(&fake, over), Response::Refused(Refusal::TooLarge));
        let over = Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes()); MAX_CIDS + 1] };
        assert_eq!(answer(&fake, over), Response::Refused(Refusal::TooLarge));
        let bad = Request::Have { cids: vec![ByteBuf::from(vec![0x01, 0x55])] };
        assert_eq!(answer(&fake, bad), Response::Refused(Refusal::Malformed));

        let kinds = Request::Kinds {
            cids: vec![
                ByteBuf::from(cid(1).to_bytes()),
                ByteBuf::from(cid(7).to_bytes()),
                ByteBuf::from(cid(2).to_bytes()),
            ],
        };
        assert_eq!(
            answer(&fake, kinds),
            Response::Kinds(vec![BlockKind::Leaf(7), BlockKind::Interior, BlockKind::Absent]),
            "padded with Absent to one answer per CID"
        );
        let over = Request::Kinds { cids: vec![ByteBuf::from(cid(1).to_bytes()); MAX_KINDS + 1] };
        assert_eq!(answer(&fake, over), Response::Refused(Refusal::TooLarge));
        let bad = Request::Kinds { cids: vec![ByteBuf::from(vec![0x01, 0x55])] };
        assert_eq!(answer(&fake, bad), Response::Refused(Refusal::Malformed));
        // The default of the trait knows nothing.
        assert_eq!(NoHoldings.kinds(&[cid(1), cid(2)]), vec![BlockKind::Absent; 2]);
    }

    #[test]
    fn answers_are_checked_against_their_request() {
        let digests = Request::Digests { partitions: vec![1, 2] };
        assert!(digests.answered_by(&Response::Digests(vec![SetDigest::default(); 2])));
        assert!(!digests.answered_by(&Response::Digests(vec![SetDigest::default(); 1])));
        assert!(!digests.answered_by(&Response::Have(vec![true, true])));
        assert!(digests.answered_by(&Response::Refused(Refusal::Busy)));
        let have = Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes())] };
        assert!(!have.answered_by(&Response::Have(vec![])));
        let kinds = Request::Kinds { cids: vec![ByteBuf::from(cid(1).to_bytes())] };
        assert!(kinds.answered_by(&Response::Kinds(vec![BlockKind::Interior])));
        assert!(!kinds.answered_by(&Response::Have(vec![true])));
    }

    fn encoded_request(request: Request) -> usize {
        let mut out = futures::io::Cursor::new(Vec::new());
        let mut codec = cbor::codec::Codec::<Request, Response>::default();
        futures::executor::block_on(codec.write_request(&PROTOCOL, &mut out, request)).unwrap();
        out.into_inner().len()
    }

    fn encoded_response(response: Response) -> usize {
        let mut out = futures::io::Cursor::new(Vec::new());
        let mut codec = cbor::codec::Codec::<Request, Response>::default();
        futures::executor::block_on(codec.write_response(&PROTOCOL, &mut out, response)).unwrap();
        out.into_inner().len()
    }

    #[test]
    fn the_largest_valid_messages_fit_the_size_limits() {
        let biggest_cid = {
            let mh = cid::multihash::Multihash::<64>::wrap(0x13, &[0xff; 64]).unwrap();
            Cid::new_v1(u64::MAX >> 1, mh)
        };
        let requests = [
            Request::Digests { partitions: vec![u32::MAX; MAX_PARTITIONS] },
            Request::Summary { bitmap: vec![0xff; MAX_BITMAP] },
            Request::Have { cids: vec![ByteBuf::from(biggest_cid.to_bytes()); MAX_CIDS] },
            Request::Kinds { cids: vec![ByteBuf::from(biggest_cid.to_bytes()); MAX_KINDS] },
        ];
        for request in requests {
            let len = encoded_request(request);
            assert!(len as u64 <= MAX_REQUEST_BYTES, "{len} bytes");
        }
        let full = SetDigest { count: u64::MAX, xor: [0xff; 32] };
        let len = encoded_response(Response::Digests(vec![full; MAX_PARTITIONS]));
        assert!(len as u64 <= MAX_RESPONSE_BYTES, "{len} bytes");
        let len = encoded_response(Response::Kinds(vec![BlockKind::Leaf(u32::MAX); MAX_KINDS]));
        assert!(len as u64 <= MAX_RESPONSE_BYTES, "{len} bytes");
        // The xor travels as a byte string, not an array of 32 integers.
        assert!(encoded_response(Response::Summary(full)) < 64);
    }

    #[test]
    fn the_gate_limits_each_peer_and_the_total() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut gate = InboundGate::new(2, 3);
        assert!(gate.try_acquire(a));
        assert!(gate.try_acquire(a));
        assert!(!gate.try_acquire(a), "a third request of one peer at once");
        assert!(gate.try_acquire(b));
        assert!(!gate.try_acquire(c), "the node is at its total");
        gate.release(a);
        assert!(gate.try_acquire(c));
        assert!(!gate.try_acquire(a));
        gate.release(b);
        assert!(gate.try_acquire(a));
        gate.release(PeerId::random()); // never acquired: no effect
        assert!(!gate.try_acquire(b));
    }

    /// The holdings decoder fuzzed (see `fuzz_support.rs`): mutated requests and responses read by the protocol's
    /// own codec (with its size limits), every request that decodes answered by [`answer`], every response checked
    /// against a request: nothing panics, and every answer stays within the protocol's bounds.
    #[test]
    fn holdings_messages_never_panic() {
        use crate::fuzz_support::fuzz;
        let codec = || {
            cbor::codec::Codec::<Request, Response>::default()
                .set_request_size_maximum(MAX_REQUEST_BYTES)
                .set_response_size_maximum(MAX_RESPONSE_BYTES)
        };
        let encode_request = |r: Request| {
            let mut out = futures::io::Cursor::new(Vec::new());
            futures::executor::block_on(codec().write_request(&PROTOCOL, &mut out, r)).unwrap();
            out.into_inner()
        };
        let encode_response = |r: Response| {
            let mut out = futures::io::Cursor::new(Vec::new());
            futures::executor::block_on(codec().write_response(&PROTOCOL, &mut out, r)).unwrap();
            out.into_inner()
        };
        let requests = vec![
            encode_request(Request::Digests { partitions: vec![0, 3, 9, u32::MAX] }),
            encode_request(Request::Summary { bitmap: vec![0b1010_1010; 40] }),
            encode_request(Request::Have {
                cids: vec![ByteBuf::from(cid(1).to_bytes()), ByteBuf::from(cid(7).to_bytes())],
            }),
        ];
        let responses = vec![
            encode_response(Response::Digests(vec![SetDigest::of_cid(&cid(3)), SetDigest::default()])),
            encode_response(Response::Summary(SetDigest::of_cid(&cid(9)))),
            encode_response(Response::Have(vec![true, false, true])),
            encode_response(Response::Refused(Refusal::NotMember)),
        ];
        let fake = Fake(HashMap::from([(3, SetDigest::of_cid(&cid(3))), (9, SetDigest::of_cid(&cid(9)))]));
        fuzz("holdings requests: codec and answer", 41, &requests, |input| {
            let mut io = futures::io::Cursor::new(input.to_vec());
            let Ok(request) = futures::executor::block_on(codec().read_request(&PROTOCOL, &mut io)) else { return };
            let response = answer(&fake, request.clone());
            assert!(request.answered_by(&response), "{request:?} answered by {response:?}");
        });
        let asked = [
            Request::Digests { partitions: vec![1, 2] },
            Request::Summary { bitmap: vec![1] },
            Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes())] },
        ];
        fuzz("holdings responses: codec and check", 42, &responses, |input| {
            let mut io = futures::io::Cursor::new(input.to_vec());
            let Ok(response) = futures::executor::block_on(codec().read_response(&PROTOCOL, &mut io)) else { return };
            for request in &asked {
                let _ = request.answered_by(&response);
            }
        });
    }
}
