//! Helpers shared by the scenario tests: running `xnode run` as a child process and making test data.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// An `xnode run` child on loopback with ephemeral ports, killed when dropped.
pub struct RunningNode {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    pub data: PathBuf,
    /// `127.0.0.1:PORT` of its gossip, for other nodes' `XNODE_KNOWN_PEERS`.
    pub gossip: String,
}

impl RunningNode {
    /// Starts a node named `name` with its data in `dir/name`; `env` adds or overrides `XNODE_*` variables.
    pub fn start(dir: &Path, name: &str, env: &[(&str, &str)]) -> RunningNode {
        let data = dir.join(name);
        // Other nodes need the gossip port in advance, so take a free one from the OS.
        let gossip = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xnode"));
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("run")
            .env("XNODE_NAME", name)
            .env("XNODE_BIND_ADDR", "127.0.0.1")
            .env("XNODE_API_PORT", "0")
            .env("XNODE_P2P_PORT", "0")
            .env("XNODE_GOSSIP_PORT", gossip.port().to_string())
            .env("XNODE_KNOWN_PEERS", "")
            // One group per test directory: clusters of tests running side by side never meet (mDNS included).
            .env("XNODE_GROUP_NAME", group_of(dir))
            // Never find another cluster on this machine or its LAN (loopback already defaults it off; say so).
            .env("XNODE_MDNS", "false")
            .env_remove("XNODE_STORAGE_MAX")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let api = loop {
            let line = lines.next().expect("the node prints its API address").unwrap();
            if let Some(rest) = line.split("API on ").nth(1) {
                break rest.trim().to_string();
            }
        };
        // The rest of the node's log goes to `<dir>/<name>.log`, for post-mortems of failed scenarios.
        let log_path = dir.join(format!("{name}.log"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).ok();
            for line in lines.map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        RunningNode { child, api, data, gossip: gossip.to_string() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gossip group of the nodes started in `dir`: unique to the directory.
pub fn group_of(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("xnode-test-{:016x}", h.finish())
}

/// Pseudo-random bytes (xorshift): no two chunks alike, so nothing deduplicates.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // Spread the seed over the state first: `seed | 1` alone gave seeds 2k and 2k+1 the same bytes.
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
