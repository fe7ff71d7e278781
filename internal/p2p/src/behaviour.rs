//! The composed `NetworkBehaviour`: every protocol the swarm speaks, built from the config.

use std::sync::Arc;

use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, dcutr, identify, kad, mdns, ping, relay};

use crate::P2pConfig;

/// The identify protocol version every Xnode announces; the group travels in the agent string.
pub(crate) const PROTOCOL_VERSION: &str = "/xnode/0.1.0";

/// Kademlia messages up to this size are accepted: go-libp2p-kad-dht (Kubo) reads up to 4 MiB, while
/// rust-libp2p's default of 16 KiB would reject a Kubo answer listing many peers with many addresses.
const KAD_MAX_PACKET: usize = 4 * 1024 * 1024;

/// Our own provider records kept: one per provided root (see docs/p2p.md), with room for a million.
const MAX_PROVIDED_KEYS: usize = 1 << 20;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First, so a banned peer's connections are refused before any protocol sees them.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    pub(crate) relay: relay::Behaviour,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) bitswap: xnode_bitswap::Behaviour,
    /// `/xnode/holdings/1.0.0`: placement evidence asked of a member (crate::holdings).
    pub(crate) holdings: libp2p::request_response::cbor::Behaviour<crate::holdings::Request, crate::holdings::Response>,
    /// `/xnode/ingest/1.0.0`: new blocks sent to the members placement gives them to (crate::ingest).
    pub(crate) ingest: libp2p::request_response::cbor::Behaviour<crate::ingest::Request, crate::ingest::Response>,
}

/// The identify agent string of an Xnode of `group`: `xnode/<version> group/<tag>`, where the tag is a hash of the
/// group name, so nodes can tell their group apart without telling the LAN what it is called.
pub fn agent_version(group: &str) -> String {
    format!("xnode/{} group/{}", env!("CARGO_PKG_VERSION"), group_tag(group))
}

/// What a peer's agent string says about its group.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// An Xnode of our group.
    SameGroup,
    /// An Xnode of another group: to be ignored.
    OtherGroup,
    /// Not an Xnode (Kubo, say): welcome for the DHT and Bitswap.
    Foreign,
}

pub(crate) fn classify(our_group: &str, agent: &str) -> PeerKind {
    let Some(rest) = agent.strip_prefix("xnode/") else { return PeerKind::Foreign };
    let tag = rest.split_whitespace().find_map(|w| w.strip_prefix("group/"));
    if tag == Some(group_tag(our_group).as_str()) {
        PeerKind::SameGroup
    } else {
        PeerKind::OtherGroup
    }
}

fn group_tag(group: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(group.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &P2pConfig,
        bitswap_config: xnode_bitswap::Config,
        store: Arc<dyn xnode_bitswap::BlockStore>,
    ) -> std::io::Result<Self> {
        let peer_id = key.public().to_peer_id();
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                .with_agent_version(agent_version(&config.group))
                .with_push_listen_addr_updates(true),
        );
        let mdns =
            if config.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
        let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
        kad_config
            .set_max_packet_size(KAD_MAX_PACKET)
            // Peers enter the routing table only once identify says they belong (see `EventLoop::admit`).
            .set_kbucket_inserts(kad::BucketInserts::Manual)
            // Our own paced reprovide replaces kad's all-at-once republish (docs/p2p.md).
            .set_provider_publication_interval(None)
            .set_provider_record_ttl(Some(std::time::Duration::from_secs(48 * 60 * 60)));
        let store_config = MemoryStoreConfig { max_provided_keys: MAX_PROVIDED_KEYS, ..Default::default() };
        let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_config), kad_config);
        // Clusters live on LANs and in containers where autonat cannot confirm an external address; a node left in
        // client mode would never answer DHT queries, so every node serves.
        kad.set_mode(Some(kad::Mode::Server));
        let relay_config = relay::Config {
            max_circuit_bytes: config.relay_max_circuit_bytes,
            max_circuit_duration: config.relay_max_circuit_duration,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            ..Default::default()
        };
        Ok(Behaviour {
            blocked: Default::default(),
            identify,
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad,
            relay: relay::Behaviour::new(peer_id, relay_config),
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            bitswap: xnode_bitswap::Behaviour::new(bitswap_config, store),
            holdings: crate::holdings::behaviour(),
            ingest: crate::ingest::behaviour(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_told_apart() {
        assert_eq!(classify("a", &agent_version("a")), PeerKind::SameGroup);
        assert_eq!(classify("a", &agent_version("b")), PeerKind::OtherGroup);
        assert_eq!(classify("a", "kubo/0.30.0/"), PeerKind::Foreign);
        assert_eq!(classify("a", "xnode/0.1.0"), PeerKind::OtherGroup);
    }
}
