//! The running node: its store, its membership in the cluster, and what it tells the others about itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xnode_gossip::{GossipConfig, Member, MemberMeta, MemberState, Membership};
use xnode_storage::{StoreConfig, StoreStats};

use bytes::Bytes;
use cid::Cid;
use xnode_dag::NodeKind;
use xnode_p2p::{Client, FetchStats, Multiaddr, P2pConfig, P2pError, PeerId};
use xnode_storage::Store;

use crate::fetched::{fetch_and_commit, FetchingSource, NetSink};
use crate::{InstanceError, Repo};

/// How often the node dials members it learned about through gossip but is not connected to.
const DIAL_MEMBERS: Duration = Duration::from_secs(2);

/// How often the watched folder is scanned; a file is added after two scans that saw it unchanged.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A read on a store with less free space than this evicts read caches first (see [`Node::open_streaming`]).
const READ_ROOM: u64 = 256 << 20;

/// How often the node re-reads its store figures and gossips them if they changed.
const META_REFRESH: Duration = Duration::from_secs(1);

/// The allocation loop reports every round (about a second) and during long rounds; this long without a report,
/// it is stuck. Generous: a round that fetches a large share still reports as it goes.
const ALLOCATION_STALL: Duration = Duration::from_secs(120);

/// How often a no-op is run on a blocking thread to see that blocking work (every store read and write of the
/// API, the allocation loop's disk work) still runs.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// No probe finished for this long: the blocking pool is wedged, and the API cannot make progress.
const BLOCKING_STALL: Duration = Duration::from_secs(15);

/// When the node last showed progress, to tell a stuck node from a busy one ([`Liveness::verdict`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// The allocation loop's last report ([`Node::set_report`]), or the start.
    pub(crate) report_at: std::time::Instant,
    /// The last probe that ran on a blocking thread, or the start.
    pub(crate) probe_at: std::time::Instant,
}

impl Liveness {
    fn new(now: std::time::Instant) -> Self {
        Liveness { report_at: now, probe_at: now }
    }

    /// Why the node is stuck at `now`, if it is.
    pub(crate) fn verdict(&self, now: std::time::Instant) -> Option<String> {
        let blocked = now.saturating_duration_since(self.probe_at);
        if blocked >= BLOCKING_STALL {
            return Some(format!(
                "blocking work has not run for {} s (store reads and writes, so the API, cannot make progress)",
                blocked.as_secs()
            ));
        }
        let quiet = now.saturating_duration_since(self.report_at);
        (quiet >= ALLOCATION_STALL)
            .then(|| format!("the allocation loop has not finished a round for {} s", quiet.as_secs()))
    }
}

/// What the node is busy with, as the prototype's TODO asked (shown on the dashboard and gossiped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Started, no other member seen yet.
    LookingForPeers,
    /// Learning what the cluster stores.
    FetchingMetadata,
    /// Choosing and fetching its share of blocks.
    PickingBlocks,
    /// Holding and serving its share.
    Seeding,
}

impl Phase {
    /// The phase as gossiped.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LookingForPeers => "looking-for-peers",
            Self::FetchingMetadata => "fetching-metadata",
            Self::PickingBlocks => "picking-blocks",
            Self::Seeding => "seeding",
        }
    }
}

/// Everything a node needs to start; built once by the binary.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// The store's capacity.
    pub store: StoreConfig,
    /// Membership settings.
    pub gossip: GossipConfig,
    /// The URL other nodes and the dashboard reach this node's API at.
    pub api_url: String,
    /// The libp2p node's settings (identity file, port, group, bootstrap peers).
    pub p2p: P2pConfig,
    /// The IP other nodes reach this one at, used to advertise libp2p addresses in the member metadata.
    pub advertise_ip: std::net::IpAddr,
    /// This build's version.
    pub version: String,
    /// Copies of each block the cluster keeps (`XNODE_REPLICATION`, default 2).
    pub replication: usize,
    /// A folder whose new and changed files are added once they stop changing (`XNODE_WATCH_DIR`; none by default).
    pub watch_dir: Option<PathBuf>,
    /// Partitions blocks hash into (`XNODE_PARTITIONS`, default 65536, a power of two); the same on every member.
    pub partitions: u32,
    /// How often and how fast the scrub re-hashes the store (`XNODE_SCRUB_INTERVAL`, `XNODE_SCRUB_RATE`).
    pub scrub: crate::ScrubConfig,
    /// How long blocks other members streamed here for an add are kept when no catalog file claims them, counted
    /// from the last block of that add (`XNODE_STAGED_TTL`, default 1 h).
    pub staged_ttl: Duration,
}

/// A node's own summary, for `/api/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// The node's name.
    pub name: String,
    /// The software version.
    pub version: String,
    /// What it is busy with.
    pub phase: Phase,
    /// Bytes of blocks held.
    pub used: u64,
    /// Hard capacity in bytes (`u64::MAX`: unlimited).
    pub capacity: u64,
    /// Blocks this node holds for the cluster (pinned or kept by the allocation): the count `GET /api/v1/blocks`
    /// gives as `held.count`.
    pub blocks: u64,
    /// Blocks held besides as read cache (fetched for a read, dropped by the next collection); `used` counts them.
    pub cached_blocks: u64,
    /// Files `GET /api/v1/files` lists: the cluster's catalog, whichever members hold them, and files pinned here
    /// that it does not list yet.
    pub files: u64,
    /// Bytes the store occupies on disk.
    pub disk_bytes: u64,
    /// The replication factor: copies of each block.
    pub replication: usize,
    /// Members this node sees alive, itself included.
    pub members_alive: usize,
    /// Members this node sees dead.
    pub members_dead: usize,
    /// Partitions the layout gives this node.
    pub partitions: u64,
    /// Of those, the ones whose every leaf it keeps.
    pub partitions_complete: u64,
    /// Partitions it no longer must hold but still keeps copies of, until their holders show they have them.
    pub partitions_surplus: u64,
    /// The scrub's progress and the corrupted copies found and repaired.
    pub scrub: crate::ScrubStatus,
}

/// A catalog file and how well the cluster keeps it, for the API and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileHealth {
    /// The file's root CID.
    pub root: String,
    /// Its name as added.
    pub name: String,
    /// Its content size in bytes.
    pub size: u64,
    /// When it was added, seconds since the Unix epoch.
    pub added_at: u64,
    /// The name of the member that added it.
    pub added_by: String,
    /// Blocks in its DAG.
    pub blocks: u64,
    /// Blocks held by all the nodes placement gives them to.
    pub at_rf: u64,
    /// Blocks with fewer live copies than the replication factor (but at least one).
    pub under_replicated: u64,
    /// Blocks no live member holds.
    pub missing: u64,
}

/// What the allocation loop wants: blocks placement gives this node that it does not hold yet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Wanted {
    /// How many blocks are wanted in all.
    pub count: u64,
    /// The first wanted blocks (at most the limit asked for), as CID strings.
    pub cids: Vec<String>,
}

/// A running node. Cheap to share (`Arc`), stopped with [`Node::stop`].
pub struct Node {
    name: String,
    repo: Repo,
    /// Taken out by [`Node::stop`] to leave the cluster; `None` afterwards.
    membership: std::sync::RwLock<Option<Membership>>,
    meta: tokio::sync::Mutex<MemberMeta>,
    refresher: std::sync::Mutex<Option<JoinHandle<()>>>,
    stop: CancellationToken,
    starts_alone: bool,
    p2p: tokio::sync::Mutex<Option<xnode_p2p::Node>>,
    client: Client,
    net_sink: Arc<NetSink>,
    /// The catalog (the merged logs). A std mutex: held for in-memory reads and appends; its disk writes are
    /// sled's (buffered), flushed outside the lock.
    catalog: std::sync::Mutex<xnode_catalog::Catalog>,
    /// What the allocation task last found; it owns the allocation state and publishes this after each round.
    report: tokio::sync::watch::Sender<crate::alloc::Report>,
    /// The identity key, to sign this node's catalog entries.
    key: libp2p_identity::Keypair,
    replication: usize,
    /// Bumped whenever the catalog grows.
    catalog_version: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever the allocation loop publishes new file health, so watchers (the dashboard's timeline) see
    /// every report, not only those still current when they happen to look.
    health_version: tokio::sync::watch::Sender<u64>,
    /// Copies this node no longer has though the allocation task counts them (found corrupt and dropped by a scrub
    /// or a read): the task drains this at once and fetches them again. See [`Node::copy_lost`].
    lost: tokio::sync::mpsc::UnboundedSender<cid::Cid>,
    /// When the allocation loop and the blocking pool last showed progress (`/readyz`, the gossiped `stuck`).
    liveness: std::sync::Mutex<Liveness>,
    /// The repair task's handle: reads and the Bitswap server report corrupted copies through it.
    integrity: crate::scrub::Integrity,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the store and joins the cluster. Cancelling `shutdown` stops the background work; call
    /// [`Node::stop`] to leave the cluster politely and flush the store.
    pub async fn start(config: NodeConfig, shutdown: CancellationToken) -> Result<Arc<Node>, InstanceError> {
        let store_config = config.store;
        let data_dir = config.data_dir.clone();
        let repo = tokio::task::spawn_blocking(move || Repo::open(&data_dir, store_config))
            .await
            .expect("opening the store does not panic")?;
        let stats = repo.stats()?;
        let key = xnode_p2p::identity::load_or_create(&config.p2p.identity_file)?;
        let catalog_dir = config.data_dir.join("catalog");
        let catalog = tokio::task::spawn_blocking(move || xnode_catalog::Catalog::open(&catalog_dir))
            .await
            .expect("opening the catalog does not panic")?;
        let net_sink = Arc::new(NetSink::new(repo.store().clone()));
        let held = Arc::new(crate::alloc::HeldDigests::new(config.partitions, repo.store().clone()));
        // Cluster protocols answer only members by authenticated gossip (see `bind_members`), never a peer that
        // merely announces our group.
        let p2p_config = xnode_p2p::P2pConfig { bind_to_membership: true, ..config.p2p.clone() };
        let (integrity, repairs) = crate::scrub::channel(config.scrub);
        let p2p = xnode_p2p::Node::spawn(
            p2p_config,
            xnode_bitswap::Config::default(),
            Arc::new(StoreBlocks { store: repo.store().clone(), integrity: integrity.clone() }),
            // Placeholder until the allocation side answers placement evidence (issue 12).
            held.clone(),
            net_sink.clone(),
            Arc::new(crate::ingest::StagingStore { store: repo.store().clone() }),
        )
        .await?;
        let client = p2p.client();
        let p2p_addrs = advertised_addrs(&client, config.advertise_ip).await;
        let meta = MemberMeta {
            name: config.gossip.node_name.clone(),
            peer_id: client.peer_id().to_string(),
            p2p_addrs,
            api_url: config.api_url.clone(),
            capacity: stats.capacity,
            used: stats.bytes_held,
            blocks: stats.blocks,
            phase: Phase::LookingForPeers.as_str().to_string(),
            version: config.version.clone(),
            wanted: 0,
            under_replicated: 0,
            catalog: String::new(),
            share: String::new(),
            stuck: String::new(),
        };
        let starts_alone = config.gossip.seeds.is_empty();
        let (lost, lost_rx) = tokio::sync::mpsc::unbounded_channel();
        // Membership gets its own token: it must outlive `shutdown` long enough to announce the leave in `stop`.
        let membership = Membership::start(config.gossip, meta.clone(), CancellationToken::new()).await?;
        let node = Arc::new(Node {
            name: membership.name().to_string(),
            repo,
            membership: std::sync::RwLock::new(Some(membership)),
            meta: tokio::sync::Mutex::new(meta),
            refresher: std::sync::Mutex::new(None),
            stop: shutdown.child_token(),
            starts_alone,
            p2p: tokio::sync::Mutex::new(Some(p2p)),
            client,
            net_sink,
            catalog: std::sync::Mutex::new(catalog),
            report: tokio::sync::watch::Sender::new(crate::alloc::Report::default()),
            key,
            replication: config.replication.max(1),
            catalog_version: tokio::sync::watch::Sender::new(0),
            health_version: tokio::sync::watch::Sender::new(0),
            lost,
            liveness: std::sync::Mutex::new(Liveness::new(std::time::Instant::now())),
            integrity,
        });
        tokio::spawn(crate::scrub::run(
            Arc::downgrade(&node),
            node.repo.store().clone(),
            node.integrity.clone(),
            repairs,
            config.scrub,
            node.stop.clone(),
        ));
        let alloc_config = crate::alloc::AllocConfig {
            replication: node.replication,
            partitions: config.partitions,
            staged_ttl: config.staged_ttl,
        };
        tokio::spawn(crate::alloc::run(Arc::downgrade(&node), alloc_config, held, lost_rx, node.stop.clone()));
        if let Some(dir) = config.watch_dir.clone() {
            tokio::spawn(crate::watch::run(Arc::downgrade(&node), dir, WATCH_INTERVAL, node.stop.clone()));
        }
        tokio::spawn(dial_members(Arc::downgrade(&node), node.stop.clone()));
        tokio::spawn(bind_members(Arc::downgrade(&node), node.stop.clone()));
        tokio::spawn(probe_blocking(Arc::downgrade(&node), node.stop.clone()));
        let task = tokio::spawn(refresh_meta(Arc::downgrade(&node), node.stop.clone()));
        *node.refresher.lock().expect("not poisoned") = Some(task);
        Ok(node)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The membership view, shared (cheap: the hot paths of the allocation round and the timeline read it every
    /// second). Empty once the node has left.
    pub fn view(&self) -> Arc<Vec<Member>> {
        self.membership.read().expect("not poisoned").as_ref().map(Membership::view).unwrap_or_default()
    }

    /// A receiver of the membership view that changes whenever a member's state or metadata does (`None` once the
    /// node has left the cluster).
    pub(crate) fn members_watch(&self) -> Option<tokio::sync::watch::Receiver<Arc<Vec<Member>>>> {
        self.membership.read().expect("not poisoned").as_ref().map(Membership::watch)
    }

    /// Gossip traffic since the node started: datagrams and bytes sent and received, and those dropped because they
    /// did not open with the cluster secret or were replays (all zero once the node has left).
    pub fn gossip_traffic(&self) -> xnode_gossip::Traffic {
        self.membership.read().expect("not poisoned").as_ref().map(Membership::traffic).unwrap_or_default()
    }

    /// The local store.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The membership view, this node included.
    pub fn members(&self) -> Vec<Member> {
        let mut members = self.view().as_ref().clone();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }

    /// Whether this node has joined a cluster: it sees another live member, or it was told to start alone.
    pub fn joined(&self) -> bool {
        self.view().iter().any(|m| !m.is_self && m.state == MemberState::Alive)
    }

    /// Whether this node was configured without seeds, i.e. to start a new cluster.
    pub fn starts_alone(&self) -> bool {
        self.starts_alone
    }

    /// The error that made membership give up (e.g. another live node uses our name), if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.membership.read().expect("not poisoned").as_ref().and_then(Membership::fatal_error).map(|e| e.to_string())
    }

    /// Store figures.
    pub fn store_stats(&self) -> Result<StoreStats, InstanceError> {
        self.repo.stats()
    }

    /// The node's summary.
    pub async fn status(&self) -> Result<NodeStatus, InstanceError> {
        let repo = self.repo.clone();
        // One truth with `/api/v1/blocks`: the blocks kept for the cluster (the store keeps their count, so a
        // status never scans the index).
        let (stats, pins) =
            tokio::task::spawn_blocking(move || -> Result<_, InstanceError> { Ok((repo.stats()?, repo.pins()?)) })
                .await
                .expect("stats does not panic")?;
        // As `GET /api/v1/files` lists them: the catalog's files, and files pinned here it does not list yet.
        let mut roots: std::collections::HashSet<Cid> = self.catalog_files().into_iter().map(|f| f.root).collect();
        roots.extend(pins.into_iter().map(|p| p.root));
        let files = roots.len() as u64;
        let members = self.view();
        let count = |s| members.iter().filter(|m| m.state == s).count();
        let phase = self.phase();
        let (partitions, partitions_complete, partitions_surplus) = {
            let r = self.report.borrow();
            (r.partitions_mine, r.partitions_complete, r.partitions_surplus)
        };
        Ok(NodeStatus {
            name: self.name().to_string(),
            version: self.meta.lock().await.version.clone(),
            phase,
            used: stats.bytes_held,
            capacity: stats.capacity,
            blocks: stats.needed_blocks,
            cached_blocks: stats.blocks.saturating_sub(stats.needed_blocks),
            files,
            disk_bytes: stats.disk_bytes,
            replication: self.replication,
            members_alive: count(MemberState::Alive),
            members_dead: count(MemberState::Dead),
            partitions,
            partitions_complete,
            partitions_surplus,
            scrub: self.integrity.status(),
        })
    }

    /// The scrub's progress and the corrupted copies found and repaired since the start.
    pub fn scrub_status(&self) -> crate::ScrubStatus {
        self.integrity.status()
    }

    /// What the node is busy with: looking for peers until it joins (or was told to start alone), then what the
    /// last allocation round did.
    pub fn phase(&self) -> Phase {
        if !self.joined() && !self.starts_alone {
            return Phase::LookingForPeers;
        }
        self.report.borrow().phase.unwrap_or(Phase::FetchingMetadata)
    }

    /// The replication factor.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// The catalog's files (what every node of the cluster can read).
    pub fn catalog_files(&self) -> Vec<xnode_catalog::FileRecord> {
        self.catalog.lock().expect("not poisoned").state().files()
    }

    /// Entries of `author`'s catalog log this node has.
    pub(crate) fn catalog_len_of(&self, author: &PeerId) -> u64 {
        self.catalog.lock().expect("not poisoned").state().len_of(author)
    }

    /// Whether the catalog ever listed `root` (added or removed).
    pub(crate) fn catalog_mentions(&self, root: &Cid) -> bool {
        self.catalog.lock().expect("not poisoned").state().mentions(root)
    }

    /// Whether a local pin should be published: the catalog does not list it, and did not remove it after it was
    /// pinned.
    pub(crate) fn catalog_should_publish(&self, pin: &xnode_storage::Pin) -> bool {
        let catalog = self.catalog.lock().expect("not poisoned");
        let state = catalog.state();
        let listed = state.files().iter().any(|f| f.root == pin.root);
        let removed_later = state.removed_at(&pin.root).is_some_and(|t| t >= pin.added_at * 1000);
        !listed && !removed_later
    }

    /// Applies fetched entries of one log, oldest first; returns those applied (to store) and whether all were.
    pub(crate) async fn apply_catalog(&self, chain: Vec<(Cid, Bytes)>) -> (Vec<(Cid, Bytes)>, bool) {
        let mut applied = Vec::new();
        let mut complete = true;
        let authors = self.catalog_authors();
        let mut changes = Vec::new();
        {
            let mut catalog = self.catalog.lock().expect("not poisoned");
            for (cid, data) in chain {
                match catalog.apply_by(&cid, &data, |author| authors.contains(author)) {
                    Ok(applied_how) => {
                        if applied_how == xnode_catalog::Applied::Appended {
                            // Verified by `apply_by`; decoded again only for the log line.
                            if let Ok(entry) = xnode_catalog::Entry::verify(&cid, &data) {
                                changes.push((entry.author, entry.op));
                            }
                        }
                        applied.push((cid, data))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog entry refused");
                        complete = false;
                        break;
                    }
                }
            }
        }
        if !changes.is_empty() {
            // By member name, as the operator knows them (a peer id only when no member gossips it).
            let members = self.members();
            for (author, op) in &changes {
                let author = author.to_string();
                let who = members.iter().find(|m| m.meta.peer_id == author).map_or(author.as_str(), |m| &m.name);
                match op {
                    xnode_catalog::Op::Add(f) => {
                        tracing::info!(member = who, root = %f.root, "catalog: {who} added {:?} ({} bytes)", f.name, f.size)
                    }
                    xnode_catalog::Op::Remove { root, admin } => {
                        let how = if *admin { " as the admin" } else { "" };
                        tracing::info!(member = who, %root, admin, "catalog: {who} removed {root}{how}")
                    }
                }
            }
        }
        if !applied.is_empty() {
            self.flush_catalog().await;
            self.catalog_grew();
        }
        (applied, complete)
    }

    /// Who may author catalog entries we take in: members of the cluster by authenticated gossip (in any state:
    /// a dead member's files stay listed) and the authors whose logs live members gossip heads of (a member that
    /// died before this node joined, vouched for by members that hold its log). An outsider is neither, so its
    /// entries are refused ([`xnode_catalog::CatalogState::apply_by`]); logs already held stay accepted.
    fn catalog_authors(&self) -> std::collections::HashSet<PeerId> {
        let mut authors = std::collections::HashSet::from([self.key.public().to_peer_id()]);
        for m in self.view().iter() {
            authors.extend(m.meta.peer_id.parse::<PeerId>().ok());
            if m.state != MemberState::Alive || m.is_self {
                continue;
            }
            let heads: std::collections::BTreeMap<String, serde_json::Value> =
                serde_json::from_str(&m.meta.catalog).unwrap_or_default();
            authors.extend(heads.keys().filter_map(|k| k.parse::<PeerId>().ok()));
        }
        authors
    }

    async fn flush_catalog(&self) {
        // sled's flush is an fsync: never under the catalog lock, never on the async threads.
        let tree = self.catalog.lock().expect("not poisoned").flush_handle();
        let _ = tokio::task::spawn_blocking(move || tree.flush()).await;
    }

    /// Tells the allocation task that this node's copy of `cid` is gone (it was found corrupt and removed from the
    /// store): the task stops counting it as held, so the partition is incomplete again and the block is fetched
    /// from a member that holds a good copy, and health shows the missing copy until then. Call it once per copy, and
    /// only for a block the store kept (not a read-cache copy) and has now removed.
    pub fn copy_lost(&self, cid: cid::Cid) {
        // The task is gone only when the node stops; nothing is left to repair then.
        let _ = self.lost.send(cid);
    }

    /// Hands `cid` to the repair task if this node's copy is corrupt (it is quarantined and replaced by a good copy
    /// from a member); nothing if the store simply lacks it. Checks on a blocking thread.
    pub(crate) fn report_if_corrupt(&self, cid: cid::Cid) {
        let store = self.repo.store().clone();
        let integrity = self.integrity.clone();
        tokio::task::spawn_blocking(move || {
            if matches!(store.get(&cid), Err(xnode_storage::StoreError::Corrupted { .. })) {
                integrity.corrupt(cid, crate::scrub::Finder::Read);
            }
        });
    }

    pub(crate) fn set_report(&self, report: crate::alloc::Report) {
        self.liveness.lock().expect("not poisoned").report_at = std::time::Instant::now();
        let new_health = !Arc::ptr_eq(&self.report.borrow().health, &report.health);
        self.report.send_replace(report);
        if new_health {
            self.health_version.send_modify(|v| *v += 1);
        }
    }

    /// A receiver that changes whenever the allocation loop publishes new file health ([`Node::files_health`]).
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health_version.subscribe()
    }

    /// Why this node is stuck (its allocation loop has not reported for [`ALLOCATION_STALL`], or blocking work,
    /// which the API's reads and writes need, has not run for [`BLOCKING_STALL`]); `None` while it makes
    /// progress. `/readyz` answers 503 with it, and it is gossiped (`MemberMeta::stuck`).
    pub fn stuck(&self) -> Option<String> {
        self.liveness.lock().expect("not poisoned").verdict(std::time::Instant::now())
    }

    fn heads_json(&self) -> String {
        crate::alloc::heads_json(&self.catalog.lock().expect("not poisoned").state().heads())
    }

    /// A receiver that changes whenever the catalog grows (entries of any author).
    pub fn catalog_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.catalog_version.subscribe()
    }

    pub(crate) fn catalog_grew(&self) {
        self.catalog_version.send_modify(|v| *v += 1);
    }

    /// Appends an entry to this node's catalog log, stores its block (so peers can fetch it) and gossips the new
    /// head at once.
    pub(crate) async fn append_catalog(self: &Arc<Self>, op: xnode_catalog::Op) -> Result<(), InstanceError> {
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let (cid, bytes) = self.catalog.lock().expect("not poisoned").append(&self.key, op, at_ms as u64)?;
        let store = self.repo.store().clone();
        tokio::task::spawn_blocking(move || -> Result<(), InstanceError> {
            let mut w = store.cached_writer();
            w.put(&cid, &bytes)?;
            w.commit(None)?;
            store.keep(&[cid])?;
            Ok(())
        })
        .await
        .expect("storing an entry does not panic")?;
        self.catalog_grew();
        self.publish_meta().await;
        Ok(())
    }

    /// Removes a file from the cluster: a removal entry in the catalog (every node then drops its copies) and the
    /// local pin, if any. Callers hold the admin token (the API's `DELETE`): when another member added the file,
    /// the entry is an admin removal, which takes every member's add and which the log records as such; a plain
    /// removal takes only this node's own adds (docs/security.md, "Catalog authorship").
    pub async fn remove_file(self: &Arc<Self>, root: Cid) -> Result<xnode_storage::UnpinStats, InstanceError> {
        let listed = self.catalog_files().iter().any(|f| f.root == root);
        let admin = {
            let me = self.key.public().to_peer_id();
            self.catalog.lock().expect("not poisoned").state().added_by_others(&root, &me)
        };
        let repo = self.repo.clone();
        let pinned = tokio::task::spawn_blocking(move || repo.store().pin(&root)).await.expect("no panic")?.is_some();
        if !listed && !pinned {
            return Err(InstanceError::Store(xnode_storage::StoreError::NotPinned { root }));
        }
        if admin {
            tracing::info!(%root, "admin removal of a file other members added");
        }
        self.append_catalog(xnode_catalog::Op::Remove { root, admin }).await?;
        if !pinned {
            return Ok(xnode_storage::UnpinStats::default());
        }
        let repo = self.repo.clone();
        tokio::task::spawn_blocking(move || repo.remove(&root)).await.expect("no panic")
    }

    /// Gossips the node's current figures now (the refresher also does so every second).
    pub(crate) async fn publish_meta(&self) {
        // In-memory counters (no disk walk, no blocking thread: a wedged blocking pool must not keep the node from
        // saying it is stuck).
        let stats = self.repo.store().usage();
        let mut meta = self.meta.lock().await;
        let mut next = meta.clone();
        next.capacity = stats.capacity;
        next.used = stats.bytes_held;
        next.blocks = stats.blocks;
        next.stuck = self.stuck().unwrap_or_default();
        next.phase = self.phase().as_str().to_string();
        {
            let report = self.report.borrow();
            next.wanted = report.wanted_count;
            next.under_replicated = report.under_replicated;
            next.share = report.share.clone();
        }
        next.catalog = self.heads_json();
        if next != *meta {
            let handle = self.membership.read().expect("not poisoned").as_ref().map(Membership::meta_setter);
            let Some(setter) = handle else { return };
            if let Err(e) = setter.set(next.clone()).await {
                tracing::warn!(error = %e, "could not gossip updated metadata");
                return;
            }
            *meta = next;
        }
    }

    /// What removing the catalog file `root` would free in the cluster: its blocks that no other catalog file
    /// lists, from the allocation index (`None` while the file is not indexed yet, or before the node has a
    /// partition layout).
    pub async fn freed_by(&self, root: Cid) -> Result<Option<crate::allocation_index::Exclusive>, InstanceError> {
        let Some(layout) = self.layout() else { return Ok(None) };
        let partitions = layout.partitions();
        let store = self.repo.store().clone();
        let kept: std::collections::HashSet<Cid> = self.catalog_files().into_iter().map(|f| f.root).collect();
        tokio::task::spawn_blocking(move || -> Result<_, InstanceError> {
            let index_error = |e: crate::allocation_index::IndexError| InstanceError::BadUpload(e.to_string());
            let index = crate::allocation_index::Index::existing(store.tree("alloc")?, partitions);
            let Some(index) = index.map_err(index_error)? else { return Ok(None) };
            index.exclusive_to(&root, &kept).map_err(index_error)
        })
        .await
        .expect("reading the index does not panic")
    }

    /// The catalog's files with their replication health, as of the last allocation round.
    pub fn files_health(&self) -> Arc<Vec<FileHealth>> {
        self.report.borrow().health.clone()
    }

    /// Blocks this node should hold and does not yet; at most `limit` CIDs are listed.
    pub fn wanted(&self, limit: usize) -> Wanted {
        let report = self.report.borrow();
        Wanted { count: report.wanted_count, cids: report.wanted.iter().take(limit).map(|c| c.to_string()).collect() }
    }

    /// Blocks this node holds for the cluster (pinned or kept by the allocation; read caches excluded), at most
    /// `limit` of them as CID strings, and how many there are in all.
    /// `after` pages: only CIDs after it in index order are listed.
    pub fn held(&self, limit: usize, after: Option<&Cid>) -> Result<(u64, Vec<String>), InstanceError> {
        let (count, cids) = self.repo.store().needed_blocks(limit, after)?;
        Ok((count, cids.into_iter().map(|c| c.to_string()).collect()))
    }

    /// Adds what `import` produces (a file, a directory, a tar upload; see [`crate::import_stream`],
    /// [`crate::import_tar`], [`crate::import_local`]) to the cluster. Once this node has a partition layout, the
    /// blocks stream to the members placement gives them to as they are made, and this answers once every leaf has
    /// its copies, after appending the file to the catalog (docs/allocation.md, "Streaming ingest"); this node
    /// needs room only for its share and the interior blocks. Before it has a layout (it has not joined yet), the
    /// whole file is stored here with a staging pin, published and handed off as before. `import` runs on a
    /// blocking thread; `T` is whatever else it returns (the entries of a directory, say).
    pub async fn add_with<T: Send + 'static>(
        self: &Arc<Self>,
        import: impl FnOnce(&mut dyn xnode_dag::BlockSink) -> Result<(xnode_dag::Added, String, T), InstanceError>
            + Send
            + 'static,
    ) -> Result<(xnode_dag::Added, T), InstanceError> {
        match self.layout() {
            Some(layout) if self.joined() || self.starts_alone() => crate::ingest::stream(self, layout, import).await,
            _ => {
                let repo = self.repo.clone();
                tokio::task::spawn_blocking(move || {
                    let mut extra = None;
                    let added = repo.store_and_pin(|sink| {
                        let (added, name, t) = import(sink)?;
                        extra = Some(t);
                        Ok((added, name))
                    })?;
                    Ok((added, extra.expect("set by a successful import")))
                })
                .await
                .expect("adding does not panic")
            }
        }
    }

    /// The partition layout the allocation task last published (`None` before the first).
    pub(crate) fn layout(&self) -> Option<Arc<xnode_placement::Layout>> {
        self.report.borrow().layout.clone()
    }

    /// The libp2p client (peer id, connections, fetches).
    pub fn net(&self) -> &Client {
        &self.client
    }

    /// Fetches the blocks of the DAG under `root` that the store lacks from the network (verified block by block).
    /// With self-allocation a node holds a file's interior blocks but only its share of the leaves, so the whole
    /// DAG is checked, not just the root. Fetched blocks are kept as cache, not pinned. `None` if nothing was missing.
    pub async fn fetch(&self, root: Cid, timeout: Duration) -> Result<Option<FetchStats>, InstanceError> {
        let repo = self.repo.clone();
        let complete =
            tokio::task::spawn_blocking(move || repo.is_complete(&root)).await.expect("walking does not panic")?;
        if complete {
            return Ok(None);
        }
        Ok(Some(fetch_and_commit(&self.client, &self.net_sink, root, timeout).await?))
    }

    /// Opens the DAG under `root` for reading while the blocks the store lacks are fetched (a download of a file
    /// held elsewhere streams from its first block on), and says what it is. The fetch starts at the first block
    /// missing here and covers the whole DAG, which is then kept as cache as [`Node::fetch`] keeps it; `timeout`
    /// is for the whole DAG. Fails as [`Node::fetch`] does when the root itself does not arrive in time; a block
    /// missing later fails the read of that block, with the same error.
    pub async fn open_streaming(
        &self,
        root: Cid,
        timeout: Duration,
    ) -> Result<(FetchingSource, NodeKind), InstanceError> {
        // A full store makes room for the read by evicting read caches (blocks kept from earlier reads, needed by
        // no pin and no allocation) first; what still does not fit streams from memory and is not kept. Only while
        // no other download streams: its fetched blocks are read cache too, and it still needs them.
        if self.net_sink.idle() {
            let store = self.repo.store().clone();
            let _ = tokio::task::spawn_blocking(move || {
                let free = store.stats().map(|s| s.free).unwrap_or(u64::MAX);
                if free < READ_ROOM {
                    if let Ok(gc) = store.gc() {
                        if gc.blocks_deleted > 0 {
                            tracing::info!(
                                blocks = gc.blocks_deleted,
                                bytes = gc.bytes_freed,
                                "evicted read cache to make room for a read"
                            );
                        }
                    }
                }
            })
            .await;
        }
        let (client, sink) = (self.client.clone(), self.net_sink.clone());
        let start: crate::fetched::StartFetch = Box::new(move || {
            Box::pin(async move {
                match fetch_and_commit(&client, &sink, root, timeout).await {
                    Ok(stats) => {
                        tracing::info!(%root, blocks = stats.blocks_fetched, bytes = stats.bytes_fetched, peers = stats.per_peer.len(), "fetched from the network while streaming");
                        Ok(())
                    }
                    Err(InstanceError::P2p(e)) => Err(e),
                    // The blocks arrived but could not be committed: they are not stored.
                    Err(e) => Err(P2pError::Sink { cid: root, reason: format!("committing fetched blocks: {e}") }),
                }
            })
        });
        let source = FetchingSource::new(self.repo.store().clone(), self.net_sink.clone(), start)
            .with_repair(self.integrity.clone());
        // Waiting for the root holds no thread (a CID that exists nowhere waits the whole timeout); once it is
        // here, or the fetch failed, reading it on a blocking thread takes no time.
        if let Err(e) = source.wait_for(&root).await {
            return Err(e.into());
        }
        let (source, kind) = tokio::task::spawn_blocking(move || {
            let kind = xnode_dag::stat(&source, &root);
            (source, kind)
        })
        .await
        .expect("stat does not panic");
        match kind {
            Ok(kind) => Ok((source, kind)),
            Err(e) => Err(source.failure().map_or_else(|| e.into(), InstanceError::P2p)),
        }
    }

    /// The entries of the directory `root` with what each is, reading as [`Node::open_streaming`] does: the fetch
    /// of what this node lacks starts on the first missing block and goes on (as cache) after the listing returns,
    /// which needs only the directory's blocks and each entry's root.
    pub async fn list_streaming(
        &self,
        root: Cid,
        timeout: Duration,
    ) -> Result<Vec<(xnode_dag::DirEntry, NodeKind)>, InstanceError> {
        let (source, _) = self.open_streaming(root, timeout).await?;
        tokio::task::spawn_blocking(move || {
            let listed = xnode_dag::list_directory(&source, &root).and_then(|entries| {
                entries
                    .into_iter()
                    .map(|e| xnode_dag::stat(&source, &e.cid).map(|kind| (e, kind)))
                    .collect::<Result<Vec<_>, _>>()
            });
            listed.map_err(|e| source.failure().map_or_else(|| e.into(), InstanceError::P2p))
        })
        .await
        .expect("listing does not panic")
    }

    /// Announces a stored root in the DHT (best effort: a node without DHT peers just keeps it queued).
    pub async fn provide(&self, root: Cid) {
        if let Err(e) = self.client.provide(root).await {
            tracing::debug!(%root, error = %e, "could not announce a provider record");
        }
    }

    /// Leaves the cluster (others see "left", not "dead"), stops background work and flushes the store.
    pub async fn stop(&self) -> Result<(), InstanceError> {
        self.stop.cancel();
        let task = self.refresher.lock().expect("not poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let membership = self.membership.write().expect("not poisoned").take();
        if let Some(membership) = membership {
            membership.leave().await?;
        }
        if let Some(p2p) = self.p2p.lock().await.take() {
            p2p.shutdown().await;
        }
        let sink = self.net_sink.clone();
        tokio::task::spawn_blocking(move || sink.commit()).await.expect("commit does not panic")?;
        let repo = self.repo.clone();
        tokio::task::spawn_blocking(move || repo.store().flush()).await.expect("flush does not panic")?;
        Ok(())
    }
}

/// Keeps the gossiped metadata in step with the store and the phase.
async fn refresh_meta(node: std::sync::Weak<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(META_REFRESH) => {}
        }
        let Some(node) = node.upgrade() else { return };
        node.publish_meta().await;
    }
}

/// The store as Bitswap sees it: index lookups, and checked reads both for retrieval's walk of blocks held here
/// and for the server. The server checks what it sends (one SHA-256 per block, about 1.5 GB/s per core with the
/// CPU's SHA extensions) so that a copy corrupted on our disk is never sent: a receiver would take us for a liar.
/// A corrupted copy is reported for repair instead and answered "don't have", so the asker goes to another holder.
struct StoreBlocks {
    store: Store,
    integrity: crate::scrub::Integrity,
}

impl StoreBlocks {
    fn checked(&self, cid: &Cid, finder: crate::scrub::Finder) -> Option<Bytes> {
        match self.store.get(cid) {
            Ok(data) => data,
            Err(xnode_storage::StoreError::Corrupted { cid }) => {
                self.integrity.corrupt(cid, finder);
                None
            }
            Err(_) => None,
        }
    }
}

impl xnode_bitswap::BlockStore for StoreBlocks {
    fn has(&self, cid: &Cid) -> bool {
        self.store.has(cid).unwrap_or(false)
    }

    fn get(&self, cid: &Cid) -> Option<Bytes> {
        self.checked(cid, crate::scrub::Finder::Read)
    }

    fn read_to_send(&self, cid: &Cid) -> Option<Bytes> {
        self.checked(cid, crate::scrub::Finder::Serve)
    }
}

/// `/ip4/<advertised ip>/tcp|udp/<bound port>/.../p2p/<id>` for each listener: the addresses other members dial.
async fn advertised_addrs(client: &Client, ip: std::net::IpAddr) -> Vec<String> {
    use xnode_p2p::Multiaddr;
    let peer = client.peer_id();
    let mut out = Vec::new();
    for addr in client.listen_addrs().await.unwrap_or_default() {
        let mut rebuilt = Multiaddr::empty();
        for proto in addr.iter() {
            match proto {
                libp2p_proto::Ip4(_) | libp2p_proto::Ip6(_) => rebuilt.push(match ip {
                    std::net::IpAddr::V4(v4) => libp2p_proto::Ip4(v4),
                    std::net::IpAddr::V6(v6) => libp2p_proto::Ip6(v6),
                }),
                libp2p_proto::P2p(_) => {}
                other => rebuilt.push(other),
            }
        }
        rebuilt.push(libp2p_proto::P2p(peer));
        let s = rebuilt.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

use xnode_p2p::multiaddr::Protocol as libp2p_proto;

/// Runs a no-op on a blocking thread every [`PROBE_EVERY`] and records when one finished ([`Liveness`]). At most
/// one probe waits at a time, so a wedged pool does not pile them up.
async fn probe_blocking(node: std::sync::Weak<Node>, stop: CancellationToken) {
    loop {
        let probe = tokio::task::spawn_blocking(std::time::Instant::now);
        tokio::select! {
            () = stop.cancelled() => return,
            ran = probe => {
                let Ok(at) = ran else { return };
                let Some(node) = node.upgrade() else { return };
                node.liveness.lock().expect("not poisoned").probe_at = at;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// Tells the swarm who the cluster's live members are, by peer id from their sealed gossip metadata, whenever the
/// view changes: the swarm answers holdings requests (and, without public Bitswap, swaps blocks) only with them.
async fn bind_members(node: std::sync::Weak<Node>, stop: CancellationToken) {
    let Some(mut view) = node.upgrade().and_then(|n| n.members_watch()) else { return };
    loop {
        let peers: std::collections::HashSet<PeerId> = view
            .borrow_and_update()
            .iter()
            .filter(|m| !m.is_self && m.state == MemberState::Alive)
            .filter_map(|m| m.meta.peer_id.parse().ok())
            .collect();
        {
            let Some(node) = node.upgrade() else { return };
            if node.client.set_members(peers).await.is_err() {
                return; // the swarm stopped
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}

/// Connects to members learned through gossip, so blocks can flow between every pair of live members.
async fn dial_members(node: std::sync::Weak<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DIAL_MEMBERS) => {}
        }
        let Some(node) = node.upgrade() else { return };
        let connected = node.client.connected_peers().await.unwrap_or_default();
        for m in node.view().iter() {
            if m.is_self || m.state != MemberState::Alive {
                continue;
            }
            let Ok(peer) = m.meta.peer_id.parse::<PeerId>() else { continue };
            if connected.contains(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = m.meta.p2p_addrs.iter().filter_map(|a| a.parse().ok()).collect();
            if let Err(e) = node.client.dial(peer, addrs).await {
                tracing::debug!(member = %m.name, error = %e, "could not dial member");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_node_is_stuck_when_allocation_or_blocking_work_stops_moving() {
        let t0 = Instant::now();
        let mut live = Liveness::new(t0);
        assert_eq!(live.verdict(t0), None);
        // Busy but moving: reports and probes keep coming.
        for s in (2..600).step_by(2) {
            let now = t0 + Duration::from_secs(s);
            live.report_at = now;
            live.probe_at = now;
            assert_eq!(live.verdict(now + Duration::from_secs(1)), None, "at {s} s");
        }
        let t1 = t0 + Duration::from_secs(600);
        // The allocation loop stops reporting; blocking work still runs.
        live.report_at = t1;
        for s in (0..300).step_by(5) {
            live.probe_at = t1 + Duration::from_secs(s);
            let verdict = live.verdict(t1 + Duration::from_secs(s));
            assert_eq!(verdict.is_some(), s >= ALLOCATION_STALL.as_secs(), "{s} s without a report: {verdict:?}");
        }
        let v = live.verdict(t1 + Duration::from_secs(299)).unwrap();
        assert!(v.contains("allocation") && v.contains("299 s"), "{v}");
        // Blocking work wedges while allocation still reports (it reports from its own task).
        let t2 = t1 + Duration::from_secs(1000);
        live.report_at = t2;
        live.probe_at = t2;
        assert_eq!(live.verdict(t2 + BLOCKING_STALL - Duration::from_millis(1)), None);
        let v = live.verdict(t2 + BLOCKING_STALL).unwrap();
        assert!(v.contains("blocking work") && v.contains("API"), "{v}");
        // A clock reading older than the last report (another thread recorded after `now` was read) is not stuck.
        assert_eq!(live.verdict(t2 - Duration::from_secs(5)), None);
    }

    /// The probe task moves `probe_at` while the pool runs, and stops moving it once every blocking thread is
    /// taken: the verdict then names blocking work.
    #[test]
    fn the_probe_sees_a_wedged_blocking_pool() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let live = Arc::new(std::sync::Mutex::new(Liveness::new(Instant::now() - Duration::from_secs(60))));
            let probe = |live: Arc<std::sync::Mutex<Liveness>>| async move {
                let at = tokio::task::spawn_blocking(Instant::now).await.unwrap();
                live.lock().unwrap().probe_at = at;
            };
            tokio::time::timeout(Duration::from_secs(5), probe(live.clone())).await.expect("a free pool runs it");
            assert!(live.lock().unwrap().probe_at.elapsed() < Duration::from_secs(5));
            // Wedge both blocking threads.
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let wait = Arc::new(std::sync::Mutex::new(wait));
            for _ in 0..2 {
                let wait = wait.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(30));
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let before = live.lock().unwrap().probe_at;
            let wedged = tokio::time::timeout(Duration::from_millis(500), probe(live.clone())).await;
            assert!(wedged.is_err(), "the probe cannot run while every blocking thread is taken");
            assert_eq!(live.lock().unwrap().probe_at, before);
            let v = live.lock().unwrap().verdict(before + BLOCKING_STALL).unwrap();
            assert!(v.contains("blocking work"), "{v}");
            drop(release);
        });
    }
}
