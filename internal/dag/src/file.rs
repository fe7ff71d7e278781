//! Files into balanced UnixFS DAGs, exactly as boxo's `balanced` layout builds them.
//!
//! The tree grows from the left: the first leaf is the root until a second chunk exists; then each round makes a new
//! root whose first child is the old root and fills it, depth-first, up to `max_links` children. Memory is bounded by
//! `depth x max_links` links, never by the file's size.

use std::io::{self, Read};
use std::sync::mpsc;

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
///
/// A second thread reads ahead while this one hashes, so reading and hashing overlap.
pub fn import_file<R: Read + Send, S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    reader: R,
    sink: &mut S,
) -> Result<Added, ImportError> {
    opts.validate().map_err(ImportError::Options)?;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(READ_AHEAD);
        let size = opts.chunk_size;
        scope.spawn(move || read_chunks(reader, size, &tx));
        let mut builder = Balanced { opts, chunks: Chunker::new(rx)?, sink };
        builder.layout()
        // Returning drops the receiver, which stops the reader if the import failed midway.
    })
}

/// Chunks read ahead of hashing: enough to keep both threads busy, little enough to keep memory flat.
const READ_AHEAD: usize = 8;

/// Room left before a chunk's bytes for the largest leaf header (`0a` len `08 02 12` len), and after it for the
/// trailer (`18` len), so a leaf block is built around the chunk without copying it.
const HEAD_ROOM: usize = 1 + 10 + 2 + 1 + 10;
const TAIL_ROOM: usize = 1 + 10;

/// A chunk of file bytes at `buf[HEAD_ROOM..HEAD_ROOM + len]`.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

fn read_chunks<R: Read>(mut reader: R, size: usize, tx: &mpsc::SyncSender<io::Result<Chunk>>) {
    loop {
        let mut buf = Vec::with_capacity(HEAD_ROOM + size + TAIL_ROOM);
        buf.resize(HEAD_ROOM + size, 0);
        let mut filled = 0;
        while filled < size {
            match reader.read(&mut buf[HEAD_ROOM + filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 || tx.send(Ok(Chunk { buf, len: filled })).is_err() || filled < size {
            return;
        }
    }
}

struct Balanced<'a, S: ?Sized> {
    opts: &'a ImportOptions,
    chunks: Chunker,
    sink: &'a mut S,
}

impl<S: BlockSink + ?Sized> Balanced<'_, S> {
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
        let chunk = self.chunks.next()?.unwrap_or(Chunk { buf: vec![0; HEAD_ROOM], len: 0 });
        let size = chunk.len as u64;
        let block = if self.opts.raw_leaves {
            let data = Bytes::from(chunk.buf).slice(HEAD_ROOM..HEAD_ROOM + chunk.len);
            Block { cid: cid_v1(RAW, &data), data }
        } else {
            let data = file_leaf(chunk);
            let cid = if self.opts.cid_version == 0 { cid_v0(&data) } else { cid_v1(DAG_PB, &data) };
            Block { cid, data }
        };
        let added = Added { cid: block.cid, size, tsize: block.data.len() as u64 };
        self.sink.put(block).map_err(ImportError::Sink)?;
        Ok(added)
    }
}

/// `PBNode { Data: UnixFS { Type: File, Data: chunk, filesize: len } }`, written around the chunk in place: this
/// runs once per 256 KiB of every add, so it neither copies the chunk nor builds the intermediate [`UnixFsData`].
fn file_leaf(chunk: Chunk) -> Bytes {
    let Chunk { mut buf, len } = chunk;
    let n = len as u64;
    let inner_len = 2 + if len == 0 { 0 } else { 1 + varint_len(n) + len } + 1 + varint_len(n);
    let mut head = Vec::with_capacity(HEAD_ROOM);
    head.push(0x0a);
    put_varint(&mut head, inner_len as u64);
    head.extend_from_slice(&[0x08, DataType::File as u8]);
    if len > 0 {
        head.push(0x12);
        put_varint(&mut head, n);
    }
    let start = HEAD_ROOM - head.len();
    buf[start..HEAD_ROOM].copy_from_slice(&head);
    buf.truncate(HEAD_ROOM + len);
    buf.push(0x18);
    put_varint(&mut buf, n);
    Bytes::from(buf).slice(start..)
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
struct Chunker {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    next: Option<Chunk>,
}

impl Chunker {
    fn new(rx: mpsc::Receiver<io::Result<Chunk>>) -> Result<Self, ImportError> {
        let mut c = Self { rx, next: None };
        c.next = c.receive()?;
        Ok(c)
    }

    fn done(&self) -> bool {
        self.next.is_none()
    }

    fn next(&mut self) -> Result<Option<Chunk>, ImportError> {
        let out = self.next.take();
        if out.is_some() {
            self.next = self.receive()?;
        }
        Ok(out)
    }

    fn receive(&mut self) -> Result<Option<Chunk>, ImportError> {
        match self.rx.recv() {
            Ok(Ok(chunk)) => Ok(Some(chunk)),
            Ok(Err(e)) => Err(ImportError::Read(e)),
            // The reader hung up: end of input.
            Err(mpsc::RecvError) => Ok(None),
        }
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
            let mut buf = vec![0u8; HEAD_ROOM];
            buf.extend_from_slice(&chunk);
            assert_eq!(file_leaf(Chunk { buf, len }), generic, "len {len}");
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
