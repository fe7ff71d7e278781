//! Retrieval bookkeeping without I/O: which blocks each fetch still needs, who was asked, who has what, who is
//! sending what. The event loop feeds it Bitswap and DHT events and carries out the [`Action`]s it returns, in the
//! manner of chitchat's `process_message`; the tests below drive two fetches with no sockets at all.
//!
//! A block goes through: queued (beyond the fetch's window) -> wanted (want-have sent to every admitted peer) ->
//! requested (want-block sent to the least loaded peer that said "have") -> received, verified, handed on. Once a
//! peer has answered for one block of a fetch (a HAVE or a block), it is taken to hold the rest of that DAG too:
//! its next blocks are asked of it with want-block straight away, saving the want-have round trip per block (the
//! other peers still get want-haves, so a fetch spreads over every holder, and a wrong guess costs one DONT_HAVE).
//! A peer that sends bytes not matching the CID loses that request to the next holder (it may only have a copy
//! corrupted on its disk, which it repairs: it is not a liar at once); one that does so [`BAN_AFTER`] times within
//! [`OFFENCE_WINDOW`] is banned, unless it is the only other holder of a block still wanted (a ban would then cut
//! the fetch off from its only source, as two survivors of three once were). A peer that is slow loses the request to the next
//! holder; when every peer said "don't have", the DHT is asked for providers and the search is repeated now and
//! then until the fetch's own deadline, which ends it with an error naming the first block still missing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use xnode_bitswap::BlockStore;

use crate::P2pError;

/// Identifies one fetch inside the event loop.
pub(crate) type FetchId = u64;

/// How often a block that nobody has is searched for again (want-have to every peer, DHT providers).
const RESEARCH_INTERVAL: Duration = Duration::from_secs(3);

/// Bad blocks (bytes not matching what was asked, or unasked blocks) a peer may send within [`OFFENCE_WINDOW`]
/// before it is banned. One or two are what an honest member with a corrupted copy sends before its own check
/// catches it (its server re-hashes what it sends, and reports the copy for repair); a liar keeps going.
pub(crate) const BAN_AFTER: usize = 3;

/// How long a bad block counts against its sender.
pub(crate) const OFFENCE_WINDOW: Duration = Duration::from_secs(600);

/// What a fetch returns when it ends well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Blocks received from the network, verified and stored.
    pub blocks_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Blocks of the DAG that were already in the local store.
    pub blocks_local: u64,
    /// Blocks received per peer: shows a fetch spread over several holders.
    pub per_peer: HashMap<PeerId, u64>,
    /// Blocks rejected because their bytes did not match their CID (their senders lost the request; repeat
    /// offenders are banned).
    pub rejected: u64,
}

/// What one fetch is after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchKind {
    /// One block, returned to the caller and not stored.
    Block,
    /// The whole DAG under the root, every block handed to the node's sink.
    Dag,
}

/// How a fetch ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A [`FetchKind::Block`] fetch: the block's bytes.
    Block(Bytes),
    /// A [`FetchKind::Dag`] fetch: what it took.
    Dag(FetchStats),
}

/// What the event loop must do for the retriever.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send want-have for these blocks to the peer.
    WantHave { peer: PeerId, cids: Vec<Cid> },
    /// Send want-block for these blocks to the peer.
    WantBlock { peer: PeerId, cids: Vec<Cid> },
    /// Tell the peer these blocks are no longer wanted.
    Cancel { peer: PeerId, cids: Vec<Cid> },
    /// Ask the DHT who provides these blocks: a block nobody connected has, and the roots of the fetches that
    /// want it (only roots are announced, see docs/p2p.md).
    FindProviders { cids: Vec<Cid> },
    /// Disconnect and ban the peer for a while.
    Ban { peer: PeerId, reason: String },
    /// Hand a verified block to the node's sink (on a blocking thread), then call [`Retriever::stored`].
    Store { fetch: FetchId, cid: Cid, data: Bytes },
    /// The fetch is over; answer its caller.
    Finish { fetch: FetchId, result: Result<Outcome, P2pError> },
}

struct Want {
    /// The fetches waiting for this block (a block shared by two DAGs is fetched once).
    fetches: Vec<FetchId>,
    asked: HashSet<PeerId>,
    /// Peers that said "have", in the order they answered.
    haves: Vec<PeerId>,
    dont_haves: HashSet<PeerId>,
    /// Peers that failed to deliver this block in time; asked again only when no one else has it.
    slow: HashSet<PeerId>,
    requested: Option<(PeerId, Instant)>,
    /// When the DHT was last asked for this block's providers.
    last_search: Option<Instant>,
}

struct Fetch {
    root: Cid,
    kind: FetchKind,
    timeout: Duration,
    deadline: Instant,
    queue: VecDeque<Cid>,
    active: HashSet<Cid>,
    /// Every block met so far, so a block linked twice is fetched once.
    seen: HashSet<Cid>,
    /// Blocks handed to the sink and not yet acknowledged; they count against the window, so a slow disk slows
    /// the fetch rather than filling memory.
    storing: usize,
    /// Peers that answered for a block of this DAG (HAVE or the block), least recent last: asked first for the
    /// rest of it.
    holders: Vec<PeerId>,
    stats: FetchStats,
}

/// Retrieval state of the whole node (all running fetches).
pub(crate) struct Retriever {
    local: Arc<dyn BlockStore>,
    window: usize,
    per_peer: usize,
    request_timeout: Duration,
    peers: HashSet<PeerId>,
    load: HashMap<PeerId, usize>,
    wants: HashMap<Cid, Want>,
    fetches: HashMap<FetchId, Fetch>,
    next_id: FetchId,
    /// When each peer sent bad blocks, within [`OFFENCE_WINDOW`].
    offences: HashMap<PeerId, VecDeque<Instant>>,
}

impl Retriever {
    pub(crate) fn new(local: Arc<dyn BlockStore>, window: usize, per_peer: usize, request_timeout: Duration) -> Self {
        Retriever {
            local,
            window: window.max(1),
            per_peer: per_peer.max(1),
            request_timeout,
            peers: HashSet::new(),
            load: HashMap::new(),
            wants: HashMap::new(),
            fetches: HashMap::new(),
            next_id: 0,
            offences: HashMap::new(),
        }
    }

    /// Starts a fetch; its answer comes later as an [`Action::Finish`] with the returned id.
    pub(crate) fn start(
        &mut self,
        root: Cid,
        kind: FetchKind,
        timeout: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> FetchId {
        let id = self.next_id;
        self.next_id += 1;
        let mut fetch = Fetch {
            root,
            kind,
            timeout,
            deadline: now + timeout,
            queue: VecDeque::new(),
            active: HashSet::new(),
            seen: HashSet::new(),
            storing: 0,
            holders: Vec::new(),
            stats: FetchStats::default(),
        };
        fetch.seen.insert(root);
        fetch.queue.push_back(root);
        self.fetches.insert(id, fetch);
        self.pump(now, out);
        id
    }

    /// Number of fetches still running.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.fetches.len()
    }

    /// An admitted peer connected: it is asked for everything still searched for.
    pub(crate) fn peer_up(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Action>) {
        if !self.peers.insert(peer) {
            return;
        }
        let cids: Vec<Cid> = self
            .wants
            .iter_mut()
            .filter(|(_, w)| w.requested.is_none() && !w.asked.contains(&peer))
            .map(|(cid, w)| {
                w.asked.insert(peer);
                *cid
            })
            .collect();
        if !cids.is_empty() {
            out.push(Action::WantHave { peer, cids });
        }
        self.pump(now, out);
    }

    /// A peer disconnected (or was banned): whatever it was sending is asked of others.
    pub(crate) fn peer_down(&mut self, peer: PeerId, now: Instant, out: &mut Vec<Action>) {
        self.peers.remove(&peer);
        self.load.remove(&peer);
        for fetch in self.fetches.values_mut() {
            fetch.holders.retain(|p| *p != peer);
        }
        for want in self.wants.values_mut() {
            want.haves.retain(|p| *p != peer);
            want.asked.remove(&peer);
            if want.requested.is_some_and(|(p, _)| p == peer) {
                want.requested = None;
            }
        }
        self.pump(now, out);
    }

    /// The peer says it has the block.
    pub(crate) fn on_have(&mut self, peer: PeerId, cid: Cid, now: Instant, out: &mut Vec<Action>) {
        if let Some(want) = self.wants.get_mut(&cid) {
            if !want.haves.contains(&peer) {
                want.haves.push(peer);
            }
            want.dont_haves.remove(&peer);
            note_holder(&mut self.fetches, &want.fetches, peer);
            self.pump(now, out);
        }
    }

    /// The peer says it lacks the block.
    pub(crate) fn on_dont_have(&mut self, peer: PeerId, cid: Cid, now: Instant, out: &mut Vec<Action>) {
        let Some(want) = self.wants.get_mut(&cid) else { return };
        want.dont_haves.insert(peer);
        want.haves.retain(|p| *p != peer);
        if want.requested.is_some_and(|(p, _)| p == peer) {
            want.requested = None;
            release(&mut self.load, peer);
        }
        self.pump(now, out);
    }

    /// The peer sent a block, already verified: Bitswap computes every received block's CID from its bytes and
    /// reports bytes that match nothing we asked for as invalid instead (see [`Retriever::on_invalid`]); hashing
    /// it again here would cost the swarm's task a SHA-256 per block for nothing.
    pub(crate) fn on_block(&mut self, peer: PeerId, cid: Cid, data: Bytes, now: Instant, out: &mut Vec<Action>) {
        debug_assert!(xnode_dag::verify(&cid, &data).is_ok(), "Bitswap delivers verified blocks only");
        let Some(want) = self.wants.remove(&cid) else { return };
        if let Some((p, _)) = want.requested {
            release(&mut self.load, p);
        }
        note_holder(&mut self.fetches, &want.fetches, peer);
        // Bitswap closes the want at every other peer itself.
        for id in want.fetches {
            let Some(fetch) = self.fetches.get_mut(&id) else { continue };
            fetch.active.remove(&cid);
            fetch.stats.blocks_fetched += 1;
            fetch.stats.bytes_fetched += data.len() as u64;
            *fetch.stats.per_peer.entry(peer).or_default() += 1;
            match fetch.kind {
                FetchKind::Block => {
                    let fetch = self.fetches.remove(&id).expect("present");
                    debug_assert_eq!(fetch.root, cid);
                    out.push(Action::Finish { fetch: id, result: Ok(Outcome::Block(data.clone())) });
                }
                FetchKind::Dag => {
                    fetch.storing += 1;
                    out.push(Action::Store { fetch: id, cid, data: data.clone() });
                    if let Err(e) = walk(fetch, &cid, &data) {
                        self.fail(id, e, out);
                    }
                }
            }
        }
        self.pump(now, out);
    }

    /// The peer sent bytes that do not match a CID: what it was sending is asked of others (it counts as slow for
    /// those blocks, asked again only if nobody else has them), and it is banned only as a repeat offender that is
    /// not the only other holder of a block we still want (see the module docs).
    pub(crate) fn on_invalid(
        &mut self,
        peer: PeerId,
        cid: Option<Cid>,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // `cid` is what the bytes hash to, not what was asked: count against the blocks this peer was sending.
        for want in self.wants.values_mut() {
            if want.requested.is_some_and(|(p, _)| p == peer) {
                for id in &want.fetches {
                    if let Some(f) = self.fetches.get_mut(id) {
                        f.stats.rejected += 1;
                    }
                }
                want.requested = None;
                want.slow.insert(peer);
                want.haves.retain(|p| *p != peer);
                release(&mut self.load, peer);
            }
        }
        for fetch in self.fetches.values_mut() {
            fetch.holders.retain(|p| *p != peer);
        }
        let offences = self.offences.entry(peer).or_default();
        offences.push_back(now);
        while offences.front().is_some_and(|t| now.duration_since(*t) > OFFENCE_WINDOW) {
            offences.pop_front();
        }
        let strikes = offences.len();
        let what = cid.map(|c| format!(" for {c}")).unwrap_or_default();
        if strikes < BAN_AFTER {
            tracing::warn!(%peer, strikes, "a peer sent an invalid block{what}: {reason}; asking others for it");
            self.pump(now, out);
            return;
        }
        if self.sole_holder(peer) {
            tracing::warn!(
                %peer, strikes,
                "a peer keeps sending invalid blocks{what} ({reason}) but is the only other holder of a block we want: \
                 not banned, asked again only when nobody else has a block"
            );
            self.pump(now, out);
            return;
        }
        self.offences.remove(&peer);
        out.push(Action::Ban { peer, reason: format!("sent {strikes} invalid blocks, the last{what}: {reason}") });
        self.peer_down(peer, now, out);
    }

    /// Whether banning `peer` would leave a wanted block with no other peer to ask: no other peer is connected, or
    /// every other one said it lacks a block that `peer` has (or was sending).
    fn sole_holder(&self, peer: PeerId) -> bool {
        let others: Vec<&PeerId> = self.peers.iter().filter(|p| **p != peer).collect();
        if others.is_empty() {
            return true;
        }
        self.wants.values().any(|w| {
            (w.haves.contains(&peer) || w.slow.contains(&peer)) && others.iter().all(|p| w.dont_haves.contains(p))
        })
    }

    /// The sink took (or refused) a block of a DAG fetch.
    pub(crate) fn stored(
        &mut self,
        id: FetchId,
        cid: Cid,
        result: Result<(), String>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(fetch) = self.fetches.get_mut(&id) else { return };
        fetch.storing -= 1;
        if let Err(reason) = result {
            self.fail(id, P2pError::Sink { cid, reason }, out);
            return;
        }
        self.pump(now, out);
    }

    /// Providers of a block were found in the DHT; returns those worth dialling (the event loop filters banned ones).
    pub(crate) fn on_providers(&self, providers: impl IntoIterator<Item = PeerId>) -> Vec<PeerId> {
        providers.into_iter().filter(|p| !self.peers.contains(p)).collect()
    }

    /// Time passed: slow peers lose their requests, lost blocks are searched again, overdue fetches end.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for want in self.wants.values_mut() {
            if let Some((peer, at)) = want.requested {
                if now.duration_since(at) >= self.request_timeout {
                    want.requested = None;
                    want.slow.insert(peer);
                    want.haves.retain(|p| *p != peer);
                    release(&mut self.load, peer);
                }
            }
        }
        let overdue: Vec<FetchId> = self.fetches.iter().filter(|(_, f)| now >= f.deadline).map(|(id, _)| *id).collect();
        for id in overdue {
            let fetch = &self.fetches[&id];
            let missing = fetch.active.iter().chain(fetch.queue.iter()).next().copied().unwrap_or(fetch.root);
            let timeout = fetch.timeout;
            self.fail(id, P2pError::NotFound { cid: missing, timeout }, out);
        }
        self.pump(now, out);
    }

    /// Moves queued blocks into the window, asks for wanted ones, and hands out requests.
    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut want_have: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        let mut want_block: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        // A busy peer is topped up to `per_peer` only once an eighth of its slots are free, so want-blocks go out
        // several to a message and its reads come back several blocks to a message, rather than one message each
        // way per block; the in-flight count stays within an eighth of the limit.
        let refill = (self.per_peer / 8).max(1);
        let open: HashSet<PeerId> = self
            .peers
            .iter()
            .filter(|p| self.load.get(p).copied().unwrap_or(0) + refill <= self.per_peer)
            .copied()
            .collect();
        let ids: Vec<FetchId> = self.fetches.keys().copied().collect();
        for id in ids {
            loop {
                let fetch = self.fetches.get_mut(&id).expect("present");
                if fetch.active.len() + fetch.storing >= self.window {
                    break;
                }
                let Some(cid) = fetch.queue.pop_front() else { break };
                // Already here: walk it without the network.
                if self.local.has(&cid) {
                    if let Some(data) = self.local.get(&cid) {
                        fetch.stats.blocks_local += 1;
                        if fetch.kind == FetchKind::Block {
                            self.fetches.remove(&id);
                            out.push(Action::Finish { fetch: id, result: Ok(Outcome::Block(data)) });
                            break;
                        }
                        if let Err(e) = walk(fetch, &cid, &data) {
                            self.fail(id, e, out);
                            break;
                        }
                        continue;
                    }
                }
                fetch.active.insert(cid);
                match self.wants.get_mut(&cid) {
                    Some(want) => want.fetches.push(id),
                    None => {
                        let mut want = Want {
                            fetches: vec![id],
                            asked: HashSet::new(),
                            haves: Vec::new(),
                            dont_haves: HashSet::new(),
                            slow: HashSet::new(),
                            requested: None,
                            last_search: None,
                        };
                        // A peer that holds this DAG is asked for the block itself at once; the others are asked
                        // whether they have it, so they can take over or share the load.
                        let direct = fetch
                            .holders
                            .iter()
                            .copied()
                            .filter(|p| self.peers.contains(p))
                            .filter(|p| open.contains(p) && self.load.get(p).copied().unwrap_or(0) < self.per_peer)
                            .min_by_key(|p| self.load.get(p).copied().unwrap_or(0));
                        if let Some(peer) = direct {
                            want.requested = Some((peer, now));
                            want.haves.push(peer);
                            want.asked.insert(peer);
                            *self.load.entry(peer).or_default() += 1;
                            want_block.entry(peer).or_default().push(cid);
                        }
                        for peer in &self.peers {
                            if Some(*peer) != direct {
                                want.asked.insert(*peer);
                                want_have.entry(*peer).or_default().push(cid);
                            }
                        }
                        self.wants.insert(cid, want);
                    }
                }
            }
        }
        for (cid, want) in self.wants.iter_mut() {
            if want.requested.is_some() {
                continue;
            }
            let candidate = want
                .haves
                .iter()
                .copied()
                .filter(|p| open.contains(p) && self.load.get(p).copied().unwrap_or(0) < self.per_peer)
                .min_by_key(|p| self.load.get(p).copied().unwrap_or(0));
            if let Some(peer) = candidate {
                want.requested = Some((peer, now));
                want.asked.insert(peer);
                *self.load.entry(peer).or_default() += 1;
                want_block.entry(peer).or_default().push(*cid);
                continue;
            }
            if !want.haves.is_empty() {
                continue; // holders known, all busy: wait for a free slot
            }
            let everyone_said_no = self.peers.iter().all(|p| want.dont_haves.contains(p) || want.slow.contains(p));
            if !everyone_said_no {
                continue;
            }
            let mut cids = vec![*cid];
            cids.extend(want.fetches.iter().filter_map(|id| self.fetches.get(id)).map(|f| f.root));
            match want.last_search {
                None => {
                    want.last_search = Some(now);
                    out.push(Action::FindProviders { cids });
                }
                Some(at) if now.duration_since(at) >= RESEARCH_INTERVAL => {
                    // Still nobody: look again, and ask everyone again, slow peers included, since a slow holder
                    // is better than none.
                    want.last_search = Some(now);
                    want.dont_haves.clear();
                    want.slow.clear();
                    out.push(Action::FindProviders { cids });
                    for peer in &self.peers {
                        want.asked.insert(*peer);
                        want_have.entry(*peer).or_default().push(*cid);
                    }
                }
                Some(_) => {}
            }
        }
        for (peer, cids) in want_have {
            out.push(Action::WantHave { peer, cids });
        }
        for (peer, cids) in want_block {
            out.push(Action::WantBlock { peer, cids });
        }
        let done: Vec<FetchId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.kind == FetchKind::Dag && f.queue.is_empty() && f.active.is_empty() && f.storing == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let fetch = self.fetches.remove(&id).expect("present");
            out.push(Action::Finish { fetch: id, result: Ok(Outcome::Dag(fetch.stats)) });
        }
    }

    /// Ends a fetch with an error and drops the wants only it had.
    fn fail(&mut self, id: FetchId, error: P2pError, out: &mut Vec<Action>) {
        let Some(fetch) = self.fetches.remove(&id) else { return };
        for cid in fetch.active {
            let Some(want) = self.wants.get_mut(&cid) else { continue };
            want.fetches.retain(|f| *f != id);
            if want.fetches.is_empty() {
                let want = self.wants.remove(&cid).expect("present");
                if let Some((p, _)) = want.requested {
                    release(&mut self.load, p);
                }
                for peer in want.asked {
                    out.push(Action::Cancel { peer, cids: vec![cid] });
                }
            }
        }
        out.push(Action::Finish { fetch: id, result: Err(error) });
    }
}

/// `peer` answered for a block these fetches want: it goes to the front of their holders.
fn note_holder(fetches: &mut HashMap<FetchId, Fetch>, ids: &[FetchId], peer: PeerId) {
    for id in ids {
        if let Some(fetch) = fetches.get_mut(id) {
            if fetch.holders.first() != Some(&peer) {
                fetch.holders.retain(|p| *p != peer);
                fetch.holders.insert(0, peer);
            }
        }
    }
}

fn release(load: &mut HashMap<PeerId, usize>, peer: PeerId) {
    if let Some(n) = load.get_mut(&peer) {
        *n = n.saturating_sub(1);
    }
}

/// Queues the block's children that this fetch has not met yet.
fn walk(fetch: &mut Fetch, cid: &Cid, data: &Bytes) -> Result<(), P2pError> {
    let links =
        xnode_dag::block_links(cid, data).map_err(|e| P2pError::Malformed { cid: *cid, reason: e.to_string() })?;
    for link in links {
        if fetch.seen.insert(link) {
            fetch.queue.push_back(link);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Mem(Mutex<HashMap<Cid, Bytes>>);

    impl BlockStore for Mem {
        fn has(&self, cid: &Cid) -> bool {
            self.0.lock().unwrap().contains_key(cid)
        }
        fn get(&self, cid: &Cid) -> Option<Bytes> {
            self.0.lock().unwrap().get(cid).cloned()
        }
    }

    fn raw(i: u32) -> (Cid, Bytes) {
        let data = Bytes::from(format!("block {i}"));
        (xnode_dag::cid_v1(xnode_dag::RAW, &data), data)
    }

    fn requests(out: &[Action]) -> Vec<(PeerId, Cid)> {
        out.iter()
            .filter_map(|a| match a {
                Action::WantBlock { peer, cids } => Some(cids.iter().map(|c| (*peer, *c)).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn requests_spread_over_holders_and_a_liar_is_banned() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 1, Duration::from_secs(10));
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut out = Vec::new();
        r.peer_up(a, now, &mut out);
        r.peer_up(b, now, &mut out);
        let blocks: Vec<_> = (0..2).map(raw).collect();
        let ids: Vec<_> =
            blocks.iter().map(|(c, _)| r.start(*c, FetchKind::Block, Duration::from_secs(5), now, &mut out)).collect();
        assert!(out.iter().any(|a| matches!(a, Action::WantHave { .. })));
        out.clear();
        for (cid, _) in &blocks {
            r.on_have(a, *cid, now, &mut out);
            r.on_have(b, *cid, now, &mut out);
        }
        // One block per peer at a time: each holder gets one.
        let asked = requests(&out);
        assert_eq!(asked.len(), 2);
        assert_ne!(asked[0].0, asked[1].0);

        // The peer asked for the first block sends garbage: not banned for one bad block (its copy may just be
        // corrupted), but the block goes to the other one.
        let (liar, cid) = asked.iter().copied().find(|(_, c)| *c == blocks[0].0).unwrap();
        out.clear();
        // Bitswap hashes what arrives: bytes matching nothing we asked for come as an invalid block.
        let garbage = xnode_dag::cid_v1(xnode_dag::RAW, b"garbage");
        r.on_invalid(liar, Some(garbage), "bytes hash to a CID we did not ask for".into(), now, &mut out);
        assert!(!out.iter().any(|a| matches!(a, Action::Ban { .. })), "one bad block is not a ban");
        let honest = if liar == a { b } else { a };
        // The honest peer is busy with the other block until it delivers it.
        let other = blocks.iter().find(|(c, _)| *c != cid).unwrap().clone();
        r.on_block(honest, other.0, other.1, now, &mut out);
        assert_eq!(requests(&out), vec![(honest, cid)]);
        r.on_block(honest, cid, blocks[0].1.clone(), now, &mut out);
        let finished: Vec<FetchId> = out
            .iter()
            .filter_map(|a| match a {
                Action::Finish { fetch, result: Ok(Outcome::Block(_)) } => Some(*fetch),
                _ => None,
            })
            .collect();
        assert_eq!(finished.len(), 2);
        assert!(ids.iter().all(|id| finished.contains(id)));
        assert_eq!(r.running(), 0);
    }

    fn bans(out: &[Action]) -> Vec<PeerId> {
        out.iter()
            .filter_map(|a| match a {
                Action::Ban { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_repeat_offender_is_banned_and_old_offences_expire() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let (liar, honest) = (PeerId::random(), PeerId::random());
        let mut out = Vec::new();
        r.peer_up(liar, now, &mut out);
        r.peer_up(honest, now, &mut out);
        let garbage = xnode_dag::cid_v1(xnode_dag::RAW, b"garbage");
        // Two bad blocks, then the window passes: they no longer count.
        for _ in 0..BAN_AFTER - 1 {
            r.on_invalid(liar, Some(garbage), "unasked".into(), now, &mut out);
        }
        assert!(bans(&out).is_empty());
        let later = now + OFFENCE_WINDOW + Duration::from_secs(1);
        r.on_invalid(liar, Some(garbage), "unasked".into(), later, &mut out);
        assert!(bans(&out).is_empty(), "the old offences expired");
        // Then BAN_AFTER within the window: banned, since another peer remains to ask.
        for _ in 0..BAN_AFTER - 1 {
            r.on_invalid(liar, Some(garbage), "unasked".into(), later, &mut out);
        }
        assert_eq!(bans(&out), vec![liar]);
        assert!(!r.peers.contains(&liar), "a banned peer is down");
    }

    #[test]
    fn the_only_other_holder_is_never_banned() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let (holder, other) = (PeerId::random(), PeerId::random());
        let mut out = Vec::new();
        r.peer_up(holder, now, &mut out);
        r.peer_up(other, now, &mut out);
        let (cid, data) = raw(7);
        let id = r.start(cid, FetchKind::Block, Duration::from_secs(30), now, &mut out);
        r.on_dont_have(other, cid, now, &mut out);
        r.on_have(holder, cid, now, &mut out);
        let garbage = xnode_dag::cid_v1(xnode_dag::RAW, b"garbage");
        out.clear();
        for _ in 0..BAN_AFTER + 2 {
            r.on_invalid(holder, Some(garbage), "corrupted copy".into(), now, &mut out);
        }
        assert!(bans(&out).is_empty(), "banning it would leave nobody to ask for {cid}");
        // Once the holder has repaired its copy, asking again (the next search) gets the block.
        let later = now + RESEARCH_INTERVAL + Duration::from_millis(1);
        out.clear();
        r.tick(later, &mut out);
        assert!(out.iter().any(|a| matches!(a, Action::WantHave { peer, .. } if *peer == holder)));
        r.on_have(holder, cid, later, &mut out);
        assert!(requests(&out).contains(&(holder, cid)));
        r.on_block(holder, cid, data.clone(), later, &mut out);
        assert!(out.iter().any(
            |a| matches!(a, Action::Finish { fetch, result: Ok(Outcome::Block(d)) } if *fetch == id && *d == data)
        ));

        // With no other peer connected at all, likewise.
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let mut out = Vec::new();
        r.peer_up(holder, now, &mut out);
        for _ in 0..BAN_AFTER + 2 {
            r.on_invalid(holder, Some(garbage), "corrupted copy".into(), now, &mut out);
        }
        assert!(bans(&out).is_empty());
    }

    #[test]
    fn nobody_has_it_ends_with_the_cid_at_the_deadline() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let peer = PeerId::random();
        let mut out = Vec::new();
        r.peer_up(peer, now, &mut out);
        let (cid, _) = raw(7);
        r.start(cid, FetchKind::Block, Duration::from_secs(5), now, &mut out);
        out.clear();
        r.on_dont_have(peer, cid, now, &mut out);
        assert!(out.iter().any(|a| matches!(a, Action::FindProviders { cids } if cids.contains(&cid))));
        out.clear();
        r.tick(now + Duration::from_secs(4), &mut out);
        assert!(!out.iter().any(|a| matches!(a, Action::Finish { .. })));
        r.tick(now + Duration::from_secs(5), &mut out);
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Finish { result: Err(P2pError::NotFound { cid: missing, .. }), .. } if *missing == cid
        )));
        assert_eq!(r.running(), 0);
    }

    #[test]
    fn a_slow_peer_loses_the_request() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(2));
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut out = Vec::new();
        r.peer_up(a, now, &mut out);
        r.peer_up(b, now, &mut out);
        let (cid, _) = raw(1);
        r.start(cid, FetchKind::Block, Duration::from_secs(30), now, &mut out);
        out.clear();
        r.on_have(a, cid, now, &mut out);
        r.on_have(b, cid, now, &mut out);
        let first = requests(&out)[0].0;
        out.clear();
        r.tick(now + Duration::from_secs(3), &mut out);
        let second = requests(&out);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].0, first);
    }

    /// A three-leaf UnixFS file: its root, its leaves in order, and every block's bytes.
    fn small_dag() -> (Cid, Vec<Cid>, HashMap<Cid, Bytes>) {
        let data: Vec<u8> = (0..700 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut blocks: Vec<xnode_dag::Block> = Vec::new();
        let added = xnode_dag::import_file(&xnode_dag::ImportOptions::default(), &data[..], &mut blocks).unwrap();
        let bytes: HashMap<Cid, Bytes> = blocks.iter().map(|b| (b.cid, b.data.clone())).collect();
        let leaves = xnode_dag::block_links(&added.cid, &bytes[&added.cid]).unwrap();
        assert_eq!(leaves.len(), 3);
        (added.cid, leaves, bytes)
    }

    fn want_haves(out: &[Action]) -> Vec<(PeerId, Cid)> {
        out.iter()
            .filter_map(|a| match a {
                Action::WantHave { peer, cids } => Some(cids.iter().map(|c| (*peer, *c)).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_peer_holding_the_dag_is_asked_for_blocks_directly() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let (a, b) = (PeerId::random(), PeerId::random());
        let (root, leaves, bytes) = small_dag();
        let mut out = Vec::new();
        r.peer_up(a, now, &mut out);
        r.peer_up(b, now, &mut out);
        r.start(root, FetchKind::Dag, Duration::from_secs(30), now, &mut out);
        // Nobody is known to hold it: everyone is asked whether they have the root.
        let mut asked = want_haves(&out);
        asked.sort();
        let mut expect = vec![(a, root), (b, root)];
        expect.sort();
        assert_eq!(asked, expect);
        out.clear();
        r.on_have(a, root, now, &mut out);
        assert_eq!(requests(&out), vec![(a, root)]);
        out.clear();
        r.on_block(a, root, bytes[&root].clone(), now, &mut out);
        // `a` holds the DAG: the leaves are want-blocks to it at once, and want-haves to `b` only.
        let mut direct = requests(&out);
        direct.sort();
        let mut expect: Vec<_> = leaves.iter().map(|c| (a, *c)).collect();
        expect.sort();
        assert_eq!(direct, expect);
        assert!(want_haves(&out).iter().all(|(p, _)| *p == b));
        assert_eq!(want_haves(&out).len(), 3);
        // `a` turns out to lack one: `b`, which said HAVE, gets it.
        out.clear();
        r.on_have(b, leaves[1], now, &mut out);
        r.on_dont_have(a, leaves[1], now, &mut out);
        assert_eq!(requests(&out), vec![(b, leaves[1])]);
    }

    #[test]
    fn blocks_being_stored_count_against_the_window() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 2, 16, Duration::from_secs(10));
        let a = PeerId::random();
        let (root, leaves, bytes) = small_dag();
        let mut out = Vec::new();
        r.peer_up(a, now, &mut out);
        let id = r.start(root, FetchKind::Dag, Duration::from_secs(30), now, &mut out);
        r.on_have(a, root, now, &mut out);
        out.clear();
        r.on_block(a, root, bytes[&root].clone(), now, &mut out);
        // The root is still being stored: one slot is left of two.
        assert_eq!(requests(&out).len(), 1);
        out.clear();
        r.on_block(a, leaves[0], bytes[&leaves[0]].clone(), now, &mut out);
        assert!(requests(&out).is_empty(), "two blocks are at the sink: the window is full");
        r.stored(id, root, Ok(()), now, &mut out);
        assert_eq!(requests(&out).len(), 1, "the root is stored: one more leaf is asked for");
    }

    #[test]
    fn a_busy_peer_is_topped_up_in_batches() {
        let now = Instant::now();
        let mut r = Retriever::new(Arc::new(Mem::default()), 32, 16, Duration::from_secs(10));
        let a = PeerId::random();
        let mut out = Vec::new();
        r.peer_up(a, now, &mut out);
        let blocks: Vec<_> = (0..20).map(raw).collect();
        for (cid, _) in &blocks {
            r.start(*cid, FetchKind::Block, Duration::from_secs(30), now, &mut out);
        }
        out.clear();
        for (cid, _) in &blocks {
            r.on_have(a, *cid, now, &mut out);
        }
        // HAVEs arriving one by one stop the filling once fewer than two slots (16 / 8) are free.
        let asked = requests(&out);
        assert_eq!(asked.len(), 15);
        let data: HashMap<Cid, Bytes> = blocks.iter().cloned().collect();
        let batches = |out: &[Action]| -> Vec<usize> {
            out.iter()
                .filter_map(|a| match a {
                    Action::WantBlock { cids, .. } => Some(cids.len()),
                    _ => None,
                })
                .collect()
        };
        // Two slots free: topped up to the limit, both in one message.
        out.clear();
        r.on_block(a, asked[0].1, data[&asked[0].1].clone(), now, &mut out);
        assert_eq!(batches(&out), vec![2]);
        // One slot free: not yet.
        out.clear();
        r.on_block(a, asked[1].1, data[&asked[1].1].clone(), now, &mut out);
        assert!(batches(&out).is_empty());
        r.on_block(a, asked[2].1, data[&asked[2].1].clone(), now, &mut out);
        assert_eq!(batches(&out), vec![2]);
    }
}
