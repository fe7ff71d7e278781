//! The gossip transport: UDP, sealed with the cluster secret when one is set ([`crate::Keyring`]), with traffic
//! counters and, for tests and benchmarks, injected faults.
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

use crate::seal::Keyring;
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
    /// Datagrams dropped because they did not open with the cluster secret (outsiders, another secret, tampering)
    /// or were not valid gossip once opened.
    pub messages_rejected: u64,
    /// Of those, datagrams that opened with the secret but were replays: already received, or stamped outside
    /// the replay window.
    pub messages_replayed: u64,
}

#[derive(Default)]
pub(crate) struct TrafficCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    messages_rejected: AtomicU64,
    messages_replayed: AtomicU64,
}

impl TrafficCounters {
    pub(crate) fn snapshot(&self) -> Traffic {
        Traffic {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_rejected: self.messages_rejected.load(Ordering::Relaxed),
            messages_replayed: self.messages_replayed.load(Ordering::Relaxed),
        }
    }
}

/// Opens the UDP socket up front (so that port 0 resolves to a real port before the node picks its advertised
/// address) and hands it to chitchat through [`Prebound`].
pub(crate) async fn open(
    network: &Network,
    listen_addr: SocketAddr,
    counters: Arc<TrafficCounters>,
    keyring: Option<Arc<Keyring>>,
) -> anyhow::Result<(SocketAddr, Prebound)> {
    let inner: Box<dyn Socket> = match keyring {
        None => UdpTransport.open(listen_addr).await?,
        Some(keyring) => Box::new(SealedSocket::open(listen_addr, keyring, counters.clone()).await?),
    };
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

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;

/// How long the loopback codec may take to hand a datagram over (it is immediate; this only bounds a surprise).
const CODEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A UDP socket that seals every datagram it sends and opens every one it receives, dropping (and counting) those
/// that do not open: chitchat never sees a byte from a node without the secret.
///
/// chitchat keeps its envelope encoding private; its own UDP socket is the one public way to turn an envelope into
/// bytes and back. So this runs a codec on loopback: chitchat's socket (`codec`) sends an envelope to `tap`, which
/// reads the plain bytes to seal; opened bytes go from `tap` to `codec`, which decodes them. Each datagram is
/// handed over and read back within one call, and both sides check the other's address, so nothing else on the
/// host is read as gossip (a local process could only add datagrams, which are discarded).
struct SealedSocket {
    public: tokio::net::UdpSocket,
    codec: chitchat::transport::UdpSocket,
    codec_addr: SocketAddr,
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    keyring: Arc<Keyring>,
    counters: Arc<TrafficCounters>,
    sealed: Vec<u8>,
    buf: Box<[u8]>,
}

impl SealedSocket {
    async fn open(addr: SocketAddr, keyring: Arc<Keyring>, counters: Arc<TrafficCounters>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let public = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("failed to bind to {addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback).await.context("binding the gossip codec's loopback socket")?;
        let tap_addr = tap.local_addr()?;
        Ok(SealedSocket {
            public,
            codec,
            codec_addr,
            tap,
            tap_addr,
            keyring,
            counters,
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
        })
    }

    fn reject(&self, from: SocketAddr, len: usize, why: &str) {
        self.counters.messages_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%from, len, why, "gossip datagram dropped");
    }

    /// The envelope's bytes, through the loopback codec.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<usize> {
        self.codec.send(self.tap_addr, envelope).await?;
        tokio::time::timeout(CODEC_TIMEOUT, async {
            loop {
                let (len, from) = self.tap.recv_from(&mut self.buf).await?;
                if from == self.codec_addr {
                    return Ok::<_, anyhow::Error>(len);
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the gossip codec did not answer"))?
    }

    /// The envelope in `plain`, through the loopback codec; `None` if chitchat cannot decode it.
    async fn decode(&mut self, plain: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        self.tap.send_to(plain, self.codec_addr).await?;
        let decoded = tokio::time::timeout(CODEC_TIMEOUT, async {
            loop {
                let outcome = self.codec.recv().await?;
                if outcome.from_addr == self.tap_addr {
                    return Ok::<_, anyhow::Error>(outcome.envelope);
                }
            }
        })
        .await;
        // A datagram chitchat could not decode is skipped inside its recv, so the wait runs out.
        decoded.ok().transpose()
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let len = self.encode(envelope).await?;
        self.keyring.seal(&self.buf[..len], &mut self.sealed);
        let num_bytes_sent = self.public.send_to(&self.sealed, to).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(r) => r,
                // What a datagram to a closed port reports on some systems: not fatal for the socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            let plain = match self.keyring.open(&self.buf[..len]) {
                Ok(plain) => plain,
                Err(refused) => {
                    if refused != crate::seal::Refused::Unreadable {
                        self.counters.messages_replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    let why = match refused {
                        crate::seal::Refused::Unreadable => "does not open with the cluster secret",
                        crate::seal::Refused::Stale => "stamped outside the replay window (an old capture?)",
                        crate::seal::Refused::Replayed => "a datagram already received (replayed)",
                    };
                    self.reject(from, len, why);
                    continue;
                }
            };
            match self.decode(&plain).await? {
                Some(envelope) => return Ok(RecvOutcome { from_addr: from, envelope, num_bytes_received: len }),
                None => self.reject(from, len, "sealed, but not gossip"),
            }
        }
    }
}
