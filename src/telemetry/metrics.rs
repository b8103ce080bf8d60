//! Process-wide metrics through `prometheus-client` (the Prometheus project's Rust client),
//! exposed as OpenMetrics text.
//!
//! One set per process, like the Prometheus clients' default registry: request counters and
//! latency histograms by protocol, route/method and status; rows and bytes served; commits,
//! conflicts and re-plans; admission (running, queued, rejected, timed out); the heap.
//! Gauges that belong to a component (memory pool, cache) are added to the scrape's
//! [`Registry`] by that component ([`crate::engine::Engine::render_metrics`]). Sample names
//! are those of the hand-written exposition this replaced (`strata_requests_total`, …), so
//! dashboards keep working: counters are registered without their `_total` suffix, which
//! the encoder adds.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

/// The OpenMetrics text content type (what [`encode`] writes).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    /// REST route template or Flight method.
    route: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    protocol: &'static str,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    pipeline: String,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpkeepLabels {
    table: String,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelRowLabels {
    model: String,
    /// `out`: rows written (appended, overwritten, or changed by a merge).
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpectationLabels {
    pipeline: String,
    model: String,
    expectation: String,
    action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabels {
    table: String,
    audit: String,
    severity: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// Empty for a name no webhook has (an attacker's names never become labels).
    webhook: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorOutcomeLabels {
    connector: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    model: String,
    source: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub rows_served: Counter,
    pub bytes_served: Counter,
    pub commits: Counter,
    pub conflicts: Counter,
    pub replans: Counter,
    pub running: Gauge,
    pub queued: Gauge,
    /// Pipeline statements holding / waiting for a slot (`engine::limits::Admission::admit_model`).
    pub model_statements_running: Gauge,
    pub model_statements_waiting: Gauge,
    pub rejected: Counter,
    pub timeouts: Counter,
    pub result_too_large: Counter,
    /// Conditional creates whose response was lost but which had landed
    /// (`storage::commit_guard`).
    pub ambiguous_resolved: Counter,
    /// Function calls refused before allocating (`engine::bounded`).
    pub function_output_refused: Counter,
    /// Statements refused, and queries stopped, because the heap was over the memory budget
    /// (`engine::memory`).
    pub memory_refused: Counter,
    pub memory_cancelled: Counter,
    /// Pipeline runs by pipeline and final status (`flows`).
    pipeline_runs: Family<RunLabels, Counter>,
    scheduled_maintenance: Family<UpkeepLabels, Counter>,
    model_rows: Family<ModelRowLabels, Counter>,
    /// Source versions a model has not consumed yet, as of its last run.
    watermark_lag: Family<LagLabels, Gauge>,
    /// Rows that violated an expectation (as `system.expectation_results` records them).
    expectation_violations: Family<ExpectationLabels, Counter>,
    /// Audits that found failing rows (as `system.audit_results` records them).
    audit_failures: Family<AuditLabels, Counter>,
    /// Seconds since a checked source's last commit, as of its last check.
    source_staleness: Family<TableLabels, Gauge>,
    /// 1 while this replica leads the scheduler (`scheduler::lease`).
    pub scheduler_is_leader: Gauge,
    /// Webhook deliveries by webhook and outcome (`webhooks`).
    webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Group commits of webhook deliveries, and the deliveries they held.
    webhook_commits: Family<WebhookLabels, Counter>,
    webhook_committed: Family<WebhookLabels, Counter>,
    /// Delivery ids forgotten before their dedupe window ended (`[webhooks] max_dedupe_keys`).
    pub webhook_dedupe_evicted: Counter,
    /// Connector requests by outcome (`ok`, `429`, `4xx`, `5xx`, `error`, `refused`).
    connector_requests: Family<ConnectorOutcomeLabels, Counter>,
    /// Seconds connectors waited on 429s.
    connector_rate_limited: Family<ConnectorLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    connector_retries: Family<ConnectorLabels, Counter>,
    connector_records: Family<ConnectorLabels, Counter>,
    connector_dead_letters: Family<ConnectorLabels, Counter>,
    connector_runs: Family<ConnectorOutcomeLabels, Counter>,
    /// Queries handed to the cluster (`src/cluster`).
    pub cluster_queries: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rows_served: Counter::default(),
            bytes_served: Counter::default(),
            commits: Counter::default(),
            conflicts: Counter::default(),
            replans: Counter::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            model_statements_running: Gauge::default(),
            model_statements_waiting: Gauge::default(),
            rejected: Counter::default(),
            timeouts: Counter::default(),
            result_too_large: Counter::default(),
            ambiguous_resolved: Counter::default(),
            function_output_refused: Counter::default(),
            memory_refused: Counter::default(),
            memory_cancelled: Counter::default(),
            pipeline_runs: Family::default(),
            scheduled_maintenance: Family::default(),
            model_rows: Family::default(),
            watermark_lag: Family::default(),
            expectation_violations: Family::default(),
            audit_failures: Family::default(),
            source_staleness: Family::default(),
            scheduler_is_leader: Gauge::default(),
            webhook_deliveries: Family::default(),
            webhook_commits: Family::default(),
            webhook_committed: Family::default(),
            webhook_dedupe_evicted: Counter::default(),
            connector_requests: Family::default(),
            connector_rate_limited: Family::default(),
            connector_retries: Family::default(),
            connector_records: Family::default(),
            connector_dead_letters: Family::default(),
            connector_runs: Family::default(),
            cluster_queries: Counter::default(),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// `registry` as OpenMetrics text.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}

impl Metrics {
    /// Counts one finished request and records its latency.
    pub fn request(&self, protocol: &'static str, route: &str, status: &str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                protocol,
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                protocol,
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one finished pipeline run.
    pub(crate) fn pipeline_run(&self, pipeline: &str, status: &'static str) {
        self.pipeline_runs
            .get_or_create(&RunLabels {
                pipeline: pipeline.to_string(),
                status,
            })
            .inc();
    }

    /// A scheduled OPTIMIZE / VACUUM (`op`) of `table` ended (`outcome`: ok, failed).
    pub(crate) fn scheduled_maintenance(
        &self,
        table: &str,
        op: &'static str,
        outcome: &'static str,
    ) {
        self.scheduled_maintenance
            .get_or_create(&UpkeepLabels {
                table: table.to_string(),
                op,
                outcome,
            })
            .inc();
    }

    /// Rows a model wrote in one run.
    pub(crate) fn model_rows(&self, model: &str, rows: u64) {
        self.model_rows
            .get_or_create(&ModelRowLabels {
                model: model.to_string(),
                direction: "out",
            })
            .inc_by(rows);
    }

    /// Versions of `source` that `model` has not consumed after its run.
    pub(crate) fn watermark_lag(&self, model: &str, source: &str, versions: u64) {
        self.watermark_lag
            .get_or_create(&LagLabels {
                model: model.to_string(),
                source: source.to_string(),
            })
            .set(gauge_value(versions));
    }

    /// Rows of one run that violated `expectation` (recorded in `system.expectation_results`).
    pub(crate) fn expectation_violations(
        &self,
        pipeline: &str,
        model: &str,
        expectation: &str,
        action: &str,
        rows: u64,
    ) {
        self.expectation_violations
            .get_or_create(&ExpectationLabels {
                pipeline: pipeline.to_string(),
                model: model.to_string(),
                expectation: expectation.to_string(),
                action: action.to_string(),
            })
            .inc_by(rows);
    }

    /// An audit of `table` that found failing rows (recorded in `system.audit_results`).
    pub(crate) fn audit_failure(&self, table: &str, audit: &str, severity: &str) {
        self.audit_failures
            .get_or_create(&AuditLabels {
                table: table.to_string(),
                audit: audit.to_string(),
                severity: severity.to_string(),
            })
            .inc();
    }

    /// Seconds since `table`'s last commit, as a freshness check saw it.
    pub(crate) fn source_staleness(&self, table: &str, seconds: i64) {
        self.source_staleness
            .get_or_create(&TableLabels {
                table: table.to_string(),
            })
            .set(seconds);
    }

    /// A webhook delivery's outcome: `accepted`, `duplicate`, `bad_signature`, `stale`,
    /// `too_large`, `rate_limited`, `invalid` or `failed`.
    pub(crate) fn webhook_delivery(&self, webhook: &str, outcome: &'static str) {
        self.webhook_deliveries
            .get_or_create(&DeliveryLabels {
                webhook: webhook.to_string(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn connector_request(&self, connector: &str, outcome: &'static str) {
        self.connector_requests
            .get_or_create(&ConnectorOutcomeLabels {
                connector: connector.to_string(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn connector_run(&self, connector: &str, outcome: &'static str) {
        self.connector_runs
            .get_or_create(&ConnectorOutcomeLabels {
                connector: connector.to_string(),
                outcome,
            })
            .inc();
    }

    pub(crate) fn connector_rate_limited(&self, connector: &str, waited: Duration) {
        self.connector_rate_limited
            .get_or_create(&ConnectorLabels {
                connector: connector.to_string(),
            })
            .inc_by(waited.as_secs_f64());
    }

    pub(crate) fn connector_retry(&self, connector: &str) {
        self.connector_retries
            .get_or_create(&ConnectorLabels {
                connector: connector.to_string(),
            })
            .inc();
    }

    pub(crate) fn connector_records(&self, connector: &str, n: u64) {
        self.connector_records
            .get_or_create(&ConnectorLabels {
                connector: connector.to_string(),
            })
            .inc_by(n);
    }

    pub(crate) fn connector_dead_letters(&self, connector: &str, n: u64) {
        self.connector_dead_letters
            .get_or_create(&ConnectorLabels {
                connector: connector.to_string(),
            })
            .inc_by(n);
    }

    /// A group commit of `deliveries` deliveries of `webhook`.
    pub(crate) fn webhook_commit(&self, webhook: &str, deliveries: u64) {
        let labels = WebhookLabels {
            webhook: webhook.to_string(),
        };
        self.webhook_commits.get_or_create(&labels).inc();
        self.webhook_committed
            .get_or_create(&labels)
            .inc_by(deliveries);
    }

    /// A registry for one scrape holding this process's metrics (handles to the same
    /// values) and the heap's figures as of now; components add theirs before encoding.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "strata_requests",
            "Finished requests by protocol, route (REST) or method (Flight), and status",
            self.requests.clone(),
        );
        r.register(
            "strata_request_duration_seconds",
            "Request latency (to the end of the response body) by protocol and route",
            self.latency.clone(),
        );
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "strata_rows_served",
                "Rows streamed to clients by queries",
                &self.rows_served,
            ),
            (
                "strata_bytes_served",
                "Arrow bytes streamed to clients by queries",
                &self.bytes_served,
            ),
            (
                "strata_commits",
                "Delta commits made by this process",
                &self.commits,
            ),
            (
                "strata_commit_conflicts",
                "Writes refused with 409 / ABORTED after losing commit races",
                &self.conflicts,
            ),
            (
                "strata_commit_replans",
                "MERGE/UPDATE/DELETE re-planned after losing a commit race",
                &self.replans,
            ),
            (
                "strata_queries_rejected",
                "Statements refused because every slot and the queue were full",
                &self.rejected,
            ),
            (
                "strata_query_timeouts",
                "Queries stopped at query.timeout_secs",
                &self.timeouts,
            ),
            (
                "strata_query_result_too_large",
                "Queries stopped at query.max_result_bytes",
                &self.result_too_large,
            ),
            (
                "strata_commit_ambiguous_resolved",
                "Conditional creates whose response was lost, found committed by reading back",
                &self.ambiguous_resolved,
            ),
            (
                "strata_function_output_refused",
                "Function calls refused before allocating past query.max_function_output_bytes",
                &self.function_output_refused,
            ),
            (
                "strata_memory_budget_refused",
                "Statements refused at admission because the heap was near server.memory_budget_bytes",
                &self.memory_refused,
            ),
            (
                "strata_memory_budget_cancelled",
                "Running queries stopped because the heap went over server.memory_budget_bytes",
                &self.memory_cancelled,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "strata_pipeline_runs",
            "Finished pipeline runs by pipeline and status",
            self.pipeline_runs.clone(),
        );
        r.register(
            "strata_scheduled_maintenance",
            "Scheduled OPTIMIZE / VACUUM of model tables by table, operation and outcome",
            self.scheduled_maintenance.clone(),
        );
        r.register(
            "strata_model_rows",
            "Rows written by pipeline models, by model and direction",
            self.model_rows.clone(),
        );
        r.register(
            "strata_model_watermark_lag_versions",
            "Source versions a model had not consumed at the end of its last run",
            self.watermark_lag.clone(),
        );
        r.register(
            "strata_expectation_violations",
            "Rows that violated a model's expectation, by pipeline, model, expectation and action (system.expectation_results)",
            self.expectation_violations.clone(),
        );
        r.register(
            "strata_webhook_deliveries",
            "Webhook deliveries by webhook and outcome (webhook is empty for unknown names)",
            self.webhook_deliveries.clone(),
        );
        r.register(
            "strata_webhook_commits",
            "Group commits of webhook deliveries",
            self.webhook_commits.clone(),
        );
        r.register(
            "strata_webhook_committed_deliveries",
            "Webhook deliveries written by group commits",
            self.webhook_committed.clone(),
        );
        r.register(
            "strata_webhook_dedupe_evicted",
            "Delivery ids forgotten before their dedupe window ended (webhooks.max_dedupe_keys)",
            self.webhook_dedupe_evicted.clone(),
        );
        r.register(
            "strata_connector_requests",
            "Connector requests by connector and outcome (ok, 429, 4xx, 5xx, error, refused)",
            self.connector_requests.clone(),
        );
        r.register(
            "strata_connector_rate_limited_seconds",
            "Seconds connectors waited because the API answered 429",
            self.connector_rate_limited.clone(),
        );
        r.register(
            "strata_cluster_queries",
            "Queries submitted to the cluster's scheduler",
            self.cluster_queries.clone(),
        );
        r.register(
            "strata_connector_retries",
            "Connector requests retried",
            self.connector_retries.clone(),
        );
        r.register(
            "strata_connector_records",
            "Records connectors turned into rows",
            self.connector_records.clone(),
        );
        r.register(
            "strata_connector_dead_letters",
            "Records and requests connectors wrote to dead-letter tables",
            self.connector_dead_letters.clone(),
        );
        r.register(
            "strata_connector_runs",
            "Connector runs by connector and outcome",
            self.connector_runs.clone(),
        );
        r.register(
            "strata_audit_failures",
            "Audits that found failing rows, by table, audit and severity (system.audit_results)",
            self.audit_failures.clone(),
        );
        r.register(
            "strata_source_staleness_seconds",
            "Seconds since a checked table's last commit, as of its last freshness check",
            self.source_staleness.clone(),
        );
        r.register(
            "strata_scheduler_is_leader",
            "1 while this replica leads the scheduler",
            self.scheduler_is_leader.clone(),
        );
        r.register(
            "strata_queries_running",
            "Statements holding an execution slot",
            self.running.clone(),
        );
        r.register(
            "strata_queries_queued",
            "Statements waiting for an execution slot",
            self.queued.clone(),
        );
        r.register(
            "strata_model_statements_running",
            "Pipeline statements (model commits, backfill batches) holding an execution slot",
            self.model_statements_running.clone(),
        );
        r.register(
            "strata_model_statements_waiting",
            "Pipeline statements waiting for a slot (after every waiting query)",
            self.model_statements_waiting.clone(),
        );
        if let Some(heap) = super::heap::stats() {
            for (name, help, v) in [
                (
                    "strata_heap_allocated_bytes",
                    "Bytes in live heap allocations",
                    heap.allocated,
                ),
                (
                    "strata_heap_resident_bytes",
                    "Resident bytes the allocator maps (live, freed but not yet returned, metadata)",
                    heap.resident,
                ),
                (
                    "strata_heap_retained_bytes",
                    "Virtual memory the allocator keeps mapped after returning its pages to the OS",
                    heap.retained,
                ),
            ] {
                r.register(name, help, ConstGauge::new(gauge_value(v)));
            }
        }
        r
    }
}

/// A byte figure as a gauge value (saturating: no real figure reaches i64::MAX).
pub(crate) fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("http", "/api/v1/query", "200", Duration::from_millis(3));
        m.request("http", "/api/v1/query", "200", Duration::from_millis(300));
        m.request("flight", "DoGet", "Ok", Duration::from_secs(100));
        m.rows_served.inc_by(7);
        let out = encode(&m.registry());
        assert!(
            out.contains(
                "strata_requests_total{protocol=\"http\",route=\"/api/v1/query\",status=\"200\"} 2"
            ),
            "{out}"
        );
        assert!(out.contains("strata_rows_served_total 7"), "{out}");
        assert!(out.contains("route=\"/api/v1/query\"} 1"), "{out}");
        assert!(
            out.contains(
                "strata_request_duration_seconds_count{protocol=\"flight\",route=\"DoGet\"} 1"
            ),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
