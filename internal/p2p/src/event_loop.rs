//! The one task that owns the `Swarm`: it takes [`Command`]s from [`crate::Client`]s, reacts to swarm events, and
//! keeps the `pending_*` maps that tie a command to the events that answer it. It ends when every `Client` is
//! dropped or on [`Command::Shutdown`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU8;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, kad, mdns, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::behaviour::{classify, Behaviour, BehaviourEvent, PeerKind};
use crate::fetch::{Action, FetchId, FetchKind, Outcome, Retriever};
use crate::holdings::{self, InboundGate, Refusal, Request, RequestFailure, Response};
use crate::ingest;
use crate::{BlockSink, Holdings, Ingest, NetEvent, P2pConfig, P2pError, Via};

/// How often timers run: slow requests, fetch deadlines, ban expiry, paced provides.
const TICK: Duration = Duration::from_millis(250);

/// A DHT provider lookup for one key is not repeated more often than this.
const PROVIDER_SEARCH_INTERVAL: Duration = Duration::from_secs(3);

/// What a [`crate::Client`] asks of the event loop; each carries the channel its answer goes back on.
#[derive(Debug)]
pub(crate) enum Command {
    ListenAddrs { reply: oneshot::Sender<Vec<Multiaddr>> },
    ConnectedPeers { reply: oneshot::Sender<Vec<PeerId>> },
    AddBootstrap { addr: Multiaddr, reply: oneshot::Sender<Result<(), P2pError>> },
    Provide { cid: Cid, reply: oneshot::Sender<Result<(), P2pError>> },
    FindProviders { cid: Cid, reply: oneshot::Sender<Result<HashSet<PeerId>, P2pError>> },
    Fetch { root: Cid, kind: FetchKind, timeout: Duration, reply: oneshot::Sender<Result<Outcome, P2pError>> },
    Dial { peer: PeerId, addrs: Vec<Multiaddr>, reply: oneshot::Sender<Result<(), P2pError>> },
    Holdings { peer: PeerId, request: Request, reply: oneshot::Sender<Result<Response, P2pError>> },
    Ingest { peer: PeerId, request: ingest::Request, reply: IngestReply },
    SetMembers { peers: HashSet<PeerId> },
    Shutdown,
}

/// A running `get_providers` query: answers a client, feeds retrieval, or both.
struct ProviderQuery {
    reply: Option<oneshot::Sender<Result<HashSet<PeerId>, P2pError>>>,
    found: HashSet<PeerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialStage {
    Direct,
    Relayed,
}

struct PendingDial {
    replies: Vec<oneshot::Sender<Result<(), P2pError>>>,
    stage: DialStage,
    /// Dial attempts still running; the next stage starts when the last one fails.
    attempts: usize,
    /// Addresses already being tried. A request naming other addresses starts another attempt at once rather than
    /// waiting behind one that may hang: a QUIC dial to an address nobody answers on (an interface address mDNS
    /// announced, say) runs until the transport's 10 s timeout.
    tried: HashSet<Multiaddr>,
}

/// A holdings request of ours and where its answer goes.
type HoldingsReply = oneshot::Sender<Result<Response, P2pError>>;

/// Our holdings requests to one peer: at most [`holdings::MAX_INBOUND_PER_PEER`] on the wire (the peer refuses
/// more as busy), the rest waiting here.
#[derive(Default)]
struct OutboundQueue {
    in_flight: usize,
    waiting: VecDeque<(Request, HoldingsReply)>,
}

/// A holdings request answered on a blocking thread, back to the loop: `None` when the `Holdings` panicked.
type Answered = (PeerId, ResponseChannel<Response>, Option<Response>);

/// An ingest batch of ours and where its answer goes.
pub(crate) type IngestReply = oneshot::Sender<Result<ingest::Response, P2pError>>;

/// Our ingest batches to one peer: at most [`ingest::MAX_INBOUND_PER_PEER`] on the wire, the rest waiting here.
#[derive(Default)]
struct IngestQueue {
    in_flight: usize,
    waiting: VecDeque<(ingest::Request, IngestReply)>,
}

/// The CIDs and sizes of an ingest batch's blocks, reported as transfers once it is stored.
type Carried = Vec<(Cid, u64)>;

/// An ingest batch answered on a blocking thread: the blocks it carried, the answer and whether the sender lied
/// (`None`: the `Ingest` panicked).
type Ingested = (PeerId, ResponseChannel<ingest::Response>, Carried, Option<(ingest::Response, bool)>);

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetEvent>,
    config: P2pConfig,
    sink: Arc<dyn BlockSink>,
    stored_tx: mpsc::UnboundedSender<(FetchId, Cid, Result<(), String>)>,
    stored_rx: mpsc::UnboundedReceiver<(FetchId, Cid, Result<(), String>)>,
    retriever: Retriever,
    holdings: Arc<dyn Holdings>,
    answered_tx: mpsc::UnboundedSender<Answered>,
    answered_rx: mpsc::UnboundedReceiver<Answered>,
    /// Holdings requests being served (on blocking threads, or parked), per peer and in all.
    inbound: InboundGate,
    /// Holdings requests of peers connected but not yet identified: served once identify says they are members,
    /// dropped otherwise (or when their stream times out).
    parked: HashMap<PeerId, Vec<(Request, ResponseChannel<Response>)>>,
    pending_holdings: HashMap<OutboundRequestId, (PeerId, Request, HoldingsReply)>,
    outbound: HashMap<PeerId, OutboundQueue>,
    /// Where members' verified ingest batches go.
    ingest: Arc<dyn Ingest>,
    ingested_tx: mpsc::UnboundedSender<Ingested>,
    ingested_rx: mpsc::UnboundedReceiver<Ingested>,
    /// Ingest batches being served, per peer and in all.
    ingest_inbound: InboundGate,
    pending_ingest: HashMap<OutboundRequestId, (PeerId, Carried, IngestReply)>,
    ingest_outbound: HashMap<PeerId, IngestQueue>,
    pending_fetch: HashMap<FetchId, oneshot::Sender<Result<Outcome, P2pError>>>,
    pending_providers: HashMap<kad::QueryId, ProviderQuery>,
    pending_provide: HashSet<kad::QueryId>,
    pending_dial: HashMap<PeerId, PendingDial>,
    /// Roots this node announces; re-announced every `reprovide_interval`, a few at a time.
    provided: HashSet<Cid>,
    provide_queue: VecDeque<Cid>,
    next_reprovide: Instant,
    /// Peers identify has accepted (our group, or not an Xnode at all).
    admitted: HashSet<PeerId>,
    /// The admitted peers whose identify says they are Xnodes of our group. Trusted for cluster work only until
    /// `cluster` is set: the group tag is a hash anyone can announce.
    members: HashSet<PeerId>,
    /// The cluster's live members by authenticated gossip ([`crate::Client::set_members`]); once set, the only
    /// peers whose holdings requests are answered (and, without public Bitswap, the only ones we swap blocks with).
    cluster: Option<HashSet<PeerId>>,
    /// The admitted peers the retriever may ask for blocks (`peer_up` given, `peer_down` not yet).
    swapping: HashSet<PeerId>,
    /// Xnodes of another group: never dialled again, never in the routing table.
    other_group: HashSet<PeerId>,
    /// Banned peers and when their ban ends.
    bans: HashMap<PeerId, Instant>,
    /// Relay-capable cluster peers and their listen addresses.
    relays: HashMap<PeerId, Vec<Multiaddr>>,
    /// Circuit listeners: our reservations, by the relay they are on.
    reservations: HashMap<ListenerId, PeerId>,
    /// The address we dialled each peer on, the best one to reserve a circuit through.
    dialed: HashMap<PeerId, Multiaddr>,
    provider_searches: HashMap<Cid, Instant>,
}

/// What the node injects into the loop: where blocks are served from and go to, and who answers members.
pub(crate) struct Injected {
    /// Bitswap serves from it; retrieval skips what it has.
    pub(crate) local: Arc<dyn xnode_bitswap::BlockStore>,
    pub(crate) holdings: Arc<dyn Holdings>,
    pub(crate) sink: Arc<dyn BlockSink>,
    pub(crate) ingest: Arc<dyn Ingest>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<NetEvent>,
        config: P2pConfig,
        injected: Injected,
    ) -> Self {
        let Injected { local, holdings, sink, ingest } = injected;
        let (stored_tx, stored_rx) = mpsc::unbounded_channel();
        let (ingested_tx, ingested_rx) = mpsc::unbounded_channel();
        let (answered_tx, answered_rx) = mpsc::unbounded_channel();
        let mut swarm = swarm;
        let cluster = config.bind_to_membership.then(HashSet::new);
        if cluster.is_some() && !config.public_bitswap {
            swarm.behaviour_mut().bitswap.serve_only(cluster.clone());
        }
        let retriever =
            Retriever::new(local, config.fetch_window, config.max_inflight_per_peer, config.block_request_timeout);
        EventLoop {
            swarm,
            commands,
            events,
            next_reprovide: Instant::now() + config.reprovide_interval,
            config,
            sink,
            stored_tx,
            stored_rx,
            retriever,
            holdings,
            answered_tx,
            answered_rx,
            inbound: InboundGate::new(holdings::MAX_INBOUND_PER_PEER, holdings::MAX_INBOUND_TOTAL),
            parked: HashMap::new(),
            pending_holdings: HashMap::new(),
            outbound: HashMap::new(),
            ingest,
            ingested_tx,
            ingested_rx,
            ingest_inbound: InboundGate::new(ingest::MAX_INBOUND_PER_PEER, ingest::MAX_INBOUND_TOTAL),
            pending_ingest: HashMap::new(),
            ingest_outbound: HashMap::new(),
            pending_fetch: HashMap::new(),
            pending_providers: HashMap::new(),
            pending_provide: HashSet::new(),
            pending_dial: HashMap::new(),
            provided: HashSet::new(),
            provide_queue: VecDeque::new(),
            admitted: HashSet::new(),
            members: HashSet::new(),
            cluster,
            swapping: HashSet::new(),
            other_group: HashSet::new(),
            bans: HashMap::new(),
            relays: HashMap::new(),
            reservations: HashMap::new(),
            dialed: HashMap::new(),
            provider_searches: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                Some((fetch, cid, result)) = self.stored_rx.recv() => {
                    if result.is_ok() {
                        self.swarm.behaviour_mut().bitswap.notify_new_blocks(&[cid]);
                    }
                    let mut out = Vec::new();
                    self.retriever.stored(fetch, cid, result, Instant::now(), &mut out);
                    self.apply(out);
                }
                Some((peer, channel, response)) = self.answered_rx.recv() => {
                    self.inbound.release(peer);
                    let response = response.unwrap_or_else(|| {
                        tracing::warn!(%peer, "the node's holdings failed to answer a request");
                        Response::Refused(Refusal::Failed)
                    });
                    // Fails only when the stream is gone (the asker gave up or timed out): nothing to do.
                    let _ = self.swarm.behaviour_mut().holdings.send_response(channel, response);
                }
                Some((peer, channel, carried, answer)) = self.ingested_rx.recv() => {
                    self.ingest_inbound.release(peer);
                    let (response, lied) = answer.unwrap_or_else(|| {
                        tracing::warn!(%peer, "the node's ingest failed on a batch");
                        (ingest::Response::Refused(ingest::Refusal::Failed), false)
                    });
                    if let ingest::Response::Stored { .. } = response {
                        self.transferred(peer, *self.swarm.local_peer_id(), carried);
                    }
                    let _ = self.swarm.behaviour_mut().ingest.send_response(channel, response);
                    if lied {
                        self.ban(peer, "sent an ingest block whose bytes do not match its CID".into());
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::debug!("p2p event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ConnectedPeers { reply } => {
                let mut peers: Vec<PeerId> = self.admitted.iter().copied().collect();
                peers.sort();
                let _ = reply.send(peers);
            }
            Command::AddBootstrap { addr, reply } => {
                let _ = reply.send(self.add_bootstrap(addr));
            }
            Command::Provide { cid, reply } => {
                if self.provided.insert(cid) {
                    self.provide_queue.push_back(cid);
                }
                self.drain_provides();
                let _ = reply.send(Ok(()));
            }
            Command::FindProviders { cid, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(cid.to_bytes().into());
                self.pending_providers.insert(id, ProviderQuery { reply: Some(reply), found: HashSet::new() });
            }
            Command::Fetch { root, kind, timeout, reply } => {
                let mut out = Vec::new();
                let id = self.retriever.start(root, kind, timeout, Instant::now(), &mut out);
                self.pending_fetch.insert(id, reply);
                self.apply(out);
            }
            Command::Dial { peer, addrs, reply } => self.start_dial(peer, addrs, Some(reply)),
            Command::Holdings { peer, request, reply } => {
                if self.other_group.contains(&peer) || self.bans.contains_key(&peer) {
                    let reason = if self.bans.contains_key(&peer) { "banned" } else { "belongs to another group" };
                    let _ = reply.send(Err(P2pError::Dial { peer, reason: reason.into() }));
                    return;
                }
                self.outbound.entry(peer).or_default().waiting.push_back((request, reply));
                self.send_holdings(peer);
            }
            Command::Ingest { peer, request, reply } => {
                if self.other_group.contains(&peer) || self.bans.contains_key(&peer) {
                    let reason = if self.bans.contains_key(&peer) { "banned" } else { "belongs to another group" };
                    let _ = reply.send(Err(P2pError::Dial { peer, reason: reason.into() }));
                    return;
                }
                self.ingest_outbound.entry(peer).or_default().waiting.push_back((request, reply));
                self.send_ingest(peer);
            }
            Command::SetMembers { peers } => self.set_members(peers),
            Command::Shutdown => {}
        }
    }

    /// Whether `peer` takes part in cluster protocols: a live member by gossip once the swarm is bound to
    /// membership, else (this crate's own tests) a peer identify says is of our group.
    fn is_member(&self, peer: &PeerId) -> bool {
        match &self.cluster {
            Some(cluster) => cluster.contains(peer),
            None => self.members.contains(peer),
        }
    }

    /// Whether we swap blocks with `peer` over Bitswap.
    fn may_swap(&self, peer: &PeerId) -> bool {
        self.config.public_bitswap || self.is_member(peer)
    }

    /// Tells the retriever about `peer` coming into or going out of the set of peers it may ask.
    fn refresh_swap(&mut self, peer: PeerId) {
        let wanted = self.admitted.contains(&peer) && self.may_swap(&peer);
        let mut out = Vec::new();
        if wanted && self.swapping.insert(peer) {
            self.retriever.peer_up(peer, Instant::now(), &mut out);
        } else if !wanted && self.swapping.remove(&peer) {
            self.retriever.peer_down(peer, Instant::now(), &mut out);
        }
        self.apply(out);
    }

    /// The cluster's live members changed (see [`crate::Client::set_members`]).
    fn set_members(&mut self, peers: HashSet<PeerId>) {
        let before = self.cluster.replace(peers);
        if !self.config.public_bitswap {
            self.swarm.behaviour_mut().bitswap.serve_only(self.cluster.clone());
        }
        let changed: Vec<PeerId> = match (&before, &self.cluster) {
            (Some(b), Some(a)) => b.symmetric_difference(a).copied().collect(),
            _ => self.admitted.iter().copied().collect(),
        };
        for peer in changed {
            self.refresh_swap(peer);
        }
        // Requests parked before identify answered are decided by membership now.
        let parked: Vec<PeerId> = self.parked.keys().copied().collect();
        for peer in parked {
            self.unpark(peer);
        }
    }

    fn add_bootstrap(&mut self, addr: Multiaddr) -> Result<(), P2pError> {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(P2pError::InvalidAddress { addr, reason: "a bootstrap address must end in /p2p/<peer id>" });
        };
        if peer == *self.swarm.local_peer_id() {
            return Ok(());
        }
        // Configured by the operator, so trusted into the routing table before identify; identify removes it
        // again if it turns out to belong to another group.
        self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        self.start_dial(peer, vec![addr], None);
        Ok(())
    }

    fn drain_provides(&mut self) {
        while self.pending_provide.len() < self.config.provide_concurrency.max(1) {
            let Some(cid) = self.provide_queue.pop_front() else { break };
            match self.swarm.behaviour_mut().kad.start_providing(cid.to_bytes().into()) {
                Ok(id) => {
                    self.pending_provide.insert(id);
                }
                Err(e) => tracing::warn!(%cid, "cannot provide: {e}"),
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let mut out = Vec::new();
        self.retriever.tick(now, &mut out);
        self.apply(out);
        let expired: Vec<PeerId> = self.bans.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in expired {
            self.bans.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        if now >= self.next_reprovide {
            self.next_reprovide = now + self.config.reprovide_interval;
            let queued: HashSet<Cid> = self.provide_queue.iter().copied().collect();
            let again: Vec<Cid> = self.provided.iter().filter(|c| !queued.contains(c)).copied().collect();
            self.provide_queue.extend(again);
        }
        self.drain_provides();
        self.provider_searches.retain(|_, at| now.duration_since(*at) < PROVIDER_SEARCH_INTERVAL);
        // Parked requests whose stream timed out (the peer never identified itself) give their slot back.
        let inbound = &mut self.inbound;
        self.parked.retain(|peer, requests| {
            requests.retain(|(_, channel)| {
                let open = channel.is_open();
                if !open {
                    inbound.release(*peer);
                }
                open
            });
            !requests.is_empty()
        });
    }

    /// Puts our waiting holdings requests to `peer` on the wire, up to the number it serves at once. A peer not
    /// connected is dialled first (directly or through a relay, as any dial); the requests go once it connects.
    /// (Left to request-response, several requests to a peer not connected start several dials, and the losers'
    /// failures fail requests that the winning connection would have carried.)
    fn send_holdings(&mut self, peer: PeerId) {
        if !self.outbound.contains_key(&peer) {
            return;
        }
        if !self.swarm.is_connected(&peer) {
            if self.bans.contains_key(&peer) || self.other_group.contains(&peer) {
                let reason = if self.bans.contains_key(&peer) { "banned" } else { "belongs to another group" };
                self.fail_holdings(peer, &P2pError::Dial { peer, reason: reason.into() });
            } else if !self.pending_dial.contains_key(&peer) {
                self.start_dial(peer, Vec::new(), None);
            }
            return;
        }
        let Some(queue) = self.outbound.get_mut(&peer) else { return };
        while queue.in_flight < holdings::MAX_INBOUND_PER_PEER {
            let Some((request, reply)) = queue.waiting.pop_front() else { break };
            if reply.is_closed() {
                continue; // the caller gave up while it waited
            }
            let id = self.swarm.behaviour_mut().holdings.send_request(&peer, request.clone());
            self.pending_holdings.insert(id, (peer, request, reply));
            queue.in_flight += 1;
        }
        if queue.in_flight == 0 && queue.waiting.is_empty() {
            self.outbound.remove(&peer);
        }
    }

    /// Fails every holdings request to `peer` still waiting to be sent (the peer cannot be reached).
    fn fail_holdings(&mut self, peer: PeerId, error: &P2pError) {
        let Some(queue) = self.outbound.get_mut(&peer) else { return };
        for (_, reply) in queue.waiting.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        if queue.in_flight == 0 {
            self.outbound.remove(&peer);
        }
    }

    /// One of our holdings requests ended: answers its caller and sends the next one waiting for that peer.
    fn holdings_done(&mut self, id: OutboundRequestId, result: Result<Response, RequestFailure>) {
        let Some((peer, request, reply)) = self.pending_holdings.remove(&id) else { return };
        let result = match result {
            Ok(Response::Refused(reason)) => Err(P2pError::Refused { peer, reason }),
            Ok(response) if request.answered_by(&response) => Ok(response),
            Ok(_) => Err(P2pError::NoAnswer { peer, reason: RequestFailure::Mismatch }),
            Err(reason) => Err(P2pError::NoAnswer { peer, reason }),
        };
        let _ = reply.send(result);
        if let Some(queue) = self.outbound.get_mut(&peer) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
        self.send_holdings(peer);
    }

    /// A holdings request from `peer`: answered only for members of our group, at most a few at a time per peer.
    fn on_holdings_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        if self.cluster.is_some() && !self.is_member(&peer) {
            // Bound to membership: whoever is not a live member by gossip gets nothing but the refusal.
            tracing::debug!(%peer, "refusing a holdings request of a peer that is not a live member");
            let _ = self.swarm.behaviour_mut().holdings.send_response(channel, Response::Refused(Refusal::NotMember));
            return;
        }
        if !self.is_member(&peer) {
            if self.admitted.contains(&peer) || self.other_group.contains(&peer) || !self.swarm.is_connected(&peer) {
                // Not an Xnode of our group: no answer (dropping the channel closes the stream).
                tracing::debug!(%peer, "refusing a holdings request of a peer outside the group");
                return;
            }
            // Identify has not told us yet who this is (its request raced identify): wait for it.
            if self.inbound.try_acquire(peer) {
                self.parked.entry(peer).or_default().push((request, channel));
            }
            return;
        }
        if !self.inbound.try_acquire(peer) {
            let _ = self.swarm.behaviour_mut().holdings.send_response(channel, Response::Refused(Refusal::Busy));
            return;
        }
        self.serve_holdings(peer, request, channel);
    }

    /// Answers a request (its slot already taken) on a blocking thread: `Holdings` may read the disk.
    fn serve_holdings(&self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let source = self.holdings.clone();
        let answered = self.answered_tx.clone();
        tokio::spawn(async move {
            let response = tokio::task::spawn_blocking(move || holdings::answer(&*source, request)).await.ok();
            let _ = answered.send((peer, channel, response));
        });
    }

    /// Identify classified `peer` (or it went away): serves or drops the requests it sent before.
    fn unpark(&mut self, peer: PeerId) {
        let Some(requests) = self.parked.remove(&peer) else { return };
        let member = self.is_member(&peer);
        for (request, channel) in requests {
            if member {
                self.serve_holdings(peer, request, channel);
            } else {
                self.inbound.release(peer);
            }
        }
    }

    fn on_holdings(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_holdings_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    self.holdings_done(request_id, Ok(response))
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                self.holdings_done(request_id, Err(RequestFailure::from_outbound(error)))
            }
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                log_inbound_failure(peer, request_id, &error)
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Puts our waiting ingest batches to `peer` on the wire, up to the number it serves at once, dialling it first
    /// if need be (as [`EventLoop::send_holdings`]).
    fn send_ingest(&mut self, peer: PeerId) {
        if !self.ingest_outbound.contains_key(&peer) {
            return;
        }
        if !self.swarm.is_connected(&peer) {
            if self.bans.contains_key(&peer) || self.other_group.contains(&peer) {
                let reason = if self.bans.contains_key(&peer) { "banned" } else { "belongs to another group" };
                self.fail_ingest(peer, &P2pError::Dial { peer, reason: reason.into() });
            } else if !self.pending_dial.contains_key(&peer) {
                self.start_dial(peer, Vec::new(), None);
            }
            return;
        }
        let Some(queue) = self.ingest_outbound.get_mut(&peer) else { return };
        while queue.in_flight < ingest::MAX_INBOUND_PER_PEER {
            let Some((request, reply)) = queue.waiting.pop_front() else { break };
            if reply.is_closed() {
                continue;
            }
            let carried = request.carried();
            let id = self.swarm.behaviour_mut().ingest.send_request(&peer, request);
            self.pending_ingest.insert(id, (peer, carried, reply));
            queue.in_flight += 1;
        }
        if queue.in_flight == 0 && queue.waiting.is_empty() {
            self.ingest_outbound.remove(&peer);
        }
    }

    /// Fails every ingest batch to `peer` still waiting to be sent.
    fn fail_ingest(&mut self, peer: PeerId, error: &P2pError) {
        let Some(queue) = self.ingest_outbound.get_mut(&peer) else { return };
        for (_, reply) in queue.waiting.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        if queue.in_flight == 0 {
            self.ingest_outbound.remove(&peer);
        }
    }

    /// One of our ingest batches ended: answers its caller and sends the next one waiting for that peer.
    fn ingest_done(&mut self, id: OutboundRequestId, result: Result<ingest::Response, RequestFailure>) {
        let Some((peer, carried, reply)) = self.pending_ingest.remove(&id) else { return };
        let result = match result {
            Ok(ingest::Response::Refused(reason)) => Err(P2pError::IngestRefused { peer, reason }),
            Ok(response) => {
                self.transferred(*self.swarm.local_peer_id(), peer, carried);
                Ok(response)
            }
            Err(reason) => Err(P2pError::NoAnswer { peer, reason }),
        };
        let _ = reply.send(result);
        if let Some(queue) = self.ingest_outbound.get_mut(&peer) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
        }
        self.send_ingest(peer);
    }

    /// An ingest batch from `peer`: taken only from live members, at most a few at a time per peer, verified and
    /// stored on a blocking thread.
    fn on_ingest_request(
        &mut self,
        peer: PeerId,
        request: ingest::Request,
        channel: ResponseChannel<ingest::Response>,
    ) {
        let refusal = if !self.is_member(&peer) {
            // Bound to membership, whoever is not a live member by gossip gets nothing but the refusal; unbound
            // (this crate's tests), a peer identify has not shown to be of our group.
            tracing::debug!(%peer, "refusing an ingest batch of a peer that is not a live member");
            Some(ingest::Refusal::NotMember)
        } else if !self.ingest_inbound.try_acquire(peer) {
            Some(ingest::Refusal::Busy)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let _ = self.swarm.behaviour_mut().ingest.send_response(channel, ingest::Response::Refused(refusal));
            return;
        }
        let target = self.ingest.clone();
        let done = self.ingested_tx.clone();
        let carried = request.carried();
        tokio::spawn(async move {
            let answer = tokio::task::spawn_blocking(move || ingest::answer(&*target, request)).await.ok();
            let _ = done.send((peer, channel, carried, answer));
        });
    }

    /// Reports the blocks of a stored ingest batch to the transfer log and the metrics, as Bitswap's are.
    fn transferred(&self, from: PeerId, to: PeerId, blocks: Carried) {
        for (cid, bytes) in blocks {
            let _ = self.events.send(NetEvent::Transfer { via: Via::Ingest, from, to, cid, bytes });
        }
    }

    fn on_ingest(&mut self, event: request_response::Event<ingest::Request, ingest::Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_ingest_request(peer, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    self.ingest_done(request_id, Ok(response))
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                self.ingest_done(request_id, Err(RequestFailure::from_outbound(error)))
            }
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                tracing::debug!(%peer, %request_id, "ingest batch failed: {error}")
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Carries out what the retriever decided.
    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::WantHave { peer, cids } => self.swarm.behaviour_mut().bitswap.want_have(peer, &cids),
                Action::WantBlock { peer, cids } => self.swarm.behaviour_mut().bitswap.want_block(peer, &cids),
                Action::Cancel { peer, cids } => self.swarm.behaviour_mut().bitswap.cancel(peer, &cids),
                Action::FindProviders { cids } => {
                    let now = Instant::now();
                    for cid in cids {
                        if self.provider_searches.contains_key(&cid) {
                            continue;
                        }
                        self.provider_searches.insert(cid, now);
                        let id = self.swarm.behaviour_mut().kad.get_providers(cid.to_bytes().into());
                        self.pending_providers.insert(id, ProviderQuery { reply: None, found: HashSet::new() });
                    }
                }
                Action::Ban { peer, reason } => self.ban(peer, reason),
                Action::Store { fetch, cid, data } => self.store(fetch, cid, data),
                Action::Finish { fetch, result } => {
                    if let Some(reply) = self.pending_fetch.remove(&fetch) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    fn store(&self, fetch: FetchId, cid: Cid, data: Bytes) {
        let sink = self.sink.clone();
        let done = self.stored_tx.clone();
        // The sink writes to disk: off the event loop, on a blocking thread.
        tokio::task::spawn_blocking(move || {
            let result = sink.put(&cid, &data).map_err(|e| e.to_string());
            let _ = done.send((fetch, cid, result));
        });
    }

    fn ban(&mut self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, "banning peer for {:?}: {reason}", self.config.ban_duration);
        self.bans.insert(peer, Instant::now() + self.config.ban_duration);
        let behaviour = self.swarm.behaviour_mut();
        behaviour.blocked.block_peer(peer);
        behaviour.kad.remove_peer(&peer);
        self.admitted.remove(&peer);
        self.members.remove(&peer);
        self.relays.remove(&peer);
        self.unpark(peer);
        self.refresh_swap(peer);
        let _ = self.events.send(NetEvent::PeerBanned { peer, reason });
    }

    fn start_dial(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Option<oneshot::Sender<Result<(), P2pError>>>,
    ) {
        if self.swarm.is_connected(&peer) {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        if self.bans.contains_key(&peer) || self.other_group.contains(&peer) {
            if let Some(reply) = reply {
                let reason = if self.bans.contains_key(&peer) { "banned" } else { "belongs to another group" };
                let _ = reply.send(Err(P2pError::Dial { peer, reason: reason.into() }));
            }
            return;
        }
        let in_progress = self.pending_dial.contains_key(&peer);
        let pending = self.pending_dial.entry(peer).or_insert(PendingDial {
            replies: Vec::new(),
            stage: DialStage::Direct,
            attempts: 0,
            tried: HashSet::new(),
        });
        pending.replies.extend(reply);
        let fresh: Vec<Multiaddr> = addrs.into_iter().filter(|a| pending.tried.insert(a.clone())).collect();
        if in_progress {
            if fresh.is_empty() || pending.stage != DialStage::Direct {
                return;
            }
            // Alongside the attempt already running; whichever connects first answers every request.
            let opts = DialOpts::peer_id(peer)
                .addresses(tcp_first(fresh))
                .override_dial_concurrency_factor(NonZeroU8::MIN)
                .condition(PeerCondition::Disconnected)
                .build();
            if self.swarm.dial(opts).is_ok() {
                pending.attempts += 1;
            }
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(tcp_first(fresh))
            .extend_addresses_through_behaviour()
            // One address at a time, in order, so TCP is tried before QUIC (see `tcp_first`).
            .override_dial_concurrency_factor(NonZeroU8::MIN)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => pending.attempts = 1,
            Err(e) => self.dial_via_relay(peer, e.to_string()),
        }
    }

    /// The direct dial failed: try `/…/p2p/RELAY/p2p-circuit/p2p/PEER` through every relay we are connected to.
    fn dial_via_relay(&mut self, peer: PeerId, direct_error: String) {
        let circuits: Vec<Multiaddr> = self
            .relays
            .iter()
            .filter(|(relay, _)| **relay != peer && self.swarm.is_connected(relay))
            .flat_map(|(relay, addrs)| {
                addrs
                    .iter()
                    .filter_map(move |a| circuit_through(a.clone(), *relay))
                    .map(move |a| a.with(Protocol::P2p(peer)))
            })
            .collect();
        if circuits.is_empty() {
            self.fail_dial(peer, format!("{direct_error}; no relay to try"));
            return;
        }
        if let Some(pending) = self.pending_dial.get_mut(&peer) {
            pending.stage = DialStage::Relayed;
            pending.attempts = 1;
        }
        tracing::debug!(%peer, "direct dial failed ({direct_error}); trying {} relay circuits", circuits.len());
        let opts = DialOpts::peer_id(peer).addresses(circuits).condition(PeerCondition::Always).build();
        if let Err(e) = self.swarm.dial(opts) {
            self.fail_dial(peer, format!("{direct_error}; through relays: {e}"));
        }
    }

    fn fail_dial(&mut self, peer: PeerId, reason: String) {
        if let Some(pending) = self.pending_dial.remove(&peer) {
            for reply in pending.replies {
                let _ = reply.send(Err(P2pError::Dial { peer, reason: reason.clone() }));
            }
        }
        self.fail_holdings(peer, &P2pError::Dial { peer, reason: reason.clone() });
        self.fail_ingest(peer, &P2pError::Dial { peer, reason });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "listening");
                // Cluster nodes share a LAN or a container network, where what we listen on is what peers dial;
                // the relay server needs an external address to hand out in reservations. Circuit addresses are
                // announced by the relay client itself.
                if !is_circuit(&address) {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.swarm.remove_external_address(&address),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if endpoint.is_dialer() && !endpoint.is_relayed() {
                    self.dialed.insert(peer_id, endpoint.get_remote_address().clone());
                }
                if let Some(pending) = self.pending_dial.remove(&peer_id) {
                    for reply in pending.replies {
                        let _ = reply.send(Ok(()));
                    }
                }
                if num_established.get() == 1 {
                    let _ = self.events.send(NetEvent::PeerConnected { peer: peer_id });
                }
                self.send_holdings(peer_id);
                self.send_ingest(peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.admitted.remove(&peer_id);
                self.members.remove(&peer_id);
                self.unpark(peer_id);
                self.dialed.remove(&peer_id);
                self.swapping.remove(&peer_id);
                let mut out = Vec::new();
                self.retriever.peer_down(peer_id, Instant::now(), &mut out);
                self.apply(out);
                let _ = self.events.send(NetEvent::PeerDisconnected { peer: peer_id });
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                if self.swarm.is_connected(&peer) {
                    return;
                }
                let Some(pending) = self.pending_dial.get_mut(&peer) else { return };
                pending.attempts = pending.attempts.saturating_sub(1);
                if pending.attempts > 0 {
                    return; // another attempt may still connect
                }
                match pending.stage {
                    DialStage::Direct => self.dial_via_relay(peer, error.to_string()),
                    DialStage::Relayed => self.fail_dial(peer, error.to_string()),
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.reservations.remove(&listener_id);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    // Only dialled, never put in the routing table: identify decides whether it belongs.
                    if peer != *self.swarm.local_peer_id() && !self.swarm.is_connected(&peer) {
                        self.start_dial(peer, vec![addr], None);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. }) => {
                self.on_kad_progress(id, result, step.last)
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted { relay_peer_id, .. }) => {
                tracing::debug!(relay = %relay_peer_id, "relay reservation accepted");
            }
            BehaviourEvent::Bitswap(event) => self.on_bitswap(event),
            BehaviourEvent::Holdings(event) => self.on_holdings(event),
            BehaviourEvent::Ingest(event) => self.on_ingest(event),
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        match classify(&self.config.group, &info.agent_version) {
            PeerKind::OtherGroup => {
                tracing::debug!(%peer, agent = %info.agent_version, "ignoring a node of another group");
                self.other_group.insert(peer);
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                self.admitted.remove(&peer);
                self.members.remove(&peer);
                self.relays.remove(&peer);
                self.unpark(peer);
                let _ = self.swarm.disconnect_peer_id(peer);
                self.swapping.remove(&peer);
                let mut out = Vec::new();
                self.retriever.peer_down(peer, Instant::now(), &mut out);
                self.apply(out);
            }
            kind @ (PeerKind::SameGroup | PeerKind::Foreign) => {
                let addrs = direct_only(info.listen_addrs);
                if info.protocols.contains(&kad::PROTOCOL_NAME) {
                    for addr in &addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    }
                }
                if kind == PeerKind::SameGroup {
                    self.members.insert(peer);
                }
                // Circuits are end-to-end encrypted and authenticated, so a relay needs no trust beyond identify's.
                if kind == PeerKind::SameGroup && info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    self.relays.insert(peer, addrs.clone());
                    self.maybe_reserve(peer, &addrs);
                }
                self.unpark(peer);
                self.admitted.insert(peer);
                self.refresh_swap(peer);
            }
        }
    }

    /// Keeps a circuit reservation on up to `relay_reservations` cluster peers, so peers that cannot dial this
    /// node can still reach it through them.
    fn maybe_reserve(&mut self, relay: PeerId, addrs: &[Multiaddr]) {
        if self.reservations.len() >= self.config.relay_reservations || self.reservations.values().any(|r| *r == relay)
        {
            return;
        }
        let Some(addr) = self.dialed.get(&relay).cloned().or_else(|| addrs.first().cloned()) else { return };
        let Some(addr) = circuit_through(addr, relay) else { return };
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                self.reservations.insert(id, relay);
            }
            Err(e) => tracing::debug!(%addr, "cannot reserve a circuit: {e}"),
        }
    }

    fn on_kad_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::GetProviders(result) => {
                if !self.pending_providers.contains_key(&id) {
                    return;
                }
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    let local = *self.swarm.local_peer_id();
                    let providers: Vec<PeerId> = providers
                        .into_iter()
                        .filter(|p| *p != local && !self.other_group.contains(p) && !self.bans.contains_key(p))
                        .collect();
                    // Retrieval asks only peers it may swap blocks with (members, unless Bitswap is public).
                    let swappable: HashSet<PeerId> = providers.iter().filter(|p| self.may_swap(p)).copied().collect();
                    let query = self.pending_providers.get_mut(&id).expect("checked above");
                    let fresh: Vec<PeerId> = providers.into_iter().filter(|p| query.found.insert(*p)).collect();
                    if query.reply.is_none() {
                        let fresh: Vec<PeerId> = fresh.into_iter().filter(|p| swappable.contains(p)).collect();
                        for peer in self.retriever.on_providers(fresh) {
                            self.start_dial(peer, Vec::new(), None);
                        }
                    }
                }
                if last {
                    let query = self.pending_providers.remove(&id).expect("present");
                    if let Some(reply) = query.reply {
                        let _ = reply.send(Ok(query.found));
                    }
                }
            }
            kad::QueryResult::StartProviding(result) if last => {
                self.pending_provide.remove(&id);
                if let Err(e) = result {
                    tracing::debug!("provide query ended early: {e}");
                }
                self.drain_provides();
            }
            _ => {}
        }
    }

    fn on_bitswap(&mut self, event: xnode_bitswap::Event) {
        let now = Instant::now();
        let local = *self.swarm.local_peer_id();
        let mut out = Vec::new();
        match event {
            xnode_bitswap::Event::Have { peer, cid } => self.retriever.on_have(peer, cid, now, &mut out),
            xnode_bitswap::Event::DontHave { peer, cid } => self.retriever.on_dont_have(peer, cid, now, &mut out),
            xnode_bitswap::Event::Block { peer, cid, data } => {
                let bytes = data.len() as u64;
                self.retriever.on_block(peer, cid, data, now, &mut out);
                let _ = self.events.send(NetEvent::Transfer { via: Via::Bitswap, from: peer, to: local, cid, bytes });
            }
            xnode_bitswap::Event::InvalidBlock { peer, cid, reason } => {
                self.retriever.on_invalid(peer, cid, reason.to_string(), now, &mut out)
            }
            xnode_bitswap::Event::Sent { peer, cid, bytes } => {
                let _ = self.events.send(NetEvent::Transfer {
                    via: Via::Bitswap,
                    from: local,
                    to: peer,
                    cid,
                    bytes: bytes as u64,
                });
            }
        }
        self.apply(out);
    }
}

fn log_inbound_failure(peer: PeerId, id: InboundRequestId, error: &request_response::InboundFailure) {
    match error {
        // Our own refusal of a peer outside the group, or an answer the asker no longer waited for.
        request_response::InboundFailure::ResponseOmission | request_response::InboundFailure::ConnectionClosed => {
            tracing::debug!(%peer, %id, "holdings request not answered: {error}")
        }
        _ => tracing::debug!(%peer, %id, "holdings request failed: {error}"),
    }
}

/// The addresses with direct TCP ones first, keeping their order otherwise. Between cluster nodes TCP (noise and
/// yamux over the kernel's TCP, which moves 64 KiB segments) carries bulk Bitswap traffic at a fraction of the CPU
/// of QUIC (quinn encrypts and sends every ~1.4 KiB datagram in user space), and a QUIC handshake, being one round
/// trip shorter, would win every concurrent dial; QUIC stays the fallback when TCP cannot connect (docs/p2p.md).
fn tcp_first(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let is_tcp = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::Tcp(_))) && !is_circuit(a);
    addrs.sort_by_key(|a| !is_tcp(a));
    addrs
}

/// Whether `addr` goes through a relay (has a `/p2p-circuit`).
fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The direct addresses among those a peer announces: a circuit address is never dialled, reserved through or
/// relayed through, so nothing we build from them can nest one circuit in another (`/p2p-circuit/.../p2p-circuit`,
/// which peers refuse and mDNS cannot announce).
fn direct_only(addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    addrs.into_iter().filter(|a| !is_circuit(a)).collect()
}

/// `/<relay's direct address>/p2p/<relay>/p2p-circuit`: where to reserve, or (followed by `/p2p/<peer>`) dial
/// through `relay`. `None` for an address that is itself a circuit.
fn circuit_through(relay_addr: Multiaddr, relay: PeerId) -> Option<Multiaddr> {
    (!is_circuit(&relay_addr)).then(|| with_peer(relay_addr, relay).with(Protocol::P2pCircuit))
}

/// `addr` ending in exactly one `/p2p/<peer>`.
fn with_peer(mut addr: Multiaddr, peer: PeerId) -> Multiaddr {
    while matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr.with(Protocol::P2p(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_dialled_first() {
        let addrs: Vec<Multiaddr> = [
            "/ip4/10.0.0.1/udp/1/quic-v1",
            "/ip4/10.0.0.1/tcp/1",
            "/ip4/10.0.0.2/tcp/2/p2p/12D3KooWKmFQjvWNUAaZv8EvvtQP7UBcfGkMgg2Jy4HLwFiqdBrJ/p2p-circuit",
            "/ip4/10.0.0.2/udp/2/quic-v1",
            "/ip4/10.0.0.2/tcp/2",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let order: Vec<String> = tcp_first(addrs).iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "/ip4/10.0.0.1/tcp/1",
                "/ip4/10.0.0.2/tcp/2",
                "/ip4/10.0.0.1/udp/1/quic-v1",
                "/ip4/10.0.0.2/tcp/2/p2p/12D3KooWKmFQjvWNUAaZv8EvvtQP7UBcfGkMgg2Jy4HLwFiqdBrJ/p2p-circuit",
                "/ip4/10.0.0.2/udp/2/quic-v1",
            ]
        );
    }

    /// What a relay or a peer may announce: direct addresses, and circuits (one, or nested by a peer that built
    /// its address from another circuit).
    fn announced() -> (PeerId, PeerId, Vec<Multiaddr>) {
        let relay: PeerId = "12D3KooWKmFQjvWNUAaZv8EvvtQP7UBcfGkMgg2Jy4HLwFiqdBrJ".parse().unwrap();
        let other = PeerId::random();
        let addrs = [
            "/ip4/10.0.0.2/tcp/2".to_string(),
            "/ip4/10.0.0.2/udp/2/quic-v1".to_string(),
            format!("/ip4/10.0.0.2/tcp/2/p2p/{relay}"),
            format!("/ip4/10.0.0.3/tcp/3/p2p/{other}/p2p-circuit"),
            format!("/ip4/10.0.0.3/tcp/3/p2p/{other}/p2p-circuit/p2p/{relay}"),
            format!("/ip4/10.0.0.3/tcp/3/p2p/{other}/p2p-circuit/p2p/{relay}/p2p-circuit"),
            "/dns4/relay.example/tcp/4/p2p-circuit".to_string(),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        (relay, other, addrs)
    }

    fn circuits(a: &Multiaddr) -> usize {
        a.iter().filter(|p| *p == Protocol::P2pCircuit).count()
    }

    #[test]
    fn addresses_we_reserve_or_dial_through_never_nest_circuits() {
        let (relay, peer, announced) = announced();
        let direct = direct_only(announced.clone());
        assert_eq!(direct.len(), 3, "{direct:?}");
        assert!(direct.iter().all(|a| circuits(a) == 0), "{direct:?}");
        // Reservations and relayed dials are built only from what identify left (see `on_identify`).
        for addr in &direct {
            let reserve = circuit_through(addr.clone(), relay).unwrap();
            assert_eq!(circuits(&reserve), 1, "{reserve}");
            assert_eq!(reserve.iter().filter(|p| matches!(p, Protocol::P2p(_))).count(), 1, "{reserve}");
            let dial = reserve.with(Protocol::P2p(peer));
            assert_eq!(circuits(&dial), 1, "{dial}");
        }
        // Even handed a circuit directly (a dialed address, a relay's first address), nothing nests.
        for addr in announced.iter().filter(|a| is_circuit(a)) {
            assert_eq!(circuit_through(addr.clone(), relay), None, "{addr}");
        }
        // And every address built from anything announced carries at most one circuit.
        for addr in announced {
            if let Some(built) = circuit_through(addr, relay) {
                assert!(circuits(&built) <= 1, "{built}");
            }
        }
    }
}
