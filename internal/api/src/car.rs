//! CAR import and export under `/api/v1/dag`: `POST import` takes a CARv1 or CARv2 body (streamed, bounded by
//! `XNODE_MAX_UPLOAD`), stores every block after checking it against its CID and pins each complete root like an
//! add (the allocation loop then publishes it to the catalog); `GET export/{cid}` streams the DAG as a CARv1,
//! fetching from the cluster what this node lacks.

use std::io;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use xnode_dag::{Resolved, Selection};
use xnode_instance::CarImport;

use crate::files::{blocking, parse_cid, pump, read_timeout, too_large, ChannelReader, ReadParams, TOO_LARGE};
use crate::gateway::{car_body, header_value, instance_error, CAR_TYPE};
use crate::{ApiError, AppState, ErrorBody};

/// `?name=` of an import.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportParams {
    /// The name the roots are pinned under (default: each root's CID).
    name: Option<String>,
}

/// What an import stored: `blocks` and `bytes` read (each block verified), and per root whether it is now pinned
/// (`pinned`, `name`, `size`, or `error`: why not, e.g. a DAG the CAR does not complete).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImportAnswer {
    /// Blocks read from the CAR.
    blocks: u64,
    /// Their bytes.
    bytes: u64,
    /// Each root of the CAR's header: `cid`, `pinned`, `name`, `size`, `error`.
    roots: Vec<serde_json::Value>,
}

/// `POST /api/v1/dag/import`: a CAR (v1 or v2) as the body.
#[utoipa::path(post, path = "/api/v1/dag/import", tag = "files", params(ImportParams), security(("admin" = [])),
    request_body(content((Vec<u8> = "application/vnd.ipld.car")), description = "a CARv1 or CARv2"),
    responses(
        (status = 201, description = "stored; at least one root pinned", body = ImportAnswer),
        (status = 200, description = "stored; no root pinned (none listed, or their DAGs incomplete)", body = ImportAnswer),
        (status = 400, description = "not a CAR, or a block that does not match its CID (nothing stored)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, description = "larger than XNODE_MAX_UPLOAD or the room left in the store", body = ErrorBody)))]
pub(crate) async fn import(
    State(app): State<AppState>,
    Query(params): Query<ImportParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = app.config.max_upload_bytes;
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large(limit));
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let stream = request.into_body().into_data_stream().map(|f| f.map_err(|e| io::Error::other(e.to_string())));
    let pumping = tokio::spawn(pump(stream, tx, limit));
    let repo = app.node.repo().clone();
    let name = params.name;
    let result = blocking(move || repo.import_car(ChannelReader { rx, current: Bytes::new() }, name.as_deref())).await;
    pumping.abort();
    let imported: CarImport = match result {
        Ok(imported) => imported,
        Err(e) if e.message().contains(TOO_LARGE) => return Err(too_large(limit)),
        Err(e) => return Err(e),
    };
    for root in imported.roots.iter().filter(|r| r.pinned) {
        if let Ok(cid) = Cid::try_from(root.cid.as_str()) {
            let node = app.node.clone();
            tokio::spawn(async move { node.provide(cid).await });
        }
    }
    let status = if imported.roots.iter().any(|r| r.pinned) { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(imported)).into_response())
}

/// `GET /api/v1/dag/export/{cid}`: the whole DAG as a CARv1 (root first, depth-first, each block once).
#[utoipa::path(get, path = "/api/v1/dag/export/{cid}", tag = "files",
    params(("cid" = String, Path, description = "the DAG's root"), ReadParams),
    responses(
        (status = 200, description = "the CAR, streamed; it ends early (incomplete) if a block stops arriving",
            body = Vec<u8>, content_type = "application/vnd.ipld.car"),
        (status = 400, body = ErrorBody),
        (status = 404, description = "no member sent the root block before the timeout", body = ErrorBody)))]
pub(crate) async fn export(
    State(app): State<AppState>,
    UrlPath(cid): UrlPath<String>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let cid = parse_cid(&cid)?;
    let (source, _) = app.node.open_streaming(cid, read_timeout(&app, &params)?).await.map_err(instance_error)?;
    let resolved = Resolved { cid, roots: vec![cid], path_blocks: Vec::new() };
    let mut response = Response::new(car_body(Box::new(source), cid, resolved, Selection::default()));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&format!("{CAR_TYPE}; version=1; order=dfs; dups=n")));
    h.insert(header::CONTENT_DISPOSITION, header_value(&format!("attachment; filename=\"{cid}.car\"")));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}
