//! Crash safety: a child process adds blocks in a loop and is killed with SIGKILL; the reopened store must
//! hold every block the child reported committed, intact, and serve nothing half-written.
//!
//! The child is this test binary again (`crash_child`), driven by environment variables.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cid::Cid;
use rand::Rng;
use xnode_storage::{Store, StoreConfig};

const DIR: &str = "XNODE_CRASH_DIR";
const MODE: &str = "XNODE_CRASH_MODE";
const ROUND: &str = "XNODE_CRASH_ROUND";
const DIRECT: &str = "XNODE_CRASH_DIRECT";

/// Small packs so that crashes also land on pack rolls.
fn config(direct_io: bool) -> StoreConfig {
    StoreConfig { pack_target_size: 8 << 20, direct_io, ..Default::default() }
}

/// The child's work; a no-op when run as an ordinary test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR) else { return };
    let mode = std::env::var(MODE).unwrap();
    let round: u64 = std::env::var(ROUND).unwrap().parse().unwrap();
    let direct: bool = std::env::var(DIRECT).unwrap().parse().unwrap();
    let store = Store::open(Path::new(&dir), config(direct)).unwrap();
    let mut rng = rand::thread_rng();
    for i in 0.. {
        let seed = round * 1_000_000 + i;
        // Mostly large sessions, so that a kill usually lands while a writer has uncommitted data.
        let n = if mode == "hang" { 4 } else { rng.gen_range(1..120) };
        let data = common::blocks(seed, n, 64 << 10);
        let mut w = store.writer();
        for (cid, body) in &data {
            w.put(cid, body).unwrap();
        }
        w.commit(None).unwrap();
        for (cid, _) in &data {
            println!("C {cid}");
        }
        if mode == "hang" && i == 3 {
            // More than the write buffer (either), so the bytes reach the pack file, then wait to be killed.
            let data = common::blocks(seed + 500_000, 100, 64 << 10);
            let mut w = store.writer();
            for (cid, body) in &data {
                w.put(cid, body).unwrap();
                println!("P {cid}");
            }
            println!("PENDING");
            std::thread::sleep(Duration::from_secs(600));
            unreachable!("the parent kills us");
        }
    }
}

/// Runs the child until `kill_when` says so, kills it with SIGKILL, and returns the CIDs it reported
/// committed and those it had put without committing.
fn run_child(
    dir: &Path,
    direct: bool,
    mode: &str,
    round: u64,
    kill_when: impl Fn(usize, &str) -> bool,
) -> (Vec<Cid>, Vec<Cid>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(DIR, dir)
        .env(MODE, mode)
        .env(ROUND, round.to_string())
        .env(DIRECT, direct.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut committed, mut pending) = (Vec::new(), Vec::new());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(c) = line.strip_prefix("C ") {
            committed.push(Cid::try_from(c).unwrap());
        } else if let Some(c) = line.strip_prefix("P ") {
            pending.push(Cid::try_from(c).unwrap());
        }
        if kill_when(committed.len(), &line) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    (committed, pending)
}

/// Every block the index lists (the child commits without pins, so all are "unpinned") must read intact.
fn assert_all_served_blocks_verify(store: &Store) -> usize {
    let all = store.unpinned_blocks().unwrap();
    for cid in &all {
        assert!(store.get(cid).unwrap().is_some(), "{cid} listed but not served");
    }
    all.len()
}

#[test]
fn sigkill_mid_add_keeps_every_committed_block_and_serves_no_partial_one() {
    sigkill_mid_add(true);
}

#[test]
fn sigkill_mid_add_through_the_page_cache() {
    sigkill_mid_add(false);
}

fn sigkill_mid_add(direct: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut reported = Vec::new();
    let mut rng = rand::thread_rng();

    // Kills at random moments of a busy add loop.
    for round in 1..=4 {
        let after = rng.gen_range(50..400);
        let delay = Duration::from_millis(rng.gen_range(0..40));
        let (committed, _) = run_child(dir.path(), direct, "random", round, |n, _| {
            if n >= after {
                std::thread::sleep(delay);
                true
            } else {
                false
            }
        });
        assert!(committed.len() >= after);
        reported.extend(committed);
        let store = Store::open(dir.path(), config(direct)).unwrap();
        for cid in &reported {
            assert!(store.get(cid).unwrap().is_some(), "committed block {cid} lost after SIGKILL (round {round})");
        }
        let listed = assert_all_served_blocks_verify(&store);
        assert!(listed >= reported.len());
    }

    // A kill while a writer certainly has uncommitted bytes in the pack file.
    let (committed, pending) = run_child(dir.path(), direct, "hang", 9, |_, line| line == "PENDING");
    assert_eq!(pending.len(), 100);
    reported.extend(committed);
    let before = common::pack_file_lengths(dir.path());
    let store = Store::open(dir.path(), config(direct)).unwrap();
    let after = common::pack_file_lengths(dir.path());
    assert!(after + (1 << 20) <= before, "open cut off the uncommitted bytes: {before} -> {after}");
    for cid in &reported {
        assert!(store.get(cid).unwrap().is_some(), "committed block {cid} lost after SIGKILL");
    }
    for cid in &pending {
        assert!(!store.has(cid).unwrap(), "uncommitted block {cid} is served");
    }
    assert_all_served_blocks_verify(&store);
    let stats = store.stats().unwrap();
    assert_eq!(stats.bytes_held, stats.blocks * (64 << 10));
    let gc = store.gc().unwrap();
    assert_eq!(gc.blocks_deleted, stats.blocks);
    assert_eq!(common::pack_file_lengths(dir.path()), 0);
}
