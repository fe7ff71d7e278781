//! Hostile input against a running node (`xnode run` on loopback): every bad query value, capacity and tar entry
//! gets a 4xx with a JSON error, downloads cannot render on the dashboard's origin, bad settings stop the node
//! with the variable's name, and thousands of reads of CIDs that exist nowhere neither wedge the node nor keep it
//! from stopping. See docs/security.md.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{random_bytes, RunningNode};

const TOKEN: &str = "s3cret-token";

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> RunningNode {
    let mut all = vec![("XNODE_ADMIN_TOKEN", TOKEN)];
    all.extend_from_slice(env);
    RunningNode::start(dir, "sec", &all)
}

/// Status and body, whatever the status.
fn status_of(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Asserts a 4xx whose body is `{"error": "..."}` and returns the message.
fn json_error(r: Result<ureq::Response, ureq::Error>, want: u16, what: &str) -> String {
    let (code, body) = status_of(r);
    assert_eq!(code, want, "{what}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    v["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {body}")).to_string()
}

fn upload(node: &RunningNode, name: &str, body: &[u8]) -> serde_json::Value {
    let r = ureq::post(&node.url(&format!("/api/v1/files?name={name}")))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_bytes(body)
        .unwrap();
    r.into_json().unwrap()
}

/// A CIDv1 nobody has: raw codec, the SHA-256 of `seed`.
fn missing_cid(seed: u64) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(seed.to_le_bytes());
    cid::Cid::new_v1(0x55, cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap()).to_string()
}

#[test]
fn bad_query_values_capacities_and_codecs_are_json_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), &[]);
    let file = upload(&node, "a.bin", &random_bytes(10_000, 1));
    let cid = file["cid"].as_str().unwrap().to_string();
    for route in ["files", "ls", "stat"] {
        for bad in ["-1", "NaN", "inf", "-inf", "1e300", "86401", "abc", ""] {
            let url = node.url(&format!("/api/v1/{route}/{cid}?timeout={bad}"));
            let e = json_error(ureq::get(&url).call(), 400, &format!("{route} timeout={bad}"));
            assert!(e.contains("timeout"), "{route} timeout={bad}: {e}");
        }
    }
    assert_eq!(ureq::get(&node.url(&format!("/api/v1/files/{cid}?timeout=0.5"))).call().unwrap().status(), 200);
    for bad in ["-1", "x", "1000001", "1e3"] {
        let e = json_error(ureq::get(&node.url(&format!("/api/v1/blocks?limit={bad}"))).call(), 400, bad);
        assert!(e.contains("limit"), "limit={bad}: {e}");
    }
    for bad in ["-1", "x", "1.5"] {
        let e = json_error(ureq::get(&node.url(&format!("/api/v1/transfers?since={bad}"))).call(), 400, bad);
        assert!(e.contains("since"), "since={bad}: {e}");
    }

    let put = || ureq::put(&node.url("/api/v1/storage")).set("Authorization", &format!("Bearer {TOKEN}"));
    for bad in [
        serde_json::json!({"capacity": 0}),
        serde_json::json!({"capacity": [1]}),
        serde_json::json!({"capacity": 1}),
        serde_json::json!({"capacity": 1000}),
        serde_json::json!({"capacity": "lots"}),
        serde_json::json!({"capacity": -5}),
        serde_json::json!({"capacity": 1e300}),
        serde_json::json!({"capacity": 18_446_744_073_709_551_614u64}),
        serde_json::json!({"capacity": null}),
    ] {
        let e = json_error(put().send_json(bad.clone()), 422, &bad.to_string());
        assert!(e.contains("capacity"), "{bad}: {e}");
    }
    let e = json_error(put().send_json(serde_json::json!({"size": 5})), 422, "no capacity field");
    assert!(e.contains("capacity"), "{e}");
    let e = json_error(put().set("Content-Type", "application/json").send_string("{not json"), 400, "bad JSON");
    assert!(!e.is_empty());
    let storage = put().send_json(serde_json::json!({"capacity": "10GiB"})).unwrap().into_json::<serde_json::Value>();
    assert_eq!(storage.unwrap()["capacity"], 10u64 << 30);

    // A codec a UnixFS read cannot decode is refused at once, not after the fetch timeout.
    let cbor = cid::Cid::new_v1(0x71, cid::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap());
    let started = Instant::now();
    let e = json_error(ureq::get(&node.url(&format!("/api/v1/files/{cbor}"))).call(), 400, "dag-cbor");
    assert!(e.contains("codec") && started.elapsed() < Duration::from_secs(2), "{e}");
}

#[test]
fn downloads_are_attachments_that_browsers_do_not_sniff() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), &[]);
    let file = upload(&node, "page.html", b"<script>alert(1)</script>");
    let r = ureq::get(&node.url(&format!("/api/v1/files/{}", file["cid"].as_str().unwrap()))).call().unwrap();
    let disposition = r.header("content-disposition").unwrap_or_default().to_string();
    assert!(disposition.starts_with("attachment") && disposition.contains("page.html"), "{disposition}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r.header("content-security-policy").unwrap_or_default().contains("sandbox"));
}

/// One tar entry: its name as written, its type, its bytes.
type TarEntry<'a> = (&'a str, tar::EntryType, &'a [u8]);

/// A tar whose entries are written with exactly these names (no normalisation by the tar crate).
fn tar_of(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_old();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn tar_uploads_refuse_entries_they_would_rename_or_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), &[]);
    let post = |body: Vec<u8>| {
        ureq::post(&node.url("/api/v1/files"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .set("Content-Type", "application/x-tar")
            .send_bytes(&body)
    };
    use tar::EntryType::{Directory, Regular};
    let cases: [(Vec<TarEntry>, &str); 5] = [
        (vec![("d/a", Regular, b"x"), ("d/a/b", Regular, b"y")], "d/a/b"),
        (vec![("d/../../x", Regular, b"x")], "d/../../x"),
        (vec![("/etc/x", Regular, b"x")], "/etc/x"),
        (vec![("d/a", Regular, b"x"), ("d/a", Regular, b"y")], "d/a"),
        (vec![("d/a", Regular, b"x"), ("d/a", Directory, b"")], "d/a"),
    ];
    for (entries, named) in cases {
        let e = json_error(post(tar_of(&entries)), 400, named);
        assert!(e.contains(named), "{named}: {e}");
    }
    // Longer than a tar header's name field: the tar crate writes a GNU long name.
    let mut deep = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    deep.append_data(&mut h, vec!["d"; 65].join("/"), &b"x"[..]).unwrap();
    let e = json_error(post(deep.into_inner().unwrap()), 400, "deep");
    assert!(e.contains("levels deep"), "{e}");
    let files: serde_json::Value = ureq::get(&node.url("/api/v1/files")).call().unwrap().into_json().unwrap();
    assert_eq!(files.as_array().unwrap().len(), 0, "refused uploads leave nothing: {files}");
    let ok = post(tar_of(&[("./d/", Directory, b""), ("./d/a", Regular, b"x"), ("d/b", Regular, b"y")])).unwrap();
    assert_eq!(ok.status(), 201);
}

#[test]
fn bad_settings_stop_the_node_with_the_variables_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("XNODE_KNOWN_PEERS", "garbage"),
        ("XNODE_REPLICATION", "1000"),
        ("XNODE_GOSSIP_PORT", "0"),
        ("XNODE_LOG", "[[[bad"),
        ("XNODE_NAME", "a/../../b"),
        ("XNODE_STORAGE_MAX", "0"),
        ("XNODE_FETCH_TIMEOUT", "0"),
        ("XNODE_FETCH_TIMEOUT", "1e300"),
        ("XNODE_MAX_UPLOAD", "0"),
        ("XNODE_CLUSTER_SECRET", "not-hex"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_xnode"))
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .arg("run")
            .env("XNODE_API_PORT", "0")
            .env("XNODE_BIND_ADDR", "127.0.0.1")
            .env(var, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A node that accepted the value would run until stopped: give it 10 s, then fail rather than hang.
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{var}={value} started a node");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} started");
        assert!(err.contains(var) && !err.contains("panicked"), "{var}={value}: {err}");
    }
    // " " is blank (the hostname is used); a typo is named with the variable meant.
    let file = tmp.path().join("small.txt");
    std::fs::write(&file, b"a store to show stats of").unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--offline", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("add")
        .arg(&file)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--offline", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("stats")
        .env("XNODE_REPLICATON", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("XNODE_REPLICATON") && err.contains("XNODE_REPLICATION"), "{err}");
}

/// 2,000 concurrent reads of CIDs that exist nowhere: each ends with a 504 naming its CID at its timeout, while an
/// upload and a read go through; then SIGTERM stops the node within 10 s although more such reads are open.
#[test]
fn thousands_of_reads_of_missing_cids_do_not_wedge_the_node() {
    const READS: u64 = 2_000;
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), &[("XNODE_LOG", "error")]);
    let base = node.api.clone();
    let started = Instant::now();
    let readers: Vec<_> = (0..READS)
        .map(|i| {
            let base = base.clone();
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let cid = missing_cid(i);
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
                    let r = agent.get(&format!("{base}/api/v1/files/{cid}?timeout=4")).call();
                    let (code, body) = match r {
                        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
                        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    (cid, code, body)
                })
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // While they wait: an upload and a read work, promptly.
    let t = Instant::now();
    let data = random_bytes(300_000, 7);
    let file = upload(&node, "during.bin", &data);
    let got =
        ureq::get(&node.url(&format!("/api/v1/files/{}", file["cid"].as_str().unwrap()))).call().unwrap().into_reader();
    let mut body = Vec::new();
    got.take(1 << 20).read_to_end(&mut body).unwrap();
    assert_eq!(body, data);
    assert!(t.elapsed() < Duration::from_secs(3), "upload and read took {:?} under load", t.elapsed());
    let status = ureq::get(&node.url("/api/v1/status")).call().unwrap();
    assert_eq!(status.status(), 200);

    let mut outcomes = std::collections::BTreeMap::new();
    for r in readers {
        let (cid, code, body) = r.join().unwrap();
        assert!(code != 504 || body.contains(&cid), "a 504 names its CID: {body}");
        *outcomes.entry(code).or_insert(0u64) += 1;
    }
    let took = started.elapsed();
    assert_eq!(outcomes.get(&504), Some(&READS), "every read ends with 504: {outcomes:?}");
    assert!(took < Duration::from_secs(30), "2,000 reads with a 4 s timeout took {took:?}");
    eprintln!("{READS} reads of missing CIDs: {outcomes:?} in {took:?}");

    // More reads open (60 s timeout), then SIGTERM: the node is gone within 10 s.
    let mut node = node;
    let waiting: Vec<_> = (0..200u64)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let _ = ureq::get(&format!("{base}/api/v1/files/{}?timeout=60", missing_cid(10_000 + i))).call();
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let stop = Instant::now();
    let pid = node.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            eprintln!("stopped in {:?} with {status}", stop.elapsed());
            break;
        }
        assert!(stop.elapsed() < Duration::from_secs(10), "SIGTERM did not end the node within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(waiting);
}

/// The dashboard acts on another member by a signed request, never with the admin token: a fake member whose
/// gossiped `api_url` is a listener of this test receives a signature bound to its name, and no token.
#[test]
fn the_admin_token_never_leaves_the_node() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = tempfile::tempdir().unwrap();
    let node = start(tmp.path(), &[("XNODE_GROUP_NAME", "token-test")]);
    // The fake member's API: records one request and answers 202.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let received = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let _ = conn.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        head
    });
    // The fake member joins by gossip, as any process that reaches the gossip port could without a secret.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _fake = runtime.block_on(async {
        let mut c = xnode_gossip::GossipConfig::new("fake-member", "127.0.0.1:0".parse().unwrap());
        c.seeds = vec![node.gossip.clone()];
        c.group = "token-test".into();
        let meta = xnode_gossip::MemberMeta { name: "fake-member".into(), api_url, ..Default::default() };
        let token = tokio_util::sync::CancellationToken::new();
        xnode_gossip::Membership::start(c, meta, token).await.unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let members: serde_json::Value = ureq::get(&node.url("/api/v1/members")).call().unwrap().into_json().unwrap();
        if members.as_array().unwrap().iter().any(|m| m["name"] == "fake-member" && m["state"] == "Alive") {
            break;
        }
        assert!(Instant::now() < deadline, "the fake member did not join: {members}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r =
        ureq::post(&node.url("/ui/members/fake-member/kill")).set("Authorization", &format!("Bearer {TOKEN}")).call();
    assert_eq!(status_of(r).0, 200);
    let head = received.join().unwrap();
    assert!(head.starts_with("POST /api/v1/kill "), "{head}");
    assert!(!head.contains(TOKEN) && !head.to_lowercase().contains("authorization"), "the token leaked: {head}");
    assert!(head.to_lowercase().contains("x-xnode-signature: t="), "{head}");
}

/// Members sharing a secret file (made by the first to start) form a cluster holding a file. Two outsiders of the
/// same group name, one without a secret and one with another secret, seeded with every member's gossip and
/// connected by libp2p to a member (one over TCP, one over QUIC), stay out for a minute: never listed, nothing
/// placed on them, no catalog entry of theirs accepted, no copy released by a member because of them, and no block
/// fetched by Bitswap (sealed members do not serve non-members unless `XNODE_PUBLIC_BITSWAP` opens it).
#[test]
fn outsiders_without_the_secret_or_with_another_stay_out_of_a_cluster_with_data() {
    let tmp = tempfile::tempdir().unwrap();
    let secret_file = tmp.path().join("secrets/cluster-secret");
    let secret_env = secret_file.to_str().unwrap();
    let group = ("XNODE_GROUP_NAME", "sealed-test");
    let shared = [("XNODE_CLUSTER_SECRET_FILE", secret_env), group, ("XNODE_ADMIN_TOKEN", TOKEN)];
    let a = RunningNode::start(tmp.path(), "sealed-a", &shared);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.trim().len(), 64, "the first node made a 64-hex-digit secret");
    let seeded = [&shared[..], &[("XNODE_KNOWN_PEERS", a.gossip.as_str())]].concat();
    let b = RunningNode::start(tmp.path(), "sealed-b", &seeded);
    let c = RunningNode::start(tmp.path(), "sealed-c", &seeded);
    let members = [&a, &b, &c];
    let alive = |n: &RunningNode| -> Vec<String> {
        let v: serde_json::Value =
            ureq::get(&n.url("/api/v1/members")).call().ok().and_then(|r| r.into_json().ok()).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "Alive")
            .map(|m| m["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while members.iter().any(|n| alive(n).len() < 3) {
        assert!(Instant::now() < deadline, "the sealed members did not meet: {:?}", alive(&a));
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = upload(&a, "held.bin", &random_bytes(3 << 20, 3));
    let root = file["cid"].as_str().unwrap().to_string();
    // Health: every block of the file at the replication factor, as every member sees it.
    let health = |n: &RunningNode| -> serde_json::Value {
        let files: serde_json::Value = ureq::get(&n.url("/api/v1/files")).call().unwrap().into_json().unwrap();
        files.as_array().unwrap().iter().find(|f| f["root"] == root.as_str()).cloned().unwrap_or_default()
    };
    let held = |n: &RunningNode| -> u64 {
        let v: serde_json::Value = ureq::get(&n.url("/api/v1/blocks")).call().unwrap().into_json().unwrap();
        v["held"]["count"].as_u64().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while members.iter().any(|n| {
        let h = health(n)["health"].clone();
        h["blocks"].as_u64().is_none() || h["at_rf"] != h["blocks"]
    }) {
        assert!(
            Instant::now() < deadline,
            "the file did not reach its replication factor: {:?}",
            members.iter().map(|n| health(n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let held_before: Vec<u64> = members.iter().map(|n| held(n)).collect();

    // Member a's libp2p addresses, as it gossips them.
    let me: serde_json::Value = ureq::get(&a.url("/api/v1/members")).call().unwrap().into_json().unwrap();
    let addrs: Vec<String> = me.as_array().unwrap().iter().find(|m| m["is_self"] == true).unwrap()["meta"]["p2p_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let tcp = addrs.iter().find(|a| a.contains("/tcp/")).expect("a TCP address").clone();
    let quic = addrs.iter().find(|a| a.contains("/quic-v1/")).expect("a QUIC address").clone();

    let all_seeds = format!("{},{},{}", a.gossip, b.gossip, c.gossip);
    let wrong = "c0".repeat(32);
    let base = [group, ("XNODE_KNOWN_PEERS", all_seeds.as_str()), ("XNODE_ADMIN_TOKEN", TOKEN)];
    let open_env = [&base[..], &[("XNODE_BOOTSTRAP", tcp.as_str())]].concat();
    let other_env =
        [&base[..], &[("XNODE_BOOTSTRAP", quic.as_str()), ("XNODE_CLUSTER_SECRET", wrong.as_str())]].concat();
    let open = RunningNode::start(tmp.path(), "outsider-open", &open_env);
    let other = RunningNode::start(tmp.path(), "outsider-other", &other_env);
    let outsiders = [&open, &other];
    // Each outsider adds a file of its own: its catalog entry must never reach the members.
    for (o, name) in outsiders.iter().zip(["outsider-open.bin", "outsider-other.bin"]) {
        upload(o, name, &random_bytes(300_000, 9));
    }

    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        for n in members {
            let names = alive(n);
            assert!(!names.iter().any(|m| m.starts_with("outsider")), "an outsider became a member: {names:?}");
        }
        for o in outsiders {
            assert_eq!(alive(o).len(), 1, "an outsider learned members: {:?}", alive(o));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every block the members hold (the cluster's file, its catalog entries): none may be on an outsider, which
    // holds only the file it added itself.
    let cids = |n: &RunningNode| -> std::collections::HashSet<String> {
        let v: serde_json::Value =
            ureq::get(&n.url("/api/v1/blocks?limit=100000")).call().unwrap().into_json().unwrap();
        v["held"]["cids"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect()
    };
    let cluster_blocks: std::collections::HashSet<String> = members.iter().flat_map(|n| cids(n)).collect();
    assert!(cluster_blocks.len() >= 13, "the members list the file's blocks: {}", cluster_blocks.len());
    for o in outsiders {
        let theirs = cids(o);
        assert!(theirs.is_disjoint(&cluster_blocks), "a block of the cluster was placed on an outsider: {theirs:?}");
        // Bitswap: the root is provided in the DHT the outsider joined through a member, and the member does
        // not serve it to a non-member.
        let (code, body) = status_of(ureq::get(&o.url(&format!("/api/v1/files/{root}?timeout=5"))).call());
        assert_eq!(code, 504, "an outsider read the cluster's file: {body}");
    }
    for n in members {
        let files: serde_json::Value = ureq::get(&n.url("/api/v1/files")).call().unwrap().into_json().unwrap();
        let names: Vec<&str> = files.as_array().unwrap().iter().filter_map(|f| f["name"].as_str()).collect();
        assert_eq!(names, ["held.bin"], "no catalog entry of an outsider was accepted");
        let h = health(n)["health"].clone();
        assert!(h["blocks"].as_u64().is_some_and(|b| b > 0), "counted: {h}");
        assert_eq!((h["at_rf"].clone(), h["missing"].as_u64()), (h["blocks"].clone(), Some(0)), "{h}");
    }
    let held_after: Vec<u64> = members.iter().map(|n| held(n)).collect();
    assert_eq!(held_after, held_before, "no member released copies because of the outsiders");
}

/// `SIGHUP` re-reads `XNODE_CLUSTER_SECRET_FILE` (the rotation of docs/security.md); a file that does not parse
/// keeps the keys in use and says so.
#[test]
fn sighup_reloads_the_cluster_secret_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster-secret");
    std::fs::write(&file, format!("{}\n", "a1".repeat(32))).unwrap();
    let node = start(tmp.path(), &[("XNODE_CLUSTER_SECRET_FILE", file.to_str().unwrap())]);
    let log = tmp.path().join("sec.log");
    let hup = |expect: &str| {
        assert!(Command::new("kill").args(["-HUP", &node.child.id().to_string()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(expect) {
                return text;
            }
            assert!(Instant::now() < deadline, "no {expect:?} in the log after SIGHUP: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(&file, format!("{}\n{}\n", "b2".repeat(32), "a1".repeat(32))).unwrap();
    let text = hup("1 more accepted");
    assert!(text.contains("cluster secret reloaded") && !text.contains(&"b2".repeat(32)), "{text}");
    std::fs::write(&file, "not a secret\n").unwrap();
    let text = hup("keeping the cluster secret in use");
    assert!(!text.contains("not a secret"), "the file's content is not logged: {text}");
    assert_eq!(ureq::get(&node.url("/healthz")).call().unwrap().status(), 200, "the node runs on");
}

/// One series of `/metrics`, 0 when absent.
fn metric(node: &RunningNode, series: &str) -> f64 {
    let text = ureq::get(&node.url("/metrics")).call().unwrap().into_string().unwrap();
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

/// Gossip datagrams that do not open with the cluster secret are counted in `/metrics`, beside the gossip the
/// members exchange (docs/api.md, "Metrics").
#[test]
fn gossip_datagrams_refused_for_want_of_the_secret_are_counted_in_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = ("XNODE_CLUSTER_SECRET", "1f".repeat(32));
    let a = start(tmp.path(), &[(secret.0, secret.1.as_str())]);
    let b = RunningNode::start(
        tmp.path(),
        "sec-b",
        &[("XNODE_ADMIN_TOKEN", TOKEN), (secret.0, secret.1.as_str()), ("XNODE_KNOWN_PEERS", a.gossip.as_str())],
    );
    let rejected = r#"xnode_gossip_datagrams_total{outcome="rejected"}"#;
    let received = r#"xnode_gossip_datagrams_total{outcome="received"}"#;
    let sent = r#"xnode_gossip_datagrams_total{outcome="sent"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&a, received) == 0.0 || metric(&b, sent) == 0.0 {
        assert!(Instant::now() < deadline, "no gossip between the two members");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&a, rejected), 0.0, "nothing refused between members of one secret");
    assert!(metric(&a, r#"xnode_gossip_bytes_total{outcome="received"}"#) > 0.0);

    // An outsider's datagrams: plaintext gossip-looking bytes, and random bytes of a sealed datagram's size.
    let outsider = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent_by_outsider: u32 = 7;
    for i in 0..sent_by_outsider {
        let junk = if i % 2 == 0 { b"xnode-test gossip syn".to_vec() } else { random_bytes(200, u64::from(i)) };
        outsider.send_to(&junk, &a.gossip).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, rejected) < f64::from(sent_by_outsider) {
        assert!(Instant::now() < deadline, "refused datagrams counted: {}", metric(&a, rejected));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&a, rejected), f64::from(sent_by_outsider), "exactly the outsider's datagrams");
    assert_eq!(metric(&a, r#"xnode_gossip_datagrams_total{outcome="replayed"}"#), 0.0);
    let text = ureq::get(&a.url("/metrics")).call().unwrap().into_string().unwrap();
    assert!(text.contains("# TYPE xnode_gossip_datagrams counter"), "{text}");
    drop(b);
}
