//! What the node measures and shows live: the Prometheus metrics at `/metrics` and the log of block transfers
//! (which block went from whom to whom) that the dashboard streams.
//!
//! One task follows the node's network events; it owns nothing but counters and a short ring of recent transfers.
//! Store and membership figures are read when scraped, so they are never stale.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};

use crate::extract::Query;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use xnode_gossip::MemberState;
use xnode_instance::Node;
use xnode_p2p::{NetEvent, Via};

use crate::{files, ApiError, AppState};

/// How many recent transfers are kept for a freshly opened dashboard and `GET /api/v1/transfers`.
const RECENT: usize = 200;

/// Metrics, and the transfer log with its live feed.
pub(crate) struct Telemetry {
    registry: Registry,
    metrics: Metrics,
    recent: Mutex<VecDeque<Transfer>>,
    feed: broadcast::Sender<Transfer>,
    seq: AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

struct Metrics {
    blocks_held: Gauge,
    blocks_wanted: Gauge,
    under_replicated: Gauge,
    missing: Gauge,
    stored_bytes: Gauge,
    capacity_bytes: Gauge<f64, AtomicU64>,
    disk_bytes: Gauge,
    peers: Gauge,
    members: Family<StateLabel, Gauge>,
    /// The scrub's progress and the corrupted copies found and repaired, by figure (see [`ScrubLabel`]).
    scrub: Family<ScrubLabel, Gauge>,
    received_bytes: Counter,
    sent_bytes: Counter,
    received_blocks: Counter,
    sent_blocks: Counter,
    ingest_received_bytes: Counter,
    ingest_sent_bytes: Counter,
    ingest_received_blocks: Counter,
    ingest_sent_blocks: Counter,
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Gossip datagrams by what became of them (see [`GossipLabel`]), copied from the membership's own counters.
    gossip_datagrams: Family<GossipLabel, Counter>,
    /// Gossip payload bytes, by direction.
    gossip_bytes: Family<GossipLabel, Counter>,
    /// Held while the gossip counters catch up, so two scrapes at once do not both add the same difference.
    gossip_sync: Mutex<()>,
}

/// `sent`, `received`, `rejected` (did not open with the cluster secret, or not gossip once opened) or `replayed`
/// (opened, but already received or stamped outside the replay window; also counted as rejected).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GossipLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrubLabel {
    figure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// One block that went between this node and a peer (over Bitswap, or pushed as a file was added).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Transfer {
    /// Increases by one per transfer this node saw (restarts at 1 with the process).
    pub(crate) seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The sender: a member's name, or a short peer id for a node outside the cluster (e.g. Kubo).
    pub(crate) from: String,
    /// The receiver, named the same way.
    pub(crate) to: String,
    /// The block's CID.
    pub(crate) cid: String,
    /// Its size.
    pub(crate) bytes: u64,
    /// Whether the receiver is a member of the cluster (so it also reports the transfer itself).
    pub(crate) to_member: bool,
}

impl Telemetry {
    /// Registers the metrics and starts following `node`'s network events until `stop`.
    pub(crate) fn start(node: Arc<Node>, stop: CancellationToken) -> Arc<Telemetry> {
        let metrics = Metrics {
            blocks_held: Gauge::default(),
            blocks_wanted: Gauge::default(),
            under_replicated: Gauge::default(),
            missing: Gauge::default(),
            stored_bytes: Gauge::default(),
            capacity_bytes: Gauge::default(),
            disk_bytes: Gauge::default(),
            peers: Gauge::default(),
            members: Family::default(),
            scrub: Family::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            received_blocks: Counter::default(),
            sent_blocks: Counter::default(),
            ingest_received_bytes: Counter::default(),
            ingest_sent_bytes: Counter::default(),
            ingest_received_blocks: Counter::default(),
            ingest_sent_blocks: Counter::default(),
            http: Family::new_with_constructor(http_histogram),
            gossip_datagrams: Family::default(),
            gossip_bytes: Family::default(),
            gossip_sync: Mutex::new(()),
        };
        let mut registry = Registry::with_prefix("xnode");
        let r = &mut registry;
        r.register("blocks_held", "Blocks this node holds", metrics.blocks_held.clone());
        r.register(
            "blocks_wanted",
            "Blocks placement gives this node that it does not hold yet",
            metrics.blocks_wanted.clone(),
        );
        r.register(
            "blocks_under_replicated",
            "Blocks of catalog files with fewer live copies than the replication factor",
            metrics.under_replicated.clone(),
        );
        r.register("blocks_missing", "Blocks of catalog files no live member holds", metrics.missing.clone());
        r.register("stored_bytes", "Bytes of block data this node holds", metrics.stored_bytes.clone());
        r.register(
            "capacity_bytes",
            "Hard capacity of the block store (+Inf: unlimited)",
            metrics.capacity_bytes.clone(),
        );
        r.register("disk_bytes", "Bytes the block store occupies on disk", metrics.disk_bytes.clone());
        r.register("peers", "libp2p peers connected", metrics.peers.clone());
        r.register("members", "Members by state as this node sees them, itself included", metrics.members.clone());
        r.register(
            "scrub",
            "The scrub and repairs: blocks_checked, bytes_checked, corrupt_found (this pass), running (0/1), passes, \
             pass_started_at and pass_finished_at (Unix seconds), corrupt_total, repaired_total, repair_failed_total",
            metrics.scrub.clone(),
        );
        r.register("bitswap_received_bytes", "Block bytes received over Bitswap", metrics.received_bytes.clone());
        r.register("bitswap_sent_bytes", "Block bytes sent over Bitswap", metrics.sent_bytes.clone());
        r.register("bitswap_received_blocks", "Blocks received over Bitswap", metrics.received_blocks.clone());
        r.register("bitswap_sent_blocks", "Blocks sent over Bitswap", metrics.sent_blocks.clone());
        let m = &metrics;
        r.register(
            "ingest_received_bytes",
            "New block bytes received as members added files",
            m.ingest_received_bytes.clone(),
        );
        r.register(
            "ingest_sent_bytes",
            "New block bytes sent to their holders as files were added here",
            m.ingest_sent_bytes.clone(),
        );
        r.register(
            "ingest_received_blocks",
            "New blocks received as members added files",
            m.ingest_received_blocks.clone(),
        );
        r.register(
            "ingest_sent_blocks",
            "New blocks sent to their holders as files were added here",
            m.ingest_sent_blocks.clone(),
        );
        r.register(
            "gossip_datagrams",
            "Gossip datagrams by outcome: sent, received, rejected (did not open with the cluster secret or were not \
             gossip: outsiders, another secret, tampering) and replayed (opened but already seen or stale; also rejected)",
            m.gossip_datagrams.clone(),
        );
        r.register("gossip_bytes", "Gossip payload bytes, sent and received", m.gossip_bytes.clone());
        r.register(
            "http_request_duration_seconds",
            "Time to answer API requests (until the response head), by method, route and status",
            metrics.http.clone(),
        );
        let (feed, _) = broadcast::channel(1024);
        let telemetry = Arc::new(Telemetry {
            registry,
            metrics,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            feed,
            seq: AtomicU64::new(0),
        });
        tokio::spawn(follow_network(node, telemetry.clone(), stop));
        telemetry
    }

    /// The last transfers (oldest first) with a sequence number above `since`.
    pub(crate) fn recent(&self, since: u64) -> Vec<Transfer> {
        self.recent.lock().expect("not poisoned").iter().filter(|t| t.seq > since).cloned().collect()
    }

    /// Transfers as they happen.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transfer> {
        self.feed.subscribe()
    }

    fn record(&self, mut transfer: Transfer) {
        transfer.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut recent = self.recent.lock().expect("not poisoned");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(transfer.clone());
        drop(recent);
        let _ = self.feed.send(transfer);
    }
}

/// Blocks that went from one node to another in one go: what the dashboard's transfer log shows per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Burst {
    pub(crate) from: String,
    pub(crate) to: String,
    /// The first and last block's times, milliseconds since the Unix epoch.
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
    pub(crate) blocks: u64,
    pub(crate) bytes: u64,
}

impl Burst {
    /// Bytes per second, when the burst lasted long enough to tell (at least 50 ms).
    pub(crate) fn rate(&self) -> Option<f64> {
        let ms = self.last_ms.saturating_sub(self.first_ms);
        (ms >= 50).then(|| self.bytes as f64 * 1000.0 / ms as f64)
    }
}

/// A pause longer than this between two blocks of one sender and receiver ends a burst.
pub(crate) const BURST_GAP_MS: u64 = 1000;

/// Groups transfers (oldest first) into bursts per sender and receiver: consecutive blocks less than
/// [`BURST_GAP_MS`] apart. Bursts come out in the order they started.
pub(crate) fn bursts(transfers: &[Transfer]) -> Vec<Burst> {
    let mut out: Vec<Burst> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    for t in transfers {
        let key = (t.from.clone(), t.to.clone());
        match open.get(&key).map(|&i| &mut out[i]) {
            Some(b) if t.at_ms.saturating_sub(b.last_ms) <= BURST_GAP_MS => {
                b.last_ms = b.last_ms.max(t.at_ms);
                b.blocks += 1;
                b.bytes += t.bytes;
            }
            _ => {
                open.insert(key, out.len());
                out.push(Burst {
                    from: t.from.clone(),
                    to: t.to.clone(),
                    first_ms: t.at_ms,
                    last_ms: t.at_ms,
                    blocks: 1,
                    bytes: t.bytes,
                });
            }
        }
    }
    out
}

/// Member names by peer id, re-read from the membership view when an unknown peer shows up (at most every 2 s).
struct Names {
    by_peer: HashMap<String, String>,
    read_at: Option<Instant>,
}

impl Names {
    fn name(&mut self, node: &Node, peer: &xnode_p2p::PeerId) -> (String, bool) {
        let id = peer.to_string();
        if !self.by_peer.contains_key(&id) && self.read_at.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            self.by_peer = node.members().into_iter().map(|m| (m.meta.peer_id, m.name)).collect();
            self.read_at = Some(Instant::now());
        }
        match self.by_peer.get(&id) {
            Some(name) => (name.clone(), true),
            None => (format!("peer …{}", &id[id.len().saturating_sub(6)..]), false),
        }
    }
}

async fn follow_network(node: Arc<Node>, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    let mut events = node.net().events();
    let local = node.net().peer_id();
    let mut names = Names { by_peer: HashMap::new(), read_at: None };
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        let (via, from, to, cid, bytes) = match event {
            Ok(NetEvent::Transfer { via, from, to, cid, bytes }) => (via, from, to, cid, bytes),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "transfer log fell behind the network events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let m = &telemetry.metrics;
        let (received_bytes, received_blocks, sent_bytes, sent_blocks) = match via {
            Via::Bitswap => (&m.received_bytes, &m.received_blocks, &m.sent_bytes, &m.sent_blocks),
            Via::Ingest => {
                (&m.ingest_received_bytes, &m.ingest_received_blocks, &m.ingest_sent_bytes, &m.ingest_sent_blocks)
            }
        };
        if to == local {
            received_bytes.inc_by(bytes);
            received_blocks.inc();
        } else {
            sent_bytes.inc_by(bytes);
            sent_blocks.inc();
        }
        let (from, _) = if from == local { (node.name().to_string(), true) } else { names.name(&node, &from) };
        let (to, to_member) = if to == local { (node.name().to_string(), true) } else { names.name(&node, &to) };
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        telemetry.record(Transfer { seq: 0, at_ms, from, to, cid: cid.to_string(), bytes, to_member });
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let node = app.node.clone();
    let stats = files::blocking(move || node.store_stats()).await?;
    let t = &app.telemetry;
    let m = &t.metrics;
    m.blocks_held.set(gauge(stats.blocks));
    m.stored_bytes.set(gauge(stats.bytes_held));
    m.disk_bytes.set(gauge(stats.disk_bytes));
    m.capacity_bytes.set(if stats.capacity == u64::MAX { f64::INFINITY } else { stats.capacity as f64 });
    m.blocks_wanted.set(gauge(app.node.wanted(0).count));
    let health = app.node.files_health();
    m.under_replicated.set(gauge(health.iter().map(|f| f.under_replicated).sum()));
    m.missing.set(gauge(health.iter().map(|f| f.missing).sum()));
    m.peers.set(app.node.net().connected_peers().await.map_or(0, |p| p.len() as i64));
    let members = app.node.members();
    for (state, label) in [(MemberState::Alive, "alive"), (MemberState::Dead, "dead"), (MemberState::Left, "left")] {
        let count = members.iter().filter(|m| m.state == state).count();
        m.members.get_or_create(&StateLabel { state: label.into() }).set(count as i64);
    }
    let scrub = app.node.scrub_status();
    for (figure, value) in [
        ("blocks_checked", scrub.blocks_checked),
        ("bytes_checked", scrub.bytes_checked),
        ("corrupt_found", scrub.corrupt_found),
        ("running", u64::from(scrub.running)),
        ("passes", scrub.passes),
        ("pass_started_at", scrub.pass_started_at.unwrap_or(0)),
        ("pass_finished_at", scrub.pass_finished_at.unwrap_or(0)),
        ("corrupt_total", scrub.corrupt_total),
        ("repaired_total", scrub.repaired_total),
        ("repair_failed_total", scrub.repair_failed_total),
    ] {
        m.scrub.get_or_create(&ScrubLabel { figure: figure.into() }).set(gauge(value));
    }
    let synced = m.gossip_sync.lock().expect("not poisoned");
    let gossip = app.node.gossip_traffic();
    for (outcome, value) in [
        ("sent", gossip.messages_sent),
        ("received", gossip.messages_received),
        ("rejected", gossip.messages_rejected),
        ("replayed", gossip.messages_replayed),
    ] {
        catch_up(&m.gossip_datagrams.get_or_create(&GossipLabel { outcome }), value);
    }
    for (outcome, value) in [("sent", gossip.bytes_sent), ("received", gossip.bytes_received)] {
        catch_up(&m.gossip_bytes.get_or_create(&GossipLabel { outcome }), value);
    }
    drop(synced);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &t.registry)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}

/// Moves a counter up to `total`, a count kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let shown = counter.get();
    if total > shown {
        counter.inc_by(total - shown);
    }
}

/// Times every routed request into `xnode_http_request_duration_seconds`.
pub(crate) async fn track_latency(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels { method, route, status: response.status().as_u16() };
    app.telemetry.metrics.http.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

/// Latency buckets: 0.5 ms doubling up to about 16 s.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// `?since=SEQ` on the transfer log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct Since {
    /// Only transfers with a larger sequence number.
    since: Option<u64>,
}

/// `GET /api/v1/transfers?since=SEQ`: the last block transfers this node took part in, oldest first.
#[utoipa::path(get, path = "/api/v1/transfers", tag = "cluster", params(Since), responses((status = 200, body = [Transfer])))]
pub(crate) async fn transfers_json(State(app): State<AppState>, Query(since): Query<Since>) -> Json<Vec<Transfer>> {
    Json(app.telemetry.recent(since.since.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::{bursts, Transfer};

    fn t(at_ms: u64, from: &str, to: &str, bytes: u64) -> Transfer {
        Transfer { seq: 0, at_ms, from: from.into(), to: to.into(), cid: String::new(), bytes, to_member: true }
    }

    #[test]
    fn blocks_between_two_nodes_in_one_go_are_one_burst() {
        let log = [
            t(1_000, "a", "b", 100),
            t(1_200, "c", "b", 7),
            t(1_500, "a", "b", 100),
            t(2_400, "a", "b", 100),
            // 1.1 s later: a new burst of the same pair.
            t(3_500, "a", "b", 50),
        ];
        let b = bursts(&log);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].from.as_str(), b[0].blocks, b[0].bytes, b[0].first_ms, b[0].last_ms),
            ("a", 3, 300, 1_000, 2_400)
        );
        assert_eq!((b[1].from.as_str(), b[1].blocks, b[1].bytes), ("c", 1, 7));
        assert_eq!((b[2].blocks, b[2].bytes, b[2].first_ms), (1, 50, 3_500));
        // 300 bytes over 1.4 s.
        let rate = b[0].rate().unwrap();
        assert!((rate - 300.0 / 1.4).abs() < 1e-6, "{rate}");
        assert_eq!(b[1].rate(), None, "one block: no rate to tell");
    }
}
