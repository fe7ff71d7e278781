//! Admin actions on any member, not only this one: the node serving the dashboard forwards them to the target's
//! API (its `api_url` from gossip), signed with an HMAC under the admin token that names the target, the action
//! and the time (`session.rs`). The token itself never leaves the node: a member gossiping a hostile `api_url`
//! receives one signature for one action on itself, usable once. That works when members share one admin token
//! (`XNODE_ADMIN_TOKEN`, or `XNODE_ADMIN_TOKEN_FILE` on a shared volume); a member that refuses it is named.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use xnode_gossip::{Member, MemberState};

use crate::{ApiError, AppState, Resize};

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do on a member.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Action {
    /// Stop it at once without leaving (the cluster declares it dead).
    Kill,
    /// Set its storage capacity in bytes.
    Resize(u64),
    /// Leave the cluster politely and stop.
    Shutdown,
}

/// The member called `name`, or a 404 naming the known ones.
pub(crate) fn member(app: &AppState, name: &str) -> Result<Member, ApiError> {
    let members = app.node.members();
    let known = members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    members
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no member is called {name:?}; members: {known}")))
}

/// Runs `action` on the member `name`: here if it is this node, else through its API with `token`.
pub(crate) async fn run(app: &AppState, name: &str, action: Action, token: &str) -> Result<String, ApiError> {
    let target = member(app, name)?;
    if target.is_self {
        return match action {
            Action::Kill => {
                let _accepted = crate::kill_node(State(app.clone())).await;
                Ok(killed(name))
            }
            Action::Shutdown => {
                let _accepted = crate::shutdown_node(State(app.clone())).await;
                Ok(left(name))
            }
            Action::Resize(capacity) => {
                let resize = Resize { capacity: capacity.into() };
                let figures = crate::set_storage(State(app.clone()), crate::extract::Json(resize)).await?;
                Ok(resized(name, capacity, figures.0.used))
            }
        };
    }
    if target.state != MemberState::Alive {
        let state = format!("{:?}", target.state).to_lowercase();
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{name} is {state}; only a live member can do that")));
    }
    let base = target.meta.api_url.trim_end_matches('/').to_string();
    if base.is_empty() {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{name} does not advertise an API address")));
    }
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} advertises an API address that is not http(s)"),
        ));
    }
    let (method, path, body) = match action {
        Action::Kill => ("POST", "/api/v1/kill", String::new()),
        Action::Shutdown => ("POST", "/api/v1/shutdown", String::new()),
        Action::Resize(capacity) => ("PUT", "/api/v1/storage", serde_json::json!({ "capacity": capacity }).to_string()),
    };
    let signature = crate::session::signature_header(
        token,
        &crate::session::Signed { method, path, target: name, body: body.as_bytes() },
    );
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(FORWARD_TIMEOUT).build();
        let sent = agent
            .request(method, &format!("{base}{path}"))
            .set(crate::SIGNATURE_HEADER, &signature)
            .set("Content-Type", "application/json")
            .send_string(&body);
        match sent {
            Ok(response) => Ok(match action {
                Action::Kill => killed(&name),
                Action::Shutdown => left(&name),
                Action::Resize(capacity) => {
                    let figures: serde_json::Value = response.into_json().unwrap_or_default();
                    resized(&name, capacity, figures["used"].as_u64().unwrap_or(0))
                }
            }),
            Err(e) => Err(remote_error(&name, &base, e)),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("forwarding failed: {e}")))?
}

/// What a kill does, and how to undo it: nothing here can start a process again.
pub(crate) fn killed(name: &str) -> String {
    format!(
        "{name} stopped without leaving, as in a crash: the others mark it dead within seconds and repair its \
         copies. It stays down until started again (docker start on its container, or xnode run on its machine)"
    )
}

/// A resize's outcome; below what the member holds, how much it hands off.
pub(crate) fn resized(name: &str, capacity: u64, used: u64) -> String {
    let human = crate::ui::human;
    if used > capacity {
        format!(
            "{name} now has a capacity of {}; it holds {}, so it is over capacity and hands off {} to the other \
             members (it takes no new blocks meanwhile)",
            human(capacity),
            human(used),
            human(used - capacity)
        )
    } else {
        format!("{name} now has a capacity of {} ({} used)", human(capacity), human(used))
    }
}

/// What a shutdown does.
pub(crate) fn left(name: &str) -> String {
    format!(
        "{name} is leaving the cluster politely and stopping (shown as left, never dead); its copies move to the \
         others. Start it again with docker start on its container or xnode run on its machine"
    )
}

/// Reads another member's API (no token): `GET {api_url}{path}`.
pub(crate) async fn read(app: &AppState, name: &str, path: &str) -> Result<serde_json::Value, ApiError> {
    let target = member(app, name)?;
    let base = target.meta.api_url.trim_end_matches('/').to_string();
    let (name, url) = (name.to_string(), format!("{base}{path}"));
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(FORWARD_TIMEOUT).build();
        agent
            .get(&url)
            .call()
            .map_err(|e| remote_error(&name, &base, e))?
            .into_json::<serde_json::Value>()
            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("{name} sent an unreadable answer: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("forwarding failed: {e}")))?
}

fn remote_error(name: &str, base: &str, e: ureq::Error) -> ApiError {
    match e {
        ureq::Error::Status(401, _) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{name} refused this admin token: every member must share one XNODE_ADMIN_TOKEN (set the same value \
                 on all nodes, or point XNODE_ADMIN_TOKEN_FILE at one shared file)"
            ),
        ),
        ureq::Error::Status(code, response) => {
            let body = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(body);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            ApiError::new(status, format!("{name}: {message}"))
        }
        ureq::Error::Transport(t) => {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("{name} does not answer at {base} ({t})"))
        }
    }
}
