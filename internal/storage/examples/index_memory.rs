//! Resident memory of a sled index under random inserts, by segment size: what decided the index's 64 KiB
//! segments (`src/open.rs`, docs/storage.md "Memory of the index").
//!
//! `cargo run --release -p xnode-storage --example index_memory -- --keys 4194304 --segment 65536 [--cache BYTES]
//! [--flush-every MS --idle SECS]`
//!
//! Inserts `--keys` keys of 40 bytes (four per block: a kind byte and the block's hash, blocks in random order, as
//! CIDs arrive) with 20-byte values (an index entry) in batches of 1,024 keys, with the store's 32 MiB cache (or `--cache`), and prints the process's resident memory as
//! it goes and after the last flush and a `malloc_trim`. Run it once per segment size: sled's memory is per
//! process. `--segment 524288` is sled's default and what every index used before.

use std::time::Instant;

const KEY_LEN: usize = 40;
const BATCH: u64 = 1024;

fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    (statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096) >> 20
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let keys: u64 = arg("--keys").map_or(1 << 20, |v| v.parse().expect("--keys N"));
    let segment: usize = arg("--segment").map_or(64 << 10, |v| v.parse().expect("--segment BYTES"));
    let cache: u64 = arg("--cache").map_or(32 << 20, |v| v.parse().expect("--cache BYTES"));
    let flush_every: u64 = arg("--flush-every").map_or(500, |v| v.parse().expect("--flush-every MS"));
    let idle: u64 = arg("--idle").map_or(0, |v| v.parse().expect("--idle SECS"));
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = sled::Config::new()
        .path(dir.path().join("index"))
        .cache_capacity(cache)
        .flush_every_ms(Some(flush_every))
        .segment_size(segment)
        .open()
        .expect("sled");
    let started = Instant::now();
    let report_every = (keys / 8).max(BATCH);
    let mut done = 0u64;
    while done < keys {
        let mut batch = sled::Batch::default();
        // Four keys per block (four kinds of record, as an index keeps), 256 blocks per batch.
        for i in (done / 4)..((done + BATCH).min(keys) / 4) {
            // A multiplicative hash of i: blocks arrive in no order, as CIDs do.
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
            for kind in b'a'..=b'd' {
                let mut key = Vec::with_capacity(KEY_LEN);
                key.push(kind);
                while key.len() < KEY_LEN {
                    key.extend_from_slice(&h);
                }
                key.truncate(KEY_LEN);
                batch.insert(key, &[0u8; 20][..]);
            }
        }
        db.apply_batch(batch).expect("apply_batch");
        done = (done + BATCH).min(keys);
        if done % report_every < BATCH {
            println!("{done:>10} keys  {:>7.1} s  RSS {:>6} MiB", started.elapsed().as_secs_f64(), rss_mib());
        }
    }
    db.flush().expect("flush");
    trim();
    println!(
        "segment {} KiB, {keys} keys: {:.1} s, RSS {} MiB after the flush and a malloc_trim",
        segment >> 10,
        started.elapsed().as_secs_f64(),
        rss_mib()
    );
    if idle > 0 {
        // What the index costs doing nothing: sled's flusher thread (every `--flush-every` ms: roll the log buffer,
        // try to garbage-collect segments, fsync).
        let before = cpu_secs();
        let mut last = before;
        for minute in 1..=idle.div_ceil(60) {
            std::thread::sleep(std::time::Duration::from_secs(60.min(idle - (minute - 1) * 60)));
            let now = cpu_secs();
            println!("  idle minute {minute}: {:.2}% of a core", (now - last) / 60.0 * 100.0);
            last = now;
        }
        let used = cpu_secs() - before;
        println!(
            "idle {idle} s with a flush every {flush_every} ms: {used:.3} CPU-s, {:.2}% of a core",
            used / idle as f64 * 100.0
        );
    }
}

/// User + system CPU seconds of this process.
fn cpu_secs() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer it is given, which points at one.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: zero-initialised, and filled in by the successful call.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
