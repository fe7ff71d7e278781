//! Helpers shared by the integration tests: blocks with real CIDs.

#![allow(dead_code, unreachable_pub)]

use cid::multihash::Multihash;
use cid::Cid;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use xnode_storage::{Pin, Store, StoreConfig};

/// Codec of raw blocks.
pub const RAW: u64 = 0x55;

/// The CIDv1 (raw, sha2-256) of `data`.
pub fn cid_of(data: &[u8]) -> Cid {
    Cid::new_v1(RAW, Multihash::wrap(0x12, &Sha256::digest(data)).expect("32-byte digest fits"))
}

/// `n` random blocks of `size` bytes from `seed`, with their CIDs.
pub fn blocks(seed: u64, n: usize, size: usize) -> Vec<(Cid, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut data = vec![0; size];
            rng.fill(&mut data[..]);
            (cid_of(&data), data)
        })
        .collect()
}

/// Random blocks of the given sizes from `seed`, with their CIDs.
pub fn blocks_sized(seed: u64, sizes: impl IntoIterator<Item = usize>) -> Vec<(Cid, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    sizes
        .into_iter()
        .map(|size| {
            let mut data = vec![0; size];
            rng.fill(&mut data[..]);
            (cid_of(&data), data)
        })
        .collect()
}

/// Block sizes that are multiples of nothing, mixing dag-pb-like nodes of a few bytes, a few KiB (straddling
/// page boundaries) and about 250 KiB: `n` of them from `seed`, some 5 MiB for every 60.
pub fn odd_sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| match i % 3 {
            0 => rng.gen_range(1..300),
            1 => rng.gen_range(3000..9000),
            _ => rng.gen_range(240_000..262_144),
        })
        .collect()
}

/// The lengths of the pack files in `dir`, by name.
pub fn pack_lengths(dir: &std::path::Path) -> Vec<u64> {
    let mut packs: Vec<_> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    packs.sort();
    packs.into_iter().map(|(_, len)| len).collect()
}

/// A pin record for `root`.
pub fn pin(root: Cid, name: &str) -> Pin {
    Pin { root, name: name.to_owned(), size: 0, added_at: 1_700_000_000 }
}

/// Sum of the lengths of the pack files in `dir`.
pub fn pack_file_lengths(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("packs")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// Opens the store in `dir`, also right after the previous handle on it was dropped: sled releases its file lock from
/// a background thread a moment after its last handle goes (spacejam/sled#1234), so a held lock is waited for, up to
/// two seconds.
pub fn open_store(dir: &std::path::Path, config: StoreConfig) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match Store::open(dir, config) {
            Ok(store) => return store,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening the store: {e}"),
        }
    }
}
