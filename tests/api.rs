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
    assert_eq!(code, 413, "{body}");
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

/// A `multipart/form-data` body with one text part and one file part, as a browser's form sends it.
fn multipart(file_name: &str, data: &[u8]) -> (String, Vec<u8>) {
    let boundary = "xnode-test-boundary-7c15";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `name value` lines of an OpenMetrics scrape (labels kept in the name).
fn scrape(node: &Node) -> std::collections::HashMap<String, f64> {
    let resp = ureq::get(&node.url("/metrics")).call().unwrap();
    assert!(resp.content_type().contains("openmetrics") || resp.content_type().contains("text/plain"));
    let text = resp.into_string().unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse::<f64>().ok()?))
        })
        .collect()
}

#[test]
fn multipart_upload_blocks_metrics_and_the_openapi_document() {
    let node = Node::start("64MiB", "");
    let data = pattern(600_000);
    let (content_type, body) = multipart("from-a-form.bin", &data);
    let (code, answer) = status_of(
        ureq::post(&node.url("/api/v1/files"))
            .set("Authorization", "Bearer s3cret")
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    );
    assert_eq!(code, 201, "{answer}");
    let up: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(up["name"], "from-a-form.bin");
    let got = ureq::get(&node.url(&format!("/api/v1/files/{}", up["cid"].as_str().unwrap()))).call().unwrap();
    assert_eq!(got.content_type(), "application/octet-stream");
    let mut bytes = Vec::new();
    got.into_reader().read_to_end(&mut bytes).unwrap();
    assert!(bytes == data, "the multipart upload stored other bytes");

    let (ct, no_file) = {
        let boundary = "b";
        (
            format!("multipart/form-data; boundary={boundary}"),
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n--{boundary}--\r\n"),
        )
    };
    let (code, answer) = status_of(
        ureq::post(&node.url("/api/v1/files"))
            .set("Authorization", "Bearer s3cret")
            .set("Content-Type", &ct)
            .send_string(&no_file),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("no file part"), "{answer}");

    // 3 leaves, the root and the file's catalog entry (appended by the add itself when it streams, within a round
    // of the add when it was stored here first).
    let deadline = Instant::now() + Duration::from_secs(10);
    let blocks = loop {
        let blocks: serde_json::Value =
            ureq::get(&node.url("/api/v1/blocks?limit=2")).call().unwrap().into_json().unwrap();
        if blocks["held"]["count"] == 5 || Instant::now() > deadline {
            break blocks;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(blocks["held"]["count"], 5, "3 leaves, a root and a catalog entry: {blocks}");
    assert_eq!(blocks["held"]["cids"].as_array().unwrap().len(), 2);
    assert_eq!(blocks["wanted"]["count"], 0);

    let before = scrape(&node);
    for family in [
        "xnode_blocks_held",
        "xnode_blocks_wanted",
        "xnode_blocks_under_replicated",
        "xnode_blocks_missing",
        "xnode_stored_bytes",
        "xnode_capacity_bytes",
        "xnode_disk_bytes",
        "xnode_peers",
        "xnode_bitswap_received_bytes_total",
        "xnode_bitswap_sent_bytes_total",
        "xnode_ingest_received_bytes_total",
        "xnode_ingest_sent_bytes_total",
        "xnode_members{state=\"alive\"}",
        "xnode_members{state=\"dead\"}",
    ] {
        assert!(before.contains_key(family), "no {family} in /metrics: {before:?}");
    }
    assert_eq!(before["xnode_capacity_bytes"], 64.0 * 1024.0 * 1024.0);
    assert_eq!(before["xnode_members{state=\"alive\"}"], 1.0);
    assert!(
        before.keys().any(|k| k.starts_with("xnode_http_request_duration_seconds_bucket")
            && k.contains("route=\"/api/v1/files\"")
            && k.contains("method=\"POST\"")),
        "request latencies are labelled by route"
    );
    let (code, _) = status_of(node.upload("second.bin", &pattern(300_000)[..]));
    assert_eq!(code, 201);
    let after = scrape(&node);
    assert!(after["xnode_stored_bytes"] > before["xnode_stored_bytes"], "bytes stored did not grow");
    assert!(after["xnode_blocks_held"] > before["xnode_blocks_held"]);

    let doc: serde_json::Value = ureq::get(&node.url("/api/v1/openapi.json")).call().unwrap().into_json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/api/v1/status", "get"),
        ("/api/v1/members", "get"),
        ("/api/v1/files", "get"),
        ("/api/v1/files", "post"),
        ("/api/v1/files/{cid}", "get"),
        ("/api/v1/files/{cid}", "delete"),
        ("/api/v1/ls/{cid}", "get"),
        ("/api/v1/stat/{cid}", "get"),
        ("/api/v1/blocks", "get"),
        ("/api/v1/storage", "get"),
        ("/api/v1/storage", "put"),
        ("/api/v1/shutdown", "post"),
        ("/api/v1/kill", "post"),
        ("/api/v1/auth", "get"),
        ("/api/v1/transfers", "get"),
        ("/api/v1/dag/import", "post"),
        ("/api/v1/dag/export/{cid}", "get"),
        ("/ipfs/{cid}", "get"),
        ("/pins", "get"),
        ("/pins", "post"),
        ("/pins/{requestid}", "get"),
        ("/pins/{requestid}", "post"),
        ("/pins/{requestid}", "delete"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["securitySchemes"]["admin"].is_object());
}

#[test]
fn token_rules_csrf_and_bounded_bodies() {
    let node = Node::start("", "");
    let auth = || ureq::get(&node.url("/api/v1/auth"));
    let (code, body) = status_of(auth().call());
    assert_eq!(code, 401, "no token");
    assert!(body.contains("XNODE_ADMIN_TOKEN"), "{body}");
    let (code, _) = status_of(auth().set("Authorization", "Bearer wrong").call());
    assert_eq!(code, 401, "wrong bearer token");
    let (code, _) = status_of(auth().set("Authorization", "Bearer s3cret").call());
    assert_eq!(code, 204);

    // Signing in on the page opens a session: a random id in an HttpOnly, SameSite=Strict cookie, never the token;
    // a wrong token says what to use.
    let host = node.api.trim_start_matches("http://").to_string();
    let login = |token: &str, origin: &str| {
        ureq::post(&node.url("/ui/login"))
            .set("Origin", origin)
            .set("HX-Request", "true")
            .send_form(&[("token", token)])
    };
    let (code, body) = status_of(login("nope", &node.api));
    assert_eq!(code, 401);
    assert!(body.contains("XNODE_ADMIN_TOKEN"), "{body}");
    let (code, _) = status_of(login("s3cret", "http://evil.example"));
    assert_eq!(code, 403, "a cross-site sign-in is refused");
    let resp = login("s3cret", &format!("http://{host}")).unwrap();
    let cookie = resp.header("set-cookie").unwrap().to_string();
    assert!(cookie.starts_with("xnode_session=") && !cookie.contains("s3cret"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Max-Age="));
    let session = cookie.split(';').next().unwrap().to_string();
    assert!(session.len() > 60, "a long random id: {session}");

    // The dashboard's cookie: only with the page's header, and never from another site.
    let (code, body) = status_of(auth().set("Cookie", &session).call());
    assert_eq!(code, 403, "a cookie alone (a cross-site form could send it) is refused: {body}");
    let (code, _) = status_of(auth().set("Cookie", &session).set("X-Xnode-Csrf", "1").call());
    assert_eq!(code, 204, "the page's requests pass");
    let (code, _) = status_of(
        auth().set("Cookie", "xnode_session=s3cret").set("X-Xnode-Csrf", "1").set("Origin", &node.api).call(),
    );
    assert_eq!(code, 401, "the token is not a session");
    let (code, body) = status_of(
        ureq::post(&node.url("/api/v1/shutdown"))
            .set("Cookie", &session)
            .set("HX-Request", "true")
            .set("Origin", "http://evil.example")
            .call(),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    let (code, _) = status_of(
        ureq::post(&node.url("/api/v1/shutdown"))
            .set("Cookie", &session)
            .set("X-Xnode-Csrf", "1")
            .set("Sec-Fetch-Site", "cross-site")
            .call(),
    );
    assert_eq!(code, 403);
    // Signing out revokes the session on the server, not only in the browser.
    let out = ureq::post(&node.url("/ui/logout")).set("Cookie", &session).set("HX-Request", "true").call().unwrap();
    assert_eq!(out.status(), 200);
    let (code, _) = status_of(auth().set("Cookie", &session).set("X-Xnode-Csrf", "1").call());
    assert_eq!(code, 401, "a signed-out session is dead");

    // Bodies other than uploads are bounded; errors name the problem.
    let (code, _) = status_of(
        ureq::put(&node.url("/api/v1/storage"))
            .set("Authorization", "Bearer s3cret")
            .set("Content-Type", "application/json")
            .send_string(&format!("{{\"capacity\": 1, \"pad\": \"{}\"}}", "x".repeat(100_000))),
    );
    assert_eq!(code, 413, "a 100 kB JSON body");
    let (code, _) = status_of(
        ureq::put(&node.url("/api/v1/storage")).set("Authorization", "Bearer s3cret").send_string("capacity=1"),
    );
    assert!(code == 400 || code == 415, "not JSON: {code}");
    let (code, body) =
        status_of(ureq::delete(&node.url("/api/v1/files/nonsense")).set("Authorization", "Bearer s3cret").call());
    assert_eq!(code, 400, "{body}");
    let (code, body) = status_of(
        ureq::delete(&node.url("/api/v1/files/QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"))
            .set("Authorization", "Bearer s3cret")
            .call(),
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) =
        status_of(ureq::post(&node.url("/api/v1/files")).set("Authorization", "Bearer s3cret").send_bytes(b"no name"));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("name"), "{body}");
    let (code, _) = status_of(node.upload("held.bin", &pattern(1_500_000)));
    assert_eq!(code, 201);
    let (code, body) = status_of(
        ureq::put(&node.url("/api/v1/storage"))
            .set("Authorization", "Bearer s3cret")
            .send_json(serde_json::json!({"capacity": "1MiB"})),
    );
    assert_eq!(code, 409, "shrinking below what is held: {body}");
}

#[test]
fn dashboard_page_fragments_and_vendored_htmx() {
    let node = Node::start("", "");
    let page = ureq::get(&node.url("/")).call().unwrap();
    assert!(page.content_type().starts_with("text/html"));
    let html = page.into_string().unwrap();
    let provenance = include_str!("../internal/api/assets/PROVENANCE");
    let version = provenance.lines().find_map(|l| l.strip_prefix("htmx_version=")).unwrap();
    assert!(html.contains(&format!("<span id=\"htmx-version\">{version}</span>")), "the page shows htmx's version");
    assert!(html.contains("data-name=\"api-test\""), "the page lists the member");
    assert!(html.contains("id=\"login\""), "signed out: the page asks for the token");
    let signed_in =
        ureq::get(&node.url("/")).set("Authorization", "Bearer s3cret").call().unwrap().into_string().unwrap();
    assert!(signed_in.contains("id=\"upload\"") && signed_in.contains("class=\"danger kill\""));

    let js = ureq::get(&node.url(&format!("/assets/htmx.min.js?v={version}"))).call().unwrap();
    assert!(js.header("cache-control").unwrap().contains("immutable"));
    let mut served = Vec::new();
    js.into_reader().read_to_end(&mut served).unwrap();
    assert!(served == include_bytes!("../internal/api/assets/htmx-2.min.js"), "htmx is served as vendored");
    for fragment in ["/ui/members", "/ui/files", "/ui/wanted", "/assets/hx-sse.min.js", "/assets/xnode.css"] {
        let (code, _) = status_of(ureq::get(&node.url(fragment)).call());
        assert_eq!(code, 200, "{fragment}");
    }

    // Actions from the page: a resize of this node through its own form, in human units.
    let (code, body) = status_of(
        ureq::post(&node.url("/ui/members/api-test/storage"))
            .set("Authorization", "Bearer s3cret")
            .send_form(&[("capacity", "3MiB")]),
    );
    assert_eq!(code, 200, "{body}");
    let storage: serde_json::Value = ureq::get(&node.url("/api/v1/storage")).call().unwrap().into_json().unwrap();
    assert_eq!(storage["capacity"], 3 << 20);
    let (code, body) = status_of(
        ureq::post(&node.url("/ui/members/api-test/storage"))
            .set("Authorization", "Bearer s3cret")
            .send_form(&[("capacity", "lots")]),
    );
    assert_eq!(code, 422);
    assert!(body.contains("not a size"), "{body}");
    let (code, body) =
        status_of(ureq::post(&node.url("/ui/members/nobody/kill")).set("Authorization", "Bearer s3cret").call());
    assert_eq!(code, 404);
    assert!(body.contains("api-test"), "names the members: {body}");
    // Full: the page's upload says so.
    let (content_type, body) = multipart("big.bin", &pattern(4 << 20));
    let (code, answer) = status_of(
        ureq::post(&node.url("/ui/files"))
            .set("Authorization", "Bearer s3cret")
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    );
    assert_eq!(code, 413, "{answer}");
    assert!(answer.contains("storage full"), "{answer}");
}

#[test]
fn kill_stops_without_leaving() {
    let mut node = Node::start("", "");
    let (code, _) = status_of(ureq::post(&node.url("/api/v1/kill")).call());
    assert_eq!(code, 401);
    let (code, _) = status_of(ureq::post(&node.url("/api/v1/kill")).set("Authorization", "Bearer s3cret").call());
    assert_eq!(code, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = node.inner.child.try_wait().unwrap() {
            // Status 0 so that supervisors restarting on failure leave a killed node down; it did not leave.
            assert!(status.success(), "a kill exits 0, got {status}");
            std::thread::sleep(Duration::from_millis(200));
            let log = std::fs::read_to_string(node._tmp.path().join("api-test.log")).unwrap_or_default();
            assert!(log.contains("without leaving"), "{log}");
            assert!(!log.contains("left the cluster"), "a kill is not a leave: {log}");
            break;
        }
        assert!(Instant::now() < deadline, "node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn admin_actions_are_forwarded_to_members_that_share_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("shared/admin-token");
    let token_file = token_file.to_str().unwrap();
    let shared = [("XNODE_ADMIN_TOKEN_FILE", token_file)];
    let a = RunningNode::start(tmp.path(), "fwd-a", &shared);
    let seed = a.gossip.clone();
    let b = RunningNode::start(tmp.path(), "fwd-b", &[shared[0], ("XNODE_KNOWN_PEERS", &seed)]);
    let c = RunningNode::start(tmp.path(), "fwd-c", &[("XNODE_ADMIN_TOKEN", "other"), ("XNODE_KNOWN_PEERS", &seed)]);
    let token = std::fs::read_to_string(token_file).unwrap();
    assert_eq!(token.len(), 32, "the first node made a random token");
    let alive = |n: &RunningNode| -> usize {
        let v: serde_json::Value =
            ureq::get(&n.url("/api/v1/members")).call().ok().and_then(|r| r.into_json().ok()).unwrap_or_default();
        v.as_array().map_or(0, |a| a.iter().filter(|m| m["state"] == "Alive").count())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(&a) < 3 {
        assert!(Instant::now() < deadline, "the three nodes did not meet");
        std::thread::sleep(Duration::from_millis(200));
    }
    let resize = |target: &str, size: &str| {
        status_of(
            ureq::post(&a.url(&format!("/ui/members/{target}/storage")))
                .set("Authorization", &format!("Bearer {token}"))
                .send_form(&[("capacity", size)]),
        )
    };
    let (code, body) = resize("fwd-b", "5MiB");
    assert_eq!(code, 200, "{body}");
    let storage: serde_json::Value = ureq::get(&b.url("/api/v1/storage")).call().unwrap().into_json().unwrap();
    assert_eq!(storage["capacity"], 5 << 20, "fwd-b was resized through fwd-a");
    let (code, body) = resize("fwd-c", "5MiB");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("fwd-c") && body.contains("XNODE_ADMIN_TOKEN"), "{body}");
    drop(c);
}

/// The body of an error answer: JSON with an `error` message.
fn error_of(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    let (code, body) = status_of(r);
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("HTTP {code}: not JSON ({e}): {body:?}"));
    let message = v["error"].as_str().unwrap_or_else(|| panic!("HTTP {code}: no `error`: {body}")).to_string();
    assert!(!message.is_empty(), "HTTP {code}: an empty message");
    (code, message)
}

#[test]
fn every_error_status_is_json_with_what_to_do() {
    let node = Node::start("1MiB", "");
    let bearer = "Bearer s3cret";
    // 404 of an unknown route, 405 of a wrong method.
    let (code, msg) = error_of(ureq::get(&node.url("/api/v1/nope")).call());
    assert_eq!(code, 404);
    assert!(msg.contains("/api/v1/nope") && msg.contains("openapi.json"), "{msg}");
    let (code, msg) = error_of(ureq::delete(&node.url("/api/v1/status")).call());
    assert_eq!(code, 405);
    assert!(msg.contains("DELETE") && msg.contains("GET"), "{msg}");
    // 401 speaks to the CLI user as well as to scripts.
    let (code, msg) = error_of(ureq::put(&node.url("/api/v1/storage")).send_string("{}"));
    assert_eq!(code, 401);
    assert!(msg.contains("--token") && msg.contains("XNODE_ADMIN_TOKEN"), "{msg}");
    // 415: a body that does not say it is JSON.
    let (code, msg) = error_of(ureq::put(&node.url("/api/v1/storage")).set("Authorization", bearer).send_string("{}"));
    assert_eq!(code, 415);
    assert!(msg.contains("Content-Type: application/json"), "{msg}");
    // 422: well-formed JSON of the wrong shape, and a size that is not one.
    let put = || ureq::put(&node.url("/api/v1/storage")).set("Authorization", bearer);
    let (code, msg) = error_of(put().send_json(serde_json::json!({"size": 5})));
    assert_eq!(code, 422);
    assert!(msg.contains("capacity"), "{msg}");
    let (code, msg) = error_of(put().send_json(serde_json::json!({"capacity": "lots"})));
    assert_eq!(code, 422);
    assert!(msg.contains("10GiB"), "{msg}");
    // 400: malformed JSON.
    let (code, _) = error_of(put().set("Content-Type", "application/json").send_string("{"));
    assert_eq!(code, 400);
    // Sizes in human units are accepted where bytes are.
    let (code, body) = status_of(put().send_json(serde_json::json!({"capacity": "3MiB"})));
    assert_eq!(code, 200, "{body}");
    let storage: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(storage["capacity"], 3 << 20);
    let (code, body) = status_of(put().send_json(serde_json::json!({"capacity": "2 MB"})));
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["capacity"], 2_000_000);
    // 413 of a full store names the run-time way to raise the capacity.
    let (code, msg) = error_of(node.upload("full.bin", &pattern(2_500_000)));
    assert_eq!(code, 413);
    assert!(msg.contains("xnode resize") && msg.contains("PUT /api/v1/storage"), "{msg}");
    // 404 of a member nobody has, through the member routes.
    let (code, msg) =
        error_of(ureq::post(&node.url("/api/v1/members/nobody/kill")).set("Authorization", bearer).call());
    assert_eq!(code, 404);
    assert!(msg.contains("api-test"), "names the members there are: {msg}");
    // 409: shrinking below what a lone node holds (nobody could take the excess).
    let (code, body) = status_of(node.upload("small.bin", &pattern(1_500_000)));
    assert_eq!(code, 201, "{body}");
    let (code, msg) = error_of(put().send_json(serde_json::json!({"capacity": "1MiB"})));
    assert_eq!(code, 409);
    assert!(msg.contains("no live peer"), "{msg}");
    // The gateway keeps the plain errors gateways give.
    let (code, _) = status_of(ureq::get(&node.url("/ipfs/not-a-cid")).call());
    assert!((400..500).contains(&code));
}

#[test]
fn counters_agree_and_a_resize_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [("XNODE_STORAGE_MAX", "100MiB"), ("XNODE_ADMIN_TOKEN", "s3cret")];
    let node = RunningNode::start(tmp.path(), "persist", &env);
    let up = |name: &str, len: usize| {
        ureq::post(&node.url(&format!("/api/v1/files?name={name}")))
            .set("Authorization", "Bearer s3cret")
            .send_bytes(&pattern(len))
            .unwrap()
    };
    up("a.bin", 600_000);
    up("b.bin", 300_000);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: serde_json::Value = ureq::get(&node.url("/api/v1/status")).call().unwrap().into_json().unwrap();
        let blocks: serde_json::Value = ureq::get(&node.url("/api/v1/blocks")).call().unwrap().into_json().unwrap();
        let files: serde_json::Value = ureq::get(&node.url("/api/v1/files")).call().unwrap().into_json().unwrap();
        let listed = files.as_array().unwrap().len();
        if status["files"] == 2 && listed == 2 && status["blocks"] == blocks["held"]["count"] {
            // a.bin: 3 leaves and a root; b.bin: 2 leaves and a root, its first leaf the same as a.bin's (one
            // pattern): at least 6 blocks (plus the catalog's entries, if kept).
            assert!(status["blocks"].as_u64().unwrap() >= 6, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "status {status} vs blocks {blocks} vs {listed} files");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, body) = status_of(
        ureq::put(&node.url("/api/v1/storage"))
            .set("Authorization", "Bearer s3cret")
            .send_json(serde_json::json!({"capacity": "7MiB"})),
    );
    assert_eq!(code, 200, "{body}");
    drop(node);
    // Started again with XNODE_STORAGE_MAX still set: the data dir's capacity wins.
    let node = RunningNode::start(tmp.path(), "persist", &env);
    let storage: serde_json::Value = ureq::get(&node.url("/api/v1/storage")).call().unwrap().into_json().unwrap();
    assert_eq!(storage["capacity"], 7 << 20, "{storage}");
    assert_eq!(storage["over_capacity"], 0);
}

/// `rm` reports what the cluster frees: blocks another catalog file shares are not counted (here `longer.bin`
/// starts with all of `shared.bin`, 256 KiB chunks, so its first four leaves are `shared.bin`'s).
#[test]
fn rm_counts_only_the_blocks_no_other_file_shares() {
    let node = Node::start("", "");
    let chunk = 256 * 1024;
    let shared = pattern(4 * chunk);
    let mut longer = shared.clone();
    longer.extend_from_slice(&random_bytes(2 * chunk, 77));
    let cid_of = |name: &str, body: &[u8]| -> String {
        let (code, body) = status_of(node.upload(name, body));
        assert_eq!(code, 201, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["cid"].as_str().unwrap().to_string()
    };
    let (a, b) = (cid_of("shared.bin", &shared), cid_of("longer.bin", &longer));
    // Both indexed: the allocation loop has counted their health.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files: serde_json::Value = ureq::get(&node.url("/api/v1/files")).call().unwrap().into_json().unwrap();
        let counted = files.as_array().unwrap().iter().filter(|f| f["health"].is_object()).count();
        if counted == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the files were not indexed: {files}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rm = |cid: &str| -> serde_json::Value {
        ureq::delete(&node.url(&format!("/api/v1/files/{cid}")))
            .set("Authorization", &format!("Bearer {}", node.token))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    };
    // longer.bin: 6 leaves and a root; 4 leaves are shared.bin's. One member: one copy of each.
    let freed = rm(&b);
    assert_eq!(freed["cluster_blocks"], 3, "its 2 own leaves and its root: {freed}");
    assert_eq!(freed["cluster_copies"], 3, "{freed}");
    let bytes = freed["cluster_bytes"].as_u64().unwrap();
    assert!((2 * chunk as u64..2 * chunk as u64 + 64).contains(&bytes), "the 2 own leaves' bytes: {freed}");
    // What stays is whole: shared.bin still reads back.
    let mut back = Vec::new();
    ureq::get(&node.url(&format!("/api/v1/files/{a}"))).call().unwrap().into_reader().read_to_end(&mut back).unwrap();
    assert_eq!(back, shared);
    // Now nothing shares shared.bin's leaves.
    let freed = rm(&a);
    assert_eq!(freed["cluster_blocks"], 5, "4 leaves and a root: {freed}");
    let bytes = freed["cluster_bytes"].as_u64().unwrap();
    assert!((4 * chunk as u64..4 * chunk as u64 + 128).contains(&bytes), "{freed}");
}
