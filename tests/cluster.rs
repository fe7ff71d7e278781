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
