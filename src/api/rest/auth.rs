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
            request.extensions_mut().insert(Arc::new(principal));
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}
