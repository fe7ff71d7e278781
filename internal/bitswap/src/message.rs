//! Bitswap messages in typed form, their protobuf encoding for each protocol version, the CID prefix of 1.1+
//! payloads, and the uvarint length framing used on streams.
//!
//! Decoding never trusts a sender's claim about which CID a block is: the CID is rebuilt from the prefix and a
//! fresh hash of the bytes, so a block that does not hash to what was asked simply names a CID nobody wanted.

use bytes::Bytes;
use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use multihash::Multihash;
use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::proto;

/// Multihash code of sha2-256, the only hash Kubo uses for blocks it adds.
const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash".
const IDENTITY: u64 = 0x00;
/// Multicodec of dag-pb, the only codec a CIDv0 can have.
const DAG_PB: u64 = 0x70;

/// Bytes the protobuf envelope of one block, presence or wantlist entry may add beyond its CID and data: a tag and
/// a length varint for the item, and the same again for each of its fields. Used to split replies under the
/// frame limit without encoding twice.
const ITEM_OVERHEAD: usize = 24;

/// The protocol versions, newest first: the order we offer them in when opening a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// `/ipfs/bitswap/1.2.0`: want-have, HAVE/DONT_HAVE.
    V120,
    /// `/ipfs/bitswap/1.1.0`: CIDv1 and payload prefixes.
    V110,
    /// `/ipfs/bitswap/1.0.0`: CIDv0 blocks only.
    V100,
}

impl Version {
    pub(crate) fn from_protocol(p: &str) -> Option<Self> {
        match p {
            crate::PROTOCOL_1_2_0 => Some(Self::V120),
            crate::PROTOCOL_1_1_0 => Some(Self::V110),
            crate::PROTOCOL_1_0_0 => Some(Self::V100),
            _ => None,
        }
    }
}

/// Whether a want asks for the block itself or only whether the peer has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WantType {
    Block,
    Have,
}

/// One wantlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) cid: Cid,
    pub(crate) want_type: WantType,
    /// Ask the peer to answer DONT_HAVE rather than stay silent.
    pub(crate) send_dont_have: bool,
    pub(crate) cancel: bool,
    pub(crate) priority: i32,
}

/// HAVE or DONT_HAVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    Have,
    DontHave,
}

/// A block in a message. On receipt, `cid` was computed from the bytes, never taken from the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockData {
    pub(crate) cid: Cid,
    pub(crate) data: Bytes,
}

/// A Bitswap message in typed form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Message {
    /// The wantlist replaces the receiver's copy rather than amending it.
    pub(crate) full: bool,
    pub(crate) wants: Vec<Want>,
    pub(crate) blocks: Vec<BlockData>,
    pub(crate) presences: Vec<(Cid, Presence)>,
    /// Payloads whose prefix could not be read or whose hash function we cannot check (inbound only): they are
    /// reported as invalid blocks, never stored.
    pub(crate) rejected: Vec<String>,
}

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    #[error("stream ended inside a message")]
    Truncated,
    #[error("length prefix is not a valid varint")]
    BadLength,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Bitswap protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

impl Message {
    pub(crate) fn is_empty(&self) -> bool {
        !self.full && self.wants.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// The protobuf bytes of this message for a peer speaking `version`: 1.0.0 peers get bare blocks and no
    /// presences or want-haves (they would not understand them); 1.1+ peers get payloads with prefixes.
    pub(crate) fn encode(&self, version: Version) -> Vec<u8> {
        let mut pb = proto::Message::default();
        if self.full || !self.wants.is_empty() {
            let entries = self
                .wants
                .iter()
                .filter(|w| version == Version::V120 || w.want_type == WantType::Block)
                .map(|w| proto::Entry {
                    block: w.cid.to_bytes(),
                    priority: w.priority,
                    cancel: w.cancel,
                    want_type: match w.want_type {
                        WantType::Block => 0,
                        WantType::Have => 1,
                    },
                    send_dont_have: w.send_dont_have && version == Version::V120,
                })
                .collect();
            pb.wantlist = Some(proto::Wantlist { entries, full: self.full });
        }
        for b in &self.blocks {
            if version == Version::V100 {
                pb.blocks.push(b.data.clone());
            } else {
                pb.payload.push(proto::Block { prefix: cid_prefix(&b.cid), data: b.data.clone() });
            }
        }
        if version == Version::V120 {
            pb.block_presences = self
                .presences
                .iter()
                .map(|(cid, p)| proto::BlockPresence {
                    cid: cid.to_bytes(),
                    r#type: match p {
                        Presence::Have => 0,
                        Presence::DontHave => 1,
                    },
                })
                .collect();
        }
        pb.encode_to_vec()
    }

    /// Decodes one frame's protobuf. Entries and presences whose CID does not parse are skipped (a peer on a
    /// newer CID scheme is not malicious); blocks are re-hashed to learn their CID.
    ///
    /// Given a [`Bytes`] buffer, the blocks are slices of it, not copies.
    pub(crate) fn decode(buf: impl bytes::Buf) -> Result<Self, prost::DecodeError> {
        let pb = proto::Message::decode(buf)?;
        let mut msg = Message::default();
        if let Some(wl) = pb.wantlist {
            msg.full = wl.full;
            for e in wl.entries {
                let Ok(cid) = Cid::try_from(e.block.as_slice()) else {
                    tracing::debug!("skipping wantlist entry with an unparsable CID");
                    continue;
                };
                msg.wants.push(Want {
                    cid,
                    want_type: if e.want_type == 1 { WantType::Have } else { WantType::Block },
                    send_dont_have: e.send_dont_have,
                    cancel: e.cancel,
                    priority: e.priority,
                });
            }
        }
        for data in pb.blocks {
            // 1.0.0 blocks carry no prefix: they are CIDv0 by definition.
            let cid = Cid::new_v0(sha256(&data)).expect("sha2-256 is valid for CIDv0");
            msg.blocks.push(BlockData { cid, data });
        }
        for p in pb.payload {
            match cid_from_prefix(&p.prefix, &p.data) {
                Ok(cid) => msg.blocks.push(BlockData { cid, data: p.data }),
                Err(reason) => msg.rejected.push(reason),
            }
        }
        for p in pb.block_presences {
            let Ok(cid) = Cid::try_from(p.cid.as_slice()) else {
                tracing::debug!("skipping block presence with an unparsable CID");
                continue;
            };
            msg.presences.push((cid, if p.r#type == 1 { Presence::DontHave } else { Presence::Have }));
        }
        Ok(msg)
    }

    /// Splits this message into messages whose encoding stays under `max` bytes, keeping item order. A full
    /// wantlist stays full only in the first part; later parts amend it, which means the same to the receiver.
    pub(crate) fn split(self, max: usize) -> Vec<Message> {
        let budget = max.saturating_sub(64);
        if self.estimated_len() <= budget {
            return vec![self];
        }
        let mut out = Vec::new();
        let mut cur = Message { full: self.full, ..Message::default() };
        let mut used = 0usize;
        let room = |cur: &mut Message, used: &mut usize, cost: usize, out: &mut Vec<Message>| {
            if *used + cost > budget && !cur.is_empty_of_items() {
                out.push(std::mem::take(cur));
                *used = 0;
            }
            *used += cost;
        };
        for w in self.wants {
            room(&mut cur, &mut used, w.cid.encoded_len() + ITEM_OVERHEAD, &mut out);
            cur.wants.push(w);
        }
        for p in self.presences {
            room(&mut cur, &mut used, p.0.encoded_len() + ITEM_OVERHEAD, &mut out);
            cur.presences.push(p);
        }
        for b in self.blocks {
            room(&mut cur, &mut used, b.data.len() + ITEM_OVERHEAD, &mut out);
            cur.blocks.push(b);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn is_empty_of_items(&self) -> bool {
        self.wants.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// An upper bound of the encoded size.
    pub(crate) fn estimated_len(&self) -> usize {
        let wants: usize = self.wants.iter().map(|w| w.cid.encoded_len() + ITEM_OVERHEAD).sum();
        let presences: usize = self.presences.iter().map(|p| p.0.encoded_len() + ITEM_OVERHEAD).sum();
        let blocks: usize = self.blocks.iter().map(|b| b.data.len() + ITEM_OVERHEAD).sum();
        16 + wants + presences + blocks
    }
}

fn sha256(data: &[u8]) -> Multihash<64> {
    Multihash::wrap(SHA2_256, &Sha256::digest(data)).expect("a 32-byte digest fits")
}

/// The 1.1+ payload prefix of a CID: version, codec, multihash code, digest length, each a uvarint.
pub(crate) fn cid_prefix(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    for v in [cid.version() as u64, cid.codec(), cid.hash().code(), u64::from(cid.hash().size())] {
        put_uvarint(&mut out, v);
    }
    out
}

/// Rebuilds the CID of `data` from a payload prefix by hashing the data. The prefix only chooses how to hash and
/// what to call the result; it cannot make wrong bytes match a CID.
pub(crate) fn cid_from_prefix(prefix: &[u8], data: &[u8]) -> Result<Cid, String> {
    let mut rest = prefix;
    let mut next = |what: &str| take_uvarint(&mut rest).ok_or_else(|| format!("payload prefix: bad {what}"));
    let version = next("version")?;
    let codec = next("codec")?;
    let mh_code = next("multihash code")?;
    let mh_len = next("multihash length")?;
    let mh = match mh_code {
        SHA2_256 if mh_len == 32 => sha256(data),
        IDENTITY if mh_len == data.len() as u64 => {
            Multihash::wrap(IDENTITY, data).map_err(|_| "identity block larger than 64 bytes".to_string())?
        }
        _ => return Err(format!("payload uses multihash {mh_code:#x} of length {mh_len}, which Xnode cannot check")),
    };
    match version {
        0 if codec == DAG_PB && mh_code == SHA2_256 => Ok(Cid::new_v0(mh).expect("sha2-256 is valid for CIDv0")),
        0 => Err(format!("payload prefix claims CIDv0 with codec {codec:#x}")),
        1 => Ok(Cid::new_v1(codec, mh)),
        v => Err(format!("payload prefix has unknown CID version {v}")),
    }
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_uvarint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads one uvarint-length-prefixed frame. `Ok(None)` is a clean end of stream between frames. The length is
/// checked before anything is allocated, so a peer cannot make us reserve more than `max` bytes.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let mut b = [0u8; 1];
        if io.read(&mut b).await? == 0 {
            return if i == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            break;
        }
        i += 1;
        if i == 10 {
            return Err(FrameError::BadLength);
        }
    }
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(buf))
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(10);
    put_uvarint(&mut head, frame.len() as u64);
    io.write_all(&head).await?;
    io.write_all(frame).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn raw_cid(data: &[u8]) -> Cid {
        Cid::new_v1(0x55, sha256(data))
    }

    fn v0_cid(data: &[u8]) -> Cid {
        Cid::new_v0(sha256(data)).unwrap()
    }

    fn sample() -> Message {
        let a = raw_cid(b"a");
        let b = v0_cid(b"b");
        Message {
            full: true,
            wants: vec![
                Want { cid: a, want_type: WantType::Have, send_dont_have: true, cancel: false, priority: 7 },
                Want { cid: b, want_type: WantType::Block, send_dont_have: false, cancel: true, priority: 1 },
            ],
            blocks: vec![
                BlockData { cid: a, data: Bytes::from_static(b"a") },
                BlockData { cid: b, data: Bytes::from_static(b"b") },
            ],
            presences: vec![(a, Presence::Have), (b, Presence::DontHave)],
            rejected: vec![],
        }
    }

    #[test]
    fn roundtrip_1_2_0() {
        let msg = sample();
        assert_eq!(Message::decode(&msg.encode(Version::V120)[..]).unwrap(), msg);
    }

    #[test]
    fn version_1_0_0_sends_bare_blocks_and_no_presences() {
        let msg = sample();
        let pb = proto::Message::decode(msg.encode(Version::V100).as_slice()).unwrap();
        assert!(pb.payload.is_empty());
        assert_eq!(pb.blocks.len(), 2);
        assert!(pb.block_presences.is_empty());
        // The want-have is dropped: a 1.0.0 peer would read it as want-block.
        assert_eq!(pb.wantlist.unwrap().entries.len(), 1);
        // A 1.0.0 block decodes as CIDv0; the raw block's CID therefore differs from what we would ask for.
        let back = Message::decode(&msg.encode(Version::V100)[..]).unwrap();
        assert_eq!(back.blocks[1].cid, v0_cid(b"b"));
        assert_ne!(back.blocks[0].cid, raw_cid(b"a"));
    }

    #[test]
    fn prefix_rebuilds_v0_and_v1() {
        for cid in [v0_cid(b"hello"), raw_cid(b"hello"), Cid::new_v1(0x70, sha256(b"hello"))] {
            let prefix = cid_prefix(&cid);
            assert_eq!(cid_from_prefix(&prefix, b"hello").unwrap(), cid);
        }
        // Kubo's prefix of a CIDv0: version 0, dag-pb, sha2-256, 32 bytes.
        assert_eq!(cid_prefix(&v0_cid(b"x")), vec![0x00, 0x70, 0x12, 0x20]);
        assert_eq!(cid_prefix(&raw_cid(b"x")), vec![0x01, 0x55, 0x12, 0x20]);
    }

    #[test]
    fn prefix_rejects_what_it_cannot_check() {
        // blake3 (0x1e) is valid multihash but not something we verify.
        assert!(cid_from_prefix(&[0x01, 0x55, 0x1e, 0x20], b"x").is_err());
        assert!(cid_from_prefix(&[0x01, 0x55, 0x12, 0x10], b"x").is_err(), "truncated sha2-256");
        assert!(cid_from_prefix(&[0x00, 0x55, 0x12, 0x20], b"x").is_err(), "CIDv0 must be dag-pb");
        assert!(cid_from_prefix(&[0x01, 0x55], b"x").is_err());
        let msg = proto::Message {
            payload: vec![proto::Block { prefix: vec![0x01, 0x55, 0x1e, 0x20], data: Bytes::from_static(b"x") }],
            ..Default::default()
        };
        let got = Message::decode(&msg.encode_to_vec()[..]).unwrap();
        assert!(got.blocks.is_empty());
        assert_eq!(got.rejected.len(), 1);
    }

    #[test]
    fn wrong_bytes_hash_to_another_cid() {
        let asked = raw_cid(b"the real block");
        let got = cid_from_prefix(&cid_prefix(&asked), b"something else").unwrap();
        assert_ne!(got, asked);
    }

    /// A frame as Kubo writes it (go-msgio's varint writer): uvarint length, then the protobuf.
    #[test]
    fn reads_kubo_style_frames_until_eof() {
        let mut wire = Vec::new();
        let mut frames = Vec::new();
        for i in 0..3u8 {
            let m = Message { presences: vec![(raw_cid(&[i]), Presence::Have)], ..Default::default() };
            let body = m.encode(Version::V120);
            put_uvarint(&mut wire, body.len() as u64);
            wire.extend_from_slice(&body);
            frames.push(m);
        }
        let mut r = futures::io::Cursor::new(wire);
        let mut got = Vec::new();
        while let Some(f) = block_on(read_frame(&mut r, 1 << 22)).unwrap() {
            got.push(Message::decode(&f[..]).unwrap());
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn write_then_read() {
        let mut w = futures::io::Cursor::new(Vec::new());
        let body = vec![7u8; 300];
        block_on(write_frame(&mut w, &body)).unwrap();
        let wire = w.into_inner();
        assert_eq!(&wire[..2], &[0xac, 0x02], "300 as a uvarint");
        let mut r = futures::io::Cursor::new(wire);
        assert_eq!(block_on(read_frame(&mut r, 1024)).unwrap().unwrap(), body);
        assert!(block_on(read_frame(&mut r, 1024)).unwrap().is_none());
    }

    #[test]
    fn oversized_frame_is_rejected_before_allocating() {
        let mut wire = Vec::new();
        put_uvarint(&mut wire, (4 << 20) + 1);
        let mut r = futures::io::Cursor::new(wire);
        match block_on(read_frame(&mut r, 4 << 20)) {
            Err(FrameError::TooLarge { len, max }) => assert_eq!((len, max), ((4 << 20) + 1, 4 << 20)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = Vec::new();
        put_uvarint(&mut wire, 10);
        wire.extend_from_slice(b"short");
        let mut r = futures::io::Cursor::new(wire);
        assert!(matches!(block_on(read_frame(&mut r, 1024)), Err(FrameError::Truncated)));
    }

    #[test]
    fn split_keeps_every_part_under_the_limit() {
        let blocks: Vec<BlockData> = (0..10u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 1000]);
                BlockData { cid: raw_cid(&data), data }
            })
            .collect();
        let msg =
            Message { blocks: blocks.clone(), presences: vec![(raw_cid(b"p"), Presence::Have)], ..Default::default() };
        let parts = msg.split(3000);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        for p in &parts {
            assert!(p.encode(Version::V120).len() <= 3000);
        }
        let got: Vec<BlockData> = parts.into_iter().flat_map(|p| p.blocks).collect();
        assert_eq!(got, blocks);
    }
}
