//! The protocol rules, without I/O: what we want from whom, what each peer wants from us, and what to say in
//! reply. Messages go in, messages and events come out (into an outbox the behaviour drains), so two engines can
//! talk to each other in a unit test with no sockets.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;

use crate::message::{BlockData, Message, Presence, Want, WantType};
use crate::{BlockStore, Event};

/// The largest block we serve or expect: Bitswap implementations refuse blocks over 2 MiB.
pub(crate) const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// How many finished CIDs (received, cancelled, or given up) to remember, so that a block arriving after we
/// stopped wanting it reads as a harmless race rather than as a peer sending junk.
const RECENT_CAPACITY: usize = 4096;

/// Something the engine wants done.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this message to this peer (if connected; wants are re-sent in full on connect anyway).
    Send(PeerId, Message),
    /// Report this to the behaviour's user.
    Event(Event),
    /// Read these blocks from the store, off the swarm's task, in this order, and hand them to
    /// [`Engine::blocks_read`] (in one or several batches).
    Read(PeerId, Vec<Cid>),
}

/// Limits the engine enforces.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Answer DONT_HAVE to peers that ask for it.
    pub(crate) send_dont_have: bool,
    /// Most pending wants kept per remote peer.
    pub(crate) max_wants_per_peer: usize,
    /// Largest block served.
    pub(crate) max_block_size: usize,
}

/// A block a remote peer asked for that is being read from the store; `send_dont_have` says what to answer if the
/// read finds nothing after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Serving {
    send_dont_have: bool,
}

/// A remote peer's want that we could not satisfy yet, kept so [`Engine::notify_new_blocks`] can answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingWant {
    want_type: WantType,
}

/// The Bitswap state of this node towards every peer.
#[derive(Debug)]
pub(crate) struct Engine {
    limits: Limits,
    /// Server side: what each peer has asked us for and we have not answered with a block or HAVE yet.
    ledgers: HashMap<PeerId, HashMap<Cid, PendingWant>>,
    /// Server side: blocks each peer asked for that we hold and are reading ([`Action::Read`]). A cancel removes
    /// the entry, so a block read after it is not sent.
    serving: HashMap<PeerId, HashMap<Cid, Serving>>,
    /// Client side: what we asked each peer for and have not had answered.
    wants: HashMap<PeerId, HashMap<Cid, WantType>>,
    recent: RecentCids,
    out: VecDeque<Action>,
}

impl Engine {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            ledgers: HashMap::new(),
            serving: HashMap::new(),
            wants: HashMap::new(),
            recent: RecentCids::default(),
            out: VecDeque::new(),
        }
    }

    /// The next thing to do, oldest first.
    pub(crate) fn next_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// Whether we are waiting on `peer` for anything: the connection is worth keeping while we are.
    pub(crate) fn expects_from(&self, peer: &PeerId) -> bool {
        self.wants.get(peer).is_some_and(|w| !w.is_empty())
    }

    /// Client: ask `peer` for `cids`. A want-block is never downgraded to a want-have: the block answers both.
    pub(crate) fn want(&mut self, peer: PeerId, cids: &[Cid], want_type: WantType) {
        let ours = self.wants.entry(peer).or_default();
        let mut msg = Message::default();
        for cid in cids {
            match ours.get(cid) {
                Some(WantType::Block) => continue,
                Some(WantType::Have) if want_type == WantType::Have => continue,
                _ => {}
            }
            ours.insert(*cid, want_type);
            msg.wants.push(Want { cid: *cid, want_type, send_dont_have: true, cancel: false, priority: 1 });
        }
        if !msg.wants.is_empty() {
            self.out.push_back(Action::Send(peer, msg));
        }
    }

    /// Client: stop asking `peer` for `cids`.
    pub(crate) fn cancel(&mut self, peer: PeerId, cids: &[Cid]) {
        let mut msg = Message::default();
        if let Some(ours) = self.wants.get_mut(&peer) {
            for cid in cids {
                if ours.remove(cid).is_some() {
                    msg.wants.push(cancel_entry(*cid));
                }
            }
        }
        for w in &msg.wants {
            self.forget_if_unwanted(w.cid);
        }
        if !msg.wants.is_empty() {
            self.out.push_back(Action::Send(peer, msg));
        }
    }

    /// A connection to `peer` is up: tell it everything we want from it, replacing whatever it remembered.
    pub(crate) fn peer_connected(&mut self, peer: PeerId) {
        let Some(ours) = self.wants.get(&peer).filter(|w| !w.is_empty()) else { return };
        let wants = ours
            .iter()
            .map(|(cid, t)| Want { cid: *cid, want_type: *t, send_dont_have: true, cancel: false, priority: 1 })
            .collect();
        self.out.push_back(Action::Send(peer, Message { full: true, wants, ..Message::default() }));
    }

    /// `peer` is gone (last connection closed, dial failed, or it does not speak Bitswap): forget what it wanted
    /// from us, and answer each of our wants to it with DONT_HAVE so the caller can ask someone else instead of
    /// waiting forever.
    pub(crate) fn peer_gone(&mut self, peer: PeerId) {
        self.ledgers.remove(&peer);
        self.serving.remove(&peer);
        let Some(ours) = self.wants.remove(&peer) else { return };
        for cid in ours.into_keys() {
            self.forget_if_unwanted(cid);
            self.out.push_back(Action::Event(Event::DontHave { peer, cid }));
        }
    }

    /// Forgets what `peer` wanted from us (it may no longer be served), keeping our own wants to it.
    pub(crate) fn forget_ledger(&mut self, peer: &PeerId) {
        self.ledgers.remove(peer);
        self.serving.remove(peer);
    }

    /// Handles one message from `peer`: blocks and presences answer our wants, its wantlist updates its ledger and
    /// is answered from `store`.
    pub(crate) fn on_message(&mut self, peer: PeerId, msg: Message, store: &dyn BlockStore) {
        for reason in msg.rejected {
            self.out.push_back(Action::Event(Event::InvalidBlock { peer, cid: None, reason }));
        }
        for block in msg.blocks {
            self.on_block(peer, block);
        }
        for (cid, presence) in msg.presences {
            self.on_presence(peer, cid, presence);
        }
        if msg.full || !msg.wants.is_empty() {
            self.on_wantlist(peer, msg.full, msg.wants, store);
        }
    }

    fn on_block(&mut self, peer: PeerId, block: BlockData) {
        let cid = block.cid;
        let wanted_by: Vec<PeerId> = self.wants.iter().filter(|(_, w)| w.contains_key(&cid)).map(|(p, _)| *p).collect();
        if wanted_by.is_empty() {
            if self.recent.contains(&cid) {
                // Sent before our cancel reached the peer, or a second provider answered too: not an offence.
                tracing::trace!(%peer, %cid, "ignoring a block we no longer want");
            } else {
                self.out.push_back(Action::Event(Event::InvalidBlock {
                    peer,
                    cid: Some(cid),
                    reason: format!(
                        "received {} bytes hashing to {cid}, which we did not ask for (wrong bytes for a wanted \
                         block, or an unsolicited block)",
                        block.data.len()
                    ),
                }));
            }
            return;
        }
        for other in wanted_by {
            if let Some(w) = self.wants.get_mut(&other) {
                w.remove(&cid);
            }
            // The sender dropped the want when it sent the block; everyone else must be told to stop.
            if other != peer {
                self.out
                    .push_back(Action::Send(other, Message { wants: vec![cancel_entry(cid)], ..Message::default() }));
            }
        }
        self.recent.insert(cid);
        self.out.push_back(Action::Event(Event::Block { peer, cid, data: block.data }));
    }

    fn on_presence(&mut self, peer: PeerId, cid: Cid, presence: Presence) {
        let Some(ours) = self.wants.get_mut(&peer) else { return };
        let Some(&want_type) = ours.get(&cid) else {
            tracing::trace!(%peer, %cid, ?presence, "ignoring a presence we did not ask for");
            return;
        };
        match presence {
            Presence::Have => {
                // A HAVE completes a want-have; a want-block stays open until the block comes.
                if want_type == WantType::Have {
                    ours.remove(&cid);
                }
                self.out.push_back(Action::Event(Event::Have { peer, cid }));
            }
            Presence::DontHave => {
                ours.remove(&cid);
                self.forget_if_unwanted(cid);
                self.out.push_back(Action::Event(Event::DontHave { peer, cid }));
                // Kubo keeps an unanswerable want in its ledger and sends the block if it ever gets it. The
                // caller has been told to look elsewhere, so take the want back rather than receive it twice.
                self.out
                    .push_back(Action::Send(peer, Message { wants: vec![cancel_entry(cid)], ..Message::default() }));
            }
        }
    }

    /// Answers presences at once (an index lookup) and queues reads for the blocks we hold: their bytes come back
    /// through [`Engine::blocks_read`], so a wantlist never waits on the disk here.
    fn on_wantlist(&mut self, peer: PeerId, full: bool, wants: Vec<Want>, store: &dyn BlockStore) {
        let ledger = self.ledgers.entry(peer).or_default();
        let serving = self.serving.entry(peer).or_default();
        if full {
            ledger.clear();
            serving.clear();
        }
        let mut reply = Message::default();
        let mut read = Vec::new();
        for w in wants {
            if w.cancel {
                ledger.remove(&w.cid);
                serving.remove(&w.cid);
                continue;
            }
            if store.has(&w.cid) {
                ledger.remove(&w.cid);
                match w.want_type {
                    // Already on its way as a block: a HAVE would say nothing more.
                    WantType::Have if serving.contains_key(&w.cid) => {}
                    WantType::Have => reply.presences.push((w.cid, Presence::Have)),
                    WantType::Block => {
                        let fresh = serving.insert(w.cid, Serving { send_dont_have: w.send_dont_have }).is_none();
                        if fresh {
                            read.push(w.cid);
                        }
                    }
                }
                continue;
            }
            if w.send_dont_have && self.limits.send_dont_have {
                reply.presences.push((w.cid, Presence::DontHave));
            }
            // Remember it so a block that arrives later can be sent; a want-block is never weakened to a want-have.
            remember(&self.limits, ledger, peer, w.cid, w.want_type);
        }
        if !reply.is_empty() {
            self.out.push_back(Action::Send(peer, reply));
        }
        if !read.is_empty() {
            self.out.push_back(Action::Read(peer, read));
        }
    }

    /// Server: blocks read for `peer` after an [`Action::Read`], in the order read (`None`: no longer stored).
    /// Those still wanted go out in one message, in that order; a cancelled one is dropped; a missing or oversized
    /// one is answered DONT_HAVE (when asked for) and waits in the ledger like any block we lack.
    pub(crate) fn blocks_read(&mut self, peer: PeerId, blocks: Vec<(Cid, Option<Bytes>)>) {
        let Some(serving) = self.serving.get_mut(&peer) else { return };
        let ledger = self.ledgers.entry(peer).or_default();
        let mut reply = Message::default();
        for (cid, data) in blocks {
            let Some(want) = serving.remove(&cid) else { continue };
            match data {
                Some(data) if data.len() <= self.limits.max_block_size => {
                    reply.blocks.push(BlockData { cid, data });
                    continue;
                }
                Some(data) => {
                    tracing::warn!(%cid, len = data.len(), "not serving a block larger than the Bitswap limit")
                }
                None => {}
            }
            if want.send_dont_have && self.limits.send_dont_have {
                reply.presences.push((cid, Presence::DontHave));
            }
            remember(&self.limits, ledger, peer, cid, WantType::Block);
        }
        if !reply.is_empty() {
            self.out.push_back(Action::Send(peer, reply));
        }
    }

    /// Server: blocks `cids` are now in the store; send them (or HAVE) to every peer still waiting for them.
    pub(crate) fn notify_new_blocks(&mut self, cids: &[Cid], store: &dyn BlockStore) {
        let mut out = Vec::new();
        for (peer, ledger) in &mut self.ledgers {
            let mut reply = Message::default();
            let mut read = Vec::new();
            for cid in cids {
                let Some(want) = ledger.get(cid).copied() else { continue };
                if !store.has(cid) {
                    continue;
                }
                ledger.remove(cid);
                match want.want_type {
                    WantType::Have => reply.presences.push((*cid, Presence::Have)),
                    WantType::Block => {
                        let serving = self.serving.entry(*peer).or_default();
                        // Asked without send-dont-have, or it would not have waited here.
                        if serving.insert(*cid, Serving { send_dont_have: false }).is_none() {
                            read.push(*cid);
                        }
                    }
                }
            }
            if !reply.is_empty() {
                out.push(Action::Send(*peer, reply));
            }
            if !read.is_empty() {
                out.push(Action::Read(*peer, read));
            }
        }
        self.out.extend(out);
    }

    /// What `peer` is waiting for from us (for tests and the dashboard).
    #[cfg(test)]
    pub(crate) fn ledger_of(&self, peer: &PeerId) -> Vec<(Cid, WantType)> {
        let mut v: Vec<_> =
            self.ledgers.get(peer).map(|l| l.iter().map(|(c, w)| (*c, w.want_type)).collect()).unwrap_or_default();
        v.sort_by_key(|(c, _)| c.to_bytes());
        v
    }

    fn forget_if_unwanted(&mut self, cid: Cid) {
        if !self.wants.values().any(|w| w.contains_key(&cid)) {
            self.recent.insert(cid);
        }
    }
}

/// Keeps a want we cannot answer yet in the peer's ledger, within the ledger's bound; a want-block is never weakened
/// to a want-have.
fn remember(limits: &Limits, ledger: &mut HashMap<Cid, PendingWant>, peer: PeerId, cid: Cid, want_type: WantType) {
    let want_type = match ledger.get(&cid) {
        Some(PendingWant { want_type: WantType::Block }) => WantType::Block,
        _ => want_type,
    };
    if ledger.len() < limits.max_wants_per_peer || ledger.contains_key(&cid) {
        ledger.insert(cid, PendingWant { want_type });
    } else {
        tracing::debug!(%peer, %cid, "wantlist full; dropping want");
    }
}

fn cancel_entry(cid: Cid) -> Want {
    Want { cid, want_type: WantType::Block, send_dont_have: false, cancel: true, priority: 0 }
}

/// A bounded set that forgets its oldest members first.
#[derive(Debug, Default)]
struct RecentCids {
    order: VecDeque<Cid>,
    set: HashSet<Cid>,
}

impl RecentCids {
    fn insert(&mut self, cid: Cid) {
        if self.set.insert(cid) {
            self.order.push_back(cid);
            if self.order.len() > RECENT_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, cid: &Cid) -> bool {
        self.set.contains(cid)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use multihash::Multihash;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::message::{cid_from_prefix, cid_prefix, Version};

    #[derive(Default)]
    struct MemStore(Mutex<HashMap<Cid, Bytes>>);

    impl MemStore {
        fn put(&self, data: &'static [u8]) -> Cid {
            let cid = cid_of(data);
            self.0.lock().unwrap().insert(cid, Bytes::from_static(data));
            cid
        }
    }

    impl BlockStore for MemStore {
        fn has(&self, cid: &Cid) -> bool {
            self.0.lock().unwrap().contains_key(cid)
        }
        fn get(&self, cid: &Cid) -> Option<Bytes> {
            self.0.lock().unwrap().get(cid).cloned()
        }
    }

    fn cid_of(data: &[u8]) -> Cid {
        Cid::new_v1(0x55, Multihash::wrap(0x12, &Sha256::digest(data)).unwrap())
    }

    fn limits() -> Limits {
        Limits { send_dont_have: true, max_wants_per_peer: 4, max_block_size: MAX_BLOCK_SIZE }
    }

    fn drain(e: &mut Engine) -> (Vec<(PeerId, Message)>, Vec<Event>) {
        let (mut sends, mut events) = (Vec::new(), Vec::new());
        while let Some(a) = e.next_action() {
            match a {
                Action::Send(p, m) => sends.push((p, m)),
                Action::Event(ev) => events.push(ev),
                Action::Read(p, cids) => panic!("unexpected read for {p}: {cids:?}"),
            }
        }
        (sends, events)
    }

    /// Like `drain`, but carries out reads from `store` at once, as the behaviour's reader thread would.
    fn drain_reading(e: &mut Engine, store: &MemStore) -> (Vec<(PeerId, Message)>, Vec<Event>) {
        let (mut sends, mut events) = (Vec::new(), Vec::new());
        while let Some(a) = e.next_action() {
            match a {
                Action::Send(p, m) => sends.push((p, m)),
                Action::Event(ev) => events.push(ev),
                Action::Read(p, cids) => {
                    e.blocks_read(p, cids.into_iter().map(|c| (c, store.read_to_send(&c))).collect())
                }
            }
        }
        (sends, events)
    }

    /// Carries a message over the "wire": encode for 1.2.0 and decode, as the handler would.
    fn wire(m: Message) -> Message {
        Message::decode(&m.encode(Version::V120)[..]).unwrap()
    }

    /// Two engines, a client and a server, exchange messages until neither has anything to send.
    fn pump(client: &mut Engine, cp: PeerId, server: &mut Engine, sp: PeerId, store: &MemStore) -> Vec<Event> {
        let empty = MemStore::default();
        let mut events = Vec::new();
        loop {
            let (to_server, ev) = drain(client);
            events.extend(ev);
            for (p, m) in &to_server {
                assert_eq!(*p, sp);
                server.on_message(cp, wire(m.clone()), store);
            }
            let (to_client, ev) = drain_reading(server, store);
            assert!(ev.is_empty(), "the server side reports nothing: {ev:?}");
            for (p, m) in &to_client {
                assert_eq!(*p, cp);
                client.on_message(sp, wire(m.clone()), &empty);
            }
            if to_server.is_empty() && to_client.is_empty() {
                let (rest, ev) = drain(client);
                assert!(rest.is_empty());
                events.extend(ev);
                return events;
            }
        }
    }

    #[test]
    fn want_have_and_want_block_between_two_engines() {
        let (cp, sp) = (PeerId::random(), PeerId::random());
        let (mut client, mut server) = (Engine::new(limits()), Engine::new(limits()));
        let store = MemStore::default();
        let here = store.put(b"here");
        let missing = cid_of(b"missing");

        client.want(sp, &[here, missing], WantType::Have);
        let ev = pump(&mut client, cp, &mut server, sp, &store);
        assert_eq!(ev, vec![Event::Have { peer: sp, cid: here }, Event::DontHave { peer: sp, cid: missing }]);
        assert!(!client.expects_from(&sp), "both want-haves are answered");
        assert!(server.ledger_of(&cp).is_empty(), "answered wants leave the ledger; DONT_HAVE was cancelled");

        client.want(sp, &[here], WantType::Block);
        let ev = pump(&mut client, cp, &mut server, sp, &store);
        assert_eq!(ev, vec![Event::Block { peer: sp, cid: here, data: Bytes::from_static(b"here") }]);
    }

    #[test]
    fn dont_have_closes_the_want_at_both_ends() {
        let (cp, sp) = (PeerId::random(), PeerId::random());
        let (mut client, mut server) = (Engine::new(limits()), Engine::new(limits()));
        let store = MemStore::default();
        let later = cid_of(b"later");
        client.want(sp, &[later], WantType::Block);
        assert_eq!(pump(&mut client, cp, &mut server, sp, &store), vec![Event::DontHave { peer: sp, cid: later }]);
        assert!(!client.expects_from(&sp));
        assert!(server.ledger_of(&cp).is_empty(), "the client's cancel cleared the server's ledger");
    }

    #[test]
    fn late_block_is_served_on_notify() {
        // Kubo sometimes sends want-block without send-dont-have: the want waits in our ledger.
        let (cp, sp) = (PeerId::random(), PeerId::random());
        let (mut client, mut server) = (Engine::new(limits()), Engine::new(limits()));
        let store = MemStore::default();
        let later = cid_of(b"later");
        let have_later = cid_of(b"have-later");
        client.want(sp, &[later], WantType::Block);
        client.want(sp, &[have_later], WantType::Have);
        let (sends, _) = drain(&mut client);
        for (_, mut m) in sends {
            m.wants.iter_mut().for_each(|w| w.send_dont_have = false);
            server.on_message(cp, wire(m), &store);
        }
        assert!(drain(&mut server).0.is_empty(), "nothing to say yet");
        store.put(b"later");
        store.put(b"have-later");
        server.notify_new_blocks(&[later, have_later], &store);
        let ev = pump(&mut client, cp, &mut server, sp, &store);
        // The HAVE goes at once; the block follows once read.
        assert_eq!(
            ev,
            vec![
                Event::Have { peer: sp, cid: have_later },
                Event::Block { peer: sp, cid: later, data: Bytes::from_static(b"later") },
            ]
        );
        assert!(server.ledger_of(&cp).is_empty());
    }

    #[test]
    fn full_wantlist_replaces_and_incremental_amends() {
        let cp = PeerId::random();
        let mut server = Engine::new(limits());
        let store = MemStore::default();
        let [a, b, c] = [cid_of(b"a"), cid_of(b"b"), cid_of(b"c")];
        let want = |cid, t| Want { cid, want_type: t, send_dont_have: false, cancel: false, priority: 1 };
        let msg = |full, wants| Message { full, wants, ..Message::default() };

        server.on_message(cp, msg(false, vec![want(a, WantType::Block), want(b, WantType::Have)]), &store);
        assert_eq!(server.ledger_of(&cp).len(), 2);
        // Incremental: add c, cancel a; a want-have for a want-block entry does not weaken it.
        server.on_message(cp, msg(false, vec![want(c, WantType::Have), cancel_entry(a)]), &store);
        server.on_message(cp, msg(false, vec![want(c, WantType::Block), want(c, WantType::Have)]), &store);
        let mut expect = vec![(b, WantType::Have), (c, WantType::Block)];
        expect.sort_by_key(|(c, _)| c.to_bytes());
        assert_eq!(server.ledger_of(&cp), expect);
        // Full: replaces everything.
        server.on_message(cp, msg(true, vec![want(a, WantType::Have)]), &store);
        assert_eq!(server.ledger_of(&cp), vec![(a, WantType::Have)]);
        server.on_message(cp, msg(true, vec![]), &store);
        assert!(server.ledger_of(&cp).is_empty());
        // No DONT_HAVE was asked for, so nothing was sent.
        assert!(drain(&mut server).0.is_empty());
    }

    #[test]
    fn ledger_is_bounded() {
        let (cp, mut server, store) = (PeerId::random(), Engine::new(limits()), MemStore::default());
        let wants = (0..10u8)
            .map(|i| Want {
                cid: cid_of(&[i]),
                want_type: WantType::Block,
                send_dont_have: false,
                cancel: false,
                priority: 1,
            })
            .collect();
        server.on_message(cp, Message { wants, ..Message::default() }, &store);
        assert_eq!(server.ledger_of(&cp).len(), 4);
    }

    #[test]
    fn send_dont_have_can_be_turned_off() {
        let (cp, store) = (PeerId::random(), MemStore::default());
        let mut server = Engine::new(Limits { send_dont_have: false, ..limits() });
        let w =
            Want { cid: cid_of(b"x"), want_type: WantType::Block, send_dont_have: true, cancel: false, priority: 1 };
        server.on_message(cp, Message { wants: vec![w], ..Message::default() }, &store);
        assert!(drain(&mut server).0.is_empty());
    }

    #[test]
    fn mismatching_payload_is_invalid_and_not_delivered() {
        let sp = PeerId::random();
        let mut client = Engine::new(limits());
        let asked = cid_of(b"real");
        client.want(sp, &[asked], WantType::Block);
        drain(&mut client);
        // The liar labels its bytes with the prefix of what we asked for; the CID comes out different.
        let cid = cid_from_prefix(&cid_prefix(&asked), b"fake").unwrap();
        let lie = Message { blocks: vec![BlockData { cid, data: Bytes::from_static(b"fake") }], ..Message::default() };
        client.on_message(sp, lie, &MemStore::default());
        let (_, ev) = drain(&mut client);
        assert!(
            matches!(&ev[..], [Event::InvalidBlock { peer, cid: Some(c), .. }] if *peer == sp && *c == cid),
            "{ev:?}"
        );
        assert!(client.expects_from(&sp), "the real block is still wanted");
    }

    #[test]
    fn rejected_payload_is_reported() {
        let sp = PeerId::random();
        let mut client = Engine::new(limits());
        let msg = Message { rejected: vec!["bad prefix".into()], ..Message::default() };
        client.on_message(sp, msg, &MemStore::default());
        let (_, ev) = drain(&mut client);
        assert!(matches!(&ev[..], [Event::InvalidBlock { cid: None, .. }]), "{ev:?}");
    }

    #[test]
    fn block_cancels_the_want_everywhere_and_late_duplicates_are_tolerated() {
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let mut client = Engine::new(limits());
        let data = Bytes::from_static(b"x");
        let cid = cid_of(&data);
        client.want(p1, &[cid], WantType::Block);
        client.want(p2, &[cid], WantType::Have);
        drain(&mut client);
        let block = || Message { blocks: vec![BlockData { cid, data: data.clone() }], ..Message::default() };
        client.on_message(p1, block(), &MemStore::default());
        let (sends, ev) = drain(&mut client);
        assert_eq!(ev, vec![Event::Block { peer: p1, cid, data: data.clone() }]);
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].0, p2);
        assert!(sends[0].1.wants[0].cancel);
        // The same block from p2 (it raced our cancel) is dropped silently.
        client.on_message(p2, block(), &MemStore::default());
        assert_eq!(drain(&mut client), (vec![], vec![]));
    }

    #[test]
    fn cancel_sends_cancel_and_tolerates_a_racing_block() {
        let sp = PeerId::random();
        let mut client = Engine::new(limits());
        let data = Bytes::from_static(b"y");
        let cid = cid_of(&data);
        client.want(sp, &[cid], WantType::Block);
        drain(&mut client);
        client.cancel(sp, &[cid]);
        let (sends, _) = drain(&mut client);
        assert!(matches!(&sends[..], [(p, m)] if *p == sp && m.wants.len() == 1 && m.wants[0].cancel));
        client.on_message(
            sp,
            Message { blocks: vec![BlockData { cid, data }], ..Message::default() },
            &MemStore::default(),
        );
        assert_eq!(drain(&mut client), (vec![], vec![]));
    }

    #[test]
    fn reconnect_resends_full_wantlist_and_loss_answers_dont_have() {
        let sp = PeerId::random();
        let mut client = Engine::new(limits());
        let cid = cid_of(b"z");
        client.want(sp, &[cid], WantType::Block);
        drain(&mut client);
        client.peer_connected(sp);
        let (sends, _) = drain(&mut client);
        assert!(matches!(&sends[..], [(_, m)] if m.full && m.wants.len() == 1));
        client.peer_gone(sp);
        let (_, ev) = drain(&mut client);
        assert_eq!(ev, vec![Event::DontHave { peer: sp, cid }]);
        assert!(!client.expects_from(&sp));
    }

    #[test]
    fn want_block_is_not_downgraded() {
        let sp = PeerId::random();
        let mut client = Engine::new(limits());
        let cid = cid_of(b"w");
        client.want(sp, &[cid], WantType::Block);
        client.want(sp, &[cid], WantType::Have);
        let (sends, _) = drain(&mut client);
        assert_eq!(sends.len(), 1, "the want-have adds nothing");
        // A HAVE does not close a want-block.
        client.on_message(
            sp,
            Message { presences: vec![(cid, Presence::Have)], ..Message::default() },
            &MemStore::default(),
        );
        assert!(client.expects_from(&sp));
    }

    #[test]
    fn blocks_are_read_in_order_and_a_cancel_beats_the_read() {
        let cp = PeerId::random();
        let mut server = Engine::new(limits());
        let store = MemStore::default();
        let [a, b, c] = [store.put(b"a"), store.put(b"b"), store.put(b"c")];
        let want = |cid| Want { cid, want_type: WantType::Block, send_dont_have: true, cancel: false, priority: 1 };
        let msg = |wants| Message { wants, ..Message::default() };
        server.on_message(cp, msg(vec![want(a), want(b), want(c)]), &store);
        // Nothing is read on the engine's caller: the reads are handed out, in the order asked.
        let reads: Vec<_> = std::iter::from_fn(|| server.next_action()).collect();
        assert!(matches!(&reads[..], [Action::Read(p, cids)] if *p == cp && *cids == vec![a, b, c]), "{reads:?}");
        // A second want-block for a block being read does not read it twice.
        server.on_message(cp, msg(vec![want(a)]), &store);
        assert!(server.next_action().is_none());
        // The peer cancels b while it is read.
        server.on_message(cp, msg(vec![cancel_entry(b)]), &store);
        server.blocks_read(cp, vec![(a, store.read_to_send(&a)), (b, store.read_to_send(&b))]);
        server.blocks_read(cp, vec![(c, store.read_to_send(&c))]);
        let (sends, _) = drain(&mut server);
        let sent: Vec<Vec<Cid>> = sends.iter().map(|(_, m)| m.blocks.iter().map(|b| b.cid).collect()).collect();
        assert_eq!(sent, vec![vec![a], vec![c]]);
        // Reads that finish after the peer left send nothing.
        server.on_message(cp, msg(vec![want(b)]), &store);
        assert!(matches!(server.next_action(), Some(Action::Read(_, cids)) if cids == vec![b]));
        server.peer_gone(cp);
        server.blocks_read(cp, vec![(b, store.read_to_send(&b))]);
        assert!(drain(&mut server).0.is_empty());
    }

    #[test]
    fn a_block_gone_before_its_read_is_answered_dont_have() {
        let cp = PeerId::random();
        let mut server = Engine::new(limits());
        let store = MemStore::default();
        let a = store.put(b"a");
        let w = Want { cid: a, want_type: WantType::Block, send_dont_have: true, cancel: false, priority: 1 };
        server.on_message(cp, Message { wants: vec![w], ..Message::default() }, &store);
        assert!(matches!(server.next_action(), Some(Action::Read(_, _))));
        server.blocks_read(cp, vec![(a, None)]);
        let (sends, _) = drain(&mut server);
        assert!(matches!(&sends[..], [(_, m)] if m.presences == vec![(a, Presence::DontHave)] && m.blocks.is_empty()));
        assert_eq!(server.ledger_of(&cp), vec![(a, WantType::Block)], "served if it comes back");
    }
}
