//! What a member says about itself, and how that maps to gossiped key-values.
//!
//! Each field is its own key so that a change to `used` or `blocks` (frequent) gossips only that key, not the
//! whole record. Keys of our own protocol (`state`, `conflict`) live beside them under a `sys.` prefix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The key that says whether a node is running or has announced that it is leaving.
pub(crate) const STATE_KEY: &str = "sys.state";
/// Value of [`STATE_KEY`] once a node announced that it leaves.
pub(crate) const STATE_LEFT: &str = "left";
/// Value of [`STATE_KEY`] while a node runs.
pub(crate) const STATE_ALIVE: &str = "alive";
/// Set by a live node on itself when a newer generation claims its name; the value is that generation.
pub(crate) const CONFLICT_KEY: &str = "sys.conflict";

/// Member metadata that the rest of the node reads; it spreads to every member when it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMeta {
    /// The node's name (`XNODE_NAME`), the same as the member's name.
    pub name: String,
    /// The libp2p peer id, base58.
    pub peer_id: String,
    /// libp2p multiaddrs others can dial.
    pub p2p_addrs: Vec<String>,
    /// Base URL of the node's HTTP API, e.g. `http://10.0.0.5:8080`.
    pub api_url: String,
    /// Storage capacity in bytes (the hard limit).
    pub capacity: u64,
    /// Bytes of block data held.
    pub used: u64,
    /// Number of blocks held.
    pub blocks: u64,
    /// What the node is busy with (e.g. `discovering`, `fetching-metadata`, `allocating`, `seeding`).
    pub phase: String,
    /// The node's software version.
    pub version: String,
    /// Blocks placement gives this node that it does not hold yet.
    pub wanted: u64,
    /// Blocks of catalog files this node should hold but cannot (its store is full, or no live peer has them).
    pub under_replicated: u64,
    /// The heads of every catalog log this node has (JSON: author peer id -> length and last entry's CID), so
    /// peers learn which logs grew and from whom to pull them.
    pub catalog: String,
    /// What this node keeps in the partitions its layout gives it, as `<count>:<hex of the XOR digest>` (one
    /// summary, whatever the node stores). Members whose catalog gives the same expected summary for that share
    /// know it is complete without asking; any other answer makes them ask the node directly.
    pub share: String,
    /// Empty while the node makes progress; else why it is stuck (its allocation loop or the blocking work its
    /// API needs has not moved for a while), so the other members and their dashboards see it.
    pub stuck: String,
}

impl MemberMeta {
    /// The key-values this metadata gossips as.
    pub(crate) fn to_key_values(&self) -> Vec<(&'static str, String)> {
        vec![
            ("meta.name", self.name.clone()),
            ("meta.peer_id", self.peer_id.clone()),
            ("meta.p2p_addrs", serde_json::to_string(&self.p2p_addrs).unwrap_or_else(|_| "[]".into())),
            ("meta.api_url", self.api_url.clone()),
            ("meta.capacity", self.capacity.to_string()),
            ("meta.used", self.used.to_string()),
            ("meta.blocks", self.blocks.to_string()),
            ("meta.phase", self.phase.clone()),
            ("meta.version", self.version.clone()),
            ("meta.wanted", self.wanted.to_string()),
            ("meta.under_replicated", self.under_replicated.to_string()),
            ("meta.catalog", self.catalog.clone()),
            ("meta.share", self.share.clone()),
            ("meta.stuck", self.stuck.clone()),
        ]
    }

    /// Reads metadata back from a node's key-values. Missing or malformed fields take their default rather
    /// than hiding the member: a newer peer may gossip a field this version does not know how to read.
    pub(crate) fn from_key_values(kv: &BTreeMap<String, String>) -> Self {
        let text = |k: &str| kv.get(k).cloned().unwrap_or_default();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse().ok()).unwrap_or_default();
        MemberMeta {
            name: text("meta.name"),
            peer_id: text("meta.peer_id"),
            p2p_addrs: kv.get("meta.p2p_addrs").and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default(),
            api_url: text("meta.api_url"),
            capacity: num("meta.capacity"),
            used: num("meta.used"),
            blocks: num("meta.blocks"),
            phase: text("meta.phase"),
            version: text("meta.version"),
            wanted: num("meta.wanted"),
            under_replicated: num("meta.under_replicated"),
            catalog: text("meta.catalog"),
            share: text("meta.share"),
            stuck: text("meta.stuck"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_through_key_values() {
        let meta = MemberMeta {
            name: "n1".into(),
            peer_id: "12D3KooW".into(),
            p2p_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            api_url: "http://127.0.0.1:8080".into(),
            capacity: 10,
            used: 3,
            blocks: 2,
            phase: "seeding".into(),
            version: "0.1.0".into(),
            wanted: 7,
            under_replicated: 1,
            catalog: "{}".into(),
            share: "3:ab12".into(),
            stuck: "allocation has not finished a round for 130 s".into(),
        };
        let kv = meta.to_key_values().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(MemberMeta::from_key_values(&kv), meta);
    }

    #[test]
    fn malformed_fields_fall_back_to_defaults() {
        let kv = [("meta.used".to_string(), "lots".to_string())].into_iter().collect();
        assert_eq!(MemberMeta::from_key_values(&kv).used, 0);
    }
}
