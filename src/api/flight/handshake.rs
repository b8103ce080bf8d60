//! Flight handshake: Basic (password = JWT) or Bearer, answered with a bearer header.

use std::pin::Pin;

use arrow_flight::{HandshakeRequest, HandshakeResponse};
use base64::Engine as _;
use futures::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Response, Status};

use super::to_status;
use crate::error::Error;
use crate::security::Authenticator;

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

/// The JWT in an `authorization` value: `Bearer <JWT>`, or `Basic base64(user:<JWT>)` as BI
/// tools send it.
fn token_from_value(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some(password.to_string())
    } else {
        None
    }
}

pub(super) fn token_from_headers(headers: &http::HeaderMap) -> Option<String> {
    token_from_value(headers.get(http::header::AUTHORIZATION)?.to_str().ok()?)
}

pub(super) fn handshake(
    auth: &Authenticator,
    request: tonic::Request<tonic::Streaming<HandshakeRequest>>,
) -> Result<Response<HandshakeStream>, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(token_from_value)
        .ok_or_else(|| {
            to_status(Error::Unauthenticated(
                "handshake needs authorization: Bearer <JWT> or Basic with the JWT as password"
                    .into(),
            ))
        })?;
    auth.authenticate(&token).map_err(to_status)?;
    let reply = HandshakeResponse {
        protocol_version: 0,
        payload: token.clone().into(),
    };
    let stream: HandshakeStream = Box::pin(futures::stream::iter(vec![Ok(reply)]));
    let mut response = Response::new(stream);
    let header = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| to_status(Error::internal("token is not a valid header value")))?;
    response.metadata_mut().insert("authorization", header);
    Ok(response)
}
