//! The `xnode` command: parse flags and `XNODE_*` variables once, then run the node, talk to a running one, or run
//! one operation on the local store.

mod client;
mod dag;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use xnode_api::ApiConfig;
use xnode_dag::{ImportOptions, Profile};
use xnode_gossip::{GossipConfig, Member};
use xnode_instance::{AddOptions, Node, NodeConfig, Repo};
use xnode_p2p::P2pConfig;
use xnode_storage::StoreConfig;

/// Xnode pools the disks of many machines into one IPFS-compatible content-addressed store.
#[derive(Parser, Debug)]
#[command(name = "xnode", version, about, propagate_version = true)]
struct Cli {
    /// Where the node keeps its blocks and index [env: XNODE_DATA_DIR] [default: ./xnode-data]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The running node add/cat/get/ls/rm/members talk to [env: XNODE_API] [default: http://127.0.0.1:$XNODE_API_PORT]
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
    /// Admin token for changes through the API [env: XNODE_ADMIN_TOKEN] [default: DATA_DIR/admin-token if readable]
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Work on the local data dir instead of a running node (add/cat/get/ls/rm/stats)
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: join the cluster (XNODE_KNOWN_PEERS), serve the HTTP API, until SIGTERM or Ctrl-C.
    Run,
    /// List the cluster's members as a running node sees them.
    Members {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a running node answers its health check (used by the image's HEALTHCHECK).
    Health,
    /// Add files or directories, printing `added <cid> <name>` lines like `ipfs add`.
    Add(AddArgs),
    /// Print a file's bytes to standard output (fetched from other nodes if this one lacks them).
    Cat {
        /// The file's root CID.
        cid: String,
        /// Seconds to wait for missing blocks from the network [default: the node's XNODE_FETCH_TIMEOUT]
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Start at this byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Print at most this many bytes.
        #[arg(long)]
        length: Option<u64>,
    },
    /// Write a file or directory to disk (fetched from other nodes if this one lacks them).
    Get {
        /// The root CID.
        cid: String,
        /// Seconds to wait for missing blocks from the network [default: the node's XNODE_FETCH_TIMEOUT]
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Where to write it [default: ./<cid>].
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// List the files the store holds.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a file; blocks no other file needs are deleted.
    Rm {
        /// The root CID of a file listed by `xnode ls`.
        cid: String,
    },
    /// Show what the local store holds and how much room is left (reads the data dir).
    Stats,
    /// Move DAGs in and out as CAR files: `dag export CID > f.car`, `dag import f.car`.
    #[command(subcommand)]
    Dag(dag::DagCommand),
    /// Show the blocks a running node holds and the ones it still wants.
    Blocks {
        /// List at most this many CIDs of each.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct AddArgs {
    /// Files or directories to add.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Add directories recursively.
    #[arg(short, long)]
    recursive: bool,
    /// Print only the root CID of each path.
    #[arg(short = 'Q', long)]
    quieter: bool,
    /// Print nothing.
    #[arg(short, long)]
    quiet: bool,
    /// CID version: 0 (the `ipfs add` default) or 1 (implies raw leaves).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    cid_version: Option<u8>,
    /// Import profile fixing every setting that changes CIDs: unixfs-v0-2015 (default) or unixfs-v1-2025.
    #[arg(long)]
    profile: Option<Profile>,
    /// Only compute the CIDs; store nothing.
    #[arg(short = 'n', long)]
    only_hash: bool,
    /// Include files whose names start with a dot.
    #[arg(short = 'H', long)]
    hidden: bool,
    /// Chunking as `ipfs add --chunker`: size-N, fixed chunks of N bytes (default size-262144).
    #[arg(long)]
    chunker: Option<String>,
}

/// The `XNODE_*` environment, read once here and nowhere else. Values stay strings until [`parse`] turns them
/// into typed settings, so a bad one is reported with its variable's name.
#[derive(Deserialize, Debug, Default)]
struct EnvConfig {
    /// XNODE_DATA_DIR: the data directory (default `./xnode-data`).
    data_dir: Option<PathBuf>,
    /// XNODE_STORAGE_MAX: the store's hard capacity, e.g. `10GiB` (default: unlimited).
    storage_max: Option<String>,
    /// XNODE_DIRECT_IO: `true` or `false`, whether block bodies bypass the page cache (default `true`).
    direct_io: Option<String>,
    /// XNODE_NAME: this node's unique name in the cluster (default: the hostname).
    name: Option<String>,
    /// XNODE_GOSSIP_PORT: UDP port for membership gossip (default 9090).
    gossip_port: Option<String>,
    /// XNODE_KNOWN_PEERS: comma-separated `host:port` seeds; blank starts a new cluster.
    known_peers: Option<String>,
    /// XNODE_GROUP_NAME: cluster name; nodes of other groups are ignored (default `Xnode`).
    group_name: Option<String>,
    /// XNODE_ADVERTISE_ADDR: `host` or `host:port` other nodes reach our gossip at (default: our hostname's IP).
    advertise_addr: Option<String>,
    /// XNODE_BIND_ADDR: the IP the API and gossip listen on (default `0.0.0.0`).
    bind_addr: Option<String>,
    /// XNODE_API_PORT: TCP port of the HTTP API (default 8080).
    api_port: Option<String>,
    /// XNODE_P2P_PORT: libp2p port, TCP and QUIC (default 10090; 0 picks free ports).
    p2p_port: Option<String>,
    /// XNODE_BOOTSTRAP: comma-separated multiaddrs (ending in /p2p/ID) of DHT peers to join.
    bootstrap: Option<String>,
    /// XNODE_FETCH_TIMEOUT: how long a read waits for missing blocks from the network (default `60s`).
    fetch_timeout: Option<String>,
    /// XNODE_REPLICATION: how many nodes hold each block (default 2).
    replication: Option<String>,
    /// XNODE_PARTITIONS: partitions blocks hash into (default 65536; a power of two, the same on every member).
    partitions: Option<String>,
    /// XNODE_WATCH_DIR: a folder whose new or changed files are added once they stop changing (default: none).
    watch_dir: Option<String>,
    /// XNODE_API: base URL of a running node for the client commands.
    api: Option<String>,
    /// XNODE_ADMIN_TOKEN: the token that authorizes changes through the API (default: random, logged at start).
    admin_token: Option<String>,
    /// XNODE_ADMIN_TOKEN_FILE: a file holding the admin token, shared by members (the first node to start creates
    /// it with a random token); used when XNODE_ADMIN_TOKEN is unset.
    admin_token_file: Option<PathBuf>,
    /// XNODE_MAX_UPLOAD: the largest upload the API accepts (default `16GiB`).
    max_upload: Option<String>,
}

impl EnvConfig {
    fn port(value: Option<&String>, var: &str, default: u16) -> Result<u16> {
        match value.map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse().with_context(|| format!("{var}={v:?} is not a port number; use 1-65535")),
        }
    }

    fn api_url(&self, flag: Option<String>) -> Result<String> {
        if let Some(url) = flag.or_else(|| self.api.clone()).filter(|u| !u.trim().is_empty()) {
            return Ok(url.trim_end_matches('/').to_string());
        }
        Ok(format!("http://127.0.0.1:{}", Self::port(self.api_port.as_ref(), "XNODE_API_PORT", 8080)?))
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("XNODE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let env: EnvConfig = envy::prefixed("XNODE_").from_env().context("reading XNODE_* environment variables")?;
    let data_dir = cli.data_dir.or_else(|| env.data_dir.clone()).unwrap_or_else(|| PathBuf::from("./xnode-data"));
    let capacity = match env.storage_max.as_deref().map(str::trim) {
        None | Some("") => u64::MAX,
        Some(s) => parse_size(s).with_context(|| {
            format!("XNODE_STORAGE_MAX={s:?} is not a size; use e.g. 10GiB, 500MB or a number of bytes")
        })?,
    };
    let direct_io = match env.direct_io.as_deref().map(str::trim) {
        None | Some("") => true,
        Some(v) => v.parse().map_err(|_| {
            anyhow::anyhow!("XNODE_DIRECT_IO={v:?} is not true or false; use true (bypass the page cache) or false")
        })?,
    };
    let store_config = StoreConfig { capacity, direct_io, ..StoreConfig::default() };
    let open =
        || Repo::open(&data_dir, store_config).with_context(|| format!("opening the store in {}", data_dir.display()));

    let api_url = env.api_url(cli.api.clone())?;
    let token = cli
        .token
        .clone()
        .or_else(|| env.admin_token.clone())
        .filter(|t| !t.is_empty())
        .or_else(|| std::fs::read_to_string(data_dir.join(TOKEN_FILE)).ok().map(|t| t.trim().to_string()));
    let api = || client::Api::new(api_url.clone(), token.clone());
    let offline = cli.offline;

    match cli.command {
        Command::Run => run_node(&env, data_dir, store_config),
        Command::Members { json } => members(&api_url, json),
        Command::Health => {
            http_get(&format!("{api_url}/healthz"))?;
            Ok(())
        }
        Command::Add(args) if offline || args.only_hash => add(args, open),
        Command::Add(args) => {
            let stdout = io::stdout();
            let mut print = |cid: &str, path: &str| {
                if !args.quiet && !args.quieter {
                    let _ = writeln!(stdout.lock(), "added {cid} {path}");
                }
            };
            let mut req = client::AddRequest {
                recursive: args.recursive,
                cid_version: args.cid_version,
                profile: args.profile.map(|p| p.to_string()),
                hidden: args.hidden,
                chunker: args.chunker.clone(),
                on_added: &mut print,
            };
            let api = api();
            api.check_token()?;
            for path in &args.paths {
                let root = api.add(path, &mut req)?;
                if args.quieter && !args.quiet {
                    println!("{root}");
                }
            }
            Ok(())
        }
        Command::Cat { cid, offset, length, timeout } => {
            let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            if offline {
                let repo = open()?;
                let cid = parse_cid(&cid)?;
                repo.cat(&cid, offset, length.unwrap_or(u64::MAX), &mut out)?;
            } else {
                parse_cid(&cid)?;
                api().with_timeout(timeout).cat(&cid, offset, length, &mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Get { cid, output, timeout } => {
            let parsed = parse_cid(&cid)?;
            let dest = output.unwrap_or_else(|| PathBuf::from(&cid));
            if dest.exists() {
                bail!("{} already exists; choose another path with -o", dest.display());
            }
            if offline {
                open()?.get(&parsed, &dest)?;
            } else {
                api().with_timeout(timeout).get(&cid, &dest)?;
            }
            println!("Saved {} to {}", cid, dest.display());
            Ok(())
        }
        Command::Ls { json } => {
            let pins = if offline { open()?.pins()? } else { api().ls()? };
            if json {
                println!("{}", serde_json::to_string_pretty(&pins)?);
            } else {
                for p in pins {
                    println!("{}\t{}\t{}", p.root, ByteSize(p.size).display().iec(), p.name);
                }
            }
            Ok(())
        }
        Command::Rm { cid } => {
            let (deleted, freed) = if offline {
                let s = open()?.remove(&parse_cid(&cid)?)?;
                (s.blocks_deleted, s.bytes_freed)
            } else {
                parse_cid(&cid)?;
                let v = api().rm(&cid)?;
                (v["blocks_deleted"].as_u64().unwrap_or(0), v["bytes_freed"].as_u64().unwrap_or(0))
            };
            println!("removed {cid}: {deleted} blocks deleted, {} freed", ByteSize(freed).display().iec());
            Ok(())
        }
        Command::Dag(cmd) => dag::run(cmd, offline, open, api),
        Command::Blocks { limit, json } => {
            let blocks = api().blocks(limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&blocks)?);
                return Ok(());
            }
            for (what, list) in [("held", &blocks["held"]), ("wanted", &blocks["wanted"])] {
                println!("{what}: {}", list["count"].as_u64().unwrap_or(0));
                for cid in list["cids"].as_array().into_iter().flatten().filter_map(|c| c.as_str()) {
                    println!("  {cid}");
                }
            }
            Ok(())
        }
        Command::Stats => {
            let s = open()?.stats()?;
            let cap = if s.capacity == u64::MAX {
                "unlimited".to_string()
            } else {
                ByteSize(s.capacity).display().iec().to_string()
            };
            println!("files:    {}", s.pins);
            println!("blocks:   {}", s.blocks);
            println!("held:     {} ({} bytes)", ByteSize(s.bytes_held).display().iec(), s.bytes_held);
            println!("on disk:  {} ({} bytes)", ByteSize(s.disk_bytes).display().iec(), s.disk_bytes);
            println!("capacity: {cap}");
            Ok(())
        }
    }
}

/// Where `xnode run` writes its admin token (0600), so CLI commands on the same machine can use it.
const TOKEN_FILE: &str = "admin-token";

fn add(args: AddArgs, open: impl FnOnce() -> Result<Repo>) -> Result<()> {
    let mut import = ImportOptions::profile(args.profile.unwrap_or_default());
    if let Some(v) = args.cid_version {
        import = import.with_cid_version(v);
    }
    import.include_hidden = args.hidden;
    if let Some(chunker) = &args.chunker {
        import = import.with_chunker(chunker).map_err(|e| anyhow::anyhow!("--chunker: {e}"))?;
    }
    let opts = AddOptions { import, recursive: args.recursive, only_hash: args.only_hash };
    // --only-hash must work without a writable data dir, so the store is opened only when needed.
    let repo = if args.only_hash { None } else { Some(open()?) };
    let stdout = io::stdout();
    for path in &args.paths {
        let mut print = |p: &Path, a: &xnode_dag::Added| {
            if !args.quiet && !args.quieter {
                let _ = writeln!(stdout.lock(), "added {} {}", a.cid, p.display());
            }
        };
        let added = match &repo {
            Some(repo) => repo.add(path, &opts, &mut print),
            None => Repo::hash_only(path, &opts, &mut print),
        }?;
        if args.quieter && !args.quiet {
            println!("{}", added.cid);
        }
    }
    Ok(())
}

fn parse_cid(s: &str) -> Result<cid::Cid> {
    cid::Cid::try_from(s.trim())
        .map_err(|e| anyhow::anyhow!("{s:?} is not a valid CID ({e}); CIDs look like Qm... or bafy..."))
}

fn parse_size(s: &str) -> Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    s.parse::<ByteSize>().map(|b| b.as_u64()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| anyhow::anyhow!("no number in {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => bail!("unknown unit {u:?}"),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// `xnode run`: everything the node needs comes from `XNODE_*`, checked before anything starts.
fn run_node(env: &EnvConfig, data_dir: PathBuf, store: StoreConfig) -> Result<()> {
    let gossip_port = EnvConfig::port(env.gossip_port.as_ref(), "XNODE_GOSSIP_PORT", 9090)?;
    let api_port = EnvConfig::port(env.api_port.as_ref(), "XNODE_API_PORT", 8080)?;
    let p2p_port = EnvConfig::port(env.p2p_port.as_ref(), "XNODE_P2P_PORT", 10090)?;
    let name = match env.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => hostname().context("XNODE_NAME is not set and the hostname cannot be read; set XNODE_NAME")?,
    };
    let bind: IpAddr = match env.bind_addr.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(b) => b.parse().with_context(|| format!("XNODE_BIND_ADDR={b:?} is not an IP address"))?,
    };
    let advertise = advertise_addr(env.advertise_addr.as_deref(), bind, gossip_port)?;
    let seeds: Vec<String> = env
        .known_peers
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let mut gossip = GossipConfig::new(name, SocketAddr::new(bind, gossip_port));
    gossip.advertise_addr = advertise;
    gossip.seeds = seeds;
    if let Some(group) = env.group_name.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
        gossip.group = group.to_string();
    }
    let mut p2p = P2pConfig::new(gossip.group.clone(), data_dir.join("identity.key"), p2p_port);
    if !bind.is_unspecified() {
        p2p.listen = vec![
            format!("/ip4/{bind}/tcp/{p2p_port}").parse()?,
            format!("/ip4/{bind}/udp/{p2p_port}/quic-v1").parse()?,
        ];
    }
    for addr in env.bootstrap.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|a| !a.is_empty()) {
        p2p.bootstrap.push(addr.parse().with_context(|| {
            format!("XNODE_BOOTSTRAP: {addr:?} is not a multiaddr like /ip4/10.0.0.5/tcp/10090/p2p/12D3Koo...")
        })?);
    }
    let replication = match env.replication.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => 2,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => bail!("XNODE_REPLICATION={v:?} is not a whole number of copies of at least 1; use e.g. 2"),
        },
    };
    let watch_dir = match env.watch_dir.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(d) => {
            let path = PathBuf::from(d);
            if !path.is_dir() {
                bail!("XNODE_WATCH_DIR={d:?} is not a directory; create it or unset XNODE_WATCH_DIR");
            }
            Some(path)
        }
    };
    let partitions = match env.partitions.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => xnode_placement::DEFAULT_PARTITIONS,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n.is_power_of_two() && n <= xnode_placement::MAX_PARTITIONS => n,
            _ => bail!(
                "XNODE_PARTITIONS={v:?} is not a power of two between 1 and {}; use the same value on every member, \
                 e.g. 65536 (the default)",
                xnode_placement::MAX_PARTITIONS
            ),
        },
    };
    let config = NodeConfig {
        replication,
        partitions,
        watch_dir,
        data_dir,
        store,
        gossip,
        api_url: format!("http://{}", SocketAddr::new(advertise.ip(), api_port)),
        p2p,
        advertise_ip: advertise.ip(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let max_upload = match env.max_upload.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => 16 << 30,
        Some(v) => parse_size(v).with_context(|| format!("XNODE_MAX_UPLOAD={v:?} is not a size; use e.g. 16GiB"))?,
    };
    let token_file = env.admin_token_file.as_ref().filter(|p| !p.as_os_str().is_empty());
    let (admin_token, generated) =
        match (env.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()), token_file) {
            (Some(t), _) => (t.to_string(), None),
            (None, Some(path)) => shared_token(path)?,
            (None, None) => (ApiConfig::random_token(), Some(config.data_dir.join(TOKEN_FILE))),
        };
    let fetch_timeout = match env.fetch_timeout.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => std::time::Duration::from_secs(60),
        Some(v) => parse_duration(v)
            .with_context(|| format!("XNODE_FETCH_TIMEOUT={v:?} is not a duration; use e.g. 30s or 2m"))?,
    };
    let api_config = ApiConfig { admin_token, max_upload_bytes: max_upload, fetch_timeout };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve_node(config, api_config, generated, SocketAddr::new(bind, api_port)))
}

/// Reads the admin token members share through `path`, or creates the file with a random token if no member has
/// yet. Creation is atomic (a hard link of a complete temporary file), so nodes starting together agree on one
/// token. Returns the token and, if this node made it, where it is (to log it once).
fn shared_token(path: &Path) -> Result<(String, Option<PathBuf>)> {
    use std::os::unix::fs::OpenOptionsExt;
    let context = || format!("XNODE_ADMIN_TOKEN_FILE={}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(context)?;
    }
    let token = ApiConfig::random_token();
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((token, Some(path.to_path_buf()))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let existing = std::fs::read_to_string(path).with_context(context)?.trim().to_string();
            if existing.is_empty() {
                bail!("{} is empty; put the admin token in it or delete it", path.display());
            }
            Ok((existing, None))
        }
        Err(e) => Err(e).with_context(context),
    }
}

fn write_token_file(data_dir: &Path, token: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(TOKEN_FILE);
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

async fn serve_node(
    config: NodeConfig,
    api_config: ApiConfig,
    generated: Option<PathBuf>,
    api_addr: SocketAddr,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    let kill = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot listen on {api_addr} for the API; free the port or set XNODE_API_PORT"))?;
    let data_dir = config.data_dir.clone();
    let mut config = config;
    if api_addr.port() == 0 {
        // XNODE_API_PORT=0 picks a free port: advertise the one we got, so other members can forward to us.
        config.api_url = format!("http://{}", SocketAddr::new(config.advertise_ip, listener.local_addr()?.port()));
    }
    let node = Node::start(config, shutdown.clone()).await?;
    write_token_file(&data_dir, &api_config.admin_token)
        .with_context(|| format!("writing the admin token to {}", data_dir.display()))?;
    if let Some(file) = generated {
        eprintln!(
            "admin token (XNODE_ADMIN_TOKEN was unset): {}  (also in {})",
            api_config.admin_token,
            file.display()
        );
    }
    let bound = listener.local_addr()?;
    tracing::info!(name = node.name(), api = %bound, "node started");
    eprintln!("xnode {} running as {:?}; API on http://{bound}", env!("CARGO_PKG_VERSION"), node.name());
    let control = xnode_api::Control { shutdown: shutdown.clone(), kill: kill.clone() };
    let router = xnode_api::router(node.clone(), api_config, control);
    let server = tokio::spawn(xnode_api::serve(listener, router, shutdown.clone()));

    let fatal = tokio::select! {
        () = terminate_signal() => None,
        () = shutdown.cancelled() => None,
        () = kill.cancelled() => {
            // As a crash would: no goodbye to the cluster (the others declare us dead). Give the API a moment to
            // answer the request that asked for it; the store is crash-safe, so exiting now loses nothing.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            eprintln!("xnode killed over the API: exiting without leaving the cluster");
            std::process::exit(137);
        }
        reason = fatal_error(node.clone()) => Some(reason),
    };
    shutdown.cancel();
    server.await.context("API server task")?.context("API server")?;
    node.stop().await?;
    drop(node);
    match fatal {
        None => {
            eprintln!("xnode stopped: left the cluster and flushed the store");
            Ok(())
        }
        Some(reason) => bail!(reason),
    }
}

/// Resolves when membership gives up for good (e.g. another live node already uses our name).
async fn fatal_error(node: std::sync::Arc<Node>) -> String {
    loop {
        if let Some(e) = node.fatal_error() {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let name = name.trim();
    if name.is_empty() {
        bail!("empty hostname");
    }
    Ok(name.to_string())
}

/// The gossip address other nodes should use: `XNODE_ADVERTISE_ADDR` (`host` or `host:port`), else the bind IP if
/// it is a real one, else the IP our hostname resolves to (a container's address), else loopback.
fn advertise_addr(value: Option<&str>, bind: IpAddr, port: u16) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
        let with_port =
            if v.parse::<IpAddr>().is_ok() || !v.contains(':') { format!("{v}:{port}") } else { v.to_string() };
        return with_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(|a| a.is_ipv4()))
            .with_context(|| format!("XNODE_ADVERTISE_ADDR={v:?} does not resolve to an IPv4 address"));
    }
    if !bind.is_unspecified() {
        return Ok(SocketAddr::new(bind, port));
    }
    let own = hostname()
        .ok()
        .and_then(|h| (h.as_str(), port).to_socket_addrs().ok())
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()));
    Ok(own.unwrap_or_else(|| SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)))
}

fn http_get(url: &str) -> Result<ureq::Response> {
    ureq::get(url)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map_err(|e| anyhow::anyhow!("no answer from {url}: {e}; is `xnode run` up there? (set --api or XNODE_API)"))
}

fn members(api: &str, json: bool) -> Result<()> {
    let url = format!("{api}/api/v1/members");
    let members: Vec<Member> = http_get(&url)?.into_json().with_context(|| format!("reading {url}"))?;
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
        let name = if m.is_self { format!("{} (self)", m.name) } else { m.name };
        let state = format!("{:?}", m.state).to_lowercase();
        println!("{name:<20} {state:<6} {:<22} {:<18} {storage:>22} {:>8}", m.gossip_addr, m.meta.phase, m.meta.blocks);
    }
    Ok(())
}
