//! Membership benchmark on loopback UDP: how fast a killed node is declared dead, how fast a joining node is
//! seen, whether 5% packet loss raises false "dead" verdicts, and how many bytes gossip costs.
//!
//! ```text
//! cargo run --release -p xnode-gossip --example membership_bench -- --nodes 10 [--kills 10] \
//!     [--soak-secs 60] [--loss 0.05] [--interval-ms 150] [--phi 16] [--full-meta true] [--secret 1]
//! ```
//!
//! `--secret 1` seals gossip with a cluster secret (XChaCha20-Poly1305), as `XNODE_CLUSTER_SECRET` does.
//!
//! All nodes run in this process, each with its own UDP socket on 127.0.0.1; loss is injected on receive.
//! `--full-meta true` gives every node the metadata a running node publishes (peer id, addresses, API URL,
//! storage figures, phase, version) instead of its name alone. The process's CPU time over the soak is printed
//! too (Linux), as a share of one core per node, and how late the runtime wakes a 50 ms sleep (per kill round and
//! per 10-s window of the soak): with many nodes on a busy machine, a starved process silences every node at once
//! as a frozen host would, and the false verdicts it causes are then told apart from the protocol's.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xnode_gossip::{GossipConfig, MemberMeta, MemberState, Membership, MembershipEvent, Network};

struct Args {
    nodes: usize,
    kills: usize,
    soak_secs: u64,
    loss: f64,
    interval_ms: u64,
    phi: f64,
    full_meta: bool,
    secret: bool,
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value.parse().unwrap_or_else(|_| panic!("bad value {value:?} for {flag}"))
}

fn parse_args() -> Args {
    let mut a = Args {
        nodes: 10,
        kills: 10,
        soak_secs: 20,
        loss: 0.05,
        interval_ms: 150,
        phi: GossipConfig::new("defaults", "127.0.0.1:0".parse().unwrap()).phi_threshold,
        full_meta: false,
        secret: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--nodes" => a.nodes = parse(&pair[0], value),
            "--kills" => a.kills = parse(&pair[0], value),
            "--soak-secs" => a.soak_secs = parse(&pair[0], value),
            "--loss" => a.loss = parse(&pair[0], value),
            "--interval-ms" => a.interval_ms = parse(&pair[0], value),
            "--phi" => a.phi = parse(&pair[0], value),
            "--full-meta" => a.full_meta = parse(&pair[0], value),
            "--secret" => a.secret = parse::<u8>(&pair[0], value) == 1,
            other => panic!("unknown flag {other}; see the header of membership_bench.rs"),
        }
    }
    assert!(a.nodes >= 3, "--nodes must be at least 3");
    a
}

struct Bench {
    args: Args,
    net: Network,
    seed: std::net::SocketAddr,
    nodes: Vec<Membership>,
    next_id: usize,
}

impl Bench {
    async fn start_node(&mut self, seeds: &[std::net::SocketAddr]) -> Membership {
        let name = format!("node-{:03}", self.next_id);
        self.next_id += 1;
        let mut c = GossipConfig::new(&name, "127.0.0.1:0".parse().unwrap());
        c.seeds = seeds.iter().map(ToString::to_string).collect();
        c.gossip_interval = Duration::from_millis(self.args.interval_ms);
        c.phi_threshold = self.args.phi;
        if self.args.secret {
            c.keyring = Some(std::sync::Arc::new(xnode_gossip::Keyring::new(&[0x5e; 32])));
        }
        let meta =
            if self.args.full_meta { full_meta(name, self.next_id) } else { MemberMeta { name, ..Default::default() } };
        Membership::start_on(c, meta, &self.net, CancellationToken::new()).await.expect("start node")
    }
}

/// One 10-s window of the soak.
struct Window {
    /// Dead verdicts in the window (all false: nobody was killed).
    false_dead: usize,
    /// The runtime's worst lag in the window, in ms.
    lag_ms: u64,
}

/// What a running node publishes about itself (the sizes matter, not the values).
fn full_meta(name: String, id: usize) -> MemberMeta {
    let peer_id = format!("12D3KooW{:0>44}", id);
    MemberMeta {
        p2p_addrs: vec![
            format!("/ip4/10.0.{}.{}/tcp/10090/p2p/{peer_id}", id / 250, id % 250 + 1),
            format!("/ip4/10.0.{}.{}/udp/10090/quic-v1/p2p/{peer_id}", id / 250, id % 250 + 1),
        ],
        peer_id,
        api_url: format!("http://10.0.{}.{}:8080", id / 250, id % 250 + 1),
        capacity: 4 << 40,
        used: 1 << 40,
        blocks: 4_000_000,
        phase: "seeding".into(),
        version: "0.1.0".into(),
        name,
        ..Default::default()
    }
}

/// CPU time (user + system) this process has used, from /proc (Linux); None elsewhere.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime is the 12th, stime the
    // 13th, in clock ticks of 1/100 s (the value of sysconf(_SC_CLK_TCK) on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Waits, on every receiver, for the first event matching `pred`; returns each observer's delay (None on
/// timeout).
async fn first_event_each(
    receivers: Vec<broadcast::Receiver<MembershipEvent>>,
    since: Instant,
    limit: Duration,
    pred: impl Fn(&MembershipEvent) -> bool + Clone + Send + Sync + 'static,
) -> Vec<Option<Duration>> {
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|mut rx| {
            let pred = pred.clone();
            tokio::spawn(async move {
                tokio::time::timeout(limit, async {
                    loop {
                        match rx.recv().await {
                            Ok(e) if pred(&e) => return since.elapsed(),
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                        }
                    }
                })
                .await
                .ok()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or(None));
    }
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn line(what: &str, mut xs: Vec<Duration>, memberlist: &str) {
    xs.sort();
    println!(
        "{what:<34} p50 {:>6.2} s   p99 {:>6.2} s   max {:>6.2} s   (n={:>3})   memberlist LAN: {memberlist}",
        pct(&xs, 0.5).as_secs_f64(),
        pct(&xs, 0.99).as_secs_f64(),
        xs.last().copied().unwrap_or_default().as_secs_f64(),
        xs.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let net = Network::udp();
    let mut bench = Bench { args, net, seed: "127.0.0.1:1".parse().unwrap(), nodes: Vec::new(), next_id: 0 };
    let n = bench.args.nodes;
    println!(
        "membership_bench: N={n}, gossip interval {} ms, phi threshold {}, kills {}, soak {} s at {:.0}% loss",
        bench.args.interval_ms,
        bench.args.phi,
        bench.args.kills,
        bench.args.soak_secs,
        bench.args.loss * 100.0
    );

    let first = bench.start_node(&[]).await;
    bench.seed = first.gossip_addr();
    bench.nodes.push(first);
    let seed = bench.seed;
    for _ in 1..n {
        let node = bench.start_node(&[seed]).await;
        bench.nodes.push(node);
    }
    let formed = Instant::now();
    loop {
        let all = bench.nodes.iter().all(|o| {
            let m = o.members();
            m.len() == n && m.iter().all(|m| m.state == MemberState::Alive)
        });
        if all {
            break;
        }
        // A hundred nodes on a loaded machine take longer than ten to hear of everyone.
        assert!(formed.elapsed() < Duration::from_secs(30 + n as u64), "cluster did not form");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("cluster of {n} formed in {:.2} s", formed.elapsed().as_secs_f64());
    // Let the failure detectors collect a steady-state sample of heartbeat intervals.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // A probe of the runtime's own lag: how late a 50 ms sleep wakes. Nodes share two worker threads, so a starved
    // process delays heartbeats exactly as a stalled host would; false verdicts that follow lag spikes say more
    // about the machine than about the protocol.
    let lag_max_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = {
        let lag_max_ms = lag_max_ms.clone();
        tokio::spawn(async move {
            loop {
                let at = Instant::now();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let late = at.elapsed().saturating_sub(Duration::from_millis(50)).as_millis() as u64;
                lag_max_ms.fetch_max(late, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let (mut first_dead, mut all_dead, mut join_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut missed = 0;
    for round in 0..bench.args.kills {
        lag_max_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        // Kill a node other than the seed, as kill -9 would.
        let victim_index = 1 + round % (n - 1);
        let victim = bench.nodes.remove(victim_index);
        let victim_name = victim.name().to_string();
        let receivers: Vec<_> = bench.nodes.iter().map(Membership::subscribe).collect();
        let t0 = Instant::now();
        victim.abort();
        let name = victim_name.clone();
        let delays = first_event_each(
            receivers,
            t0,
            Duration::from_secs(20),
            move |e| matches!(e, MembershipEvent::Dead(m) if m.name == name),
        )
        .await;
        let seen: Vec<Duration> = delays.iter().flatten().copied().collect();
        missed += delays.len() - seen.len();
        if let (Some(first), Some(last)) = (seen.iter().min(), seen.iter().max()) {
            first_dead.push(*first);
            all_dead.push(*last);
        }

        // Join a fresh node (new name) and time until every other member sees it alive.
        let receivers: Vec<_> = bench.nodes.iter().map(Membership::subscribe).collect();
        let t0 = Instant::now();
        let joiner = bench.start_node(&[seed]).await;
        let name = joiner.name().to_string();
        let delays = first_event_each(
            receivers,
            t0,
            Duration::from_secs(20),
            move |e| matches!(e, MembershipEvent::Joined(m) if m.name == name),
        )
        .await;
        if let Some(last) = delays.iter().flatten().max() {
            join_all.push(*last);
        }
        missed += delays.iter().filter(|d| d.is_none()).count();
        bench.nodes.push(joiner);
        // Let the newcomer's heartbeat history build before the next kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!(
            "round {round}: {victim_name} killed and replaced: dead everywhere after {:.2} s, joiner seen by all after \
             {:.2} s, worst runtime lag {} ms",
            all_dead.last().map_or(f64::NAN, Duration::as_secs_f64),
            join_all.last().map_or(f64::NAN, Duration::as_secs_f64),
            lag_max_ms.load(std::sync::atomic::Ordering::Relaxed)
        );
    }

    // Soak: loss on every link, no node touched; any Dead verdict is false.
    bench.net.set_loss(bench.args.loss);
    lag_max_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    let mut receivers: Vec<_> = bench.nodes.iter().map(Membership::subscribe).collect();
    let before: u64 = bench.nodes.iter().map(|m| m.traffic().bytes_sent).sum();
    let cpu_before = process_cpu();
    let t0 = Instant::now();
    // Every 10 s: false verdicts in that window and the worst runtime lag.
    let mut false_dead = 0;
    let mut windows: Vec<Window> = Vec::new();
    while t0.elapsed() < Duration::from_secs(bench.args.soak_secs) {
        tokio::time::sleep(Duration::from_secs(10).min(Duration::from_secs(bench.args.soak_secs))).await;
        let mut dead_now = 0;
        for rx in &mut receivers {
            loop {
                match rx.try_recv() {
                    Ok(MembershipEvent::Dead(m)) => {
                        dead_now += 1;
                        eprintln!("false dead verdict about {} at {:.0} s", m.name, t0.elapsed().as_secs_f64());
                    }
                    Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        }
        false_dead += dead_now;
        let lag = lag_max_ms.swap(0, std::sync::atomic::Ordering::Relaxed);
        windows.push(Window { false_dead: dead_now, lag_ms: lag });
    }
    probe.abort();
    let soak = t0.elapsed().as_secs_f64();
    let after: u64 = bench.nodes.iter().map(|m| m.traffic().bytes_sent).sum();
    let cpu = cpu_before.zip(process_cpu()).map(|(before, after)| (after - before).as_secs_f64() / soak);
    let (calm, stalled): (Vec<&Window>, Vec<&Window>) = windows.iter().partition(|w| w.lag_ms < 500);
    let stalled_dead: usize = stalled.iter().map(|w| w.false_dead).sum();
    let calm_dead: usize = calm.iter().map(|w| w.false_dead).sum();
    let worst_lag = windows.iter().map(|w| w.lag_ms).max().unwrap_or(0);
    let bytes_per_node_sec = (after - before) as f64 / n as f64 / soak;

    println!();
    line("kill -> first member marks dead", first_dead, "4-24 s (suspicion timeout)");
    line("kill -> every member marks dead", all_dead, "4-24 s + dissemination");
    line("join -> seen alive by all", join_all, "~1 push/pull + gossip");
    println!("false dead verdicts in {soak:.0} s at {:.0}% loss: {false_dead}   (target 0)", bench.args.loss * 100.0);
    println!("gossip payload sent: {:.0} bytes/node/s ({:.1} KiB/s)", bytes_per_node_sec, bytes_per_node_sec / 1024.0);
    println!(
        "runtime lag (a 50 ms sleep waking late): worst {worst_lag} ms; {} of {} 10-s windows had a lag >= 500 ms \
         and held {stalled_dead} of the false verdicts, the other windows {calm_dead}",
        stalled.len(),
        windows.len()
    );
    if let Some(cores) = cpu {
        println!(
            "CPU during the soak: {:.2} cores for the process, {:.2}% of a core per node",
            cores,
            cores / n as f64 * 100.0
        );
    }
    if missed > 0 {
        println!("WARNING: {missed} expected events did not arrive within 20 s");
    }
    for node in bench.nodes {
        node.abort();
    }
}
