//! REST rendering of [`Error`]: status from its kind (the one HTTP status map), JSON body,
//! internal detail logged only.

use axum::Json;
use axum::response::{IntoResponse, Response};

use super::openapi::{ErrorBody, ErrorDetail};
use crate::error::{Error, ErrorKind};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let trace_id = crate::api::report(&self);
        let kind = self.kind();
        let body = ErrorBody {
            error: ErrorDetail {
                code: kind.code().to_string(),
                message: self.client_message(&trace_id),
                trace_id,
            },
        };
        let mut response = (http_status(kind), Json(body)).into_response();
        if kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// HTTP status for REST responses.
pub(crate) fn http_status(kind: ErrorKind) -> http::StatusCode {
    use http::StatusCode as S;
    match kind {
        ErrorKind::InvalidArgument => S::BAD_REQUEST,
        ErrorKind::Unauthenticated => S::UNAUTHORIZED,
        ErrorKind::PermissionDenied => S::FORBIDDEN,
        ErrorKind::NotFound => S::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => S::CONFLICT,
        ErrorKind::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => S::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::NotAcceptable => S::NOT_ACCEPTABLE,
        ErrorKind::Unsupported => S::BAD_REQUEST,
        ErrorKind::ResourceExhausted => S::TOO_MANY_REQUESTS,
        ErrorKind::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        ErrorKind::Unavailable => S::SERVICE_UNAVAILABLE,
        // nginx's "client closed request"; nobody is usually listening any more.
        ErrorKind::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        ErrorKind::Internal => S::INTERNAL_SERVER_ERROR,
    }
}

pub(super) async fn not_found(uri: http::Uri) -> Error {
    Error::NotFound(format!("no route {}", uri.path()))
}
