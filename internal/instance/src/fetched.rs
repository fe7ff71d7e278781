//! Blocks fetched from other nodes: the sink that stores them ([`NetSink`]), and reading a file while they arrive
//! ([`FetchingSource`]), so that a download of a file this node lacks streams its bytes in order as the blocks come
//! in instead of waiting for the whole DAG (docs/p2p.md, "Reading while fetching").
//!
//! The fetch itself is retrieval's (`xnode_p2p::Client::fetch_dag`): it keeps its window of blocks in flight and
//! hands each verified block to the sink; it knows nothing of readers. A reader asks the source for blocks in file
//! order; the source answers from the store, or from the sink's blocks not yet committed, or waits for the next
//! block to arrive or the fetch to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::future::BoxFuture;
use xnode_dag::{BlockSource, ReadError};
use xnode_p2p::{Client, FetchStats, P2pError};
use xnode_storage::{BlockWriter, Store};

use crate::InstanceError;

/// Fetched blocks are committed (made crash-safe) at least every this many bytes; until then a reader is served them
/// from memory, so this bounds what a large download holds (serving a 1 GiB file it fetched, a node peaked at
/// 197-201 MiB resident with 64 MiB, 135-159 MiB with 16 MiB; 16 MiB is 12 fsyncs a second at 200 MiB/s).
const NET_COMMIT_BYTES: u64 = 16 << 20;

/// A full store cannot keep what a download fetches: such blocks are held in memory for the reader instead, up to
/// this many bytes not yet read (the fetch waits beyond it, so memory stays bounded however large the file).
const TRANSIENT_MAX: u64 = 64 << 20;

/// Blocks held in memory that the reader has read are kept this many more, for a second look (the root is read by
/// `stat`, then again by the file reader).
const TRANSIENT_READ_KEPT: usize = 16;

/// A reader waiting for a block looks again at least this often, whatever it was told (a safety net: every put,
/// commit and fetch end wakes it anyway).
const RECHECK: Duration = Duration::from_secs(1);

/// Where fetched blocks go: one store write session, committed every [`NET_COMMIT_BYTES`] and after each fetch, so
/// network blocks are not fsynced one by one.
pub(crate) struct NetSink {
    store: Store,
    session: Mutex<Option<Session>>,
    next_session: AtomicU64,
    /// Blocks put in sessions not committed yet, with their session's id, kept while a download streams
    /// (`streams > 0`): the store can read a block only once its session commits, up to 64 MiB later, and a reader
    /// should not wait that long for bytes this node already has. They are verified bytes (Bitswap hashed them on
    /// arrival), so a reader takes them as they are. At most two sessions' worth: the open one and one committing.
    unsynced: Mutex<HashMap<Cid, (u64, Bytes)>>,
    /// Downloads streaming now ([`FetchingSource`]s alive); while there are none, puts keep no copy.
    streams: AtomicUsize,
    /// Blocks fetched for a download while the store was full: verified, never stored, held for the reader.
    transient: Mutex<Transient>,
    /// Bumped on every put, commit and fetch end; readers waiting for a block wait on `arrived` for it to change.
    generation: Mutex<u64>,
    arrived: Condvar,
    /// The same news for async waiters ([`FetchingSource::wait_for`]), which must not hold a thread while they
    /// wait: a read of a block that exists nowhere waits its whole fetch timeout.
    changes: tokio::sync::watch::Sender<u64>,
}

struct Session {
    id: u64,
    writer: BlockWriter,
}

/// See [`NetSink::transient`].
#[derive(Default)]
struct Transient {
    blocks: HashMap<Cid, Bytes>,
    /// Bytes of blocks no reader has read yet; puts wait while this is over [`TRANSIENT_MAX`].
    unread: u64,
    unread_set: std::collections::HashSet<Cid>,
    /// Blocks read, oldest first; beyond [`TRANSIENT_READ_KEPT`] they are dropped.
    read: std::collections::VecDeque<Cid>,
}

impl NetSink {
    pub(crate) fn new(store: Store) -> Self {
        NetSink {
            store,
            session: Mutex::new(None),
            next_session: AtomicU64::new(0),
            unsynced: Mutex::new(HashMap::new()),
            streams: AtomicUsize::new(0),
            transient: Mutex::new(Transient::default()),
            generation: Mutex::new(0),
            arrived: Condvar::new(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Commits the open session, if any: every block put so far is then stored.
    pub(crate) fn commit(&self) -> Result<(), InstanceError> {
        let session = self.session.lock().expect("not poisoned").take();
        if let Some(s) = session {
            self.commit_session(s)?;
        }
        Ok(())
    }

    fn commit_session(&self, s: Session) -> Result<(), InstanceError> {
        let result = s.writer.commit(None);
        // Committed (readable from the store) or failed (never stored): either way the copies are done with.
        self.unsynced.lock().expect("not poisoned").retain(|_, (id, _)| *id != s.id);
        self.wake();
        result?;
        Ok(())
    }

    /// A block put and not committed yet, if a download was streaming when it came.
    fn unsynced(&self, cid: &Cid) -> Option<Bytes> {
        self.unsynced.lock().expect("not poisoned").get(cid).map(|(_, b)| b.clone())
    }

    /// Whether no download is streaming now.
    pub(crate) fn idle(&self) -> bool {
        self.streams.load(Ordering::Acquire) == 0
    }

    /// A block held in memory for a download on a full store; `take` marks it read.
    fn transient(&self, cid: &Cid, take: bool) -> Option<Bytes> {
        let mut t = self.transient.lock().expect("not poisoned");
        let data = t.blocks.get(cid).cloned()?;
        if take && t.unread_set.remove(cid) {
            t.unread -= data.len() as u64;
            t.read.push_back(*cid);
            while t.read.len() > TRANSIENT_READ_KEPT {
                let old = t.read.pop_front().expect("non-empty");
                t.blocks.remove(&old);
            }
            drop(t);
            self.wake();
        }
        Some(data)
    }

    /// Holds a block a full store refused, for the download streaming it: waits while the reader is more than
    /// [`TRANSIENT_MAX`] behind (the fetch slows to the reader's pace), or gives up once no download streams.
    fn hold_transient(&self, cid: &Cid, data: &Bytes) -> bool {
        loop {
            if self.streams.load(Ordering::Acquire) == 0 {
                return false;
            }
            let seen = self.generation();
            {
                let mut t = self.transient.lock().expect("not poisoned");
                if t.blocks.contains_key(cid) {
                    return true;
                }
                if t.unread < TRANSIENT_MAX {
                    t.unread += data.len() as u64;
                    t.unread_set.insert(*cid);
                    t.blocks.insert(*cid, data.clone());
                    return true;
                }
            }
            self.wait_past(seen);
        }
    }

    /// Tells waiting readers something changed.
    fn wake(&self) {
        *self.generation.lock().expect("not poisoned") += 1;
        self.arrived.notify_all();
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().expect("not poisoned")
    }

    /// Waits until something changed since `seen` was read, or [`RECHECK`] passed.
    fn wait_past(&self, seen: u64) {
        let guard = self.generation.lock().expect("not poisoned");
        let _ = self.arrived.wait_timeout_while(guard, RECHECK, |g| *g == seen).expect("not poisoned");
    }
}

impl xnode_p2p::BlockSink for NetSink {
    fn put(&self, cid: &Cid, data: &Bytes) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let full = {
            let mut guard = self.session.lock().expect("not poisoned");
            let session = guard.get_or_insert_with(|| Session {
                id: self.next_session.fetch_add(1, Ordering::Relaxed),
                writer: self.store.writer(),
            });
            match session.writer.put(cid, data) {
                // A download on a full store: the reader gets the block from memory, and nothing is kept.
                Err(full @ xnode_storage::StoreError::Full { .. }) if self.streams.load(Ordering::Acquire) > 0 => {
                    drop(guard);
                    if self.hold_transient(cid, data) {
                        self.wake();
                        return Ok(());
                    }
                    return Err(Box::new(full));
                }
                put => put?,
            }
            if self.streams.load(Ordering::Acquire) > 0 {
                self.unsynced.lock().expect("not poisoned").insert(*cid, (session.id, data.clone()));
            }
            if session.writer.pending_bytes() >= NET_COMMIT_BYTES {
                guard.take()
            } else {
                None
            }
        };
        self.wake();
        // Synced outside the lock: the next blocks go to a new session meanwhile instead of waiting for the disk.
        // This put returns (and the fetch counts the block as stored) only once the commit is done.
        if let Some(s) = full {
            self.commit_session(s)?;
        }
        Ok(())
    }
}

/// Fetches what the store lacks of the DAG under `root`, then commits what was fetched (also after a failure, so
/// what arrived is kept).
pub(crate) async fn fetch_and_commit(
    client: &Client,
    sink: &Arc<NetSink>,
    root: Cid,
    timeout: Duration,
) -> Result<FetchStats, InstanceError> {
    let result = client.fetch_dag(root, timeout).await;
    let sink = sink.clone();
    tokio::task::spawn_blocking(move || sink.commit()).await.expect("commit does not panic")?;
    Ok(result?)
}

/// Starts the fetch of a DAG; it resolves when the fetch (and its commit) ended.
pub(crate) type StartFetch = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), P2pError>> + Send>;

enum FetchState {
    /// Not needed so far: every block asked for was in the store.
    NotStarted(StartFetch),
    Running,
    Done(Result<(), P2pError>),
}

/// The DAG under one root as a [`BlockSource`] for reading while its missing blocks are fetched: a block the store
/// lacks starts the fetch of the whole DAG (once, on the first miss, so a file held here never touches the network)
/// and waits until the block arrives or the fetch ends. Blocks come from the store (checked, as every local read),
/// or, before their session is committed, from the sink's copy of the verified bytes (not hashed again: Bitswap did
/// on arrival, and they never left memory). When the fetch fails, the blocks still missing fail with its error
/// (naming the first block nobody sent in time); when it succeeds, every block is in the store.
///
/// Blocking: use it on a blocking thread. Create it inside a Tokio runtime (the fetch runs there).
pub struct FetchingSource {
    store: Store,
    sink: Arc<NetSink>,
    runtime: tokio::runtime::Handle,
    fetch: Arc<Mutex<FetchState>>,
    /// Repairs a block whose local copy is corrupted; without it (tests), corruption fails the read.
    integrity: Option<crate::scrub::Integrity>,
}

impl FetchingSource {
    pub(crate) fn new(store: Store, sink: Arc<NetSink>, start: StartFetch) -> Self {
        sink.streams.fetch_add(1, Ordering::AcqRel);
        FetchingSource {
            store,
            sink,
            runtime: tokio::runtime::Handle::current(),
            fetch: Arc::new(Mutex::new(FetchState::NotStarted(start))),
            integrity: None,
        }
    }

    /// Treats a corrupted local copy like a missing one: it is quarantined and a good copy fetched (and stored)
    /// before the read goes on, instead of failing the read.
    pub(crate) fn with_repair(mut self, integrity: crate::scrub::Integrity) -> Self {
        self.integrity = Some(integrity);
        self
    }

    /// How the fetch failed, if it did.
    pub(crate) fn failure(&self) -> Option<P2pError> {
        match &*self.fetch.lock().expect("not poisoned") {
            FetchState::Done(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Starts the fetch if it has not started; `Some` with how it ended if it has.
    fn fetch_outcome(&self) -> Option<Result<(), P2pError>> {
        let mut state = self.fetch.lock().expect("not poisoned");
        match std::mem::replace(&mut *state, FetchState::Running) {
            FetchState::NotStarted(start) => {
                let fetch = self.fetch.clone();
                let sink = self.sink.clone();
                let running = start();
                self.runtime.spawn(async move {
                    let result = running.await;
                    *fetch.lock().expect("not poisoned") = FetchState::Done(result);
                    sink.wake();
                });
                None
            }
            FetchState::Running => None,
            FetchState::Done(result) => {
                *state = FetchState::Done(result.clone());
                Some(result)
            }
        }
    }
}

impl FetchingSource {
    /// Waits, holding no thread, until `cid` can be read here at once or the fetch has ended (then reading it
    /// gives the fetch's error). Starts the fetch if the block is missing. A reader calls this for the root before
    /// it takes a blocking thread: most of a read's waiting (all of it, for a CID that exists nowhere) is for the
    /// root, and thousands of such reads then cost memory only.
    pub(crate) async fn wait_for(&self, cid: &Cid) -> Result<(), ReadError> {
        loop {
            // Subscribed before looking, so a block that arrives meanwhile ends the wait below at once.
            let mut changed = self.sink.changes.subscribe();
            if self.sink.unsynced(cid).is_some() || self.sink.transient(cid, false).is_some() {
                return Ok(());
            }
            // One index lookup (microseconds): fine on an async thread.
            match self.store.has(cid) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(ReadError::Source(Box::new(e))),
            }
            if self.fetch_outcome().is_some() {
                return Ok(());
            }
            let _ = tokio::time::timeout(RECHECK, changed.changed()).await;
        }
    }
}

impl Drop for FetchingSource {
    fn drop(&mut self) {
        if self.sink.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last download is done: what a full store could not keep is not needed any more.
            *self.sink.transient.lock().expect("not poisoned") = Transient::default();
            self.sink.wake();
        }
    }
}

impl BlockSource for FetchingSource {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        loop {
            // Read before looking, so a block that arrives meanwhile ends the wait below at once.
            let seen = self.sink.generation();
            if let Some(data) = self.sink.unsynced(cid).or_else(|| self.sink.transient(cid, true)) {
                return Ok(data);
            }
            match self.store.get(cid) {
                Ok(Some(data)) => return Ok(data),
                Ok(None) => {}
                Err(xnode_storage::StoreError::Corrupted { cid: bad }) if self.integrity.is_some() => {
                    let integrity = self.integrity.as_ref().expect("checked");
                    return integrity
                        .blocking_repair(bad, crate::scrub::Finder::Read)
                        .map_err(|e| ReadError::Source(Box::new(e)));
                }
                Err(e) => return Err(ReadError::Source(Box::new(e))),
            }
            match self.fetch_outcome() {
                None => {}
                // The fetch stored the whole DAG and committed it; this block is not part of it (or was deleted).
                Some(Ok(())) => return Err(ReadError::NotFound(*cid)),
                Some(Err(e)) => return Err(ReadError::Source(Box::new(e))),
            }
            self.sink.wait_past(seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xnode_p2p::BlockSink as _;
    use xnode_storage::StoreConfig;

    fn raw(i: u32) -> (Cid, Bytes) {
        let data = Bytes::from(format!("block {i}").repeat(1000));
        (xnode_dag::cid_v1(xnode_dag::RAW, &data), data)
    }

    fn sink(dir: &std::path::Path) -> Arc<NetSink> {
        Arc::new(NetSink::new(Store::open(dir, StoreConfig::default()).unwrap()))
    }

    /// A fetch the test ends by hand: `Some(result)` sent on the channel; counts how often it was started.
    fn manual_fetch(started: Arc<AtomicUsize>) -> (StartFetch, tokio::sync::oneshot::Sender<Result<(), P2pError>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start: StartFetch = Box::new(move || {
            started.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { rx.await.unwrap_or(Err(P2pError::Stopped)) })
        });
        (start, tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waits_for_blocks_and_takes_them_before_their_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = sink(tmp.path());
        let started = Arc::new(AtomicUsize::new(0));
        let (start, end) = manual_fetch(started.clone());
        let source = FetchingSource::new(sink.store.clone(), sink.clone(), start);
        let (a, b) = (raw(1), raw(2));
        let reader = tokio::task::spawn_blocking({
            let (a, b) = (a.0, b.0);
            move || (source.get_block(&a).unwrap(), source.get_block(&b).unwrap())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "nothing arrived yet");
        assert_eq!(started.load(Ordering::SeqCst), 1, "the first miss started the fetch");
        sink.put(&a.0, &a.1).unwrap();
        sink.put(&b.0, &b.1).unwrap();
        let (got_a, got_b) = tokio::time::timeout(Duration::from_millis(500), reader).await.unwrap().unwrap();
        assert_eq!((got_a, got_b), (a.1, b.1));
        assert!(!sink.store.has(&a.0).unwrap(), "read before the commit");
        sink.commit().unwrap();
        assert!(sink.unsynced.lock().unwrap().is_empty(), "the commit drops the copies");
        let _ = end.send(Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fetch_ends_the_wait_with_its_error_and_held_blocks_need_no_fetch() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = sink(tmp.path());
        let held = raw(3);
        sink.put(&held.0, &held.1).unwrap();
        sink.commit().unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let (start, end) = manual_fetch(started.clone());
        let source = Arc::new(FetchingSource::new(sink.store.clone(), sink.clone(), start));
        let s = source.clone();
        assert_eq!(tokio::task::spawn_blocking(move || s.get_block(&held.0).unwrap()).await.unwrap(), held.1);
        assert_eq!(started.load(Ordering::SeqCst), 0, "a held block starts no fetch");

        let missing = raw(4).0;
        let s = source.clone();
        let reader = tokio::task::spawn_blocking(move || s.get_block(&missing));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished());
        let _ = end.send(Err(P2pError::NotFound { cid: missing, timeout: Duration::from_secs(3) }));
        let err = tokio::time::timeout(Duration::from_millis(500), reader).await.unwrap().unwrap().unwrap_err();
        assert!(err.to_string().contains(&missing.to_string()), "{err}");
        assert!(matches!(source.failure(), Some(P2pError::NotFound { cid, .. }) if cid == missing));
        assert_eq!(started.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn without_a_stream_puts_keep_no_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = sink(tmp.path());
        let a = raw(5);
        sink.put(&a.0, &a.1).unwrap();
        assert!(sink.unsynced.lock().unwrap().is_empty());
        sink.commit().unwrap();
        assert_eq!(sink.store.get(&a.0).unwrap(), Some(a.1));
    }
}
