//! The cluster secret: in-process clusters on 127.0.0.1 over real UDP whose gossip is sealed. An outsider without
//! the secret, or with another one, never becomes a member; what is on the wire does not name members; keys rotate
//! across a running cluster without anyone being declared dead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xnode_gossip::{GossipConfig, Keyring, MemberMeta, MemberState, Membership, Network};

const JOIN: Duration = Duration::from_secs(5);
const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

async fn start(name: &str, seeds: &[SocketAddr], keyring: Option<Arc<Keyring>>) -> Membership {
    let mut c = GossipConfig::new(name, "127.0.0.1:0".parse().unwrap());
    c.seeds = seeds.iter().map(ToString::to_string).collect();
    c.group = "secret-test".into();
    c.keyring = keyring;
    let meta = MemberMeta { name: name.into(), phase: "discovering".into(), ..Default::default() };
    Membership::start_on(c, meta, &Network::udp(), CancellationToken::new()).await.expect("start")
}

async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_alive(nodes: &[Membership], n: usize) -> bool {
    nodes.iter().all(|o| {
        let m = o.members();
        m.len() == n && m.iter().all(|m| m.state == MemberState::Alive)
    })
}

/// Three members sharing one keyring each (all with `key`).
async fn cluster(rings: &[Arc<Keyring>]) -> Vec<Membership> {
    let first = start("member-0", &[], Some(rings[0].clone())).await;
    let seed = first.gossip_addr();
    let mut nodes = vec![first];
    for (i, ring) in rings.iter().enumerate().skip(1) {
        nodes.push(start(&format!("member-{i}"), &[seed], Some(ring.clone())).await);
    }
    wait_until(JOIN, "the members see each other", || all_alive(&nodes, rings.len())).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_without_the_secret_or_with_another_never_become_members() {
    let rings: Vec<_> = (0..3).map(|_| Arc::new(Keyring::new(&KEY_A))).collect();
    let nodes = cluster(&rings).await;
    let seeds: Vec<SocketAddr> = nodes.iter().map(Membership::gossip_addr).collect();
    let plain = start("outsider-plain", &seeds, None).await;
    let wrong = start("outsider-wrong", &seeds, Some(Arc::new(Keyring::new(&KEY_B)))).await;
    // Many gossip rounds (150 ms each) and join retries (1 s): enough for a join to have happened many times over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for n in &nodes {
        let names: Vec<String> = n.members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["member-0", "member-1", "member-2"], "{} lists only members", n.name());
        assert!(n.traffic().messages_rejected > 0, "{} counted the outsiders' datagrams as refused", n.name());
    }
    for outsider in [&plain, &wrong] {
        let names: Vec<String> = outsider.members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, [outsider.name()], "{} learned nothing of the cluster", outsider.name());
    }
}

/// Collects what a seed address receives from a node for `wait`.
async fn capture(keyring: Option<Arc<Keyring>>, name: &str, wait: Duration) -> Vec<u8> {
    let sniffer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let node = start(name, &[sniffer.local_addr().unwrap()], keyring).await;
    let mut captured = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + wait;
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, sniffer.recv_from(&mut buf)).await {
        captured.extend_from_slice(&buf[..len]);
    }
    drop(node);
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gossip_does_not_name_members() {
    let name = "member-with-a-rather-long-name";
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    // Control: without a secret the name is on the wire, so the check below can fail.
    let plain = capture(None, name, Duration::from_secs(3)).await;
    assert!(!plain.is_empty(), "the node sends to its seed");
    assert!(contains(&plain, name.as_bytes()), "plaintext gossip names the member");
    let sealed = capture(Some(Arc::new(Keyring::new(&KEY_A))), name, Duration::from_secs(3)).await;
    assert!(!sealed.is_empty(), "the node sends to its seed");
    assert!(!contains(&sealed, name.as_bytes()), "sealed gossip does not name the member");
    assert!(!contains(&sealed, b"secret-test"), "nor the group");
}

/// memberlist's procedure, on a running cluster: install the new key everywhere (accepted beside the old), use it
/// everywhere (sent, the old one still accepted), remove the old one. Nobody is ever seen dead or missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_key_change_loses_no_member() {
    let rings: Vec<_> = (0..3).map(|_| Arc::new(Keyring::new(&KEY_A))).collect();
    let nodes = cluster(&rings).await;
    let steps: [(&[u8; 32], &[[u8; 32]]); 3] = [(&KEY_A, &[KEY_B]), (&KEY_B, &[KEY_A]), (&KEY_B, &[])];
    for (current, accepted) in steps {
        // One node at a time, with gossip rounds between, as an operator rolling through the members would.
        for ring in &rings {
            ring.set(current, accepted);
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                assert!(all_alive(&nodes, 3), "a member was lost mid-rotation: {:?}", nodes[0].members());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // The old key is gone: a node still on it is now an outsider.
    let stale = start("stale", &[nodes[0].gossip_addr()], Some(Arc::new(Keyring::new(&KEY_A)))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(nodes[0].member("stale").is_none());
    assert!(all_alive(&nodes, 3));
    drop(stale);
}
