//! The console's routes: its files need no token (PLATFORM: with health and the webhook
//! receiver, the only open routes); what it shows comes from the API with the user's.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;

use super::AppState;
use crate::console::SECURITY_HEADERS;
use crate::error::Error;

/// `prefix`, `prefix/` and everything under it.
pub(super) fn routes(prefix: &str) -> Router<AppState> {
    Router::new()
        .route(prefix, axum::routing::get(serve))
        .route(&format!("{prefix}/"), axum::routing::get(serve))
        .route(&format!("{prefix}/{{*rest}}"), axum::routing::get(serve))
}

async fn serve(State(state): State<AppState>, request: Request) -> Response {
    let answer = match &state.console {
        // Read from the raw path: what was encoded stays encoded, to be refused.
        Some(c) => c
            .answer(request.uri().path(), request.headers())
            .map(|r| r.map(Body::from).into_response()),
        None => Err(Error::NotFound("the console is disabled".into())),
    };
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    for (name, value) in SECURITY_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}
