//! One sync of a connector: pages fetched in order, their rows committed every
//! `checkpoint_pages` pages in one Delta commit that also carries where the sync is
//! (PLATFORM P6).
//!
//! ```text
//! latest checkpoint (txn marker strata:connector:<name> = seq, its commit info = state)
//!   resume set   → go on from resume.next, with the same lower bound
//!   otherwise    → a new sync from cursor − lookback, first page
//! per page: request (auth, rate limit, retries, 429 waits) → records → rows | dead letters
//! every N pages, at the end, or at max_pages:
//!   dead letters → <table>__dead_letter   (marker strata:connector:<name>:dead = seq + 1)
//!   rows + state → <table>                (marker strata:connector:<name>      = seq + 1)
//! ```
//!
//! The state and the rows it covers are one commit, so neither can be ahead of the other:
//! a crash (or a failed request) loses only the pages after the last checkpoint, which the
//! next run fetches again from the position that checkpoint holds. Two runs of one
//! connector (two replicas) cannot both commit checkpoint `seq + 1`: the loser's commit is
//! a duplicate of the winner's marker, and it stops. The main cursor moves only when a
//! sync completes, to the greatest incremental value of its records.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use deltalake::kernel::Transaction;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::definition::{ConnectorSpec, KeyIn, Pagination, SyncMode};
use super::egress::{self, Failed, Session, Spent};
use super::records::{DeadLetter, Mapper};
use super::{Auth, RunReport, RunStatus};
use crate::engine::Engine;
use crate::engine::tables::CheckpointWrite;
use crate::error::{Error, Result};
use crate::pipelines::commit;
use crate::security::Principal;
use crate::storage::TableRef;

/// The commit info key holding a checkpoint.
pub(crate) const CHECKPOINT_KEY: &str = "strata.connector";
/// Commits read back looking for the latest checkpoint (the connector's table is normally
/// written by it alone, so it is the newest commit).
const MAX_SCAN: u64 = 10_000;

/// Where a sync goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Position {
    First,
    Page(u64),
    Offset(u64),
    /// A cursor token from the last response.
    Token(String),
    /// The next page's URL (its credentials removed).
    Url(String),
}

/// An unfinished sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resume {
    /// The lower bound this sync asks from (kept until it completes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub next: Position,
    pub pages: u64,
    pub records: u64,
    /// The greatest incremental value committed by this sync so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seen: Option<String>,
}

/// A backfill's window: its own checkpoints (its own txn marker), its bounds sent as they
/// are, and the main cursor never moved by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Window {
    pub from: String,
    pub to: String,
}

/// A connector's state as its latest checkpoint committed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    pub connector: String,
    pub seq: u64,
    pub run_id: String,
    pub at: DateTime<Utc>,
    /// The incremental cursor: the greatest field value of the completed syncs' records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// The backfill window these checkpoints belong to (none: the main sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// The txn marker of the main sync's checkpoints, or of a backfill window's.
pub(crate) fn marker_id(connector: &str, window: Option<&Window>) -> String {
    match window {
        None => format!("strata:connector:{connector}"),
        Some(w) => {
            use sha2::Digest;
            let h = sha2::Sha256::digest(format!("{}\n{}", w.from, w.to).as_bytes());
            format!(
                "strata:connector:{connector}:backfill:{}",
                hex::encode(&h[..12])
            )
        }
    }
}

/// The latest checkpoint of `connector` in `t` (`None`: it never committed one).
pub(crate) async fn latest(
    engine: &Engine,
    t: &TableRef,
    connector: &str,
    window: Option<&Window>,
) -> Result<Option<Checkpoint>> {
    let catalog = engine.catalog();
    if !catalog.exists(t).await? {
        return Ok(None);
    }
    let Some(seq) = commit::marker(catalog, t, &marker_id(connector, window)).await? else {
        return Ok(None);
    };
    let seq = u64::try_from(seq).unwrap_or_default();
    let Some(version) = catalog.load(t).await?.version() else {
        return Ok(None);
    };
    let found = catalog
        .find_commit_info(t, version, MAX_SCAN, |info| {
            info.get(CHECKPOINT_KEY)
                .and_then(|c| serde_json::from_value::<Checkpoint>(c.clone()).ok())
                .is_some_and(|c| {
                    c.connector == connector && c.seq == seq && c.window.as_ref() == window
                })
        })
        .await?;
    match found {
        Some((_, info)) => Ok(info
            .get(CHECKPOINT_KEY)
            .and_then(|c| serde_json::from_value(c.clone()).ok())),
        None => Err(Error::internal(format!(
            "{t}: connector {connector}'s checkpoint {seq} is not among the newest {MAX_SCAN} commits"
        ))),
    }
}

/// Where a sync stands between checkpoints.
#[derive(Debug)]
struct Standing {
    /// The latest checkpoint's sequence number.
    seq: u64,
    cursor: Option<String>,
    since: Option<String>,
    /// The page to fetch next.
    next: Position,
    /// Pages and records of this sync so far (over its runs).
    pages: u64,
    records: u64,
    max_seen: Option<String>,
    resumed: bool,
    /// The next checkpoint overwrites the table (a full refresh's first).
    overwrite: bool,
}

/// What was fetched since the last checkpoint.
#[derive(Debug, Default)]
struct Pending {
    rows: Vec<RecordBatch>,
    dead: Vec<DeadLetter>,
    pages: u32,
    /// The greatest cursor value among `rows`.
    max: Option<String>,
}

/// Everything one sync needs.
pub(crate) struct Sync<'a> {
    pub engine: &'a Engine,
    pub name: &'a str,
    pub spec: &'a ConnectorSpec,
    pub writer: Arc<Principal>,
    pub table: TableRef,
    pub dead_table: TableRef,
    pub dead_schema: SchemaRef,
    pub mapper: Mapper,
    pub session: Session<'a>,
    pub auth: Auth<'a>,
    pub clock: &'a dyn crate::clock::Clock,
    pub cancel: CancellationToken,
    /// Counters other requests can read while it runs.
    pub live: &'a super::Live,
    /// A backfill's window (none: the main sync).
    pub window: Option<Window>,
}

impl Sync<'_> {
    fn first(&self) -> Position {
        match &self.spec.pagination {
            Pagination::Page { start, .. } => Position::Page(*start),
            Pagination::Offset { .. } => Position::Offset(0),
            _ => Position::First,
        }
    }

    /// The URL of the page at `pos`.
    fn url(&self, pos: &Position, since: Option<&str>) -> Result<url::Url> {
        let base = match pos {
            Position::Url(u) => u.as_str(),
            _ => self.spec.request.url.as_str(),
        };
        let mut url = url::Url::parse(base)
            .map_err(|e| Error::invalid(format!("next page URL {base:?}: {e}")))?;
        let home = self.home(&url);
        let mut set = |k: &str, v: &str| {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(n, _)| n != k)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            let mut q = url.query_pairs_mut();
            q.clear();
            q.extend_pairs(kept);
            q.append_pair(k, v);
        };
        if !matches!(pos, Position::Url(_)) {
            for (k, v) in &self.spec.request.query {
                set(k, v);
            }
            if let (Some(inc), Some(since)) = (&self.spec.incremental, since) {
                set(&inc.param, since);
            }
            if let (Some(inc), Some(w)) = (&self.spec.incremental, &self.window)
                && let Some(until) = &inc.until_param
            {
                set(until, &w.to);
            }
        }
        match (&self.spec.pagination, pos) {
            (
                Pagination::Page {
                    param,
                    size_param,
                    size,
                    ..
                },
                Position::Page(n),
            ) => {
                set(param, &n.to_string());
                if let (Some(p), Some(s)) = (size_param, size) {
                    set(p, &s.to_string());
                }
            }
            (
                Pagination::Offset {
                    param,
                    limit_param,
                    limit,
                },
                Position::Offset(n),
            ) => {
                set(param, &n.to_string());
                set(limit_param, &limit.to_string());
            }
            (Pagination::Cursor { param: Some(p), .. }, Position::Token(t)) => set(p, t),
            _ => {}
        }
        if let Some(super::definition::AuthSpec::ApiKey {
            name,
            location: KeyIn::Query,
            ..
        }) = &self.spec.auth
            && let Some(key) = self.auth.query_key()
            && home
        {
            set(name, key);
        }
        let mut out = url::Url::parse(url.as_str())
            .map_err(|e| Error::internal(format!("building the page URL: {e}")))?;
        if out.query() == Some("") {
            out.set_query(None);
        }
        Ok(out)
    }

    /// A next-page URL as stored in a checkpoint: without an API key the API echoed.
    fn storable(&self, mut url: url::Url) -> String {
        if let Some(super::definition::AuthSpec::ApiKey {
            name,
            location: KeyIn::Query,
            ..
        }) = &self.spec.auth
        {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(n, _)| n != name)
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        url.to_string()
    }

    /// The position after a page at `pos` that held `records` records.
    fn next(
        &self,
        pos: &Position,
        response: &egress::Response,
        body: &serde_json::Value,
        records: usize,
    ) -> Option<Position> {
        match (&self.spec.pagination, pos) {
            (Pagination::None, _) => None,
            (Pagination::Page { size, .. }, Position::Page(n)) => {
                let short = records == 0 || size.is_some_and(|s| (records as u64) < s);
                (!short).then(|| Position::Page(n + 1))
            }
            (Pagination::Offset { limit, .. }, Position::Offset(n)) => {
                let short = records == 0 || (records as u64) < *limit;
                (!short).then(|| Position::Offset(n + *limit))
            }
            (Pagination::Cursor { path, url, .. }, _) => {
                let path = serde_json_path::JsonPath::parse(path).ok()?;
                let value = path.query(body).first().cloned()?;
                let token = match value {
                    serde_json::Value::String(s) if !s.is_empty() => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                if *url {
                    let next = response.url.join(&token).ok()?;
                    Some(Position::Url(self.storable(next)))
                } else {
                    Some(Position::Token(token))
                }
            }
            (Pagination::Link, _) => egress::next_link(&response.headers, &response.url)
                .map(|u| Position::Url(self.storable(u))),
            _ => None,
        }
    }

    /// The position after a page that failed for good (dead-lettered): page and offset
    /// pagination skip it; the others cannot know the next page.
    fn skip(&self, pos: &Position) -> Option<Position> {
        match (&self.spec.pagination, pos) {
            (Pagination::Page { .. }, Position::Page(n)) => Some(Position::Page(n + 1)),
            (Pagination::Offset { limit, .. }, Position::Offset(n)) => {
                Some(Position::Offset(n + *limit))
            }
            _ => None,
        }
    }

    /// Whether `url` is on the definition's own origin: credentials go there only, never
    /// to another (allowed) host a next-page link names.
    fn home(&self, url: &url::Url) -> bool {
        url::Url::parse(&self.spec.request.url).is_ok_and(|u| u.origin() == url.origin())
    }

    async fn fetch(
        &self,
        url: url::Url,
        spent: &mut Spent,
    ) -> std::result::Result<egress::Response, Failed> {
        let mut refreshed = false;
        loop {
            let headers = if self.home(&url) {
                self.auth.headers(&self.session, spent, self.spec).await
            } else {
                self.auth.plain_headers(self.spec)
            };
            let headers = headers.map_err(|e| Failed {
                url: egress::redact(&url),
                status: None,
                error: e,
            })?;
            match self
                .session
                .send(url.clone(), http::Method::GET, &headers, None, spent)
                .await
            {
                Err(f) if f.status == Some(401) && self.auth.refreshable() && !refreshed => {
                    // An expired or revoked OAuth token: one fresh token, then give up.
                    self.auth.forget();
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    /// Where the sync stands at the start of this run: its latest checkpoint, resumed or
    /// a new sync from the cursor.
    async fn start(&self) -> Result<Standing> {
        let window = self.window.as_ref();
        let state = latest(self.engine, &self.table, self.name, window).await?;
        if let (Some(w), Some(done)) = (window, &state)
            && done.resume.is_none()
        {
            return Err(Error::AlreadyExists(format!(
                "connector {}'s window [{}, {}) was backfilled completely (checkpoint {}, run {})",
                self.name, w.from, w.to, done.seq, done.run_id
            )));
        }
        let seq = state.as_ref().map_or(0, |s| s.seq);
        let cursor = state.as_ref().and_then(|s| s.cursor.clone());
        Ok(match state.and_then(|s| s.resume) {
            Some(r) => Standing {
                seq,
                cursor,
                since: r.since,
                next: r.next,
                pages: r.pages,
                records: r.records,
                max_seen: r.max_seen,
                resumed: true,
                overwrite: false,
            },
            None if window.is_some() => Standing {
                seq,
                cursor: None,
                since: window.map(|w| w.from.clone()),
                next: self.first(),
                pages: 0,
                records: 0,
                max_seen: None,
                resumed: false,
                overwrite: false,
            },
            None => {
                let since = match (&self.spec.incremental, &cursor, self.mapper.cursor_kind()) {
                    (Some(inc), Some(c), Some(k)) => {
                        Some(k.bound(c, inc.lookback, inc.format.as_deref())?)
                    }
                    (Some(inc), None, _) => inc.start.clone(),
                    _ => None,
                };
                Standing {
                    seq,
                    cursor,
                    since,
                    next: self.first(),
                    pages: 0,
                    records: 0,
                    max_seen: None,
                    resumed: false,
                    overwrite: self.spec.mode == SyncMode::FullRefresh,
                }
            }
        })
    }

    /// Runs the sync; the report says how far it got.
    pub(crate) async fn run(&self, run_id: &str, report: &mut RunReport) -> Result<()> {
        let m = crate::telemetry::metrics();
        let mut at = self.start().await?;
        report.resumed = at.resumed;
        report.since = at.since.clone();
        let kind = self.mapper.cursor_kind();
        let mut pending = Pending::default();
        let mut spent = Spent::default();
        loop {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled(
                    "the run was stopped; the pages after its last checkpoint are fetched again by the next run".into(),
                ));
            }
            let url = self.url(&at.next, at.since.as_deref())?;
            let shown = egress::redact(&url);
            let fetched = match self.fetch(url, &mut spent).await {
                Ok(resp) => match serde_json::from_slice::<serde_json::Value>(&resp.body) {
                    Ok(body) => Ok((resp, body)),
                    Err(e) => Err(Failed {
                        url: shown.clone(),
                        status: None,
                        error: Error::invalid(format!("{shown}: the response is not JSON: {e}")),
                    }),
                },
                Err(f) => Err(f),
            };
            report.requests = spent.requests;
            report.retries = spent.retries;
            report.rate_limited_secs = spent.rate_limited.as_secs_f64();
            let next = match fetched {
                Ok((resp, body)) => {
                    let page = self.mapper.page(&body, &shown, run_id, self.clock.now())?;
                    let next = self.next(&at.next, &resp, &body, page.records);
                    m.connector_records(self.name, page.rows.num_rows() as u64);
                    at.records += page.records as u64;
                    report.records += page.records as u64;
                    report.rows += page.rows.num_rows() as u64;
                    self.live.progress(report.pages + 1, report.records);
                    if let Some(k) = kind {
                        pending.max = k.max(pending.max.take(), page.max_cursor.clone());
                    }
                    if page.rows.num_rows() > 0 {
                        pending.rows.push(page.rows);
                    }
                    pending.dead.extend(page.dead);
                    next
                }
                Err(f) => {
                    self.failed_request(f, &mut pending.dead)?;
                    self.skip(&at.next)
                }
            };
            report.pages += 1;
            at.pages += 1;
            pending.pages += 1;
            let at_max = report.pages >= self.spec.max_pages;
            if next.is_none() || at_max || pending.pages >= self.spec.checkpoint_pages {
                self.commit(run_id, &mut at, &mut pending, next.as_ref(), report)
                    .await?;
            }
            match next {
                Some(n) if !at_max => at.next = n,
                Some(_) => {
                    report.more = true;
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// A request that failed for good: a dead letter when the definition says so, the
    /// run's failure otherwise.
    fn failed_request(&self, f: Failed, dead: &mut Vec<DeadLetter>) -> Result<()> {
        if !self.spec.dead_letter_failed_requests {
            return Err(f.error);
        }
        dead.push(DeadLetter {
            url: f.url,
            record: String::new(),
            error: format!(
                "request failed{}: {}",
                f.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(),
                f.error
            ),
        });
        Ok(())
    }

    /// Commits a checkpoint: the pending dead letters, then the pending rows with where
    /// the sync goes on (`next`; `None`: it completed, and the cursor moves).
    async fn commit(
        &self,
        run_id: &str,
        at: &mut Standing,
        pending: &mut Pending,
        next: Option<&Position>,
        report: &mut RunReport,
    ) -> Result<()> {
        let target = at.seq + 1;
        let kind = self.mapper.cursor_kind();
        if let Some(k) = kind {
            at.max_seen = k.max(at.max_seen.take(), pending.max.take());
        }
        let state = Checkpoint {
            connector: self.name.to_string(),
            seq: target,
            run_id: run_id.to_string(),
            at: self.clock.now(),
            // A backfill never moves the cursor.
            cursor: match (next, kind, &self.window) {
                (None, Some(k), None) => k.max(at.cursor.clone(), at.max_seen.clone()),
                _ => at.cursor.clone(),
            },
            resume: next.map(|n| Resume {
                since: at.since.clone(),
                next: n.clone(),
                pages: at.pages,
                records: at.records,
                max_seen: at.max_seen.clone(),
            }),
            window: self.window.clone(),
        };
        if !pending.dead.is_empty() {
            self.commit_dead(target, run_id, &pending.dead).await?;
            report.dead_letters += pending.dead.len() as u64;
            pending.dead.clear();
        }
        let batch = match pending.rows.as_slice() {
            [] => Vec::new(),
            some => {
                let one = arrow::compute::concat_batches(self.mapper.schema(), some)?;
                match self.spec.mode {
                    SyncMode::AppendDedup => {
                        vec![super::records::last_per_key(&one, &self.spec.primary_key)?]
                    }
                    _ => vec![one],
                }
            }
        };
        let how = match self.spec.mode {
            SyncMode::FullRefresh if at.overwrite => CheckpointWrite::Overwrite,
            SyncMode::AppendDedup => CheckpointWrite::ReplaceKeys(self.spec.primary_key.clone()),
            _ => CheckpointWrite::Append,
        };
        let note = serde_json::to_value(&state).map_err(|e| Error::internal(e.to_string()))?;
        crate::failpoint::hit("connector.before_checkpoint");
        let outcome = self
            .engine
            .write_checkpoint(
                &self.writer,
                &self.table,
                batch,
                how,
                &[Transaction::new(
                    marker_id(self.name, self.window.as_ref()),
                    i64::try_from(target).unwrap_or(i64::MAX),
                )],
                vec![(CHECKPOINT_KEY.to_string(), note)],
            )
            .await?;
        if outcome.duplicate {
            return Err(Error::Conflict(format!(
                "another run of connector {} committed checkpoint {target} first; this run stops (the next one goes on from there)",
                self.name
            )));
        }
        pending.rows.clear();
        pending.pages = 0;
        at.overwrite = false;
        at.seq = target;
        at.cursor = state.cursor.clone();
        report.checkpoints += 1;
        report.version = Some(outcome.version);
        report.cursor = state.cursor;
        crate::failpoint::hit("connector.after_checkpoint");
        Ok(())
    }

    async fn commit_dead(&self, target: u64, run_id: &str, dead: &[DeadLetter]) -> Result<()> {
        if !self.engine.catalog().exists(&self.dead_table).await? {
            self.engine
                .create_model_table(
                    &self.writer,
                    &self.dead_table,
                    &self.dead_schema,
                    Some(&format!(
                        "Records and requests of connector {} that did not become rows of {}",
                        self.name, self.table
                    )),
                    &Default::default(),
                )
                .await?;
        }
        let n = dead.len();
        let now = self.clock.now().timestamp_micros();
        let s = |f: &dyn Fn(&DeadLetter) -> &str| -> Arc<dyn arrow::array::Array> {
            Arc::new(StringArray::from_iter_values(dead.iter().map(f)))
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&self.dead_schema),
            vec![
                Arc::new(StringArray::from(vec![self.name; n])),
                Arc::new(StringArray::from(vec![run_id; n])),
                Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
                s(&|d| d.url.as_str()),
                s(&|d| d.record.as_str()),
                s(&|d| d.error.as_str()),
            ],
        )?;
        let stored = self.engine.table_arrow_schema(&self.dead_table).await?;
        let batch = crate::ingest::conform(&batch, &stored)?;
        let outcome = self
            .engine
            .write_checkpoint(
                &self.writer,
                &self.dead_table,
                vec![batch],
                CheckpointWrite::Append,
                &[Transaction::new(
                    format!("{}:dead", marker_id(self.name, self.window.as_ref())),
                    i64::try_from(target).unwrap_or(i64::MAX),
                )],
                Vec::new(),
            )
            .await?;
        if !outcome.duplicate {
            crate::telemetry::metrics().connector_dead_letters(self.name, n as u64);
        }
        Ok(())
    }
}

/// The dead-letter table's columns.
pub(crate) fn dead_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("_connector", DataType::Utf8, true),
        Field::new("_run_id", DataType::Utf8, true),
        Field::new(
            "_failed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("url", DataType::Utf8, true),
        Field::new("record", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// The run's outcome for its report.
pub(crate) fn status_of(result: &Result<()>) -> RunStatus {
    match result {
        Ok(()) => RunStatus::Succeeded,
        Err(e) if e.kind() == crate::error::ErrorKind::Cancelled => RunStatus::Cancelled,
        Err(_) => RunStatus::Failed,
    }
}
