//! The allocation loop: every node keeps the catalog, holds the interior blocks of every catalog file, and
//! fetches and keeps the leaves placement gives it, so the cluster keeps each file at its replication factor by
//! itself.
//!
//! One round, every [`ROUND`]:
//! 1. pull catalog entries the members' gossiped heads say we lack (Bitswap, from anyone holding them) and
//!    publish local pins the catalog does not list yet;
//! 2. walk every catalog file's DAG from its root, fetching interior blocks we lack ("seeding the metadata");
//! 3. place every leaf of every file on the live members (`xnode-placement`), fetch the leaves given to us while the
//!    store has room, and keep them;
//! 4. gossip the plan we now fully hold (`settled`); once every live member reports the same plan, release the
//!    copies no longer ours and the staging pins of files we added. Nothing is dropped before that, so a copy
//!    goes only after its new holders have it, and a full cluster reports under-replicated blocks instead.
//!
//! Design notes and the reasoning behind "settled plans" are in `docs/allocation.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use xnode_catalog::{Catalog, FileRecord, Head, Heads, Op};
use xnode_dag::pb::{DataType, PbNode, UnixFsData};
use xnode_gossip::{Member, MemberState};
use xnode_p2p::PeerId;
use xnode_placement::{Assignment, BlockKey, BlockRef, NodeInfo, Placement};

use crate::node::{FileHealth, Node, Phase};
use crate::InstanceError;

/// Time between two rounds.
const ROUND: Duration = Duration::from_millis(1000);
/// How long one catalog entry or interior block is looked for before the round moves on (it is retried next round).
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one leaf is looked for.
const LEAF_TIMEOUT: Duration = Duration::from_secs(20);
/// Leaves fetched at once.
const FETCH_CONCURRENCY: usize = 48;
/// Most leaves fetched in one round, so a change of view is noticed within a few seconds even mid-repair.
const FETCH_PER_ROUND: usize = 4096;
/// Fetched blocks are written to the store in batches of this many.
const WRITE_BATCH: usize = 64;
/// A dag-pb child whose total size exceeds the file bytes under it by less than this is a leaf: an interior node
/// carries at least one link (>= 36 bytes) on top of its children's overhead, a leaf only its UnixFS framing (~14).
const LEAF_OVERHEAD: u64 = 32;
/// The weight given to a member with an unlimited store, so placement shares stay finite.
const UNLIMITED_WEIGHT: u64 = 1 << 50;

/// One catalog file's DAG as placement sees it.
#[derive(Debug, Clone, Default)]
struct FileBlocks {
    /// Root, directory, shard and interior file nodes: every node holds them.
    interior: Vec<Cid>,
    /// Leaves with their sizes: placed on `replication` nodes.
    leaves: Vec<(Cid, u32)>,
}

/// What the last round found, for the API, the dashboard and the gossiped metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) phase: Option<Phase>,
    /// Digest of the plan this node fully holds; empty while it is fetching.
    pub(crate) settled: String,
    /// The plan of the last round.
    pub(crate) plan: String,
    /// Blocks placement gives us that we do not hold yet.
    pub(crate) wanted: Vec<Cid>,
    /// Blocks we should hold but could not fetch (store full, nobody has them).
    pub(crate) under_replicated: u64,
    /// Every catalog file with its replication health.
    pub(crate) health: Vec<FileHealth>,
    /// Catalog heads, as gossiped.
    pub(crate) heads_json: String,
}

/// State the loop keeps between rounds.
pub(crate) struct Allocator {
    pub(crate) catalog: Catalog,
    files: HashMap<Cid, FileBlocks>,
    pub(crate) report: Report,
}

impl Allocator {
    pub(crate) fn new(catalog: Catalog) -> Self {
        let mut a = Allocator { catalog, files: HashMap::new(), report: Report::default() };
        a.report.heads_json = heads_json(&a.catalog.state().heads());
        a
    }
}

/// Gossiped heads: `{"<peer id>": [len, "<cid>"]}`.
fn heads_json(heads: &Heads) -> String {
    let map: BTreeMap<String, (u64, String)> =
        heads.iter().map(|(p, h)| (p.to_string(), (h.len, h.cid.to_string()))).collect();
    serde_json::to_string(&map).unwrap_or_default()
}

pub(crate) fn heads_json_of(catalog: &Catalog) -> String {
    heads_json(&catalog.state().heads())
}

fn parse_heads(json: &str) -> Heads {
    let Ok(map) = serde_json::from_str::<BTreeMap<String, (u64, String)>>(json) else { return Heads::new() };
    map.into_iter()
        .filter_map(|(p, (len, cid))| Some((p.parse().ok()?, Head { len, cid: Cid::try_from(cid.as_str()).ok()? })))
        .collect()
}

/// Runs rounds until `stop`.
pub(crate) async fn run(node: std::sync::Weak<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(ROUND) => {}
        }
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = round(&node).await {
            tracing::warn!(error = %e, "allocation round failed; retrying");
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking allocation work does not panic")
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

async fn round(node: &Arc<Node>) -> Result<(), InstanceError> {
    let members = node.members();
    let alive: Vec<&Member> = members.iter().filter(|m| m.state == MemberState::Alive).collect();
    if !node.joined() && !node.starts_alone() {
        node.alloc.lock().expect("not poisoned").report.phase = Some(Phase::LookingForPeers);
        return Ok(());
    }

    // 1. The catalog.
    let synced = sync_catalog(node, &alive).await;
    publish_pins(node).await?;

    // 2. The metadata.
    let files = node.alloc.lock().expect("not poisoned").catalog.state().files();
    let mut metadata_complete = synced;
    for f in &files {
        let known = node.alloc.lock().expect("not poisoned").files.contains_key(&f.root);
        if known {
            continue;
        }
        match walk(node, f.root).await {
            Ok(blocks) => {
                node.alloc.lock().expect("not poisoned").files.insert(f.root, blocks);
            }
            Err(e) => {
                tracing::debug!(root = %f.root, error = %e, "metadata not complete yet");
                metadata_complete = false;
            }
        }
    }
    {
        let mut a = node.alloc.lock().expect("not poisoned");
        let live: HashSet<Cid> = files.iter().map(|f| f.root).collect();
        a.files.retain(|root, _| live.contains(root));
        a.report.heads_json = heads_json(&a.catalog.state().heads());
        if !metadata_complete {
            a.report.phase = Some(Phase::FetchingMetadata);
        }
    }

    // 3. Placement. The view keeps the members that died or left until membership forgets them
    //    (`forget_after`): the balanced walk runs over the same view as before, and only their copies move
    //    (`Placement::assign_without`, docs/placement.md).
    let departed: Vec<&Member> =
        members.iter().filter(|m| m.state != MemberState::Alive && !alive.iter().any(|a| a.name == m.name)).collect();
    let weight = |m: &Member| if m.meta.capacity == u64::MAX { UNLIMITED_WEIGHT } else { m.meta.capacity };
    let view: Vec<NodeInfo> =
        alive.iter().chain(&departed).map(|m| NodeInfo { name: m.name.clone(), capacity: weight(m) }).collect();
    let departed: Vec<&str> = departed.iter().map(|m| m.name.as_str()).collect();
    let (interior, leaves) = {
        let a = node.alloc.lock().expect("not poisoned");
        let mut interior: HashSet<Cid> = a.catalog.state().entry_cids().into_iter().collect();
        let mut leaves: HashMap<BlockKey, (Cid, u32)> = HashMap::new();
        for f in &files {
            if let Some(b) = a.files.get(&f.root) {
                interior.extend(b.interior.iter().copied());
                for &(cid, size) in &b.leaves {
                    leaves.insert(BlockKey::of(&cid.to_bytes()), (cid, size));
                }
            }
        }
        (interior, leaves)
    };
    let placement = Placement::new(&view, node.replication()).map_err(|e| InstanceError::BadUpload(e.to_string()))?;
    let refs: Vec<BlockRef> = leaves.iter().map(|(k, (_, size))| BlockRef { key: *k, size: *size }).collect();
    let assignment = placement.assign_without(&refs, &departed);
    let plan = plan_digest(
        &view,
        &departed,
        node.replication(),
        &node.alloc.lock().expect("not poisoned").catalog.state().heads(),
    );
    let mine: Vec<(Cid, u32)> = assignment.blocks_of(node.name()).filter_map(|k| leaves.get(&k).copied()).collect();

    // 4. Fetch what is ours and missing, within the store's room.
    let store = node.repo().store().clone();
    let mine_for_check = mine.clone();
    let missing: Vec<(Cid, u32)> = blocking(move || {
        mine_for_check.into_iter().filter(|(c, _)| !store.has(c).unwrap_or(false)).collect::<Vec<_>>()
    })
    .await;
    {
        let mut a = node.alloc.lock().expect("not poisoned");
        a.report.plan = plan.clone();
        a.report.wanted = missing.iter().map(|(c, _)| *c).collect();
        if !missing.is_empty() {
            a.report.settled.clear();
            if metadata_complete {
                a.report.phase = Some(Phase::PickingBlocks);
            }
        }
    }
    let unfetched = fetch_leaves(node, &missing).await;

    // 5. Keep everything ours.
    let store = node.repo().store().clone();
    let keep: Vec<Cid> = interior.iter().copied().chain(mine.iter().map(|(c, _)| *c)).collect();
    blocking(move || store.keep(&keep)).await?;

    let settled = unfetched == 0 && metadata_complete;
    {
        let mut a = node.alloc.lock().expect("not poisoned");
        a.report.under_replicated = unfetched;
        if settled {
            a.report.wanted.clear();
            a.report.settled = plan.clone();
            a.report.phase = Some(Phase::Seeding);
        } else {
            a.report.settled.clear();
        }
    }
    node.publish_meta().await;

    // 6. Once every live member holds this plan, drop what is no longer ours.
    let everyone_settled = alive.iter().all(|m| if m.is_self { settled } else { m.meta.settled == plan });
    if everyone_settled {
        release_surplus(node, &interior, &mine, &files).await?;
    }

    // 7. Health, as this node can tell it: its own blocks it knows; a member that reports the plan holds its share.
    let settled_names: HashSet<&str> = alive
        .iter()
        .filter(|m| if m.is_self { settled } else { m.meta.settled == plan })
        .map(|m| m.name.as_str())
        .collect();
    let health = health(node, &files, &assignment, &settled_names);
    node.alloc.lock().expect("not poisoned").report.health = health;
    Ok(())
}

/// A digest every member computes alike from the same view (who is in it, with what capacity, and who of them
/// has departed), replication factor and catalog.
fn plan_digest(view: &[NodeInfo], departed: &[&str], replication: usize, heads: &Heads) -> String {
    let mut nodes: Vec<(&str, u64, bool)> =
        view.iter().map(|n| (n.name.as_str(), n.capacity, departed.contains(&n.name.as_str()))).collect();
    nodes.sort_unstable();
    let mut h = Sha256::new();
    for (name, cap, gone) in nodes {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(cap.to_be_bytes());
        h.update([u8::from(gone)]);
    }
    h.update((replication as u64).to_be_bytes());
    for (author, head) in heads {
        h.update(author.to_bytes());
        h.update(head.len.to_be_bytes());
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
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
        let have = node.alloc.lock().expect("not poisoned").catalog.state().len_of(&author);
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
        let mut applied = Vec::new();
        {
            let mut a = node.alloc.lock().expect("not poisoned");
            for (cid, data) in chain.iter().rev() {
                match a.catalog.apply(cid, data) {
                    Ok(_) => applied.push((*cid, data.clone())),
                    Err(e) => {
                        tracing::warn!(%author, error = %e, "catalog entry refused");
                        complete = false;
                        break;
                    }
                }
            }
            let _ = a.catalog.flush();
        }
        if !applied.is_empty() {
            tracing::info!(%author, entries = applied.len(), "catalog log grew");
            node.catalog_grew();
        }
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
        let fresh = {
            let a = node.alloc.lock().expect("not poisoned");
            let state = a.catalog.state();
            let listed = state.files().iter().any(|f| f.root == pin.root);
            let removed_later = state.removed_at(&pin.root).is_some_and(|t| t >= pin.added_at * 1000);
            !listed && !removed_later
        };
        if !fresh {
            continue;
        }
        let blocks = walk(node, pin.root).await?;
        let record = FileRecord {
            root: pin.root,
            name: pin.name.clone(),
            size: pin.size,
            blocks: (blocks.interior.len() + blocks.leaves.len()) as u64,
            added_at: pin.added_at,
            added_by: node.name().to_string(),
        };
        node.append_catalog(Op::Add(record)).await?;
        node.alloc.lock().expect("not poisoned").files.insert(pin.root, blocks);
    }
    Ok(())
}

/// Lists a file's interior blocks and leaves, fetching interior blocks the store lacks (and keeping them).
async fn walk(node: &Arc<Node>, root: Cid) -> Result<FileBlocks, InstanceError> {
    let mut out = FileBlocks::default();
    let mut queue = vec![root];
    while let Some(cid) = queue.pop() {
        out.interior.push(cid);
        let store = node.repo().store().clone();
        let local = blocking(move || store.get(&cid)).await?;
        let data = match local {
            Some(d) => d,
            None => {
                let d = node.net().fetch_block(cid, METADATA_TIMEOUT).await?;
                store_and_keep(node, vec![(cid, d.clone())]).await?;
                d
            }
        };
        if cid.codec() != xnode_dag::DAG_PB {
            continue;
        }
        let pb = PbNode::decode(&data).map_err(|e| InstanceError::BadUpload(format!("block {cid}: {e}")))?;
        let fs = pb.data.as_ref().and_then(|d| UnixFsData::decode(d).ok());
        let is_file = fs.as_ref().is_some_and(|f| matches!(f.kind, DataType::File | DataType::Raw));
        for (i, link) in pb.links.iter().enumerate() {
            let covered = fs.as_ref().and_then(|f| f.blocksizes.get(i).copied());
            let leaf = is_file
                && (link.cid.codec() == xnode_dag::RAW
                    || covered.is_some_and(|c| link.tsize.saturating_sub(c) < LEAF_OVERHEAD));
            if leaf {
                out.leaves.push((link.cid, u32::try_from(link.tsize).unwrap_or(u32::MAX)));
            } else {
                queue.push(link.cid);
            }
        }
    }
    Ok(out)
}

/// Fetches `missing` leaves while the store has room; returns how many are still missing.
async fn fetch_leaves(node: &Arc<Node>, missing: &[(Cid, u32)]) -> u64 {
    if missing.is_empty() {
        return 0;
    }
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
    let mut batch: Vec<(Cid, Bytes)> = Vec::new();
    let mut todo = Vec::new();
    for &(cid, size) in missing.iter().take(FETCH_PER_ROUND) {
        if u64::from(size) > budget {
            break;
        }
        budget -= u64::from(size);
        todo.push(cid);
    }
    let asked = todo.len() as u64;
    let mut got = 0u64;
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
                    let n = batch.len() as u64;
                    match store_and_keep(node, std::mem::take(&mut batch)).await {
                        Ok(()) => got += n,
                        Err(e) => tracing::warn!(error = %e, "could not store fetched blocks"),
                    }
                }
            }
            Err(e) => tracing::debug!(%cid, error = %e, "block not fetched this round"),
        }
    }
    let n = batch.len() as u64;
    match store_and_keep(node, batch).await {
        Ok(()) => got += n,
        Err(e) => tracing::warn!(error = %e, "could not store fetched blocks"),
    }
    if got > 0 {
        tracing::info!(fetched = got, asked, "allocation fetched its blocks");
    }
    missing.len() as u64 - got.min(missing.len() as u64)
}

/// Drops held copies that are no longer ours, and the staging pins of catalog files (their blocks stay where
/// placement keeps them).
async fn release_surplus(
    node: &Arc<Node>,
    interior: &HashSet<Cid>,
    mine: &[(Cid, u32)],
    files: &[FileRecord],
) -> Result<(), InstanceError> {
    let store = node.repo().store().clone();
    let keep: HashSet<Cid> = interior.iter().copied().chain(mine.iter().map(|(c, _)| *c)).collect();
    let live: HashSet<Cid> = files.iter().map(|f| f.root).collect();
    let removed: Vec<Cid> = {
        let a = node.alloc.lock().expect("not poisoned");
        let state = a.catalog.state();
        store
            .pins()?
            .into_iter()
            .filter(|p| !live.contains(&p.root) && state.mentions(&p.root))
            .map(|p| p.root)
            .collect()
    };
    let (released, unpinned) = blocking(move || -> Result<(u64, u64), InstanceError> {
        let surplus: Vec<Cid> = store.kept()?.into_iter().filter(|c| !keep.contains(c)).collect();
        let released = store.release(&surplus)?.blocks_deleted;
        let mut unpinned = 0;
        for pin in store.pins()? {
            if live.contains(&pin.root) || removed.contains(&pin.root) {
                unpinned += store.unpin(&pin.root)?.blocks_deleted;
            }
        }
        Ok((released, unpinned))
    })
    .await?;
    if released + unpinned > 0 {
        tracing::info!(released, unpinned, "dropped copies placement no longer gives this node");
    }
    Ok(())
}

/// Each file's health: a block is at RF when every holder placement names is known to hold it (ourselves by our
/// store, others by reporting this plan), missing when none is, under-replicated otherwise.
fn health(node: &Arc<Node>, files: &[FileRecord], assignment: &Assignment, settled: &HashSet<&str>) -> Vec<FileHealth> {
    let a = node.alloc.lock().expect("not poisoned");
    let store = node.repo().store();
    files
        .iter()
        .map(|f| {
            let (mut at_rf, mut under, mut missing) = (0, 0, 0);
            if let Some(b) = a.files.get(&f.root) {
                at_rf += b.interior.len() as u64;
                for (cid, _) in &b.leaves {
                    let holders = assignment.holders(BlockKey::of(&cid.to_bytes()));
                    let have = holders
                        .iter()
                        .filter(|h| {
                            if **h == node.name() {
                                store.has(cid).unwrap_or(false)
                            } else {
                                settled.contains(**h)
                            }
                        })
                        .count();
                    if have >= node.replication().min(holders.len()).max(1) {
                        at_rf += 1;
                    } else if have == 0 && !store.has(cid).unwrap_or(false) {
                        missing += 1;
                    } else {
                        under += 1;
                    }
                }
            }
            FileHealth {
                root: f.root.to_string(),
                name: f.name.clone(),
                size: f.size,
                added_at: f.added_at,
                added_by: f.added_by.clone(),
                blocks: a.files.get(&f.root).map_or(f.blocks, |b| (b.interior.len() + b.leaves.len()) as u64),
                at_rf,
                under_replicated: under,
                missing,
            }
        })
        .collect()
}
