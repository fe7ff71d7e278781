//! Cluster-wide views and actions for the CLI and scripts: a member's kill, shutdown and resize by name (forwarded
//! like the dashboard's, see `forward.rs`), and one file's replication as it really is: which members hold how many
//! of its blocks, asked of each member (`POST /api/v1/blocks/has`), not inferred from placement.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use cid::Cid;
use serde::{Deserialize, Serialize};
use xnode_gossip::MemberState;

use crate::forward::{self, Action};
use crate::{extract, files, ApiError, AppState, ErrorBody, Resize};

/// The most blocks of one file a holders answer walks; past it the answer says it counted only these.
pub(crate) const MAX_WALK: usize = 200_000;

/// CIDs per `has` question: a CIDv1 string is about 60 bytes, so 500 stay well under the 64 KiB body bound.
const HAS_BATCH: usize = 500;

/// How long one member may take to answer one `has` question.
const HAS_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /api/v1/members/{name}/kill`: stop a member at once without leaving (forwarded if it is another).
#[utoipa::path(post, path = "/api/v1/members/{name}/kill", tag = "cluster", params(("name" = String, Path)),
    security(("admin" = [])), responses(
    (status = 202, description = "the member is stopping without leaving", body = Object),
    (status = 401, body = ErrorBody), (status = 403, description = "the member refused this node's token", body = ErrorBody),
    (status = 404, description = "no such member", body = ErrorBody),
    (status = 409, description = "the member is not alive", body = ErrorBody)))]
pub(crate) async fn kill(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    act(&app, &name, Action::Kill).await
}

/// `POST /api/v1/members/{name}/shutdown`: a member leaves the cluster politely and stops (forwarded if another).
#[utoipa::path(post, path = "/api/v1/members/{name}/shutdown", tag = "cluster", params(("name" = String, Path)),
    security(("admin" = [])), responses(
    (status = 202, description = "the member is leaving", body = Object),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody)))]
pub(crate) async fn shutdown(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    act(&app, &name, Action::Shutdown).await
}

/// `PUT /api/v1/members/{name}/storage {"capacity": SIZE}`: resize a member (forwarded if another).
#[utoipa::path(put, path = "/api/v1/members/{name}/storage", tag = "cluster", params(("name" = String, Path)),
    request_body = Resize, security(("admin" = [])), responses(
    (status = 200, description = "resized", body = Object),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 409, description = "not alive, or below what it holds with no live peer", body = ErrorBody),
    (status = 422, body = ErrorBody)))]
pub(crate) async fn resize(
    State(app): State<AppState>,
    UrlPath(name): UrlPath<String>,
    extract::Json(resize): extract::Json<Resize>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let capacity = crate::parse_capacity(&resize.capacity)?;
    let (_, Json(mut body)) = act(&app, &name, Action::Resize(capacity)).await?;
    body["capacity"] = capacity.into();
    Ok((StatusCode::OK, Json(body)))
}

async fn act(app: &AppState, name: &str, action: Action) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let message = forward::run(app, name, action, &app.config.admin_token).await?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "member": name, "message": message }))))
}

/// `POST /api/v1/blocks/has` body: CIDs to look up.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct HasQuestion {
    /// CIDs (strings), at most a few hundred per question.
    cids: Vec<String>,
}

/// How many of the asked CIDs this node stores.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct HasAnswer {
    /// Of the CIDs asked, how many are in this node's store.
    held: u64,
}

/// `POST /api/v1/blocks/has`: how many of the given blocks this node stores (what `holders` asks each member).
#[utoipa::path(post, path = "/api/v1/blocks/has", tag = "node", request_body = HasQuestion, responses(
    (status = 200, body = HasAnswer), (status = 400, description = "a CID that is not one", body = ErrorBody)))]
pub(crate) async fn has(
    State(app): State<AppState>,
    extract::Json(q): extract::Json<HasQuestion>,
) -> Result<Json<HasAnswer>, ApiError> {
    let cids = q.cids.iter().map(|c| files::parse_cid(c)).collect::<Result<Vec<_>, _>>()?;
    let store = app.node.repo().store().clone();
    let held = files::blocking(move || {
        let mut n = 0;
        for cid in &cids {
            n += u64::from(store.has(cid)?);
        }
        Ok(n)
    })
    .await?;
    Ok(Json(HasAnswer { held }))
}

/// One file's replication: which members hold how many of its blocks.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Holders {
    /// The file's root CID.
    pub(crate) root: String,
    /// Blocks counted (its whole DAG unless `complete` is false).
    pub(crate) blocks: u64,
    /// False when the walk stopped at [`MAX_WALK`] blocks: the counts are of the first ones.
    pub(crate) complete: bool,
    /// The cluster's replication factor: each block should have this many holders.
    pub(crate) replication: usize,
    /// Every member, with how many of the counted blocks it holds (alive members only; others show none).
    pub(crate) members: Vec<Holding>,
}

/// A member's share of one file.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Holding {
    /// The member's name.
    pub(crate) name: String,
    /// `alive`, `dead` or `left`.
    pub(crate) state: String,
    /// Blocks of the file it holds; absent when it is not alive or did not answer.
    pub(crate) blocks: Option<u64>,
    /// Why `blocks` is absent for a live member.
    pub(crate) error: Option<String>,
}

/// `GET /api/v1/files/{cid}/holders`: which members hold how many of a file's blocks, asked of every live member.
#[utoipa::path(get, path = "/api/v1/files/{cid}/holders", tag = "files", params(("cid" = String, Path)), responses(
    (status = 200, body = Holders), (status = 400, body = ErrorBody),
    (status = 404, description = "this node has no block of the file", body = ErrorBody)))]
pub(crate) async fn holders(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
) -> Result<Json<Holders>, ApiError> {
    Ok(Json(holders_of(&app, files::parse_cid(&cid)?).await?))
}

/// Which members hold how many of the blocks of the DAG under `root`.
pub(crate) async fn holders_of(app: &AppState, root: Cid) -> Result<Holders, ApiError> {
    let store = app.node.repo().store().clone();
    let (cids, complete) = files::blocking(move || walk(&store, root)).await?;
    if cids.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("this node holds no block of {root}; check the CID with `xnode ls`, or ask another member"),
        ));
    }
    let strings: Vec<String> = cids.iter().map(ToString::to_string).collect();
    let mut members = Vec::new();
    for m in app.node.members() {
        let state = format!("{:?}", m.state).to_lowercase();
        let (blocks, error) = if m.state != MemberState::Alive {
            (None, None)
        } else if m.is_self {
            let store = app.node.repo().store().clone();
            let cids = cids.clone();
            let n = files::blocking(move || {
                let mut n = 0;
                for cid in &cids {
                    n += u64::from(store.has(cid)?);
                }
                Ok(n)
            })
            .await?;
            (Some(n), None)
        } else {
            match ask(m.meta.api_url.trim_end_matches('/').to_string(), strings.clone()).await {
                Ok(n) => (Some(n), None),
                Err(e) => (None, Some(e)),
            }
        };
        members.push(Holding { name: m.name, state, blocks, error });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Holders {
        root: root.to_string(),
        blocks: cids.len() as u64,
        complete,
        replication: app.node.replication(),
        members,
    })
}

/// The blocks of the DAG under `root`, as far as this node can see them: every member keeps a file's interior
/// blocks, so a block it lacks is a leaf (or lost) and is counted without being descended into.
fn walk(store: &xnode_storage::Store, root: Cid) -> Result<(Vec<Cid>, bool), xnode_instance::InstanceError> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut stack = vec![root];
    let mut any_local = false;
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        if order.len() == MAX_WALK {
            return Ok((order, false));
        }
        order.push(cid);
        if let Some(data) = store.get(&cid)? {
            any_local = true;
            if let Ok(links) = xnode_dag::block_links(&cid, &data) {
                stack.extend(links.into_iter().rev());
            }
        }
    }
    if !any_local {
        order.clear();
    }
    Ok((order, true))
}

/// Asks a member's API how many of `cids` it stores, in batches.
async fn ask(base: String, cids: Vec<String>) -> Result<u64, String> {
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err("it advertises no http(s) API address".into());
    }
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(HAS_TIMEOUT).build();
        let mut held = 0;
        for batch in cids.chunks(HAS_BATCH) {
            let answer: HasAnswer = agent
                .post(&format!("{base}/api/v1/blocks/has"))
                .send_json(serde_json::json!({ "cids": batch }))
                .map_err(|e| format!("no answer from {base}: {e}"))?
                .into_json()
                .map_err(|e| format!("unreadable answer from {base}: {e}"))?;
            held += answer.held;
        }
        Ok(held)
    })
    .await
    .map_err(|e| format!("asking failed: {e}"))?
}
