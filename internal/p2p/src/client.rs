//! The cloneable handle to the swarm: every method sends one [`Command`] and awaits its `oneshot` answer.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::event_loop::Command;
use crate::fetch::{FetchKind, Outcome};
use crate::holdings::{self, Request, Response};
use crate::{FetchStats, NetEvent, P2pError, SetDigest};

/// Talks to the swarm's event loop. Cheap to clone; the loop stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    events: broadcast::Sender<NetEvent>,
}

impl Client {
    pub(crate) fn new(commands: mpsc::Sender<Command>, peer_id: PeerId, events: broadcast::Sender<NetEvent>) -> Self {
        Client { commands, peer_id, events }
    }

    /// This node's peer id (from its identity key).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Peer connections, bans and block transfers as they happen. A slow receiver misses events (it gets
    /// `RecvError::Lagged`) rather than slowing the swarm.
    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| P2pError::Stopped)?;
        rx.await.map_err(|_| P2pError::Stopped)
    }

    /// The addresses the swarm listens on (real ports, once bound), relay circuits included.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, P2pError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Peers connected and admitted (of our group, or not Xnodes at all).
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, P2pError> {
        self.ask(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Binds the swarm to membership: `peers` are the peer ids of the cluster's live members, as authenticated
    /// gossip lists them. From the first call on, holdings requests are answered only for these peers (others get
    /// [`holdings::Refusal::NotMember`]), and with `public_bitswap` off Bitswap serves and asks only them. Call it
    /// whenever the membership view changes. Until the first call the swarm trusts identify's group tag (tests of
    /// this crate alone).
    pub async fn set_members(&self, peers: HashSet<PeerId>) -> Result<(), P2pError> {
        self.commands.send(Command::SetMembers { peers }).await.map_err(|_| P2pError::Stopped)
    }

    /// Adds a DHT bootstrap peer (`…/p2p/<peer id>`) and dials it; returns without waiting for the connection.
    pub async fn add_bootstrap(&self, addr: Multiaddr) -> Result<(), P2pError> {
        self.ask(|reply| Command::AddBootstrap { addr, reply }).await?
    }

    /// Announces in the DHT that this node provides `root`, and again every reprovide interval. Returns once the
    /// record is stored locally and the announcement queued; the DHT queries run in the background.
    pub async fn provide(&self, root: Cid) -> Result<(), P2pError> {
        self.ask(|reply| Command::Provide { cid: root, reply }).await?
    }

    /// Peers the DHT lists as providers of `cid` (this node excluded).
    pub async fn find_providers(&self, cid: Cid) -> Result<HashSet<PeerId>, P2pError> {
        self.ask(|reply| Command::FindProviders { cid, reply }).await?
    }

    /// Connects to `peer`: directly on `addrs` (and any address the swarm already knows), then through a relay
    /// circuit via every connected relay-capable cluster peer. Resolves once connected.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), P2pError> {
        self.ask(|reply| Command::Dial { peer, addrs, reply }).await?
    }

    /// Fetches one block (verified) without storing it. Fails with [`P2pError::NotFound`] after `timeout`.
    pub async fn fetch_block(&self, cid: Cid, timeout: Duration) -> Result<Bytes, P2pError> {
        match self.ask(|reply| Command::Fetch { root: cid, kind: FetchKind::Block, timeout, reply }).await?? {
            Outcome::Block(data) => Ok(data),
            Outcome::Dag(_) => unreachable!("a block fetch ends with a block"),
        }
    }

    /// Fetches every block of the DAG under `root` that the local store lacks, from as many peers as have them,
    /// handing each verified block to the node's [`crate::BlockSink`]. Fails with [`P2pError::NotFound`] naming a
    /// missing block when `timeout` (for the whole DAG) runs out.
    pub async fn fetch_dag(&self, root: Cid, timeout: Duration) -> Result<FetchStats, P2pError> {
        match self.ask(|reply| Command::Fetch { root, kind: FetchKind::Dag, timeout, reply }).await?? {
            Outcome::Dag(stats) => Ok(stats),
            Outcome::Block(_) => unreachable!("a DAG fetch ends with stats"),
        }
    }

    /// The digest of the blocks `peer` keeps in each of `partitions` (at most [`holdings::MAX_PARTITIONS`]), in
    /// the order asked. Only members of our group answer; requests beyond the few a peer serves at once wait here.
    pub async fn digests(&self, peer: PeerId, partitions: Vec<u32>) -> Result<Vec<SetDigest>, P2pError> {
        bounded("partitions", partitions.len(), holdings::MAX_PARTITIONS)?;
        match self.ask_holdings(peer, Request::Digests { partitions }).await? {
            Response::Digests(digests) => Ok(digests),
            _ => Err(mismatch(peer)),
        }
    }

    /// The digest of everything `peer` keeps in the partitions whose bits are set in `bitmap` (bit i of byte i/8,
    /// LSB first, is partition i; at most [`holdings::MAX_BITMAP`] bytes).
    pub async fn summary(&self, peer: PeerId, bitmap: Vec<u8>) -> Result<SetDigest, P2pError> {
        bounded("bitmap bytes", bitmap.len(), holdings::MAX_BITMAP)?;
        match self.ask_holdings(peer, Request::Summary { bitmap }).await? {
            Response::Summary(digest) => Ok(digest),
            _ => Err(mismatch(peer)),
        }
    }

    /// Whether `peer` stores each of `cids` (at most [`holdings::MAX_CIDS`]), in the order asked.
    pub async fn have(&self, peer: PeerId, cids: Vec<Cid>) -> Result<Vec<bool>, P2pError> {
        bounded("CIDs", cids.len(), holdings::MAX_CIDS)?;
        let cids = cids.iter().map(|c| serde_bytes::ByteBuf::from(c.to_bytes())).collect();
        match self.ask_holdings(peer, Request::Have { cids }).await? {
            Response::Have(have) => Ok(have),
            _ => Err(mismatch(peer)),
        }
    }

    /// What each of `cids` (at most [`holdings::MAX_KINDS`]) is in `peer`'s store, in the order asked: a leaf (no
    /// links) with its size, interior, or absent.
    pub async fn kinds(&self, peer: PeerId, cids: Vec<Cid>) -> Result<Vec<holdings::BlockKind>, P2pError> {
        bounded("CIDs", cids.len(), holdings::MAX_KINDS)?;
        let cids = cids.iter().map(|c| serde_bytes::ByteBuf::from(c.to_bytes())).collect();
        match self.ask_holdings(peer, Request::Kinds { cids }).await? {
            Response::Kinds(kinds) => Ok(kinds),
            _ => Err(mismatch(peer)),
        }
    }

    /// Sends a batch of blocks (each hashing to its CID; at most [`crate::ingest::MAX_BLOCKS`], within
    /// [`crate::ingest::MAX_BATCH_BYTES`]) to `peer`, which stores them staged under `session`. Returns how many the
    /// peer already had; a refusal ([`P2pError::IngestRefused`]) means it stored none of them. Batches beyond the
    /// few a peer serves at once wait here.
    pub async fn ingest(&self, peer: PeerId, session: u64, blocks: &[(Cid, Bytes)]) -> Result<u32, P2pError> {
        let request = crate::ingest::Request::of(session, blocks);
        if let Err(reason) = request.check() {
            return Err(P2pError::IngestRefused { peer, reason });
        }
        match self.ask(|reply| Command::Ingest { peer, request, reply }).await?? {
            crate::ingest::Response::Stored { already } => Ok(already),
            crate::ingest::Response::Refused(reason) => Err(P2pError::IngestRefused { peer, reason }),
        }
    }

    async fn ask_holdings(&self, peer: PeerId, request: Request) -> Result<Response, P2pError> {
        self.ask(|reply| Command::Holdings { peer, request, reply }).await?
    }

    /// Asks the event loop to stop.
    pub(crate) async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}

/// Not expected: the event loop already checks that an answer matches its request.
fn mismatch(peer: PeerId) -> P2pError {
    P2pError::NoAnswer { peer, reason: holdings::RequestFailure::Mismatch }
}

fn bounded(what: &'static str, len: usize, max: usize) -> Result<(), P2pError> {
    if len > max {
        return Err(P2pError::RequestTooLarge { what, len, max });
    }
    Ok(())
}
