//! The view as placement sees it, and the rendezvous ranking of its nodes for one block.

use crate::hash::{node_key, BlockKey, Draw};

/// One member of the view: its name (its identity for placement) and the bytes it offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The node's name as membership reports it. Placement only hashes it; renaming a node moves its blocks.
    pub name: String,
    /// The bytes this node offers to the pool. Zero means "hold nothing" (a draining or full node).
    pub capacity: u64,
}

/// How far above its capacity-proportional share a node may be filled before blocks pass it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadLimit {
    /// Plain weighted rendezvous hashing: no cap. A node's load then varies by about `1/sqrt(copies)` around
    /// its share, and removal moves exactly the removed node's copies.
    Unbounded,
    /// No node holds more than `(100 + p)%` of its share, in bytes (unless the view cannot fit the blocks
    /// otherwise, see [`crate::Assignment::over_limit_blocks`]).
    Percent(u32),
}

impl Default for LoadLimit {
    /// 4%: the fullest node stays within 1.04x of its share, one point under the 1.05x the cluster promises,
    /// while keeping the copies moved by joins and removals within a few percent of the ideal
    /// (figures in `docs/placement.md`).
    fn default() -> Self {
        Self::Percent(4)
    }
}

/// Why a view cannot be placed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A replication factor of zero would place nothing.
    #[error("the replication factor must be at least 1 (XNODE_REPLICATION)")]
    ZeroReplication,
    /// Two members share a name, so their draws would coincide and nodes could disagree about which one it is.
    #[error("node {0:?} appears twice in the membership view")]
    DuplicateNode(String),
    /// Partitions must be a power of two (so a partition is a prefix of the block key) and at most 2^24.
    #[error("the number of partitions must be a power of two between 1 and 16777216 (XNODE_PARTITIONS), got {0}")]
    BadPartitionCount(u32),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) capacity: u64,
    key: u64,
    /// `1 / capacity`: the score `exponential / capacity` is then a multiplication in the hot loop.
    inv_weight: f64,
}

/// A membership view ready to place blocks: nodes in canonical (name) order with their keys and weights.
///
/// Building one is cheap (one SHA-256 per node); keep it for as long as the view does not change.
#[derive(Debug, Clone)]
pub struct Placement {
    pub(crate) nodes: Vec<Node>,
    pub(crate) replication: usize,
    pub(crate) limit: LoadLimit,
}

impl Placement {
    /// Prepares `nodes` for placing `replication` copies of each block, with the default [`LoadLimit`].
    ///
    /// The order of `nodes` does not matter: they are sorted by name, so two nodes that received the same members
    /// in different orders compute the same placement.
    pub fn new(nodes: &[NodeInfo], replication: usize) -> Result<Self, PlacementError> {
        if replication == 0 {
            return Err(PlacementError::ZeroReplication);
        }
        let mut sorted: Vec<Node> = nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                capacity: n.capacity,
                key: node_key(&n.name),
                inv_weight: if n.capacity == 0 { 0.0 } else { 1.0 / n.capacity as f64 },
            })
            .collect();
        sorted.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = sorted.windows(2).find(|p| p[0].name == p[1].name) {
            return Err(PlacementError::DuplicateNode(pair[0].name.clone()));
        }
        Ok(Self { nodes: sorted, replication, limit: LoadLimit::default() })
    }

    /// The same view with another load limit.
    pub fn with_load_limit(mut self, limit: LoadLimit) -> Self {
        self.limit = limit;
        self
    }

    /// The replication factor this placement was built for.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// The view's members in canonical (name) order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeInfo> + '_ {
        self.nodes.iter().map(|n| NodeInfo { name: n.name.clone(), capacity: n.capacity })
    }

    /// The first `n` nodes of `block`'s rendezvous order (fewer if the view has fewer nodes with capacity).
    ///
    /// These are the block's holders whenever no load limit binds; [`Placement::assign`] is the authority, and
    /// this is what a node uses for a block it has not yet seen in the catalog (where to send it first).
    pub fn preferred(&self, block: BlockKey, n: usize) -> Vec<&str> {
        let mut top = Vec::with_capacity(n);
        self.top(block.0, n, &mut top, |_| true);
        top.iter().map(|&(_, i)| self.nodes[i as usize].name.as_str()).collect()
    }

    /// Writes to `out`, best first, the `want` eligible nodes with the lowest score `-ln(u) / capacity`: weighted
    /// rendezvous hashing, in which a node comes first with probability proportional to its capacity. Ties (which
    /// need equal 53-bit draws) go to the earlier name.
    #[inline]
    pub(crate) fn top(&self, block: u64, want: usize, out: &mut Vec<(f64, u32)>, eligible: impl Fn(usize) -> bool) {
        out.clear();
        if want == 0 {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if node.capacity == 0 {
                continue;
            }
            let draw = Draw::new(block, node.key);
            let full = out.len() == want;
            // Nodes are visited in index order and ties go to the lower index, so a newcomer must beat the
            // current last strictly; its bound reaching the last already rules that out.
            if full && draw.lower_bound() * node.inv_weight >= out[want - 1].0 {
                continue;
            }
            if !eligible(i) {
                continue;
            }
            let score = draw.exponential() * node.inv_weight;
            if full {
                if score >= out[want - 1].0 {
                    continue;
                }
                out.pop();
            }
            let at = out.partition_point(|&(s, _)| s <= score);
            out.insert(at, (score, i as u32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(capacities: &[u64]) -> Vec<NodeInfo> {
        capacities.iter().enumerate().map(|(i, &c)| NodeInfo { name: format!("node-{i:03}"), capacity: c }).collect()
    }

    #[test]
    fn rejects_zero_replication_and_duplicate_names() {
        assert_eq!(Placement::new(&view(&[1]), 0).unwrap_err(), PlacementError::ZeroReplication);
        let mut nodes = view(&[1, 2]);
        nodes[1].name = nodes[0].name.clone();
        assert_eq!(Placement::new(&nodes, 2).unwrap_err(), PlacementError::DuplicateNode("node-000".into()));
    }

    #[test]
    fn top_matches_a_full_sort() {
        let placement = Placement::new(&view(&[1, 2, 3, 4, 5, 8, 8, 1, 0, 7]), 3).unwrap();
        let mut top = Vec::new();
        for block in 0..2_000u64 {
            let block = block.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut all: Vec<(f64, u32)> = placement
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.capacity > 0)
                .map(|(i, n)| (Draw::new(block, n.key).exponential() * n.inv_weight, i as u32))
                .collect();
            all.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for want in [1, 3, 9, 12] {
                placement.top(block, want, &mut top, |_| true);
                assert_eq!(top, all[..want.min(all.len())], "block {block:x}, want {want}");
            }
        }
    }

    #[test]
    fn zero_capacity_nodes_hold_nothing_and_small_views_give_fewer_holders() {
        let placement = Placement::new(&view(&[0, 5, 0]), 3).unwrap();
        for block in 0..100 {
            assert_eq!(placement.preferred(BlockKey(block), 3), vec!["node-001"]);
        }
    }

    #[test]
    fn first_choice_is_proportional_to_capacity() {
        let placement = Placement::new(&view(&[1, 2, 3, 4]), 1).unwrap();
        let mut wins = [0u32; 4];
        for block in 0..100_000u64 {
            let name = placement.preferred(BlockKey::of(&block.to_le_bytes()), 1)[0];
            wins[name[5..].parse::<usize>().unwrap()] += 1;
        }
        for (i, &w) in wins.iter().enumerate() {
            let expected = 100_000.0 * (i + 1) as f64 / 10.0;
            assert!((w as f64 / expected - 1.0).abs() < 0.03, "node {i}: {w} wins, expected {expected}");
        }
    }
}
