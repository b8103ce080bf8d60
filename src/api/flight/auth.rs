//! Authentication for every Flight RPC except `Handshake`, as a tower layer in front of the
//! whole service: no handler runs without a verified principal in the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::{handshake, to_status};
use crate::error::Error;
use crate::security::Authenticator;

/// Metrics, audit event and request-id echo for one Flight call. The status is the one in
/// the response head: errors before the first message (the usual case) carry it there; a
/// stream that fails later is counted by its head as OK.
fn observed(
    mut response: http::Response<tonic::body::Body>,
    method: &str,
    subject: &str,
    request_id: &str,
    started: std::time::Instant,
) -> http::Response<tonic::body::Body> {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    let status = format!("{code:?}");
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    crate::telemetry::metrics().request("flight", method, &status, started.elapsed());
    if !subject.is_empty() {
        crate::telemetry::audit_request("flight", subject, method, &status, request_id);
    }
    response
}

#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub(crate) auth: Arc<Authenticator>,
    /// `flight.max_header_list_bytes`: checked here, with a definite answer.
    pub(crate) max_header_bytes: usize,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
            max_header_bytes: self.max_header_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    max_header_bytes: usize,
}

/// The size HTTP/2 accounts for a header list (RFC 9113 §6.5.2: name, value and 32 bytes per
/// field).
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum()
}

/// The transport's own header limit: well above the configured one, so a request between the
/// two reaches [`AuthService`] and gets a definite INVALID_ARGUMENT instead of the connection
/// error (UNAVAILABLE, which clients retry) HTTP/2 answers past its limit.
pub(crate) fn transport_header_limit(configured: u32) -> u32 {
    configured.saturating_mul(4).max(256 * 1024)
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        // The client's request id, or a fresh one; echoed in the response metadata.
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        let started = std::time::Instant::now();
        let header_bytes = header_list_size(req.headers());
        // The handshake authenticates itself (it is where Basic credentials arrive).
        let principal = if header_bytes > self.max_header_bytes {
            Err(Error::invalid(format!(
                "the request's metadata is {header_bytes} bytes, over flight.max_header_list_bytes ({}); is the token too large?",
                self.max_header_bytes
            )))
        } else if method == "Handshake" {
            Ok(None)
        } else {
            match handshake::token_from_headers(req.headers()) {
                Some(token) => self.auth.authenticate(&token).map(Some),
                None => Err(Error::Unauthenticated(
                    "missing credentials: send authorization: Bearer <JWT>".into(),
                )),
            }
        };
        let subject = match &principal {
            Ok(Some(p)) => p.subject.clone(),
            _ => String::new(),
        };
        let response = match principal {
            Ok(p) => {
                if let Some(p) = p {
                    req.extensions_mut().insert(Arc::new(p));
                }
                inner.call(req)
            }
            Err(e) => {
                let response = to_status(e).into_http::<tonic::body::Body>();
                return Box::pin(async move {
                    Ok(observed(response, &method, &subject, &request_id, started))
                });
            }
        };
        Box::pin(async move {
            let response = response.await?;
            Ok(observed(response, &method, &subject, &request_id, started))
        })
    }
}
