//! What a scrub pass costs: fills a store with 256 KiB blocks (real CIDs), drops their pages from the page cache,
//! then walks the store as the node's scrub does (`Store::blocks_after` a page at a time, a checked `Store::get`
//! per block, paced to a byte rate in 4 MiB steps) and prints, per rate, the wall time, the CPU it took and the bytes
//! it read from the disk. `docs/reliability.md` reports its output.
//!
//! `cargo run --release -p xnode-storage --example scrub -- --size 10GiB --dir /tmp/scrub --rates 16MiB,0`
//!
//! A rate of 0 is full speed. CPU is this process's (`getrusage`); disk bytes are `read_bytes` of
//! `/proc/self/io` (what the block layer read for us, so page-cache hits count nothing). `--keep` reuses a store
//! filled by an earlier run.
//!
//! `--flip N` flips one byte in each of N blocks on disk before the first pass, as a failing disk would (the last N
//! blocks written, found by content in the newest pack; the pass walks blocks in CID order, so where they fall in
//! it is random), and prints when the pass reached each one: the time from a flipped byte to the scrub finding it,
//! which is when the node's repair task starts (`docs/reliability.md`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cid::multihash::Multihash;
use cid::Cid;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use xnode_storage::{Store, StoreConfig, StoreError};

const BLOCK: usize = 256 << 10;
/// The node's scrub reads this much between two looks at its pace (`internal/instance/src/scrub.rs`).
const CHUNK: u64 = 4 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let size = parse_size(&arg("--size").unwrap_or_else(|| "1GiB".into()));
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/tmp/scrub_bench".into()));
    let rates: Vec<u64> =
        arg("--rates").unwrap_or_else(|| "16MiB,0".into()).split(',').map(|r| parse_size(r.trim())).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let flips: u64 = arg("--flip").map_or(0, |n| n.parse().expect("--flip takes a count"));
    let blocks = (size / BLOCK as u64) as usize;

    let store = Store::open(&dir, StoreConfig::default()).unwrap();
    if !keep || store.stats().unwrap().blocks == 0 {
        let fill = Instant::now();
        let mut w = store.writer();
        for i in 0..blocks as u64 {
            let body = block_body(i);
            let cid = Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(&body)).unwrap());
            w.put(&cid, &body).unwrap();
            if i % 4096 == 4095 {
                w.commit(None).unwrap();
                w = store.writer();
            }
        }
        w.commit(None).unwrap();
        println!("filled {} blocks ({} MiB) in {:.1} s", blocks, size >> 20, fill.elapsed().as_secs_f64());
    }
    let held = store.stats().unwrap().bytes_held;
    println!("store: {} MiB in {}", held >> 20, dir.display());
    println!("| rate | wall (s) | MiB/s | CPU user + sys (s) | CPU % of one core | disk read (MiB) | corrupt |");
    println!("|---|---|---|---|---|---|---|");
    let flipped = flip_last(&dir.join("packs"), blocks as u64, flips);
    for rate in rates {
        drop_cached_pages(&dir.join("packs"));
        let (user0, sys0) = rusage();
        let io0 = read_bytes();
        let began = Instant::now();
        let (mut bytes, mut corrupt, mut since_pace) = (0u64, 0u64, 0u64);
        let mut after: Option<Cid> = None;
        loop {
            let page = store.blocks_after(after.as_ref(), 64).unwrap();
            let Some(last) = page.last().map(|(c, _)| *c) else { break };
            for (cid, len) in page {
                match store.get(&cid) {
                    Ok(_) => {}
                    Err(StoreError::Corrupted { .. }) => {
                        corrupt += 1;
                        if flipped.contains(&cid) {
                            println!(
                                "  flipped block found {:.1} s into the pass, after {} MiB",
                                began.elapsed().as_secs_f64(),
                                bytes >> 20
                            );
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
                bytes += len;
                since_pace += len;
                if since_pace >= CHUNK && rate > 0 {
                    since_pace = 0;
                    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(began.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            after = Some(last);
        }
        let wall = began.elapsed().as_secs_f64();
        let (user, sys) = rusage();
        let (user, sys) = (user - user0, sys - sys0);
        let disk = read_bytes().saturating_sub(io0);
        let label = if rate == 0 { "full speed".to_string() } else { format!("{} MiB/s", rate >> 20) };
        println!(
            "| {label} | {wall:.1} | {:.0} | {user:.2} + {sys:.2} | {:.1} | {} | {corrupt} |",
            bytes as f64 / wall / (1 << 20) as f64,
            (user + sys) / wall * 100.0,
            disk >> 20
        );
    }
    if !keep {
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The body of block `i`: the same random bytes for every block, the first 8 replaced by `i`.
fn block_body(i: u64) -> Vec<u8> {
    let mut body = vec![0; BLOCK];
    rand::rngs::StdRng::seed_from_u64(1).fill(&mut body[..]);
    body[..8].copy_from_slice(&i.to_le_bytes());
    body
}

/// Flips a byte in the middle of each of the last `n` of `blocks` blocks written, looked up by content in the
/// newest pack files. Nothing quarantines them here, so every pass finds them again. Returns their CIDs.
fn flip_last(packs: &Path, blocks: u64, n: u64) -> Vec<Cid> {
    use std::os::unix::fs::FileExt;
    let mut files: Vec<_> = std::fs::read_dir(packs).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).unwrap());
    let mut flipped = Vec::new();
    for i in blocks.saturating_sub(n)..blocks {
        let body = block_body(i);
        let cid = Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(&body)).unwrap());
        let found = files.iter().rev().take(4).find_map(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(64).position(|w| w == &body[..64]).map(|at| (path, bytes[at + BLOCK / 2], at + BLOCK / 2))
        });
        let (path, byte, at) = found.unwrap_or_else(|| panic!("block {i} is not in the newest packs"));
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&[byte ^ 0x5a], at as u64).unwrap();
        f.sync_all().unwrap();
        flipped.push(cid);
    }
    flipped
}

/// User and system CPU seconds of this process.
fn rusage() -> (f64, f64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer it is given, which points at one.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: zero-initialised, and filled in by the successful call.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Bytes this process made the block layer read (`read_bytes` of `/proc/self/io`; 0 where it is not available).
fn read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("read_bytes: ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// Drops the cached pages of every file in `dir` (GNU dd: `iflag=nocache count=0` on the whole file).
fn drop_cached_pages(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let status = Command::new("dd")
            .arg(format!("if={}", entry.unwrap().path().display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn parse_size(s: &str) -> u64 {
    if s == "0" {
        return 0;
    }
    s.parse::<bytesize::ByteSize>().expect("a size like 1GiB, 16MiB or 1073741824").as_u64()
}
