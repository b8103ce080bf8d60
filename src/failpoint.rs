//! Failpoints for crash tests: named points in the code where the process can be made to
//! die, switched on only by the `STRATA_FAILPOINTS` environment variable (comma-separated
//! names, each optionally `name@N`: die at its Nth hit, e.g. in the third batch of a run),
//! which nothing but the test suite sets. Aborting is how a SIGKILL or a power cut looks to
//! the warehouse: no destructor, no flush, no last commit. `name[@N]:stop` stops the process
//! there instead (SIGSTOP, every thread): how a long GC-like pause or a frozen VM looks to
//! the other replicas, until the test sends SIGCONT. `name[@N]:panic` panics the task that
//! hits it (how a bug in a dependency looks to a run).

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The variable that arms failpoints.
pub const ENV: &str = "STRATA_FAILPOINTS";

/// What an armed failpoint does at its hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Stop,
    /// Panics the task that hit it (a bug in a dependency, as the process sees it).
    Panic,
}

/// Armed names → (the hit that acts, what it does, hits so far).
static ARMED: LazyLock<BTreeMap<String, (u64, Action, AtomicU64)>> = LazyLock::new(|| {
    std::env::var(ENV)
        .map(|v| parse(&v))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, at, action)| (name, (at, action, AtomicU64::new(0))))
        .collect()
});

fn parse(v: &str) -> Vec<(String, u64, Action)> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (s, action) = if let Some(s) = s.strip_suffix(":stop") {
                (s, Action::Stop)
            } else if let Some(s) = s.strip_suffix(":panic") {
                (s, Action::Panic)
            } else {
                (s, Action::Abort)
            };
            match s.split_once('@') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1), action),
                None => (s.to_string(), 1, action),
            }
        })
        .collect()
}

/// Aborts (or stops) the process when `name` is armed (at its armed hit).
pub(crate) fn hit(name: &str) {
    if let Some((at, action, hits)) = ARMED.get(name)
        && hits.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        match action {
            Action::Abort => {
                tracing::error!(
                    failpoint = name,
                    hit = at,
                    "failpoint armed: aborting the process"
                );
                eprintln!("failpoint {name}@{at}: aborting");
                std::process::abort();
            }
            Action::Stop => {
                tracing::error!(
                    failpoint = name,
                    hit = at,
                    "failpoint armed: stopping the process"
                );
                eprintln!("failpoint {name}@{at}: stopping");
                // `kill` rather than raise(2): the crate forbids unsafe code. The signal
                // stops every thread of this process until SIGCONT.
                let stopped = std::process::Command::new("kill")
                    .args(["-STOP", &std::process::id().to_string()])
                    .status();
                if !stopped.is_ok_and(|s| s.success()) {
                    eprintln!("failpoint {name}@{at}: could not stop; aborting");
                    std::process::abort();
                }
            }
            Action::Panic => {
                tracing::error!(failpoint = name, hit = at, "failpoint armed: panicking");
                std::panic::panic_any(format!("failpoint {name}@{at}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_counts_are_read() {
        use super::Action::{Abort, Panic, Stop};
        assert_eq!(
            super::parse(" a , b@3,c@x,d@2:stop,e:stop,f:panic"),
            vec![
                ("a".into(), 1, Abort),
                ("b".into(), 3, Abort),
                ("c".into(), 1, Abort),
                ("d".into(), 2, Stop),
                ("e".into(), 1, Stop),
                ("f".into(), 1, Panic),
            ]
        );
    }
}
