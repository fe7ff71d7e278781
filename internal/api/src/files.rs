//! File routes: upload (raw body or tar, streamed into the importer), list, download (streamed, with Range and
//! ETag), directory listings and removal.

use std::io::{self, Read};
use std::path::Path;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cid::Cid;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use xnode_dag::{ImportOptions, NodeKind, Profile};
use xnode_instance::InstanceError;
use xnode_storage::Pin;

use crate::{ApiError, AppState};

/// How an upload is imported; the same knobs as `xnode add`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct UploadParams {
    /// The file's name (raw uploads).
    name: Option<String>,
    cid_version: Option<u8>,
    profile: Option<String>,
    #[serde(default)]
    hidden: bool,
}

/// `?timeout=SECS` on reads: how long to wait for blocks from other nodes.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ReadParams {
    timeout: Option<f64>,
}

/// Makes sure the DAG under `cid` is in the local store, fetching it from the network if not.
async fn ensure_local(app: &AppState, cid: Cid, params: &ReadParams) -> Result<(), ApiError> {
    let timeout = params.timeout.map_or(app.config.fetch_timeout, std::time::Duration::from_secs_f64);
    if let Some(stats) = app.node.fetch(cid, timeout).await? {
        tracing::info!(%cid, blocks = stats.blocks_fetched, bytes = stats.bytes_fetched, peers = stats.per_peer.len(), "fetched from the network");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub(crate) struct Uploaded {
    cid: String,
    name: String,
    size: u64,
    entries: Vec<UploadedEntry>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UploadedEntry {
    path: String,
    cid: String,
}

/// `GET /api/v1/files`: the cluster's catalog, plus files pinned here that the catalog does not list yet.
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Vec<Pin>>, ApiError> {
    let repo = app.node.repo().clone();
    let mut files: Vec<Pin> = app
        .node
        .catalog_files()
        .into_iter()
        .map(|f| Pin { root: f.root, name: f.name, size: f.size, added_at: f.added_at })
        .collect();
    for pin in blocking(move || repo.pins()).await? {
        if !files.iter().any(|f| f.root == pin.root) {
            files.push(pin);
        }
    }
    Ok(Json(files))
}

/// `POST /api/v1/files`: the body is the file (any content type) or, as `application/x-tar`, a directory tree.
pub(crate) async fn upload(
    State(app): State<AppState>,
    Query(params): Query<UploadParams>,
    request: Request,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let mut opts = match params.profile.as_deref() {
        None => ImportOptions::default(),
        Some(p) => ImportOptions::profile(p.parse::<Profile>().map_err(ApiError::bad_request)?),
    };
    if let Some(v) = params.cid_version {
        if v > 1 {
            return Err(ApiError::bad_request(format!("cid-version {v} does not exist; use 0 or 1")));
        }
        opts = opts.with_cid_version(v);
    }
    opts.include_hidden = params.hidden;
    let is_tar = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-tar"));
    let name = params.name.clone().filter(|n| !n.is_empty() && !n.contains('/'));
    if !is_tar && name.is_none() {
        return Err(ApiError::bad_request("give the file a name: POST /api/v1/files?name=FILE (no '/')"));
    }

    let limit = app.config.max_upload_bytes;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    // The body streams through a small channel into a blocking import: memory stays flat whatever the size.
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let mut stream = request.into_body().into_data_stream();
    let pump = tokio::spawn(async move {
        let mut seen: u64 = 0;
        while let Some(frame) = stream.next().await {
            let frame = frame.map_err(|e| io::Error::other(e.to_string()));
            if let Ok(bytes) = &frame {
                seen += bytes.len() as u64;
                if seen > limit {
                    let _ = tx.send(Err(io::Error::other(TooLarge(limit)))).await;
                    return;
                }
            }
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let repo = app.node.repo().clone();
    let result = blocking(move || {
        let reader = ChannelReader { rx, current: Bytes::new() };
        let mut entries = Vec::new();
        let added = if is_tar {
            repo.add_tar(reader, &opts, &mut |p: &Path, a| {
                entries.push(UploadedEntry { path: p.display().to_string(), cid: a.cid.to_string() })
            })?
        } else {
            repo.add_stream(name.as_deref().unwrap_or_default(), reader, &opts)?
        };
        let pin_name = entries.last().map(|e| e.path.clone()).or(name).unwrap_or_default();
        Ok(Uploaded { cid: added.cid.to_string(), name: pin_name, size: added.size, entries })
    })
    .await;
    pump.abort();
    match result {
        Ok(uploaded) => {
            if let Ok(root) = Cid::try_from(uploaded.cid.as_str()) {
                let node = app.node.clone();
                tokio::spawn(async move { node.provide(root).await });
            }
            Ok((StatusCode::CREATED, Json(uploaded)))
        }
        Err(e) if e.message.contains(TOO_LARGE) => Err(too_large(limit)),
        Err(e) => Err(e),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("upload larger than the limit of {limit} bytes; raise XNODE_MAX_UPLOAD"),
    }
}

const TOO_LARGE: &str = "upload too large";

#[derive(Debug)]
struct TooLarge(u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOO_LARGE} (limit {} bytes)", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// A blocking `Read` over body frames sent by the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

pub(crate) fn parse_cid(s: &str) -> Result<Cid, ApiError> {
    Cid::try_from(s)
        .map_err(|e| ApiError::bad_request(format!("{s:?} is not a valid CID ({e}); CIDs look like Qm... or bafy...")))
}

/// `GET /api/v1/files/{cid}`: a file's bytes, streamed; `Range: bytes=a-b` gives 206 with that slice.
pub(crate) async fn download(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cid = parse_cid(&cid)?;
    ensure_local(&app, cid, &params).await?;
    let repo = app.node.repo().clone();
    let (kind, name) = blocking({
        let repo = repo.clone();
        move || Ok((repo.stat(&cid)?, repo.store().pin(&cid).ok().flatten().map(|p| p.name)))
    })
    .await?;
    let size = match kind {
        NodeKind::File { size } => size,
        NodeKind::Directory => {
            return Err(ApiError::bad_request(format!("{cid} is a directory; list it with GET /api/v1/ls/{cid}")))
        }
        NodeKind::Symlink { target } => {
            return Err(ApiError::bad_request(format!("{cid} is a symlink to {target:?}, not a file")))
        }
    };
    let etag = format!("\"{cid}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, size) {
            Some(range) => Some(range),
            None => {
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{size}"))])
                    .into_response())
            }
        },
    };
    let (offset, length) = range.unwrap_or((0, size));

    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let reader = xnode_dag::FileReader::open(&repo, &cid, offset, length);
        let mut reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(io::Error::other(e)));
                return;
            }
        };
        loop {
            let next = reader.next_chunk().map_err(io::Error::other).transpose();
            match next {
                None => return,
                Some(item) => {
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() || failed {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name.as_deref())));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("a CID is a valid header value"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    if let Some(name) = name.filter(|n| n.chars().all(|c| c.is_ascii_graphic() || c == ' ') && !n.contains('"')) {
        if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{name}\"")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let end = offset + length.saturating_sub(1);
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {offset}-{end}/{size}")).expect("ASCII"),
        );
    }
    Ok(response)
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range) to (offset, length); `None` if unsatisfiable.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() { size.checked_sub(1)? } else { b.parse::<u64>().ok()?.min(size.checked_sub(1)?) };
        (start, end)
    };
    (start <= end && start < size).then(|| (start, end - start + 1))
}

fn content_type(name: Option<&str>) -> &'static str {
    let ext = name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "md" | "log") => "text/plain; charset=utf-8",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("pdf") => "application/pdf",
        Some("mp4") => "video/mp4",
        Some("tar") => "application/x-tar",
        Some("gz" | "tgz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Listing {
    name: String,
    cid: String,
    kind: &'static str,
    size: u64,
    target: Option<String>,
}

/// `GET /api/v1/ls/{cid}`: a directory's entries with their kinds.
pub(crate) async fn ls(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<Listing>>, ApiError> {
    let cid = parse_cid(&cid)?;
    ensure_local(&app, cid, &params).await?;
    let repo = app.node.repo().clone();
    let out = blocking(move || {
        let mut out = Vec::new();
        for e in xnode_dag::list_directory(&repo, &cid).map_err(InstanceError::from)? {
            let (kind, size, target) = match repo.stat(&e.cid)? {
                NodeKind::File { size } => ("file", size, None),
                NodeKind::Directory => ("directory", 0, None),
                NodeKind::Symlink { target } => ("symlink", 0, Some(target)),
            };
            out.push(Listing { name: e.name, cid: e.cid.to_string(), kind, size, target });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(out))
}

/// `GET /api/v1/stat/{cid}`: what a CID is.
pub(crate) async fn stat(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cid = parse_cid(&cid)?;
    ensure_local(&app, cid, &params).await?;
    let repo = app.node.repo().clone();
    let kind = blocking(move || repo.stat(&cid)).await?;
    Ok(Json(match kind {
        NodeKind::File { size } => serde_json::json!({ "cid": cid.to_string(), "kind": "file", "size": size }),
        NodeKind::Directory => serde_json::json!({ "cid": cid.to_string(), "kind": "directory" }),
        NodeKind::Symlink { target } => {
            serde_json::json!({ "cid": cid.to_string(), "kind": "symlink", "target": target })
        }
    }))
}

/// `DELETE /api/v1/files/{cid}`: unpin; blocks no other file needs are deleted.
pub(crate) async fn remove(State(app): State<AppState>, UrlPath(cid): UrlPath<String>) -> Result<Response, ApiError> {
    let cid = parse_cid(&cid)?;
    let stats = app.node.remove_file(cid).await?;
    Ok(Json(serde_json::json!({
        "removed": cid.to_string(),
        "blocks_deleted": stats.blocks_deleted,
        "bytes_freed": stats.bytes_freed,
    }))
    .into_response())
}

/// Runs store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, InstanceError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 5)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 50)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
