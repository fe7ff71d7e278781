//! The allocation core: what this node must fetch, what it may release and when, decided from the view, the
//! catalog's leaves and the evidence other members give, with no I/O.
//!
//! Everything is per partition ([`xnode_placement::Layout`]): for each partition the core keeps the set digest of
//! the catalog's leaves in it (`expected`) and of the leaves this node keeps in it (`held`), so memory is a few
//! dozen bytes per partition whatever the cluster stores. From those it keeps two work sets up to date as inputs
//! arrive, so an idle round is a look at two empty sets:
//! - `incomplete`: partitions the layout gives us whose `held` differs from `expected` (something to fetch);
//! - `surplus`: partitions the layout does not give us in which we still keep leaves (something to hand off).
//!
//! A surplus partition is released only on evidence: every node the layout gives it to must have answered, under
//! the current layout and catalog, with a digest of what it keeps there equal to our `expected` (it holds every
//! leaf we know of). A change of view or of that partition's leaves forgets the evidence gathered so far.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use xnode_placement::{Layout, NodeInfo, PlacementError};

/// Count and order-free digest of a set of blocks (XOR of SHA-256 over each CID), as the holdings protocol carries
/// it: kept up to date block by block, compared between nodes in 40 bytes.
pub use xnode_p2p::SetDigest;

/// The inputs a layout is computed from: it is recomputed only when these change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ViewInputs {
    /// Sorted by name.
    nodes: Vec<NodeInfo>,
    /// Sorted.
    departed: Vec<String>,
}

/// What a change of view did to this node's share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewChange {
    /// Whether a new layout was computed (the inputs differed).
    pub changed: bool,
    /// Partitions the new layout gives us that the old one did not.
    pub gained: Vec<u32>,
    /// Partitions the old layout gave us that the new one does not.
    pub lost: Vec<u32>,
}

/// The allocation decisions of one node. See the module documentation.
#[derive(Debug)]
pub struct AllocCore {
    me: String,
    partitions: u32,
    replication: usize,
    inputs: ViewInputs,
    layout: Option<Arc<Layout>>,
    /// Per partition: whether the layout gives it to us.
    mine: Vec<bool>,
    expected: Vec<SetDigest>,
    held: Vec<SetDigest>,
    incomplete: BTreeSet<u32>,
    surplus: BTreeSet<u32>,
    /// Per surplus partition: the holders that showed they keep `expected` of it.
    evidence: BTreeMap<u32, BTreeSet<String>>,
    /// What we keep in our share, kept up to date leaf by leaf (it is gossiped every round; summing tens of
    /// thousands of partitions each time was most of an idle node's work).
    held_share: SetDigest,
    /// How many partitions are ours.
    mine_count: u64,
    /// Bumped whenever a partition's catalog digest changes, so derived sums can be cached.
    expected_version: u64,
}

impl AllocCore {
    /// A core for the node called `me`, with `partitions` partitions (a power of two) and `replication` copies.
    pub fn new(me: &str, partitions: u32, replication: usize) -> Result<Self, PlacementError> {
        if !partitions.is_power_of_two() || partitions > xnode_placement::MAX_PARTITIONS {
            return Err(PlacementError::BadPartitionCount(partitions));
        }
        if replication == 0 {
            return Err(PlacementError::ZeroReplication);
        }
        let n = partitions as usize;
        Ok(AllocCore {
            me: me.to_string(),
            partitions,
            replication,
            inputs: ViewInputs::default(),
            layout: None,
            mine: vec![false; n],
            expected: vec![SetDigest::default(); n],
            held: vec![SetDigest::default(); n],
            incomplete: BTreeSet::new(),
            surplus: BTreeSet::new(),
            evidence: BTreeMap::new(),
            held_share: SetDigest::default(),
            mine_count: 0,
            expected_version: 0,
        })
    }

    /// How many partitions blocks hash into.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The current layout, once a view was given.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_deref()
    }

    /// The current layout, shared (for work that outlives a borrow of the core, like a health sweep's questions).
    pub fn shared_layout(&self) -> Option<Arc<Layout>> {
        self.layout.clone()
    }

    /// The partition of a block (its CID's binary form).
    pub fn partition_of(&self, cid: &[u8]) -> u32 {
        xnode_placement::partition_of(xnode_placement::BlockKey::of(cid), self.partitions)
    }

    /// Takes the membership view: live members and those that died or left but are not forgotten yet (`departed`,
    /// whose partitions go to the next node of each ranking). Computes a new layout only if these differ from the
    /// last call's.
    pub fn set_view(&mut self, view: &[NodeInfo], departed: &[&str]) -> Result<ViewChange, PlacementError> {
        let mut nodes = view.to_vec();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut gone: Vec<String> = departed.iter().map(|s| s.to_string()).collect();
        gone.sort();
        let inputs = ViewInputs { nodes, departed: gone };
        if self.layout.is_some() && inputs == self.inputs {
            return Ok(ViewChange::default());
        }
        let layout = Layout::new(&inputs.nodes, departed, self.replication, self.partitions)?;
        let me = layout.index_of(&self.me);
        let mut change = ViewChange { changed: true, ..ViewChange::default() };
        for p in 0..self.partitions {
            let now = me.is_some_and(|i| layout.holds(i, p));
            if now != self.mine[p as usize] {
                if now {
                    change.gained.push(p)
                } else {
                    change.lost.push(p)
                }
            }
            self.mine[p as usize] = now;
        }
        if !change.gained.is_empty() || !change.lost.is_empty() {
            let mut share = SetDigest::default();
            let mut count = 0;
            for (i, _) in self.mine.iter().enumerate().filter(|(_, &m)| m) {
                share.add(&self.held[i]);
                count += 1;
            }
            self.held_share = share;
            self.mine_count = count;
        }
        self.inputs = inputs;
        self.layout = Some(Arc::new(layout));
        // Evidence was given under the old layout: the holders may have changed.
        self.evidence.clear();
        for &p in change.gained.iter().chain(&change.lost) {
            self.classify(p);
        }
        Ok(change)
    }

    /// A leaf the catalog did not list before (in any file) now is.
    pub fn leaf_listed(&mut self, partition: u32, digest: &SetDigest) {
        self.expected[partition as usize].add(digest);
        self.expected_version += 1;
        self.evidence.remove(&partition);
        self.classify(partition);
    }

    /// A leaf no catalog file lists any more.
    pub fn leaf_unlisted(&mut self, partition: u32, digest: &SetDigest) {
        self.expected[partition as usize].remove(digest);
        self.expected_version += 1;
        self.evidence.remove(&partition);
        self.classify(partition);
    }

    /// This node now keeps a leaf (fetched, or kept from an add).
    pub fn kept(&mut self, partition: u32, digest: &SetDigest) {
        self.held[partition as usize].add(digest);
        if self.mine[partition as usize] {
            self.held_share.add(digest);
        }
        self.classify(partition);
    }

    /// This node released a leaf.
    pub fn released(&mut self, partition: u32, digest: &SetDigest) {
        self.held[partition as usize].remove(digest);
        if self.mine[partition as usize] {
            self.held_share.remove(digest);
        }
        self.classify(partition);
    }

    /// Sets the catalog digest of a partition as loaded from disk at start.
    pub fn load_expected(&mut self, partition: u32, digest: SetDigest) {
        self.expected[partition as usize] = digest;
        self.expected_version += 1;
        self.classify(partition);
    }

    fn classify(&mut self, p: u32) {
        let i = p as usize;
        if self.mine[i] && self.held[i] != self.expected[i] {
            self.incomplete.insert(p);
        } else {
            self.incomplete.remove(&p);
        }
        if !self.mine[i] && self.held[i].count > 0 {
            self.surplus.insert(p);
        } else {
            self.surplus.remove(&p);
            self.evidence.remove(&p);
        }
    }

    /// What we keep in the partitions the layout gives us (what members gossip as their `share`).
    pub fn held_share(&self) -> SetDigest {
        self.held_share
    }

    /// How many partitions the layout gives us.
    pub fn mine_count(&self) -> u64 {
        self.mine_count
    }

    /// A number that changes whenever any partition's catalog digest does.
    pub fn expected_version(&self) -> u64 {
        self.expected_version
    }

    /// Partitions given to us whose leaves we do not all keep: what to fetch, in order.
    pub fn incomplete(&self) -> &BTreeSet<u32> {
        &self.incomplete
    }

    /// How many leaves of our incomplete partitions we do not keep (from the digests' counts, no disk read).
    pub fn missing(&self) -> u64 {
        self.incomplete
            .iter()
            .map(|&p| self.expected[p as usize].count.saturating_sub(self.held[p as usize].count))
            .sum()
    }

    /// Partitions not given to us in which we still keep leaves: what to hand off.
    pub fn surplus(&self) -> &BTreeSet<u32> {
        &self.surplus
    }

    /// Whether the layout gives `partition` to us.
    pub fn is_mine(&self, partition: u32) -> bool {
        self.mine[partition as usize]
    }

    /// The digest of the catalog's leaves in `partition`.
    pub fn expected(&self, partition: u32) -> SetDigest {
        self.expected[partition as usize]
    }

    /// The digest of the leaves we keep in `partition`.
    pub fn held(&self, partition: u32) -> SetDigest {
        self.held[partition as usize]
    }

    /// The combined digest of the catalog's leaves over `partitions`.
    pub fn expected_over(&self, partitions: &[u32]) -> SetDigest {
        let mut out = SetDigest::default();
        partitions.iter().for_each(|&p| out.add(&self.expected[p as usize]));
        out
    }

    /// The combined digest of what we keep in `partitions`.
    pub fn held_over(&self, partitions: &[u32]) -> SetDigest {
        let mut out = SetDigest::default();
        partitions.iter().for_each(|&p| out.add(&self.held[p as usize]));
        out
    }

    /// For each holder the layout names (ourselves excepted), the surplus partitions it must still show it holds:
    /// the questions to ask before releasing. At most `limit` partitions in all.
    pub fn hand_off_questions(&self, limit: usize) -> BTreeMap<String, Vec<u32>> {
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let Some(layout) = &self.layout else { return out };
        for &p in self.surplus.iter().take(limit) {
            let shown = self.evidence.get(&p);
            for holder in layout.holders(p) {
                if holder != self.me && !shown.is_some_and(|s| s.contains(holder)) {
                    out.entry(holder.to_string()).or_default().push(p);
                }
            }
        }
        out
    }

    /// A holder answered with the digest of what it keeps in `partition`. Returns whether the partition may now be
    /// released: every holder the layout names showed it keeps every leaf we know of there, and they are at least
    /// the replication factor (a view too small or too full for that keeps our copy: never below RF).
    pub fn evidence(&mut self, holder: &str, partition: u32, digest: &SetDigest) -> bool {
        if !self.surplus.contains(&partition) || digest != &self.expected[partition as usize] {
            return false;
        }
        let Some(layout) = &self.layout else { return false };
        if !layout.holders(partition).any(|h| h == holder) {
            return false;
        }
        let shown = self.evidence.entry(partition).or_default();
        shown.insert(holder.to_string());
        layout.holder_count(partition) >= self.replication && layout.holders(partition).all(|h| shown.contains(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTS: u32 = 64;

    fn view(names: &[&str]) -> Vec<NodeInfo> {
        names.iter().map(|n| NodeInfo { name: n.to_string(), capacity: 100 }).collect()
    }

    fn cid(i: u32) -> Vec<u8> {
        format!("block-{i}").into_bytes()
    }

    /// A cluster of cores that share one catalog, pumped by hand: what the shell does with the network.
    struct Cluster {
        cores: BTreeMap<String, AllocCore>,
    }

    impl Cluster {
        fn new(names: &[&str], rf: usize) -> Self {
            let mut cores = BTreeMap::new();
            for n in names {
                let mut core = AllocCore::new(n, PARTS, rf).unwrap();
                core.set_view(&view(names), &[]).unwrap();
                cores.insert(n.to_string(), core);
            }
            Cluster { cores }
        }

        fn list(&mut self, blocks: impl IntoIterator<Item = u32> + Clone) {
            for core in self.cores.values_mut() {
                for b in blocks.clone() {
                    let c = cid(b);
                    core.leaf_listed(core.partition_of(&c), &SetDigest::of_cid_bytes(&c));
                }
            }
        }

        /// Every node keeps the leaves of its incomplete partitions (as if fetched from whoever has them).
        fn fetch_all(&mut self, blocks: &[u32]) {
            for core in self.cores.values_mut() {
                for &b in blocks {
                    let c = cid(b);
                    let p = core.partition_of(&c);
                    if core.is_mine(p) && core.held(p) != core.expected(p) {
                        core.kept(p, &SetDigest::of_cid_bytes(&c));
                    }
                }
            }
        }

        /// Every node asks the holders of its surplus; returns the partitions each may release.
        fn hand_off(&mut self) -> BTreeMap<String, Vec<u32>> {
            let mut out = BTreeMap::new();
            let names: Vec<String> = self.cores.keys().cloned().collect();
            for name in &names {
                let questions = self.cores[name].hand_off_questions(usize::MAX);
                let mut free = Vec::new();
                for (holder, parts) in questions {
                    for p in parts {
                        let answer = self.cores[&holder].held(p);
                        if self.cores.get_mut(name).unwrap().evidence(&holder, p, &answer) {
                            free.push(p);
                        }
                    }
                }
                out.insert(name.clone(), free);
            }
            out
        }
    }

    #[test]
    fn set_digests_are_order_free_and_removable() {
        let (a, b) = (SetDigest::of_cid_bytes(b"a"), SetDigest::of_cid_bytes(b"b"));
        let mut ab = a;
        ab.add(&b);
        let mut ba = b;
        ba.add(&a);
        assert_eq!(ab, ba);
        ab.remove(&b);
        assert_eq!(ab, a);
        assert_ne!(a, b);
    }

    #[test]
    fn an_idle_node_has_nothing_to_do_and_the_same_view_computes_nothing() {
        let mut core = AllocCore::new("a", PARTS, 2).unwrap();
        let first = core.set_view(&view(&["a", "b", "c"]), &[]).unwrap();
        assert!(first.changed);
        assert!(core.incomplete().is_empty() && core.surplus().is_empty());
        let again = core.set_view(&view(&["c", "b", "a"]), &[]).unwrap();
        assert_eq!(again, ViewChange::default());
    }

    #[test]
    fn the_gossiped_share_follows_keeps_releases_and_view_changes() {
        // Independently: the share is the XOR of the hashes of the leaves we keep in partitions the layout gives us.
        let share_of = |core: &AllocCore, kept: &[u32]| {
            let mut xor = [0u8; 32];
            let mut count = 0;
            for &b in kept {
                let c = cid(b);
                if core.is_mine(core.partition_of(&c)) {
                    let h: [u8; 32] =
                        sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), &c)).into();
                    xor.iter_mut().zip(h).for_each(|(a, b)| *a ^= b);
                    count += 1;
                }
            }
            SetDigest { count, xor }
        };
        let mut core = AllocCore::new("a", PARTS, 1).unwrap();
        core.set_view(&view(&["a", "b"]), &[]).unwrap();
        let blocks: Vec<u32> = (0..200).collect();
        for &b in &blocks {
            let c = cid(b);
            core.kept(core.partition_of(&c), &SetDigest::of_cid_bytes(&c));
        }
        assert_eq!(core.held_share(), share_of(&core, &blocks));
        assert!(core.held_share().count > 0 && core.held_share().count < 200);
        for &b in &blocks[..50] {
            let c = cid(b);
            core.released(core.partition_of(&c), &SetDigest::of_cid_bytes(&c));
        }
        assert_eq!(core.held_share(), share_of(&core, &blocks[50..]));
        // b leaves: every partition is ours, and the share is everything we keep.
        core.set_view(&view(&["a", "b"]), &["b"]).unwrap();
        assert_eq!(core.mine_count(), u64::from(PARTS));
        assert_eq!(core.held_share(), share_of(&core, &blocks[50..]));
        assert_eq!(core.held_share().count, 150);
    }

    #[test]
    fn new_leaves_make_only_their_holders_fetch() {
        let mut cluster = Cluster::new(&["a", "b", "c", "d"], 2);
        cluster.list([1]);
        let c = cid(1);
        let p = cluster.cores["a"].partition_of(&c);
        let holders: Vec<String> = cluster.cores["a"].layout().unwrap().holders(p).map(String::from).collect();
        assert_eq!(holders.len(), 2);
        for (name, core) in &cluster.cores {
            assert_eq!(core.incomplete().contains(&p), holders.contains(name), "{name}");
        }
        let holder = &cluster.cores[&holders[0]];
        assert_eq!(holder.missing(), 1);
        cluster.fetch_all(&[1]);
        assert!(cluster.cores.values().all(|c| c.incomplete().is_empty() && c.missing() == 0));
    }

    #[test]
    fn an_uploader_releases_only_after_every_holder_shows_the_partition() {
        let mut cluster = Cluster::new(&["a", "b", "c", "d", "e"], 2);
        let blocks: Vec<u32> = (0..200).collect();
        cluster.list(blocks.clone());
        // "a" added the file: it keeps every leaf.
        {
            let a = cluster.cores.get_mut("a").unwrap();
            for &b in &blocks {
                let c = cid(b);
                let p = a.partition_of(&c);
                if !a.is_mine(p) || a.held(p) != a.expected(p) {
                    a.kept(p, &SetDigest::of_cid_bytes(&c));
                }
            }
        }
        let surplus: Vec<u32> = cluster.cores["a"].surplus().iter().copied().collect();
        assert!(!surplus.is_empty());
        // Nobody else fetched yet: nothing may go.
        assert!(cluster.hand_off()["a"].is_empty());
        // The others fetch: now every surplus partition may go, and only those.
        cluster.fetch_all(&blocks);
        let mut free = cluster.hand_off().remove("a").unwrap();
        free.sort_unstable();
        assert_eq!(free, surplus);
    }

    #[test]
    fn a_holder_that_misses_one_leaf_holds_back_only_that_partition() {
        let mut cluster = Cluster::new(&["a", "b", "c"], 2);
        let blocks: Vec<u32> = (0..100).collect();
        cluster.list(blocks.clone());
        let a = cluster.cores.get_mut("a").unwrap();
        for &b in &blocks {
            let c = cid(b);
            let p = a.partition_of(&c);
            a.kept(p, &SetDigest::of_cid_bytes(&c));
        }
        // Everyone fetches everything but "b" skips block 7.
        let skipped = cid(7);
        let p7 = cluster.cores["a"].partition_of(&skipped);
        for (name, core) in cluster.cores.iter_mut().filter(|(n, _)| *n != "a") {
            for &b in &blocks {
                let c = cid(b);
                let p = core.partition_of(&c);
                if core.is_mine(p) && !(name == "b" && b == 7) {
                    core.kept(p, &SetDigest::of_cid_bytes(&c));
                }
            }
        }
        let free = cluster.hand_off().remove("a").unwrap();
        let b_holds_p7 = cluster.cores["a"].layout().unwrap().holders(p7).any(|h| h == "b");
        let a_holds_p7 = cluster.cores["a"].is_mine(p7);
        assert_eq!(free.contains(&p7), !b_holds_p7 && !a_holds_p7, "b holds p7: {b_holds_p7}, a: {a_holds_p7}");
        let surplus = cluster.cores["a"].surplus().clone();
        assert!(surplus.iter().filter(|&&p| p != p7).all(|p| free.contains(p)));
    }

    #[test]
    fn evidence_from_a_non_holder_or_with_a_stale_digest_does_not_count() {
        let mut cluster = Cluster::new(&["a", "b", "c"], 1);
        cluster.list([1, 2, 3]);
        let a = cluster.cores.get_mut("a").unwrap();
        for b in [1, 2, 3] {
            let c = cid(b);
            let p = a.partition_of(&c);
            a.kept(p, &SetDigest::of_cid_bytes(&c));
        }
        let Some(&p) = a.surplus().iter().next() else { return };
        let holder = a.layout().unwrap().holders(p).next().unwrap().to_string();
        let other = ["b", "c"].into_iter().find(|n| *n != holder).unwrap();
        let right = a.expected(p);
        assert!(!a.evidence(other, p, &right), "a non-holder's answer released a copy");
        assert!(!a.evidence(&holder, p, &SetDigest::default()), "a stale digest released a copy");
        // A new leaf in that partition after the evidence: the old answer no longer counts.
        assert!(a.evidence(&holder, p, &right));
        let extra = (100..10_000).map(cid).find(|c| a.partition_of(c) == p).unwrap();
        a.leaf_listed(p, &SetDigest::of_cid_bytes(&extra));
        assert!(!a.evidence(&holder, p, &right));
    }

    #[test]
    fn a_departure_moves_the_departed_nodes_partitions_to_survivors_who_then_fetch() {
        let names = ["a", "b", "c", "d"];
        let mut cluster = Cluster::new(&names, 2);
        let blocks: Vec<u32> = (0..300).collect();
        cluster.list(blocks.clone());
        cluster.fetch_all(&blocks);
        let d_parts: BTreeSet<u32> = cluster.cores["a"].layout().unwrap().partitions_of("d").into_iter().collect();
        cluster.cores.remove("d");
        let mut gained_total = 0;
        for core in cluster.cores.values_mut() {
            let change = core.set_view(&view(&names), &["d"]).unwrap();
            assert!(change.lost.is_empty(), "a survivor lost a partition it held");
            assert!(change.gained.iter().all(|p| d_parts.contains(p)));
            gained_total += change.gained.len();
        }
        assert_eq!(gained_total, d_parts.len());
        cluster.fetch_all(&blocks);
        assert!(cluster.cores.values().all(|c| c.incomplete().is_empty() && c.surplus().is_empty()));
    }

    #[test]
    fn a_join_hands_partitions_to_the_newcomer_and_the_old_holders_release_after_it_fetched() {
        let mut cluster = Cluster::new(&["a", "b", "c"], 2);
        let blocks: Vec<u32> = (0..300).collect();
        cluster.list(blocks.clone());
        cluster.fetch_all(&blocks);
        let all = ["a", "b", "c", "d"];
        let mut d = AllocCore::new("d", PARTS, 2).unwrap();
        d.set_view(&view(&all), &[]).unwrap();
        cluster.cores.insert("d".into(), d);
        cluster.list(std::iter::empty::<u32>());
        for b in &blocks {
            let core = cluster.cores.get_mut("d").unwrap();
            let c = cid(*b);
            core.leaf_listed(core.partition_of(&c), &SetDigest::of_cid_bytes(&c));
        }
        for name in ["a", "b", "c"] {
            cluster.cores.get_mut(name).unwrap().set_view(&view(&all), &[]).unwrap();
        }
        let surplus_before: usize = cluster.cores.values().map(|c| c.surplus().len()).sum();
        assert!(surplus_before > 0);
        assert!(cluster.hand_off().values().all(Vec::is_empty), "released before the newcomer fetched");
        cluster.fetch_all(&blocks);
        let freed = cluster.hand_off();
        let freed_total: usize = freed.values().map(Vec::len).sum();
        assert_eq!(freed_total, surplus_before);
        // Releasing is the shell's work; simulate it and check nothing is left to do.
        for (name, parts) in freed {
            let core = cluster.cores.get_mut(&name).unwrap();
            for p in parts {
                let h = core.held(p);
                core.released(p, &h);
            }
        }
        assert!(cluster.cores.values().all(|c| c.incomplete().is_empty() && c.surplus().is_empty()));
    }
}
