//! The server's block reader: threads of their own that read the blocks peers asked for from the store
//! ([`BlockStore::read_to_send`], which the node's store answers without re-hashing: receivers verify), so the
//! swarm's task never waits on the disk, and hand them back in batches of a bounded size, in the order they were
//! asked for.
//!
//! Batches are what the server sends as one Bitswap message: a batch is closed before a block would take it past
//! the byte cap, and at the end of each request, so the first blocks of a large request are on the wire while the
//! rest are still being read.
//!
//! Up to [`IN_FLIGHT`] reads run at once on [`READ_THREADS`] threads, across requests: the store reads pack data
//! with `O_DIRECT` (no kernel readahead), so one read at a time left the disk idle between blocks and capped a
//! transfer at the disk's single-request speed. A coordinator thread hands reads out and puts the results back in
//! order.

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use cid::Cid;
use futures::channel::mpsc as async_mpsc;
use futures::StreamExt;
use libp2p::PeerId;

use crate::BlockStore;

/// Blocks read for one peer, in the order asked; `None`: not stored (any more).
pub(crate) type Batch = (PeerId, Vec<(Cid, Option<Bytes>)>);

/// Threads reading blocks.
pub(crate) const READ_THREADS: usize = 4;

/// Reads handed out and not yet back; bounds the memory of blocks read ahead of the one sent next (8 x 256 KiB).
pub(crate) const IN_FLIGHT: usize = 8;

/// The handle the behaviour keeps: requests go in, batches come out. Dropping it ends the threads once the requests
/// already queued are read.
pub(crate) struct Reader {
    requests: mpsc::Sender<(PeerId, Vec<Cid>)>,
    batches: async_mpsc::UnboundedReceiver<Batch>,
}

impl Reader {
    /// Starts the reader threads over `store`; batches hold at most `batch_bytes` of block data (a single larger
    /// block travels alone).
    pub(crate) fn spawn(store: Arc<dyn BlockStore>, batch_bytes: usize) -> Reader {
        let (requests, incoming) = mpsc::channel::<(PeerId, Vec<Cid>)>();
        let (done, batches) = async_mpsc::unbounded();
        let (jobs, queue) = mpsc::channel::<(u64, Cid)>();
        let (results, finished) = mpsc::channel::<(u64, Option<Bytes>)>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..READ_THREADS {
            let (store, queue, results) = (store.clone(), queue.clone(), results.clone());
            std::thread::Builder::new()
                .name(format!("bitswap-read-{i}"))
                .spawn(move || loop {
                    let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((seq, cid)) = job else { return }; // the coordinator is gone
                    if results.send((seq, store.read_to_send(&cid))).is_err() {
                        return;
                    }
                })
                .expect("spawning a Bitswap reader thread");
        }
        std::thread::Builder::new()
            .name("bitswap-reader".into())
            .spawn(move || {
                coordinate(&incoming, &jobs, &finished, batch_bytes, |batch| done.unbounded_send(batch).is_ok())
            })
            .expect("spawning the Bitswap reader thread");
        Reader { requests, batches }
    }

    /// Queues a read of `cids` for `peer`.
    pub(crate) fn read(&self, peer: PeerId, cids: Vec<Cid>) {
        // Fails only if the thread died, which it does not while this handle lives.
        let _ = self.requests.send((peer, cids));
    }

    /// The next batch read, if one is ready (registers the waker otherwise).
    pub(crate) fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        self.batches.poll_next_unpin(cx)
    }
}

/// One block asked for, in the order of asking.
struct Slot {
    seq: u64,
    peer: PeerId,
    cid: Cid,
    /// The last block of its request: the batch closes after it.
    last: bool,
}

/// The coordinator: takes requests, keeps up to [`IN_FLIGHT`] reads out on `jobs`, and emits batches in order.
/// Returns when the requests end and everything asked is emitted, or when `emit` fails (the behaviour is gone).
fn coordinate(
    requests: &mpsc::Receiver<(PeerId, Vec<Cid>)>,
    jobs: &mpsc::Sender<(u64, Cid)>,
    finished: &mpsc::Receiver<(u64, Option<Bytes>)>,
    batch_bytes: usize,
    mut emit: impl FnMut(Batch) -> bool,
) {
    let mut next_seq = 0u64;
    // Asked for, in order: the first `waiting.len() - unsent` are handed out (read or being read), the rest wait.
    let mut waiting: VecDeque<Slot> = VecDeque::new();
    let mut unsent = 0usize;
    let mut in_flight = 0usize;
    let mut ready: HashMap<u64, Option<Bytes>> = HashMap::new();
    let mut batcher = Batcher::new(batch_bytes);
    let mut requests_open = true;
    loop {
        // Take new requests; block for one only when nothing is being read.
        while requests_open {
            let request = if waiting.is_empty() {
                requests.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                requests.try_recv()
            };
            match request {
                Ok((peer, cids)) => {
                    let n = cids.len();
                    for (i, cid) in cids.into_iter().enumerate() {
                        waiting.push_back(Slot { seq: next_seq, peer, cid, last: i + 1 == n });
                        next_seq += 1;
                        unsent += 1;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => requests_open = false,
            }
        }
        if waiting.is_empty() {
            return; // no more requests, and everything asked was emitted
        }
        // Hand reads out, oldest first, up to the bound.
        while unsent > 0 && in_flight < IN_FLIGHT {
            let slot = &waiting[waiting.len() - unsent];
            if jobs.send((slot.seq, slot.cid)).is_err() {
                return;
            }
            unsent -= 1;
            in_flight += 1;
        }
        // Wait for one read, then emit every block that is next in order.
        let Ok((seq, data)) = finished.recv() else { return };
        in_flight -= 1;
        ready.insert(seq, data);
        while waiting.len() > unsent {
            let Some(data) = ready.remove(&waiting[0].seq) else { break };
            let slot = waiting.pop_front().expect("not empty");
            for batch in batcher.push(slot.peer, slot.cid, data, slot.last) {
                if !emit(batch) {
                    return;
                }
            }
        }
    }
}

/// Groups blocks, given in order, into batches: one peer's, closed before a block would take the data past the
/// cap, and after the last block of each request.
struct Batcher {
    cap: usize,
    open: Option<Batch>,
    bytes: usize,
}

impl Batcher {
    fn new(cap: usize) -> Batcher {
        Batcher { cap, open: None, bytes: 0 }
    }

    /// Adds a block; returns the batches this closes (at most two: the one it did not fit in, and its own if `last`).
    fn push(&mut self, peer: PeerId, cid: Cid, data: Option<Bytes>, last: bool) -> Vec<Batch> {
        let mut closed = Vec::new();
        let len = data.as_ref().map_or(0, Bytes::len);
        let fits = matches!(&self.open, Some((p, b)) if *p == peer && (b.is_empty() || self.bytes + len <= self.cap));
        if !fits {
            closed.extend(self.open.take());
            self.open = Some((peer, Vec::new()));
            self.bytes = 0;
        }
        let (_, batch) = self.open.as_mut().expect("opened above");
        batch.push((cid, data));
        self.bytes += len;
        if last {
            closed.extend(self.open.take());
        }
        closed
    }
}

/// Reads `cids` in order on this thread, calling `emit` with each batch (as the threads do, without them). Stops
/// early, returning `false`, when `emit` does.
#[cfg(test)]
pub(crate) fn read_batches(
    store: &dyn BlockStore,
    cids: Vec<Cid>,
    batch_bytes: usize,
    mut emit: impl FnMut(Vec<(Cid, Option<Bytes>)>) -> bool,
) -> bool {
    let peer = PeerId::random();
    let mut batcher = Batcher::new(batch_bytes);
    let n = cids.len();
    for (i, cid) in cids.into_iter().enumerate() {
        for (_, batch) in batcher.push(peer, cid, store.read_to_send(&cid), i + 1 == n) {
            if !emit(batch) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use multihash::Multihash;
    use sha2::{Digest, Sha256};

    use super::*;

    #[derive(Default)]
    struct MemStore(Mutex<HashMap<Cid, Bytes>>);

    impl BlockStore for MemStore {
        fn has(&self, cid: &Cid) -> bool {
            self.0.lock().unwrap().contains_key(cid)
        }
        fn get(&self, _: &Cid) -> Option<Bytes> {
            panic!("the server reads with read_to_send only (it may skip the hash check; receivers verify)")
        }
        fn read_to_send(&self, cid: &Cid) -> Option<Bytes> {
            self.0.lock().unwrap().get(cid).cloned()
        }
    }

    fn put(store: &MemStore, len: usize, tag: u8) -> Cid {
        let data = Bytes::from(vec![tag; len]);
        let cid = Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(&data)).unwrap());
        store.0.lock().unwrap().insert(cid, data);
        cid
    }

    #[test]
    fn batches_stay_under_the_cap_and_keep_the_order() {
        let store = MemStore::default();
        // 300 + 300 + 300 fill a 1000-byte batch only twice; 1500 travels alone; the missing block costs nothing.
        let cids = vec![
            put(&store, 300, 1),
            put(&store, 300, 2),
            put(&store, 300, 3),
            put(&store, 1500, 4),
            Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(b"absent")).unwrap()),
            put(&store, 100, 5),
        ];
        let mut batches = Vec::new();
        assert!(read_batches(&store, cids.clone(), 1000, |b| {
            batches.push(b);
            true
        }));
        let sizes: Vec<Vec<usize>> =
            batches.iter().map(|b| b.iter().map(|(_, d)| d.as_ref().map_or(0, Bytes::len)).collect()).collect();
        assert_eq!(sizes, vec![vec![300, 300, 300], vec![1500], vec![0, 100]]);
        let order: Vec<Cid> = batches.iter().flatten().map(|(c, _)| *c).collect();
        assert_eq!(order, cids);
        assert!(batches[2][0].1.is_none());
    }

    #[test]
    fn the_thread_answers_requests_in_order() {
        let store = Arc::new(MemStore::default());
        let a: Vec<Cid> = (0..5).map(|i| put(&store, 400, i)).collect();
        let mut reader = Reader::spawn(store.clone(), 1000);
        let peer = PeerId::random();
        reader.read(peer, a[..3].to_vec());
        reader.read(peer, a[3..].to_vec());
        let mut got = Vec::new();
        futures::executor::block_on(futures::future::poll_fn(|cx| {
            while let Poll::Ready(Some((p, batch))) = reader.poll_batch(cx) {
                assert_eq!(p, peer);
                assert!(batch.len() <= 2, "two 400-byte blocks fill a 1000-byte batch");
                got.extend(batch.into_iter().map(|(c, _)| c));
            }
            if got.len() == a.len() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        assert_eq!(got, a);
    }

    /// Reads that take longest for the blocks asked first, counting how many run at once.
    #[derive(Default)]
    struct SlowStore {
        blocks: MemStore,
        running: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl BlockStore for SlowStore {
        fn has(&self, cid: &Cid) -> bool {
            self.blocks.has(cid)
        }
        fn get(&self, cid: &Cid) -> Option<Bytes> {
            self.blocks.get(cid)
        }
        fn read_to_send(&self, cid: &Cid) -> Option<Bytes> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            let data = self.blocks.read_to_send(cid);
            // The first tag sleeps longest, so later reads finish first.
            let tag = data.as_ref().map_or(0, |d| d[0]);
            std::thread::sleep(std::time::Duration::from_millis(40u64.saturating_sub(u64::from(tag) * 4)));
            self.running.fetch_sub(1, SeqCst);
            data
        }
    }

    #[test]
    fn reads_overlap_across_requests_and_come_back_in_the_order_asked() {
        let store = Arc::new(SlowStore::default());
        let cids: Vec<Cid> = (0..10).map(|i| put(&store.blocks, 100, i)).collect();
        let mut reader = Reader::spawn(store.clone(), 1 << 20);
        let (p1, p2) = (PeerId::random(), PeerId::random());
        // Requests of one block each, as a retriever topping up its window sends them, for two peers.
        for (i, cid) in cids.iter().enumerate() {
            reader.read(if i % 2 == 0 { p1 } else { p2 }, vec![*cid]);
        }
        let mut got = Vec::new();
        futures::executor::block_on(futures::future::poll_fn(|cx| {
            while let Poll::Ready(Some((peer, batch))) = reader.poll_batch(cx) {
                assert_eq!(batch.len(), 1, "a batch closes at the end of its request");
                got.push((peer, batch[0].0));
            }
            if got.len() == cids.len() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        let asked: Vec<(PeerId, Cid)> =
            cids.iter().enumerate().map(|(i, c)| (if i % 2 == 0 { p1 } else { p2 }, *c)).collect();
        assert_eq!(got, asked);
        let most = store.most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most > 1, "reads ran one at a time");
        assert!(most <= READ_THREADS);
    }
}
