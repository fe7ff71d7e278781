//! The `XNODE_*` configuration, read once from the environment (with envy) and checked before anything starts.
//!
//! Every value is validated here with its variable's name in the error, and an `XNODE_*` variable nobody reads
//! gets a warning naming the closest known one (a typo such as `XNODE_REPLICATON` would otherwise be silently
//! ignored). `main` turns the result into each crate's own config; nothing below `src/` reads the environment.
//! The bounds are documented in README.md ("Configuration").

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use xnode_p2p::Multiaddr;

/// Every variable the binary reads.
pub(crate) const KNOWN: &[&str] = &[
    "XNODE_DATA_DIR",
    "XNODE_STORAGE_MAX",
    "XNODE_DIRECT_IO",
    "XNODE_LOG",
    "XNODE_NAME",
    "XNODE_GOSSIP_PORT",
    "XNODE_KNOWN_PEERS",
    "XNODE_GROUP_NAME",
    "XNODE_ADVERTISE_ADDR",
    "XNODE_BIND_ADDR",
    "XNODE_API_PORT",
    "XNODE_P2P_PORT",
    "XNODE_BOOTSTRAP",
    "XNODE_FETCH_TIMEOUT",
    "XNODE_REPLICATION",
    "XNODE_PARTITIONS",
    "XNODE_WATCH_DIR",
    "XNODE_API",
    "XNODE_ADMIN_TOKEN",
    "XNODE_ADMIN_TOKEN_FILE",
    "XNODE_MAX_UPLOAD",
    "XNODE_CLUSTER_SECRET",
    "XNODE_CLUSTER_SECRET_FILE",
    "XNODE_CLUSTER_SECRET_OLD",
    "XNODE_MDNS",
    "XNODE_PUBLIC_BITSWAP",
    "XNODE_SCRUB_INTERVAL",
    "XNODE_SCRUB_RATE",
    "XNODE_STAGED_TTL",
];

/// Variables of the test and benchmark scripts (not read by the binary, but often in its environment): no warning.
const TOOLING: &[&str] = &[
    "XNODE_VENV",
    "XNODE_SKIP_TIERS",
    "XNODE_SKIP_SLOW",
    "XNODE_SLOW_TESTS",
    "XNODE_BROWSER_PENDING",
    "XNODE_KEEP_TEST_DIR",
    "XNODE_RUNTIME_IMAGE",
    "XNODE_DEBIAN_MIRROR",
    "XNODE_CRASH_DIR",
    "XNODE_CRASH_MODE",
    "XNODE_CRASH_ROUND",
    "XNODE_CRASH_DIRECT",
];

/// Longest node or group name, in bytes: a DNS label's limit, so a hostname always fits.
pub(crate) const MAX_NAME_LEN: usize = 63;
/// Most copies of each block `XNODE_REPLICATION` may ask for: more is a typo, not a policy (every member holding
/// every block is reached long before, and the placement rule's work grows with it).
pub(crate) const MAX_REPLICATION: usize = 16;
/// `XNODE_STAGED_TTL` bounds: shorter than a second reclaims blocks of adds still under way; longer than a week
/// keeps the blocks of a crashed add for no reason.
pub(crate) const STAGED_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600));
/// `XNODE_STAGED_TTL` default: one hour.
pub(crate) const STAGED_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// `XNODE_SCRUB_INTERVAL` bounds: shorter is a busy loop, longer lets corruption sit for over a year.
pub(crate) const SCRUB_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(365 * 86_400));
/// `XNODE_FETCH_TIMEOUT` bounds: shorter cannot reach any peer, longer only holds requests open.
pub(crate) const FETCH_TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(86_400));

/// A value that cannot be used, named by its variable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The value is set but wrong.
    #[error("{var}={value:?}: {problem}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value as given.
        value: String,
        /// What is wrong and what to use instead.
        problem: String,
    },
    /// A variable is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// envy could not map the variables.
    #[error("reading the XNODE_* environment: {0}")]
    Env(#[from] envy::Error),
}

fn invalid(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, value: value.to_string(), problem: problem.into() }
}

/// The networking libraries' log targets (prefixes). Their warnings are about single peers and packets (an mDNS
/// record too long, an identify push dropped, a relay request refused), which the node handles; an operator at
/// `info` or `warn` sees what the node makes of them instead.
const CHATTY: &[&str] = &["libp2p", "hickory", "quinn", "yamux", "multistream_select", "netlink", "if_watch"];

/// XNODE_LOG as a filter: unless it names one of the [`CHATTY`] libraries or asks for debug or trace everywhere,
/// their events are kept to errors, so `XNODE_LOG=info` shows the node's own lines (libp2p's are under `debug`).
pub(crate) fn log_directives(value: &str) -> String {
    let names_chatty = CHATTY.iter().any(|c| value.contains(c));
    let verbose = value.split(',').any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "debug" | "trace"));
    if names_chatty || verbose {
        return value.to_string();
    }
    let quiet: Vec<String> = CHATTY.iter().map(|c| format!("{c}=error")).collect();
    format!("{value},{}", quiet.join(","))
}

/// The raw `XNODE_*` values: strings until checked, so a bad one is reported with its variable's name.
/// Blank values count as unset.
#[derive(Deserialize, Debug, Default, Clone)]
pub(crate) struct Env {
    /// XNODE_DATA_DIR: the data directory (default `./xnode-data`).
    data_dir: Option<String>,
    /// XNODE_STORAGE_MAX: the store's hard capacity, e.g. `10GiB`, at least 1 MiB (default: unlimited).
    storage_max: Option<String>,
    /// XNODE_DIRECT_IO: `true` or `false`, whether block bodies bypass the page cache (default `true`).
    direct_io: Option<String>,
    /// XNODE_LOG: the log filter (`tracing` syntax; default `warn`).
    log: Option<String>,
    /// XNODE_NAME: this node's unique name in the cluster (default: the hostname); see [`check_name`].
    name: Option<String>,
    /// XNODE_GOSSIP_PORT: UDP port for membership gossip, 1-65535 (default 9090).
    gossip_port: Option<String>,
    /// XNODE_KNOWN_PEERS: comma-separated `host:port` seeds; blank starts a new cluster.
    known_peers: Option<String>,
    /// XNODE_GROUP_NAME: cluster name; nodes of other groups are ignored (default `Xnode`).
    group_name: Option<String>,
    /// XNODE_ADVERTISE_ADDR: `host` or `host:port` other nodes reach our gossip at (default: our hostname's IP).
    advertise_addr: Option<String>,
    /// XNODE_BIND_ADDR: the IP the API and gossip listen on (default `0.0.0.0`).
    bind_addr: Option<String>,
    /// XNODE_API_PORT: TCP port of the HTTP API (default 8080; 0 picks a free port).
    api_port: Option<String>,
    /// XNODE_P2P_PORT: libp2p port, TCP and QUIC (default 10090; 0 picks free ports).
    p2p_port: Option<String>,
    /// XNODE_BOOTSTRAP: comma-separated multiaddrs (ending in /p2p/ID) of DHT peers to join.
    bootstrap: Option<String>,
    /// XNODE_FETCH_TIMEOUT: how long a read waits for missing blocks (default `60s`, 100ms to 24h).
    fetch_timeout: Option<String>,
    /// XNODE_REPLICATION: how many nodes hold each block (default 2, 1 to [`MAX_REPLICATION`]).
    replication: Option<String>,
    /// XNODE_PARTITIONS: partitions blocks hash into (default 65536; a power of two up to 2^24, the same on every
    /// member).
    partitions: Option<String>,
    /// XNODE_WATCH_DIR: a folder whose new or changed files are added once they stop changing (default: none).
    watch_dir: Option<String>,
    /// XNODE_API: base URL of a running node for the client commands.
    api: Option<String>,
    /// XNODE_ADMIN_TOKEN: the token that authorizes changes through the API (default: random, logged at start).
    admin_token: Option<String>,
    /// XNODE_ADMIN_TOKEN_FILE: a file holding the admin token members share; used when XNODE_ADMIN_TOKEN is unset.
    admin_token_file: Option<String>,
    /// XNODE_MAX_UPLOAD: the largest upload the API accepts (default `16GiB`, at least 1 byte).
    max_upload: Option<String>,
    /// XNODE_CLUSTER_SECRET: 64 hex digits (`openssl rand -hex 32`) that encrypt and authenticate gossip.
    cluster_secret: Option<String>,
    /// XNODE_CLUSTER_SECRET_FILE: a file holding the cluster secret (created with a random one if missing).
    cluster_secret_file: Option<String>,
    /// XNODE_CLUSTER_SECRET_OLD: the previous secret, still accepted on receipt while a rotation rolls out.
    cluster_secret_old: Option<String>,
    /// XNODE_MDNS: `true` or `false`, whether to find libp2p peers on the LAN by mDNS (default `true`, except
    /// `false` when XNODE_BIND_ADDR is a loopback address: such a node cannot be reached by what it would find).
    mdns: Option<String>,
    /// XNODE_PUBLIC_BITSWAP: `true` or `false`, whether peers outside the cluster (Kubo) may swap blocks with this
    /// node over Bitswap (default: `true` without a cluster secret, `false` with one).
    public_bitswap: Option<String>,
    /// XNODE_SCRUB_INTERVAL: a scrub pass (re-hashing every stored block) starts this often and finishes within it
    /// (default `30d`, 1s to 365d).
    scrub_interval: Option<String>,
    /// XNODE_SCRUB_RATE: bytes per second the scrub reads, e.g. `16MiB`; `0` or `unlimited` for full speed (default
    /// `16MiB`). A store too large for the rate to finish within the interval is scrubbed faster.
    scrub_rate: Option<String>,
    /// XNODE_STAGED_TTL: how long blocks another member streamed here for an add are kept when no catalog file
    /// claims them, counted from the last block of that add (default `1h`, 1s to 7d).
    staged_ttl: Option<String>,
}

/// What `xnode run` needs beyond the store, every value checked.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    /// XNODE_NAME, already checked; `None`: use the hostname (checked by [`check_name`] when read).
    pub(crate) name: Option<String>,
    pub(crate) gossip_port: u16,
    pub(crate) api_port: u16,
    pub(crate) p2p_port: u16,
    pub(crate) bind: IpAddr,
    /// XNODE_ADVERTISE_ADDR as given (resolved by `main`, which names the variable when it does not resolve).
    pub(crate) advertise: Option<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) group: Option<String>,
    pub(crate) bootstrap: Vec<Multiaddr>,
    pub(crate) replication: usize,
    pub(crate) partitions: u32,
    pub(crate) watch_dir: Option<PathBuf>,
    pub(crate) max_upload: u64,
    pub(crate) fetch_timeout: Duration,
    pub(crate) admin_token: Option<String>,
    pub(crate) admin_token_file: Option<PathBuf>,
    pub(crate) cluster_secret: SecretSource,
    /// XNODE_MDNS, resolved against the bind address.
    pub(crate) mdns: bool,
    /// XNODE_PUBLIC_BITSWAP, resolved against the cluster secret.
    pub(crate) public_bitswap: bool,
    pub(crate) scrub: xnode_instance::ScrubConfig,
    pub(crate) staged_ttl: Duration,
}

/// Where the cluster secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// No secret: gossip is plaintext (a warning at start).
    None,
    /// XNODE_CLUSTER_SECRET (and XNODE_CLUSTER_SECRET_OLD during a rotation).
    Value { current: [u8; 32], old: Option<[u8; 32]> },
    /// XNODE_CLUSTER_SECRET_FILE (and XNODE_CLUSTER_SECRET_OLD).
    File { path: PathBuf, old: Option<[u8; 32]> },
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        match self {
            SecretSource::None => f.write_str("None"),
            SecretSource::Value { old, .. } => write!(f, "Value {{ old: {} }}", old.is_some()),
            SecretSource::File { path, old } => write!(f, "File {{ path: {path:?}, old: {} }}", old.is_some()),
        }
    }
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl Env {
    /// Reads the process environment once, with the warnings to log (unknown `XNODE_*` variables).
    pub(crate) fn read() -> Result<(Env, Vec<String>), ConfigError> {
        let mut pairs = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str().map(str::to_string) else { continue };
            if !key.starts_with("XNODE_") {
                continue;
            }
            let value = value.into_string().map_err(|_| ConfigError::NotUtf8(key.clone()))?;
            pairs.push((key, value));
        }
        Self::from_pairs(pairs)
    }

    /// [`Env::read`] over given pairs (tests).
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Result<(Env, Vec<String>), ConfigError> {
        let warnings = pairs.iter().filter_map(|(k, _)| unknown_warning(k)).collect();
        let env = envy::prefixed("XNODE_").from_iter(pairs)?;
        Ok((env, warnings))
    }

    /// The log filter, checked (XNODE_LOG; default `warn`).
    pub(crate) fn log_filter(&self) -> Result<tracing_subscriber::EnvFilter, ConfigError> {
        let v = set(&self.log).unwrap_or("warn");
        tracing_subscriber::EnvFilter::builder().parse(log_directives(v)).map_err(|e| {
            invalid("XNODE_LOG", v, format!("{e}; use a tracing filter such as info or xnode_storage=debug"))
        })
    }

    /// XNODE_DATA_DIR (after `--data-dir`), default `./xnode-data`.
    pub(crate) fn data_dir(&self, flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| set(&self.data_dir).map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("./xnode-data"))
    }

    /// XNODE_STORAGE_MAX in bytes (`u64::MAX`: unlimited).
    pub(crate) fn capacity(&self) -> Result<u64, ConfigError> {
        match set(&self.storage_max) {
            None => Ok(u64::MAX),
            Some(s) => {
                let n = parse_size(s).ok_or_else(|| {
                    invalid("XNODE_STORAGE_MAX", s, "not a size; use e.g. 10GiB, 500MB or a number of bytes")
                })?;
                if n < xnode_storage::MIN_CAPACITY {
                    return Err(invalid(
                        "XNODE_STORAGE_MAX",
                        s,
                        format!(
                            "a store needs room for a few blocks; use at least {} (or leave it unset: unlimited)",
                            ByteSize(xnode_storage::MIN_CAPACITY).display().iec()
                        ),
                    ));
                }
                Ok(n)
            }
        }
    }

    /// XNODE_DIRECT_IO, default true.
    pub(crate) fn direct_io(&self) -> Result<bool, ConfigError> {
        match set(&self.direct_io) {
            None => Ok(true),
            Some(v) => v.parse().map_err(|_| {
                invalid("XNODE_DIRECT_IO", v, "not true or false; use true (bypass the page cache) or false")
            }),
        }
    }

    /// XNODE_ADMIN_TOKEN, if set.
    pub(crate) fn admin_token(&self) -> Option<String> {
        set(&self.admin_token).map(str::to_string)
    }

    /// The API the client commands talk to: `--api`, else XNODE_API, else loopback on XNODE_API_PORT.
    pub(crate) fn api_url(&self, flag: Option<String>) -> Result<String, ConfigError> {
        let (var, url) = match flag.filter(|u| !u.trim().is_empty()) {
            Some(url) => ("--api", url),
            None => match set(&self.api) {
                Some(url) => ("XNODE_API", url.to_string()),
                None => return Ok(format!("http://127.0.0.1:{}", self.api_port()?)),
            },
        };
        let url = url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
            return Err(invalid(var, &url, "not an http(s) URL; use e.g. http://127.0.0.1:8080"));
        }
        Ok(url)
    }

    fn api_port(&self) -> Result<u16, ConfigError> {
        port(&self.api_port, "XNODE_API_PORT", 8080, true)
    }

    /// XNODE_SCRUB_INTERVAL and XNODE_SCRUB_RATE, checked.
    fn scrub(&self) -> Result<xnode_instance::ScrubConfig, ConfigError> {
        let mut scrub = xnode_instance::ScrubConfig::default();
        if let Some(v) = set(&self.scrub_interval) {
            let (min, max) = SCRUB_INTERVAL_RANGE;
            scrub.interval = match parse_duration(v) {
                Some(d) if d >= min && d <= max => d,
                _ => {
                    return Err(invalid(
                        "XNODE_SCRUB_INTERVAL",
                        v,
                        "not a duration from 1s to 365d; use e.g. 30d (a full pass of the store per interval)",
                    ))
                }
            };
        }
        if let Some(v) = set(&self.scrub_rate) {
            scrub.rate = if v.eq_ignore_ascii_case("unlimited") {
                0
            } else {
                parse_size(v).ok_or_else(|| {
                    invalid(
                        "XNODE_SCRUB_RATE",
                        v,
                        "not a rate in bytes per second; use e.g. 16MiB, or 0 for full speed",
                    )
                })?
            };
        }
        Ok(scrub)
    }

    /// Everything `xnode run` needs, checked.
    pub(crate) fn node(&self) -> Result<NodeSettings, ConfigError> {
        let name = set(&self.name).map(|n| check_name("XNODE_NAME", n).map(str::to_string)).transpose()?;
        let group = set(&self.group_name).map(|g| check_name("XNODE_GROUP_NAME", g).map(str::to_string)).transpose()?;
        let gossip_port = port(&self.gossip_port, "XNODE_GOSSIP_PORT", 9090, false)?;
        let bind = match set(&self.bind_addr) {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(b) => b.parse().map_err(|_| invalid("XNODE_BIND_ADDR", b, "not an IP address; use e.g. 0.0.0.0"))?,
        };
        let seeds =
            list(&self.known_peers).map(|s| check_seed(s).map(|()| s.to_string())).collect::<Result<Vec<_>, _>>()?;
        let bootstrap = list(&self.bootstrap)
            .map(|a| {
                let bad =
                    || invalid("XNODE_BOOTSTRAP", a, "not a multiaddr like /ip4/10.0.0.5/tcp/10090/p2p/12D3Koo...");
                let addr: Multiaddr = a.parse().map_err(|_| bad())?;
                match addr.iter().last() {
                    Some(xnode_p2p::multiaddr::Protocol::P2p(_)) => Ok(addr),
                    _ => Err(bad()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let replication = match set(&self.replication) {
            None => 2,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_REPLICATION).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "XNODE_REPLICATION",
                        v,
                        format!("not a number of copies from 1 to {MAX_REPLICATION}; use e.g. 2"),
                    ))
                }
            },
        };
        let partitions = match set(&self.partitions) {
            None => xnode_placement::DEFAULT_PARTITIONS,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n.is_power_of_two() && n <= xnode_placement::MAX_PARTITIONS => n,
                _ => {
                    return Err(invalid(
                        "XNODE_PARTITIONS",
                        v,
                        format!(
                            "not a power of two from 1 to {}; use the same value on every member, e.g. 65536",
                            xnode_placement::MAX_PARTITIONS
                        ),
                    ))
                }
            },
        };
        let watch_dir = match set(&self.watch_dir) {
            None => None,
            Some(d) => {
                let path = PathBuf::from(d);
                if !path.is_dir() {
                    return Err(invalid("XNODE_WATCH_DIR", d, "not a directory; create it or unset XNODE_WATCH_DIR"));
                }
                Some(path)
            }
        };
        let max_upload = match set(&self.max_upload) {
            None => 16 << 30,
            Some(v) => match parse_size(v) {
                Some(n) if n > 0 => n,
                _ => return Err(invalid("XNODE_MAX_UPLOAD", v, "not a size above 0; use e.g. 16GiB")),
            },
        };
        let fetch_timeout = match set(&self.fetch_timeout) {
            None => Duration::from_secs(60),
            Some(v) => {
                let (min, max) = FETCH_TIMEOUT_RANGE;
                match parse_duration(v) {
                    Some(d) if d >= min && d <= max => d,
                    _ => {
                        return Err(invalid(
                            "XNODE_FETCH_TIMEOUT",
                            v,
                            "not a duration from 100ms to 24h; use e.g. 30s, 2m or 1h",
                        ))
                    }
                }
            }
        };
        let scrub = self.scrub()?;
        let admin_token = self.admin_token();
        if let Some(t) = &admin_token {
            if t.chars().any(|c| c.is_control()) {
                return Err(invalid("XNODE_ADMIN_TOKEN", "(hidden)", "holds control characters"));
            }
        }
        let old = set(&self.cluster_secret_old)
            .map(|v| parse_secret(v).ok_or_else(|| invalid("XNODE_CLUSTER_SECRET_OLD", "(hidden)", SECRET_FORM)))
            .transpose()?;
        let cluster_secret = match (set(&self.cluster_secret), set(&self.cluster_secret_file)) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "XNODE_CLUSTER_SECRET_FILE",
                    set(&self.cluster_secret_file).unwrap_or_default(),
                    "set either XNODE_CLUSTER_SECRET or XNODE_CLUSTER_SECRET_FILE, not both",
                ))
            }
            (Some(v), None) => SecretSource::Value {
                current: parse_secret(v).ok_or_else(|| invalid("XNODE_CLUSTER_SECRET", "(hidden)", SECRET_FORM))?,
                old,
            },
            (None, Some(path)) => SecretSource::File { path: PathBuf::from(path), old },
            (None, None) if old.is_some() => {
                return Err(invalid(
                    "XNODE_CLUSTER_SECRET_OLD",
                    "(hidden)",
                    "only makes sense beside XNODE_CLUSTER_SECRET or XNODE_CLUSTER_SECRET_FILE (the new secret)",
                ))
            }
            (None, None) => SecretSource::None,
        };
        let mdns = match set(&self.mdns) {
            None => !bind.is_loopback(),
            Some(v) => flag("XNODE_MDNS", v, "true (find peers on the LAN) or false")?,
        };
        let public_bitswap = match set(&self.public_bitswap) {
            None => cluster_secret == SecretSource::None,
            Some(v) => flag("XNODE_PUBLIC_BITSWAP", v, "true (Kubo and other IPFS peers may fetch) or false")?,
        };
        let staged_ttl = match set(&self.staged_ttl) {
            None => STAGED_TTL_DEFAULT,
            Some(v) => match parse_duration(v) {
                Some(d) if d >= STAGED_TTL_RANGE.0 && d <= STAGED_TTL_RANGE.1 => d,
                _ => {
                    return Err(invalid(
                        "XNODE_STAGED_TTL",
                        v,
                        "not a duration from 1s to 7d; use e.g. 1h (how long blocks of an unfinished add are kept)",
                    ))
                }
            },
        };
        Ok(NodeSettings {
            staged_ttl,
            name,
            gossip_port,
            api_port: self.api_port()?,
            p2p_port: port(&self.p2p_port, "XNODE_P2P_PORT", xnode_p2p::DEFAULT_PORT, true)?,
            bind,
            advertise: set(&self.advertise_addr).map(str::to_string),
            seeds,
            group,
            bootstrap,
            replication,
            partitions,
            watch_dir,
            max_upload,
            fetch_timeout,
            admin_token,
            admin_token_file: set(&self.admin_token_file).map(PathBuf::from),
            cluster_secret,
            mdns,
            public_bitswap,
            scrub,
        })
    }
}

const SECRET_FORM: &str = "not 64 hex digits; make one with `openssl rand -hex 32`";

/// The keys in a cluster secret file: the first line is the secret to send with, every further line a secret also
/// accepted (a rotation in progress). Blank lines and `#` comments are skipped.
pub(crate) fn parse_secret_file(text: &str) -> Result<([u8; 32], Vec<[u8; 32]>), String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(parse_secret(line).ok_or_else(|| format!("line {i} is {SECRET_FORM}"))?);
    }
    let mut keys = keys.into_iter();
    let current = keys.next().ok_or_else(|| "no secret in it; write one with `openssl rand -hex 32`".to_string())?;
    Ok((current, keys.collect()))
}

/// 64 hex digits to 32 bytes.
pub(crate) fn parse_secret(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Node and group names: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit. They appear in URLs, HTML, logs and file names, so nothing there needs escaping to be safe
/// (it is escaped anyway) and no name can look like a path (`..`, `/`). Every hostname is a valid name.
pub(crate) fn check_name<'a>(var: &'static str, name: &'a str) -> Result<&'a str, ConfigError> {
    if xnode_gossip::valid_name(name) {
        Ok(name)
    } else {
        Err(invalid(
            var,
            name,
            format!(
                "names are 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ - starting with a letter or digit; \
                 use e.g. xnode-1"
            ),
        ))
    }
}

/// A `true`/`false` variable (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
fn flag(var: &'static str, v: &str, meaning: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, v, format!("not true or false; use {meaning}"))),
    }
}

fn list(v: &Option<String>) -> impl Iterator<Item = &str> {
    v.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn port(v: &Option<String>, var: &'static str, default: u16, zero_ok: bool) -> Result<u16, ConfigError> {
    match set(v) {
        None => Ok(default),
        Some(p) => match p.parse::<u16>() {
            Ok(0) if !zero_ok => Err(invalid(var, p, "other nodes need a fixed port to reach this one; use 1-65535")),
            Ok(n) => Ok(n),
            Err(_) => Err(invalid(var, p, if zero_ok { "not a port; use 0-65535" } else { "not a port; use 1-65535" })),
        },
    }
}

/// A seed: `host:port` (a hostname or an IPv4 address, or `[IPv6]:port`), the port 1-65535.
fn check_seed(s: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        invalid("XNODE_KNOWN_PEERS", s, format!("{why}; seeds are comma-separated host:port, e.g. xnode-1:9090"))
    };
    if s.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0) {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no :port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port is not 1-65535")),
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad("the host is neither an IP address nor a hostname"));
    }
    Ok(())
}

/// A size in bytes: a plain number or human units (`10GiB`, `500MB`).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    s.parse::<ByteSize>().ok().map(|b| b.as_u64())
}

/// `30s`, `2m`, `500ms`, `1h`, `30d`, or plain seconds; `None` if malformed, negative or out of `Duration`'s range.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// A warning for an `XNODE_*` variable nobody reads, naming the closest known one.
fn unknown_warning(key: &str) -> Option<String> {
    if KNOWN.contains(&key) || TOOLING.contains(&key) {
        return None;
    }
    let closest = KNOWN
        .iter()
        .map(|k| (strsim::damerau_levenshtein(k, key), *k))
        .min()
        .filter(|(d, _)| *d <= 4)
        .map(|(_, k)| format!("; did you mean {k}?"))
        .unwrap_or_default();
    Some(format!("{key} is not an Xnode setting and is ignored{closest} (see README.md, \"Configuration\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap().0
    }

    /// The error of `node()` for one variable, which must name it.
    fn node_err(var: &str, value: &str) -> String {
        let e = env(&[(var, value)]).node().expect_err(&format!("{var}={value:?} must be refused")).to_string();
        assert!(e.contains(var), "{e}");
        e
    }

    #[test]
    fn defaults_start_a_node() {
        let n = env(&[]).node().unwrap();
        assert_eq!((n.gossip_port, n.api_port, n.p2p_port, n.replication), (9090, 8080, xnode_p2p::DEFAULT_PORT, 2));
        assert_eq!(n.fetch_timeout, Duration::from_secs(60));
        assert_eq!(n.max_upload, 16 << 30);
        assert!(n.seeds.is_empty() && n.name.is_none() && n.cluster_secret == SecretSource::None);
    }

    #[test]
    fn names_have_a_character_set_and_a_length() {
        for good in ["xnode-1", "a", "node_2.example", &"a".repeat(63)] {
            assert_eq!(env(&[("XNODE_NAME", good)]).node().unwrap().name.as_deref(), Some(good));
        }
        for bad in ["a/../../b", "..", ".hidden", "-x", "a b", "é", "x<script>", &"a".repeat(64), "a%2f"] {
            node_err("XNODE_NAME", bad);
        }
        // Blank is unset (the hostname), but " x " is trimmed to a good name.
        assert!(env(&[("XNODE_NAME", " ")]).node().unwrap().name.is_none());
        node_err("XNODE_GROUP_NAME", "a/b");
    }

    #[test]
    fn ports() {
        node_err("XNODE_GOSSIP_PORT", "0");
        node_err("XNODE_GOSSIP_PORT", "65536");
        node_err("XNODE_API_PORT", "http");
        assert_eq!(env(&[("XNODE_API_PORT", "0"), ("XNODE_P2P_PORT", "0")]).node().unwrap().api_port, 0);
    }

    #[test]
    fn known_peers_are_host_port() {
        for bad in ["garbage", "host:", "host:0", "host:99999", ":9090", "a b:1", "x..y:1", "-x:1"] {
            node_err("XNODE_KNOWN_PEERS", bad);
        }
        let n = env(&[("XNODE_KNOWN_PEERS", "xnode-1:9090, 10.0.0.2:9090,[::1]:9090,")]).node().unwrap();
        assert_eq!(n.seeds, ["xnode-1:9090", "10.0.0.2:9090", "[::1]:9090"]);
    }

    #[test]
    fn partitions_are_a_power_of_two() {
        assert_eq!(env(&[]).node().unwrap().partitions, 65536);
        assert_eq!(env(&[("XNODE_PARTITIONS", "1024")]).node().unwrap().partitions, 1024);
        for bad in ["1000", "0", "x", "33554432"] {
            let err = env(&[("XNODE_PARTITIONS", bad)]).node().unwrap_err().to_string();
            assert!(err.contains("XNODE_PARTITIONS"), "{bad}: {err}");
        }
    }

    #[test]
    fn replication_is_bounded() {
        for bad in ["0", "-1", "1000", "17", "two"] {
            node_err("XNODE_REPLICATION", bad);
        }
        assert_eq!(env(&[("XNODE_REPLICATION", "16")]).node().unwrap().replication, 16);
    }

    #[test]
    fn sizes_and_durations() {
        let e = env(&[("XNODE_STORAGE_MAX", "0")]).capacity().unwrap_err().to_string();
        assert!(e.contains("XNODE_STORAGE_MAX") && e.contains("1.0 MiB"), "{e}");
        assert!(env(&[("XNODE_STORAGE_MAX", "lots")]).capacity().is_err());
        assert_eq!(env(&[("XNODE_STORAGE_MAX", "10GiB")]).capacity().unwrap(), 10 << 30);
        assert_eq!(env(&[]).capacity().unwrap(), u64::MAX);
        node_err("XNODE_MAX_UPLOAD", "0");
        node_err("XNODE_MAX_UPLOAD", "-5");
        for bad in ["0", "50ms", "1e300", "1000000h", "-1s", "NaN", "inf", "forever"] {
            node_err("XNODE_FETCH_TIMEOUT", bad);
        }
        assert_eq!(env(&[("XNODE_FETCH_TIMEOUT", "2m")]).node().unwrap().fetch_timeout, Duration::from_secs(120));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1e300"), None);
    }

    #[test]
    fn staged_ttl_defaults_to_an_hour_and_is_bounded() {
        assert_eq!(env(&[]).node().unwrap().staged_ttl, Duration::from_secs(3600));
        assert_eq!(env(&[("XNODE_STAGED_TTL", "90s")]).node().unwrap().staged_ttl, Duration::from_secs(90));
        for bad in ["0s", "soon", "8d", "-1s"] {
            node_err("XNODE_STAGED_TTL", bad);
        }
    }

    #[test]
    fn scrub_interval_and_rate() {
        let d = env(&[]).node().unwrap().scrub;
        assert_eq!(d, xnode_instance::ScrubConfig::default());
        assert_eq!(d.interval, Duration::from_secs(30 * 86_400), "a month by default, like Garage's 25-35 days");
        let s = env(&[("XNODE_SCRUB_INTERVAL", "7d"), ("XNODE_SCRUB_RATE", "64MiB")]).node().unwrap().scrub;
        assert_eq!((s.interval, s.rate), (Duration::from_secs(7 * 86_400), 64 << 20));
        assert_eq!(env(&[("XNODE_SCRUB_INTERVAL", "90s")]).node().unwrap().scrub.interval, Duration::from_secs(90));
        assert_eq!(env(&[("XNODE_SCRUB_RATE", "unlimited")]).node().unwrap().scrub.rate, 0);
        assert_eq!(env(&[("XNODE_SCRUB_RATE", "0")]).node().unwrap().scrub.rate, 0);
        for bad in ["0s", "500ms", "400d", "soon", "-1"] {
            node_err("XNODE_SCRUB_INTERVAL", bad);
        }
        for bad in ["fast", "-5", "16 parsecs"] {
            node_err("XNODE_SCRUB_RATE", bad);
        }
    }

    #[test]
    fn log_filter_is_checked() {
        let e = env(&[("XNODE_LOG", "[[[bad")]).log_filter().unwrap_err().to_string();
        assert!(e.contains("XNODE_LOG"), "{e}");
        assert!(env(&[("XNODE_LOG", "info,xnode_storage=debug")]).log_filter().is_ok());
    }

    #[test]
    fn networking_chatter_is_kept_below_info_unless_asked_for() {
        let info = log_directives("info");
        assert!(info.starts_with("info,") && info.contains("libp2p=error") && info.contains("quinn=error"), "{info}");
        assert_eq!(log_directives("debug"), "debug", "debug shows everything");
        assert_eq!(log_directives("info,libp2p_mdns=debug"), "info,libp2p_mdns=debug", "asked for by name");
        assert!(env(&[]).log_filter().is_ok());
    }

    #[test]
    fn other_values() {
        node_err("XNODE_BIND_ADDR", "localhost");
        node_err("XNODE_BOOTSTRAP", "/ip4/1.2.3.4/tcp/1");
        node_err("XNODE_WATCH_DIR", "/does/not/exist");
        let e = env(&[("XNODE_DIRECT_IO", "yes")]).direct_io().unwrap_err().to_string();
        assert!(e.contains("XNODE_DIRECT_IO"), "{e}");
        let e = env(&[("XNODE_API", "localhost:8080")]).api_url(None).unwrap_err().to_string();
        assert!(e.contains("XNODE_API"), "{e}");
        assert_eq!(env(&[("XNODE_API_PORT", "9000")]).api_url(None).unwrap(), "http://127.0.0.1:9000");
    }

    #[test]
    fn mdns_is_on_for_a_lan_off_on_loopback_and_a_flag() {
        assert!(env(&[]).node().unwrap().mdns, "on by default (0.0.0.0)");
        assert!(env(&[("XNODE_BIND_ADDR", "10.0.0.5")]).node().unwrap().mdns);
        assert!(!env(&[("XNODE_BIND_ADDR", "127.0.0.1")]).node().unwrap().mdns, "loopback finds nothing it can reach");
        assert!(env(&[("XNODE_BIND_ADDR", "127.0.0.1"), ("XNODE_MDNS", "true")]).node().unwrap().mdns);
        for (v, want) in [("false", false), ("0", false), ("OFF", false), ("yes", true), ("True", true)] {
            assert_eq!(env(&[("XNODE_MDNS", v)]).node().unwrap().mdns, want, "{v}");
        }
        let e = node_err("XNODE_MDNS", "maybe");
        assert!(e.contains("true") && e.contains("false"), "{e}");
    }

    #[test]
    fn public_bitswap_is_closed_with_a_secret_unless_opened() {
        let key = "ab".repeat(32);
        assert!(env(&[]).node().unwrap().public_bitswap, "an open cluster interoperates with Kubo");
        assert!(!env(&[("XNODE_CLUSTER_SECRET", &key)]).node().unwrap().public_bitswap, "a sealed one is closed");
        let open = env(&[("XNODE_CLUSTER_SECRET", &key), ("XNODE_PUBLIC_BITSWAP", "true")]).node().unwrap();
        assert!(open.public_bitswap);
        assert!(!env(&[("XNODE_PUBLIC_BITSWAP", "false")]).node().unwrap().public_bitswap);
        node_err("XNODE_PUBLIC_BITSWAP", "kubo");
    }

    #[test]
    fn cluster_secret_is_64_hex_digits_and_never_printed() {
        let key = "ab".repeat(32);
        let n = env(&[("XNODE_CLUSTER_SECRET", &key)]).node().unwrap();
        assert_eq!(n.cluster_secret, SecretSource::Value { current: [0xab; 32], old: None });
        for bad in ["abc", &"zz".repeat(32), &"ab".repeat(33)] {
            let e = node_err("XNODE_CLUSTER_SECRET", bad);
            assert!(!e.contains(bad), "the error must not echo the secret: {e}");
        }
        assert!(!format!("{:?}", n.cluster_secret).contains("171"), "Debug hides the key");
        node_err("XNODE_CLUSTER_SECRET_OLD", &key); // an old key without a new one
        let both = env(&[("XNODE_CLUSTER_SECRET", &key), ("XNODE_CLUSTER_SECRET_FILE", "/x")]).node();
        assert!(both.is_err());
    }

    #[test]
    fn a_secret_file_holds_the_key_in_use_then_keys_still_accepted() {
        let (a, b) = ("ab".repeat(32), "CD".repeat(32));
        assert_eq!(parse_secret_file(&format!("{a}\n")).unwrap(), ([0xab; 32], vec![]));
        assert_eq!(parse_secret_file(&format!("# rotating\n{b}\n\n{a}\n")).unwrap(), ([0xcd; 32], vec![[0xab; 32]]));
        assert!(parse_secret_file("").unwrap_err().contains("no secret"));
        let e = parse_secret_file(&format!("{a}\nnope\n")).unwrap_err();
        assert!(e.contains("line 2") && !e.contains("nope"), "{e}");
    }

    #[test]
    fn unknown_variables_are_named_with_the_closest_known_one() {
        let (_, warnings) =
            Env::from_pairs(vec![("XNODE_REPLICATON".into(), "2".into()), ("XNODE_VENV".into(), "/v".into())]).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("XNODE_REPLICATON") && warnings[0].contains("XNODE_REPLICATION"), "{warnings:?}");
        assert!(unknown_warning("XNODE_NAME").is_none());
        assert!(!unknown_warning("XNODE_ZZZZZZZZZZZZZZZZ").unwrap().contains("did you mean"));
    }
}
