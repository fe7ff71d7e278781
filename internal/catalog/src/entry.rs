//! One log entry: what it says, how it is signed, and its wire form.
//!
//! The wire form is a raw block (CIDv1, raw codec, SHA-256) holding the JSON `{"entry": "<entry JSON>", "sig":
//! "<hex>"}`. The entry is kept as the exact string that was signed, so a reader verifies the very bytes the author
//! signed and a newer version may add fields without breaking older readers' checks. The author's key is not
//! carried: an Ed25519 peer id embeds its public key.

use cid::Cid;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

/// A file as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file's root CID.
    #[serde(with = "cid_str")]
    pub root: Cid,
    /// The name it was added under.
    pub name: String,
    /// Content bytes.
    pub size: u64,
    /// Blocks in its DAG (as counted by the adding node).
    pub blocks: u64,
    /// When it was added, seconds since the Unix epoch.
    pub added_at: u64,
    /// The name of the member that added it.
    pub added_by: String,
}

/// What an entry does to the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A file joins the catalog.
    Add(FileRecord),
    /// A file leaves the catalog: the author's own earlier adds of this root, or, with `admin`, every earlier add
    /// of it by any author.
    Remove {
        /// The file's root CID.
        #[serde(with = "cid_str")]
        root: Cid,
        /// An admin removal (made through the API with the admin token): it removes other members' adds too,
        /// and the log records who made it. Absent from the bytes when false, so plain removals sign as before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        admin: bool,
    },
}

impl Op {
    /// The root the entry is about.
    pub fn root(&self) -> Cid {
        match self {
            Op::Add(f) => f.root,
            Op::Remove { root, .. } => *root,
        }
    }
}

/// One entry of one author's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The log's author (base58 peer id).
    #[serde(with = "peer_str")]
    pub author: PeerId,
    /// Position in the author's log, from 0.
    pub seq: u64,
    /// The CID of the entry before it (`None` for seq 0): the log is a hash chain.
    #[serde(with = "opt_cid_str")]
    pub prev: Option<Cid>,
    /// When it was written, milliseconds since the Unix epoch (the author's clock). Adds and removes of the
    /// same root are ordered by it across logs: the later one wins, a tie goes to the removal.
    pub at_ms: u64,
    /// What it does.
    #[serde(flatten)]
    pub op: Op,
}

/// Why bytes are not a valid entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The bytes do not hash to the CID they were fetched for.
    #[error("entry {cid} does not hash to its CID")]
    HashMismatch {
        /// The CID asked for.
        cid: Cid,
    },
    /// Not the JSON an entry is.
    #[error("entry {cid} is malformed: {reason}")]
    Malformed {
        /// The entry's CID.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the author's key.
    #[error("entry {cid} is not signed by its author {author}")]
    BadSignature {
        /// The entry's CID.
        cid: Cid,
        /// Who it claims to be by.
        author: PeerId,
    },
    /// The author's peer id does not embed a public key (not Ed25519), so the entry cannot be checked.
    #[error("entry {cid}: author {author} has no inline public key")]
    UnknownKey {
        /// The entry's CID.
        cid: Cid,
        /// The author.
        author: PeerId,
    },
}

#[derive(Serialize, Deserialize)]
struct Wire {
    entry: String,
    sig: String,
}

/// The CID of an entry block.
pub fn cid_of(bytes: &[u8]) -> Cid {
    xnode_dag::cid_v1(xnode_dag::RAW, bytes)
}

impl Entry {
    /// Signs the entry with `key` (whose peer id must be `self.author`) and returns its CID and block bytes.
    pub fn sign(&self, key: &Keypair) -> (Cid, Vec<u8>) {
        debug_assert_eq!(key.public().to_peer_id(), self.author);
        let entry = serde_json::to_string(self).expect("an entry serialises");
        let sig = key.sign(entry.as_bytes()).expect("Ed25519 signing does not fail");
        let wire = Wire { entry, sig: to_hex(&sig) };
        let bytes = serde_json::to_vec(&wire).expect("the wire form serialises");
        (cid_of(&bytes), bytes)
    }

    /// Checks that `bytes` hash to `cid`, parse as an entry and carry its author's valid signature.
    pub fn verify(cid: &Cid, bytes: &[u8]) -> Result<Entry, EntryError> {
        if cid_of(bytes) != *cid {
            return Err(EntryError::HashMismatch { cid: *cid });
        }
        let malformed = |reason: String| EntryError::Malformed { cid: *cid, reason };
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let entry: Entry = serde_json::from_str(&wire.entry).map_err(|e| malformed(e.to_string()))?;
        let sig = from_hex(&wire.sig).ok_or_else(|| malformed("signature is not hex".into()))?;
        let key = public_key(&entry.author).ok_or(EntryError::UnknownKey { cid: *cid, author: entry.author })?;
        if !key.verify(wire.entry.as_bytes(), &sig) {
            return Err(EntryError::BadSignature { cid: *cid, author: entry.author });
        }
        Ok(entry)
    }
}

/// The public key embedded in an identity-multihash peer id (Ed25519 keys are).
fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let mh = cid::multihash::Multihash::<64>::from_bytes(&peer.to_bytes()).ok()?;
    if mh.code() != 0x00 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok().filter(|k| k.to_peer_id() == *peer)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Serde helpers for a CID as its string form, shared with the heads type.
pub(crate) mod cid_str {
    use cid::Cid;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(cid)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        Cid::try_from(String::deserialize(d)?.as_str()).map_err(D::Error::custom)
    }
}

mod opt_cid_str {
    use cid::Cid;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(cid: &Option<Cid>, s: S) -> Result<S::Ok, S::Error> {
        match cid {
            Some(c) => s.collect_str(c),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cid>, D::Error> {
        Option::<String>::deserialize(d)?.map(|s| Cid::try_from(s.as_str()).map_err(D::Error::custom)).transpose()
    }
}

mod peer_str {
    use libp2p_identity::PeerId;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(peer: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(peer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(author: PeerId) -> Entry {
        let root = cid_of(b"file");
        let file = FileRecord { root, name: "a".into(), size: 4, blocks: 1, added_at: 1, added_by: "n1".into() };
        Entry { author, seq: 0, prev: None, at_ms: 1000, op: Op::Add(file) }
    }

    #[test]
    fn signed_entries_verify_and_tampered_ones_do_not() {
        let key = Keypair::generate_ed25519();
        let entry = add(key.public().to_peer_id());
        let (cid, bytes) = entry.sign(&key);
        assert_eq!(Entry::verify(&cid, &bytes).unwrap(), entry);

        let text = String::from_utf8(bytes.clone()).unwrap().replace("\\\"a\\\"", "\\\"b\\\"");
        assert_ne!(text.as_bytes(), &bytes[..], "the name was changed");
        let forged = text.into_bytes();
        assert!(matches!(Entry::verify(&cid_of(&forged), &forged), Err(EntryError::BadSignature { .. })));
        assert!(matches!(Entry::verify(&cid, &forged), Err(EntryError::HashMismatch { .. })));
    }

    #[test]
    fn an_entry_signed_by_someone_else_is_refused() {
        let author = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let entry = add(author.public().to_peer_id());
        let text = serde_json::to_string(&entry).unwrap();
        let sig = other.sign(text.as_bytes()).unwrap();
        let bytes = serde_json::to_vec(&Wire { entry: text, sig: to_hex(&sig) }).unwrap();
        assert!(matches!(Entry::verify(&cid_of(&bytes), &bytes), Err(EntryError::BadSignature { .. })));
    }
}
