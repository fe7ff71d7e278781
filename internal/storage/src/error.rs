//! The errors of the block store, with messages an operator can act on.

use std::io;

use cid::Cid;

/// Everything that can go wrong in the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed; `context` names the operation and the path.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, with the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sled index failed.
    #[error("block index (sled) failed: {0}")]
    Index(#[from] sled::Error),
    /// A value in the index could not be decoded: the index is damaged.
    #[error("block index is damaged: {what}; restore the storage directory from a backup or re-add the files")]
    IndexDamaged {
        /// Which record was malformed.
        what: String,
    },
    /// Storing the block would exceed the configured capacity.
    #[error(
        "storage full: need {needed} bytes more but only {free} bytes free of {cap} capacity; \
         raise this node's capacity (`xnode resize NAME SIZE`, the dashboard or PUT /api/v1/storage; \
         XNODE_STORAGE_MAX only applies until a capacity is set at run time) or remove files",
        cap = human_bytes(*.capacity)
    )]
    Full {
        /// Bytes the refused put needed.
        needed: u64,
        /// Bytes still free (capacity minus stored and pending bytes).
        free: u64,
        /// The capacity in bytes.
        capacity: u64,
    },
    /// A stored block no longer matches its CID; it is never returned.
    #[error("block {cid} is corrupted on disk (its content no longer matches its hash); re-fetch it from a peer or re-add the file")]
    Corrupted {
        /// The block whose body failed verification.
        cid: Cid,
    },
    /// The CID uses a hash function this store cannot verify.
    #[error("block {cid} uses multihash code {code:#x}; only sha2-256 (0x12) and identity (0x00) are supported")]
    UnsupportedHash {
        /// The CID.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
    /// A block is larger than a pack entry can describe (4 GiB - 1).
    #[error("block {cid} is {len} bytes; blocks must be smaller than 4 GiB")]
    BlockTooLarge {
        /// The CID.
        cid: Cid,
        /// Its length in bytes.
        len: u64,
    },
    /// `unpin` was called for a root that is not pinned.
    #[error("{root} is not pinned; list pinned roots with `xnode ls`")]
    NotPinned {
        /// The root asked for.
        root: Cid,
    },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

/// Formats a byte count the way people say it: `10 GiB`, `1.5 MiB`, `512 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "unlimited".to_owned();
    }
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = bytes;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes & (scale - 1) == 0 {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 30), "10 GiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
        assert_eq!(human_bytes(u64::MAX), "unlimited");
    }

    #[test]
    fn full_message_says_what_to_do() {
        let e = StoreError::Full { needed: 262_144, free: 1000, capacity: 10 << 30 };
        assert_eq!(
            e.to_string(),
            "storage full: need 262144 bytes more but only 1000 bytes free of 10 GiB capacity; \
             raise this node's capacity (`xnode resize NAME SIZE`, the dashboard or PUT /api/v1/storage; \
             XNODE_STORAGE_MAX only applies until a capacity is set at run time) or remove files"
        );
    }
}
