//! Webhooks: definitions under `/api/v1/webhooks/{name}` (admin role, bearer token) and the
//! receiving route `POST /api/v1/ingest/webhooks/{name}`, authenticated by the delivery's
//! signature instead of a token ([`crate::webhooks`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::body::{JsonBody, RawBody};
use super::openapi::Errors;
use super::{AppState, admin};
use crate::error::Result;
use crate::security::Principal;
use crate::webhooks::Receipt;
use crate::webhooks::definition::{Webhook, WebhookSpec};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Handlers extract `String` so a bad name gets our message.
pub(super) struct WebhookPath {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`.
    name: String,
}

#[utoipa::path(get, path = "/webhooks", tag = "ingestion",
    responses((status = 200, description = "Every webhook (admin role)", body = Vec<Webhook>), Errors))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Json<Vec<Webhook>>> {
    admin(&state, &principal, "listing webhooks").await?;
    Ok(Json(state.webhooks.list().await?))
}

#[utoipa::path(get, path = "/webhooks/{name}", tag = "ingestion", params(WebhookPath),
    responses((status = 200, description = "The webhook's definition (secrets by name only)", body = Webhook), Errors))]
pub(super) async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Webhook>> {
    admin(&state, &principal, "reading a webhook").await?;
    Ok(Json(state.webhooks.get(&name).await?))
}

#[utoipa::path(put, path = "/webhooks/{name}", tag = "ingestion", params(WebhookPath),
    request_body = WebhookSpec,
    responses((status = 200, description = "Stored (its table created when absent); receiving at /api/v1/ingest/webhooks/{name}", body = Webhook), Errors))]
pub(super) async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    JsonBody(spec): JsonBody<WebhookSpec>,
) -> Result<Json<Webhook>> {
    admin(&state, &principal, "defining a webhook").await?;
    Ok(Json(state.webhooks.put(&principal, &name, spec).await?))
}

#[utoipa::path(delete, path = "/webhooks/{name}", tag = "ingestion", params(WebhookPath),
    responses((status = 204, description = "Deleted: deliveries are refused; the table stays"), Errors))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Response> {
    admin(&state, &principal, "deleting a webhook").await?;
    state.webhooks.delete(&principal, &name).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

/// Receives one delivery. No bearer token: the signature authenticates it (an unknown
/// name answers exactly like a bad signature). The answer is sent once the commit holding
/// the delivery landed.
#[utoipa::path(post, path = "/ingest/webhooks/{name}", tag = "ingestion", params(WebhookPath),
    security(()),
    request_body(description = "The sender's body, verified as received (JSON)", content_type = "application/json"),
    responses(
        (status = 200, description = "Committed, or a duplicate of an accepted delivery (nothing written)", body = Receipt),
        (status = 400, description = "Stale timestamp, or a body that is not JSON / does not fit the columns"),
        (status = 401, description = "Signature does not verify, or no such webhook"),
        (status = 413, description = "Body over the webhook's or the route's limit"),
        (status = 429, description = "Over the webhook's rate limit or the server's cap on unverified deliveries"),
        (status = 503, description = "The commit failed: nothing written; retry")))]
pub(super) async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Receipt>> {
    Ok(Json(state.webhooks.receive(&name, &headers, body).await?))
}
