//! Reading DAGs back: a file as a byte stream from any offset, a directory's entries (flat or HAMT), and the links
//! of any block (for walking a whole DAG).
//!
//! A seek descends by the `blocksizes` of each interior node, so reading the last byte of a file fetches one block
//! per level and no leaf before it.

use std::collections::VecDeque;
use std::io::{self, Read};

use bytes::Bytes;
use cid::Cid;

use crate::block::{DAG_PB, RAW};
use crate::pb::{DataType, DecodeError, PbNode, UnixFsData};

/// Anything that can hand out blocks by CID: the local store, the network.
pub trait BlockSource {
    /// The block's bytes. Implementations verify them against `cid` (or trust a store that did).
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError>;
}

impl<T: BlockSource + ?Sized> BlockSource for &T {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        (**self).get_block(cid)
    }
}

/// Why a DAG could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No source has the block.
    #[error("block {0} is not available")]
    NotFound(Cid),
    /// A block is not valid dag-pb/UnixFS.
    #[error("block {cid} is malformed: {source}")]
    Malformed {
        /// The block.
        cid: Cid,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// The DAG is valid but not of the kind asked for (e.g. `cat` of a directory).
    #[error("{cid} is a {found}, not a {wanted}")]
    WrongKind {
        /// The node.
        cid: Cid,
        /// What it is.
        found: &'static str,
        /// What was expected.
        wanted: &'static str,
    },
    /// The DAG's sizes do not add up.
    #[error("block {cid} is inconsistent: {what}")]
    Inconsistent {
        /// The node.
        cid: Cid,
        /// What does not add up.
        what: &'static str,
    },
    /// A path names an entry its directory does not have (or goes through something that is not a directory).
    #[error("{cid} has no entry named {name:?}")]
    NoSuchEntry {
        /// The directory (or file) the path went through.
        cid: Cid,
        /// The missing name.
        name: String,
    },
    /// The source failed.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
}

/// What a UnixFS node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A file of this many bytes.
    File {
        /// Bytes.
        size: u64,
    },
    /// A directory (flat or sharded).
    Directory,
    /// A symbolic link to this target.
    Symlink {
        /// The target path.
        target: String,
    },
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// Its root.
    pub cid: Cid,
    /// Bytes of its whole DAG.
    pub tsize: u64,
}

pub(crate) fn decode(cid: &Cid, data: &Bytes) -> Result<(PbNode, UnixFsData), ReadError> {
    let malformed = |source| ReadError::Malformed { cid: *cid, source };
    let node = PbNode::decode(data).map_err(malformed)?;
    let fs = match &node.data {
        Some(d) => UnixFsData::decode(d).map_err(malformed)?,
        None => return Err(malformed(DecodeError("dag-pb node without UnixFS data"))),
    };
    Ok((node, fs))
}

pub(crate) fn unsupported_codec(cid: &Cid) -> ReadError {
    ReadError::Malformed { cid: *cid, source: DecodeError("unsupported codec (only dag-pb and raw are UnixFS)") }
}

/// The CIDs a block links to, in order; raw blocks have none. Used to walk whole DAGs.
pub fn block_links(cid: &Cid, data: &Bytes) -> Result<Vec<Cid>, ReadError> {
    match cid.codec() {
        RAW => Ok(Vec::new()),
        DAG_PB => Ok(PbNode::decode(data)
            .map_err(|source| ReadError::Malformed { cid: *cid, source })?
            .links
            .into_iter()
            .map(|l| l.cid)
            .collect()),
        _ => Err(unsupported_codec(cid)),
    }
}

/// What the node at `cid` is, from its root block alone.
pub fn stat(source: &dyn BlockSource, cid: &Cid) -> Result<NodeKind, ReadError> {
    let data = source.get_block(cid)?;
    if cid.codec() == RAW {
        return Ok(NodeKind::File { size: data.len() as u64 });
    }
    if cid.codec() != DAG_PB {
        return Err(unsupported_codec(cid));
    }
    let (node, fs) = decode(cid, &data)?;
    Ok(match fs.kind {
        DataType::Directory | DataType::HamtShard => NodeKind::Directory,
        DataType::Symlink => {
            NodeKind::Symlink { target: String::from_utf8_lossy(fs.data.as_deref().unwrap_or_default()).into_owned() }
        }
        DataType::File | DataType::Raw => NodeKind::File {
            size: fs.filesize.unwrap_or_else(|| {
                fs.data.as_ref().map_or(0, |d| d.len() as u64)
                    + fs.blocksizes.iter().sum::<u64>() * u64::from(!node.links.is_empty())
            }),
        },
        DataType::Metadata => return Err(ReadError::WrongKind { cid: *cid, found: "metadata node", wanted: "file" }),
    })
}

/// The entries of a directory, flat or HAMT-sharded, in name order.
pub fn list_directory(source: &dyn BlockSource, cid: &Cid) -> Result<Vec<DirEntry>, ReadError> {
    let data = source.get_block(cid)?;
    if cid.codec() != DAG_PB {
        return Err(ReadError::WrongKind { cid: *cid, found: "file", wanted: "directory" });
    }
    let (node, fs) = decode(cid, &data)?;
    let mut out = Vec::new();
    match fs.kind {
        DataType::Directory => {
            out.extend(node.links.into_iter().map(|l| DirEntry { name: l.name, cid: l.cid, tsize: l.tsize }))
        }
        DataType::HamtShard => collect_shard(source, cid, node, &fs, &mut out, 0)?,
        _ => return Err(ReadError::WrongKind { cid: *cid, found: "file", wanted: "directory" }),
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// How deep a HAMT may nest: a 64-bit name hash consumed at least one bit per level (fanout 2) is spent by 64
/// levels, so anything deeper is crafted, and would otherwise recurse until the stack overflows.
const MAX_HAMT_DEPTH: usize = 64;

fn collect_shard(
    source: &dyn BlockSource,
    cid: &Cid,
    node: PbNode,
    fs: &UnixFsData,
    out: &mut Vec<DirEntry>,
    depth: usize,
) -> Result<(), ReadError> {
    let fanout = fs.fanout.ok_or(ReadError::Inconsistent { cid: *cid, what: "HAMT shard without fanout" })?;
    let pad = format!("{:X}", fanout.saturating_sub(1)).len();
    for link in node.links {
        if link.name.len() < pad {
            return Err(ReadError::Inconsistent { cid: *cid, what: "HAMT link name shorter than its prefix" });
        }
        if link.name.len() == pad {
            if depth >= MAX_HAMT_DEPTH {
                return Err(ReadError::Inconsistent { cid: link.cid, what: "HAMT deeper than a 64-bit hash allows" });
            }
            let data = source.get_block(&link.cid)?;
            let (child, child_fs) = decode(&link.cid, &data)?;
            if child_fs.kind != DataType::HamtShard {
                return Err(ReadError::Inconsistent { cid: link.cid, what: "HAMT child is not a shard" });
            }
            collect_shard(source, &link.cid, child, &child_fs, out, depth + 1)?;
        } else {
            // The prefix is hex digits: a name whose prefix ends inside a UTF-8 character is malformed, not a panic.
            let name = link
                .name
                .get(pad..)
                .filter(|_| link.name.as_bytes()[..pad].iter().all(u8::is_ascii_hexdigit))
                .ok_or(ReadError::Inconsistent { cid: *cid, what: "HAMT link name without a hex prefix" })?;
            out.push(DirEntry { name: name.to_string(), cid: link.cid, tsize: link.tsize });
        }
    }
    Ok(())
}

/// A file's bytes as a stream, from `offset` for at most `limit` bytes.
pub struct FileReader<S> {
    source: S,
    /// Interior nodes still to visit, outermost first; each holds the children not yet read.
    stack: Vec<VecDeque<Cid>>,
    /// The rest of the current leaf, not yet counted against `remaining`.
    current: Bytes,
    remaining: u64,
    /// What `next_chunk` returned that `Read::read` has not copied out yet.
    handed: Bytes,
}

impl<S: BlockSource> FileReader<S> {
    /// Opens the file at `root`, positioned at `offset`, reading at most `limit` bytes (`u64::MAX`: to the end).
    pub fn open(source: S, root: &Cid, offset: u64, limit: u64) -> Result<Self, ReadError> {
        let mut reader =
            Self { source, stack: Vec::new(), current: Bytes::new(), remaining: limit, handed: Bytes::new() };
        reader.descend(root, offset)?;
        Ok(reader)
    }

    /// Loads `cid` and positions inside it at `skip` bytes, pushing the interior nodes on the way down.
    fn descend(&mut self, cid: &Cid, mut skip: u64) -> Result<(), ReadError> {
        let mut cid = *cid;
        loop {
            let data = self.source.get_block(&cid)?;
            if cid.codec() == RAW {
                self.current = data.slice(usize::try_from(skip).unwrap_or(usize::MAX).min(data.len())..);
                return Ok(());
            }
            if cid.codec() != DAG_PB {
                return Err(unsupported_codec(&cid));
            }
            let (node, fs) = decode(&cid, &data)?;
            match fs.kind {
                DataType::File | DataType::Raw => {}
                DataType::Directory | DataType::HamtShard => {
                    return Err(ReadError::WrongKind { cid, found: "directory", wanted: "file" })
                }
                _ => return Err(ReadError::WrongKind { cid, found: "non-file node", wanted: "file" }),
            }
            if node.links.is_empty() {
                let inline = fs.data.unwrap_or_default();
                self.current = inline.slice(usize::try_from(skip).unwrap_or(usize::MAX).min(inline.len())..);
                return Ok(());
            }
            if fs.blocksizes.len() != node.links.len() {
                return Err(ReadError::Inconsistent { cid, what: "blocksizes and links differ in number" });
            }
            if fs.data.as_ref().is_some_and(|d| !d.is_empty()) {
                return Err(ReadError::Inconsistent { cid, what: "interior node carries file data" });
            }
            let mut children: VecDeque<Cid> = node.links.into_iter().map(|l| l.cid).collect();
            let mut sizes = fs.blocksizes.into_iter();
            // Skip whole children before the offset without fetching them.
            loop {
                match sizes.next() {
                    Some(size) if skip >= size => {
                        skip -= size;
                        children.pop_front();
                    }
                    Some(_) => break,
                    None => {
                        // Offset at or past the end: nothing left to read.
                        children.clear();
                        break;
                    }
                }
            }
            let Some(next) = children.pop_front() else {
                self.current = Bytes::new();
                return Ok(());
            };
            self.stack.push(children);
            cid = next;
        }
    }

    /// The next piece of the file, or `None` at the end. Zero-copy: pieces are slices of leaf blocks.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        while self.remaining > 0 {
            if !self.current.is_empty() {
                let take = self.current.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let out = self.current.split_to(take);
                self.remaining -= take as u64;
                return Ok(Some(out));
            }
            let Some(top) = self.stack.last_mut() else { return Ok(None) };
            match top.pop_front() {
                Some(next) => self.descend(&next, 0)?,
                None => {
                    self.stack.pop();
                }
            }
        }
        Ok(None)
    }
}

impl<S: BlockSource> Read for FileReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.handed.is_empty() {
            match self.next_chunk() {
                Ok(Some(chunk)) => self.handed = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.handed.len());
        buf[..n].copy_from_slice(&self.handed.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{import_file, Block, ImportOptions};
    use std::cell::RefCell;
    use std::collections::HashMap;

    struct Mem {
        blocks: HashMap<Cid, Bytes>,
        fetched: RefCell<Vec<Cid>>,
    }

    impl BlockSource for Mem {
        fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
            self.fetched.borrow_mut().push(*cid);
            self.blocks.get(cid).cloned().ok_or(ReadError::NotFound(*cid))
        }
    }

    fn build(opts: &ImportOptions, data: &[u8]) -> (Cid, Mem, Vec<Block>) {
        let mut blocks = Vec::new();
        let added = import_file(opts, data, &mut blocks).unwrap();
        let mem = Mem { blocks: blocks.iter().map(|b| (b.cid, b.data.clone())).collect(), fetched: RefCell::default() };
        (added.cid, mem, blocks)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn reads_back_every_layout() {
        let data = pattern(50_000);
        let small = ImportOptions { chunk_size: 1000, max_links: 4, ..ImportOptions::default() };
        for opts in [small.clone(), small.with_cid_version(1), ImportOptions::default()] {
            let (root, mem, _) = build(&opts, &data);
            let mut out = Vec::new();
            FileReader::open(&mem, &root, 0, u64::MAX).unwrap().read_to_end(&mut out).unwrap();
            assert!(out == data, "read back {} bytes", out.len());
            assert_eq!(stat(&mem, &root).unwrap(), NodeKind::File { size: 50_000 });
        }
    }

    #[test]
    fn ranges_are_exact_and_skip_earlier_leaves() {
        let data = pattern(50_000);
        let opts = ImportOptions { chunk_size: 1000, max_links: 4, ..ImportOptions::default() };
        let (root, mem, blocks) = build(&opts, &data);
        for (off, len) in [(0, 1), (999, 2), (1000, 1000), (12_345, 20_000), (49_999, 10), (50_000, 5), (70_000, 1)] {
            let mut out = Vec::new();
            FileReader::open(&mem, &root, off, len).unwrap().read_to_end(&mut out).unwrap();
            let end = (off + len).min(50_000) as usize;
            let start = (off as usize).min(end);
            assert!(out == data[start..end], "range {off}+{len}: got {} bytes", out.len());
        }
        mem.fetched.borrow_mut().clear();
        let mut out = Vec::new();
        FileReader::open(&mem, &root, 49_999, 1).unwrap().read_to_end(&mut out).unwrap();
        let leaves: Vec<_> = blocks.iter().filter(|b| b.data.len() > 1000).map(|b| b.cid).collect();
        let touched_leaves = mem.fetched.borrow().iter().filter(|c| leaves.contains(c)).count();
        assert_eq!(touched_leaves, 1, "only the last leaf is read");
    }

    #[test]
    fn missing_block_names_the_cid() {
        let data = pattern(5000);
        let opts = ImportOptions { chunk_size: 1000, ..ImportOptions::default() };
        let (root, mut mem, blocks) = build(&opts, &data);
        let gone = blocks[2].cid;
        mem.blocks.remove(&gone);
        let mut out = Vec::new();
        let err = FileReader::open(&mem, &root, 0, u64::MAX).unwrap().read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains(&gone.to_string()), "{err}");
    }

    /// A HAMT shard block with these links (fanout 256: two hex digits of prefix).
    fn shard(links: Vec<(String, Cid)>) -> (Cid, Bytes) {
        let mut fs = UnixFsData::new(DataType::HamtShard);
        fs.fanout = Some(256);
        fs.hash_type = Some(0x22);
        let node = PbNode {
            links: links.into_iter().map(|(name, cid)| crate::pb::PbLink { cid, name, tsize: 1 }).collect(),
            data: Some(Bytes::from(fs.encode())),
        };
        let data = Bytes::from(node.encode());
        (crate::cid_v0(&data), data)
    }

    #[test]
    fn hostile_hamt_names_and_depths_are_errors_not_panics() {
        let (leaf, mem, _) = build(&ImportOptions::default(), b"x");
        // "A" then "é" (2 bytes): the 2-byte prefix ends inside the character.
        for name in ["Aé", "é", "zzname"] {
            let (root, data) = shard(vec![(name.to_string(), leaf)]);
            let mut mem = Mem { blocks: mem.blocks.clone(), fetched: RefCell::default() };
            mem.blocks.insert(root, data);
            let err = list_directory(&mem, &root).unwrap_err();
            assert!(matches!(err, ReadError::Inconsistent { .. }), "{name}: {err}");
        }
        // A chain of shards deeper than any 64-bit hash allows.
        let mut mem = Mem { blocks: mem.blocks.clone(), fetched: RefCell::default() };
        let (mut top, data) = shard(vec![("00file".to_string(), leaf)]);
        mem.blocks.insert(top, data);
        for _ in 0..100 {
            let (next, data) = shard(vec![("00".to_string(), top)]);
            mem.blocks.insert(next, data);
            top = next;
        }
        let err = list_directory(&mem, &top).unwrap_err();
        assert!(err.to_string().contains("deeper"), "{err}");
    }
}
