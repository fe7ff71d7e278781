//! Helpers shared by the integration tests: blocks with real CIDs.

#![allow(dead_code, unreachable_pub)]

use cid::multihash::Multihash;
use cid::Cid;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use xnode_storage::Pin;

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

/// A pin record for `root`.
pub fn pin(root: Cid, name: &str) -> Pin {
    Pin { root, name: name.to_owned(), size: 0, added_at: 1_700_000_000 }
}

/// Sum of the lengths of the pack files in `dir`.
pub fn pack_file_lengths(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("packs")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}
