//! The libp2p swarm of an Xnode: TCP and QUIC with noise and yamux, identify and ping, mDNS and Kademlia discovery
//! restricted to the node's group, DHT provider records for stored roots, circuit relay v2 (server and client) with
//! hole punching, verified multi-peer block retrieval over Bitswap, placement evidence asked of members, and
//! streaming ingest of new blocks to the members placement gives them to.
//!
//! Owns: the `Swarm` (inside one task, the [`EventLoop`](event_loop)), the identity key file, peer admission and
//! bans, the retrieval window, and the wire side of placement evidence ([`holdings`]). Never does: storage (blocks
//! come from an injected [`xnode_bitswap::BlockStore`] and go to an injected [`BlockSink`]; holdings are answered by
//! an injected [`Holdings`]), reading the environment (the binary builds [`P2pConfig`]), or deciding what to fetch
//! or release (the instance asks through [`Client`]). Design notes: `docs/p2p.md`.

mod behaviour;
mod client;
mod config;
mod error;
mod event_loop;
mod fetch;
pub mod holdings;
pub mod identity;
pub mod ingest;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::{noise, tcp, yamux};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

pub use behaviour::agent_version;
pub use client::Client;
pub use config::{P2pConfig, DEFAULT_PORT};
pub use error::P2pError;
pub use fetch::FetchStats;
pub use holdings::{BlockKind, Holdings, NoHoldings, SetDigest};
pub use ingest::{Ingest, NoIngest};
pub use libp2p::{multiaddr, Multiaddr, PeerId};

/// Where verified blocks fetched by [`Client::fetch_dag`] go: the node passes its store's writer.
///
/// Called on a blocking thread (never on the swarm's task), once per block, children before or after parents in no
/// fixed order; a fetch answers only after every block it fetched was accepted.
pub trait BlockSink: Send + Sync + 'static {
    /// Keeps one block whose bytes already hash to `cid`.
    fn put(&self, cid: &Cid, data: &Bytes) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// What happens on the network, for the dashboard's log ([`Client::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// The first connection to a peer opened.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer sent bytes that did not match their CID and is banned for a while.
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
    /// A block went over Bitswap or in a stored ingest batch (either way: `from` or `to` is this node).
    Transfer {
        /// Which protocol carried it.
        via: Via,
        /// The sender.
        from: PeerId,
        /// The receiver.
        to: PeerId,
        /// The block.
        cid: Cid,
        /// Its size in bytes.
        bytes: u64,
    },
}

/// The protocol a [`NetEvent::Transfer`] went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Bitswap: a block someone asked for (a read, a repair, a rebalance).
    Bitswap,
    /// `/xnode/ingest/1.0.0`: a new block pushed to a member that must hold it, as a file is added.
    Ingest,
}

/// A running swarm: its [`Client`] and its task.
pub struct Node {
    client: Client,
    task: JoinHandle<()>,
}

/// How long [`Node::spawn`] waits for its listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Loads (or creates) the identity, binds every listen address, joins the bootstrap peers and starts the event
    /// loop. Bitswap serves from `store`, members' holdings requests are answered from `holdings`, fetched blocks go
    /// to `sink`, members' ingest batches to `ingest`. Returns once the listeners are bound, so [`Client::listen_addrs`] shows the real ports.
    pub async fn spawn(
        config: P2pConfig,
        bitswap: xnode_bitswap::Config,
        store: Arc<dyn xnode_bitswap::BlockStore>,
        holdings: Arc<dyn Holdings>,
        sink: Arc<dyn BlockSink>,
        ingest: Arc<dyn Ingest>,
    ) -> Result<Node, P2pError> {
        let key = identity::load_or_create(&config.identity_file)?;
        let peer_id = key.public().to_peer_id();
        let build = |e: &dyn std::fmt::Display| P2pError::Build(e.to_string());
        let behaviour_store = store.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (xnode_transport::Tls::new, noise::Config::new),
                xnode_transport::Yamux::default,
            )
            .map_err(|e| build(&e))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| build(&e))?
            .with_behaviour(|key, relay_client| {
                behaviour::Behaviour::new(key, relay_client, &config, bitswap, behaviour_store)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .build();

        let mut waiting = std::collections::HashSet::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| P2pError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            waiting.insert(id);
        }
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while !waiting.is_empty() {
            use futures::StreamExt;
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .map_err(|_| P2pError::Build("listeners did not report an address in time".into()))?;
            match event {
                libp2p::swarm::SwarmEvent::NewListenAddr { listener_id, address } => {
                    waiting.remove(&listener_id);
                    // See `EventLoop::on_swarm_event`: on a cluster's LAN, listen addresses are external ones.
                    swarm.add_external_address(address);
                }
                libp2p::swarm::SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    let addr = config.listen.first().cloned().unwrap_or(Multiaddr::empty());
                    if waiting.contains(&listener_id) {
                        return Err(P2pError::Listen { addr, reason: format!("{reason:?}") });
                    }
                }
                _ => {}
            }
        }

        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(1024);
        let bootstrap = config.bootstrap.clone();
        let event_loop = event_loop::EventLoop::new(
            swarm,
            commands_rx,
            events.clone(),
            config,
            event_loop::Injected { local: store, holdings, sink, ingest },
        );
        let task = tokio::spawn(event_loop.run());
        let client = Client::new(commands_tx, peer_id, events);
        for addr in bootstrap {
            client.add_bootstrap(addr).await?;
        }
        Ok(Node { client, task })
    }

    /// A handle to talk to the swarm; clone it freely.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Stops the event loop (closing every connection) and waits for it.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        let _ = self.task.await;
    }
}

#[cfg(test)]
#[path = "../../dag/src/fuzz_support.rs"]
mod fuzz_support;
