//! CAR import and export over the local store (`xnode dag import/export`, `POST /api/v1/dag/import`): blocks in
//! from any CARv1 or CARv2, each verified against its CID, and roots pinned like an add; a DAG out as a CARv1.
//!
//! Import streams: blocks go to one store session as they are read (nothing is kept in memory but the current
//! block), committed once the CAR ends. Each root is then pinned in a session of its own that walks its DAG from
//! the store, so a pin counts exactly the blocks under its root and a root whose DAG the CAR does not complete is
//! reported, not pinned.

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;
use xnode_dag::car::{CarError, CarReader, CarWriter};
use xnode_dag::{BlockSource, NodeKind, ReadError, Resolved, Selection};
use xnode_storage::Pin;

use crate::{InstanceError, Repo};

/// What an import stored.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CarImport {
    /// Blocks read from the CAR (each verified).
    pub blocks: u64,
    /// Bytes of those blocks.
    pub bytes: u64,
    /// Every root the CAR's header lists.
    pub roots: Vec<ImportedRoot>,
}

/// One root of an imported CAR.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportedRoot {
    /// The root CID.
    pub cid: String,
    /// Whether it is now pinned (its whole DAG is in the store).
    pub pinned: bool,
    /// The name it is pinned under.
    pub name: String,
    /// Content bytes (a file's size; a directory's DAG size).
    pub size: u64,
    /// Why it was not pinned.
    pub error: Option<String>,
}

impl Repo {
    /// Stores every block of a CARv1 or CARv2 (each verified against its CID) and pins each root whose whole DAG
    /// is then in the store, under `name` (default: the root CID). A CAR with a bad block stores nothing.
    pub fn import_car(&self, input: impl Read, name: Option<&str>) -> Result<CarImport, InstanceError> {
        let mut reader = CarReader::new(input).map_err(car_error)?;
        let roots = reader.roots().to_vec();
        let mut writer = self.store().cached_writer();
        let mut out = CarImport::default();
        while let Some(block) = reader.next_block().map_err(car_error)? {
            writer.put(&block.cid, &block.data)?;
            out.blocks += 1;
            out.bytes += block.data.len() as u64;
        }
        writer.commit(None)?;
        for root in roots {
            let name = name.filter(|n| !n.is_empty()).map_or_else(|| root.to_string(), str::to_string);
            out.roots.push(match self.pin_complete(&root, &name) {
                Ok(size) => ImportedRoot { cid: root.to_string(), pinned: true, name, size, error: None },
                Err(e) => {
                    ImportedRoot { cid: root.to_string(), pinned: false, name, size: 0, error: Some(e.to_string()) }
                }
            });
        }
        Ok(out)
    }

    /// Pins `root` with every block of its DAG (all of which must be stored); returns its content size.
    pub(crate) fn pin_complete(&self, root: &Cid, name: &str) -> Result<u64, InstanceError> {
        let store = self.store();
        let mut writer = store.cached_writer();
        let mut stack = vec![*root];
        let mut seen = std::collections::HashSet::new();
        while let Some(cid) = stack.pop() {
            // Identity CIDs carry their bytes in the CID: nothing to store.
            if !seen.insert(cid) || cid.hash().code() == xnode_dag::IDENTITY {
                continue;
            }
            let data = self.get_block(&cid)?;
            // Already stored: the session only counts it for the pin (and protects it from a concurrent gc).
            writer.put(&cid, &data)?;
            stack.extend(xnode_dag::block_links(&cid, &data)?);
        }
        let size = match xnode_dag::stat(self, root)? {
            NodeKind::File { size } => size,
            NodeKind::Directory => xnode_dag::list_directory(self, root)?.iter().map(|e| e.tsize).sum(),
            NodeKind::Symlink { .. } => 0,
        };
        let added_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        writer.commit(Some(Pin { root: *root, name: name.to_string(), size, added_at }))?;
        Ok(size)
    }

    /// Writes the DAG under `root` as a CARv1 (root first, depth-first, each block once) to `out`.
    pub fn export_car(&self, root: &Cid, out: impl Write) -> Result<u64, InstanceError> {
        write_car(self, root, out)
    }
}

/// Writes the DAG under `root`, read from `source`, as a CARv1 to `out`; returns the blocks written.
pub fn write_car(source: &dyn BlockSource, root: &Cid, out: impl Write) -> Result<u64, InstanceError> {
    let write_err = |source| InstanceError::Write { path: "the CAR".into(), source };
    let mut car = CarWriter::new(out, &[*root]).map_err(write_err)?;
    let resolved = Resolved { cid: *root, roots: vec![*root], path_blocks: Vec::new() };
    let mut written = 0;
    let mut failed = None;
    xnode_dag::select_blocks(source, &resolved, &Selection::default(), &mut |cid, data| match car.write(cid, data) {
        Ok(()) => {
            written += 1;
            true
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    if let Some(e) = failed {
        return Err(write_err(e));
    }
    car.into_inner().flush().map_err(write_err)?;
    Ok(written)
}

fn car_error(e: CarError) -> InstanceError {
    match e {
        // A block that does not match its CID is the CAR's fault, as is a malformed CAR: both are bad uploads.
        e @ (CarError::Verify(_) | CarError::Header(_) | CarError::Version(_) | CarError::Section { .. }) => {
            InstanceError::BadUpload(format!("{e}"))
        }
        CarError::Io(e) => InstanceError::Read(ReadError::Source(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xnode_storage::StoreConfig;

    fn repo(dir: &std::path::Path) -> Repo {
        Repo::open(dir, StoreConfig::default()).unwrap()
    }

    /// Pseudo-random bytes (xorshift), so no two chunks are alike.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn export_then_import_into_another_store_round_trips_and_pins() {
        let tmp = tempfile::tempdir().unwrap();
        let src = repo(&tmp.path().join("a"));
        let data = pattern(900_000);
        let added = src.add_stream("f.bin", &data[..], &xnode_dag::ImportOptions::default()).unwrap();
        let mut car = Vec::new();
        let blocks = src.export_car(&added.cid, &mut car).unwrap();
        assert_eq!(blocks, 5, "4 leaves and a root");

        let dst = repo(&tmp.path().join("b"));
        let imported = dst.import_car(&car[..], Some("via-car")).unwrap();
        assert_eq!(imported.blocks, 5);
        assert_eq!(imported.roots.len(), 1);
        let root = &imported.roots[0];
        assert!(root.pinned, "{:?}", root.error);
        assert_eq!(
            (root.cid.as_str(), root.size, root.name.as_str()),
            (added.cid.to_string().as_str(), 900_000, "via-car")
        );
        let pin = dst.store().pin(&added.cid).unwrap().unwrap();
        assert_eq!(pin.name, "via-car");
        let mut out = Vec::new();
        dst.cat(&added.cid, 0, u64::MAX, &mut out).unwrap();
        assert!(out == data);
        // Removing the pin frees exactly the imported blocks.
        let freed = dst.remove(&added.cid).unwrap();
        assert_eq!(freed.blocks_deleted, 5);
    }

    #[test]
    fn an_incomplete_dag_is_stored_but_not_pinned_and_a_bad_block_stores_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = repo(&tmp.path().join("a"));
        let added = src.add_stream("f.bin", &pattern(600_000)[..], &xnode_dag::ImportOptions::default()).unwrap();
        let mut full = Vec::new();
        src.export_car(&added.cid, &mut full).unwrap();

        // Only the root block: the DAG is incomplete.
        let root_block = src.store().get(&added.cid).unwrap().unwrap();
        let mut partial = CarWriter::new(Vec::new(), &[added.cid]).unwrap();
        partial.write(&added.cid, &root_block).unwrap();
        let dst = repo(&tmp.path().join("b"));
        let imported = dst.import_car(&partial.into_inner()[..], None).unwrap();
        assert!(!imported.roots[0].pinned);
        assert!(imported.roots[0].error.as_deref().unwrap().contains("not available"), "{:?}", imported.roots[0]);
        assert!(dst.pins().unwrap().is_empty());

        // A flipped byte in the last block: refused, nothing new stored.
        let before = dst.stats().unwrap().blocks;
        let last = full.len() - 1;
        full[last] ^= 1;
        let err = dst.import_car(&full[..], None).unwrap_err();
        assert!(matches!(err, InstanceError::BadUpload(ref m) if m.contains("does not match")), "{err}");
        assert_eq!(dst.stats().unwrap().blocks, before);
    }
}
