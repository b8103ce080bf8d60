//! Failpoints for crash tests: named points in the code where the process can be made to
//! die, switched on only by the `STRATA_FAILPOINTS` environment variable (comma-separated
//! names, each optionally `name@N`: die at its Nth hit, e.g. in the third batch of a run),
//! which nothing but the test suite sets. Aborting is how a SIGKILL or a power cut looks to
//! the warehouse: no destructor, no flush, no last commit.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms failpoints.
pub const ENV: &str = "STRATA_FAILPOINTS";

/// Armed names → (the hit that aborts, hits so far).
static ARMED: LazyLock<BTreeMap<String, (u64, AtomicU64)>> = LazyLock::new(|| {
    std::env::var(ENV)
        .map(|v| parse(&v))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, at)| (name, (at, AtomicU64::new(0))))
        .collect()
});

fn parse(v: &str) -> Vec<(String, u64)> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1)),
            None => (s.to_string(), 1),
        })
        .collect()
}

/// Aborts the process when `name` is armed (at its armed hit).
pub(crate) fn hit(name: &str) {
    if let Some((at, hits)) = ARMED.get(name)
        && hits.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        tracing::error!(
            failpoint = name,
            hit = at,
            "failpoint armed: aborting the process"
        );
        eprintln!("failpoint {name}@{at}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_counts_are_read() {
        assert_eq!(
            super::parse(" a , b@3,c@x,"),
            vec![("a".into(), 1), ("b".into(), 3), ("c".into(), 1)]
        );
    }
}
