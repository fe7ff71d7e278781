//! Opening the sled index with a segment size that keeps its memory bounded, and moving an index written with
//! another segment size over to it.
//!
//! sled keeps, for every page written since it opened, bookkeeping that grows with the number of segments a
//! page's updates are spread over. With sled's default segment (its I/O buffer) of 512 KiB, random inserts make
//! that grow faster than the data: 4,194,304 keys of 40 bytes in batches of 1,024 left a process resident at
//! 9.5 GB with a 32 MiB cache. With 64 KiB segments the same run stays at 304 MB, and 1,048,576 keys at 165 MB
//! instead of 1.3 GB (docs/storage.md, "Memory of the index"). sled refuses to open a database with a segment size
//! other than the one it was created with, so an index from an earlier version is copied, tree by tree, into a
//! new one once, at start.

use std::path::{Path, PathBuf};

use crate::StoreError;

/// sled's segment size for the block index (see the module documentation).
pub(crate) const SEGMENT_SIZE: usize = 64 << 10;

/// The index's page cache.
const CACHE_BYTES: u64 = 32 << 20;

/// Keys copied per batch while moving an index over.
const COPY_BATCH: usize = 4096;

fn config(dir: &Path, segment_size: usize) -> sled::Config {
    sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).segment_size(segment_size)
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = format!("{what} {}", path.display());
    move |source| StoreError::io(context, source)
}

/// Opens the index in `dir` with [`SEGMENT_SIZE`], first finishing or undoing a move that a crash interrupted,
/// and moving over an index written with another segment size.
pub(crate) fn open_index(dir: &Path) -> Result<sled::Db, StoreError> {
    let new = sibling(dir, ".new");
    let old = sibling(dir, ".old");
    // A move renames `dir` to `.old`, then `.new` to `dir`, then deletes `.old`.
    if old.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&old).map_err(io("removing the moved index", &old))?;
        } else if new.exists() {
            std::fs::rename(&new, dir).map_err(io("finishing the index move to", dir))?;
            std::fs::remove_dir_all(&old).map_err(io("removing the moved index", &old))?;
        } else {
            std::fs::rename(&old, dir).map_err(io("restoring the index", dir))?;
        }
    }
    if new.exists() {
        // A copy that did not finish: the original is intact in `dir`.
        std::fs::remove_dir_all(&new).map_err(io("removing an unfinished index copy", &new))?;
    }
    match open_when_released(&config(dir, SEGMENT_SIZE)) {
        Err(sled::Error::Unsupported(msg)) if msg.contains("io buffer size") => {
            let was = msg.rsplit(' ').next().and_then(|n| n.trim().parse::<usize>().ok()).ok_or_else(|| {
                StoreError::IndexDamaged { what: format!("sled refused the index and named no segment size: {msg}") }
            })?;
            move_index(dir, &new, &old, was)?;
            Ok(open_when_released(&config(dir, SEGMENT_SIZE))?)
        }
        other => Ok(other?),
    }
}

/// Opens `config`'s database, waiting up to 5 s for a handle dropped a moment ago to let go of it: sled's flusher
/// thread holds the file lock a little longer than the last `Db`.
fn open_when_released(config: &sled::Config) -> sled::Result<sled::Db> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= give_up {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Copies every tree of the index in `dir` (segments of `was` bytes) into `new`, then swaps them.
fn move_index(dir: &Path, new: &Path, old: &Path, was: usize) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    tracing::info!(
        from = was,
        to = SEGMENT_SIZE,
        "moving the block index to {} KiB sled segments (bounded memory); this happens once",
        SEGMENT_SIZE >> 10
    );
    let keys = {
        let from = open_when_released(&config(dir, was))?;
        let to = config(new, SEGMENT_SIZE).open()?;
        let mut keys = 0u64;
        for name in from.tree_names() {
            let (src, dst) = (from.open_tree(&name)?, to.open_tree(&name)?);
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for item in src.iter() {
                let (k, v) = item?;
                batch.insert(k, v);
                in_batch += 1;
                if in_batch == COPY_BATCH {
                    dst.apply_batch(std::mem::take(&mut batch))?;
                    keys += in_batch as u64;
                    in_batch = 0;
                }
            }
            dst.apply_batch(batch)?;
            keys += in_batch as u64;
        }
        to.flush()?;
        keys
    };
    std::fs::rename(dir, old).map_err(io("setting aside the index", dir))?;
    std::fs::rename(new, dir).map_err(io("putting the moved index in place at", dir))?;
    std::fs::remove_dir_all(old).map_err(io("removing the moved index", old))?;
    tracing::info!(keys, seconds = started.elapsed().as_secs_f64(), "block index moved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(db: &sled::Db) {
        for i in 0u32..10_000 {
            db.insert(i.to_be_bytes(), &i.to_le_bytes()[..]).unwrap();
        }
        let t = db.open_tree("alloc").unwrap();
        t.insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }

    fn check(db: &sled::Db) {
        assert_eq!(db.len(), 10_000);
        for i in [0u32, 4095, 4096, 9_999] {
            assert_eq!(db.get(i.to_be_bytes()).unwrap().as_deref(), Some(&i.to_le_bytes()[..]));
        }
        assert_eq!(db.open_tree("alloc").unwrap().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn an_index_with_default_segments_is_moved_over_with_every_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("index");
        // sled's own default segment size, as every index before bounded segments was written.
        fill(&sled::Config::new().path(&dir).open().unwrap());
        let db = open_index(&dir).unwrap();
        check(&db);
        drop(db);
        assert!(!sibling(&dir, ".new").exists() && !sibling(&dir, ".old").exists());
        // Now in the new size: the plain open works and no move happens again.
        check(&open_when_released(&config(&dir, SEGMENT_SIZE)).unwrap());
        check(&open_index(&dir).unwrap());
    }

    #[test]
    fn a_move_cut_short_by_a_crash_is_finished_or_undone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("index");
        let (new, old) = (sibling(&dir, ".new"), sibling(&dir, ".old"));

        // Crash during the copy: the original is intact, the half copy is dropped.
        fill(&sled::Config::new().path(&dir).open().unwrap());
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("db"), b"half").unwrap();
        check(&open_index(&dir).unwrap());

        // Crash between the two renames: the copy is put in place.
        let copy = tmp.path().join("copy");
        fill(&config(&copy, SEGMENT_SIZE).open().unwrap());
        std::fs::rename(&dir, &old).unwrap();
        std::fs::rename(&copy, &new).unwrap();
        check(&open_index(&dir).unwrap());
        assert!(!old.exists() && !new.exists());

        // Crash after setting the original aside and losing the copy: the original comes back.
        std::fs::rename(&dir, &old).unwrap();
        check(&open_index(&dir).unwrap());
        assert!(!old.exists());
    }
}
