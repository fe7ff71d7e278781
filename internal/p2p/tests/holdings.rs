//! `/xnode/holdings/1.0.0` between real swarms on loopback: members get the right answers, requests over the
//! bounds and floods are refused without harm, and peers outside the group get no answer at all. The misbehaving
//! peers are bare libp2p swarms speaking the wire format directly, so they can send what `Client` never would.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use common::TestNode;
use futures::StreamExt;
use libp2p::request_response::{self, cbor, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use serde_bytes::ByteBuf;
use xnode_p2p::holdings::{self, Refusal, Request, Response};
use xnode_p2p::{agent_version, BlockKind, Holdings, P2pError, SetDigest};

fn cid(n: u32) -> Cid {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(n.to_le_bytes());
    Cid::new_v1(0x55, cid::multihash::Multihash::<64>::wrap(0x12, &hash).unwrap())
}

/// Holdings from a map of partition -> blocks, counting calls; each call takes `delay` (a slow disk).
struct Fake {
    partitions: HashMap<u32, Vec<Cid>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Fake {
    fn new(delay: Duration) -> Self {
        let partitions = HashMap::from([(0, vec![cid(1), cid(2)]), (5, vec![cid(3)]), (65_535, vec![cid(4)])]);
        Fake { partitions, calls: AtomicUsize::new(0), delay }
    }

    fn digest(&self, partition: u32) -> SetDigest {
        let mut sum = SetDigest::default();
        for c in self.partitions.get(&partition).into_iter().flatten() {
            sum.add(&SetDigest::of_cid(c));
        }
        sum
    }

    fn called(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
    }
}

impl Holdings for Fake {
    fn digests(&self, partitions: &[u32]) -> Vec<SetDigest> {
        self.called();
        partitions.iter().map(|p| self.digest(*p)).collect()
    }
    fn summary(&self, bitmap: &[u8]) -> SetDigest {
        self.called();
        let mut sum = SetDigest::default();
        for p in self.partitions.keys() {
            if bitmap.get(*p as usize / 8).is_some_and(|byte| byte & (1 << (p % 8)) != 0) {
                sum.add(&self.digest(*p));
            }
        }
        sum
    }
    fn have(&self, cids: &[Cid]) -> Vec<bool> {
        self.called();
        let held: HashSet<&Cid> = self.partitions.values().flatten().collect();
        cids.iter().map(|c| held.contains(c)).collect()
    }
    fn kinds(&self, cids: &[Cid]) -> Vec<BlockKind> {
        self.called();
        let held: HashSet<&Cid> = self.partitions.values().flatten().collect();
        // Held blocks of even number are leaves of that size, odd ones interior.
        cids.iter()
            .map(|c| match (0..100).find(|n| cid(*n) == *c) {
                Some(n) if held.contains(c) && n % 2 == 0 => BlockKind::Leaf(n),
                Some(_) if held.contains(c) => BlockKind::Interior,
                _ => BlockKind::Absent,
            })
            .collect()
    }
}

/// Two connected members of one group: `a` asks, `b` holds `fake`.
async fn pair(group: &str, fake: Arc<Fake>) -> (TestNode, TestNode) {
    let a = TestNode::start(group, |_| {}).await;
    let b = TestNode::start_holding(group, fake).await;
    a.client.dial(b.client.peer_id(), vec![b.tcp_addr().await]).await.unwrap();
    a.wait_admitted(b.client.peer_id()).await;
    b.wait_admitted(a.client.peer_id()).await;
    (a, b)
}

#[tokio::test]
async fn members_answer_digests_summary_and_have() {
    common::init_tracing();
    let fake = Arc::new(Fake::new(Duration::ZERO));
    let (a, b) = pair("holdings-answers", fake.clone()).await;
    let peer = b.client.peer_id();

    let digests = a.client.digests(peer, vec![5, 1, 0, 65_535]).await.unwrap();
    assert_eq!(digests, vec![fake.digest(5), SetDigest::default(), fake.digest(0), fake.digest(65_535)]);
    assert_eq!(digests[2].count, 2);

    // Partitions 0 and 65,535: bit 0 of byte 0 and bit 7 of byte 8,191.
    let mut bitmap = vec![0u8; holdings::MAX_BITMAP];
    bitmap[0] = 0b0000_0001;
    bitmap[8_191] = 0b1000_0000;
    let mut expected = fake.digest(0);
    expected.add(&fake.digest(65_535));
    assert_eq!(a.client.summary(peer, bitmap).await.unwrap(), expected);

    let have = a.client.have(peer, vec![cid(3), cid(9), cid(1)]).await.unwrap();
    assert_eq!(have, vec![true, false, true]);

    let held: Vec<u32> = (0..100).filter(|n| fake.partitions.values().flatten().any(|c| *c == cid(*n))).collect();
    let (even, odd) = (
        *held.iter().find(|n| *n % 2 == 0).expect("an even block held"),
        *held.iter().find(|n| *n % 2 == 1).expect("an odd block held"),
    );
    let absent = (0..100).find(|n| !held.contains(n)).unwrap();
    let kinds = a.client.kinds(peer, vec![cid(even), cid(absent), cid(odd)]).await.unwrap();
    assert_eq!(kinds, vec![BlockKind::Leaf(even), BlockKind::Absent, BlockKind::Interior]);
    let over = a.client.kinds(peer, vec![cid(1); holdings::MAX_KINDS + 1]).await;
    assert!(matches!(over, Err(P2pError::RequestTooLarge { .. })), "{over:?}");

    // Many requests at once from a well-behaved member: queued on the asking side, none refused as busy.
    let asks = (0..12u32).map(|i| {
        let client = a.client.clone();
        async move { client.digests(peer, vec![i % 6]).await }
    });
    let answers = futures::future::join_all(asks).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), vec![fake.digest(i as u32 % 6)]);
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 16);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn requests_sent_before_the_peers_know_each_other_are_answered() {
    common::init_tracing();
    let group = "holdings-early";
    let fake = Arc::new(Fake::new(Duration::ZERO));
    let b = TestNode::start_holding(group, fake.clone()).await;
    let peer = b.client.peer_id();
    let addr = b.tcp_addr().await;
    // `a` dials `b` as it starts; the requests go out before the connection is up, and reach `b` before (or
    // while) identify tells it who `a` is.
    let a = TestNode::start(group, |c| c.bootstrap = vec![addr]).await;
    let asks = (0..8u32).map(|i| {
        let client = a.client.clone();
        async move { client.have(peer, vec![cid(i)]).await }
    });
    let answers = futures::future::join_all(asks).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), vec![(1..=4).contains(&i)], "block {i}");
    }
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[derive(NetworkBehaviour)]
struct OutsiderBehaviour {
    identify: identify::Behaviour,
    holdings: cbor::Behaviour<Request, Response>,
}

/// A bare swarm that says it is an Xnode (or anything else) in identify and speaks the holdings wire format with
/// no limits of its own.
struct Outsider {
    swarm: Swarm<OutsiderBehaviour>,
}

impl Outsider {
    fn new(agent: String) -> Outsider {
        let swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key| OutsiderBehaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/xnode/0.1.0".into(), key.public()).with_agent_version(agent),
                ),
                holdings: cbor::Behaviour::new(
                    [(holdings::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(15))
                        .with_max_concurrent_streams(1000),
                ),
            })
            .unwrap()
            // Kept open between batches, so later batches reach a node that has already identified us.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        Outsider { swarm }
    }

    /// Sends every request to `peer` at once (connecting to it at `addr` first) and waits for each to end: the answer, or
    /// the failure the outsider saw.
    async fn ask_all(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        requests: Vec<Request>,
    ) -> Vec<Result<Response, String>> {
        // Connected first: request-response would start one dial per request, and the losers' failures fail
        // requests too.
        if !self.swarm.is_connected(&peer) {
            self.swarm.dial(addr.clone()).unwrap();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), self.swarm.select_next_some()).await;
                match event.expect("connected within 10 s") {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => break,
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("cannot dial {addr}: {error}"),
                    _ => {}
                }
            }
        }
        let ids: Vec<OutboundRequestId> = requests
            .into_iter()
            .map(|r| self.swarm.behaviour_mut().holdings.send_request_with_addresses(&peer, r, vec![addr.clone()]))
            .collect();
        let mut results: HashMap<OutboundRequestId, Result<Response, String>> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while results.len() < ids.len() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .expect("every request ends within 30 s");
            if let SwarmEvent::Behaviour(OutsiderBehaviourEvent::Holdings(event)) = event {
                match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } => {
                        results.insert(request_id, Ok(response));
                    }
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        results.insert(request_id, Err(error.to_string()));
                    }
                    _ => {}
                }
            }
        }
        ids.iter().map(|id| results.remove(id).expect("answered")).collect()
    }
}

#[tokio::test]
async fn requests_over_the_bounds_are_refused_without_harm() {
    common::init_tracing();
    let group = "holdings-bounds";
    // Each answer takes 200 ms, so a burst of requests is served at the same time and meets the per-peer limit.
    let fake = Arc::new(Fake::new(Duration::from_millis(200)));
    let (a, b) = pair(group, fake.clone()).await;
    let peer = b.client.peer_id();
    let addr = b.tcp_addr().await;

    // Our own client does not send what the protocol forbids.
    let over = a.client.digests(peer, vec![0; holdings::MAX_PARTITIONS + 1]).await;
    assert!(matches!(over, Err(P2pError::RequestTooLarge { what: "partitions", len: 65_537, max: 65_536 })));
    let over = a.client.have(peer, vec![cid(1); holdings::MAX_CIDS + 1]).await;
    assert!(matches!(over, Err(P2pError::RequestTooLarge { what: "CIDs", .. })), "{over:?}");
    let over = a.client.summary(peer, vec![0; holdings::MAX_BITMAP + 1]).await;
    assert!(matches!(over, Err(P2pError::RequestTooLarge { what: "bitmap bytes", .. })), "{over:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);

    // A member that sends it anyway is refused, item count by item count; bytes past the size limit end the
    // stream; a malformed CID is refused.
    let mut outsider = Outsider::new(agent_version(group));
    let answers = outsider
        .ask_all(
            peer,
            &addr,
            vec![
                Request::Digests { partitions: vec![0; holdings::MAX_PARTITIONS + 1] },
                Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes()); holdings::MAX_CIDS + 1] },
                Request::Summary { bitmap: vec![0; 2 * holdings::MAX_REQUEST_BYTES as usize] },
                Request::Have { cids: vec![ByteBuf::from(vec![0x01, 0x55, 0x12])] },
            ],
        )
        .await;
    assert_eq!(answers[0], Ok(Response::Refused(Refusal::TooLarge)));
    assert_eq!(answers[1], Ok(Response::Refused(Refusal::TooLarge)));
    assert!(answers[2].is_err(), "a request over the byte limit gets no answer: {:?}", answers[2]);
    assert_eq!(answers[3], Ok(Response::Refused(Refusal::Malformed)));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "nothing over the bounds reaches the holdings");

    // A flood: at most MAX_INBOUND_PER_PEER are served at once, the rest are refused as busy (or their stream is
    // dropped), and the holdings are never called more than that at a time.
    let flood: Vec<Request> = (0..24).map(|_| Request::Digests { partitions: vec![0] }).collect();
    let answers = outsider.ask_all(peer, &addr, flood).await;
    let served = answers.iter().filter(|a| matches!(a, Ok(Response::Digests(_)))).count();
    let busy = answers.iter().filter(|a| matches!(a, Ok(Response::Refused(Refusal::Busy)))).count();
    assert!(served >= 1, "{answers:?}");
    assert!(served <= holdings::MAX_INBOUND_PER_PEER, "served {served} of a burst at once: {answers:?}");
    assert!(busy >= 1, "{answers:?}");
    for answer in answers.iter().filter_map(|a| a.as_ref().ok()) {
        if let Response::Digests(d) = answer {
            assert_eq!(d, &vec![fake.digest(0)]);
        }
    }

    // No harm done: the outsider and the member are answered as before.
    let answers = outsider.ask_all(peer, &addr, vec![Request::Digests { partitions: vec![5] }]).await;
    assert_eq!(answers[0], Ok(Response::Digests(vec![fake.digest(5)])));
    assert_eq!(a.client.have(peer, vec![cid(4)]).await.unwrap(), vec![true]);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test]
async fn peers_outside_the_group_get_no_answer() {
    common::init_tracing();
    let fake = Arc::new(Fake::new(Duration::ZERO));
    let b = TestNode::start_holding("holdings-group", fake.clone()).await;
    let peer = b.client.peer_id();
    let addr = b.tcp_addr().await;

    // An Xnode of another group: its requests (sent as soon as it connects, before identify) are dropped, and it
    // is disconnected.
    let mut other = Outsider::new(agent_version("holdings-another-group"));
    let answers = other.ask_all(peer, &addr, vec![Request::Digests { partitions: vec![0] }; 3]).await;
    eprintln!("another group's requests: {answers:?}");
    assert!(answers.iter().all(Result::is_err), "{answers:?}");

    // A peer that is not an Xnode stays connected (DHT and Bitswap interop) but is not answered either.
    let mut kubo = Outsider::new("kubo/0.30.0/".into());
    let answers = kubo.ask_all(peer, &addr, vec![Request::Have { cids: vec![ByteBuf::from(cid(1).to_bytes())] }]).await;
    eprintln!("a non-Xnode's requests: {answers:?}");
    assert!(answers[0].is_err(), "{answers:?}");
    let answers = kubo.ask_all(peer, &addr, vec![Request::Summary { bitmap: vec![0xff] }]).await;
    assert!(answers[0].is_err(), "{answers:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0, "the holdings were never asked");

    // A real node of another group, through its client: an error, not an answer.
    let c = TestNode::start("holdings-another-group", |_| {}).await;
    let _ = c.client.dial(peer, vec![addr]).await;
    let asked = c.client.digests(peer, vec![0]).await;
    assert!(
        matches!(asked, Err(P2pError::NoAnswer { .. } | P2pError::Dial { .. })),
        "another group's node got {asked:?}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    b.node.shutdown().await;
    c.node.shutdown().await;
}
