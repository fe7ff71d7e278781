//! Behaviour of the block store through its public API. Every scenario runs twice (see `both_modes!` at the end):
//! with direct I/O, the default, and through the page cache.

mod common;

use std::path::Path;

use cid::multihash::Multihash;
use cid::Cid;
use common::{blocks, blocks_sized, cid_of, odd_sizes, pack_lengths, pin};
use xnode_storage::{Store, StoreConfig, StoreError};

const KIB: usize = 1024;

fn open(dir: &Path, config: StoreConfig) -> Store {
    common::open_store(dir, config)
}

fn put_get_roundtrip_and_reopen_keeps_everything(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let data = blocks(1, 20, 256 * KIB);
    let root = data[0].0;
    {
        let store = open(dir.path(), config);
        let mut w = store.writer();
        for (cid, body) in &data {
            w.put(cid, body).unwrap();
        }
        assert!(!store.has(&root).unwrap(), "blocks are not stored before commit");
        let stats = w.commit(Some(pin(root, "a.bin"))).unwrap();
        assert_eq!(stats.blocks_written, 20);
        assert!(stats.pinned);
        for (cid, body) in &data {
            assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
        }
    }
    let store = open(dir.path(), config);
    for (cid, body) in &data {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
        assert_eq!(store.block_size(cid).unwrap(), Some(256 * KIB as u64));
    }
    let stats = store.stats().unwrap();
    assert_eq!((stats.blocks, stats.bytes_held, stats.pins), (20, 20 * 256 * KIB as u64, 1));
    assert_eq!(store.pin(&root).unwrap().unwrap().name, "a.bin");
    assert_eq!(store.pins().unwrap().len(), 1);
    assert_eq!(store.get(&cid_of(b"absent")).unwrap(), None);
}

fn same_block_twice_is_stored_once(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(2, 1, 100 * KIB);
    let (cid, body) = &data[0];
    let mut w = store.writer();
    w.put(cid, body).unwrap();
    w.put(cid, body).unwrap();
    assert_eq!(w.pending_bytes(), 100 * KIB as u64);
    w.commit(Some(pin(*cid, "one"))).unwrap();
    let mut w = store.writer();
    w.put(cid, body).unwrap();
    let stats = w.commit(Some(pin(*cid, "again"))).unwrap();
    assert_eq!((stats.blocks_written, stats.blocks_deduplicated, stats.pinned), (0, 1, false));
    let s = store.stats().unwrap();
    assert_eq!((s.blocks, s.bytes_held), (1, 100 * KIB as u64));
    assert_eq!(common::pack_file_lengths(dir.path()), 100 * KIB as u64);
    // Pinning the same root twice counted once: one unpin frees it.
    assert_eq!(store.unpin(cid).unwrap().blocks_deleted, 1);
    assert!(!store.has(cid).unwrap());
}

fn shared_block_survives_first_unpin_and_goes_with_the_second(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let shared = blocks(3, 1, 256 * KIB).remove(0);
    let a = blocks(4, 32, 256 * KIB);
    let b = blocks(5, 32, 256 * KIB);
    for (file, root) in [(&a, a[0].0), (&b, b[0].0)] {
        let mut w = store.writer();
        w.put(&shared.0, &shared.1).unwrap();
        for (cid, body) in file {
            w.put(cid, body).unwrap();
        }
        w.commit(Some(pin(root, "f"))).unwrap();
    }
    let before = store.stats().unwrap();
    assert_eq!(before.blocks, 65);

    let un = store.unpin(&a[0].0).unwrap();
    assert_eq!((un.blocks_released, un.blocks_deleted), (33, 32));
    assert_eq!(store.get(&shared.0).unwrap().unwrap(), shared.1.as_slice());
    assert!(!store.has(&a[5].0).unwrap());
    let mid = store.stats().unwrap();
    assert_eq!(mid.bytes_held, 33 * 256 * KIB as u64);
    assert!(
        mid.disk_bytes + 7 * (1 << 20) < before.disk_bytes,
        "punching holes released ~8 MiB: before {} after {}",
        before.disk_bytes,
        mid.disk_bytes
    );

    store.unpin(&b[0].0).unwrap();
    assert!(!store.has(&shared.0).unwrap());
    let after = store.stats().unwrap();
    assert_eq!((after.blocks, after.bytes_held, after.pins), (0, 0, 0));
    assert_eq!(common::pack_file_lengths(dir.path()), 0, "the empty pack is deleted");
    assert!(matches!(store.unpin(&b[0].0), Err(StoreError::NotPinned { .. })));
}

fn put_over_capacity_fails_with_free_bytes_and_loses_nothing(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig { capacity: 300 * KIB as u64, ..config }).unwrap();
    let data = blocks(6, 3, 100 * KIB);
    let mut w = store.writer();
    w.put(&data[0].0, &data[0].1).unwrap();
    w.put(&data[1].0, &data[1].1).unwrap();
    w.commit(Some(pin(data[0].0, "f"))).unwrap();

    let mut w = store.writer();
    let big = blocks(7, 1, 101 * KIB).remove(0);
    let err = w.put(&big.0, &big.1).unwrap_err();
    match &err {
        StoreError::Full { needed, free, capacity } => {
            assert_eq!((*needed, *free, *capacity), (101 * KIB as u64, 100 * KIB as u64, 300 * KIB as u64))
        }
        other => panic!("expected Full, got {other}"),
    }
    assert!(err.to_string().contains("only 102400 bytes free of 300 KiB capacity"), "{err}");
    // Pending bytes of open writers count too.
    w.put(&data[2].0, &data[2].1).unwrap();
    let mut other = store.writer();
    assert!(matches!(other.put(&big.0, &big.1), Err(StoreError::Full { free: 0, .. })));
    drop(other);
    w.commit(None).unwrap();
    for (cid, body) in &data {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }
    store.set_capacity(1 << 20).unwrap();
    assert_eq!(store.stats().unwrap().free, (1 << 20) - 300 * KIB as u64);
}

fn capacity_set_at_run_time_wins_over_the_configured_one_at_reopen(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let configured = StoreConfig { capacity: 300 * KIB as u64, ..config };
    let store = Store::open(dir.path(), configured).unwrap();
    drop(store);
    // Until a resize, the configured capacity applies at every open.
    let store = Store::open(dir.path(), StoreConfig { capacity: 400 * KIB as u64, ..config }).unwrap();
    assert_eq!(store.stats().unwrap().capacity, 400 * KIB as u64);
    store.set_capacity(5 << 20).unwrap();
    drop(store);
    let store = Store::open(dir.path(), configured).unwrap();
    assert_eq!(store.stats().unwrap().capacity, 5 << 20, "the resize survives a restart with the variable set");
    store.set_capacity(2 << 20).unwrap();
    drop(store);
    let store = Store::open(dir.path(), StoreConfig { capacity: u64::MAX, ..config }).unwrap();
    assert_eq!(store.stats().unwrap().capacity, 2 << 20, "the latest resize wins, even over unlimited");
}

fn flipped_byte_reads_as_corrupted(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(8, 3, 64 * KIB);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let pack = std::fs::read_dir(dir.path().join("packs")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64 * KIB + 10] ^= 0x01; // inside the second block
    std::fs::write(&pack, bytes).unwrap();
    assert!(matches!(store.get(&data[1].0), Err(StoreError::Corrupted { cid }) if cid == data[1].0));
    assert_eq!(store.get(&data[0].0).unwrap().unwrap(), data[0].1.as_slice());
    assert_eq!(store.get(&data[2].0).unwrap().unwrap(), data[2].1.as_slice());
}

fn a_quarantined_block_leaves_service_and_gets_its_pins_back_when_stored_again(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(81, 3, 64 * KIB);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(data[0].0, "f"))).unwrap();
    store.keep(&[data[1].0]).unwrap();
    let held_before = store.stats().unwrap().bytes_held;
    let pack = std::fs::read_dir(dir.path().join("packs")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64 * KIB + 10] ^= 0x01; // inside the second block: pinned and kept
    std::fs::write(&pack, bytes).unwrap();
    let bad = data[1].0;
    assert!(matches!(store.get(&bad), Err(StoreError::Corrupted { .. })));

    let q = store.quarantine(&bad).unwrap().expect("it was stored");
    assert!(q.kept, "the allocation held it");
    assert_eq!(q.bytes, 64 * KIB as u64);
    assert!(!store.has(&bad).unwrap(), "out of service: absent to readers and peers");
    assert_eq!(store.get(&bad).unwrap(), None);
    assert_eq!(store.get_unchecked(&bad).unwrap(), None, "never served");
    assert!(!store.is_kept(&bad).unwrap());
    assert_eq!(store.quarantined().unwrap(), vec![bad], "the pin still needs it");
    assert_eq!(store.stats().unwrap().bytes_held, held_before - 64 * KIB as u64);
    assert_eq!(store.quarantine(&bad).unwrap(), None, "twice is a no-op");

    // A good copy arrives (fetched from a peer): the pin's reference comes back with it, so gc leaves it alone.
    let mut w = store.writer();
    w.put(&bad, &data[1].1).unwrap();
    w.commit(None).unwrap();
    assert_eq!(store.get(&bad).unwrap().unwrap(), data[1].1.as_slice());
    assert!(store.quarantined().unwrap().is_empty());
    store.gc().unwrap();
    assert!(store.has(&bad).unwrap(), "pinned again, so not loose cache");
    // And the unpin counts it down and deletes it like any other block of the file.
    store.unpin(&data[0].0).unwrap();
    assert!(!store.has(&bad).unwrap());
    assert_eq!(store.stats().unwrap().blocks, 0);
}

fn an_unpin_while_quarantined_drops_the_saved_reference(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(82, 2, 16 * KIB);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(data[0].0, "f"))).unwrap();
    store.quarantine(&data[1].0).unwrap().unwrap();
    store.unpin(&data[0].0).unwrap();
    assert!(store.quarantined().unwrap().is_empty(), "nothing needs it any more");
    let mut w = store.writer();
    w.put(&data[1].0, &data[1].1).unwrap();
    w.commit(None).unwrap();
    assert_eq!(store.unpinned_blocks().unwrap(), vec![data[1].0], "stored again as loose cache only");
}

fn blocks_after_pages_through_every_block_once(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(83, 25, 4 * KIB);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.blocks_after(after.as_ref(), 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        assert!(page.iter().all(|(_, len)| *len == 4 * KIB as u64));
        after = page.last().map(|(c, _)| *c);
        seen.extend(page.into_iter().map(|(c, _)| c));
    }
    let mut want: Vec<Cid> = data.iter().map(|(c, _)| *c).collect();
    want.sort_by_key(|c| c.to_bytes());
    assert_eq!(seen, want);
}

fn unchecked_reads_skip_the_hash_but_not_the_index(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let data = blocks(9, 3, 64 * KIB);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(data[0].0, "f"))).unwrap();
    assert_eq!(store.get_unchecked(&data[0].0).unwrap().unwrap(), data[0].1.as_slice());
    assert_eq!(store.get_unchecked(&cid_of(b"absent")).unwrap(), None);
    let pack = std::fs::read_dir(dir.path().join("packs")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64 * KIB + 10] ^= 0x01; // inside the second block
    std::fs::write(&pack, bytes).unwrap();
    // The checked read finds the flip; the unchecked one hands the stored bytes out as they are (the receiver of a
    // Bitswap block hashes it and rejects it).
    assert!(matches!(store.get(&data[1].0), Err(StoreError::Corrupted { .. })));
    let read = store.get_unchecked(&data[1].0).unwrap().unwrap();
    assert_eq!(read.len(), 64 * KIB);
    assert_ne!(read, data[1].1.as_slice());
    // A deleted block is absent, not a hole of zeros.
    store.unpin(&data[0].0).unwrap();
    assert_eq!(store.get_unchecked(&data[2].0).unwrap(), None);
}

fn dropping_a_writer_discards_its_blocks(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let kept = blocks(9, 2, 64 * KIB);
    let mut w = store.writer();
    for (cid, body) in &kept {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let lost = blocks(10, 100, 64 * KIB);
    let mut w = store.writer();
    for (cid, body) in &lost {
        w.put(cid, body).unwrap();
    }
    assert!(store.stats().unwrap().free < u64::MAX);
    drop(w);
    assert!(!store.has(&lost[0].0).unwrap());
    assert_eq!(common::pack_file_lengths(dir.path()), 2 * 64 * KIB as u64, "pack truncated back");
    assert_eq!(store.stats().unwrap().free, u64::MAX - 2 * 64 * KIB as u64, "reservation released");
    let store2 = {
        drop(store);
        open(dir.path(), config)
    };
    assert_eq!(store2.stats().unwrap().blocks, 2);
}

fn unpinned_blocks_are_listed_and_gc_removes_them(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let loose = blocks(11, 3, 10 * KIB);
    let pinned = blocks(12, 2, 10 * KIB);
    let mut w = store.writer();
    for (cid, body) in &loose {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let mut w = store.writer();
    for (cid, body) in &pinned {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(pinned[0].0, "p"))).unwrap();
    let mut listed = store.unpinned_blocks().unwrap();
    listed.sort();
    let mut expected: Vec<Cid> = loose.iter().map(|b| b.0).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let gc = store.gc().unwrap();
    assert_eq!((gc.blocks_deleted, gc.bytes_freed), (3, 30 * KIB as u64));
    assert!(store.unpinned_blocks().unwrap().is_empty());
    assert!(store.has(&pinned[1].0).unwrap());
}

fn a_block_a_writer_relies_on_is_not_deleted_under_it(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let b = blocks(13, 1, 10 * KIB).remove(0);
    let mut w = store.writer();
    w.put(&b.0, &b.1).unwrap();
    w.commit(Some(pin(b.0, "first"))).unwrap();
    let mut w = store.writer();
    w.put(&b.0, &b.1).unwrap(); // dedup: relies on the stored copy
    assert_eq!(store.unpin(&b.0).unwrap().blocks_deleted, 0);
    assert_eq!(store.gc().unwrap().blocks_deleted, 0);
    w.commit(Some(pin(b.0, "second"))).unwrap();
    assert_eq!(store.get(&b.0).unwrap().unwrap(), b.1.as_slice());
    assert_eq!(store.unpin(&b.0).unwrap().blocks_deleted, 1);
}

fn concurrent_writers_use_different_packs_and_roll_at_target_size(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig { pack_target_size: 256 * KIB as u64, ..config }).unwrap();
    let a = blocks(14, 8, 64 * KIB);
    let b = blocks(15, 8, 64 * KIB);
    let mut wa = store.writer();
    let mut wb = store.writer();
    for i in 0..8 {
        wa.put(&a[i].0, &a[i].1).unwrap();
        wb.put(&b[i].0, &b[i].1).unwrap();
    }
    wb.commit(Some(pin(b[0].0, "b"))).unwrap();
    wa.commit(Some(pin(a[0].0, "a"))).unwrap();
    let packs = std::fs::read_dir(dir.path().join("packs")).unwrap().count();
    assert_eq!(packs, 4, "two writers, two packs each of 256 KiB");
    store.unpin(&a[0].0).unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("packs")).unwrap().count(), 2, "emptied packs are deleted");
    drop(store);
    let store = open(dir.path(), config);
    for (cid, body) in &b {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }
}

fn unsupported_hashes_are_refused_and_identity_is_accepted(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let blake = Cid::new_v1(0x55, Multihash::wrap(0x1e, &[7; 32]).unwrap());
    let mut w = store.writer();
    assert!(matches!(w.put(&blake, b"x"), Err(StoreError::UnsupportedHash { code: 0x1e, .. })));
    let id = Cid::new_v1(0x55, Multihash::wrap(0x00, b"tiny").unwrap());
    w.put(&id, b"tiny").unwrap();
    w.commit(None).unwrap();
    assert_eq!(store.get(&id).unwrap().unwrap(), &b"tiny"[..]);
    assert!(matches!(store.get(&blake), Err(StoreError::UnsupportedHash { .. })));
}

fn store_handle_is_shared_across_threads(config: StoreConfig) {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Store>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let data = blocks(100 + t, 16, 32 * KIB);
                let mut w = store.writer();
                for (cid, body) in &data {
                    w.put(cid, body).unwrap();
                }
                w.commit(Some(pin(data[0].0, "t"))).unwrap();
                data
            })
        })
        .collect();
    for h in handles {
        for (cid, body) in h.join().unwrap() {
            assert_eq!(store.get(&cid).unwrap().unwrap(), body.as_slice());
        }
    }
    assert_eq!(store.stats().unwrap().blocks, 64);
}

fn kept_blocks_survive_unpin_and_gc_until_released(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let file = blocks(21, 4, 10 * KIB);
    let mut w = store.writer();
    for (cid, body) in &file {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(file[0].0, "f"))).unwrap();
    let cids: Vec<Cid> = file.iter().map(|b| b.0).collect();
    // Keeping twice counts once; a CID that is not stored is skipped.
    assert_eq!(store.keep(&cids[..2]).unwrap(), 2);
    assert_eq!(store.keep(&[cids[0], cid_of(b"absent")]).unwrap(), 0);
    assert!(store.is_kept(&cids[0]).unwrap());
    assert!(!store.is_kept(&cids[2]).unwrap());

    let unpin = store.unpin(&cids[0]).unwrap();
    assert_eq!(unpin.blocks_deleted, 2, "only the two blocks nobody keeps go");
    store.gc().unwrap();
    assert!(store.has(&cids[0]).unwrap() && store.has(&cids[1]).unwrap());
    let mut kept = store.kept().unwrap();
    kept.sort();
    let mut expected = cids[..2].to_vec();
    expected.sort();
    assert_eq!(kept, expected);

    let released = store.release(&cids[..2]).unwrap();
    assert_eq!((released.blocks_released, released.blocks_deleted), (2, 2));
    assert!(!store.has(&cids[0]).unwrap());
    assert_eq!(store.stats().unwrap().blocks, 0);
    // Reopening keeps the marks' effect: nothing left, nothing kept.
    drop(store);
    let store = open(dir.path(), config);
    assert!(store.kept().unwrap().is_empty());
}

/// The count of needed blocks the store keeps (what a status shows) agrees with a scan of the index after every kind
/// of change: cache, pin, keep (a CID twice), a shared block, quarantine, release, unpin, gc and a reopen.
fn the_needed_count_follows_every_change_without_a_scan(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let check = |store: &Store, expected: u64, when: &str| {
        assert_eq!(store.needed_blocks(0, None).unwrap().0, expected, "scan, {when}");
        assert_eq!(store.stats().unwrap().needed_blocks, expected, "counter, {when}");
    };
    let file = blocks(31, 4, 8 * KIB);
    let cache = blocks(32, 3, 8 * KIB);
    let mut w = store.cached_writer();
    for (cid, body) in &cache {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    check(&store, 0, "read cache only");
    let mut w = store.writer();
    for (cid, body) in file.iter().chain(&cache[..1]) {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(file[0].0, "f"))).unwrap();
    check(&store, 5, "a pin over four new blocks and one cached");
    store.keep(&[cache[1].0, cache[1].0, file[1].0]).unwrap();
    check(&store, 6, "keep of a cached block (listed twice) and of a pinned one");
    store.quarantine(&file[2].0).unwrap().unwrap();
    check(&store, 5, "a pinned block quarantined");
    let mut w = store.cached_writer();
    w.put(&file[2].0, &file[2].1).unwrap();
    w.commit(None).unwrap();
    check(&store, 6, "the quarantined block stored again gets its pin back");
    store.release(&[cache[1].0, file[1].0]).unwrap();
    check(&store, 5, "release: the cached block is free again, the pinned one still needed");
    drop(store);
    let store = open(dir.path(), config);
    check(&store, 5, "after a reopen");
    store.unpin(&file[0].0).unwrap();
    check(&store, 0, "unpinned");
    store.gc().unwrap();
    check(&store, 0, "after gc");
    assert_eq!(store.stats().unwrap().blocks, 0);
}

/// Staged blocks (an ingest's, not claimed by any file yet) survive gc; keeping one claims it without a second
/// reference; staging again moves the mark to the new session; unstaging deletes what nothing else needs.
fn staged_blocks_survive_gc_until_kept_or_unstaged(config: StoreConfig) {
    use xnode_storage::Staged;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let file = blocks(31, 4, 10 * KIB);
    let cids: Vec<Cid> = file.iter().map(|b| b.0).collect();
    let mut w = store.writer();
    for (cid, body) in &file[..3] {
        w.put(cid, body).unwrap();
    }
    w.commit_staged(Staged { session: 7, at_ms: 1000 }).unwrap();
    // The fourth block arrives as a plain (cache) commit, then is staged by a later request of another session.
    let mut w = store.writer();
    w.put(&file[3].0, &file[3].1).unwrap();
    w.commit(None).unwrap();
    assert_eq!(store.stage(&[cids[3], cids[3], cid_of(b"absent")], Staged { session: 8, at_ms: 2000 }).unwrap(), 1);
    store.gc().unwrap();
    assert_eq!(store.stats().unwrap().blocks, 4, "gc leaves staged blocks alone");
    let needed = |store: &Store| (store.stats().unwrap().needed_blocks, store.needed_blocks(0, None).unwrap().0);
    assert_eq!(needed(&store), (4, 4), "staged blocks are needed, counted as a scan counts them");
    let mut staged = store.staged().unwrap();
    staged.sort_by_key(|(_, s)| (s.session, s.at_ms));
    assert_eq!(staged.len(), 4);
    assert_eq!(staged[3].1, Staged { session: 8, at_ms: 2000 });

    // Kept: claimed, the staging mark goes, and one release deletes it (one reference, not two).
    assert_eq!(store.keep(&[cids[0]]).unwrap(), 1);
    assert!(store.is_kept(&cids[0]).unwrap());
    assert_eq!(store.staged().unwrap().len(), 3);
    // Staging a kept block changes nothing.
    assert_eq!(store.stage(&[cids[0]], Staged { session: 9, at_ms: 3000 }).unwrap(), 1);
    assert_eq!(store.staged().unwrap().len(), 3);
    // Staging again moves the mark (no second reference).
    store.stage(&[cids[1]], Staged { session: 9, at_ms: 4000 }).unwrap();
    let again: Vec<_> = store.staged().unwrap().into_iter().filter(|(c, _)| *c == cids[1]).collect();
    assert_eq!(again[0].1, Staged { session: 9, at_ms: 4000 });
    assert_eq!(needed(&store), (4, 4));

    // Reopening keeps the marks.
    drop(store);
    let store = open(dir.path(), config);
    assert_eq!(store.staged().unwrap().len(), 3);
    let gone = store.unstage(&cids[1..]).unwrap();
    assert_eq!(gone.blocks_deleted, 3, "unstaged blocks nothing else needs are deleted");
    assert!(store.staged().unwrap().is_empty());
    assert_eq!(needed(&store), (1, 1), "only the kept block");
    let released = store.release(&[cids[0]]).unwrap();
    assert_eq!(released.blocks_deleted, 1, "the kept block had one reference");
    assert_eq!(store.stats().unwrap().blocks, 0);
}

/// Sessions appending to the same pack, whose committed length is never a multiple of 4 KiB, with bodies of odd
/// sizes: every pack ends exactly after its last body, and every block reads back byte for byte, also after reopening.
fn odd_sizes_append_across_sessions_and_read_back_exactly(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    let mut held = 0;
    {
        let store = open(dir.path(), config);
        for session in 0..4 {
            let mut data = blocks_sized(40 + session, odd_sizes(session, 60));
            if session == 1 {
                // An empty body, right at an unaligned offset.
                data.insert(7, (cid_of(b""), Vec::new()));
            }
            let mut w = store.writer();
            for (cid, body) in &data {
                w.put(cid, body).unwrap();
            }
            let stats = w.commit(Some(pin(data[0].0, "odd"))).unwrap();
            assert_eq!(stats.blocks_written, data.len() as u64);
            held += data.iter().map(|(_, body)| body.len() as u64).sum::<u64>();
            assert_eq!(pack_lengths(dir.path()), vec![held], "one pack, ending exactly after the last body");
            assert_ne!(held % 4096, 0, "the next session starts on an unaligned pack");
            for (cid, body) in data.iter().chain(all.iter().take(3)) {
                assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice(), "{cid}");
            }
            all.extend(data);
        }
        assert_eq!(store.stats().unwrap().bytes_held, held);
        assert_eq!(
            store.direct_io(),
            config.direct_io,
            "the mode under test is in use (direct-mode tests need a TMPDIR whose file system allows O_DIRECT)"
        );
    }
    let store = open(dir.path(), config);
    for (cid, body) in &all {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice(), "{cid}");
        assert_eq!(store.get_unchecked(cid).unwrap().unwrap(), body.as_slice(), "{cid}");
    }
    assert_eq!(store.stats().unwrap().bytes_held, held);
}

/// A writer dropped after writing more than its buffer to an unaligned pack leaves the pack exactly as committed:
/// the committed bodies sharing the partial page it rewrote read back intact, and the next session appends after them.
fn dropping_a_writer_on_an_unaligned_pack_keeps_the_committed_bytes(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config);
    let kept = blocks_sized(50, [5000, 123, 77_777]);
    let mut w = store.writer();
    for (cid, body) in &kept {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let committed = 5000 + 123 + 77_777;

    let lost = blocks_sized(51, odd_sizes(51, 90));
    let mut w = store.writer();
    for (cid, body) in &lost {
        w.put(cid, body).unwrap();
    }
    assert!(pack_lengths(dir.path())[0] > committed + (1 << 20), "bodies reached the file before the drop");
    drop(w);
    assert_eq!(pack_lengths(dir.path()), vec![committed], "pack cut back to its committed length");
    assert!(!store.has(&lost[0].0).unwrap());
    for (cid, body) in &kept {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }

    let more = blocks_sized(52, odd_sizes(52, 10));
    let mut w = store.writer();
    for (cid, body) in &more {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    drop(store);
    let store = open(dir.path(), config);
    for (cid, body) in kept.iter().chain(&more) {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }
    let total: u64 = more.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + committed;
    assert_eq!(pack_lengths(dir.path()), vec![total]);
}

/// A session rolls to a new pack once its pack reaches the target size; each pack ends exactly after its last body,
/// and a later session fills the last pack up before starting another.
fn packs_roll_at_target_size_with_odd_sizes(config: StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let target = 1_000_000;
    let config = StoreConfig { pack_target_size: target, ..config };
    let data = blocks_sized(60, odd_sizes(60, 60));
    let store = open(dir.path(), config);
    let mut w = store.writer();
    for (cid, body) in &data {
        w.put(cid, body).unwrap();
    }
    w.commit(Some(pin(data[0].0, "rolled"))).unwrap();
    let lengths = pack_lengths(dir.path());
    let total: u64 = data.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(lengths.iter().sum::<u64>(), total);
    assert!(lengths.len() >= 5, "{lengths:?}");
    for len in &lengths[..lengths.len() - 1] {
        assert!((target..target + 262_144).contains(len), "a full pack is its target plus at most one body: {len}");
    }
    let last = lengths.len() - 1;

    let more = blocks_sized(61, odd_sizes(61, 12));
    let mut w = store.writer();
    for (cid, body) in &more {
        w.put(cid, body).unwrap();
    }
    w.commit(None).unwrap();
    let after = pack_lengths(dir.path());
    assert_eq!(&after[..last], &lengths[..last], "full packs are left alone");
    if lengths[last] < target {
        assert!(after[last] > lengths[last], "the last pack, not full, was appended to");
    }
    assert_eq!(after.iter().sum::<u64>(), total + more.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    drop(store);
    let store = open(dir.path(), config);
    for (cid, body) in data.iter().chain(&more) {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }
}

/// A store on tmpfs works whether this kernel lets tmpfs do direct I/O (6.6 and later) or refuses it (the store
/// then falls back to the page cache).
fn works_on_tmpfs(config: StoreConfig) {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm here; skipping");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let data = blocks_sized(70, odd_sizes(70, 30));
    {
        let store = open(dir.path(), config);
        let mut w = store.writer();
        for (cid, body) in &data {
            w.put(cid, body).unwrap();
        }
        w.commit(None).unwrap();
        eprintln!("tmpfs: direct I/O asked {}, in use {}", config.direct_io, store.direct_io());
    }
    let store = open(dir.path(), config);
    for (cid, body) in &data {
        assert_eq!(store.get(cid).unwrap().unwrap(), body.as_slice());
    }
}

/// Generates a test per mode for each scenario: `direct::NAME` and `buffered::NAME`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod direct {
            $(#[test] fn $name() { super::$name(xnode_storage::StoreConfig::default()); })*
        }
        mod buffered {
            $(#[test] fn $name() {
                super::$name(xnode_storage::StoreConfig { direct_io: false, ..Default::default() });
            })*
        }
    };
}

both_modes!(
    put_get_roundtrip_and_reopen_keeps_everything,
    same_block_twice_is_stored_once,
    shared_block_survives_first_unpin_and_goes_with_the_second,
    put_over_capacity_fails_with_free_bytes_and_loses_nothing,
    capacity_set_at_run_time_wins_over_the_configured_one_at_reopen,
    flipped_byte_reads_as_corrupted,
    a_quarantined_block_leaves_service_and_gets_its_pins_back_when_stored_again,
    an_unpin_while_quarantined_drops_the_saved_reference,
    blocks_after_pages_through_every_block_once,
    unchecked_reads_skip_the_hash_but_not_the_index,
    dropping_a_writer_discards_its_blocks,
    unpinned_blocks_are_listed_and_gc_removes_them,
    a_block_a_writer_relies_on_is_not_deleted_under_it,
    concurrent_writers_use_different_packs_and_roll_at_target_size,
    unsupported_hashes_are_refused_and_identity_is_accepted,
    store_handle_is_shared_across_threads,
    kept_blocks_survive_unpin_and_gc_until_released,
    the_needed_count_follows_every_change_without_a_scan,
    staged_blocks_survive_gc_until_kept_or_unstaged,
    odd_sizes_append_across_sessions_and_read_back_exactly,
    dropping_a_writer_on_an_unaligned_pack_keeps_the_committed_bytes,
    packs_roll_at_target_size_with_odd_sizes,
    works_on_tmpfs,
);
