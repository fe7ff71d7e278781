//! Integrity: the scrub (a background pass that re-hashes every stored block at an operator's rate) and the repair
//! of a corrupted copy, wherever it was found: by the scrub, by a local read, or by the Bitswap server's check
//! before it sends a block.
//!
//! One task owns the repairs ([`run`]): a corrupted block is quarantined (out of the index, so nobody reads or
//! serves it), the allocation is told its copy is gone ([`Node::copy_lost`], so health shows the missing copy),
//! and a good copy is fetched from another member (Bitswap verifies it), stored and kept again. Two finders of the
//! same block share one repair. A read waiting for the repair gets the good bytes from it.
//!
//! The scrub pass walks the store a page at a time, paced to a byte rate, and starts a new pass every interval
//! (the last start is saved in the store, so a restart does not begin again at once). Its progress is published in
//! a [`ScrubStatus`] for the status API, the metrics and the dashboard. Design and figures: `docs/reliability.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cid::Cid;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xnode_storage::{Store, StoreError};

use crate::{InstanceError, Node};

/// How long a repair waits for a member to send a good copy.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(20);

/// The scrub reads at most this many bytes per trip to a blocking thread; it paces (and looks at `stop`) between
/// trips, so a pass at a low rate reads in short bursts rather than one long one.
const SCRUB_CHUNK: u64 = 4 << 20;

/// The first pass of a store that never had one starts this long after the node (or sooner if the interval is
/// shorter): a start is busy enough with joining and allocating.
const FIRST_PASS_DELAY: Duration = Duration::from_secs(60);

/// The index tree where the scrub keeps the start of its last pass.
const SCRUB_TREE: &str = "scrub";
const LAST_START: &[u8] = b"last_pass_started";

/// How the scrub runs (`XNODE_SCRUB_INTERVAL`, `XNODE_SCRUB_RATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    /// A pass starts this long after the previous one started, and finishes within it: if the store is too large to
    /// read at `rate` in 90% of the interval, the pass goes faster. Default 30 days (Garage re-hashes every 25-35).
    pub interval: Duration,
    /// Bytes per second the scrub reads; 0 means as fast as the disk goes. Default 16 MiB/s (10 GiB in ~11 min,
    /// a few percent of one core for SHA-256 on this project's machine, see docs/reliability.md).
    pub rate: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig { interval: Duration::from_secs(30 * 86_400), rate: 16 << 20 }
    }
}

/// Where a corrupted copy was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finder {
    Scrub,
    Read,
    Serve,
}

impl Finder {
    fn as_str(self) -> &'static str {
        match self {
            Finder::Scrub => "scrub",
            Finder::Read => "read",
            Finder::Serve => "bitswap server",
        }
    }
}

/// The scrub's progress and the repairs so far, for `/api/v1/status`, `/metrics` and the dashboard.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ScrubStatus {
    /// A pass is under way.
    pub running: bool,
    /// Passes finished since the node started.
    pub passes: u64,
    /// When the current (or last) pass started, seconds since the Unix epoch.
    pub pass_started_at: Option<u64>,
    /// When the last pass finished, seconds since the Unix epoch.
    pub pass_finished_at: Option<u64>,
    /// When the next pass starts, seconds since the Unix epoch (while none runs).
    pub next_pass_at: Option<u64>,
    /// Blocks checked by the current (or last) pass.
    pub blocks_checked: u64,
    /// Bytes checked by the current (or last) pass.
    pub bytes_checked: u64,
    /// Corrupted blocks the current (or last) pass found.
    pub corrupt_found: u64,
    /// Bytes per second the pass reads at (0: unlimited).
    pub rate: u64,
    /// Corrupted copies found since the node started, by the scrub, a read or the Bitswap server.
    pub corrupt_total: u64,
    /// Of those, copies replaced by a good one fetched from another member.
    pub repaired_total: u64,
    /// Repairs that found no member with a good copy in time (the allocation fetches the block later).
    pub repair_failed_total: u64,
}

/// Why a repair gave no good copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepairError {
    /// No member sent a good copy in time.
    #[error("block {cid} is corrupted here and no member sent a good copy: {reason}")]
    NoGoodCopy {
        /// The block.
        cid: Cid,
        /// The fetch's error.
        reason: String,
    },
    /// The store failed while quarantining or storing the block.
    #[error("repairing block {cid}: {reason}")]
    Store {
        /// The block.
        cid: Cid,
        /// The store's error.
        reason: String,
    },
    /// The node is stopping.
    #[error("the node is stopping; block {cid} was not repaired")]
    Stopped {
        /// The block.
        cid: Cid,
    },
}

struct Request {
    cid: Cid,
    finder: Finder,
    reply: Option<oneshot::Sender<Result<Bytes, RepairError>>>,
}

#[derive(Default)]
struct Totals {
    corrupt: AtomicU64,
    repaired: AtomicU64,
    failed: AtomicU64,
}

/// A cheap-to-clone handle on the repair task: report a corrupted block, or wait for its repair.
#[derive(Clone)]
pub(crate) struct Integrity {
    tx: mpsc::UnboundedSender<Request>,
    totals: Arc<Totals>,
    progress: watch::Receiver<ScrubStatus>,
}

/// The task's side of [`Integrity`]: handed to [`run`].
pub(crate) struct Requests {
    rx: mpsc::UnboundedReceiver<Request>,
    totals: Arc<Totals>,
    progress: watch::Sender<ScrubStatus>,
}

/// A handle and the requests it sends, to connect before the node (and its Bitswap server) exists.
pub(crate) fn channel(config: ScrubConfig) -> (Integrity, Requests) {
    let (tx, rx) = mpsc::unbounded_channel();
    let totals = Arc::new(Totals::default());
    let (progress, progress_rx) = watch::channel(ScrubStatus { rate: config.rate, ..ScrubStatus::default() });
    (Integrity { tx, totals: totals.clone(), progress: progress_rx }, Requests { rx, totals, progress })
}

impl Integrity {
    /// Reports a corrupted copy; the repair runs in the background.
    pub(crate) fn corrupt(&self, cid: Cid, finder: Finder) {
        let _ = self.tx.send(Request { cid, finder, reply: None });
    }

    /// Reports a corrupted copy and waits (holding this blocking thread) for a good one. For readers on a blocking
    /// thread, never on an async one.
    pub(crate) fn blocking_repair(&self, cid: Cid, finder: Finder) -> Result<Bytes, RepairError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request { cid, finder, reply: Some(reply) }).is_err() {
            return Err(RepairError::Stopped { cid });
        }
        rx.blocking_recv().unwrap_or(Err(RepairError::Stopped { cid }))
    }

    /// The scrub's progress with the repair totals.
    pub(crate) fn status(&self) -> ScrubStatus {
        let mut s = self.progress.borrow().clone();
        s.corrupt_total = self.totals.corrupt.load(Ordering::Relaxed);
        s.repaired_total = self.totals.repaired.load(Ordering::Relaxed);
        s.repair_failed_total = self.totals.failed.load(Ordering::Relaxed);
        s
    }
}

/// Runs repairs as they are asked for and the scrub passes, until `stop`.
pub(crate) async fn run(
    node: Weak<Node>,
    store: Store,
    integrity: Integrity,
    requests: Requests,
    config: ScrubConfig,
    stop: CancellationToken,
) {
    let Requests { mut rx, totals, progress } = requests;
    tokio::spawn(scrub_loop(store.clone(), integrity, progress, config, stop.clone()));
    let mut waiting: HashMap<Cid, Vec<oneshot::Sender<Result<Bytes, RepairError>>>> = HashMap::new();
    let mut repairs: JoinSet<(Cid, Result<Bytes, RepairError>)> = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(req) = rx.recv() => {
                let first = !waiting.contains_key(&req.cid);
                let list = waiting.entry(req.cid).or_default();
                if let Some(reply) = req.reply {
                    list.push(reply);
                }
                if first {
                    tracing::warn!(cid = %req.cid, found_by = req.finder.as_str(), "corrupted block found; repairing it from another member");
                    totals.corrupt.fetch_add(1, Ordering::Relaxed);
                    let (node, store, cid) = (node.clone(), store.clone(), req.cid);
                    repairs.spawn(async move { (cid, repair(node, store, cid).await) });
                }
            }
            Some(done) = repairs.join_next(), if !repairs.is_empty() => {
                let Ok((cid, result)) = done else { continue };
                match &result {
                    Ok(_) => {
                        totals.repaired.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%cid, "repaired a corrupted block with a good copy from another member");
                    }
                    Err(e) => {
                        totals.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%cid, "could not repair a corrupted block now: {e}");
                    }
                }
                for reply in waiting.remove(&cid).unwrap_or_default() {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }
}

/// Quarantines `cid`, tells the allocation its copy is gone, fetches a good copy and stores (and keeps) it again.
async fn repair(node: Weak<Node>, store: Store, cid: Cid) -> Result<Bytes, RepairError> {
    let store_err = |e: StoreError| RepairError::Store { cid, reason: e.to_string() };
    let s = store.clone();
    let quarantined = blocking(move || {
        // Someone may have repaired it since it was reported: then the copy here is good.
        match s.get(&cid) {
            Ok(Some(data)) => Ok(Err(data)),
            Ok(None) => Ok(Ok(None)),
            Err(StoreError::Corrupted { .. }) => s.quarantine(&cid).map(Ok),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(store_err)?;
    let quarantined = match quarantined {
        Err(good) => return Ok(good),
        Ok(q) => q,
    };
    let kept = quarantined.is_some_and(|q| q.kept);
    let Some(node) = node.upgrade() else { return Err(RepairError::Stopped { cid }) };
    if kept {
        node.copy_lost(cid);
    }
    let data = node
        .net()
        .fetch_block(cid, REPAIR_TIMEOUT)
        .await
        .map_err(|e| RepairError::NoGoodCopy { cid, reason: e.to_string() })?;
    let (s, d) = (store.clone(), data.clone());
    blocking(move || -> Result<(), StoreError> {
        let mut w = s.writer();
        w.put(&cid, &d)?;
        w.commit(None)?;
        if kept {
            s.keep(&[cid])?;
        }
        Ok(())
    })
    .await
    .map_err(store_err)?;
    Ok(data)
}

/// Starts a pass every interval and publishes its progress.
async fn scrub_loop(
    store: Store,
    integrity: Integrity,
    progress: watch::Sender<ScrubStatus>,
    config: ScrubConfig,
    stop: CancellationToken,
) {
    let s = store.clone();
    let last_start = blocking(move || read_last_start(&s)).await;
    let now = unix_now();
    let first_wait = match last_start {
        Some(t) => Duration::from_secs((t + config.interval.as_secs()).saturating_sub(now)),
        None => config.interval.min(FIRST_PASS_DELAY),
    };
    let mut next = Instant::now() + first_wait;
    loop {
        progress.send_modify(|p| {
            p.next_pass_at = Some(unix_now() + next.saturating_duration_since(Instant::now()).as_secs())
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
        }
        let started = Instant::now();
        next = started + config.interval;
        let s = store.clone();
        let started_at = unix_now();
        blocking(move || write_last_start(&s, started_at)).await;
        if !pass(&store, &integrity, &progress, config, started_at, &stop).await {
            return;
        }
    }
}

/// One pass over every stored block; false if stopped on the way.
async fn pass(
    store: &Store,
    integrity: &Integrity,
    progress: &watch::Sender<ScrubStatus>,
    config: ScrubConfig,
    started_at: u64,
    stop: &CancellationToken,
) -> bool {
    let s = store.clone();
    let held = blocking(move || s.stats().map(|st| st.bytes_held).unwrap_or(0)).await;
    let rate = pass_rate(config, held);
    progress.send_modify(|p| {
        *p = ScrubStatus {
            running: true,
            passes: p.passes,
            pass_started_at: Some(started_at),
            pass_finished_at: p.pass_finished_at,
            rate,
            ..ScrubStatus::default()
        }
    });
    tracing::info!(bytes = held, rate, "scrub pass started");
    let began = Instant::now();
    let mut after: Option<Cid> = None;
    let (mut blocks, mut bytes, mut corrupt) = (0u64, 0u64, 0u64);
    loop {
        if stop.is_cancelled() {
            return false;
        }
        let s = store.clone();
        let from = after;
        let checked = blocking(move || check_chunk(&s, from)).await;
        let (last, n, b, bad) = match checked {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("scrub pass stopped early: the store failed: {e}");
                break;
            }
        };
        for cid in &bad {
            integrity.corrupt(*cid, Finder::Scrub);
        }
        blocks += n;
        bytes += b;
        corrupt += bad.len() as u64;
        progress.send_modify(|p| {
            p.blocks_checked = blocks;
            p.bytes_checked = bytes;
            p.corrupt_found = corrupt;
        });
        let Some(last) = last else { break };
        after = Some(last);
        if let Some(wait) = pace(rate, bytes, began.elapsed()) {
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    let took = began.elapsed();
    progress.send_modify(|p| {
        p.running = false;
        p.passes += 1;
        p.pass_finished_at = Some(unix_now());
    });
    tracing::info!(blocks, bytes, corrupt, secs = took.as_secs_f64(), "scrub pass finished");
    true
}

/// Reads (and hashes) blocks after `after` until [`SCRUB_CHUNK`] bytes: the last block looked at (`None` at the end
/// of the store), blocks and bytes checked, and the corrupted ones.
fn check_chunk(store: &Store, after: Option<Cid>) -> Result<(Option<Cid>, u64, u64, Vec<Cid>), StoreError> {
    let (mut blocks, mut bytes, mut bad) = (0, 0, Vec::new());
    let mut after = after;
    while bytes < SCRUB_CHUNK {
        let page = store.blocks_after(after.as_ref(), 64)?;
        if page.is_empty() {
            return Ok((None, blocks, bytes, bad));
        }
        for (cid, len) in page {
            after = Some(cid);
            match store.get(&cid) {
                Ok(_) => {}
                Err(StoreError::Corrupted { .. }) => bad.push(cid),
                // A block whose hash this store cannot check was never stored; anything else is the disk's.
                Err(StoreError::UnsupportedHash { .. }) => {}
                Err(e) => return Err(e),
            }
            blocks += 1;
            bytes += len;
            if bytes >= SCRUB_CHUNK {
                break;
            }
        }
    }
    Ok((after, blocks, bytes, bad))
}

/// The rate a pass over `held` bytes runs at: the configured one, or faster if that would not finish within 90% of
/// the interval. 0 means unlimited.
pub(crate) fn pass_rate(config: ScrubConfig, held: u64) -> u64 {
    if config.rate == 0 {
        return 0;
    }
    let window = (config.interval.as_secs_f64() * 0.9).max(1.0);
    let needed = (held as f64 / window).ceil() as u64;
    config.rate.max(needed)
}

/// How long to wait so that `bytes` read after `elapsed` keeps to `rate` bytes per second (`None`: on time or late).
pub(crate) fn pace(rate: u64, bytes: u64, elapsed: Duration) -> Option<Duration> {
    if rate == 0 {
        return None;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    due.checked_sub(elapsed).filter(|d| !d.is_zero())
}

fn read_last_start(store: &Store) -> Option<u64> {
    let tree = store.tree(SCRUB_TREE).ok()?;
    let raw = tree.get(LAST_START).ok()??;
    Some(u64::from_le_bytes(raw.as_ref().try_into().ok()?))
}

fn write_last_start(store: &Store, at: u64) {
    if let Ok(tree) = store.tree(SCRUB_TREE) {
        // Flushed with the store's next commit or at shutdown: losing it only makes the next pass come sooner.
        let _ = tree.insert(LAST_START, &at.to_le_bytes());
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("store work does not panic")
}

impl From<RepairError> for InstanceError {
    fn from(e: RepairError) -> Self {
        InstanceError::Repair(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_goes_faster_when_the_rate_would_not_finish_in_time() {
        let day = Duration::from_secs(86_400);
        let c = ScrubConfig { interval: day, rate: 1 << 20 };
        assert_eq!(pass_rate(c, 10 << 30), 1 << 20, "10 GiB at 1 MiB/s takes 2.8 h, well within a day");
        // 1 TiB in 90% of a day needs 1 TiB / 77760 s.
        let needed = ((1u64 << 40) as f64 / 77_760.0).ceil() as u64;
        assert_eq!(pass_rate(c, 1 << 40), needed);
        assert!(needed > 1 << 20);
        assert_eq!(pass_rate(ScrubConfig { rate: 0, ..c }, 1 << 40), 0, "unlimited stays unlimited");
    }

    #[test]
    fn pacing_waits_only_when_ahead() {
        let mib = 1 << 20;
        assert_eq!(pace(mib, 4 * mib, Duration::from_secs(1)), Some(Duration::from_secs(3)));
        assert_eq!(pace(mib, 4 * mib, Duration::from_secs(5)), None, "late: no wait");
        assert_eq!(pace(0, 4 * mib, Duration::ZERO), None, "unlimited");
    }

    #[test]
    fn a_chunk_finds_the_corrupted_block_and_the_walk_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), xnode_storage::StoreConfig::default()).unwrap();
        let blocks: Vec<(Cid, Bytes)> = (0..5u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 100_000]);
                (xnode_dag::cid_v1(xnode_dag::RAW, &data), data)
            })
            .collect();
        let mut w = store.writer();
        for (cid, data) in &blocks {
            w.put(cid, data).unwrap();
        }
        w.commit(None).unwrap();
        let pack = std::fs::read_dir(dir.path().join("packs")).unwrap().next().unwrap().unwrap().path();
        let mut raw = std::fs::read(&pack).unwrap();
        raw[2 * 100_000 + 7] ^= 0x40; // the third block put
        std::fs::write(&pack, raw).unwrap();
        let (last, n, bytes, bad) = check_chunk(&store, None).unwrap();
        assert_eq!((n, bytes), (5, 500_000));
        assert_eq!(bad, vec![blocks[2].0]);
        assert_eq!(last, None, "the whole store fit in one chunk");
        // From the middle: only the blocks after it.
        let mut order: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
        order.sort_by_key(|c| c.to_bytes());
        let (_, n, _, _) = check_chunk(&store, Some(order[2])).unwrap();
        assert_eq!(n, 2);
    }
}
