//! What a change of view costs: the copies that must be fetched, against the fewest any placement could move.

use std::collections::HashMap;

use crate::assignment::Assignment;

/// The traffic between two assignments of the same block set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveStats {
    /// Copies assigned in `after` to a node that did not hold them in `before`: each is one block fetched.
    pub copies_moved: u64,
    /// The bytes of those copies.
    pub bytes_moved: u64,
    /// Copies that `before` gave to nodes absent from `after`'s view: lost with the node, so they must move.
    pub copies_departed: u64,
    /// Copies that a node present in both views held in `before` and no longer holds in `after`. Zero when a
    /// removal moves only the removed node's copies; on a join or a shrink, the copies handed over.
    pub copies_dropped_by_remaining: u64,
    /// The fewest bytes any placement must move: the sum over nodes of the growth of their share.
    pub ideal_bytes: u64,
    /// `ideal_bytes` in copies of the average size (of `after`'s copies).
    pub ideal_copies: u64,
    /// Copies of blocks present only in `after` (new blocks), not counted as moved.
    pub new_copies: u64,
}

impl MoveStats {
    /// `copies_moved / ideal_copies`: 1.0 is optimal.
    pub fn ratio_to_ideal(&self) -> f64 {
        self.copies_moved as f64 / self.ideal_copies.max(1) as f64
    }
}

/// Compares two assignments (typically of the same blocks under two views) copy by copy.
pub fn moves(before: &Assignment, after: &Assignment) -> MoveStats {
    let index_before: HashMap<&str, usize> = before.names().iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let index_after: HashMap<&str, usize> = after.names().iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    // Each `after` node's index in `before`, if it was there; and which `before` nodes are still present.
    let to_before: Vec<Option<usize>> = after.names().iter().map(|n| index_before.get(n.as_str()).copied()).collect();
    let remains: Vec<bool> = before.names().iter().map(|n| index_after.contains_key(n.as_str())).collect();

    let mut stats = MoveStats::default();
    let (mut i, mut j) = (0, 0);
    let (keys_before, keys_after) = (before.keys(), after.keys());
    while j < keys_after.len() {
        if i < keys_before.len() && keys_before[i] < keys_after[j] {
            i += 1;
            continue;
        }
        if i == keys_before.len() || keys_before[i] > keys_after[j] {
            stats.new_copies += after.slots(j).count() as u64;
            j += 1;
            continue;
        }
        let old: Vec<usize> = before.slots(i).collect();
        let mut kept = Vec::with_capacity(old.len());
        for holder in after.slots(j) {
            match to_before[holder] {
                Some(b) if old.contains(&b) => kept.push(b),
                _ => {
                    stats.copies_moved += 1;
                    stats.bytes_moved += u64::from(after.size(j));
                }
            }
        }
        for &b in old.iter().filter(|b| !kept.contains(b)) {
            if remains[b] {
                stats.copies_dropped_by_remaining += 1;
            } else {
                stats.copies_departed += 1;
            }
        }
        i += 1;
        j += 1;
    }

    let target_before = |name: &str| index_before.get(name).map_or(0, |&i| before.targets()[i]);
    stats.ideal_bytes =
        after.names().iter().zip(after.targets()).map(|(name, &t)| t.saturating_sub(target_before(name))).sum();
    let (copies, bytes) = after.loads().fold((0u64, 0u64), |(c, b), l| (c + l.copies, b + l.bytes));
    stats.ideal_copies =
        if bytes == 0 { 0 } else { (u128::from(stats.ideal_bytes) * u128::from(copies) / u128::from(bytes)) as u64 };
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockKey, BlockRef, LoadLimit, NodeInfo, Placement};

    fn view(n: usize) -> Vec<NodeInfo> {
        (0..n).map(|i| NodeInfo { name: format!("n{i:03}"), capacity: [1, 2, 4, 8][i % 4] }).collect()
    }

    fn blocks(n: u64) -> Vec<BlockRef> {
        (0..n).map(|i| BlockRef { key: BlockKey::of(&i.to_le_bytes()), size: 100 }).collect()
    }

    #[test]
    fn identical_assignments_move_nothing() {
        let a = Placement::new(&view(10), 2).unwrap().assign(&blocks(1_000));
        assert_eq!(moves(&a, &a), MoveStats::default());
    }

    #[test]
    fn unbounded_removal_moves_exactly_the_removed_nodes_copies() {
        let blocks = blocks(20_000);
        let nodes = view(30);
        let before = Placement::new(&nodes, 2).unwrap().with_load_limit(LoadLimit::Unbounded).assign(&blocks);
        let after = Placement::new(&nodes[1..], 2).unwrap().with_load_limit(LoadLimit::Unbounded).assign(&blocks);
        let stats = moves(&before, &after);
        let held = before.loads().next().unwrap().copies;
        assert_eq!(stats.copies_departed, held);
        assert_eq!(stats.copies_moved, held);
        assert_eq!(stats.copies_dropped_by_remaining, 0);
    }

    #[test]
    fn a_join_moves_copies_only_to_the_newcomer() {
        let blocks = blocks(20_000);
        let nodes = view(31);
        let before = Placement::new(&nodes[..30], 2).unwrap().assign(&blocks);
        let after = Placement::new(&nodes, 2).unwrap().assign(&blocks);
        let stats = moves(&before, &after);
        let newcomer = after.loads().find(|l| l.name == "n030").unwrap().copies;
        assert!(stats.copies_moved >= newcomer);
        assert!(stats.ratio_to_ideal() < 1.1, "{stats:?}");
    }

    #[test]
    fn new_blocks_are_not_moves() {
        let nodes = view(5);
        let before = Placement::new(&nodes, 2).unwrap().with_load_limit(LoadLimit::Unbounded).assign(&blocks(100));
        let after = Placement::new(&nodes, 2).unwrap().with_load_limit(LoadLimit::Unbounded).assign(&blocks(150));
        let stats = moves(&before, &after);
        assert_eq!((stats.copies_moved, stats.new_copies), (0, 100));
    }
}
