//! The p2p sub-config. Built once by the binary from `XNODE_*` variables; nothing here reads the environment.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

/// Everything the swarm needs to start. [`P2pConfig::new`] gives the production defaults.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// The protobuf-encoded ed25519 keypair; created (mode 0600) when absent. Usually `<data dir>/p2p.key`.
    pub identity_file: PathBuf,
    /// The cluster's name (`XNODE_GROUP_NAME`). Xnode peers announcing another group are disconnected and never
    /// enter the routing table. Kubo and other non-Xnode peers are accepted (DHT and Bitswap interop).
    pub group: String,
    /// Addresses to listen on. Default: TCP and QUIC on `0.0.0.0` at the configured port (`XNODE_P2P_PORT`,
    /// 10090). Empty means "reachable only through relays", which tests use to stand in for a NATed node.
    pub listen: Vec<Multiaddr>,
    /// Peers to join the DHT through, each ending in `/p2p/<peer id>`. Default: none.
    pub bootstrap: Vec<Multiaddr>,
    /// Whether to discover peers of the LAN with mDNS. Default: true.
    pub mdns: bool,
    /// Whether peers outside the cluster may swap blocks over Bitswap (`XNODE_PUBLIC_BITSWAP`): Kubo interop, both
    /// ways. When false, once [`crate::Client::set_members`] has bound the swarm to membership, Bitswap serves only
    /// members and fetches only from members. Default: true (the binary turns it off for a sealed cluster).
    pub public_bitswap: bool,
    /// Whether cluster protocols wait for [`crate::Client::set_members`] (no peer is a member until it names it)
    /// rather than trusting identify's group tag, which anyone can announce. The node sets it; this crate's own
    /// tests, which run no gossip, leave it off. Default: false.
    pub bind_to_membership: bool,
    /// Blocks in flight per fetch (wanted and not yet received, or received and not yet stored). Default: 64
    /// (16 MiB of 256 KiB blocks): a full pipeline for one fast holder, half of one each for two. With 128, a
    /// member streaming a 1 GiB CAR it fetched peaked at 142-168 MiB resident; with 64 at 122-126 MiB, and
    /// 251-271 MiB/s instead of 231-283 (bench/gateway.sh, docs/benchmarks.md).
    pub fetch_window: usize,
    /// Blocks requested from one peer at once, so a fetch spreads over every holder. Default: 64 (16 MiB of
    /// 256 KiB blocks): enough to keep one fast peer's connection busy while answers travel (docs/p2p.md).
    pub max_inflight_per_peer: usize,
    /// How long one peer may take to send a requested block before it is asked of another holder. Default: 10 s.
    pub block_request_timeout: Duration,
    /// How long a peer that sent bytes not matching their CID stays banned. Default: 10 min.
    pub ban_duration: Duration,
    /// How often provider records of every provided root are announced again. Default: 22 h (Kubo's reprovide
    /// interval; records live 48 h).
    pub reprovide_interval: Duration,
    /// DHT provide queries running at once; the rest wait in a queue, so a reprovide of many roots is paced.
    /// Default: 8.
    pub provide_concurrency: usize,
    /// Relay server: bytes one relayed connection may carry before the relay closes it. Default: 1 GiB (libp2p's
    /// 128 KiB would not carry one 256 KiB block).
    pub relay_max_circuit_bytes: u64,
    /// Relay server: how long one relayed connection may last. Default: 1 h.
    pub relay_max_circuit_duration: Duration,
    /// Relay client: on how many relay-capable cluster peers this node keeps a reservation. Default: 2.
    pub relay_reservations: usize,
    /// Connections with no open stream are closed after this long. Default: 60 s.
    pub idle_connection_timeout: Duration,
}

/// The default libp2p port (`XNODE_P2P_PORT`).
pub const DEFAULT_PORT: u16 = 10090;

impl P2pConfig {
    /// Production defaults: listen on TCP and QUIC on every interface at `port`.
    pub fn new(group: impl Into<String>, identity_file: impl Into<PathBuf>, port: u16) -> Self {
        let listen = vec![
            format!("/ip4/0.0.0.0/tcp/{port}").parse().expect("valid multiaddr"),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse().expect("valid multiaddr"),
        ];
        P2pConfig {
            identity_file: identity_file.into(),
            group: group.into(),
            listen,
            bootstrap: Vec::new(),
            mdns: true,
            public_bitswap: true,
            bind_to_membership: false,
            fetch_window: 64,
            max_inflight_per_peer: 64,
            block_request_timeout: Duration::from_secs(10),
            ban_duration: Duration::from_secs(10 * 60),
            reprovide_interval: Duration::from_secs(22 * 60 * 60),
            provide_concurrency: 8,
            relay_max_circuit_bytes: 1 << 30,
            relay_max_circuit_duration: Duration::from_secs(60 * 60),
            relay_reservations: 2,
            idle_connection_timeout: Duration::from_secs(60),
        }
    }

    /// Listen on loopback ephemeral ports (TCP and QUIC) without mDNS: what tests want.
    pub fn local_test(group: impl Into<String>, identity_file: impl Into<PathBuf>) -> Self {
        let mut config = P2pConfig::new(group, identity_file, 0);
        config.listen = vec![
            "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid multiaddr"),
        ];
        config.mdns = false;
        config
    }
}
