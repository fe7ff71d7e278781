//! [`BlockWriter`]: a write session that appends block bodies to a pack and makes them stored at commit.
//!
//! Bodies go straight to the end of a pack this session alone writes to; their index entries wait in
//! memory. `commit` syncs the pack data first and then writes all entries, the refcounts, the pin and the
//! pack's new committed length in one atomic sled batch and flushes it. Whatever the batch does not cover
//! is past the committed length, and `Store::open` cuts it off.
//!
//! With direct I/O the session copies bodies into one aligned buffer and writes whole pages of it at aligned
//! offsets; the buffer always starts at the aligned offset at or below the pack's end, so a session on a pack whose
//! length is not a multiple of 4 KiB first reads that partial page back. At the end of a pack (a roll or the
//! commit) the last page goes out padded with zeros and the file is cut to its exact length. Through the page
//! cache it coalesces small bodies like a `BufWriter` and writes large ones straight from the caller.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::PathBuf;

use cid::Cid;
use tracing::warn;

use crate::direct::{self, AlignedBuf};
use crate::index::{self, Entry, Staged};
use crate::store::{Inner, Store};
use crate::verify;
use crate::{Pin, StoreError};

/// Through the page cache, bodies are appended through a buffer this large: small blocks (dag-pb nodes) coalesce
/// into large sequential writes, and 256 KiB chunks, being as large as the buffer, bypass it and are written
/// without a copy. (A 4 MiB buffer measured slower here: the extra copy and longer writeback stalls per write.)
const WRITE_BUFFER: usize = 256 << 10;

/// With direct I/O every body is copied into a buffer this large, written out whenever it is full. Each direct
/// write waits for the disk, so fewer, larger ones suit disks with a high latency per request (1 MiB measured the
/// same on this VM's virtio disk); the buffer is reused for the whole session, so its pages are touched once.
const DIRECT_BUFFER: usize = 4 << 20;

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
    /// Bodies go around the page cache if the store uses direct I/O.
    direct: bool,
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
    /// Bytes of the last pack not yet written, from the pack's end minus their length (aligned with direct I/O).
    /// Allocated with the first pack.
    buf: Option<AlignedBuf>,
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
    /// `None` once dropped.
    out: Option<PackFile>,
}

/// A pack file open for writing, around the page cache or through it.
struct PackFile {
    file: File,
    direct: bool,
    /// To reopen it through the page cache.
    path: PathBuf,
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
    pub(crate) fn new(store: Store, direct: bool) -> BlockWriter {
        BlockWriter {
            store,
            direct,
            packs: Vec::new(),
            pending: Vec::new(),
            session: HashSet::new(),
            protected: Vec::new(),
            reserved: 0,
            buf: None,
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

        self.current_pack()?;
        let pack = self.packs.last_mut().expect("a pack is open");
        let (id, offset) = (pack.id, pack.pos);
        let buf = self.buf.as_mut().expect("allocated with the first pack");
        if let Err(e) = pack.append(buf, data, &self.store.inner) {
            self.poisoned = true;
            return Err(StoreError::io(format!("appending block {cid} to pack {id}"), e));
        }
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
    pub fn commit(self, pin: Option<Pin>) -> Result<CommitStats, StoreError> {
        self.commit_holding(pin, None)
    }

    /// Makes every block of this session stored, as [`BlockWriter::commit`], and marks every distinct block put in
    /// it as staged by `staged` (an ingest session, see [`crate::Store::stage`]): one reference each, so nothing
    /// evicts them, until the allocation keeps them ([`crate::Store::keep`]) or they are unstaged. Blocks the
    /// allocation already keeps get no mark; a block staged before gets the new session and time.
    pub fn commit_staged(self, staged: Staged) -> Result<CommitStats, StoreError> {
        self.commit_holding(None, Some(staged))
    }

    fn commit_holding(mut self, pin: Option<Pin>, staged: Option<Staged>) -> Result<CommitStats, StoreError> {
        if self.poisoned {
            return Err(poisoned());
        }
        if let (Some(p), Some(buf)) = (self.packs.last_mut(), self.buf.as_mut()) {
            let path = self.store.inner.pack_path(p.id);
            p.finish(buf, &self.store.inner).map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        }
        for p in &self.packs {
            let out = p.out.as_ref().expect("pack is open until drop");
            let path = self.store.inner.pack_path(p.id);
            out.file.sync_data().map_err(|e| StoreError::io(format!("syncing {}", path.display()), e))?;
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
                // A block quarantined as corrupt gets back the pin references it had.
                let quarantined = index::quarantined_key(&b.cid);
                let refcount = match inner.db.get(&quarantined)? {
                    Some(raw) => {
                        batch.remove(quarantined);
                        index::decode_refs(&raw)
                    }
                    None => 0,
                };
                new_entries.insert(&b.cid, Entry { pack: b.pack, offset: b.offset, len: b.len, refcount });
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
                            if entry.refcount == 0 {
                                next.needed += 1;
                            }
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
            if let Some(staged) = staged {
                for cid in &self.session {
                    if inner.db.contains_key(index::held_key(cid))? {
                        continue;
                    }
                    let staged_key = index::staged_key(cid);
                    let fresh = !inner.db.contains_key(&staged_key)?;
                    batch.insert(staged_key, &staged.encode());
                    if !fresh {
                        continue;
                    }
                    if let Some(entry) = new_entries.get_mut(cid.as_slice()) {
                        entry.refcount += 1;
                    } else {
                        let block_key = index::block_key(cid);
                        let raw = inner.db.get(&block_key)?.ok_or_else(|| StoreError::IndexDamaged {
                            what: "a block this session relies on vanished from the index".to_owned(),
                        })?;
                        let mut entry = Entry::decode(&raw)?;
                        if entry.refcount == 0 {
                            next.needed += 1;
                        }
                        entry.refcount = entry.refcount.saturating_add(1);
                        batch.insert(block_key, &entry.encode());
                    }
                }
            }
            for (cid, entry) in &new_entries {
                if entry.refcount > 0 {
                    next.needed += 1;
                }
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

    /// Makes the last pack the one to append to: the current one, or a new one if there is none or it reached its
    /// target size. A failure poisons the session.
    fn current_pack(&mut self) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let direct = self.direct && inner.direct_io();
        if matches!(self.packs.last(), Some(p) if p.pos < inner.pack_target_size) {
            return Ok(());
        }
        if let (Some(p), Some(buf)) = (self.packs.last_mut(), self.buf.as_mut()) {
            // Hand the bytes to the OS now (to the disk, with direct I/O); they are synced at commit.
            if let Err(e) = p.finish(buf, inner) {
                self.poisoned = true;
                return Err(StoreError::io(format!("writing pack {}", p.id), e));
            }
        }
        let (id, base) = inner.acquire_pack();
        // Pushed before opening, so that drop releases the pack whatever happens next.
        self.packs.push(OpenPack { id, base, pos: base, out: None });
        let path = inner.pack_path(id);
        let buf = self.buf.get_or_insert_with(|| AlignedBuf::new(if direct { DIRECT_BUFFER } else { WRITE_BUFFER }));
        match PackFile::open(inner, path.clone(), base, buf, direct) {
            Ok(out) => {
                self.packs.last_mut().expect("just pushed").out = Some(out);
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(StoreError::io(format!("opening {} for writing", path.display()), e))
            }
        }
    }
}

impl PackFile {
    /// Opens pack `path` to append at `base`, its committed length, and readies `buf` for it: empty, or with direct
    /// I/O holding the bytes from the aligned offset below `base`.
    fn open(inner: &Inner, path: PathBuf, base: u64, buf: &mut AlignedBuf, direct: bool) -> io::Result<PackFile> {
        let mut direct = direct && inner.direct_io();
        let file = match direct::open(&path, direct, true) {
            Err(e) if direct && direct::is_refusal(&e) => {
                inner.fall_back(&e);
                direct = false;
                direct::open(&path, false, true)?
            }
            opened => opened?,
        };
        // Anything past the committed length is an earlier session's discarded data.
        file.set_len(base)?;
        if base == 0 {
            // A new pack's directory entry must be on disk before a commit's index records point into it: after a
            // power cut, a synced file whose name was never synced is gone with every block in it.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut out = PackFile { file, direct, path };
        buf.clear();
        let start = direct::align_down(base);
        if out.direct && start < base {
            let want = (base - start) as usize;
            let got = match buf.read_at(&out.file, true, start, want) {
                Err(e) if direct::is_refusal(&e) => {
                    out.fall_back(inner, &e)?;
                    buf.clear();
                    return Ok(out);
                }
                read => read?,
            };
            if got != want {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "pack shorter than its committed length"));
            }
        }
        Ok(out)
    }

    /// Writes `bytes` at `offset`. A direct write the file system refuses is done again through the page cache,
    /// which this pack (and the whole store) uses from then on.
    fn write_at(&mut self, inner: &Inner, bytes: &[u8], offset: u64) -> io::Result<()> {
        match direct::write_at(&self.file, self.direct, bytes, offset) {
            Err(e) if self.direct && direct::is_refusal(&e) => {
                self.fall_back(inner, &e)?;
                direct::write_at(&self.file, false, bytes, offset)
            }
            written => written,
        }
    }

    /// Reopens the pack without `O_DIRECT` after the file system refused direct I/O.
    fn fall_back(&mut self, inner: &Inner, err: &io::Error) -> io::Result<()> {
        inner.fall_back(err);
        self.file = direct::open(&self.path, false, false)?;
        self.direct = false;
        Ok(())
    }
}

impl OpenPack {
    /// Appends `data` at `pos`, through `buf`, which holds the bytes before it that are not written yet.
    fn append(&mut self, buf: &mut AlignedBuf, data: &[u8], inner: &Inner) -> io::Result<()> {
        let out = self.out.as_mut().expect("current pack is open");
        if !out.direct {
            // Like a `BufWriter`: small bodies coalesce, large ones are written without a copy.
            if buf.len() + data.len() > WRITE_BUFFER.min(buf.capacity()) {
                out.write_at(inner, buf.filled(), self.pos - buf.len() as u64)?;
                buf.clear();
            }
            if data.len() >= WRITE_BUFFER.min(buf.capacity()) {
                out.write_at(inner, data, self.pos)?;
                self.pos += data.len() as u64;
                return Ok(());
            }
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = buf.push(rest);
            rest = &rest[n..];
            self.pos += n as u64;
            if buf.is_full() {
                // A whole number of pages at an aligned offset: written as is, and the buffer starts again there.
                out.write_at(inner, buf.filled(), self.pos - buf.len() as u64)?;
                buf.clear();
            }
        }
        Ok(())
    }

    /// Writes what `buf` still holds of this pack, so that the file ends exactly at `pos`. With direct I/O the
    /// last page goes out padded with zeros and the file is then cut back to `pos`.
    fn finish(&mut self, buf: &mut AlignedBuf, inner: &Inner) -> io::Result<()> {
        if buf.len() == 0 {
            return Ok(());
        }
        let out = self.out.as_mut().expect("pack is open until drop");
        let start = self.pos - buf.len() as u64;
        if out.direct {
            let len = buf.len();
            let padded = buf.padded();
            let cut = padded.len() > len;
            out.write_at(inner, padded, start)?;
            if cut {
                out.file.set_len(self.pos)?;
            }
        } else {
            out.write_at(inner, buf.filled(), start)?;
        }
        buf.clear();
        Ok(())
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        let inner = self.store.inner.clone();
        for p in &mut self.packs {
            // The bytes still in the buffer are dropped with it, unwritten.
            let Some(out) = p.out.take() else { continue };
            if !self.committed {
                if let Err(e) = out.file.set_len(p.base) {
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

#[cfg(test)]
mod tests {
    use cid::multihash::Multihash;
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::direct::REFUSE;
    use crate::StoreConfig;

    fn block(rng: &mut impl Rng, size: usize) -> (Cid, Vec<u8>) {
        let mut data = vec![0; size];
        rng.fill(&mut data[..]);
        (Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(&data)).unwrap()), data)
    }

    /// `n` blocks of odd sizes, some 60 KiB to 120 KiB, some of a few bytes.
    fn blocks(seed: u64, n: usize) -> Vec<(Cid, Vec<u8>)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let size = if i % 2 == 0 { rng.gen_range(60_000..120_000) } else { rng.gen_range(1..500) };
                block(&mut rng, size)
            })
            .collect()
    }

    /// Opens with direct I/O, waiting out a sled lock still held by a store just dropped (spacejam/sled#1234).
    fn open(dir: &std::path::Path) -> Store {
        for _ in 0..100 {
            match Store::open(dir, StoreConfig::default()) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                opened => return opened.unwrap(),
            }
        }
        panic!("the sled lock on {} stayed held", dir.display());
    }

    fn put_all(store: &Store, data: &[(Cid, Vec<u8>)]) -> BlockWriter {
        let mut w = store.writer();
        for (cid, body) in data {
            w.put(cid, body).unwrap();
        }
        w
    }

    fn pack_len(store: &Store) -> u64 {
        std::fs::metadata(store.inner.pack_path(0)).unwrap().len()
    }

    fn assert_all_read(store: &Store, data: &[(Cid, Vec<u8>)]) {
        for (cid, body) in data {
            assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice(), "{cid}");
        }
    }

    /// Runs `f` as if the file system refused direct I/O from the start.
    fn refusing<T>(f: impl FnOnce() -> T) -> T {
        REFUSE.set(true);
        let out = f();
        REFUSE.set(false);
        out
    }

    #[test]
    fn a_file_system_that_refuses_direct_io_from_the_start_gets_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let first = blocks(1, 20);
        let store = open(dir.path());
        assert!(store.direct_io());
        refusing(|| {
            put_all(&store, &first).commit(None).unwrap();
            assert!(!store.direct_io(), "the refused open switched the store to the page cache");
            assert_all_read(&store, &first);
        });
        let total: u64 = first.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(pack_len(&store), total);
        // It stays buffered even where direct I/O would work again.
        let second = blocks(2, 5);
        put_all(&store, &second).commit(None).unwrap();
        assert!(!store.direct_io());
        assert_all_read(&store, &first);
        assert_all_read(&store, &second);
    }

    #[test]
    fn direct_writes_refused_mid_session_are_redone_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let committed = blocks(3, 9);
        put_all(&store, &committed).commit(None).unwrap();
        let base = pack_len(&store);
        assert_ne!(base % 4096, 0);

        // More than the direct buffer, so some pages went out directly before the refusal.
        let data = blocks(4, 200);
        let (before, after) = data.split_at(150);
        let mut w = put_all(&store, before);
        assert!(store.direct_io());
        assert!(pack_len(&store) > base + (1 << 20));
        refusing(|| {
            for (cid, body) in after {
                w.put(cid, body).unwrap();
            }
            w.commit(None).unwrap();
        });
        assert!(!store.direct_io());
        let total = base + data.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        assert_eq!(pack_len(&store), total);
        assert_all_read(&store, &committed);
        assert_all_read(&store, &data);
        // Reopened, the store reads directly again what went through the page cache.
        drop(store);
        let store = open(dir.path());
        assert!(store.direct_io());
        assert_all_read(&store, &committed);
        assert_all_read(&store, &data);
    }

    #[test]
    fn a_refused_final_write_at_commit_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let data = blocks(5, 7);
        let w = put_all(&store, &data);
        assert_eq!(pack_len(&store), 0, "everything still in the buffer");
        refusing(|| w.commit(None).unwrap());
        assert!(!store.direct_io());
        assert_eq!(pack_len(&store), data.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
        assert_all_read(&store, &data);
    }

    #[test]
    fn dropped_session_after_a_fallback_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let kept = blocks(7, 5);
        put_all(&store, &kept).commit(None).unwrap();
        let base = pack_len(&store);
        let lost = blocks(8, 100);
        let w = put_all(&store, &lost[..80]);
        refusing(|| {
            let mut w = w;
            for (cid, body) in &lost[80..] {
                w.put(cid, body).unwrap();
            }
            assert!(pack_len(&store) > base);
        });
        assert_eq!(pack_len(&store), base);
        assert!(!store.has(&lost[0].0).unwrap());
        assert_all_read(&store, &kept);
    }
}
