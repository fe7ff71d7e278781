//! The node's HTTP API (axum): `/healthz` and `/readyz` for orchestrators, JSON under `/api/v1` for the CLI and
//! scripts (described by the OpenAPI document at `/api/v1/openapi.json`), `/metrics` for Prometheus, and the
//! dashboard at `/` (askama templates from `templates/`, htmx served from the binary).
//!
//! Owns routing, status codes, the JSON shapes, who may do what (the admin token, CSRF) and the forwarding of
//! admin actions to other members' APIs. Handlers only read from the [`Node`] handle and serialize or render; no
//! business logic lives here. Never binds sockets itself: [`serve`] takes a listener so tests can bind port 0.
//! Design notes: `docs/api.md`.

mod car;
mod cluster;
mod extract;
mod files;
mod forward;
mod gateway;
mod openapi;
mod pins;
mod session;
mod telemetry;
mod timeline;
mod ui;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use extract::Query;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xnode_dag::ReadError;
use xnode_gossip::Member;
use xnode_instance::{InstanceError, Node, NodeStatus};
use xnode_storage::StoreError;

/// Settings of the API, built by the binary.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Bearer token required by every route that changes something (`XNODE_ADMIN_TOKEN`).
    pub admin_token: String,
    /// Largest accepted upload in bytes (`XNODE_MAX_UPLOAD`).
    pub max_upload_bytes: u64,
    /// How long a read waits for blocks the node lacks (`XNODE_FETCH_TIMEOUT`; `?timeout=SECS` overrides).
    pub fetch_timeout: std::time::Duration,
    /// Most reads (downloads, listings, stats) open at once; past it a read gets 503 with `Retry-After`. Default
    /// 4096. A read waiting for its root block from the network costs no thread, only a few KiB, so this is high:
    /// 2,000 reads of CIDs that exist nowhere each end with their own 504.
    pub max_reads: usize,
    /// Most reads streaming bytes at once; past it a read gets 503 with `Retry-After`. Default 256. A streaming
    /// read holds a blocking thread (the DAG reader is synchronous) while it waits for the next block or for a
    /// slow client, and Tokio has 512: the other half stays free for the store, the fetches' own commits and
    /// uploads, so no number of readers can wedge the node.
    pub max_streams: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_token: Self::random_token(),
            max_upload_bytes: 16 << 30,
            fetch_timeout: std::time::Duration::from_secs(60),
            max_reads: 4096,
            max_streams: 256,
        }
    }
}

impl ApiConfig {
    /// A fresh random admin token (used when `XNODE_ADMIN_TOKEN` is unset; the node logs it once).
    pub fn random_token() -> String {
        use rand_core::RngCore;
        let mut bytes = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What every handler can reach.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    node: Arc<Node>,
    config: Arc<ApiConfig>,
    control: Control,
    telemetry: Arc<telemetry::Telemetry>,
    /// How many reads may be open and streaming at once.
    reads: Arc<files::ReadBounds>,
    /// The Pinning Service API's requests and workers.
    pins: Arc<pins::PinService>,
    /// Dashboard sessions and used forward signatures.
    sessions: Arc<session::Sessions>,
    /// The dashboard's event timeline.
    timeline: Arc<timeline::Timeline>,
}

/// How the API stops the process: the binary watches these tokens.
#[derive(Clone, Debug, Default)]
pub struct Control {
    /// Cancelled by `POST /api/v1/shutdown` (and SIGTERM): leave the cluster politely, flush, exit 0.
    pub shutdown: CancellationToken,
    /// Cancelled by `POST /api/v1/kill`: stop at once without leaving, as a crash would, so the others declare
    /// this node dead (the dashboard's "kill" button, to watch the cluster heal).
    pub kill: CancellationToken,
}

/// The API's one error type: a status code and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (a 503 past a bound).
    retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl ToString) -> Self {
        Self { status, message: message.to_string(), retry_after: None }
    }

    /// 503 with `Retry-After`: the node is at a bound and will have room again soon.
    pub(crate) fn busy(message: impl ToString, retry_after_secs: u32) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.to_string(),
            retry_after: Some(retry_after_secs),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad_request(message: impl ToString) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn internal(message: impl ToString) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        let status = match &e {
            // A full store is a client error the caller can act on (smaller upload, more capacity, fewer files): 413,
            // like a body over the limit, with the free bytes in the message.
            InstanceError::Store(StoreError::Full { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            InstanceError::Store(StoreError::NotPinned { .. }) => StatusCode::NOT_FOUND,
            InstanceError::Read(ReadError::NotFound(_)) => StatusCode::NOT_FOUND,
            InstanceError::Read(ReadError::WrongKind { .. }) => StatusCode::BAD_REQUEST,
            InstanceError::BadUpload(_) | InstanceError::Import(xnode_dag::ImportError::Options(_)) => {
                StatusCode::BAD_REQUEST
            }
            // The importer reports a store refusal through its sink; the same 413.
            InstanceError::Import(xnode_dag::ImportError::Sink(inner))
                if inner.downcast_ref::<StoreError>().is_some_and(|s| matches!(s, StoreError::Full { .. })) =>
            {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            InstanceError::Import(xnode_dag::ImportError::Read(_)) => StatusCode::BAD_REQUEST,
            InstanceError::P2p(xnode_p2p::P2pError::NotFound { .. }) => StatusCode::GATEWAY_TIMEOUT,
            // A block nobody sent in time, met while reading (the root or the first chunk of a download).
            InstanceError::Read(ReadError::Source(inner))
                if matches!(
                    inner.downcast_ref::<xnode_p2p::P2pError>(),
                    Some(xnode_p2p::P2pError::NotFound { .. })
                ) =>
            {
                StatusCode::GATEWAY_TIMEOUT
            }
            // Corrupted here and no good copy elsewhere: the cluster, not the request, is at fault.
            InstanceError::Repair(_) => StatusCode::BAD_GATEWAY,
            InstanceError::Read(ReadError::Source(inner))
                if inner.downcast_ref::<xnode_instance::RepairError>().is_some() =>
            {
                StatusCode::BAD_GATEWAY
            }
            InstanceError::Store(StoreError::Corrupted { .. }) => StatusCode::BAD_GATEWAY,
            // A streamed upload whose blocks did not all find room: the cluster is full (507), or members did not
            // take them (503, try again).
            InstanceError::Unplaced(u) if u.cluster_free.is_some() => StatusCode::INSUFFICIENT_STORAGE,
            InstanceError::Unplaced(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Every error answer: `{"error": "what went wrong and what to do"}`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// A message a person can act on.
    error: String,
}

/// The routes, over a running node. Reads are open; anything that changes the node needs the admin token.
/// Cancelling `control.shutdown` (also what `POST /api/v1/shutdown` does) stops the node gracefully. Must be called
/// inside a Tokio runtime: it starts the task that follows the node's network events for metrics and the
/// transfer log (it ends with `control.shutdown`).
pub fn router(node: Arc<Node>, config: ApiConfig, control: Control) -> Router {
    let telemetry = telemetry::Telemetry::start(node.clone(), control.shutdown.clone());
    let reads = Arc::new(files::ReadBounds::new(config.max_reads, config.max_streams));
    let pins = Arc::new(pins::PinService::start(&node, config.fetch_timeout));
    let sessions = Arc::new(session::Sessions::default());
    let timeline = timeline::Timeline::start(node.clone(), control.shutdown.clone());
    let state = AppState { node, config: Arc::new(config), control, telemetry, reads, pins, sessions, timeline };
    let upload_limit = usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX);
    let admin = Router::new()
        // Uploads are streamed and bounded by `max_upload_bytes` (multipart included); other bodies are small.
        .route("/api/v1/files", post(files::upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/v1/files/{cid}", axum::routing::delete(files::remove))
        .route("/api/v1/dag/import", post(car::import).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/v1/storage", axum::routing::put(set_storage))
        .route("/api/v1/shutdown", post(shutdown_node))
        .route("/api/v1/kill", post(kill_node))
        .route("/api/v1/members/{name}/kill", post(cluster::kill))
        .route("/api/v1/members/{name}/shutdown", post(cluster::shutdown))
        .route("/api/v1/members/{name}/storage", axum::routing::put(cluster::resize))
        // Lets a client check its token before streaming a large upload the server would cut off.
        .route("/api/v1/auth", get(auth))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // The Pinning Service API: its own error shape and bearer-only auth (see pins.rs).
    let pinning = Router::new()
        .route("/pins", get(pins::list).post(pins::add))
        .route("/pins/{requestid}", get(pins::get).post(pins::replace).delete(pins::remove))
        .route_layer(middleware::from_fn_with_state(state.clone(), pins::require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(telemetry::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/status", get(status))
        .route("/api/v1/members", get(members))
        .route("/api/v1/files", get(files::list))
        .route("/api/v1/files/{cid}", get(files::download))
        .route("/api/v1/ls/{cid}", get(files::ls))
        .route("/api/v1/stat/{cid}", get(files::stat))
        .route("/api/v1/dag/export/{cid}", get(car::export))
        .route("/api/v1/storage", get(storage))
        .route("/api/v1/blocks", get(blocks))
        .route("/api/v1/blocks/has", post(cluster::has))
        .route("/api/v1/files/{cid}/holders", get(cluster::holders))
        .route("/api/v1/transfers", get(telemetry::transfers_json))
        // The IPFS gateway (trustless and path): GET and HEAD (axum answers HEAD with the GET route).
        .route("/ipfs/{*path}", get(gateway::serve))
        .merge(admin)
        .merge(pinning)
        .merge(ui::routes(state.clone(), upload_limit))
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .route_layer(middleware::from_fn_with_state(state.clone(), telemetry::track_latency))
        .with_state(state)
        .layer(middleware::from_fn(json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Turns every error answer that is not already JSON or a dashboard fragment into `{"error": ...}` with what to do:
/// axum's own refusals (an unknown route, a wrong method, a body of the wrong type or size, a malformed path) come
/// as plain text or with no body at all, which scripts cannot read like the API's other errors. The gateway
/// (`/ipfs/`) keeps the plain-text errors gateways give.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || path.starts_with("/ipfs/") {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, SMALL_BODY).await.map(|b| String::from_utf8_lossy(&b).trim().to_string());
    let text = text.unwrap_or_default();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .or_else(|| (status == StatusCode::METHOD_NOT_ALLOWED).then(|| openapi::allowed_methods(&path)).flatten());
    let message = error_message(status, &method, &path, &text, allow.as_deref());
    let mut error = ApiError::new(status, message);
    error.retry_after = parts.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
    let mut out = error.into_response();
    if let Some(allow) = allow.and_then(|a| axum::http::HeaderValue::from_str(&a).ok()) {
        out.headers_mut().insert(header::ALLOW, allow);
    }
    out
}

/// The message of an error answer axum made (its text, if any, is in `text`): what went wrong and what to do.
fn error_message(
    status: StatusCode,
    method: &axum::http::Method,
    path: &str,
    text: &str,
    allow: Option<&str>,
) -> String {
    let detail = if text.is_empty() { String::new() } else { format!(" ({text})") };
    match status {
        StatusCode::NOT_FOUND => format!(
            "no route {method} {path}{detail}; the API lives under /api/v1 (its routes are listed in \
             /api/v1/openapi.json), the dashboard at /, the gateway under /ipfs/"
        ),
        StatusCode::METHOD_NOT_ALLOWED => match allow.filter(|a| !a.is_empty()) {
            Some(allow) => format!("{method} is not allowed on {path}; use {allow} (see /api/v1/openapi.json)"),
            None => format!("{method} is not allowed on {path} (see /api/v1/openapi.json)"),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => format!(
            "{method} {path} needs a body with `Content-Type: application/json`{detail}, e.g. \
             curl -H 'Content-Type: application/json' -d '{{...}}'"
        ),
        StatusCode::UNPROCESSABLE_ENTITY => {
            format!("the JSON body does not have the fields {path} expects{detail}; see /api/v1/openapi.json")
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the body sent to {path} is too large{detail}: uploads are bounded by XNODE_MAX_UPLOAD, other bodies \
             by {} KiB",
            SMALL_BODY >> 10
        ),
        StatusCode::BAD_REQUEST if text.is_empty() => format!("{method} {path}: the request is malformed"),
        StatusCode::BAD_REQUEST => format!("{method} {path}: {text}"),
        _ if text.is_empty() => format!("{method} {path} failed with {status}; the node's log says why"),
        _ => text.to_string(),
    }
}

/// The largest body accepted by routes other than uploads (JSON and forms): 64 KiB.
const SMALL_BODY: usize = 64 << 10;

/// How a request proved it may change things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer`: a script or the CLI; browsers never add it on their own, so no CSRF check.
    Bearer,
    /// The dashboard's session cookie: browsers send it by themselves, so the request must also prove it is
    /// same-site.
    Cookie,
}

/// The credential a request carries: the bearer token first, else the dashboard's session id (`xnode_session`
/// cookie; never the token itself).
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<(Auth, String)> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| (Auth::Bearer, t.trim().to_string()));
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|c| c.split(';'))
            .find_map(|kv| kv.trim().strip_prefix(&format!("{TOKEN_COOKIE}=")).map(cookie_decode))
            .map(|t| (Auth::Cookie, t))
    })
}

fn cookie_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The dashboard keeps its session id in this cookie (HttpOnly, SameSite=Strict); the token never leaves the
/// sign-in form.
pub(crate) const TOKEN_COOKIE: &str = "xnode_session";

/// Refuses a browser request made by another site: `Sec-Fetch-Site` must be same-origin (or absent, from
/// non-browser clients) and `Origin`, when sent, must name this host.
pub(crate) fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |what: String| ApiError {
        retry_after: None,
        status: StatusCode::FORBIDDEN,
        message: format!(
            "cross-site request refused ({what}): change things from the node's own dashboard, or send \
             `Authorization: Bearer <XNODE_ADMIN_TOKEN>` from a script"
        ),
    };
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = site.filter(|s| !matches!(*s, "same-origin" | "none")) {
        return Err(refuse(format!("Sec-Fetch-Site: {site}")));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
        if origin_host != host {
            return Err(refuse(format!("Origin {origin} is not {host}")));
        }
    }
    Ok(())
}

/// Checks the admin token of a request, and for the cookie that it comes from the dashboard's own origin.
pub(crate) fn check_admin(app: &AppState, headers: &HeaderMap) -> Result<Auth, ApiError> {
    let Some((auth, token)) = presented_token(headers) else {
        return Err(ApiError {
            retry_after: None,
            status: StatusCode::UNAUTHORIZED,
            message: "this route needs the node's admin token: from the CLI pass `--token TOKEN` or set \
                      XNODE_ADMIN_TOKEN (on the node's own machine the CLI reads DATA_DIR/admin-token); from a \
                      script send `Authorization: Bearer TOKEN`; in a browser sign in on the dashboard. The node \
                      logs a generated token at start when XNODE_ADMIN_TOKEN is unset"
                .into(),
        });
    };
    if auth == Auth::Cookie {
        // SameSite=Strict already keeps the cookie off other sites' requests; this is the second lock.
        check_same_origin(headers)?;
        if !headers.contains_key("x-xnode-csrf") && !headers.contains_key("hx-request") {
            return Err(ApiError {
                retry_after: None,
                status: StatusCode::FORBIDDEN,
                message: "a request signed in with the dashboard cookie must come from the dashboard (it sends \
                          X-Xnode-Csrf); scripts should send `Authorization: Bearer <XNODE_ADMIN_TOKEN>` instead"
                    .into(),
            });
        }
    }
    let accepted = match auth {
        Auth::Bearer => constant_time_eq(token.as_bytes(), app.config.admin_token.as_bytes()),
        Auth::Cookie => app.sessions.valid(&token),
    };
    if !accepted {
        let message = match auth {
            Auth::Bearer => {
                "wrong admin token: pass the node's XNODE_ADMIN_TOKEN (CLI: `--token TOKEN` or XNODE_ADMIN_TOKEN; \
                 scripts: `Authorization: Bearer TOKEN`)"
            }
            Auth::Cookie => "the dashboard session expired or was signed out; sign in again",
        };
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, message));
    }
    Ok(auth)
}

/// Compares tokens without leaking where they first differ through timing.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the admin token (204 when it is right).
#[utoipa::path(get, path = "/api/v1/auth", tag = "node", security(("admin" = [])), responses(
    (status = 204, description = "the token is right"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn auth() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn require_admin(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if request.headers().contains_key(SIGNATURE_HEADER) {
        return match check_signed(&app, request).await {
            Ok(request) => next.run(request).await,
            Err(e) => e.into_response(),
        };
    }
    match check_admin(&app, request.headers()) {
        Ok(_) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// An admin action another member forwarded for its dashboard: an HMAC under the shared admin token of the
/// method, path, this node's name, the time and the body (`session::sign`), never the token.
pub(crate) const SIGNATURE_HEADER: &str = "x-xnode-signature";

/// Checks a forwarded action's signature, reading its (small) body to do so, and hands the request on.
async fn check_signed(app: &AppState, request: Request) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let header = parts.headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = axum::body::to_bytes(body, SMALL_BODY)
        .await
        .map_err(|_| ApiError::bad_request(format!("a signed action's body must be under {SMALL_BODY} bytes")))?;
    let signed =
        session::Signed { method: parts.method.as_str(), path: parts.uri.path(), target: app.node.name(), body: &body };
    app.sessions
        .verify(&app.config.admin_token, &header, &signed)
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, format!("forwarded action refused: {why}")))?;
    Ok(Request::from_parts(parts, axum::body::Body::from(body)))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Alive: the process answers. Orchestrators restart a node that stops answering this.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process serves", body = String, content_type = "text/plain")))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Readiness {
    /// Whether the node is ready.
    ready: bool,
    /// Whether the block store can be read.
    store: bool,
    /// Whether the node joined a cluster (or starts one alone).
    joined: bool,
    /// Why it is not ready.
    reason: Option<String>,
}

/// Ready: the store is open and the node has joined a cluster (or is configured to start one alone).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "ready", body = Readiness),
    (status = 503, description = "not ready, with the reason", body = Readiness)))]
pub(crate) async fn readyz(State(app): State<AppState>) -> Response {
    let node = &app.node;
    let store = node.store_stats().is_ok();
    let joined = node.joined() || node.starts_alone();
    // A stuck node (allocation loop or blocking work not moving) is not ready, so orchestrators see it.
    let fatal = node.fatal_error().or_else(|| node.stuck());
    let ready = store && joined && fatal.is_none();
    let reason = fatal.or_else(|| {
        (!store)
            .then(|| "the block store cannot be read".to_string())
            .or_else(|| (!joined).then(|| "no other member reachable yet; check XNODE_KNOWN_PEERS".to_string()))
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { ready, store, joined, reason })).into_response()
}

/// The node's summary.
#[utoipa::path(get, path = "/api/v1/status", tag = "node", responses((status = 200, description = "name, version, phase, storage, members alive and dead", body = Object)))]
pub(crate) async fn status(State(app): State<AppState>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(app.node.status().await?))
}

/// Every member as this node sees it.
#[utoipa::path(get, path = "/api/v1/members", tag = "cluster", responses((status = 200, description = "name, state (Alive, Dead, Left), gossip address, metadata", body = [Object])))]
pub(crate) async fn members(State(app): State<AppState>) -> Json<Vec<Member>> {
    Json(app.node.members())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Storage {
    /// Hard capacity in bytes (18446744073709551615: unlimited).
    capacity: u64,
    /// Bytes of blocks held.
    used: u64,
    /// Bytes still free under the capacity.
    free: u64,
    /// Blocks held.
    blocks: u64,
    /// Files pinned here.
    files: u64,
    /// Bytes the store occupies on disk.
    disk_bytes: u64,
    /// Bytes held above the capacity (after a shrink): the node takes no new blocks and hands these off to the
    /// other members. 0 normally.
    over_capacity: u64,
}

/// The local store's capacity and use.
#[utoipa::path(get, path = "/api/v1/storage", tag = "node", responses((status = 200, body = Storage)))]
pub(crate) async fn storage(State(app): State<AppState>) -> Result<Json<Storage>, ApiError> {
    let repo = app.node.repo().clone();
    let s = files::blocking(move || repo.stats()).await?;
    Ok(Json(Storage {
        capacity: s.capacity,
        used: s.bytes_held,
        free: s.free,
        blocks: s.blocks,
        files: s.pins,
        disk_bytes: s.disk_bytes,
        over_capacity: s.bytes_held.saturating_sub(s.capacity),
    }))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct Resize {
    /// The new hard capacity: bytes as a number, or a size such as `"10GiB"` or `"500MB"`; at least 1 MiB.
    #[schema(value_type = Object)]
    capacity: serde_json::Value,
}

/// The largest capacity a resize accepts short of "unlimited": 1 EiB. A larger number is a unit mistake, not a disk.
pub(crate) const MAX_CAPACITY: u64 = 1 << 60;

/// A capacity as the API and the dashboard accept it: a whole number of bytes (JSON number or string) or a size
/// with units (`10GiB`, `500MB`), from [`xnode_storage::MIN_CAPACITY`] to [`MAX_CAPACITY`], or `u64::MAX` (what
/// `GET /api/v1/storage` shows for unlimited). Anything else is refused with what to send instead.
pub(crate) fn parse_capacity(value: &serde_json::Value) -> Result<u64, ApiError> {
    let unprocessable = |what: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, what);
    let bytes = match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| s.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()))
        }
        _ => None,
    };
    let Some(bytes) = bytes else {
        return Err(unprocessable(format!(
            "capacity {value} is not a size; send a whole number of bytes or a string such as \"10GiB\""
        )));
    };
    if bytes == u64::MAX {
        return Ok(bytes);
    }
    if !(xnode_storage::MIN_CAPACITY..=MAX_CAPACITY).contains(&bytes) {
        return Err(unprocessable(format!(
            "capacity {bytes} bytes is out of range: use at least {} bytes (1 MiB) and at most {MAX_CAPACITY} (1 EiB)",
            xnode_storage::MIN_CAPACITY
        )));
    }
    Ok(bytes)
}

/// `PUT /api/v1/storage {"capacity": SIZE}`: a new hard capacity, kept across restarts (it wins over
/// XNODE_STORAGE_MAX from then on). Below what is held it is accepted: the node is over capacity, takes no new blocks
/// and hands its excess to the other members (placement weighs it by the new capacity), dropping each copy once its
/// new holders have it; `over_capacity` shows how much is left to hand off. A node with no live peer refuses (409),
/// since nobody could take the excess.
#[utoipa::path(put, path = "/api/v1/storage", tag = "node", request_body = Resize, security(("admin" = [])), responses(
    (status = 200, description = "the new figures (`over_capacity` > 0: handing off the excess)", body = Storage),
    (status = 400, description = "not a JSON object with a capacity", body = ErrorBody),
    (status = 401, description = "no or wrong admin token", body = ErrorBody),
    (status = 422, description = "a capacity that is not a size, below 1 MiB or above 1 EiB", body = ErrorBody),
    (status = 409, description = "below what the node holds, with no live peer to take the excess", body = ErrorBody)))]
pub(crate) async fn set_storage(
    State(app): State<AppState>,
    extract::Json(resize): extract::Json<Resize>,
) -> Result<Json<Storage>, ApiError> {
    let capacity = parse_capacity(&resize.capacity)?;
    let repo = app.node.repo().clone();
    let held = files::blocking({
        let repo = repo.clone();
        move || repo.stats()
    })
    .await?
    .bytes_held;
    if capacity < held && !app.node.joined() {
        return Err(ApiError {
            retry_after: None,
            status: StatusCode::CONFLICT,
            message: format!(
                "{} holds {held} bytes and has no live peer to hand the excess to; a capacity of {} would drop \
                 data. Remove files first, or resize once other members are up",
                app.node.name(),
                capacity
            ),
        });
    }
    files::blocking(move || repo.store().set_capacity(capacity).map_err(InstanceError::from)).await?;
    tracing::info!(
        capacity,
        held,
        "storage capacity set to {} ({}); kept across restarts",
        ui::human(capacity),
        if capacity < held {
            format!("over capacity: handing off {} to the other members", ui::human(held - capacity))
        } else {
            format!("{} held", ui::human(held))
        }
    );
    storage(State(app)).await
}

/// `POST /api/v1/shutdown`: leave the cluster, flush, exit 0 (as on SIGTERM).
#[utoipa::path(post, path = "/api/v1/shutdown", tag = "node", security(("admin" = [])), responses(
    (status = 202, description = "leaving", body = Object), (status = 401, body = ErrorBody)))]
pub(crate) async fn shutdown_node(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    tracing::info!("shutdown requested over the API");
    app.control.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "shutting_down": app.node.name() })))
}

/// `POST /api/v1/kill`: stop at once without leaving, so the cluster sees this node die (dashboard demos).
#[utoipa::path(post, path = "/api/v1/kill", tag = "node", security(("admin" = [])), responses(
    (status = 202, description = "stopping without leaving", body = Object), (status = 401, body = ErrorBody)))]
pub(crate) async fn kill_node(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    tracing::warn!("kill requested over the API: stopping without leaving the cluster");
    app.control.kill.cancel();
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "killed": app.node.name() })))
}

/// The most CIDs a block listing returns.
pub(crate) const MAX_LIMIT: usize = 1_000_000;

/// `?limit=N` on block listings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct Limit {
    /// How many CIDs to list at most (default 100, at most 1000000).
    limit: Option<usize>,
    /// List held CIDs after this one (in the order listed), to page through more than `limit`.
    after: Option<String>,
}

/// Blocks held and wanted: how many, and the first CIDs of each.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Blocks {
    /// Blocks this node holds.
    held: BlockList,
    /// Blocks placement gives this node that it does not hold yet.
    wanted: BlockList,
}

/// A count and the first CIDs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BlockList {
    /// How many in all.
    count: u64,
    /// The first ones (at most `limit`).
    cids: Vec<String>,
}

/// `GET /api/v1/blocks?limit=N[&after=CID]`: the blocks this node holds (paged) and the ones it wants.
#[utoipa::path(get, path = "/api/v1/blocks", tag = "node", params(Limit), responses((status = 200, body = Blocks)))]
pub(crate) async fn blocks(
    State(app): State<AppState>,
    Query(limit_q): Query<Limit>,
) -> Result<Json<Blocks>, ApiError> {
    let limit = match limit_q.limit {
        None => 100,
        Some(n) if n <= MAX_LIMIT => n,
        Some(n) => return Err(ApiError::bad_request(format!("limit={n} is above {MAX_LIMIT}; ask for fewer CIDs"))),
    };
    let after = limit_q.after.as_deref().map(files::parse_cid).transpose()?;
    let node = app.node.clone();
    let (count, cids) = files::blocking(move || node.held(limit, after.as_ref())).await?;
    let wanted = app.node.wanted(limit);
    Ok(Json(Blocks { held: BlockList { count, cids }, wanted: BlockList { count: wanted.count, cids: wanted.cids } }))
}
