//! The allocation's on-disk index of the catalog: which leaves each partition holds, which blocks each file
//! needs, and each partition's set digest, in a sled tree of the block store's database (`Store::tree`).
//!
//! No node holds a list of every leaf in memory: a catalog add writes its file's entries here once, a view change
//! reads back only the partitions that changed hands, and the allocation core keeps only per-partition digests.
//!
//! | key | value |
//! |---|---|
//! | `L` ++ partition (u32 BE) ++ len(cid) u8 ++ cid ++ root | size of the leaf, u32 LE: "file `root` has leaf `cid`" |
//! | `R` ++ len(root) u8 ++ root ++ kind (`l` leaf, `i` interior) ++ cid | size u32 LE: the file's blocks |
//! | `I` ++ len(cid) u8 ++ cid ++ root | empty: "file `root` has interior block `cid`" |
//! | `F` ++ root | [`FileIndex`]: the file is indexed, with its counts |
//! | `D` ++ partition (u32 BE) | [`SetDigest`] of the distinct leaves listed in the partition (40 bytes) |
//! | `Mpartitions` | the partition count the keys were written for (u32 LE); another count empties the tree |

use std::collections::{HashMap, HashSet};

use cid::Cid;

use super::core::SetDigest;

/// A catalog file as indexed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileIndex {
    /// Distinct leaves.
    pub leaves: u64,
    /// Interior blocks (root, directories, interior file nodes).
    pub interior: u64,
    /// Bytes of its leaves.
    pub leaf_bytes: u64,
}

impl FileIndex {
    fn encode(&self) -> [u8; 24] {
        let mut out = [0; 24];
        out[..8].copy_from_slice(&self.leaves.to_le_bytes());
        out[8..16].copy_from_slice(&self.interior.to_le_bytes());
        out[16..].copy_from_slice(&self.leaf_bytes.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Self {
        let at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes);
        FileIndex { leaves: at(0), interior: at(8), leaf_bytes: at(16) }
    }
}

/// What indexing or unindexing a file changed, for the core and the store.
#[derive(Debug, Default)]
pub struct Delta {
    /// Leaves that no other file listed (on index) or that no file lists any more (on unindex), by partition.
    pub leaves: Vec<(u32, Cid, u32)>,
    /// Interior blocks that no other file lists any more (on unindex).
    pub interior: Vec<Cid>,
}

/// A file's blocks that no other file lists ([`Index::exclusive_to`]): what its removal frees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exclusive {
    /// Leaves only this file lists.
    pub leaves: u64,
    /// Their bytes.
    pub leaf_bytes: u64,
    /// Interior blocks only this file lists.
    pub interior: u64,
}

/// A file's leaves (with their sizes) and its interior blocks.
pub type FileBlocks = (Vec<(Cid, u32)>, Vec<Cid>);

/// What [`Index::add_leaves`] did.
#[derive(Debug, Default)]
pub struct AddedLeaves {
    /// Leaves no other file listed before, by partition, with their sizes.
    pub listed: Vec<(u32, Cid, u32)>,
    /// (leaf, file) pairs added: this file's new distinct leaves.
    pub pairs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why the index failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error("allocation index: {0}")]
    Sled(#[from] sled::Error),
    /// A key or value does not decode.
    #[error("allocation index damaged: {0}")]
    Damaged(String),
}

/// The index; cheap to clone (a sled tree handle).
#[derive(Clone)]
pub struct Index {
    tree: sled::Tree,
    partitions: u32,
}

const PARTITIONS_KEY: &[u8] = b"Mpartitions";

fn with_len(kind: u8, cid: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + cid.len());
    k.push(kind);
    k.push(cid.len() as u8);
    k.extend_from_slice(cid);
    k
}

fn leaf_prefix(partition: u32, cid: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + cid.len());
    k.push(b'L');
    k.extend_from_slice(&partition.to_be_bytes());
    k.push(cid.len() as u8);
    k.extend_from_slice(cid);
    k
}

fn digest_key(partition: u32) -> [u8; 5] {
    let mut k = [b'D'; 5];
    k[1..].copy_from_slice(&partition.to_be_bytes());
    k
}

fn file_key(root: &[u8]) -> Vec<u8> {
    [b"F".as_slice(), root].concat()
}

fn encode_digest(d: &SetDigest) -> [u8; 40] {
    let mut out = [0; 40];
    out[..8].copy_from_slice(&d.count.to_le_bytes());
    out[8..].copy_from_slice(&d.xor);
    out
}

fn decode_digest(b: &[u8]) -> Result<SetDigest, IndexError> {
    if b.len() != 40 {
        return Err(IndexError::Damaged(format!("partition digest of {} bytes", b.len())));
    }
    let mut xor = [0; 32];
    xor.copy_from_slice(&b[8..]);
    Ok(SetDigest { count: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")), xor })
}

fn size_of(v: &[u8]) -> u32 {
    v.get(..4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn cid_at(bytes: &[u8]) -> Result<(Cid, usize), IndexError> {
    let len = *bytes.first().ok_or_else(|| IndexError::Damaged("empty key".into()))? as usize;
    let raw = bytes.get(1..1 + len).ok_or_else(|| IndexError::Damaged("short key".into()))?;
    let cid = Cid::try_from(raw).map_err(|e| IndexError::Damaged(format!("bad cid in key: {e}")))?;
    Ok((cid, 1 + len))
}

impl Index {
    /// Opens the index in `tree`. If it was written for another partition count, it is emptied (the loop then
    /// indexes every catalog file again from the blocks it holds).
    pub fn open(tree: sled::Tree, partitions: u32) -> Result<Index, IndexError> {
        let stored = tree.get(PARTITIONS_KEY)?.map(|v| size_of(&v));
        if stored != Some(partitions) {
            if stored.is_some() {
                tracing::warn!(old = ?stored, new = partitions, "partition count changed; rebuilding the allocation index");
            }
            tree.clear()?;
            tree.insert(PARTITIONS_KEY, &partitions.to_le_bytes())?;
        }
        Ok(Index { tree, partitions })
    }

    /// The index in `tree` as it is, to read: `None` if it was not written for `partitions` (not yet, or being
    /// rebuilt for another count). Unlike [`Index::open`], never changes the tree.
    pub fn existing(tree: sled::Tree, partitions: u32) -> Result<Option<Index>, IndexError> {
        let stored = tree.get(PARTITIONS_KEY)?.map(|v| size_of(&v));
        Ok((stored == Some(partitions)).then_some(Index { tree, partitions }))
    }

    fn partition_of(&self, cid: &[u8]) -> u32 {
        xnode_placement::partition_of(xnode_placement::BlockKey::of(cid), self.partitions)
    }

    /// Whether `root` is indexed.
    pub fn file(&self, root: &Cid) -> Result<Option<FileIndex>, IndexError> {
        Ok(self.tree.get(file_key(&root.to_bytes()))?.map(|v| FileIndex::decode(&v)))
    }

    /// Every indexed file's root.
    pub fn files(&self) -> Result<Vec<Cid>, IndexError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"F") {
            let (k, _) = item?;
            out.push(Cid::try_from(&k[1..]).map_err(|e| IndexError::Damaged(format!("file key: {e}")))?);
        }
        Ok(out)
    }

    /// Every partition's digest that is not empty.
    pub fn digests(&self) -> Result<Vec<(u32, SetDigest)>, IndexError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"D") {
            let (k, v) = item?;
            let p = k.get(1..5).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes);
            let p = p.ok_or_else(|| IndexError::Damaged("digest key".into()))?;
            out.push((p, decode_digest(&v)?));
        }
        Ok(out)
    }

    /// Whether some file lists `cid` as a leaf.
    pub fn is_leaf(&self, cid: &Cid) -> Result<bool, IndexError> {
        let bytes = cid.to_bytes();
        Ok(self.tree.scan_prefix(leaf_prefix(self.partition_of(&bytes), &bytes)).next().transpose()?.is_some())
    }

    /// The distinct leaves listed in `partition`, with their sizes.
    pub fn leaves_in(&self, partition: u32) -> Result<Vec<(Cid, u32)>, IndexError> {
        self.leaf_pairs_in(partition).map(|pairs| {
            let mut out: Vec<(Cid, u32)> = Vec::new();
            for (cid, _, size) in pairs {
                if out.last().is_none_or(|(c, _)| *c != cid) {
                    out.push((cid, size));
                }
            }
            out
        })
    }

    /// Every (leaf, file) pair listed in `partition`, in key order.
    pub fn leaf_pairs_in(&self, partition: u32) -> Result<Vec<(Cid, Cid, u32)>, IndexError> {
        let mut prefix = vec![b'L'];
        prefix.extend_from_slice(&partition.to_be_bytes());
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let (cid, used) = cid_at(&k[5..])?;
            let root = Cid::try_from(&k[5 + used..]).map_err(|e| IndexError::Damaged(format!("leaf key: {e}")))?;
            out.push((cid, root, size_of(&v)));
        }
        Ok(out)
    }

    /// A file's leaves (with sizes) and interior blocks.
    pub fn blocks_of(&self, root: &Cid) -> Result<FileBlocks, IndexError> {
        let (mut leaves, mut interior) = (Vec::new(), Vec::new());
        let prefix = with_len(b'R', &root.to_bytes());
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let kind = k[prefix.len()];
            let cid =
                Cid::try_from(&k[prefix.len() + 1..]).map_err(|e| IndexError::Damaged(format!("file block: {e}")))?;
            if kind == b'l' {
                leaves.push((cid, size_of(&v)));
            } else {
                interior.push(cid);
            }
        }
        Ok((leaves, interior))
    }

    /// Indexes a file's blocks: [`Index::add_leaves`] then [`Index::finish_file`]. Returns the leaves no other
    /// file listed before.
    pub fn add_file(&self, root: &Cid, interior: &[Cid], leaves: &[(Cid, u32)]) -> Result<Delta, IndexError> {
        if self.file(root)?.is_some() {
            return Ok(Delta::default());
        }
        let added = self.add_leaves(root, leaves)?;
        self.finish_file(root, interior)?;
        Ok(Delta { leaves: added.listed, interior: Vec::new() })
    }

    /// Lists a batch of a file's leaves (a big file is indexed in batches, so memory stays bounded), in one sled
    /// batch with the partitions' digests. Leaves this file already listed are skipped, so a walk interrupted by a
    /// crash and done again counts each leaf once; the file counts as indexed only after [`Index::finish_file`].
    pub fn add_leaves(&self, root: &Cid, leaves: &[(Cid, u32)]) -> Result<AddedLeaves, IndexError> {
        let root_bytes = root.to_bytes();
        let mut batch = sled::Batch::default();
        let mut digests: HashMap<u32, SetDigest> = HashMap::new();
        let mut out = AddedLeaves::default();
        let file_prefix = with_len(b'R', &root_bytes);
        let mut seen = std::collections::HashSet::new();
        for (cid, size) in leaves {
            let bytes = cid.to_bytes();
            if !seen.insert(bytes.clone()) {
                continue;
            }
            let p = self.partition_of(&bytes);
            let prefix = leaf_prefix(p, &bytes);
            let own = [prefix.as_slice(), &root_bytes].concat();
            if self.tree.contains_key(&own)? {
                continue;
            }
            let first = self.tree.scan_prefix(&prefix).next().transpose()?.is_none();
            batch.insert(own, &size.to_le_bytes());
            batch.insert([file_prefix.as_slice(), b"l", &bytes].concat(), &size.to_le_bytes());
            out.pairs += 1;
            out.bytes += u64::from(*size);
            if first {
                self.digest_entry(&mut digests, p)?.add(&SetDigest::of_cid_bytes(&bytes));
                out.listed.push((p, *cid, *size));
            }
        }
        for (p, d) in &digests {
            batch.insert(&digest_key(*p), encode_digest(d).as_slice());
        }
        self.tree.apply_batch(batch)?;
        Ok(out)
    }

    /// Records a file's interior blocks and marks it indexed. Its leaf counts are those its `add_leaves` calls
    /// listed, read back from the index: a walk that was cut short (a crash, metadata not fetched yet) and done
    /// again lists only what the first one did not, so counting what each call added would undercount the file.
    pub fn finish_file(&self, root: &Cid, interior: &[Cid]) -> Result<(), IndexError> {
        let root_bytes = root.to_bytes();
        let file_prefix = with_len(b'R', &root_bytes);
        let (mut leaves, mut leaf_bytes) = (0u64, 0u64);
        for item in self.tree.scan_prefix([file_prefix.as_slice(), b"l"].concat()) {
            let (_, v) = item?;
            leaves += 1;
            leaf_bytes += u64::from(size_of(&v));
        }
        let mut batch = sled::Batch::default();
        let mut info = FileIndex { leaves, interior: 0, leaf_bytes };
        let mut seen = std::collections::HashSet::new();
        for cid in interior {
            let bytes = cid.to_bytes();
            if !seen.insert(bytes.clone()) {
                continue;
            }
            batch.insert([with_len(b'I', &bytes).as_slice(), &root_bytes].concat(), &[]);
            batch.insert([file_prefix.as_slice(), b"i", &bytes].concat(), &[]);
            info.interior += 1;
        }
        batch.insert(file_key(&root_bytes), &info.encode());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Removes a file from the index. Returns the leaves and interior blocks no file lists any more.
    pub fn remove_file(&self, root: &Cid) -> Result<Delta, IndexError> {
        let root_bytes = root.to_bytes();
        // A file whose indexing a crash interrupted has leaves but no `F` record: it is removed all the same.
        let (leaves, interior) = self.blocks_of(root)?;
        let file_prefix = with_len(b'R', &root_bytes);
        let mut batch = sled::Batch::default();
        let mut digests: HashMap<u32, SetDigest> = HashMap::new();
        let mut delta = Delta::default();
        for (cid, size) in leaves {
            let bytes = cid.to_bytes();
            let p = self.partition_of(&bytes);
            let prefix = leaf_prefix(p, &bytes);
            let own = [prefix.as_slice(), &root_bytes].concat();
            batch.remove(own.clone());
            batch.remove([file_prefix.as_slice(), b"l", &bytes].concat());
            if !self.listed_by_another(&prefix, &own)? {
                self.digest_entry(&mut digests, p)?.remove(&SetDigest::of_cid_bytes(&bytes));
                delta.leaves.push((p, cid, size));
            }
        }
        for cid in interior {
            let bytes = cid.to_bytes();
            let prefix = with_len(b'I', &bytes);
            let own = [prefix.as_slice(), &root_bytes].concat();
            batch.remove(own.clone());
            batch.remove([file_prefix.as_slice(), b"i", &bytes].concat());
            if !self.listed_by_another(&prefix, &own)? {
                delta.interior.push(cid);
            }
        }
        for (p, d) in &digests {
            if d.count == 0 {
                batch.remove(&digest_key(*p));
            } else {
                batch.insert(&digest_key(*p), encode_digest(d).as_slice());
            }
        }
        batch.remove(file_key(&root_bytes));
        self.tree.apply_batch(batch)?;
        Ok(delta)
    }

    /// What removing `root` would free: its blocks that no other file of `kept` lists (`None`: `root` is not
    /// indexed). `kept` is the catalog's other files: a file the catalog removed but the index still lists (the
    /// allocation loop unindexes it next round) shares nothing. Changes nothing.
    pub fn exclusive_to(&self, root: &Cid, kept: &HashSet<Cid>) -> Result<Option<Exclusive>, IndexError> {
        if self.file(root)?.is_none() {
            return Ok(None);
        }
        let kept: HashSet<Vec<u8>> = kept.iter().filter(|c| *c != root).map(Cid::to_bytes).collect();
        let shared = |prefix: &[u8]| -> Result<bool, IndexError> {
            for key in self.tree.scan_prefix(prefix).keys() {
                if kept.contains(&key?[prefix.len()..]) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let (leaves, interior) = self.blocks_of(root)?;
        let mut out = Exclusive::default();
        for (cid, size) in leaves {
            let bytes = cid.to_bytes();
            if !shared(&leaf_prefix(self.partition_of(&bytes), &bytes))? {
                out.leaves += 1;
                out.leaf_bytes += u64::from(size);
            }
        }
        for cid in interior {
            if !shared(&with_len(b'I', &cid.to_bytes()))? {
                out.interior += 1;
            }
        }
        Ok(Some(out))
    }

    /// Whether some key under `prefix` other than `own` exists: another file lists the same block.
    fn listed_by_another(&self, prefix: &[u8], own: &[u8]) -> Result<bool, IndexError> {
        for key in self.tree.scan_prefix(prefix).keys() {
            if key?.as_ref() != own {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn digest_entry<'a>(
        &self,
        digests: &'a mut HashMap<u32, SetDigest>,
        p: u32,
    ) -> Result<&'a mut SetDigest, IndexError> {
        if let std::collections::hash_map::Entry::Vacant(v) = digests.entry(p) {
            let current = self.tree.get(digest_key(p))?.map(|b| decode_digest(&b)).transpose()?.unwrap_or_default();
            v.insert(current);
        }
        Ok(digests.get_mut(&p).expect("just inserted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(i: u32) -> Cid {
        let mh = cid::multihash::Multihash::<64>::wrap(0x12, &sha2_of(i)).unwrap();
        Cid::new_v1(0x55, mh)
    }

    fn sha2_of(i: u32) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(i.to_le_bytes()).into()
    }

    fn index(partitions: u32) -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).path(dir.path().join("db")).open().unwrap();
        (dir, Index::open(db.open_tree("alloc").unwrap(), partitions).unwrap())
    }

    #[test]
    fn shared_leaves_are_listed_once_and_unlisted_with_the_last_file() {
        let (_dir, index) = index(16);
        let (f1, f2) = (cid(1000), cid(1001));
        let d1 = index.add_file(&f1, &[f1], &[(cid(1), 10), (cid(2), 20)]).unwrap();
        assert_eq!(d1.leaves.len(), 2);
        let d2 = index.add_file(&f2, &[f2], &[(cid(2), 20), (cid(3), 30)]).unwrap();
        assert_eq!(d2.leaves.iter().map(|l| l.1).collect::<Vec<_>>(), vec![cid(3)]);
        // Indexing twice changes nothing.
        assert!(index.add_file(&f2, &[f2], &[(cid(4), 1)]).unwrap().leaves.is_empty());

        let mut expected: HashMap<u32, SetDigest> = HashMap::new();
        for i in 1..=3 {
            let b = cid(i).to_bytes();
            expected.entry(index.partition_of(&b)).or_default().add(&SetDigest::of_cid_bytes(&b));
        }
        let stored: HashMap<u32, SetDigest> = index.digests().unwrap().into_iter().collect();
        assert_eq!(stored, expected);
        let p2 = index.partition_of(&cid(2).to_bytes());
        assert!(index.leaves_in(p2).unwrap().contains(&(cid(2), 20)));
        assert_eq!(index.leaves_in(p2).unwrap().iter().filter(|(c, _)| *c == cid(2)).count(), 1);

        // What each removal would free: the blocks no other kept file lists.
        let both: HashSet<Cid> = [f1, f2].into();
        assert_eq!(index.exclusive_to(&f1, &both).unwrap(), Some(Exclusive { leaves: 1, leaf_bytes: 10, interior: 1 }));
        assert_eq!(index.exclusive_to(&f2, &both).unwrap(), Some(Exclusive { leaves: 1, leaf_bytes: 30, interior: 1 }));
        assert_eq!(index.exclusive_to(&cid(2000), &both).unwrap(), None, "not indexed");
        // f1 gone from the catalog but still indexed: it shares nothing any more.
        let only_f2: HashSet<Cid> = [f2].into();
        let all_of_f2 = Some(Exclusive { leaves: 2, leaf_bytes: 50, interior: 1 });
        assert_eq!(index.exclusive_to(&f2, &only_f2).unwrap(), all_of_f2);

        let r1 = index.remove_file(&f1).unwrap();
        assert_eq!(index.exclusive_to(&f2, &both).unwrap(), all_of_f2, "unindexed: shares nothing either");
        assert_eq!(r1.leaves.iter().map(|l| l.1).collect::<Vec<_>>(), vec![cid(1)]);
        assert_eq!(r1.interior, vec![f1]);
        assert!(index.is_leaf(&cid(2)).unwrap());
        assert!(!index.is_leaf(&cid(1)).unwrap());
        let r2 = index.remove_file(&f2).unwrap();
        let mut gone: Vec<Cid> = r2.leaves.iter().map(|l| l.1).collect();
        gone.sort();
        let mut want = vec![cid(2), cid(3)];
        want.sort();
        assert_eq!(gone, want);
        assert!(index.digests().unwrap().is_empty());
        assert!(index.files().unwrap().is_empty());
    }

    /// A walk cut short (a crash, or metadata not fetched yet) lists some leaves; the walk done again lists only
    /// the rest. The file's counts must still be all of its distinct leaves and their bytes.
    #[test]
    fn a_walk_done_again_after_an_interruption_counts_every_leaf() {
        let (_dir, index) = index(16);
        let root = cid(500);
        let leaves: Vec<(Cid, u32)> = (1..=10).map(|i| (cid(i), 100 + i)).collect();
        // The first walk got through the first batch, then stopped before `finish_file`.
        index.add_leaves(&root, &leaves[..4]).unwrap();
        assert_eq!(index.file(&root).unwrap(), None, "not indexed until finished");
        // The second walk from the start: the first batch again (all listed already), then the rest, with a leaf
        // repeated inside the file (same content twice), then finished.
        let again = index.add_leaves(&root, &leaves[..4]).unwrap();
        assert_eq!(again.pairs, 0, "nothing new in the batch the first walk listed");
        index.add_leaves(&root, &[&leaves[4..], &leaves[..1]].concat()).unwrap();
        index.finish_file(&root, &[root]).unwrap();
        let want_bytes: u64 = (1..=10).map(|i| 100 + i as u64).sum();
        assert_eq!(index.file(&root).unwrap(), Some(FileIndex { leaves: 10, interior: 1, leaf_bytes: want_bytes }));
    }

    #[test]
    fn another_partition_count_empties_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).path(dir.path().join("db")).open().unwrap();
        let index = Index::open(db.open_tree("alloc").unwrap(), 16).unwrap();
        index.add_file(&cid(9), &[], &[(cid(1), 1)]).unwrap();
        let again = Index::open(db.open_tree("alloc").unwrap(), 16).unwrap();
        assert_eq!(again.files().unwrap(), vec![cid(9)]);
        let other = Index::open(db.open_tree("alloc").unwrap(), 32).unwrap();
        assert!(other.files().unwrap().is_empty());
    }
}
