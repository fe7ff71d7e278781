//! The running node: its store, its membership in the cluster, and what it tells the others about itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xnode_gossip::{GossipConfig, Member, MemberMeta, MemberState, Membership};
use xnode_storage::{StoreConfig, StoreStats};

use crate::{InstanceError, Repo};

/// How often the node re-reads its store figures and gossips them if they changed.
const META_REFRESH: Duration = Duration::from_secs(1);

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
    /// libp2p multiaddrs to advertise (empty until the libp2p node exists).
    pub p2p_addrs: Vec<String>,
    /// This build's version.
    pub version: String,
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
    /// Blocks held.
    pub blocks: u64,
    /// Files pinned locally.
    pub files: u64,
    /// Bytes the store occupies on disk.
    pub disk_bytes: u64,
    /// Members this node sees alive, itself included.
    pub members_alive: usize,
    /// Members this node sees dead.
    pub members_dead: usize,
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
        let meta = MemberMeta {
            name: config.gossip.node_name.clone(),
            peer_id: String::new(),
            p2p_addrs: config.p2p_addrs.clone(),
            api_url: config.api_url.clone(),
            capacity: stats.capacity,
            used: stats.bytes_held,
            blocks: stats.blocks,
            phase: Phase::LookingForPeers.as_str().to_string(),
            version: config.version.clone(),
        };
        let starts_alone = config.gossip.seeds.is_empty();
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
        });
        let task = tokio::spawn(refresh_meta(Arc::downgrade(&node), node.stop.clone()));
        *node.refresher.lock().expect("not poisoned") = Some(task);
        Ok(node)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn view(&self) -> Vec<Member> {
        self.membership.read().expect("not poisoned").as_ref().map(Membership::members).unwrap_or_default()
    }

    /// The local store.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The membership view, this node included.
    pub fn members(&self) -> Vec<Member> {
        let mut members = self.view();
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
        let stats = tokio::task::spawn_blocking(move || repo.stats()).await.expect("stats does not panic")?;
        let members = self.view();
        let count = |s| members.iter().filter(|m| m.state == s).count();
        let phase = self.phase();
        Ok(NodeStatus {
            name: self.name().to_string(),
            version: self.meta.lock().await.version.clone(),
            phase,
            used: stats.bytes_held,
            capacity: stats.capacity,
            blocks: stats.blocks,
            files: stats.pins,
            disk_bytes: stats.disk_bytes,
            members_alive: count(MemberState::Alive),
            members_dead: count(MemberState::Dead),
        })
    }

    /// What the node is busy with. Allocation arrives with the self-allocation issue; until then a node that sees
    /// peers is seeding what it holds.
    pub fn phase(&self) -> Phase {
        if self.joined() {
            Phase::Seeding
        } else {
            Phase::LookingForPeers
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
        let repo = node.repo.clone();
        let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || repo.stats()).await else { continue };
        let mut meta = node.meta.lock().await;
        let mut next = meta.clone();
        next.capacity = stats.capacity;
        next.used = stats.bytes_held;
        next.blocks = stats.blocks;
        next.phase = node.phase().as_str().to_string();
        if next != *meta {
            let handle = node.membership.read().expect("not poisoned").as_ref().map(Membership::meta_setter);
            let Some(setter) = handle else { return };
            if let Err(e) = setter.set(next.clone()).await {
                tracing::warn!(error = %e, "could not gossip updated metadata");
                continue;
            }
            *meta = next;
        }
    }
}
