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

fn unanswered(peer: PeerId) -> InstanceError {
    InstanceError::P2p(xnode_p2p::P2pError::Dial { peer, reason: format!("no answer within {ASK_TIMEOUT:?}") })
}

/// The digest of what `peer` keeps in each of `partitions`.
pub(super) async fn digests(
    node: &Arc<Node>,
    peer: PeerId,
    partitions: Vec<u32>,
) -> Result<Vec<SetDigest>, InstanceError> {
    Ok(tokio::time::timeout(ASK_TIMEOUT, node.net().digests(peer, partitions))
        .await
        .map_err(|_| unanswered(peer))??)
}

/// The combined digest of what `peer` keeps in the partitions of `bitmap`.
pub(super) async fn summary(node: &Arc<Node>, peer: PeerId, bitmap: Vec<u8>) -> Result<SetDigest, InstanceError> {
    Ok(tokio::time::timeout(ASK_TIMEOUT, node.net().summary(peer, bitmap)).await.map_err(|_| unanswered(peer))??)
}

/// Whether `peer` stores each of `cids`.
pub(super) async fn have(node: &Arc<Node>, peer: PeerId, cids: Vec<Cid>) -> Result<Vec<bool>, InstanceError> {
    Ok(tokio::time::timeout(ASK_TIMEOUT, node.net().have(peer, cids)).await.map_err(|_| unanswered(peer))??)
}
