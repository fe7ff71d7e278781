//! The IPFS gateway and CAR import/export against loopback clusters of `xnode run` processes. The member asked,
//! beta, has a small store, so placement (weighted by capacity) gives it none of the file's leaves: every leaf it
//! serves comes from alpha or gamma while it answers.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use sha2::{Digest, Sha256};
use xnode_dag::car::CarReader;
use xnode_dag::{BlockSource, ReadError};

mod support;

use support::{random_bytes, RunningNode};

const TOKEN: &str = "gw";

fn cli(data: &Path, api: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xnode"));
    c.arg("--data-dir").arg(data).arg("--token").arg(TOKEN);
    if let Some(api) = api {
        c.arg("--api").arg(api);
    }
    c.args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn members_alive(p: &RunningNode) -> usize {
    let v: serde_json::Value = ureq::get(&p.url("/api/v1/members")).call().unwrap().into_json().unwrap();
    v.as_array().map_or(0, |a| {
        a.iter().filter(|m| m["state"] == "Alive" && !m["meta"]["peer_id"].as_str().unwrap_or("").is_empty()).count()
    })
}

fn wait_for_members(nodes: &[&RunningNode]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|p| members_alive(p) < nodes.len()) {
        assert!(Instant::now() < deadline, "the nodes did not all see each other");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(dir: &Path, name: &str, seed: Option<&str>, extra: &[(&str, &str)]) -> RunningNode {
    let group = format!("gateway-test-{}", std::process::id());
    let mut env =
        vec![("XNODE_ADMIN_TOKEN", TOKEN), ("XNODE_KNOWN_PEERS", seed.unwrap_or("")), ("XNODE_GROUP_NAME", &group)];
    env.extend_from_slice(extra);
    RunningNode::start(dir, name, &env)
}

/// A GET with headers: status, headers by lower-case name, body.
fn get(url: &str, headers: &[(&str, &str)]) -> (u16, HashMap<String, String>, Vec<u8>) {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = resp.status();
    let names = resp.headers_names();
    let h = names.iter().map(|n| (n.to_lowercase(), resp.header(n).unwrap_or_default().to_string())).collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    (status, h, body)
}

/// The blocks of a CAR, read with `xnode_dag::car` (checked against the CAR specification's own fixtures in
/// `internal/dag/tests/car_fixtures.rs`): roots, and blocks in order, each verified against its CID.
fn read_car(bytes: &[u8]) -> (Vec<Cid>, Vec<(Cid, Bytes)>) {
    let mut reader = CarReader::new(bytes).unwrap();
    let roots = reader.roots().to_vec();
    let blocks = reader.by_ref().map(|b| b.map(|b| (b.cid, b.data))).collect::<Result<_, _>>().unwrap();
    (roots, blocks)
}

struct Blocks(HashMap<Cid, Bytes>);

impl BlockSource for Blocks {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        self.0.get(cid).cloned().ok_or(ReadError::NotFound(*cid))
    }
}

/// A file's bytes read back from the blocks of a CAR alone.
fn file_from_car(root: &Cid, blocks: &[(Cid, Bytes)]) -> Vec<u8> {
    let source = Blocks(blocks.iter().cloned().collect());
    let mut out = Vec::new();
    xnode_dag::FileReader::open(&source, root, 0, u64::MAX).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn a_member_without_the_leaves_serves_blocks_cars_and_content() {
    let tmp = tempfile::tempdir().unwrap();
    // The tree: a 13-leaf file, a HAMT-sharded directory, and a page.
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("many")).unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 4321, 21);
    std::fs::write(tree.join("big.bin"), &data).unwrap();
    std::fs::write(tree.join("hello.txt"), b"hello gateway\n").unwrap();
    // Sharded once the names and CIDs of the links pass 256 KiB: 5000 entries of ~30 + 34 bytes.
    for i in 0..5000 {
        std::fs::write(tree.join("many").join(format!("entry-with-a-longish-name-{i:05}.txt")), format!("{i}\n"))
            .unwrap();
    }
    let root = ok(cli(&tmp.path().join("alpha"), None, &["--offline", "add", "-r", "-Q", tree.to_str().unwrap()]));
    let root = root.trim().lines().last().unwrap().to_string();

    let alpha = start(tmp.path(), "alpha", None, &[]);
    let beta = start(tmp.path(), "beta", Some(&alpha.gossip), &[("XNODE_STORAGE_MAX", "64MiB")]);
    let gamma = start(tmp.path(), "gamma", Some(&alpha.gossip), &[]);
    wait_for_members(&[&alpha, &beta, &gamma]);
    let gw = |path: &str| beta.url(&format!("/ipfs/{root}{path}"));

    // HEAD of the file through its path: the headers, no body.
    let head = ureq::head(&gw("/big.bin?timeout=20")).call().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.header("content-length"), Some(data.len().to_string().as_str()));
    assert_eq!(head.header("cache-control"), Some("public, max-age=29030400, immutable"));
    assert_eq!(head.header("x-ipfs-path"), Some(format!("/ipfs/{root}/big.bin").as_str()));
    let roots: Vec<String> = head.header("x-ipfs-roots").unwrap().split(',').map(str::to_string).collect();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], root);
    let big: Cid = roots[1].parse().unwrap();
    assert_eq!(head.header("etag"), Some(format!("\"{big}\"").as_str()));
    let mut none = Vec::new();
    head.into_reader().read_to_end(&mut none).unwrap();
    assert!(none.is_empty(), "HEAD has no body");

    // The file's leaves, from its root block, served raw; beta holds none of them.
    let (status, h, root_block) = get(&beta.url(&format!("/ipfs/{big}?format=raw&timeout=20")), &[]);
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/vnd.ipld.raw");
    assert_eq!(h["etag"], format!("\"{big}.raw\""));
    assert_eq!(h["content-disposition"], format!("attachment; filename=\"{big}.bin\""));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(Sha256::digest(&root_block).as_slice(), big.hash().digest());
    let leaves = xnode_dag::block_links(&big, &Bytes::from(root_block)).unwrap();
    assert_eq!(leaves.len(), 13);
    let held: serde_json::Value =
        ureq::get(&beta.url("/api/v1/blocks?limit=10000")).call().unwrap().into_json().unwrap();
    let held: Vec<&str> = held["held"]["cids"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(leaves.iter().all(|l| !held.contains(&l.to_string().as_str())), "beta holds a leaf already");
    for (i, leaf) in leaves.iter().enumerate() {
        // Alternately by `format` and by `Accept` (which also names where the raw form lives).
        let (status, h, body) = if i % 2 == 0 {
            get(&beta.url(&format!("/ipfs/{leaf}?format=raw&timeout=20")), &[])
        } else {
            get(&beta.url(&format!("/ipfs/{leaf}?timeout=20")), &[("Accept", "application/vnd.ipld.raw")])
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(Sha256::digest(&body).as_slice(), leaf.hash().digest(), "leaf {i} does not match its CID");
        if i % 2 == 1 {
            assert_eq!(h["content-location"], format!("/ipfs/{leaf}?timeout=20&format=raw"));
        }
    }

    // A byte range as a CAR: the root and only the two leaves holding bytes 1,000,000 to 1,100,000.
    let (status, h, car) = get(&gw("/big.bin?format=car&entity-bytes=1000000:1100000&timeout=20"), &[]);
    assert_eq!(status, 200);
    assert_eq!(h["content-type"], "application/vnd.ipld.car; version=1; order=dfs; dups=n");
    let (car_roots, blocks) = read_car(&car);
    assert_eq!(car_roots, [root.parse::<Cid>().unwrap()]);
    let cids: Vec<Cid> = blocks.iter().map(|b| b.0).collect();
    assert_eq!(cids[1..], [big, leaves[3], leaves[4]], "the path's block, then the range's");

    // The whole file as a CAR, by `Accept`: every block once, depth-first, and the bytes read back from it alone.
    let (status, h, car) =
        get(&beta.url(&format!("/ipfs/{big}?timeout=30")), &[("Accept", "application/vnd.ipld.car; dups=n")]);
    assert_eq!(status, 200);
    assert!(h["etag"].starts_with("W/\""), "a CAR's ETag is weak: {}", h["etag"]);
    let (car_roots, blocks) = read_car(&car);
    assert_eq!(car_roots, [big]);
    assert_eq!(blocks.len(), 14);
    assert_eq!(blocks.iter().skip(1).map(|b| b.0).collect::<Vec<_>>(), leaves);
    assert!(file_from_car(&big, &blocks) == data, "the CAR's file differs");
    // `dag-scope=block`: only the block at the end of the path, after the path's.
    let (_, _, car) = get(&gw("/big.bin?format=car&dag-scope=block&timeout=20"), &[]);
    assert_eq!(read_car(&car).1.iter().map(|b| b.0).collect::<Vec<_>>()[1..], [big]);

    // The HAMT directory: an entry resolved through its shards, the directory's own blocks, and the content.
    let entry = "entry-with-a-longish-name-04321.txt";
    let (status, h, body) = get(&gw(&format!("/many/{entry}?timeout=20")), &[]);
    assert_eq!((status, body.as_slice()), (200, &b"4321\n"[..]));
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["x-ipfs-roots"].split(',').count(), 3);
    let (_, h, car) = get(&gw("/many?format=car&dag-scope=entity&timeout=20"), &[]);
    let many: Cid = h["x-ipfs-roots"].split(',').nth(1).unwrap().parse().unwrap();
    let (_, blocks) = read_car(&car);
    assert!(blocks.len() > 2, "a sharded directory has several shards: {}", blocks.len());
    assert_eq!(blocks[1].0, many);
    assert!(blocks.iter().all(|(c, _)| c.codec() == xnode_dag::DAG_PB), "no entry's blocks in an entity CAR");
    let (_, _, car) = get(&gw(&format!("/many/{entry}?format=car&timeout=20")), &[]);
    let (_, blocks) = read_car(&car);
    assert!(blocks.len() >= 3 && blocks.len() < 8, "root, shards on the way, the entry: {}", blocks.len());

    // Content: a range of the file, the directory listing (after the redirect that adds its slash), the page.
    let (status, h, body) = get(&gw("/big.bin?timeout=20"), &[("Range", "bytes=2000000-2000099")]);
    assert_eq!(status, 206);
    assert_eq!(h["content-range"], format!("bytes 2000000-2000099/{}", data.len()));
    assert!(body == data[2_000_000..2_000_100]);
    let (status, h, _) = get(&gw("?timeout=20"), &[]);
    assert_eq!(status, 301);
    assert_eq!(h["location"], format!("/ipfs/{root}/?timeout=20"));
    let (status, h, body) = get(&gw("/?timeout=20"), &[]);
    assert_eq!(status, 200);
    assert!(h["content-type"].starts_with("text/html"));
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("big.bin") && html.contains("hello.txt") && html.contains("many"), "{html}");

    // The probe CID, and what is not there: 404 with a JSON error after the timeout, for every format.
    let (status, _, body) = get(&beta.url("/ipfs/bafkqaaa?format=raw"), &[]);
    assert_eq!((status, body.len()), (200, 0));
    let missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for query in ["format=raw", "format=car", ""] {
        let started = Instant::now();
        let (status, _, body) = get(&beta.url(&format!("/ipfs/{missing}?{query}&timeout=1")), &[]);
        assert_eq!(status, 404, "{query}: {}", String::from_utf8_lossy(&body));
        let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(err["error"].as_str().unwrap().contains(missing), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let (status, _, body) = get(&gw("/no-such-entry?timeout=20"), &[]);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = get(&gw("/big.bin?format=raw"), &[]);
    assert_eq!(status, 400, "raw blocks are asked for by CID alone");
    let (status, _, _) = get(&gw("?format=car&dag-scope=everything"), &[]);
    assert_eq!(status, 400);
}

#[test]
fn dag_export_and_import_over_the_api_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_bytes(1024 * 1024 + 99, 22);
    let file = tmp.path().join("f.bin");
    std::fs::write(&file, &data).unwrap();
    let cid = ok(cli(&tmp.path().join("alpha"), None, &["--offline", "add", "-Q", file.to_str().unwrap()]));
    let cid = cid.trim().to_string();
    let alpha = start(tmp.path(), "alpha", None, &[]);
    let beta = start(tmp.path(), "beta", Some(&alpha.gossip), &[]);
    wait_for_members(&[&alpha, &beta]);

    // Exported through beta, which fetches the blocks from alpha while it streams.
    let out = cli(&beta.data, Some(&beta.api), &["dag", "export", "--timeout", "20", &cid]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let car = out.stdout;
    let (roots, blocks) = read_car(&car);
    assert_eq!(roots, [cid.parse::<Cid>().unwrap()]);
    assert_eq!(blocks.len(), 6, "a root and 5 leaves");
    let car_file = tmp.path().join("f.car");
    std::fs::write(&car_file, &car).unwrap();

    // Offline, into a fresh data dir: pinned, readable, and exported again byte for byte.
    let fresh = tmp.path().join("fresh");
    let out = ok(cli(&fresh, None, &["--offline", "dag", "import", car_file.to_str().unwrap()]));
    assert_eq!(out.trim(), format!("pinned {cid}"));
    let cat = cli(&fresh, None, &["--offline", "cat", &cid]);
    assert!(cat.stdout == data, "the imported file reads back differently");
    let again = cli(&fresh, None, &["--offline", "dag", "export", &cid]);
    assert!(again.stdout == car, "offline and API exports differ");

    // Over the API, into a running node: a CAR of a file neither node has, pinned and published to the catalog.
    let other = random_bytes(300_000, 23);
    let other_file = tmp.path().join("other.bin");
    std::fs::write(&other_file, &other).unwrap();
    let scratch = tmp.path().join("scratch");
    let other_cid = ok(cli(&scratch, None, &["--offline", "add", "-Q", other_file.to_str().unwrap()]));
    let other_cid = other_cid.trim().to_string();
    let other_car = tmp.path().join("other.car");
    let out = cli(&scratch, None, &["--offline", "dag", "export", &other_cid]);
    std::fs::write(&other_car, &out.stdout).unwrap();
    let out =
        ok(cli(&beta.data, Some(&beta.api), &["dag", "import", "--name", "other.bin", other_car.to_str().unwrap()]));
    assert_eq!(out.trim(), format!("pinned {other_cid}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let files: serde_json::Value = ureq::get(&alpha.url("/api/v1/files")).call().unwrap().into_json().unwrap();
        let listed =
            files.as_array().unwrap().iter().any(|f| f["root"] == other_cid.as_str() && f["name"] == "other.bin");
        if listed {
            break;
        }
        assert!(Instant::now() < deadline, "alpha's catalog never listed the imported file: {files}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A CAR with a block that does not match its CID: refused with a 400, nothing pinned.
    let mut bad = car.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let resp =
        ureq::post(&beta.url("/api/v1/dag/import")).set("Authorization", &format!("Bearer {TOKEN}")).send_bytes(&bad);
    match resp {
        Err(ureq::Error::Status(400, r)) => assert!(r.into_string().unwrap().contains("does not match")),
        other => panic!("a tampered CAR was not refused: {other:?}"),
    }
    // Import needs the token.
    // A small body: a server refusing a large one early can reset the connection before the client reads the 401.
    let resp = ureq::post(&beta.url("/api/v1/dag/import")).send_bytes(&car[..64]);
    assert!(matches!(resp, Err(ureq::Error::Status(401, _))));
}

/// The venv of the kubo tier (`$XNODE_VENV`, default `.venv` at the workspace root).
fn venv_python() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("XNODE_VENV").map(std::path::PathBuf::from).unwrap_or_else(|| ".venv".into());
    let python = if venv.is_absolute() { venv } else { root.join(venv) }.join("bin/python");
    assert!(
        python.exists(),
        "no venv at {}: `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt`, or set XNODE_VENV",
        python.display()
    );
    python
}

/// Gateway CARs read by decoders from PyPI (`tests/car/check.py`: `ipld-car`, `ipfs-car-decoder`), and a CAR
/// written by `ipld-car` imported back. In the kubo tier of `scripts/test.sh`, which has the venv.
#[test]
#[ignore = "needs the Python venv of the kubo tier (XNODE_VENV)"]
fn gateway_cars_read_by_pypi_decoders_kubo_tier() {
    let python = venv_python();
    let tmp = tempfile::tempdir().unwrap();
    let alpha_data = tmp.path().join("alpha");
    let mut files = Vec::new();
    for (i, (len, args)) in [(2 * 1024 * 1024 + 7, &[][..]), (700_000, &["--cid-version", "1"][..])].iter().enumerate()
    {
        let path = tmp.path().join(format!("f{i}.bin"));
        std::fs::write(&path, random_bytes(*len, 30 + i as u64)).unwrap();
        let mut add = vec!["--offline", "add", "-Q"];
        add.extend_from_slice(args);
        add.push(path.to_str().unwrap());
        files.push((ok(cli(&alpha_data, None, &add)).trim().to_string(), path));
    }
    let alpha = start(tmp.path(), "alpha", None, &[]);
    for (cid, path) in &files {
        let (status, _, car) = get(&alpha.url(&format!("/ipfs/{cid}?format=car")), &[]);
        assert_eq!(status, 200);
        let car_path = tmp.path().join(format!("{cid}.car"));
        let again = tmp.path().join(format!("{cid}.ipld-car.car"));
        std::fs::write(&car_path, &car).unwrap();
        let out = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/car/check.py"))
            .args([car_path.to_str().unwrap(), cid, path.to_str().unwrap(), "--reencode", again.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let fresh = tmp.path().join(format!("fresh-{cid}"));
        let pinned = ok(cli(&fresh, None, &["--offline", "dag", "import", again.to_str().unwrap()]));
        assert_eq!(pinned.trim(), format!("pinned {cid}"));
        let cat = cli(&fresh, None, &["--offline", "cat", cid]);
        assert!(cat.stdout == std::fs::read(path).unwrap(), "{cid}: the re-encoded CAR reads back differently");
    }
}
