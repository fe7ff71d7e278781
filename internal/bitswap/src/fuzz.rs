//! The Bitswap frame reader and message decoder fuzzed (see `fuzz_support.rs`), and every message that decodes
//! handed to the engine as a peer's message, as the handler does: nothing may panic.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use cid::Cid;
use futures::executor::block_on;
use libp2p::PeerId;

use crate::engine::{Action, Engine, Limits};
use crate::fuzz_support::fuzz;
use crate::message::{read_frame, BlockData, Message, Presence, Version, Want, WantType};
use crate::BlockStore;

#[derive(Default)]
struct Mem(Mutex<HashMap<Cid, Bytes>>);

impl BlockStore for Mem {
    fn has(&self, cid: &Cid) -> bool {
        self.0.lock().unwrap().contains_key(cid)
    }
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        self.0.lock().unwrap().get(cid).cloned()
    }
}

fn raw(data: &[u8]) -> (Cid, Bytes) {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(data);
    let mh = multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
    (Cid::new_v1(0x55, mh), Bytes::copy_from_slice(data))
}

/// Encoded messages of every kind and version: wantlists, blocks (1.0.0 and prefixed), presences.
fn seeds() -> Vec<Vec<u8>> {
    let (a, da) = raw(b"block a");
    let (b, db) = raw(&[7u8; 300]);
    let want = |cid, want_type, cancel| Want { cid, want_type, send_dont_have: true, cancel, priority: 1 };
    let messages = [
        Message {
            full: true,
            wants: vec![want(a, WantType::Block, false), want(b, WantType::Have, false)],
            ..Default::default()
        },
        Message { wants: vec![want(a, WantType::Block, true)], ..Default::default() },
        Message { blocks: vec![BlockData { cid: a, data: da }, BlockData { cid: b, data: db }], ..Default::default() },
        Message { presences: vec![(a, Presence::Have), (b, Presence::DontHave)], ..Default::default() },
    ];
    let mut out = Vec::new();
    for m in &messages {
        for v in [Version::V120, Version::V110, Version::V100] {
            out.push(m.encode(v));
        }
    }
    out
}

#[test]
fn bitswap_frames_and_messages_never_panic() {
    let seeds = seeds();
    let store = Mem::default();
    let (held, data) = raw(b"block a");
    store.0.lock().unwrap().insert(held, data);
    let limits = Limits { send_dont_have: true, max_wants_per_peer: 64, max_block_size: 2 << 20 };
    let mut engine = Engine::new(limits);
    let peer = PeerId::random();
    // Some of our own wants, so blocks and presences in the input meet a want now and then.
    engine.want(peer, &[held, raw(&[7u8; 300]).0], WantType::Block);
    fuzz("Bitswap Message::decode and Engine::on_message", 11, &seeds, |input| {
        let Ok(msg) = Message::decode(Bytes::copy_from_slice(input)) else { return };
        let _ = msg.estimated_len();
        let _ = msg.clone().split(1024);
        engine.on_message(peer, msg, &store);
        while let Some(action) = engine.next_action() {
            if let Action::Read(p, cids) = action {
                let blocks = cids.iter().map(|c| (*c, store.get(c))).collect();
                engine.blocks_read(p, blocks);
            }
        }
    });
    // Frames: a length prefix then that many bytes, read as the handler reads its streams.
    let framed: Vec<Vec<u8>> = seeds
        .iter()
        .map(|m| {
            let mut f = Vec::new();
            crate::message::put_uvarint(&mut f, m.len() as u64);
            f.extend_from_slice(m);
            f
        })
        .collect();
    fuzz("Bitswap read_frame", 12, &framed, |input| {
        let mut io = futures::io::Cursor::new(input.to_vec());
        while let Ok(Some(frame)) = block_on(read_frame(&mut io, 4096)) {
            let _ = Message::decode(Bytes::from(frame));
        }
    });
}
