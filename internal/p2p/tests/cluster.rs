//! Multi-node scenarios on 127.0.0.1 with ephemeral TCP and QUIC ports, all nodes in this process.
//!
//! Discovery here goes through Kademlia bootstrap addresses: mDNS skips loopback and would multicast on the
//! machine's real interfaces, which this sandbox must not do (see `mdns_pairs_nodes_of_the_lan`, ignored).

mod common;

use std::time::{Duration, Instant};

use common::{hold, init_tracing, random_file, wait_until, CorruptStore, MemStore, TestNode};
use std::sync::Arc;
use xnode_p2p::{NetEvent, P2pError};

/// Every scenario must end well within this.
const SCENARIO: Duration = Duration::from_secs(45);

async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(SCENARIO, f).await.expect("scenario took too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_pairs_nodes_and_a_file_is_fetched_whole() {
    init_tracing();
    within(async {
        let holder = TestNode::start("blue", |_| {}).await;
        let (root, blocks) = random_file(2 * 1024 * 1024 + 1000, 1);
        assert!(blocks.len() > 8, "a multi-block file");
        hold(&holder.store, &blocks);

        let boot = holder.tcp_addr().await;
        let fetcher = TestNode::start("blue", |c| c.bootstrap = vec![boot]).await;
        fetcher.wait_admitted(holder.client.peer_id()).await;
        holder.wait_admitted(fetcher.client.peer_id()).await;

        let stats = fetcher.client.fetch_dag(root, Duration::from_secs(20)).await.unwrap();
        assert_eq!(stats.blocks_fetched as usize, blocks.len());
        assert_eq!(stats.per_peer.get(&holder.client.peer_id()).copied(), Some(blocks.len() as u64));
        for b in &blocks {
            assert_eq!(fetcher.store.block(&b.cid).as_ref(), Some(&b.data), "block {} stored", b.cid);
        }
        // A second fetch finds everything locally.
        let again = fetcher.client.fetch_dag(root, Duration::from_secs(5)).await.unwrap();
        assert_eq!((again.blocks_fetched, again.blocks_local as usize), (0, blocks.len()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_works_as_well_as_tcp() {
    init_tracing();
    within(async {
        let holder = TestNode::start("blue", |_| {}).await;
        let (root, blocks) = random_file(600 * 1024, 2);
        hold(&holder.store, &blocks);
        let boot = holder.quic_addr().await;
        let fetcher = TestNode::start("blue", |c| c.bootstrap = vec![boot]).await;
        fetcher.wait_admitted(holder.client.peer_id()).await;
        let data = fetcher.client.fetch_block(root, Duration::from_secs(10)).await.unwrap();
        assert_eq!(Some(data), holder.store.block(&root));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_that_hangs_does_not_hold_up_one_to_a_good_address() {
    init_tracing();
    within(async {
        let target = TestNode::start("blue", |_| {}).await;
        let dialer = TestNode::start("blue", |_| {}).await;
        let peer = target.client.peer_id();
        // A UDP port that never answers: a QUIC dial there runs until the transport's timeout (10 s).
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead: libp2p::Multiaddr =
            format!("/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{peer}", silent.local_addr().unwrap().port()).parse().unwrap();
        let hanging = {
            let client = dialer.client.clone();
            tokio::spawn(async move { client.dial(peer, vec![dead]).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        dialer.client.dial(peer, vec![target.tcp_addr().await]).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "waited {:?} behind the hanging dial", started.elapsed());
        // The first request is answered by the same connection.
        hanging.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_do_not_mix() {
    init_tracing();
    within(async {
        let red = TestNode::start("red", |_| {}).await;
        let (root, blocks) = random_file(300 * 1024, 3);
        hold(&red.store, &blocks);
        let red_addr = red.tcp_addr().await;

        // A blue node told to bootstrap from a red one: identify reveals the group and both sides hang up.
        let blue = TestNode::start("blue", |c| c.bootstrap = vec![red_addr.clone()]).await;
        let mut events = blue.client.events();
        let red_id = red.client.peer_id();
        let saw_drop = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match events.recv().await {
                    Ok(NetEvent::PeerDisconnected { peer }) if peer == red_id => return,
                    Ok(_) => {}
                    Err(e) => panic!("events ended: {e}"),
                }
            }
        })
        .await;
        // The disconnection may already have happened before we subscribed; either way, no admission.
        let _ = saw_drop;
        assert!(!blue.client.connected_peers().await.unwrap().contains(&red_id));
        assert!(!red.client.connected_peers().await.unwrap().contains(&blue.client.peer_id()));

        // The blue node cannot fetch from the red one, and says which block it missed.
        let err = blue.client.fetch_block(root, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, P2pError::NotFound { cid, .. } if cid == root), "{err}");
        // Nor will it dial it again.
        assert!(blue.client.dial(red_id, vec![red_addr.clone()]).await.is_err());

        // A red node pairs with the red one, as a control.
        let red2 = TestNode::start("red", |c| c.bootstrap = vec![red_addr]).await;
        red2.wait_admitted(red_id).await;
        assert_eq!(red2.client.fetch_block(root, Duration::from_secs(10)).await.unwrap(), blocks.last().unwrap().data);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_fetched_from_two_holders_at_once() {
    init_tracing();
    within(async {
        let (root, blocks) = random_file(8 * 1024 * 1024, 4);
        let a = TestNode::start("blue", |_| {}).await;
        let b = TestNode::start("blue", |_| {}).await;
        hold(&a.store, &blocks);
        hold(&b.store, &blocks);
        let boot = vec![a.tcp_addr().await, b.tcp_addr().await];
        // Four blocks per peer at a time: the 32-block window can only fill by using both.
        let c = TestNode::start("blue", |c| {
            c.bootstrap = boot;
            c.max_inflight_per_peer = 4;
        })
        .await;
        c.wait_admitted(a.client.peer_id()).await;
        c.wait_admitted(b.client.peer_id()).await;

        let stats = c.client.fetch_dag(root, Duration::from_secs(30)).await.unwrap();
        assert_eq!(stats.blocks_fetched as usize, blocks.len());
        let from_a = stats.per_peer.get(&a.client.peer_id()).copied().unwrap_or(0);
        let from_b = stats.per_peer.get(&b.client.peer_id()).copied().unwrap_or(0);
        assert!(from_a > 0 && from_b > 0, "both holders served: {from_a} + {from_b}");
        assert_eq!(c.store.len(), blocks.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_bytes_is_banned_and_the_fetch_completes() {
    init_tracing();
    within(async {
        let (root, blocks) = random_file(2 * 1024 * 1024, 5);
        let honest = TestNode::start("blue", |_| {}).await;
        hold(&honest.store, &blocks);
        let liar_blocks = Arc::new(MemStore::default());
        hold(&liar_blocks, &blocks);
        let liar =
            TestNode::start_serving("blue", Arc::new(CorruptStore(liar_blocks)), Arc::new(MemStore::default()), |_| {})
                .await;

        let boot = vec![honest.tcp_addr().await, liar.tcp_addr().await];
        // One block per peer at a time, so the liar is certainly asked for something.
        let c = TestNode::start("blue", |c| {
            c.bootstrap = boot;
            c.max_inflight_per_peer = 1;
        })
        .await;
        let mut events = c.client.events();
        c.wait_admitted(honest.client.peer_id()).await;
        c.wait_admitted(liar.client.peer_id()).await;

        let stats = c.client.fetch_dag(root, Duration::from_secs(30)).await.unwrap();
        assert_eq!(stats.blocks_fetched as usize, blocks.len());
        assert!(stats.rejected >= 1, "the liar's block was rejected: {stats:?}");
        assert_eq!(stats.per_peer.get(&liar.client.peer_id()), None);
        for b in &blocks {
            assert_eq!(c.store.block(&b.cid).as_ref(), Some(&b.data));
        }
        let liar_id = liar.client.peer_id();
        let mut banned = false;
        while let Ok(event) = events.try_recv() {
            banned |= matches!(event, NetEvent::PeerBanned { peer, .. } if peer == liar_id);
        }
        assert!(banned, "a PeerBanned event for the liar");
        assert!(!c.client.connected_peers().await.unwrap().contains(&liar_id));
        // Banned: it cannot be dialled again for now.
        assert!(c.client.dial(liar_id, vec![liar.tcp_addr().await]).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_block_fails_with_its_cid_within_the_timeout() {
    init_tracing();
    within(async {
        let a = TestNode::start("blue", |_| {}).await;
        let (root, blocks) = random_file(1024 * 1024, 6);
        // The holder lacks one leaf: the DAG fetch must name exactly that leaf.
        let missing = blocks[2].cid;
        hold(&a.store, &blocks.iter().filter(|b| b.cid != missing).cloned().collect::<Vec<_>>());
        let b = TestNode::start("blue", |c| c.bootstrap = vec![]).await;
        b.client.add_bootstrap(a.tcp_addr().await).await.unwrap();
        b.wait_admitted(a.client.peer_id()).await;

        let started = Instant::now();
        let err = b.client.fetch_dag(root, Duration::from_secs(3)).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, P2pError::NotFound { cid, .. } if cid == missing), "{err}");
        assert!(err.to_string().contains(&missing.to_string()));
        assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "took {took:?}");

        let nowhere = random_file(1000, 99).0;
        let err = b.client.fetch_block(nowhere, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, P2pError::NotFound { cid, .. } if cid == nowhere), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_through_the_dht() {
    init_tracing();
    within(async {
        let hub = TestNode::start("blue", |_| {}).await;
        let hub_addr = hub.tcp_addr().await;
        let a = TestNode::start("blue", |c| c.bootstrap = vec![hub_addr.clone()]).await;
        let (root, blocks) = random_file(600 * 1024, 7);
        hold(&a.store, &blocks);
        a.wait_admitted(hub.client.peer_id()).await;
        a.client.provide(root).await.unwrap();

        let c = TestNode::start("blue", |c| c.bootstrap = vec![hub_addr]).await;
        c.wait_admitted(hub.client.peer_id()).await;
        let a_id = a.client.peer_id();
        let client = c.client.clone();
        wait_until(Duration::from_secs(20), "the DHT lists the provider", || {
            let client = client.clone();
            async move { client.find_providers(root).await.map(|p| p.contains(&a_id)).unwrap_or(false) }
        })
        .await;
        let stats = c.client.fetch_dag(root, Duration::from_secs(20)).await.unwrap();
        assert_eq!(stats.blocks_fetched as usize, blocks.len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_public_address_is_reached_through_a_relay() {
    init_tracing();
    within(async {
        let relay = TestNode::start("blue", |_| {}).await;
        let relay_addr = relay.tcp_addr().await;
        // C listens nowhere (as behind a NAT) and keeps a reservation on the relay.
        let c = TestNode::start("blue", |cfg| {
            cfg.listen = vec![];
            cfg.bootstrap = vec![relay_addr.clone()];
        })
        .await;
        let (root, blocks) = random_file(600 * 1024, 8);
        hold(&c.store, &blocks);
        let c_client = c.client.clone();
        wait_until(Duration::from_secs(15), "C holds a circuit reservation", || {
            let client = c_client.clone();
            async move {
                client
                    .listen_addrs()
                    .await
                    .unwrap()
                    .iter()
                    .any(|a| a.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit))
            }
        })
        .await;

        // A knows the relay's address and C's peer id, nothing else.
        let a = TestNode::start("blue", |cfg| cfg.bootstrap = vec![relay_addr]).await;
        a.wait_admitted(relay.client.peer_id()).await;
        a.client.dial(c.client.peer_id(), vec![]).await.unwrap();
        a.wait_admitted(c.client.peer_id()).await;
        // Three 256 KiB blocks over the circuit: beyond libp2p's default 128 KiB circuit limit.
        let stats = a.client.fetch_dag(root, Duration::from_secs(20)).await.unwrap();
        assert_eq!(stats.blocks_fetched as usize, blocks.len());
        assert_eq!(stats.per_peer.get(&c.client.peer_id()).copied(), Some(blocks.len() as u64));
    })
    .await;
}

/// mDNS pairs two nodes of a group and ignores a third of another group. Ignored by default: libp2p's mDNS skips
/// loopback and multicasts on the real interfaces, which this sandbox must not do. Run it on a LAN or inside a
/// network namespace with a multicast-capable dummy interface: `cargo test -p xnode-p2p -- --ignored mdns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "multicasts on the machine's real interfaces"]
async fn mdns_pairs_nodes_of_the_lan() {
    init_tracing();
    within(async {
        let lan = |c: &mut xnode_p2p::P2pConfig| {
            c.mdns = true;
            c.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
        };
        let a = TestNode::start("blue", lan).await;
        let b = TestNode::start("blue", lan).await;
        let red = TestNode::start("red", lan).await;
        a.wait_admitted(b.client.peer_id()).await;
        b.wait_admitted(a.client.peer_id()).await;
        assert!(!a.client.connected_peers().await.unwrap().contains(&red.client.peer_id()));
        assert!(red.client.connected_peers().await.unwrap().is_empty());
    })
    .await;
}
