//! The server's block reader: a thread of its own that reads the blocks peers asked for from the store
//! ([`BlockStore::read_to_send`], which the node's store answers without re-hashing: receivers verify), so the
//! swarm's task never waits on the disk, and hands them back in batches of a bounded size, in the order they were
//! asked for.
//!
//! Batches are what the server sends as one Bitswap message: a batch is closed before a block would take it past
//! the byte cap, and at the end of each request, so the first blocks of a large request are on the wire while the
//! rest are still being read.

use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};

use bytes::Bytes;
use cid::Cid;
use futures::channel::mpsc as async_mpsc;
use futures::StreamExt;
use libp2p::PeerId;

use crate::BlockStore;

/// Blocks read for one peer, in the order asked; `None`: not stored (any more).
pub(crate) type Batch = (PeerId, Vec<(Cid, Option<Bytes>)>);

/// The handle the behaviour keeps: requests go in, batches come out. Dropping it ends the thread once the requests
/// already queued are read.
pub(crate) struct Reader {
    requests: mpsc::Sender<(PeerId, Vec<Cid>)>,
    batches: async_mpsc::UnboundedReceiver<Batch>,
}

impl Reader {
    /// Starts the reader thread over `store`; batches hold at most `batch_bytes` of block data (a single larger
    /// block travels alone).
    pub(crate) fn spawn(store: Arc<dyn BlockStore>, batch_bytes: usize) -> Reader {
        let (requests, jobs) = mpsc::channel::<(PeerId, Vec<Cid>)>();
        let (done, batches) = async_mpsc::unbounded();
        std::thread::Builder::new()
            .name("bitswap-reader".into())
            .spawn(move || {
                for (peer, cids) in jobs {
                    let sent = read_batches(store.as_ref(), cids, batch_bytes, |batch| {
                        done.unbounded_send((peer, batch)).is_ok()
                    });
                    if !sent {
                        return; // the behaviour is gone
                    }
                }
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

/// Reads `cids` in order, calling `emit` with each batch: a batch is closed before a block would take its data
/// past `batch_bytes`, and at the end. Stops early, returning `false`, when `emit` does.
pub(crate) fn read_batches(
    store: &dyn BlockStore,
    cids: Vec<Cid>,
    batch_bytes: usize,
    mut emit: impl FnMut(Vec<(Cid, Option<Bytes>)>) -> bool,
) -> bool {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for cid in cids {
        let data = store.read_to_send(&cid);
        let len = data.as_ref().map_or(0, Bytes::len);
        if !batch.is_empty() && bytes + len > batch_bytes {
            if !emit(std::mem::take(&mut batch)) {
                return false;
            }
            bytes = 0;
        }
        bytes += len;
        batch.push((cid, data));
    }
    batch.is_empty() || emit(batch)
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
}
