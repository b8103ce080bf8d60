//! The result cache: Arrow batches of finished queries, keyed so that it can never serve
//! one principal's rows to another, nor rows from before a commit or a policy change.
//!
//! ```text
//! plan (parameters bound, per-principal catalog) ─┐
//! policy version ‖ principal fingerprint ─────────┼─ SHA-256 ─▶ key ─▶ hit: replay batches
//! every scanned (table, Delta version) ───────────┘                   miss: execute, tee
//! ```
//! Entries go in only after the result stream ended cleanly ([`tee`]); a commit or policy
//! change yields a new key, so a stale entry is unreachable (and ages out by TTL/size).
//! Queries with non-immutable functions (`now()`, `random()`), EXPLAIN, commands and
//! `information_schema` reads are never cached.
//!
//! Flight splits a query into GetFlightInfo (plans, computes the key, puts it in the signed
//! ticket) and DoGet, which replays an entry under the ticket's key without planning again
//! only after checking what planning would have: the policy version is unchanged and every
//! table is still at the version and Delta id the key was computed from
//! ([`crate::engine::Engine::fetch_cached`]).

pub mod key;
pub(crate) mod tee;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use moka::notification::RemovalCause;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use key::CacheKey;

use crate::config::CacheConfig;
use crate::telemetry::metrics::gauge_value;

/// A cached result.
#[derive(Debug)]
pub struct CachedResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub bytes: u64,
    /// The table versions the result was computed from (freshness checks, audit log).
    pub versions: Vec<key::TableVersion>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub not_modified: AtomicU64,
    pub uncacheable: AtomicU64,
    pub too_large: AtomicU64,
}

#[derive(Debug)]
pub struct ResultCache {
    entries: moka::sync::Cache<CacheKey, Arc<CachedResult>>,
    max_entry_bytes: u64,
    stats: Arc<CacheStats>,
}

impl ResultCache {
    /// `None` when disabled.
    pub fn new(cfg: &CacheConfig) -> Option<Arc<ResultCache>> {
        if !cfg.enabled || cfg.max_bytes == 0 {
            return None;
        }
        let stats = Arc::new(CacheStats::default());
        let listener_stats = Arc::clone(&stats);
        let entries = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<CachedResult>| {
                u32::try_from(v.bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_secs(cfg.ttl_secs.max(1)))
            .eviction_listener(move |_k, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    listener_stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Some(Arc::new(ResultCache {
            entries,
            max_entry_bytes: cfg.max_entry_bytes,
            stats,
        }))
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedResult>> {
        let hit = self.entries.get(key);
        let counter = if hit.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// The entry under `key`, counting nothing: for a probe whose caller either serves it
    /// ([`ResultCache::count_hit`]) or falls back to planning (which counts its own lookup).
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<CachedResult>> {
        self.entries.get(key)
    }

    pub fn count_hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub fn insert(&self, key: CacheKey, result: CachedResult) {
        self.entries.insert(key, Arc::new(result));
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// (entries, weighted bytes), after pending maintenance.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    /// Adds the cache's counters and gauges to a scrape's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let (entries, bytes) = self.usage();
        let s = &self.stats;
        let counters = [
            ("strata_cache_hits", "Result cache hits", &s.hits),
            (
                "strata_cache_misses",
                "Result cache misses (cacheable queries)",
                &s.misses,
            ),
            (
                "strata_cache_inserts",
                "Results inserted after a clean end of stream",
                &s.inserts,
            ),
            (
                "strata_cache_evictions",
                "Entries evicted by size or TTL",
                &s.evictions,
            ),
            (
                "strata_cache_not_modified",
                "REST requests answered 304 from If-None-Match",
                &s.not_modified,
            ),
            (
                "strata_cache_uncacheable",
                "Queries not cacheable (volatile functions, metadata)",
                &s.uncacheable,
            ),
            (
                "strata_cache_too_large",
                "Results over the per-entry limit",
                &s.too_large,
            ),
        ];
        for (name, help, v) in counters {
            registry.register(name, help, ConstCounter::new(v.load(Ordering::Relaxed)));
        }
        registry.register(
            "strata_cache_entries",
            "Cached results",
            ConstGauge::new(gauge_value(entries)),
        );
        registry.register(
            "strata_cache_bytes",
            "Arrow memory of cached results",
            ConstGauge::new(gauge_value(bytes)),
        );
    }
}
