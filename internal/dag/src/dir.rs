//! Directories: flat UnixFS directories, HAMT-sharded ones above the threshold, and `ipfs add -r` over a path.
//!
//! A HAMT's final shape does not depend on insertion order (boxo collapses shards on removal), so it is built here
//! in one pass: entries are bucketed by the next `log2(fanout)` bits of their name's murmur3-x64-64 hash; a bucket
//! with one entry becomes a value link named `<hex slot><name>`, a bucket with more becomes a child shard linked as
//! `<hex slot>`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cid::Cid;

use crate::block::{cid_v0, cid_v1, Block, DAG_PB};
use crate::file::{import_file, import_file_single_threaded, Added};
use crate::pb::{link_encoded_len, DataType, PbLink, PbNode, UnixFsData};
use crate::{BlockSink, ImportError, ImportOptions, SizeEstimation};

/// Multihash code of murmur3-x64-64, the only HAMT hash UnixFS defines.
pub const HAMT_MURMUR3: u64 = 0x22;

/// Collects a directory's entries, then writes it as a flat directory or a HAMT.
#[derive(Debug)]
pub struct DirectoryBuilder<'o> {
    opts: &'o ImportOptions,
    /// Ordered by name bytes, which is the order dag-pb requires for directory links.
    entries: BTreeMap<String, Added>,
}

impl<'o> DirectoryBuilder<'o> {
    /// An empty directory.
    pub fn new(opts: &'o ImportOptions) -> Self {
        Self { opts, entries: BTreeMap::new() }
    }

    /// Adds (or replaces) an entry.
    pub fn add_entry(&mut self, name: impl Into<String>, child: Added) {
        self.entries.insert(name.into(), child);
    }

    /// Whether the directory goes over the sharding threshold as the configured estimate measures it.
    pub fn needs_sharding(&self) -> bool {
        let estimate: usize = match self.opts.size_estimation {
            SizeEstimation::Links => self.entries.iter().map(|(name, a)| name.len() + a.cid.encoded_len()).sum(),
            SizeEstimation::Block => {
                let links: usize = self
                    .entries
                    .iter()
                    .map(|(name, a)| link_encoded_len(a.cid.encoded_len(), name.len(), a.tsize))
                    .sum();
                links + 4 // the `Data` field: 0a 02 08 01
            }
        };
        estimate > self.opts.hamt_threshold
    }

    /// Writes the directory's blocks to `sink`, root last.
    pub fn build<S: BlockSink + ?Sized>(self, sink: &mut S) -> Result<Added, ImportError> {
        let size = self.entries.values().map(|a| a.size).sum();
        let root = if self.needs_sharding() {
            let mut entries: Vec<HamtEntry> = self
                .entries
                .into_iter()
                .map(|(name, added)| HamtEntry { hash: murmur3_64(&name), name, added })
                .collect();
            entries.sort_by_key(|e| e.hash);
            build_shard(self.opts, entries, 0, sink)?
        } else {
            let links = self
                .entries
                .into_iter()
                .map(|(name, a)| PbLink { cid: a.cid, name, tsize: a.tsize })
                .collect::<Vec<_>>();
            let data = UnixFsData::new(DataType::Directory).encode();
            emit(self.opts, PbNode { links, data: Some(data.into()) }, sink)?
        };
        Ok(Added { size, ..root })
    }
}

struct HamtEntry {
    hash: [u8; 8],
    name: String,
    added: Added,
}

fn build_shard<S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    entries: Vec<HamtEntry>,
    consumed_bits: u32,
    sink: &mut S,
) -> Result<Added, ImportError> {
    let bits = opts.hamt_fanout.trailing_zeros();
    if consumed_bits + bits > 64 {
        return Err(ImportError::HamtTooDeep);
    }
    let pad = format!("{:X}", opts.hamt_fanout - 1).len();
    // Entries arrive sorted by hash, so each slot's entries are contiguous and slots come in increasing order.
    let mut buckets: Vec<(usize, Vec<HamtEntry>)> = Vec::new();
    for e in entries {
        let slot = hash_bits(&e.hash, consumed_bits, bits);
        match buckets.last_mut() {
            Some((s, bucket)) if *s == slot => bucket.push(e),
            _ => buckets.push((slot, vec![e])),
        }
    }
    let mut bitfield = vec![0u8; opts.hamt_fanout / 8];
    let mut links = Vec::with_capacity(buckets.len());
    for (slot, mut bucket) in buckets {
        let len = bitfield.len();
        bitfield[len - 1 - slot / 8] |= 1 << (slot % 8);
        let prefix = format!("{slot:0pad$X}");
        if bucket.len() == 1 {
            let e = bucket.pop().expect("one entry");
            links.push(PbLink { cid: e.added.cid, name: prefix + &e.name, tsize: e.added.tsize });
        } else {
            let child = build_shard(opts, bucket, consumed_bits + bits, sink)?;
            links.push(PbLink { cid: child.cid, name: prefix, tsize: child.tsize });
        }
    }
    // go-bitfield serializes big-endian with leading zero bytes trimmed.
    let first = bitfield.iter().position(|b| *b != 0).unwrap_or(bitfield.len());
    let mut data = UnixFsData::new(DataType::HamtShard);
    data.data = Some(Bytes::copy_from_slice(&bitfield[first..]));
    data.hash_type = Some(HAMT_MURMUR3);
    data.fanout = Some(opts.hamt_fanout as u64);
    emit(opts, PbNode { links, data: Some(data.encode().into()) }, sink)
}

/// The `n` bits after the first `consumed` of a big-endian hash, as boxo's `hashBits.Next` reads them.
fn hash_bits(hash: &[u8; 8], consumed: u32, n: u32) -> usize {
    let v = u64::from_be_bytes(*hash);
    ((v << consumed) >> (64 - n)) as usize
}

/// The first half of murmur3-x64-128 (seed 0), big-endian: what Go's `murmur3.New64().Sum(nil)` returns.
pub fn murmur3_64(name: &str) -> [u8; 8] {
    let h = murmur3::murmur3_x64_128(&mut name.as_bytes(), 0).expect("reading from a slice cannot fail");
    (h as u64).to_be_bytes()
}

fn emit<S: BlockSink + ?Sized>(opts: &ImportOptions, node: PbNode, sink: &mut S) -> Result<Added, ImportError> {
    let children: u64 = node.links.iter().map(|l| l.tsize).sum();
    let data = Bytes::from(node.encode());
    let cid: Cid = if opts.cid_version == 0 { cid_v0(&data) } else { cid_v1(DAG_PB, &data) };
    let added = Added { cid, size: 0, tsize: data.len() as u64 + children };
    sink.put(Block { cid, data }).map_err(ImportError::Sink)?;
    Ok(added)
}

/// Assembles a directory tree from entries that arrive one by one in any order (an upload stream), then writes
/// every directory bottom-up. Paths are relative, `/`-separated, with one top-level name (the root).
#[derive(Debug)]
pub struct TreeBuilder<'o> {
    opts: &'o ImportOptions,
    /// Every path seen; `None` for a directory, the imported child for anything else.
    entries: BTreeMap<PathBuf, Option<Added>>,
}

impl<'o> TreeBuilder<'o> {
    /// An empty tree.
    pub fn new(opts: &'o ImportOptions) -> Self {
        Self { opts, entries: BTreeMap::new() }
    }

    /// Records an imported file or symlink at `path` (its parent directories are implied).
    pub fn add(&mut self, path: &Path, added: Added) {
        self.add_parents(path);
        self.entries.insert(path.to_path_buf(), Some(added));
    }

    /// Records a directory (needed for empty ones; others are implied by their children).
    pub fn add_dir(&mut self, path: &Path) {
        self.add_parents(path);
        self.entries.entry(path.to_path_buf()).or_insert(None);
    }

    fn add_parents(&mut self, path: &Path) {
        for parent in path.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
            self.entries.entry(parent.to_path_buf()).or_insert(None);
        }
    }

    /// Writes the directories to `sink` and returns every entry (`on_entry` order: children before parents),
    /// the root last. Fails if the tree has no single root.
    pub fn build<S: BlockSink + ?Sized>(
        mut self,
        sink: &mut S,
        on_entry: &mut dyn FnMut(&Path, &Added),
    ) -> Result<Added, ImportError> {
        let roots: Vec<PathBuf> = self.entries.keys().filter(|p| p.components().count() == 1).cloned().collect();
        let [root] = roots.as_slice() else {
            return Err(ImportError::Options(format!(
                "an upload needs exactly one top-level entry, found {}",
                roots.len()
            )));
        };
        let root = root.clone();
        self.build_at(&root, sink, on_entry)
    }

    fn build_at<S: BlockSink + ?Sized>(
        &mut self,
        path: &Path,
        sink: &mut S,
        on_entry: &mut dyn FnMut(&Path, &Added),
    ) -> Result<Added, ImportError> {
        if let Some(Some(added)) = self.entries.get(path) {
            let added = *added;
            on_entry(path, &added);
            return Ok(added);
        }
        let children: Vec<PathBuf> = self
            .entries
            .range(path.join("")..)
            .map(|(p, _)| p.clone())
            .take_while(|p| p.starts_with(path))
            .filter(|p| p.parent() == Some(path))
            .collect();
        let mut dir = DirectoryBuilder::new(self.opts);
        for child in children {
            let name = child
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| ImportError::BadName { name: child.clone() })?
                .to_string();
            let added = self.build_at(&child, sink, on_entry)?;
            dir.add_entry(name, added);
        }
        let added = dir.build(sink)?;
        on_entry(path, &added);
        Ok(added)
    }
}

/// Files of at most this many chunks are hashed on the importing thread (a directory of many small files would
/// otherwise start threads per file).
const SMALL_FILE_CHUNKS: usize = 4;

/// A UnixFS symlink node pointing at `target`, as `ipfs add -r` stores symlinks.
pub fn import_symlink<S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    target: &Path,
    sink: &mut S,
) -> Result<Added, ImportError> {
    let mut data = UnixFsData::new(DataType::Symlink);
    data.data = Some(Bytes::from(target.to_string_lossy().into_owned()));
    emit(opts, PbNode { links: vec![], data: Some(data.encode().into()) }, sink)
}

/// Imports a file, or a directory recursively, like `ipfs add -r`. `on_entry` sees every file and directory with its
/// path relative to `path`'s parent, children before their directory, the root last.
pub fn import_path<S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    path: &Path,
    sink: &mut S,
    on_entry: &mut dyn FnMut(&Path, &Added),
) -> Result<Added, ImportError> {
    opts.validate().map_err(ImportError::Options)?;
    let display = PathBuf::from(path.file_name().unwrap_or(path.as_os_str()));
    import_entry(opts, path, &display, sink, on_entry)
}

fn import_entry<S: BlockSink + ?Sized>(
    opts: &ImportOptions,
    path: &Path,
    display: &Path,
    sink: &mut S,
    on_entry: &mut dyn FnMut(&Path, &Added),
) -> Result<Added, ImportError> {
    let io_err = |source| ImportError::Path { path: path.to_path_buf(), source };
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    let added = if meta.file_type().is_symlink() {
        import_symlink(opts, &fs::read_link(path).map_err(io_err)?, sink)?
    } else if meta.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            let name = name.into_string().map_err(|n| ImportError::BadName { name: PathBuf::from(n) })?;
            if opts.include_hidden || !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        let mut dir = DirectoryBuilder::new(opts);
        for name in names {
            let child = import_entry(opts, &path.join(&name), &display.join(&name), sink, on_entry)?;
            dir.add_entry(name, child);
        }
        dir.build(sink)?
    } else {
        let file = fs::File::open(path).map_err(io_err)?;
        let imported = if meta.len() <= (SMALL_FILE_CHUNKS * opts.chunk_size) as u64 {
            import_file_single_threaded(opts, file, sink)
        } else {
            import_file(opts, file, sink)
        };
        imported.map_err(|e| match e {
            ImportError::Read(source) => ImportError::Path { path: path.to_path_buf(), source },
            other => other,
        })?
    };
    on_entry(display, &added);
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_go() {
        // Go: murmur3.New64() over "hello" sums to 0xcbd8a7b341bd9b02 (the h1 half of x64_128).
        assert_eq!(murmur3_64("hello"), 0xcbd8a7b341bd9b02u64.to_be_bytes());
        assert_eq!(murmur3_64(""), [0; 8]);
    }

    #[test]
    fn hash_bits_reads_msb_first() {
        let h = [0xAB, 0xCD, 0, 0, 0, 0, 0, 0];
        assert_eq!(hash_bits(&h, 0, 8), 0xAB);
        assert_eq!(hash_bits(&h, 8, 8), 0xCD);
        assert_eq!(hash_bits(&h, 4, 8), 0xBC);
    }

    #[test]
    fn empty_directory_is_kubos() {
        let opts = ImportOptions::default();
        let mut blocks = Vec::new();
        let a = DirectoryBuilder::new(&opts).build(&mut blocks).unwrap();
        assert_eq!(a.cid.to_string(), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
    }

    #[test]
    fn sharding_threshold_is_strictly_greater() {
        // Kubo's vectors: 4096 links of 30-byte names and CIDv0 (34 bytes) are exactly 256 KiB and stay flat.
        let opts = ImportOptions::default();
        let child = crate::import_file(&opts, &b"x"[..], &mut Vec::new()).unwrap();
        let mut dir = DirectoryBuilder::new(&opts);
        for i in 0..4096 {
            dir.add_entry(format!("{i:030}"), child);
        }
        assert!(!dir.needs_sharding());
        dir.add_entry("one-more", child);
        assert!(dir.needs_sharding());
    }
}
