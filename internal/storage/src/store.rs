//! The [`Store`] handle: opening and recovering, reads, pins, deletion and stats.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use cid::Cid;
use tracing::{error, info, warn};

use crate::direct;
use crate::index::{self, Entry, PackRecord, Staged};
use crate::pack;
use crate::verify;
use crate::writer::BlockWriter;
use crate::{GcStats, Pin, Quarantined, StoreConfig, StoreError, StoreStats, UnpinStats};

/// A cheap-to-clone handle on one storage directory. All methods block on disk I/O.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    packs_dir: PathBuf,
    index_dir: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) pack_target_size: u64,
    /// Every change to the index goes through this lock, so a read-modify-write of refcounts and the
    /// counters below stays consistent. Reads (`get`, `has`) do not take it.
    state: Mutex<State>,
    /// Read handles by pack and whether they were opened with `O_DIRECT`, opened read-write so deletion can punch
    /// holes through them.
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// Pack data bypasses the page cache (`O_DIRECT`). Set from the config; cleared for good the first time the
    /// file system refuses direct I/O.
    direct: AtomicBool,
    /// Set after the first "cannot punch holes" warning so it is logged once.
    punch_unsupported: AtomicBool,
}

/// Counters that change together with the index; cloned, changed, and swapped in after the sled batch
/// succeeds, so a failed batch leaves them untouched.
#[derive(Clone, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_held: u64,
    pub(crate) blocks: u64,
    /// Blocks with a reference (a pin's or the allocation's): what `needed_blocks` lists.
    pub(crate) needed: u64,
    pub(crate) pins: u64,
    pub(crate) packs: BTreeMap<u32, PackState>,
}

#[derive(Clone, Copy, Default)]
pub(crate) struct PackState {
    pub(crate) record: PackRecord,
    /// A writer is appending to this pack; nobody else may, and it may not be deleted.
    pub(crate) busy: bool,
}

pub(crate) struct State {
    pub(crate) counters: Counters,
    pub(crate) capacity: u64,
    /// Bytes put by open writers and not yet committed or discarded; counted against the capacity.
    pub(crate) pending: u64,
    next_pack: u32,
    /// Blocks that open writers found already stored and will reference at commit, by CID bytes, with
    /// the number of writers relying on each. They are never deleted while listed here.
    pub(crate) protected: HashMap<Vec<u8>, u32>,
}

impl State {
    pub(crate) fn unprotect(&mut self, keys: &[Vec<u8>]) {
        for key in keys {
            if let Some(n) = self.protected.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.protected.remove(key);
                }
            }
        }
    }
}

/// Disk space to give back once the index change that freed it is durable.
#[derive(Default)]
pub(crate) struct Removal {
    /// (pack, offset, len) ranges to punch out.
    pub(crate) ranges: Vec<(u32, u64, u64)>,
    /// Packs to delete whole.
    pub(crate) dead_packs: Vec<u32>,
    blocks: u64,
    bytes: u64,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers from any crash: each pack is cut back to
    /// the length its last commit recorded, and pack files the index does not know are deleted.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let packs_dir = dir.join("packs");
        let index_dir = dir.join("index");
        for d in [&packs_dir, &index_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| StoreError::io(format!("creating storage directory {}", d.display()), e))?;
        }
        // The index holds small entries only; a small cache and small segments keep the node's memory flat.
        let db = crate::open::open_index(&index_dir)?;

        let mut counters = Counters::default();
        for item in db.scan_prefix(index::PACK_PREFIX) {
            let (key, value) = item?;
            let record = PackRecord::decode(&value)?;
            counters.bytes_held += record.live_bytes;
            counters.blocks += record.live_blocks;
            counters.packs.insert(index::pack_id(&key)?, PackState { record, busy: false });
        }
        for item in db.scan_prefix(index::PIN_PREFIX) {
            item?;
            counters.pins += 1;
        }
        // Counted once here, then kept up to date, so a status never scans the index.
        for item in db.scan_prefix(index::BLOCK_PREFIX) {
            let (_, value) = item?;
            if Entry::decode(&value)?.refcount > 0 {
                counters.needed += 1;
            }
        }
        recover_packs(&packs_dir, &counters.packs)?;

        // A capacity set at run time (a resize) is the operator's latest word: it wins over the configured one.
        let resized = db.get(index::RESIZED_KEY)?.map(|v| decode_u64(&v)).transpose()?;
        let capacity = match resized {
            Some(set) => {
                if set != config.capacity {
                    tracing::info!(
                        capacity = set,
                        configured = config.capacity,
                        "storage capacity {} was set at run time and wins over the configured {} \
                         (XNODE_STORAGE_MAX); resize the node to change it",
                        crate::error::human_bytes(set),
                        crate::error::human_bytes(config.capacity)
                    );
                }
                set
            }
            None => config.capacity,
        };
        db.insert(index::CAPACITY_KEY, &capacity.to_le_bytes())?;
        db.flush()?;
        let next_pack = counters.packs.keys().next_back().map_or(0, |id| id + 1);
        let state = State { counters, capacity, pending: 0, next_pack, protected: HashMap::new() };
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                packs_dir,
                index_dir,
                db,
                pack_target_size: config.pack_target_size.max(1),
                state: Mutex::new(state),
                readers: RwLock::new(HashMap::new()),
                direct: AtomicBool::new(config.direct_io),
                punch_unsupported: AtomicBool::new(false),
            }),
        })
    }

    /// Starts a write session. Its blocks are stored only when [`BlockWriter::commit`] returns. Their bodies go
    /// around the page cache when the store uses direct I/O: for blocks that are not read again soon (fetched
    /// replicas), so that they do not push out what is.
    pub fn writer(&self) -> BlockWriter {
        BlockWriter::new(self.clone(), true)
    }

    /// A write session whose bodies go through the page cache even with direct I/O: for blocks read again right
    /// away, as a file just added is, whose blocks the allocation loop then reads to send to other members.
    pub fn cached_writer(&self) -> BlockWriter {
        BlockWriter::new(self.clone(), false)
    }

    /// The block `cid`, checked against its hash; `None` if it is not stored.
    pub fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read_block(cid, true)
    }

    /// The block `cid` as stored, **not** checked against its hash; `None` if it is not stored.
    ///
    /// Only for bytes whose reader hashes them anyway, or for measuring the disk alone (the `direct_io` example).
    /// The Bitswap server used it until corrupted copies needed finding before they are sent (a receiver takes a
    /// bad block for a lie); it now reads with [`Store::get`] like everything else (docs/bitswap.md).
    ///
    /// A block deleted while it is read would read as a punched hole, which no hash check catches here; so the
    /// index is asked again after the read, and a block no longer listed at the same place is read again or
    /// reported absent (space is punched out only after the index change that freed it is durable).
    pub fn get_unchecked(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read_block(cid, false)
    }

    /// Reads `cid`'s bytes, hash-checked if `check`. A block deleted while we read it reads as holes; then the
    /// index no longer lists it (None), or lists it somewhere else (another try). A checked read that does not
    /// match, at a place the index still gives, is corruption.
    fn read_block(&self, cid: &Cid, check: bool) -> Result<Option<Bytes>, StoreError> {
        verify::check_supported(cid)?;
        let key = index::block_key(&cid.to_bytes());
        for _ in 0..3 {
            let Some(raw) = self.inner.db.get(&key)? else { return Ok(None) };
            let entry = Entry::decode(&raw)?;
            let read = match self.inner.read(&entry) {
                Ok(data) if check && verify::matches(cid, &data) => return Ok(Some(data)),
                read => read,
            };
            match self.inner.db.get(&key)? {
                None => return Ok(None),
                Some(now) if !same_place(&Entry::decode(&now)?, &entry) => continue,
                Some(_) => {}
            }
            return match read {
                Ok(data) if !check => Ok(Some(data)),
                Ok(_) => Err(StoreError::Corrupted { cid: *cid }),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StoreError::Corrupted { cid: *cid }),
                Err(e) => Err(StoreError::io(format!("reading block {cid} from pack {}", entry.pack), e)),
            };
        }
        Err(StoreError::Corrupted { cid: *cid })
    }

    /// Takes the block `cid` out of service because its bytes on disk no longer match its hash: it leaves the
    /// index at once (reads then see it as absent, so every reader fetches it from a peer instead, and peers are
    /// answered "don't have"), the allocation's mark on it goes, and its space is punched out. The pin references
    /// it had are saved and given back when a writer stores the block again (see [`BlockWriter::commit`]), so a
    /// pinned file stays whole once its block is re-fetched, and an unpin meanwhile still counts it down.
    ///
    /// Call it only after a checked read reported [`StoreError::Corrupted`] for `cid`; nothing here re-reads it.
    /// A block an open writer is about to reference is left alone (that writer's commit needs its entry); the
    /// next scrub or read finds it again. `None` if the block was not stored (or is protected).
    pub fn quarantine(&self, cid: &Cid) -> Result<Option<Quarantined>, StoreError> {
        let inner = &self.inner;
        let bytes = cid.to_bytes();
        let block_key = index::block_key(&bytes);
        let held_key = index::held_key(&bytes);
        let mut removal = Removal::default();
        let kept;
        {
            let st = inner.lock();
            if st.protected.contains_key(&bytes) {
                return Ok(None);
            }
            let Some(raw) = inner.db.get(&block_key)? else { return Ok(None) };
            let entry = Entry::decode(&raw)?;
            kept = inner.db.contains_key(&held_key)?;
            let staged_key = index::staged_key(&bytes);
            let staged = inner.db.contains_key(&staged_key)?;
            let pin_refs = entry.refcount.saturating_sub(u32::from(kept) + u32::from(staged));
            let mut next = st.counters.clone();
            let mut batch = sled::Batch::default();
            let mut touched = BTreeSet::new();
            remove_block(&mut next, &mut batch, block_key, &entry, &mut removal, &mut touched);
            batch.remove(held_key);
            batch.remove(staged_key);
            if pin_refs > 0 {
                batch.insert(index::quarantined_key(&bytes), &pin_refs.to_le_bytes());
            }
            settle_packs(&mut next, &mut batch, &touched, &mut removal);
            inner.db.apply_batch(batch)?;
            inner.swap_counters(st, next);
        }
        inner.db.flush()?;
        inner.reclaim(&removal);
        warn!(%cid, kept, "quarantined a corrupted block: it is out of service until a good copy is stored");
        Ok(Some(Quarantined { kept, bytes: removal.bytes }))
    }

    /// Blocks quarantined as corrupt that pins still need and that have not been stored again.
    pub fn quarantined(&self) -> Result<Vec<Cid>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(index::QUARANTINED_PREFIX) {
            let (key, _) = item?;
            out.push(decode_cid(&key[1..])?);
        }
        Ok(out)
    }

    /// Up to `limit` stored blocks with their sizes, in index order and after `after` if given: the scrub walks the
    /// store with it a page at a time, so a pass needs no list of every block in memory and survives blocks
    /// coming and going under it.
    pub fn blocks_after(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<(Cid, u64)>, StoreError> {
        let start = match after {
            Some(c) => {
                let mut k = index::block_key(&c.to_bytes());
                // The smallest key after `k`: skip `k` itself.
                k.push(0);
                k
            }
            None => index::BLOCK_PREFIX.to_vec(),
        };
        let mut out = Vec::with_capacity(limit);
        for item in self.inner.db.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&index::BLOCK_PREFIX) || out.len() >= limit {
                break;
            }
            out.push((decode_cid(&key[1..])?, u64::from(Entry::decode(&value)?.len)));
        }
        Ok(out)
    }

    /// Whether `cid` is stored (committed).
    pub fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.inner.db.contains_key(index::block_key(&cid.to_bytes()))?)
    }

    /// The size in bytes of the stored block `cid`, if stored.
    pub fn block_size(&self, cid: &Cid) -> Result<Option<u64>, StoreError> {
        match self.inner.db.get(index::block_key(&cid.to_bytes()))? {
            Some(raw) => Ok(Some(u64::from(Entry::decode(&raw)?.len))),
            None => Ok(None),
        }
    }

    /// Every pinned file.
    pub fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        self.inner.db.scan_prefix(index::PIN_PREFIX).map(|item| decode_pin(&item?.1)).collect()
    }

    /// The pin of `root`, if pinned.
    pub fn pin(&self, root: &Cid) -> Result<Option<Pin>, StoreError> {
        self.inner.db.get(index::pin_key(&root.to_bytes()))?.map(|raw| decode_pin(&raw)).transpose()
    }

    /// Unpins `root`: each block its commit counted loses one reference, and blocks nothing needs any more
    /// are deleted and their disk space released.
    pub fn unpin(&self, root: &Cid) -> Result<UnpinStats, StoreError> {
        let inner = &self.inner;
        let root_bytes = root.to_bytes();
        let pin_key = index::pin_key(&root_bytes);
        let st = inner.lock();
        if !inner.db.contains_key(&pin_key)? {
            return Err(StoreError::NotPinned { root: *root });
        }
        let mut unref = Unref::new(&st);
        let prefix = index::pin_blocks_prefix(&root_bytes);
        for item in inner.db.scan_prefix(&prefix) {
            let (pair_key, _) = item?;
            unref.batch.remove(pair_key.clone());
            let block = &pair_key[prefix.len()..];
            if !unref.drop_one(inner, &st, block)? && !unref.drop_quarantined(inner, block)? {
                warn!(root = %root, "pinned block missing from the index; skipping it");
            }
        }
        unref.batch.remove(pin_key);
        unref.next.pins -= 1;
        unref.finish(inner, st)
    }

    /// Marks stored blocks as staged by an ingest (see [`BlockWriter::commit_staged`], which does the same for the
    /// blocks it writes): each counts as one more reference (once, however often staged), so gc leaves it alone
    /// until [`Store::keep`] claims it or [`Store::unstage`] drops it. A block staged before gets `staged`'s session
    /// and time; blocks the allocation keeps are left as they are; blocks not stored are skipped. Returns how many
    /// of `cids` are stored (staged or kept).
    pub fn stage(&self, cids: &[Cid], staged: Staged) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let mut stored = 0;
        {
            let mut st = inner.lock();
            let mut newly_needed = 0;
            let mut batch = sled::Batch::default();
            let mut seen = HashSet::new();
            for cid in cids {
                let bytes = cid.to_bytes();
                if !seen.insert(bytes.clone()) {
                    continue;
                }
                let block_key = index::block_key(&bytes);
                let Some(raw) = inner.db.get(&block_key)? else { continue };
                stored += 1;
                if inner.db.contains_key(index::held_key(&bytes))? {
                    continue;
                }
                let staged_key = index::staged_key(&bytes);
                if !inner.db.contains_key(&staged_key)? {
                    let mut entry = Entry::decode(&raw)?;
                    if entry.refcount == 0 {
                        newly_needed += 1;
                    }
                    entry.refcount += 1;
                    batch.insert(block_key, &entry.encode());
                }
                batch.insert(staged_key, &staged.encode());
            }
            inner.db.apply_batch(batch)?;
            st.counters.needed += newly_needed;
        }
        inner.db.flush()?;
        Ok(stored)
    }

    /// Every staged block with its mark (a scan of the marks only: nothing when nothing is staged).
    pub fn staged(&self) -> Result<Vec<(Cid, Staged)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(index::STAGED_PREFIX) {
            let (key, value) = item?;
            out.push((decode_cid(&key[1..])?, Staged::decode(&value)));
        }
        Ok(out)
    }

    /// Drops the staging reference of each block; a block nothing else needs is deleted and its space released.
    /// Blocks not staged are skipped.
    pub fn unstage(&self, cids: &[Cid]) -> Result<UnpinStats, StoreError> {
        let inner = &self.inner;
        let st = inner.lock();
        let mut unref = Unref::new(&st);
        for cid in cids {
            let bytes = cid.to_bytes();
            let staged = index::staged_key(&bytes);
            if !inner.db.contains_key(&staged)? {
                continue;
            }
            unref.batch.remove(staged);
            unref.drop_one(inner, &st, &bytes)?;
        }
        unref.finish(inner, st)
    }

    /// Marks stored blocks as held by the node's allocation: each counts as one more reference (once, however often
    /// it is kept), so gc and unpins leave it alone until [`Store::release`]. Blocks not stored are skipped.
    /// Returns how many blocks were newly marked.
    pub fn keep(&self, cids: &[Cid]) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let mut marked = 0;
        {
            let mut st = inner.lock();
            let mut newly_needed = 0;
            let mut batch = sled::Batch::default();
            // The checks below read the index, not the batch: a CID listed twice counts once.
            let mut seen = std::collections::HashSet::with_capacity(cids.len());
            for cid in cids {
                let bytes = cid.to_bytes();
                if !seen.insert(bytes.clone()) {
                    continue;
                }
                let held = index::held_key(&bytes);
                if inner.db.contains_key(&held)? {
                    continue;
                }
                let block_key = index::block_key(&bytes);
                let Some(raw) = inner.db.get(&block_key)? else { continue };
                let staged = index::staged_key(&bytes);
                if inner.db.contains_key(&staged)? {
                    // A staged block is claimed: the staging reference becomes the allocation's.
                    batch.remove(staged);
                } else {
                    let mut entry = Entry::decode(&raw)?;
                    if entry.refcount == 0 {
                        newly_needed += 1;
                    }
                    entry.refcount += 1;
                    batch.insert(block_key, &entry.encode());
                }
                batch.insert(held, &[]);
                marked += 1;
            }
            inner.db.apply_batch(batch)?;
            st.counters.needed += newly_needed;
        }
        inner.db.flush()?;
        Ok(marked)
    }

    /// Whether the allocation holds `cid` (see [`Store::keep`]).
    pub fn is_kept(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.inner.db.contains_key(index::held_key(&cid.to_bytes()))?)
    }

    /// Every block the allocation holds.
    pub fn kept(&self) -> Result<Vec<Cid>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(index::HELD_PREFIX) {
            let (key, _) = item?;
            out.push(decode_cid(&key[1..])?);
        }
        Ok(out)
    }

    /// Drops the allocation's reference on each block; a block no pin needs any more is deleted and its space
    /// released. Blocks the allocation does not hold are skipped.
    pub fn release(&self, cids: &[Cid]) -> Result<UnpinStats, StoreError> {
        let inner = &self.inner;
        let st = inner.lock();
        let mut unref = Unref::new(&st);
        for cid in cids {
            let bytes = cid.to_bytes();
            let held = index::held_key(&bytes);
            if !inner.db.contains_key(&held)? {
                continue;
            }
            unref.batch.remove(held);
            unref.drop_one(inner, &st, &bytes)?;
        }
        unref.finish(inner, st)
    }

    /// The CIDs of up to `limit` stored blocks that a pin or the allocation needs (not loose cache), in index
    /// order and after `after` if given (paging), and how many such blocks there are in all.
    pub fn needed_blocks(&self, limit: usize, after: Option<&Cid>) -> Result<(u64, Vec<Cid>), StoreError> {
        let mut out = Vec::new();
        let mut count = 0;
        let after = after.map(|c| index::block_key(&c.to_bytes()));
        for item in self.inner.db.scan_prefix(index::BLOCK_PREFIX) {
            let (key, value) = item?;
            if Entry::decode(&value)?.refcount == 0 {
                continue;
            }
            count += 1;
            if out.len() < limit && after.as_ref().is_none_or(|a| key.as_ref() > a.as_slice()) {
                out.push(decode_cid(&key[1..])?);
            }
        }
        Ok((count, out))
    }

    /// Blocks stored but needed by no pin (committed without a pin, or left by unpins while a writer was
    /// about to reuse them). `gc` deletes them.
    pub fn unpinned_blocks(&self) -> Result<Vec<Cid>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(index::BLOCK_PREFIX) {
            let (key, value) = item?;
            if Entry::decode(&value)?.refcount == 0 {
                out.push(decode_cid(&key[1..])?);
            }
        }
        Ok(out)
    }

    /// Deletes every block no pin needs, except those an open writer is about to reference.
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let inner = &self.inner;
        let mut removal = Removal::default();
        {
            let st = inner.lock();
            let mut next = st.counters.clone();
            let mut batch = sled::Batch::default();
            let mut touched = BTreeSet::new();
            for item in inner.db.scan_prefix(index::BLOCK_PREFIX) {
                let (key, value) = item?;
                let entry = Entry::decode(&value)?;
                if entry.refcount == 0 && !st.protected.contains_key(&key[1..]) {
                    remove_block(&mut next, &mut batch, key.to_vec(), &entry, &mut removal, &mut touched);
                }
            }
            settle_packs(&mut next, &mut batch, &touched, &mut removal);
            inner.db.apply_batch(batch)?;
            inner.swap_counters(st, next);
        }
        inner.db.flush()?;
        inner.reclaim(&removal);
        Ok(GcStats { blocks_deleted: removal.blocks, bytes_freed: removal.bytes })
    }

    /// What the store holds and how much disk it takes.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (counters, capacity, pending) = {
            let st = self.inner.lock();
            (st.counters.clone(), st.capacity, st.pending)
        };
        let du =
            |p: &Path| pack::allocated_bytes(p).map_err(|e| StoreError::io(format!("measuring {}", p.display()), e));
        Ok(StoreStats {
            blocks: counters.blocks,
            needed_blocks: counters.needed,
            bytes_held: counters.bytes_held,
            capacity,
            free: capacity.saturating_sub(counters.bytes_held.saturating_add(pending)),
            disk_bytes: du(&self.inner.packs_dir)? + du(&self.inner.index_dir)?,
            pins: counters.pins,
        })
    }

    /// The counters of [`Store::stats`] without measuring the disk (no directory walk): what a node gossips every
    /// second. `disk_bytes` is 0.
    pub fn usage(&self) -> StoreStats {
        let st = self.inner.lock();
        StoreStats {
            blocks: st.counters.blocks,
            needed_blocks: st.counters.needed,
            bytes_held: st.counters.bytes_held,
            capacity: st.capacity,
            free: st.capacity.saturating_sub(st.counters.bytes_held.saturating_add(st.pending)),
            disk_bytes: 0,
            pins: st.counters.pins,
        }
    }

    /// Changes the capacity now. Stored blocks are kept even if they exceed it; further puts fail.
    /// The value is saved in the index and wins over the capacity given to `open` at every later start.
    pub fn set_capacity(&self, capacity: u64) -> Result<(), StoreError> {
        let mut st = self.inner.lock();
        self.inner.db.insert(index::CAPACITY_KEY, &capacity.to_le_bytes())?;
        self.inner.db.insert(index::RESIZED_KEY, &capacity.to_le_bytes())?;
        st.capacity = capacity;
        drop(st);
        self.inner.db.flush()?;
        Ok(())
    }

    /// A named tree in the store's index database, for an index another crate keeps beside the blocks (the
    /// allocation's leaf index, say): it shares the store's cache and files, so it costs no second database. The
    /// store never reads or writes it; `flush` makes it durable with the rest.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// Makes every index change so far durable. Commits already do this; call it at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// The storage directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether pack data bypasses the page cache now: the config asked for direct I/O and the file system has not
    /// refused it.
    pub fn direct_io(&self) -> bool {
        self.inner.direct_io()
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock happens between a successful batch and the counter swap at
        // worst; the counters are then stale but the index is right, so carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn swap_counters(&self, mut st: MutexGuard<'_, State>, next: Counters) {
        st.counters = next;
    }

    pub(crate) fn pack_path(&self, id: u32) -> PathBuf {
        pack::pack_path(&self.packs_dir, id)
    }

    /// Takes an idle pack that is not full, or a new one, for a writer. Returns its id and committed length.
    pub(crate) fn acquire_pack(&self) -> (u32, u64) {
        let mut st = self.lock();
        let target = self.pack_target_size;
        if let Some((&id, ps)) =
            st.counters.packs.iter_mut().find(|(_, ps)| !ps.busy && ps.record.committed_len < target)
        {
            ps.busy = true;
            return (id, ps.record.committed_len);
        }
        let id = st.next_pack;
        st.next_pack += 1;
        st.counters.packs.insert(id, PackState { record: PackRecord::default(), busy: true });
        (id, 0)
    }

    /// Gives a writer's packs back; packs without live blocks are deleted.
    pub(crate) fn release_packs(&self, ids: &[u32]) {
        let mut removal = Removal::default();
        {
            let mut st = self.lock();
            let mut batch = sled::Batch::default();
            for id in ids {
                let Some(ps) = st.counters.packs.get_mut(id) else { continue };
                ps.busy = false;
                if ps.record.live_blocks == 0 {
                    st.counters.packs.remove(id);
                    batch.remove(&index::pack_key(*id));
                    removal.dead_packs.push(*id);
                }
            }
            if removal.dead_packs.is_empty() {
                return;
            }
            if let Err(e) = self.db.apply_batch(batch) {
                // The pack's record stays; its file is kept, and it is reused or deleted at the next open.
                error!(error = %e, "could not forget empty packs in the index");
                return;
            }
        }
        if let Err(e) = self.db.flush() {
            error!(error = %e, "could not flush the index after forgetting empty packs");
            return;
        }
        self.reclaim(&removal);
    }

    /// Whether pack data bypasses the page cache now.
    pub(crate) fn direct_io(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Uses the page cache for pack data from now on, after the file system refused direct I/O with `err`.
    /// Nothing is lost: the caller redoes the refused operation through the page cache.
    pub(crate) fn fall_back(&self, err: &io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            warn!(
                dir = %self.packs_dir.display(), error = %err,
                "this file system refuses direct I/O (O_DIRECT); pack data goes through the page cache from now on"
            );
        }
    }

    /// The read handle of pack `id`, opened with `O_DIRECT` if `direct`.
    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self.readers.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(f.clone());
        }
        let file = Arc::new(direct::open(&self.pack_path(id), false, false)?);
        let mut readers = self.readers.write().unwrap_or_else(|p| p.into_inner());
        Ok(readers.entry(id).or_insert(file).clone())
    }

    /// The body `entry` points at. Past the end of the pack is `UnexpectedEof`.
    ///
    /// Reads go through the page cache whatever the writes do: the kernel reads ahead within a pack (a file's blocks
    /// are stored in order), and blocks read often stay in memory. Direct reads, one block at a time, made serving a
    /// file wait on the disk between blocks; on this project's machine serving 1 GiB from a node whose disk was also
    /// taking a fetch ran at 290-340 MB/s against 390-470 through the cache (docs/storage.md).
    fn read(&self, entry: &Entry) -> io::Result<Bytes> {
        let file = self.reader(entry.pack)?;
        let mut buf = vec![0; entry.len as usize];
        file.read_exact_at(&mut buf, entry.offset)?;
        Ok(Bytes::from(buf))
    }

    /// Punches out a range of a pack. Failing only wastes space, so it logs rather than fails.
    pub(crate) fn punch(&self, id: u32, offset: u64, len: u64) {
        let result = self.reader(id).and_then(|f| pack::punch_hole(&f, offset, len));
        match result {
            Ok(()) => {}
            Err(e) if pack::is_unsupported(&e) => {
                if !self.punch_unsupported.swap(true, Ordering::Relaxed) {
                    warn!(
                        dir = %self.packs_dir.display(),
                        "this file system cannot punch holes; deleted blocks keep using disk space until their \
                         whole pack is deleted"
                    );
                }
            }
            Err(e) => warn!(pack = id, offset, len, error = %e, "could not release a deleted block's disk space"),
        }
    }

    /// Gives disk space back after the index change that freed it has been flushed.
    fn reclaim(&self, removal: &Removal) {
        for &(id, offset, len) in &removal.ranges {
            if !removal.dead_packs.contains(&id) {
                self.punch(id, offset, len);
            }
        }
        for &id in &removal.dead_packs {
            self.readers.write().unwrap_or_else(|p| p.into_inner()).retain(|&pack, _| pack != id);
            let path = self.pack_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), error = %e, "could not delete an empty pack; open deletes it"),
            }
        }
    }
}

/// Removes a block from the index (in `batch`) and from the counters.
/// Drops references to blocks in one sled batch, for [`Store::unpin`] and [`Store::release`]: a block left with none
/// (and not protected by a write in progress) leaves the index, and its bytes are punched out of its pack once the
/// batch has landed.
struct Unref {
    next: Counters,
    batch: sled::Batch,
    touched: BTreeSet<u32>,
    removal: Removal,
    released: u64,
}

impl Unref {
    fn new(st: &State) -> Self {
        Unref {
            next: st.counters.clone(),
            batch: sled::Batch::default(),
            touched: BTreeSet::new(),
            removal: Removal::default(),
            released: 0,
        }
    }

    /// Drops one reference to the block whose CID bytes are `block`; false if the index does not list it.
    fn drop_one(&mut self, inner: &Inner, st: &State, block: &[u8]) -> Result<bool, StoreError> {
        let block_key = index::block_key(block);
        let Some(raw) = inner.db.get(&block_key)? else { return Ok(false) };
        let mut entry = Entry::decode(&raw)?;
        if entry.refcount == 1 {
            self.next.needed = self.next.needed.saturating_sub(1);
        }
        entry.refcount = entry.refcount.saturating_sub(1);
        self.released += 1;
        if entry.refcount == 0 && !st.protected.contains_key(block) {
            remove_block(&mut self.next, &mut self.batch, block_key, &entry, &mut self.removal, &mut self.touched);
        } else {
            self.batch.insert(block_key, &entry.encode());
        }
        Ok(true)
    }

    /// Drops one of the pin references saved for a quarantined block; false if it has none saved.
    fn drop_quarantined(&mut self, inner: &Inner, block: &[u8]) -> Result<bool, StoreError> {
        let key = index::quarantined_key(block);
        let Some(raw) = inner.db.get(&key)? else { return Ok(false) };
        match index::decode_refs(&raw) {
            0 | 1 => self.batch.remove(key),
            n => self.batch.insert(key, &(n - 1).to_le_bytes()),
        }
        Ok(true)
    }

    /// Applies the batch and the new counters under the lock, then syncs the index and reclaims the freed space.
    fn finish(mut self, inner: &Inner, st: MutexGuard<'_, State>) -> Result<UnpinStats, StoreError> {
        settle_packs(&mut self.next, &mut self.batch, &self.touched, &mut self.removal);
        inner.db.apply_batch(self.batch)?;
        inner.swap_counters(st, self.next);
        inner.db.flush()?;
        inner.reclaim(&self.removal);
        Ok(UnpinStats {
            blocks_released: self.released,
            blocks_deleted: self.removal.blocks,
            bytes_freed: self.removal.bytes,
        })
    }
}

fn remove_block(
    next: &mut Counters,
    batch: &mut sled::Batch,
    block_key: Vec<u8>,
    entry: &Entry,
    removal: &mut Removal,
    touched: &mut BTreeSet<u32>,
) {
    batch.remove(block_key);
    let len = u64::from(entry.len);
    if let Some(ps) = next.packs.get_mut(&entry.pack) {
        ps.record.live_bytes -= len;
        ps.record.live_blocks -= 1;
    }
    next.bytes_held -= len;
    next.blocks -= 1;
    if entry.refcount > 0 {
        next.needed = next.needed.saturating_sub(1);
    }
    removal.ranges.push((entry.pack, entry.offset, len));
    removal.blocks += 1;
    removal.bytes += len;
    touched.insert(entry.pack);
}

/// Writes the new records of packs that lost blocks, deleting those left empty and idle.
fn settle_packs(next: &mut Counters, batch: &mut sled::Batch, touched: &BTreeSet<u32>, removal: &mut Removal) {
    for &id in touched {
        let Some(ps) = next.packs.get(&id) else { continue };
        if ps.record.live_blocks == 0 && !ps.busy {
            next.packs.remove(&id);
            batch.remove(&index::pack_key(id));
            removal.dead_packs.push(id);
        } else {
            batch.insert(&index::pack_key(id), &ps.record.encode());
        }
    }
}

/// Cuts each pack back to its committed length and deletes pack files the index does not know: whatever
/// a crashed writer appended after its last commit is gone before anything can read it.
fn recover_packs(packs_dir: &Path, packs: &BTreeMap<u32, PackState>) -> Result<(), StoreError> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let dir = std::fs::read_dir(packs_dir).map_err(|e| StoreError::io(ctx("listing", packs_dir), e))?;
    for item in dir {
        let item = item.map_err(|e| StoreError::io(ctx("listing", packs_dir), e))?;
        let path = item.path();
        let Some(id) = item.file_name().to_str().and_then(pack::parse_pack_name) else {
            warn!(path = %path.display(), "ignoring a file that is not a pack");
            continue;
        };
        let Some(ps) = packs.get(&id) else {
            info!(path = %path.display(), "deleting a pack no commit recorded (left by an interrupted add)");
            std::fs::remove_file(&path).map_err(|e| StoreError::io(ctx("deleting", &path), e))?;
            continue;
        };
        let len = item.metadata().map_err(|e| StoreError::io(ctx("reading metadata of", &path), e))?.len();
        let committed = ps.record.committed_len;
        if len > committed {
            info!(path = %path.display(), discarded = len - committed, "discarding uncommitted bytes");
            let file =
                OpenOptions::new().write(true).open(&path).map_err(|e| StoreError::io(ctx("opening", &path), e))?;
            file.set_len(committed).map_err(|e| StoreError::io(ctx("truncating", &path), e))?;
            file.sync_all().map_err(|e| StoreError::io(ctx("syncing", &path), e))?;
        } else if len < committed {
            error!(
                path = %path.display(), len, committed,
                "pack is shorter than its committed length; blocks past its end will read as corrupted"
            );
        }
    }
    for (id, ps) in packs {
        let path = pack::pack_path(packs_dir, *id);
        if ps.record.live_blocks > 0 && !path.exists() {
            error!(path = %path.display(), blocks = ps.record.live_blocks, "pack file is missing; its blocks will read as corrupted");
        }
    }
    Ok(())
}

fn same_place(a: &Entry, b: &Entry) -> bool {
    (a.pack, a.offset, a.len) == (b.pack, b.offset, b.len)
}

fn decode_pin(raw: &[u8]) -> Result<Pin, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::IndexDamaged { what: format!("pin record: {e}") })
}

fn decode_cid(bytes: &[u8]) -> Result<Cid, StoreError> {
    Cid::try_from(bytes).map_err(|e| StoreError::IndexDamaged { what: format!("block key: {e}") })
}

/// A little-endian u64 saved in the index's metadata.
fn decode_u64(value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| StoreError::IndexDamaged { what: format!("capacity record of {} bytes", value.len()) })?;
    Ok(u64::from_le_bytes(bytes))
}
