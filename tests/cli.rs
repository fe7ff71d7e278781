//! The `xnode` binary end to end on a local data dir: what a user types, what they see, and what survives a crash.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod support;

fn xnode(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xnode"));
    cmd.arg("--offline").arg("--data-dir").arg(data).env_remove("XNODE_STORAGE_MAX").env_remove("XNODE_DATA_DIR");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("xnode runs")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "xnode failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "xnode should have failed; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// Deterministic pseudo-random bytes (SHA-256 in counter mode): incompressible and reproducible.
fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

#[test]
fn add_prints_kubo_style_lines_and_cat_get_ls_rm_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = write(tmp.path(), "hello.txt", b"hello world");
    let out = ok(xnode(&data).arg("add").arg(&file));
    assert_eq!(out, "added Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD hello.txt\n");
    let out = ok(xnode(&data).args(["add", "-Q", "--cid-version", "1"]).arg(&file));
    assert_eq!(out, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e\n");
    let out = ok(xnode(&data).args(["add", "-Q", "--profile", "unixfs-v1-2025"]).arg(&file));
    assert_eq!(out, "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e\n");

    assert_eq!(ok(xnode(&data).args(["cat", "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"])), "hello world");
    assert_eq!(
        ok(xnode(&data).args([
            "cat",
            "--offset",
            "6",
            "--length",
            "3",
            "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
        ])),
        "wor"
    );
    let ls = ok(xnode(&data).arg("ls"));
    assert!(ls.contains("Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"), "{ls}");
    let json: serde_json::Value = serde_json::from_str(&ok(xnode(&data).args(["ls", "--json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "the CIDv0 and CIDv1 roots are two files");

    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("nested/empty")).unwrap();
    write(&tree, "a.bin", &random_bytes("a", 600_000));
    write(&tree.join("nested"), "b.txt", b"bee");
    let out = ok(xnode(&data).args(["add", "-r"]).arg(&tree));
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" tree"), "root line comes last: {out}");
    assert!(out.contains(" tree/nested/empty\n"), "{out}");
    let root = last.split(' ').nth(1).unwrap();
    let dest = tmp.path().join("copy");
    ok(xnode(&data).args(["get", root, "-o"]).arg(&dest));
    assert_eq!(fs::read(dest.join("a.bin")).unwrap(), random_bytes("a", 600_000));
    assert_eq!(fs::read(dest.join("nested/b.txt")).unwrap(), b"bee");
    assert!(dest.join("nested/empty").is_dir());

    let out = ok(xnode(&data).args(["rm", root]));
    assert!(out.contains("blocks deleted"), "{out}");
    assert!(!ok(xnode(&data).arg("ls")).contains(root));
}

#[test]
fn errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let err = fails(xnode(&data).args(["cat", "not-a-cid"]));
    assert!(err.contains("\"not-a-cid\" is not a valid CID"), "{err}");
    let err = fails(xnode(&data).args(["add"]).arg(tmp.path().join("missing.txt")));
    assert!(err.contains("missing.txt: no such file or directory"), "{err}");
    let err = fails(xnode(&data).arg("add").arg(tmp.path()));
    assert!(err.contains("is a directory; use -r"), "{err}");
    let err = fails(xnode(&data).args(["cat", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"]));
    assert!(err.contains("QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH is not available"), "{err}");
    let err = fails(xnode(&data).arg("stats").env("XNODE_STORAGE_MAX", "lots"));
    assert!(err.contains("XNODE_STORAGE_MAX"), "{err}");
    let err = fails(xnode(&data).arg("stats").env("XNODE_DIRECT_IO", "yes"));
    assert!(err.contains("XNODE_DIRECT_IO=\"yes\": not true or false"), "{err}");

    let unreadable = write(tmp.path(), "secret", b"x");
    fs::set_permissions(&unreadable, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if fs::read(&unreadable).is_err() {
        // (root reads anything; the check only means something for other users)
        let err = fails(xnode(&data).arg("add").arg(&unreadable));
        assert!(err.contains("secret"), "{err}");
    }
}

#[test]
fn a_full_store_says_how_much_is_free_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let small = write(tmp.path(), "small.bin", &random_bytes("s", 300_000));
    let big = write(tmp.path(), "big.bin", &random_bytes("b", 2_000_000));
    let cid = ok(xnode(&data).args(["add", "-Q"]).arg(&small).env("XNODE_STORAGE_MAX", "1MiB"));
    let err = fails(xnode(&data).arg("add").arg(&big).env("XNODE_STORAGE_MAX", "1MiB"));
    assert!(err.contains("storage full") && err.contains("bytes free"), "{err}");
    let ls = ok(xnode(&data).arg("ls"));
    assert_eq!(ls.lines().count(), 1, "{ls}");
    let back = run(xnode(&data).args(["cat", cid.trim()]));
    assert_eq!(back.stdout, random_bytes("s", 300_000));
}

#[test]
fn only_hash_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let f = write(tmp.path(), "f", &random_bytes("f", 1_000_000));
    let cid = ok(xnode(&data).args(["add", "-Q", "--only-hash"]).arg(&f));
    let err = fails(xnode(&data).args(["cat", cid.trim()]));
    assert!(err.contains("is not available"), "{err}");
}

/// `kill -9` in the middle of adds: the store opens, every file an add reported is intact, the interrupted add left
/// no pin and no readable half-block, and the same file can be added again.
#[test]
fn kill_9_during_add_keeps_every_reported_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut reported = Vec::new();
    let mut interrupted = 0;
    for round in 0..4u32 {
        let done = write(tmp.path(), &format!("done{round}.bin"), &random_bytes(&format!("d{round}"), 1_500_000));
        let cid = ok(xnode(&data).args(["add", "-Q"]).arg(&done)).trim().to_string();
        reported.push((cid, random_bytes(&format!("d{round}"), 1_500_000)));

        let big = write(tmp.path(), "big.bin", &random_bytes(&format!("big{round}"), 96 << 20));
        let mut child = xnode(&data).args(["add", "-Q"]).arg(&big).stdout(Stdio::piped()).spawn().unwrap();
        // Let it get well into writing blocks, at a different point each round.
        let written = data.join("store");
        let deadline = Instant::now() + Duration::from_secs(20);
        while dir_size(&written) < (8 + 16 * u64::from(round)) << 20 && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let finished = status.success();
        interrupted += u32::from(!finished);

        let ls = ok(xnode(&data).args(["ls", "--json"]));
        let pins: serde_json::Value = serde_json::from_str(&ls).unwrap();
        let names: Vec<&str> = pins.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names.contains(&"big.bin"), finished, "only a finished add is pinned: {names:?}");
        for (cid, bytes) in &reported {
            let out = run(xnode(&data).args(["cat", cid]));
            assert!(out.status.success(), "{cid} unreadable after crash: {}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stdout == *bytes, "{cid} changed after crash");
        }
        if finished {
            ok(xnode(&data).arg("rm").arg(ok(xnode(&data).args(["add", "-Q", "-n"]).arg(&big)).trim()));
        }
    }
    assert!(interrupted >= 2, "the kills should land mid-add; only {interrupted} did");
    let stats = ok(xnode(&data).arg("stats"));
    let held: u64 = stats
        .lines()
        .find(|l| l.starts_with("held:"))
        .and_then(|l| l.split(['(', ' ']).rev().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(held < 4 * 1_600_000, "interrupted adds left blocks behind: {stats}");
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// The CLI against running nodes: `xnode --api URL CMD`, with the token given as a flag.
fn remote(api: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xnode"));
    cmd.env_remove("XNODE_ADMIN_TOKEN").env_remove("XNODE_DATA_DIR").env_remove("XNODE_API");
    cmd.arg("--api").arg(api);
    cmd
}

fn members_json(api: &str) -> serde_json::Value {
    serde_json::from_str(&ok(remote(api).args(["members", "--json"]))).unwrap()
}

fn state_of(api: &str, name: &str) -> Option<String> {
    members_json(api).as_array()?.iter().find(|m| m["name"] == name).map(|m| m["state"].as_str().unwrap().to_string())
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exits_with(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn operator_commands_status_ls_resize_kill_shutdown_peers_and_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let token = [("XNODE_ADMIN_TOKEN", "op-token")];
    let a = support::RunningNode::start(tmp.path(), "op-a", &token);
    let seeds = [token[0], ("XNODE_KNOWN_PEERS", a.gossip.as_str())];
    let mut b = support::RunningNode::start(tmp.path(), "op-b", &seeds);
    let mut c = support::RunningNode::start(tmp.path(), "op-c", &seeds);
    wait_until("the three members see each other", 30, || {
        members_json(&a.api).as_array().unwrap().iter().filter(|m| m["state"] == "Alive").count() == 3
    });

    // A directory with two files: `ls CID` lists its entries, `status CID` who holds its blocks.
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    write(&tree, "one.bin", &random_bytes("one", 700_000));
    write(&tree, "two.txt", b"two\n");
    let added = ok(remote(&a.api).args(["--token", "op-token", "add", "-r", "-Q"]).arg(&tree));
    let root = added.trim().to_string();
    let ls = ok(remote(&a.api).args(["ls", &root]));
    let names: Vec<&str> = ls.lines().map(|l| l.rsplit('\t').next().unwrap()).collect();
    assert_eq!(names, ["one.bin", "two.txt"], "{ls}");
    wait_until("the cluster's files include it", 10, || ok(remote(&a.api).arg("ls")).contains(&root));

    // one.bin: 3 leaves and a root; two.txt: 1 block; the directory: 1. Replication factor 2 over 3 members, so
    // at least 12 copies once placed (interior blocks may be kept by every member), none beyond 6 per member.
    let expected_blocks: u64 = 3 + 1 + 1 + 1;
    let mut holders = serde_json::Value::Null;
    wait_until("every block has two holders", 60, || {
        holders = serde_json::from_str(&ok(remote(&a.api).args(["status", &root, "--json"]))).unwrap();
        let counts: Vec<u64> =
            holders["members"].as_array().unwrap().iter().filter_map(|m| m["blocks"].as_u64()).collect();
        counts.len() == 3 && counts.iter().sum::<u64>() >= 2 * expected_blocks && counts.iter().all(|&n| n > 0)
    });
    assert_eq!(holders["blocks"], expected_blocks, "{holders}");
    assert!(holders["members"].as_array().unwrap().iter().all(|m| m["blocks"].as_u64().unwrap() <= expected_blocks));
    let text = ok(remote(&a.api).args(["status", &root]));
    assert!(text.contains("op-a") && text.contains("op-b") && text.contains("op-c"), "{text}");
    assert!(text.contains(&format!("of the {} wanted", 2 * expected_blocks)), "{text}");

    let summary: serde_json::Value = serde_json::from_str(&ok(remote(&a.api).args(["status", "--json"]))).unwrap();
    assert_eq!(summary["members_alive"], 3, "{summary}");
    assert_eq!(summary["files"], 1, "{summary}");
    assert_eq!(summary["replication"], 2, "{summary}");
    assert!(ok(remote(&a.api).arg("status")).contains("3 alive"));

    let peers = ok(remote(&a.api).arg("peers"));
    for m in members_json(&a.api).as_array().unwrap() {
        assert!(peers.contains(m["meta"]["peer_id"].as_str().unwrap()), "{peers}");
    }

    // stats against a running node, from a directory with no data dir: nothing is created there.
    let cwd = tmp.path().join("empty");
    fs::create_dir_all(&cwd).unwrap();
    let stats = ok(remote(&a.api).arg("stats").current_dir(&cwd));
    assert!(stats.contains("capacity:") && stats.contains("blocks:"), "{stats}");
    assert!(fs::read_dir(&cwd).unwrap().next().is_none(), "stats --api created files in the working directory");

    // resize, through a's API, of another member; without the token it says how to give one.
    let err = fails(remote(&a.api).args(["resize", "op-b", "5MiB"]).current_dir(&cwd));
    assert!(err.contains("--token"), "{err}");
    let out = ok(remote(&a.api).args(["resize", "op-b", "5MiB", "--token", "op-token"]));
    assert!(out.contains("op-b") && out.contains("5.0 MiB"), "{out}");
    let storage: serde_json::Value = ureq::get(&b.url("/api/v1/storage")).call().unwrap().into_json().unwrap();
    assert_eq!(storage["capacity"], 5 << 20);

    // shutdown: b leaves and exits 0, seen as left (never dead); kill: c exits 0 without leaving, seen dead.
    ok(remote(&a.api).args(["shutdown", "op-b", "--token", "op-token"]));
    assert!(exits_with(&mut b.child, 15).success(), "a shutdown exits 0");
    wait_until("op-b is seen as left", 15, || state_of(&a.api, "op-b").as_deref() == Some("Left"));
    let out = ok(remote(&a.api).args(["kill", "op-c", "--token", "op-token"]));
    assert!(out.contains("started again"), "says how to bring it back: {out}");
    assert!(exits_with(&mut c.child, 15).success(), "a kill exits 0, so on-failure supervisors leave it down");
    wait_until("op-c is seen as dead", 20, || state_of(&a.api, "op-c").as_deref() == Some("Dead"));
    assert_eq!(state_of(&a.api, "op-b").as_deref(), Some("Left"), "a member that left is never shown dead");
}

#[test]
fn each_command_help_lists_its_own_flags() {
    let help = |args: &[&str]| ok(Command::new(env!("CARGO_BIN_EXE_xnode")).args(args));
    let run = help(&["run", "--help"]);
    for var in ["XNODE_KNOWN_PEERS", "XNODE_STORAGE_MAX", "XNODE_ADVERTISE_ADDR", "--data-dir"] {
        assert!(run.contains(var), "run --help lacks {var}: {run}");
    }
    assert!(!run.contains("--token") && !run.contains("--offline"), "{run}");
    let status = help(&["status", "--help"]);
    assert!(status.contains("--api") && status.contains("XNODE_API"), "{status}");
    assert!(!status.contains("--token") && !status.contains("--offline"), "{status}");
    let resize = help(&["resize", "--help"]);
    assert!(resize.contains("--token") && resize.contains("XNODE_ADMIN_TOKEN") && !resize.contains("--offline"));
    let cat = help(&["cat", "--help"]);
    assert!(cat.contains("--offline") && cat.contains("--timeout"), "{cat}");
    let top = help(&["--help"]);
    for cmd in ["status", "resize", "kill", "shutdown", "peers"] {
        assert!(top.contains(cmd), "{top}");
    }
}

/// An upload the node refuses while it is still being sent (here over its `XNODE_MAX_UPLOAD`) cuts the connection
/// under the sender: `add -r` says the node refused or stopped and where to look, never that no node answers.
#[test]
fn an_upload_refused_midway_is_not_reported_as_no_node() {
    let tmp = tempfile::tempdir().unwrap();
    let node = support::RunningNode::start(
        tmp.path(),
        "upload-cut",
        &[("XNODE_ADMIN_TOKEN", "cut-token"), ("XNODE_MAX_UPLOAD", "1MiB")],
    );
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    for i in 0..8 {
        write(&tree, &format!("part{i}.bin"), &random_bytes(&format!("cut{i}"), 8 << 20));
    }
    let err = fails(remote(&node.api).args(["--token", "cut-token", "add", "-r", "-Q"]).arg(&tree));
    eprintln!("{err}");
    assert!(!err.contains("no node answers"), "{err}");
    assert!(err.contains("XNODE_MAX_UPLOAD"), "names the limit it may have hit: {err}");
    // The node is still there and took nothing.
    assert!(ok(remote(&node.api).arg("ls")).trim().is_empty());
}

/// A directory DAG no importer would make: a flat UnixFS directory whose links are `entries`, in this order (the
/// dag crate's encoders, so any name and any repetition), with the blocks below it. Returns the CAR of it all.
fn crafted_directory(entries: &[(&str, xnode_dag::Added)], mut blocks: Vec<xnode_dag::Block>) -> (String, Vec<u8>) {
    use xnode_dag::pb::{DataType, PbLink, PbNode, UnixFsData};
    let links = entries
        .iter()
        .map(|(name, added)| PbLink { cid: added.cid, name: name.to_string(), tsize: added.tsize })
        .collect();
    let node = PbNode { links, data: Some(UnixFsData::new(DataType::Directory).encode().into()) };
    let data = node.encode();
    let root = xnode_dag::cid_v0(&data);
    blocks.push(xnode_dag::Block { cid: root, data: data.into() });
    let mut car = xnode_dag::car::CarWriter::new(Vec::new(), &[root]).unwrap();
    for b in &blocks {
        car.write(&b.cid, &b.data).unwrap();
    }
    (root.to_string(), car.into_inner())
}

fn crafted_file(content: &[u8], blocks: &mut Vec<xnode_dag::Block>) -> xnode_dag::Added {
    xnode_dag::import_file(&xnode_dag::ImportOptions::default(), content, blocks).unwrap()
}

fn crafted_symlink(target: &Path, blocks: &mut Vec<xnode_dag::Block>) -> xnode_dag::Added {
    xnode_dag::import_symlink(&xnode_dag::ImportOptions::default(), target, blocks).unwrap()
}

/// The two crafted directories of the `get` tests: `same` listed twice, and a symlink `a` to `outside` followed
/// by a file `a` (which a naive writer would write through the symlink, outside the target).
fn hostile_directories(dir: &Path, outside: &Path) -> [(String, PathBuf); 2] {
    let mut blocks = Vec::new();
    let one = crafted_file(b"first", &mut blocks);
    let two = crafted_file(b"second", &mut blocks);
    let (twice, car) = crafted_directory(&[("same", one), ("same", two)], blocks);
    let twice_car = write(dir, "twice.car", &car);
    let mut blocks = Vec::new();
    let link = crafted_symlink(outside, &mut blocks);
    let payload = crafted_file(b"written through the symlink", &mut blocks);
    let (through, car) = crafted_directory(&[("a", link), ("a", payload)], blocks);
    let through_car = write(dir, "through.car", &car);
    [(twice, twice_car), (through, through_car)]
}

/// Asserts `get` refused `root` into `dest`, wrote nothing outside it, and says why.
fn assert_refused(err: &str, dest: &Path, outside: &Path) {
    assert!(err.contains("twice") || err.contains("repeated"), "says a name repeats: {err}");
    assert!(!outside.exists(), "a file was written outside the target, at {}", outside.display());
    if let Ok(entries) = fs::read_dir(dest) {
        for e in entries {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            assert!(meta.is_symlink() || meta.len() == 5, "only the first entry may be there: {}", e.path().display());
        }
    }
}

#[test]
fn get_refuses_a_directory_listing_a_name_twice_and_never_writes_through_a_symlink_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let outside = tmp.path().join("outside").join("victim.txt");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    for (root, car) in hostile_directories(tmp.path(), &outside) {
        let out = ok(xnode(&data).args(["dag", "import"]).arg(&car));
        assert!(out.contains(&root), "{out}");
        let dest = tmp.path().join(format!("got-{root}"));
        let err = fails(xnode(&data).args(["get", &root, "-o"]).arg(&dest));
        assert_refused(&err, &dest, &outside);
    }
}

#[test]
fn get_refuses_a_directory_listing_a_name_twice_and_never_writes_through_a_symlink_from_a_node() {
    let tmp = tempfile::tempdir().unwrap();
    let node = support::RunningNode::start(tmp.path(), "get-hostile", &[("XNODE_ADMIN_TOKEN", "get-token")]);
    let outside = tmp.path().join("outside").join("victim.txt");
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    for (root, car) in hostile_directories(tmp.path(), &outside) {
        let out = ok(remote(&node.api).args(["--token", "get-token", "dag", "import"]).arg(&car));
        assert!(out.contains(&root), "{out}");
        let dest = tmp.path().join(format!("got-{root}"));
        let err = fails(remote(&node.api).args(["get", &root, "-o"]).arg(&dest));
        assert_refused(&err, &dest, &outside);
    }
}
