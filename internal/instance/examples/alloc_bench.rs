//! The allocation benchmark at cluster scale, in-process: 1,000 nodes of 1/2/4/8 TB, 100,000,000 blocks of
//! 256 KiB, RF 3 (issue 12's first check). It drives the allocation core (`xnode_instance::allocation`) and the
//! on-disk index on a synthetic catalog and prints, beside each target:
//! - time and peak memory to compute the layout after a view change (target: <= 1 s on one core; memory not
//!   growing with the block count);
//! - time to absorb a new 1 GiB file (4,096 leaves: the core's bookkeeping and the index's batch);
//! - time of one idle round (target: <= 1 ms);
//! - copies moved on a join, a removal and a capacity change, against the ideal (join <= 1.1x, removal exactly the
//!   removed node's copies);
//! - the fullest node's blocks against its capacity share (<= 1.05x).
//!
//! `cargo run --release -p xnode-instance --example alloc_bench [-- --blocks N --nodes N --partitions N]`
//!
//! Block keys are drawn from a seeded generator (what matters is their partition, which a real CID's SHA-256
//! spreads the same way); the per-partition block counts are all the memory the catalog takes here, as in the
//! node, where the catalog's leaves live in the on-disk index.

use std::time::Instant;

use xnode_instance::allocation::{AllocCore, SetDigest};
use xnode_placement::{Layout, NodeInfo};

const TB: u64 = 1_000_000_000_000;
const RF: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn cluster(n: usize, seed: u64) -> Vec<NodeInfo> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| NodeInfo { name: format!("node-{i:04}"), capacity: [1, 2, 4, 8][(rng.next() % 4) as usize] * TB })
        .collect()
}

/// A memory figure of this process from /proc/self/status (`VmHWM`: peak resident; `VmRSS`: resident now), MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mib() -> f64 {
    memory_mib("VmHWM:")
}

fn rss_mib() -> f64 {
    memory_mib("VmRSS:")
}

/// Blocks held by each node of `layout` (in its node order), given blocks per partition.
fn node_blocks(layout: &Layout, counts: &[u64]) -> Vec<u64> {
    layout.partitions_by_node().iter().map(|parts| parts.iter().map(|&p| counts[p as usize]).sum()).collect()
}

/// Each node's capacity share of `RF x blocks`, by name.
fn shares(view: &[NodeInfo], departed: &[&str], blocks: u64) -> Vec<(String, f64)> {
    let live: Vec<&NodeInfo> = view.iter().filter(|n| !departed.contains(&n.name.as_str())).collect();
    let total: f64 = live.iter().map(|n| n.capacity as f64).sum();
    live.iter().map(|n| (n.name.clone(), RF as f64 * blocks as f64 * n.capacity as f64 / total)).collect()
}

/// Copies moved from `before` to `after` (a copy of a partition's blocks on a node that did not hold it), against
/// the ideal: the sum over nodes of the growth of their share.
fn moved(
    before: (&Layout, &[NodeInfo], &[&str]),
    after: (&Layout, &[NodeInfo], &[&str]),
    counts: &[u64],
    blocks: u64,
) -> (u64, f64) {
    let copies: u64 = before.0.moved_to(after.0).iter().map(|(p, _)| counts[*p as usize]).sum();
    let old = shares(before.1, before.2, blocks);
    let ideal: f64 = shares(after.1, after.2, blocks)
        .iter()
        .map(|(n, s)| s - old.iter().find(|(o, _)| o == n).map_or(0.0, |(_, s)| *s))
        .filter(|g| *g > 0.0)
        .sum();
    (copies, ideal)
}

fn main() {
    let blocks = arg("--blocks", 100_000_000);
    let nodes = arg("--nodes", 1000) as usize;
    let partitions = arg("--partitions", u64::from(xnode_placement::DEFAULT_PARTITIONS)) as u32;
    println!("== allocation at scale: {nodes} nodes of 1/2/4/8 TB, {blocks} blocks, RF {RF}, {partitions} partitions");

    // The synthetic catalog: blocks per partition.
    let start = Instant::now();
    let mut counts = vec![0u64; partitions as usize];
    let mut rng = Rng(42);
    for _ in 0..blocks {
        counts[xnode_placement::partition_of(xnode_placement::BlockKey(rng.next()), partitions) as usize] += 1;
    }
    println!("catalog drawn in {:.1} s; RSS {:.1} MiB", start.elapsed().as_secs_f64(), rss_mib());

    let view = cluster(nodes, 1);
    let me = view[0].name.clone();
    let mut core = AllocCore::new(&me, partitions, RF).expect("valid core");
    // The catalog's digests as the index would hold them (a stand-in XOR per partition).
    for (p, &c) in counts.iter().enumerate() {
        let mut xor = [0u8; 32];
        xor[..8].copy_from_slice(&(p as u64 ^ c).to_le_bytes());
        core.load_expected(p as u32, SetDigest { count: c, xor });
    }
    let base_rss = rss_mib();

    // 1. A view change.
    let start = Instant::now();
    core.set_view(&view, &[]).expect("layout");
    let first = start.elapsed().as_secs_f64();
    // Settle: this node keeps its share.
    for p in core.incomplete().clone() {
        let e = core.expected(p);
        core.kept(p, &e);
    }
    let mut resized = view.clone();
    resized[500].capacity *= 2;
    let start = Instant::now();
    let change = core.set_view(&resized, &[]).expect("layout");
    let again = start.elapsed().as_secs_f64();
    println!(
        "view change: layout in {:.3} s (first {:.3} s)   [target <= 1 s]; this node gained {} / lost {} partitions",
        again,
        first,
        change.gained.len(),
        change.lost.len()
    );
    println!(
        "  memory: RSS {:.1} MiB before the layout, peak {:.1} MiB (the catalog's per-partition counts: {:.1} MiB; \
         nothing per block)",
        base_rss,
        peak_rss_mib(),
        (partitions as f64 * 8.0) / (1 << 20) as f64
    );

    // 2. A new 1 GiB file: 4,096 leaves through the core and the on-disk index.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new().path(dir.path()).open().expect("sled");
    let index =
        xnode_instance::allocation_index::Index::open(db.open_tree("alloc").expect("tree"), partitions).expect("index");
    let mh = |i: u64| {
        let digest: [u8; 32] =
            sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), i.to_le_bytes())).into();
        cid::Cid::new_v1(0x55, cid::multihash::Multihash::<64>::wrap(0x12, &digest).expect("sha2-256"))
    };
    let leaves: Vec<(cid::Cid, u32)> = (0..4096u64).map(|i| (mh(i), 256 * 1024)).collect();
    let root = mh(u64::MAX);
    let start = Instant::now();
    let delta = index.add_file(&root, &[root], &leaves).expect("index");
    let indexed = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut ours = 0;
    for (p, cid, _) in &delta.leaves {
        core.leaf_listed(*p, &SetDigest::of_cid(cid));
        ours += usize::from(core.is_mine(*p));
    }
    let listed = start.elapsed().as_secs_f64();
    println!(
        "a new 1 GiB file (4,096 leaves): index batch {:.1} ms + core {:.2} ms; {} of its leaves are this node's",
        indexed * 1e3,
        listed * 1e3,
        ours
    );
    // Back to idle: this node keeps its new leaves.
    for (p, cid, _) in &delta.leaves {
        if core.is_mine(*p) {
            core.kept(*p, &SetDigest::of_cid(cid));
        }
    }

    // 3. An idle round: the view unchanged, nothing incomplete or surplus.
    let rounds = 1000;
    let start = Instant::now();
    for _ in 0..rounds {
        let change = core.set_view(&resized, &[]).expect("layout");
        assert!(!change.changed);
        assert!(core.incomplete().is_empty() && core.surplus().is_empty());
        assert!(core.hand_off_questions(8192).is_empty());
    }
    println!(
        "idle round: {:.3} ms   [target <= 1 ms] (the view compared, the work sets empty)",
        start.elapsed().as_secs_f64() * 1e3 / rounds as f64
    );

    // 4. Moves and balance, from the layouts alone.
    let base = Layout::new(&view, &[], RF, partitions).expect("layout");
    let per_node = node_blocks(&base, &counts);
    let base_shares = shares(&view, &[], blocks);
    let fullest = per_node.iter().zip(&base_shares).map(|(&b, (_, s))| b as f64 / s).fold(0.0, f64::max);
    println!("fullest node: {fullest:.4}x its share   [target <= 1.05x]");

    let mut joined = view.clone();
    joined.push(NodeInfo { name: "node-new".into(), capacity: 4 * TB });
    let after = Layout::new(&joined, &[], RF, partitions).expect("layout");
    let (copies, ideal) = moved((&base, &view, &[]), (&after, &joined, &[]), &counts, blocks);
    println!(
        "join of a 4 TB node: moved {copies} copies, ideal {ideal:.0} ({:.3}x)   [target <= 1.1x]",
        copies as f64 / ideal
    );

    let victim = view[500].name.clone();
    let removed = Layout::new(&view, &[victim.as_str()], RF, partitions).expect("layout");
    let (copies, _) = moved((&base, &view, &[]), (&removed, &view, &[victim.as_str()]), &counts, blocks);
    let held = per_node[base.index_of(&victim).expect("member")];
    println!(
        "removal of {victim} ({} TB): moved {copies} copies, it held {held} ({:.4}x)   [target: exactly its copies]",
        view[500].capacity / TB,
        copies as f64 / held as f64
    );
    let after_removal = node_blocks(&removed, &counts);
    let removal_shares = shares(&view, &[victim.as_str()], blocks);
    let fullest = after_removal.iter().zip(&removal_shares).map(|(&b, (_, s))| b as f64 / s).fold(0.0, f64::max);
    println!("  fullest node after the repair: {fullest:.4}x its share");

    for (label, factor) in [("halve", 0.5), ("double", 2.0)] {
        let mut changed = view.clone();
        changed[250].capacity = (changed[250].capacity as f64 * factor) as u64;
        let after = Layout::new(&changed, &[], RF, partitions).expect("layout");
        let (copies, ideal) = moved((&base, &view, &[]), (&after, &changed, &[]), &counts, blocks);
        println!(
            "{label} the capacity of {} ({} TB): moved {copies} copies, ideal {ideal:.0} ({:.3}x)",
            changed[250].name,
            view[250].capacity / TB,
            copies as f64 / ideal
        );
    }

    if nodes >= 100 {
        let hundred = cluster(100, 7);
        let mut plus = hundred.clone();
        plus.push(NodeInfo { name: "node-new".into(), capacity: 2 * TB });
        let a = Layout::new(&hundred, &[], RF, partitions).expect("layout");
        let b = Layout::new(&plus, &[], RF, partitions).expect("layout");
        let (copies, ideal) = moved((&a, &hundred, &[]), (&b, &plus, &[]), &counts, blocks);
        println!(
            "100 -> 101 nodes (a 2 TB node joins): moved {copies} copies, ideal {ideal:.0} ({:.3}x)   [target <= 1.1x]",
            copies as f64 / ideal
        );
    }
    println!("peak RSS of the whole run: {:.1} MiB", peak_rss_mib());
}
