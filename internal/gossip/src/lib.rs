//! Cluster membership: who is in the cluster, whether each member is alive, and what it says about itself.
//!
//! It owns the gossip UDP socket (`XNODE_GOSSIP_PORT`) and this node's entry in the cluster view. It runs
//! [chitchat](https://github.com/quickwit-oss/chitchat) (scuttlebutt anti-entropy with a phi-accrual failure
//! detector) and folds its per-incarnation state into one [`Member`] per name, with the rules that chitchat
//! leaves to us: a graceful leave is never reported as a death, a restarted node replaces its old self, and
//! two live nodes with one name are detected (the newer one withdraws with [`GossipError::DuplicateName`]).
//!
//! It never reads the environment (the binary builds a [`GossipConfig`]), never decides what members do with
//! the view (placement and repair read it), and never talks libp2p: the peer id and addresses are opaque
//! metadata here. Why chitchat, and the measured detection times, are in `docs/membership.md`.

mod config;
mod error;
mod membership;
mod meta;
mod network;
mod seal;
mod view;

pub use config::GossipConfig;
pub use error::GossipError;
pub use membership::{Membership, MetaSetter};
pub use meta::MemberMeta;
pub use network::{Network, Traffic};
pub use seal::{Keyring, Refused as SealRefused, OVERHEAD as SEAL_OVERHEAD, REPLAY_WINDOW};
pub use view::{Member, MemberState, MembershipEvent};

/// Longest member name, in bytes (a DNS label's limit, so every hostname fits).
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` is a valid member (or group) name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit. Names reach URLs, HTML and logs; this set needs no escaping to be harmless
/// there and cannot spell a path (`..`, `/`). Checked on our own name at start and on every name gossip brings:
/// a member with another name is ignored.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
#[path = "../../dag/src/fuzz_support.rs"]
mod fuzz_support;
