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
                f["root"] == root && f["at_rf"] == f["blocks"] && f["missing"] == 0 && f["under_replicated"] == 0
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

fn held(node: &RunningNode) -> HashSet<String> {
    let v = get_json(node, "/api/v1/blocks?limit=100000");
    v["held"]["cids"].as_array().into_iter().flatten().map(|c| c.as_str().unwrap().to_string()).collect()
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
    // XNODE_KEEP_TEST_DIR=1 keeps the nodes' data and logs (`<dir>/<name>.log`) for a post-mortem.
    let (_guard, base) = if std::env::var_os("XNODE_KEEP_TEST_DIR").is_some() {
        let kept = tmp.keep();
        eprintln!("test dir kept at {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    };
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
