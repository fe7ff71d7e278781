//! Stores the same random 256 KiB blocks (a) as sled values and (b) in this store's pack files, then deletes
//! half of them, and prints time, peak memory and disk use of each. `docs/storage.md` reports its output.
//!
//! `cargo run --release -p xnode-storage --example sled_vs_packs -- --size 1GiB --dir /tmp/x`
//!
//! Each variant runs in its own child process so that its peak RSS (VmHWM) is its own. Timings are wall
//! clock from the first block to the end of the final flush/commit, so they include generating and hashing
//! the blocks (as `xnode add` includes chunking and hashing); the time of generating and hashing alone is
//! printed too. A `dd conv=fsync` of the same size is run first as the disk's baseline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cid::multihash::Multihash;
use cid::Cid;
use sha2::{Digest, Sha256};
use xnode_storage::{Pin, Store, StoreConfig};

const BLOCK: usize = 256 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let size = parse_size(&arg("--size").unwrap_or_else(|| "1GiB".into()));
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/tmp/sled_vs_packs".into()));
    let blocks = (size / BLOCK as u64) as usize;
    if let Some(variant) = arg("--variant") {
        let dir = dir.join(&variant);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let line = match variant.as_str() {
            "sled" => run_sled(&dir, blocks),
            "packs" => run_packs(&dir, blocks),
            other => panic!("unknown variant {other}"),
        };
        println!("{line}");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }

    std::fs::create_dir_all(&dir).unwrap();
    println!("{} blocks of 256 KiB = {} MiB in {}", blocks, size >> 20, dir.display());
    let dd = dd_baseline(&dir, blocks);
    println!("dd conv=fsync: {:.2} s, {:.0} MiB/s", dd.as_secs_f64(), mib_per_s(size, dd));
    let t = Instant::now();
    let mut gen = Blocks::new();
    for _ in 0..blocks {
        std::hint::black_box(gen.next());
    }
    let gen = t.elapsed();
    println!("generating + hashing alone: {:.2} s, {:.0} MiB/s", gen.as_secs_f64(), mib_per_s(size, gen));
    println!(
        "| variant | time (s) | MiB/s | vs dd | peak RSS (MiB) | disk / held after add | disk / held after deleting half |"
    );
    println!("|---|---|---|---|---|---|---|");
    for variant in ["sled", "packs"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--size", &size.to_string(), "--dir", dir.to_str().unwrap(), "--variant", variant])
            .output()
            .unwrap();
        assert!(out.status.success(), "{variant} failed: {}", String::from_utf8_lossy(&out.stderr));
        let r: Vec<f64> =
            String::from_utf8(out.stdout).unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect();
        let (secs, hwm, disk_add, held_add, disk_del, held_del) = (r[0], r[1], r[2], r[3], r[4], r[5]);
        println!(
            "| {variant} | {secs:.2} | {:.0} | {:.2}x | {:.0} | {:.0} / {:.0} MiB = {:.3} | {:.0} / {:.0} MiB = {:.3} |",
            size as f64 / secs / 1048576.0,
            dd.as_secs_f64() / secs,
            hwm / 1024.0,
            disk_add / 1048576.0,
            held_add / 1048576.0,
            disk_add / held_add,
            disk_del / 1048576.0,
            held_del / 1048576.0,
            disk_del / held_del,
        );
    }
}

/// Inserts every block as a sled value, flushes, then removes the first half and flushes.
fn run_sled(dir: &Path, blocks: usize) -> String {
    let db = sled::open(dir.join("db")).unwrap();
    let mut gen = Blocks::new();
    let mut cids = Vec::with_capacity(blocks);
    let t = Instant::now();
    for _ in 0..blocks {
        let (cid, body) = gen.next();
        db.insert(cid.to_bytes(), body).unwrap();
        cids.push(cid);
    }
    db.flush().unwrap();
    let spent = t.elapsed();
    let hwm = vm_hwm_kib();
    let held = (blocks * BLOCK) as u64;
    let disk_add = du(dir);
    for cid in &cids[..blocks / 2] {
        db.remove(cid.to_bytes()).unwrap();
    }
    db.flush().unwrap();
    let disk_del = du(dir);
    format!("{} {hwm} {disk_add} {held} {disk_del} {}", spent.as_secs_f64(), held - (blocks / 2 * BLOCK) as u64)
}

/// Adds the blocks as two pinned files of half the size each, then unpins the first.
fn run_packs(dir: &Path, blocks: usize) -> String {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let mut gen = Blocks::new();
    let t = Instant::now();
    let mut roots = Vec::new();
    for half in [blocks / 2, blocks - blocks / 2] {
        let mut w = store.writer();
        let mut root = None;
        for _ in 0..half {
            let (cid, body) = gen.next();
            root.get_or_insert(cid);
            w.put(&cid, body).unwrap();
        }
        let root = root.expect("at least one block");
        w.commit(Some(Pin { root, name: "half".into(), size: (half * BLOCK) as u64, added_at: 0 })).unwrap();
        roots.push(root);
    }
    let spent = t.elapsed();
    let hwm = vm_hwm_kib();
    let stats = store.stats().unwrap();
    store.unpin(&roots[0]).unwrap();
    let after = store.stats().unwrap();
    format!(
        "{} {hwm} {} {} {} {}",
        spent.as_secs_f64(),
        stats.disk_bytes,
        stats.bytes_held,
        after.disk_bytes,
        after.bytes_held
    )
}

/// Distinct pseudo-random blocks (xorshift: cheap, incompressible enough for a file system) with CIDs.
struct Blocks {
    state: u64,
    buf: Vec<u8>,
}

impl Blocks {
    fn new() -> Blocks {
        Blocks { state: 0x9E37_79B9_7F4A_7C15, buf: vec![0; BLOCK] }
    }

    fn next(&mut self) -> (Cid, &[u8]) {
        for chunk in self.buf.chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes());
        }
        let mh = Multihash::<64>::wrap(0x12, &Sha256::digest(&self.buf)).unwrap();
        (Cid::new_v1(0x55, mh), &self.buf)
    }
}

fn dd_baseline(dir: &Path, blocks: usize) -> Duration {
    let target = dir.join("dd.bin");
    let t = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=256K")
        .arg(format!("count={blocks}"))
        .arg("conv=fsync")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let spent = t.elapsed();
    assert!(status.success());
    std::fs::remove_file(target).unwrap();
    spent
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path).unwrap().map(|e| du(&e.unwrap().path())).sum()
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1048576.0
}

fn parse_size(s: &str) -> u64 {
    s.parse::<bytesize::ByteSize>().expect("--size like 1GiB, 512MiB or 1073741824").as_u64()
}
