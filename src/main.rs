//! The `xnode` command: parse flags and `XNODE_*` variables once, then run one operation on the local store.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use xnode_dag::{ImportOptions, Profile};
use xnode_instance::{AddOptions, InstanceError, Repo};
use xnode_storage::StoreConfig;

/// Xnode pools the disks of many machines into one IPFS-compatible content-addressed store.
#[derive(Parser, Debug)]
#[command(name = "xnode", version, about, propagate_version = true)]
struct Cli {
    /// Where the node keeps its blocks and index [env: XNODE_DATA_DIR] [default: ./xnode-data]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add files or directories, printing `added <cid> <name>` lines like `ipfs add`.
    Add(AddArgs),
    /// Print a file's bytes to standard output.
    Cat {
        /// The file's root CID.
        cid: String,
        /// Start at this byte.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Print at most this many bytes.
        #[arg(long)]
        length: Option<u64>,
    },
    /// Write a file or directory to disk.
    Get {
        /// The root CID.
        cid: String,
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
    /// Show what the store holds and how much room is left.
    Stats,
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
}

/// The `XNODE_*` environment, read once here and nowhere else.
#[derive(Deserialize, Debug, Default)]
struct EnvConfig {
    /// XNODE_DATA_DIR: the data directory (default `./xnode-data`).
    data_dir: Option<PathBuf>,
    /// XNODE_STORAGE_MAX: the store's hard capacity, e.g. `10GiB` (default: unlimited).
    storage_max: Option<String>,
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
    let data_dir = cli.data_dir.or(env.data_dir).unwrap_or_else(|| PathBuf::from("./xnode-data"));
    let capacity = match env.storage_max.as_deref().map(str::trim) {
        None | Some("") => u64::MAX,
        Some(s) => parse_size(s).with_context(|| {
            format!("XNODE_STORAGE_MAX={s:?} is not a size; use e.g. 10GiB, 500MB or a number of bytes")
        })?,
    };
    let store_config = StoreConfig { capacity, ..StoreConfig::default() };
    let open =
        || Repo::open(&data_dir, store_config).with_context(|| format!("opening the store in {}", data_dir.display()));

    match cli.command {
        Command::Add(args) => add(args, open),
        Command::Cat { cid, offset, length } => {
            let repo = open()?;
            let cid = parse_cid(&cid)?;
            let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            repo.cat(&cid, offset, length.unwrap_or(u64::MAX), &mut out)?;
            out.flush()?;
            Ok(())
        }
        Command::Get { cid, output } => {
            let repo = open()?;
            let parsed = parse_cid(&cid)?;
            let dest = output.unwrap_or_else(|| PathBuf::from(&cid));
            if dest.exists() {
                bail!("{} already exists; choose another path with -o", dest.display());
            }
            repo.get(&parsed, &dest)?;
            println!("Saved {} to {}", cid, dest.display());
            Ok(())
        }
        Command::Ls { json } => {
            let pins = open()?.pins()?;
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
            let stats = open()?.remove(&parse_cid(&cid)?)?;
            println!(
                "removed {cid}: {} blocks deleted, {} freed",
                stats.blocks_deleted,
                ByteSize(stats.bytes_freed).display().iec()
            );
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
        }
        .map_err(describe)?;
        if args.quieter && !args.quiet {
            println!("{}", added.cid);
        }
    }
    Ok(())
}

fn describe(e: InstanceError) -> anyhow::Error {
    anyhow::Error::new(e)
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}
