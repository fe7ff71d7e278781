//! The dashboard at `/`: one page and its htmx fragments, rendered from askama templates in `templates/`, with
//! htmx and its SSE extension served from the binary (vendored by `scripts/vendor-htmx.sh`, so it works offline).
//!
//! Handlers read the node and render one view struct per fragment; actions reuse the API's own handlers (and
//! [`crate::forward`] for other members). Signing in opens a session whose random id (never the token) lives in an
//! HttpOnly, SameSite=Strict cookie, and every state-changing request must prove it comes from this page (see
//! [`crate::check_admin`]).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::extract::{DefaultBodyLimit, Path, Request, State};

use crate::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use bytesize::ByteSize;
use futures::StreamExt;
use serde::Deserialize;
use xnode_gossip::MemberState;

use crate::files::{self, FileEntry, UploadParams};
use crate::forward::{self, Action};
use crate::telemetry::{Burst, Transfer, BURST_GAP_MS};
use crate::{check_admin, check_same_origin, constant_time_eq, ApiError, AppState, TOKEN_COOKIE};

const HTMX: &[u8] = include_bytes!("../assets/htmx-2.min.js");
const HTMX_SSE: &[u8] = include_bytes!("../assets/hx-sse-2.min.js");
const PROVENANCE: &str = include_str!("../assets/PROVENANCE");
const CSS: &str = include_str!("../../../templates/xnode.css");
const FAVICON: &[u8] = include_bytes!("../../../templates/favicon.svg");

/// The dashboard's routes.
pub(crate) fn routes(state: AppState, upload_limit: usize) -> Router<AppState> {
    let _ = state;
    Router::new()
        .route("/", get(page))
        .route("/assets/htmx.min.js", get(|| asset(HTMX, "text/javascript; charset=utf-8")))
        .route("/assets/hx-sse.min.js", get(|| asset(HTMX_SSE, "text/javascript; charset=utf-8")))
        .route("/assets/xnode.css", get(|| asset(CSS.as_bytes(), "text/css; charset=utf-8")))
        .route("/ui/members", get(members_fragment))
        .route("/ui/files", get(files_fragment).post(upload).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/ui/wanted", get(wanted_fragment))
        .route("/ui/members/{name}/wanted", get(member_wanted))
        .route("/ui/transfers", get(transfers))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/members/{name}/kill", post(kill))
        .route("/ui/members/{name}/storage", post(resize))
        .route("/ui/files/{cid}/remove", post(remove))
        .route("/ui/files/{cid}/holders", get(file_holders))
        .route("/ui/events", get(events_fragment))
        .route("/favicon.ico", get(|| asset(FAVICON, "image/svg+xml")))
        .route("/assets/favicon.svg", get(|| asset(FAVICON, "image/svg+xml")))
}

/// The htmx version of the vendored file, from its provenance record.
pub(crate) fn htmx_version() -> &'static str {
    provenance("htmx_version").unwrap_or("unknown")
}

fn provenance(key: &str) -> Option<&'static str> {
    PROVENANCE.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The vendored files never change within a build and their URLs carry the version: cache them for a year.
async fn asset(bytes: &'static [u8], content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")], bytes)
        .into_response()
}

/// Bytes for people: `1.5 MiB`, or `unlimited`.
pub(crate) fn human(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".into()
    } else {
        ByteSize(bytes).display().iec().to_string()
    }
}

fn render(t: &impl Template) -> String {
    t.render().unwrap_or_else(|e| format!("<p class=\"flash error\">template error: {e}</p>"))
}

fn signed_in(app: &AppState, headers: &HeaderMap) -> bool {
    crate::presented_token(headers).is_some_and(|(auth, t)| match auth {
        crate::Auth::Bearer => constant_time_eq(t.as_bytes(), app.config.admin_token.as_bytes()),
        crate::Auth::Cookie => app.sessions.valid(&t),
    })
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Page {
    name: String,
    version: &'static str,
    htmx_version: &'static str,
    htmx_source: String,
    authed: bool,
    members: String,
    files: String,
    wanted: String,
    transfers: Vec<String>,
}

async fn page(State(app): State<AppState>, headers: HeaderMap) -> Result<Html<String>, ApiError> {
    let authed = signed_in(&app, &headers);
    let files = files_view(&app, authed).await?;
    let transfers = crate::telemetry::bursts(&app.telemetry.recent(0))
        .iter()
        .rev()
        .map(|b| render(&TransferItem::from(b)))
        .collect();
    Ok(Html(render(&Page {
        name: app.node.name().to_string(),
        version: env!("CARGO_PKG_VERSION"),
        htmx_version: htmx_version(),
        htmx_source: format!("{} {}", provenance("package").unwrap_or("?"), provenance("version").unwrap_or("?")),
        authed,
        members: render(&members_view(&app, authed)),
        files: render(&files),
        wanted: render(&wanted_view(&app)),
        transfers,
    })))
}

#[derive(Template)]
#[template(path = "members.html")]
struct Members {
    members: Vec<MemberRow>,
    authed: bool,
    totals: Totals,
}

/// The cluster pooled, as this node sees it: what the page's summary line shows.
struct Totals {
    alive: usize,
    dead: usize,
    left: usize,
    /// Capacity and use of the live members, summed.
    capacity_h: String,
    used_h: String,
    pct: u64,
    files: usize,
    replication: usize,
}

struct MemberRow {
    name: String,
    is_self: bool,
    state: &'static str,
    phase: String,
    used: u64,
    capacity: u64,
    used_h: String,
    capacity_h: String,
    pct: u64,
    blocks: u64,
    wanted: u64,
    under_replicated: u64,
    /// Bytes held above the capacity (after a shrink), being handed off; 0 normally.
    over: u64,
    over_h: String,
    /// Why the member says it is stuck (its allocation loop or blocking work not making progress; the gossiped
    /// `meta.stuck`, what its `/readyz` answers 503 with); empty while it makes progress.
    stuck: String,
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}

fn members_view(app: &AppState, authed: bool) -> Members {
    let members = app
        .node
        .members()
        .into_iter()
        .map(|m| {
            let (used, capacity) = (m.meta.used, m.meta.capacity);
            let pct = if capacity == 0 || capacity == u64::MAX {
                0
            } else {
                (u128::from(used) * 100 / u128::from(capacity)).min(100) as u64
            };
            MemberRow {
                is_self: m.is_self,
                state: state_name(m.state),
                phase: m.meta.phase.clone(),
                used,
                capacity,
                used_h: human(used),
                capacity_h: human(capacity),
                pct,
                blocks: m.meta.blocks,
                wanted: m.meta.wanted,
                under_replicated: m.meta.under_replicated,
                over: used.saturating_sub(capacity),
                over_h: human(used.saturating_sub(capacity)),
                stuck: if m.state == MemberState::Alive { m.meta.stuck.clone() } else { String::new() },
                name: m.name,
            }
        })
        .collect::<Vec<_>>();
    let alive = members.iter().filter(|m| m.state == "alive");
    let capacity = alive.clone().map(|m| m.capacity).fold(0u64, u64::saturating_add);
    let used = alive.map(|m| m.used).fold(0u64, u64::saturating_add);
    let count = |s: &str| members.iter().filter(|m| m.state == s).count();
    let totals = Totals {
        alive: count("alive"),
        dead: count("dead"),
        left: count("left"),
        capacity_h: human(capacity),
        used_h: human(used),
        pct: if capacity == 0 || capacity == u64::MAX {
            0
        } else {
            (u128::from(used) * 100 / u128::from(capacity)).min(100) as u64
        },
        files: app.node.catalog_files().len(),
        replication: app.node.replication(),
    };
    Members { members, authed, totals }
}

async fn members_fragment(State(app): State<AppState>, headers: HeaderMap) -> Html<String> {
    Html(render(&members_view(&app, signed_in(&app, &headers))))
}

#[derive(Template)]
#[template(path = "files.html")]
struct Files {
    files: Vec<FileRow>,
    authed: bool,
}

struct FileRow {
    root: String,
    short_root: String,
    name: String,
    size_h: String,
    pinned_here: bool,
    has_health: bool,
    blocks: u64,
    at_rf: u64,
    under_replicated: u64,
    missing: u64,
    pct_at_rf: u64,
    pct_under: u64,
    pct_missing: u64,
    /// `at-rf`, `under-replicated`, `missing`, `counting` (listed, copies not counted yet) or `local` (only pinned here).
    status: &'static str,
    status_text: String,
}

impl From<FileEntry> for FileRow {
    fn from(f: FileEntry) -> Self {
        let short_root = if f.root.len() > 16 {
            format!("{}…{}", &f.root[..8], &f.root[f.root.len() - 6..])
        } else {
            f.root.clone()
        };
        let h = f.health.clone();
        let (blocks, at_rf, under, missing) =
            h.as_ref().map_or((0, 0, 0, 0), |h| (h.blocks, h.at_rf, h.under_replicated, h.missing));
        let pct = |n: u64| (n * 100).checked_div(blocks).unwrap_or(0);
        let (status, status_text) = match &h {
            None if !f.added_by.is_empty() => ("counting", "counting copies…".to_string()),
            None => ("local", if f.pinned_here { "held here".to_string() } else { String::new() }),
            Some(_) if missing > 0 => ("missing", format!("{missing} of {blocks} blocks missing")),
            Some(_) if under > 0 => ("under-replicated", format!("{under} of {blocks} blocks under-replicated")),
            Some(_) => ("at-rf", format!("all {blocks} blocks at RF")),
        };
        FileRow {
            short_root,
            size_h: human(f.size),
            pinned_here: f.pinned_here,
            has_health: h.is_some(),
            blocks,
            at_rf,
            under_replicated: under,
            missing,
            pct_at_rf: pct(at_rf),
            pct_under: pct(under),
            pct_missing: pct(missing),
            status,
            status_text,
            name: f.name,
            root: f.root,
        }
    }
}

async fn files_view(app: &AppState, authed: bool) -> Result<Files, ApiError> {
    let files = files::entries(app).await?.into_iter().map(FileRow::from).collect();
    Ok(Files { files, authed })
}

async fn files_fragment(State(app): State<AppState>, headers: HeaderMap) -> Result<Html<String>, ApiError> {
    let authed = signed_in(&app, &headers);
    Ok(Html(render(&files_view(&app, authed).await?)))
}

#[derive(Template)]
#[template(path = "wanted.html")]
struct WantedList {
    members: Vec<WantedRow>,
    /// One line on this node's scrub and repairs.
    scrub: String,
}

struct WantedRow {
    name: String,
    wanted: u64,
    under_replicated: u64,
}

fn wanted_view(app: &AppState) -> WantedList {
    let members = app
        .node
        .members()
        .into_iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| WantedRow { name: m.name, wanted: m.meta.wanted, under_replicated: m.meta.under_replicated })
        .collect();
    WantedList { members, scrub: scrub_line(&app.node.scrub_status()) }
}

/// `scrub: pass running, 1200 blocks (300.0 MiB) checked, 0 corrupt · 2 repaired, 0 not repaired since start`.
fn scrub_line(s: &xnode_instance::ScrubStatus) -> String {
    let pass = if s.running {
        "pass running"
    } else if s.pass_finished_at.is_some() {
        "last pass"
    } else {
        "no pass yet"
    };
    format!(
        "scrub: {pass}, {} blocks ({}) checked, {} corrupt · {} repaired, {} not repaired since start",
        s.blocks_checked,
        human(s.bytes_checked),
        s.corrupt_found,
        s.repaired_total,
        s.repair_failed_total
    )
}

async fn wanted_fragment(State(app): State<AppState>) -> Html<String> {
    Html(render(&wanted_view(&app)))
}

#[derive(Template)]
#[template(path = "cids.html")]
struct Cids {
    cids: Vec<String>,
    more: u64,
}

/// How many wanted CIDs a member's entry lists.
const WANTED_SHOWN: usize = 20;

/// A member's first wanted CIDs, read from its own API (or this node's).
async fn member_wanted(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    let target = match forward::member(&app, &name) {
        Ok(t) => t,
        Err(e) => return flash_error(e),
    };
    let (count, cids) = if target.is_self {
        let w = app.node.wanted(WANTED_SHOWN);
        (w.count, w.cids)
    } else {
        match forward::read(&app, &name, &format!("/api/v1/blocks?limit={WANTED_SHOWN}")).await {
            Ok(v) => {
                let w = &v["wanted"];
                let cids = w["cids"]
                    .as_array()
                    .map_or_else(Vec::new, |a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect());
                (w["count"].as_u64().unwrap_or(0), cids)
            }
            Err(e) => return flash_error(e),
        }
    };
    let more = count.saturating_sub(cids.len() as u64);
    Html(render(&Cids { cids, more })).into_response()
}

#[derive(Template)]
#[template(path = "transfer.html")]
struct TransferItem {
    time: String,
    from: String,
    to: String,
    blocks: u64,
    size: String,
    /// MB/s, or empty when the burst was too short to tell.
    rate: String,
}

impl From<&Burst> for TransferItem {
    fn from(b: &Burst) -> Self {
        TransferItem {
            time: clock(b.first_ms),
            from: b.from.clone(),
            to: b.to.clone(),
            blocks: b.blocks,
            size: human(b.bytes),
            rate: b.rate().map_or_else(String::new, |r| format!("{:.1} MB/s", r / 1e6)),
        }
    }
}

/// How long a burst may stay open on the page's log before it is shown (a long transfer shows every few seconds).
const BURST_SHOWN_AFTER_MS: u64 = 5_000;
/// A burst with no block for this long is over: other members' blocks arrive by polling, up to a second late.
const BURST_IDLE_MS: u64 = BURST_GAP_MS + 1_500;

/// Server-sent events: one `transfer` event per burst of blocks between two nodes (blocks, bytes, MB/s), its data a
/// `<li>` the page prepends to the log. Every transfer between two members is reported once, by its receiver: this
/// node's own receipts (and what it sends outside the cluster) come from its network events, the other members'
/// receipts from polling their `GET /api/v1/transfers` while the page is open. The stream ends when the node shuts
/// down, so graceful shutdown never waits for open dashboards.
async fn transfers(State(app): State<AppState>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Transfer>(256);
    let opened_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    tokio::spawn(local_transfers(app.clone(), tx.clone()));
    tokio::spawn(remote_transfers(app.clone(), tx, opened_ms));
    let (shown_tx, shown_rx) = tokio::sync::mpsc::channel::<Burst>(64);
    tokio::spawn(aggregate(rx, shown_tx));
    let stop = app.control.shutdown.clone();
    let stream = tokio_stream::wrappers::ReceiverStream::new(shown_rx)
        .map(|b| Ok(Event::default().event("transfer").data(render(&TransferItem::from(&b)).trim())))
        .take_until(stop.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Turns single block transfers into bursts per sender and receiver, shown once a burst is over (or has been open
/// for a while). Ends when either side closes.
async fn aggregate(mut rx: tokio::sync::mpsc::Receiver<Transfer>, out: tokio::sync::mpsc::Sender<Burst>) {
    let mut open: std::collections::HashMap<(String, String), Burst> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let mut done = Vec::new();
        tokio::select! {
            () = out.closed() => return,
            t = rx.recv() => {
                let Some(t) = t else { return };
                let key = (t.from.clone(), t.to.clone());
                match open.get_mut(&key) {
                    Some(b) if t.at_ms.saturating_sub(b.last_ms) <= BURST_GAP_MS => {
                        b.last_ms = b.last_ms.max(t.at_ms);
                        b.blocks += 1;
                        b.bytes += t.bytes;
                    }
                    _ => {
                        let fresh = Burst { from: t.from, to: t.to, first_ms: t.at_ms, last_ms: t.at_ms, blocks: 1, bytes: t.bytes };
                        done.extend(open.insert(key, fresh));
                    }
                }
            }
            _ = tick.tick() => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let over: Vec<_> = open
                    .iter()
                    .filter(|(_, b)| now.saturating_sub(b.last_ms) > BURST_IDLE_MS || now.saturating_sub(b.first_ms) > BURST_SHOWN_AFTER_MS)
                    .map(|(k, _)| k.clone())
                    .collect();
                done.extend(over.into_iter().filter_map(|k| open.remove(&k)));
            }
        }
        done.sort_by_key(|b| b.first_ms);
        for b in done {
            if out.send(b).await.is_err() {
                return;
            }
        }
    }
}

async fn local_transfers(app: AppState, tx: tokio::sync::mpsc::Sender<Transfer>) {
    let mut rx = app.telemetry.subscribe();
    let me = app.node.name().to_string();
    loop {
        let t = tokio::select! {
            () = tx.closed() => return,
            () = app.control.shutdown.cancelled() => return,
            t = rx.recv() => t,
        };
        match t {
            Ok(t) if t.to == me || !t.to_member => {
                if tx.send(t).await.is_err() {
                    return;
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// How often an open dashboard asks the other members what they received.
const REMOTE_POLL: Duration = Duration::from_secs(1);

/// The other members' receipts since `opened_ms` (when the page opened its stream; what came before is not live).
async fn remote_transfers(app: AppState, tx: tokio::sync::mpsc::Sender<Transfer>, opened_ms: u64) {
    // Per member: its incarnation and the last sequence number seen (None: not asked yet, so only what came after
    // the page opened).
    let mut seen: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = app.control.shutdown.cancelled() => return,
            () = tokio::time::sleep(REMOTE_POLL) => {}
        }
        let others: Vec<_> = app
            .node
            .members()
            .into_iter()
            .filter(|m| !m.is_self && m.state == MemberState::Alive && !m.meta.api_url.is_empty())
            .collect();
        for m in others {
            let known = seen.get(&m.name).filter(|(generation, _)| *generation == m.generation).map(|(_, seq)| *seq);
            let path = format!("/api/v1/transfers?since={}", known.unwrap_or(0));
            let Ok(list) = forward::read(&app, &m.name, &path).await else { continue };
            let list: Vec<Transfer> = serde_json::from_value(list).unwrap_or_default();
            let last = list.iter().map(|t| t.seq).max().or(known).unwrap_or(0);
            seen.insert(m.name.clone(), (m.generation, last));
            let live = |t: &Transfer| known.is_some() || t.at_ms >= opened_ms;
            for t in list.into_iter().filter(|t| t.to == m.name && live(t)) {
                if tx.send(t).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Template)]
#[template(path = "flash.html")]
struct Flash<'a> {
    kind: &'a str,
    text: &'a str,
}

/// An action's outcome in the page's message area; success also tells the live sections to refresh.
fn flash_ok(text: &str) -> Response {
    ([("HX-Trigger", "refresh")], Html(render(&Flash { kind: "ok", text }))).into_response()
}

fn flash_error(e: ApiError) -> Response {
    (e.status(), Html(render(&Flash { kind: "error", text: e.message() }))).into_response()
}

/// The admin token to sign forwarded actions with (it never leaves this node), once [`check_admin`] accepted the
/// request (cookie requests must carry the
/// page's `X-Xnode-Csrf` or htmx's `HX-Request` header, which a cross-site form cannot add).
fn ui_admin(app: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    check_admin(app, headers)?;
    Ok(app.config.admin_token.clone())
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// Checks the token and opens a session (its random id in an HttpOnly, SameSite=Strict cookie, expiring after
/// `SESSION_TTL`); the page reloads once to show the
/// admin controls.
async fn login(State(app): State<AppState>, headers: HeaderMap, Form(login): Form<Login>) -> Response {
    if let Err(e) = check_same_origin(&headers) {
        return flash_error(e);
    }
    let token = login.token.trim();
    if !constant_time_eq(token.as_bytes(), app.config.admin_token.as_bytes()) {
        return flash_error(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong admin token; use the node's XNODE_ADMIN_TOKEN (logged once at start when unset)",
        ));
    }
    // The cookie holds a random session id that expires and that signing out revokes, never the token.
    let cookie = format!(
        "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        app.sessions.create(),
        crate::session::SESSION_TTL.as_secs()
    );
    let mut response = flash_ok("signed in");
    let h = response.headers_mut();
    h.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("encoded cookie is ASCII"));
    h.insert("HX-Refresh", HeaderValue::from_static("true"));
    response
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = check_same_origin(&headers) {
        return flash_error(e);
    }
    if let Some((crate::Auth::Cookie, id)) = crate::presented_token(&headers) {
        app.sessions.revoke(&id);
    }
    let mut response = flash_ok("signed out");
    let h = response.headers_mut();
    let gone = format!("{TOKEN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    h.insert(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("ASCII"));
    h.insert("HX-Refresh", HeaderValue::from_static("true"));
    response
}

async fn kill(State(app): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let token = match ui_admin(&app, &headers) {
        Ok(t) => t,
        Err(e) => return flash_error(e),
    };
    match forward::run(&app, &name, Action::Kill, &token).await {
        Ok(message) => flash_ok(&message),
        Err(e) => flash_error(e),
    }
}

#[derive(Deserialize)]
struct ResizeForm {
    capacity: String,
}

/// Parses `2GiB`, `500MB`, `1048576`, with the bounds of `PUT /api/v1/storage`.
pub(crate) fn parse_size(s: &str) -> Result<u64, ApiError> {
    crate::parse_capacity(&serde_json::Value::String(s.to_string()))
}

async fn resize(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ResizeForm>,
) -> Response {
    let token = match ui_admin(&app, &headers) {
        Ok(t) => t,
        Err(e) => return flash_error(e),
    };
    let capacity = match parse_size(&form.capacity) {
        Ok(c) => c,
        Err(e) => return flash_error(e),
    };
    match forward::run(&app, &name, Action::Resize(capacity), &token).await {
        Ok(message) => flash_ok(&message),
        Err(e) => flash_error(e),
    }
}

async fn upload(State(app): State<AppState>, Query(params): Query<UploadParams>, request: Request) -> Response {
    if let Err(e) = ui_admin(&app, request.headers()) {
        return flash_error(e);
    }
    match files::import(&app, params, request).await {
        Ok(up) => flash_ok(&format!("added {} ({}) as {}", up.name, human(up.size), up.cid)),
        Err(e) => flash_error(e),
    }
}

async fn remove(State(app): State<AppState>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    if let Err(e) = ui_admin(&app, &headers) {
        return flash_error(e);
    }
    match files::remove(State(app.clone()), Path(cid.clone())).await {
        Ok(_) => flash_ok(&format!("removed {cid} from the cluster: every member drops its copies")),
        Err(e) => flash_error(e),
    }
}

#[derive(Template)]
#[template(path = "holders.html")]
struct HoldersView {
    blocks: u64,
    complete: bool,
    replication: usize,
    rows: Vec<HolderRow>,
}

struct HolderRow {
    name: String,
    state: String,
    /// Blocks held, or why not known.
    held: String,
    pct: u64,
}

/// Which members hold how many of a file's blocks (opened from the files table).
async fn file_holders(State(app): State<AppState>, Path(cid): Path<String>) -> Response {
    let root = match files::parse_cid(&cid) {
        Ok(r) => r,
        Err(e) => return flash_error(e),
    };
    match crate::cluster::holders_of(&app, root).await {
        Ok(h) => {
            let rows = h
                .members
                .into_iter()
                .map(|m| HolderRow {
                    held: match (m.blocks, &m.error) {
                        (Some(n), _) => format!("{n} of {}", h.blocks),
                        (None, Some(e)) => format!("unknown ({e})"),
                        (None, None) => "-".into(),
                    },
                    pct: m.blocks.map_or(0, |n| (n * 100).checked_div(h.blocks).unwrap_or(0)),
                    name: m.name,
                    state: m.state,
                })
                .collect();
            Html(render(&HoldersView { blocks: h.blocks, complete: h.complete, replication: h.replication, rows }))
                .into_response()
        }
        Err(e) => (e.status(), Html(render(&Flash { kind: "error", text: e.message() }))).into_response(),
    }
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsView {
    events: Vec<EventRow>,
}

struct EventRow {
    time: String,
    kind: &'static str,
    text: String,
}

/// The cluster's recent events, newest first: joins, deaths, leaves, resizes, repairs, uploads and removals.
async fn events_fragment(State(app): State<AppState>) -> Html<String> {
    let events = app
        .timeline
        .events()
        .into_iter()
        .rev()
        .map(|e| EventRow { time: clock(e.at_ms), kind: e.kind.as_str(), text: e.text })
        .collect();
    Html(render(&EventsView { events }))
}

/// A time of day in UTC, zone shown: the page may be read from anywhere.
pub(crate) fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name a hostile member could gossip (it bypasses the name rules here, as a forged view would), so that a
    /// naive `/ui/members/{name}/kill` resolves to `/api/v1/shutdown` in the browser.
    const HOSTILE: &str = "x/../../../api/v1/shutdown?";

    fn row(name: &str) -> MemberRow {
        MemberRow {
            name: name.to_string(),
            is_self: false,
            state: "alive",
            phase: "seeding".into(),
            used: 1 << 20,
            capacity: 4 << 20,
            used_h: human(1 << 20),
            capacity_h: human(4 << 20),
            pct: 25,
            blocks: 4,
            wanted: 1,
            under_replicated: 0,
            over: 0,
            over_h: human(0),
            stuck: String::new(),
        }
    }

    fn totals() -> Totals {
        Totals {
            alive: 2,
            dead: 0,
            left: 0,
            capacity_h: human(8 << 20),
            used_h: human(2 << 20),
            pct: 25,
            files: 1,
            replication: 2,
        }
    }

    /// Every URL the fragment makes the browser request: `hx-post`, `hx-get` and `href` values, HTML-unescaped.
    fn urls(html: &str) -> Vec<String> {
        let mut out = Vec::new();
        for attr in ["hx-post=\"", "hx-get=\"", "href=\""] {
            let mut rest = html;
            while let Some(at) = rest.find(attr) {
                let value = &rest[at + attr.len()..];
                let end = value.find('"').expect("a closed attribute");
                out.push(value[..end].replace("&amp;", "&").replace("&#x2f;", "/").replace("&#47;", "/"));
                rest = &value[end..];
            }
        }
        out
    }

    /// The path a browser requests for `url`: dot segments resolved (RFC 3986 5.2.4), query and fragment cut.
    fn resolved_path(url: &str) -> String {
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let mut segments: Vec<&str> = Vec::new();
        for s in path.split('/').skip(1) {
            match s {
                "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        format!("/{}", segments.join("/"))
    }

    fn assert_member_urls_are_encoded(html: &str, want: &[&str]) {
        let encoded = "x%2F..%2F..%2F..%2Fapi%2Fv1%2Fshutdown%3F";
        let urls = urls(html);
        for action in want {
            let expected = format!("/ui/members/{encoded}/{action}");
            assert!(urls.contains(&expected), "no {expected} among {urls:?}");
        }
        for url in urls.iter().filter(|u| u.starts_with("/ui/members/")) {
            assert!(!url.contains('?'), "a query survived in {url}");
            let resolved = resolved_path(url);
            assert_eq!(resolved, *url, "{url} resolves to another path in a browser");
            let segments: Vec<&str> = url.split('/').collect();
            assert_eq!(segments.len(), 5, "{url}: /ui/members/NAME/ACTION");
            assert!(segments[3] == encoded || segments[3] == "alpha", "{url}");
            assert!(!segments.contains(&"..") && !segments.contains(&"."), "{url}");
        }
        for url in &urls {
            assert!(!resolved_path(url).starts_with("/api/v1/shutdown"), "{url} would shut a node down");
        }
    }

    #[test]
    fn a_hostile_member_name_cannot_change_what_the_members_card_posts() {
        let view = Members { members: vec![row("alpha"), row(HOSTILE)], authed: true, totals: totals() };
        let html = render(&view);
        assert_member_urls_are_encoded(&html, &["storage", "kill"]);
        assert!(html.contains("/ui/members/alpha/kill"), "an ordinary name keeps its plain URL");
    }

    #[test]
    fn a_hostile_member_name_cannot_change_what_the_wanted_list_fetches() {
        let view = WantedList {
            members: vec![WantedRow { name: HOSTILE.into(), wanted: 3, under_replicated: 0 }],
            scrub: String::new(),
        };
        assert_member_urls_are_encoded(&render(&view), &["wanted"]);
    }

    #[test]
    fn a_stuck_member_card_says_so_and_why() {
        let why = "blocking work has not run for 20 s (store reads and writes, so the API, cannot make progress)";
        let mut stuck = row("beta");
        stuck.stuck = why.to_string();
        let html = render(&Members { members: vec![row("alpha"), stuck], authed: false, totals: totals() });
        let card = |name: &str| {
            let start = html.find(&format!("data-name=\"{name}\"")).expect("the member's card");
            let end = html[start..].find("</article>").expect("a closed card") + start;
            html[start..end].to_string()
        };
        let beta = card("beta");
        assert!(beta.contains("class=\"small stuck\"") && beta.contains("role=\"alert\""), "{beta}");
        assert!(beta.contains("stuck:") && beta.contains(why) && beta.contains("503"), "{beta}");
        assert!(html.contains("class=\"member alive is-stuck\" data-name=\"beta\""), "{html}");
        let alpha = card("alpha");
        assert!(!alpha.contains("stuck"), "a member making progress shows no warning: {alpha}");
    }
}
