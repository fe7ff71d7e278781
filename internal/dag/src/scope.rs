//! Which blocks a verifiable answer carries: resolving a content path (`/ipfs/{cid}/a/b`) through flat and
//! HAMT-sharded directories, and choosing the blocks under its end that a CAR holds, as the trustless gateway
//! specifies them (`dag-scope=block|entity|all`, `entity-bytes=from:to`, depth-first order, duplicates or not).
//!
//! Pure: blocks come from a [`BlockSource`] and go to a callback, in the order a client verifies them (a parent
//! before its children), so a response streams with memory bounded by the DAG's depth, plus, without duplicates,
//! the set of CIDs already sent.

use std::collections::HashSet;
use std::str::FromStr;

use bytes::Bytes;
use cid::Cid;

use crate::block::{Block, DAG_PB, IDENTITY, RAW};
use crate::dir::{murmur3_64, HAMT_MURMUR3};
use crate::pb::{DataType, PbNode};
use crate::reader::{block_links, decode, stat, BlockSource, NodeKind, ReadError};

/// How much of the DAG at the end of a path a CAR carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DagScope {
    /// Only the block at the end of the path.
    Block,
    /// What it takes to read that entity: a whole file, or a directory's own blocks (its HAMT shards) without its
    /// entries.
    Entity,
    /// The whole DAG under it (the default).
    #[default]
    All,
}

impl FromStr for DagScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(Self::Block),
            "entity" => Ok(Self::Entity),
            "all" => Ok(Self::All),
            other => Err(format!("dag-scope={other} is not one of block, entity, all")),
        }
    }
}

/// `entity-bytes=from:to`: a byte range of a file, inclusive, negative values counting from its end, `to = *`
/// (`None`) meaning its last byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityBytes {
    /// First byte (negative: from the end).
    pub from: i64,
    /// Last byte, inclusive (negative: from the end; `None`: the end).
    pub to: Option<i64>,
}

impl FromStr for EntityBytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("entity-bytes={s} is not FROM:TO (integers, negative from the end, TO may be *)");
        let (from, to) = s.split_once(':').ok_or_else(bad)?;
        let from: i64 = from.parse().map_err(|_| bad())?;
        let to = if to == "*" { None } else { Some(to.parse::<i64>().map_err(|_| bad())?) };
        if let Some(to) = to {
            // Both counted from the same end and in the wrong order: no file makes this a range.
            if (from >= 0) == (to >= 0) && to < from {
                return Err(format!("entity-bytes={s}: the range ends before it starts"));
            }
        }
        Ok(Self { from, to })
    }
}

impl EntityBytes {
    /// The inclusive byte range this means in a file of `size` bytes; `None` when it holds no byte of the file.
    pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        let size = i64::try_from(size).ok()?;
        let from = if self.from < 0 { (size + self.from).max(0) } else { self.from };
        let to = match self.to {
            None => size - 1,
            Some(t) if t < 0 => size + t,
            Some(t) => t.min(size - 1),
        };
        (size > 0 && from <= to && from < size).then_some((from as u64, to as u64))
    }
}

/// What a CAR carries under the end of its path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// How much of the DAG.
    pub scope: DagScope,
    /// Only the blocks of this byte range of a file (implies [`DagScope::Entity`]; ignored for non-files).
    pub bytes: Option<EntityBytes>,
    /// Send a block each time the walk meets it (`car-dups=y`), rather than once.
    pub dups: bool,
}

/// A content path resolved to the CID at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The CID the path ends at.
    pub cid: Cid,
    /// One CID per path segment, the root first and `cid` last (the gateway's `X-Ipfs-Roots`).
    pub roots: Vec<Cid>,
    /// The blocks read to get there, in order, not counting the last one: what a client needs to verify the path.
    pub path_blocks: Vec<Block>,
}

/// Follows `path` (names, already split and decoded) from `root` through directories, flat or HAMT-sharded. A HAMT
/// is searched by the name's hash, so only the shards on the way are read. An entry that does not exist is
/// [`ReadError::NoSuchEntry`].
pub fn resolve_path(source: &dyn BlockSource, root: &Cid, path: &[&str]) -> Result<Resolved, ReadError> {
    let mut resolved = Resolved { cid: *root, roots: vec![*root], path_blocks: Vec::new() };
    for name in path {
        let dir = resolved.cid;
        let no_entry = || ReadError::NoSuchEntry { cid: dir, name: name.to_string() };
        if dir.codec() != DAG_PB {
            return Err(no_entry());
        }
        let data = get(source, &dir)?;
        let (node, fs) = decode(&dir, &data)?;
        resolved.path_blocks.push(Block { cid: dir, data });
        let next = match fs.kind {
            DataType::Directory => node.links.iter().find(|l| l.name == *name).map(|l| l.cid),
            DataType::HamtShard => hamt_lookup(source, &dir, node, &fs, name, &mut resolved.path_blocks)?,
            _ => None,
        };
        resolved.cid = next.ok_or_else(no_entry)?;
        resolved.roots.push(resolved.cid);
    }
    Ok(resolved)
}

/// Finds `name` in the HAMT whose root shard is `node`, descending by the bits of the name's hash; shards read on
/// the way are pushed to `path_blocks`.
fn hamt_lookup(
    source: &dyn BlockSource,
    cid: &Cid,
    mut node: PbNode,
    fs: &crate::pb::UnixFsData,
    name: &str,
    path_blocks: &mut Vec<Block>,
) -> Result<Option<Cid>, ReadError> {
    let fanout = fs.fanout.ok_or(ReadError::Inconsistent { cid: *cid, what: "HAMT shard without fanout" })?;
    if fs.hash_type != Some(HAMT_MURMUR3) || !fanout.is_power_of_two() || fanout < 2 {
        return Err(ReadError::Inconsistent { cid: *cid, what: "HAMT with an unsupported hash or fanout" });
    }
    let bits = fanout.trailing_zeros();
    let pad = format!("{:X}", fanout - 1).len();
    let hash = u64::from_be_bytes(murmur3_64(name));
    let mut shard = *cid;
    for level in 0.. {
        let used = bits * (level + 1);
        if used > 64 {
            return Err(ReadError::Inconsistent { cid: shard, what: "HAMT deeper than its hash" });
        }
        let index = (hash >> (64 - used)) & (fanout - 1);
        let prefix = format!("{index:0pad$X}");
        let Some(link) = node.links.iter().find(|l| l.name.starts_with(&prefix)) else { return Ok(None) };
        if link.name.len() > pad {
            return Ok((link.name[pad..] == *name).then_some(link.cid));
        }
        shard = link.cid;
        let data = get(source, &shard)?;
        let (child, child_fs) = decode(&shard, &data)?;
        if child_fs.kind != DataType::HamtShard {
            return Err(ReadError::Inconsistent { cid: shard, what: "HAMT child is not a shard" });
        }
        path_blocks.push(Block { cid: shard, data });
        node = child;
    }
    unreachable!("the loop returns")
}

/// Hands `emit` the blocks a CAR for `resolved` carries under `selection`: the path's blocks, then the DAG under
/// its end as the scope says, depth-first, each parent before its children. Blocks named by identity CIDs are
/// never sent (their bytes are in the CID). Returns `false` if `emit` asked to stop (the client went away).
pub fn select_blocks(
    source: &dyn BlockSource,
    resolved: &Resolved,
    selection: &Selection,
    emit: &mut dyn FnMut(&Cid, &Bytes) -> bool,
) -> Result<bool, ReadError> {
    let mut out = Emitter { seen: HashSet::new(), dups: selection.dups, emit };
    for block in &resolved.path_blocks {
        if !out.send(&block.cid, &block.data) {
            return Ok(false);
        }
    }
    let root = resolved.cid;
    let scope = if selection.bytes.is_some() { DagScope::Entity } else { selection.scope };
    match scope {
        DagScope::Block => Ok(out.send(&root, &get(source, &root)?)),
        DagScope::All => walk_all(source, root, &mut out),
        DagScope::Entity => {
            if root.codec() != DAG_PB {
                return Ok(out.send(&root, &get(source, &root)?));
            }
            let data = get(source, &root)?;
            let (_, fs) = decode(&root, &data)?;
            match fs.kind {
                DataType::File | DataType::Raw => match selection.bytes {
                    None => walk_all(source, root, &mut out),
                    Some(bytes) => {
                        let NodeKind::File { size } = stat(source, &root)? else { unreachable!("a file node") };
                        match bytes.resolve(size) {
                            Some(range) => walk_range(source, root, range, &mut out),
                            None => Ok(out.send(&root, &data)),
                        }
                    }
                },
                DataType::HamtShard => walk_shards(source, root, &mut out),
                _ => Ok(out.send(&root, &data)),
            }
        }
    }
}

/// Sends blocks once each, or every time (`dups`), skipping identity CIDs.
struct Emitter<'a> {
    seen: HashSet<Cid>,
    dups: bool,
    emit: &'a mut dyn FnMut(&Cid, &Bytes) -> bool,
}

impl Emitter<'_> {
    fn send(&mut self, cid: &Cid, data: &Bytes) -> bool {
        if cid.hash().code() == IDENTITY || (!self.dups && !self.seen.insert(*cid)) {
            return true;
        }
        (self.emit)(cid, data)
    }
}

/// A block's bytes; an identity CID's are its digest.
fn get(source: &dyn BlockSource, cid: &Cid) -> Result<Bytes, ReadError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Bytes::copy_from_slice(cid.hash().digest()));
    }
    source.get_block(cid)
}

/// Every block under `root`, depth-first. Links of codecs other than dag-pb are not followed (their blocks are
/// sent, not decoded).
fn walk_all(source: &dyn BlockSource, root: Cid, out: &mut Emitter<'_>) -> Result<bool, ReadError> {
    let mut stack = vec![root];
    while let Some(cid) = stack.pop() {
        // Without duplicates a subtree already sent is complete on the client's side: no need to read it again.
        if !out.dups && out.seen.contains(&cid) {
            continue;
        }
        let data = get(source, &cid)?;
        if !out.send(&cid, &data) {
            return Ok(false);
        }
        if matches!(cid.codec(), DAG_PB | RAW) {
            stack.extend(block_links(&cid, &data)?.into_iter().rev());
        }
    }
    Ok(true)
}

/// A HAMT directory's shards, without its entries.
fn walk_shards(source: &dyn BlockSource, root: Cid, out: &mut Emitter<'_>) -> Result<bool, ReadError> {
    let mut stack = vec![root];
    while let Some(cid) = stack.pop() {
        let data = get(source, &cid)?;
        let (node, fs) = decode(&cid, &data)?;
        if !out.send(&cid, &data) {
            return Ok(false);
        }
        let pad = format!("{:X}", fs.fanout.unwrap_or(256).saturating_sub(1)).len();
        stack.extend(node.links.iter().rev().filter(|l| l.name.len() == pad).map(|l| l.cid));
    }
    Ok(true)
}

/// The blocks of a file that hold the bytes `from..=to`, with every interior node on their way: children whose
/// span (from the parent's `blocksizes`) misses the range are not read.
fn walk_range(
    source: &dyn BlockSource,
    root: Cid,
    (from, to): (u64, u64),
    out: &mut Emitter<'_>,
) -> Result<bool, ReadError> {
    let mut stack = vec![(root, 0u64)];
    while let Some((cid, start)) = stack.pop() {
        let data = get(source, &cid)?;
        if !out.send(&cid, &data) {
            return Ok(false);
        }
        if cid.codec() != DAG_PB {
            continue;
        }
        let (node, fs) = decode(&cid, &data)?;
        if node.links.is_empty() {
            continue;
        }
        if fs.blocksizes.len() != node.links.len() {
            return Err(ReadError::Inconsistent { cid, what: "blocksizes and links differ in number" });
        }
        let mut offset = start;
        let mut wanted = Vec::new();
        for (link, size) in node.links.iter().zip(&fs.blocksizes) {
            let end = offset + size; // exclusive
            if offset <= to && end > from {
                wanted.push((link.cid, offset));
            }
            offset = end;
        }
        stack.extend(wanted.into_iter().rev());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{import_file, import_file_single_threaded, DirectoryBuilder, ImportOptions};
    use std::collections::HashMap;

    struct Mem(HashMap<Cid, Bytes>);

    impl BlockSource for Mem {
        fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
            self.0.get(cid).cloned().ok_or(ReadError::NotFound(*cid))
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn collect(source: &Mem, resolved: &Resolved, selection: Selection) -> Vec<Cid> {
        let mut got = Vec::new();
        assert!(select_blocks(source, resolved, &selection, &mut |c, _| {
            got.push(*c);
            true
        })
        .unwrap());
        got
    }

    fn unresolved(cid: Cid) -> Resolved {
        Resolved { cid, roots: vec![cid], path_blocks: Vec::new() }
    }

    #[test]
    fn entity_bytes_parse_and_resolve() {
        let e = |s: &str| s.parse::<EntityBytes>();
        assert_eq!(e("0:*").unwrap().resolve(100), Some((0, 99)));
        assert_eq!(e("10:19").unwrap().resolve(100), Some((10, 19)));
        assert_eq!(e("-10:*").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(e("5:-10").unwrap().resolve(100), Some((5, 90)), "-1 is the last byte");
        assert_eq!(e("50:500").unwrap().resolve(100), Some((50, 99)));
        assert_eq!(e("-500:*").unwrap().resolve(100), Some((0, 99)));
        assert_eq!(e("100:*").unwrap().resolve(100), None, "wholly past the end");
        assert_eq!(e("0:*").unwrap().resolve(0), None, "an empty file");
        assert!(e("9:3").is_err() && e("x:1").is_err() && e("1").is_err());
    }

    /// A file of 20 chunks of 1000 bytes in a tree of at most 4 links per node.
    fn file() -> (Cid, Mem, Vec<Block>) {
        let opts = ImportOptions { chunk_size: 1000, max_links: 4, ..ImportOptions::default() }.with_cid_version(1);
        let mut blocks = Vec::new();
        let added = import_file(&opts, &pattern(20_000)[..], &mut blocks).unwrap();
        (added.cid, Mem(blocks.iter().map(|b| (b.cid, b.data.clone())).collect()), blocks)
    }

    #[test]
    fn scopes_and_ranges_of_a_file() {
        let (root, mem, blocks) = file();
        let r = unresolved(root);
        let all = collect(&mem, &r, Selection::default());
        assert_eq!(all.len(), blocks.len());
        assert_eq!(all[0], root, "depth-first: the root first");
        let leaves: Vec<Cid> = all.iter().copied().filter(|c| c.codec() == RAW).collect();
        assert_eq!(leaves.len(), 20);
        // Leaves come in file order (depth-first, links in order).
        let expected: Vec<Cid> = pattern(20_000).chunks(1000).map(|c| crate::block::cid_v1(RAW, c)).collect();
        assert_eq!(leaves, expected);

        assert_eq!(collect(&mem, &r, Selection { scope: DagScope::Block, ..Default::default() }), [root]);
        assert_eq!(collect(&mem, &r, Selection { scope: DagScope::Entity, ..Default::default() }), all);

        // Bytes 2500..=4200 lie in chunks 2, 3 and 4: only those leaves, and the interior nodes above them.
        let ranged = collect(&mem, &r, Selection { bytes: Some("2500:4200".parse().unwrap()), ..Default::default() });
        let got_leaves: Vec<Cid> = ranged.iter().copied().filter(|c| c.codec() == RAW).collect();
        assert_eq!(got_leaves, expected[2..5]);
        assert_eq!(ranged[0], root);
        // The last byte: one leaf.
        let last = collect(&mem, &r, Selection { bytes: Some("-1:*".parse().unwrap()), ..Default::default() });
        assert_eq!(last.iter().filter(|c| c.codec() == RAW).copied().collect::<Vec<_>>(), [expected[19]]);
        // Outside the file: the root alone, so the client can see the file's size.
        let outside = collect(&mem, &r, Selection { bytes: Some("30000:*".parse().unwrap()), ..Default::default() });
        assert_eq!(outside, [root]);
    }

    #[test]
    fn duplicates_are_sent_once_unless_asked() {
        // 8 identical chunks: one leaf CID, linked eight times.
        let opts = ImportOptions { chunk_size: 100, max_links: 4, ..ImportOptions::default() }.with_cid_version(1);
        let mut blocks = Vec::new();
        let added = import_file(&opts, &[9u8; 800][..], &mut blocks).unwrap();
        let mem = Mem(blocks.iter().map(|b| (b.cid, b.data.clone())).collect());
        let r = unresolved(added.cid);
        let once = collect(&mem, &r, Selection::default());
        let every = collect(&mem, &r, Selection { dups: true, ..Default::default() });
        assert_eq!(once.iter().filter(|c| c.codec() == RAW).count(), 1);
        assert_eq!(every.iter().filter(|c| c.codec() == RAW).count(), 8);
        let unique: HashSet<_> = once.iter().collect();
        assert_eq!(unique.len(), once.len());
    }

    fn directory(entries: usize, opts: &ImportOptions) -> (Cid, Mem, Vec<(String, Cid)>) {
        let mut blocks = Vec::new();
        let mut dir = DirectoryBuilder::new(opts);
        let mut names = Vec::new();
        for i in 0..entries {
            // Long names: fewer entries pass the 256 KiB sharding threshold.
            let name = format!("a-rather-long-file-name-so-that-fewer-entries-shard-{i:05}.txt");
            let added = import_file_single_threaded(opts, format!("content {i}").as_bytes(), &mut blocks).unwrap();
            names.push((name.clone(), added.cid));
            dir.add_entry(name, added);
        }
        let root = dir.build(&mut blocks).unwrap();
        (root.cid, Mem(blocks.iter().map(|b| (b.cid, b.data.clone())).collect()), names)
    }

    #[test]
    fn paths_resolve_through_flat_and_sharded_directories() {
        let opts = ImportOptions::default();
        for entries in [3, 3000] {
            let (root, mem, names) = directory(entries, &opts);
            let sharded = entries > 100;
            for (name, cid) in names.iter().step_by(499) {
                let r = resolve_path(&mem, &root, &[name]).unwrap();
                assert_eq!(r.cid, *cid);
                assert_eq!(r.roots, [root, *cid]);
                assert_eq!(r.path_blocks[0].cid, root);
                if sharded {
                    assert!(r.path_blocks.len() >= 2, "a lookup in a HAMT reads the shards on the way");
                    assert!(r.path_blocks.len() < 5, "and only those");
                }
                let car = collect(&mem, &r, Selection::default());
                assert_eq!(car.last(), Some(cid));
            }
            let err = resolve_path(&mem, &root, &["nope"]).unwrap_err();
            assert!(matches!(err, ReadError::NoSuchEntry { ref name, .. } if name == "nope"), "{err}");
            // Entity of a directory: its own blocks (the shards), none of its entries.
            let entity = collect(&mem, &unresolved(root), Selection { scope: DagScope::Entity, ..Default::default() });
            assert!(!entity.iter().any(|c| names.iter().any(|(_, n)| n == c)));
            assert_eq!(entity[0], root);
            if sharded {
                assert!(entity.len() > 1);
            }
        }
    }

    #[test]
    fn a_path_through_a_file_has_no_entry() {
        let (root, mem, _) = file();
        assert!(matches!(resolve_path(&mem, &root, &["x"]), Err(ReadError::NoSuchEntry { .. })));
    }

    #[test]
    fn the_walk_stops_when_told() {
        let (root, mem, _) = file();
        let mut n = 0;
        let done = select_blocks(&mem, &unresolved(root), &Selection::default(), &mut |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
        assert!(!done);
        assert_eq!(n, 3);
    }
}
