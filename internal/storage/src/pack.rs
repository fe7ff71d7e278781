//! Pack files: naming, punching holes, and measuring what they occupy on disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Path of pack `id` in `packs_dir`.
pub(crate) fn pack_path(packs_dir: &Path, id: u32) -> PathBuf {
    packs_dir.join(format!("pack-{id:010}.dat"))
}

/// The pack id in a file name made by [`pack_path`], if it is one.
pub(crate) fn parse_pack_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("pack-")?.strip_suffix(".dat")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Frees the disk blocks under `offset..offset + len` without changing the file's size.
#[cfg(target_os = "linux")]
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file` and open.
    let rc =
        unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Frees the disk blocks under a range; not available on this platform.
#[cfg(not(target_os = "linux"))]
pub(crate) fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `err` means the file system cannot punch holes at all (as opposed to a one-off failure).
pub(crate) fn is_unsupported(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Unsupported || err.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Bytes allocated on disk under `path` (a file, or a directory walked recursively), like `du -s`.
pub(crate) fn allocated_bytes(path: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(meta.blocks() * 512);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        match allocated_bytes(&entry?.path()) {
            Ok(n) => total += n,
            // A pack deleted while we walk is simply no longer there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_roundtrip() {
        let p = pack_path(Path::new("/x"), 12);
        assert_eq!(p, Path::new("/x/pack-0000000012.dat"));
        assert_eq!(parse_pack_name("pack-0000000012.dat"), Some(12));
        assert_eq!(parse_pack_name("pack-12.dat"), None);
        assert_eq!(parse_pack_name("pack-0000000012.dat.tmp"), None);
        assert_eq!(parse_pack_name(&format!("pack-{}.dat", u32::MAX)), Some(u32::MAX));
    }
}
