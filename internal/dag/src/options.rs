//! How a file or directory becomes a DAG: the knobs of `ipfs add` that change CIDs, and Kubo's named profiles.

use std::fmt;
use std::str::FromStr;

/// Kubo's named import profiles (IPIP-499). Each fixes every knob that changes a CID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Profile {
    /// The historical default of `ipfs add`: CIDv0, dag-pb leaves, 256 KiB chunks, 174 links per node, directories
    /// sharded above 256 KiB of estimated link bytes.
    #[default]
    UnixfsV0_2015,
    /// CIDv1, raw leaves, 1 MiB chunks, 1024 links per node, directories sharded when their block would exceed 256 KiB.
    UnixfsV1_2025,
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unixfs-v0-2015" | "legacy-cid-v0" => Ok(Self::UnixfsV0_2015),
            "unixfs-v1-2025" => Ok(Self::UnixfsV1_2025),
            other => Err(format!("unknown profile {other:?}; use unixfs-v0-2015 or unixfs-v1-2025")),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnixfsV0_2015 => "unixfs-v0-2015",
            Self::UnixfsV1_2025 => "unixfs-v1-2025",
        })
    }
}

/// How a directory's size is estimated when deciding whether to shard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeEstimation {
    /// Sum over entries of name length + CID length (Kubo's legacy estimate).
    Links,
    /// The exact size of the directory block if it stayed flat.
    Block,
}

/// Every setting that decides the shape, and so the CIDs, of an imported DAG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOptions {
    /// 0 or 1. CIDv0 can only name sha2-256 dag-pb blocks.
    pub cid_version: u8,
    /// Store file bytes as raw blocks instead of wrapping each chunk in a UnixFS node.
    pub raw_leaves: bool,
    /// Bytes per leaf; 256 KiB by default.
    pub chunk_size: usize,
    /// Children per interior node of a file's balanced tree.
    pub max_links: usize,
    /// A directory whose estimated size is strictly above this many bytes becomes a HAMT.
    pub hamt_threshold: usize,
    /// Slots per HAMT shard (a power of two).
    pub hamt_fanout: usize,
    /// How the directory size above is estimated.
    pub size_estimation: SizeEstimation,
    /// Import dot-files when adding a directory (`ipfs add --hidden`).
    pub include_hidden: bool,
}

impl ImportOptions {
    /// The settings of a named profile.
    pub fn profile(profile: Profile) -> Self {
        match profile {
            Profile::UnixfsV0_2015 => Self {
                cid_version: 0,
                raw_leaves: false,
                chunk_size: 256 * 1024,
                max_links: 174,
                hamt_threshold: 256 * 1024,
                hamt_fanout: 256,
                size_estimation: SizeEstimation::Links,
                include_hidden: false,
            },
            Profile::UnixfsV1_2025 => Self {
                cid_version: 1,
                raw_leaves: true,
                chunk_size: 1024 * 1024,
                max_links: 1024,
                hamt_threshold: 256 * 1024,
                hamt_fanout: 256,
                size_estimation: SizeEstimation::Block,
                include_hidden: false,
            },
        }
    }

    /// Like `ipfs add --cid-version N`: version 1 also turns raw leaves on, as Kubo does.
    pub fn with_cid_version(mut self, version: u8) -> Self {
        self.cid_version = version;
        if version == 1 {
            self.raw_leaves = true;
        }
        self
    }

    /// Like `ipfs add --chunker size-N`: fixed-size chunks of `N` bytes (`size-262144` is the default's).
    pub fn with_chunker(mut self, chunker: &str) -> Result<Self, String> {
        let size = chunker
            .strip_prefix("size-")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| format!("chunker {chunker:?} is not size-N (fixed chunks of N bytes, e.g. size-262144)"))?;
        self.chunk_size = size;
        self.validate()?;
        Ok(self)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.cid_version > 1 {
            return Err(format!("CID version {} does not exist; use 0 or 1", self.cid_version));
        }
        if self.cid_version == 0 && self.raw_leaves {
            return Err("raw leaves need CIDv1; use --cid-version 1".into());
        }
        if self.chunk_size == 0 || self.chunk_size > crate::MAX_BLOCK_SIZE - 64 {
            return Err(format!("chunk size must be between 1 byte and {} bytes", crate::MAX_BLOCK_SIZE - 64));
        }
        if self.max_links < 2 {
            return Err("a node needs room for at least 2 links".into());
        }
        if !self.hamt_fanout.is_power_of_two() || !(8..=1024).contains(&self.hamt_fanout) {
            return Err("HAMT fanout must be a power of two between 8 and 1024".into());
        }
        Ok(())
    }
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self::profile(Profile::UnixfsV0_2015)
    }
}
