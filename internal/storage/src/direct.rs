//! Direct I/O (`O_DIRECT`) for pack data: the alignment it needs, a buffer that meets it in safe Rust, opening
//! pack files with or without it, and telling a file system's refusal from a real failure.
//!
//! A direct read or write moves bytes between the disk and our buffer without the page cache, so memory address,
//! length and file offset must all be multiples of [`ALIGN`]. Why the store bypasses the cache, and what it
//! measured, is in `docs/storage.md`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The alignment of direct I/O: 4 KiB covers 512-byte and 4 KiB logical sectors and the usual page size.
pub(crate) const ALIGN: usize = 4096;

/// `n` rounded down to a multiple of [`ALIGN`].
pub(crate) fn align_down(n: u64) -> u64 {
    n & !(ALIGN as u64 - 1)
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(crate) fn align_up(n: usize) -> usize {
    n.next_multiple_of(ALIGN)
}

/// Opens a pack file for reading and writing, with `O_DIRECT` if `direct`.
pub(crate) fn open(path: &Path, direct: bool, create: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create).truncate(false);
    if direct {
        refuse_in_tests()?;
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Whether `err` is a file system refusing direct I/O (`EINVAL`: it cannot do `O_DIRECT` at all, or not with our
/// alignment), after which the store uses the page cache instead, as opposed to a failure of the disk.
pub(crate) fn is_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}

/// Writes all of `bytes` at `offset`; with a direct file both must be aligned and `bytes` must lie in an
/// [`AlignedBuf`].
pub(crate) fn write_at(file: &File, direct: bool, bytes: &[u8], offset: u64) -> io::Result<()> {
    if direct {
        refuse_in_tests()?;
    }
    file.write_all_at(bytes, offset)
}

/// A byte buffer whose start is [`ALIGN`]-aligned, for direct I/O without `unsafe`: a `Vec` one alignment larger
/// than needed, used from the first aligned address in it. It holds `len` bytes, from the start.
pub(crate) struct AlignedBuf {
    mem: Vec<u8>,
    /// Where the aligned window starts in `mem`.
    start: usize,
    len: usize,
    capacity: usize,
}

impl AlignedBuf {
    /// An empty buffer for up to `capacity` bytes, rounded up to a multiple of [`ALIGN`].
    pub(crate) fn new(capacity: usize) -> AlignedBuf {
        let capacity = align_up(capacity.max(1));
        let mem = vec![0; capacity + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        AlignedBuf { mem, start, len: 0, capacity }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// The bytes held.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// The bytes held followed by zeros up to the next multiple of [`ALIGN`]: what a direct write of them sends.
    pub(crate) fn padded(&mut self) -> &[u8] {
        let end = self.start + align_up(self.len);
        self.mem[self.start + self.len..end].fill(0);
        &self.mem[self.start..end]
    }

    /// Copies as much of `data` as fits after the bytes held; returns how much.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity - self.len);
        let at = self.start + self.len;
        self.mem[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Replaces the contents with up to `len` bytes of `file` from `offset` (aligned), fewer if the file ends
    /// first; returns how many were read. `len` is rounded up to whole pages for the read.
    pub(crate) fn read_at(&mut self, file: &File, direct: bool, offset: u64, len: usize) -> io::Result<usize> {
        if direct {
            refuse_in_tests()?;
        }
        debug_assert!(!direct || align_down(offset) == offset);
        let window = &mut self.mem[self.start..self.start + align_up(len)];
        let mut done = 0;
        while done < len {
            match file.read_at(&mut window[done..], offset + done as u64) {
                Ok(0) => break,
                // A direct read stops short only at the end of the file; a read from an unaligned position would fail.
                Ok(n) if direct && n % ALIGN != 0 => {
                    done += n;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = done.min(len);
        Ok(self.len)
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests to make every direct open, read and write on this thread fail with `EINVAL`, as on a file
    /// system that refuses `O_DIRECT`.
    pub(crate) static REFUSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn refuse_in_tests() -> io::Result<()> {
    #[cfg(test)]
    if REFUSE.get() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_aligned_pads_with_zeros_and_slices_without_copying() {
        let mut buf = AlignedBuf::new(10_000);
        assert_eq!(buf.capacity(), 3 * ALIGN);
        assert_eq!(buf.filled().as_ptr() as usize % ALIGN, 0);
        assert_eq!(buf.push(&[7; 5000]), 5000);
        assert_eq!(buf.push(&[9; 8000]), 3 * ALIGN - 5000);
        assert!(buf.is_full());
        buf.clear();
        buf.push(&[1; 5]);
        let padded = buf.padded();
        assert_eq!(padded.len(), ALIGN);
        assert_eq!(&padded[..6], &[1, 1, 1, 1, 1, 0]);
        assert!(padded[5..].iter().all(|&b| b == 0), "stale bytes past the end are zeroed");
    }

    #[test]
    fn direct_read_past_the_end_of_the_file_returns_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![3; ALIGN + 100]).unwrap();
        let file = open(&path, true, false).unwrap();
        let mut buf = AlignedBuf::new(4 * ALIGN);
        assert_eq!(buf.read_at(&file, true, 0, 3 * ALIGN).unwrap(), ALIGN + 100);
        assert!(buf.filled().iter().all(|&b| b == 3));
        assert_eq!(buf.read_at(&file, true, ALIGN as u64, 50).unwrap(), 50);
        assert_eq!(buf.read_at(&file, true, 2 * ALIGN as u64, ALIGN).unwrap(), 0);
        REFUSE.set(true);
        assert!(is_refusal(&open(&path, true, false).unwrap_err()));
        assert!(is_refusal(&buf.read_at(&file, true, 0, 10).unwrap_err()));
        assert_eq!(buf.read_at(&file, false, 0, 10).unwrap(), 10, "buffered I/O is never refused");
        REFUSE.set(false);
    }
}
