//! The simulated cluster shared by `tests/simulation.rs` and `examples/placement_sim.rs`: seeded, so every run
//! (and every machine) sees the same nodes and blocks.

#![allow(dead_code, reason = "each includer uses a different subset")]

use xnode_placement::{BlockKey, BlockRef, NodeInfo};

pub(crate) const TB: u64 = 1_000_000_000_000;
pub(crate) const FULL_BLOCK: u32 = 256 * 1024;

/// SplitMix64: tiny, seedable, and the same everywhere, which is all a simulation needs.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` nodes named `node-0000`... with capacities drawn uniformly from 1, 2, 4 and 8 TB.
pub(crate) fn cluster(n: usize, seed: u64) -> Vec<NodeInfo> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| NodeInfo { name: format!("node-{i:04}"), capacity: [1, 2, 4, 8][(rng.next() % 4) as usize] * TB })
        .collect()
}

/// `n` blocks: 90% full 256 KiB chunks, the rest (file tails, directory nodes) uniform in 1 B..256 KiB. Keys come
/// from SHA-256 over stand-in CID bytes, as they would for real CIDs.
pub(crate) fn blocks(n: usize, seed: u64) -> Vec<BlockRef> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let cid = rng.next().to_le_bytes();
            let roll = rng.next();
            let size = if roll % 100 < 10 { 1 + ((roll >> 8) % u64::from(FULL_BLOCK)) as u32 } else { FULL_BLOCK };
            BlockRef { key: BlockKey::of(&cid), size }
        })
        .collect()
}

/// `nodes` with the node called `name` given `capacity`.
pub(crate) fn resized(nodes: &[NodeInfo], name: &str, capacity: u64) -> Vec<NodeInfo> {
    nodes.iter().map(|n| if n.name == name { NodeInfo { capacity, ..n.clone() } } else { n.clone() }).collect()
}
