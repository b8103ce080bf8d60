//! Webhook definitions: what `PUT /api/v1/webhooks/{name}` stores, and where.
//!
//! Stored as a [`DocumentLog`] per webhook (`{warehouse}/_strata/webhooks/<name>/`), versions
//! created with put-if-absent, so every replica sees a change on its next listing and two
//! concurrent changes cannot both win. A deletion is a version marked `deleted` (the history
//! stays). A definition names secrets; their values live in the server configuration
//! (`[[connectors.secrets]]`) and never in the warehouse.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::verify::Scheme;
use crate::error::{Error, Result};
use crate::storage::documents::DocumentLog;
use crate::storage::types::ColumnSpec;

const PREFIX: &str = "_strata/webhooks";

/// The columns every webhook table has, before the body.
pub(crate) const DELIVERY_ID: &str = "_delivery_id";
pub(crate) const WEBHOOK: &str = "_webhook";
pub(crate) const RECEIVED_AT: &str = "_received_at";
pub(crate) const HEADERS: &str = "_headers";
pub(crate) const BODY: &str = "body";

/// A per-webhook rate limit on verified deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained deliveries per second.
    pub per_second: u32,
    /// Deliveries allowed at once above the sustained rate (default: `per_second`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// What the admin sends: `PUT /api/v1/webhooks/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The target, `layer.table` (created when absent: the delivery columns, `body`, and
    /// `columns`).
    pub table: String,
    pub scheme: Scheme,
    /// Names of `[[connectors.secrets]]` of the server configuration; a delivery verifying
    /// under any of them is accepted (rotation: list the new one, then remove the old).
    pub secrets: Vec<String>,
    /// The header holding the signature (`scheme = "hmac"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// The service principal (`[[pipelines.principals]]`) rows are written as, under its
    /// grants and WITH CHECK.
    pub run_as: String,
    /// Accepted age of a signed timestamp (Standard Webhooks, Stripe), either way.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
    /// Largest body accepted (413 above), at most `[webhooks] max_body_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// How long a delivery waits for others to share its commit (the group commit window).
    #[serde(default = "default_window")]
    pub commit_window_ms: u64,
    /// Deliveries whose id was accepted within this many hours are duplicates.
    #[serde(default = "default_dedupe_hours")]
    pub dedupe_window_hours: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Request headers stored with each delivery (`_headers`, a JSON object), lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Typed columns filled from the body's top-level fields (the body is kept in `body`
    /// too); used when the table is created, checked against it otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnSpec>,
}

fn default_tolerance() -> u64 {
    300
}

fn default_window() -> u64 {
    200
}

fn default_dedupe_hours() -> u64 {
    24 * 7
}

/// The longest group commit window accepted: a sender waits this long for its answer.
const MAX_WINDOW_MS: u64 = 5_000;

impl WebhookSpec {
    /// Problems a definition has on its own (secrets and principals are checked against the
    /// configuration by the caller).
    pub(crate) fn check(&self, max_body: usize) -> Result<()> {
        if self.secrets.is_empty() {
            return Err(Error::invalid(
                "secrets: name at least one [[connectors.secrets]] entry",
            ));
        }
        match (self.scheme, &self.signature_header) {
            (Scheme::Hmac, None) => {
                return Err(Error::invalid(
                    "signature_header: scheme \"hmac\" needs the header that holds the signature",
                ));
            }
            (Scheme::Hmac, Some(h)) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                return Err(Error::invalid(format!(
                    "signature_header: {h:?} is not a header name"
                )));
            }
            (Scheme::Hmac, _) | (_, None) => {}
            (s, Some(_)) => {
                return Err(Error::invalid(format!(
                    "signature_header: the {s:?} scheme names its own headers; only \"hmac\" takes one"
                )));
            }
        }
        if let Some(h) = self
            .headers
            .iter()
            .find(|h| http::HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Err(Error::invalid(format!(
                "headers: {h:?} is not a header name"
            )));
        }
        if self.tolerance_secs == 0 || self.tolerance_secs > 3600 {
            return Err(Error::invalid(
                "tolerance_secs: between 1 and 3600 (Standard Webhooks and Stripe use 300)",
            ));
        }
        if self.commit_window_ms > MAX_WINDOW_MS {
            return Err(Error::invalid(format!(
                "commit_window_ms: at most {MAX_WINDOW_MS} (senders time out waiting)"
            )));
        }
        if self.dedupe_window_hours == 0 {
            return Err(Error::invalid("dedupe_window_hours: at least 1"));
        }
        match self.max_body_bytes {
            Some(0) => return Err(Error::invalid("max_body_bytes: at least 1")),
            Some(n) if n > max_body => {
                return Err(Error::invalid(format!(
                    "max_body_bytes: {n} is over the server's [webhooks] max_body_bytes ({max_body})"
                )));
            }
            _ => {}
        }
        if let Some(r) = self.rate_limit
            && (r.per_second == 0 || r.burst == Some(0))
        {
            return Err(Error::invalid(
                "rate_limit: per_second and burst are at least 1 (leave rate_limit out for none)",
            ));
        }
        let reserved = [DELIVERY_ID, WEBHOOK, RECEIVED_AT, HEADERS, BODY];
        if let Some(c) = self
            .columns
            .iter()
            .find(|c| reserved.contains(&c.name.as_str()))
        {
            return Err(Error::invalid(format!(
                "columns: {} is one of the delivery columns ({})",
                c.name,
                reserved.join(", ")
            )));
        }
        Ok(())
    }

    /// The table's columns when Strata creates it.
    pub(crate) fn table_columns(&self) -> Vec<ColumnSpec> {
        let column = |name: &str, data_type: &str, nullable: bool, description: &str| ColumnSpec {
            name: name.into(),
            data_type: data_type.into(),
            nullable,
            description: Some(description.into()),
        };
        let mut columns = vec![
            column(
                DELIVERY_ID,
                "STRING",
                false,
                "The delivery's idempotency key (signed id, or sha256 of the body)",
            ),
            column(WEBHOOK, "STRING", false, "The webhook that received it"),
            column(
                RECEIVED_AT,
                "TIMESTAMP",
                false,
                "When Strata received it (UTC)",
            ),
            column(
                HEADERS,
                "STRING",
                true,
                "Selected request headers, a JSON object",
            ),
            column(BODY, "STRING", false, "The body as received (text)"),
        ];
        columns.extend(self.columns.iter().cloned());
        columns
    }
}

/// One stored version of a webhook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub name: String,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
    #[serde(flatten)]
    pub spec: WebhookSpec,
    #[serde(default)]
    pub deleted: bool,
}

/// A name of a webhook: a path segment in the receiving URL and in the warehouse.
pub(crate) fn check_name(name: &str) -> Result<()> {
    crate::storage::documents::check_log_name("webhook", name)
}

#[derive(Debug, Clone)]
pub(crate) struct WebhookStore {
    store: Arc<dyn ObjectStore>,
}

impl WebhookStore {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> WebhookStore {
        WebhookStore { store }
    }

    fn log(&self, name: &str) -> DocumentLog {
        DocumentLog::new(Arc::clone(&self.store), Path::from(PREFIX).join(name))
    }

    /// The newest version of `name`, deleted or not.
    pub(crate) async fn latest(&self, name: &str) -> Result<Option<Webhook>> {
        Ok(self.log(name).latest::<Webhook>().await?.map(|(_, w)| w))
    }

    /// Stores `w` as the version after the newest; a concurrent change wins or loses whole
    /// (409 for the loser).
    pub(crate) async fn store(&self, w: &Webhook) -> Result<()> {
        self.log(&w.name).create(w.version, w).await
    }

    /// The names of every webhook ever stored.
    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        crate::storage::documents::log_names(self.store.as_ref(), &Path::from(PREFIX)).await
    }
}
