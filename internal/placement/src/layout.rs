//! The partition layout: blocks hash into a fixed number of partitions, and only partitions are placed on nodes.
//!
//! A block's partition is a function of its hash alone ([`partition_of`]), so a new block never moves a copy of an
//! old one, and placing a catalog costs nothing per block. The [`Layout`] (which nodes hold each partition) is a
//! function of the view alone: it is computed once per change of members, capacities, departures or replication
//! factor, with the bounded-load rendezvous walk of [`Placement::assign_without`] over the partitions as equal-sized
//! "blocks". Its cost is partitions x nodes, whatever the cluster stores. Figures and reasoning: docs/placement.md.

use crate::assignment::BlockRef;
use crate::hash::BlockKey;
use crate::placement::{NodeInfo, Placement, PlacementError};

/// Partitions when `XNODE_PARTITIONS` is unset: 2^16. Enough that a 1 TB node among 1,000 nodes of 1-8 TB at RF 3
/// holds about 50 partitions (balance within a few percent); small enough that per-partition state (a digest and
/// a bit per partition) stays a few MiB.
pub const DEFAULT_PARTITIONS: u32 = 1 << 16;

/// Most partitions a layout may have (2^24): per-partition state is kept in memory.
pub const MAX_PARTITIONS: u32 = 1 << 24;

/// Marks an empty holder slot (fewer nodes with capacity than the replication factor).
const NONE: u32 = u32::MAX;

/// The partition of the block whose placement key is `key`, among `partitions` (a power of two): the key's top bits.
pub fn partition_of(key: BlockKey, partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two());
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        0
    } else {
        (key.0 >> (64 - bits)) as u32
    }
}

/// A bitmap of `set` among `partitions` partitions: bit `p % 8` of byte `p / 8` is partition `p`.
pub fn bitmap(partitions: u32, set: &[u32]) -> Vec<u8> {
    let mut bits = vec![0u8; (partitions as usize).div_ceil(8)];
    for &p in set.iter().filter(|&&p| p < partitions) {
        bits[p as usize / 8] |= 1 << (p % 8);
    }
    bits
}

/// The key a partition is ranked by: a hash of its number, so that the walk visits partitions in an order
/// unrelated to the blocks' keys.
fn partition_key(partition: u32) -> BlockKey {
    BlockKey::of(&[b"xnode-partition-".as_slice(), &partition.to_be_bytes()].concat())
}

/// Which nodes hold each partition under one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    partitions: u32,
    replication: usize,
    /// Nodes of the layout (the view without departed members), in name order.
    names: Vec<String>,
    capacities: Vec<u64>,
    /// `replication` slots per partition, indices into `names`, best-ranked first.
    holders: Vec<u32>,
}

impl Layout {
    /// Places `partitions` partitions (a power of two, at most [`MAX_PARTITIONS`]) on `view` at `replication`
    /// copies each, capacity-weighted and bounded in load; the partitions of members named in `departed` go to
    /// the next node of each partition's ranking, and nothing else moves (see [`Placement::assign_without`]).
    pub fn new(
        view: &[NodeInfo],
        departed: &[&str],
        replication: usize,
        partitions: u32,
    ) -> Result<Layout, PlacementError> {
        if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
            return Err(PlacementError::BadPartitionCount(partitions));
        }
        let placement = Placement::new(view, replication)?;
        let refs: Vec<BlockRef> = (0..partitions).map(|p| BlockRef { key: partition_key(p), size: 1 }).collect();
        let assignment = placement.assign_without(&refs, departed);
        let names: Vec<String> = assignment.names().to_vec();
        let capacities: Vec<u64> =
            names.iter().map(|n| view.iter().find(|v| &v.name == n).map_or(0, |v| v.capacity)).collect();
        let mut holders = vec![NONE; partitions as usize * replication];
        for (p, slot) in holders.chunks_exact_mut(replication).enumerate() {
            let at = assignment.keys().binary_search(&refs[p].key).expect("every partition was assigned");
            for (dst, i) in slot.iter_mut().zip(assignment.slots(at)) {
                *dst = i as u32;
            }
        }
        Ok(Layout { partitions, replication, names, capacities, holders })
    }

    /// How many partitions there are.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The replication factor asked for (a partition has fewer holders when the view has fewer nodes).
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// The nodes of the layout (departed members excluded), in name order.
    pub fn nodes(&self) -> &[String] {
        &self.names
    }

    /// The partition of a block, given its CID's binary form.
    pub fn partition_of_cid(&self, cid: &[u8]) -> u32 {
        partition_of(BlockKey::of(cid), self.partitions)
    }

    /// The nodes that must hold `partition`, best-ranked first.
    pub fn holders(&self, partition: u32) -> impl Iterator<Item = &str> + '_ {
        self.slots(partition).map(|i| self.names[i].as_str())
    }

    /// How many nodes must hold `partition`.
    pub fn holder_count(&self, partition: u32) -> usize {
        self.slots(partition).count()
    }

    /// The index of `name` among [`Layout::nodes`], if it is one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// Whether the node at `index` (see [`Layout::index_of`]) holds `partition`.
    pub fn holds(&self, index: usize, partition: u32) -> bool {
        self.slots(partition).any(|i| i == index)
    }

    /// A bitmap of the partitions `name` holds: bit `p % 8` of byte `p / 8` is partition `p`.
    pub fn bitmap_of(&self, name: &str) -> Vec<u8> {
        bitmap(self.partitions, &self.partitions_of(name))
    }

    /// The partitions `name` holds, in order.
    pub fn partitions_of(&self, name: &str) -> Vec<u32> {
        let Some(index) = self.index_of(name) else { return Vec::new() };
        (0..self.partitions).filter(|&p| self.holds(index, p)).collect()
    }

    /// Every node's partitions, in the order of [`Layout::nodes`]: one pass over the layout, for callers that need
    /// every node's share (a health sweep) rather than one.
    pub fn partitions_by_node(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.names.len()];
        for p in 0..self.partitions {
            for i in self.slots(p) {
                out[i].push(p);
            }
        }
        out
    }

    /// Each node's number of partition copies and its capacity-proportional share of all copies (fractional), in
    /// name order.
    pub fn loads(&self) -> Vec<(&str, u64, f64)> {
        let mut counts = vec![0u64; self.names.len()];
        for &i in self.holders.iter().filter(|&&i| i != NONE) {
            counts[i as usize] += 1;
        }
        let copies: u64 = counts.iter().sum();
        let total: u128 = self.capacities.iter().map(|&c| u128::from(c)).sum();
        self.names
            .iter()
            .zip(&counts)
            .zip(&self.capacities)
            .map(|((n, &c), &cap)| (n.as_str(), c, copies as f64 * cap as f64 / total.max(1) as f64))
            .collect()
    }

    /// Partition copies that `after` gives to a node that `self` did not give them to: each such copy is a
    /// partition's worth of blocks fetched.
    pub fn moved_to(&self, after: &Layout) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for p in 0..self.partitions.min(after.partitions) {
            let before: Vec<&str> = self.holders(p).collect();
            for holder in after.holders(p) {
                if !before.contains(&holder) {
                    out.push((p, holder.to_string()));
                }
            }
        }
        out
    }

    fn slots(&self, partition: u32) -> impl Iterator<Item = usize> + '_ {
        let at = partition as usize * self.replication;
        self.holders[at..at + self.replication].iter().filter(|&&i| i != NONE).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(capacities: &[u64]) -> Vec<NodeInfo> {
        capacities.iter().enumerate().map(|(i, &c)| NodeInfo { name: format!("n{i:03}"), capacity: c }).collect()
    }

    #[test]
    fn partitions_are_the_top_bits_of_the_key() {
        assert_eq!(partition_of(BlockKey(u64::MAX), 1 << 16), 0xffff);
        assert_eq!(partition_of(BlockKey(0x1234_5678_0000_0000), 1 << 16), 0x1234);
        assert_eq!(partition_of(BlockKey(u64::MAX), 1), 0);
    }

    #[test]
    fn rejects_partition_counts_that_are_not_powers_of_two() {
        assert_eq!(Layout::new(&view(&[1]), &[], 1, 1000).unwrap_err(), PlacementError::BadPartitionCount(1000));
    }

    #[test]
    fn every_partition_gets_distinct_holders_in_proportion_to_capacity() {
        let capacities: Vec<u64> = (0..20).map(|i| [1, 2, 4, 8][i % 4]).collect();
        let layout = Layout::new(&view(&capacities), &[], 3, 1 << 12).unwrap();
        for p in 0..layout.partitions() {
            let holders: Vec<&str> = layout.holders(p).collect();
            assert_eq!(holders.len(), 3);
            assert!(holders[0] != holders[1] && holders[1] != holders[2] && holders[0] != holders[2]);
        }
        for (name, copies, share) in layout.loads() {
            assert!((copies as f64) <= share * 1.05 + 1.0, "{name}: {copies} copies, share {share:.1}");
            assert!((copies as f64) >= share * 0.85, "{name}: {copies} copies, share {share:.1}");
        }
        let mine = layout.partitions_of("n005");
        assert_eq!(layout.partitions_by_node()[layout.index_of("n005").unwrap()], mine);
        let bits = layout.bitmap_of("n005");
        let from_bits: Vec<u32> =
            (0..layout.partitions()).filter(|&p| bits[p as usize / 8] >> (p % 8) & 1 == 1).collect();
        assert_eq!(mine, from_bits);
    }

    #[test]
    fn a_departure_moves_only_the_departed_nodes_partitions() {
        let capacities: Vec<u64> = (0..30).map(|i| [1, 2, 4, 8][i % 4]).collect();
        let nodes = view(&capacities);
        let before = Layout::new(&nodes, &[], 2, 1 << 12).unwrap();
        let after = Layout::new(&nodes, &["n004"], 2, 1 << 12).unwrap();
        assert_eq!(after.index_of("n004"), None);
        let moved = before.moved_to(&after);
        let held = before.partitions_of("n004").len();
        assert_eq!(moved.len(), held);
        assert!(moved.iter().all(|(p, _)| before.holders(*p).any(|h| h == "n004")));
    }

    #[test]
    fn the_same_view_in_any_order_gives_the_same_layout() {
        let nodes = view(&[3, 1, 4, 1, 5, 9, 2, 6]);
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(Layout::new(&nodes, &[], 2, 256).unwrap(), Layout::new(&reversed, &[], 2, 256).unwrap());
    }
}
