//! Helpers for multi-node tests: in-memory stores, nodes on loopback ephemeral ports, deadline waits.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::multiaddr::Protocol;
use xnode_p2p::{BlockSink, Client, Holdings, Multiaddr, NoHoldings, Node, P2pConfig};

/// A block store in memory: serves Bitswap and takes fetched blocks.
#[derive(Default)]
pub struct MemStore(Mutex<HashMap<Cid, Bytes>>);

impl MemStore {
    pub fn insert(&self, cid: Cid, data: Bytes) {
        self.0.lock().unwrap().insert(cid, data);
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn block(&self, cid: &Cid) -> Option<Bytes> {
        self.0.lock().unwrap().get(cid).cloned()
    }
}

impl xnode_bitswap::BlockStore for MemStore {
    fn has(&self, cid: &Cid) -> bool {
        self.0.lock().unwrap().contains_key(cid)
    }
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        self.block(cid)
    }
}

impl BlockSink for MemStore {
    fn put(&self, cid: &Cid, data: &Bytes) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.insert(*cid, data.clone());
        Ok(())
    }
}

/// Claims every block of `inner` but serves bytes that do not hash to their CID.
pub struct CorruptStore(pub Arc<MemStore>);

impl xnode_bitswap::BlockStore for CorruptStore {
    fn has(&self, cid: &Cid) -> bool {
        self.0.block(cid).is_some()
    }
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        self.0.block(cid).map(|data| {
            let mut bad = data.to_vec();
            bad[0] ^= 0xff;
            Bytes::from(bad)
        })
    }
}

/// A running node with its store and temp dir.
pub struct TestNode {
    pub node: Node,
    pub client: Client,
    pub store: Arc<MemStore>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(group: &str, tweak: impl FnOnce(&mut P2pConfig)) -> TestNode {
        let store = Arc::new(MemStore::default());
        Self::start_serving(group, store.clone(), store, tweak).await
    }

    /// A node whose Bitswap serves `served` while fetched blocks land in `store`.
    pub async fn start_serving(
        group: &str,
        served: Arc<dyn xnode_bitswap::BlockStore>,
        store: Arc<MemStore>,
        tweak: impl FnOnce(&mut P2pConfig),
    ) -> TestNode {
        Self::start_full(group, served, store, Arc::new(NoHoldings), tweak).await
    }

    /// A node answering holdings requests from `holdings`.
    pub async fn start_holding(group: &str, holdings: Arc<dyn Holdings>) -> TestNode {
        let store = Arc::new(MemStore::default());
        Self::start_full(group, store.clone(), store, holdings, |_| {}).await
    }

    pub async fn start_full(
        group: &str,
        served: Arc<dyn xnode_bitswap::BlockStore>,
        store: Arc<MemStore>,
        holdings: Arc<dyn Holdings>,
        tweak: impl FnOnce(&mut P2pConfig),
    ) -> TestNode {
        Self::start_all(group, served, store, holdings, Arc::new(xnode_p2p::NoIngest), tweak).await
    }

    /// A node whose members' ingest batches go to `ingest`.
    pub async fn start_ingesting(group: &str, ingest: Arc<dyn xnode_p2p::Ingest>) -> TestNode {
        let store = Arc::new(MemStore::default());
        Self::start_all(group, store.clone(), store, Arc::new(NoHoldings), ingest, |_| {}).await
    }

    pub async fn start_all(
        group: &str,
        served: Arc<dyn xnode_bitswap::BlockStore>,
        store: Arc<MemStore>,
        holdings: Arc<dyn Holdings>,
        ingest: Arc<dyn xnode_p2p::Ingest>,
        tweak: impl FnOnce(&mut P2pConfig),
    ) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = P2pConfig::local_test(group, dir.path().join("p2p.key"));
        tweak(&mut config);
        let node = Node::spawn(config, xnode_bitswap::Config::default(), served, holdings, store.clone(), ingest)
            .await
            .unwrap();
        let client = node.client();
        TestNode { node, client, store, _dir: dir }
    }

    /// The node's first direct TCP address (not a relay circuit it listens on), with `/p2p/<peer id>`.
    pub async fn tcp_addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.unwrap();
        let direct_tcp = |a: &Multiaddr| {
            a.iter().any(|p| matches!(p, Protocol::Tcp(_))) && !a.iter().any(|p| p == Protocol::P2pCircuit)
        };
        let addr = addrs.into_iter().find(direct_tcp).expect("a tcp address");
        addr.with(Protocol::P2p(self.client.peer_id()))
    }

    /// The node's QUIC address, with `/p2p/<peer id>`.
    pub async fn quic_addr(&self) -> Multiaddr {
        let addrs = self.client.listen_addrs().await.unwrap();
        let addr = addrs.into_iter().find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1))).expect("a quic address");
        addr.with(Protocol::P2p(self.client.peer_id()))
    }

    /// Waits until `peer` is connected and admitted.
    pub async fn wait_admitted(&self, peer: libp2p::PeerId) {
        let client = self.client.clone();
        wait_until(Duration::from_secs(15), &format!("{peer} admitted"), || {
            let client = client.clone();
            async move { client.connected_peers().await.unwrap().contains(&peer) }
        })
        .await;
    }
}

/// Polls `check` until it holds, failing the test after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Imports `len` random bytes as a UnixFS file (256 KiB chunks); returns the root and every block.
pub fn random_file(len: usize, seed: u64) -> (Cid, Vec<xnode_dag::Block>) {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let mut blocks: Vec<xnode_dag::Block> = Vec::new();
    let added = xnode_dag::import_file(&xnode_dag::ImportOptions::default(), &data[..], &mut blocks).unwrap();
    (added.cid, blocks)
}

pub fn hold(store: &MemStore, blocks: &[xnode_dag::Block]) {
    for b in blocks {
        store.insert(b.cid, b.data.clone());
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
