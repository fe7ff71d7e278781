//! The fault matrix on loopback: `xnode run` processes, faults injected from outside as an operator (or a disk)
//! would, and every scenario checked the same way: the bytes read from every survivor (sha256 against the file
//! added) and the replication health every member reports, with the time to recover printed.
//!
//! Faults here: a flipped byte in one member's pack file (a leaf and an interior block, found by a read or by the
//! scrub), a read of a file whose blocks are gone (honest failures: before the headers, or cut short of the
//! Content-Length, and `xnode cat` exiting non-zero naming the CID), kill -9 of a member during an upload to
//! another, two members killed one after the other at RF 2, a member whose store fills up while it reads a file
//! larger than its capacity. Faults that need a network between hosts (a 3/2
//! partition, `docker restart`) are the containers tier's.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod support;

use support::{random_bytes, RunningNode};

const TOKEN: &str = "t";

fn get_json(node: &RunningNode, path: &str) -> serde_json::Value {
    match ureq::get(&node.url(path)).timeout(Duration::from_secs(10)).call() {
        Ok(r) => r.into_json().unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

fn start(dir: &Path, name: &str, seed: &str, extra: &[(&str, &str)]) -> RunningNode {
    let mut env = vec![
        ("XNODE_ADMIN_TOKEN", TOKEN),
        ("XNODE_KNOWN_PEERS", seed),
        ("XNODE_LOG", "info"),
        ("XNODE_FETCH_TIMEOUT", "20s"),
    ];
    env.extend_from_slice(extra);
    RunningNode::start(dir, name, &env)
}

/// XNODE_KEEP_TEST_DIR=1 keeps the nodes' data and logs (`<dir>/<name>.log`) for a post-mortem.
fn keep_dir(tmp: tempfile::TempDir) -> (Option<tempfile::TempDir>, PathBuf) {
    if std::env::var_os("XNODE_KEEP_TEST_DIR").is_some() {
        let kept = tmp.keep();
        eprintln!("test dir kept at {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    }
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// Adds `data` on `node` as a file; its root CID.
fn add(node: &RunningNode, data: &[u8]) -> String {
    let response = ureq::post(&node.url("/api/v1/files?name=payload.bin"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(data)
        .unwrap();
    response.into_json::<serde_json::Value>().unwrap()["cid"].as_str().unwrap().to_string()
}

/// The file's blocks as `add` builds them: (CID, bytes), leaves first, root last.
fn dag_of(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut blocks: Vec<xnode_dag::Block> = Vec::new();
    xnode_dag::import_file_single_threaded(&xnode_dag::ImportOptions::default(), data, &mut blocks).unwrap();
    blocks.into_iter().map(|b| (b.cid.to_string(), b.data.to_vec())).collect()
}

/// Every block the node holds for the cluster, paged through `/api/v1/blocks`.
fn held(node: &RunningNode) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut after = String::new();
    loop {
        let url = node.url(&format!(
            "/api/v1/blocks?limit=10000{}",
            if after.is_empty() { String::new() } else { format!("&after={after}") }
        ));
        let Ok(r) = ureq::get(&url).timeout(Duration::from_secs(10)).call() else { return out };
        let v: serde_json::Value = r.into_json().unwrap_or_default();
        let page: Vec<String> =
            v["held"]["cids"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(String::from)).collect();
        let Some(last) = page.last().cloned() else { return out };
        out.extend(page);
        after = last;
    }
}

/// Flips one byte in the middle of `block`'s bytes in the node's pack files, as a failing disk would. Found by
/// content: the store keeps block bodies as they are, so the bytes are in a pack somewhere. False if not found.
fn flip(node: &RunningNode, block: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let packs = node.data.join("store").join("packs");
    for entry in std::fs::read_dir(&packs).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = find(&bytes, block) {
            let pos = at + block.len() / 2;
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(&[bytes[pos] ^ 0x5a], pos as u64).unwrap();
            f.sync_all().unwrap();
            return true;
        }
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()].iter().position(|b| *b == first) {
            None => return None,
            Some(off) => {
                i += off;
                if hay[i..i + needle.len()] == *needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// The file's bytes through the API; `Err` with what went wrong if the transfer did not complete.
fn download(node: &RunningNode, root: &str) -> Result<Vec<u8>, String> {
    let response = ureq::get(&node.url(&format!("/api/v1/files/{root}?timeout=30")))
        .timeout(Duration::from_secs(60))
        .call()
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(body)
}

/// Whether every node sees `names` alive and every block of `root` at the replication factor.
fn healthy(nodes: &[&RunningNode], names: &[&str], root: &str) -> bool {
    nodes.iter().all(|n| {
        let members = get_json(n, "/api/v1/members");
        let mut alive: Vec<String> = members
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "Alive")
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect();
        alive.sort();
        let files = get_json(n, "/api/v1/files");
        alive == names
            && files.as_array().into_iter().flatten().any(|f| {
                let h = &f["health"];
                f["root"] == root && h["blocks"].as_u64() > Some(0) && h["at_rf"] == h["blocks"] && h["missing"] == 0
            })
    })
}

fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn scrub(node: &RunningNode) -> serde_json::Value {
    get_json(node, "/api/v1/status")["scrub"].clone()
}

fn bans_in_logs(dir: &Path, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.join(format!("{n}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("banning peer"))
                .map(|l| format!("{n}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A three-member cluster at RF 2 holding a 3 MiB file (12 leaves and a root), settled.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<RunningNode>,
    data: Vec<u8>,
    root: String,
    blocks: Vec<(String, Vec<u8>)>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn cluster(dir: PathBuf, extra: &[(&str, &str)], size: usize, seed: u64) -> Cluster {
    let a = start(&dir, "a", "", extra);
    let b = start(&dir, "b", &a.gossip, extra);
    let c = start(&dir, "c", &a.gossip, extra);
    let nodes = vec![a, b, c];
    wait_until(Duration::from_secs(30), "three members see each other", || {
        nodes.iter().all(|n| get_json(n, "/api/v1/status")["members_alive"] == 3)
    });
    let data = random_bytes(size, seed);
    let root = add(&nodes[0], &data);
    let blocks = dag_of(&data);
    assert_eq!(blocks.last().map(|b| b.0.as_str()), Some(root.as_str()));
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    let took =
        wait_until(Duration::from_secs(60), "the file at RF 2 on every member", || healthy(&refs, &NAMES, &root));
    eprintln!("settled at RF 2 in {took:?}");
    Cluster { dir, nodes, data, root, blocks }
}

/// A flipped byte in one member's copy of a leaf and of the root (an interior block, which every member holds):
/// a read elsewhere never gets the bad bytes (the holder's server checks what it sends), the holder's own read
/// repairs both from the others and returns the right bytes, the copy is held again, health is back at RF 2 on
/// every member, and nobody was banned.
#[test]
fn a_corrupted_leaf_and_root_are_never_served_and_are_repaired_on_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    // No scrub during the test: the read must find it.
    let c = cluster(dir, &[("XNODE_SCRUB_INTERVAL", "365d")], 3 << 20, 14);
    let want = sha(&c.data);
    let holdings: Vec<HashSet<String>> = c.nodes.iter().map(held).collect();
    // A leaf held by a and not by some other member x (RF 2 of 3: each leaf misses one member).
    let (leaf, leaf_bytes) = c.blocks[..c.blocks.len() - 1]
        .iter()
        .find(|(cid, _)| holdings[0].contains(cid) && !(holdings[1].contains(cid) && holdings[2].contains(cid)))
        .expect("a holds some leaves")
        .clone();
    let outsider = if holdings[1].contains(&leaf) { 2 } else { 1 };
    let (root_bytes, a) = (&c.blocks.last().unwrap().1, &c.nodes[0]);
    assert!(flip(a, &leaf_bytes), "the leaf is in a's packs");
    assert!(flip(a, root_bytes), "the root is in a's packs");
    let flipped = Instant::now();

    // The member without the leaf reads the file: a's server finds its copy bad, says "don't have" and reports it;
    // the other holder sends a good one.
    let body = download(&c.nodes[outsider], &c.root).expect("the outsider reads the whole file");
    assert_eq!(sha(&body), want, "the outsider got the right bytes");

    // a's own read: the root and the leaf are corrupt here, fetched again from the others, verified, replaced.
    let body = download(a, &c.root).expect("the corrupted member reads the whole file");
    assert_eq!(sha(&body), want, "the corrupted member got the right bytes");

    // Every survivor serves the right bytes, the CLI included.
    for n in &c.nodes {
        assert_eq!(sha(&download(n, &c.root).unwrap()), want);
        let out = Command::new(env!("CARGO_BIN_EXE_xnode")).args(["--api", &n.api, "cat", &c.root]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(sha(&out.stdout), want);
    }
    let refs: Vec<&RunningNode> = c.nodes.iter().collect();
    let recovered = wait_until(Duration::from_secs(30), "a's copies repaired and health at RF 2", || {
        let s = scrub(a);
        s["repaired_total"].as_u64() >= Some(2) && held(a).contains(&leaf) && healthy(&refs, &NAMES, &c.root)
    });
    let s = scrub(a);
    assert!(s["corrupt_total"].as_u64() >= Some(2), "{s}");
    assert_eq!(s["repair_failed_total"], 0, "{s}");
    // Repaired for good: the pack holds the good bytes again, and a checked read on a finds them.
    assert_eq!(sha(&download(a, &c.root).unwrap()), want);
    assert!(bans_in_logs(&c.dir, &NAMES).is_empty(), "nobody is banned: {:?}", bans_in_logs(&c.dir, &NAMES));
    eprintln!(
        "corrupted leaf and root on one member: detected on read, never served; recovered (health at RF 2 on every \
         member) {:?} after the flip ({recovered:?} after the last read)",
        flipped.elapsed()
    );
}

/// The scrub finds a flipped byte nobody reads, and the copy is repaired and held again; its progress shows in the
/// status, the metrics and the dashboard.
#[test]
fn the_scrub_finds_and_repairs_a_corrupted_copy_nobody_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let c = cluster(dir, &[("XNODE_SCRUB_INTERVAL", "2s"), ("XNODE_SCRUB_RATE", "unlimited")], 2 << 20, 15);
    let b = &c.nodes[1];
    let mine = held(b);
    let (leaf, bytes) =
        c.blocks[..c.blocks.len() - 1].iter().find(|(cid, _)| mine.contains(cid)).expect("b holds leaves").clone();
    wait_until(Duration::from_secs(20), "a first scrub pass", || scrub(b)["passes"].as_u64() >= Some(1));
    assert!(flip(b, &bytes));
    let flipped = Instant::now();
    let refs: Vec<&RunningNode> = c.nodes.iter().collect();
    wait_until(Duration::from_secs(30), "the scrub repairs b's copy", || {
        scrub(b)["repaired_total"].as_u64() >= Some(1) && held(b).contains(&leaf)
    });
    let repaired = flipped.elapsed();
    wait_until(Duration::from_secs(30), "health at RF 2 everywhere", || healthy(&refs, &NAMES, &c.root));
    let s = scrub(b);
    assert_eq!(s["corrupt_total"], 1, "{s}");
    assert!(s["blocks_checked"].as_u64() > Some(0), "{s}");
    let metrics = ureq::get(&b.url("/metrics")).call().unwrap().into_string().unwrap();
    assert!(metrics.contains("xnode_scrub{figure=\"repaired_total\"} 1"), "{metrics}");
    let page = ureq::get(&b.url("/ui/wanted")).call().unwrap().into_string().unwrap();
    assert!(page.contains("scrub: "), "{page}");
    for n in &c.nodes {
        assert_eq!(sha(&download(n, &c.root).unwrap()), sha(&c.data));
    }
    assert!(bans_in_logs(&c.dir, &NAMES).is_empty());
    eprintln!("flipped byte to repaired copy by the scrub (2 s interval, unlimited rate): {repaired:?}");
}

/// Reads that cannot complete never look like success: a root nobody has fails before the headers with a JSON
/// error; a file whose middle block is corrupted on its only holder starts (the first chunk is there) and is cut
/// short of its Content-Length; `xnode cat` exits non-zero naming the file.
#[test]
fn reads_that_cannot_complete_fail_visibly() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let n = start(&dir, "solo", "", &[("XNODE_SCRUB_INTERVAL", "365d")]);
    wait_until(Duration::from_secs(20), "the node is up", || get_json(&n, "/api/v1/status")["name"] == "solo");
    let data = random_bytes(2 << 20, 16);
    let root = add(&n, &data);
    let blocks = dag_of(&data);

    // A root that exists nowhere: an error status with a JSON body naming it, before any byte.
    let nowhere = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    match ureq::get(&n.url(&format!("/api/v1/files/{nowhere}?timeout=1"))).call() {
        Err(ureq::Error::Status(code, r)) => {
            assert!(code >= 400, "{code}");
            let body: serde_json::Value = r.into_json().unwrap();
            assert!(body["error"].as_str().unwrap().contains(nowhere), "{body}");
        }
        other => panic!("a missing root must fail before the headers: {other:?}"),
    }

    // The fifth of eight leaves corrupted on the only member: no good copy anywhere.
    assert!(flip(&n, &blocks[4].1));
    let response = ureq::get(&n.url(&format!("/api/v1/files/{root}?timeout=2"))).call().expect("the file starts");
    let length: usize = response.header("Content-Length").unwrap().parse().unwrap();
    assert_eq!(length, data.len());
    let mut body = Vec::new();
    let result = response.into_reader().read_to_end(&mut body);
    assert!(result.is_err(), "a body cut short must be an error, not a clean end ({} of {length} bytes)", body.len());
    assert!(body.len() < length);
    assert_eq!(body[..], data[..body.len()], "what came is right");

    // The CLI: non-zero, naming the file.
    let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--api", &n.api, "cat", "--timeout", "2", &root])
        .output()
        .unwrap();
    assert!(!out.status.success(), "cat must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&root), "{err}");

    // The root itself corrupted, with no good copy: fails before the headers, naming the block.
    assert!(flip(&n, &blocks.last().unwrap().1));
    match ureq::get(&n.url(&format!("/api/v1/files/{root}?timeout=2"))).call() {
        Err(ureq::Error::Status(code, r)) => {
            assert!(code >= 500, "{code}");
            let body: serde_json::Value = r.into_json().unwrap();
            assert!(body["error"].as_str().unwrap().contains(&root), "{body}");
        }
        other => panic!("a corrupted root must fail before the headers: {other:?}"),
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--api", &n.api, "cat", "--timeout", "2", &root])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&root));
}

/// Two of four members killed one after the other at RF 2, the second once the first loss is repaired: the two
/// survivors hold every block, serve the right bytes and report health at RF 2.
#[test]
fn two_members_killed_one_after_the_other_at_rf_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let names = ["a", "b", "c", "d"];
    let a = start(&dir, "a", "", &[]);
    let mut nodes = vec![a];
    for name in &names[1..] {
        let seed = nodes[0].gossip.clone();
        nodes.push(start(&dir, name, &seed, &[]));
    }
    wait_until(Duration::from_secs(30), "four members", || {
        nodes.iter().all(|n| get_json(n, "/api/v1/status")["members_alive"] == 4)
    });
    let data = random_bytes(4 << 20, 17);
    let root = add(&nodes[0], &data);
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    wait_until(Duration::from_secs(60), "RF 2 on four", || healthy(&refs, &names, &root));

    let kill = |node: &mut RunningNode| {
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    };
    let mut d = nodes.pop().unwrap();
    kill(&mut d);
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    let first =
        wait_until(Duration::from_secs(60), "RF 2 on three after d died", || healthy(&refs, &names[..3], &root));
    let mut c = nodes.pop().unwrap();
    kill(&mut c);
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    let second = wait_until(Duration::from_secs(60), "RF 2 on two after c died", || healthy(&refs, &names[..2], &root));
    for n in &nodes {
        assert_eq!(sha(&download(n, &root).unwrap()), sha(&data), "a survivor serves the right bytes");
    }
    eprintln!("two members killed one after the other at RF 2: recovered in {first:?}, then {second:?}");
}

/// kill -9 of a member while a file is being uploaded to another: the upload completes, the survivors reach RF 2
/// among themselves, and every survivor reads the right bytes.
#[test]
fn kill_9_of_a_member_during_an_upload_to_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let names = ["a", "b", "c"];
    let a = start(&dir, "a", "", &[]);
    let b = start(&dir, "b", &a.gossip, &[]);
    let mut c = start(&dir, "c", &a.gossip, &[]);
    wait_until(Duration::from_secs(30), "three members", || {
        [&a, &b, &c].iter().all(|n| get_json(n, "/api/v1/status")["members_alive"] == 3)
    });
    let data = random_bytes(48 << 20, 18);
    let uploader = {
        let (url, data) = (a.url("/api/v1/files?name=big.bin"), data.clone());
        std::thread::spawn(move || {
            ureq::post(&url)
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .set("Content-Type", "application/octet-stream")
                .send_bytes(&data)
                .map(|r| r.into_json::<serde_json::Value>().unwrap()["cid"].as_str().unwrap().to_string())
                .map_err(|e| e.to_string())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let killed = Instant::now();
    let root = uploader.join().unwrap().expect("the upload to a survivor completes");
    let took =
        wait_until(Duration::from_secs(60), "RF 2 on the two survivors", || healthy(&[&a, &b], &names[..2], &root));
    for n in [&a, &b] {
        assert_eq!(sha(&download(n, &root).unwrap()), sha(&data));
    }
    eprintln!(
        "kill -9 during an upload: RF 2 on the survivors {:?} after the kill ({took:?} after the upload)",
        killed.elapsed()
    );
}

/// A member with a 2 MiB store reads a 16 MiB file it holds almost none of: its store fills up during the read, and
/// still it gets the right bytes, its store never goes past its capacity (what does not fit streams through
/// memory), and the file stays at RF 2 everywhere.
#[test]
fn a_full_member_reads_a_file_it_does_not_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let names = ["a", "b", "small"];
    let a = start(&dir, "a", "", &[("XNODE_STORAGE_MAX", "256MiB")]);
    let b = start(&dir, "b", &a.gossip, &[("XNODE_STORAGE_MAX", "256MiB")]);
    let small = start(&dir, "small", &a.gossip, &[("XNODE_STORAGE_MAX", "2MiB")]);
    let nodes = [a, b, small];
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    wait_until(Duration::from_secs(30), "three members", || {
        refs.iter().all(|n| get_json(n, "/api/v1/status")["members_alive"] == 3)
    });
    // 16 MiB at RF 2: the small member's capacity share is about 1/257 of the copies (some 128 KiB), and a read
    // of the whole file needs eight times its capacity.
    let data = random_bytes(16 << 20, 21);
    let root = add(&nodes[0], &data);
    wait_until(Duration::from_secs(60), "RF 2 on three", || healthy(&refs, &names, &root));
    let storage = |n: &RunningNode| get_json(n, "/api/v1/storage");
    let before = storage(&nodes[2]);
    eprintln!("the small member before the read: {before}");
    let capacity = before["capacity"].as_u64().unwrap();
    assert_eq!(capacity, 2 << 20);

    let started = Instant::now();
    let body = download(&nodes[2], &root).expect("the full member reads the file");
    eprintln!("the full member read {} MiB in {:?}", body.len() >> 20, started.elapsed());
    assert_eq!(sha(&body), sha(&data), "the right bytes");
    let after = storage(&nodes[2]);
    eprintln!("the small member after the read: {after}");
    let used = after["used"].as_u64().unwrap();
    assert!(used <= capacity, "the store stays within its capacity: {after}");
    assert!(used > capacity / 2, "the read filled the store first (else this tests nothing): {after}");
    wait_until(Duration::from_secs(30), "RF 2 on three after the read", || healthy(&refs, &names, &root));
}

/// Posts `data` as a file on `node`: the root CID, or the status and the error message of a refusal.
fn try_add(node: &RunningNode, data: &[u8]) -> Result<String, (u16, String)> {
    let request = ureq::post(&node.url("/api/v1/files?name=payload.bin"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/octet-stream")
        .timeout(Duration::from_secs(120));
    match request.send_bytes(data) {
        Ok(r) => Ok(r.into_json::<serde_json::Value>().unwrap()["cid"].as_str().unwrap().to_string()),
        Err(ureq::Error::Status(code, r)) => {
            let body: serde_json::Value = r.into_json().unwrap_or_default();
            Err((code, body["error"].as_str().unwrap_or_default().to_string()))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

/// Whether every node lists every one of `roots` at RF with nothing missing, and its metrics count no block under
/// replicated. Says what it saw when `XNODE_TEST_VERBOSE` is set.
fn all_at_rf(nodes: &[&RunningNode], names: &[&str], roots: &[String]) -> bool {
    if std::env::var_os("XNODE_TEST_VERBOSE").is_some() {
        for n in nodes {
            let files = get_json(n, "/api/v1/files");
            let seen: Vec<String> = files
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    format!(
                        "{} {}",
                        &f["root"].as_str().unwrap_or("?")[..8.min(f["root"].as_str().unwrap_or("?").len())],
                        f["health"]
                    )
                })
                .collect();
            let metrics =
                ureq::get(&n.url("/metrics")).call().ok().and_then(|r| r.into_string().ok()).unwrap_or_default();
            let under: Vec<&str> = metrics.lines().filter(|l| l.starts_with("xnode_blocks_under")).collect();
            eprintln!("{}: {seen:?} {under:?}", n.api);
        }
    }
    roots.iter().all(|root| healthy(nodes, names, root))
        && nodes.iter().all(|n| {
            ureq::get(&n.url("/metrics"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|m| m.lines().any(|l| l == "xnode_blocks_under_replicated 0"))
        })
}

/// A cluster filled to the brim: three members of 4 MiB at RF 2 take 1 MiB files until one does not fit. That add
/// fails with 507 naming the room the cluster has left and where; nothing stored before is dropped (every file
/// reads back with the right bytes from every member, health stays at RF 2 everywhere, no member goes past its
/// capacity) and the refused file is not listed anywhere. Once room is freed (a file removed), the refused add
/// goes through; once every member is resized up, a further add does too.
#[test]
fn a_cluster_filled_to_the_brim_refuses_clearly_and_drops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, dir) = keep_dir(tmp);
    let extra = [("XNODE_STORAGE_MAX", "4MiB"), ("XNODE_SCRUB_INTERVAL", "365d")];
    let a = start(&dir, "a", "", &extra);
    let b = start(&dir, "b", &a.gossip, &extra);
    let c = start(&dir, "c", &a.gossip, &extra);
    let nodes = [a, b, c];
    let refs: Vec<&RunningNode> = nodes.iter().collect();
    wait_until(Duration::from_secs(30), "three members", || {
        refs.iter().all(|n| get_json(n, "/api/v1/status")["members_alive"] == 3)
    });
    let capacity = 4u64 << 20;
    let within_capacity = |when: &str| {
        for (n, name) in nodes.iter().zip(NAMES) {
            let s = get_json(n, "/api/v1/storage");
            let (used, cap) = (s["used"].as_u64().unwrap(), s["capacity"].as_u64().unwrap());
            eprintln!("{when}: {name} holds {used} of {cap} bytes");
            assert!(used <= cap, "{name} went past its capacity {when}: {s}");
            assert!(cap >= capacity, "{name}'s capacity is what it was given or more: {s}");
        }
    };

    // 12 MiB of stores at RF 2 hold some 6 MiB of files; a placement holder of some leaf fills up first.
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let (refused, code, message) = loop {
        assert!(stored.len() < 12, "twelve 1 MiB files at RF 2 cannot fit in 12 MiB of stores");
        // Odd seeds, two apart: `random_bytes` makes a seed odd, so 2k and 2k + 1 would give the same file.
        let data = random_bytes(1 << 20, 1001 + 2 * stored.len() as u64);
        let adder = &nodes[stored.len() % 3];
        match try_add(adder, &data) {
            Ok(root) => {
                stored.push((root, data));
                let roots: Vec<String> = stored.iter().map(|(r, _)| r.clone()).collect();
                wait_until(Duration::from_secs(60), "every file so far at RF 2", || all_at_rf(&refs, &NAMES, &roots));
            }
            Err((code, message)) => break (data, code, message),
        }
    };
    let roots: Vec<String> = stored.iter().map(|(r, _)| r.clone()).collect();
    eprintln!("{} files of 1 MiB stored; the next was refused with {code}: {message}", stored.len());
    assert!(stored.len() >= 3, "the cluster took a few files before filling up");
    assert_eq!(code, 507, "a full cluster is 507 Insufficient Storage: {message}");
    assert!(message.contains("full"), "says a store is full: {message}");
    assert!(message.contains("The cluster has") && message.contains(" free ("), "says what is free: {message}");
    for name in NAMES {
        assert!(message.contains(&format!("{name} ")), "names where the room is ({name}): {message}");
    }
    let refused_root = dag_of(&refused).last().unwrap().0.clone();
    assert!(!roots.contains(&refused_root));

    // Nothing dropped: every earlier file at RF 2 on every member, the refused one listed nowhere, every store
    // within its capacity, and every file's bytes right from every member.
    wait_until(Duration::from_secs(30), "health at RF 2 after the refusal", || all_at_rf(&refs, &NAMES, &roots));
    for n in &nodes {
        let files = get_json(n, "/api/v1/files");
        assert!(
            files.as_array().unwrap().iter().all(|f| f["root"] != refused_root.as_str()),
            "the refused file is not listed: {files}"
        );
    }
    within_capacity("after the refusal");
    for (root, data) in &stored {
        for n in &nodes {
            assert_eq!(sha(&download(n, root).expect("every stored file reads back")), sha(data));
        }
    }
    within_capacity("after reading every file from every member");
    assert!(all_at_rf(&refs, &NAMES, &roots));

    // Room freed by removing the first file: the refused add goes through (what it staged is still there).
    let removed = stored.remove(0).0;
    let response = ureq::delete(&nodes[0].url(&format!("/api/v1/files/{removed}")))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("the remove is accepted");
    assert!(response.status() < 300);
    let freed = Instant::now();
    let mut last = String::new();
    wait_until(Duration::from_secs(60), "the refused add fits once a file is removed", || {
        match try_add(&nodes[0], &refused) {
            Ok(root) => {
                assert_eq!(root, refused_root);
                true
            }
            Err((code, message)) => {
                assert_eq!(code, 507, "{message}");
                last = message;
                false
            }
        }
    });
    let after_remove = freed.elapsed();
    stored.push((refused_root.clone(), refused.clone()));
    let roots: Vec<String> = stored.iter().map(|(r, _)| r.clone()).collect();
    wait_until(Duration::from_secs(60), "every file at RF 2 after the remove", || all_at_rf(&refs, &NAMES, &roots));
    within_capacity("after the remove and the add");

    // Fill it again, then resize every member up: the add that did not fit goes through.
    let mut extra_file = 0u64;
    let refused = loop {
        assert!(extra_file < 12, "the cluster fills up again");
        let data = random_bytes(1 << 20, 3001 + 2 * extra_file);
        extra_file += 1;
        match try_add(&nodes[1], &data) {
            Ok(root) => {
                stored.push((root, data));
                let roots: Vec<String> = stored.iter().map(|(r, _)| r.clone()).collect();
                wait_until(Duration::from_secs(60), "every file at RF 2", || all_at_rf(&refs, &NAMES, &roots));
            }
            Err((code, message)) => {
                assert_eq!(code, 507, "{message}");
                break data;
            }
        }
    };
    let resized = Instant::now();
    for name in NAMES {
        ureq::put(&nodes[0].url(&format!("/api/v1/members/{name}/storage")))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(serde_json::json!({ "capacity": "8MiB" }))
            .expect("the resize is accepted");
    }
    let root = wait_until_ok(Duration::from_secs(60), "the refused add fits once every member is resized up", || {
        try_add(&nodes[1], &refused).map_err(|(code, message)| {
            assert_eq!(code, 507, "{message}");
            message
        })
    });
    let after_resize = resized.elapsed();
    stored.push((root, refused));
    let roots: Vec<String> = stored.iter().map(|(r, _)| r.clone()).collect();
    wait_until(Duration::from_secs(60), "every file at RF 2 after the resize", || all_at_rf(&refs, &NAMES, &roots));
    for (root, data) in &stored {
        for n in &nodes {
            assert_eq!(sha(&download(n, root).expect("every stored file reads back")), sha(data));
        }
    }
    within_capacity("at the end");
    eprintln!(
        "a cluster filled to the brim: a refused add fitted {after_remove:?} after a file was removed (last refusal \
         before it: {last}) and {after_resize:?} after every member was resized up; {} files at RF 2, all read back \
         from every member",
        stored.len()
    );
}

/// Calls `f` until it succeeds, at most `within`; its value.
fn wait_until_ok<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(start.elapsed() < within, "{what}: not within {within:?} (last: {e})"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
