//! `xnode run`: the node's lifecycle. Builds each crate's config from the checked settings, shares the admin token
//! and the cluster secret through files when asked, starts the node and its API, and stops them on SIGTERM, on
//! `POST /api/v1/shutdown` or when membership gives up, within a bounded time.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;
use xnode_api::ApiConfig;
use xnode_gossip::GossipConfig;
use xnode_instance::{Node, NodeConfig};
use xnode_p2p::P2pConfig;
use xnode_storage::StoreConfig;

use crate::config::{self, NodeSettings};

/// Where `xnode run` writes its admin token (0600), so CLI commands on the same machine can use it.
pub(crate) const TOKEN_FILE: &str = "admin-token";

/// `xnode run`: everything the node needs comes from `XNODE_*`, checked before anything starts.
pub(crate) fn run(settings: NodeSettings, data_dir: PathBuf, store: StoreConfig) -> Result<()> {
    let NodeSettings { gossip_port, api_port, p2p_port, bind, .. } = settings;
    let name = match settings.name {
        Some(n) => n,
        None => {
            let host = hostname().context("XNODE_NAME is not set and the hostname cannot be read; set XNODE_NAME")?;
            config::check_name("XNODE_NAME", &host)
                .with_context(|| format!("XNODE_NAME is unset and the hostname {host:?} is not a valid name"))?;
            host
        }
    };
    let advertise = advertise_addr(settings.advertise.as_deref(), bind, gossip_port)?;
    let mut gossip = GossipConfig::new(name, SocketAddr::new(bind, gossip_port));
    gossip.advertise_addr = advertise;
    gossip.seeds = settings.seeds;
    gossip.keyring = keyring(&settings.cluster_secret)?;
    let reload = match (&settings.cluster_secret, &gossip.keyring) {
        (config::SecretSource::File { path, old }, Some(ring)) => Some((path.clone(), *old, ring.clone())),
        _ => None,
    };
    if let Some(group) = settings.group {
        gossip.group = group;
    }
    let mut p2p = P2pConfig::new(gossip.group.clone(), data_dir.join("identity.key"), p2p_port);
    if !bind.is_unspecified() {
        p2p.listen = vec![
            format!("/ip4/{bind}/tcp/{p2p_port}").parse()?,
            format!("/ip4/{bind}/udp/{p2p_port}/quic-v1").parse()?,
        ];
    }
    p2p.bootstrap = settings.bootstrap;
    p2p.mdns = settings.mdns;
    p2p.public_bitswap = settings.public_bitswap;
    let config = NodeConfig {
        replication: settings.replication,
        partitions: settings.partitions,
        scrub: settings.scrub,
        staged_ttl: settings.staged_ttl,
        watch_dir: settings.watch_dir,
        data_dir,
        store,
        gossip,
        api_url: format!("http://{}", SocketAddr::new(advertise.ip(), api_port)),
        p2p,
        advertise_ip: advertise.ip(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let (admin_token, generated) = match (settings.admin_token, settings.admin_token_file.as_deref()) {
        (Some(t), _) => (t, None),
        (None, Some(path)) => shared_file(path, "XNODE_ADMIN_TOKEN_FILE", ApiConfig::random_token())?,
        (None, None) => (ApiConfig::random_token(), Some(config.data_dir.join(TOKEN_FILE))),
    };
    let api_config = ApiConfig {
        admin_token,
        max_upload_bytes: settings.max_upload,
        fetch_timeout: settings.fetch_timeout,
        ..ApiConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some((path, old, ring)) = reload {
        runtime.spawn(reload_secret_on_hangup(path, old, ring));
    }
    let result = runtime.block_on(serve_node(config, api_config, generated, SocketAddr::new(bind, api_port)));
    // Blocking work still running (a read waiting for the network) must not hold the process past its exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Reads a secret members share through `path` (`var` names it in errors), or creates the file with `fresh` if no
/// member has yet. Creation is atomic (a hard link of a complete temporary file), so nodes starting together agree
/// on one value. Returns the value and, if this node made it, where it is (to log it once).
fn shared_file(path: &Path, var: &str, fresh: String) -> Result<(String, Option<PathBuf>)> {
    use std::os::unix::fs::OpenOptionsExt;
    let context = || format!("{var}={}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(context)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(fresh.as_bytes())?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((fresh, Some(path.to_path_buf()))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let existing = std::fs::read_to_string(path).with_context(context)?.trim().to_string();
            if existing.is_empty() {
                bail!("{var}: {} is empty; put the value in it or delete it", path.display());
            }
            Ok((existing, None))
        }
        Err(e) => Err(e).with_context(context),
    }
}

/// The gossip keyring from `XNODE_CLUSTER_SECRET[_FILE]` and `XNODE_CLUSTER_SECRET_OLD`; `None` without a secret.
fn keyring(source: &config::SecretSource) -> Result<Option<Arc<xnode_gossip::Keyring>>> {
    let (current, mut accepted) = match source {
        config::SecretSource::None => {
            tracing::warn!(
                "XNODE_CLUSTER_SECRET is unset: gossip is plaintext, and anyone who reaches the gossip port can read \
                 the member list and join; set XNODE_CLUSTER_SECRET (openssl rand -hex 32) or \
                 XNODE_CLUSTER_SECRET_FILE on every member"
            );
            return Ok(None);
        }
        config::SecretSource::Value { current, old } => (*current, old.iter().copied().collect::<Vec<_>>()),
        config::SecretSource::File { path, old } => {
            let fresh = format!("{}{}\n", ApiConfig::random_token(), ApiConfig::random_token());
            let (text, made) = shared_file(path, "XNODE_CLUSTER_SECRET_FILE", fresh)?;
            if let Some(made) = made {
                eprintln!("made a new cluster secret in {} (XNODE_CLUSTER_SECRET_FILE)", made.display());
            }
            let (current, mut accepted) = config::parse_secret_file(&text)
                .map_err(|e| anyhow::anyhow!("XNODE_CLUSTER_SECRET_FILE={}: {e}", path.display()))?;
            accepted.extend(old.iter().copied());
            (current, accepted)
        }
    };
    let ring = xnode_gossip::Keyring::new(&current);
    ring.set(&current, &std::mem::take(&mut accepted));
    Ok(Some(Arc::new(ring)))
}

/// On SIGHUP, reads `XNODE_CLUSTER_SECRET_FILE` again into the keyring: how keys rotate without a restart
/// (docs/security.md). A file that cannot be read or parsed keeps the keys in use, with a warning.
async fn reload_secret_on_hangup(path: PathBuf, old: Option<[u8; 32]>, ring: Arc<xnode_gossip::Keyring>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else { return };
    while hangup.recv().await.is_some() {
        let parsed =
            std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| config::parse_secret_file(&t));
        match parsed {
            Ok((current, mut accepted)) => {
                accepted.extend(old);
                ring.set(&current, &accepted);
                tracing::warn!(
                    "SIGHUP: cluster secret reloaded from {}: sending with its first key, {} more accepted",
                    path.display(),
                    accepted.len()
                );
            }
            Err(e) => tracing::warn!("SIGHUP: keeping the cluster secret in use; {}: {e}", path.display()),
        }
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
    tokio::spawn(crate::return_freed_memory(shutdown.clone()));

    let fatal = tokio::select! {
        () = terminate_signal() => None,
        () = shutdown.cancelled() => None,
        () = kill.cancelled() => {
            // As a crash would: no goodbye to the cluster (the others declare us dead). Give the API a moment to
            // answer the request that asked for it; the store is crash-safe, so exiting now loses nothing.
            // Status 0, so a supervisor that restarts on failure (compose's `restart: on-failure`, systemd's
            // `Restart=on-failure`) leaves the node down until someone starts it again; a real crash exits
            // non-zero and is restarted.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            tracing::warn!("killed over the API: exiting without leaving the cluster; start the node again to bring it back");
            eprintln!(
                "xnode killed over the API: exiting (status 0) without leaving the cluster; start it again to bring \
                 it back (e.g. `docker start CONTAINER`)"
            );
            std::process::exit(0);
        }
        reason = fatal_error(node.clone()) => Some(reason),
    };
    shutdown.cancel();
    // A stop must end: requests still waiting for the network (a read's fetch timeout can be minutes) get
    // STOP_GRACE to finish, then the node leaves and flushes anyway; a second signal exits at once.
    let graceful = async {
        if tokio::time::timeout(STOP_GRACE, server).await.is_err() {
            tracing::warn!("requests still open after {STOP_GRACE:?}; stopping without waiting for them");
        }
        node.stop().await
    };
    tokio::select! {
        stopped = tokio::time::timeout(STOP_DEADLINE, graceful) => match stopped {
            Ok(result) => result?,
            Err(_) => bail!("the node did not stop within {STOP_DEADLINE:?}; exiting without a clean stop"),
        },
        () = terminate_signal() => bail!("a second signal: exiting without a clean stop"),
    }
    drop(node);
    match fatal {
        None => {
            eprintln!("xnode stopped: left the cluster and flushed the store");
            Ok(())
        }
        Some(reason) => bail!(reason),
    }
}

/// How long a stop waits for open requests before leaving the cluster anyway.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// A stop (SIGTERM, `POST /api/v1/shutdown`) ends the process within this, clean or not; well under the 10 s
/// orchestrators usually give before SIGKILL.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

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
