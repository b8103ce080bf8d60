//! Connector definitions: what `PUT /api/v1/connectors/{name}` (or `strata connectors deploy
//! FILE`) stores, and where.
//!
//! Written in TOML (JSON is accepted too), stored as a [`DocumentLog`] per connector
//! (`{warehouse}/_strata/connectors/<name>/`) like webhooks: put-if-absent versions, a
//! deletion is a version marked `deleted`. A definition names secrets and hosts; their
//! values and the hosts it may reach live in the server configuration.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::documents::DocumentLog;
use crate::webhooks::definition::RateLimit;

const PREFIX: &str = "_strata/connectors";

/// The columns every connector table has besides the mapped fields.
pub(crate) const CONNECTOR: &str = "_connector";
pub(crate) const RUN_ID: &str = "_run_id";
pub(crate) const EXTRACTED_AT: &str = "_extracted_at";

/// How a run's records land in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Every record fetched is appended.
    #[default]
    Append,
    /// One row per `primary_key`: a record replaces the row with its key (within a
    /// checkpoint, the last one fetched wins).
    AppendDedup,
    /// A run replaces the table: its first checkpoint overwrites, the rest append.
    FullRefresh,
}

/// The request every page repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// `http(s)://host[:port]/path[?query]`; its host must be in `[connectors]
    /// allowed_hosts`.
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    30
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyIn {
    #[default]
    Header,
    Query,
}

/// How requests authenticate; every `secret` names a `[[connectors.secrets]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// `Authorization: Bearer <secret>`.
    Bearer { secret: String },
    /// `Authorization: Basic base64(username:secret)`.
    Basic { username: String, secret: String },
    /// The secret in a header or query parameter called `name`.
    ApiKey {
        name: String,
        #[serde(rename = "in", default)]
        location: KeyIn,
        secret: String,
    },
    /// OAuth2 client credentials: a token from `token_url` (an allowed host too), refreshed
    /// before it expires and once on a 401.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

/// How the next page is asked for. Page and offset pagination stop at a page with no
/// records (or fewer than `size` / `limit`); cursor and link pagination when there is no
/// next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request.
    #[default]
    None,
    /// `?<param>=start, start+1, …` (and `<size_param>=<size>` when given).
    Page {
        #[serde(default = "default_page_param")]
        param: String,
        #[serde(default = "default_page_start")]
        start: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_param: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// `?<param>=0, limit, 2·limit, …&<limit_param>=<limit>`.
    Offset {
        #[serde(default = "default_offset_param")]
        param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        limit: u64,
    },
    /// The next page's token is read from the response at `path` (JSONPath) and sent as
    /// `?<param>=…`; a missing, null or empty token ends the sync. With `url = true` the
    /// value is the next page's whole URL instead.
    Cursor {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        #[serde(default)]
        url: bool,
    },
    /// The `Link: <…>; rel="next"` response header (RFC 8288).
    Link,
}

fn default_page_param() -> String {
    "page".into()
}
fn default_page_start() -> u64 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}

/// A column filled from each record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    /// JSONPath into the record (`$.id`, `$.owner.email`); default `$.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A column type (`bigint`, `string`, `timestamp`, `double`, `boolean`, …).
    #[serde(rename = "type", default = "default_field_type")]
    pub data_type: String,
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_field_type() -> String {
    "string".into()
}
fn default_true() -> bool {
    true
}

/// Where the records are in a response, and what is kept of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordsSpec {
    /// JSONPath selecting the records (`$.data[*]`); default `$[*]` (the body is an array).
    #[serde(default = "default_records_path")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
    /// A column keeping each record's JSON text as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_column: Option<String>,
}

fn default_records_path() -> String {
    "$[*]".into()
}

/// Incremental sync: the cursor is the greatest `field` over the committed records; a sync
/// asks for records from cursor − `lookback` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// A mapped field (a timestamp, an integer or a string column).
    pub field: String,
    /// The query parameter carrying the lower bound.
    pub param: String,
    /// Subtracted from the cursor when asking: seconds for a timestamp, units for an
    /// integer (not used for strings).
    #[serde(default)]
    pub lookback: u64,
    /// The lower bound of the first sync (none: the parameter is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// How a timestamp bound is written (strftime); default RFC 3339 (`…Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The query parameter carrying a backfill window's upper bound (exclusive, as the API
    /// reads it); a backfill needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_param: Option<String>,
}

/// Retries of a failed request (connection errors, timeouts and `statuses`), with
/// jittered exponential backoff. A 429 waits as told and does not spend an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    pub max_attempts: u32,
    pub statuses: Vec<u16>,
    pub base_ms: u64,
    pub max_ms: u64,
    /// Longest a run spends waiting on 429s before it fails.
    pub max_rate_limited_secs: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: 5,
            statuses: vec![408, 500, 502, 503, 504],
            base_ms: 500,
            max_ms: 30_000,
            max_rate_limited_secs: 900,
        }
    }
}

/// The spec of a connector: what is deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// The target, `layer.table` (created when absent: the fields, the raw column and
    /// `_connector`, `_run_id`, `_extracted_at`).
    pub table: String,
    /// The service principal (`[[pipelines.principals]]`) rows are written as.
    pub run_as: String,
    #[serde(default)]
    pub mode: SyncMode,
    /// Key columns (`append_dedup`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
    /// A cron expression (UTC) the scheduler's leader runs the connector on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Pages per checkpoint: one commit holding their rows and the sync's position.
    #[serde(default = "default_checkpoint")]
    pub checkpoint_pages: u32,
    /// Pages one run fetches at most (it checkpoints and ends; the next run goes on).
    #[serde(default = "default_max_pages")]
    pub max_pages: u64,
    /// Largest response body read (the request fails above it).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// A request that still fails after its retries is written to the dead-letter table
    /// and the sync goes on (page and offset pagination) or ends there, instead of failing
    /// the run.
    #[serde(default)]
    pub dead_letter_failed_requests: bool,
    /// Consecutive failed runs after which the connector pauses (resume:
    /// `POST /api/v1/connectors/{name}/resume`).
    #[serde(default = "default_breaker")]
    pub pause_after_failures: u32,
    pub request: RequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub pagination: Pagination,
    pub records: RecordsSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub retry: Retry,
}

fn default_checkpoint() -> u32 {
    50
}
fn default_max_pages() -> u64 {
    100_000
}
fn default_max_response() -> usize {
    16 * 1024 * 1024
}
fn default_breaker() -> u32 {
    5
}

impl ConnectorSpec {
    /// Reads a definition from its TOML text (or JSON, when it starts with `{`).
    pub fn parse(text: &str) -> Result<ConnectorSpec> {
        let spec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| Error::invalid(format!("connector definition (JSON): {e}")))?
        } else {
            toml::from_str(text)
                .map_err(|e| Error::invalid(format!("connector definition (TOML): {e}")))?
        };
        Ok(spec)
    }

    /// Problems a definition has on its own (secrets, hosts and principals are checked
    /// against the configuration by the caller).
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        url::Url::parse(&self.request.url)
            .map_err(|e| Error::invalid(format!("request.url: {e}")))
            .and_then(|u| match u.scheme() {
                "http" | "https" => Ok(()),
                s => Err(Error::invalid(format!(
                    "request.url: scheme {s} is not http or https"
                ))),
            })?;
        if self.request.timeout_secs == 0 || self.request.timeout_secs > 600 {
            return bad("request.timeout_secs: between 1 and 600".into());
        }
        for h in self.request.headers.keys() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return bad(format!("request.headers: {h:?} is not a header name"));
            }
        }
        if self.checkpoint_pages == 0 {
            return bad("checkpoint_pages: at least 1".into());
        }
        if self.max_pages == 0 {
            return bad("max_pages: at least 1".into());
        }
        if self.max_response_bytes < 1024 || self.max_response_bytes > 512 * 1024 * 1024 {
            return bad("max_response_bytes: between 1 KiB and 512 MiB".into());
        }
        if self.pause_after_failures == 0 {
            return bad("pause_after_failures: at least 1".into());
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > 50 {
            return bad("retry.max_attempts: between 1 and 50".into());
        }
        if self.retry.base_ms == 0 || self.retry.max_ms < self.retry.base_ms {
            return bad("retry: base_ms at least 1 and max_ms at least base_ms".into());
        }
        if let Some(r) = self.rate_limit
            && (r.per_second == 0 || r.burst == Some(0))
        {
            return bad("rate_limit: per_second and burst are at least 1".into());
        }
        match &self.pagination {
            Pagination::Offset { limit: 0, .. } => {
                return bad("pagination.limit: at least 1".into());
            }
            Pagination::Page { size: Some(0), .. } => {
                return bad("pagination.size: at least 1".into());
            }
            Pagination::Cursor {
                param: None,
                url: false,
                ..
            } => {
                return bad(
                    "pagination: a cursor goes into a query parameter (param = …) or is the next URL (url = true)"
                        .into(),
                );
            }
            Pagination::Cursor { path, .. } => json_path(path, "pagination.path")?,
            _ => {}
        }
        json_path(&self.records.path, "records.path")?;
        if self.records.fields.is_empty() && self.records.raw_column.is_none() {
            return bad(
                "records: map at least one field or keep the raw record (raw_column)".into(),
            );
        }
        let mut names: Vec<&str> = Vec::new();
        for f in &self.records.fields {
            crate::storage::validate_name(&f.name)
                .map_err(|e| Error::invalid(format!("records.fields: {e}")))?;
            crate::storage::types::parse_type(&f.data_type)
                .map_err(|e| Error::invalid(format!("records.fields.{}: {e}", f.name)))?;
            if let Some(p) = &f.path {
                json_path(p, &format!("records.fields.{}.path", f.name))?;
            }
            names.push(&f.name);
        }
        names.extend(self.records.raw_column.as_deref());
        let mut seen = std::collections::BTreeSet::new();
        for n in &names {
            if [CONNECTOR, RUN_ID, EXTRACTED_AT].contains(n) {
                return bad(format!(
                    "records: {n} is one of the connector's own columns"
                ));
            }
            if !seen.insert(n.to_ascii_lowercase()) {
                return bad(format!("records: column {n} is declared twice"));
            }
        }
        if let Some(raw) = &self.records.raw_column {
            crate::storage::validate_name(raw)
                .map_err(|e| Error::invalid(format!("records.raw_column: {e}")))?;
        }
        match (self.mode, self.primary_key.is_empty()) {
            (SyncMode::AppendDedup, true) => {
                return bad("primary_key: mode append_dedup needs the key columns".into());
            }
            (SyncMode::AppendDedup, false) => {}
            (_, false) => {
                return bad("primary_key: only mode append_dedup uses a key".into());
            }
            (_, true) => {}
        }
        let field = |n: &str| self.records.fields.iter().find(|f| f.name == n);
        if let Some(k) = self.primary_key.iter().find(|k| field(k).is_none()) {
            return bad(format!("primary_key: {k} is not a mapped field"));
        }
        if let Some(inc) = &self.incremental {
            if field(&inc.field).is_none() {
                return bad(format!(
                    "incremental.field: {} is not a mapped field",
                    inc.field
                ));
            }
            if inc.param.is_empty() {
                return bad("incremental.param: the query parameter carrying the cursor".into());
            }
        }
        self.trigger().schedule()?;
        Ok(())
    }

    /// The schedule as the scheduler reads it.
    pub(crate) fn trigger(&self) -> crate::flows::schedule::TriggerDef {
        crate::flows::schedule::TriggerDef {
            schedule: self.schedule.clone(),
            catchup: crate::flows::Catchup::Latest,
            ..Default::default()
        }
    }

    /// The hosts (with the OAuth token URL's) a sync reaches first.
    pub(crate) fn urls(&self) -> Vec<&str> {
        let mut out = vec![self.request.url.as_str()];
        if let Some(AuthSpec::Oauth2 { token_url, .. }) = &self.auth {
            out.push(token_url);
        }
        out
    }

    /// The secrets it names.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match &self.auth {
            None => Vec::new(),
            Some(
                AuthSpec::Bearer { secret }
                | AuthSpec::Basic { secret, .. }
                | AuthSpec::ApiKey { secret, .. },
            ) => vec![secret],
            Some(AuthSpec::Oauth2 { client_secret, .. }) => vec![client_secret],
        }
    }
}

fn json_path(p: &str, what: &str) -> Result<()> {
    serde_json_path::JsonPath::parse(p)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("{what}: {p:?} is not a JSONPath: {e}")))
}

/// One stored version of a connector.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connector {
    pub name: String,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
    pub spec: ConnectorSpec,
    #[serde(default)]
    pub deleted: bool,
}

/// A connector's name: a path segment in its URLs and in the warehouse.
pub(crate) fn check_name(name: &str) -> Result<()> {
    crate::storage::documents::check_log_name("connector", name)
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectorStore {
    store: Arc<dyn ObjectStore>,
}

impl ConnectorStore {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> ConnectorStore {
        ConnectorStore { store }
    }

    fn log(&self, name: &str) -> DocumentLog {
        DocumentLog::new(
            Arc::clone(&self.store),
            Path::from(PREFIX).join("definitions").join(name),
        )
    }

    fn status_log(&self, name: &str) -> DocumentLog {
        DocumentLog::new(
            Arc::clone(&self.store),
            Path::from(PREFIX).join("status").join(name),
        )
    }

    pub(crate) async fn latest(&self, name: &str) -> Result<Option<Connector>> {
        Ok(self.log(name).latest::<Connector>().await?.map(|(_, c)| c))
    }

    pub(crate) async fn store(&self, c: &Connector) -> Result<()> {
        self.log(&c.name).create(c.version, c).await
    }

    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        crate::storage::documents::log_names(
            self.store.as_ref(),
            &Path::from(PREFIX).join("definitions"),
        )
        .await
    }

    /// The newest status of `name` and its version.
    pub(crate) async fn status(&self, name: &str) -> Result<Option<(u64, super::Status)>> {
        self.status_log(name).latest().await
    }

    /// Stores `status` as `version` (put-if-absent: a concurrent writer conflicts).
    pub(crate) async fn put_status(
        &self,
        name: &str,
        version: u64,
        status: &super::Status,
    ) -> Result<()> {
        self.status_log(name).create(version, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
table = "bronze.contacts"
run_as = "ingest"
mode = "append_dedup"
primary_key = ["id"]
checkpoint_pages = 2

[request]
url = "http://127.0.0.1:9/contacts"
query = { per_page = "100" }

[auth]
type = "bearer"
secret = "crm"

[pagination]
type = "cursor"
path = "$.next"
param = "cursor"

[records]
path = "$.data[*]"
raw_column = "raw"
fields = [
  { name = "id", type = "bigint", nullable = false },
  { name = "email", path = "$.contact.email" },
  { name = "updated_at", type = "timestamp" },
]

[incremental]
field = "updated_at"
param = "updated_since"
lookback = 3600

[rate_limit]
per_second = 5
"#;

    #[test]
    fn a_toml_definition_reads_and_checks() {
        let spec = ConnectorSpec::parse(EXAMPLE).unwrap();
        spec.check().unwrap();
        assert_eq!(spec.mode, SyncMode::AppendDedup);
        assert_eq!(spec.secrets(), vec!["crm"]);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(ConnectorSpec::parse(&json).unwrap(), spec);
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let cases = [
            (
                "mode = \"append_dedup\"",
                "mode = \"append\"",
                "only mode append_dedup",
            ),
            (
                "field = \"updated_at\"",
                "field = \"nope\"",
                "not a mapped field",
            ),
            ("path = \"$.next\"", "path = \"$[\"", "not a JSONPath"),
            (
                "url = \"http://127.0.0.1:9/contacts\"",
                "url = \"ftp://x/y\"",
                "not http or https",
            ),
            ("checkpoint_pages = 2", "checkpoint_pages = 0", "at least 1"),
        ];
        for (from, to, expected) in cases {
            let text = EXAMPLE.replacen(from, to, 1);
            let e = ConnectorSpec::parse(&text)
                .and_then(|s| s.check())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{to}: {e}");
        }
        let e = ConnectorSpec::parse("table = 1").unwrap_err().to_string();
        assert!(e.contains("TOML"), "{e}");
    }
}
