//! The bounded-load assignment: every block of the catalog walked in key order, each taking the first nodes of
//! its rendezvous order that still have room under their cap.

use crate::hash::BlockKey;
use crate::placement::{LoadLimit, Placement};

/// A block as placement needs it: its key and its size in bytes (the load it adds to each holder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// See [`BlockKey::of`].
    pub key: BlockKey,
    /// Bytes; blocks are at most 256 KiB in practice, `u32` leaves room for any block Bitswap carries.
    pub size: u32,
}

/// Marks an unused holder slot (a view with fewer nodes than the replication factor).
const NONE: u32 = u32::MAX;

/// Who holds what under one view: the answer every node computes alike, and the loads it implies.
#[derive(Debug, Clone)]
pub struct Assignment {
    names: Vec<String>,
    targets: Vec<u64>,
    copy_targets: Vec<u64>,
    loads: Vec<u64>,
    copies: Vec<u64>,
    /// Sorted, distinct.
    keys: Vec<BlockKey>,
    sizes: Vec<u32>,
    /// `replication` slots per block, indices into `names`, best-ranked first.
    holders: Vec<u32>,
    replication: usize,
    over_limit: u64,
}

/// One node's share of an [`Assignment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLoad<'a> {
    /// The node's name.
    pub name: &'a str,
    /// Bytes assigned to it.
    pub bytes: u64,
    /// Block copies assigned to it.
    pub copies: u64,
    /// Its capacity-proportional share of all copies' bytes (the 1.0x mark).
    pub target: u64,
    /// Its capacity-proportional share of the number of copies.
    pub target_copies: u64,
}

impl Placement {
    /// Assigns every block in `blocks` to `replication` distinct nodes (fewer if the view has fewer nodes with
    /// capacity), bounded by the [`LoadLimit`].
    ///
    /// Blocks are taken in key order, whatever order they come in; each walks its rendezvous order and takes the
    /// first nodes whose load plus the block stays within `(100 + p)%` of their share. Duplicate keys count once.
    /// Cost: one pass over blocks x nodes, with the logarithm skipped for nodes that cannot make the top.
    pub fn assign(&self, blocks: &[BlockRef]) -> Assignment {
        let mut sorted = blocks.to_vec();
        sorted.sort_unstable_by_key(|b| (b.key, std::cmp::Reverse(b.size)));
        sorted.dedup_by_key(|b| b.key);

        let live = self.nodes.iter().filter(|n| n.capacity > 0).count();
        let replication = self.replication.min(live);
        let one_copy: u128 = sorted.iter().map(|b| u128::from(b.size)).sum();
        let capacities: Vec<u64> = self.nodes.iter().map(|n| n.capacity).collect();
        let targets = shares(&capacities, one_copy, replication);
        // Capped in bytes (what capacity means) and in copies (what a node serves and verifies), so small
        // blocks cannot pack a node past its share by count.
        let copy_targets = shares(&capacities, sorted.len() as u128, replication);
        let caps = self.limit.caps(&targets);
        let copy_caps = self.limit.caps(&copy_targets);

        let n = self.nodes.len();
        let mut loads = vec![0u64; n];
        let mut copies = vec![0u64; n];
        let mut holders = vec![NONE; sorted.len() * self.replication];
        let mut over_limit = 0;
        let mut top = Vec::with_capacity(replication);
        let mut rest = Vec::with_capacity(replication);
        for (slot, block) in holders.chunks_exact_mut(self.replication).zip(&sorted) {
            let size = u64::from(block.size);
            self.top(block.key.0, replication, &mut top, |i| loads[i] + size <= caps[i] && copies[i] < copy_caps[i]);
            if top.len() < replication {
                // Every node with room is already taken: the view is nearly full. Fill up from the plain
                // ranking rather than place fewer copies; the limit is a balance goal, capacity is enforced
                // by the stores themselves.
                over_limit += 1;
                self.top(block.key.0, replication, &mut rest, |i| !top.iter().any(|&(_, t)| t as usize == i));
                let missing = replication - top.len();
                top.extend_from_slice(&rest[..missing]);
            }
            for (holder, &(_, i)) in slot.iter_mut().zip(&top) {
                *holder = i;
                loads[i as usize] += size;
                copies[i as usize] += 1;
            }
        }
        Assignment {
            names: self.nodes.iter().map(|n| n.name.clone()).collect(),
            targets,
            copy_targets,
            loads,
            copies,
            keys: sorted.iter().map(|b| b.key).collect(),
            sizes: sorted.iter().map(|b| b.size).collect(),
            holders,
            replication: self.replication,
            over_limit,
        }
    }
}

impl Placement {
    /// [`Placement::assign`] over the whole view, then every copy that fell on a node named in `departed` goes to
    /// the next node of that block's rendezvous order that has not departed and does not hold the block yet.
    ///
    /// This is how the cluster repairs. `departed` are members the view still lists but that are dead or have
    /// left: the balanced walk runs over the same view as before they went, so its caps and cascades do not
    /// change, and the only copies that move are the departed nodes' own (no other block changes holders). The
    /// replacements are not capped: a node takes a departed node's copies in proportion to its capacity, as in
    /// plain rendezvous hashing, which adds a handful of copies per node. When membership forgets the departed
    /// node, [`Placement::assign`] over the smaller view rebalances under the cap again (docs/placement.md).
    ///
    /// The result lists only the remaining nodes; shares are theirs.
    pub fn assign_without(&self, blocks: &[BlockRef], departed: &[&str]) -> Assignment {
        let whole = self.assign(blocks);
        let gone: Vec<bool> = self.nodes.iter().map(|n| departed.contains(&n.name.as_str())).collect();
        if !gone.contains(&true) {
            return whole;
        }
        // Each remaining node's index in the result.
        let mut index = vec![NONE; self.nodes.len()];
        let (mut names, mut capacities) = (Vec::new(), Vec::new());
        for (i, node) in self.nodes.iter().enumerate().filter(|&(i, _)| !gone[i]) {
            index[i] = names.len() as u32;
            names.push(node.name.clone());
            capacities.push(node.capacity);
        }
        let live = capacities.iter().filter(|&&c| c > 0).count();
        let replication = self.replication.min(live);
        let one_copy: u128 = whole.sizes.iter().map(|&s| u128::from(s)).sum();
        let targets = shares(&capacities, one_copy, replication);
        let copy_targets = shares(&capacities, whole.keys.len() as u128, replication);

        let mut loads = vec![0u64; names.len()];
        let mut copies = vec![0u64; names.len()];
        let mut holders = vec![NONE; whole.keys.len() * self.replication];
        let mut next = Vec::with_capacity(replication);
        for (at, slot) in holders.chunks_exact_mut(self.replication).enumerate() {
            let kept: Vec<usize> = whole.slots(at).filter(|&i| !gone[i]).collect();
            let want = replication.saturating_sub(kept.len());
            self.top(whole.keys[at].0, want, &mut next, |i| !gone[i] && !kept.contains(&i));
            let size = u64::from(whole.sizes[at]);
            for (holder, i) in slot.iter_mut().zip(kept.iter().copied().chain(next.iter().map(|&(_, i)| i as usize))) {
                let j = index[i];
                *holder = j;
                loads[j as usize] += size;
                copies[j as usize] += 1;
            }
        }
        Assignment {
            names,
            targets,
            copy_targets,
            loads,
            copies,
            keys: whole.keys,
            sizes: whole.sizes,
            holders,
            replication: self.replication,
            over_limit: whole.over_limit,
        }
    }
}

impl LoadLimit {
    /// The most each node may hold, given its share (in bytes or in copies).
    fn caps(self, targets: &[u64]) -> Vec<u64> {
        match self {
            Self::Unbounded => vec![u64::MAX; targets.len()],
            Self::Percent(p) => targets
                .iter()
                .map(|&t| u64::try_from(u128::from(t) * (100 + u128::from(p)) / 100).unwrap_or(u64::MAX))
                .collect(),
        }
    }
}

/// Each node's capacity-proportional share of `replication` copies of `one_copy` bytes, in bytes.
///
/// A node can hold at most one copy of each block, so a node whose proportional share would exceed `one_copy`
/// gets exactly `one_copy` and the rest is shared among the others (water-filling); with many nodes this never
/// triggers.
fn shares(capacities: &[u64], one_copy: u128, replication: usize) -> Vec<u64> {
    let mut capped = vec![false; capacities.len()];
    loop {
        let free_capacity: u128 =
            capacities.iter().zip(&capped).filter(|(_, &c)| !c).map(|(&c, _)| u128::from(c)).sum();
        let pinned = capped.iter().filter(|&&c| c).count() as u128;
        let remaining = (one_copy * replication as u128).saturating_sub(pinned * one_copy);
        let share = |c: u64| (remaining * u128::from(c)).checked_div(free_capacity).unwrap_or(0);
        let mut changed = false;
        for (i, &c) in capacities.iter().enumerate() {
            if !capped[i] && share(c) > one_copy {
                capped[i] = true;
                changed = true;
            }
        }
        if !changed {
            return capacities
                .iter()
                .zip(&capped)
                .map(|(&c, &pin)| u64::try_from(if pin { one_copy } else { share(c) }).unwrap_or(u64::MAX))
                .collect();
        }
    }
}

impl Assignment {
    /// The replication factor asked for (a block may have fewer holders if the view is smaller).
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// How many distinct blocks were assigned.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no block was assigned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Blocks that found fewer than `replication` nodes under their cap and were completed over it. Zero unless
    /// the view is nearly full or tiny; a non-zero count means the load limit was not met.
    pub fn over_limit_blocks(&self) -> u64 {
        self.over_limit
    }

    /// The nodes that must hold `block`, best-ranked first; empty if the block was not in the assigned set.
    pub fn holders(&self, block: BlockKey) -> Vec<&str> {
        match self.keys.binary_search(&block) {
            Ok(at) => self.slots(at).map(|i| self.names[i].as_str()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The blocks `node` must hold, in key order: what its allocation loop fetches and keeps.
    pub fn blocks_of<'a>(&'a self, node: &str) -> impl Iterator<Item = BlockKey> + 'a {
        let index = self.names.iter().position(|n| n == node).map(|i| i as u32);
        self.holders
            .chunks_exact(self.replication)
            .zip(&self.keys)
            .filter(move |(slot, _)| index.is_some_and(|i| slot.contains(&i)))
            .map(|(_, &key)| key)
    }

    /// Every node's load against its share, in name order.
    pub fn loads(&self) -> impl Iterator<Item = NodeLoad<'_>> {
        (0..self.names.len()).map(|i| NodeLoad {
            name: &self.names[i],
            bytes: self.loads[i],
            copies: self.copies[i],
            target: self.targets[i],
            target_copies: self.copy_targets[i],
        })
    }

    /// The highest `bytes / target` over nodes with a non-zero share: 1.0 is perfect balance.
    pub fn max_load_ratio(&self) -> f64 {
        self.loads().filter(|l| l.target > 0).map(|l| l.bytes as f64 / l.target as f64).fold(0.0, f64::max)
    }

    /// The highest `copies / target_copies`: the same balance counted in copies rather than bytes.
    pub fn max_copies_ratio(&self) -> f64 {
        self.loads()
            .filter(|l| l.target_copies > 0)
            .map(|l| l.copies as f64 / l.target_copies as f64)
            .fold(0.0, f64::max)
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn targets(&self) -> &[u64] {
        &self.targets
    }

    pub(crate) fn keys(&self) -> &[BlockKey] {
        &self.keys
    }

    pub(crate) fn size(&self, at: usize) -> u32 {
        self.sizes[at]
    }

    /// Holder indices of the block at position `at`.
    pub(crate) fn slots(&self, at: usize) -> impl Iterator<Item = usize> + '_ {
        self.holders[at * self.replication..(at + 1) * self.replication]
            .iter()
            .filter(|&&i| i != NONE)
            .map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeInfo;

    fn view(capacities: &[u64]) -> Vec<NodeInfo> {
        capacities.iter().enumerate().map(|(i, &c)| NodeInfo { name: format!("n{i:03}"), capacity: c }).collect()
    }

    fn blocks(n: u64) -> Vec<BlockRef> {
        (0..n).map(|i| BlockRef { key: BlockKey::of(&i.to_le_bytes()), size: 1 + (i % 7 == 0) as u32 * 99 }).collect()
    }

    #[test]
    fn shares_are_proportional_and_water_filled() {
        assert_eq!(shares(&[1, 1, 2], 100, 2), vec![50, 50, 100]);
        // The big node would get 160 > 100: it is pinned at one copy of everything, the others split the rest.
        assert_eq!(shares(&[1, 1, 8], 100, 2), vec![50, 50, 100]);
        assert_eq!(shares(&[0, 3], 100, 2), vec![0, 100]);
    }

    #[test]
    fn every_block_gets_distinct_holders_and_loads_stay_under_the_limit() {
        let capacities: Vec<u64> = (0..40).map(|i| [1, 2, 4, 8][i % 4]).collect();
        let placement = Placement::new(&view(&capacities), 2).unwrap();
        let blocks = blocks(20_000);
        let assignment = placement.assign(&blocks);
        assert_eq!(assignment.len(), blocks.len());
        assert_eq!(assignment.over_limit_blocks(), 0);
        for block in &blocks {
            let holders = assignment.holders(block.key);
            assert_eq!(holders.len(), 2);
            assert_ne!(holders[0], holders[1]);
        }
        assert!(assignment.max_load_ratio() <= 1.04, "{}", assignment.max_load_ratio());
        let held: u64 = assignment.loads().map(|l| l.copies).sum();
        assert_eq!(held, 40_000);
        let of_first: Vec<BlockKey> = assignment.blocks_of("n000").collect();
        assert_eq!(of_first.len() as u64, assignment.loads().next().unwrap().copies);
        assert!(of_first.iter().all(|&k| assignment.holders(k).contains(&"n000")));
    }

    #[test]
    fn the_same_view_in_any_order_gives_the_same_assignment() {
        let nodes = view(&[3, 1, 4, 1, 5, 9, 2, 6]);
        let mut reversed = nodes.clone();
        reversed.reverse();
        let mut shuffled_blocks = blocks(5_000);
        shuffled_blocks.reverse();
        let a = Placement::new(&nodes, 2).unwrap().assign(&blocks(5_000));
        let b = Placement::new(&reversed, 2).unwrap().assign(&shuffled_blocks);
        assert_eq!(a.holders, b.holders);
        assert_eq!(a.keys, b.keys);
    }

    #[test]
    fn departed_nodes_hand_over_exactly_their_copies() {
        let capacities: Vec<u64> = (0..40).map(|i| [1, 2, 4, 8][i % 4]).collect();
        let placement = Placement::new(&view(&capacities), 2).unwrap();
        let blocks = blocks(20_000);
        let whole = placement.assign(&blocks);
        let after = placement.assign_without(&blocks, &["n007", "n020", "not-a-member"]);
        assert!(after.names.iter().all(|n| n != "n007" && n != "n020"));
        for block in &blocks {
            let (old, new) = (whole.holders(block.key), after.holders(block.key));
            assert_eq!(new.len(), 2);
            assert_ne!(new[0], new[1]);
            assert!(new.iter().all(|n| *n != "n007" && *n != "n020"));
            // Every holder that stayed keeps the block; only the departed ones' slots change hands.
            for n in old.iter().filter(|n| **n != "n007" && **n != "n020") {
                assert!(new.contains(n), "{n} lost a block it held: {old:?} -> {new:?}");
            }
        }
        let moved = crate::moves(&whole, &after);
        let departed: u64 = whole.loads().filter(|l| l.name == "n007" || l.name == "n020").map(|l| l.copies).sum();
        assert_eq!(
            (moved.copies_moved, moved.copies_departed, moved.copies_dropped_by_remaining),
            (departed, departed, 0)
        );
        assert_eq!(after.loads().map(|l| l.copies).sum::<u64>(), 40_000);
        // Nothing departed: the plain assignment.
        assert_eq!(placement.assign_without(&blocks, &[]).holders, whole.holders);
    }

    #[test]
    fn a_nearly_full_view_completes_blocks_over_the_limit() {
        // Two nodes, replication 2: each must hold everything; share = cap, so no block is ever left short.
        let assignment = Placement::new(&view(&[1, 1]), 2).unwrap().assign(&blocks(100));
        assert!(assignment.keys.iter().all(|&k| assignment.holders(k).len() == 2));
        // One node, replication 3: one holder.
        let assignment = Placement::new(&view(&[1]), 3).unwrap().assign(&blocks(10));
        assert_eq!(assignment.holders(assignment.keys[0]), vec!["n000"]);
    }
}
