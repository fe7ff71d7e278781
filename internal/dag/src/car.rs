//! CAR (Content Addressable aRchive) files: the CARv1 stream of blocks the trustless gateway serves and
//! `dag export` writes, and CARv1 or CARv2 on import (<https://ipld.io/specs/transport/car/>).
//!
//! A CARv1 is a varint-prefixed dag-cbor header `{roots: [CID], version: 1}` followed by sections, each a varint
//! length and then a block's CID (binary) and bytes. A CARv2 wraps a CARv1: an 11-byte pragma, a 40-byte header
//! saying where the CARv1 payload starts and how long it is, and an optional index after it, which a streaming
//! reader skips. Pure: reads a [`Read`] and writes a [`Write`], nothing else. Every block read is verified against
//! its CID before it is handed out, so a CAR from anywhere can be trusted as far as its hashes go.
//!
//! The header is the only CBOR in a CAR, and its shape is fixed, so this module encodes it by hand and decodes it
//! with a small, bounded CBOR reader rather than pulling a general dag-cbor library into the workspace.

use std::io::{self, Read, Write};

use bytes::Bytes;
use cid::Cid;

use crate::block::{verify, Block, VerifyError};
use crate::MAX_BLOCK_SIZE;

/// The largest CAR header accepted: a header lists roots, and no sane CAR has thousands of them.
const MAX_HEADER: u64 = 1 << 20;

/// The largest section accepted: a block at the size limit plus the longest CID.
const MAX_SECTION: u64 = MAX_BLOCK_SIZE as u64 + 256;

/// The CARv2 pragma: a CARv1-style header `{version: 2}`, 11 bytes with its length prefix.
const V2_PRAGMA: [u8; 11] = [0x0a, 0xa1, 0x67, b'v', b'e', b'r', b's', b'i', b'o', b'n', 0x02];

/// Bytes of the CARv2 header after the pragma: characteristics (16), data offset, data size, index offset.
const V2_HEADER: usize = 40;

/// Why a CAR could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    /// The input failed (or ended inside a section).
    #[error("reading the CAR failed: {0}")]
    Io(#[from] io::Error),
    /// The header is not a CAR header.
    #[error("not a CAR file: {0}")]
    Header(&'static str),
    /// The header names a CAR version other than 1 or 2.
    #[error("CAR version {0} is not supported (only 1 and 2)")]
    Version(u64),
    /// A section is malformed.
    #[error("malformed CAR section at byte {offset}: {what}")]
    Section {
        /// Where the section starts in the CARv1 payload.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A block's bytes do not hash to its CID.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Writes a CARv1: the header on [`CarWriter::new`], then one section per [`CarWriter::write`].
#[derive(Debug)]
pub struct CarWriter<W> {
    out: W,
}

impl<W: Write> CarWriter<W> {
    /// Starts a CARv1 with these roots.
    pub fn new(mut out: W, roots: &[Cid]) -> io::Result<Self> {
        out.write_all(&header_bytes(roots))?;
        Ok(Self { out })
    }

    /// Appends one block. The caller vouches that `data` is what `cid` names (readers verify it).
    pub fn write(&mut self, cid: &Cid, data: &[u8]) -> io::Result<()> {
        self.out.write_all(&section_prefix(cid, data.len()))?;
        self.out.write_all(data)
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The bytes that open a CARv1 with these roots: the varint length and the dag-cbor header.
pub fn header_bytes(roots: &[Cid]) -> Vec<u8> {
    let mut cbor = Vec::with_capacity(32 + roots.len() * 40);
    cbor_head(&mut cbor, 5, 2); // a map of two entries, keys in dag-cbor order (shorter first)
    cbor_text(&mut cbor, "roots");
    cbor_head(&mut cbor, 4, roots.len() as u64);
    for root in roots {
        cbor_head(&mut cbor, 6, 42); // tag 42: a CID, as bytes with a leading 0x00 (the identity multibase)
        let bytes = root.to_bytes();
        cbor_head(&mut cbor, 2, bytes.len() as u64 + 1);
        cbor.push(0);
        cbor.extend_from_slice(&bytes);
    }
    cbor_text(&mut cbor, "version");
    cbor_head(&mut cbor, 0, 1);
    let mut out = Vec::with_capacity(cbor.len() + 4);
    write_varint(&mut out, cbor.len() as u64);
    out.extend_from_slice(&cbor);
    out
}

/// What precedes a block's bytes in its section: the section's varint length and the CID.
pub fn section_prefix(cid: &Cid, data_len: usize) -> Vec<u8> {
    let cid = cid.to_bytes();
    let mut out = Vec::with_capacity(cid.len() + 10);
    write_varint(&mut out, (cid.len() + data_len) as u64);
    out.extend_from_slice(&cid);
    out
}

/// Reads a CARv1 or CARv2 as a stream of verified blocks.
#[derive(Debug)]
pub struct CarReader<R> {
    input: R,
    roots: Vec<Cid>,
    version: u64,
    /// Bytes of CARv1 payload read so far (for error messages).
    offset: u64,
    /// A CARv2's payload size: the index after it is not blocks. `None` for a CARv1 (blocks until the end).
    remaining: Option<u64>,
}

impl<R: Read> CarReader<R> {
    /// Reads the header (and, for a CARv2, skips to its CARv1 payload).
    pub fn new(mut input: R) -> Result<Self, CarError> {
        let (header, len) = read_header(&mut input)?;
        match header.version {
            1 => Ok(Self { input, roots: header.roots, version: 1, offset: len, remaining: None }),
            2 => {
                let mut fixed = [0u8; V2_HEADER];
                input.read_exact(&mut fixed)?;
                let word = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8 bytes"));
                let (data_offset, data_size) = (word(16), word(24));
                let before = (V2_PRAGMA.len() + V2_HEADER) as u64;
                let skip = data_offset
                    .checked_sub(before)
                    .ok_or(CarError::Header("CARv2 data offset points inside its header"))?;
                io::copy(&mut (&mut input).take(skip), &mut io::sink())?;
                let (inner, len) = read_header(&mut input)?;
                if inner.version != 1 {
                    return Err(CarError::Header("a CARv2 payload must be a CARv1"));
                }
                let remaining = data_size
                    .checked_sub(len)
                    .ok_or(CarError::Header("CARv2 data size is smaller than its CARv1 header"))?;
                Ok(Self { input, roots: inner.roots, version: 2, offset: len, remaining: Some(remaining) })
            }
            v => Err(CarError::Version(v)),
        }
    }

    /// The roots the header lists.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// 1 or 2.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The next block, verified against its CID; `None` at the end of the payload.
    pub fn next_block(&mut self) -> Result<Option<Block>, CarError> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let start = self.offset;
        let bad = |what: String| CarError::Section { offset: start, what };
        let Some((len, varint_len)) = read_varint(&mut self.input)? else {
            return match self.remaining {
                None => Ok(None),
                Some(_) => Err(bad("the CARv2 payload ends before its declared size".into())),
            };
        };
        if len == 0 || len > MAX_SECTION {
            return Err(bad(format!("section of {len} bytes (blocks are at most {MAX_BLOCK_SIZE} bytes)")));
        }
        let total = varint_len + len;
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining =
                remaining.checked_sub(total).ok_or_else(|| bad("section runs past the CARv2 payload".into()))?;
        }
        let mut section = vec![0u8; len as usize];
        self.input.read_exact(&mut section)?;
        self.offset += total;
        let mut rest = &section[..];
        let cid = Cid::read_bytes(&mut rest).map_err(|e| bad(format!("bad CID: {e}")))?;
        let data = Bytes::copy_from_slice(rest);
        verify(&cid, &data)?;
        Ok(Some(Block { cid, data }))
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<Block, CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

struct Header {
    version: u64,
    roots: Vec<Cid>,
}

/// Reads a varint-prefixed dag-cbor CAR header; returns it and the bytes it took.
fn read_header(input: &mut impl Read) -> Result<(Header, u64), CarError> {
    let (len, varint_len) = read_varint(input)?.ok_or(CarError::Header("empty input"))?;
    if len == 0 || len > MAX_HEADER {
        return Err(CarError::Header("header length out of range"));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => CarError::Header("the input ends inside the header"),
        _ => CarError::Io(e),
    })?;
    let mut cursor = Cbor { buf: &buf, pos: 0 };
    let value = cursor.value(0)?;
    if cursor.pos != buf.len() {
        return Err(CarError::Header("trailing bytes after the header"));
    }
    let Value::Map(entries) = value else { return Err(CarError::Header("the header is not a map")) };
    let mut version = None;
    let mut roots = Vec::new();
    for (key, value) in entries {
        match (key, value) {
            (Value::Text(k), Value::Uint(v)) if k == "version" => version = Some(v),
            (Value::Text(k), Value::Array(items)) if k == "roots" => {
                for item in items {
                    let Value::Tag(42, inner) = item else { return Err(CarError::Header("a root is not a CID")) };
                    let Value::Bytes(bytes) = *inner else { return Err(CarError::Header("a root is not a CID")) };
                    let cid = match bytes.split_first() {
                        Some((0, rest)) => Cid::try_from(rest).map_err(|_| CarError::Header("a root is not a CID"))?,
                        _ => return Err(CarError::Header("a root CID lacks its 0x00 prefix")),
                    };
                    roots.push(cid);
                }
            }
            (Value::Text(k), _) if k == "version" || k == "roots" => {
                return Err(CarError::Header("header field of the wrong type"))
            }
            _ => {} // unknown fields are allowed
        }
    }
    let version = version.ok_or(CarError::Header("the header has no version"))?;
    Ok((Header { version, roots }, varint_len + len))
}

/// The CBOR items a CAR header can hold.
#[derive(Debug)]
enum Value {
    Uint(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Tag(u64, Box<Value>),
    /// Negative integers, floats, booleans, null: not part of a CAR header, skipped.
    Other,
}

/// A bounded CBOR reader over a header already in memory.
struct Cbor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cbor<'_> {
    fn byte(&mut self) -> Result<u8, CarError> {
        let b = *self.buf.get(self.pos).ok_or(CarError::Header("truncated header"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&[u8], CarError> {
        let n = usize::try_from(n).map_err(|_| CarError::Header("truncated header"))?;
        let end =
            self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(CarError::Header("truncated header"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A major type and its argument.
    fn head(&mut self) -> Result<(u8, u64), CarError> {
        let b = self.byte()?;
        let (major, info) = (b >> 5, b & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"))),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")),
            _ => return Err(CarError::Header("indefinite lengths are not dag-cbor")),
        };
        Ok((major, arg))
    }

    fn value(&mut self, depth: usize) -> Result<Value, CarError> {
        if depth > 16 {
            return Err(CarError::Header("header nested too deeply"));
        }
        // Every item takes at least one byte, so a count above what is left is a lie, not an allocation to make.
        let left = (self.buf.len() - self.pos) as u64;
        Ok(match self.head()? {
            (0, n) => Value::Uint(n),
            (1, _) => Value::Other,
            (2, n) => Value::Bytes(self.take(n)?.to_vec()),
            (3, n) => Value::Text(
                String::from_utf8(self.take(n)?.to_vec()).map_err(|_| CarError::Header("a text is not UTF-8"))?,
            ),
            (4, n) if n <= left => Value::Array((0..n).map(|_| self.value(depth + 1)).collect::<Result<_, _>>()?),
            (5, n) if n <= left => Value::Map(
                (0..n)
                    .map(|_| Ok((self.value(depth + 1)?, self.value(depth + 1)?)))
                    .collect::<Result<_, CarError>>()?,
            ),
            (6, tag) => Value::Tag(tag, Box::new(self.value(depth + 1)?)),
            (7, _) => Value::Other,
            _ => return Err(CarError::Header("truncated header")),
        })
    }
}

fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// An unsigned LEB128 varint and its length in bytes; `None` at a clean end of input.
fn read_varint(input: &mut impl Read) -> Result<Option<(u64, u64)>, CarError> {
    let mut n = 0u64;
    for i in 0..10u32 {
        let mut b = [0u8; 1];
        if input.read(&mut b)? == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        n |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some((n, u64::from(i) + 1)));
        }
    }
    Err(CarError::Header("varint longer than 10 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v0, cid_v1, RAW};

    fn blocks() -> Vec<Block> {
        let a = Bytes::from_static(b"hello");
        let b = Bytes::from(vec![7u8; 300]);
        vec![Block { cid: cid_v1(RAW, &a), data: a }, Block { cid: cid_v0(&b), data: b }]
    }

    fn car_v1(roots: &[Cid], blocks: &[Block]) -> Vec<u8> {
        let mut w = CarWriter::new(Vec::new(), roots).unwrap();
        for b in blocks {
            w.write(&b.cid, &b.data).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn v1_round_trip_with_cid_v0_and_v1() {
        let blocks = blocks();
        let car = car_v1(&[blocks[1].cid], &blocks);
        let mut r = CarReader::new(&car[..]).unwrap();
        assert_eq!((r.version(), r.roots()), (1, &[blocks[1].cid][..]));
        let read: Vec<Block> = r.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(read, blocks);
    }

    #[test]
    fn v2_payload_is_read_and_its_index_skipped() {
        let blocks = blocks();
        let inner = car_v1(&[blocks[0].cid], &blocks);
        let padding = 13u64;
        let data_offset = (V2_PRAGMA.len() + V2_HEADER) as u64 + padding;
        let mut car = V2_PRAGMA.to_vec();
        car.extend_from_slice(&[0u8; 16]);
        car.extend_from_slice(&data_offset.to_le_bytes());
        car.extend_from_slice(&(inner.len() as u64).to_le_bytes());
        car.extend_from_slice(&(data_offset + inner.len() as u64).to_le_bytes());
        car.extend_from_slice(&vec![0u8; padding as usize]);
        car.extend_from_slice(&inner);
        car.extend_from_slice(b"\x80\x04an index that is not a section");
        let mut r = CarReader::new(&car[..]).unwrap();
        assert_eq!((r.version(), r.roots()), (2, &[blocks[0].cid][..]));
        assert_eq!(r.by_ref().collect::<Result<Vec<_>, _>>().unwrap(), blocks);
    }

    #[test]
    fn tampered_truncated_and_foreign_inputs_are_refused() {
        let blocks = blocks();
        let mut car = car_v1(&[blocks[0].cid], &blocks);
        let last = car.len() - 1;
        car[last] ^= 1;
        let err = CarReader::new(&car[..]).unwrap().collect::<Result<Vec<_>, _>>().unwrap_err();
        assert!(matches!(err, CarError::Verify(VerifyError::Mismatch { cid }) if cid == blocks[1].cid), "{err}");

        let car = car_v1(&[], &blocks);
        let err = CarReader::new(&car[..car.len() - 10]).unwrap().collect::<Result<Vec<_>, _>>().unwrap_err();
        assert!(matches!(err, CarError::Io(_)), "{err}");

        assert!(matches!(CarReader::new(&b"not a car at all"[..]), Err(CarError::Header(_))));
        assert!(matches!(CarReader::new(&b""[..]), Err(CarError::Header(_))));
        // A header claiming a billion array items in a few bytes is refused without allocating them.
        let mut lie = vec![0x07, 0xa1, 0x65];
        lie.extend_from_slice(b"roots");
        lie.push(0x9a);
        assert!(CarReader::new(&lie[..]).is_err());
        let mut v3 = Vec::new();
        let mut cbor = Vec::new();
        cbor_head(&mut cbor, 5, 1);
        cbor_text(&mut cbor, "version");
        cbor_head(&mut cbor, 0, 3);
        write_varint(&mut v3, cbor.len() as u64);
        v3.extend_from_slice(&cbor);
        assert!(matches!(CarReader::new(&v3[..]), Err(CarError::Version(3))));
    }
}
