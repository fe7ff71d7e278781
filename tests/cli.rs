//! The `xnode` binary end to end on a local data dir: what a user types, what they see, and what survives a crash.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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
