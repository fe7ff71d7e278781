//! `xnode dag export|import`: DAGs in and out as CAR files, through a running node or, with `--offline`, the local
//! data dir.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use xnode_instance::Repo;

use crate::client::Api;

#[derive(Subcommand, Debug, Clone)]
pub(crate) enum DagCommand {
    /// Write the DAG under CID as a CARv1 to standard output (root first, depth-first, each block once); a running
    /// node fetches the blocks it lacks from the cluster.
    Export {
        /// The DAG's root CID.
        cid: String,
        /// Seconds to wait for missing blocks from the network [default: the node's XNODE_FETCH_TIMEOUT]
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        #[command(flatten)]
        local: crate::Local,
    },
    /// Store the blocks of CAR files (v1 or v2), each checked against its CID, and pin every root whose DAG is then
    /// complete, like an add (the cluster replicates it). Prints `pinned <cid>` per root.
    Import {
        /// CAR files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The name the roots are pinned under [default: the root CID].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        local: crate::Local,
    },
}

impl DagCommand {
    /// The connection flags given to the subcommand.
    pub(crate) fn local(&self) -> &crate::Local {
        match self {
            DagCommand::Export { local, .. } | DagCommand::Import { local, .. } => local,
        }
    }
}

/// Runs a `dag` subcommand against the node (`api`) or the local store (`open`, with `--offline`).
pub(crate) fn run(
    cmd: DagCommand,
    offline: bool,
    open: impl FnOnce() -> Result<Repo>,
    api: impl FnOnce() -> Api,
) -> Result<()> {
    match cmd {
        DagCommand::Export { cid, timeout, .. } => {
            let parsed = crate::parse_cid(&cid)?;
            let mut out = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            if offline {
                open()?.export_car(&parsed, &mut out)?;
            } else {
                api().with_timeout(timeout).dag_export(&cid, &mut out)?;
            }
            out.flush()?;
            Ok(())
        }
        DagCommand::Import { files, name, .. } => {
            let mut unpinned = 0;
            let mut report = |answer: serde_json::Value| {
                for root in answer["roots"].as_array().into_iter().flatten() {
                    let cid = root["cid"].as_str().unwrap_or_default();
                    if root["pinned"].as_bool() == Some(true) {
                        println!("pinned {cid}");
                    } else {
                        unpinned += 1;
                        eprintln!("not pinned {cid}: {}", root["error"].as_str().unwrap_or("unknown error"));
                    }
                }
            };
            if offline {
                let repo = open()?;
                for file in &files {
                    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
                    let imported = repo
                        .import_car(io::BufReader::with_capacity(1 << 20, f), name.as_deref())
                        .with_context(|| format!("importing {}", file.display()))?;
                    report(serde_json::to_value(imported)?);
                }
            } else {
                let api = api();
                api.check_token()?;
                for file in &files {
                    report(
                        api.dag_import(file, name.as_deref())
                            .with_context(|| format!("importing {}", file.display()))?,
                    );
                }
            }
            if unpinned > 0 {
                bail!("{unpinned} root(s) not pinned: their DAGs are not complete in the CAR(s)");
            }
            Ok(())
        }
    }
}
