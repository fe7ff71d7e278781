//! The CAR specification's fixtures (written by go-car/js-car, see `fixtures/car/PROVENANCE`): read with
//! `xnode_dag::car`, every block verified, and the CARv1 written back byte for byte.

use std::path::Path;

use cid::Cid;
use xnode_dag::car::{CarReader, CarWriter};

fn fixture(name: &str) -> (Vec<u8>, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/car");
    let car = std::fs::read(dir.join(format!("{name}.car"))).unwrap();
    let json = serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    (car, json)
}

fn cids(list: &serde_json::Value) -> Vec<Cid> {
    list.as_array().unwrap().iter().map(|c| Cid::try_from(c["/"].as_str().unwrap()).unwrap()).collect()
}

#[test]
fn carv1_basic_reads_and_is_rewritten_byte_for_byte() {
    let (car, json) = fixture("carv1-basic");
    let mut reader = CarReader::new(&car[..]).unwrap();
    assert_eq!(reader.version(), 1);
    assert_eq!(reader.roots(), cids(&json["header"]["roots"]));
    let blocks: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    let expected: Vec<Cid> = json["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cid"].clone())
        .map(|c| Cid::try_from(c["/"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(blocks.iter().map(|b| b.cid).collect::<Vec<_>>(), expected);
    for (block, meta) in blocks.iter().zip(json["blocks"].as_array().unwrap()) {
        assert_eq!(block.data.len() as u64, meta["blockLength"].as_u64().unwrap());
    }

    let mut writer = CarWriter::new(Vec::new(), &cids(&json["header"]["roots"])).unwrap();
    for b in &blocks {
        writer.write(&b.cid, &b.data).unwrap();
    }
    assert!(writer.into_inner() == car, "our CARv1 differs from the spec's fixture");
}

#[test]
fn carv2_basic_reads_its_payload() {
    let (car, json) = fixture("carv2-basic");
    let mut reader = CarReader::new(&car[..]).unwrap();
    assert_eq!(reader.version(), 2);
    assert_eq!(reader.roots(), cids(&json["header"]["roots"]));
    let blocks: Vec<_> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    let expected: Vec<Cid> = json["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cid"].clone())
        .map(|c| Cid::try_from(c["/"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(blocks.iter().map(|b| b.cid).collect::<Vec<_>>(), expected);
}

#[test]
fn a_flipped_byte_in_a_fixture_is_caught() {
    let (mut car, _) = fixture("carv1-basic");
    let last = car.len() - 1;
    car[last] ^= 0x01;
    let result: Result<Vec<_>, _> = CarReader::new(&car[..]).unwrap().collect();
    assert!(result.is_err(), "a tampered block was accepted");
}
