//! The catalog survives a restart and replays into the same state.

use libp2p_identity::Keypair;
use xnode_catalog::{Catalog, FileRecord, Op};

#[test]
fn entries_survive_reopen_and_fetched_ones_too() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519();
    let root = xnode_dag::cid_v1(xnode_dag::RAW, b"x");
    let record = FileRecord { root, name: "x".into(), size: 1, blocks: 1, added_at: 5, added_by: "n1".into() };

    let mut remote = Catalog::open(&dir.path().join("remote")).unwrap();
    let (rc, rb) = remote.append(&other, Op::Add(record.clone()), 7).unwrap();

    let path = dir.path().join("local");
    {
        let mut catalog = Catalog::open(&path).unwrap();
        catalog.append(&key, Op::Add(record.clone()), 5).unwrap();
        catalog.apply(&rc, &rb).unwrap();
        catalog.flush().unwrap();
    }
    let catalog = Catalog::open(&path).unwrap();
    assert_eq!(catalog.state().total_entries(), 2);
    assert_eq!(catalog.state().heads().len(), 2);
    assert_eq!(catalog.state().files(), vec![record]);
}
