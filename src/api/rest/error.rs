//! REST rendering of [`Error`]: status from its kind, JSON body, internal detail logged only.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let trace_id = self.log();
        let kind = self.kind();
        let body = json!({
            "error": {
                "code": kind.code(),
                "message": self.client_message(&trace_id),
                "trace_id": trace_id,
            }
        });
        let mut response = (kind.http_status(), Json(body)).into_response();
        if kind == crate::error::ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub(super) async fn not_found(uri: http::Uri) -> Error {
    Error::NotFound(format!("no route {}", uri.path()))
}
