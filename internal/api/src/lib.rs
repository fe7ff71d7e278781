//! The node's HTTP API (axum): `/healthz` and `/readyz` for orchestrators, JSON under `/api/v1` for the CLI, scripts
//! and (later) the dashboard.
//!
//! Owns routing, status codes and the JSON shapes. Handlers only read from the [`Node`] handle and serialize; no
//! business logic lives here. Never binds sockets itself: [`serve`] takes a listener so tests can bind port 0.

mod files;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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
    shutdown: CancellationToken,
}

/// The API's one error type: a status code and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn bad_request(message: impl ToString) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.to_string() }
    }

    pub(crate) fn internal(message: impl ToString) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.to_string() }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        let status = match &e {
            InstanceError::Store(StoreError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            InstanceError::Store(StoreError::NotPinned { .. }) => StatusCode::NOT_FOUND,
            InstanceError::Read(ReadError::NotFound(_)) => StatusCode::NOT_FOUND,
            InstanceError::Read(ReadError::WrongKind { .. }) => StatusCode::BAD_REQUEST,
            InstanceError::BadUpload(_) | InstanceError::Import(xnode_dag::ImportError::Options(_)) => {
                StatusCode::BAD_REQUEST
            }
            // The importer reports a store refusal through its sink; keep it a 507.
            InstanceError::Import(xnode_dag::ImportError::Sink(inner))
                if inner.downcast_ref::<StoreError>().is_some_and(|s| matches!(s, StoreError::Full { .. })) =>
            {
                StatusCode::INSUFFICIENT_STORAGE
            }
            InstanceError::Import(xnode_dag::ImportError::Read(_)) => StatusCode::BAD_REQUEST,
            InstanceError::P2p(xnode_p2p::P2pError::NotFound { .. }) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, message: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// The routes, over a running node. Reads are open; anything that changes the node needs the admin token.
/// Cancelling `shutdown` (also what `POST /api/v1/shutdown` does) stops the node gracefully.
pub fn router(node: Arc<Node>, config: ApiConfig, shutdown: CancellationToken) -> Router {
    let state = AppState { node, config: Arc::new(config), shutdown };
    let admin = Router::new()
        .route("/api/v1/files", post(files::upload))
        .route("/api/v1/files/{cid}", axum::routing::delete(files::remove))
        .route("/api/v1/storage", axum::routing::put(set_storage))
        .route("/api/v1/shutdown", post(shutdown_node))
        // Lets a client check its token before streaming a large upload the server would cut off.
        .route("/api/v1/auth", get(|| async { StatusCode::NO_CONTENT }))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/members", get(members))
        .route("/api/v1/files", get(files::list))
        .route("/api/v1/files/{cid}", get(files::download))
        .route("/api/v1/ls/{cid}", get(files::ls))
        .route("/api/v1/stat/{cid}", get(files::stat))
        .route("/api/v1/storage", get(storage))
        .route("/api/v1/blocks", get(blocks))
        .merge(admin)
        // Uploads are streamed and bounded by `max_upload_bytes` themselves; other bodies are tiny.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Accepts `Authorization: Bearer <token>` or the dashboard's `xnode_token` cookie.
async fn require_admin(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let token = &app.config.admin_token;
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').map(str::trim).find_map(|kv| kv.strip_prefix("xnode_token=")));
    if bearer == Some(token.as_str()) || cookie == Some(token.as_str()) {
        return next.run(request).await;
    }
    let message = if bearer.is_none() && cookie.is_none() {
        "this route needs the admin token: send `Authorization: Bearer <XNODE_ADMIN_TOKEN>` (the node logs it at start \
         when XNODE_ADMIN_TOKEN is unset)"
    } else {
        "wrong admin token; use the node's XNODE_ADMIN_TOKEN"
    };
    ApiError { status: StatusCode::UNAUTHORIZED, message: message.into() }.into_response()
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

/// Alive: the process answers. Orchestrators restart a node that stops answering this.
async fn healthz() -> &'static str {
    "ok\n"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    store: bool,
    joined: bool,
    reason: Option<String>,
}

/// Ready: the store is open and the node has joined a cluster (or is configured to start one alone).
async fn readyz(State(app): State<AppState>) -> Response {
    let node = &app.node;
    let store = node.store_stats().is_ok();
    let joined = node.joined() || node.starts_alone();
    let fatal = node.fatal_error();
    let ready = store && joined && fatal.is_none();
    let reason = fatal.or_else(|| {
        (!store)
            .then(|| "the block store cannot be read".to_string())
            .or_else(|| (!joined).then(|| "no other member reachable yet; check XNODE_KNOWN_PEERS".to_string()))
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(Readiness { ready, store, joined, reason })).into_response()
}

async fn status(State(app): State<AppState>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(app.node.status().await?))
}

async fn members(State(app): State<AppState>) -> Json<Vec<Member>> {
    Json(app.node.members())
}

#[derive(Serialize)]
struct Storage {
    capacity: u64,
    used: u64,
    free: u64,
    blocks: u64,
    files: u64,
    disk_bytes: u64,
}

async fn storage(State(app): State<AppState>) -> Result<Json<Storage>, ApiError> {
    let repo = app.node.repo().clone();
    let s = files::blocking(move || repo.stats()).await?;
    Ok(Json(Storage {
        capacity: s.capacity,
        used: s.bytes_held,
        free: s.free,
        blocks: s.blocks,
        files: s.pins,
        disk_bytes: s.disk_bytes,
    }))
}

#[derive(Deserialize)]
struct BlocksQuery {
    /// Most CIDs listed per set (default 1000).
    limit: Option<usize>,
}

/// `GET /api/v1/blocks?limit=N`: the blocks this node holds and those placement gives it that it lacks.
async fn blocks(
    State(app): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<BlocksQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    let node = app.node.clone();
    let (held_count, held) = files::blocking(move || node.held(limit)).await?;
    let wanted = app.node.wanted(limit);
    Ok(Json(serde_json::json!({
        "held": { "count": held_count, "cids": held },
        "wanted": wanted,
    })))
}

#[derive(Deserialize)]
struct Resize {
    /// Bytes.
    capacity: u64,
}

/// `PUT /api/v1/storage {"capacity": BYTES}`: a new hard capacity. Below what is held, the node takes no new blocks
/// and hands its excess to the other members (placement weighs it by the new capacity), dropping each copy once its
/// new holders have it; a node with no live peer refuses, since nobody could take the excess.
async fn set_storage(State(app): State<AppState>, Json(resize): Json<Resize>) -> Result<Json<Storage>, ApiError> {
    let repo = app.node.repo().clone();
    let held = files::blocking({
        let repo = repo.clone();
        move || repo.stats()
    })
    .await?
    .bytes_held;
    if resize.capacity < held && !app.node.joined() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "this node holds {held} bytes and has no live peer to hand the excess to; a capacity of {} would \
                 drop data. Remove files first, or resize once other members are up",
                resize.capacity
            ),
        });
    }
    files::blocking(move || repo.store().set_capacity(resize.capacity).map_err(InstanceError::from)).await?;
    storage(State(app)).await
}

/// `POST /api/v1/shutdown`: leave the cluster, flush, exit 0 (as on SIGTERM).
async fn shutdown_node(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    tracing::info!("shutdown requested over the API");
    app.shutdown.cancel();
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "shutting_down": app.node.name() })))
}
