//! Admission and per-query limits.
//!
//! At most `query.max_concurrent` statements run at once; up to `query.max_queued` more wait
//! for a slot (at most `query.queue_timeout_secs`); beyond that a statement is refused with
//! `ResourceExhausted` (HTTP 429 / gRPC RESOURCE_EXHAUSTED), so overload never turns into
//! unbounded memory or a crash. An admitted query holds its slot until its result stream
//! ends or is dropped, stops at its deadline (`query.timeout_secs`) and at
//! `query.max_result_bytes`, and when the heap goes over the memory budget
//! ([`super::memory`]). Stopping means dropping the DataFusion stream, which cancels its
//! tasks: a timed-out query stops using CPU.
//!
//! Pipeline statements (a model's commit, a backfill batch) take their slots from the same
//! semaphore at a lower priority ([`Admission::admit_model`]): never while a query waits
//! for one, and at most `scheduler.max_concurrent_models` at once, so a backfill never
//! holds the slots interactive queries need. They wait as long as it takes (a run has no
//! client to answer 429 to).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{Future, Stream, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::config::QueryConfig;
use crate::engine::memory::{self, MemoryBudget, Registration};
use crate::error::{Error, Result};
use crate::telemetry::metrics;

/// Execution slots and the queue in front of them.
#[derive(Debug)]
pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    /// Pipeline statements' own cap.
    model_slots: Arc<Semaphore>,
    /// Queries waiting for a slot: pipeline statements wait while any does.
    waiting: Arc<AtomicUsize>,
    /// Woken when a slot frees.
    freed: Arc<Notify>,
    /// The process's memory budget: refuses statements near it, stops queries over it.
    memory: Arc<MemoryBudget>,
    max_concurrent: usize,
    max_queued: i64,
    queue_timeout: Duration,
    /// Query time limit (`None`: unlimited).
    pub timeout: Option<Duration>,
    /// Result size limit in Arrow bytes (`None`: unlimited).
    pub max_result_bytes: Option<u64>,
}

/// An execution slot; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
    memory: Registration,
}

/// A pipeline statement's slot: an execution slot and one of its class's.
#[derive(Debug)]
pub(crate) struct ModelSlot {
    _slot: Slot,
    _model: OwnedSemaphorePermit,
}

impl Drop for ModelSlot {
    fn drop(&mut self) {
        metrics().model_statements_running.dec();
    }
}

impl Slot {
    /// Resolves when the heap went over the memory budget while this statement ran.
    pub(crate) fn over_budget(&self) -> WaitForCancellationFutureOwned {
        self.memory.token().clone().cancelled_owned()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics().running.dec();
        // Released before the wake-up, so whoever wakes finds it free.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// Counts a query waiting for a slot however the wait ends.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics().queued.dec();
    }
}

/// Counts a pipeline statement waiting however the wait ends.
struct ModelQueued;

impl Drop for ModelQueued {
    fn drop(&mut self) {
        metrics().model_statements_waiting.dec();
    }
}

impl Admission {
    /// `max_concurrent_models`: `[scheduler]`'s (0: half the slots, at least one).
    pub(crate) fn new(
        cfg: &QueryConfig,
        max_concurrent_models: usize,
        memory_budget_bytes: u64,
    ) -> Admission {
        let max_concurrent = if cfg.max_concurrent == 0 {
            4 * std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.max_concurrent
        };
        let models = match max_concurrent_models {
            0 => (max_concurrent / 2).max(1),
            n => n,
        };
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            model_slots: Arc::new(Semaphore::new(models)),
            waiting: Arc::new(AtomicUsize::new(0)),
            freed: Arc::new(Notify::new()),
            memory: MemoryBudget::start(memory_budget_bytes),
            max_concurrent,
            max_queued: i64::try_from(cfg.max_queued).unwrap_or(i64::MAX),
            queue_timeout: Duration::from_secs(cfg.queue_timeout_secs),
            timeout: (cfg.timeout_secs > 0).then(|| Duration::from_secs(cfg.timeout_secs)),
            max_result_bytes: (cfg.max_result_bytes > 0).then_some(cfg.max_result_bytes),
        }
    }

    /// A slot now, or after waiting in the queue; `ResourceExhausted` when the queue is full
    /// or the wait times out.
    pub(crate) async fn admit(&self) -> Result<Slot> {
        let m = metrics();
        let memory = self.memory.admit()?;
        let slot = |permit| {
            m.running.inc();
            Slot {
                permit: Some(permit),
                freed: Arc::clone(&self.freed),
                memory,
            }
        };
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(slot(permit));
        }
        let busy = |what: &str| {
            m.rejected.inc();
            Error::ResourceExhausted(format!(
                "the server is busy: {} statements running, {what}; retry later",
                self.max_concurrent
            ))
        };
        let waiting = m.queued.inc();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(Arc::clone(&self.waiting));
        if waiting >= self.max_queued {
            return Err(busy(&format!(
                "{} waiting (query.max_queued)",
                self.max_queued
            )));
        }
        match tokio::time::timeout(self.queue_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(slot(permit)),
            Ok(Err(_)) => Err(Error::internal("admission semaphore closed")),
            Err(_) => Err(busy(&format!(
                "no slot within {} s (query.queue_timeout_secs)",
                self.queue_timeout.as_secs()
            ))),
        }
    }

    /// A slot for a pipeline statement: one of `max_concurrent_models`, then an execution
    /// slot taken only while no query waits for one. Waits without a deadline;
    /// `ResourceExhausted` only when the heap is near the memory budget.
    pub(crate) async fn admit_model(&self) -> Result<ModelSlot> {
        let m = metrics();
        m.model_statements_waiting.inc();
        let queued = ModelQueued;
        let model = Arc::clone(&self.model_slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("admission semaphore closed"))?;
        let permit = loop {
            // Registered before the check, so a slot freed in between still wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.waiting.load(Ordering::SeqCst) == 0
                && let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned()
            {
                break permit;
            }
            // A slot frees, or a query that was waiting got one some other way.
            tokio::select! {
                () = freed => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        drop(queued);
        let memory = self.memory.admit()?;
        m.running.inc();
        m.model_statements_running.inc();
        Ok(ModelSlot {
            _slot: Slot {
                permit: Some(permit),
                freed: Arc::clone(&self.freed),
                memory,
            },
            _model: model,
        })
    }

    /// The error a query gets at its deadline (counted).
    pub(crate) fn timeout_error(&self) -> Error {
        deadline_exceeded(self.timeout.map_or(0, |t| t.as_secs()))
    }

    /// The error a query gets when the heap went over the memory budget while it ran.
    pub(crate) fn over_budget_error(&self) -> Error {
        memory::over_budget(self.memory.limit(), "was exceeded while this query ran")
    }
}

fn deadline_exceeded(secs: u64) -> Error {
    metrics().timeouts.inc();
    Error::DeadlineExceeded(format!(
        "the query ran longer than {secs} s (query.timeout_secs) and was stopped"
    ))
}

/// What the end-of-stream event reports besides rows, bytes and outcome.
#[derive(Debug)]
pub(crate) struct Finished {
    pub principal: String,
    pub statement: &'static str,
    pub cache_hit: bool,
    /// When the statement arrived (planning included).
    pub started: std::time::Instant,
}

/// A result stream under limits: deadline, size cap, slot held until it ends; counts rows
/// and bytes served and logs one `strata::query` event when it ends, however it ends.
pub(crate) struct Limited {
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Resolves when the heap goes over the memory budget.
    over_budget: Pin<Box<WaitForCancellationFutureOwned>>,
    budget_error: Option<Error>,
    timeout_secs: u64,
    max_bytes: Option<u64>,
    bytes: u64,
    rows: u64,
    slot: Option<Slot>,
    finished: Option<Finished>,
}

impl std::fmt::Debug for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("bytes", &self.bytes)
            .field("max_bytes", &self.max_bytes)
            .field("done", &self.inner.is_none())
            .finish()
    }
}

impl Limited {
    pub(crate) fn new(
        inner: SendableRecordBatchStream,
        deadline: Option<Instant>,
        admission: &Admission,
        slot: Slot,
        finished: Finished,
    ) -> Limited {
        Limited {
            schema: inner.schema(),
            inner: Some(inner),
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            over_budget: Box::pin(slot.over_budget()),
            budget_error: Some(admission.over_budget_error()),
            timeout_secs: admission.timeout.map_or(0, |t| t.as_secs()),
            max_bytes: admission.max_result_bytes,
            bytes: 0,
            rows: 0,
            slot: Some(slot),
            finished: Some(finished),
        }
    }

    /// Ends the stream with `e`: drops the inner stream (cancelling its work) and the slot.
    fn stop(&mut self, e: Error) -> Poll<Option<datafusion::error::Result<RecordBatch>>> {
        self.inner = None;
        self.slot = None;
        self.log_end(e.kind().code());
        Poll::Ready(Some(Err(DataFusionError::External(Box::new(e)))))
    }

    fn stop_over_budget(&mut self) -> Poll<Option<datafusion::error::Result<RecordBatch>>> {
        let e = self
            .budget_error
            .take()
            .unwrap_or_else(|| Error::ResourceExhausted("memory budget exceeded".into()));
        self.stop(e)
    }

    fn log_end(&mut self, outcome: &str) {
        if let Some(f) = self.finished.take() {
            tracing::info!(
                target: "strata::query",
                principal = %f.principal,
                statement = f.statement,
                cache_hit = f.cache_hit,
                rows = self.rows,
                bytes = self.bytes,
                elapsed_ms = f.started.elapsed().as_millis() as u64,
                outcome,
                "result streamed"
            );
        }
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or cancelled.
        if self.inner.is_some() {
            self.log_end("cancelled");
        }
    }
}

impl Stream for Limited {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let e = deadline_exceeded(this.timeout_secs);
            return this.stop(e);
        }
        if this.over_budget.as_mut().poll(cx).is_ready() {
            return this.stop_over_budget();
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_next_unpin(cx) {
            // A batch computed while the heap went over the budget is not sent.
            Poll::Ready(Some(Ok(_))) if this.over_budget.as_mut().poll(cx).is_ready() => {
                this.stop_over_budget()
            }
            Poll::Ready(Some(Ok(batch))) => {
                let size = batch.get_array_memory_size() as u64;
                this.bytes += size;
                this.rows += batch.num_rows() as u64;
                if let Some(max) = this.max_bytes
                    && this.bytes > max
                {
                    metrics().result_too_large.inc();
                    return this.stop(Error::ResourceExhausted(format!(
                        "the result is larger than {max} bytes (query.max_result_bytes); add a filter, a LIMIT or fewer columns"
                    )));
                }
                let m = metrics();
                m.rows_served.inc_by(batch.num_rows() as u64);
                m.bytes_served.inc_by(size);
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(None) => {
                this.inner = None;
                this.slot = None;
                this.log_end("ok");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                this.slot = None;
                this.log_end(crate::error::classify_datafusion(&e).code());
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecordBatchStream for Limited {
    fn schema(&self) -> SchemaRef {
        SchemaRef::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_concurrent: usize, models: usize) -> Arc<Admission> {
        let cfg = QueryConfig {
            max_concurrent,
            queue_timeout_secs: 60,
            ..QueryConfig::default()
        };
        Arc::new(Admission::new(&cfg, models, u64::MAX / 4))
    }

    /// Yields until `ok` holds (tasks of a current-thread runtime make progress meanwhile).
    async fn until(ok: impl Fn() -> bool) {
        while !ok() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiting_query_gets_the_freed_slot_before_a_waiting_pipeline_statement() {
        let a = admission(1, 1);
        let held = a.admit().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let model = tokio::spawn({
            let (a, order) = (Arc::clone(&a), Arc::clone(&order));
            async move {
                let slot = a.admit_model().await.unwrap();
                order.lock().unwrap().push("model");
                drop(slot);
            }
        });
        // The pipeline statement waits first...
        until(|| a.model_slots.available_permits() == 0).await;
        let query = tokio::spawn({
            let (a, order) = (Arc::clone(&a), Arc::clone(&order));
            async move {
                let slot = a.admit().await.unwrap();
                order.lock().unwrap().push("query");
                tokio::task::yield_now().await;
                drop(slot);
            }
        });
        // ...and the query arrives after it.
        until(|| a.waiting.load(Ordering::SeqCst) == 1).await;
        drop(held);
        query.await.unwrap();
        model.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["query", "model"]);
        assert_eq!(a.slots.available_permits(), 1);
        assert_eq!(a.model_slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn pipeline_statements_never_exceed_their_cap_even_with_free_slots() {
        let a = admission(8, 2);
        let first = a.admit_model().await.unwrap();
        let second = a.admit_model().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), a.admit_model()).await;
        assert!(third.is_err(), "a third pipeline statement ran beside two");
        // Queries still have the other six slots.
        let queries: Vec<Slot> = futures::future::try_join_all((0..6).map(|_| a.admit()))
            .await
            .unwrap();
        // The first's slot goes to a query: every execution slot is taken.
        drop(first);
        let seventh = a.admit().await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(200), a.admit_model()).await;
        assert!(
            third.is_err(),
            "every execution slot is taken: the statement waits"
        );
        drop((queries, seventh));
        let third = tokio::time::timeout(Duration::from_secs(5), a.admit_model())
            .await
            .expect("a slot freed")
            .unwrap();
        drop((second, third));
        assert_eq!(a.slots.available_permits(), 8);
    }
}
