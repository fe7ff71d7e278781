//! The swarm bound to membership (`bind_to_membership`, [`Client::set_members`]): a peer that announces our group
//! but is not a live member by gossip gets no holdings answer and, without public Bitswap, no block; once named a
//! member it gets both. Over TCP and over QUIC alike: the gate is the authenticated peer id, not the transport.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{hold, random_file, MemStore, TestNode};
use xnode_p2p::holdings::Refusal;
use xnode_p2p::{Holdings, Multiaddr, P2pError, SetDigest};

/// Holds every block (answers `true` to every `have`), so an answer is told apart from a refusal.
struct HoldsAll;

impl Holdings for HoldsAll {
    fn digests(&self, partitions: &[u32]) -> Vec<SetDigest> {
        vec![SetDigest::default(); partitions.len()]
    }
    fn summary(&self, _bitmap: &[u8]) -> SetDigest {
        SetDigest::default()
    }
    fn have(&self, cids: &[cid::Cid]) -> Vec<bool> {
        vec![true; cids.len()]
    }
}

/// A closed member (bound, public Bitswap off) holding a file, and a peer of the same group name that is not a
/// member, connected over `transport`'s address of the member.
async fn closed_member_and_outsider(quic: bool) -> (TestNode, TestNode, cid::Cid) {
    let store = Arc::new(MemStore::default());
    let (root, blocks) = random_file(600 * 1024, 7);
    hold(&store, &blocks);
    let member = TestNode::start_full("bound", store.clone(), store, Arc::new(HoldsAll), |c| {
        c.bind_to_membership = true;
        c.public_bitswap = false;
    })
    .await;
    let outsider = TestNode::start("bound", |_| {}).await;
    let addr: Multiaddr = if quic { member.quic_addr().await } else { member.tcp_addr().await };
    outsider.client.dial(member.client.peer_id(), vec![addr]).await.unwrap();
    outsider.wait_admitted(member.client.peer_id()).await;
    (member, outsider, root)
}

async fn outsider_is_refused_then_served_once_a_member(quic: bool) {
    common::init_tracing();
    let (member, outsider, root) = closed_member_and_outsider(quic).await;
    let target = member.client.peer_id();

    // Holdings: refused, whatever group it announces.
    let refused = outsider.client.have(target, vec![root]).await;
    assert!(
        matches!(refused, Err(P2pError::Refused { reason: Refusal::NotMember, .. })),
        "a non-member got {refused:?}"
    );
    // Bitswap: the member serves it nothing, not even a DONT_HAVE; the fetch runs out its time.
    let fetched = outsider.client.fetch_block(root, Duration::from_secs(2)).await;
    assert!(fetched.is_err(), "a non-member fetched a block over Bitswap");
    assert!(outsider.store.block(&root).is_none());

    // Named a member by gossip: answered and served.
    member.client.set_members(HashSet::from([outsider.client.peer_id()])).await.unwrap();
    assert_eq!(outsider.client.have(target, vec![root]).await.unwrap(), vec![true]);
    outsider.client.fetch_dag(root, Duration::from_secs(20)).await.unwrap();
    assert!(outsider.store.block(&root).is_some());

    // Out again (it died or left): refused again.
    member.client.set_members(HashSet::new()).await.unwrap();
    let refused = outsider.client.have(target, vec![root]).await;
    assert!(matches!(refused, Err(P2pError::Refused { reason: Refusal::NotMember, .. })), "{refused:?}");
}

#[tokio::test]
async fn a_non_member_gets_no_holdings_and_no_blocks_over_tcp() {
    outsider_is_refused_then_served_once_a_member(false).await;
}

#[tokio::test]
async fn a_non_member_gets_no_holdings_and_no_blocks_over_quic() {
    outsider_is_refused_then_served_once_a_member(true).await;
}

/// With public Bitswap on (Kubo interop), a bound member still refuses holdings to a non-member but serves it
/// blocks.
#[tokio::test]
async fn public_bitswap_serves_non_members_blocks_but_not_holdings() {
    let store = Arc::new(MemStore::default());
    let (root, blocks) = random_file(300 * 1024, 8);
    hold(&store, &blocks);
    let member = TestNode::start_full("open", store.clone(), store, Arc::new(HoldsAll), |c| {
        c.bind_to_membership = true;
        c.public_bitswap = true;
    })
    .await;
    let outsider = TestNode::start("open", |_| {}).await;
    outsider.client.dial(member.client.peer_id(), vec![member.tcp_addr().await]).await.unwrap();
    outsider.wait_admitted(member.client.peer_id()).await;
    let refused = outsider.client.have(member.client.peer_id(), vec![root]).await;
    assert!(matches!(refused, Err(P2pError::Refused { reason: Refusal::NotMember, .. })), "{refused:?}");
    outsider.client.fetch_dag(root, Duration::from_secs(20)).await.unwrap();
    assert!(outsider.store.block(&root).is_some());
}
