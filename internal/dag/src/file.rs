//! Files into balanced UnixFS DAGs, exactly as boxo's `balanced` layout builds them.
//!
//! The tree grows from the left: the first leaf is the root until a second chunk exists; then each round makes a new
//! root whose first child is the old root and fills it, depth-first, up to `max_links` children. Memory is bounded by
//! `depth x max_links` links, never by the file's size.

use std::io::{self, Read};

use bytes::Bytes;
use cid::Cid;

use crate::block::{cid_v0, cid_v1, Block, DAG_PB, RAW};
use crate::pb::{put_varint, varint_len, DataType, PbLink, PbNode, UnixFsData};
use crate::{BlockSink, ImportError, ImportOptions};

/// What importing a file or directory produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    /// The root of the DAG.
    pub cid: Cid,
    /// File bytes (for a directory: the sum over the files below it).
    pub size: u64,
    /// Bytes of every block of the DAG, as dag-pb links count them (`Tsize`).
    pub tsize: u64,
}

/// Imports one file from `reader`, handing every block to `sink` leaves first, root last.
pub fn import_file<R: Read, S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    reader: R,
    sink: &mut S,
) -> Result<Added, ImportError> {
    opts.validate().map_err(ImportError::Options)?;
    let mut builder = Balanced { opts, chunks: Chunker::new(reader, opts.chunk_size)?, sink };
    builder.layout()
}

struct Balanced<'a, R, S: ?Sized> {
    opts: &'a ImportOptions,
    chunks: Chunker<R>,
    sink: &'a mut S,
}

impl<R: Read, S: BlockSink + ?Sized> Balanced<'_, R, S> {
    fn layout(&mut self) -> Result<Added, ImportError> {
        let mut root = self.leaf()?;
        let mut depth = 1;
        while !self.chunks.done() {
            let mut node = Interior::default();
            node.push(root);
            root = self.fill(node, depth)?;
            depth += 1;
        }
        Ok(root)
    }

    fn fill(&mut self, mut node: Interior, depth: usize) -> Result<Added, ImportError> {
        while node.links.len() < self.opts.max_links && !self.chunks.done() {
            let child = if depth == 1 { self.leaf()? } else { self.fill(Interior::default(), depth - 1)? };
            node.push(child);
        }
        let (block, added) = node.encode(self.opts.cid_version);
        self.sink.put(block).map_err(ImportError::Sink)?;
        Ok(added)
    }

    /// The next chunk as a leaf; an empty leaf when the input is empty.
    fn leaf(&mut self) -> Result<Added, ImportError> {
        let chunk = self.chunks.next()?.unwrap_or_default();
        let size = chunk.len() as u64;
        let block = if self.opts.raw_leaves {
            let data = Bytes::from(chunk);
            Block { cid: cid_v1(RAW, &data), data }
        } else {
            let data = Bytes::from(file_leaf_bytes(&chunk));
            let cid = if self.opts.cid_version == 0 { cid_v0(&data) } else { cid_v1(DAG_PB, &data) };
            Block { cid, data }
        };
        let added = Added { cid: block.cid, size, tsize: block.data.len() as u64 };
        self.sink.put(block).map_err(ImportError::Sink)?;
        Ok(added)
    }
}

/// `PBNode { Data: UnixFS { Type: File, Data: chunk, filesize: len } }`, written in one allocation: this runs once
/// per 256 KiB of every add, so it avoids the intermediate message [`UnixFsData::encode`] would build.
fn file_leaf_bytes(chunk: &[u8]) -> Vec<u8> {
    let n = chunk.len() as u64;
    let inner_len = 2 + if chunk.is_empty() { 0 } else { 1 + varint_len(n) + chunk.len() } + 1 + varint_len(n);
    let mut out = Vec::with_capacity(1 + varint_len(inner_len as u64) + inner_len);
    out.push(0x0a);
    put_varint(&mut out, inner_len as u64);
    out.extend_from_slice(&[0x08, DataType::File as u8]);
    if !chunk.is_empty() {
        out.push(0x12);
        put_varint(&mut out, n);
        out.extend_from_slice(chunk);
    }
    out.push(0x18);
    put_varint(&mut out, n);
    out
}

#[derive(Default)]
struct Interior {
    links: Vec<PbLink>,
    sizes: Vec<u64>,
}

impl Interior {
    fn push(&mut self, child: Added) {
        self.links.push(PbLink { cid: child.cid, name: String::new(), tsize: child.tsize });
        self.sizes.push(child.size);
    }

    fn filesize(&self) -> u64 {
        self.sizes.iter().sum()
    }

    fn encode(self, cid_version: u8) -> (Block, Added) {
        let size = self.filesize();
        let children_tsize: u64 = self.links.iter().map(|l| l.tsize).sum();
        let mut data = UnixFsData::new(DataType::File);
        data.filesize = Some(size);
        data.blocksizes = self.sizes;
        let bytes = Bytes::from(PbNode { links: self.links, data: Some(data.encode().into()) }.encode());
        let cid = if cid_version == 0 { cid_v0(&bytes) } else { cid_v1(DAG_PB, &bytes) };
        let added = Added { cid, size, tsize: bytes.len() as u64 + children_tsize };
        (Block { cid, data: bytes }, added)
    }
}

/// Fixed-size chunks with one chunk of look-ahead, so "is there more?" is known before a node is closed.
struct Chunker<R> {
    reader: R,
    size: usize,
    next: Option<Vec<u8>>,
}

impl<R: Read> Chunker<R> {
    fn new(reader: R, size: usize) -> Result<Self, ImportError> {
        let mut c = Self { reader, size, next: None };
        c.next = c.read_chunk()?;
        Ok(c)
    }

    fn done(&self) -> bool {
        self.next.is_none()
    }

    fn next(&mut self) -> Result<Option<Vec<u8>>, ImportError> {
        let out = self.next.take();
        if out.is_some() {
            self.next = self.read_chunk()?;
        }
        Ok(out)
    }

    fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, ImportError> {
        let mut buf = vec![0u8; self.size];
        let mut filled = 0;
        while filled < self.size {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImportError::Read(e)),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(opts: &ImportOptions, data: &[u8]) -> (Added, Vec<Block>) {
        let mut blocks = Vec::new();
        let added = import_file(opts, data, &mut blocks).unwrap();
        (added, blocks)
    }

    #[test]
    fn empty_file_is_kubos_empty_file() {
        let (a, blocks) = add(&ImportOptions::default(), b"");
        assert_eq!(a.cid.to_string(), "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH");
        assert_eq!((a.size, a.tsize, blocks.len()), (0, 6, 1));
    }

    #[test]
    fn hello_world_vectors_from_kubo() {
        let (v0, _) = add(&ImportOptions::default(), b"hello world");
        assert_eq!(v0.cid.to_string(), "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD");
        let (v1, _) = add(&ImportOptions::profile(crate::Profile::UnixfsV1_2025), b"hello world");
        assert_eq!(v1.cid.to_string(), "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e");
    }

    #[test]
    fn leaf_fast_path_matches_generic_encoding() {
        for len in [0usize, 1, 127, 128, 300, 262_144] {
            let chunk = vec![7u8; len];
            let mut d = UnixFsData::new(DataType::File);
            d.data = (!chunk.is_empty()).then(|| Bytes::from(chunk.clone()));
            d.filesize = Some(len as u64);
            let generic = PbNode { links: vec![], data: Some(d.encode().into()) }.encode();
            assert_eq!(file_leaf_bytes(&chunk), generic, "len {len}");
        }
    }

    #[test]
    fn tree_shape_follows_max_links() {
        let opts = ImportOptions { chunk_size: 4, max_links: 3, ..ImportOptions::default() };
        // 3 chunks fit under one root; the 4th forces a new level with the full node as the first child.
        let (a, blocks) = add(&opts, b"aaaabbbbcccc");
        assert_eq!(blocks.len(), 4);
        let root = PbNode::decode(&blocks.last().unwrap().data).unwrap();
        assert_eq!((a.size, root.links.len()), (12, 3));
        let (b, blocks) = add(&opts, b"aaaabbbbccccd");
        let root = PbNode::decode(&blocks.last().unwrap().data).unwrap();
        assert_eq!((b.size, root.links.len()), (13, 2));
        let sizes = UnixFsData::decode(root.data.as_ref().unwrap()).unwrap().blocksizes;
        assert_eq!(sizes, vec![12, 1]);
        let total: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
        assert_eq!(b.tsize, total, "Tsize counts every block once");
    }
}
