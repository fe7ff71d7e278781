//! Gossip sealed with the cluster secret: every datagram is encrypted and authenticated (XChaCha20-Poly1305) so
//! that a node without the secret can neither read members' names and metadata nor take part. A datagram that does
//! not open with a key of the [`Keyring`] is dropped and counted.
//!
//! Wire format of a sealed datagram: `version (1 byte, 1) | key id (4 bytes) | nonce (24 bytes) | ciphertext+tag`.
//! The version and key id are authenticated as associated data. The 24-byte nonce is random: with XChaCha's
//! extended nonce, random nonces are safe for any number of packets. The key id (the first 4 bytes of
//! SHA-256 over a label and the secret) lets a receiver pick the right key during a rotation without trying each;
//! it reveals only which of a cluster's keys was used.
//!
//! Keys rotate without downtime or restart (docs/security.md), as memberlist's keyring does: every node first
//! installs the new secret beside the one in use ([`Keyring::set`] with it accepted), then uses it (sends with it,
//! still accepting the old one), then removes the old one. Replay of a captured datagram within the cluster is not
//! prevented here: chitchat's state is versioned, so an old delta changes nothing, but see docs/security.md.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4;
const NONCE: usize = 24;
/// Bytes a sealed datagram adds to chitchat's: header, nonce and the 16-byte tag.
pub const OVERHEAD: usize = HEADER + NONCE + 16;

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
        Keyring { keys: std::sync::RwLock::new(Keys { current: Key::new(secret), accepted: Vec::new() }) }
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

    /// Seals `plain` into `out` (cleared first) with the current key.
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
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
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &out[..HEADER] })
            .expect("XChaCha20-Poly1305 seals any length a datagram can have");
        out.extend_from_slice(&sealed);
    }

    /// The plaintext of a sealed datagram, or `None` if no key of this ring opens it (not sealed, another
    /// secret, altered or truncated).
    pub fn open(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.len() < OVERHEAD || packet[0] != VERSION {
            return None;
        }
        let (header, rest) = packet.split_at(HEADER);
        let (nonce, sealed) = rest.split_at(NONCE);
        let keys = self.keys();
        let key = std::iter::once(&keys.current).chain(&keys.accepted).find(|k| k.id == header[1..HEADER])?;
        key.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: header }).ok()
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
        assert!(Keyring::new(&b).open(&out).is_none(), "another secret");
        for i in [0, 3, 10, out.len() - 1] {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert!(ring.open(&bad).is_none(), "a flipped bit at {i}");
        }
        assert!(ring.open(&out[..out.len() - 1]).is_none());
        assert!(ring.open(b"").is_none() && ring.open(&[1; 10]).is_none());
        assert!(ring.open(b"\x28\xb5\x2f\xfd plaintext chitchat").is_none());
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
        assert!(Keyring::new(&new).open(&sent).is_some());
        assert!(Keyring::new(&old).open(&sent).is_none(), "sent with the new key");
        assert!(!format!("{rotating:?}").contains("0101"), "Debug shows ids, not keys");
        // Remove the old key: what it seals is refused from now on.
        rotating.set(&new, &[]);
        assert!(rotating.open(&from_old).is_none());
        assert!(rotating.open(&from_new).is_some());
    }
}
