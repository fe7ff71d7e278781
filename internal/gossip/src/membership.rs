//! The [`Membership`] handle and the task behind it.
//!
//! One task owns the chitchat server handle (as rust-libp2p's event loop owns its swarm). The handle talks to it
//! through a command channel and reads the view from a `watch`, so reading `members()` never waits on gossip.
//! The task rebuilds the view whenever chitchat's live set or a node's state changes, and at every gossip
//! round, then diffs it against the previous one to publish [`MembershipEvent`]s.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::meta::{CONFLICT_KEY, STATE_ALIVE, STATE_KEY, STATE_LEFT};
use crate::network::{self, Network, Traffic, TrafficCounters};
use crate::view::{self, Conflict, Incarnation, Member, MemberState, MembershipEvent};
use crate::{GossipConfig, GossipError, MemberMeta};

/// How many events a slow subscriber may fall behind before it sees `RecvError::Lagged`.
const EVENT_BUFFER: usize = 1024;

/// A running membership: this node's view of the cluster and its voice in it.
///
/// Dropping it leaves the cluster politely in the background; prefer [`Membership::leave`], which waits.
pub struct Membership {
    name: String,
    generation: u64,
    gossip_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<Vec<Member>>>,
    events: broadcast::Sender<MembershipEvent>,
    fatal: watch::Receiver<Option<GossipError>>,
    traffic: Arc<TrafficCounters>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Updates this node's metadata without holding the [`Membership`] (e.g. from a periodic task).
#[derive(Clone)]
pub struct MetaSetter {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for MetaSetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaSetter").finish_non_exhaustive()
    }
}

impl MetaSetter {
    /// Replaces this node's metadata; only the fields that changed are gossiped.
    pub async fn set(&self, meta: MemberMeta) -> Result<(), GossipError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::SetMeta(meta, tx)).await.map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }
}

enum Command {
    SetMeta(MemberMeta, oneshot::Sender<()>),
}

impl Membership {
    /// Joins (or starts) the cluster over plain UDP. Returns once the socket is bound; joining goes on in the
    /// background. Cancelling `shutdown` leaves the cluster politely, as SIGTERM should.
    pub async fn start(
        config: GossipConfig,
        meta: MemberMeta,
        shutdown: CancellationToken,
    ) -> Result<Membership, GossipError> {
        Self::start_on(config, meta, &Network::udp(), shutdown).await
    }

    /// Like [`Membership::start`], over a given [`Network`] (tests and benchmarks inject loss and cut links).
    pub async fn start_on(
        config: GossipConfig,
        meta: MemberMeta,
        network: &Network,
        shutdown: CancellationToken,
    ) -> Result<Membership, GossipError> {
        validate(&config)?;
        let traffic = Arc::new(TrafficCounters::default());
        let (local, transport) = network::open(network, config.listen_addr, traffic.clone(), config.keyring.clone())
            .await
            .map_err(|e| GossipError::Bind { addr: config.listen_addr, reason: format!("{e:#}") })?;
        let gossip_addr = advertised(&config, local)?;
        let generation = next_generation();
        let chitchat_id = ChitchatId::new(config.node_name.clone(), generation, gossip_addr);
        let seeds: Vec<String> =
            config.seeds.iter().filter(|s| !s.trim().is_empty()).map(|s| with_port(s.trim(), local.port())).collect();
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.group.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: local,
            seed_nodes: seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                // About 40 s of history at 200 ms rounds: long enough to be stable, short enough to adapt.
                sampling_window_size: 200,
                // A gap longer than this is an outage, not a sample of normal jitter.
                max_interval: Duration::from_secs(10),
                // The prior for the first few samples: one round, so a newcomer is judged leniently.
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.forget_after,
            },
            marked_for_deletion_grace_period: config.forget_after,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // The compressed digest (V1). The plain one (V0) saves a zstd context per datagram but a digest names
            // every member: at N = 100 it took gossip from ~32 to 213 KiB/s per node (docs/membership.md).
            protocol_version: ProtocolVersion::V1,
        };
        let mut key_values: Vec<(String, String)> = vec![(STATE_KEY.into(), STATE_ALIVE.into())];
        key_values.extend(meta.to_key_values().into_iter().map(|(k, v)| (k.to_string(), v)));
        let chitchat = spawn_chitchat(chitchat_config, key_values, &transport)
            .await
            .map_err(|e| GossipError::Bind { addr: config.listen_addr, reason: format!("{e:#}") })?;
        info!(name = %config.node_name, generation, %gossip_addr, group = %config.group, "gossip started");

        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (view_tx, view_rx) = watch::channel(Arc::new(Vec::new()));
        let (events_tx, _) = broadcast::channel(EVENT_BUFFER);
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let stop = shutdown.child_token();
        let mut actor = Actor {
            chitchat: Some(chitchat),
            name: config.node_name.clone(),
            generation,
            gossip_addr,
            local,
            seeds,
            gossip_interval: config.gossip_interval,
            leave_linger: config.leave_linger,
            join_retry_interval: config.join_retry_interval,
            commands: commands_rx,
            view: view_tx,
            events: events_tx.clone(),
            fatal: fatal_tx,
            stop: stop.clone(),
            flagged: HashSet::new(),
            seen: Vec::new(),
        };
        // The view lists ourselves before `start` returns.
        actor.refresh().await;
        let task = tokio::spawn(actor.run());
        Ok(Membership {
            name: config.node_name,
            generation,
            gossip_addr,
            commands: commands_tx,
            view: view_rx,
            events: events_tx,
            fatal: fatal_rx,
            traffic,
            stop,
            task,
        })
    }

    /// Every known member, one per name, sorted by name, including this node.
    pub fn members(&self) -> Vec<Member> {
        self.view.borrow().as_ref().clone()
    }

    /// The current view, shared: no member is copied (a new view is a new `Arc`, so `Arc::ptr_eq` tells whether
    /// anything changed).
    pub fn view(&self) -> Arc<Vec<Member>> {
        self.view.borrow().clone()
    }

    /// The member with this name, if known.
    pub fn member(&self, name: &str) -> Option<Member> {
        self.view.borrow().iter().find(|m| m.name == name).cloned()
    }

    /// A `watch` of the whole view; it changes whenever an event is published.
    pub fn watch(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.view.clone()
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Replaces this node's metadata; only the fields that changed are gossiped.
    pub async fn set_meta(&self, meta: MemberMeta) -> Result<(), GossipError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::SetMeta(meta, tx)).await.map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// A cloneable handle for updating this node's metadata from other tasks.
    pub fn meta_setter(&self) -> MetaSetter {
        MetaSetter { commands: self.commands.clone() }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This incarnation's generation (start time in ms since the Unix epoch, unique within the process).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The address peers gossip with us at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Gossip traffic of this node since it started.
    pub fn traffic(&self) -> Traffic {
        self.traffic.snapshot()
    }

    /// The error that stopped membership, if one did (today only [`GossipError::DuplicateName`]).
    pub fn fatal_error(&self) -> Option<GossipError> {
        self.fatal.borrow().clone()
    }

    /// A `watch` that turns `Some` when membership stops on a fatal error; the binary selects on it to exit.
    pub fn watch_fatal(&self) -> watch::Receiver<Option<GossipError>> {
        self.fatal.clone()
    }

    /// Announces that this node leaves, keeps gossiping for `leave_linger` so that every member hears it, then
    /// stops. Others list the node as [`MemberState::Left`], never dead.
    pub async fn leave(mut self) -> Result<(), GossipError> {
        self.stop.cancel();
        let fatal = self.fatal.borrow().clone();
        (&mut self.task).await.map_err(|_| GossipError::Stopped)?;
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the task to end after the shutdown token was cancelled (which leaves politely); cancels it
    /// first if it was not. The same as [`Membership::leave`].
    pub async fn shutdown(self) -> Result<(), GossipError> {
        self.leave().await
    }

    /// Stops at once without a goodbye, as `kill -9` would: others will declare this node dead. For tests and
    /// benchmarks of failure detection.
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // A dropped handle must not leave a zombie member behind: leave politely in the background.
        self.stop.cancel();
    }
}

fn validate(config: &GossipConfig) -> Result<(), GossipError> {
    let bad = |m: &str| Err(GossipError::InvalidConfig(m.to_string()));
    if !crate::valid_name(&config.node_name) {
        return bad(
            "the node name (XNODE_NAME) must be 1-63 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        );
    }
    if config.group.trim().is_empty() {
        return bad("the group name (XNODE_GROUP_NAME) is empty");
    }
    if config.gossip_interval.is_zero() {
        return bad("the gossip interval must be positive");
    }
    if !config.phi_threshold.is_finite() || config.phi_threshold <= 0.0 {
        return bad("the phi threshold must be positive");
    }
    Ok(())
}

/// The address we tell peers: the configured one, with port 0 meaning our bound port and an unspecified IP
/// replaced by the listen IP when that one is specific.
fn advertised(config: &GossipConfig, local: SocketAddr) -> Result<SocketAddr, GossipError> {
    let mut addr = config.advertise_addr;
    if addr.port() == 0 {
        addr.set_port(local.port());
    }
    if addr.ip().is_unspecified() {
        if local.ip().is_unspecified() {
            return Err(GossipError::InvalidConfig(format!(
                "listening on {local} needs an address peers can reach: set XNODE_ADVERTISE_ADDR"
            )));
        }
        addr.set_ip(local.ip());
    }
    Ok(addr)
}

/// Appends our gossip port to a seed given without one ("node-2" becomes "node-2:9090").
fn with_port(seed: &str, port: u16) -> String {
    let has_port = seed.parse::<SocketAddr>().is_ok()
        || seed.rsplit_once(':').is_some_and(|(host, p)| !host.contains(':') && p.parse::<u16>().is_ok());
    if has_port {
        seed.to_string()
    } else if seed.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{seed}]:{port}")
    } else {
        format!("{seed}:{port}")
    }
}

/// Start time in ms since the epoch, strictly increasing within the process so that a node restarted in the
/// same millisecond (tests do that) still gets a newer generation.
fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

struct Actor {
    /// `None` once the server was shut down.
    chitchat: Option<ChitchatHandle>,
    name: String,
    generation: u64,
    gossip_addr: SocketAddr,
    local: SocketAddr,
    seeds: Vec<String>,
    gossip_interval: Duration,
    leave_linger: Duration,
    join_retry_interval: Duration,
    commands: mpsc::Receiver<Command>,
    view: watch::Sender<Arc<Vec<Member>>>,
    events: broadcast::Sender<MembershipEvent>,
    fatal: watch::Sender<Option<GossipError>>,
    stop: CancellationToken,
    /// Newer generations of our name we already flagged, so each conflict is reported once.
    flagged: HashSet<u64>,
    /// What the last view was computed from ([`StateKey`]): while chitchat's state still matches it, a refresh
    /// costs a comparison, not a copy of every member's metadata (this ran every round and was a fifth of an idle
    /// node's CPU).
    seen: Vec<StateKey>,
}

/// What the view depends on, per node chitchat knows: its identity, the version of its key-values (every change
/// of a value raises it) and whether the failure detector counts it live. The view is a function of these.
#[derive(Clone, PartialEq, Eq)]
struct StateKey {
    id: ChitchatId,
    max_version: u64,
    live: bool,
}

/// The current keys, in chitchat's order (its node states are a sorted map).
fn state_keys(c: &chitchat::Chitchat) -> Vec<StateKey> {
    let mut live: Vec<&ChitchatId> = c.live_nodes().collect();
    live.sort_unstable();
    c.node_states()
        .iter()
        .map(|(id, state)| StateKey {
            id: id.clone(),
            max_version: state.max_version(),
            live: live.binary_search(&id).is_ok(),
        })
        .collect()
}

/// Whether chitchat's state still matches `seen`, without allocating more than the sorted live list.
fn unchanged(c: &chitchat::Chitchat, seen: &[StateKey]) -> bool {
    let states = c.node_states();
    if states.len() != seen.len() {
        return false;
    }
    let mut live: Vec<&ChitchatId> = c.live_nodes().collect();
    live.sort_unstable();
    states.iter().zip(seen).all(|((id, state), key)| {
        key.id == *id && key.max_version == state.max_version() && key.live == live.binary_search(&id).is_ok()
    })
}

/// What a view refresh asks the loop to do next.
enum Next {
    Continue,
    Withdraw,
}

impl Actor {
    async fn run(mut self) {
        let Some(mut live) = self.with_chitchat(|c| c.live_nodes_watcher()).await else {
            return;
        };
        let mut live_open = true;
        let mut tick = time::interval(self.gossip_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (resolved_tx, mut resolved_rx) = mpsc::channel::<Vec<SocketAddr>>(1);
        let mut resolving = false;
        let mut next_join = Instant::now();
        loop {
            let next = tokio::select! {
                _ = self.stop.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::SetMeta(meta, reply)) => {
                        self.with_chitchat(|c| {
                            let state = c.self_node_state();
                            for (k, v) in meta.to_key_values() {
                                state.set(k, v);
                            }
                        })
                        .await;
                        let next = self.refresh().await;
                        let _ = reply.send(());
                        next
                    }
                    // Only the handle sends commands, and dropping it cancels `stop`.
                    None => break,
                },
                changed = live.changed(), if live_open => {
                    live_open = changed.is_ok();
                    self.refresh().await
                }
                _ = tick.tick() => {
                    let next = self.refresh().await;
                    if !resolving && Instant::now() >= next_join && self.alone() {
                        resolving = true;
                        next_join = Instant::now() + self.join_retry_interval;
                        tokio::spawn(resolve(self.seeds.clone(), resolved_tx.clone()));
                    }
                    next
                }
                Some(addrs) = resolved_rx.recv() => {
                    resolving = false;
                    if let Some(chitchat) = &self.chitchat {
                        for addr in addrs {
                            if addr != self.gossip_addr && addr != self.local {
                                let _ = chitchat.gossip(addr);
                            }
                        }
                    }
                    Next::Continue
                }
            };
            if let Next::Withdraw = next {
                break;
            }
        }
        self.leave().await;
    }

    /// Whether we see no other live member, i.e. we still need the seeds.
    fn alone(&self) -> bool {
        !self.view.borrow().iter().any(|m| !m.is_self && m.state == MemberState::Alive)
    }

    async fn with_chitchat<T>(&self, f: impl FnOnce(&mut chitchat::Chitchat) -> T) -> Option<T> {
        let chitchat = self.chitchat.as_ref()?;
        let mut f = Some(f);
        Some(chitchat.with_chitchat(|c| (f.take().expect("called once"))(c)).await)
    }

    /// Rebuilds the view from chitchat's state, publishes the differences, and handles name conflicts.
    async fn refresh(&mut self) -> Next {
        let seen = &self.seen;
        let Some(fresh) = self.with_chitchat(|c| (!unchanged(c, seen)).then(|| (snapshot(c), state_keys(c)))).await
        else {
            return Next::Continue;
        };
        let Some((incarnations, keys)) = fresh else {
            return Next::Continue;
        };
        self.seen = keys;
        let mut next = Next::Continue;
        match view::check_conflict(&incarnations, &self.name, self.generation) {
            Some(Conflict::FlagNewer { generation, addr }) if self.flagged.insert(generation) => {
                warn!(name = %self.name, other = %addr, "a newer node started with our name; telling it to withdraw");
                self.with_chitchat(|c| c.self_node_state().set(CONFLICT_KEY, generation)).await;
                let _ = self.events.send(MembershipEvent::NameConflict {
                    name: self.name.clone(),
                    other_addr: addr,
                    we_withdraw: false,
                });
            }
            Some(Conflict::WeAreDuplicate { addr }) if self.fatal.borrow().is_none() => {
                let err = GossipError::DuplicateName { name: self.name.clone(), addr };
                error!("{err}");
                let _ = self.events.send(MembershipEvent::NameConflict {
                    name: self.name.clone(),
                    other_addr: addr,
                    we_withdraw: true,
                });
                self.fatal.send_replace(Some(err));
                next = Next::Withdraw;
            }
            _ => {}
        }
        let members = view::members(&incarnations, &self.name, self.generation);
        let before = self.view.borrow().clone();
        if *before != members {
            for event in view::diff(&before, &members) {
                log_change(&event);
                let _ = self.events.send(event);
            }
            self.view.send_replace(Arc::new(members));
        }
        next
    }

    /// Announces `left`, lingers while gossip spreads it, then stops the server.
    async fn leave(&mut self) {
        if self.chitchat.is_none() {
            return;
        }
        self.with_chitchat(|c| c.self_node_state().set(STATE_KEY, STATE_LEFT)).await;
        self.refresh().await;
        info!(name = %self.name, linger = ?self.leave_linger, "leaving the cluster");
        time::sleep(self.leave_linger).await;
        if let Some(chitchat) = self.chitchat.take() {
            if let Err(e) = chitchat.shutdown().await {
                warn!(error = %e, "gossip server stopped with an error");
            }
        }
    }
}

/// Copies what the view needs out of chitchat's state (under its lock, so nothing slow here).
fn snapshot(c: &chitchat::Chitchat) -> Vec<Incarnation> {
    let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
    c.node_states()
        .iter()
        .map(|(id, state)| Incarnation {
            name: id.node_id.to_string(),
            generation: id.generation_id,
            addr: id.gossip_advertise_addr,
            live: live.contains(id),
            kv: state.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        })
        .collect()
}

/// Resolves every seed again (containers that start later get their DNS name late) and sends the addresses.
async fn resolve(seeds: Vec<String>, tx: mpsc::Sender<Vec<SocketAddr>>) {
    let mut addrs = Vec::new();
    for seed in &seeds {
        match time::timeout(Duration::from_secs(2), tokio::net::lookup_host(seed.as_str())).await {
            Ok(Ok(found)) => addrs.extend(found),
            Ok(Err(e)) => debug!(%seed, error = %e, "seed does not resolve yet"),
            Err(_) => debug!(%seed, "seed resolution timed out"),
        }
    }
    let _ = tx.send(addrs).await;
}

/// One log line per membership change, by member name, for the operator reading the log at `info`.
fn log_change(event: &MembershipEvent) {
    match event {
        MembershipEvent::Joined(m) => info!(member = %m.name, addr = %m.gossip_addr, "member {} joined", m.name),
        MembershipEvent::Restarted(m) => info!(member = %m.name, "member {} restarted", m.name),
        MembershipEvent::Left(m) => info!(member = %m.name, "member {} left the cluster", m.name),
        MembershipEvent::Dead(m) => info!(member = %m.name, "member {} is dead (stopped heartbeating)", m.name),
        MembershipEvent::Removed { name } => info!(member = %name, "member {name} forgotten after the grace period"),
        other => debug!(event = ?other, "membership event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_get_our_port_when_they_have_none() {
        assert_eq!(with_port("node-2", 9090), "node-2:9090");
        assert_eq!(with_port("node-2:9091", 9090), "node-2:9091");
        assert_eq!(with_port("172.17.0.2:9091", 9090), "172.17.0.2:9091");
        assert_eq!(with_port("::1", 9090), "[::1]:9090");
        assert_eq!(with_port("[::1]:7", 9090), "[::1]:7");
    }

    #[test]
    fn generations_increase_strictly() {
        let a = next_generation();
        assert!(next_generation() > a);
    }

    #[test]
    fn unspecified_advertise_addr_needs_a_specific_listen_ip() {
        let config = GossipConfig::new("n", "0.0.0.0:9090".parse().unwrap());
        assert!(advertised(&config, "0.0.0.0:9090".parse().unwrap()).is_err());
        let mut config = GossipConfig::new("n", "127.0.0.1:0".parse().unwrap());
        config.advertise_addr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(advertised(&config, "127.0.0.1:4000".parse().unwrap()).unwrap(), "127.0.0.1:4000".parse().unwrap());
    }
}
