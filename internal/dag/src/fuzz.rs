//! The dag-pb and UnixFS decoders and every reader over them, fuzzed (see `fuzz_support.rs`): a block of a real
//! file, directory, HAMT directory or symlink, mutated, stored under its own CID as a verifying store would, and
//! read as the root of a DAG whose other blocks are intact. Nothing may panic; errors are fine.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;
use cid::Cid;

use crate::fuzz_support::fuzz;
use crate::pb::{PbNode, UnixFsData};
use crate::{
    block_links, import_file, import_symlink, list_directory, stat, Block, BlockSource, DirectoryBuilder, FileReader,
    ImportOptions, ReadError, DAG_PB,
};

struct Blocks(HashMap<Cid, Bytes>);

impl BlockSource for Blocks {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        self.0.get(cid).cloned().ok_or(ReadError::NotFound(*cid))
    }
}

/// Blocks of a multi-level file, a plain directory, a HAMT-sharded directory and a symlink.
fn corpus() -> Vec<Block> {
    let opts =
        ImportOptions { chunk_size: 512, max_links: 4, hamt_threshold: 256, hamt_fanout: 8, ..Default::default() };
    let mut blocks: Vec<Block> = Vec::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = import_file(&opts, &data[..], &mut blocks).unwrap();
    let link = import_symlink(&opts, std::path::Path::new("../outside"), &mut blocks).unwrap();
    let mut small = DirectoryBuilder::new(&opts);
    small.add_entry("a.txt", file);
    small.add_entry("link", link);
    small.build(&mut blocks).unwrap();
    let mut big = DirectoryBuilder::new(&opts);
    for i in 0..40 {
        big.add_entry(format!("entry-{i}-é"), if i % 2 == 0 { file } else { link });
    }
    assert!(big.needs_sharding(), "the corpus has a HAMT directory");
    big.build(&mut blocks).unwrap();
    blocks
}

#[test]
fn dag_pb_and_unixfs_decoders_never_panic() {
    let blocks = corpus();
    let seeds: Vec<Vec<u8>> = blocks.iter().filter(|b| b.cid.codec() == DAG_PB).map(|b| b.data.to_vec()).collect();
    let mut data_seeds: Vec<Vec<u8>> = Vec::new();
    for s in &seeds {
        if let Some(d) = PbNode::decode(&Bytes::from(s.clone())).unwrap().data {
            data_seeds.push(d.to_vec());
        }
    }
    fuzz("dag-pb PbNode::decode", 1, &seeds, |input| {
        let _ = PbNode::decode(&Bytes::copy_from_slice(input));
    });
    fuzz("UnixFS Data::decode", 2, &data_seeds, |input| {
        let _ = UnixFsData::decode(&Bytes::copy_from_slice(input));
    });
}

#[test]
fn readers_of_a_mutated_root_never_panic() {
    let blocks = corpus();
    let store: HashMap<Cid, Bytes> = blocks.iter().map(|b| (b.cid, b.data.clone())).collect();
    let seeds: Vec<Vec<u8>> = blocks.iter().filter(|b| b.cid.codec() == DAG_PB).map(|b| b.data.to_vec()).collect();
    let mut source = Blocks(store);
    fuzz("UnixFS readers over a mutated root", 3, &seeds, |input| {
        let data = Bytes::copy_from_slice(input);
        let root = crate::cid_v1(DAG_PB, &data);
        // A mutation that changed nothing is an original block: keep it in the store afterwards.
        let fresh = source.0.insert(root, data.clone()).is_none();
        let _ = block_links(&root, &data);
        let _ = stat(&source, &root);
        let _ = list_directory(&source, &root);
        if let Ok(mut reader) = FileReader::open(&source, &root, 0, 1 << 20) {
            // Bounded: a file of the corpus is 20 kB; a mutated size claims more but has no more blocks.
            let mut out = Vec::new();
            let _ = (&mut reader).take(1 << 20).read_to_end(&mut out);
        }
        if let Ok(mut reader) = FileReader::open(&source, &root, 7_000, 300) {
            let _ = reader.read_to_end(&mut Vec::new());
        }
        if fresh {
            source.0.remove(&root);
        }
    });
}

/// The driver itself: a planted panic is found, shrunk and reported with its input, so a target that "never
/// panics" is a real finding and not a driver that swallows failures.
#[test]
fn the_fuzzer_reports_a_planted_panic_with_a_shrunk_input() {
    let seeds = vec![b"a valid encoding, give or take".to_vec()];
    let found = std::panic::catch_unwind(|| {
        fuzz("planted", 7, &seeds, |input| assert!(!input.contains(&0xff), "planted: a 0xff byte"));
    });
    let panic = found.expect_err("the fuzzer reports the planted panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("planted") && message.contains("(shrunk)"), "{message}");
    let hex = message.rsplit(' ').next().unwrap_or_default();
    assert!(hex.len() % 2 == 0 && hex.contains("ff"), "the input that failed, in hex: {message}");
}
