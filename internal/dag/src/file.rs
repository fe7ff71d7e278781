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
/// Hashing is the bottleneck of an add (SHA-256 runs near 1 GiB/s per core, slower than a disk), so leaves are made
/// on worker threads: one thread reads chunks and deals them round-robin to the hashers, and this thread collects
/// the leaves in the same order and builds the tree above them.
pub fn import_file<R: Read + Send, S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    reader: R,
    sink: &mut S,
) -> Result<Added, ImportError> {
    opts.validate().map_err(ImportError::Options)?;
    let hashers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_HASHERS);
    std::thread::scope(|scope| {
        let mut to_hashers = Vec::with_capacity(hashers);
        let mut from_hashers = Vec::with_capacity(hashers);
        for _ in 0..hashers {
            let (chunk_tx, chunk_rx) = mpsc::sync_channel::<io::Result<Chunk>>(READ_AHEAD);
            let (leaf_tx, leaf_rx) = mpsc::sync_channel::<io::Result<Leaf>>(READ_AHEAD);
            let leaf_opts = (opts.raw_leaves, opts.cid_version);
            scope.spawn(move || {
                for chunk in chunk_rx {
                    if leaf_tx.send(chunk.map(|c| make_leaf(c, leaf_opts))).is_err() {
                        return;
                    }
                }
            });
            to_hashers.push(chunk_tx);
            from_hashers.push(leaf_rx);
        }
        let size = opts.chunk_size;
        scope.spawn(move || read_chunks(reader, size, &to_hashers));
        let mut builder = Balanced { opts, chunks: Chunker::from_workers(from_hashers)?, sink };
        builder.layout()
        // Returning drops the receivers, which stops the workers if the import failed midway.
    })
}

/// Imports a file on the calling thread alone: for inputs of a few chunks, where starting threads would cost more
/// than hashing, and for readers that cannot cross threads (entries of a tar stream).
pub fn import_file_single_threaded<R: Read, S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    reader: R,
    sink: &mut S,
) -> Result<Added, ImportError> {
    opts.validate().map_err(ImportError::Options)?;
    Balanced { opts, chunks: Chunker::inline(reader, opts)?, sink }.layout()
}

/// Chunks queued per hasher: enough to keep every thread busy, little enough to keep memory flat.
const READ_AHEAD: usize = 4;
/// More hashers than this only add memory: the reader and the disk become the limit.
const MAX_HASHERS: usize = 4;

/// A finished leaf: its block and what its parent needs to know.
struct Leaf {
    block: Block,
    added: Added,
}

fn make_leaf(chunk: Chunk, (raw_leaves, cid_version): (bool, u8)) -> Leaf {
    let size = chunk.len as u64;
    let block = if raw_leaves {
        let data = Bytes::from(chunk.buf).slice(HEAD_ROOM..HEAD_ROOM + chunk.len);
        Block { cid: cid_v1(RAW, &data), data }
    } else {
        let data = file_leaf(chunk);
        let cid = if cid_version == 0 { cid_v0(&data) } else { cid_v1(DAG_PB, &data) };
        Block { cid, data }
    };
    let added = Added { cid: block.cid, size, tsize: block.data.len() as u64 };
    Leaf { block, added }
}

/// Room left before a chunk's bytes for the largest leaf header (`0a` len `08 02 12` len), and after it for the
/// trailer (`18` len), so a leaf block is built around the chunk without copying it.
const HEAD_ROOM: usize = 1 + 10 + 2 + 1 + 10;
const TAIL_ROOM: usize = 1 + 10;

/// A chunk of file bytes at `buf[HEAD_ROOM..HEAD_ROOM + len]`.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

/// Reads fixed-size chunks and deals them to the hashers in turn, so chunk `i` goes to hasher `i % n`.
fn read_chunks<R: Read>(mut reader: R, size: usize, hashers: &[mpsc::SyncSender<io::Result<Chunk>>]) {
    for tx in hashers.iter().cycle() {
        match read_chunk(&mut reader, size) {
            Ok(None) => return,
            Ok(Some(chunk)) => {
                let last = chunk.len < size;
                if tx.send(Ok(chunk)).is_err() || last {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

/// The next chunk: `size` bytes, fewer at the end of the input, `None` after it.
fn read_chunk<R: Read + ?Sized>(reader: &mut R, size: usize) -> io::Result<Option<Chunk>> {
    let mut buf = Vec::with_capacity(HEAD_ROOM + size + TAIL_ROOM);
    buf.resize(HEAD_ROOM + size, 0);
    let mut filled = 0;
    while filled < size {
        match reader.read(&mut buf[HEAD_ROOM + filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    if filled < size / 2 {
        // A short last chunk would otherwise pin a whole chunk-sized allocation for as long as its block lives.
        buf.truncate(HEAD_ROOM + filled);
        buf.reserve_exact(TAIL_ROOM);
        buf.shrink_to(HEAD_ROOM + filled + TAIL_ROOM);
    }
    Ok(Some(Chunk { buf, len: filled }))
}

struct Balanced<'a, S: ?Sized> {
    opts: &'a ImportOptions,
    chunks: Chunker<'a>,
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

    /// The next leaf; an empty leaf when the input is empty.
    fn leaf(&mut self) -> Result<Added, ImportError> {
        let leaf = match self.chunks.next()? {
            Some(leaf) => leaf,
            None => make_leaf(Chunk { buf: vec![0; HEAD_ROOM], len: 0 }, (self.opts.raw_leaves, self.opts.cid_version)),
        };
        self.sink.put(leaf.block).map_err(ImportError::Sink)?;
        Ok(leaf.added)
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

/// Leaves in file order with one of look-ahead, so "is there more?" is known before a node is closed.
struct Chunker<'r> {
    source: Box<dyn FnMut() -> Result<Option<Leaf>, ImportError> + 'r>,
    next: Option<Leaf>,
}

impl<'r> Chunker<'r> {
    /// Leaves from hashing threads, collected in the order chunks were dealt to them.
    fn from_workers(hashers: Vec<mpsc::Receiver<io::Result<Leaf>>>) -> Result<Self, ImportError> {
        let mut turn = 0;
        Self::new(Box::new(move || {
            let rx = &hashers[turn];
            turn = (turn + 1) % hashers.len();
            match rx.recv() {
                Ok(Ok(leaf)) => Ok(Some(leaf)),
                Ok(Err(e)) => Err(ImportError::Read(e)),
                // The reader stopped dealing: end of input.
                Err(mpsc::RecvError) => Ok(None),
            }
        }))
    }

    /// Leaves read and hashed on this thread: for small files, where starting threads costs more than it saves.
    fn inline<R: Read + 'r>(mut reader: R, opts: &ImportOptions) -> Result<Self, ImportError> {
        let (size, leaf_opts) = (opts.chunk_size, (opts.raw_leaves, opts.cid_version));
        Self::new(Box::new(move || {
            Ok(read_chunk(&mut reader, size).map_err(ImportError::Read)?.map(|c| make_leaf(c, leaf_opts)))
        }))
    }

    fn new(mut source: Box<dyn FnMut() -> Result<Option<Leaf>, ImportError> + 'r>) -> Result<Self, ImportError> {
        let next = source()?;
        Ok(Self { source, next })
    }

    fn done(&self) -> bool {
        self.next.is_none()
    }

    fn next(&mut self) -> Result<Option<Leaf>, ImportError> {
        let out = self.next.take();
        if out.is_some() {
            self.next = (self.source)()?;
        }
        Ok(out)
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
