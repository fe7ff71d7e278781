//! The node's file operations over its own store: add (import + store + pin in one commit), cat with ranges, get
//! of files and directories, list, remove.
//!
//! Owns the glue between `xnode-dag` (shapes) and `xnode-storage` (bytes on disk). Never parses flags or reads the
//! environment: the binary hands it a data directory and a capacity. [`Node`] is the running node: the store plus
//! its membership in the cluster.

mod alloc;
mod car;
mod fetched;
mod ingest;
mod node;
pub mod pinning;
mod scrub;
mod tar_rules;
mod watch;

/// The allocation's decisions as a pure core (no I/O): public for benchmarks and for reading.
pub use alloc::core as allocation;
/// The allocation's on-disk catalog index (leaves by partition), public for benchmarks.
pub use alloc::index as allocation_index;
pub use car::{write_car, CarImport, ImportedRoot};
pub use fetched::FetchingSource;
pub use ingest::Unplaced;
pub use node::{FileHealth, Node, NodeConfig, NodeStatus, Phase, Wanted};
pub use scrub::{RepairError, ScrubConfig, ScrubStatus};
pub use tar_rules::{MAX_TAR_DEPTH, MAX_TAR_ENTRIES, MAX_TAR_METADATA, MAX_TAR_PATH};

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use xnode_dag::{
    import_file, import_file_single_threaded, import_path, import_symlink, list_directory, stat, Added, Block,
    BlockSink, BlockSource, Discard, FileReader, ImportError, ImportOptions, NodeKind, ReadError, SinkError,
    TreeBuilder,
};
use xnode_storage::{BlockWriter, Pin, Store, StoreConfig, StoreError, StoreStats, UnpinStats};

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Importing failed (unreadable path, bad options, full store).
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Reading a DAG back failed (missing or malformed block).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A path given to add does not exist.
    #[error("{0}: no such file or directory")]
    NoSuchPath(PathBuf),
    /// A directory was given to add without `-r`.
    #[error("{0} is a directory; use -r to add directories")]
    IsDirectory(PathBuf),
    /// Membership failed (bad address, a name already in use).
    #[error(transparent)]
    Gossip(#[from] xnode_gossip::GossipError),
    /// The libp2p node failed (or a fetch found no one with a block).
    #[error(transparent)]
    P2p(#[from] xnode_p2p::P2pError),
    /// The catalog could not be read or written.
    #[error(transparent)]
    Catalog(#[from] xnode_catalog::CatalogError),
    /// An upload could not be read.
    #[error("{0}")]
    BadUpload(String),
    /// A streamed add could not place every block on the members placement gives it to (they are full or did not
    /// answer); the message names them and, when the cluster lacks room, where room is left.
    #[error(transparent)]
    Unplaced(ingest::Unplaced),
    /// A corrupted block could not be repaired.
    #[error(transparent)]
    Repair(scrub::RepairError),
    /// Writing output failed.
    #[error("writing {path} failed: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Settings of one `add`.
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// The DAG shape.
    pub import: ImportOptions,
    /// Allow directories.
    pub recursive: bool,
    /// Compute CIDs without storing anything.
    pub only_hash: bool,
}

/// A node's local data: its block store and what is pinned in it.
#[derive(Clone, Debug)]
pub struct Repo {
    store: Store,
}

impl Repo {
    /// Opens (or creates) the store under `data_dir`.
    pub fn open(data_dir: &Path, config: StoreConfig) -> Result<Self, InstanceError> {
        Ok(Self { store: Store::open(&data_dir.join("store"), config)? })
    }

    /// The block store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Adds a file or (with `recursive`) a directory, like `ipfs add`, and pins its root. `on_entry` sees every
    /// file and directory, children first. Nothing is stored unless the whole path is; a crash or error midway
    /// leaves the store as it was.
    pub fn add(
        &self,
        path: &Path,
        opts: &AddOptions,
        on_entry: &mut dyn FnMut(&Path, &Added),
    ) -> Result<Added, InstanceError> {
        if opts.only_hash {
            return Self::hash_only(path, opts, on_entry);
        }
        check_addable(path, opts.recursive)?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        self.store_and_pin(|sink| Ok((import_path(&opts.import, path, sink, on_entry)?, name)))
    }

    /// Computes the CIDs `add` would produce without storing anything (`add --only-hash`).
    pub fn hash_only(
        path: &Path,
        opts: &AddOptions,
        on_entry: &mut dyn FnMut(&Path, &Added),
    ) -> Result<Added, InstanceError> {
        check_addable(path, opts.recursive)?;
        Ok(import_path(&opts.import, path, &mut Discard, on_entry)?)
    }

    /// Adds one file read from `reader` (an upload) under `name`, and pins it.
    pub fn add_stream(
        &self,
        name: &str,
        reader: impl Read + Send,
        opts: &ImportOptions,
    ) -> Result<Added, InstanceError> {
        self.store_and_pin(|sink| import_stream(name, reader, opts, sink))
    }

    /// Adds a tar archive (an upload of a directory) with a single top-level entry, and pins its root under that
    /// entry's name. Directories may be implied by the files under them; symlinks stay UnixFS symlinks.
    pub fn add_tar(
        &self,
        reader: impl Read + Send,
        opts: &ImportOptions,
        on_entry: &mut dyn FnMut(&Path, &Added),
    ) -> Result<Added, InstanceError> {
        self.store_and_pin(|sink| import_tar(reader, opts, on_entry, sink))
    }

    /// Runs an import against a store write session on its own thread (so disk writes overlap with hashing) and
    /// commits it with a pin of the result under the returned name: all or nothing.
    pub(crate) fn store_and_pin(
        &self,
        import: impl FnOnce(&mut dyn BlockSink) -> Result<(Added, String), InstanceError>,
    ) -> Result<Added, InstanceError> {
        let ((added, name), writer) = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Block>(WRITE_QUEUE);
            // Through the page cache: the allocation loop reads these blocks right back to send copies.
            let mut writer = self.store.cached_writer();
            let disk = scope.spawn(move || -> Result<BlockWriter, StoreError> {
                for block in rx {
                    writer.put(&block.cid, &block.data)?;
                }
                Ok(writer)
            });
            let imported = import(&mut ChannelSink(tx));
            let written = disk.join().expect("the block writer thread panicked");
            match (imported, written) {
                (Ok(result), Ok(writer)) => Ok((result, writer)),
                // A store error (a full store, say) is the cause; the import only saw the channel close.
                (_, Err(store)) => Err(InstanceError::from(store)),
                (Err(import), Ok(_discarded)) => Err(import),
            }
        })?;
        writer.commit(Some(Pin { root: added.cid, name, size: added.size, added_at: now() }))?;
        Ok(added)
    }

    /// Writes `length` bytes of the file at `cid` from `offset` to `out`; returns the bytes written.
    pub fn cat(&self, cid: &Cid, offset: u64, length: u64, out: &mut dyn Write) -> Result<u64, InstanceError> {
        let mut reader = FileReader::open(self, cid, offset, length)?;
        let mut written = 0;
        while let Some(chunk) = reader.next_chunk()? {
            out.write_all(&chunk).map_err(|source| InstanceError::Write { path: "output".into(), source })?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }

    /// Writes the file or directory at `cid` to `dest` (which must not exist yet).
    pub fn get(&self, cid: &Cid, dest: &Path) -> Result<(), InstanceError> {
        let write_err = |source| InstanceError::Write { path: dest.to_path_buf(), source };
        match stat(self, cid)? {
            NodeKind::File { .. } => {
                // create_new: never through a symlink or over anything already there (O_EXCL).
                let file = fs::OpenOptions::new().write(true).create_new(true).open(dest);
                let mut file = io::BufWriter::new(file.map_err(write_err)?);
                self.cat(cid, 0, u64::MAX, &mut file).map_err(|e| match e {
                    InstanceError::Write { source, .. } => write_err(source),
                    other => other,
                })?;
                file.flush().map_err(write_err)?;
            }
            NodeKind::Directory => {
                fs::create_dir(dest).map_err(write_err)?;
                let mut names = std::collections::HashSet::new();
                for entry in list_directory(self, cid)? {
                    if entry.name.contains(['/', '\0'])
                        || entry.name == ".."
                        || entry.name == "."
                        || entry.name.is_empty()
                        || !names.insert(entry.name.clone())
                    {
                        return Err(ReadError::Inconsistent {
                            cid: *cid,
                            what: "directory entry with an unsafe or repeated name",
                        }
                        .into());
                    }
                    self.get(&entry.cid, &dest.join(&entry.name))?;
                }
            }
            NodeKind::Symlink { target } => std::os::unix::fs::symlink(target, dest).map_err(write_err)?,
        }
        Ok(())
    }

    /// Whether every block of the DAG under `root` is in the store.
    pub fn is_complete(&self, root: &Cid) -> Result<bool, InstanceError> {
        let store = self.store();
        let mut queue = vec![*root];
        while let Some(cid) = queue.pop() {
            let Some(data) = store.get(&cid)? else { return Ok(false) };
            queue.extend(xnode_dag::block_links(&cid, &data)?);
        }
        Ok(true)
    }

    /// What kind of node `cid` is.
    pub fn stat(&self, cid: &Cid) -> Result<NodeKind, InstanceError> {
        Ok(stat(self, cid)?)
    }

    /// The pinned files, oldest first.
    pub fn pins(&self) -> Result<Vec<Pin>, InstanceError> {
        let mut pins = self.store.pins()?;
        pins.sort_by_key(|p| (p.added_at, p.name.clone()));
        Ok(pins)
    }

    /// Unpins a file; blocks no other file needs are deleted and their disk space released.
    pub fn remove(&self, root: &Cid) -> Result<UnpinStats, InstanceError> {
        Ok(self.store.unpin(root)?)
    }

    /// Store figures.
    pub fn stats(&self) -> Result<StoreStats, InstanceError> {
        Ok(self.store.stats()?)
    }
}

impl BlockSource for Repo {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        match self.store.get(cid) {
            Ok(Some(data)) => Ok(data),
            Ok(None) => Err(ReadError::NotFound(*cid)),
            Err(e) => Err(ReadError::Source(Box::new(e))),
        }
    }
}

/// Imports one file read from `reader` (an upload) into `sink`; the file is to be listed under `name`.
pub fn import_stream(
    name: &str,
    reader: impl Read + Send,
    opts: &ImportOptions,
    sink: &mut dyn BlockSink,
) -> Result<(Added, String), InstanceError> {
    Ok((import_file(opts, reader, sink)?, name.to_string()))
}

/// Imports a tar archive (an upload of a directory) with a single top-level entry into `sink`; the directory is to
/// be listed under that entry's name. Directories may be implied by the files under them; symlinks stay UnixFS
/// symlinks.
pub fn import_tar(
    reader: impl Read + Send,
    opts: &ImportOptions,
    on_entry: &mut dyn FnMut(&Path, &Added),
    sink: &mut dyn BlockSink,
) -> Result<(Added, String), InstanceError> {
    let bad = |e: io::Error| InstanceError::BadUpload(format!("not a valid tar archive: {e}"));
    let mut tree = TreeBuilder::new(opts);
    let mut archive = tar::Archive::new(reader);
    let mut root = None;
    let mut rules = tar_rules::TarRules::default();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let directory = entry.header().entry_type() == tar::EntryType::Directory;
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        // Names are checked, never rewritten: `..`, `/x` or a path under a file is refused, naming it.
        let Some(path) = rules.check(&raw, directory, link_len).map_err(InstanceError::BadUpload)? else {
            continue;
        };
        if !opts.include_hidden && is_hidden(&path) {
            continue;
        }
        root.get_or_insert_with(|| path.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()));
        match entry.header().entry_type() {
            tar::EntryType::Directory => tree.add_dir(&path),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let added = import_file_single_threaded(opts, &mut entry, sink)?;
                tree.add(&path, added);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default().into_owned();
                tree.add(&path, import_symlink(opts, &target, sink)?);
            }
            other => {
                return Err(InstanceError::BadUpload(format!(
                    "{}: unsupported tar entry type {other:?}",
                    path.display()
                )))
            }
        }
    }
    let added = tree.build(sink, on_entry)?;
    Ok((added, root.flatten().unwrap_or_default()))
}

/// Imports a file or (with `recursive`) a directory from the local file system into `sink`, listed under its name.
pub fn import_local(
    path: &Path,
    opts: &AddOptions,
    on_entry: &mut dyn FnMut(&Path, &Added),
    sink: &mut dyn BlockSink,
) -> Result<(Added, String), InstanceError> {
    check_addable(path, opts.recursive)?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok((import_path(&opts.import, path, sink, on_entry)?, name))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn is_hidden(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.')))
}

fn check_addable(path: &Path, recursive: bool) -> Result<(), InstanceError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InstanceError::NoSuchPath(path.to_path_buf())),
        Err(source) => Err(ImportError::Path { path: path.to_path_buf(), source }.into()),
        Ok(meta) if meta.is_dir() && !recursive => Err(InstanceError::IsDirectory(path.to_path_buf())),
        Ok(_) => Ok(()),
    }
}

/// Blocks queued for the writer thread: 16 x 256 KiB keeps the disk busy without growing memory.
const WRITE_QUEUE: usize = 16;

/// Hands imported blocks to the writer thread.
struct ChannelSink(mpsc::SyncSender<Block>);

impl BlockSink for ChannelSink {
    fn put(&mut self, block: Block) -> Result<(), SinkError> {
        self.0.send(block).map_err(|_| "the block writer stopped".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &Path, capacity: u64) -> Repo {
        Repo::open(dir, StoreConfig { capacity, ..StoreConfig::default() }).unwrap()
    }

    #[test]
    fn add_then_cat_and_get_roundtrip() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub/empty")).unwrap();
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(src.join("big.bin"), &big).unwrap();
        fs::write(src.join("sub/a.txt"), b"hello").unwrap();
        let r = repo(&tmp.path().join("data"), u64::MAX);
        let opts = AddOptions { recursive: true, ..AddOptions::default() };
        let mut seen = Vec::new();
        let root = r.add(&src, &opts, &mut |p, _| seen.push(p.to_path_buf())).unwrap();
        assert_eq!(seen.last().unwrap(), Path::new("src"));
        assert!(seen.contains(&PathBuf::from("src/sub/empty")));

        let out = tmp.path().join("out");
        r.get(&root.cid, &out).unwrap();
        assert_eq!(fs::read(out.join("big.bin")).unwrap(), big);
        assert_eq!(fs::read(out.join("sub/a.txt")).unwrap(), b"hello");
        assert!(out.join("sub/empty").is_dir());

        let file = r.add(&src.join("big.bin"), &AddOptions::default(), &mut |_, _| {}).unwrap();
        let mut part = Vec::new();
        r.cat(&file.cid, 300_000, 10, &mut part).unwrap();
        assert_eq!(part, &big[300_000..300_010]);
    }

    #[test]
    fn add_of_a_directory_needs_recursive_and_missing_paths_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let r = repo(&tmp.path().join("data"), u64::MAX);
        let err = r.add(tmp.path(), &AddOptions::default(), &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("use -r"), "{err}");
        let err = r.add(&tmp.path().join("nope"), &AddOptions::default(), &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("nope: no such file"), "{err}");
    }

    #[test]
    fn a_full_store_refuses_the_add_and_keeps_what_it_had() {
        let tmp = tempfile::tempdir().unwrap();
        let r = repo(&tmp.path().join("data"), 1_000_000);
        // Distinct chunks: identical ones would be stored once and fit.
        let varied = |n: u32| (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<_>>();
        fs::write(tmp.path().join("small"), varied(100_000)).unwrap();
        fs::write(tmp.path().join("big"), varied(2_000_000)).unwrap();
        let small = r.add(&tmp.path().join("small"), &AddOptions::default(), &mut |_, _| {}).unwrap();
        let err = r.add(&tmp.path().join("big"), &AddOptions::default(), &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("storage full"), "{err}");
        assert_eq!(r.pins().unwrap().len(), 1);
        let mut out = Vec::new();
        r.cat(&small.cid, 0, u64::MAX, &mut out).unwrap();
        assert_eq!(out.len(), 100_000);
        assert!(r.stats().unwrap().bytes_held < 200_000, "the refused add left blocks behind");
    }
}
