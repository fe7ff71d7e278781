//! The placement benchmark: balance, and copies moved against the ideal on join, removal and resize, for the
//! default bounded-load placement and for plain weighted rendezvous hashing.
//!
//! `cargo run --release -p xnode-placement --example placement_sim [-- --sweep]`: with `--sweep`, also the
//! figures for load limits 1..=8% (the table in `docs/placement.md`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use support::{blocks, cluster, resized, TB};
use xnode_placement::{moves, Assignment, BlockRef, LoadLimit, NodeInfo, Placement, DEFAULT_REPLICATION};

const BLOCKS: usize = 1_000_000;

fn assign(nodes: &[NodeInfo], blocks: &[BlockRef], limit: LoadLimit) -> (Assignment, f64) {
    let start = Instant::now();
    let assignment =
        Placement::new(nodes, DEFAULT_REPLICATION).expect("valid view").with_load_limit(limit).assign(blocks);
    (assignment, start.elapsed().as_secs_f64())
}

fn held(assignment: &Assignment, name: &str) -> u64 {
    assignment.loads().find(|l| l.name == name).map_or(0, |l| l.copies)
}

fn report(limit: LoadLimit, blocks: &[BlockRef]) {
    println!("== {limit:?}, {} blocks, RF {DEFAULT_REPLICATION}", blocks.len());
    let big = cluster(1000, 1);
    let (base, seconds) = assign(&big, blocks, limit);
    println!(
        "1000 nodes: max load / share {:.4}   over-limit blocks {}   assign {:.2} s ({:.0} ns/block, {:.2} ns/block/node)",
        base.max_load_ratio(),
        base.over_limit_blocks(),
        seconds,
        seconds * 1e9 / blocks.len() as f64,
        seconds * 1e9 / blocks.len() as f64 / 1000.0,
    );
    println!("  max copies / share in copies {:.4}", base.max_copies_ratio());
    for victim in ["node-0000", "node-0500", "node-0999"] {
        let capacity = big.iter().find(|n| n.name == victim).map(|n| n.capacity / TB).unwrap_or(0);
        let placement = Placement::new(&big, DEFAULT_REPLICATION).expect("valid view").with_load_limit(limit);
        let repaired = placement.assign_without(blocks, &[victim]);
        let stats = moves(&base, &repaired);
        println!(
            "  remove {victim} ({capacity} TB), repaired in the same view: moved {} copies, it held {} ({:.4}x); \
             dropped by remaining nodes {}; max load / share {:.4}",
            stats.copies_moved,
            held(&base, victim),
            stats.copies_moved as f64 / held(&base, victim) as f64,
            stats.copies_dropped_by_remaining,
            repaired.max_load_ratio(),
        );
        let rest: Vec<NodeInfo> = big.iter().filter(|n| n.name != victim).cloned().collect();
        let stats = moves(&repaired, &assign(&rest, blocks, limit).0);
        println!("    then forgotten (a view of 999): {} more copies move", stats.copies_moved);
    }
    for (label, factor) in [("halve", 0.5), ("double", 2.0)] {
        let node = &big[500];
        let changed = resized(&big, &node.name, (node.capacity as f64 * factor) as u64);
        let stats = moves(&base, &assign(&changed, blocks, limit).0);
        println!(
            "  {label} {} ({} TB): moved {} copies, ideal {} ({:.4}x)",
            node.name,
            node.capacity / TB,
            stats.copies_moved,
            stats.ideal_copies,
            stats.ratio_to_ideal()
        );
    }

    let small = cluster(101, 2);
    let (hundred, _) = assign(&small[..100], blocks, limit);
    println!("100 nodes: max load / share {:.4}", hundred.max_load_ratio());
    for capacity in [1, 4, 8] {
        let mut joined = small[..100].to_vec();
        joined.push(NodeInfo { name: "newcomer".into(), capacity: capacity * TB });
        let stats = moves(&hundred, &assign(&joined, blocks, limit).0);
        println!(
            "  join a {capacity} TB node: moved {} copies, ideal {} ({:.4}x)",
            stats.copies_moved,
            stats.ideal_copies,
            stats.ratio_to_ideal()
        );
    }
    let victim = &small[50];
    let rest: Vec<NodeInfo> = small[..100].iter().filter(|n| n.name != victim.name).cloned().collect();
    let stats = moves(&hundred, &assign(&rest, blocks, limit).0);
    println!(
        "  remove {} ({} TB): moved {} copies, it held {}; dropped by remaining nodes {}",
        victim.name,
        victim.capacity / TB,
        stats.copies_moved,
        held(&hundred, &victim.name),
        stats.copies_dropped_by_remaining
    );
    for (label, factor) in [("halve", 0.5), ("double", 2.0)] {
        let node = &small[50];
        let changed = resized(&small[..100], &node.name, (node.capacity as f64 * factor) as u64);
        let stats = moves(&hundred, &assign(&changed, blocks, limit).0);
        println!(
            "  {label} {} ({} TB): moved {} copies, ideal {} ({:.4}x)",
            node.name,
            node.capacity / TB,
            stats.copies_moved,
            stats.ideal_copies,
            stats.ratio_to_ideal()
        );
    }
}

fn main() {
    let blocks = blocks(BLOCKS, 7);
    report(LoadLimit::default(), &blocks);
    report(LoadLimit::Unbounded, &blocks);
    if std::env::args().any(|a| a == "--sweep") {
        for p in [1, 2, 3, 5, 8] {
            report(LoadLimit::Percent(p), &blocks);
        }
    }
}
