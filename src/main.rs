//! The `xnode` command: parse flags and `XNODE_*` variables once, then run the node, talk to a running one, or run
//! one operation on the local store.

mod client;
mod config;
mod dag;
mod node;
mod output;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use xnode_dag::{ImportOptions, Profile};
use xnode_instance::{AddOptions, Repo};
use xnode_storage::StoreConfig;

use config::Env;

/// Xnode pools the disks of many machines into one IPFS-compatible content-addressed store.
///
/// `xnode run` starts a node (its settings are XNODE_* variables: `xnode run --help`); the other commands talk to a
/// running node over its HTTP API (--api, XNODE_API) or, with --offline, work on the local data dir.
#[derive(Parser, Debug)]
#[command(name = "xnode", version, about, long_about, propagate_version = true)]
struct Cli {
    // The connection flags before the command (`xnode --api URL ls`) still work; each command lists its own.
    #[arg(long, global = false, hide = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, global = false, hide = true, value_name = "URL")]
    api: Option<String>,
    #[arg(long, global = false, hide = true, value_name = "TOKEN")]
    token: Option<String>,
    #[arg(long, global = false, hide = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

/// Which running node a command talks to.
#[derive(Args, Debug, Default, Clone)]
struct Remote {
    /// The running node's API [env: XNODE_API] [default: http://127.0.0.1:$XNODE_API_PORT, port 8080]
    #[arg(long, value_name = "URL")]
    api: Option<String>,
}

/// A command that changes something: the node and the admin token.
#[derive(Args, Debug, Default, Clone)]
struct Admin {
    #[command(flatten)]
    remote: Remote,
    /// The node's admin token [env: XNODE_ADMIN_TOKEN] [default: read from DATA_DIR/admin-token, which a node
    /// writes at start, so it is found on the node's own machine]
    #[arg(long, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where to look for the admin-token file [env: XNODE_DATA_DIR] [default: ./xnode-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// A command that can also work on the local data dir instead of a running node.
#[derive(Args, Debug, Default, Clone)]
struct Local {
    #[command(flatten)]
    admin: Admin,
    /// Work on the data dir (--data-dir, XNODE_DATA_DIR) instead of a running node; stop the node first
    #[arg(long)]
    offline: bool,
}

/// The node's settings, shown by `xnode run --help`: they are environment variables, read once at start.
const NODE_SETTINGS: &str = "\
Node settings (environment variables; README.md \"Configuration\" has every bound):
  XNODE_NAME                 unique name in the cluster [default: the hostname]
  XNODE_DATA_DIR             data directory [default: ./xnode-data]; --data-dir overrides it
  XNODE_STORAGE_MAX          hard capacity, e.g. 10GiB [default: unlimited]; a capacity set at run time
                             (dashboard, `xnode resize`, PUT /api/v1/storage) is kept in the data dir and wins
  XNODE_KNOWN_PEERS          seeds, host:port,... (gossip ports); blank starts a new cluster
  XNODE_GROUP_NAME           cluster name; other groups are ignored [default: Xnode]
  XNODE_GOSSIP_PORT          UDP port of membership gossip [default: 9090]
  XNODE_P2P_PORT             libp2p port, TCP and QUIC [default: 10090]
  XNODE_API_PORT             HTTP API and dashboard port [default: 8080]
  XNODE_BIND_ADDR            IP the API and gossip listen on [default: 0.0.0.0]
  XNODE_ADVERTISE_ADDR       host[:port] other members reach our gossip at (other hosts: this machine's address)
  XNODE_BOOTSTRAP            DHT peers, multiaddrs ending in /p2p/ID
  XNODE_REPLICATION          copies of each block [default: 2]
  XNODE_PARTITIONS           partitions blocks hash into, the same on every member [default: 65536]
  XNODE_STAGED_TTL           blocks members streamed here for an add no file claims are dropped after [default: 1h]
  XNODE_ADMIN_TOKEN          token for changes through the API [default: random, logged at start]
  XNODE_ADMIN_TOKEN_FILE     file with the token members share (used when XNODE_ADMIN_TOKEN is unset)
  XNODE_CLUSTER_SECRET       64 hex digits sealing gossip (or XNODE_CLUSTER_SECRET_FILE; rotation:
                             XNODE_CLUSTER_SECRET_OLD)
  XNODE_MAX_UPLOAD           largest upload [default: 16GiB]
  XNODE_FETCH_TIMEOUT        how long a read waits for missing blocks [default: 60s]
  XNODE_WATCH_DIR            a folder whose files are added automatically
  XNODE_DIRECT_IO            block bodies around the page cache [default: true]
  XNODE_LOG                  log filter, e.g. info or xnode=debug [default: warn]

Stop with SIGTERM or Ctrl-C (leaves the cluster politely, exit 0). `xnode kill` / the dashboard's kill stop at
once without leaving (the others mark it dead) and also exit 0, so `restart: on-failure` leaves it down.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: join the cluster (XNODE_KNOWN_PEERS), serve the HTTP API, until SIGTERM or Ctrl-C.
    #[command(after_help = NODE_SETTINGS)]
    Run {
        /// Where the node keeps its blocks and index [env: XNODE_DATA_DIR] [default: ./xnode-data]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// The cluster at a glance (members, pooled capacity and use, files, replication); with a CID, one file's
    /// replication: which members hold how many of its blocks.
    Status {
        /// A file's root CID.
        cid: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the cluster's members as a running node sees them.
    Members {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the members' network identities: libp2p peer id, gossip address and API address.
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Exit 0 if a running node answers its health check (used by the image's HEALTHCHECK).
    Health {
        #[command(flatten)]
        remote: Remote,
    },
    /// Add files or directories, printing `added <cid> <name>` lines like `ipfs add`.
    Add {
        #[command(flatten)]
        args: AddArgs,
        #[command(flatten)]
        local: Local,
    },
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
        #[command(flatten)]
        local: Local,
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
        #[command(flatten)]
        local: Local,
    },
    /// List the cluster's files; with a CID, a directory's entries (or a file's size).
    Ls {
        /// A directory's (or file's) CID.
        cid: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Remove a file from the cluster: every member drops its copies of blocks no other file needs.
    Rm {
        /// The root CID of a file listed by `xnode ls`.
        cid: String,
        #[command(flatten)]
        local: Local,
    },
    /// Set a member's storage capacity (kept across its restarts). Below what it holds, it hands the excess off.
    Resize {
        /// The member's name (`xnode members`).
        member: String,
        /// The new capacity: bytes or a size such as 10GiB or 500MB.
        size: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Stop a member at once without leaving, as a crash would: the others mark it dead and repair its copies. It
    /// stays down until started again.
    Kill {
        /// The member's name (`xnode members`).
        member: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Make a member leave the cluster politely and stop (shown as left, never dead).
    Shutdown {
        /// The member's name (`xnode members`).
        member: String,
        #[command(flatten)]
        admin: Admin,
    },
    /// Show how much a node holds and how much room is left (a running node's, or the data dir's with --offline).
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        local: Local,
    },
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
        #[command(flatten)]
        remote: Remote,
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

/// The Rust heap: jemalloc. On glibc's heap, a node that had indexed a million blocks spent most of its idle time
/// in `_int_malloc`: sled's churn left the heap fragmented, and every gossip datagram allocates zstd contexts (in
/// chitchat) from it. With Rust's allocations on jemalloc (zstd's stay on glibc's, now a small heap), the same
/// settled nodes idle at 1.4-1.7% of a core instead of 3.2-4.5% and settle 1.5x faster (docs/benchmarks.md,
/// "Session 9").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string for jemalloc to read at start.
#[cfg(target_os = "linux")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: points to a static, immutable, NUL-terminated string.
#[cfg(target_os = "linux")]
unsafe impl Sync for MallocConf {}

/// jemalloc's settings (`_RJEM_MALLOC_CONF` in the environment overrides them one by one): a background thread
/// returns freed pages to the OS after 100 ms. Streaming a fetched 1 GiB CAR, the member's peak RSS was 142-168 MiB
/// with 1 s, 117-150 MiB with 100 ms at the same speed, 110 MiB with 0 but at half the speed (docs/benchmarks.md).
#[cfg(target_os = "linux")]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0".as_ptr());

/// glibc's allocator, which still serves the C libraries (zstd) and every platform without jemalloc, tuned for a
/// process that moves 256 KiB blocks around all day:
/// - it gives each thread that allocates under contention an arena of its own (up to 8 per core) and rarely returns
///   their memory: with tokio's workers and blocking threads moving blocks around, a node settled at 1 GiB held
///   190-225 MB resident against about 120 MB with two arenas, at no measurable cost in speed (bench/repair.py);
/// - it raises its mmap threshold each time a large mmapped chunk is freed, and its trim threshold to twice that, so
///   after the first few blocks every block comes from the heap and freed blocks stay resident. Fixed thresholds
///   (blocks from the heap, the heap's free top returned past 4 MiB) took a node serving a 1 GiB CAR it fetched
///   from 159 to 128 MiB at its peak, at the same speed (bench/gateway.sh, docs/benchmarks.md).
///
/// `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` in the environment still win.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") && unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
            }
        }
    }
}

/// How often a running node hands freed heap memory back to the OS.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Every [`TRIM_EVERY`], gives the memory the allocator holds free back to the OS (`malloc_trim`). A burst of
/// work (an add of a hundred thousand blocks, a repair) leaves hundreds of MB freed but resident in glibc's arenas:
/// measured, a node that had just added 32k blocks went from 587 MB to 362 MB resident with one trim, and a trim
/// when nothing was freed costs microseconds (docs/benchmarks.md).
pub(crate) async fn return_freed_memory(stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TRIM_EVERY) => {}
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of the allocator's own arenas; any thread may call it.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // The environment is read once, before anything else, so a bad value stops the command with its name.
    let (env, warnings) = match Env::read().and_then(|(env, w)| Ok((env.log_filter()?, env, w))) {
        Ok((filter, env, warnings)) => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).init();
            (env, warnings)
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    match run(cli, env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a command works: the running node it talks to, its token, and the data dir.
struct Ctx {
    env: Env,
    data_dir: PathBuf,
    api_url: String,
    token: Option<String>,
    offline: bool,
}

impl Ctx {
    /// The flags a command was given, over the ones before the command (`xnode --api URL ls`), over XNODE_*.
    fn new(env: Env, top: &Cli, local: Option<&Local>) -> Result<Ctx> {
        let admin = local.map(|l| &l.admin);
        let data_dir = env.data_dir(admin.and_then(|a| a.data_dir.clone()).or_else(|| top.data_dir.clone()));
        let api_url = env.api_url(admin.and_then(|a| a.remote.api.clone()).or_else(|| top.api.clone()))?;
        let token = admin
            .and_then(|a| a.token.clone())
            .or_else(|| top.token.clone())
            .filter(|t| !t.is_empty())
            .or_else(|| env.admin_token())
            .or_else(|| std::fs::read_to_string(data_dir.join(node::TOKEN_FILE)).ok().map(|t| t.trim().to_string()));
        let offline = local.is_some_and(|l| l.offline) || top.offline;
        Ok(Ctx { env, data_dir, api_url, token, offline })
    }

    fn api(&self) -> client::Api {
        client::Api::new(self.api_url.clone(), self.token.clone())
    }

    /// The local store for --offline `stats` and `ls`: an existing data dir only (a look never creates one).
    fn open_existing(&self) -> Result<Repo> {
        self.store_config()?;
        if !self.data_dir.exists() {
            bail!(
                "no store in {} (--offline works on a node's data dir); pass --data-dir or XNODE_DATA_DIR, or drop \
                 --offline to ask a running node (--api URL)",
                self.data_dir.display()
            );
        }
        self.open()
    }

    /// The local store for --offline work, created if missing.
    fn open(&self) -> Result<Repo> {
        let config = self.store_config()?;
        Repo::open(&self.data_dir, config).with_context(|| format!("opening the store in {}", self.data_dir.display()))
    }

    fn store_config(&self) -> Result<StoreConfig> {
        Ok(StoreConfig { capacity: self.env.capacity()?, direct_io: self.env.direct_io()?, ..StoreConfig::default() })
    }
}

fn local_of(remote: &Remote) -> Local {
    Local { admin: Admin { remote: remote.clone(), ..Admin::default() }, offline: false }
}

fn admin_of(admin: &Admin) -> Local {
    Local { admin: admin.clone(), offline: false }
}

fn run(cli: Cli, env: Env) -> Result<()> {
    match &cli.command {
        Command::Run { data_dir } => {
            let data_dir = env.data_dir(data_dir.clone().or_else(|| cli.data_dir.clone()));
            let store_config =
                StoreConfig { capacity: env.capacity()?, direct_io: env.direct_io()?, ..StoreConfig::default() };
            node::run(env.node()?, data_dir, store_config)
        }
        Command::Status { cid, json, remote } => {
            let ctx = Ctx::new(env, &cli, Some(&local_of(remote)))?;
            match cid {
                None => output::status(&ctx.api(), *json),
                Some(cid) => {
                    parse_cid(cid)?;
                    output::holders(&ctx.api(), cid, *json)
                }
            }
        }
        Command::Members { json, remote } => {
            let ctx = Ctx::new(env, &cli, Some(&local_of(remote)))?;
            output::members(&ctx.api().members()?, *json)
        }
        Command::Peers { json, remote } => {
            let ctx = Ctx::new(env, &cli, Some(&local_of(remote)))?;
            output::peers(&ctx.api().members()?, *json)
        }
        Command::Health { remote } => {
            let ctx = Ctx::new(env, &cli, Some(&local_of(remote)))?;
            http_get(&format!("{}/healthz", ctx.api_url))?;
            Ok(())
        }
        Command::Add { args, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            if ctx.offline || args.only_hash {
                return add(args, || ctx.open());
            }
            let stdout = io::stdout();
            let mut print = |cid: &str, path: &str| {
                if !args.quiet && !args.quieter {
                    let _ = writeln!(stdout.lock(), "added {cid} {path}");
                }
            };
            let mut req = client::AddRequest {
                recursive: args.recursive,
                cid_version: args.cid_version,
                profile: args.profile.as_ref().map(|p| p.to_string()),
                hidden: args.hidden,
                chunker: args.chunker.clone(),
                on_added: &mut print,
            };
            let api = ctx.api();
            api.check_token()?;
            for path in &args.paths {
                let root = api.add(path, &mut req)?;
                if args.quieter && !args.quiet {
                    println!("{root}");
                }
            }
            Ok(())
        }
        Command::Cat { cid, offset, length, timeout, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            if ctx.offline {
                let repo = ctx.open()?;
                let cid = parse_cid(cid)?;
                repo.cat(&cid, *offset, length.unwrap_or(u64::MAX), &mut out)?;
            } else {
                parse_cid(cid)?;
                ctx.api().with_timeout(*timeout).cat(cid, *offset, *length, &mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Get { cid, output, timeout, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            let parsed = parse_cid(cid)?;
            let mut dest = output.clone().unwrap_or_else(|| PathBuf::from(cid));
            // Like cp: into an existing directory, under the CID's name.
            if output.is_some() && dest.is_dir() {
                dest = dest.join(cid);
            }
            if dest.exists() {
                bail!("{} already exists; choose another path with -o", dest.display());
            }
            if ctx.offline {
                ctx.open()?.get(&parsed, &dest)?;
            } else {
                ctx.api().with_timeout(*timeout).get(cid, &dest)?;
            }
            println!("Saved {} to {}", cid, dest.display());
            Ok(())
        }
        Command::Ls { cid: Some(cid), json, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            parse_cid(cid)?;
            if ctx.offline {
                bail!("`ls CID` asks a running node; drop --offline (`xnode ls --offline` lists the local files)");
            }
            output::listing(&ctx.api().ls_cid(cid)?, *json)
        }
        Command::Ls { cid: None, json, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            if ctx.offline {
                return output::pins(&ctx.open_existing()?.pins()?, *json);
            }
            output::files(&ctx.api().files()?, *json)
        }
        Command::Rm { cid, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            if ctx.offline {
                output::removed_here(cid, &ctx.open()?.remove(&parse_cid(cid)?)?);
                return Ok(());
            }
            parse_cid(cid)?;
            output::removed_from_cluster(cid, &ctx.api().rm(cid)?);
            Ok(())
        }
        Command::Resize { member, size, admin } => {
            let ctx = Ctx::new(env, &cli, Some(&admin_of(admin)))?;
            let v = ctx.api().member_action("PUT", member, "storage", Some(serde_json::json!({ "capacity": size })))?;
            println!("{}", v["message"].as_str().unwrap_or("resized"));
            Ok(())
        }
        Command::Kill { member, admin } => {
            let ctx = Ctx::new(env, &cli, Some(&admin_of(admin)))?;
            let v = ctx.api().member_action("POST", member, "kill", None)?;
            println!("{}", v["message"].as_str().unwrap_or("killed"));
            Ok(())
        }
        Command::Shutdown { member, admin } => {
            let ctx = Ctx::new(env, &cli, Some(&admin_of(admin)))?;
            let v = ctx.api().member_action("POST", member, "shutdown", None)?;
            println!("{}", v["message"].as_str().unwrap_or("leaving"));
            Ok(())
        }
        Command::Dag(cmd) => {
            let ctx = Ctx::new(env, &cli, Some(cmd.local()))?;
            let offline = ctx.offline;
            dag::run(cmd.clone(), offline, || ctx.open(), || ctx.api())
        }
        Command::Blocks { limit, json, remote } => {
            let ctx = Ctx::new(env, &cli, Some(&local_of(remote)))?;
            output::blocks(&ctx.api().blocks(*limit)?, *json)
        }
        Command::Stats { json, local } => {
            let ctx = Ctx::new(env, &cli, Some(local))?;
            let (files, blocks, held, disk, capacity) = if ctx.offline {
                let s = ctx.open_existing()?.stats()?;
                (s.pins, s.blocks, s.bytes_held, s.disk_bytes, s.capacity)
            } else {
                let v = ctx.api().storage()?;
                if *json {
                    return output::json(&v);
                }
                let n = |k: &str| v[k].as_u64().unwrap_or(0);
                (n("files"), n("blocks"), n("used"), n("disk_bytes"), n("capacity"))
            };
            output::stats(files, blocks, held, disk, capacity, *json)
        }
    }
}

fn add(args: &AddArgs, open: impl FnOnce() -> Result<Repo>) -> Result<()> {
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

fn http_get(url: &str) -> Result<ureq::Response> {
    ureq::get(url)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map_err(|e| anyhow::anyhow!("no answer from {url}: {e}; is `xnode run` up there? (set --api or XNODE_API)"))
}
