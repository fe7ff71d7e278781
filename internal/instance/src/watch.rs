//! The watched folder (seed 001): files created or changed under `XNODE_WATCH_DIR` are added once they stop
//! changing, and from there the catalog and the allocation loop spread them like any other add.
//!
//! It polls rather than using inotify: polling works the same on bind mounts, network filesystems and Docker
//! volumes, and a scan of a folder of a few thousand files every couple of seconds costs little. A file counts as
//! settled when its size and modification time are the same in two scans in a row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::AddOptions;

/// What a file looked like at a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    modified: SystemTime,
}

/// Per path: what the last scan saw, and what was last added.
#[derive(Default, Debug)]
pub(crate) struct Watcher {
    last_scan: HashMap<PathBuf, Seen>,
    added: HashMap<PathBuf, Seen>,
}

impl Watcher {
    /// Takes one scan; returns the files that were the same in the previous scan and have not been added as such.
    fn settled(&mut self, scan: HashMap<PathBuf, Seen>) -> Vec<PathBuf> {
        let mut ready = Vec::new();
        for (path, seen) in &scan {
            if self.last_scan.get(path) == Some(seen) && self.added.get(path) != Some(seen) {
                ready.push(path.clone());
            }
        }
        self.last_scan = scan;
        ready.sort();
        ready
    }

    fn mark_added(&mut self, path: &Path) {
        if let Some(seen) = self.last_scan.get(path) {
            self.added.insert(path.to_path_buf(), *seen);
        }
    }
}

fn scan(dir: &Path) -> HashMap<PathBuf, Seen> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // editors' and downloaders' temporary files
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.insert(entry.path(), Seen { size: meta.len(), modified });
            }
        }
    }
    out
}

/// Scans `dir` every `interval` and adds settled files until `stop`.
pub(crate) async fn run(node: std::sync::Weak<Node>, dir: PathBuf, interval: Duration, stop: CancellationToken) {
    let mut watcher = Watcher::default();
    tracing::info!(dir = %dir.display(), "watching a folder for new files");
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(node) = node.upgrade() else { return };
        let d = dir.clone();
        let found = tokio::task::spawn_blocking(move || scan(&d)).await.unwrap_or_default();
        for path in watcher.settled(found) {
            match add(&node, &path).await {
                Ok(cid) => {
                    tracing::info!(path = %path.display(), %cid, "added from the watched folder");
                    watcher.mark_added(&path);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not add from the watched folder"),
            }
        }
    }
}

async fn add(node: &Arc<Node>, path: &Path) -> Result<cid::Cid, crate::InstanceError> {
    let path = path.to_path_buf();
    let (added, ()) = node
        .add_with(move |sink| {
            let (added, name) = crate::import_local(&path, &AddOptions::default(), &mut |_, _| {}, sink)?;
            Ok((added, name, ()))
        })
        .await?;
    Ok(added.cid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_once_unchanged_over_two_scans_and_again_after_a_change() {
        let mut w = Watcher::default();
        let p = PathBuf::from("/w/a");
        let at = |s: u64| Seen { size: s, modified: SystemTime::UNIX_EPOCH + Duration::from_secs(s) };
        assert!(w.settled([(p.clone(), at(1))].into()).is_empty(), "first sight: may still be growing");
        assert!(w.settled([(p.clone(), at(2))].into()).is_empty(), "it grew");
        assert_eq!(w.settled([(p.clone(), at(2))].into()), vec![p.clone()]);
        w.mark_added(&p);
        assert!(w.settled([(p.clone(), at(2))].into()).is_empty(), "already added");
        assert!(w.settled([(p.clone(), at(3))].into()).is_empty());
        assert_eq!(w.settled([(p.clone(), at(3))].into()), vec![p], "changed, then settled again");
    }
}
