//! The node's persistent libp2p identity: an ed25519 keypair in a protobuf-encoded file (the same encoding Kubo
//! and rust-libp2p use), created on first start with mode 0600 so only the node's user can read it.

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::P2pError;

/// Reads the keypair at `path`, or makes a new ed25519 one and writes it there (mode 0600) when the file is absent.
pub fn load_or_create(path: &Path) -> Result<Keypair, P2pError> {
    let fail = |reason: String| P2pError::Identity { path: path.to_path_buf(), reason };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| fail(format!("cannot decode: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| fail(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            // Written to a temporary name and renamed, so a crash never leaves a half key that would change the
            // node's peer id on the next start.
            let tmp = path.with_extension("tmp");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(|e| fail(e.to_string()))?;
            file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| fail(e.to_string()))?;
            std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = load_or_create(&path).unwrap();
        let second = load_or_create(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn garbage_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(load_or_create(&path), Err(P2pError::Identity { .. })));
    }
}
