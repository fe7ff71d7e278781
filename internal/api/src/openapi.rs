//! The OpenAPI 3.1 document of the JSON routes, served at `/api/v1/openapi.json`. It is generated from the
//! handlers' `#[utoipa::path]` annotations, so it cannot drift from the routes' shapes unnoticed (a test checks that
//! every route of the router is in it).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{car, cluster, files, gateway, pins, telemetry};

#[derive(OpenApi)]
#[openapi(
    info(title = "Xnode API", description = "Health, status, files, blocks, storage and lifecycle of one Xnode node. \
        Routes that change something need `Authorization: Bearer <XNODE_ADMIN_TOKEN>` (or the dashboard's cookie). \
        Every error answer is JSON `{\"error\": \"what went wrong and what to do\"}`, unknown routes and wrong \
        methods included. Sizes are bytes or strings with units (`\"10GiB\"`, `\"500MB\"`)."),
    paths(
        crate::healthz, crate::readyz, telemetry::metrics, document, crate::status, crate::members,
        files::list, files::upload, files::download, files::remove, files::ls, files::stat,
        crate::blocks, crate::storage, crate::set_storage, crate::shutdown_node, crate::kill_node, crate::auth,
        telemetry::transfers_json, gateway::serve, car::import, car::export,
        cluster::kill, cluster::shutdown, cluster::resize, cluster::has, cluster::holders,
        pins::list, pins::add, pins::get, pins::replace, pins::remove,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "health", description = "for orchestrators"),
        (name = "node", description = "this node: status, storage, blocks, lifecycle"),
        (name = "cluster", description = "membership and block transfers"),
        (name = "files", description = "upload, list, download, remove"),
        (name = "pins", description = "the IPFS Pinning Service API (bearer: the admin token)"),
        (name = "gateway", description = "the IPFS gateway: raw blocks, CARs and content under /ipfs/, from any member"),
    )
)]
struct ApiDoc;

/// Declares the `admin` bearer scheme the admin routes refer to.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("XNODE_ADMIN_TOKEN (logged at start when unset)"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "node", responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    Json(doc)
}

/// The methods the API document lists for `path` (a concrete request path, matched against the documented
/// templates, `{param}` standing for one segment and `{*rest}` for the rest), e.g. `"GET, PUT"`; for 405 answers.
pub(crate) fn allowed_methods(path: &str) -> Option<String> {
    let doc = ApiDoc::openapi();
    let asked: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let matches = |template: &str| {
        let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
        for (i, seg) in t.iter().enumerate() {
            if seg.starts_with("{*") {
                return asked.len() > i;
            }
            match asked.get(i) {
                Some(a) if seg.starts_with('{') || a == seg => {}
                _ => return false,
            }
        }
        t.len() == asked.len()
    };
    let (_, item) = doc.paths.paths.iter().find(|(template, _)| matches(template))?;
    let methods: Vec<&str> = [
        ("GET", item.get.is_some()),
        ("HEAD", item.get.is_some() || item.head.is_some()),
        ("POST", item.post.is_some()),
        ("PUT", item.put.is_some()),
        ("DELETE", item.delete.is_some()),
    ]
    .into_iter()
    .filter_map(|(m, on)| on.then_some(m))
    .collect();
    (!methods.is_empty()).then(|| methods.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn allowed_methods_come_from_the_document() {
        assert_eq!(super::allowed_methods("/api/v1/storage").as_deref(), Some("GET, HEAD, PUT"));
        assert_eq!(super::allowed_methods("/api/v1/members/a/kill").as_deref(), Some("POST"));
        assert_eq!(super::allowed_methods("/api/v1/files/Qm1/holders").as_deref(), Some("GET, HEAD"));
        assert_eq!(super::allowed_methods("/api/v1/nothing"), None);
    }
}
