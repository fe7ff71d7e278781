//! The one error type of this crate.

use std::net::SocketAddr;

/// What can go wrong when starting, running or stopping membership.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GossipError {
    /// The configuration cannot work; the message says which setting to change.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    /// The gossip socket could not be opened (port in use, address not on this host...).
    #[error("cannot open the gossip socket on {addr}: {reason}")]
    Bind {
        /// The address we tried to listen on.
        addr: SocketAddr,
        /// Why the transport refused.
        reason: String,
    },
    /// Another node that is alive right now already uses our name. This node is the newer of the two, so it
    /// withdrew from the cluster; the older one keeps the name.
    #[error("another live node already uses the name {name} at {addr}; set XNODE_NAME to a unique name")]
    DuplicateName {
        /// The contested name.
        name: String,
        /// The gossip address of the node that holds it.
        addr: SocketAddr,
    },
    /// The membership task is gone (it was shut down, or it stopped after a fatal error).
    #[error("membership has stopped")]
    Stopped,
}
