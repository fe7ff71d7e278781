//! Gossip sealed with the cluster secret: every datagram is encrypted and authenticated (XChaCha20-Poly1305) so
//! that a node without the secret can neither read members' names and metadata nor take part. A datagram that does
//! not open with a key of the [`Keyring`] is dropped and counted.
//!
//! Wire format of a sealed datagram: `version (1 byte, 2) | key id (4 bytes) | nonce (24 bytes) | ciphertext+tag`,
//! where the plaintext is `sender's clock (8 bytes, ms since the Unix epoch, big-endian) | chitchat's datagram`.
//! The version and key id are authenticated as associated data. The 24-byte nonce is random: with XChaCha's
//! extended nonce, random nonces are safe for any number of packets. The key id (the first 4 bytes of
//! SHA-256 over a label and the secret) lets a receiver pick the right key during a rotation without trying each;
//! it reveals only which of a cluster's keys was used.
//!
//! Keys rotate without downtime or restart (docs/security.md), as memberlist's keyring does: every node first
//! installs the new secret beside the one in use ([`Keyring::set`] with it accepted), then uses it (sends with it,
//! still accepting the old one), then removes the old one.
//!
//! Replay: a captured datagram resent later is dropped and counted ([`Refused::Replayed`], [`Refused::Stale`]).
//! Each datagram carries its sender's clock inside the seal; one stamped more than [`REPLAY_WINDOW`] from the
//! receiver's clock is stale, and within the window the nonce of every datagram opened is remembered, so a second
//! copy is refused. A copy can only be accepted within the window of its stamp, so a nonce is kept for twice the
//! window after it arrived and forgotten then. Members' clocks must agree within the window (NTP does).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 2;
const HEADER: usize = 1 + 4;
const NONCE: usize = 24;
const STAMP: usize = 8;
/// Bytes a sealed datagram adds to chitchat's: header, nonce, the sender's clock and the 16-byte tag.
pub const OVERHEAD: usize = HEADER + NONCE + STAMP + 16;

/// How far a datagram's stamp may be from the receiver's clock (either way) and still be opened.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Nonces remembered at most: gossip sends tens of datagrams a second per member, so this covers the window
/// for clusters far beyond the planned size; past it the oldest are forgotten first.
const MAX_REMEMBERED: usize = 1 << 20;

/// Why a datagram was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not sealed, sealed with a key this ring does not hold, altered or truncated.
    Unreadable,
    /// Sealed with our key, but stamped more than [`REPLAY_WINDOW`] away from our clock: an old capture (or a
    /// member whose clock is off).
    Stale,
    /// A datagram already opened, sent again.
    Replayed,
}

/// The nonces of datagrams opened recently, oldest first.
#[derive(Default)]
struct Seen {
    nonces: std::collections::HashSet<[u8; NONCE]>,
    order: std::collections::VecDeque<(u64, [u8; NONCE])>,
}

impl Seen {
    /// Records `nonce` opened at `now_ms`; false if it was already there.
    fn insert(&mut self, nonce: [u8; NONCE], now_ms: u64) -> bool {
        let keep_ms = 2 * REPLAY_WINDOW.as_millis() as u64;
        while let Some((at, old)) = self.order.front().copied() {
            if now_ms.saturating_sub(at) <= keep_ms && self.order.len() < MAX_REMEMBERED {
                break;
            }
            self.order.pop_front();
            self.nonces.remove(&old);
        }
        if !self.nonces.insert(nonce) {
            return false;
        }
        self.order.push_back((now_ms, nonce));
        true
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One key, derived from a 32-byte cluster secret.
struct Key {
    id: [u8; 4],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(secret: &[u8; 32]) -> Self {
        // The secret is not used as the key directly, so the same secret can key other protocols (libp2p's private
        // network, later) without two protocols ever sharing a key.
        let key = Sha256::new().chain_update(b"xnode gossip key v1\0").chain_update(secret).finalize();
        let id = Sha256::new().chain_update(b"xnode gossip key id v1\0").chain_update(secret).finalize();
        Key { id: [id[0], id[1], id[2], id[3]], cipher: XChaCha20Poly1305::new(&key) }
    }
}

/// The keys a node seals and opens gossip with: one it sends with, and any number it still accepts (the
/// previous or next secret during a rotation). Shared by the gossip socket and whoever rotates keys: changing it
/// takes effect on the next datagram.
pub struct Keyring {
    keys: std::sync::RwLock<Keys>,
    /// Nonces of datagrams opened within the replay window.
    seen: std::sync::Mutex<Seen>,
}

struct Keys {
    current: Key,
    accepted: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never the key.
        let hex = |id: &[u8; 4]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let keys = self.keys();
        f.debug_struct("Keyring")
            .field("current", &hex(&keys.current.id))
            .field("accepted", &keys.accepted.iter().map(|k| hex(&k.id)).collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring that sends and accepts `secret` only.
    pub fn new(secret: &[u8; 32]) -> Self {
        Keyring {
            keys: std::sync::RwLock::new(Keys { current: Key::new(secret), accepted: Vec::new() }),
            seen: std::sync::Mutex::new(Seen::default()),
        }
    }

    /// Also accepts datagrams sealed with `secret` (a rotation: the previous key, or the next one).
    pub fn accepting(self, secret: &[u8; 32]) -> Self {
        {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            let key = Key::new(secret);
            if key.id != keys.current.id {
                keys.accepted.push(key);
            }
        }
        self
    }

    /// Replaces the keys: send with `current` from now on, and accept it and every one of `accepted`.
    pub fn set(&self, current: &[u8; 32], accepted: &[[u8; 32]]) {
        let current = Key::new(current);
        let accepted = accepted.iter().map(Key::new).filter(|k| k.id != current.id).collect();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys { current, accepted };
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals `plain` into `out` (cleared first) with the current key, stamped with our clock.
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
        self.seal_at(plain, out, now_ms());
    }

    /// [`Keyring::seal`] stamped `at_ms` (tests).
    fn seal_at(&self, plain: &[u8], out: &mut Vec<u8>, at_ms: u64) {
        let mut stamped = Vec::with_capacity(STAMP + plain.len());
        stamped.extend_from_slice(&at_ms.to_be_bytes());
        stamped.extend_from_slice(plain);
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.clear();
        out.push(VERSION);
        let keys = self.keys();
        out.extend_from_slice(&keys.current.id);
        out.extend_from_slice(&nonce);
        let sealed = keys
            .current
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &stamped, aad: &out[..HEADER] })
            .expect("XChaCha20-Poly1305 seals any length a datagram can have");
        out.extend_from_slice(&sealed);
    }

    /// The plaintext of a sealed datagram, or why it is refused: no key of this ring opens it (not sealed,
    /// another secret, altered or truncated), or it is an old or repeated one (see the module's "Replay").
    pub fn open(&self, packet: &[u8]) -> Result<Vec<u8>, Refused> {
        self.open_at(packet, now_ms())
    }

    /// [`Keyring::open`] with our clock at `now_ms` (tests).
    fn open_at(&self, packet: &[u8], now_ms: u64) -> Result<Vec<u8>, Refused> {
        if packet.len() < OVERHEAD || packet[0] != VERSION {
            return Err(Refused::Unreadable);
        }
        let (header, rest) = packet.split_at(HEADER);
        let (nonce, sealed) = rest.split_at(NONCE);
        let mut stamped = {
            let keys = self.keys();
            let key = std::iter::once(&keys.current)
                .chain(&keys.accepted)
                .find(|k| k.id == header[1..HEADER])
                .ok_or(Refused::Unreadable)?;
            key.cipher
                .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: header })
                .map_err(|_| Refused::Unreadable)?
        };
        // Authenticated, so the stamp and nonce are the sender's: only now may they touch the replay state (an
        // outsider cannot fill it).
        let at_ms = u64::from_be_bytes(stamped[..STAMP].try_into().expect("checked length"));
        if at_ms.abs_diff(now_ms) > REPLAY_WINDOW.as_millis() as u64 {
            return Err(Refused::Stale);
        }
        let nonce: [u8; NONCE] = nonce.try_into().expect("split at NONCE");
        if !self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce, now_ms) {
            return Err(Refused::Replayed);
        }
        stamped.drain(..STAMP);
        Ok(stamped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_everything_else() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ring = Keyring::new(&a);
        let mut out = Vec::new();
        ring.seal(b"member xnode-1 at 10.0.0.1", &mut out);
        assert_eq!(out.len(), 26 + OVERHEAD);
        assert!(!out.windows(7).any(|w| w == b"xnode-1"), "the name is not readable");
        assert_eq!(ring.open(&out).unwrap(), b"member xnode-1 at 10.0.0.1");
        assert_eq!(ring.open(&out), Err(Refused::Replayed), "once only");
        assert_eq!(Keyring::new(&b).open(&out), Err(Refused::Unreadable), "another secret");
        for i in [0, 3, 10, out.len() - 1] {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert_eq!(ring.open(&bad), Err(Refused::Unreadable), "a flipped bit at {i}");
        }
        assert_eq!(ring.open(&out[..out.len() - 1]), Err(Refused::Unreadable));
        assert!(ring.open(b"").is_err() && ring.open(&[1; 10]).is_err());
        assert_eq!(ring.open(b"\x28\xb5\x2f\xfd plaintext chitchat"), Err(Refused::Unreadable));
        let mut again = Vec::new();
        ring.seal(b"member xnode-1 at 10.0.0.1", &mut again);
        assert_ne!(out, again, "a fresh nonce every time");
    }

    #[test]
    fn a_rotation_accepts_both_keys_and_sends_with_the_current_one() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let (mut from_old, mut from_new) = (Vec::new(), Vec::new());
        Keyring::new(&old).seal(b"x", &mut from_old);
        Keyring::new(&new).seal(b"y", &mut from_new);
        let rotating = Keyring::new(&new).accepting(&old);
        assert_eq!(rotating.open(&from_old).unwrap(), b"x");
        assert_eq!(rotating.open(&from_new).unwrap(), b"y");
        let mut sent = Vec::new();
        rotating.seal(b"z", &mut sent);
        assert!(Keyring::new(&new).open(&sent).is_ok());
        assert_eq!(Keyring::new(&old).open(&sent), Err(Refused::Unreadable), "sent with the new key");
        assert!(!format!("{rotating:?}").contains("0101"), "Debug shows ids, not keys");
        // Remove the old key: what it seals is refused from now on.
        rotating.set(&new, &[]);
        let mut later_old = Vec::new();
        Keyring::new(&old).seal(b"x2", &mut later_old);
        assert_eq!(rotating.open(&later_old), Err(Refused::Unreadable));
        let mut later_new = Vec::new();
        Keyring::new(&new).seal(b"y2", &mut later_new);
        assert!(rotating.open(&later_new).is_ok());
    }

    #[test]
    fn a_captured_datagram_resent_later_is_dropped() {
        let ring = Keyring::new(&[7u8; 32]);
        let receiver = Keyring::new(&[7u8; 32]);
        let t0 = 1_800_000_000_000u64;
        let window = REPLAY_WINDOW.as_millis() as u64;
        let mut captured = Vec::new();
        ring.seal_at(b"alive", &mut captured, t0);
        assert_eq!(receiver.open_at(&captured, t0 + 5).unwrap(), b"alive");
        // Resent at once, a little later, and at the edge of the window: the nonce is remembered.
        for later in [t0 + 5, t0 + 1_000, t0 + window] {
            assert_eq!(receiver.open_at(&captured, later), Err(Refused::Replayed), "at +{} ms", later - t0);
        }
        // Resent after the window: stale, whatever is remembered.
        assert_eq!(receiver.open_at(&captured, t0 + window + 1), Err(Refused::Stale));
        assert_eq!(receiver.open_at(&captured, t0 + 10 * window), Err(Refused::Stale));
        // A fresh datagram of the same content opens (another nonce); so does one from a clock a little ahead.
        let mut fresh = Vec::new();
        ring.seal_at(b"alive", &mut fresh, t0 + 10 * window);
        assert!(receiver.open_at(&fresh, t0 + 10 * window).is_ok());
        let mut ahead = Vec::new();
        ring.seal_at(b"x", &mut ahead, t0 + 10 * window + window);
        assert!(receiver.open_at(&ahead, t0 + 10 * window).is_ok(), "skew within the window");
        let mut too_far = Vec::new();
        ring.seal_at(b"x", &mut too_far, t0 + 10 * window + window + 1);
        assert_eq!(receiver.open_at(&too_far, t0 + 10 * window), Err(Refused::Stale));
    }

    #[test]
    fn remembered_nonces_are_forgotten_once_no_copy_could_be_accepted() {
        let ring = Keyring::new(&[9u8; 32]);
        let window = REPLAY_WINDOW.as_millis() as u64;
        let t0 = 1_800_000_000_000u64;
        for i in 0..100u64 {
            let mut d = Vec::new();
            ring.seal_at(b"d", &mut d, t0 + i);
            ring.open_at(&d, t0 + i).unwrap();
        }
        assert_eq!(ring.seen.lock().unwrap().nonces.len(), 100);
        // Twice the window later, the next datagram evicts them all; their copies would be stale by then.
        let later = t0 + 2 * window + 200;
        let mut d = Vec::new();
        ring.seal_at(b"d", &mut d, later);
        ring.open_at(&d, later).unwrap();
        let seen = ring.seen.lock().unwrap();
        assert_eq!((seen.nonces.len(), seen.order.len()), (1, 1));
    }

    #[test]
    fn a_datagram_from_another_secret_never_touches_the_replay_state() {
        let ring = Keyring::new(&[1u8; 32]);
        let mut other = Vec::new();
        Keyring::new(&[2u8; 32]).seal(b"x", &mut other);
        for _ in 0..10 {
            assert_eq!(ring.open(&other), Err(Refused::Unreadable));
        }
        assert!(ring.seen.lock().unwrap().nonces.is_empty());
    }

    /// The opener fuzzed (see `fuzz_support.rs`): random and mutated datagrams, and sealed random plaintexts of
    /// any length and stamp, never panic; only an unaltered sealed datagram opens, once.
    #[test]
    fn the_gossip_opener_never_panics() {
        use crate::fuzz_support::{fuzz, Rng};
        let ring = Keyring::new(&[5u8; 32]).accepting(&[6u8; 32]);
        let mut seeds = Vec::new();
        for (i, plain) in [&b""[..], b"x", &[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3], &[0u8; 700]].iter().enumerate() {
            let mut d = Vec::new();
            Keyring::new(if i % 2 == 0 { &[5u8; 32] } else { &[6u8; 32] }).seal(plain, &mut d);
            seeds.push(d);
        }
        let originals: std::collections::HashSet<Vec<u8>> = seeds.iter().cloned().collect();
        fuzz("gossip Keyring::open", 31, &seeds, |input| {
            if let Ok(plain) = ring.open(input) {
                assert!(originals.contains(input), "an altered datagram opened: {plain:?}");
            }
        });
        // Authentic datagrams with hostile content: any plaintext, any stamp (far past, far future, edges).
        let mut rng = Rng::new(32);
        let now = now_ms();
        let window = REPLAY_WINDOW.as_millis() as u64;
        for _ in 0..20_000 {
            let len = rng.below(1500);
            let plain = rng.bytes(len);
            let stamp = match rng.below(5) {
                0 => rng.next(),
                1 => now.saturating_sub(window),
                2 => now + window,
                3 => 0,
                _ => now,
            };
            let mut d = Vec::new();
            ring.seal_at(&plain, &mut d, stamp);
            match ring.open_at(&d, now) {
                Ok(opened) => assert_eq!(opened, plain),
                Err(refused) => assert_eq!(refused, Refused::Stale, "stamp {stamp}"),
            }
        }
    }
}
