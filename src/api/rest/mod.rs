//! REST API (`/api/v1`), for admins and apps.
//!
//! Every route under `/api/v1` sits behind [`auth::require_bearer`]; only `/healthz` and
//! `/readyz` are open. Errors are `{"error": {"code", "message"}}` with the status derived
//! from [`crate::error::ErrorKind`].

mod auth;
mod body;
mod dml;
mod encode;
mod error;
mod health;
mod lineage;

pub(crate) use health::metrics_router;
mod connectors;
mod console;
mod openapi;
mod pipelines;
mod policies;
mod query;
mod tables;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use http::HeaderName;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::Engine;
use crate::security::Authenticator;

/// Shared state of REST handlers.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub flows: Arc<crate::flows::Flows>,
    pub scheduler: Arc<crate::scheduler::Scheduler>,
    pub lineage: Arc<crate::lineage::LineageService>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    pub connectors: Arc<crate::connectors::Connectors>,
    pub auth: Arc<Authenticator>,
    pub started: Instant,
    /// Grants from the configuration file (shown read-only next to run-time grants).
    pub config_grants: Vec<crate::config::GrantConfig>,
    /// The admin console's files (`[console]`), when enabled.
    pub console: Option<Arc<crate::console::Console>>,
}

/// Refuses `p` unless it holds the admin role (`what` names the operation).
pub(super) async fn admin(
    state: &AppState,
    p: &crate::security::Principal,
    what: &str,
) -> crate::error::Result<()> {
    if state.engine.access().await?.is_admin(p) {
        Ok(())
    } else {
        Err(crate::error::Error::PermissionDenied(format!(
            "{what} needs the admin role"
        )))
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counts every routed request by its route template and status, with its latency (to the
/// response head; bodies stream after it).
async fn observe(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    crate::telemetry::metrics().request(
        "http",
        &route,
        response.status().as_str(),
        started.elapsed(),
    );
    response
}

pub(crate) fn router(state: AppState, max_body: usize) -> Router {
    let (mut routes, doc) = documented(&state).split_for_parts();
    if let Some(c) = &state.console {
        routes = routes.merge(console::routes(c.prefix()));
    }
    let doc = match serde_json::to_string(&doc) {
        Ok(json) => openapi::Document(Arc::new(json)),
        // A document of plain data always serializes; were it not to, the log says why.
        Err(e) => {
            tracing::error!(error = %e, "OpenAPI document");
            openapi::Document(Arc::new("{}".into()))
        }
    };
    routes
        .layer(axum::Extension(doc))
        .route_layer(axum::middleware::from_fn(observe))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &http::Request<axum::body::Body>| {
                let request_id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "http",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %request_id,
                    principal = tracing::field::Empty,
                )
            },
        ))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Every route with its OpenAPI entry: the router and the document come from the same
/// registrations, so neither can drift from the other.
fn documented(state: &AppState) -> OpenApiRouter<AppState> {
    let bearer = || axum::middleware::from_fn_with_state(state.clone(), auth::require_bearer);
    let api = OpenApiRouter::new()
        .routes(routes!(query::query))
        .routes(routes!(tables::list, tables::create))
        .routes(routes!(tables::describe, tables::patch, tables::drop_table))
        .routes(routes!(tables::upload))
        .routes(routes!(tables::history))
        .routes(routes!(dml::merge))
        .routes(routes!(dml::scd2))
        .routes(routes!(dml::optimize))
        .routes(routes!(dml::vacuum))
        .routes(routes!(dml::restore))
        .routes(routes!(policies::get_policies, policies::put_policies))
        .routes(routes!(policies::get_grants, policies::put_grants))
        .routes(routes!(pipelines::list))
        .routes(routes!(
            pipelines::get,
            pipelines::deploy,
            pipelines::undeploy
        ))
        .routes(routes!(pipelines::start_run))
        .routes(routes!(pipelines::pause))
        .routes(routes!(pipelines::backfill))
        .routes(routes!(pipelines::resume_run))
        .routes(routes!(pipelines::resume))
        .routes(routes!(pipelines::runs))
        .routes(routes!(pipelines::run))
        .routes(routes!(pipelines::cancel))
        .routes(routes!(pipelines::scheduler))
        .routes(routes!(pipelines::quality))
        .routes(routes!(
            pipelines::put_checks,
            pipelines::get_checks,
            pipelines::delete_checks
        ))
        .routes(routes!(pipelines::run_checks))
        .routes(routes!(pipelines::replay))
        .routes(routes!(lineage::tables))
        .routes(routes!(lineage::columns))
        .routes(routes!(webhooks::list))
        .routes(routes!(webhooks::get, webhooks::put, webhooks::delete))
        .routes(routes!(connectors::list))
        .routes(routes!(
            connectors::get,
            connectors::put,
            connectors::delete
        ))
        .routes(routes!(connectors::run))
        .routes(routes!(connectors::backfill))
        .routes(routes!(connectors::resume))
        .routes(routes!(openapi::document))
        .route_layer(bearer());
    // Authenticated by signature, not by a token (PLATFORM: the only such route besides
    // health and the console's files), with its own body limit before anything else.
    let ingest = OpenApiRouter::new()
        .routes(routes!(webhooks::receive))
        .layer(DefaultBodyLimit::max(state.webhooks.max_body_bytes()));
    let metrics = OpenApiRouter::new()
        .routes(routes!(health::metrics))
        .route_layer(bearer());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api.merge(ingest))
        .merge(metrics)
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}
