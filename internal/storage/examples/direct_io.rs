//! What direct I/O saves: puts 256 KiB blocks into a fresh store and commits, then reads every block back, once
//! with `direct_io` and once through the page cache, and prints wall time and CPU time of each phase.
//! `docs/storage.md` reports its output.
//!
//! `cargo run --release -p xnode-storage --example direct_io -- --size 1GiB --dir /tmp/x --runs 3`
//!
//! CPU is this process's user and system time (`getrusage`); it leaves out the kernel's writeback threads, which
//! write the page cache out for the buffered mode (so that mode costs somewhat more than it shows). Bodies
//! are one random buffer with a counter stamped in, and CIDs are hashes of the counter, so neither generating nor
//! hashing is measured; reads use `get_unchecked` for the same reason. Before reading, the packs' pages are dropped
//! from the page cache (`dd iflag=nocache count=0`), so both modes read from the disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cid::multihash::Multihash;
use cid::Cid;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use xnode_storage::{Store, StoreConfig};

const BLOCK: usize = 256 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let size = parse_size(&arg("--size").unwrap_or_else(|| "1GiB".into()));
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/tmp/direct_io".into()));
    let runs: usize = arg("--runs").map_or(3, |r| r.parse().expect("--runs N"));
    let blocks = (size / BLOCK as u64) as usize;

    let mut body = vec![0; BLOCK];
    rand::rngs::StdRng::seed_from_u64(1).fill(&mut body[..]);
    let cids: Vec<Cid> = (0..blocks as u64)
        .map(|i| Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(i.to_le_bytes())).unwrap()))
        .collect();

    println!("{blocks} blocks of 256 KiB = {} MiB in {}", size >> 20, dir.display());
    println!("| run | mode | put+commit wall (s) | CPU user + sys (s) | read wall (s) | CPU user + sys (s) |");
    println!("|---|---|---|---|---|---|");
    for run in 1..=runs {
        for direct_io in [true, false] {
            let store_dir = dir.join(if direct_io { "direct" } else { "buffered" });
            let _ = std::fs::remove_dir_all(&store_dir);
            let store = Store::open(&store_dir, StoreConfig { direct_io, ..Default::default() }).unwrap();

            let put = Phase::start();
            let mut w = store.writer();
            for (i, cid) in cids.iter().enumerate() {
                body[..8].copy_from_slice(&(i as u64).to_le_bytes());
                w.put(cid, &body).unwrap();
            }
            w.commit(None).unwrap();
            let put = put.end();
            assert_eq!(store.direct_io(), direct_io, "the file system refused direct I/O");

            drop_cached_pages(&store_dir.join("packs"));
            let read = Phase::start();
            let mut bytes = 0;
            for cid in &cids {
                bytes += store.get_unchecked(cid).unwrap().expect("stored").len();
            }
            let read = read.end();
            assert_eq!(bytes, blocks * BLOCK);

            let mode = if direct_io { "direct" } else { "buffered" };
            println!(
                "| {run} | {mode} | {:.2} | {:.2} + {:.2} | {:.2} | {:.2} + {:.2} |",
                put.wall, put.user, put.sys, read.wall, read.user, read.sys
            );
            drop(store);
            std::fs::remove_dir_all(&store_dir).unwrap();
        }
    }
}

/// Times of one phase, in seconds.
struct Times {
    wall: f64,
    user: f64,
    sys: f64,
}

struct Phase {
    at: Instant,
    user: f64,
    sys: f64,
}

impl Phase {
    fn start() -> Phase {
        let (user, sys) = rusage();
        Phase { at: Instant::now(), user, sys }
    }

    fn end(self) -> Times {
        let (user, sys) = rusage();
        Times { wall: self.at.elapsed().as_secs_f64(), user: user - self.user, sys: sys - self.sys }
    }
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
    s.parse::<bytesize::ByteSize>().expect("--size like 1GiB, 512MiB or 1073741824").as_u64()
}
