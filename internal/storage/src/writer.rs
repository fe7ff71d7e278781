//! [`BlockWriter`]: a write session that appends block bodies to a pack and makes them stored at commit.
//!
//! Bodies go straight to the end of a pack this session alone writes to; their index entries wait in
//! memory. `commit` syncs the pack data first and then writes all entries, the refcounts, the pin and the
//! pack's new committed length in one atomic sled batch and flushes it. Whatever the batch does not cover
//! is past the committed length, and `Store::open` cuts it off.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};

use cid::Cid;
use tracing::warn;

use crate::index::{self, Entry};
use crate::store::Store;
use crate::verify;
use crate::{Pin, StoreError};

/// Bodies are appended through a buffer this large: small blocks (dag-pb nodes) coalesce into large
/// sequential writes, and 256 KiB chunks, being as large as the buffer, bypass it and are written without
/// a copy. (A 4 MiB buffer measured slower here: the extra copy and longer writeback stalls per write.)
const WRITE_BUFFER: usize = 256 << 10;

/// What a commit stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Blocks whose bodies this session wrote and that are now stored.
    pub blocks_written: u64,
    /// Bytes of those blocks.
    pub bytes_written: u64,
    /// Distinct blocks put in this session that were already stored (so not written again).
    pub blocks_deduplicated: u64,
    /// Whether this commit added the pin (false without a pin or if the root was already pinned).
    pub pinned: bool,
}

/// A write session; see the module docs. Dropping it without `commit` discards everything it wrote.
pub struct BlockWriter {
    store: Store,
    /// Packs this session appended to; the last one is being written.
    packs: Vec<OpenPack>,
    /// Blocks whose bodies this session wrote, in order.
    pending: Vec<PendingBlock>,
    /// CID bytes of every distinct block put in this session, written or found already stored.
    session: HashSet<Vec<u8>>,
    /// CID bytes of blocks found already stored, protected from deletion until this session ends.
    protected: Vec<Vec<u8>>,
    /// Bytes of `pending`, reserved against the capacity.
    reserved: u64,
    /// A write failed part-way; the pack position is unknown, so the session can only be dropped.
    poisoned: bool,
    committed: bool,
}

struct OpenPack {
    id: u32,
    /// The pack's committed length when this session took it; dropping truncates back to it.
    base: u64,
    /// Where the next body goes.
    pos: u64,
    out: Option<BufWriter<File>>,
}

struct PendingBlock {
    cid: Vec<u8>,
    pack: u32,
    offset: u64,
    len: u32,
}

impl std::fmt::Debug for BlockWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockWriter")
            .field("pending_blocks", &self.pending.len())
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl BlockWriter {
    pub(crate) fn new(store: Store) -> BlockWriter {
        BlockWriter {
            store,
            packs: Vec::new(),
            pending: Vec::new(),
            session: HashSet::new(),
            protected: Vec::new(),
            reserved: 0,
            poisoned: false,
            committed: false,
        }
    }

    /// Adds block `cid` with body `data` to this session. A block already stored, or already put in this
    /// session, is not written again. Fails with [`StoreError::Full`] if the block does not fit.
    ///
    /// The body is not checked against `cid` here (the caller just hashed it); `get` checks every read.
    pub fn put(&mut self, cid: &Cid, data: &[u8]) -> Result<(), StoreError> {
        verify::check_supported(cid)?;
        let len =
            u32::try_from(data.len()).map_err(|_| StoreError::BlockTooLarge { cid: *cid, len: data.len() as u64 })?;
        if self.poisoned {
            return Err(poisoned());
        }
        let key = cid.to_bytes();
        if self.session.contains(&key) {
            return Ok(());
        }
        {
            let inner = &self.store.inner;
            let mut st = inner.lock();
            // Checked under the lock so that the block cannot be deleted between this check and protecting it.
            if inner.db.contains_key(index::block_key(&key))? {
                *st.protected.entry(key.clone()).or_default() += 1;
                drop(st);
                self.protected.push(key.clone());
                self.session.insert(key);
                return Ok(());
            }
            let free = st.capacity.saturating_sub(st.counters.bytes_held.saturating_add(st.pending));
            if u64::from(len) > free {
                return Err(StoreError::Full { needed: u64::from(len), free, capacity: st.capacity });
            }
            st.pending += u64::from(len);
        }
        self.reserved += u64::from(len);

        let pack = self.current_pack()?;
        let offset = pack.pos;
        let out = pack.out.as_mut().expect("current pack is open");
        if let Err(e) = out.write_all(data) {
            let id = pack.id;
            self.poisoned = true;
            return Err(StoreError::io(format!("appending block {cid} to pack {id}"), e));
        }
        pack.pos += u64::from(len);
        let id = pack.id;
        self.pending.push(PendingBlock { cid: key.clone(), pack: id, offset, len });
        self.session.insert(key);
        Ok(())
    }

    /// Bytes this session has written and not yet committed.
    pub fn pending_bytes(&self) -> u64 {
        self.reserved
    }

    /// Makes every block of this session stored, and pins `pin.root` with every distinct block put in it
    /// (each counted once; nothing changes if the root is already pinned). When this returns Ok the blocks
    /// survive a crash. On error nothing of this session is stored.
    pub fn commit(mut self, pin: Option<Pin>) -> Result<CommitStats, StoreError> {
        if self.poisoned {
            return Err(poisoned());
        }
        for p in &mut self.packs {
            let out = p.out.as_mut().expect("pack is open until drop");
            let path = self.store.inner.pack_path(p.id);
            out.flush().map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
            out.get_ref().sync_data().map_err(|e| StoreError::io(format!("syncing {}", path.display()), e))?;
        }

        let inner = self.store.inner.clone();
        let mut duplicates = Vec::new();
        let mut stats = CommitStats::default();
        {
            let mut st = inner.lock();
            let mut next = st.counters.clone();
            let mut batch = sled::Batch::default();
            let mut new_entries: HashMap<&[u8], Entry> = HashMap::with_capacity(self.pending.len());
            for b in &self.pending {
                if inner.db.contains_key(index::block_key(&b.cid))? {
                    // Another session committed the same block after our put: ours is dead space.
                    duplicates.push((b.pack, b.offset, u64::from(b.len)));
                    continue;
                }
                new_entries.insert(&b.cid, Entry { pack: b.pack, offset: b.offset, len: b.len, refcount: 0 });
                let ps = next.packs.get_mut(&b.pack).expect("a writer's packs stay known");
                ps.record.live_bytes += u64::from(b.len);
                ps.record.live_blocks += 1;
                next.bytes_held += u64::from(b.len);
                next.blocks += 1;
                stats.blocks_written += 1;
                stats.bytes_written += u64::from(b.len);
            }
            stats.blocks_deduplicated = self.session.len() as u64 - stats.blocks_written;

            if let Some(pin) = &pin {
                let root = pin.root.to_bytes();
                let pin_key = index::pin_key(&root);
                if !inner.db.contains_key(&pin_key)? {
                    let prefix = index::pin_blocks_prefix(&root);
                    for cid in &self.session {
                        if let Some(entry) = new_entries.get_mut(cid.as_slice()) {
                            entry.refcount += 1;
                        } else {
                            // Stored before: protected since our put, or committed by another session
                            // while we hold the lock.
                            let block_key = index::block_key(cid);
                            let raw = inner.db.get(&block_key)?.ok_or_else(|| StoreError::IndexDamaged {
                                what: "a block this session relies on vanished from the index".to_owned(),
                            })?;
                            let mut entry = Entry::decode(&raw)?;
                            entry.refcount = entry.refcount.saturating_add(1);
                            batch.insert(block_key, &entry.encode());
                        }
                        batch.insert(index::pin_block_key(&prefix, cid), &[]);
                    }
                    let record = serde_json::to_vec(pin)
                        .map_err(|e| StoreError::IndexDamaged { what: format!("pin record: {e}") })?;
                    batch.insert(pin_key, record);
                    next.pins += 1;
                    stats.pinned = true;
                }
            }
            for (cid, entry) in &new_entries {
                batch.insert(index::block_key(cid), &entry.encode());
            }
            let mut seen = BTreeSet::new();
            for p in &self.packs {
                if seen.insert(p.id) {
                    let ps = next.packs.get_mut(&p.id).expect("a writer's packs stay known");
                    ps.record.committed_len = p.pos;
                    batch.insert(&index::pack_key(p.id), &ps.record.encode());
                }
            }
            inner.db.apply_batch(batch)?;
            st.counters = next;
            st.pending -= self.reserved;
            self.reserved = 0;
            st.unprotect(&self.protected);
            self.protected.clear();
            self.committed = true;
        }
        inner.db.flush()?;
        for (id, offset, len) in duplicates {
            inner.punch(id, offset, len);
        }
        Ok(stats)
    }

    /// The pack to append to: the current one, or a new one if there is none or it reached its target size.
    fn current_pack(&mut self) -> Result<&mut OpenPack, StoreError> {
        let inner = &self.store.inner;
        let full = !matches!(self.packs.last(), Some(p) if p.pos < inner.pack_target_size);
        if full {
            if let Some(p) = self.packs.last_mut() {
                // Hand the bytes to the OS now; they are synced at commit.
                let out = p.out.as_mut().expect("pack is open until drop");
                if let Err(e) = out.flush() {
                    self.poisoned = true;
                    return Err(StoreError::io(format!("writing pack {}", p.id), e));
                }
            }
            let (id, base) = inner.acquire_pack();
            self.packs.push(OpenPack { id, base, pos: base, out: None });
            let path = inner.pack_path(id);
            let open = || -> std::io::Result<File> {
                let mut file = OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
                // Anything past the committed length is an earlier session's discarded data.
                file.set_len(base)?;
                file.seek(SeekFrom::Start(base))?;
                Ok(file)
            };
            let file = open().map_err(|e| StoreError::io(format!("opening {} for writing", path.display()), e))?;
            self.packs.last_mut().expect("just pushed").out = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        }
        Ok(self.packs.last_mut().expect("a pack is open"))
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        let inner = self.store.inner.clone();
        for p in &mut self.packs {
            let Some(out) = p.out.take() else { continue };
            // `into_parts` drops the buffered bytes instead of writing them.
            let (file, _unwritten) = out.into_parts();
            if !self.committed {
                if let Err(e) = file.set_len(p.base) {
                    // The index never points past `base`; the next writer or open cuts these bytes off.
                    warn!(pack = p.id, error = %e, "could not discard an uncommitted write");
                }
            }
        }
        {
            let mut st = inner.lock();
            st.pending -= self.reserved;
            st.unprotect(&self.protected);
        }
        let ids: Vec<u32> = self.packs.iter().map(|p| p.id).collect();
        inner.release_packs(&ids);
    }
}

fn poisoned() -> StoreError {
    StoreError::io(
        "an earlier write of this session failed",
        std::io::Error::other("drop this writer and add the file again"),
    )
}
