//! What a tar upload may contain. An archive is a directory tree described by someone else: its entry names are
//! checked, never silently rewritten (an entry that would be renamed or dropped is refused, naming it), and the
//! work and memory it can ask for are bounded. The bounds are documented in `docs/api.md`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Most entries (files, directories, symlinks) in one archive: a tree of 100,000 small files (and its folders)
/// fits. Each costs about 3 KB while the tree is built, so at most about 400 MB.
pub const MAX_TAR_ENTRIES: usize = 131_072;
/// Most path components of one entry: deeper trees are not a real directory layout.
pub const MAX_TAR_DEPTH: usize = 64;
/// Longest entry path or symlink target, in bytes (Linux's `PATH_MAX`).
pub const MAX_TAR_PATH: usize = 4096;
/// Most bytes of names and symlink targets in one archive, all entries together.
pub const MAX_TAR_METADATA: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    /// A file or a symlink: nothing may be under it.
    Leaf,
}

/// Checks entries one by one as the archive streams.
#[derive(Debug, Default)]
pub(crate) struct TarRules {
    seen: HashMap<PathBuf, Kind>,
    entries: usize,
    metadata: usize,
}

impl TarRules {
    /// The entry's path inside the tree (`./` prefixes dropped), `Ok(None)` for the archive's own `./`, or why it
    /// is refused. `link_len` is the length of a symlink's target (0 otherwise).
    pub(crate) fn check(&mut self, raw: &Path, directory: bool, link_len: usize) -> Result<Option<PathBuf>, String> {
        let shown = raw.display();
        self.entries += 1;
        if self.entries > MAX_TAR_ENTRIES {
            return Err(format!("{shown}: more than {MAX_TAR_ENTRIES} entries in one archive; upload it in parts"));
        }
        let len = raw.as_os_str().len();
        if len > MAX_TAR_PATH || link_len > MAX_TAR_PATH {
            return Err(format!("{shown}: a path or link target longer than {MAX_TAR_PATH} bytes"));
        }
        self.metadata += len + link_len;
        if self.metadata > MAX_TAR_METADATA {
            return Err(format!("{shown}: more than {MAX_TAR_METADATA} bytes of names in one archive"));
        }
        let mut path = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(name) => path.push(name),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("{shown}: an absolute path; archive relative paths (tar -C DIR .)"))
                }
                Component::ParentDir => return Err(format!("{shown}: `..` would leave the directory")),
            }
        }
        let depth = path.components().count();
        if depth == 0 {
            return Ok(None);
        }
        if depth > MAX_TAR_DEPTH {
            return Err(format!("{shown}: {depth} levels deep, more than {MAX_TAR_DEPTH}"));
        }
        for parent in path.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
            match self.seen.get(parent) {
                Some(Kind::Leaf) => {
                    return Err(format!("{shown}: under {}, which is a file or symlink", parent.display()))
                }
                Some(Kind::Directory) => break, // its own parents were checked when it was added
                None => {
                    self.seen.insert(parent.to_path_buf(), Kind::Directory);
                }
            }
        }
        let kind = if directory { Kind::Directory } else { Kind::Leaf };
        match self.seen.get(&path) {
            None => {
                self.seen.insert(path.clone(), kind);
            }
            Some(Kind::Directory) if kind == Kind::Directory => {}
            Some(Kind::Directory) => return Err(format!("{shown}: a file where the archive already has a directory")),
            Some(Kind::Leaf) => return Err(format!("{shown}: a second entry with this path")),
        }
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: &mut TarRules, path: &str, dir: bool) -> Result<Option<PathBuf>, String> {
        rules.check(Path::new(path), dir, 0)
    }

    #[test]
    fn names_are_refused_never_rewritten() {
        let mut r = TarRules::default();
        assert_eq!(check(&mut r, "./", true), Ok(None));
        assert_eq!(check(&mut r, "./d/a", false), Ok(Some(PathBuf::from("d/a"))));
        for (bad, why) in [
            ("d/a/b", "under d/a"),
            ("d/a", "second entry"),
            ("d", "a file where"),
            ("../x", "`..`"),
            ("d/../../x", "`..`"),
            ("/etc/passwd", "absolute"),
        ] {
            let e = check(&mut r, bad, false).unwrap_err();
            assert!(e.contains(bad) && e.contains(why), "{bad}: {e}");
        }
        assert!(check(&mut r, "d", true).is_ok(), "a directory entry after its children is fine");
        assert!(check(&mut r, "d/b", false).is_ok());
    }

    #[test]
    fn depth_entries_and_metadata_are_bounded() {
        let mut r = TarRules::default();
        let deep = vec!["a"; MAX_TAR_DEPTH + 1].join("/");
        assert!(check(&mut r, &deep, false).unwrap_err().contains("levels deep"));
        assert!(check(&mut r, &vec!["b"; MAX_TAR_DEPTH].join("/"), false).is_ok());
        assert!(check(&mut r, &"c".repeat(MAX_TAR_PATH + 1), false).unwrap_err().contains("longer"));
        let mut r = TarRules::default();
        for i in 0..MAX_TAR_ENTRIES {
            check(&mut r, &format!("f{i}"), false).unwrap();
        }
        assert!(check(&mut r, "one-more", false).unwrap_err().contains("entries"));
        let mut r = TarRules::default();
        let long = "n".repeat(4000);
        let e = (0..).find_map(|i| check(&mut r, &format!("{i}{long}"), false).err()).unwrap();
        assert!(e.contains("bytes of names"), "{e}");
    }
}
