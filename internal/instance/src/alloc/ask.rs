//! Questions to other members about what they hold (the holdings protocol of `xnode-p2p`), with a deadline.

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use xnode_p2p::PeerId;

use super::core::SetDigest;
use crate::node::Node;
use crate::InstanceError;

/// How long a member has to answer: its answer is a memory lookup, so a member silent this long is likely dead,
/// and the loop must not wait on it (a round stuck here delays noticing a new view).
const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

fn unanswered(peer: PeerId, timeout: Duration) -> InstanceError {
    InstanceError::P2p(xnode_p2p::P2pError::Dial { peer, reason: format!("no answer within {timeout:?}") })
}

/// How long a member has to tell what blocks are ([`kinds`]): it reads them from its store.
const KINDS_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `question` to `peer` until it answers, `ASK_TIMEOUT` passes, or membership stops listing `peer` as a live
/// member: a question to a member that has just died must not hold the round (and with it the new layout) for the
/// rest of the timeout.
async fn ask<T>(
    node: &Arc<Node>,
    peer: PeerId,
    question: impl std::future::Future<Output = Result<T, xnode_p2p::P2pError>>,
) -> Result<T, InstanceError> {
    ask_within(node, peer, ASK_TIMEOUT, question).await
}

async fn ask_within<T>(
    node: &Arc<Node>,
    peer: PeerId,
    timeout: Duration,
    question: impl std::future::Future<Output = Result<T, xnode_p2p::P2pError>>,
) -> Result<T, InstanceError> {
    let gone = async {
        let Some(mut members) = node.members_watch() else { return };
        let id = peer.to_string();
        loop {
            let alive = members
                .borrow_and_update()
                .iter()
                .any(|m| m.state == xnode_gossip::MemberState::Alive && m.meta.peer_id == id);
            if !alive || members.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        answer = tokio::time::timeout(timeout, question) => Ok(answer.map_err(|_| unanswered(peer, timeout))??),
        () = gone => Err(InstanceError::P2p(xnode_p2p::P2pError::Dial {
            peer,
            reason: "no longer a live member".into(),
        })),
    }
}

/// The digest of what `peer` keeps in each of `partitions`.
pub(super) async fn digests(
    node: &Arc<Node>,
    peer: PeerId,
    partitions: Vec<u32>,
) -> Result<Vec<SetDigest>, InstanceError> {
    ask(node, peer, node.net().digests(peer, partitions)).await
}

/// The combined digest of what `peer` keeps in the partitions of `bitmap`.
pub(super) async fn summary(node: &Arc<Node>, peer: PeerId, bitmap: Vec<u8>) -> Result<SetDigest, InstanceError> {
    ask(node, peer, node.net().summary(peer, bitmap)).await
}

/// Whether `peer` stores each of `cids`.
pub(super) async fn have(node: &Arc<Node>, peer: PeerId, cids: Vec<Cid>) -> Result<Vec<bool>, InstanceError> {
    ask(node, peer, node.net().have(peer, cids)).await
}

/// What each of `cids` is in `peer`'s store: a leaf with its size, interior, or absent.
pub(super) async fn kinds(
    node: &Arc<Node>,
    peer: PeerId,
    cids: Vec<Cid>,
) -> Result<Vec<xnode_p2p::BlockKind>, InstanceError> {
    ask_within(node, peer, KINDS_TIMEOUT, node.net().kinds(peer, cids)).await
}
