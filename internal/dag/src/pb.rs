//! The two protobuf schemas a UnixFS DAG is made of: dag-pb's `PBNode`/`PBLink` and UnixFS's `Data`.
//!
//! Hand-written rather than generated because byte-identity with Kubo depends on details a generator does not
//! promise: dag-pb writes `Links` (field 2) *before* `Data` (field 1), every link carries `Name` even when it is the
//! empty string, and UnixFS fields appear in field-number order with `blocksizes` unpacked. The decoder is strict
//! enough for bytes from untrusted peers: every length is bounds-checked and unknown wire types are rejected.

use bytes::Bytes;
use cid::Cid;

/// A malformed dag-pb or UnixFS protobuf.
#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct DecodeError(pub(crate) &'static str);

/// A dag-pb link: the child's CID, its name inside a directory (empty inside a file) and the cumulative size of the
/// child's whole DAG (`Tsize`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbLink {
    /// The child's CID.
    pub cid: Cid,
    /// The entry name; empty for the chunks of a file.
    pub name: String,
    /// Bytes of every block below and including the child.
    pub tsize: u64,
}

/// A decoded dag-pb node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PbNode {
    /// The links, in encoded order.
    pub links: Vec<PbLink>,
    /// The opaque data field (a UnixFS `Data` message in a UnixFS DAG).
    pub data: Option<Bytes>,
}

/// The UnixFS node types Xnode reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// A raw data node (legacy leaves).
    Raw = 0,
    /// A directory whose links are its entries.
    Directory = 1,
    /// A file or a part of one.
    File = 2,
    /// Metadata (unused).
    Metadata = 3,
    /// A symbolic link.
    Symlink = 4,
    /// A shard of a HAMT-sharded directory.
    HamtShard = 5,
}

impl DataType {
    fn from_u64(v: u64) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::Raw,
            1 => Self::Directory,
            2 => Self::File,
            3 => Self::Metadata,
            4 => Self::Symlink,
            5 => Self::HamtShard,
            _ => return Err(DecodeError("unknown UnixFS type")),
        })
    }
}

/// A UnixFS `Data` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixFsData {
    /// What the node is.
    pub kind: DataType,
    /// File bytes held inline (leaves), or the bitfield of a HAMT shard.
    pub data: Option<Bytes>,
    /// Total file bytes below this node (files only).
    pub filesize: Option<u64>,
    /// File bytes under each link, in link order (files only).
    pub blocksizes: Vec<u64>,
    /// Hash function of a HAMT shard (0x22, murmur3-x64-64).
    pub hash_type: Option<u64>,
    /// Width of a HAMT shard.
    pub fanout: Option<u64>,
}

impl UnixFsData {
    /// A message of the given type with every optional field unset.
    pub fn new(kind: DataType) -> Self {
        Self { kind, data: None, filesize: None, blocksizes: Vec::new(), hash_type: None, fanout: None }
    }

    /// Serializes in field-number order, as Go's generated marshaller does.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.data.as_ref().map_or(0, |d| d.len()) + 4 * self.blocksizes.len());
        put_key(&mut out, 1, 0);
        put_varint(&mut out, self.kind as u64);
        if let Some(data) = &self.data {
            put_bytes(&mut out, 2, data);
        }
        if let Some(size) = self.filesize {
            put_key(&mut out, 3, 0);
            put_varint(&mut out, size);
        }
        for size in &self.blocksizes {
            put_key(&mut out, 4, 0);
            put_varint(&mut out, *size);
        }
        if let Some(h) = self.hash_type {
            put_key(&mut out, 5, 0);
            put_varint(&mut out, h);
        }
        if let Some(f) = self.fanout {
            put_key(&mut out, 6, 0);
            put_varint(&mut out, f);
        }
        out
    }

    /// Parses a UnixFS `Data` message; `mode` and `mtime` are accepted and ignored.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let mut kind = None;
        let mut msg = Self::new(DataType::Raw);
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 0) => kind = Some(DataType::from_u64(r.varint()?)?),
                (2, 2) => msg.data = Some(r.bytes()?),
                (3, 0) => msg.filesize = Some(r.varint()?),
                (4, 0) => msg.blocksizes.push(r.varint()?),
                (4, 2) => {
                    // Tolerate packed encoding from other writers.
                    let packed = r.bytes()?;
                    let mut pr = Reader { buf: &packed, pos: 0 };
                    while pr.pos < packed.len() {
                        msg.blocksizes.push(pr.varint()?);
                    }
                }
                (5, 0) => msg.hash_type = Some(r.varint()?),
                (6, 0) => msg.fanout = Some(r.varint()?),
                _ => r.skip(wire)?,
            }
        }
        msg.kind = kind.ok_or(DecodeError("UnixFS Data without a Type"))?;
        Ok(msg)
    }
}

impl PbNode {
    /// Serializes in dag-pb's canonical form: links first, then data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    fn encoded_len(&self) -> usize {
        let links: usize = self.links.iter().map(|l| framed_len(link_body_len(l))).sum();
        links + self.data.as_ref().map_or(0, |d| framed_len(d.len()))
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        for link in &self.links {
            put_key(out, 2, 2);
            put_varint(out, link_body_len(link) as u64);
            let hash = link.cid.to_bytes();
            put_bytes(out, 1, &hash);
            put_bytes(out, 2, link.name.as_bytes());
            put_key(out, 3, 0);
            put_varint(out, link.tsize);
        }
        if let Some(data) = &self.data {
            put_bytes(out, 1, data);
        }
    }

    /// Parses a dag-pb block.
    pub fn decode(buf: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let mut node = PbNode::default();
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 2) => node.data = Some(r.bytes()?),
                (2, 2) => {
                    let body = r.bytes()?;
                    node.links.push(decode_link(&body)?);
                }
                _ => return Err(DecodeError("unexpected field in PBNode")),
            }
        }
        Ok(node)
    }
}

fn decode_link(buf: &Bytes) -> Result<PbLink, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let (mut cid, mut name, mut tsize) = (None, String::new(), 0);
    while let Some((field, wire)) = r.key()? {
        match (field, wire) {
            (1, 2) => {
                let raw = r.bytes()?;
                cid = Some(Cid::try_from(&raw[..]).map_err(|_| DecodeError("invalid CID in PBLink"))?);
            }
            (2, 2) => {
                let raw = r.bytes()?;
                name = String::from_utf8(raw.to_vec()).map_err(|_| DecodeError("PBLink name is not UTF-8"))?;
            }
            (3, 0) => tsize = r.varint()?,
            _ => return Err(DecodeError("unexpected field in PBLink")),
        }
    }
    Ok(PbLink { cid: cid.ok_or(DecodeError("PBLink without a Hash"))?, name, tsize })
}

/// The encoded size of a link inside its `PBNode`, without building it; used to estimate directory block sizes.
pub fn link_encoded_len(cid_len: usize, name_len: usize, tsize: u64) -> usize {
    framed_len(framed_len(cid_len) + framed_len(name_len) + 1 + varint_len(tsize))
}

fn link_body_len(link: &PbLink) -> usize {
    framed_len(link.cid.encoded_len()) + framed_len(link.name.len()) + 1 + varint_len(link.tsize)
}

/// Key byte + length varint + payload.
fn framed_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push((field << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u8, data: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn key(&mut self) -> Result<Option<(u64, u8)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        Ok(Some((key >> 3, (key & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(DecodeError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError("length too large"))?;
        let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len()).ok_or(DecodeError("truncated field"))?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(drop),
            2 => self.bytes().map(drop),
            _ => Err(DecodeError("unsupported wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_leaf_matches_kubo_bytes() {
        let mut d = UnixFsData::new(DataType::File);
        d.filesize = Some(0);
        let node = PbNode { links: vec![], data: Some(d.encode().into()) };
        assert_eq!(node.encode(), [0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]);
    }

    #[test]
    fn roundtrip_node_with_links() {
        let child = crate::block::cid_v0(b"child block");
        let mut d = UnixFsData::new(DataType::File);
        d.filesize = Some(300_000);
        d.blocksizes = vec![262_144, 37_856];
        let node = PbNode {
            links: vec![
                PbLink { cid: child, name: String::new(), tsize: 262_158 },
                PbLink { cid: child, name: "x".into(), tsize: 1 },
            ],
            data: Some(d.encode().into()),
        };
        let bytes = Bytes::from(node.encode());
        assert_eq!(bytes.len(), node.encoded_len());
        let back = PbNode::decode(&bytes).unwrap();
        assert_eq!(back, node);
        assert_eq!(UnixFsData::decode(back.data.as_ref().unwrap()).unwrap(), d);
        let l = &node.links[1];
        assert_eq!(link_encoded_len(l.cid.encoded_len(), 1, 1), framed_len(link_body_len(l)));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let child = crate::block::cid_v0(b"c");
        let node = PbNode { links: vec![PbLink { cid: child, name: "n".into(), tsize: 5 }], data: None };
        let bytes = node.encode();
        for cut in 1..bytes.len() {
            assert!(PbNode::decode(&Bytes::copy_from_slice(&bytes[..cut])).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn kubo_link_size_helper_vectors() {
        // From Kubo's test/cli TestProtobufHelpers: (name len, cid len, tsize) -> serialized link size.
        assert_eq!(link_encoded_len(34, 255, 0), 299);
        assert_eq!(link_encoded_len(36, 255, 0), 301);
        assert_eq!(link_encoded_len(36, 10, 0), 54);
        assert_eq!(link_encoded_len(36, 255, 34_359_738_367), 305);
    }
}
