//! A running node (`xnode run` on ephemeral ports) driven through its HTTP API and the CLI in API mode.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{random_bytes, RunningNode};

struct Node {
    inner: RunningNode,
    api: String,
    data: PathBuf,
    token: String,
    _tmp: tempfile::TempDir,
}

impl Node {
    fn start(storage_max: &str, max_upload: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let inner = RunningNode::start(
            tmp.path(),
            "api-test",
            &[("XNODE_STORAGE_MAX", storage_max), ("XNODE_MAX_UPLOAD", max_upload), ("XNODE_ADMIN_TOKEN", "s3cret")],
        );
        let (api, data) = (inner.api.clone(), inner.data.clone());
        Node { inner, api, data, token: "s3cret".into(), _tmp: tmp }
    }

    fn url(&self, path: &str) -> String {
        self.inner.url(path)
    }

    /// The CLI in API mode, finding the admin token in the node's data dir as on the node's own machine.
    fn cli(&self) -> Command {
        self.cli_with_data_dir(&self.data)
    }

    fn cli_with_data_dir(&self, data: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xnode"));
        c.arg("--api").arg(&self.api).arg("--data-dir").arg(data).env_remove("XNODE_ADMIN_TOKEN");
        c
    }

    fn upload(&self, name: &str, body: &[u8]) -> Result<ureq::Response, ureq::Error> {
        ureq::post(&self.url(&format!("/api/v1/files?name={name}")))
            .set("Authorization", &format!("Bearer {}", self.token))
            .send_bytes(body)
    }
}

fn status_of(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    random_bytes(len, 0x9E37_79B9_7F4A_7C15)
}

#[test]
fn health_upload_download_ranges_and_listing() {
    let node = Node::start("", "");
    assert_eq!(ureq::get(&node.url("/healthz")).call().unwrap().into_string().unwrap(), "ok\n");
    let ready: serde_json::Value = ureq::get(&node.url("/readyz")).call().unwrap().into_json().unwrap();
    assert_eq!(ready["ready"], true, "a node without seeds starts its own cluster: {ready}");

    let data = pattern(700_000);
    let (code, body) = status_of(node.upload("big.bin", &data));
    assert_eq!(code, 201, "{body}");
    let up: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cid = up["cid"].as_str().unwrap().to_string();

    let resp = ureq::get(&node.url(&format!("/api/v1/files/{cid}"))).call().unwrap();
    assert_eq!(resp.header("content-length"), Some("700000"));
    let etag = resp.header("etag").unwrap().to_string();
    let mut got = Vec::new();
    resp.into_reader().read_to_end(&mut got).unwrap();
    assert!(got == data, "download differs");

    let resp =
        ureq::get(&node.url(&format!("/api/v1/files/{cid}"))).set("Range", "bytes=262140-262149").call().unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.header("content-range"), Some("bytes 262140-262149/700000"));
    let mut part = Vec::new();
    resp.into_reader().read_to_end(&mut part).unwrap();
    assert_eq!(part, &data[262_140..262_150]);
    let (code, _) =
        status_of(ureq::get(&node.url(&format!("/api/v1/files/{cid}"))).set("Range", "bytes=800000-").call());
    assert_eq!(code, 416);
    let (code, _) = status_of(ureq::get(&node.url(&format!("/api/v1/files/{cid}"))).set("If-None-Match", &etag).call());
    assert_eq!(code, 304);

    let files: serde_json::Value = ureq::get(&node.url("/api/v1/files")).call().unwrap().into_json().unwrap();
    assert_eq!(files[0]["name"], "big.bin");
    let status: serde_json::Value = ureq::get(&node.url("/api/v1/status")).call().unwrap().into_json().unwrap();
    assert_eq!(status["files"], 1);
    let members: serde_json::Value = ureq::get(&node.url("/api/v1/members")).call().unwrap().into_json().unwrap();
    assert_eq!(members[0]["name"], "api-test");
}

#[test]
fn errors_are_4xx_with_a_message() {
    let node = Node::start("1MiB", "2MiB");
    let (code, body) = status_of(ureq::get(&node.url("/api/v1/files/not-a-cid")).call());
    assert_eq!(code, 400);
    assert!(body.contains("is not a valid CID"), "{body}");
    // A CID nobody has: the node asks the network until the timeout, then names it.
    let missing = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";
    let (code, body) = status_of(ureq::get(&node.url(&format!("/api/v1/files/{missing}?timeout=1"))).call());
    assert_eq!(code, 504, "{body}");
    assert!(body.contains(missing), "{body}");

    let (code, body) = status_of(ureq::post(&node.url("/api/v1/files?name=x")).send_bytes(b"x"));
    assert_eq!(code, 401);
    assert!(body.contains("admin token"), "{body}");
    let (code, _) =
        status_of(ureq::post(&node.url("/api/v1/files?name=x")).set("Authorization", "Bearer nope").send_bytes(b"x"));
    assert_eq!(code, 401);

    let (code, body) = status_of(node.upload("full.bin", &pattern(1_500_000)));
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("storage full") && body.contains("bytes free"), "{body}");
    // The server answers an oversized upload before reading it, so speak HTTP by hand: a client library would
    // still be writing the body when the answer comes.
    let addr = node.api.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write as _;
    write!(
        tcp,
        "POST /api/v1/files?name=huge.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer s3cret\r\n\
         Content-Length: 3000000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("XNODE_MAX_UPLOAD"), "{answer}");
    let files: serde_json::Value = ureq::get(&node.url("/api/v1/files")).call().unwrap().into_json().unwrap();
    assert_eq!(files.as_array().unwrap().len(), 0, "refused uploads leave nothing behind");

    let (code, body) = status_of(
        ureq::put(&node.url("/api/v1/storage"))
            .set("Authorization", "Bearer s3cret")
            .send_json(serde_json::json!({"capacity": 5_000_000})),
    );
    assert_eq!(code, 200, "{body}");
    let storage: serde_json::Value = ureq::get(&node.url("/api/v1/storage")).call().unwrap().into_json().unwrap();
    assert_eq!(storage["capacity"], 5_000_000);
    let (code, body) = status_of(node.upload("fits-now.bin", &pattern(1_500_000)));
    assert_eq!(code, 201, "{body}");
}

#[test]
fn cli_talks_to_the_node_and_shutdown_is_graceful() {
    let mut node = Node::start("", "");
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello\n").unwrap();
    std::fs::write(tree.join("sub/b.bin"), pattern(300_000)).unwrap();

    // Without a token the CLI says how to get one; with the node's token file in --data-dir it just works.
    let out = node.cli_with_data_dir(tmp.path()).args(["add", "-r"]).arg(&tree).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
    let out = node.cli().args(["add", "-r"]).arg(&tree).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let offline = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--offline", "--data-dir"])
        .arg(tmp.path().join("hash-only"))
        .args(["add", "-r", "-n"])
        .arg(&tree)
        .output()
        .unwrap();
    assert_eq!(stdout, String::from_utf8(offline.stdout).unwrap(), "the node and the local importer agree");
    let root = stdout.lines().last().unwrap().split(' ').nth(1).unwrap().to_string();

    let dest = tmp.path().join("copy");
    let out = node.cli().args(["get", &root, "-o"]).arg(&dest).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(dest.join("sub/b.bin")).unwrap(), pattern(300_000));
    assert!(dest.join("sub/empty").is_dir());
    let ls = node.cli().arg("ls").output().unwrap();
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&root));

    let (code, _) = status_of(ureq::post(&node.url("/api/v1/shutdown")).set("Authorization", "Bearer s3cret").call());
    assert_eq!(code, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = node.inner.child.try_wait().unwrap() {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
