//! The IPFS HTTP gateway on the API port: `GET`/`HEAD /ipfs/{cid}[/{path}]` as the trustless gateway specifies it
//! (a raw block with `?format=raw` or `Accept: application/vnd.ipld.raw`, a CARv1 with `?format=car` or
//! `Accept: application/vnd.ipld.car`, `dag-scope`, `entity-bytes`, `car-order=dfs`, `car-dups`), plus the
//! deserialized answer of a path gateway: a file's bytes (with `Range`) or a directory (its `index.html`, else a
//! generated listing).
//!
//! Any member answers for any CID: blocks it lacks come from the cluster, verified on arrival. Which blocks and in
//! which order is `xnode_dag`'s (`resolve_path`, `select_blocks`, the `car` module); this module owns only the
//! HTTP edge: negotiation, status codes, headers and streaming through a bounded channel.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cid::Cid;
use serde::Deserialize;
use tokio::sync::mpsc;
use xnode_dag::{BlockSource, DagScope, NodeKind, ReadError, Resolved, Selection};
use xnode_instance::InstanceError;
use xnode_p2p::{Client, P2pError};
use xnode_storage::Store;

use crate::files::{content_type, parse_cid, stream_file, ByteRange};
use crate::{ApiError, AppState, ErrorBody};

/// `Cache-Control` of everything under `/ipfs/`: content addressed, so it never changes.
const IMMUTABLE: &str = "public, max-age=29030400, immutable";

const RAW_TYPE: &str = "application/vnd.ipld.raw";
pub(crate) const CAR_TYPE: &str = "application/vnd.ipld.car";

/// Frames of a CAR body in flight between the walk and the socket: 32 frames of at most one block each.
const CAR_FRAMES: usize = 32;

/// Query parameters of the gateway (kebab-case, as the specification spells them).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "kebab-case")]
#[into_params(parameter_in = Query, rename_all = "kebab-case")]
pub(crate) struct GatewayParams {
    /// `raw` (one block) or `car`; takes precedence over `Accept`.
    format: Option<String>,
    /// CAR only: `block`, `entity` or `all` (default).
    dag_scope: Option<String>,
    /// CAR only: `from:to`, the blocks of that byte range of a file (negative from its end, `to` may be `*`).
    entity_bytes: Option<String>,
    /// CAR only: `1` (the only version served).
    car_version: Option<String>,
    /// CAR only: `dfs` (always served) or `unk`.
    car_order: Option<String>,
    /// CAR only: `y` (a block each time the walk meets it) or `n` (once; the default).
    car_dups: Option<String>,
    /// Seconds to wait for blocks from other members (default `XNODE_FETCH_TIMEOUT`).
    timeout: Option<f64>,
}

/// What the client asked for.
#[derive(Debug, PartialEq, Eq)]
enum Format {
    Raw,
    Car { dups: bool },
    Deserialized,
}

/// Picks the response format: `format` first, then the first `Accept` type the gateway serves.
fn negotiate(params: &GatewayParams, headers: &HeaderMap) -> Result<(Format, bool), ApiError> {
    // The CAR parameters of `Accept` (`version`, `order`, `dups`), overridden by the query's.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut accepted = None;
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let args: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
            .collect();
        if kind == RAW_TYPE || kind == CAR_TYPE {
            accepted = Some((kind, args));
            break;
        }
    }
    let from_format = params.format.as_deref().map(|f| match f {
        "raw" => Ok(RAW_TYPE),
        "car" => Ok(CAR_TYPE),
        other => Err(ApiError::bad_request(format!(
            "format={other} is not served here; use format=raw (one block), format=car, or none (the content)"
        ))),
    });
    let kind = match from_format {
        Some(f) => Some(f?),
        None => accepted.as_ref().map(|(k, _)| if k == RAW_TYPE { RAW_TYPE } else { CAR_TYPE }),
    };
    let negotiated = params.format.is_none() && kind.is_some();
    let arg =
        |name: &str| accepted.as_ref().and_then(|(_, args)| args.iter().find(|(k, _)| k == name)).map(|a| a.1.clone());
    match kind {
        Some(RAW_TYPE) => Ok((Format::Raw, negotiated)),
        Some(_) => {
            let version = params.car_version.clone().or_else(|| arg("version"));
            if version.as_deref().is_some_and(|v| v != "1") {
                return Err(ApiError::bad_request("only CAR version 1 is served; ask for car-version=1"));
            }
            let order = params.car_order.clone().or_else(|| arg("order"));
            if order.as_deref().is_some_and(|o| o != "dfs" && o != "unk") {
                return Err(ApiError::bad_request(
                    "car-order must be dfs (or unk); blocks are always sent depth-first",
                ));
            }
            let dups = match params.car_dups.clone().or_else(|| arg("dups")).as_deref() {
                None | Some("n") => false,
                Some("y") => true,
                Some(other) => return Err(ApiError::bad_request(format!("car-dups={other} must be y or n"))),
            };
            Ok((Format::Car { dups }, negotiated))
        }
        None => Ok((Format::Deserialized, false)),
    }
}

/// A content path split into its CID, its decoded segments and whether it ends with `/`.
struct ContentPath {
    cid: Cid,
    segments: Vec<String>,
    trailing_slash: bool,
}

fn parse_path(uri: &Uri) -> Result<ContentPath, ApiError> {
    let rest = uri.path().strip_prefix("/ipfs/").unwrap_or_default();
    let mut parts = rest.split('/');
    let cid = parse_cid(parts.next().unwrap_or_default())?;
    let mut segments = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map_err(|_| ApiError::bad_request("the path is not UTF-8 once percent-decoded"))?;
        match &*decoded {
            "." => {}
            ".." => return Err(ApiError::bad_request("`..` in a content path is not supported")),
            name => segments.push(name.to_string()),
        }
    }
    Ok(ContentPath { cid, segments, trailing_slash: rest.contains('/') && rest.ends_with('/') })
}

/// `GET`/`HEAD /ipfs/{cid}[/{path}]`: a raw block, a CAR, or the content itself.
#[utoipa::path(get, path = "/ipfs/{cid}", tag = "gateway",
    params(("cid" = String, Path, description = "a CID, optionally followed by /a/path inside it (CAR and content \
        only)"), GatewayParams,
        ("Accept" = Option<String>, Header, description = "application/vnd.ipld.raw, application/vnd.ipld.car \
            (with version, order, dups), or anything else for the content"),
        ("Range" = Option<String>, Header, description = "content of a file only: bytes=a-b")),
    responses(
        (status = 200, description = "the block (application/vnd.ipld.raw), the CAR (application/vnd.ipld.car; \
            version=1; order=dfs; dups=n|y), a file's bytes, or a directory's index (text/html)", body = Vec<u8>),
        (status = 206, description = "a range of a file", body = Vec<u8>),
        (status = 301, description = "a directory asked for without its trailing slash"),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "malformed CID, unknown format or parameter, a path with format=raw", body = ErrorBody),
        (status = 404, description = "no member sent the root block (or an entry of the path) before the timeout", body = ErrorBody),
        (status = 416, description = "range outside the file")))]
pub(crate) async fn serve(
    State(app): State<AppState>,
    method: Method,
    uri: Uri,
    Query(params): Query<GatewayParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = parse_path(&uri)?;
    let (format, negotiated) = negotiate(&params, &headers)?;
    let timeout = params.timeout.map_or(app.config.fetch_timeout, Duration::from_secs_f64);
    let head = method == Method::HEAD;
    let source = OneByOne {
        store: app.node.repo().store().clone(),
        client: app.node.net().clone(),
        runtime: tokio::runtime::Handle::current(),
        timeout,
    };
    let mut response = match format {
        Format::Raw => raw(&path, source, &headers).await?,
        Format::Car { dups } => car(&app, &path, &params, dups, source, head, timeout).await?,
        Format::Deserialized => deserialized(&app, &path, &uri, source, &headers, head, timeout).await?,
    };
    if response.status().is_success() && !response.headers().contains_key(header::CACHE_CONTROL) {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    }
    if negotiated && response.status().is_success() {
        // Caches keep the block or CAR apart from the content at the same URL.
        let format = if matches!(format, Format::Raw) { "raw" } else { "car" };
        let sep = if uri.query().is_some() { "&" } else { "?" };
        let location = format!("{}{sep}format={format}", uri.path_and_query().map_or(uri.path(), |p| p.as_str()));
        if let Ok(v) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::CONTENT_LOCATION, v);
        }
    }
    Ok(response)
}

/// Blocks from the store, else one at a time from the cluster (verified, not stored): for raw blocks, paths and
/// partial CARs, where the prefetch of a whole DAG that downloads use would fetch what nobody asked for.
struct OneByOne {
    store: Store,
    client: Client,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl BlockSource for OneByOne {
    fn get_block(&self, cid: &Cid) -> Result<Bytes, ReadError> {
        if cid.hash().code() == xnode_dag::IDENTITY {
            return Ok(Bytes::copy_from_slice(cid.hash().digest()));
        }
        match self.store.get(cid) {
            Ok(Some(data)) => return Ok(data),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Source(Box::new(e))),
        }
        self.runtime.block_on(self.client.fetch_block(*cid, self.timeout)).map_err(|e| ReadError::Source(Box::new(e)))
    }
}

/// Runs `f` over the source on a blocking thread (sources block while they fetch).
async fn on_source<T: Send + 'static>(
    source: OneByOne,
    f: impl FnOnce(&OneByOne) -> Result<T, ReadError> + Send + 'static,
) -> Result<(OneByOne, T), ApiError> {
    tokio::task::spawn_blocking(move || {
        let out = f(&source);
        out.map(|t| (source, t))
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
    .map_err(read_error)
}

/// A read failure as the gateway answers it: a block nobody sent, or a path entry that does not exist, is 404.
fn read_error(e: ReadError) -> ApiError {
    let missing = match &e {
        ReadError::NotFound(cid) => Some(*cid),
        ReadError::Source(inner) => match inner.downcast_ref::<P2pError>() {
            Some(P2pError::NotFound { cid, .. }) => Some(*cid),
            _ => None,
        },
        _ => None,
    };
    if let ReadError::Source(inner) = &e {
        if inner.downcast_ref::<xnode_instance::RepairError>().is_some() {
            return ApiError::new(StatusCode::BAD_GATEWAY, e);
        }
    }
    match (missing, e) {
        (Some(cid), _) => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("block {cid} not found: no member of the cluster sent it before the timeout (?timeout=SECS)"),
        ),
        (None, e @ ReadError::NoSuchEntry { .. }) => ApiError::new(StatusCode::NOT_FOUND, e),
        (None, e @ ReadError::WrongKind { .. }) => ApiError::bad_request(e),
        (None, e) => ApiError::internal(e),
    }
}

pub(crate) fn instance_error(e: InstanceError) -> ApiError {
    match e {
        InstanceError::Read(e) => read_error(e),
        InstanceError::P2p(e @ P2pError::NotFound { .. }) => read_error(ReadError::Source(Box::new(e))),
        other => other.into(),
    }
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The headers every successful gateway answer carries.
fn common_headers(h: &mut HeaderMap, ipfs_path: &str, roots: &[Cid]) {
    h.insert("x-ipfs-path", header_value(ipfs_path));
    let roots: Vec<String> = roots.iter().map(Cid::to_string).collect();
    h.insert("x-ipfs-roots", header_value(&roots.join(",")));
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(etag) || etag.strip_prefix("W/") == Some(t)
        })
    })
}

/// `format=raw`: the block itself.
async fn raw(path: &ContentPath, source: OneByOne, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !path.segments.is_empty() {
        return Err(ApiError::bad_request(
            "a raw block is asked for by CID alone (/ipfs/{cid}?format=raw); resolve paths with format=car",
        ));
    }
    let cid = path.cid;
    let etag = format!("\"{cid}.raw\"");
    if if_none_match(headers, &etag) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let (_, data) = on_source(source, move |s| s.get_block(&cid)).await?;
    let mut response = Response::new(Body::from(data.clone()));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(RAW_TYPE));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::CONTENT_DISPOSITION, header_value(&format!("attachment; filename=\"{cid}.bin\"")));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    common_headers(h, &format!("/ipfs/{cid}"), &[cid]);
    Ok(response)
}

/// `format=car`: the path's blocks, then the scope's, depth-first, streamed as they are read.
async fn car(
    app: &AppState,
    path: &ContentPath,
    params: &GatewayParams,
    dups: bool,
    source: OneByOne,
    head: bool,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let scope: DagScope =
        params.dag_scope.as_deref().map_or(Ok(DagScope::All), str::parse).map_err(ApiError::bad_request)?;
    let bytes = match params.entity_bytes.as_deref() {
        None => None,
        Some(b) => Some(b.parse::<xnode_dag::EntityBytes>().map_err(ApiError::bad_request)?),
    };
    let selection = Selection { scope, bytes, dups };
    let root = path.cid;
    let segments = path.segments.clone();
    // The path is resolved (and the root fetched) before the status is sent: a missing root is a 404, not a 200
    // with an empty body.
    let (source, resolved) = on_source(source, move |s| {
        let names: Vec<&str> = segments.iter().map(String::as_str).collect();
        let resolved = xnode_dag::resolve_path(s, &root, &names)?;
        s.get_block(&resolved.cid)?;
        Ok(resolved)
    })
    .await?;
    let ipfs_path = ipfs_path(path);
    let tag = fnv1a(&format!("{ipfs_path}|{scope:?}|{:?}|{dups}", params.entity_bytes));
    let etag = format!("W/\"{root}.car.{tag:016x}\"");
    let mut response = Response::new(Body::empty());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header_value(&format!("{CAR_TYPE}; version=1; order=dfs; dups={}", if dups { "y" } else { "n" })),
    );
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::CONTENT_DISPOSITION, header_value(&format!("attachment; filename=\"{root}.car\"")));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    common_headers(h, &ipfs_path, &resolved.roots);
    if head {
        return Ok(response);
    }
    // The whole DAG under the path is fetched ahead of the walk (as downloads are) when the CAR carries all of it;
    // a partial CAR asks for its blocks one by one instead.
    let whole = bytes.is_none() && scope != DagScope::Block;
    let unixfs = matches!(resolved.cid.codec(), xnode_dag::DAG_PB | xnode_dag::RAW);
    let walk_source: Box<dyn BlockSource + Send> = if whole && unixfs {
        match app.node.open_streaming(resolved.cid, timeout).await {
            Ok((fetching, _)) => Box::new(fetching),
            Err(e) => return Err(instance_error(e)),
        }
    } else {
        Box::new(source)
    };
    *response.body_mut() = car_body(walk_source, root, resolved, selection);
    Ok(response)
}

/// Streams a CARv1 rooted at `root`: header, then each selected block as a section (its prefix and its bytes as
/// two frames, so blocks are not copied). A block that cannot be read ends the body early: the status is sent,
/// and a client verifying the CAR sees it incomplete, as the specification expects.
pub(crate) fn car_body(
    source: Box<dyn BlockSource + Send>,
    root: Cid,
    resolved: Resolved,
    selection: Selection,
) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CAR_FRAMES);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(Ok(Bytes::from(xnode_dag::car::header_bytes(&[root])))).is_err() {
            return;
        }
        let walked = xnode_dag::select_blocks(&*source, &resolved, &selection, &mut |cid, data| {
            let prefix = Bytes::from(xnode_dag::car::section_prefix(cid, data.len()));
            tx.blocking_send(Ok(prefix)).is_ok() && tx.blocking_send(Ok(data.clone())).is_ok()
        });
        if let Err(e) = walked {
            tracing::warn!(%root, "CAR ended early: {e}");
            let _ = tx.blocking_send(Err(io::Error::other(e)));
        }
    });
    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `/ipfs/{cid}/a/b` as the client named it (decoded).
fn ipfs_path(path: &ContentPath) -> String {
    let mut out = format!("/ipfs/{}", path.cid);
    for s in &path.segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

/// FNV-1a, 64 bits: a short, stable tag of the CAR parameters for its ETag.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// No format: a file's bytes, or a directory's `index.html` or listing.
async fn deserialized(
    app: &AppState,
    path: &ContentPath,
    uri: &Uri,
    source: OneByOne,
    headers: &HeaderMap,
    head: bool,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let root = path.cid;
    let segments = path.segments.clone();
    let (source, (resolved, kind)) = on_source(source, move |s| {
        let names: Vec<&str> = segments.iter().map(String::as_str).collect();
        let resolved = xnode_dag::resolve_path(s, &root, &names)?;
        let kind = xnode_dag::stat(s, &resolved.cid)?;
        Ok((resolved, kind))
    })
    .await?;
    let ipfs_path = ipfs_path(path);
    match kind {
        NodeKind::File { size } => {
            let name = path.segments.last().cloned();
            file(app, resolved, size, name.as_deref(), &ipfs_path, headers, head, timeout).await
        }
        NodeKind::Directory if !path.trailing_slash => {
            // Relative links in a directory's pages need the slash: the specification makes this redirect a MUST.
            let location = format!("{}/{}", uri.path(), uri.query().map(|q| format!("?{q}")).unwrap_or_default());
            Ok((StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, header_value(&location))]).into_response())
        }
        NodeKind::Directory => {
            let dir = resolved.cid;
            let (_, (index, entries)) = on_source(source, move |s| {
                match xnode_dag::resolve_path(s, &dir, &["index.html"]) {
                    Ok(index) => {
                        if let NodeKind::File { size } = xnode_dag::stat(s, &index.cid)? {
                            return Ok((Some((index.cid, size)), Vec::new()));
                        }
                    }
                    Err(ReadError::NoSuchEntry { .. }) => {}
                    Err(e) => return Err(e),
                }
                Ok((None, xnode_dag::list_directory(s, &dir)?))
            })
            .await?;
            if let Some((index, size)) = index {
                let mut roots = resolved.roots.clone();
                roots.push(index);
                let index_resolved = Resolved { cid: index, roots, path_blocks: Vec::new() };
                let mut response =
                    file(app, index_resolved, size, Some("index.html"), &ipfs_path, headers, head, timeout).await?;
                // The roots name the directory's path, as the client asked for it.
                common_headers(response.headers_mut(), &ipfs_path, &resolved.roots);
                return Ok(response);
            }
            let etag = format!("\"DirIndex-{}_CID-{dir}\"", env!("CARGO_PKG_VERSION"));
            if if_none_match(headers, &etag) {
                return Ok(StatusCode::NOT_MODIFIED.into_response());
            }
            let html = listing(&ipfs_path, &entries);
            let mut response = Response::new(Body::from(html));
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            h.insert(header::ETAG, header_value(&etag));
            common_headers(h, &ipfs_path, &resolved.roots);
            Ok(response)
        }
        NodeKind::Symlink { target } => {
            let mut response = Response::new(Body::from(target));
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            h.insert(header::ETAG, header_value(&format!("\"{}\"", resolved.cid)));
            common_headers(h, &ipfs_path, &resolved.roots);
            Ok(response)
        }
    }
}

/// A file's bytes (or a range), streamed while the blocks this node lacks are fetched.
#[allow(clippy::too_many_arguments)]
async fn file(
    app: &AppState,
    resolved: Resolved,
    size: u64,
    name: Option<&str>,
    ipfs_path: &str,
    headers: &HeaderMap,
    head: bool,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let cid = resolved.cid;
    let etag = format!("\"{cid}\"");
    if if_none_match(headers, &etag) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let range = match ByteRange::requested(headers, size) {
        Ok(range) => range,
        Err(unsatisfiable) => return Ok(unsatisfiable),
    };
    let body = if head {
        Body::empty()
    } else {
        let (source, _) = app.node.open_streaming(cid, timeout).await.map_err(instance_error)?;
        stream_file(source, cid, range.offset, range.length, ()).await.map_err(read_error)?
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    h.insert(header::ETAG, header_value(&etag));
    common_headers(h, ipfs_path, &resolved.roots);
    range.describe(&mut response);
    Ok(response)
}

/// A plain HTML index of a directory (no scripts, names escaped).
fn listing(ipfs_path: &str, entries: &[xnode_dag::DirEntry]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
    };
    let mut rows = String::new();
    for e in entries {
        let href: String =
            percent_encoding::utf8_percent_encode(&e.name, percent_encoding::NON_ALPHANUMERIC).to_string();
        rows.push_str(&format!(
            "<tr><td><a href=\"./{href}\">{}</a></td><td>{}</td><td><code>{}</code></td></tr>\n",
            escape(&e.name),
            e.tsize,
            e.cid
        ));
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{p}</title></head><body>\n<h1>{p}</h1>\n\
         <table><tr><th>name</th><th>bytes</th><th>cid</th></tr>\n{rows}</table>\n</body></html>\n",
        p = escape(ipfs_path)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> GatewayParams {
        serde_urlencoded_like(q)
    }

    /// The query parser axum uses is serde_urlencoded; these tests only need the simple `k=v&k=v` form.
    fn serde_urlencoded_like(q: &str) -> GatewayParams {
        let mut p = GatewayParams::default();
        for kv in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            let v = Some(v.to_string());
            match k {
                "format" => p.format = v,
                "car-version" => p.car_version = v,
                "car-order" => p.car_order = v,
                "car-dups" => p.car_dups = v,
                _ => panic!("{k}"),
            }
        }
        p
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn format_wins_over_accept_and_car_parameters_are_read() {
        let none = HeaderMap::new();
        assert_eq!(negotiate(&params(""), &none).unwrap(), (Format::Deserialized, false));
        assert_eq!(negotiate(&params("format=raw"), &accept(CAR_TYPE)).unwrap(), (Format::Raw, false));
        assert_eq!(
            negotiate(&params(""), &accept("text/html, application/vnd.ipld.raw")).unwrap(),
            (Format::Raw, true)
        );
        assert_eq!(
            negotiate(&params(""), &accept("application/vnd.ipld.car; version=1; order=dfs; dups=y")).unwrap(),
            (Format::Car { dups: true }, true)
        );
        assert_eq!(
            negotiate(&params("car-dups=n"), &accept("application/vnd.ipld.car;dups=y")).unwrap(),
            (Format::Car { dups: false }, true)
        );
        assert_eq!(negotiate(&params("format=car"), &none).unwrap(), (Format::Car { dups: false }, false));
        for bad in ["format=tar", "format=car&car-version=2", "format=car&car-order=bfs", "format=car&car-dups=maybe"] {
            let err = negotiate(&params(bad), &none).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}: {}", err.message());
        }
    }

    #[test]
    fn paths_are_split_decoded_and_normalised() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        let p = parse_path(&format!("/ipfs/{cid}/a%20b/./c/").parse().unwrap()).unwrap();
        assert_eq!(p.cid.to_string(), cid);
        assert_eq!(p.segments, ["a b", "c"]);
        assert!(p.trailing_slash);
        let p = parse_path(&format!("/ipfs/{cid}").parse().unwrap()).unwrap();
        assert!(p.segments.is_empty() && !p.trailing_slash);
        assert!(parse_path(&format!("/ipfs/{cid}/").parse().unwrap()).unwrap().trailing_slash);
        assert!(parse_path(&format!("/ipfs/{cid}/../x").parse().unwrap()).is_err());
        assert!(parse_path(&"/ipfs/nope".parse().unwrap()).is_err());
    }

    #[test]
    fn etags_match_strong_and_weak() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"b\""));
        assert!(if_none_match(&h, "\"a\""));
        assert!(if_none_match(&h, "\"b\""));
        assert!(!if_none_match(&h, "\"c\""));
    }

    #[test]
    fn the_listing_escapes_names() {
        let cid = Cid::try_from("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku").unwrap();
        let html = listing("/ipfs/x", &[xnode_dag::DirEntry { name: "<b>&\"".into(), cid, tsize: 3 }]);
        assert!(html.contains("&lt;b&gt;&amp;&quot;") && !html.contains("<b>&"), "{html}");
        assert!(html.contains("href=\"./%3Cb%3E%26%22\""), "{html}");
    }
}
