//! `/xnode/ingest/1.0.0` between real swarms on loopback: a member's batch is stored through the receiver's `Ingest`
//! and both sides report its blocks as transfers (the dashboard's log, the metrics); a full receiver's refusal reaches
//! the sender and reports none; a batch with one block that does not match its CID is refused
//! whole and its sender banned; a peer that is not a live member is refused.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use common::TestNode;
use xnode_p2p::ingest::Refusal;
use xnode_p2p::{Ingest, NetEvent, P2pError, Via};

fn block(n: u32, len: usize) -> (Cid, Bytes) {
    let data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(n + 1) as u8).chain(n.to_le_bytes()).collect();
    (xnode_dag::cid_v1(0x55, &data), Bytes::from(data))
}

/// Records what it stages; full once `room` bytes are taken.
struct Fake {
    room: u64,
    staged: Mutex<Vec<(u64, Cid)>>,
}

impl Ingest for Fake {
    fn stage(&self, session: u64, blocks: &[(Cid, Bytes)]) -> Result<u32, Refusal> {
        let mut staged = self.staged.lock().unwrap();
        let needed: u64 = blocks.iter().map(|(_, d)| d.len() as u64).sum();
        let taken = staged.len() as u64 * 1000;
        if taken + needed > self.room {
            return Err(Refusal::Full { free: self.room - taken, needed });
        }
        staged.extend(blocks.iter().map(|(c, _)| (session, *c)));
        Ok(0)
    }
}

/// The next `n` transfers among `events` (fewer if none comes for a second).
async fn transfers(
    events: &mut tokio::sync::broadcast::Receiver<NetEvent>,
    n: usize,
) -> Vec<(libp2p::PeerId, libp2p::PeerId, Cid, u64)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Ok(NetEvent::Transfer { via, from, to, cid, bytes })) => {
                assert_eq!(via, Via::Ingest);
                seen.push((from, to, cid, bytes))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("network events: {e}"),
            Err(_) => break,
        }
    }
    seen
}

async fn pair(group: &str, fake: Arc<Fake>) -> (TestNode, TestNode) {
    let a = TestNode::start(group, |_| {}).await;
    let b = TestNode::start_ingesting(group, fake).await;
    a.client.dial(b.client.peer_id(), vec![b.tcp_addr().await]).await.unwrap();
    a.wait_admitted(b.client.peer_id()).await;
    b.wait_admitted(a.client.peer_id()).await;
    (a, b)
}

#[tokio::test]
async fn a_members_batch_is_stored_and_a_full_receiver_says_so() {
    common::init_tracing();
    let fake = Arc::new(Fake { room: 4_000, staged: Mutex::new(Vec::new()) });
    let (a, b) = pair("ingest-store", fake.clone()).await;
    let (mut sent, mut received) = (a.client.events(), b.client.events());
    let peer = b.client.peer_id();
    let batch: Vec<(Cid, Bytes)> = (0..3).map(|n| block(n, 996)).collect();
    assert_eq!(a.client.ingest(peer, 42, &batch).await.unwrap(), 0);
    let staged = fake.staged.lock().unwrap().clone();
    assert_eq!(staged, batch.iter().map(|(c, _)| (42, *c)).collect::<Vec<_>>());
    let expected: Vec<_> = batch.iter().map(|(c, d)| (a.client.peer_id(), peer, *c, d.len() as u64)).collect();
    assert_eq!(transfers(&mut sent, 3).await, expected, "the sender reports each block it sent");
    assert_eq!(transfers(&mut received, 3).await, expected, "the receiver reports each block it got");

    let more: Vec<(Cid, Bytes)> = (3..5).map(|n| block(n, 996)).collect();
    match a.client.ingest(peer, 42, &more).await {
        Err(P2pError::IngestRefused { reason: Refusal::Full { free, needed }, .. }) => {
            assert_eq!((free, needed), (1_000, 2_000))
        }
        other => panic!("expected a full refusal, got {other:?}"),
    }
    assert_eq!(fake.staged.lock().unwrap().len(), 3, "nothing of a refused batch is stored");
    assert_eq!(transfers(&mut sent, 1).await, [], "a refused batch is no transfer");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn a_lying_batch_is_refused_whole_and_its_sender_banned() {
    common::init_tracing();
    let fake = Arc::new(Fake { room: u64::MAX, staged: Mutex::new(Vec::new()) });
    let (a, b) = pair("ingest-liar", fake.clone()).await;
    let mut events = b.client.events();
    let (good, _) = block(1, 100);
    let (_, other) = block(2, 100);
    let lying = vec![block(3, 100), (good, other)];
    // The refusal may or may not reach the liar before the ban closes the connection; either way it is refused.
    match a.client.ingest(b.client.peer_id(), 1, &lying).await {
        Err(P2pError::IngestRefused { reason: Refusal::Invalid, .. })
        | Err(P2pError::NoAnswer { reason: xnode_p2p::holdings::RequestFailure::ConnectionClosed, .. }) => {}
        other => panic!("expected the batch refused, got {other:?}"),
    }
    assert!(fake.staged.lock().unwrap().is_empty(), "nothing of a lying batch is stored");
    let liar = a.client.peer_id();
    let banned = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(NetEvent::PeerBanned { peer, .. }) = events.recv().await {
                if peer == liar {
                    return;
                }
            }
        }
    })
    .await;
    assert!(banned.is_ok(), "the liar was banned");
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_is_not_a_live_member_is_refused() {
    common::init_tracing();
    let fake = Arc::new(Fake { room: u64::MAX, staged: Mutex::new(Vec::new()) });
    let (a, b) = pair("ingest-outsider", fake.clone()).await;
    // b is bound to a membership that does not list a.
    b.client.set_members(Default::default()).await.unwrap();
    let mut refused = None;
    for _ in 0..20 {
        match a.client.ingest(b.client.peer_id(), 1, &[block(1, 100)]).await {
            Err(P2pError::IngestRefused { reason: Refusal::NotMember, .. }) => {
                refused = Some(());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(refused.is_some(), "an outsider's batch is refused as not a member");
    assert!(fake.staged.lock().unwrap().is_empty());
    a.node.shutdown().await;
    b.node.shutdown().await;
}
