//! Three `xnode run` processes on loopback: they find each other through gossip, connect over libp2p, and a file
//! added on one is read on the others, its blocks fetched over Bitswap and verified; a CID nobody has fails with
//! an error naming it, after the timeout the user chose.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    api: String,
    data: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, name: &str, seed: Option<&str>) -> (Proc, String) {
    let data = dir.join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xnode"));
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("run")
        .env("XNODE_NAME", name)
        .env("XNODE_BIND_ADDR", "127.0.0.1")
        .env("XNODE_API_PORT", "0")
        .env("XNODE_P2P_PORT", "0")
        .env("XNODE_ADMIN_TOKEN", "t")
        .env("XNODE_KNOWN_PEERS", seed.unwrap_or(""))
        .stderr(Stdio::piped());
    // Gossip needs a known port for the others' seed list; pick one from the OS first.
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cmd.env("XNODE_GOSSIP_PORT", gossip.port().to_string());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let api = loop {
        let line = lines.next().expect("the node prints its API address").unwrap();
        if let Some(rest) = line.split("API on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Proc { child, api, data }, gossip.to_string())
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

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
