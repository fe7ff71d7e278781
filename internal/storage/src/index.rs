//! The sled index: key layout and the fixed binary encoding of its hot values.
//!
//! Everything lives in sled's default tree so that one `apply_batch` changes blocks, pins and pack records
//! atomically. Keys start with a one-byte kind:
//!
//! | key | value |
//! |---|---|
//! | `b` ++ cid | [`Entry`]: where the body is and how many pins need it (20 bytes) |
//! | `p` ++ root | the [`Pin`](crate::Pin) record (JSON; one per file, cold) |
//! | `q` ++ len(root) u16 ++ root ++ cid | empty: "this pin counted this block once" |
//! | `k` ++ pack id (u32 BE) | [`PackRecord`]: committed length and live bytes of a pack (24 bytes) |
//! | `m` ++ name | store metadata (`capacity`) |
//! | `h` ++ cid | empty: "the node's allocation holds this block" (one reference, however often kept) |
//! | `x` ++ cid | u32 LE: pin references of a block quarantined as corrupt, given back when it is stored again |
//! | `s` ++ cid | [`Staged`]: "an ingest staged this block" (one reference until kept or unstaged; 16 bytes) |

use crate::StoreError;

const BLOCK: u8 = b'b';
const PIN: u8 = b'p';
const PIN_BLOCK: u8 = b'q';
const PACK: u8 = b'k';
const META: u8 = b'm';
const HELD: u8 = b'h';
const QUARANTINED: u8 = b'x';
const STAGED: u8 = b's';

/// Key of the staging mark on the block whose CID bytes are `cid`.
pub(crate) fn staged_key(cid: &[u8]) -> Vec<u8> {
    prefixed(STAGED, cid)
}

/// Prefix of every staging mark.
pub(crate) const STAGED_PREFIX: [u8; 1] = [STAGED];

/// A staging mark's value: the ingest session that sent the block and when it last did (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// The sender's session (one per add).
    pub session: u64,
    /// When the block was last staged, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Staged {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.session.to_le_bytes());
        out[8..].copy_from_slice(&self.at_ms.to_le_bytes());
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Staged {
        let word = |r: std::ops::Range<usize>| raw.get(r).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        Staged { session: word(0..8), at_ms: word(8..16) }
    }
}

/// Key of the pin references saved for the quarantined block whose CID bytes are `cid`.
pub(crate) fn quarantined_key(cid: &[u8]) -> Vec<u8> {
    prefixed(QUARANTINED, cid)
}

/// Prefix of every quarantine record.
pub(crate) const QUARANTINED_PREFIX: [u8; 1] = [QUARANTINED];

/// The reference count a quarantine record saved.
pub(crate) fn decode_refs(raw: &[u8]) -> u32 {
    raw.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// Key of the allocation's mark on the block whose CID bytes are `cid`.
pub(crate) fn held_key(cid: &[u8]) -> Vec<u8> {
    prefixed(HELD, cid)
}

/// Prefix of every allocation mark.
pub(crate) const HELD_PREFIX: [u8; 1] = [HELD];

/// Key of the index entry of the block whose CID bytes are `cid`.
pub(crate) fn block_key(cid: &[u8]) -> Vec<u8> {
    prefixed(BLOCK, cid)
}

/// Prefix of all block entries.
pub(crate) const BLOCK_PREFIX: [u8; 1] = [BLOCK];

/// Key of the pin record of `root`.
pub(crate) fn pin_key(root: &[u8]) -> Vec<u8> {
    prefixed(PIN, root)
}

/// Prefix of all pin records.
pub(crate) const PIN_PREFIX: [u8; 1] = [PIN];

/// Prefix of the (root, block) pairs of one pin. The root's length is part of the prefix so that no root's
/// pairs can be mistaken for another's.
pub(crate) fn pin_blocks_prefix(root: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + root.len());
    key.push(PIN_BLOCK);
    key.extend_from_slice(&(root.len() as u16).to_be_bytes());
    key.extend_from_slice(root);
    key
}

/// Key of the (root, block) pair.
pub(crate) fn pin_block_key(prefix: &[u8], block: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + block.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(block);
    key
}

/// Key of the record of pack `id`.
pub(crate) fn pack_key(id: u32) -> [u8; 5] {
    let mut key = [PACK; 5];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Prefix of all pack records.
pub(crate) const PACK_PREFIX: [u8; 1] = [PACK];

/// Pack id of a pack record key.
pub(crate) fn pack_id(key: &[u8]) -> Result<u32, StoreError> {
    key.get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| damaged(format!("pack record key {key:?}")))
}

/// Key of the persisted capacity.
pub(crate) const CAPACITY_KEY: &[u8] = b"mcapacity";

/// Key of the capacity set at run time (`Store::set_capacity`): once present it wins over the configured one at
/// every later open, so a resize from the dashboard or the API survives a restart.
pub(crate) const RESIZED_KEY: &[u8] = b"mcapacity-set";

fn prefixed(kind: u8, rest: &[u8]) -> Vec<u8> {
    debug_assert!(kind != META);
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

fn damaged(what: String) -> StoreError {
    StoreError::IndexDamaged { what }
}

/// Where a block's body is and how many pins need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    /// Pins (and later other holders) that need the block; 0 means only `gc` keeps it from going.
    pub(crate) refcount: u32,
}

impl Entry {
    const SIZE: usize = 20;

    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        out[0..4].copy_from_slice(&self.pack.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..20].copy_from_slice(&self.refcount.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Entry, StoreError> {
        if bytes.len() != Self::SIZE {
            return Err(damaged(format!("block entry of {} bytes, expected {}", bytes.len(), Self::SIZE)));
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Ok(Entry {
            pack: u32_at(0),
            offset: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
            len: u32_at(12),
            refcount: u32_at(16),
        })
    }
}

/// What the index knows about one pack file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PackRecord {
    /// Bytes of the file that committed writes cover; anything past this is discarded at open.
    pub(crate) committed_len: u64,
    /// Bytes of blocks in the pack that the index still lists.
    pub(crate) live_bytes: u64,
    /// Number of blocks in the pack that the index still lists.
    pub(crate) live_blocks: u64,
}

impl PackRecord {
    const SIZE: usize = 24;

    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        out[0..8].copy_from_slice(&self.committed_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.live_bytes.to_le_bytes());
        out[16..24].copy_from_slice(&self.live_blocks.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<PackRecord, StoreError> {
        if bytes.len() != Self::SIZE {
            return Err(damaged(format!("pack record of {} bytes, expected {}", bytes.len(), Self::SIZE)));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(PackRecord { committed_len: u64_at(0), live_bytes: u64_at(8), live_blocks: u64_at(16) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_roundtrips_and_rejects_garbage() {
        let e = Entry { pack: 7, offset: 1 << 40, len: 262_144, refcount: 3 };
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        assert!(Entry::decode(&[0; 19]).is_err());
        let p = PackRecord { committed_len: 9, live_bytes: 8, live_blocks: 1 };
        assert_eq!(PackRecord::decode(&p.encode()).unwrap(), p);
        assert!(PackRecord::decode(&[0; 3]).is_err());
    }

    #[test]
    fn pin_prefixes_do_not_overlap() {
        // A root that is a byte-prefix of another root must not see the other's pairs.
        let short = pin_blocks_prefix(&[1, 2]);
        let long = pin_block_key(&pin_blocks_prefix(&[1, 2, 3]), &[9]);
        assert!(!long.starts_with(&short));
        assert_eq!(pack_id(&pack_key(42)).unwrap(), 42);
    }
}
