//! Bearer authentication for every `/api/v1` route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::Error;

/// Verifies `Authorization: Bearer <JWT>` and attaches the principal; 401 otherwise.
pub(super) async fn require_bearer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(token) = token else {
        return Error::Unauthenticated("missing bearer token (Authorization: Bearer <JWT>)".into())
            .into_response();
    };
    match state.auth.authenticate(token) {
        Ok(principal) => {
            tracing::Span::current().record("principal", principal.subject.as_str());
            let (method, path) = (request.method().clone(), request.uri().path().to_string());
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let subject = principal.subject.clone();
            request.extensions_mut().insert(Arc::new(principal));
            let response = next.run(request).await;
            crate::telemetry::audit_request(
                "http",
                &subject,
                &format!("{method} {path}"),
                response.status().as_str(),
                &request_id,
            );
            response
        }
        Err(e) => e.into_response(),
    }
}
