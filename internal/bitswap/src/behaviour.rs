//! The [`NetworkBehaviour`]: wires the [`Engine`]'s messages to connections and its findings to [`Event`]s.
//!
//! It keeps only connection bookkeeping (which connections each peer has, whom we are dialing); every decision
//! about wants, ledgers and verification is the engine's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use cid::Cid;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    behaviour::ConnectionEstablished, ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm,
    NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use crate::engine::{Action, Engine, Limits, MAX_BLOCK_SIZE};
use crate::handler::{FromBehaviour, Handler, HandlerIn, HandlerOut, ToBehaviour};
use crate::message::{Message, WantType};
use crate::reader::Reader;
use crate::{BlockStore, Config, Event};

/// Bitswap client and server for one swarm. See the crate documentation for the message flow.
pub struct Behaviour {
    config: Config,
    store: Arc<dyn BlockStore>,
    engine: Engine,
    /// Reads the blocks peers ask for on a thread of its own (see `reader.rs`).
    reader: Reader,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    dialing: HashSet<PeerId>,
    /// Peers whose handlers were last told we expect something from them (keeps their connections open).
    expecting: HashSet<PeerId>,
    pending: VecDeque<ToSwarm<Event, HandlerIn>>,
    waker: Option<Waker>,
    /// `Some`: only these peers' wants are served (a closed cluster's members); `None`: anyone's (see
    /// [`Behaviour::serve_only`]).
    serve_only: Option<HashSet<PeerId>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("config", &self.config)
            .field("connected_peers", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// A behaviour that serves blocks from `store`.
    pub fn new(config: Config, store: Arc<dyn BlockStore>) -> Self {
        let limits = Limits {
            send_dont_have: config.send_dont_have,
            max_wants_per_peer: config.max_wants_per_peer,
            // A block must fit one message with its envelope.
            max_block_size: MAX_BLOCK_SIZE.min(config.max_message_size.saturating_sub(1024)),
        };
        // Room for the message envelope: a batch must fit one message.
        let batch_bytes = config.send_batch_bytes.clamp(1, config.max_message_size.saturating_sub(1024).max(1));
        Self {
            reader: Reader::spawn(store.clone(), batch_bytes),
            config,
            store,
            engine: Engine::new(limits),
            connections: HashMap::new(),
            dialing: HashSet::new(),
            expecting: HashSet::new(),
            pending: VecDeque::new(),
            waker: None,
            serve_only: None,
        }
    }

    /// Client: asks `peer` whether it has `cids` (want-have, with send-dont-have). Answers arrive as
    /// [`Event::Have`] or [`Event::DontHave`]; a peer may answer a small block with the block itself
    /// ([`Event::Block`]), as Kubo does for blocks under 1 KiB. Dials `peer` if it is not connected.
    pub fn want_have(&mut self, peer: PeerId, cids: &[Cid]) {
        self.engine.want(peer, cids, WantType::Have);
        self.flush();
    }

    /// Client: asks `peer` for the blocks `cids` (want-block, with send-dont-have). Answers arrive as
    /// [`Event::Block`] (verified) or [`Event::DontHave`]. A block from any peer satisfies the want everywhere
    /// and cancels it at the other peers. Dials `peer` if it is not connected.
    pub fn want_block(&mut self, peer: PeerId, cids: &[Cid]) {
        self.engine.want(peer, cids, WantType::Block);
        self.flush();
    }

    /// Client: withdraws our wants for `cids` from `peer`. A block that was already on its way is dropped quietly.
    pub fn cancel(&mut self, peer: PeerId, cids: &[Cid]) {
        self.engine.cancel(peer, cids);
        self.flush();
    }

    /// Server: `cids` have just been stored locally; sends them (or HAVE) to peers that asked earlier.
    pub fn notify_new_blocks(&mut self, cids: &[Cid]) {
        self.engine.notify_new_blocks(cids, self.store.as_ref());
        self.flush();
    }

    /// Server: serve only the wants of `peers` (`None`: of anyone). The wantlists of peers left out are dropped at
    /// once, and their later wants ignored (no answer, not even DONT_HAVE: an outsider learns nothing of what is
    /// held). Blocks and presences they send in answer to our own wants are still taken.
    pub fn serve_only(&mut self, peers: Option<HashSet<PeerId>>) {
        if let Some(allowed) = &peers {
            for peer in self.connections.keys().filter(|p| !allowed.contains(p)) {
                self.engine.forget_ledger(peer);
            }
        }
        self.serve_only = peers;
    }

    fn serves(&self, peer: &PeerId) -> bool {
        self.serve_only.as_ref().is_none_or(|allowed| allowed.contains(peer))
    }

    /// Whether we are still waiting on `peer` for a block or an answer.
    pub fn is_waiting_on(&self, peer: &PeerId) -> bool {
        self.engine.expects_from(peer)
    }

    /// Moves the engine's outbox into swarm commands.
    fn flush(&mut self) {
        let mut touched = HashSet::new();
        while let Some(action) = self.engine.next_action() {
            match action {
                Action::Event(ev) => {
                    // An answer may have closed the last want on that peer: its keep-alive may change.
                    if let Event::Have { peer, .. } | Event::DontHave { peer, .. } | Event::Block { peer, .. } = &ev {
                        touched.insert(*peer);
                    }
                    self.pending.push_back(ToSwarm::GenerateEvent(ev));
                }
                Action::Send(peer, msg) => {
                    touched.insert(peer);
                    self.send(peer, msg);
                }
                Action::Read(peer, cids) => self.reader.read(peer, cids),
            }
        }
        for peer in touched {
            let now = self.engine.expects_from(&peer);
            if now != self.expecting.contains(&peer) && self.connections.contains_key(&peer) {
                if now {
                    self.expecting.insert(peer);
                } else {
                    self.expecting.remove(&peer);
                }
                self.pending.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::Any,
                    event: HandlerIn(FromBehaviour::Expecting(now)),
                });
            }
        }
        if !self.pending.is_empty() {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    fn send(&mut self, peer: PeerId, msg: Message) {
        if let Some(conn) = self.connections.get(&peer).and_then(|c| c.first()) {
            for part in msg.split(self.config.max_message_size) {
                self.pending.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(*conn),
                    event: HandlerIn(FromBehaviour::Send(part)),
                });
            }
        } else if self.engine.expects_from(&peer) && self.dialing.insert(peer) {
            // The message itself is dropped: once connected, the engine sends the whole wantlist.
            self.pending.push_back(ToSwarm::Dial {
                opts: DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing).build(),
            });
        }
    }

    fn handler_for(&self, peer: &PeerId) -> Handler {
        Handler::new(self.config.max_message_size, self.config.max_inbound_streams, self.engine.expects_from(peer))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler_for(&peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler_for(&peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, connection_id, .. }) => {
                self.dialing.remove(&peer_id);
                let conns = self.connections.entry(peer_id).or_default();
                conns.push(connection_id);
                if conns.len() == 1 {
                    if self.engine.expects_from(&peer_id) {
                        self.expecting.insert(peer_id);
                    }
                    self.engine.peer_connected(peer_id);
                    self.flush();
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, remaining_established, .. }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|c| *c != connection_id);
                }
                if remaining_established == 0 {
                    self.connections.remove(&peer_id);
                    self.expecting.remove(&peer_id);
                    self.engine.peer_gone(peer_id);
                    self.flush();
                }
            }
            FromSwarm::DialFailure(DialFailure { peer_id: Some(peer), error, .. }) => {
                self.dialing.remove(&peer);
                if !self.connections.contains_key(&peer) && self.engine.expects_from(&peer) {
                    tracing::debug!(%peer, %error, "could not reach a peer we want blocks from");
                    self.engine.peer_gone(peer);
                    self.flush();
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        let HandlerOut(event) = event;
        match event {
            ToBehaviour::Message(mut msg) => {
                if !self.serves(&peer) && !msg.wants.is_empty() {
                    tracing::debug!(%peer, wants = msg.wants.len(), "ignoring the wants of a peer outside the cluster");
                    msg.wants.clear();
                    msg.full = false;
                }
                self.engine.on_message(peer, msg, self.store.as_ref());
                self.flush();
            }
            ToBehaviour::InboundError(e) => tracing::debug!(%peer, error = %e, "Bitswap inbound stream dropped"),
            ToBehaviour::Sent(blocks) => {
                for (cid, bytes) in blocks {
                    self.pending.push_back(ToSwarm::GenerateEvent(Event::Sent { peer, cid, bytes }));
                }
            }
            ToBehaviour::OutboundFailed(reason) => {
                tracing::debug!(%peer, %reason, "cannot send Bitswap messages to peer");
                self.engine.peer_gone(peer);
                self.flush();
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(ev) = self.pending.pop_front() {
            return Poll::Ready(ev);
        }
        while let Poll::Ready(Some((peer, blocks))) = self.reader.poll_batch(cx) {
            self.engine.blocks_read(peer, blocks);
            self.flush();
            if let Some(ev) = self.pending.pop_front() {
                return Poll::Ready(ev);
            }
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
