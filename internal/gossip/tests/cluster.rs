//! Scenario tests: in-process clusters on 127.0.0.1 over real UDP, with a shared [`Network`] that injects loss
//! and cuts links. Every assertion waits on a deadline and polls; nothing relies on a fixed sleep to pass.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xnode_gossip::{GossipConfig, GossipError, MemberMeta, MemberState, Membership, MembershipEvent, Network};

/// Detection takes about 2-3 s at default settings; 8 s leaves room for a loaded CI machine.
const DETECT: Duration = Duration::from_secs(8);
const JOIN: Duration = Duration::from_secs(5);

fn config(name: &str, seeds: &[SocketAddr]) -> GossipConfig {
    let mut c = GossipConfig::new(name, "127.0.0.1:0".parse().unwrap());
    c.seeds = seeds.iter().map(ToString::to_string).collect();
    c
}

fn meta(name: &str) -> MemberMeta {
    MemberMeta { name: name.into(), phase: "discovering".into(), ..Default::default() }
}

async fn start(net: &Network, name: &str, seeds: &[SocketAddr]) -> Membership {
    Membership::start_on(config(name, seeds), meta(name), net, CancellationToken::new()).await.expect("start")
}

async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_of(observer: &Membership, name: &str) -> Option<MemberState> {
    observer.member(name).map(|m| m.state)
}

/// Starts `n` nodes named n0..n{n-1}, all seeded with n0, and waits until everyone sees everyone alive.
async fn cluster(net: &Network, n: usize) -> Vec<Membership> {
    let first = start(net, "n0", &[]).await;
    let seed = first.gossip_addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(net, &format!("n{i}"), &[seed]).await);
    }
    wait_until(JOIN, "every node sees every node alive", || {
        nodes.iter().all(|o| {
            let m = o.members();
            m.len() == n && m.iter().all(|m| m.state == MemberState::Alive)
        })
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_metadata_reach_everyone() {
    let net = Network::udp();
    let nodes = cluster(&net, 4).await;
    let mut events = nodes[0].subscribe();
    let mut updated = meta("n2");
    updated.used = 42;
    updated.phase = "seeding".into();
    updated.p2p_addrs = vec!["/ip4/127.0.0.1/tcp/4001".into()];
    nodes[2].set_meta(updated.clone()).await.unwrap();
    wait_until(JOIN, "the new metadata of n2 reaches everyone", || {
        nodes.iter().all(|o| o.member("n2").is_some_and(|m| m.meta == updated))
    })
    .await;
    let event = tokio::time::timeout(JOIN, async {
        loop {
            if let Ok(MembershipEvent::Updated(m)) = events.recv().await {
                return m;
            }
        }
    })
    .await
    .expect("an Updated event");
    assert_eq!(event.name, "n2");
    assert!(nodes[1].traffic().bytes_sent > 0);
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_marked_dead_by_everyone() {
    let net = Network::udp();
    let mut nodes = cluster(&net, 4).await;
    let mut events = nodes[0].subscribe();
    nodes.remove(3).abort();
    let started = Instant::now();
    wait_until(DETECT, "every member marks n3 dead", || {
        nodes.iter().all(|o| state_of(o, "n3") == Some(MemberState::Dead))
    })
    .await;
    println!("n3 dead everywhere after {:?}", started.elapsed());
    let mut saw_dead = false;
    while let Ok(e) = events.try_recv() {
        saw_dead |= matches!(e, MembershipEvent::Dead(ref m) if m.name == "n3");
        assert!(!matches!(e, MembershipEvent::Left(_)), "a kill is no leave");
    }
    assert!(saw_dead, "n0 published Dead(n3)");
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_node_is_left_and_never_dead() {
    let net = Network::udp();
    let mut nodes = cluster(&net, 4).await;
    let mut subs: Vec<_> = nodes.iter().take(3).map(|n| n.subscribe()).collect();
    nodes.remove(3).leave().await.unwrap();
    wait_until(DETECT, "every member marks n3 left", || {
        nodes.iter().all(|o| state_of(o, "n3") == Some(MemberState::Left))
    })
    .await;
    // Its heartbeats have stopped: give every failure detector time to fire, then check none did.
    let window = Instant::now();
    wait_until(DETECT, "the detection window has passed", || {
        assert!(nodes.iter().all(|o| state_of(o, "n3") == Some(MemberState::Left)));
        window.elapsed() > Duration::from_secs(5)
    })
    .await;
    for sub in &mut subs {
        while let Ok(e) = sub.try_recv() {
            assert!(!matches!(e, MembershipEvent::Dead(_)), "false alarm: {e:?}");
        }
    }
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_replaces_its_old_self() {
    let net = Network::udp();
    let mut nodes = cluster(&net, 3).await;
    let seed = nodes[0].gossip_addr();
    let old = nodes.remove(2);
    let old_generation = old.generation();
    old.abort();
    let new = start(&net, "n2", &[seed]).await;
    assert!(new.generation() > old_generation);
    let new_generation = new.generation();
    nodes.push(new);
    let one_alive_n2 = |nodes: &[Membership]| {
        nodes.iter().all(|o| {
            o.members().len() == 3
                && o.member("n2").is_some_and(|m| m.state == MemberState::Alive && m.generation == new_generation)
        })
    };
    wait_until(JOIN, "everyone sees the new n2 alive", || one_alive_n2(&nodes)).await;
    // Once the old incarnation is surely declared dead, the name must still stand for the live one.
    let window = Instant::now();
    wait_until(DETECT, "the old incarnation's detection window has passed", || {
        assert!(one_alive_n2(&nodes), "n2 turned into a ghost: {:?}", nodes[0].members());
        window.elapsed() > Duration::from_secs(5)
    })
    .await;
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_heal() {
    let net = Network::udp();
    let nodes = cluster(&net, 4).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(Membership::gossip_addr).collect();
    net.partition(&addrs[..2], &addrs[2..]);
    wait_until(DETECT, "each side marks the other dead", || {
        let dead = |o: &Membership, names: &[&str]| names.iter().all(|n| state_of(o, n) == Some(MemberState::Dead));
        nodes[..2].iter().all(|o| dead(o, &["n2", "n3"])) && nodes[2..].iter().all(|o| dead(o, &["n0", "n1"]))
    })
    .await;
    net.heal();
    wait_until(Duration::from_secs(15), "everyone is alive again after the heal", || {
        nodes.iter().all(|o| o.members().iter().all(|m| m.state == MemberState::Alive))
    })
    .await;
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_groups_never_appear() {
    let net = Network::udp();
    let nodes = cluster(&net, 2).await;
    let mut c = config("stranger", &[nodes[0].gossip_addr()]);
    c.group = "other".into();
    let stranger = Membership::start_on(c, meta("stranger"), &net, CancellationToken::new()).await.unwrap();
    // The stranger's SYNs are answered (with a refusal) within a few rounds; watch for well over that.
    let window = Instant::now();
    wait_until(JOIN, "the observation window has passed", || {
        assert!(nodes.iter().all(|o| o.members().len() == 2));
        assert_eq!(stranger.members().len(), 1);
        window.elapsed() > Duration::from_secs(2)
    })
    .await;
    assert!(stranger.traffic().messages_received > 0, "the stranger was answered");
    stranger.leave().await.unwrap();
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_live_name_is_refused() {
    let net = Network::udp();
    let nodes = cluster(&net, 2).await;
    let original_generation = nodes[1].generation();
    let mut original_events = nodes[1].subscribe();
    let impostor = start(&net, "n1", &[nodes[0].gossip_addr()]).await;
    let mut fatal = impostor.watch_fatal();
    let err = tokio::time::timeout(JOIN, fatal.wait_for(Option::is_some))
        .await
        .expect("the newer node gets an error")
        .unwrap()
        .clone()
        .unwrap();
    assert!(
        matches!(err, GossipError::DuplicateName { ref name, addr } if name == "n1" && addr == nodes[1].gossip_addr())
    );
    assert!(err.to_string().contains("another live node already uses the name n1"), "{err}");
    // The impostor withdrew; the name keeps standing for the original node, alive.
    wait_until(DETECT, "n0 sees the original n1 alive", || {
        nodes[0].member("n1").is_some_and(|m| m.generation == original_generation && m.state == MemberState::Alive)
    })
    .await;
    let conflict = tokio::time::timeout(JOIN, async {
        loop {
            if let Ok(MembershipEvent::NameConflict { we_withdraw, .. }) = original_events.recv().await {
                return we_withdraw;
            }
        }
    })
    .await
    .expect("the original node is warned");
    assert!(!conflict);
    assert!(impostor.leave().await.is_err());
    for n in nodes {
        n.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_that_starts_later_is_found_by_name() {
    let net = Network::udp();
    // Reserve a port for the late seed, then free it so the seed can bind it later.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = config("early", &[]);
    c.seeds = vec![format!("localhost:{port}")];
    let early = Membership::start_on(c, meta("early"), &net, CancellationToken::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // let a few join attempts fail first
    let late = Membership::start_on(
        GossipConfig::new("late", SocketAddr::from(([127, 0, 0, 1], port))),
        meta("late"),
        &net,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    wait_until(JOIN, "early and late see each other", || {
        state_of(&early, "late") == Some(MemberState::Alive) && state_of(&late, "early") == Some(MemberState::Alive)
    })
    .await;
    early.leave().await.unwrap();
    late.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_alarm_under_loss() {
    let net = Network::udp();
    net.set_loss(0.05);
    let nodes = cluster(&net, 5).await;
    let mut subs: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let window = Instant::now();
    wait_until(Duration::from_secs(20), "the soak has run", || window.elapsed() > Duration::from_secs(6)).await;
    for sub in &mut subs {
        while let Ok(e) = sub.try_recv() {
            assert!(!matches!(e, MembershipEvent::Dead(_)), "false alarm under 5% loss: {e:?}");
        }
    }
    for n in nodes {
        n.leave().await.unwrap();
    }
}
