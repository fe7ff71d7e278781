//! The allocation loop: every node keeps the catalog and the interior blocks of every catalog file, and fetches and
//! keeps the leaves of the partitions the layout gives it, so the cluster keeps each file at its replication factor
//! by itself. Work is in proportion to what changed, not to what the cluster stores (docs/allocation.md).
//!
//! One task owns the allocation state ([`core::AllocCore`], the decisions, and [`index::Index`], the on-disk
//! catalog index); the rest of the node reads what it publishes ([`Report`], [`HeldDigests`]). Each round:
//! 1. pull catalog entries the members' gossiped heads say we lack, and publish local pins the catalog lacks;
//! 2. when the catalog changed: index each new file once (its DAG walked, interior blocks kept, leaves listed by
//!    partition), unindex removed ones and release their copies;
//! 3. when the view changed: a new layout (only the partitions that changed hands become work);
//! 4. fetch the missing leaves of our incomplete partitions, within the store's room;
//! 5. hand off surplus partitions: ask their holders for the digest of what they keep there, and release our
//!    copies of a partition once every holder showed it has every leaf;
//! 6. every few seconds, file health from what each member shows it holds.

mod ask;
pub mod core;
pub mod index;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xnode_catalog::{FileRecord, Head, Heads, Op};
use xnode_dag::pb::{DataType, PbNode, UnixFsData};
use xnode_gossip::{Member, MemberState};
use xnode_p2p::{BlockKind, PeerId};
use xnode_placement::NodeInfo;

use self::core::{AllocCore, SetDigest};
use self::index::Index;
use crate::node::{FileHealth, Node, Phase};
use crate::InstanceError;

/// Time between two rounds.
const ROUND: Duration = Duration::from_millis(1000);
/// The longest a slow health sweep may push back the next one.
const HEALTH_MAX_GAP: Duration = Duration::from_secs(10);
/// Time between two health sweeps (each asks every member one summary of its share).
const HEALTH_EVERY: Duration = Duration::from_secs(3);
/// How long one catalog entry or interior block is looked for before the round moves on (it is retried next round).
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one leaf is looked for.
const LEAF_TIMEOUT: Duration = Duration::from_secs(20);
/// Leaves fetched at once.
const FETCH_CONCURRENCY: usize = 48;
/// Most leaves fetched in one round, so a change of view is noticed within a few seconds even mid-repair.
const FETCH_PER_ROUND: usize = 4096;
/// Most leaves already stored (a read cache, an add) kept in one round.
const KEEP_PER_ROUND: usize = 65_536;
/// Most surplus partitions asked about in one round.
const HANDOFF_PER_ROUND: usize = 8192;
/// Most partitions or blocks in one question to a member (the holdings protocol's bound).
const ASK_CHUNK: usize = 8192;
/// Leaves of troubled partitions one health sweep asks members about; the rest count as under-replicated.
const HEALTH_CHECK_MAX: usize = 65_536;
/// Troubled partitions whose leaves a health sweep reads at once.
const HEALTH_CHUNK: usize = 256;
/// Interior blocks a walk reads or fetches at once.
const WALK_AHEAD: usize = 32;
/// Leaves of a file indexed in one batch while its DAG is walked (bounds the memory a huge file takes).
const LEAF_BATCH: usize = 16_384;
/// Fetched blocks are written to the store in batches of this many.
const WRITE_BATCH: usize = 64;
/// Wanted CIDs listed in the report (the count is exact).
const WANTED_LISTED: usize = 1000;
/// A dag-pb child whose total size exceeds the file bytes under it by less than this is a leaf: an interior node
/// carries at least one link (>= 36 bytes) on top of its children's overhead, a leaf only its UnixFS framing (~14).
const LEAF_OVERHEAD: u64 = 32;
/// A directory entry whose link covers at most this many bytes may be a file of one block (a chunk of up to 256 KiB
/// plus its UnixFS framing); the walk looks at it to tell.
const PROBE_MAX: u64 = 256 * 1024 + 1024;
/// The weight given to a member with an unlimited store, so placement shares stay finite.
const UNLIMITED_WEIGHT: u64 = 1 << 50;

/// Settings of the allocation, from the node's config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AllocConfig {
    /// Copies of each block.
    pub(crate) replication: usize,
    /// Partitions blocks hash into (a power of two, the same on every member).
    pub(crate) partitions: u32,
    /// Staged blocks of an add quiet this long, and claimed by no catalog file, are reclaimed.
    pub(crate) staged_ttl: Duration,
}

/// What the loop found, for the API, the dashboard and the gossiped metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) phase: Option<Phase>,
    /// Blocks placement gives us that we do not hold yet (the first [`WANTED_LISTED`]).
    pub(crate) wanted: Vec<Cid>,
    /// How many blocks placement gives us that we do not hold yet.
    pub(crate) wanted_count: u64,
    /// Blocks we should hold but could not fetch this round (store full, nobody has them).
    pub(crate) under_replicated: u64,
    /// Every catalog file with its replication health, as of the last sweep.
    /// Replaced only when it differs, so readers can tell a change by the pointer.
    pub(crate) health: Arc<Vec<FileHealth>>,
    /// Partitions given to this node, and how many of them it holds completely.
    pub(crate) partitions_mine: u64,
    pub(crate) partitions_complete: u64,
    /// Surplus partitions waiting for their holders' evidence.
    pub(crate) partitions_surplus: u64,
    /// What this node keeps in its share, as gossiped ([`SetDigest::to_gossip`]).
    pub(crate) share: String,
    /// The current partition layout: streaming ingest routes new blocks by it (`crate::ingest`).
    pub(crate) layout: Option<Arc<xnode_placement::Layout>>,
}

/// What this node keeps, per partition, as the allocation task last published it: what the holdings protocol
/// answers to members (`xnode_p2p::Holdings`). Written only by the allocation task; readers take a short read lock.
#[derive(Debug)]
pub(crate) struct HeldDigests {
    held: RwLock<Vec<SetDigest>>,
    store: xnode_storage::Store,
}

impl HeldDigests {
    pub(crate) fn new(partitions: u32, store: xnode_storage::Store) -> Self {
        HeldDigests { held: RwLock::new(vec![SetDigest::default(); partitions as usize]), store }
    }

    fn set(&self, partition: u32, digest: SetDigest) {
        if let Some(slot) = self.held.write().expect("not poisoned").get_mut(partition as usize) {
            *slot = digest;
        }
    }
}

impl xnode_p2p::Holdings for HeldDigests {
    fn digests(&self, partitions: &[u32]) -> Vec<SetDigest> {
        let held = self.held.read().expect("not poisoned");
        partitions.iter().map(|&p| held.get(p as usize).copied().unwrap_or_default()).collect()
    }

    fn summary(&self, bitmap: &[u8]) -> SetDigest {
        let held = self.held.read().expect("not poisoned");
        let mut out = SetDigest::default();
        for (i, &byte) in bitmap.iter().enumerate().filter(|(_, b)| **b != 0) {
            for bit in 0..8 {
                if byte >> bit & 1 == 1 {
                    if let Some(d) = held.get(i * 8 + bit) {
                        out.add(d);
                    }
                }
            }
        }
        out
    }

    fn have(&self, cids: &[Cid]) -> Vec<bool> {
        cids.iter().map(|c| self.store.has(c).unwrap_or(false)).collect()
    }

    fn kinds(&self, cids: &[Cid]) -> Vec<BlockKind> {
        cids.iter()
            .map(|c| match self.store.get(c) {
                Ok(Some(data)) => kind_of(c, &data),
                _ => BlockKind::Absent,
            })
            .collect()
    }
}

/// What `data`, the block `cid`, is to placement: a leaf (no links) or interior; `Absent` when it does not decode
/// (whoever asked then fetches it and finds out for itself).
fn kind_of(cid: &Cid, data: &Bytes) -> BlockKind {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if cid.codec() == xnode_dag::RAW {
        return BlockKind::Leaf(size);
    }
    match PbNode::decode(data) {
        Ok(pb) if pb.links.is_empty() => BlockKind::Leaf(size),
        Ok(_) => BlockKind::Interior,
        Err(_) => BlockKind::Absent,
    }
}

/// Gossiped heads: `{"<peer id>": [len, "<cid>"]}`.
pub(crate) fn heads_json(heads: &Heads) -> String {
    let map: BTreeMap<String, (u64, String)> =
        heads.iter().map(|(p, h)| (p.to_string(), (h.len, h.cid.to_string()))).collect();
    serde_json::to_string(&map).unwrap_or_default()
}

fn parse_heads(json: &str) -> Heads {
    let Ok(map) = serde_json::from_str::<BTreeMap<String, (u64, String)>>(json) else { return Heads::new() };
    map.into_iter()
        .filter_map(|(p, (len, cid))| Some((p.parse().ok()?, Head { len, cid: Cid::try_from(cid.as_str()).ok()? })))
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking allocation work does not panic")
}

/// The state the allocation task owns.
struct Allocator {
    core: AllocCore,
    index: Index,
    held: Arc<HeldDigests>,
    /// The catalog version last indexed; `None` until the first pass.
    indexed_version: Option<u64>,
    /// Files whose DAG could not be walked yet (retried every round).
    unwalked: BTreeSet<Cid>,
    /// Every node's share under the current layout, in the layout's node order (computed once per layout).
    shares: Vec<(String, Vec<u32>)>,
    /// What the catalog expects in each of `shares`, as of a catalog digest version (recomputed only when the
    /// catalog or the layout changed, not every sweep).
    expected_shares: Option<(u64, Vec<SetDigest>)>,
    /// Members' shares found incomplete by the last health sweep: member -> partitions.
    incomplete_members: BTreeMap<String, BTreeSet<u32>>,
    last_health: Option<Instant>,
    /// The partition the next fetch scan starts from.
    fetch_cursor: u32,
    /// How long the last health sweep took.
    last_sweep_took: Duration,
    /// Something that health depends on changed since the last sweep.
    health_dirty: bool,
    /// The view the current layout was computed from.
    view_key: ViewKey,
    staged_ttl: Duration,
    report: Report,
}

/// Runs the allocation until `stop`.
pub(crate) async fn run(
    node: std::sync::Weak<Node>,
    config: AllocConfig,
    held: Arc<HeldDigests>,
    mut lost: tokio::sync::mpsc::UnboundedReceiver<Cid>,
    stop: CancellationToken,
) {
    let Some(first) = node.upgrade() else { return };
    let mut alloc = match Allocator::open(&first, config, held).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the allocation index; this node will not allocate");
            return;
        }
    };
    let mut members = first.members_watch();
    drop(first);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ROUND) => {}
            // A death, a join or a resize starts a round at once rather than at the next tick: repair must not wait.
            () = view_changed(&mut members, &alloc.view_key) => {}
            Some(cid) = lost.recv() => {
                alloc.lost(&cid);
                while let Ok(cid) = lost.try_recv() {
                    alloc.lost(&cid);
                }
            }
        }
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = alloc.round(&node).await {
            tracing::warn!(error = %e, "allocation round failed; retrying");
        }
        node.set_report(alloc.report.clone());
        node.publish_meta().await;
    }
}

/// What the layout depends on in a membership view: names, whether alive, capacities.
type ViewKey = Vec<(String, bool, u64)>;

fn view_key(members: &[Member]) -> ViewKey {
    let mut key: ViewKey =
        members.iter().map(|m| (m.name.clone(), m.state == MemberState::Alive, m.meta.capacity)).collect();
    key.sort();
    key
}

/// Resolves when the membership view differs from `last` in what the layout depends on (metadata the members
/// republish every round does not count). Never resolves once the node has left.
async fn view_changed(members: &mut Option<tokio::sync::watch::Receiver<Arc<Vec<Member>>>>, last: &ViewKey) {
    let Some(rx) = members else { return std::future::pending().await };
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if view_key(&rx.borrow_and_update()) != *last {
            return;
        }
    }
}

impl Allocator {
    /// Opens the index and loads the per-partition digests: the catalog's from the index, ours from the blocks the
    /// store keeps (one pass over this node's own blocks, at start only).
    async fn open(node: &Arc<Node>, config: AllocConfig, held: Arc<HeldDigests>) -> Result<Self, InstanceError> {
        let mut core = AllocCore::new(node.name(), config.partitions, config.replication)
            .map_err(|e| InstanceError::BadUpload(e.to_string()))?;
        let store = node.repo().store().clone();
        let partitions = config.partitions;
        let (index, expected, kept) = blocking(move || -> Result<_, InstanceError> {
            let index = Index::open(store.tree("alloc")?, partitions).map_err(index_error)?;
            let expected = index.digests().map_err(index_error)?;
            let mut kept = Vec::new();
            for cid in store.kept()? {
                if index.is_leaf(&cid).map_err(index_error)? {
                    kept.push(cid);
                }
            }
            Ok((index, expected, kept))
        })
        .await?;
        for (p, d) in expected {
            core.load_expected(p, d);
        }
        for cid in &kept {
            let bytes = cid.to_bytes();
            core.kept(core.partition_of(&bytes), &SetDigest::of_cid_bytes(&bytes));
        }
        for p in 0..core.partitions() {
            held.set(p, core.held(p));
        }
        tracing::info!(partitions, leaves_kept = kept.len(), "allocation index opened");
        Ok(Allocator {
            core,
            index,
            held,
            indexed_version: None,
            unwalked: BTreeSet::new(),
            shares: Vec::new(),
            expected_shares: None,
            incomplete_members: BTreeMap::new(),
            last_health: None,
            last_sweep_took: Duration::ZERO,
            fetch_cursor: 0,
            health_dirty: true,
            view_key: ViewKey::new(),
            staged_ttl: config.staged_ttl,
            report: Report::default(),
        })
    }

    fn kept(&mut self, cid: &Cid) {
        let bytes = cid.to_bytes();
        let p = self.core.partition_of(&bytes);
        self.core.kept(p, &SetDigest::of_cid_bytes(&bytes));
        self.held.set(p, self.core.held(p));
    }

    fn released(&mut self, cid: &Cid) {
        let bytes = cid.to_bytes();
        let p = self.core.partition_of(&bytes);
        self.core.released(p, &SetDigest::of_cid_bytes(&bytes));
        self.held.set(p, self.core.held(p));
    }

    /// A copy this node counted is gone (found corrupt): count it as not held, if it is a leaf we kept, so its
    /// partition is fetched again; and let health look again.
    fn lost(&mut self, cid: &Cid) {
        if self.index.is_leaf(cid).unwrap_or(false) {
            self.released(cid);
        }
        self.health_dirty = true;
    }

    async fn round(&mut self, node: &Arc<Node>) -> Result<(), InstanceError> {
        let members = node.view();
        let alive: Vec<&Member> = members.iter().filter(|m| m.state == MemberState::Alive).collect();
        self.view_key = view_key(&members);
        if !node.joined() && !node.starts_alone() {
            self.report.phase = Some(Phase::LookingForPeers);
            return Ok(());
        }

        // 1. The view, first: a new layout is what repair waits on. Members that died or left stay in it, marked
        //    departed, until membership forgets them: their partitions go to the next node of each ranking and
        //    nothing else moves (docs/placement.md).
        let departed: Vec<&str> = members
            .iter()
            .filter(|m| m.state != MemberState::Alive && !alive.iter().any(|a| a.name == m.name))
            .map(|m| m.name.as_str())
            .collect();
        let weight = |m: &Member| if m.meta.capacity == u64::MAX { UNLIMITED_WEIGHT } else { m.meta.capacity };
        let mut view: Vec<NodeInfo> = Vec::new();
        for m in members.iter() {
            if !view.iter().any(|v| v.name == m.name) {
                view.push(NodeInfo { name: m.name.clone(), capacity: weight(m) });
            }
        }
        let change = self.core.set_view(&view, &departed).map_err(|e| InstanceError::BadUpload(e.to_string()))?;
        if change.changed {
            tracing::info!(
                members = view.len(),
                departed = departed.len(),
                gained = change.gained.len(),
                lost = change.lost.len(),
                "new partition layout"
            );
            if let Some(layout) = self.core.layout() {
                let by_node = layout.partitions_by_node();
                self.shares = layout.nodes().iter().cloned().zip(by_node).collect();
            }
            self.expected_shares = None;
            self.incomplete_members.clear();
            self.health_dirty = true;
            self.report.layout = self.core.shared_layout();
            self.report_layout();
            // A member died or left: count the copies it took with it now, before this round fetches them again,
            // so the report (and the dashboard's timeline) shows the repair start, however fast it then ends.
            if !departed.is_empty() {
                let start = Instant::now();
                self.sweep_health(node, &alive).await?;
                self.last_sweep_took = start.elapsed();
            }
            // Show the new share now: the rest of the round may take a while.
            node.set_report(self.report.clone());
        }

        // 2. The catalog.
        let synced = sync_catalog(node, &alive).await;
        publish_pins(node).await?;

        // 3. Index what the catalog added and removed, if it changed.
        let version = *node.catalog_changes().borrow();
        if self.indexed_version != Some(version) || !self.unwalked.is_empty() {
            self.index_catalog(node).await?;
            self.indexed_version = Some(version);
            self.health_dirty = true;
        }

        // Staged blocks (streamed here by an add) that no catalog file claimed within the staging time.
        self.reclaim_staged(node).await?;

        // 4. Fetch what is ours and missing.
        let (missing, missing_count) = self.fetch_incomplete(node).await?;

        // 5. Hand off surplus partitions on evidence.
        if !self.core.surplus().is_empty() {
            self.hand_off(node, &alive).await?;
        }

        // 6. Health.
        // Every few seconds whatever happened (a member may have lost copies without telling): the sweep costs
        // one summary per member, whatever the cluster stores. Sooner when something here changed.
        // A sweep that had much to check (a repair in progress) spaces the next ones out a little, so health takes
        // at most about a fifth of the loop's time, and is never more than HEALTH_MAX_GAP old.
        let spacing = (self.last_sweep_took * 4).min(HEALTH_MAX_GAP);
        let due = self.last_health.is_none_or(|t| t.elapsed() >= HEALTH_EVERY.max(spacing));
        let soon = self.health_dirty && self.last_health.is_none_or(|t| t.elapsed() >= ROUND.max(spacing));
        if due || soon {
            let start = Instant::now();
            self.sweep_health(node, &alive).await?;
            self.last_sweep_took = start.elapsed();
            tracing::debug!(took = ?self.last_sweep_took, troubled = self.incomplete_members.len(), "health sweep");
        }

        let metadata_complete = synced && self.unwalked.is_empty();
        self.report.phase = Some(if !metadata_complete {
            Phase::FetchingMetadata
        } else if !self.core.incomplete().is_empty() {
            Phase::PickingBlocks
        } else {
            Phase::Seeding
        });
        self.report.wanted_count = missing_count;
        self.report.wanted = missing;
        self.report.under_replicated = missing_count;
        self.report_layout();
        Ok(())
    }

    /// Puts this node's share of the current layout in the report.
    fn report_layout(&mut self) {
        if self.core.layout().is_some() {
            let mine = self.core.mine_count();
            self.report.partitions_mine = mine;
            self.report.partitions_complete = mine - self.core.incomplete().len() as u64;
            self.report.share = self.core.held_share().to_gossip();
        }
        self.report.partitions_surplus = self.core.surplus().len() as u64;
    }

    /// Indexes catalog files not indexed yet and unindexes removed ones; keeps the blocks of files this node added
    /// (then drops their staging pins) and releases the copies of removed files.
    async fn index_catalog(&mut self, node: &Arc<Node>) -> Result<(), InstanceError> {
        let files = node.catalog_files();
        let listed: HashSet<Cid> = files.iter().map(|f| f.root).collect();
        let store = node.repo().store().clone();
        let index = self.index.clone();
        let listed_here = listed.clone();
        let (todo, removed, pins) = blocking(move || -> Result<_, InstanceError> {
            let mut todo = Vec::new();
            for f in files {
                if index.file(&f.root).map_err(index_error)?.is_none() {
                    todo.push(f);
                }
            }
            let removed: Vec<Cid> =
                index.files().map_err(index_error)?.into_iter().filter(|r| !listed_here.contains(r)).collect();
            Ok((todo, removed, store.pins()?))
        })
        .await?;
        self.unwalked.clear();
        for f in todo {
            let root = f.root;
            let pinned = pins.iter().any(|p| p.root == root);
            let (mut listed, mut kept) = (0usize, 0usize);
            let started = Instant::now();
            let (mut walking, mut indexing) = (Duration::ZERO, Duration::ZERO);
            let mut walk = Walk::new(&f);
            let walked = loop {
                let step = Instant::now();
                let next = walk.next(node).await;
                walking += step.elapsed();
                let step = Instant::now();
                let batch = match next {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break Ok(walk.interior()),
                    Err(e) => break Err(e),
                };
                let index = self.index.clone();
                let store = node.repo().store().clone();
                let (added, newly_kept) = blocking(move || -> Result<_, InstanceError> {
                    let added = index.add_leaves(&root, &batch).map_err(index_error)?;
                    // A file this node added: its leaves become allocation copies like fetched ones (handed off on
                    // evidence); the staging pin goes once the whole file is indexed.
                    let mut newly_kept = Vec::new();
                    if pinned {
                        for (cid, _) in &batch {
                            if !store.is_kept(cid)? && store.has(cid)? {
                                newly_kept.push(*cid);
                            }
                        }
                        store.keep(&newly_kept)?;
                    }
                    Ok((added, newly_kept))
                })
                .await?;
                for (p, cid, _) in &added.listed {
                    self.core.leaf_listed(*p, &SetDigest::of_cid(cid));
                }
                for cid in &newly_kept {
                    self.kept(cid);
                }
                listed += added.listed.len();
                kept += newly_kept.len();
                indexing += step.elapsed();
            };
            let interior = match walked {
                Ok(interior) => interior,
                Err(e) => {
                    tracing::debug!(%root, error = %e, "metadata not complete yet");
                    self.unwalked.insert(root);
                    continue;
                }
            };
            let index = self.index.clone();
            let store = node.repo().store().clone();
            blocking(move || -> Result<(), InstanceError> {
                store.keep(&interior)?;
                index.finish_file(&root, &interior).map_err(index_error)?;
                if pinned {
                    store.unpin(&root)?;
                }
                Ok(())
            })
            .await?;
            tracing::debug!(%root, new_leaves = listed, kept, took = ?started.elapsed(), ?walking, ?indexing, "file indexed");
        }
        for root in removed {
            let index = self.index.clone();
            let store = node.repo().store().clone();
            let (delta, released) = blocking(move || -> Result<_, InstanceError> {
                let delta = index.remove_file(&root).map_err(index_error)?;
                let mut released = Vec::new();
                for (_, cid, _) in &delta.leaves {
                    if store.is_kept(cid)? {
                        released.push(*cid);
                    }
                }
                let mut drop: Vec<Cid> = released.clone();
                drop.extend(delta.interior.iter().copied());
                store.release(&drop)?;
                if store.pin(&root)?.is_some() {
                    store.unpin(&root)?;
                }
                Ok((delta, released))
            })
            .await?;
            for (p, cid, _) in &delta.leaves {
                self.core.leaf_unlisted(*p, &SetDigest::of_cid(cid));
            }
            for cid in &released {
                self.released(cid);
            }
            tracing::info!(%root, released = released.len(), "file removed from the catalog; copies dropped");
        }
        // Pins of files the catalog removed after they were pinned.
        let store = node.repo().store().clone();
        let removed_pins: Vec<Cid> = pins
            .iter()
            .filter(|p| !listed.contains(&p.root) && node.catalog_mentions(&p.root))
            .map(|p| p.root)
            .collect();
        if !removed_pins.is_empty() {
            blocking(move || -> Result<(), InstanceError> {
                for root in removed_pins {
                    store.unpin(&root)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Staged blocks of adds that have been quiet for the staging time: those a catalog file lists are kept (ours
    /// or not: a block that is not ours becomes surplus and is handed off on evidence, as any copy), the rest are
    /// unstaged and deleted. Nothing to do (one scan of an empty key range) when nothing is staged.
    async fn reclaim_staged(&mut self, node: &Arc<Node>) -> Result<(), InstanceError> {
        let store = node.repo().store().clone();
        let index = self.index.clone();
        let cutoff = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(self.staged_ttl.as_millis() as u64);
        let (claimed, dropped) = blocking(move || -> Result<_, InstanceError> {
            let staged = store.staged()?;
            if staged.is_empty() {
                return Ok((Vec::new(), 0));
            }
            // A session is as old as its last block: a long add is not reclaimed while it still sends.
            let mut last: HashMap<u64, u64> = HashMap::new();
            for (_, s) in &staged {
                let at = last.entry(s.session).or_default();
                *at = (*at).max(s.at_ms);
            }
            tracing::debug!(staged = staged.len(), sessions = last.len(), cutoff, "staged blocks");
            let (mut claimed, mut drop) = (Vec::new(), Vec::new());
            for (cid, s) in staged {
                if last[&s.session] >= cutoff {
                    continue;
                }
                if index.is_leaf(&cid).map_err(index_error)? {
                    claimed.push(cid);
                } else {
                    drop.push(cid);
                }
            }
            store.keep(&claimed)?;
            let gone = store.unstage(&drop)?;
            if !drop.is_empty() {
                tracing::info!(
                    blocks = drop.len(),
                    deleted = gone.blocks_deleted,
                    bytes = gone.bytes_freed,
                    "reclaimed staged blocks no catalog file claimed"
                );
            }
            Ok((claimed, drop.len()))
        })
        .await?;
        for cid in &claimed {
            self.kept(cid);
        }
        if dropped > 0 || !claimed.is_empty() {
            self.health_dirty = true;
        }
        Ok(())
    }

    /// Keeps or fetches the missing leaves of our incomplete partitions (at most [`FETCH_PER_ROUND`] fetched per
    /// round). Returns the first leaves still missing and how many are missing in all.
    async fn fetch_incomplete(&mut self, node: &Arc<Node>) -> Result<(Vec<Cid>, u64), InstanceError> {
        if self.core.incomplete().is_empty() {
            return Ok((Vec::new(), 0));
        }
        // From where the last round stopped, so partitions whose blocks cannot be fetched now do not starve the rest.
        let cursor = self.fetch_cursor;
        let partitions: Vec<u32> =
            self.core.incomplete().range(cursor..).chain(self.core.incomplete().range(..cursor)).copied().collect();
        let index = self.index.clone();
        let store = node.repo().store().clone();
        // Per partition: leaves stored but not kept yet (a read cache, an add), and leaves to fetch. The scan stops
        // once a round's worth is found: a round's disk work follows what it fetches, not the size of the share.
        let started = Instant::now();
        let (present, absent, scanned_all, next) = blocking(move || -> Result<_, InstanceError> {
            let (mut present, mut absent) = (Vec::new(), Vec::new());
            for &p in &partitions {
                if absent.len() >= FETCH_PER_ROUND || present.len() >= KEEP_PER_ROUND {
                    store.keep(&present)?;
                    return Ok((present, absent, false, p));
                }
                for (cid, size) in index.leaves_in(p).map_err(index_error)? {
                    if store.is_kept(&cid)? {
                        continue;
                    }
                    if store.has(&cid)? {
                        present.push(cid);
                    } else {
                        absent.push((cid, size));
                    }
                }
            }
            store.keep(&present)?;
            Ok((present, absent, true, 0))
        })
        .await?;
        self.fetch_cursor = next;
        if !present.is_empty() {
            tracing::debug!(kept = present.len(), took = ?started.elapsed(), "kept blocks already stored");
        }
        for cid in &present {
            self.kept(cid);
        }
        if absent.is_empty() && scanned_all {
            // Every listed leaf is kept, yet some partition is not complete: our digests drifted from the store
            // (a crash between a keep and its record). Recount those partitions from the index and the store.
            self.recount_incomplete(node).await?;
            return Ok((Vec::new(), 0));
        }
        let fetched = fetch_leaves(node, &absent).await;
        for cid in &fetched {
            self.kept(cid);
        }
        let fetched: HashSet<Cid> = fetched.into_iter().collect();
        let missing: Vec<Cid> =
            absent.iter().map(|(c, _)| *c).filter(|c| !fetched.contains(c)).take(WANTED_LISTED).collect();
        Ok((missing, self.core.missing()))
    }

    async fn recount_incomplete(&mut self, node: &Arc<Node>) -> Result<(), InstanceError> {
        let partitions: Vec<u32> = self.core.incomplete().iter().copied().collect();
        let index = self.index.clone();
        let store = node.repo().store().clone();
        let counted = blocking(move || -> Result<Vec<(u32, SetDigest)>, InstanceError> {
            let mut out = Vec::new();
            for p in partitions {
                let mut d = SetDigest::default();
                for (cid, _) in index.leaves_in(p).map_err(index_error)? {
                    if store.is_kept(&cid)? {
                        d.add(&SetDigest::of_cid(&cid));
                    }
                }
                out.push((p, d));
            }
            Ok(out)
        })
        .await?;
        for (p, d) in counted {
            if d != self.core.held(p) {
                tracing::warn!(partition = p, "held digest drifted from the store; recounted");
                let old = self.core.held(p);
                self.core.released(p, &old);
                self.core.kept(p, &d);
                self.held.set(p, d);
            }
        }
        Ok(())
    }

    /// Asks the holders of our surplus partitions what they keep there, and releases each partition whose holders
    /// all showed every leaf.
    async fn hand_off(&mut self, node: &Arc<Node>, alive: &[&Member]) -> Result<(), InstanceError> {
        let questions = self.core.hand_off_questions(HANDOFF_PER_ROUND);
        let mut free: Vec<u32> = Vec::new();
        for (holder, parts) in questions {
            let Some(peer) = peer_of(alive, &holder) else { continue };
            for chunk in parts.chunks(ASK_CHUNK) {
                let answers = match ask::digests(node, peer, chunk.to_vec()).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%holder, error = %e, "holder did not answer; hand-off waits");
                        break;
                    }
                };
                for (&p, d) in chunk.iter().zip(&answers) {
                    if self.core.evidence(&holder, p, d) {
                        free.push(p);
                    }
                }
            }
        }
        if free.is_empty() {
            return Ok(());
        }
        let index = self.index.clone();
        let store = node.repo().store().clone();
        let parts = free.clone();
        let released = blocking(move || -> Result<Vec<Cid>, InstanceError> {
            let mut drop = Vec::new();
            for p in parts {
                for (cid, _) in index.leaves_in(p).map_err(index_error)? {
                    if store.is_kept(&cid)? {
                        drop.push(cid);
                    }
                }
            }
            store.release(&drop)?;
            Ok(drop)
        })
        .await?;
        for cid in &released {
            self.released(cid);
        }
        tracing::info!(
            partitions = free.len(),
            released = released.len(),
            "handed off copies their holders showed they hold"
        );
        self.health_dirty = true;
        Ok(())
    }

    /// Asks every live member of the layout for one summary of what it keeps in its share, drills into the shares
    /// that differ from the catalog, and computes each file's health from that.
    async fn sweep_health(&mut self, node: &Arc<Node>, alive: &[&Member]) -> Result<(), InstanceError> {
        self.last_health = Some(Instant::now());
        self.health_dirty = false;
        let Some(layout) = self.core.shared_layout() else { return Ok(()) };
        // Members that did not answer are not asked again in this sweep: a member that died a moment ago (not yet
        // declared dead) would otherwise cost a timeout per question.
        let mut unreachable: HashSet<String> = HashSet::new();
        let mut incomplete: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        let version = self.core.expected_version();
        if self.expected_shares.as_ref().is_none_or(|(v, _)| *v != version) {
            let sums = self.shares.iter().map(|(_, mine)| self.core.expected_over(mine)).collect();
            self.expected_shares = Some((version, sums));
        }
        let expected_shares = self.expected_shares.as_ref().map(|(_, sums)| sums.clone()).unwrap_or_default();
        for ((name, mine), expected) in self.shares.iter().zip(expected_shares) {
            if name == node.name() {
                let inc: BTreeSet<u32> = mine.iter().copied().filter(|p| self.core.incomplete().contains(p)).collect();
                if !inc.is_empty() {
                    incomplete.insert(name.clone(), inc);
                }
                continue;
            }
            let Some(member) = alive.iter().find(|m| &m.name == name) else {
                incomplete.insert(name.clone(), mine.iter().copied().collect());
                continue;
            };
            // The member's gossiped summary of its share: equal to what our catalog expects there, it is complete.
            if member.meta.share == expected.to_gossip() {
                continue;
            }
            let Ok(peer) = member.meta.peer_id.parse::<PeerId>() else {
                incomplete.insert(name.clone(), mine.iter().copied().collect());
                continue;
            };
            // Gossip may lag: ask.
            match ask::summary(node, peer, xnode_placement::bitmap(layout.partitions(), mine)).await {
                Ok(s) if s == expected => continue,
                Ok(_) => {}
                Err(_) => {
                    unreachable.insert(name.clone());
                    incomplete.insert(name.clone(), mine.iter().copied().collect());
                    continue;
                }
            }
            let mut inc = BTreeSet::new();
            for chunk in mine.chunks(ASK_CHUNK) {
                match ask::digests(node, peer, chunk.to_vec()).await {
                    Ok(answers) => {
                        for (&p, d) in chunk.iter().zip(&answers) {
                            if *d != self.core.expected(p) {
                                inc.insert(p);
                            }
                        }
                    }
                    Err(_) => inc.extend(chunk.iter().copied()),
                }
            }
            if !inc.is_empty() {
                incomplete.insert(name.clone(), inc);
            }
        }
        self.incomplete_members = incomplete;
        let health = self.file_health(node, alive, &layout, &mut unreachable).await?;
        if *self.report.health != health {
            self.report.health = Arc::new(health);
        }
        Ok(())
    }

    /// Each catalog file's health. Files with no leaf in a partition some holder lacks are at RF without looking
    /// at their blocks; the leaves of those partitions are checked one by one, asking the holders that lack
    /// something (and, for a leaf no holder has, every live member) whether they have it. Troubled partitions are
    /// taken [`HEALTH_CHUNK`] at a time, so memory holds one chunk's leaves and a counter per file.
    async fn file_health(
        &self,
        node: &Arc<Node>,
        alive: &[&Member],
        layout: &xnode_placement::Layout,
        unreachable: &mut HashSet<String>,
    ) -> Result<Vec<FileHealth>, InstanceError> {
        let files = node.catalog_files();
        let troubled: Vec<u32> =
            self.incomplete_members.values().flatten().copied().collect::<BTreeSet<u32>>().into_iter().collect();
        let index = self.index.clone();
        let roots: Vec<Cid> = files.iter().map(|f| f.root).collect();
        let infos = blocking(move || -> Result<_, InstanceError> {
            let mut infos = HashMap::new();
            for root in roots {
                if let Some(info) = index.file(&root).map_err(index_error)? {
                    infos.insert(root, info);
                }
            }
            Ok(infos)
        })
        .await?;
        let rf = layout.replication().min(layout.nodes().len().max(1));
        // Per file: (under-replicated, missing) leaves.
        let mut per_file: HashMap<Cid, (u64, u64)> = HashMap::new();
        let mut checked = 0usize;
        for chunk in troubled.chunks(HEALTH_CHUNK) {
            let index = self.index.clone();
            let parts = chunk.to_vec();
            let pairs = blocking(move || -> Result<Vec<(u32, Cid, Cid)>, InstanceError> {
                let mut pairs = Vec::new();
                for p in parts {
                    for (cid, root, _) in index.leaf_pairs_in(p).map_err(index_error)? {
                        pairs.push((p, cid, root));
                    }
                }
                Ok(pairs)
            })
            .await?;
            // Past a sweep's budget of leaves asked about (a large repair in progress), the rest of the troubled
            // leaves count as under-replicated, unconfirmed, until a later sweep finds their holders complete.
            if checked >= HEALTH_CHECK_MAX {
                for (_, _, root) in &pairs {
                    per_file.entry(*root).or_default().0 += 1;
                }
                continue;
            }
            checked += pairs.len();
            // Per distinct leaf: how many live nodes hold it.
            let mut copies: HashMap<Cid, usize> = HashMap::new();
            let mut ask: BTreeMap<String, Vec<Cid>> = BTreeMap::new();
            for (p, cid, _) in &pairs {
                if copies.contains_key(cid) {
                    continue;
                }
                let mut sure = 0;
                for holder in layout.holders(*p) {
                    if self.incomplete_members.get(holder).is_some_and(|s| s.contains(p)) {
                        ask.entry(holder.to_string()).or_default().push(*cid);
                    } else {
                        sure += 1;
                    }
                }
                copies.insert(*cid, sure);
            }
            for (holder, cids) in ask {
                for (cid, has) in self.ask_have(node, alive, &holder, cids, unreachable).await {
                    if has {
                        *copies.entry(cid).or_default() += 1;
                    }
                }
            }
            // Leaves no holder has: does anyone (an uploader not done handing off, a node that lost the partition)?
            let orphans: Vec<Cid> = copies.iter().filter(|(_, &n)| n == 0).map(|(c, _)| *c).collect();
            if !orphans.is_empty() {
                for m in alive {
                    for (cid, has) in self.ask_have(node, alive, &m.name, orphans.clone(), unreachable).await {
                        if has {
                            *copies.entry(cid).or_default() += 1;
                        }
                    }
                }
            }
            for (_, cid, root) in &pairs {
                let n = copies.get(cid).copied().unwrap_or(0);
                let entry = per_file.entry(*root).or_default();
                // Missing only when every live member answered that it does not have it: a member that did not
                // answer may hold it, so the block is then counted under-replicated, not missing.
                if n == 0 && unreachable.is_empty() {
                    entry.1 += 1;
                } else if n < rf {
                    entry.0 += 1;
                }
            }
        }
        // A file not indexed here yet (its DAG still being fetched) is left out until this node can say.
        Ok(files
            .iter()
            .filter_map(|f| {
                let info = infos.get(&f.root)?;
                let blocks = info.leaves + info.interior;
                let (under, missing) = per_file.get(&f.root).copied().unwrap_or((0, 0));
                Some(FileHealth {
                    root: f.root.to_string(),
                    name: f.name.clone(),
                    size: f.size,
                    added_at: f.added_at,
                    added_by: f.added_by.clone(),
                    blocks,
                    at_rf: blocks.saturating_sub(under + missing),
                    under_replicated: under,
                    missing,
                })
            })
            .collect())
    }

    /// Whether `member` has each of `cids` (ourselves from the store). A member that does not answer has none, and
    /// joins `unreachable`, whose members are not asked again.
    async fn ask_have(
        &self,
        node: &Arc<Node>,
        alive: &[&Member],
        member: &str,
        cids: Vec<Cid>,
        unreachable: &mut HashSet<String>,
    ) -> Vec<(Cid, bool)> {
        if member == node.name() {
            let store = node.repo().store().clone();
            return blocking(move || cids.into_iter().map(|c| (c, store.has(&c).unwrap_or(false))).collect()).await;
        }
        let peer = peer_of(alive, member).filter(|_| !unreachable.contains(member));
        let Some(peer) = peer else { return cids.into_iter().map(|c| (c, false)).collect() };
        let mut out = Vec::with_capacity(cids.len());
        for chunk in cids.chunks(ASK_CHUNK) {
            match ask::have(node, peer, chunk.to_vec()).await {
                Ok(answers) => out.extend(chunk.iter().copied().zip(answers)),
                Err(_) => {
                    unreachable.insert(member.to_string());
                    return cids.into_iter().map(|c| (c, out.iter().any(|(o, h)| *o == c && *h))).collect();
                }
            }
        }
        out
    }
}

fn index_error(e: index::IndexError) -> InstanceError {
    InstanceError::BadUpload(e.to_string())
}

fn peer_of(alive: &[&Member], name: &str) -> Option<PeerId> {
    alive.iter().find(|m| m.name == name).and_then(|m| m.meta.peer_id.parse().ok())
}

/// Stores blocks (already verified) and keeps them.
async fn store_and_keep(node: &Arc<Node>, blocks: Vec<(Cid, Bytes)>) -> Result<(), InstanceError> {
    if blocks.is_empty() {
        return Ok(());
    }
    let store = node.repo().store().clone();
    blocking(move || {
        let mut w = store.writer();
        for (cid, data) in &blocks {
            w.put(cid, data)?;
        }
        w.commit(None)?;
        let cids: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
        store.keep(&cids)?;
        Ok(())
    })
    .await
}

/// Pulls entries of every log some live member has more of. Returns whether we now have every head we saw.
async fn sync_catalog(node: &Arc<Node>, alive: &[&Member]) -> bool {
    let mut wanted: BTreeMap<PeerId, Head> = BTreeMap::new();
    for m in alive.iter().filter(|m| !m.is_self) {
        for (author, head) in parse_heads(&m.meta.catalog) {
            if wanted.get(&author).is_none_or(|h| h.len < head.len) {
                wanted.insert(author, head);
            }
        }
    }
    let mut complete = true;
    for (author, head) in wanted {
        let have = node.catalog_len_of(&author);
        if have >= head.len {
            continue;
        }
        // Walk back from the head to what we have, then apply oldest first.
        let mut chain: Vec<(Cid, Bytes)> = Vec::new();
        let mut next = Some(head.cid);
        let mut failed = false;
        while let Some(cid) = next {
            if chain.len() as u64 >= head.len - have {
                break;
            }
            let data = match node.net().fetch_block(cid, METADATA_TIMEOUT).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%author, %cid, error = %e, "catalog entry not fetched yet");
                    failed = true;
                    break;
                }
            };
            match xnode_catalog::Entry::verify(&cid, &data) {
                Ok(e) if e.author == author => next = e.prev,
                Ok(_) | Err(_) => {
                    tracing::warn!(%author, %cid, "a peer gossiped a catalog head that is not a valid entry of its log");
                    failed = true;
                    break;
                }
            }
            chain.push((cid, data));
        }
        if failed {
            complete = false;
            continue;
        }
        let (applied, ok) = node.apply_catalog(chain.into_iter().rev().collect()).await;
        complete &= ok;
        if let Err(e) = store_and_keep(node, applied).await {
            tracing::warn!(error = %e, "could not store catalog entries");
        }
    }
    complete
}

/// Adds a catalog entry for every local pin the catalog does not list (a file added through the API, the CLI
/// or the watched folder), unless the catalog removed it after it was pinned.
async fn publish_pins(node: &Arc<Node>) -> Result<(), InstanceError> {
    let repo = node.repo().clone();
    let pins = blocking(move || repo.pins()).await?;
    for pin in pins {
        if !node.catalog_should_publish(&pin) {
            continue;
        }
        let record = FileRecord {
            root: pin.root,
            name: pin.name.clone(),
            size: pin.size,
            blocks: 0,
            added_at: pin.added_at,
            added_by: node.name().to_string(),
        };
        let mut leaves = 0u64;
        let mut walk = Walk::new(&record);
        while let Some(batch) = walk.next(node).await? {
            leaves += batch.len() as u64;
        }
        let record = FileRecord { blocks: walk.interior().len() as u64 + leaves, ..record };
        node.append_catalog(Op::Add(record)).await?;
    }
    Ok(())
}

/// A walk of a file's DAG: interior blocks the store lacks are fetched (and kept), and its leaves come out in
/// batches of at most [`LEAF_BATCH`] ([`Walk::next`]), so a file of millions of blocks is walked in bounded memory.
///
/// A file of one block is all leaf: its root is data, placed like any leaf, and is not fetched here. A raw block
/// is always a leaf; a dag-pb child of a file node is one when its link's size is its data's plus framing.
struct Walk {
    file: FileRecord,
    queue: Vec<Cid>,
    interior: Vec<Cid>,
    /// Directory entries small enough to be files of one block, to be told apart ([`classify`]).
    small: Vec<Cid>,
    started: bool,
}

impl Walk {
    fn new(file: &FileRecord) -> Self {
        Walk { file: file.clone(), queue: Vec::new(), interior: Vec::new(), small: Vec::new(), started: false }
    }

    /// The next batch of leaves, or `None` once the whole DAG was walked.
    async fn next(&mut self, node: &Arc<Node>) -> Result<Option<Vec<(Cid, u32)>>, InstanceError> {
        let root = self.file.root;
        if !self.started {
            self.started = true;
            if self.file.blocks == 1 || root.codec() == xnode_dag::RAW {
                let store = node.repo().store().clone();
                let size = blocking(move || store.block_size(&root)).await?.unwrap_or(self.file.size);
                return Ok(Some(vec![(root, u32::try_from(size).unwrap_or(u32::MAX))]));
            }
            self.queue.push(root);
        }
        let mut leaves = Vec::new();
        while !self.queue.is_empty() {
            // Interior blocks are read (or fetched) WALK_AHEAD at a time: a big DAG has thousands of them, and one
            // round trip each would make its walk as slow as the network's latency.
            let batch: Vec<Cid> = self.queue.split_off(self.queue.len().saturating_sub(WALK_AHEAD));
            for (cid, data) in read_or_fetch(node, batch).await? {
                self.walk_block(cid, &data, &mut leaves)?;
            }
            // A directory of 1,000 small files has 1,000 entries to tell apart: all of them at once.
            if !self.small.is_empty() {
                for (cid, leaf) in classify(node, std::mem::take(&mut self.small)).await? {
                    match leaf {
                        Some(size) => leaves.push((cid, size)),
                        None => self.queue.push(cid),
                    }
                }
            }
            if leaves.len() >= LEAF_BATCH {
                return Ok(Some(leaves));
            }
        }
        Ok((!leaves.is_empty()).then_some(leaves))
    }

    /// Takes one interior block: its leaves go to `leaves`, its small directory entries to `small`, its other
    /// children to the queue.
    fn walk_block(&mut self, cid: Cid, data: &Bytes, leaves: &mut Vec<(Cid, u32)>) -> Result<(), InstanceError> {
        self.interior.push(cid);
        if cid.codec() != xnode_dag::DAG_PB {
            return Ok(());
        }
        let pb = PbNode::decode(data).map_err(|e| InstanceError::BadUpload(format!("block {cid}: {e}")))?;
        let fs = pb.data.as_ref().and_then(|d| UnixFsData::decode(d).ok());
        let is_file = fs.as_ref().is_some_and(|f| matches!(f.kind, DataType::File | DataType::Raw));
        for (i, link) in pb.links.iter().enumerate() {
            let covered = fs.as_ref().and_then(|f| f.blocksizes.get(i).copied());
            let leaf = link.cid.codec() == xnode_dag::RAW
                || (is_file && covered.is_some_and(|c| link.tsize.saturating_sub(c) < LEAF_OVERHEAD));
            if leaf {
                leaves.push((link.cid, u32::try_from(link.tsize).unwrap_or(u32::MAX)));
            } else if !is_file && link.tsize <= PROBE_MAX {
                // An entry of a directory small enough to be a file of one block: to be told apart from a small
                // subtree, since a one-block file is data placed at RF.
                self.small.push(link.cid);
            } else {
                self.queue.push(link.cid);
            }
        }
        Ok(())
    }

    /// The interior blocks walked.
    fn interior(self) -> Vec<Cid> {
        self.interior
    }
}

/// The blocks `cids`, in order: read from the store, or fetched (at most WALK_AHEAD at once), stored and kept.
async fn read_or_fetch(node: &Arc<Node>, cids: Vec<Cid>) -> Result<Vec<(Cid, Bytes)>, InstanceError> {
    let store = node.repo().store().clone();
    let wanted = cids.clone();
    let local: Vec<Option<Bytes>> =
        blocking(move || wanted.iter().map(|c| store.get(c)).map(local_copy).collect::<Result<Vec<_>, _>>()).await?;
    for (cid, l) in cids.iter().zip(&local) {
        if l.is_none() {
            node.report_if_corrupt(*cid);
        }
    }
    let missing: Vec<Cid> = cids.iter().zip(&local).filter(|(_, l)| l.is_none()).map(|(c, _)| *c).collect();
    let net = node.net().clone();
    let fetched: Vec<(Cid, Result<Bytes, xnode_p2p::P2pError>)> = futures::stream::iter(missing)
        .map(|cid| {
            let net = net.clone();
            async move { (cid, net.fetch_block(cid, METADATA_TIMEOUT).await) }
        })
        .buffer_unordered(WALK_AHEAD)
        .collect()
        .await;
    let mut got: HashMap<Cid, Bytes> = HashMap::new();
    for (cid, result) in fetched {
        got.insert(cid, result?);
    }
    store_and_keep(node, got.iter().map(|(c, d)| (*c, d.clone())).collect()).await?;
    Ok(cids
        .into_iter()
        .zip(local)
        .map(|(cid, l)| {
            let data = l.or_else(|| got.get(&cid).cloned()).expect("every block was read or fetched");
            (cid, data)
        })
        .collect())
}

/// A local read where a corrupted copy counts as no copy: the walk fetches a good one from a member (and the
/// repair task, told by [`Node::report_if_corrupt`], replaces ours) rather than failing every round.
fn local_copy(
    read: Result<Option<Bytes>, xnode_storage::StoreError>,
) -> Result<Option<Bytes>, xnode_storage::StoreError> {
    match read {
        Err(xnode_storage::StoreError::Corrupted { .. }) => Ok(None),
        other => other,
    }
}

/// Tells directory entries that are files of one block (`Some(size)`: data, placed at RF) from small subtrees
/// (`None`: interior, walked). Entries this node holds are read here; the rest are asked of their placement holders
/// ([`BlockKind`] over the holdings protocol, [`xnode_p2p::holdings::MAX_KINDS`] at a time), which hold them once an
/// add has streamed them; only entries no holder could tell are fetched ([`probe`], a few at a time). A directory of
/// 1,000 small files thus costs a few questions, not 1,000 fetches one after the other.
async fn classify(node: &Arc<Node>, cids: Vec<Cid>) -> Result<Vec<(Cid, Option<u32>)>, InstanceError> {
    if cids.is_empty() {
        return Ok(Vec::new());
    }
    let store = node.repo().store().clone();
    let wanted = cids.clone();
    let local: Vec<BlockKind> = blocking(move || {
        wanted
            .iter()
            .map(|c| match local_copy(store.get(c)) {
                Ok(Some(data)) => kind_of(c, &data),
                _ => BlockKind::Absent,
            })
            .collect()
    })
    .await;
    let mut out = Vec::with_capacity(cids.len());
    let mut unknown = Vec::new();
    for (cid, kind) in cids.into_iter().zip(local) {
        match kind {
            BlockKind::Leaf(size) => out.push((cid, Some(size))),
            BlockKind::Interior => out.push((cid, None)),
            BlockKind::Absent => unknown.push(cid),
        }
    }
    if unknown.is_empty() {
        return Ok(out);
    }
    for cid in &unknown {
        node.report_if_corrupt(*cid);
    }
    // Ask the first live holder of each entry's partition (not us: we just looked).
    if let Some(layout) = node.layout() {
        let members = node.view();
        let peers: HashMap<&str, PeerId> = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.name != node.name())
            .filter_map(|m| Some((m.name.as_str(), m.meta.peer_id.parse().ok()?)))
            .collect();
        let mut by_peer: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        let mut nobody = Vec::new();
        for cid in unknown {
            let partition = layout.partition_of_cid(&cid.to_bytes());
            match layout.holders(partition).find_map(|h| peers.get(h)) {
                Some(peer) => by_peer.entry(*peer).or_default().push(cid),
                None => nobody.push(cid),
            }
        }
        let questions: Vec<(PeerId, Vec<Cid>)> = by_peer
            .into_iter()
            .flat_map(|(peer, cids)| {
                cids.chunks(xnode_p2p::holdings::MAX_KINDS).map(|c| (peer, c.to_vec())).collect::<Vec<_>>()
            })
            .collect();
        let answers: Vec<(Vec<Cid>, Option<Vec<BlockKind>>)> = futures::stream::iter(questions)
            .map(|(peer, cids)| async move {
                let kinds = ask::kinds(node, peer, cids.clone()).await.ok();
                (cids, kinds)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        unknown = nobody;
        for (cids, kinds) in answers {
            match kinds {
                Some(kinds) => {
                    for (cid, kind) in cids.into_iter().zip(kinds) {
                        match kind {
                            BlockKind::Leaf(size) => out.push((cid, Some(size))),
                            BlockKind::Interior => out.push((cid, None)),
                            BlockKind::Absent => unknown.push(cid),
                        }
                    }
                }
                None => unknown.extend(cids),
            }
        }
    }
    let probed: Vec<Result<(Cid, Option<u32>), InstanceError>> = futures::stream::iter(unknown)
        .map(|cid| async move { probe(node, cid).await.map(|leaf| (cid, leaf)) })
        .buffer_unordered(WALK_AHEAD)
        .collect()
        .await;
    for p in probed {
        out.push(p?);
    }
    Ok(out)
}

/// Whether the dag-pb block `cid` is a block without links (a file of one block), and its size if so. Read from
/// the store if held, else fetched and not kept; a block with links is stored and kept (it is interior).
async fn probe(node: &Arc<Node>, cid: Cid) -> Result<Option<u32>, InstanceError> {
    let store = node.repo().store().clone();
    let (data, local) = match blocking(move || local_copy(store.get(&cid))).await? {
        Some(d) => (d, true),
        None => {
            node.report_if_corrupt(cid);
            (node.net().fetch_block(cid, METADATA_TIMEOUT).await?, false)
        }
    };
    let pb = PbNode::decode(&data).map_err(|e| InstanceError::BadUpload(format!("block {cid}: {e}")))?;
    if pb.links.is_empty() {
        return Ok(Some(u32::try_from(data.len()).unwrap_or(u32::MAX)));
    }
    if !local {
        store_and_keep(node, vec![(cid, data)]).await?;
    }
    Ok(None)
}

/// Fetches `missing` leaves while the store has room; returns those fetched and kept.
async fn fetch_leaves(node: &Arc<Node>, missing: &[(Cid, u32)]) -> Vec<Cid> {
    let store = node.repo().store().clone();
    let need: u64 = missing.iter().take(FETCH_PER_ROUND).map(|(_, s)| u64::from(*s)).sum();
    let free = blocking(move || {
        let free = store.stats().map(|s| s.free).unwrap_or(0);
        if free >= need {
            return free;
        }
        // Read caches (blocks fetched for a `cat` of a file this node does not hold) give way to allocation.
        if let Ok(gc) = store.gc() {
            if gc.blocks_deleted > 0 {
                tracing::info!(blocks = gc.blocks_deleted, bytes = gc.bytes_freed, "evicted read cache for allocation");
            }
        }
        store.stats().map(|s| s.free).unwrap_or(0)
    })
    .await;
    let mut budget = free;
    let mut todo = Vec::new();
    for &(cid, size) in missing.iter().take(FETCH_PER_ROUND) {
        if u64::from(size) > budget {
            break;
        }
        budget -= u64::from(size);
        todo.push(cid);
    }
    let asked = todo.len();
    let mut got = Vec::new();
    let mut batch: Vec<(Cid, Bytes)> = Vec::new();
    let net = node.net().clone();
    let mut fetches = futures::stream::iter(todo)
        .map(|cid| {
            let net = net.clone();
            async move { (cid, net.fetch_block(cid, LEAF_TIMEOUT).await) }
        })
        .buffer_unordered(FETCH_CONCURRENCY);
    while let Some((cid, result)) = fetches.next().await {
        match result {
            Ok(data) => {
                batch.push((cid, data));
                if batch.len() >= WRITE_BATCH {
                    let cids: Vec<Cid> = batch.iter().map(|(c, _)| *c).collect();
                    match store_and_keep(node, std::mem::take(&mut batch)).await {
                        Ok(()) => got.extend(cids),
                        Err(e) => tracing::warn!(error = %e, "could not store fetched blocks"),
                    }
                }
            }
            Err(e) => tracing::debug!(%cid, error = %e, "block not fetched this round"),
        }
    }
    let cids: Vec<Cid> = batch.iter().map(|(c, _)| *c).collect();
    match store_and_keep(node, batch).await {
        Ok(()) => got.extend(cids),
        Err(e) => tracing::warn!(error = %e, "could not store fetched blocks"),
    }
    if !got.is_empty() {
        tracing::info!(fetched = got.len(), asked, "allocation fetched its blocks");
    }
    got
}
