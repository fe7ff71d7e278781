//! Membership settings. Built by the binary from `XNODE_*`; this crate never reads the environment.

use std::net::SocketAddr;
use std::time::Duration;

/// How this node takes part in membership. Every default is justified in `docs/membership.md`.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's unique name (`XNODE_NAME`, the hostname by default).
    pub node_name: String,
    /// UDP address to listen on (`0.0.0.0:XNODE_GOSSIP_PORT`, port 9090 by default). Port 0 picks a free
    /// port, which tests use.
    pub listen_addr: SocketAddr,
    /// Address other nodes reach us at (`XNODE_ADVERTISE_ADDR`), for NAT and containers. Port 0 means "the
    /// port we listen on". Must not be an unspecified IP such as 0.0.0.0: peers would have nowhere to send.
    pub advertise_addr: SocketAddr,
    /// Seed peers as `host:port` or `ip:port` (`XNODE_KNOWN_PEERS`); a missing port means our own gossip
    /// port. Names are resolved again at every join attempt, so seeds that start after us are still found.
    /// Empty starts a new cluster.
    pub seeds: Vec<String>,
    /// Cluster id (`XNODE_GROUP_NAME`, default `Xnode`): nodes of other groups are refused and never listed.
    pub group: String,
    /// Time between gossip rounds; each round talks to 3 random live peers. Default 150 ms: with
    /// `phi_threshold` 16 this puts dead-node detection at about 2 s and a join seen by 32 nodes under 1 s (at
    /// 200 ms the join took up to 1.2 s at N = 32), for about 16 KiB/s of gossip per node.
    pub gossip_interval: Duration,
    /// Phi-accrual threshold: a peer is declared dead once the time since its last heartbeat exceeds this many
    /// mean heartbeat intervals (as observed, about half a round: heartbeats also travel second-hand).
    /// Default 16, about 2 s of silence: chitchat's usual 8 found killed nodes in 1.0-1.4 s on loopback, but a
    /// 1 s silence is within reach of a stalled container, and we promise no false alarms before speed.
    pub phi_threshold: f64,
    /// How long `leave` keeps gossiping after announcing it, so that everyone hears "left" before anyone's
    /// failure detector could fire. Default 1 s (5 rounds).
    pub leave_linger: Duration,
    /// How often we re-resolve and contact the seeds while we see no other live member. Default 1 s.
    pub join_retry_interval: Duration,
    /// How long a dead or left member stays listed before it is forgotten. Default 1 h.
    pub forget_after: Duration,
    /// The cluster secret's keys (`XNODE_CLUSTER_SECRET`): every datagram is sealed with it and only datagrams
    /// that open with it are read. `None` (the default): plaintext gossip, which anyone who can reach the port can
    /// read and join.
    pub keyring: Option<std::sync::Arc<crate::Keyring>>,
}

impl GossipConfig {
    /// A config with every tunable at its default.
    pub fn new(node_name: impl Into<String>, listen_addr: SocketAddr) -> Self {
        GossipConfig {
            node_name: node_name.into(),
            listen_addr,
            advertise_addr: listen_addr,
            seeds: Vec::new(),
            group: "Xnode".to_string(),
            gossip_interval: Duration::from_millis(150),
            phi_threshold: 16.0,
            leave_linger: Duration::from_secs(1),
            join_retry_interval: Duration::from_secs(1),
            forget_after: Duration::from_secs(60 * 60),
            keyring: None,
        }
    }
}
