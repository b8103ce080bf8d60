//! OpenLineage 2-0-2 RunEvents to `[lineage.openlineage] url`: a bounded queue and one
//! background sender, so emission never blocks or fails a write.
//!
//! - [`Emitter::emit`] `try_send`s the event *unbuilt*: the writer pays for one queue slot,
//!   the sender builds and serializes the JSON. A full queue (or an event over
//!   `max_event_bytes` even without its column lineage) drops it, counted in
//!   `strata_openlineage_events_total{outcome="dropped"}`.
//! - One sender task posts events in queue order, so a run's START always reaches the
//!   receiver before its COMPLETE. A 5xx, a 429, a timeout or a refused connection is
//!   retried with jittered exponential backoff (up to 10 s) until it is accepted; any other
//!   4xx is the receiver refusing the event, which is dropped (`outcome="rejected"`), never
//!   retried.
//! - [`Emitter::flush`] waits (bounded) until everything queued was delivered: the server
//!   calls it on SIGTERM, inside its shutdown grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::config::OpenLineageConfig;
use crate::error::{Error, Result};

/// The longest pause between two attempts at one event.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The emitter's metrics (registered in the scrape by [`Emitter::register`]).
#[derive(Debug, Default)]
struct Stats {
    events: Family<OutcomeLabels, Counter>,
    retries: Counter,
    queued: Gauge,
}

/// Where events go; a disabled emitter (no `url`) drops nothing because it takes nothing.
#[derive(Debug, Clone, Default)]
pub struct Emitter {
    inner: Option<Arc<Inner>>,
}

/// An event as the writer hands it over: built by the sender, off the write's path.
type Event = Box<dyn FnOnce() -> serde_json::Value + Send>;

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Event>,
    namespace: String,
    /// Events accepted and not yet delivered or given up on.
    pending: AtomicUsize,
    stats: Stats,
}

impl Emitter {
    /// Starts the sender when `cfg.url` is set (on the current Tokio runtime).
    pub fn start(cfg: &OpenLineageConfig) -> Result<Emitter> {
        let Some(url) = cfg.url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(Emitter::default());
        };
        let target = format!(
            "{}/{}",
            url.trim_end_matches('/'),
            cfg.endpoint.trim_start_matches('/')
        );
        let target: reqwest::Url = target.parse().map_err(|e| {
            Error::Config(format!(
                "lineage.openlineage.url: {target:?} is not a URL: {e}"
            ))
        })?;
        let api_key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::Config(format!(
                    "lineage.openlineage.api_key_env: environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .build()
            .map_err(|e| Error::Config(format!("lineage.openlineage: HTTP client: {e}")))?;
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let inner = Arc::new(Inner {
            tx,
            namespace: cfg.namespace.clone(),
            pending: AtomicUsize::new(0),
            stats: Stats::default(),
        });
        let sender = Sender {
            client,
            target,
            api_key,
            max_event_bytes: cfg.max_event_bytes,
            inner: Arc::downgrade(&inner),
        };
        tokio::spawn(sender.run(rx));
        Ok(Emitter { inner: Some(inner) })
    }

    /// The namespace of Strata's jobs and datasets; `None` when emission is off.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.as_ref().map(|i| i.namespace.as_str())
    }

    /// Queues the event `build` makes (never waits); the sender builds it.
    pub fn emit(&self, build: impl FnOnce() -> serde_json::Value + Send + 'static) {
        let Some(inner) = &self.inner else { return };
        inner.pending.fetch_add(1, Ordering::SeqCst);
        if inner.tx.try_send(Box::new(build)).is_err() {
            inner.pending.fetch_sub(1, Ordering::SeqCst);
            inner.count("dropped");
            return;
        }
        inner.stats.queued.inc();
    }

    /// Waits until every queued event was delivered (or given up on), at most `within`.
    /// Whether the queue emptied.
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if inner.pending.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    left = inner.pending.load(Ordering::SeqCst),
                    "OpenLineage events not delivered before shutdown"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds the emitter's metrics to a scrape's registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let Some(inner) = &self.inner else { return };
        registry.register(
            "strata_openlineage_events",
            "OpenLineage events by outcome: sent, dropped (queue full or too large), rejected (4xx)",
            inner.stats.events.clone(),
        );
        registry.register(
            "strata_openlineage_retries",
            "OpenLineage deliveries retried (5xx, 429, timeout, connection refused)",
            inner.stats.retries.clone(),
        );
        registry.register(
            "strata_openlineage_queue_depth",
            "OpenLineage events queued, not yet delivered",
            inner.stats.queued.clone(),
        );
    }
}

impl Inner {
    fn count(&self, outcome: &'static str) {
        self.stats
            .events
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn done(&self, outcome: &'static str) {
        self.count(outcome);
        self.stats.queued.dec();
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `event`'s JSON; an event over `max_bytes` loses its column lineage first, and is `None`
/// when still too large.
fn encode(mut event: serde_json::Value, max_bytes: usize) -> Option<Vec<u8>> {
    let mut body = serde_json::to_vec(&event).unwrap_or_default();
    if body.len() > max_bytes {
        strip_column_lineage(&mut event);
        body = serde_json::to_vec(&event).unwrap_or_default();
    }
    if body.is_empty() || body.len() > max_bytes {
        tracing::warn!(
            bytes = body.len(),
            "OpenLineage event over lineage.openlineage.max_event_bytes: dropped"
        );
        return None;
    }
    Some(body)
}

/// Removes the `columnLineage` facets of an event's outputs (the part that grows with the
/// columns).
fn strip_column_lineage(event: &mut serde_json::Value) {
    if let Some(outputs) = event.get_mut("outputs").and_then(|o| o.as_array_mut()) {
        for o in outputs {
            if let Some(facets) = o.get_mut("facets").and_then(|f| f.as_object_mut()) {
                facets.remove("columnLineage");
            }
        }
    }
}

/// The background task posting queued events in order.
struct Sender {
    client: reqwest::Client,
    target: reqwest::Url,
    api_key: Option<String>,
    max_event_bytes: usize,
    /// Weak: the sender ends once the last emitter is gone and the queue is drained.
    inner: std::sync::Weak<Inner>,
}

/// What one attempt at delivering an event came to.
enum Delivery {
    Sent,
    Rejected(reqwest::StatusCode),
    Retry(String),
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(build) = rx.recv().await {
            let Some(body) = encode(build(), self.max_event_bytes) else {
                if let Some(inner) = self.inner.upgrade() {
                    inner.done("dropped");
                }
                continue;
            };
            let mut backoff = FIRST_BACKOFF;
            let outcome = loop {
                match self.post(&body).await {
                    Delivery::Sent => break "sent",
                    Delivery::Rejected(status) => {
                        tracing::warn!(%status, "OpenLineage receiver refused an event: dropped");
                        break "rejected";
                    }
                    Delivery::Retry(why) => {
                        tracing::debug!(why, "OpenLineage delivery failed; retrying");
                        if let Some(inner) = self.inner.upgrade() {
                            inner.stats.retries.inc();
                        }
                        tokio::time::sleep(jittered(backoff)).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            if let Some(inner) = self.inner.upgrade() {
                inner.done(outcome);
            }
        }
    }

    async fn post(&self, body: &[u8]) -> Delivery {
        let mut request = self
            .client
            .post(self.target.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => Delivery::Sent,
            Ok(r)
                if r.status().is_server_error()
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || r.status() == reqwest::StatusCode::REQUEST_TIMEOUT =>
            {
                Delivery::Retry(format!("status {}", r.status()))
            }
            Ok(r) => Delivery::Rejected(r.status()),
            Err(e) => Delivery::Retry(e.to_string()),
        }
    }
}

/// `d` ± 20%, so replicas retrying one receiver do not retry in step.
fn jittered(d: Duration) -> Duration {
    let spread = (uuid::Uuid::new_v4().as_u128() % 401) as f64 / 1000.0; // 0.0 ..= 0.4
    d.mul_f64(0.8 + spread)
}
