//! File routes: upload (raw body, tar or multipart, streamed into the importer), list, download (streamed, with
//! Range and ETag), directory listings and removal.

use std::io::{self, Read};
use std::path::Path;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use xnode_dag::{ImportOptions, NodeKind, Profile};
use xnode_instance::InstanceError;

use crate::extract::Query;
use crate::{ApiError, AppState, ErrorBody};

/// How an upload is imported; the same knobs as `xnode add`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "kebab-case")]
#[into_params(parameter_in = Query, rename_all = "kebab-case")]
pub(crate) struct UploadParams {
    /// The file's name (raw uploads; multipart uploads take the part's file name).
    name: Option<String>,
    /// 0 (the `ipfs add` default) or 1.
    cid_version: Option<u8>,
    /// `unixfs-v0-2015` (default) or `unixfs-v1-2025`.
    profile: Option<String>,
    /// Include dot-files of a tar upload.
    #[serde(default)]
    hidden: bool,
    /// `size-N`: fixed chunks of N bytes (default `size-262144`), as `ipfs add --chunker`.
    chunker: Option<String>,
}

/// `?timeout=SECS` on reads: how long to wait for blocks from other nodes.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadParams {
    /// Seconds to wait for missing blocks from the cluster (default `XNODE_FETCH_TIMEOUT`).
    timeout: Option<f64>,
}

/// The longest `?timeout=` a read may ask for, in seconds (a day: longer only holds a request open).
pub(crate) const MAX_READ_TIMEOUT_SECS: f64 = 86_400.0;

/// How long a read waits for blocks from other nodes: `?timeout=SECS` (0 to a day), else `XNODE_FETCH_TIMEOUT`.
pub(crate) fn read_timeout(app: &AppState, params: &ReadParams) -> Result<std::time::Duration, ApiError> {
    match params.timeout {
        None => Ok(app.config.fetch_timeout),
        Some(t) if t.is_finite() && (0.0..=MAX_READ_TIMEOUT_SECS).contains(&t) => {
            Ok(std::time::Duration::from_secs_f64(t))
        }
        Some(t) => Err(ApiError::bad_request(format!(
            "timeout={t} is not a number of seconds from 0 to {MAX_READ_TIMEOUT_SECS}; use e.g. ?timeout=30"
        ))),
    }
}

/// How many reads may be open, and how many may stream (hold a blocking thread), at once: past either bound a read
/// is refused with 503 and `Retry-After` instead of queueing, so that no number of requests can take every thread
/// (see [`crate::ApiConfig::max_reads`] and [`crate::ApiConfig::max_streams`]).
#[derive(Debug)]
pub(crate) struct ReadBounds {
    open: std::sync::Arc<tokio::sync::Semaphore>,
    streams: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Held by a read while it is open (or streaming); dropping it makes room.
pub(crate) type ReadPermit = tokio::sync::OwnedSemaphorePermit;

impl ReadBounds {
    pub(crate) fn new(max_reads: usize, max_streams: usize) -> Self {
        ReadBounds {
            open: std::sync::Arc::new(tokio::sync::Semaphore::new(max_reads.max(1))),
            streams: std::sync::Arc::new(tokio::sync::Semaphore::new(max_streams.max(1))),
        }
    }

    /// A place for one more open read, or 503.
    pub(crate) fn open(&self) -> Result<ReadPermit, ApiError> {
        self.open.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy("this node has as many reads open as it allows; retry in a few seconds", RETRY_AFTER_SECS)
        })
    }

    /// A place for one more read that streams on a blocking thread, or 503.
    pub(crate) fn stream(&self) -> Result<ReadPermit, ApiError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(
                "this node is streaming as many reads as it allows; retry in a few seconds",
                RETRY_AFTER_SECS,
            )
        })
    }
}

/// What a refused read is told to wait before trying again.
const RETRY_AFTER_SECS: u32 = 2;

/// A CID to read: well-formed, and of a codec a UnixFS read can decode (dag-pb or raw). Any other codec is refused
/// at once rather than after waiting for a block that could never be read.
pub(crate) fn parse_readable_cid(s: &str) -> Result<Cid, ApiError> {
    let cid = parse_cid(s)?;
    match cid.codec() {
        xnode_dag::DAG_PB | xnode_dag::RAW => Ok(cid),
        other => Err(ApiError::bad_request(format!(
            "{cid} has codec 0x{other:x}; this node reads UnixFS only (dag-pb 0x70 or raw 0x55)"
        ))),
    }
}

/// What an upload stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Uploaded {
    /// The root CID.
    pub(crate) cid: String,
    /// The name it is pinned under.
    pub(crate) name: String,
    /// Content bytes.
    pub(crate) size: u64,
    /// Every file and directory of a tar upload, children first.
    entries: Vec<UploadedEntry>,
}

/// One entry of a tar upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct UploadedEntry {
    /// Its path in the archive.
    path: String,
    /// Its CID.
    cid: String,
}

/// A file of the cluster's catalog (or, until the catalog lands, pinned here), with its replication health.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct FileEntry {
    /// The root CID.
    pub(crate) root: String,
    /// Its name as added.
    pub(crate) name: String,
    /// Content bytes.
    pub(crate) size: u64,
    /// When it was added, seconds since the Unix epoch.
    pub(crate) added_at: u64,
    /// The member that added it (blank when only known from the local pins).
    pub(crate) added_by: String,
    /// Whether this node pins it.
    pub(crate) pinned_here: bool,
    /// Replication health; absent when the file is only known from local pins, or when the catalog lists it and
    /// the allocation loop has not counted its copies yet (a file added in the last seconds).
    pub(crate) health: Option<Health>,
}

/// How well the cluster keeps a file's blocks.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Blocks in its DAG.
    pub(crate) blocks: u64,
    /// Blocks held by every node placement gives them to.
    pub(crate) at_rf: u64,
    /// Blocks with fewer live copies than the replication factor.
    pub(crate) under_replicated: u64,
    /// Blocks no live member holds.
    pub(crate) missing: u64,
}

/// The catalog's files with their health, plus local pins the catalog does not list, newest first.
pub(crate) async fn entries(app: &AppState) -> Result<Vec<FileEntry>, ApiError> {
    let repo = app.node.repo().clone();
    let pins = blocking(move || repo.pins()).await?;
    let pinned: std::collections::HashSet<String> = pins.iter().map(|p| p.root.to_string()).collect();
    let mut out: Vec<FileEntry> = app
        .node
        .files_health()
        .iter()
        .cloned()
        .map(|f| FileEntry {
            pinned_here: pinned.contains(&f.root),
            root: f.root,
            name: f.name,
            size: f.size,
            added_at: f.added_at,
            added_by: f.added_by,
            health: Some(Health {
                blocks: f.blocks,
                at_rf: f.at_rf,
                under_replicated: f.under_replicated,
                missing: f.missing,
            }),
        })
        .collect();
    // A file the catalog lists that the allocation loop has not counted yet (added in the last second or so): it is
    // listed at once, without health, so a client that just added it sees it.
    // Set lookups, not scans: a catalog of 100k files is listed in linear time.
    let mut listed: std::collections::HashSet<String> = out.iter().map(|e| e.root.clone()).collect();
    for f in app.node.catalog_files() {
        let root = f.root.to_string();
        if listed.insert(root.clone()) {
            out.push(FileEntry {
                pinned_here: pinned.contains(&root),
                root,
                name: f.name,
                size: f.size,
                added_at: f.added_at,
                added_by: f.added_by,
                health: None,
            });
        }
    }
    for p in pins {
        let root = p.root.to_string();
        if listed.insert(root.clone()) {
            out.push(FileEntry {
                root,
                name: p.name,
                size: p.size,
                added_at: p.added_at,
                added_by: String::new(),
                pinned_here: true,
                health: None,
            });
        }
    }
    out.sort_by(|a, b| b.added_at.cmp(&a.added_at).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// `GET /api/v1/files`: the cluster's files with their replication health (and the files pinned here).
#[utoipa::path(get, path = "/api/v1/files", tag = "files", responses((status = 200, body = [FileEntry])))]
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Vec<FileEntry>>, ApiError> {
    Ok(Json(entries(&app).await?))
}

/// `POST /api/v1/files`: the body is the file (any content type), a directory tree as `application/x-tar`, or a
/// `multipart/form-data` form whose first file part is stored under its file name.
#[utoipa::path(post, path = "/api/v1/files", tag = "files", params(UploadParams), security(("admin" = [])),
    request_body(content(
        (Vec<u8> = "application/octet-stream"),
        (Vec<u8> = "application/x-tar"),
        (Object = "multipart/form-data")), description = "the file, a tar of a directory, or a form with a file part"),
    responses(
        (status = 201, body = Uploaded),
        (status = 400, description = "no name, bad options, not a tar, no file part", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 403, description = "a cross-site request with the dashboard cookie", body = ErrorBody),
        (status = 413, description = "larger than XNODE_MAX_UPLOAD, or than the room left in the store (the message \
                                      says which, with the free bytes)", body = ErrorBody)))]
pub(crate) async fn upload(
    State(app): State<AppState>,
    Query(params): Query<UploadParams>,
    request: Request,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    Ok((StatusCode::CREATED, Json(import(&app, params, request).await?)))
}

/// Where an upload's bytes come from.
enum Source {
    Raw,
    Tar,
    Multipart,
}

/// Streams an upload (raw, tar or multipart) into the store, bounded by `XNODE_MAX_UPLOAD`.
pub(crate) async fn import(app: &AppState, params: UploadParams, request: Request) -> Result<Uploaded, ApiError> {
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
    if let Some(chunker) = &params.chunker {
        opts = opts.with_chunker(chunker).map_err(ApiError::bad_request)?;
    }
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let source = if content_type.starts_with("application/x-tar") {
        Source::Tar
    } else if content_type.starts_with("multipart/form-data") {
        Source::Multipart
    } else {
        Source::Raw
    };
    let limit = app.config.max_upload_bytes;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    // The body streams through a small channel into a blocking import: memory stays flat whatever the size.
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let (name, pump) = match source {
        Source::Multipart => {
            let mut form = Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("not a multipart form: {}", e.body_text())))?;
            // The file part borrows the form, so one task owns both: it reports the part's file name, then pumps.
            let (name_tx, name_rx) = oneshot::channel::<Result<String, ApiError>>();
            let task = tokio::spawn(async move {
                let field = loop {
                    match form.next_field().await {
                        Err(e) => return drop(name_tx.send(Err(multipart_error(&e, limit)))),
                        Ok(None) => {
                            let e = ApiError::bad_request(
                                "the form has no file part; send the file as a part with a filename",
                            );
                            return drop(name_tx.send(Err(e)));
                        }
                        Ok(Some(field)) => {
                            if let Some(file_name) = field.file_name().map(str::to_string) {
                                let base = file_name.rsplit(['/', '\\']).next().unwrap_or_default().to_string();
                                let _ = name_tx.send(Ok(base));
                                break field;
                            }
                        }
                    }
                };
                let stream = field.map(|c| c.map_err(|e| io::Error::other(multipart_error(&e, limit).message)));
                pump(stream, tx, limit).await;
            });
            let file_name = name_rx.await.map_err(|_| ApiError::internal("the upload reader stopped"))??;
            (Some(params.name.clone().filter(|n| !n.is_empty()).unwrap_or(file_name)), task)
        }
        Source::Raw | Source::Tar => {
            let stream = request.into_body().into_data_stream().map(|f| f.map_err(|e| io::Error::other(e.to_string())));
            (params.name.clone(), tokio::spawn(pump(stream, tx, limit)))
        }
    };
    let is_tar = matches!(source, Source::Tar);
    let name = name.filter(|n| !n.is_empty() && !n.contains('/'));
    if !is_tar && name.is_none() {
        pump.abort();
        return Err(ApiError::bad_request(
            "give the file a name: POST /api/v1/files?name=FILE (no '/'), or a multipart part with a filename",
        ));
    }
    // Streamed to the members placement gives each block to, as it is made (docs/allocation.md).
    let result = app
        .node
        .add_with(move |sink| {
            let reader = ChannelReader { rx, current: Bytes::new() };
            let mut entries = Vec::new();
            let (added, listed) = if is_tar {
                xnode_instance::import_tar(
                    reader,
                    &opts,
                    &mut |p: &Path, a| {
                        entries.push(UploadedEntry { path: p.display().to_string(), cid: a.cid.to_string() })
                    },
                    sink,
                )?
            } else {
                xnode_instance::import_stream(name.as_deref().unwrap_or_default(), reader, &opts, sink)?
            };
            let pin_name = entries.last().map(|e| e.path.clone()).or(name).unwrap_or_default();
            let uploaded = Uploaded { cid: added.cid.to_string(), name: pin_name, size: added.size, entries };
            Ok((added, listed, uploaded))
        })
        .await
        .map(|(_, uploaded)| uploaded)
        .map_err(ApiError::from);
    pump.abort();
    match result {
        Ok(uploaded) => {
            if let Ok(root) = Cid::try_from(uploaded.cid.as_str()) {
                let node = app.node.clone();
                tokio::spawn(async move { node.provide(root).await });
            }
            Ok(uploaded)
        }
        Err(e) if e.message.contains(TOO_LARGE) => Err(too_large(limit)),
        Err(e) => Err(e),
    }
}

/// Forwards body chunks to the importer, counting them against `limit`.
pub(crate) async fn pump(
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send,
    tx: mpsc::Sender<io::Result<Bytes>>,
    limit: u64,
) {
    let mut stream = std::pin::pin!(stream);
    let mut seen: u64 = 0;
    while let Some(frame) = stream.next().await {
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
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(limit);
    }
    ApiError::bad_request(format!("could not read the multipart form: {}", e.body_text()))
}

pub(crate) fn too_large(limit: u64) -> ApiError {
    ApiError {
        retry_after: None,
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("upload larger than the limit of {limit} bytes; raise XNODE_MAX_UPLOAD"),
    }
}

pub(crate) const TOO_LARGE: &str = "upload too large";

#[derive(Debug)]
struct TooLarge(u64);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOO_LARGE} (limit {} bytes)", self.0)
    }
}

impl std::error::Error for TooLarge {}

/// A blocking `Read` over body frames sent by the async side.
pub(crate) struct ChannelReader {
    pub(crate) rx: mpsc::Receiver<io::Result<Bytes>>,
    pub(crate) current: Bytes,
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

/// `GET /api/v1/files/{cid}`: a file's bytes, streamed; `Range: bytes=a-b` gives 206 with that slice. Blocks this
/// node lacks are fetched while the body streams, in file order as they arrive. A root or first block that cannot be
/// read fails before the status (JSON error naming the block); a later block that does not arrive within the timeout
/// cuts the body short of its Content-Length, which clients report as a failed transfer.
#[utoipa::path(get, path = "/api/v1/files/{cid}", tag = "files",
    params(("cid" = String, Path, description = "the file's root CID"), ReadParams,
        ("Range" = Option<String>, Header, description = "bytes=a-b, bytes=a- or bytes=-n"),
        ("If-None-Match" = Option<String>, Header, description = "the ETag, i.e. the quoted CID")),
    responses(
        (status = 200, description = "the bytes, with Content-Type, Content-Length, ETag", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "the requested range, with Content-Range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 304, description = "unchanged (If-None-Match)"),
        (status = 400, description = "malformed CID, or not a file", body = ErrorBody),
        (status = 416, description = "range outside the file"),
        (status = 502, description = "the block is corrupted here and no member sent a good copy", body = ErrorBody),
        (status = 504, description = "no member sent the root block before the timeout", body = ErrorBody)))]
pub(crate) async fn download(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cid = parse_readable_cid(&cid)?;
    let timeout = read_timeout(&app, &params)?;
    let open = app.reads.open()?;
    // Blocks this node lacks are fetched while the body streams: the response starts once the root is here.
    let (source, kind) = app.node.open_streaming(cid, timeout).await?;
    let stream = app.reads.stream()?;
    let repo = app.node.repo().clone();
    let name = blocking(move || Ok(repo.store().pin(&cid).ok().flatten().map(|p| p.name))).await?;
    let size = match kind {
        NodeKind::File { size } => size,
        NodeKind::Directory => {
            return Err(ApiError::bad_request(format!(
                "{cid} is a directory: list it with `xnode ls {cid}` (GET /api/v1/ls/{cid}), or write it to disk with \
                 `xnode get {cid}`"
            )))
        }
        NodeKind::Symlink { target } => {
            return Err(ApiError::bad_request(format!("{cid} is a symlink to {target:?}, not a file")))
        }
    };
    let etag = format!("\"{cid}\"");
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let range = match ByteRange::requested(&headers, size) {
        Ok(range) => range,
        Err(unsatisfiable) => return Ok(unsatisfiable),
    };
    let (offset, length) = (range.offset, range.length);

    // The permits go with the body: the reading thread is held until the last byte is handed over.
    let body = stream_file(source, cid, offset, length, (open, stream))
        .await
        .map_err(|e| ApiError::from(xnode_instance::InstanceError::Read(e)))?;
    let mut response = Response::new(body);
    let h = response.headers_mut();
    // Downloads share the dashboard's origin: a stored `page.html` rendered as a page there could act with the
    // dashboard's cookie. So the browser must save, never render or sniff, what it downloads.
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name.as_deref())));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("a CID is a valid header value"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    h.insert(header::CONTENT_DISPOSITION, content_disposition(name.as_deref()));
    range.describe(&mut response);
    Ok(response)
}

/// `length` bytes of the file at `cid` from `offset`, read on a blocking thread and streamed through a small
/// channel (memory stays flat whatever the size). `permits` (read bounds) are held until the body ends.
///
/// Reads tell the truth: the file's first chunk is read before this returns, so a root or first block that is
/// unavailable (nobody sent it in time, corrupted here with no good copy elsewhere) fails the request before any
/// status is sent, with a JSON error naming the block. A block that fails later ends the body with an error: the
/// connection is cut short of its Content-Length, which every HTTP client reports as a failed transfer (curl exits
/// 18, reqwest and ureq return an error), never as a clean short 200.
pub(crate) async fn stream_file(
    source: impl xnode_dag::BlockSource + Send + 'static,
    cid: Cid,
    offset: u64,
    length: u64,
    permits: impl Send + 'static,
) -> Result<Body, xnode_dag::ReadError> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let (opened_tx, opened) = tokio::sync::oneshot::channel::<Result<(), xnode_dag::ReadError>>();
    tokio::task::spawn_blocking(move || {
        let _permits = permits;
        let first = xnode_dag::FileReader::open(&source, &cid, offset, length)
            .and_then(|mut reader| reader.next_chunk().map(|chunk| (reader, chunk)));
        let (mut reader, first) = match first {
            Ok(opened) => opened,
            Err(e) => {
                let _ = opened_tx.send(Err(e));
                return;
            }
        };
        let _ = opened_tx.send(Ok(()));
        let Some(first) = first else { return };
        if tx.blocking_send(Ok(first)).is_err() {
            return; // the client went away
        }
        loop {
            match reader.next_chunk() {
                Ok(None) => return,
                Ok(Some(chunk)) => {
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    // The status and length are sent: all that is left is to cut the body short (and say why here).
                    tracing::warn!(%cid, "download ended early, short of its Content-Length: {e}");
                    let _ = tx.blocking_send(Err(io::Error::other(e)));
                    return;
                }
            }
        }
    });
    match opened.await {
        Ok(Ok(())) => Ok(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(xnode_dag::ReadError::Source("the reading thread ended before the first chunk".into())),
    }
}

/// `attachment`, with the file's name when it has one: an ASCII fallback (`filename=`, unsafe characters as `_`)
/// and the exact name percent-encoded (`filename*=UTF-8''`, RFC 6266).
fn content_disposition(name: Option<&str>) -> HeaderValue {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return HeaderValue::from_static("attachment") };
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | ';' | '%') || c == ' ' { c } else { '_' })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// The bytes of a file a read answers with: all of it, or the one range its `Range` header asks for. Shared by
/// `GET /api/v1/files/{cid}` and the gateway's deserialized files, so both answer ranges alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    /// First byte.
    pub(crate) offset: u64,
    /// How many bytes.
    pub(crate) length: u64,
    /// The file's whole size.
    size: u64,
    /// Whether the request had a `Range` (the answer is then a 206 with `Content-Range`).
    partial: bool,
}

impl ByteRange {
    /// The range `headers` ask for in a file of `size` bytes; `Err` is the 416 answer to send when it lies outside.
    pub(crate) fn requested(headers: &HeaderMap, size: u64) -> Result<Self, Response> {
        let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
            return Ok(Self { offset: 0, length: size, size, partial: false });
        };
        match parse_range(value, size) {
            Some((offset, length)) => Ok(Self { offset, length, size, partial: true }),
            None => Err((StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{size}"))])
                .into_response()),
        }
    }

    /// Sets `Content-Length` and `Accept-Ranges` and, for a range, the 206 status and `Content-Range`.
    pub(crate) fn describe(&self, response: &mut Response) {
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(self.length));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if self.partial {
            let (offset, size) = (self.offset, self.size);
            let end = offset + self.length.saturating_sub(1);
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {offset}-{end}/{size}")).expect("ASCII"),
            );
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
    }
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

pub(crate) fn content_type(name: Option<&str>) -> &'static str {
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

/// One directory entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Listing {
    /// Its name.
    name: String,
    /// Its CID.
    cid: String,
    /// `file`, `directory` or `symlink`.
    kind: &'static str,
    /// Content bytes of a file.
    size: u64,
    /// A symlink's target.
    target: Option<String>,
}

/// `GET /api/v1/ls/{cid}`: a directory's entries with their kinds.
#[utoipa::path(get, path = "/api/v1/ls/{cid}", tag = "files", params(("cid" = String, Path), ReadParams), responses(
    (status = 200, body = [Listing]), (status = 400, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(crate) async fn ls(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<Listing>>, ApiError> {
    let cid = parse_readable_cid(&cid)?;
    let timeout = read_timeout(&app, &params)?;
    let _open = app.reads.open()?;
    // Listing waits for each entry's root on a blocking thread.
    let _stream = app.reads.stream()?;
    // Blocks this node lacks are fetched as the listing needs them (the rest of the DAG follows, as cache).
    let entries = app.node.list_streaming(cid, timeout).await?;
    let out = entries
        .into_iter()
        .map(|(e, kind)| {
            let (kind, size, target) = match kind {
                NodeKind::File { size } => ("file", size, None),
                NodeKind::Directory => ("directory", 0, None),
                NodeKind::Symlink { target } => ("symlink", 0, Some(target)),
            };
            Listing { name: e.name, cid: e.cid.to_string(), kind, size, target }
        })
        .collect();
    Ok(Json(out))
}

/// `GET /api/v1/stat/{cid}`: what a CID is.
#[utoipa::path(get, path = "/api/v1/stat/{cid}", tag = "files", params(("cid" = String, Path), ReadParams), responses(
    (status = 200, description = "cid, kind (file, directory, symlink), size or target", body = Object),
    (status = 400, body = ErrorBody), (status = 504, body = ErrorBody)))]
pub(crate) async fn stat(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cid = parse_readable_cid(&cid)?;
    let timeout = read_timeout(&app, &params)?;
    let _open = app.reads.open()?;
    // Only the root block is needed; a DAG this node lacks goes on arriving (as cache) after the answer, so that
    // `xnode get`, which asks this first, streams the download that follows.
    let (_, kind) = app.node.open_streaming(cid, timeout).await?;
    Ok(Json(match kind {
        NodeKind::File { size } => serde_json::json!({ "cid": cid.to_string(), "kind": "file", "size": size }),
        NodeKind::Directory => serde_json::json!({ "cid": cid.to_string(), "kind": "directory" }),
        NodeKind::Symlink { target } => {
            serde_json::json!({ "cid": cid.to_string(), "kind": "symlink", "target": target })
        }
    }))
}

/// `DELETE /api/v1/files/{cid}`: unpin; blocks no other file needs are deleted.
#[utoipa::path(delete, path = "/api/v1/files/{cid}", tag = "files", params(("cid" = String, Path)), security(("admin" = [])),
    responses(
        (status = 200, description = "removed; blocks_deleted and bytes_freed on this node; cluster_blocks, \
            cluster_copies and cluster_bytes: what the members free between them (the file's blocks that no other \
            catalog file lists, times their copies; cluster_bytes counts leaf bytes)", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "not pinned here", body = ErrorBody)))]
pub(crate) async fn remove(State(app): State<AppState>, UrlPath(cid): UrlPath<String>) -> Result<Response, ApiError> {
    let cid = parse_cid(&cid)?;
    // What the cluster frees: the copies of the file's blocks that no other catalog file lists (the allocation
    // index knows who lists what); leaves are kept at the replication factor, interior blocks by every member.
    let root = cid.to_string();
    let alive = app.node.members().iter().filter(|m| m.state == xnode_gossip::MemberState::Alive).count().max(1) as u64;
    let copies = (app.node.replication() as u64).min(alive);
    let freed = app.node.freed_by(cid).await?;
    let health = app.node.files_health().iter().find(|h| h.root == root).cloned();
    let stats = app.node.remove_file(cid).await?;
    let (blocks, block_copies, bytes) = match (freed, health) {
        (Some(f), _) => (f.leaves + f.interior, f.leaves * copies + f.interior * alive, f.leaf_bytes * copies),
        // Not indexed yet (added a moment ago): what the health sweep counted, or this node's own figures.
        (None, Some(h)) => (h.blocks, h.blocks * copies, h.size * copies),
        (None, None) => (stats.blocks_deleted, stats.blocks_deleted * copies, stats.bytes_freed * copies),
    };
    Ok(Json(serde_json::json!({
        "removed": root,
        "blocks_deleted": stats.blocks_deleted,
        "bytes_freed": stats.bytes_freed,
        "cluster_blocks": blocks,
        "cluster_copies": block_copies,
        "cluster_bytes": bytes,
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
    use super::{parse_range, ByteRange, ReadBounds};
    use axum::http::{header, HeaderMap, HeaderValue};
    use axum::response::IntoResponse;

    #[test]
    fn past_a_read_bound_the_answer_is_503_with_retry_after() {
        let bounds = ReadBounds::new(2, 1);
        let (a, _b) = (bounds.open().unwrap(), bounds.open().unwrap());
        let refused = bounds.open().unwrap_err();
        let response = refused.into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        drop(a);
        assert!(bounds.open().is_ok(), "a finished read makes room");
        let _s = bounds.stream().unwrap();
        assert_eq!(bounds.stream().unwrap_err().status(), 503);
    }

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

    #[test]
    fn a_byte_range_describes_whole_files_ranges_and_416s() {
        let body = || axum::response::Response::new(axum::body::Body::empty());
        let whole = ByteRange::requested(&HeaderMap::new(), 100).unwrap();
        let mut response = body();
        whole.describe(&mut response);
        assert_eq!((whole.offset, whole.length, response.status().as_u16()), (0, 100, 200));
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "100");
        assert!(response.headers().get(header::CONTENT_RANGE).is_none());

        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
        let part = ByteRange::requested(&headers, 100).unwrap();
        let mut response = body();
        part.describe(&mut response);
        assert_eq!((part.offset, part.length, response.status().as_u16()), (10, 10, 206));
        assert_eq!(response.headers()[header::CONTENT_RANGE], "bytes 10-19/100");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "10");

        headers.insert(header::RANGE, HeaderValue::from_static("bytes=200-"));
        let refused = ByteRange::requested(&headers, 100).unwrap_err();
        assert_eq!(refused.status().as_u16(), 416);
        assert_eq!(refused.headers()[header::CONTENT_RANGE], "bytes */100");
    }
}
