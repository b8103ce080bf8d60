//! The time the scheduler and flows read: when a cron slot is due, when a retry may start,
//! when an upstream poll is next. Injected (never `Utc::now()` directly in those paths), so
//! tests drive minutes and hours of schedule with a [`ManualClock`] instead of sleeping.
//!
//! The lease (scheduler::lease) is the one exception, on purpose: who leads is decided by
//! the store's own timestamps and this process's monotonic clock, which no driven clock may
//! move.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of wall-clock time.
pub trait Clock: Debug + Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves once [`Clock::now`] reaches `t` (at once when it has).
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;

    /// Resolves at the clock's next jump (never, for a clock that only flows).
    fn changed(&self) -> BoxFuture<'static, ()>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// A clock that moves only when told ([`ManualClock::advance`], [`ManualClock::set`]).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.now.send_modify(|t| *t += by);
    }

    /// Moves the clock to `t` (never backwards: time only advances).
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_if_modified(|now| {
            let later = t > *now;
            if later {
                *now = t;
            }
            later
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // Ends with the clock (its sender dropped): nothing would ever wake it.
            let _ = rx.wait_for(|now| *now >= t).await;
        })
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        rx.mark_unchanged();
        Box::pin(async move {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The clock a server uses unless one is injected.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_it_reaches_their_time() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let c = ManualClock::new(start);
        let due = start + chrono::Duration::minutes(1);
        let sleeper = tokio::spawn(c.sleep_until(due));
        let changed = tokio::spawn(c.changed());
        tokio::task::yield_now().await;
        c.advance(Duration::from_secs(30));
        changed.await.unwrap();
        assert!(!sleeper.is_finished());
        c.set(start); // backwards: ignored
        assert_eq!(c.now(), start + chrono::Duration::seconds(30));
        c.advance(Duration::from_secs(30));
        sleeper.await.unwrap();
        assert_eq!(c.now(), due);
    }
}
