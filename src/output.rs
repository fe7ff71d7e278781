//! What the CLI prints: tables and summaries for people, pretty JSON with `--json`. Reads only what it is handed
//! (or, for `status`, asks the node's API through the client); never parses flags or opens a store.

use anyhow::Result;
use bytesize::ByteSize;
use xnode_gossip::Member;
use xnode_storage::{Pin, UnpinStats};

use crate::client;

/// `v` as pretty JSON on stdout.
pub(crate) fn json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `xnode ls CID`: a directory's entries (or a file's own line).
pub(crate) fn listing(listing: &serde_json::Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(listing);
    }
    for e in listing.as_array().into_iter().flatten() {
        let size = e["size"].as_u64().map_or_else(|| "-".to_string(), |s| ByteSize(s).display().iec().to_string());
        let name = e["name"].as_str().unwrap_or_default();
        let shown = if e["kind"] == "directory" { format!("{name}/") } else { name.to_string() };
        println!("{}\t{size}\t{shown}", e["cid"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `xnode ls --offline`: the data dir's pinned files.
pub(crate) fn pins(pins: &[Pin], as_json: bool) -> Result<()> {
    if as_json {
        return json(&pins);
    }
    for p in pins {
        println!("{}\t{}\t{}", p.root, ByteSize(p.size).display().iec(), p.name);
    }
    Ok(())
}

/// `xnode ls`: the cluster's files.
pub(crate) fn files(files: &serde_json::Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(files);
    }
    for f in files.as_array().into_iter().flatten() {
        let size = ByteSize(f["size"].as_u64().unwrap_or(0)).display().iec().to_string();
        println!("{}\t{size}\t{}", f["root"].as_str().unwrap_or_default(), f["name"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `xnode rm --offline`.
pub(crate) fn removed_here(cid: &str, s: &UnpinStats) {
    println!(
        "removed {cid} from this data dir: {} blocks deleted, {} freed",
        s.blocks_deleted,
        ByteSize(s.bytes_freed).display().iec()
    );
}

/// `xnode rm`: what the members free (the answer of `DELETE /api/v1/files/{cid}`).
pub(crate) fn removed_from_cluster(cid: &str, v: &serde_json::Value) {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    println!(
        "removed {cid} from the cluster: {} blocks no other file shares ({} copies, about {}) are freed \
         on the members that hold them; this node freed {} blocks, {}",
        n("cluster_blocks"),
        n("cluster_copies"),
        ByteSize(n("cluster_bytes")).display().iec(),
        n("blocks_deleted"),
        ByteSize(n("bytes_freed")).display().iec()
    );
}

/// `xnode blocks`: held and wanted blocks.
pub(crate) fn blocks(blocks: &serde_json::Value, as_json: bool) -> Result<()> {
    if as_json {
        return json(blocks);
    }
    for (what, list) in [("held", &blocks["held"]), ("wanted", &blocks["wanted"])] {
        println!("{what}: {}", list["count"].as_u64().unwrap_or(0));
        for cid in list["cids"].as_array().into_iter().flatten().filter_map(|c| c.as_str()) {
            println!("  {cid}");
        }
    }
    Ok(())
}

/// `xnode stats`: a store's figures.
pub(crate) fn stats(files: u64, blocks: u64, held: u64, disk: u64, capacity: u64, as_json: bool) -> Result<()> {
    if as_json {
        return json(
            &serde_json::json!({"files": files, "blocks": blocks, "used": held, "disk_bytes": disk, "capacity": capacity}),
        );
    }
    println!("files:    {files} pinned here");
    println!("blocks:   {blocks}");
    println!("held:     {} ({held} bytes)", ByteSize(held).display().iec());
    println!("on disk:  {} ({disk} bytes)", ByteSize(disk).display().iec());
    println!("capacity: {}", size_or_unlimited(capacity));
    if held > capacity {
        println!("over capacity: handing off {} to the other members", ByteSize(held - capacity).display().iec());
    }
    Ok(())
}

pub(crate) fn size_or_unlimited(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".to_string()
    } else {
        ByteSize(bytes).display().iec().to_string()
    }
}

/// `xnode status`: the cluster at a glance, from one node's view.
pub(crate) fn status(api: &client::Api, json: bool) -> Result<()> {
    let node = api.status()?;
    let members = api.members()?;
    let files = api.files()?;
    let files = files.as_array().cloned().unwrap_or_default();
    let alive: Vec<&Member> = members.iter().filter(|m| m.state == xnode_gossip::MemberState::Alive).collect();
    let count = |s| members.iter().filter(|m| m.state == s).count();
    let capacity = alive.iter().map(|m| m.meta.capacity).fold(0u64, u64::saturating_add);
    let used: u64 = alive.iter().map(|m| m.meta.used).sum();
    let health = |k: &str| files.iter().filter(|f| f["health"][k].as_u64().unwrap_or(0) > 0).count();
    let (under, missing) = (health("under_replicated"), health("missing"));
    let replication = node["replication"].as_u64().unwrap_or(0);
    if json {
        let v = serde_json::json!({
            "node": node,
            "members_alive": alive.len(),
            "members_dead": count(xnode_gossip::MemberState::Dead),
            "members_left": count(xnode_gossip::MemberState::Left),
            "capacity": capacity,
            "used": used,
            "files": files.len(),
            "files_under_replicated": under,
            "files_missing_blocks": missing,
            "replication": replication,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "members:  {} alive, {} dead, {} left",
        alive.len(),
        count(xnode_gossip::MemberState::Dead),
        count(xnode_gossip::MemberState::Left)
    );
    println!(
        "storage:  {} used of {} pooled (alive members)",
        ByteSize(used).display().iec(),
        size_or_unlimited(capacity)
    );
    println!("files:    {} in the catalog; {under} under-replicated, {missing} with missing blocks", files.len());
    if replication > 0 {
        println!("replication factor: {replication}");
    }
    println!(
        "this node: {} ({}), {} blocks held",
        node["name"].as_str().unwrap_or_default(),
        node["phase"].as_str().unwrap_or_default(),
        node["blocks"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// `xnode status CID`: which members hold how many of a file's blocks.
pub(crate) fn holders(api: &client::Api, cid: &str, json: bool) -> Result<()> {
    let h = api.holders(cid)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(());
    }
    let blocks = h["blocks"].as_u64().unwrap_or(0);
    let rf = h["replication"].as_u64().unwrap_or(0);
    let partial = if h["complete"] == false { " (the first ones; the DAG is larger)" } else { "" };
    println!("{cid}: {blocks} blocks{partial}, replication factor {rf}");
    let mut copies = 0;
    println!("{:<20} {:<6} {:>10}", "MEMBER", "STATE", "BLOCKS");
    for m in h["members"].as_array().into_iter().flatten() {
        let held = match (m["blocks"].as_u64(), m["error"].as_str()) {
            (Some(n), _) => {
                copies += n;
                n.to_string()
            }
            (None, Some(e)) => format!("? ({e})"),
            (None, None) => "-".to_string(),
        };
        println!(
            "{:<20} {:<6} {held:>10}",
            m["name"].as_str().unwrap_or_default(),
            m["state"].as_str().unwrap_or_default()
        );
    }
    println!("copies: {copies} of the {} wanted ({blocks} blocks x {rf})", blocks * rf);
    Ok(())
}

pub(crate) fn members(members: &[Member], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    println!("{:<20} {:<6} {:<22} {:<18} {:>22} {:>8}", "NAME", "STATE", "GOSSIP", "PHASE", "STORAGE", "BLOCKS");
    for m in members {
        let cap = if m.meta.capacity == u64::MAX {
            "unlimited".to_string()
        } else {
            ByteSize(m.meta.capacity).display().iec().to_string()
        };
        let storage = format!("{} / {cap}", ByteSize(m.meta.used).display().iec());
        let name = if m.is_self { format!("{} (self)", m.name) } else { m.name.clone() };
        let state = format!("{:?}", m.state).to_lowercase();
        println!("{name:<20} {state:<6} {:<22} {:<18} {storage:>22} {:>8}", m.gossip_addr, m.meta.phase, m.meta.blocks);
    }
    Ok(())
}

/// `xnode peers`: each member's network identities.
pub(crate) fn peers(members: &[Member], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "state": format!("{:?}", m.state).to_lowercase(), "peer_id": m.meta.peer_id,
                    "gossip": m.gossip_addr.to_string(), "api": m.meta.api_url, "version": m.meta.version,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<20} {:<6} {:<54} {:<22} API", "NAME", "STATE", "PEER ID", "GOSSIP");
    for m in members {
        let name = if m.is_self { format!("{} (self)", m.name) } else { m.name.clone() };
        let state = format!("{:?}", m.state).to_lowercase();
        println!("{name:<20} {state:<6} {:<54} {:<22} {}", m.meta.peer_id, m.gossip_addr, m.meta.api_url);
    }
    Ok(())
}
