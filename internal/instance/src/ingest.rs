//! Streaming ingest: an add through this member sends each leaf block, as the importer makes it, to the members the
//! current placement layout gives it to (`/xnode/ingest/1.0.0`, docs/p2p.md), keeps here only the leaves of its own
//! share and the interior blocks (kept by every member), and answers once every leaf has its copies acknowledged;
//! then it appends the catalog entry. So an upload needs room on this member only for its share, and the bytes
//! cross its disk at most once (docs/allocation.md, "Streaming ingest").
//!
//! The decisions are plain methods without I/O: [`Route`] (who gets a block) and [`Window`] (batches, the bound on
//! bytes in flight, acknowledgements, retries and what could not be placed), unit-tested below. [`stream`] carries
//! them out; [`StagingStore`] is the receiving side, injected into the swarm.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use xnode_dag::{Added, Block, BlockSink, SinkError};
use xnode_gossip::{Member, MemberState};
use xnode_p2p::holdings::RequestFailure;
use xnode_p2p::ingest::{Refusal, MAX_BLOCKS};
use xnode_p2p::{P2pError, PeerId};
use xnode_placement::Layout;
use xnode_storage::{Staged, Store, StoreError};

use crate::node::Node;
use crate::InstanceError;

/// Bytes of leaf blocks sent and not yet acknowledged by every holder, at most (each block counted once, however
/// many copies it needs). Bounds the memory an add holds (blocks stay in memory until acknowledged, for retries)
/// while keeping every member's link busy.
pub(crate) const WINDOW_BYTES: u64 = 48 << 20;

/// A member's batch is sent once it holds this many bytes (or [`MAX_BLOCKS`] blocks): fewer, larger requests mean
/// fewer commits (each an fsync) on the receiver. At most one block over it, so within the protocol's 4 MiB.
pub(crate) const BATCH_BYTES: u64 = 2 << 20;

/// Attempts of one batch to one member before its blocks count as not placed (a member that restarts or is busy for
/// a moment is retried; a full one is not). With [`RETRY_DELAY`] they span about 11 s: longer than membership takes
/// to declare a member dead (about 3 s) and the layout to move its partitions, after which the retries go to the
/// new holders.
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// How long a member that membership still lists alive may go without acknowledging any batch of an add before its
/// failed batches count against [`MAX_ATTEMPTS`]. A live member on a slow or overloaded disk (a commit taking longer
/// than [`ATTEMPT_TIMEOUT`], refusals as busy) keeps the add waiting rather than failing it; a dead one is declared
/// dead within about 3 s, and its partitions move to other members, so this never delays that case.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long one attempt of a batch may take before it is retried (the protocol allows 30 s): a member killed a
/// moment ago may leave a connection that answers nothing until it times out, while a retry soon goes to whoever
/// took over its partitions. A slow member only gets the batch again (it answers "already have").
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait before the n-th retry: n times this, at most [`RETRY_DELAY_MAX`].
const RETRY_DELAY: Duration = Duration::from_millis(500);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// Partly filled batches go out this often, so a slow upload's blocks do not wait for a full batch.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// How long an add waits for members it is not connected to before it starts. Short: a member that just died (not
/// yet declared dead) answers no dial, and every add meanwhile would wait this long; batches to a member still not
/// connected are retried, and follow the layout once the member is declared dead.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Blocks between the importer's thread and the sender (about 4 MiB of 256 KiB chunks).
const IMPORT_QUEUE: usize = 16;

/// Example CIDs named in the error when blocks could not be placed.
const NAMED_UNPLACED: usize = 3;

/// Where one block goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// Stored here (this member holds its partition, or it is an interior block, kept everywhere).
    pub(crate) local: bool,
    /// The other members that must hold it.
    pub(crate) remote: Vec<String>,
}

/// Who gets a block under `layout`, seen from member `me`: a leaf (a block without links) goes to the holders of
/// its partition; any other block is interior, kept here (and by every member once the file is indexed).
pub(crate) fn route(layout: &Layout, me: &str, cid: &Cid, leaf: bool) -> Route {
    if !leaf {
        return Route { local: true, remote: Vec::new() };
    }
    let p = layout.partition_of_cid(&cid.to_bytes());
    let mut local = false;
    let mut remote = Vec::new();
    for holder in layout.holders(p) {
        if holder == me {
            local = true;
        } else {
            remote.push(holder.to_string());
        }
    }
    Route { local, remote }
}

/// When a member last acknowledged a batch of this add, so a slow but live member is waited for ([`PATIENCE`]).
/// No I/O: the caller says what time it is and whether membership lists the member alive.
#[derive(Debug)]
pub(crate) struct Patience {
    heard: HashMap<String, std::time::Instant>,
    limit: Duration,
}

impl Patience {
    pub(crate) fn new(limit: Duration) -> Self {
        Patience { heard: HashMap::new(), limit }
    }

    /// `member` acknowledged a batch at `now`.
    pub(crate) fn heard(&mut self, member: &str, now: std::time::Instant) {
        self.heard.insert(member.to_string(), now);
    }

    /// Whether a batch to `member` that failed at `now` is sent again without counting against its attempts: only
    /// while the member is alive and has acknowledged something within the limit (a member never heard from gets
    /// the limit from its first failure).
    pub(crate) fn waits_for(&mut self, member: &str, alive: bool, now: std::time::Instant) -> bool {
        if !alive {
            return false;
        }
        let since = *self.heard.entry(member.to_string()).or_insert(now);
        now.saturating_duration_since(since) < self.limit
    }
}

/// A batch of blocks for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) member: String,
    /// Block ids in the window.
    pub(crate) ids: Vec<u64>,
    /// How many times it was sent before (0 the first time).
    pub(crate) attempt: u32,
}

#[derive(Debug)]
struct Pending {
    cid: Cid,
    data: Bytes,
    /// Members whose copy is not yet acknowledged (nor given up).
    waiting: BTreeSet<String>,
    /// Members that acknowledged their copy.
    placed: BTreeSet<String>,
    /// Whether this member stores it too.
    local: bool,
}

/// The sending side's bookkeeping: per-member queues cut into batches, the bytes in flight, which copies were
/// acknowledged, and what could not be placed. No I/O.
#[derive(Debug)]
pub(crate) struct Window {
    limit: u64,
    batch_bytes: u64,
    in_flight: u64,
    next_id: u64,
    blocks: HashMap<u64, Pending>,
    queues: BTreeMap<String, (Vec<u64>, u64)>,
    /// Per member: blocks not placed there and the last reason.
    unplaced: BTreeMap<String, (u64, String)>,
    unplaced_cids: Vec<Cid>,
    unplaced_blocks: u64,
    /// Copies acknowledged, and blocks sent (each once).
    pub(crate) copies_acked: u64,
    pub(crate) blocks_sent: u64,
    /// Copies the receivers already had (a re-add).
    pub(crate) copies_already: u64,
}

impl Window {
    pub(crate) fn new(limit: u64, batch_bytes: u64) -> Self {
        Window {
            limit,
            batch_bytes,
            in_flight: 0,
            next_id: 0,
            blocks: HashMap::new(),
            queues: BTreeMap::new(),
            unplaced: BTreeMap::new(),
            unplaced_cids: Vec::new(),
            unplaced_blocks: 0,
            copies_acked: 0,
            blocks_sent: 0,
            copies_already: 0,
        }
    }

    /// Whether another block may enter: the bytes in flight are under the limit.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight < self.limit
    }

    /// Bytes of blocks not yet acknowledged by every holder.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Whether nothing is waiting for an acknowledgement.
    pub(crate) fn is_idle(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Takes a block for `members` (and notes whether this member stores it too); returns the batches that became
    /// full.
    pub(crate) fn push(&mut self, cid: Cid, data: Bytes, members: &[String], local: bool) -> Vec<Batch> {
        if members.is_empty() {
            return Vec::new();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight += data.len() as u64;
        self.blocks_sent += 1;
        let waiting = members.iter().cloned().collect();
        self.blocks.insert(id, Pending { cid, data, waiting, placed: BTreeSet::new(), local });
        members.iter().filter_map(|m| self.enqueue(m, id)).collect()
    }

    /// Queues block `id` for `member`; returns the member's batch if it became full.
    fn enqueue(&mut self, member: &str, id: u64) -> Option<Batch> {
        let size = self.blocks.get(&id).map_or(0, |p| p.data.len() as u64);
        let (ids, bytes) = self.queues.entry(member.to_string()).or_default();
        ids.push(id);
        *bytes += size;
        if *bytes >= self.batch_bytes || ids.len() >= MAX_BLOCKS {
            let ids = std::mem::take(ids);
            self.queues.remove(member);
            return Some(Batch { member: member.to_string(), ids, attempt: 0 });
        }
        None
    }

    /// Every partly filled batch, to send now (the import ended, or the window is full and acknowledgements must
    /// free it).
    pub(crate) fn flush(&mut self) -> Vec<Batch> {
        std::mem::take(&mut self.queues)
            .into_iter()
            .map(|(member, (ids, _))| Batch { member, ids, attempt: 0 })
            .collect()
    }

    /// The blocks of `batch`, to send.
    pub(crate) fn blocks_of(&self, batch: &Batch) -> Vec<(Cid, Bytes)> {
        batch.ids.iter().filter_map(|id| self.blocks.get(id)).map(|p| (p.cid, p.data.clone())).collect()
    }

    /// `batch`'s member stored every block of it (`already` of them it had before).
    pub(crate) fn acked(&mut self, batch: &Batch, already: u32) {
        self.copies_already += u64::from(already);
        for id in &batch.ids {
            let Some(p) = self.blocks.get_mut(id) else { continue };
            if p.waiting.remove(&batch.member) {
                p.placed.insert(batch.member.clone());
                self.copies_acked += 1;
            }
            self.settle(*id);
        }
    }

    /// `batch` failed for `reason`: returned to be sent again if `retry` allows and attempts are left; otherwise
    /// its blocks count as not placed on that member.
    pub(crate) fn failed(&mut self, mut batch: Batch, reason: String, retry: bool) -> Option<Batch> {
        if retry && batch.attempt + 1 < MAX_ATTEMPTS {
            batch.attempt += 1;
            return Some(batch);
        }
        let entry = self.unplaced.entry(batch.member.clone()).or_default();
        entry.0 += batch.ids.len() as u64;
        entry.1 = reason;
        for id in &batch.ids {
            let Some(p) = self.blocks.get_mut(id) else { continue };
            p.waiting.remove(&batch.member);
            if self.unplaced_cids.len() < NAMED_UNPLACED && !self.unplaced_cids.contains(&p.cid) {
                self.unplaced_cids.push(p.cid);
            }
            self.unplaced_blocks += 1;
            self.settle(*id);
        }
        None
    }

    /// The layout changed while `batch` waited for a retry (a member died and its partitions moved): each block
    /// goes to the holders `route` now names. Returns what is left of the batch for its member (the blocks it still
    /// holds), the batches to other members that became full, and the blocks this member must now store itself.
    pub(crate) fn retarget(
        &mut self,
        batch: Batch,
        route: impl Fn(&Cid) -> Route,
    ) -> (Batch, Vec<Batch>, Vec<(Cid, Bytes)>) {
        let mut kept = Vec::new();
        let mut ready = Vec::new();
        let mut local = Vec::new();
        for id in batch.ids {
            let Some(p) = self.blocks.get_mut(&id) else { continue };
            let now = route(&p.cid);
            if now.remote.contains(&batch.member) {
                kept.push(id);
                continue;
            }
            p.waiting.remove(&batch.member);
            let fresh: Vec<String> =
                now.remote.into_iter().filter(|m| !p.waiting.contains(m) && !p.placed.contains(m)).collect();
            p.waiting.extend(fresh.iter().cloned());
            if now.local && !p.local {
                p.local = true;
                local.push((p.cid, p.data.clone()));
            }
            for m in &fresh {
                ready.extend(self.enqueue(m, id));
            }
            self.settle(id);
        }
        (Batch { member: batch.member, ids: kept, attempt: batch.attempt }, ready, local)
    }

    /// Drops block `id` once no copy is outstanding.
    fn settle(&mut self, id: u64) {
        let Some(p) = self.blocks.get(&id) else { return };
        if p.waiting.is_empty() {
            self.in_flight -= p.data.len() as u64;
            self.blocks.remove(&id);
        }
    }

    /// What could not be placed, if anything: per member, blocks and the reason.
    pub(crate) fn unplaced(&self) -> Option<Unplaced> {
        if self.unplaced.is_empty() {
            return None;
        }
        Some(Unplaced {
            copies: self.unplaced_blocks,
            blocks_sent: self.blocks_sent,
            members: self.unplaced.clone(),
            examples: self.unplaced_cids.clone(),
            cluster_free: None,
        })
    }
}

/// Copies an add could not place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    /// Copies not placed (a block missing on two members counts twice).
    pub copies: u64,
    /// Leaf blocks the add sent to other members.
    pub blocks_sent: u64,
    /// Per member: copies not placed there and why.
    pub members: BTreeMap<String, (u64, String)>,
    /// A few of the blocks concerned.
    pub examples: Vec<Cid>,
    /// When a member was full: bytes free in the cluster, per member name, as members gossip it.
    pub cluster_free: Option<Vec<(String, u64)>>,
}

impl std::fmt::Display for Unplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let copies = if self.copies == 1 { "copy" } else { "copies" };
        write!(f, "the upload failed: {} block {copies} could not be placed (", self.copies)?;
        for (i, (member, (n, why))) in self.members.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{n} on {member}: {why}")?;
        }
        write!(f, ")")?;
        if !self.examples.is_empty() {
            let named: Vec<String> = self.examples.iter().map(Cid::to_string).collect();
            write!(f, ", e.g. block {}", named.join(", "))?;
        }
        if let Some(free) = &self.cluster_free {
            let total: u64 = free.iter().map(|(_, b)| b).sum();
            let each: Vec<String> = free.iter().map(|(n, b)| format!("{n} {}", bytes(*b))).collect();
            write!(
                f,
                ". The cluster has {} free ({}); remove files, add members or raise their capacity (xnode resize \
                 NAME SIZE, the dashboard, or PUT /api/v1/members/NAME/storage)",
                bytes(total),
                each.join(", ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Unplaced {}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Whether a failed batch is worth sending again, and what to say about it.
fn judge(error: &P2pError) -> (bool, String) {
    match error {
        P2pError::IngestRefused { reason, .. } => match reason {
            Refusal::Busy | Refusal::NotMember | Refusal::Failed => (true, reason.to_string()),
            Refusal::Full { .. } | Refusal::TooLarge | Refusal::Malformed | Refusal::Invalid => {
                (false, reason.to_string())
            }
        },
        P2pError::Stopped => (false, "this node is shutting down".to_string()),
        P2pError::Dial { reason, .. } => (true, format!("unreachable ({reason})")),
        other => (true, format!("no answer ({other})")),
    }
}

/// The receiving side: verified batches from members are stored staged (see [`Store::stage`]), all or nothing;
/// read caches give way when room is short.
#[derive(Debug, Clone)]
pub(crate) struct StagingStore {
    pub(crate) store: Store,
}

impl xnode_p2p::Ingest for StagingStore {
    fn stage(&self, session: u64, blocks: &[(Cid, Bytes)]) -> Result<u32, Refusal> {
        let staged = Staged { session, at_ms: now_ms() };
        let failed = |e: StoreError| {
            tracing::warn!(error = %e, "could not stage ingested blocks");
            Refusal::Failed
        };
        let mut already = Vec::new();
        let mut fresh = Vec::new();
        for (cid, data) in blocks {
            if self.store.has(cid).map_err(failed)? {
                already.push(*cid);
            } else {
                fresh.push((cid, data));
            }
        }
        let needed: u64 = fresh.iter().map(|(_, d)| d.len() as u64).sum();
        if needed > 0 {
            let mut free = self.store.stats().map_err(failed)?.free;
            if free < needed {
                // Read caches give way to blocks the cluster must hold.
                if let Ok(gc) = self.store.gc() {
                    if gc.blocks_deleted > 0 {
                        tracing::info!(blocks = gc.blocks_deleted, "evicted read cache for ingested blocks");
                    }
                }
                free = self.store.stats().map_err(failed)?.free;
            }
            if free < needed {
                return Err(Refusal::Full { free, needed });
            }
            let mut w = self.store.writer();
            for (cid, data) in &fresh {
                match w.put(cid, data) {
                    Ok(()) => {}
                    Err(StoreError::Full { .. }) => {
                        let free = self.store.stats().map(|s| s.free).unwrap_or(0);
                        return Err(Refusal::Full { free, needed });
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
            w.commit_staged(staged).map_err(failed)?;
        }
        if !already.is_empty() {
            self.store.stage(&already, staged).map_err(failed)?;
        }
        Ok(already.len() as u32)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new session id: random, so two adds (or two members) never share one.
fn new_session() -> u64 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u64()
}

/// Hands imported blocks from the importer's thread to the sender.
struct ChannelSink(tokio::sync::mpsc::Sender<Block>);

impl BlockSink for ChannelSink {
    fn put(&mut self, block: Block) -> Result<(), SinkError> {
        self.0.blocking_send(block).map_err(|_| "the upload was stopped".into())
    }
}

/// What an import closure gives back: the DAG's root, the name to list it under, and whatever else the caller wants.
pub(crate) type Imported<T> = (Added, String, T);

type Sending = Pin<Box<dyn Future<Output = (Batch, Result<u32, P2pError>)> + Send>>;

/// Runs `import` on a blocking thread and streams its blocks out under `layout` (see the module docs); on success
/// appends the file to the catalog.
pub(crate) async fn stream<T: Send + 'static>(
    node: &Arc<Node>,
    mut layout: Arc<Layout>,
    import: impl FnOnce(&mut dyn BlockSink) -> Result<Imported<T>, InstanceError> + Send + 'static,
) -> Result<(Added, T), InstanceError> {
    let session = new_session();
    let me = node.name().to_string();
    let members = node.members();
    let peers: HashMap<String, PeerId> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive && !m.is_self)
        .filter_map(|m| Some((m.name.clone(), m.meta.peer_id.parse().ok()?)))
        .collect();

    // Members not connected yet are dialled on the addresses they gossip, all at once, before the first batch.
    let connected: HashSet<PeerId> = node.net().connected_peers().await.unwrap_or_default().into_iter().collect();
    let dials = members.iter().filter(|m| m.state == MemberState::Alive && !m.is_self).filter_map(|m| {
        let peer: PeerId = m.meta.peer_id.parse().ok()?;
        let addrs = m.meta.p2p_addrs.iter().filter_map(|a| a.parse().ok()).collect();
        (!connected.contains(&peer)).then(|| node.net().dial(peer, addrs))
    });
    let _ = tokio::time::timeout(DIAL_TIMEOUT, futures::future::join_all(dials)).await;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Block>(IMPORT_QUEUE);
    let importer = tokio::task::spawn_blocking(move || import(&mut ChannelSink(tx)));
    // This member's blocks (its share of the leaves, and the interior ones) go to a writer on its own thread.
    let (local_tx, mut local_rx) = tokio::sync::mpsc::channel::<Block>(IMPORT_QUEUE);
    let store = node.repo().store().clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        // Through the page cache: the allocation loop reads the interior blocks right back to index the file.
        let mut w = store.cached_writer();
        let mut blocks = 0u64;
        let mut evicted = false;
        while let Some(block) = local_rx.blocking_recv() {
            match w.put(&block.cid, &block.data) {
                // Read caches (blocks kept from reads) give way to this member's share of an add, once.
                Err(StoreError::Full { .. }) if !evicted => {
                    evicted = true;
                    if let Ok(gc) = store.gc() {
                        tracing::info!(
                            blocks = gc.blocks_deleted,
                            bytes = gc.bytes_freed,
                            "evicted read cache for an add"
                        );
                    }
                    w.put(&block.cid, &block.data)?;
                }
                other => other?,
            }
            blocks += 1;
        }
        Ok((w, blocks))
    });

    let mut window = Window::new(WINDOW_BYTES, BATCH_BYTES);
    let mut sends: FuturesUnordered<Sending> = FuturesUnordered::new();
    let send = |window: &Window, batch: Batch| -> Sending {
        let blocks = window.blocks_of(&batch);
        let peer = peers.get(&batch.member).copied();
        let client = node.net().clone();
        Box::pin(async move {
            if batch.attempt > 0 {
                tokio::time::sleep((RETRY_DELAY * batch.attempt).min(RETRY_DELAY_MAX)).await;
            }
            let result = match peer {
                Some(peer) => tokio::time::timeout(ATTEMPT_TIMEOUT, client.ingest(peer, session, &blocks))
                    .await
                    .unwrap_or(Err(P2pError::NoAnswer { peer, reason: RequestFailure::Timeout })),
                None => Err(P2pError::Dial {
                    peer: PeerId::random(),
                    reason: format!("{} is not a live member", batch.member),
                }),
            };
            (batch, result)
        })
    };
    let mut patience = Patience::new(PATIENCE);
    let alive = |member: &str| node.view().iter().any(|m| m.name == member && m.state == MemberState::Alive);
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut local_gone = false;
    let mut imported_all = false;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if imported_all || !window.has_room() {
            for batch in window.flush() {
                sends.push(send(&window, batch));
            }
        }
        if imported_all && sends.is_empty() {
            debug_assert!(window.is_idle());
            break;
        }
        tokio::select! {
            block = rx.recv(), if !imported_all && window.has_room() => match block {
                None => imported_all = true,
                Some(block) => {
                    if !seen.insert(block.cid) {
                        continue; // a chunk seen before in this add: already on its way
                    }
                    let leaf = xnode_dag::block_links(&block.cid, &block.data).map(|l| l.is_empty()).unwrap_or(false);
                    let to = route(&layout, &me, &block.cid, leaf);
                    for batch in window.push(block.cid, block.data.clone(), &to.remote, to.local) {
                        sends.push(send(&window, batch));
                    }
                    if to.local && !local_gone && local_tx.send(block).await.is_err() {
                        // The writer stopped (a full store): its error is reported below; stop the import.
                        local_gone = true;
                        rx.close();
                    }
                }
            },
            _ = flush.tick() => {
                // New blocks follow the layout of the moment (a member died or joined during a long add).
                if let Some(now) = node.layout() {
                    layout = now;
                }
                for batch in window.flush() {
                    sends.push(send(&window, batch));
                }
            }
            Some((batch, result)) = sends.next(), if !sends.is_empty() => match result {
                Ok(already) => {
                    patience.heard(&batch.member, std::time::Instant::now());
                    window.acked(&batch, already);
                }
                Err(e) => {
                    let (retry, reason) = judge(&e);
                    tracing::debug!(member = %batch.member, attempt = batch.attempt, error = %e, "ingest batch failed");
                    let again = if retry && patience.waits_for(&batch.member, alive(&batch.member), std::time::Instant::now()) {
                        // Alive and heard from lately: slow, not gone. Sent again, keeping a few attempts for the
                        // case it dies after all (then its blocks follow the new layout).
                        let mut batch = batch;
                        batch.attempt = (batch.attempt + 1).min(MAX_ATTEMPTS - 2);
                        Some(batch)
                    } else {
                        window.failed(batch, reason, retry)
                    };
                    if let Some(again) = again {
                        // Each block goes where the layout of the moment puts it: after a member died, to the
                        // member that took over its partitions (or here).
                        if let Some(now) = node.layout() {
                            layout = now;
                        }
                        let (again, ready, local) = window.retarget(again, |cid| route(&layout, &me, cid, true));
                        for batch in ready {
                            sends.push(send(&window, batch));
                        }
                        if !again.ids.is_empty() {
                            sends.push(send(&window, again));
                        }
                        for (cid, data) in local {
                            if !local_gone && local_tx.send(Block { cid, data }).await.is_err() {
                                local_gone = true;
                                rx.close();
                            }
                        }
                    }
                }
            },
        }
    }
    drop(local_tx);
    let imported = importer.await.expect("the importer does not panic");
    let written = writer.await.expect("the writer does not panic");
    let ((added, name, extra), (writer, local_count)) = match (imported, written) {
        // This member's own store is full, with other members in the cluster: the cluster is full for this file as
        // surely as when another member refuses, so the answer is the same (507 naming where room is left), not a
        // lone node's "raise this node's capacity".
        (_, Err(StoreError::Full { needed, free, .. })) if !peers.is_empty() => {
            let mut unplaced = window.unplaced().unwrap_or_else(|| Unplaced {
                copies: 0,
                blocks_sent: window.blocks_sent,
                members: BTreeMap::new(),
                examples: Vec::new(),
                cluster_free: None,
            });
            unplaced.copies += 1;
            let here = unplaced.members.entry(me.clone()).or_default();
            here.0 += 1;
            here.1 = Refusal::Full { free, needed }.to_string();
            unplaced.cluster_free = Some(cluster_free(&node.members()));
            return Err(InstanceError::Unplaced(unplaced));
        }
        (_, Err(store)) => return Err(store.into()),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(_), Ok(_)) if window.unplaced().is_some() => {
            let mut unplaced = window.unplaced().expect("checked");
            if unplaced.members.values().any(|(_, why)| why.contains("full")) {
                // The figures of the moment (members gossip their use), not those of the add's start.
                unplaced.cluster_free = Some(cluster_free(&node.members()));
            }
            // What the members staged is reclaimed after their staging time; nothing here was committed.
            return Err(InstanceError::Unplaced(unplaced));
        }
        (Ok(imported), Ok(written)) => (imported, written),
    };
    tokio::task::spawn_blocking(move || writer.commit_staged(Staged { session, at_ms: now_ms() }))
        .await
        .expect("commit does not panic")?;
    tracing::info!(
        root = %added.cid,
        blocks = seen.len(),
        sent = window.blocks_sent,
        copies = window.copies_acked,
        already = window.copies_already,
        local = local_count,
        "streamed an add to its placement members"
    );
    let record = xnode_catalog::FileRecord {
        root: added.cid,
        name,
        size: added.size,
        blocks: seen.len() as u64,
        added_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        added_by: node.name().to_string(),
    };
    node.append_catalog(xnode_catalog::Op::Add(record)).await?;
    Ok((added, extra))
}

/// Bytes free on each live member, as gossiped (unlimited stores count as `u64::MAX` and are left out).
fn cluster_free(members: &[Member]) -> Vec<(String, u64)> {
    members
        .iter()
        .filter(|m| m.state == MemberState::Alive && m.meta.capacity != u64::MAX)
        .map(|m| (m.name.clone(), m.meta.capacity.saturating_sub(m.meta.used)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use xnode_placement::NodeInfo;

    fn block(n: u32, len: usize) -> (Cid, Bytes) {
        let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ n) as u8).chain(n.to_le_bytes()).collect();
        (xnode_dag::cid_v1(0x55, &data), Bytes::from(data))
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn leaves_go_to_their_partition_holders_and_interior_blocks_stay_here() {
        let view: Vec<NodeInfo> =
            ["a", "b", "c", "d", "e"].iter().map(|n| NodeInfo { name: n.to_string(), capacity: 100 }).collect();
        let layout = Layout::new(&view, &[], 2, 1024).unwrap();
        let (mut local, mut total) = (0, 0);
        for n in 0..500 {
            let (cid, _) = block(n, 100);
            let holders: Vec<&str> = layout.holders(layout.partition_of_cid(&cid.to_bytes())).collect();
            let r = route(&layout, "a", &cid, true);
            assert_eq!(r.local, holders.contains(&"a"));
            assert_eq!(r.remote.len() + usize::from(r.local), 2, "every leaf gets its two holders");
            assert!(r.remote.iter().all(|m| holders.contains(&m.as_str()) && m != "a"));
            local += usize::from(r.local);
            total += 1;
            assert_eq!(route(&layout, "a", &cid, false), Route { local: true, remote: vec![] });
        }
        // The adding member keeps only its share: about 2/5 of the leaves, not all of them.
        assert!(local > total / 5 && local < total * 3 / 5, "{local} of {total} kept locally");
    }

    #[test]
    fn the_window_bounds_bytes_in_flight_and_frees_them_on_acks() {
        let mut w = Window::new(1000, 300);
        let mut batches = Vec::new();
        let mut n = 0;
        while w.has_room() {
            let (cid, data) = block(n, 100);
            batches.extend(w.push(cid, data, &names(&["b", "c"]), false));
            n += 1;
        }
        assert_eq!(n, 10, "ten blocks of ~104 bytes fill a 1000-byte window");
        assert!(w.in_flight() >= 1000);
        // Batches of at least 300 bytes per member: 3 blocks each, cut as they fill.
        assert!(batches.iter().all(|b| b.ids.len() == 3));
        batches.extend(w.flush());
        let to_b: usize = batches.iter().filter(|b| b.member == "b").map(|b| b.ids.len()).sum();
        assert_eq!(to_b, 10);
        // One holder's ack is not enough: the window frees a block only once both acked.
        for b in batches.iter().filter(|b| b.member == "b") {
            w.acked(b, 0);
        }
        assert!(!w.has_room() && !w.is_idle());
        for b in batches.iter().filter(|b| b.member == "c") {
            w.acked(b, 1);
        }
        assert!(w.is_idle() && w.has_room());
        assert_eq!(w.in_flight(), 0);
        assert_eq!((w.copies_acked, w.copies_already), (20, 4), "four batches to c, each with one block it had");
        assert!(w.unplaced().is_none());
    }

    #[test]
    fn failures_are_retried_then_named_with_the_member_and_reason() {
        let mut w = Window::new(1 << 20, 1 << 20);
        let (cid, data) = block(1, 100);
        assert!(w.push(cid, data, &names(&["b", "c"]), false).is_empty());
        let batches = w.flush();
        let (to_b, to_c) = (batches[0].clone(), batches[1].clone());
        w.acked(&to_b, 0);
        // A busy or unreachable member is retried, up to MAX_ATTEMPTS sends in all.
        let mut batch = to_c;
        for attempt in 1..MAX_ATTEMPTS {
            batch = w.failed(batch, "unreachable".into(), true).expect("retried");
            assert_eq!(batch.attempt, attempt);
            assert_eq!(w.blocks_of(&batch).len(), 1, "the bytes stay until placed or given up");
        }
        assert!(w.failed(batch, "unreachable".into(), true).is_none());
        assert!(w.is_idle(), "a block given up frees the window");
        let unplaced = w.unplaced().unwrap();
        assert_eq!(unplaced.copies, 1);
        assert_eq!(unplaced.members["c"], (1, "unreachable".to_string()));
        assert_eq!(unplaced.examples, vec![cid]);

        // A full member is not retried; the message says where the cluster has room.
        let mut w = Window::new(1 << 20, 1);
        let (cid, data) = block(2, 100);
        let batch = w.push(cid, data, &names(&["d"]), false).remove(0);
        let full = Refusal::Full { free: 10, needed: 104 };
        let (retry, reason) = judge(&P2pError::IngestRefused { peer: PeerId::random(), reason: full });
        assert!(!retry);
        assert!(w.failed(batch, reason, retry).is_none());
        let mut unplaced = w.unplaced().unwrap();
        unplaced.cluster_free = Some(vec![("a".into(), 3 << 20), ("d".into(), 10)]);
        let text = unplaced.to_string();
        assert!(text.contains("1 on d: its store is full (10 bytes free, 104 needed)"), "{text}");
        assert!(text.contains("The cluster has 3.0 MiB free (a 3.0 MiB, d 10 B)"), "{text}");
        assert!(text.contains(&cid.to_string()), "{text}");
    }

    #[test]
    fn a_live_member_is_waited_for_until_it_goes_quiet_for_the_limit() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = Patience::new(Duration::from_secs(60));
        // Never heard from: the limit runs from its first failure.
        assert!(p.waits_for("b", true, at(0)));
        assert!(p.waits_for("b", true, at(59)));
        assert!(!p.waits_for("b", true, at(60)), "silent for the whole limit");
        // An acknowledgement starts the limit again.
        p.heard("b", at(70));
        assert!(p.waits_for("b", true, at(125)));
        assert!(!p.waits_for("b", true, at(131)));
        // A member membership no longer lists alive is never waited for: its blocks follow the new layout.
        p.heard("c", at(0));
        assert!(!p.waits_for("c", false, at(1)));
        // Members are independent.
        assert!(p.waits_for("d", true, at(200)));
    }

    #[test]
    fn blocks_no_other_member_needs_take_no_window() {
        let mut w = Window::new(10, 1);
        let (cid, data) = block(3, 100);
        assert!(w.push(cid, data, &[], true).is_empty());
        assert!(w.is_idle() && w.has_room());
    }

    #[test]
    fn after_a_member_dies_its_copies_go_to_the_new_holders() {
        let mut w = Window::new(1 << 20, 1 << 20);
        let (x, dx) = block(1, 100);
        let (y, dy) = block(2, 100);
        w.push(x, dx, &names(&["b", "c"]), false);
        w.push(y, dy.clone(), &names(&["c"]), true);
        let batches = w.flush();
        let to_b = batches.iter().find(|b| b.member == "b").unwrap().clone();
        let to_c = batches.iter().find(|b| b.member == "c").unwrap().clone();
        w.acked(&to_b, 0);
        // c died: x now goes to b (which has it) and d; y to b, and to this member, which already stores it.
        let retry = w.failed(to_c, "unreachable".into(), true).unwrap();
        let (left, ready, local) = w.retarget(retry, |cid| {
            if *cid == x {
                Route { local: false, remote: names(&["b", "d"]) }
            } else {
                Route { local: true, remote: names(&["b"]) }
            }
        });
        assert!(left.ids.is_empty(), "nothing is left for the dead member");
        assert!(ready.is_empty() && local.is_empty());
        let mut next = w.flush();
        next.sort_by(|a, b| a.member.cmp(&b.member));
        assert_eq!(next.iter().map(|b| (b.member.as_str(), b.ids.len())).collect::<Vec<_>>(), [("b", 1), ("d", 1)]);
        assert_eq!(w.blocks_of(&next[0]), vec![(y, dy)], "b gets only the block it lacks");
        assert!(!w.is_idle());
        for b in &next {
            w.acked(b, 0);
        }
        assert!(w.is_idle() && w.unplaced().is_none(), "every block placed on the new layout's holders");

        // A block whose only holder is now this member is stored here.
        let mut w = Window::new(1 << 20, 1);
        let (z, dz) = block(3, 100);
        let batch = w.push(z, dz.clone(), &names(&["c"]), false).remove(0);
        let retry = w.failed(batch, "unreachable".into(), true).unwrap();
        let (left, ready, local) = w.retarget(retry, |_| Route { local: true, remote: vec![] });
        assert!(left.ids.is_empty() && ready.is_empty());
        assert_eq!(local, vec![(z, dz)]);
        assert!(w.is_idle());
    }

    #[test]
    fn staged_batches_are_stored_whole_or_refused_when_full() {
        use xnode_p2p::Ingest;
        let dir = tempfile::tempdir().unwrap();
        let config = xnode_storage::StoreConfig { capacity: 2 << 20, ..Default::default() };
        let store = Store::open(dir.path(), config).unwrap();
        let staging = StagingStore { store: store.clone() };
        let first: Vec<(Cid, Bytes)> = (0..4).map(|n| block(n, 256 * 1024)).collect();
        assert_eq!(staging.stage(7, &first).unwrap(), 0);
        assert_eq!(store.staged().unwrap().len(), 4);
        store.gc().unwrap();
        assert_eq!(store.stats().unwrap().blocks, 4, "staged blocks are not read cache");
        // Sent again (a retry, or a later add of the same file): already there, nothing written.
        assert_eq!(staging.stage(8, &first[..2]).unwrap(), 2);
        let more: Vec<(Cid, Bytes)> = (10..14).map(|n| block(n, 256 * 1024)).collect();
        match staging.stage(9, &more) {
            Err(Refusal::Full { free, needed }) => assert!(free < needed, "{free} {needed}"),
            other => panic!("expected a full refusal, got {other:?}"),
        }
        assert_eq!(store.stats().unwrap().blocks, 4, "nothing of a refused batch is stored");
    }
}
