//! Group commit: the deliveries of one webhook that arrive within its window share one
//! Delta commit, and each sender is answered only once the commit holding its delivery
//! landed (or failed: 503, so it retries).
//!
//! Deduplication is by the `_delivery_id` column within `dedupe_window_hours`, not a Delta
//! `txn` per delivery (millions of app ids would bloat every snapshot). The committer keeps
//! the ids it has seen in memory ([`Seen`]): read from the table at its first group (as of
//! one version), then kept up to date by its own commits and by reading the changes of any
//! version another writer (another replica) committed in between, before each group. A
//! delivery whose id is there is answered `duplicate` and written nowhere; one that repeats
//! an id of its own group shares the first one's fate.
//!
//! Limit (stated in the README): two replicas receiving the same delivery within the same
//! window can both commit it, as neither has seen the other's commit yet; a sender's retry
//! arrives seconds later and is deduplicated.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::definition::{BODY, DELIVERY_ID, HEADERS, RECEIVED_AT, WEBHOOK};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::storage::TableRef;

/// Deliveries one commit takes at most (the rest wait for the next).
const MAX_GROUP: usize = 20_000;
/// Body bytes one commit takes at most.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// One verified, parsed delivery waiting for its commit.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub id: String,
    pub received_at: DateTime<Utc>,
    pub headers: Option<String>,
    pub body: String,
    /// The body's typed columns (one row), when the webhook declares some.
    pub typed: Option<RecordBatch>,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landed {
    /// In the table as of this version.
    Committed(u64),
    /// Its id was accepted before (within the dedupe window): nothing written.
    Duplicate,
}

/// Where a webhook's deliveries go: the table, as whom, and the shape of its rows.
#[derive(Debug)]
pub(crate) struct Target {
    pub webhook: String,
    pub table: TableRef,
    pub writer: Arc<Principal>,
    /// The server reading its own table (the ids seen).
    pub reader: Arc<Principal>,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub schema: SchemaRef,
    pub window: Duration,
    pub dedupe_window: chrono::Duration,
    pub max_keys: usize,
}

type Reply = oneshot::Sender<Result<Landed>>;

/// The sending side of one webhook's committer task.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<(Delivery, Reply)>,
}

impl Committer {
    /// Starts the committer of `target` on the current runtime; it ends when every sender
    /// is dropped.
    pub(crate) fn start(engine: Arc<Engine>, target: Arc<Target>) -> Committer {
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        tokio::spawn(run(engine, target, rx));
        Committer { tx }
    }

    /// Queues `d` and waits for the commit that holds it.
    pub(crate) async fn submit(&self, d: Delivery) -> Result<Landed> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((d, reply))
            .await
            .map_err(|_| Error::Unavailable("the webhook's committer stopped; retry".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the webhook's commit was abandoned; retry".into()))?
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The delivery ids accepted within the window, oldest first.
#[derive(Debug, Default)]
struct Seen {
    keys: HashSet<u128>,
    order: VecDeque<(i64, u128)>,
    /// The table version these ids are complete up to (`None`: not read yet).
    version: Option<u64>,
}

fn key(id: &str) -> u128 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

impl Seen {
    fn contains(&self, id: &str) -> bool {
        self.keys.contains(&key(id))
    }

    fn insert(&mut self, id: &str, received_micros: i64, max_keys: usize) {
        let k = key(id);
        if self.keys.insert(k) {
            self.order.push_back((received_micros, k));
        }
        while self.order.len() > max_keys {
            if let Some((_, old)) = self.order.pop_front() {
                self.keys.remove(&old);
            }
            crate::telemetry::metrics().webhook_dedupe_evicted.inc();
        }
    }

    fn prune(&mut self, cutoff_micros: i64) {
        while let Some(&(at, k)) = self.order.front() {
            if at >= cutoff_micros {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&k);
        }
    }

    fn absorb(&mut self, batches: &[RecordBatch], max_keys: usize) -> Result<()> {
        for b in batches {
            let ids = cast(b.column(0), &DataType::Utf8)?;
            let ids = ids
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::internal("delivery ids are not strings"))?;
            let at = cast(
                b.column(1),
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )?;
            let at = at
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| Error::internal("received times are not timestamps"))?;
            for i in 0..b.num_rows() {
                if ids.is_valid(i) {
                    self.insert(ids.value(i), at.value(i), max_keys);
                }
            }
        }
        Ok(())
    }
}

use arrow::array::Array as _;

/// Brings `seen` up to the table's current version: the whole window at first, then the
/// changes of versions it has not seen (another replica's commits), read from the change
/// feed; a table without one (created by hand) is read whole again.
async fn catch_up(engine: &Engine, target: &Target, seen: &mut Seen) -> Result<()> {
    let current = engine.catalog().load(&target.table).await?.version();
    let Some(current) = current else {
        return Ok(());
    };
    let t = &target.table;
    let name = target.webhook.replace('\'', "''");
    let cutoff = (target.clock.now() - target.dedupe_window).format("%Y-%m-%d %H:%M:%S%.6f");
    let window = format!(
        "SELECT {DELIVERY_ID}, {RECEIVED_AT} FROM {t} VERSION AS OF {current} \
         WHERE {WEBHOOK} = '{name}' AND {RECEIVED_AT} >= TIMESTAMP '{cutoff}'"
    );
    let batches = match seen.version {
        Some(v) if v >= current => return Ok(()),
        Some(v) => {
            let changes = format!(
                "SELECT {DELIVERY_ID}, {RECEIVED_AT} FROM table_changes('{t}', {}, {current}) \
                 WHERE {WEBHOOK} = '{name}' AND _change_type = 'insert'",
                v + 1
            );
            match engine
                .query_rows(&target.reader, &changes, Vec::new())
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(webhook = %target.webhook, error = %e, "change feed unreadable; reading the window");
                    engine
                        .query_rows(&target.reader, &window, Vec::new())
                        .await?
                }
            }
        }
        None => {
            engine
                .query_rows(&target.reader, &window, Vec::new())
                .await?
        }
    };
    seen.absorb(&batches, target.max_keys)?;
    seen.version = Some(current);
    Ok(())
}

async fn run(engine: Arc<Engine>, target: Arc<Target>, mut rx: mpsc::Receiver<(Delivery, Reply)>) {
    let mut seen = Seen::default();
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + target.window;
        let mut bytes = first.0.body.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(next)) => {
                    bytes += next.0.body.len();
                    group.push(next);
                }
                // Every sender gone, or the window closed.
                Ok(None) | Err(_) => break,
            }
        }
        commit_group(&engine, &target, &mut seen, group).await;
    }
}

/// Commits one group and answers each of its senders.
async fn commit_group(
    engine: &Engine,
    target: &Target,
    seen: &mut Seen,
    group: Vec<(Delivery, Reply)>,
) {
    let m = crate::telemetry::metrics();
    if let Err(e) = catch_up(engine, target, seen).await {
        tracing::warn!(webhook = %target.webhook, error = %e, "reading accepted delivery ids");
        let why = format!("cannot check the delivery for duplicates now ({e}); retry");
        for (_, reply) in group {
            m.webhook_delivery(&target.webhook, "failed");
            let _ = reply.send(Err(Error::Unavailable(why.clone())));
        }
        return;
    }
    seen.prune((target.clock.now() - target.dedupe_window).timestamp_micros());
    // Fresh deliveries in arrival order; a repeat within the group follows its first.
    let mut fresh: Vec<(Delivery, Reply)> = Vec::new();
    let mut repeats: Vec<Reply> = Vec::new();
    let mut in_group = HashSet::new();
    for (d, reply) in group {
        if seen.contains(&d.id) {
            m.webhook_delivery(&target.webhook, "duplicate");
            let _ = reply.send(Ok(Landed::Duplicate));
        } else if !in_group.insert(key(&d.id)) {
            repeats.push(reply);
        } else {
            fresh.push((d, reply));
        }
    }
    if fresh.is_empty() {
        return;
    }
    let written = match rows(target, &fresh) {
        Ok(batch) => {
            crate::failpoint::hit("webhook.before_commit");
            engine
                .append_batches(&target.writer, &target.table, vec![batch], "WEBHOOK")
                .await
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(outcome) => {
            // Our own commit: the ids are known without reading them back. A version gap
            // (another writer in between) is read at the next group.
            if seen.version.is_some_and(|v| v + 1 == outcome.version) {
                seen.version = Some(outcome.version);
            }
            for (d, _) in &fresh {
                seen.insert(&d.id, d.received_at.timestamp_micros(), target.max_keys);
            }
            m.webhook_commit(&target.webhook, fresh.len() as u64);
            for (_, reply) in fresh {
                m.webhook_delivery(&target.webhook, "accepted");
                let _ = reply.send(Ok(Landed::Committed(outcome.version)));
            }
            for reply in repeats {
                m.webhook_delivery(&target.webhook, "duplicate");
                let _ = reply.send(Ok(Landed::Duplicate));
            }
        }
        Err(e) => {
            tracing::warn!(webhook = %target.webhook, table = %target.table, error = %e, "webhook commit failed");
            let why = format!("the delivery's commit failed ({e}); retry");
            for reply in fresh.into_iter().map(|(_, r)| r).chain(repeats) {
                m.webhook_delivery(&target.webhook, "failed");
                let _ = reply.send(Err(Error::Unavailable(why.clone())));
            }
        }
    }
}

/// The group's rows in the table's schema.
fn rows(target: &Target, fresh: &[(Delivery, Reply)]) -> Result<RecordBatch> {
    let n = fresh.len();
    fn strings<'a>(
        fresh: &'a [(Delivery, Reply)],
        f: impl Fn(&'a Delivery) -> Option<&'a str>,
    ) -> ArrayRef {
        Arc::new(StringArray::from_iter(fresh.iter().map(|(d, _)| f(d))))
    }
    let typed = fresh
        .iter()
        .filter_map(|(d, _)| d.typed.clone())
        .collect::<Vec<_>>();
    let typed = match typed.first() {
        Some(first) if typed.len() == n => {
            Some(arrow::compute::concat_batches(&first.schema(), &typed)?)
        }
        _ => None,
    };
    let mut columns = Vec::with_capacity(target.schema.fields().len());
    for field in target.schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            DELIVERY_ID => strings(fresh, |d| Some(d.id.as_str())),
            WEBHOOK => strings(fresh, |_| Some(target.webhook.as_str())),
            HEADERS => strings(fresh, |d| d.headers.as_deref()),
            BODY => strings(fresh, |d| Some(d.body.as_str())),
            RECEIVED_AT => Arc::new(TimestampMicrosecondArray::from_iter_values(
                fresh.iter().map(|(d, _)| d.received_at.timestamp_micros()),
            )),
            name => match typed.as_ref().and_then(|t| t.column_by_name(name)) {
                Some(c) => Arc::clone(c),
                None => arrow::array::new_null_array(field.data_type(), n),
            },
        };
        let column = if column.data_type() == field.data_type() {
            column
        } else {
            cast(&column, field.data_type())?
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::clone(&target.schema), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_leave_by_age_and_by_the_cap() {
        let mut s = Seen::default();
        s.insert("a", 10, 100);
        s.insert("b", 20, 100);
        s.insert("a", 30, 100);
        assert!(s.contains("a") && s.contains("b"));
        s.prune(15);
        assert!(!s.contains("a"), "its first sighting aged out");
        assert!(s.contains("b"));
        for (i, id) in ["c", "d", "e"].iter().enumerate() {
            s.insert(id, 40 + i as i64, 2);
        }
        assert!(!s.contains("b") && !s.contains("c"));
        assert!(s.contains("d") && s.contains("e"));
    }
}
