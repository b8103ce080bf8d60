//! The scheduler (PLATFORM P3): one leader among the replicas sharing a warehouse, which
//! runs pipelines on their own. So far the election: every replica with `[scheduler]
//! enabled` ticks the lease log ([`lease`]) a few times per TTL; `GET /api/v1/scheduler`
//! and `strata_scheduler_is_leader` show who leads. Triggers, catch-up, retries and
//! backfill come on top of it.

pub(crate) mod lease;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
pub use lease::Replica;
use lease::{Leadership, LeaseLog};

/// The least TTL a lease may have: S3 (and its stand-ins) report object times to the second.
pub(crate) const MIN_LEASE_TTL_SECS: u64 = 5;

/// Problems of `[scheduler]`.
pub(crate) fn config_problems(cfg: &SchedulerConfig) -> Vec<String> {
    if cfg.lease_ttl_secs < MIN_LEASE_TTL_SECS {
        vec![format!(
            "scheduler.lease_ttl_secs = {} is below {MIN_LEASE_TTL_SECS}: object stores report times to the second, so a shorter lease can be taken over while its holder still acts",
            cfg.lease_ttl_secs
        )]
    } else {
        Vec::new()
    }
}

/// A replica as the scheduler last saw it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaSeen {
    pub id: String,
    /// When the store recorded its last heartbeat (the store's clock).
    pub last_seen: DateTime<Utc>,
}

/// `GET /api/v1/scheduler`, answered by every replica.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SchedulerView {
    /// `[scheduler] enabled` on this replica.
    pub enabled: bool,
    /// This replica.
    pub replica: Replica,
    /// This replica leads now.
    pub is_leader: bool,
    /// The holder of the newest lease, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<Replica>,
    /// The newest lease epoch (the fencing token; every renewal raises it).
    pub epoch: u64,
    pub lease_ttl_secs: u64,
    /// Replicas whose heartbeat the store saw within three TTLs.
    pub replicas: Vec<ReplicaSeen>,
    /// Why the last tick failed, while it does (this replica does not lead meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Scheduler {
    enabled: bool,
    lease: LeaseLog,
    state: RwLock<(Option<Leadership>, Option<String>)>,
}

impl Scheduler {
    /// `address` is where this replica's REST API listens (shown to the others).
    pub fn new(store: Arc<dyn ObjectStore>, address: String, cfg: &SchedulerConfig) -> Scheduler {
        let me = Replica {
            id: uuid::Uuid::new_v4().simple().to_string(),
            address,
        };
        Scheduler {
            enabled: cfg.enabled,
            lease: LeaseLog::new(store, me, Duration::from_secs(cfg.lease_ttl_secs)),
            state: RwLock::new((None, None)),
        }
    }

    /// Takes part in the election until `stop` (a tick every third of the TTL).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        let every = self.lease.ttl() / 3;
        loop {
            let led = self.leads_epoch().is_some();
            // The epoch won last, even if its validity lapsed locally: renewing it is safe
            // while nobody took over (creating the next epoch would then conflict).
            let held = self
                .state
                .read()
                .ok()
                .and_then(|s| s.0.as_ref().filter(|l| l.is_leader).map(|l| l.epoch));
            let result = self.lease.tick(held).await;
            let leads = match &result {
                Ok(l) => l.leads(),
                Err(_) => false,
            };
            if leads != led {
                let epoch = result.as_ref().map(|l| l.epoch).unwrap_or_default();
                tracing::info!(leads, epoch, "scheduler leadership changed");
            }
            crate::telemetry::metrics()
                .scheduler_is_leader
                .set(i64::from(leads));
            if let Ok(mut state) = self.state.write() {
                *state = match result {
                    Ok(l) => (Some(l), None),
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler lease tick failed; not leading");
                        (
                            state.0.take().map(|mut l| {
                                l.is_leader = false;
                                l
                            }),
                            Some(e.to_string()),
                        )
                    }
                };
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        crate::telemetry::metrics().scheduler_is_leader.set(0);
    }

    /// The epoch this replica leads under, while it leads.
    pub(crate) fn leads_epoch(&self) -> Option<u64> {
        let state = self.state.read().ok()?;
        state.0.as_ref().filter(|l| l.leads()).map(|l| l.epoch)
    }

    pub fn view(&self) -> SchedulerView {
        let (leadership, error) = self
            .state
            .read()
            .map(|s| s.clone())
            .unwrap_or((None, Some("scheduler state unreadable".into())));
        SchedulerView {
            enabled: self.enabled,
            replica: self.lease.me().clone(),
            is_leader: leadership.as_ref().is_some_and(Leadership::leads),
            leader: leadership.as_ref().and_then(|l| l.leader.clone()),
            epoch: leadership.as_ref().map_or(0, |l| l.epoch),
            lease_ttl_secs: self.lease.ttl().as_secs(),
            replicas: leadership
                .map(|l| {
                    l.replicas
                        .into_iter()
                        .map(|(id, last_seen)| ReplicaSeen { id, last_seen })
                        .collect()
                })
                .unwrap_or_default(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_shorter_than_the_stores_time_resolution_are_refused() {
        let cfg = |lease_ttl_secs| SchedulerConfig {
            enabled: true,
            lease_ttl_secs,
        };
        assert!(config_problems(&cfg(15)).is_empty());
        assert!(config_problems(&cfg(MIN_LEASE_TTL_SECS)).is_empty());
        let p = config_problems(&cfg(2));
        assert!(
            p.len() == 1 && p[0].starts_with("scheduler.lease_ttl_secs"),
            "{p:?}"
        );
    }
}
