//! The IPFS Pinning Service API under `/pins` (ipfs/pinning-services-api-spec, `ipfs-pinning-service.yaml`):
//! `GET /pins` (filters `cid`, `name`, `match`, `status`, `before`, `after`, `limit`, `meta`; newest first, paged
//! with `before`), `POST /pins`, `GET`/`POST`/`DELETE /pins/{requestid}`. The access token is the admin token, as a
//! bearer. Errors are the spec's `{"error": {"reason", "details"}}`.
//!
//! Requests live in `xnode_instance::pinning` (their own sled database, so they survive restarts); a worker per
//! request fetches the DAG and pins it like an add, so it becomes a catalog file like any other. At most
//! [`WORKERS`] requests are fetched at once; the rest wait queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use xnode_instance::pinning::{PinFilter, PinRequest, PinState, Pinning, TextMatch};
use xnode_instance::Node;

use crate::{constant_time_eq, presented_token, AppState, Auth};

/// Requests fetched at once.
const WORKERS: usize = 8;

/// The pinning service of one node: its request database and the workers' permits.
#[derive(Debug)]
pub(crate) struct PinService {
    pinning: Option<Arc<Pinning>>,
    workers: Arc<Semaphore>,
}

impl PinService {
    /// Opens the request database under the node's data dir and resumes unfinished requests.
    pub(crate) fn start(node: &Arc<Node>, fetch_timeout: Duration) -> Self {
        let dir = node.repo().store().dir().parent().map(|d| d.join("pinning"));
        let pinning = match dir.map(|d| Pinning::open(&d)) {
            Some(Ok(p)) => Some(Arc::new(p)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "the Pinning Service API is off: its database could not be opened");
                None
            }
            None => None,
        };
        let service = Self { pinning, workers: Arc::new(Semaphore::new(WORKERS)) };
        if let Some(p) = &service.pinning {
            for id in p.unfinished().unwrap_or_default() {
                service.spawn(node.clone(), p.clone(), id, fetch_timeout);
            }
        }
        service
    }

    fn spawn(&self, node: Arc<Node>, pinning: Arc<Pinning>, id: String, timeout: Duration) {
        let workers = self.workers.clone();
        tokio::spawn(async move {
            let Ok(_permit) = workers.acquire_owned().await else { return };
            xnode_instance::pinning::process(node, pinning, id, timeout).await;
        });
    }
}

/// The spec's error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Failure {
    error: FailureError,
}

/// `reason` is a short code (`BAD_REQUEST`, `UNAUTHORIZED`, `NOT_FOUND`, `INTERNAL_SERVER_ERROR`), `details` says
/// what to do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FailureError {
    reason: String,
    details: String,
}

/// An error of the pinning routes.
#[derive(Debug)]
pub(crate) struct PinError(StatusCode, String);

impl PinError {
    fn bad(details: impl ToString) -> Self {
        Self(StatusCode::BAD_REQUEST, details.to_string())
    }

    fn internal(details: impl ToString) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, details.to_string())
    }

    fn not_found(id: &str) -> Self {
        Self(StatusCode::NOT_FOUND, format!("no pin request {id:?}"))
    }
}

impl IntoResponse for PinError {
    fn into_response(self) -> Response {
        let reason = self.0.canonical_reason().unwrap_or("ERROR").to_uppercase().replace(' ', "_");
        (self.0, Json(Failure { error: FailureError { reason, details: self.1 } })).into_response()
    }
}

/// The access token of the Pinning Service API is the admin token, as a bearer (no cookies: no browser flows).
pub(crate) async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    match presented_token(request.headers()) {
        Some((Auth::Bearer, token)) if constant_time_eq(token.as_bytes(), app.config.admin_token.as_bytes()) => {
            next.run(request).await
        }
        _ => PinError(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <XNODE_ADMIN_TOKEN>` (the node logs it at start when unset)".into(),
        )
        .into_response(),
    }
}

fn pinning(app: &AppState) -> Result<Arc<Pinning>, PinError> {
    app.pins
        .pinning
        .clone()
        .ok_or_else(|| PinError::internal("the pin request database could not be opened; see the node's log"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, xnode_instance::pinning::PinningError> + Send + 'static,
) -> Result<T, PinError> {
    tokio::task::spawn_blocking(f).await.map_err(PinError::internal)?.map_err(PinError::internal)
}

/// The object to pin.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct Pin {
    /// The CID to pin.
    cid: String,
    /// An optional name (at most 255 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Multiaddrs that have the data (dialled first).
    #[serde(default)]
    origins: Vec<String>,
    /// The client's own key/value pairs.
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

/// A request and where it stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PinStatus {
    /// Unique id of the request.
    requestid: String,
    /// `queued`, `pinning`, `pinned` or `failed`.
    status: String,
    /// When it was made (RFC 3339).
    created: String,
    /// What was asked for.
    pin: Pin,
    /// Multiaddrs of the cluster's members, for the client to connect to and send data.
    delegates: Vec<String>,
    /// Extra information (`reason` of a failure).
    info: BTreeMap<String, String>,
}

/// A page of requests.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PinResults {
    /// How many requests match in all.
    count: u64,
    /// At most `limit` of them, newest first.
    results: Vec<PinStatus>,
}

fn delegates(node: &Node) -> Vec<String> {
    let mut members = node.members();
    members.sort_by_key(|m| !m.is_self);
    members
        .into_iter()
        .filter(|m| m.state == xnode_gossip::MemberState::Alive)
        .flat_map(|m| m.meta.p2p_addrs)
        .take(20)
        .collect()
}

fn status_of(r: PinRequest, delegates: &[String]) -> PinStatus {
    let state = match r.status {
        PinState::Queued => "queued",
        PinState::Pinning => "pinning",
        PinState::Pinned => "pinned",
        PinState::Failed => "failed",
    };
    PinStatus {
        requestid: r.requestid,
        status: state.to_string(),
        created: humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.created_ms)).to_string(),
        pin: Pin { cid: r.cid, name: r.name, origins: r.origins, meta: r.meta },
        delegates: delegates.to_vec(),
        info: r.info,
    }
}

/// `GET /pins` query parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Comma-separated CIDs (at most 10).
    cid: Option<String>,
    /// A name to match (see `match`).
    name: Option<String>,
    /// `exact` (default), `iexact`, `partial`, `ipartial`.
    r#match: Option<String>,
    /// Comma-separated states (default `pinned`).
    status: Option<String>,
    /// Only requests created before this time (RFC 3339).
    before: Option<String>,
    /// Only requests created after this time (RFC 3339).
    after: Option<String>,
    /// Results per page, 1 to 1000 (default 10).
    limit: Option<usize>,
    /// A JSON object: only requests whose meta holds all of its pairs.
    meta: Option<String>,
}

fn time_ms(s: &str, what: &str) -> Result<u64, PinError> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        PinError::bad(format!("{what}={s:?} is not an RFC 3339 time such as 2020-07-27T17:32:28Z ({e})"))
    })?;
    Ok(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// `GET /pins`: requests matching the filters, newest first.
#[utoipa::path(get, path = "/pins", tag = "pins", params(ListParams), security(("admin" = [])), responses(
    (status = 200, body = PinResults), (status = 400, body = Failure), (status = 401, body = Failure)))]
pub(crate) async fn list(
    State(app): State<AppState>,
    Query(q): Query<ListParams>,
) -> Result<Json<PinResults>, PinError> {
    let split = |s: &Option<String>| -> Vec<String> {
        s.as_deref()
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let cids = split(&q.cid);
    if cids.len() > 10 {
        return Err(PinError::bad("at most 10 CIDs per query"));
    }
    let status = match q.status.as_deref() {
        None => vec![PinState::Pinned],
        Some(_) => split(&q.status).iter().map(|s| s.parse()).collect::<Result<_, _>>().map_err(PinError::bad)?,
    };
    let limit = q.limit.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(PinError::bad("limit must be between 1 and 1000"));
    }
    let meta = match q.meta.as_deref() {
        None => BTreeMap::new(),
        Some(m) => {
            serde_json::from_str(m).map_err(|e| PinError::bad(format!("meta must be a JSON object of strings: {e}")))?
        }
    };
    let filter = PinFilter {
        cids,
        name: q.name.clone(),
        text_match: q.r#match.as_deref().map_or(Ok(TextMatch::Exact), str::parse).map_err(PinError::bad)?,
        status,
        before_ms: q.before.as_deref().map(|b| time_ms(b, "before")).transpose()?,
        after_ms: q.after.as_deref().map(|a| time_ms(a, "after")).transpose()?,
        meta,
        limit,
    };
    let p = pinning(&app)?;
    let (count, results) = blocking(move || p.list(&filter)).await?;
    let delegates = delegates(&app.node);
    Ok(Json(PinResults { count, results: results.into_iter().map(|r| status_of(r, &delegates)).collect() }))
}

fn check_pin(pin: &Pin) -> Result<(), PinError> {
    cid::Cid::try_from(pin.cid.as_str()).map_err(|e| PinError::bad(format!("{:?} is not a CID: {e}", pin.cid)))?;
    if pin.name.as_ref().is_some_and(|n| n.chars().count() > 255) {
        return Err(PinError::bad("name is longer than 255 characters"));
    }
    if pin.origins.len() > 20 {
        return Err(PinError::bad("at most 20 origins"));
    }
    Ok(())
}

async fn create(app: &AppState, pin: Pin) -> Result<PinStatus, PinError> {
    check_pin(&pin)?;
    let p = pinning(app)?;
    let p2 = p.clone();
    let request = blocking(move || p2.add(pin.cid, pin.name, pin.origins, pin.meta)).await?;
    app.pins.spawn(app.node.clone(), p, request.requestid.clone(), app.config.fetch_timeout);
    Ok(status_of(request, &delegates(&app.node)))
}

/// `POST /pins`: a new request (202, queued).
#[utoipa::path(post, path = "/pins", tag = "pins", request_body = Pin, security(("admin" = [])), responses(
    (status = 202, body = PinStatus), (status = 400, body = Failure), (status = 401, body = Failure)))]
pub(crate) async fn add(State(app): State<AppState>, Json(pin): Json<Pin>) -> Result<Response, PinError> {
    Ok((StatusCode::ACCEPTED, Json(create(&app, pin).await?)).into_response())
}

/// `GET /pins/{requestid}`.
#[utoipa::path(get, path = "/pins/{requestid}", tag = "pins", params(("requestid" = String, Path)), security(("admin" = [])),
    responses((status = 200, body = PinStatus), (status = 401, body = Failure), (status = 404, body = Failure)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<PinStatus>, PinError> {
    let p = pinning(&app)?;
    let key = id.clone();
    let request = blocking(move || p.get(&key)).await?.ok_or_else(|| PinError::not_found(&id))?;
    Ok(Json(status_of(request, &delegates(&app.node))))
}

/// `POST /pins/{requestid}`: replaces a request with a new one (new id); the old one is removed, and its CID
/// unpinned unless the new request (or another) asks for it.
#[utoipa::path(post, path = "/pins/{requestid}", tag = "pins", params(("requestid" = String, Path)), request_body = Pin,
    security(("admin" = [])), responses((status = 202, body = PinStatus), (status = 400, body = Failure),
    (status = 401, body = Failure), (status = 404, body = Failure)))]
pub(crate) async fn replace(
    State(app): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Json(pin): Json<Pin>,
) -> Result<Response, PinError> {
    check_pin(&pin)?;
    let p = pinning(&app)?;
    let key = id.clone();
    if blocking(move || p.get(&key)).await?.is_none() {
        return Err(PinError::not_found(&id));
    }
    let created = create(&app, pin).await?;
    remove_request(&app, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(created)).into_response())
}

/// `DELETE /pins/{requestid}`: forgets the request and, unless another request asks for its CID or another member
/// added it, removes the file from the cluster (as `DELETE /api/v1/files/{cid}` does).
#[utoipa::path(delete, path = "/pins/{requestid}", tag = "pins", params(("requestid" = String, Path)), security(("admin" = [])),
    responses((status = 202, description = "removed"), (status = 401, body = Failure), (status = 404, body = Failure)))]
pub(crate) async fn remove(State(app): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<StatusCode, PinError> {
    remove_request(&app, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn remove_request(app: &AppState, id: &str) -> Result<(), PinError> {
    let p = pinning(app)?;
    let key = id.to_string();
    let removed = blocking(move || p.remove(&key)).await?.ok_or_else(|| PinError::not_found(id))?;
    let p = pinning(app)?;
    let (cid, except) = (removed.cid.clone(), removed.requestid.clone());
    let wanted = blocking(move || p.others_want(&cid, &except)).await?;
    // Only a file this member added: a CID another member (or an add elsewhere) put in the catalog stays.
    let added_elsewhere =
        app.node.files_health().iter().any(|f| f.root == removed.cid && f.added_by != app.node.name());
    if !wanted && !added_elsewhere && removed.status == PinState::Pinned {
        if let Ok(cid) = cid::Cid::try_from(removed.cid.as_str()) {
            if let Err(e) = app.node.remove_file(cid).await {
                tracing::warn!(%cid, error = %e, "could not remove an unpinned request's file");
            }
        }
    }
    Ok(())
}
