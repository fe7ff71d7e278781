//! Checking a block body against its CID.

use cid::Cid;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (the digest is the data itself).
const IDENTITY: u64 = 0x00;

/// Fails with `UnsupportedHash` unless the store can verify blocks named by `cid`.
pub(crate) fn check_supported(cid: &Cid) -> Result<(), StoreError> {
    match cid.hash().code() {
        SHA2_256 | IDENTITY => Ok(()),
        code => Err(StoreError::UnsupportedHash { cid: *cid, code }),
    }
}

/// Whether `data` is the block `cid` names. The caller has already called `check_supported`.
pub(crate) fn matches(cid: &Cid, data: &[u8]) -> bool {
    let mh = cid.hash();
    match mh.code() {
        SHA2_256 => Sha256::digest(data).as_slice() == mh.digest(),
        IDENTITY => data == mh.digest(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cid::multihash::Multihash;

    #[test]
    fn sha256_and_identity_verify_and_others_are_refused() {
        let data = b"hello";
        let sha = Cid::new_v1(0x55, Multihash::wrap(SHA2_256, &Sha256::digest(data)).unwrap());
        assert!(matches(&sha, data));
        assert!(!matches(&sha, b"hellp"));
        let id = Cid::new_v1(0x55, Multihash::wrap(IDENTITY, data).unwrap());
        check_supported(&id).unwrap();
        assert!(matches(&id, data));
        assert!(!matches(&id, b"x"));
        let blake = Cid::new_v1(0x55, Multihash::wrap(0x1e, &[0; 32]).unwrap());
        assert!(matches!(check_supported(&blake), Err(StoreError::UnsupportedHash { code: 0x1e, .. })));
    }
}
