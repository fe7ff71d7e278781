//! Test harness: a swarm (TCP on 127.0.0.1, Xnode's transport or plain noise + yamux, identify, Bitswap) driven by its own task, controlled
//! through a command channel and observed through an event channel, like the file-sharing example's event loop.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use xnode_bitswap::{BlockStore, Config, Event};

/// A block store in memory; `lie` makes it hand out wrong bytes for every block, to play a dishonest server.
#[derive(Default)]
pub struct MemStore {
    blocks: Mutex<HashMap<Cid, Bytes>>,
    lie: bool,
}

impl MemStore {
    pub fn liar() -> Self {
        Self { lie: true, ..Self::default() }
    }
    pub fn insert(&self, cid: Cid, data: Bytes) {
        self.blocks.lock().unwrap().insert(cid, data);
    }
}

impl BlockStore for MemStore {
    fn has(&self, cid: &Cid) -> bool {
        self.blocks.lock().unwrap().contains_key(cid)
    }
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        let data = self.blocks.lock().unwrap().get(cid).cloned()?;
        if self.lie {
            let mut v = data.to_vec();
            v.push(b'!');
            return Some(v.into());
        }
        Some(data)
    }
}

#[derive(NetworkBehaviour)]
pub struct TestBehaviour {
    pub bitswap: xnode_bitswap::Behaviour,
    pub identify: identify::Behaviour,
}

/// What a test sees of its node.
#[derive(Debug)]
pub enum Seen {
    Bitswap(Event),
    Connected(PeerId),
    Identified { peer: PeerId, protocols: Vec<String>, agent: String },
}

enum Cmd {
    WantHave(PeerId, Vec<Cid>),
    WantBlock(PeerId, Vec<Cid>),
    Cancel(PeerId, Vec<Cid>),
    Notify(Vec<Cid>),
    Dial(Multiaddr),
}

/// How a test node's TCP connections are secured and multiplexed.
#[derive(Debug, Clone, Copy)]
pub enum Stack {
    /// `xnode_transport`: TLS 1.3 (AES-GCM first) or noise, and yamux with large frames.
    Xnode,
    /// What `libp2p` offers by default: noise only, `libp2p-yamux`; stands for a peer that does not speak TLS.
    NoiseOnly,
}

pub struct TestNode {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
    pub store: Arc<MemStore>,
    cmd: mpsc::UnboundedSender<Cmd>,
    pub events: mpsc::UnboundedReceiver<Seen>,
}

impl TestNode {
    /// A node with Xnode's transport (TLS 1.3 or noise, our yamux), as `xnode run` has.
    pub async fn spawn(store: MemStore) -> TestNode {
        TestNode::spawn_with(store, Stack::Xnode).await
    }

    pub async fn spawn_with(store: MemStore, stack: Stack) -> TestNode {
        let store = Arc::new(store);
        let for_behaviour: Arc<dyn BlockStore> = store.clone();
        let behaviour = move |key: &libp2p::identity::Keypair| TestBehaviour {
            bitswap: xnode_bitswap::Behaviour::new(Config::default(), for_behaviour.clone()),
            identify: identify::Behaviour::new(
                identify::Config::new("/ipfs/0.1.0".into(), key.public()).with_agent_version("xnode-test".into()),
            ),
        };
        let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
        let tcp = tcp::Config::default().nodelay(true);
        let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
        let mut swarm: Swarm<TestBehaviour> = match stack {
            Stack::Xnode => builder
                .with_tcp(tcp, (xnode_transport::Tls::new, noise::Config::new), xnode_transport::Yamux::default)
                .expect("tcp transport")
                .with_behaviour(behaviour)
                .expect("behaviour")
                .with_swarm_config(idle)
                .build(),
            Stack::NoiseOnly => builder
                .with_tcp(tcp, noise::Config::new, yamux::Config::default)
                .expect("tcp transport")
                .with_behaviour(behaviour)
                .expect("behaviour")
                .with_swarm_config(idle)
                .build(),
        };
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let peer_id = *swarm.local_peer_id();
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        let b = &mut swarm.behaviour_mut().bitswap;
                        match cmd {
                            Cmd::WantHave(p, c) => b.want_have(p, &c),
                            Cmd::WantBlock(p, c) => b.want_block(p, &c),
                            Cmd::Cancel(p, c) => b.cancel(p, &c),
                            Cmd::Notify(c) => b.notify_new_blocks(&c),
                            Cmd::Dial(a) => {
                                if let Err(e) = swarm.dial(a.clone()) {
                                    panic!("dialing {a}: {e}");
                                }
                            }
                        }
                    }
                    ev = swarm.select_next_some() => {
                        let seen = match ev {
                            SwarmEvent::Behaviour(TestBehaviourEvent::Bitswap(e)) => Seen::Bitswap(e),
                            SwarmEvent::Behaviour(TestBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                                Seen::Identified {
                                    peer: peer_id,
                                    protocols: info.protocols.iter().map(|p| p.to_string()).collect(),
                                    agent: info.agent_version,
                                }
                            }
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => Seen::Connected(peer_id),
                            SwarmEvent::OutgoingConnectionError { error, .. } => {
                                eprintln!("outgoing connection error: {error}");
                                continue;
                            }
                            _ => continue,
                        };
                        if ev_tx.send(seen).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        TestNode { peer_id, addr, store, cmd: cmd_tx, events: ev_rx }
    }

    pub fn dial(&self, addr: Multiaddr) {
        self.cmd.send(Cmd::Dial(addr)).unwrap();
    }
    pub fn want_have(&self, peer: PeerId, cids: &[Cid]) {
        self.cmd.send(Cmd::WantHave(peer, cids.to_vec())).unwrap();
    }
    pub fn want_block(&self, peer: PeerId, cids: &[Cid]) {
        self.cmd.send(Cmd::WantBlock(peer, cids.to_vec())).unwrap();
    }
    pub fn cancel(&self, peer: PeerId, cids: &[Cid]) {
        self.cmd.send(Cmd::Cancel(peer, cids.to_vec())).unwrap();
    }
    pub fn notify(&self, cids: &[Cid]) {
        self.cmd.send(Cmd::Notify(cids.to_vec())).unwrap();
    }

    /// The full address of this node, with its peer ID.
    pub fn p2p_addr(&self) -> Multiaddr {
        self.addr.clone().with(libp2p::multiaddr::Protocol::P2p(self.peer_id))
    }

    /// Waits for an event `pick` accepts, failing with everything seen meanwhile if it does not come in time.
    pub async fn expect<T>(&mut self, what: &str, secs: u64, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                    seen.push(ev);
                }
                Ok(None) => panic!("node stopped while waiting for {what}; seen: {seen:#?}"),
                Err(_) => panic!("no {what} within {secs}s; seen instead: {seen:#?}"),
            }
        }
    }

    /// Collects events for `ms` milliseconds.
    pub async fn quiet_for(&mut self, ms: u64) -> Vec<Seen> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            seen.push(ev);
        }
        seen
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
