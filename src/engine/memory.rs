//! The process's memory budget (`server.memory_budget_bytes`).
//!
//! Invariant: when the heap's live bytes reach the budget, running queries are stopped with
//! `ResourceExhausted` (429 / RESOURCE_EXHAUSTED) and, from 90% of it, new statements are
//! refused the same way until it falls back; the allocator is never the one that says no.
//!
//! ```text
//! watcher thread (every 5–50 ms): jemalloc stats.allocated
//!   ≥ 90% budget → admission refuses new statements (429), counted
//!   ≥ budget     → every running statement's token is cancelled; read streams stop with
//!                  429 at their next poll, their DataFusion tasks are dropped and free
//!                  their memory. Writes ignore the token: a commit is never cut off
//!                  (their join and sort state is bounded by the memory pool).
//! ```
//!
//! The budget backs up two bounds that hold per query: DataFusion's memory pool
//! (`query.memory_limit_bytes`, operators spill or fail) and the per-call bound of functions
//! whose output outgrows their input ([`super::bounded`]). What neither counts (batches in
//! flight between operators, results being encoded, the result cache, Delta log state) is
//! what the budget watches. Without jemalloc (musl, non-Unix) there is no reading and the
//! watcher does not run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::telemetry::{heap, metrics};

/// Fraction of the budget from which new statements are refused.
const ADMIT_BELOW: f64 = 0.9;

/// The running statements and whether the heap is near the budget.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: u64,
    pressure: AtomicBool,
    next: AtomicU64,
    running: Mutex<HashMap<u64, CancellationToken>>,
}

/// A statement's place in [`MemoryBudget`]: its token, removed when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    token: CancellationToken,
    budget: Arc<MemoryBudget>,
}

impl Registration {
    /// Cancelled when the heap went over the budget while the statement ran.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut running) = self.budget.running.lock() {
            running.remove(&self.id);
        }
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes, watched by a thread that ends with the budget.
    pub(crate) fn start(limit: u64) -> Arc<MemoryBudget> {
        let budget = Arc::new(MemoryBudget {
            limit,
            pressure: AtomicBool::new(false),
            next: AtomicU64::new(0),
            running: Mutex::new(HashMap::new()),
        });
        if heap::stats().is_some() {
            let watched = Arc::downgrade(&budget);
            let spawned = std::thread::Builder::new()
                .name("strata-memory".into())
                .spawn(move || watch(&watched));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the memory budget watcher");
            }
        }
        budget
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Refuses a new statement while the heap is near the budget.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Registration, Error> {
        if self.pressure.load(Ordering::Relaxed) {
            metrics().memory_refused.inc();
            return Err(over_budget(self.limit, "is nearly exhausted"));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, token.clone());
        }
        Ok(Registration {
            id,
            token,
            budget: Arc::clone(self),
        })
    }

    /// One reading of the heap: updates the pressure flag and stops running statements over
    /// the budget. Returns the live bytes read.
    fn check(&self, allocated: u64) {
        let near = allocated as f64 >= self.limit as f64 * ADMIT_BELOW;
        self.pressure.store(near, Ordering::Relaxed);
        if allocated < self.limit {
            return;
        }
        let Ok(running) = self.running.lock() else {
            return;
        };
        let fresh: Vec<&CancellationToken> =
            running.values().filter(|t| !t.is_cancelled()).collect();
        if fresh.is_empty() {
            return;
        }
        tracing::warn!(
            allocated,
            budget = self.limit,
            stopped = fresh.len(),
            "heap over server.memory_budget_bytes: stopping running queries"
        );
        metrics().memory_cancelled.inc_by(fresh.len() as u64);
        for t in fresh {
            t.cancel();
        }
    }
}

/// The error of a statement refused or stopped by the budget.
pub(crate) fn over_budget(limit: u64, what: &str) -> Error {
    Error::ResourceExhausted(format!(
        "the server's memory budget ({} MiB, server.memory_budget_bytes) {what}; retry later, or reduce the query",
        limit >> 20
    ))
}

fn watch(budget: &Weak<MemoryBudget>) {
    loop {
        let Some(b) = budget.upgrade() else {
            return;
        };
        let Some(stats) = heap::stats() else {
            return;
        };
        b.check(stats.allocated);
        // Close to the budget, look often; far from it, rarely.
        let pause = if stats.allocated * 2 < b.limit {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(5)
        };
        drop(b);
        std::thread::sleep(pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_running_statements_stop_and_new_ones_wait() {
        let budget = Arc::new(MemoryBudget {
            limit: 1000,
            pressure: AtomicBool::new(false),
            next: AtomicU64::new(0),
            running: Mutex::new(HashMap::new()),
        });
        let a = budget.admit().unwrap();
        let b = budget.admit().unwrap();
        budget.check(500);
        assert!(!a.token().is_cancelled());
        assert!(budget.admit().is_ok(), "below 90%: admitted");
        budget.check(950);
        assert!(
            !a.token().is_cancelled(),
            "near the budget: nothing stopped"
        );
        let e = budget.admit().unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::ResourceExhausted);
        budget.check(1000);
        assert!(a.token().is_cancelled() && b.token().is_cancelled());
        drop(a);
        assert_eq!(
            budget.running.lock().unwrap().len(),
            1,
            "deregistered on drop"
        );
        budget.check(100);
        assert!(budget.admit().is_ok(), "admitted again once the heap fell");
    }
}
