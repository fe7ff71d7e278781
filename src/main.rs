//! The `xnode` command: parse flags and `XNODE_*` variables once, then run the node, talk to a running one, or run
//! one operation on the local store.

mod client;
mod config;
mod dag;
mod node;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use xnode_dag::{ImportOptions, Profile};
use xnode_gossip::Member;
use xnode_instance::{AddOptions, Repo};
use xnode_storage::StoreConfig;

use config::Env;

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

fn main() -> ExitCode {
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

fn run(cli: Cli, env: Env) -> Result<()> {
    let data_dir = env.data_dir(cli.data_dir.clone());
    let store_config = StoreConfig { capacity: env.capacity()?, direct_io: env.direct_io()?, ..StoreConfig::default() };
    let open =
        || Repo::open(&data_dir, store_config).with_context(|| format!("opening the store in {}", data_dir.display()));

    let api_url = env.api_url(cli.api.clone())?;
    let token = cli
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| env.admin_token())
        .or_else(|| std::fs::read_to_string(data_dir.join(node::TOKEN_FILE)).ok().map(|t| t.trim().to_string()));
    let api = || client::Api::new(api_url.clone(), token.clone());
    let offline = cli.offline;

    match cli.command {
        Command::Run => node::run(env.node()?, data_dir, store_config),
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
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
