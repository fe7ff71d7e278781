//! The catalog as plain data: every author's log, the rule that admits the next entry, and the merged file list.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use libp2p_identity::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, EntryError, FileRecord, Op};

/// The tip of one author's log: how many entries it has and the CID of the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Entries in the log.
    pub len: u64,
    /// The last entry's CID.
    #[serde(with = "crate::entry::cid_str")]
    pub cid: Cid,
}

/// Every known log's head, by author. Nodes gossip theirs so peers learn which logs grew.
pub type Heads = BTreeMap<PeerId, Head>;

/// What [`CatalogState::apply`] did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was the next entry of its author's log and is now part of it.
    Appended,
    /// The log already has it.
    Known,
}

/// Every log and the files they add up to. Pure: the node feeds it entries and persists what it accepts.
#[derive(Debug, Default, Clone)]
pub struct CatalogState {
    logs: BTreeMap<PeerId, Vec<(Cid, Entry)>>,
}

impl CatalogState {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The head of every non-empty log.
    pub fn heads(&self) -> Heads {
        self.logs
            .iter()
            .filter_map(|(author, log)| log.last().map(|(cid, _)| (*author, Head { len: log.len() as u64, cid: *cid })))
            .collect()
    }

    /// How many entries of `author`'s log this catalog has.
    pub fn len_of(&self, author: &PeerId) -> u64 {
        self.logs.get(author).map_or(0, |l| l.len() as u64)
    }

    /// Entries in all logs.
    pub fn total_entries(&self) -> u64 {
        self.logs.values().map(|l| l.len() as u64).sum()
    }

    /// The CID of every entry of every log (the blocks a node keeps so others can fetch them from it).
    pub fn entry_cids(&self) -> Vec<Cid> {
        self.logs.values().flatten().map(|(cid, _)| *cid).collect()
    }

    /// Writes the next entry of `key`'s own log and applies it. Returns the entry's CID and block bytes.
    pub fn append(&mut self, key: &Keypair, op: Op, at_ms: u64) -> (Cid, Vec<u8>) {
        let author = key.public().to_peer_id();
        let log = self.logs.entry(author).or_default();
        let entry = Entry { author, seq: log.len() as u64, prev: log.last().map(|(c, _)| *c), at_ms, op };
        let (cid, bytes) = entry.sign(key);
        log.push((cid, entry));
        (cid, bytes)
    }

    /// Checks `bytes` (fetched as `cid`) and adds the entry if it is the next one of its author's log: signed by
    /// the author, numbered one past the log's length, and chained to the log's last entry. An entry the log
    /// already holds is [`Applied::Known`]; anything else is an error and changes nothing.
    pub fn apply(&mut self, cid: &Cid, bytes: &[u8]) -> Result<(Entry, Applied), ApplyError> {
        self.apply_by(cid, bytes, |_| true)
    }

    /// [`CatalogState::apply`], admitting only entries whose author `may_author` accepts (a member of the cluster):
    /// an entry signed by anyone else is [`ApplyError::NotAMember`], even if its signature checks out.
    pub fn apply_by(
        &mut self,
        cid: &Cid,
        bytes: &[u8],
        may_author: impl Fn(&PeerId) -> bool,
    ) -> Result<(Entry, Applied), ApplyError> {
        let entry = Entry::verify(cid, bytes)?;
        if !self.logs.contains_key(&entry.author) && !may_author(&entry.author) {
            return Err(ApplyError::NotAMember { author: entry.author });
        }
        let log = self.logs.entry(entry.author).or_default();
        if let Some((known, _)) = log.get(entry.seq as usize) {
            return if known == cid {
                Ok((entry, Applied::Known))
            } else {
                Err(ApplyError::Fork { author: entry.author, seq: entry.seq })
            };
        }
        if entry.seq != log.len() as u64 {
            return Err(ApplyError::Gap { author: entry.author, seq: entry.seq, have: log.len() as u64 });
        }
        if entry.prev != log.last().map(|(c, _)| *c) {
            return Err(ApplyError::Fork { author: entry.author, seq: entry.seq });
        }
        log.push((*cid, entry.clone()));
        Ok((entry, Applied::Appended))
    }

    /// The files in the catalog: for each root, its latest add unless a removal came at or after it. Sorted by
    /// when they were added, then by root.
    ///
    /// A removal takes its author's own earlier adds of the root; an admin removal takes every earlier add of it,
    /// whoever made them. A member cannot take another member's file out of the catalog except as an admin.
    pub fn files(&self) -> Vec<FileRecord> {
        // Latest removal per root by anyone as admin, and per (author, root) by that author.
        let mut by_admin: HashMap<Cid, u64> = HashMap::new();
        let mut by_author: HashMap<(PeerId, Cid), u64> = HashMap::new();
        for (_, e) in self.logs.values().flatten() {
            if let Op::Remove { root, admin } = &e.op {
                let t = if *admin {
                    by_admin.entry(*root).or_insert(e.at_ms)
                } else {
                    by_author.entry((e.author, *root)).or_insert(e.at_ms)
                };
                *t = (*t).max(e.at_ms);
            }
        }
        let mut added: HashMap<Cid, (u64, &FileRecord)> = HashMap::new();
        for (_, e) in self.logs.values().flatten() {
            let Op::Add(f) = &e.op else { continue };
            let removed = by_admin.get(&f.root).into_iter().chain(by_author.get(&(e.author, f.root))).max();
            if removed.is_some_and(|r| *r >= e.at_ms) {
                continue;
            }
            let slot = added.entry(f.root).or_insert((e.at_ms, f));
            if e.at_ms > slot.0 {
                *slot = (e.at_ms, f);
            }
        }
        let mut files: Vec<FileRecord> = added.into_values().map(|(_, f)| f.clone()).collect();
        files.sort_by_key(|f| (f.added_at, f.root.to_bytes()));
        files
    }

    /// When `root` was last removed from the catalog, if ever (milliseconds since the epoch).
    pub fn removed_at(&self, root: &Cid) -> Option<u64> {
        self.logs
            .values()
            .flatten()
            .filter_map(|(_, e)| match e.op {
                Op::Remove { root: r, .. } if r == *root => Some(e.at_ms),
                _ => None,
            })
            .max()
    }

    /// Whether anyone but `me` has a live add of `root` (removing it then takes an admin removal).
    pub fn added_by_others(&self, root: &Cid, me: &PeerId) -> bool {
        let mut state = self.clone();
        state.logs.remove(me);
        state.files().iter().any(|f| f.root == *root)
    }

    /// Whether any log has ever mentioned `root`.
    pub fn mentions(&self, root: &Cid) -> bool {
        self.logs.values().flatten().any(|(_, e)| e.op.root() == *root)
    }

    /// The entries of `author`'s log from `from` on, with their CIDs.
    pub fn entries(&self, author: &PeerId, from: u64) -> Vec<(Cid, Entry)> {
        self.logs.get(author).map(|l| l.iter().skip(from as usize).cloned().collect()).unwrap_or_default()
    }
}

/// Why an entry was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not a valid, signed entry.
    #[error(transparent)]
    Invalid(#[from] EntryError),
    /// Its author's log has a different entry at that position or a different previous entry: the author
    /// signed two histories. The first one seen is kept.
    #[error("author {author} signed two different entries at position {seq}; keeping the first")]
    Fork {
        /// The author.
        author: PeerId,
        /// The position.
        seq: u64,
    },
    /// Its author is not a member of the cluster (and no member's log it already holds is its).
    #[error("entry by {author}, who is not a member of the cluster")]
    NotAMember {
        /// The author.
        author: PeerId,
    },
    /// Entries before it are missing; fetch them first.
    #[error("entry {seq} of {author} arrived before entry {have}")]
    Gap {
        /// The author.
        author: PeerId,
        /// The entry's position.
        seq: u64,
        /// How many entries the log has.
        have: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::cid_of;

    fn file(name: &str) -> FileRecord {
        FileRecord {
            root: cid_of(name.as_bytes()),
            name: name.into(),
            size: 1,
            blocks: 1,
            added_at: 0,
            added_by: "n".into(),
        }
    }

    #[test]
    fn a_reader_replays_an_authors_log_in_order_and_converges() {
        let key = Keypair::generate_ed25519();
        let mut author = CatalogState::new();
        let (c0, b0) = author.append(&key, Op::Add(file("a")), 10);
        let (c1, b1) = author.append(&key, Op::Add(file("b")), 20);
        let (c2, b2) = author.append(&key, Op::Remove { root: file("a").root, admin: false }, 30);

        let mut reader = CatalogState::new();
        assert!(matches!(reader.apply(&c1, &b1), Err(ApplyError::Gap { seq: 1, have: 0, .. })));
        assert_eq!(reader.apply(&c0, &b0).unwrap().1, Applied::Appended);
        assert_eq!(reader.apply(&c0, &b0).unwrap().1, Applied::Known);
        reader.apply(&c1, &b1).unwrap();
        reader.apply(&c2, &b2).unwrap();
        assert_eq!(reader.heads(), author.heads());
        let names: Vec<String> = reader.files().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn a_second_history_from_the_same_author_is_refused() {
        let key = Keypair::generate_ed25519();
        let mut one = CatalogState::new();
        let mut two = CatalogState::new();
        let (c0, b0) = one.append(&key, Op::Add(file("a")), 10);
        let (d0, e0) = two.append(&key, Op::Add(file("x")), 10);
        let mut reader = CatalogState::new();
        reader.apply(&c0, &b0).unwrap();
        assert!(matches!(reader.apply(&d0, &e0), Err(ApplyError::Fork { seq: 0, .. })));
        assert_eq!(reader.files()[0].name, "a");
    }

    #[test]
    fn the_later_of_add_and_remove_wins_across_logs() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut s = CatalogState::new();
        let mut other = CatalogState::new();
        s.append(&k1, Op::Add(file("a")), 10);
        let (c, b) = other.append(&k2, Op::Remove { root: file("a").root, admin: true }, 20);
        s.apply(&c, &b).unwrap();
        assert!(s.files().is_empty(), "removed after it was added");
        s.append(&k1, Op::Add(file("a")), 30);
        assert_eq!(s.files().len(), 1, "added again after the removal");
        assert_eq!(s.removed_at(&file("a").root), Some(20));
    }

    #[test]
    fn a_members_removal_takes_only_its_own_adds_and_an_admin_removal_any() {
        let (k1, k2) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut s = CatalogState::new();
        let mut other = CatalogState::new();
        s.append(&k1, Op::Add(file("a")), 10);
        assert!(s.added_by_others(&file("a").root, &k2.public().to_peer_id()));
        assert!(!s.added_by_others(&file("a").root, &k1.public().to_peer_id()));
        let (c, b) = other.append(&k2, Op::Remove { root: file("a").root, admin: false }, 20);
        s.apply(&c, &b).unwrap();
        assert_eq!(s.files().len(), 1, "k2 cannot remove k1's file without being an admin");
        // k2 adds it too, then removes its own add: k1's stays.
        let (c, b) = other.append(&k2, Op::Add(file("a")), 30);
        s.apply(&c, &b).unwrap();
        let (c, b) = other.append(&k2, Op::Remove { root: file("a").root, admin: false }, 40);
        s.apply(&c, &b).unwrap();
        assert_eq!(s.files().len(), 1);
        // k1 removes its own add: gone.
        s.append(&k1, Op::Remove { root: file("a").root, admin: false }, 50);
        assert!(s.files().is_empty());
        // k1 adds it again; an admin removal by k2 takes it, and the log says who did it.
        s.append(&k1, Op::Add(file("a")), 60);
        let (c, b) = other.append(&k2, Op::Remove { root: file("a").root, admin: true }, 70);
        let (entry, _) = s.apply(&c, &b).unwrap();
        assert!(s.files().is_empty());
        assert_eq!(entry.author, k2.public().to_peer_id());
        assert_eq!(entry.op, Op::Remove { root: file("a").root, admin: true });
    }

    #[test]
    fn a_plain_removal_signs_the_same_bytes_as_before_the_admin_flag() {
        let key = Keypair::generate_ed25519();
        let mut s = CatalogState::new();
        let (_, plain) = s.append(&key, Op::Remove { root: file("a").root, admin: false }, 10);
        let (_, admin) = s.append(&key, Op::Remove { root: file("a").root, admin: true }, 20);
        let (plain, admin) = (String::from_utf8_lossy(&plain), String::from_utf8_lossy(&admin));
        assert!(!plain.contains("admin"), "{plain}");
        assert!(admin.contains(r#"\"admin\":true"#), "{admin}");
    }

    #[test]
    fn entries_of_non_members_and_forged_entries_are_refused() {
        let (member, outsider) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let member_id = member.public().to_peer_id();
        let is_member = |p: &PeerId| *p == member_id;
        let mut theirs = CatalogState::new();
        let (oc, ob) = theirs.append(&outsider, Op::Add(file("x")), 10);
        let mut reader = CatalogState::new();
        let refused = reader.apply_by(&oc, &ob, is_member);
        assert!(matches!(refused, Err(ApplyError::NotAMember { author }) if author == outsider.public().to_peer_id()));
        assert!(reader.files().is_empty() && reader.heads().is_empty(), "nothing of it was kept");

        let mut ours = CatalogState::new();
        let (mc, mb) = ours.append(&member, Op::Add(file("a")), 10);
        // Forged: the member's entry with its op changed after signing (under the CID of the new bytes, so only
        // the signature can catch it), and the same bytes under the original CID.
        let forged = edit_entry(&mb, r#""name":"a""#, r#""name":"z""#);
        let forged_cid = crate::entry::cid_of(&forged);
        assert!(matches!(reader.apply_by(&forged_cid, &forged, is_member), Err(ApplyError::Invalid(_))));
        assert!(matches!(reader.apply_by(&mc, &forged, is_member), Err(ApplyError::Invalid(_))));
        // An outsider's entry rewritten to name the member as its author does not verify either.
        let mut claim = CatalogState::new();
        let (_, cb) = claim.append(&outsider, Op::Add(file("y")), 10);
        let claimed = edit_entry(&cb, &outsider.public().to_peer_id().to_string(), &member_id.to_string());
        let claimed_cid = crate::entry::cid_of(&claimed);
        assert!(matches!(reader.apply_by(&claimed_cid, &claimed, is_member), Err(ApplyError::Invalid(_))));
        assert!(reader.files().is_empty());
        // The genuine entry goes in.
        reader.apply_by(&mc, &mb, is_member).unwrap();
        assert_eq!(reader.files()[0].name, "a");
    }

    /// The entry block `bytes` with `from` replaced by `to` inside the signed entry text, the signature kept.
    fn edit_entry(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        let mut wire: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        let text = wire["entry"].as_str().unwrap().to_string();
        assert!(text.contains(from), "{text}");
        wire["entry"] = serde_json::Value::String(text.replace(from, to));
        serde_json::to_vec(&wire).unwrap()
    }
}
