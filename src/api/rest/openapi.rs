//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, derived by `utoipa` from the
//! handlers' `#[utoipa::path]` attributes and the request and response types themselves.
//!
//! The router registers each handler through `utoipa_axum`'s `routes!` (see
//! [`super::router`]), so a route cannot exist without its entry here, and a type change
//! changes the document.

use std::sync::Arc;

use axum::Extension;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use crate::storage::Layer;

/// Every error response: a stable code, a message a user can act on, and the trace id
/// under which the server logged it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorBody {
    pub(super) error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// `invalid_argument`, `unauthenticated`, `permission_denied`, `not_found`,
    /// `already_exists`, `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `not_acceptable`, `unsupported`, `resource_exhausted`, `deadline_exceeded`,
    /// `unavailable`, `cancelled` or `internal`.
    pub(super) code: String,
    pub(super) message: String,
    pub(super) trace_id: String,
}

/// The error responses every authenticated operation may give.
#[derive(Debug, IntoResponses)]
#[allow(dead_code)] // Only its documentation is used.
pub(super) enum Errors {
    /// Invalid request (bad SQL, bad rows, bad parameters).
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// Missing or invalid bearer token.
    #[response(status = 401)]
    Unauthenticated(#[to_schema] ErrorBody),
    /// Privilege not granted.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// Not found, or not visible to the caller.
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// Already exists, or a concurrent commit won (nothing was committed; retry).
    #[response(status = 409)]
    Conflict(#[to_schema] ErrorBody),
    /// Body over `server.max_request_bytes`.
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// A limit was hit (concurrency, memory, result size); retry later.
    #[response(status = 429)]
    TooMany(#[to_schema] ErrorBody),
    /// Storage unavailable; retry later.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
    /// The statement ran past `query.timeout_secs`.
    #[response(status = 504)]
    Timeout(#[to_schema] ErrorBody),
}

/// `{layer}/{name}` of a table.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Handlers extract `(String, String)` so a bad layer gets our message.
pub(super) struct TablePath {
    layer: Layer,
    /// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
    #[param(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    name: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document's frame; the router adds every path (see [`super::router`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strata REST API",
        description = "Lakehouse query server: Delta Lake tables in bronze/silver/gold layers, SQL over REST and Flight SQL."
    ),
    security(("bearer" = [])),
    // Types named only by query parameters, which utoipa-axum does not collect.
    components(schemas(crate::pipelines::commit::WriteMode)),
    modifiers(&BearerAuth),
    tags(
        (name = "query", description = "SQL"),
        (name = "tables", description = "Tables, rows and table maintenance"),
        (name = "policies", description = "Grants, row filters and column masks"),
        (name = "ingestion", description = "Webhooks: definitions (admin) and the signed receiving route (no token)"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
pub(super) struct ApiDoc;

/// The served document, rendered once at start-up.
#[derive(Debug, Clone)]
pub(super) struct Document(pub(super) Arc<String>);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"), Errors))]
pub(super) async fn document(Extension(doc): Extension<Document>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}
