//! Self-allocation with five `xnode run` processes at replication factor 2: a file added on one node ends up with
//! every leaf on exactly the nodes placement names (and every interior block on all); killing a node brings the
//! replication factor back; shrinking a node hands its excess off with nothing lost; a restarted node catches up.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use xnode_placement::{Layout, NodeInfo, DEFAULT_PARTITIONS};

mod support;

use support::{random_bytes, RunningNode};

const TOKEN: &str = "t";
const MIB: u64 = 1 << 20;

fn get_json(node: &RunningNode, path: &str) -> serde_json::Value {
    match ureq::get(&node.url(path)).timeout(Duration::from_secs(10)).call() {
        Ok(r) => r.into_json().unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

fn start(dir: &std::path::Path, name: &str, seed: &str, capacity: &str) -> RunningNode {
    RunningNode::start(
        dir,
        name,
        &[
            ("XNODE_ADMIN_TOKEN", TOKEN),
            ("XNODE_KNOWN_PEERS", seed),
            ("XNODE_STORAGE_MAX", capacity),
            ("XNODE_LOG", "info,xnode_instance=debug"),
        ],
    )
}

/// The members `node` sees alive: name -> (phase, wanted).
fn alive(node: &RunningNode) -> HashMap<String, (String, u64)> {
    let v = get_json(node, "/api/v1/members");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "Alive" && !m["meta"]["peer_id"].as_str().unwrap_or("").is_empty())
        .map(|m| {
            let meta = &m["meta"];
            (
                m["name"].as_str().unwrap().to_string(),
                (meta["phase"].as_str().unwrap_or("").to_string(), meta["wanted"].as_u64().unwrap_or(u64::MAX)),
            )
        })
        .collect()
}

/// Waits until every node in `nodes` sees exactly `names` alive and seeding with nothing wanted, lists `root` with
/// every block at the replication factor, and holds exactly what the layout gives it (see [`placement_errors`]).
#[allow(clippy::too_many_arguments)]
fn wait_settled(
    nodes: &[(&str, &RunningNode)],
    names: &[&str],
    root: &str,
    view: &[NodeInfo],
    departed: &[&str],
    dag: &(Vec<(String, u32)>, Vec<String>),
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<_> = nodes.iter().map(|(_, n)| alive(n)).collect();
        let seeding = views.iter().all(|v| {
            let mut seen: Vec<&str> = v.keys().map(String::as_str).collect();
            seen.sort_unstable();
            seen == names && v.values().all(|(phase, wanted)| phase == "seeding" && *wanted == 0)
        });
        let healthy = nodes.iter().all(|(_, n)| {
            let files = get_json(n, "/api/v1/files");
            files.as_array().into_iter().flatten().any(|f| {
                let h = &f["health"];
                // Counted (a file the loop has not counted yet is listed without health) and all at RF.
                f["root"] == root
                    && h["blocks"].as_u64().is_some_and(|b| b > 0)
                    && h["at_rf"] == h["blocks"]
                    && h["missing"] == 0
                    && h["under_replicated"] == 0
            })
        });
        let errors = if seeding && healthy { placement_errors(nodes, view, departed, &dag.0, &dag.1) } else { vec![] };
        if seeding && healthy && errors.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the cluster did not settle; seeding {seeding}, healthy {healthy}; views: {views:?}; \
             first placement errors: {:?}",
            &errors[..errors.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// XNODE_KEEP_TEST_DIR=1 keeps the nodes' data and logs (`<dir>/<name>.log`) for a post-mortem.
fn keep_dir(tmp: tempfile::TempDir) -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    if std::env::var_os("XNODE_KEEP_TEST_DIR").is_some() {
        let kept = tmp.keep();
        eprintln!("test dir kept at {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    }
}

fn held(node: &RunningNode) -> HashSet<String> {
    held_at(&node.api).unwrap_or_default()
}

/// Every block the node at `api` holds, paged through `/api/v1/blocks`; `None` if it does not answer.
fn held_at(api: &str) -> Option<HashSet<String>> {
    let mut out = HashSet::new();
    let mut after = String::new();
    loop {
        let url = format!(
            "{api}/api/v1/blocks?limit=10000{}",
            if after.is_empty() { String::new() } else { format!("&after={after}") }
        );
        let v: serde_json::Value = ureq::get(&url).timeout(Duration::from_secs(10)).call().ok()?.into_json().ok()?;
        let page: Vec<String> =
            v["held"]["cids"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(String::from)).collect();
        let Some(last) = page.last().cloned() else { return Some(out) };
        out.extend(page);
        after = last;
    }
}

/// The file's leaves (CID, size) and interior blocks, built the same way `add` builds them.
fn dag_of(data: &[u8]) -> (Vec<(String, u32)>, Vec<String>) {
    let mut blocks: Vec<xnode_dag::Block> = Vec::new();
    xnode_dag::import_file_single_threaded(&xnode_dag::ImportOptions::default(), data, &mut blocks).unwrap();
    let (mut leaves, mut interior) = (Vec::new(), Vec::new());
    for b in blocks {
        if xnode_dag::block_links(&b.cid, &b.data).unwrap().is_empty() {
            leaves.push((b.cid.to_string(), b.data.len() as u32));
        } else {
            interior.push(b.cid.to_string());
        }
    }
    (leaves, interior)
}

/// What is not where the partition layout for `view` (with the `departed` members' partitions handed over) puts
/// it: a leaf on other nodes than its partition's holders, an interior block missing somewhere. The layout is
/// computed here from `xnode-placement` directly; which blocks are leaves comes from the test's own import.
fn placement_errors(
    nodes: &[(&str, &RunningNode)],
    view: &[NodeInfo],
    departed: &[&str],
    leaves: &[(String, u32)],
    interior: &[String],
) -> Vec<String> {
    let layout = Layout::new(view, departed, 2, DEFAULT_PARTITIONS).unwrap();
    let holdings: HashMap<&str, HashSet<String>> = nodes.iter().map(|(n, node)| (*n, held(node))).collect();
    let mut errors = Vec::new();
    for (cid, _) in leaves {
        let p = layout.partition_of_cid(&cid::Cid::try_from(cid.as_str()).unwrap().to_bytes());
        let mut expected: Vec<&str> = layout.holders(p).collect();
        expected.sort_unstable();
        let mut actual: Vec<&str> = holdings.iter().filter(|(_, h)| h.contains(cid)).map(|(n, _)| *n).collect();
        actual.sort_unstable();
        if actual != expected {
            errors.push(format!("leaf {cid} on {actual:?}, its partition's holders are {expected:?}"));
        }
    }
    for cid in interior {
        for (n, h) in &holdings {
            if !h.contains(cid) {
                errors.push(format!("interior block {cid} missing on {n}"));
            }
        }
    }
    errors
}

fn cat(node: &RunningNode, cid: &str) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--api", &node.api, "--token", TOKEN, "cat", "--timeout", "60", cid])
        .output()
        .unwrap();
    assert!(out.status.success(), "cat failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn five_nodes_place_repair_hand_off_and_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (_guard, base) = keep_dir(tmp);
    let caps = [("n1", 600 * MIB), ("n2", 600 * MIB), ("n3", 900 * MIB), ("n4", 900 * MIB), ("n5", 1200 * MIB)];
    let n1 = start(&base, "n1", "", &caps[0].1.to_string());
    let mut nodes = vec![n1];
    for (name, cap) in &caps[1..] {
        let seed = nodes[0].gossip.clone();
        nodes.push(start(&base, name, &seed, &cap.to_string()));
    }
    let names = ["n1", "n2", "n3", "n4", "n5"];

    // 200 MB added on n1.
    let data = random_bytes(200_000_000, 42);
    let file = base.join("payload.bin");
    std::fs::write(&file, &data).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xnode"))
        .args(["--api", &nodes[0].api, "--token", TOKEN, "add", "-Q", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (leaves, interior) = dag_of(&data);
    assert_eq!(interior.last(), Some(&root));

    let dag = dag_of(&data);
    let view: Vec<NodeInfo> = caps.iter().map(|(n, c)| NodeInfo { name: n.to_string(), capacity: *c }).collect();
    let named: Vec<(&str, &RunningNode)> = names.iter().copied().zip(nodes.iter()).collect();
    // Leaves end on exactly their partition's holders: n1's staging copies are handed off on evidence.
    wait_settled(&named, &names, &root, &view, &[], &dag, Duration::from_secs(240), "after the add");

    // A directory of 30 files of 100 KB (one block each, dag-pb as `ipfs add` makes them): each file is data, on
    // exactly the two holders of its partition, not on every member.
    let mut archive = tar::Builder::new(Vec::new());
    let mut small: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..30u64 {
        let body = random_bytes(100_000, 500 + i);
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, format!("photos/p{i}.jpg"), body.as_slice()).unwrap();
        small.push((format!("p{i}.jpg"), body));
    }
    let tarball = archive.into_inner().unwrap();
    let response = ureq::post(&nodes[0].url("/api/v1/files"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/x-tar")
        .send_bytes(&tarball)
        .unwrap();
    let dir_root = response.into_json::<serde_json::Value>().unwrap()["cid"].as_str().unwrap().to_string();
    let small_roots: Vec<(String, u32)> = small
        .iter()
        .map(|(_, body)| {
            let (leaves, _) = dag_of(body);
            assert_eq!(leaves.len(), 1, "a 100 KB file is one block");
            leaves[0].clone()
        })
        .collect();
    let dir_dag = (small_roots, vec![dir_root.clone()]);
    wait_settled(&named, &names, &dir_root, &view, &[], &dir_dag, Duration::from_secs(120), "after the directory");

    // Kill n5: the four others restore two copies of every leaf among themselves, and only n5's copies move:
    // each survivor still holds every leaf it held.
    let before: Vec<HashSet<String>> = nodes[..4].iter().map(held).collect();
    let mut n5 = nodes.pop().unwrap();
    n5.child.kill().unwrap();
    n5.child.wait().unwrap();
    let named: Vec<(&str, &RunningNode)> = names[..4].iter().copied().zip(nodes.iter()).collect();
    wait_settled(&named, &names[..4], &root, &view, &["n5"], &dag, Duration::from_secs(240), "after killing n5");
    for ((name, node), before) in named.iter().zip(&before) {
        let now = held(node);
        let dropped = leaves.iter().filter(|(c, _)| before.contains(c) && !now.contains(c)).count();
        assert_eq!(dropped, 0, "{name} dropped {dropped} leaves it held: a repair must move only n5's copies");
    }
    assert!(cat(&nodes[1], &root) == data, "n2 read different bytes after the repair");

    // Shrink n3 to 60 MiB: its excess moves to the others, it ends within its new capacity, nothing is lost.
    let resized = ureq::put(&nodes[2].url("/api/v1/storage"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_json(serde_json::json!({ "capacity": 60 * MIB }));
    assert!(resized.is_ok(), "resize refused: {resized:?}");
    let mut shrunk = view.clone();
    shrunk[2].capacity = 60 * MIB;
    wait_settled(&named, &names[..4], &root, &shrunk, &["n5"], &dag, Duration::from_secs(240), "after shrinking n3");
    let used = get_json(&nodes[2], "/api/v1/storage")["used"].as_u64().unwrap();
    assert!(used <= 60 * MIB, "n3 holds {used} bytes, over its new capacity");

    // n5 comes back with its old data: it catches up with the catalog and the cluster settles on five again.
    drop(n5);
    let seed = nodes[0].gossip.clone();
    let n5 = start(&base, "n5", &seed, &caps[4].1.to_string());
    nodes.push(n5);
    let named: Vec<(&str, &RunningNode)> = names.iter().copied().zip(nodes.iter()).collect();
    wait_settled(&named, &names, &root, &shrunk, &[], &dag, Duration::from_secs(240), "after n5 restarted");
    assert!(cat(&nodes[4], &root) == data, "n5 read different bytes");
}

#[test]
fn files_dropped_in_the_watched_folder_are_added_once_they_stop_changing() {
    let tmp = tempfile::tempdir().unwrap();
    let watch = tmp.path().join("inbox");
    std::fs::create_dir(&watch).unwrap();
    let node = RunningNode::start(
        tmp.path(),
        "w1",
        &[("XNODE_ADMIN_TOKEN", TOKEN), ("XNODE_WATCH_DIR", watch.to_str().unwrap())],
    );
    let data = random_bytes(3_000_000, 9);
    std::fs::write(watch.join("report.bin"), &data).unwrap();
    let (_, interior) = dag_of(&data);
    let root = interior.last().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = get_json(&node, "/api/v1/files").to_string();
        if files.contains(&root) && files.contains("report.bin") {
            break;
        }
        assert!(Instant::now() < deadline, "the watched file was not added: {files}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cat(&node, &root) == data);
}

/// One upload: its root and its DAG as the test's own import builds it.
struct Uploaded {
    root: String,
    leaves: Vec<String>,
    blocks: u64,
}

fn upload(node: &RunningNode, name: &str, data: &[u8]) -> Option<Uploaded> {
    let response = ureq::post(&node.url(&format!("/api/v1/files?name={name}")))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .timeout(Duration::from_secs(10))
        .send_bytes(data)
        .ok()?;
    let body: serde_json::Value = response.into_json().ok()?;
    let root = body["cid"].as_str()?.to_string();
    // A file of one block is all leaf (its root is data, placed like any leaf): `dag_of` lists it as a leaf.
    let (leaves, interior) = dag_of(data);
    let blocks = (leaves.len() + interior.len()) as u64;
    Some(Uploaded { root, leaves: leaves.into_iter().map(|l| l.0).collect(), blocks })
}

/// 10 uploads a second for 60 s to one node of five at RF 2 while another is killed and restarted: every file
/// reaches RF on every node, the uploader releases its surplus copies within 10 s of a file reaching RF, and no
/// node ever reports a block missing (the uploader, and the holders that fetched, hold every block throughout).
#[test]
fn uploads_during_a_kill_and_restart_reach_rf_and_nothing_is_reported_missing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let tmp = tempfile::tempdir().unwrap();
    let (_guard, base) = keep_dir(tmp);
    let t0 = Instant::now();
    let names = ["u1", "u2", "u3", "u4", "u5"];
    let cap = (2u64 << 30).to_string();
    let mut nodes: Vec<Option<RunningNode>> = Vec::new();
    nodes.push(Some(start(&base, names[0], "", &cap)));
    let seed = nodes[0].as_ref().unwrap().gossip.clone();
    for name in &names[1..] {
        nodes.push(Some(start(&base, name, &seed, &cap)));
    }
    let view: Vec<NodeInfo> = names.iter().map(|n| NodeInfo { name: n.to_string(), capacity: 2 << 30 }).collect();
    let layout = Layout::new(&view, &[], 2, DEFAULT_PARTITIONS).unwrap();
    let without_u4 = Layout::new(&view, &["u4"], 2, DEFAULT_PARTITIONS).unwrap();
    // Wait for the five to see each other.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !nodes.iter().flatten().all(|n| alive(n).len() == 5) {
        assert!(Instant::now() < deadline, "the five nodes did not meet");
        std::thread::sleep(Duration::from_millis(300));
    }

    eprintln!("{:.1} s: five nodes met", t0.elapsed().as_secs_f64());
    let nodes = Arc::new(Mutex::new(nodes));
    let u4_down = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // The sampler: every node's files every 200 ms; any block reported missing is a failure. It also records when
    // each file is first at RF everywhere and when the uploader first holds none of its leaves outside its share.
    let apis: Vec<(String, String)> = names
        .iter()
        .zip(nodes.lock().unwrap().iter())
        .map(|(n, r)| (n.to_string(), r.as_ref().unwrap().api.clone()))
        .collect();
    let sampler = {
        let (u4_down, done) = (u4_down.clone(), done.clone());
        std::thread::spawn(move || {
            let mut missing_seen: Vec<String> = Vec::new();
            let mut at_rf: HashMap<String, Instant> = HashMap::new();
            let mut uploader_held: Vec<(Instant, HashSet<String>)> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let now = Instant::now();
                let mut everywhere: Option<HashSet<String>> = None;
                for (name, api) in &apis {
                    if name == "u4" && u4_down.load(Ordering::SeqCst) {
                        continue;
                    }
                    let files = match ureq::get(&format!("{api}/api/v1/files")).timeout(Duration::from_secs(5)).call() {
                        Ok(r) => r.into_json::<serde_json::Value>().unwrap_or_default(),
                        Err(_) => continue,
                    };
                    let mut healthy = HashSet::new();
                    for f in files.as_array().into_iter().flatten() {
                        let root = f["root"].as_str().unwrap_or("").to_string();
                        let h = &f["health"];
                        if h["missing"].as_u64().unwrap_or(0) > 0 {
                            missing_seen.push(format!("{name} reported {} missing blocks of {root}", h["missing"]));
                        }
                        if h["at_rf"] == h["blocks"] && h["blocks"].as_u64().unwrap_or(0) > 0 {
                            healthy.insert(root);
                        }
                    }
                    everywhere = Some(match everywhere {
                        None => healthy,
                        Some(e) => e.intersection(&healthy).cloned().collect(),
                    });
                }
                for root in everywhere.unwrap_or_default() {
                    at_rf.entry(root).or_insert(now);
                }
                let held = held_at(&apis[0].1);
                if let Some(h) = held {
                    uploader_held.push((now, h));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (missing_seen, at_rf, uploader_held)
        })
    };

    // The uploads: 10 a second for 60 s, alternating a 100 KB file (one block) and a 600 KB file (three leaves).
    let mut uploaded: Vec<Uploaded> = Vec::new();
    let started = Instant::now();
    for i in 0..600u64 {
        let slot = started + Duration::from_millis(100 * i);
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if i == 150 {
            let mut guard = nodes.lock().unwrap();
            let mut u4 = guard[3].take().unwrap();
            u4_down.store(true, Ordering::SeqCst);
            u4.child.kill().unwrap();
            u4.child.wait().unwrap();
            guard[3] = None;
            drop(u4);
        }
        if i == 350 {
            let n4 = start(&base, "u4", &seed, &cap);
            let mut guard = nodes.lock().unwrap();
            guard[3] = Some(n4);
            u4_down.store(false, Ordering::SeqCst);
        }
        let size = if i % 2 == 0 { 100_000 } else { 600_000 };
        let data = random_bytes(size, 1000 + i);
        let guard = nodes.lock().unwrap();
        let u1 = guard[0].as_ref().unwrap();
        let up = upload(u1, &format!("f{i}.bin"), &data).unwrap_or_else(|| panic!("upload {i} failed"));
        drop(guard);
        uploaded.push(up);
    }
    let upload_secs = started.elapsed().as_secs_f64();
    eprintln!("{:.1} s: uploads done", t0.elapsed().as_secs_f64());

    // Every file reaches RF on every node.
    let guard = nodes.lock().unwrap();
    let live: Vec<&RunningNode> = guard.iter().flatten().collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let healthy = live.iter().all(|n| {
            let files = get_json(n, "/api/v1/files");
            let ok: HashSet<&str> = files
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| {
                    let h = &f["health"];
                    h["blocks"].as_u64().is_some_and(|b| b > 0) && h["at_rf"] == h["blocks"] && h["missing"] == 0
                })
                .filter_map(|f| f["root"].as_str())
                .collect();
            uploaded.iter().all(|u| ok.contains(u.root.as_str()))
        });
        if healthy {
            break;
        }
        assert!(Instant::now() < deadline, "not every file reached RF everywhere");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{:.1} s: every file at RF everywhere", t0.elapsed().as_secs_f64());
    // Let the sampler see the final state for a while, then stop it.
    std::thread::sleep(Duration::from_secs(12));
    done.store(true, Ordering::SeqCst);
    let (missing_seen, at_rf, uploader_held) = sampler.join().unwrap();
    eprintln!("{:.1} s: sampler stopped after {} samples", t0.elapsed().as_secs_f64(), uploader_held.len());
    assert!(
        missing_seen.is_empty(),
        "blocks reported missing while live nodes held them: {:?}",
        &missing_seen[..missing_seen.len().min(5)]
    );

    // Each file's health says as many blocks as its DAG has.
    let files = get_json(live[0], "/api/v1/files");
    for u in &uploaded {
        let f = files.as_array().unwrap().iter().find(|f| f["root"] == u.root.as_str()).unwrap();
        assert_eq!(f["health"]["blocks"].as_u64(), Some(u.blocks), "{}: blocks", u.root);
    }

    // The uploader lets go of each file's leaves outside its share within 10 s of the file reaching RF. Its share is
    // judged under the layout of the moment (u4 departed or not): a leaf counts as released once neither layout
    // gives it to u1 and u1 no longer holds it.
    let mut late = Vec::new();
    for u in &uploaded {
        let Some(&t_rf) = at_rf.get(&u.root) else {
            late.push(format!("{} never seen at RF by the sampler", u.root));
            continue;
        };
        let surplus: Vec<&String> = u
            .leaves
            .iter()
            .filter(|c| {
                let p = layout.partition_of_cid(&cid::Cid::try_from(c.as_str()).unwrap().to_bytes());
                !layout.holders(p).any(|h| h == "u1") && !without_u4.holders(p).any(|h| h == "u1")
            })
            .collect();
        let released_at = uploader_held.iter().find(|(_, h)| surplus.iter().all(|c| !h.contains(*c))).map(|(t, _)| *t);
        match released_at {
            Some(t) if t <= t_rf + Duration::from_secs(10) => {}
            Some(t) => late.push(format!("{}: released {:.1} s after reaching RF", u.root, (t - t_rf).as_secs_f64())),
            None => late.push(format!("{}: never released", u.root)),
        }
    }
    assert!(
        late.is_empty(),
        "{} of {} files were not handed off in time: {:?}",
        late.len(),
        uploaded.len(),
        &late[..late.len().min(5)]
    );
    eprintln!(
        "600 uploads in {upload_secs:.1} s; every file at RF, none reported missing, every surplus released in time"
    );
    drop(guard);
}
