//! Authentication for every Flight RPC except `Handshake`, as a tower layer in front of the
//! whole service: no handler runs without a verified principal in the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use super::{handshake, to_status};
use crate::error::Error;
use crate::security::Authenticator;

#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub(crate) auth: Arc<Authenticator>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
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
        // The handshake authenticates itself (it is where Basic credentials arrive).
        if req.uri().path().ends_with("/Handshake") {
            return Box::pin(inner.call(req));
        }
        let principal = match handshake::token_from_headers(req.headers()) {
            Some(token) => self.auth.authenticate(&token),
            None => Err(Error::Unauthenticated(
                "missing credentials: send authorization: Bearer <JWT>".into(),
            )),
        };
        match principal {
            Ok(p) => {
                req.extensions_mut().insert(Arc::new(p));
                Box::pin(inner.call(req))
            }
            Err(e) => {
                let response = to_status(e).into_http::<tonic::body::Body>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
