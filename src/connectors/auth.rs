//! A run's credentials: the definition's `[auth]` with its secret resolved at the run's
//! start, applied to each request's headers (or query); OAuth2 client-credentials tokens
//! are cached per connector until shortly before they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;

use super::definition::{AuthSpec, ConnectorSpec, KeyIn};
use super::egress::{Session, Spent};
use crate::error::{Error, Result};

/// Credentials of one run, resolved at its start; OAuth tokens are shared by the runs of
/// a connector until they expire.
pub(crate) struct Auth<'a> {
    pub(super) spec: Option<&'a AuthSpec>,
    pub(super) secret: Option<crate::config::Secret>,
    pub(super) tokens: &'a Mutex<HashMap<String, (String, Instant)>>,
    pub(super) connector: &'a str,
}

impl Auth<'_> {
    pub(super) fn query_key(&self) -> Option<&str> {
        match self.spec {
            Some(AuthSpec::ApiKey {
                location: KeyIn::Query,
                ..
            }) => self.secret.as_ref().map(|s| s.expose()),
            _ => None,
        }
    }

    pub(super) fn refreshable(&self) -> bool {
        matches!(self.spec, Some(AuthSpec::Oauth2 { .. }))
    }

    pub(super) fn forget(&self) {
        if let Ok(mut t) = self.tokens.lock() {
            t.remove(self.connector);
        }
    }

    /// The definition's request headers, without credentials.
    pub(super) fn plain_headers(&self, spec: &ConnectorSpec) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        for (k, v) in &spec.request.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| Error::invalid(format!("request.headers: {k:?}")))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|_| Error::invalid(format!("request.headers.{k}: not a header value")))?;
            h.insert(name, value);
        }
        h.entry(http::header::ACCEPT)
            .or_insert(http::HeaderValue::from_static("application/json"));
        Ok(h)
    }

    /// The request headers carrying the credentials.
    pub(super) async fn headers(
        &self,
        session: &Session<'_>,
        spent: &mut Spent,
        spec: &ConnectorSpec,
    ) -> Result<HeaderMap> {
        let mut h = self.plain_headers(spec)?;
        let secret = || {
            self.secret
                .as_ref()
                .map(|s| s.expose())
                .ok_or_else(|| Error::internal("connector secret not resolved"))
        };
        let sensitive = |v: String| {
            let mut v = http::HeaderValue::from_str(&v)
                .map_err(|_| Error::invalid("a connector secret is not a valid header value"))?;
            v.set_sensitive(true);
            Ok::<_, Error>(v)
        };
        match self.spec {
            None => {}
            Some(AuthSpec::Bearer { .. }) => {
                h.insert(
                    http::header::AUTHORIZATION,
                    sensitive(format!("Bearer {}", secret()?))?,
                );
            }
            Some(AuthSpec::Basic { username, .. }) => {
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", secret()?));
                h.insert(
                    http::header::AUTHORIZATION,
                    sensitive(format!("Basic {pair}"))?,
                );
            }
            Some(AuthSpec::ApiKey {
                name,
                location: KeyIn::Header,
                ..
            }) => {
                let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Error::invalid(format!("auth.name: {name:?} is not a header name"))
                })?;
                h.insert(name, sensitive(secret()?.to_string())?);
            }
            Some(AuthSpec::ApiKey { .. }) => {}
            Some(AuthSpec::Oauth2 {
                token_url,
                client_id,
                scope,
                ..
            }) => {
                let token = self
                    .token(session, spent, token_url, client_id, scope.as_deref())
                    .await?;
                h.insert(
                    http::header::AUTHORIZATION,
                    sensitive(format!("Bearer {token}"))?,
                );
            }
        }
        Ok(h)
    }

    /// An OAuth2 client-credentials token (RFC 6749 §4.4; client authentication by HTTP
    /// Basic), cached until 30 s before it expires.
    async fn token(
        &self,
        session: &Session<'_>,
        spent: &mut Spent,
        token_url: &str,
        client_id: &str,
        scope: Option<&str>,
    ) -> Result<String> {
        if let Ok(t) = self.tokens.lock()
            && let Some((token, until)) = t.get(self.connector)
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let url = url::Url::parse(token_url)
            .map_err(|e| Error::invalid(format!("auth.token_url: {e}")))?;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!(
            "{client_id}:{}",
            self.secret.as_ref().map(|s| s.expose()).unwrap_or_default()
        ));
        let mut h = HeaderMap::new();
        let mut v = http::HeaderValue::from_str(&format!("Basic {pair}"))
            .map_err(|_| Error::invalid("the OAuth client secret is not a valid header value"))?;
        v.set_sensitive(true);
        h.insert(http::header::AUTHORIZATION, v);
        h.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if let Some(s) = scope {
            form.push(("scope".to_string(), s.to_string()));
        }
        let resp = session
            .send(url, http::Method::POST, &h, Some(&form), spent)
            .await
            .map_err(|f| Error::Unavailable(format!("getting an OAuth token: {}", f.error)))?;
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: Token = serde_json::from_slice(&resp.body).map_err(|e| {
            Error::Unavailable(format!("the OAuth token response has no access_token: {e}"))
        })?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(3600).saturating_sub(30).max(1));
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                self.connector.to_string(),
                (t.access_token.clone(), Instant::now() + life),
            );
        }
        Ok(t.access_token)
    }
}
