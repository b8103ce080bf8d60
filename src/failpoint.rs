//! Failpoints for crash tests: named points in the code where the process can be made to
//! die, switched on only by the `STRATA_FAILPOINTS` environment variable (comma-separated
//! names), which nothing but the test suite sets. Aborting is how a SIGKILL or a power cut
//! looks to the warehouse: no destructor, no flush, no last commit.

use std::collections::BTreeSet;
use std::sync::LazyLock;

/// The variable that arms failpoints.
pub const ENV: &str = "STRATA_FAILPOINTS";

static ARMED: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    std::env::var(ENV)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
});

/// Aborts the process when `name` is armed.
pub(crate) fn hit(name: &str) {
    if ARMED.contains(name) {
        tracing::error!(failpoint = name, "failpoint armed: aborting the process");
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
