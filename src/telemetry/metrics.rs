//! Process-wide Prometheus metrics (text exposition format 0.0.4).
//!
//! One registry per process, like the Prometheus clients' default registry: request
//! counters and latency histograms by protocol, route/method and status; rows and bytes
//! served; commits, conflicts and re-plans; admission (running, queued, rejected, timed
//! out). Gauges that belong to a component (memory pool, cache) are rendered by it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// `(protocol, route or method, status)`.
type RequestKey = (&'static str, String, String);

/// The process's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    latency: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    pub rows_served: AtomicU64,
    pub bytes_served: AtomicU64,
    pub commits: AtomicU64,
    pub conflicts: AtomicU64,
    pub replans: AtomicU64,
    pub running: AtomicI64,
    pub queued: AtomicI64,
    pub rejected: AtomicU64,
    pub timeouts: AtomicU64,
    pub result_too_large: AtomicU64,
    /// Conditional creates whose response was lost but which had landed
    /// (`storage::commit_guard`).
    pub ambiguous_resolved: AtomicU64,
    /// Function calls refused before allocating (`engine::bounded`).
    pub function_output_refused: AtomicU64,
    /// Statements refused, and queries stopped, because the heap was over the memory budget
    /// (`engine::memory`).
    pub memory_refused: AtomicU64,
    pub memory_cancelled: AtomicU64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts one finished request and records its latency.
    pub fn request(&self, protocol: &'static str, route: &str, status: &str, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((protocol, route.to_string(), status.to_string()))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry((protocol, route.to_string())).or_default();
            let secs = elapsed.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends every metric of this registry in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            out,
            "strata_requests_total",
            "counter",
            "Finished requests by protocol, route (REST) or method (Flight), and status",
        );
        if let Ok(m) = self.requests.lock() {
            for ((protocol, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "strata_requests_total{{protocol=\"{protocol}\",route=\"{}\",status=\"{}\"}} {n}",
                    escape(route),
                    escape(status)
                );
            }
        }
        header(
            out,
            "strata_request_duration_seconds",
            "histogram",
            "Request latency (to the end of the response body) by protocol and route",
        );
        if let Ok(m) = self.latency.lock() {
            for ((protocol, route), h) in m.iter() {
                let labels = format!("protocol=\"{protocol}\",route=\"{}\"", escape(route));
                for (bound, n) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(
                        out,
                        "strata_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "strata_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                     strata_request_duration_seconds_sum{{{labels}}} {}\n\
                     strata_request_duration_seconds_count{{{labels}}} {}",
                    h.count, h.sum, h.count
                );
            }
        }
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "strata_rows_served_total",
                "Rows streamed to clients by queries",
                &self.rows_served,
            ),
            (
                "strata_bytes_served_total",
                "Arrow bytes streamed to clients by queries",
                &self.bytes_served,
            ),
            (
                "strata_commits_total",
                "Delta commits made by this process",
                &self.commits,
            ),
            (
                "strata_commit_conflicts_total",
                "Writes refused with 409 / ABORTED after losing commit races",
                &self.conflicts,
            ),
            (
                "strata_commit_replans_total",
                "MERGE/UPDATE/DELETE re-planned after losing a commit race",
                &self.replans,
            ),
            (
                "strata_queries_rejected_total",
                "Statements refused because every slot and the queue were full",
                &self.rejected,
            ),
            (
                "strata_query_timeouts_total",
                "Queries stopped at query.timeout_secs",
                &self.timeouts,
            ),
            (
                "strata_query_result_too_large_total",
                "Queries stopped at query.max_result_bytes",
                &self.result_too_large,
            ),
            (
                "strata_commit_ambiguous_resolved_total",
                "Conditional creates whose response was lost, found committed by reading back",
                &self.ambiguous_resolved,
            ),
            (
                "strata_function_output_refused_total",
                "Function calls refused before allocating past query.max_function_output_bytes",
                &self.function_output_refused,
            ),
            (
                "strata_memory_budget_refused_total",
                "Statements refused at admission because the heap was near server.memory_budget_bytes",
                &self.memory_refused,
            ),
            (
                "strata_memory_budget_cancelled_total",
                "Running queries stopped because the heap went over server.memory_budget_bytes",
                &self.memory_cancelled,
            ),
        ];
        for (name, help, v) in counters {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        for (name, help, v) in [
            (
                "strata_queries_running",
                "Statements holding an execution slot",
                &self.running,
            ),
            (
                "strata_queries_queued",
                "Statements waiting for an execution slot",
                &self.queued,
            ),
        ] {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
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
                header(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {v}");
            }
        }
    }
}

/// Label values: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "strata_requests_total{protocol=\"http\",route=\"/api/v1/query\",status=\"200\"} 2"
        ));
        assert!(out.contains("route=\"/api/v1/query\",le=\"0.005\"} 1"));
        assert!(out.contains("route=\"/api/v1/query\",le=\"0.5\"} 2"));
        assert!(out.contains("route=\"DoGet\",le=\"60\"} 0"));
        assert!(out.contains(
            "strata_request_duration_seconds_count{protocol=\"flight\",route=\"DoGet\"} 1"
        ));
    }
}
