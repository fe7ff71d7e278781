//! The node's HTTP API (axum): `/healthz` and `/readyz` for orchestrators, JSON under `/api/v1` for the CLI, scripts
//! and (later) the dashboard.
//!
//! Owns routing, status codes and the JSON shapes. Handlers only read from the [`Node`] handle and serialize; no
//! business logic lives here. Never binds sockets itself: [`serve`] takes a listener so tests can bind port 0.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xnode_gossip::Member;
use xnode_instance::{InstanceError, Node, NodeStatus};

/// The API's one error type: a status code and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// The routes, over a running node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/members", get(members))
        .with_state(node)
        .layer(tower_http::trace::TraceLayer::new_for_http())
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
async fn readyz(State(node): State<Arc<Node>>) -> Response {
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

async fn status(State(node): State<Arc<Node>>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(node.status().await?))
}

async fn members(State(node): State<Arc<Node>>) -> Json<Vec<Member>> {
    Json(node.members())
}
