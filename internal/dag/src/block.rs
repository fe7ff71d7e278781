//! Blocks and the CIDs that name them: sha2-256 multihashes, CIDv0 for dag-pb, CIDv1 for raw and dag-pb.

use bytes::Bytes;
use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

/// Multicodec of dag-pb blocks.
pub const DAG_PB: u64 = 0x70;
/// Multicodec of raw blocks (file bytes without a wrapper).
pub const RAW: u64 = 0x55;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the bytes themselves).
pub const IDENTITY: u64 = 0x00;

/// A content-addressed block: its bytes and the CID they hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The block's name.
    pub cid: Cid,
    /// The block's bytes.
    pub data: Bytes,
}

/// Why a block's bytes cannot be accepted under a CID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The bytes hash to something else.
    #[error("block {cid} does not match its content hash")]
    Mismatch {
        /// The CID that was asked for.
        cid: Cid,
    },
    /// The CID uses a hash function Xnode does not check.
    #[error("block {cid} uses multihash code {code:#x}; only sha2-256 (0x12) and identity are supported")]
    UnsupportedHash {
        /// The CID that was asked for.
        cid: Cid,
        /// Its multihash code.
        code: u64,
    },
}

fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    Multihash::wrap(SHA2_256, &digest).expect("a 32-byte digest fits a 64-byte multihash")
}

/// The CIDv0 of a dag-pb block.
pub fn cid_v0(data: &[u8]) -> Cid {
    Cid::new_v0(sha256_multihash(data)).expect("sha2-256 is valid for CIDv0")
}

/// The CIDv1 of a block with the given codec.
pub fn cid_v1(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, sha256_multihash(data))
}

/// Checks that `data` is what `cid` names. Cheap enough to run on every read and every received block.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), VerifyError> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.digest() == Sha256::digest(data).as_slice(),
        IDENTITY => mh.digest() == data,
        code => return Err(VerifyError::UnsupportedHash { cid: *cid, code }),
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch { cid: *cid })
    }
}

impl Block {
    /// Builds a block from bytes known to match `cid`, checking them first.
    pub fn verified(cid: Cid, data: Bytes) -> Result<Self, VerifyError> {
        verify(&cid, &data)?;
        Ok(Self { cid, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_cids() {
        // The empty raw block, as `ipfs add --cid-version 1` of an empty file prints it.
        assert_eq!(cid_v1(RAW, b"").to_string(), "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku");
        // The empty UnixFS directory.
        assert_eq!(cid_v0(&[0x0a, 0x02, 0x08, 0x01]).to_string(), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
    }

    #[test]
    fn verify_rejects_tampered_bytes() {
        let cid = cid_v1(RAW, b"hello");
        assert!(verify(&cid, b"hello").is_ok());
        assert_eq!(verify(&cid, b"hellp"), Err(VerifyError::Mismatch { cid }));
    }
}
