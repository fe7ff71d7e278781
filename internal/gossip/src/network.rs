//! The gossip transport: UDP, with traffic counters and, for tests and benchmarks, injected faults.
//!
//! Faults act on the receiving side (a datagram is sent and counted, then discarded), which is what a lossy
//! link or a firewall does. One [`Network`] value is shared by every node of an in-process cluster so a test
//! can cut links between them; in production it is a plain UDP socket with no faults configured.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::ChitchatEnvelope;
use rand::Rng;

/// The network nodes gossip over: UDP, optionally with loss and cut links (shared by all nodes using it).
#[derive(Clone, Default)]
pub struct Network {
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Faults {
    /// Probability of dropping a datagram, in parts per million (an atomic, so the hot path takes no lock).
    loss_ppm: AtomicU32,
    /// Directed links `(from, to)` that drop everything.
    cut: RwLock<HashSet<(SocketAddr, SocketAddr)>>,
}

impl Network {
    /// Plain UDP: what the node uses in production.
    pub fn udp() -> Self {
        Self::default()
    }

    /// Drops each received datagram with this probability (0.0 to 1.0).
    pub fn set_loss(&self, probability: f64) {
        let ppm = (probability.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.faults.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Cuts the link between `a` and `b` (gossip addresses), both ways.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        let mut cut = self.faults.cut.write().unwrap_or_else(|e| e.into_inner());
        cut.insert((a, b));
        cut.insert((b, a));
    }

    /// Cuts every link between the two sides.
    pub fn partition(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        for &a in side_a {
            for &b in side_b {
                self.cut(a, b);
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.faults.cut.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn drops(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let ppm = self.faults.loss_ppm.load(Ordering::Relaxed);
        if ppm > 0 && rand::thread_rng().gen_range(0..1_000_000) < ppm {
            return true;
        }
        let cut = self.faults.cut.read().unwrap_or_else(|e| e.into_inner());
        !cut.is_empty() && cut.contains(&(from, to))
    }
}

/// Gossip traffic of one node since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes of gossip payload sent (UDP payloads, without IP/UDP headers).
    pub bytes_sent: u64,
    /// Bytes of gossip payload received, including datagrams the fault injector then dropped.
    pub bytes_received: u64,
    /// Datagrams sent.
    pub messages_sent: u64,
    /// Datagrams received.
    pub messages_received: u64,
}

#[derive(Default)]
pub(crate) struct TrafficCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
}

impl TrafficCounters {
    pub(crate) fn snapshot(&self) -> Traffic {
        Traffic {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
        }
    }
}

/// Opens the UDP socket up front (so that port 0 resolves to a real port before the node picks its advertised
/// address) and hands it to chitchat through [`Prebound`].
pub(crate) async fn open(
    network: &Network,
    listen_addr: SocketAddr,
    counters: Arc<TrafficCounters>,
) -> anyhow::Result<(SocketAddr, Prebound)> {
    let inner = UdpTransport.open(listen_addr).await?;
    let local = inner.local_addr()?;
    let socket = FaultySocket { inner, local, network: network.clone(), counters };
    Ok((local, Prebound(Mutex::new(Some(Box::new(socket))))))
}

/// A transport whose only socket was opened already; chitchat's `spawn_chitchat` takes a transport, not a socket.
pub(crate) struct Prebound(Mutex<Option<Box<dyn Socket>>>);

#[async_trait]
impl Transport for Prebound {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| anyhow::anyhow!("the gossip socket was already taken"))
    }
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    local: SocketAddr,
    network: Network,
    counters: Arc<TrafficCounters>,
}

#[async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        let c = &self.counters;
        c.bytes_sent.fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        c.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            let c = &self.counters;
            c.bytes_received.fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
            c.messages_received.fetch_add(1, Ordering::Relaxed);
            if !self.network.drops(outcome.from_addr, self.local) {
                return Ok(outcome);
            }
        }
    }
}
