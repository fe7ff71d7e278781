//! Three `xnode run` processes on loopback: they find each other through gossip, connect over libp2p, and a file
//! added on one is read on the others, its blocks fetched over Bitswap and verified; a CID nobody has fails with
//! an error naming it, after the timeout the user chose.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;

use support::{random_bytes as random, RunningNode as Proc};

fn start(dir: &Path, name: &str, seed: Option<&str>) -> (Proc, String) {
    let node = Proc::start(dir, name, &[("XNODE_ADMIN_TOKEN", "t"), ("XNODE_KNOWN_PEERS", seed.unwrap_or(""))]);
    let gossip = node.gossip.clone();
    (node, gossip)
}

fn cli(p: &Proc, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xnode"))
        .arg("--api")
        .arg(&p.api)
        .arg("--token")
        .arg("t")
        .args(args)
        .output()
        .unwrap()
}

fn members_alive(p: &Proc) -> usize {
    let out = cli(p, &["members", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array().map_or(0, |a| {
        a.iter().filter(|m| m["state"] == "Alive" && !m["meta"]["peer_id"].as_str().unwrap_or("").is_empty()).count()
    })
}

#[test]
fn a_file_added_on_one_node_is_read_on_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, seed) = start(tmp.path(), "alpha", None);
    let (b, _) = start(tmp.path(), "beta", Some(&seed));
    let (c, _) = start(tmp.path(), "gamma", Some(&seed));
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&a, &b, &c].iter().any(|p| members_alive(p) < 3) {
        assert!(Instant::now() < deadline, "the three nodes did not all see each other");
        std::thread::sleep(Duration::from_millis(200));
    }

    let data = random(3 * 1024 * 1024 + 17, 7);
    let file = tmp.path().join("payload.bin");
    std::fs::write(&file, &data).unwrap();
    let out = cli(&a, &["add", "-Q", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cid = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // beta fetches it from alpha; gamma can then fetch from both.
    let out = cli(&b, &["cat", "--timeout", "30", &cid]);
    assert!(out.status.success(), "beta could not read it: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data, "beta read different bytes");
    let dest = tmp.path().join("from-gamma.bin");
    let out = cli(&c, &["get", "--timeout", "30", &cid, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "gamma could not get it: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&dest).unwrap() == data, "gamma wrote different bytes");
    assert!(c.data.join("store").exists());

    // A directory: listed and written out by nodes that lack it (`ls` and `stat` read as they fetch).
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let (top, inner) = (random(700_000, 8), random(300_001, 9));
    std::fs::write(tree.join("top.bin"), &top).unwrap();
    std::fs::write(tree.join("sub").join("inner.bin"), &inner).unwrap();
    let out = cli(&a, &["add", "-Q", "-r", tree.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = String::from_utf8(out.stdout).unwrap().trim().lines().last().unwrap().to_string();
    let listing: serde_json::Value =
        ureq::get(&b.url(&format!("/api/v1/ls/{dir}?timeout=30"))).call().unwrap().into_json().unwrap();
    let names: Vec<(&str, &str)> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("sub", "directory"), ("top.bin", "file")], "{listing}");
    let dest = tmp.path().join("tree-from-gamma");
    let out = cli(&c, &["get", "--timeout", "30", &dir, "-o", dest.to_str().unwrap()]);
    assert!(out.status.success(), "gamma could not get the directory: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dest.join("top.bin")).unwrap() == top);
    assert!(std::fs::read(dest.join("sub").join("inner.bin")).unwrap() == inner);

    // Nobody has this block: a clear error naming it, once the chosen timeout has passed.
    let missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let started = Instant::now();
    let out = cli(&b, &["cat", "--timeout", "2", missing]);
    let waited = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(missing) && err.contains("not found"), "{err}");
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(20), "waited {waited:?}");
}

/// GET of a file through a node's API, with an optional `Range`: (status, body).
fn download(p: &Proc, cid: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = ureq::get(&p.url(&format!("/api/v1/files/{cid}?timeout=30")));
    if let Some(r) = range {
        req = req.set("Range", r);
    }
    let resp = req.call().unwrap();
    let status = resp.status();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body)
}

/// Adds files to `dir/name`'s store offline (before its node starts); returns their CIDs.
fn add_offline(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> Vec<String> {
    files
        .iter()
        .map(|(file_name, bytes)| {
            let file = dir.join(file_name);
            std::fs::write(&file, bytes).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
                .arg("--data-dir")
                .arg(dir.join(name))
                .args(["--offline", "add", "-Q", file.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect()
}

fn wait_for_members(nodes: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|p| members_alive(p) < nodes.len()) {
        assert!(Instant::now() < deadline, "the nodes did not all see each other");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn downloads_of_files_held_elsewhere_stream_with_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random(6 * 1024 * 1024 + 321, 11);
    let cid = add_offline(tmp.path(), "alpha", &[("good.bin", &data)]).remove(0);
    let (a, seed) = start(tmp.path(), "alpha", None);
    let (b, _) = start(tmp.path(), "beta", Some(&seed));
    let (c, _) = start(tmp.path(), "gamma", Some(&seed));
    wait_for_members(&[&a, &b, &c]);

    // A range of a file beta does not hold yet: 206 with exactly those bytes.
    let (status, body) = download(&b, &cid, Some("bytes=3000000-3999999"));
    assert_eq!(status, 206);
    assert!(body == data[3_000_000..4_000_000], "beta's range differs ({} bytes)", body.len());
    // The whole file from gamma, which does not hold it either: streamed as it is fetched, identical bytes.
    let (status, body) = download(&c, &cid, None);
    assert_eq!(status, 200);
    assert!(body == data, "gamma's download differs ({} of {} bytes)", body.len(), data.len());
    // And the rest of the file from beta, which fetched the whole DAG for its range.
    let (status, body) = download(&b, &cid, Some("bytes=4000000-"));
    assert_eq!(status, 206);
    assert!(body == data[4_000_000..], "beta's second range differs ({} bytes)", body.len());
}

#[test]
fn a_download_ends_short_with_an_error_when_a_block_never_comes() {
    let tmp = tempfile::tempdir().unwrap();
    // Added offline, so alpha's copy is the only one, then damaged on disk 4 MiB in (the pack holds the leaves in
    // file order, then the root): alpha serves it as stored (its server does not re-hash), beta rejects it.
    let damaged = random(6 * 1024 * 1024 + 321, 12);
    let cid = add_offline(tmp.path(), "alpha", &[("damaged.bin", &damaged)]).remove(0);
    {
        use std::io::{Seek, SeekFrom, Write};
        let packs = tmp.path().join("alpha/store/packs");
        let pack = std::fs::read_dir(packs).unwrap().next().unwrap().unwrap().path();
        let mut pack = std::fs::OpenOptions::new().write(true).open(pack).unwrap();
        pack.seek(SeekFrom::Start(4 * 1024 * 1024)).unwrap();
        pack.write_all(b"\xff\x00\xff").unwrap();
    }
    let (a, seed) = start(tmp.path(), "alpha", None);
    let (b, _) = start(tmp.path(), "beta", Some(&seed));
    wait_for_members(&[&a, &b]);

    // The download starts, streams the leaves before the damaged one, then ends short with an error once the fetch
    // gives up on it (nobody has a good copy) instead of hanging.
    let started = Instant::now();
    let out = cli(&b, &["cat", "--timeout", "3", &cid]);
    let waited = started.elapsed();
    assert!(!out.status.success(), "a body short of its length is an error");
    let got = out.stdout.len();
    assert!(got >= 1024 * 1024 && got < damaged.len(), "streamed {got} bytes");
    assert!(out.stdout == damaged[..got], "the bytes before the damage are right");
    assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(20), "waited {waited:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(tmp.path().join("beta.log")).unwrap_or_default();
        if log.contains("ended early") && log.contains("not found on any reachable peer") {
            break;
        }
        assert!(Instant::now() < deadline, "beta's log does not name the missing block:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
