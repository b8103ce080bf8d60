//! One leader among the replicas sharing a warehouse, with nothing but put-if-absent (local
//! disk has no conditional update): an append-only lease log
//! `_strata/scheduler/lease/<epoch:020>.json` (PLATFORM P3).
//!
//! ```text
//! every tick (a third of the TTL):
//!   heartbeat _strata/scheduler/replicas/<replica>.json  → the store's "now" (its own clock)
//!   the newest lease E, and the time the store created it
//!   E is ours                      → renew: create E+1
//!   E is older than the TTL        → take over: create E+1
//!   otherwise                      → follow E's holder
//!   creating E+1 lost the race     → follow whoever won
//! ```
//!
//! Times that decide a take-over are the store's (lease and heartbeat creation times), never
//! a holder's clock, so a paused or skewed replica cannot extend its lease. A leader acts
//! only until its renewal is most of a TTL old by its own monotonic clock, which a follower
//! can only undercut by taking over after a full TTL of store time. Every renewal is a new
//! epoch: epochs strictly increase and are the fencing token runs record. A holder lists
//! before it renews, so a paused old leader never recreates a pruned name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::documents::DocumentLog;

const LEASES: &str = "_strata/scheduler/lease";
const REPLICAS: &str = "_strata/scheduler/replicas";
/// Lease files kept; older ones are pruned by the holder.
const KEPT_LEASES: u64 = 16;

/// A server process sharing the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Replica {
    /// Random per process.
    pub id: String,
    /// Where its REST API listens, as it reports it.
    pub address: String,
}

/// One lease file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    epoch: u64,
    holder: Replica,
    ttl_secs: f64,
}

/// What one tick found out.
#[derive(Debug, Clone)]
pub(crate) struct Leadership {
    /// The newest epoch (0: nobody ever led).
    pub(crate) epoch: u64,
    /// Its holder (the leader unless the lease expired).
    pub(crate) leader: Option<Replica>,
    /// This replica holds `epoch`.
    pub(crate) is_leader: bool,
    /// Until when this replica may act as leader (monotonic).
    pub(crate) valid_until: Option<Instant>,
    /// Replicas whose heartbeat the store saw within three TTLs, with that time.
    pub(crate) replicas: Vec<(String, DateTime<Utc>)>,
}

impl Leadership {
    /// Leading now: held, and not past the validity of the last renewal.
    pub(crate) fn leads(&self) -> bool {
        self.is_leader && self.valid_until.is_some_and(|t| Instant::now() < t)
    }
}

#[derive(Debug)]
pub(crate) struct LeaseLog {
    log: DocumentLog,
    store: Arc<dyn ObjectStore>,
    me: Replica,
    ttl: Duration,
}

impl LeaseLog {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, me: Replica, ttl: Duration) -> LeaseLog {
        LeaseLog {
            log: DocumentLog::new(Arc::clone(&store), Path::from(LEASES)),
            store,
            me,
            ttl,
        }
    }

    pub(crate) fn me(&self) -> &Replica {
        &self.me
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// One round of the protocol (module docs); `held` is the epoch this replica won last.
    pub(crate) async fn tick(&self, held: Option<u64>) -> Result<Leadership> {
        let started = Instant::now();
        let (now, replicas) = self.heartbeat().await?;
        let stored = self.log.stored().await?;
        let Some(&(epoch, created)) = stored.last() else {
            return self.claim(1, &stored, started, replicas).await;
        };
        let lease: Lease = match self.log.get(epoch).await {
            Ok(l) => l,
            // Pruned between the listing and the read: a newer one exists; next tick.
            Err(Error::NotFound(_)) => {
                return Ok(Leadership {
                    epoch,
                    leader: None,
                    is_leader: false,
                    valid_until: None,
                    replicas,
                });
            }
            Err(e) => return Err(e),
        };
        let ours = held == Some(epoch) && lease.holder == self.me;
        let expired = now.signed_duration_since(created)
            > chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        if ours || expired {
            return self.claim(epoch + 1, &stored, started, replicas).await;
        }
        Ok(Leadership {
            epoch,
            leader: Some(lease.holder),
            is_leader: false,
            valid_until: None,
            replicas,
        })
    }

    /// Writes this replica's heartbeat and lists everyone's: the store's time of ours is
    /// "now" by the store's clock.
    pub(crate) async fn heartbeat(&self) -> Result<(DateTime<Utc>, Vec<(String, DateTime<Utc>)>)> {
        let prefix = Path::from(REPLICAS);
        let body = serde_json::to_vec(&self.me).map_err(|e| Error::internal(e.to_string()))?;
        self.store
            .put(
                &prefix.clone().join(format!("{}.json", self.me.id)),
                PutPayload::from(body),
            )
            .await?;
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let beats: Vec<(String, DateTime<Utc>)> = metas
            .iter()
            .filter_map(|m| {
                let id = m.location.filename()?.strip_suffix(".json")?;
                Some((id.to_string(), m.last_modified))
            })
            .collect();
        let now = beats
            .iter()
            .find(|(id, _)| *id == self.me.id)
            .map(|(_, t)| *t)
            .ok_or_else(|| Error::Unavailable("the scheduler heartbeat did not list".into()))?;
        let window = chrono::Duration::from_std(self.ttl * 3).unwrap_or(chrono::Duration::MAX);
        let mut seen: Vec<(String, DateTime<Utc>)> = beats
            .into_iter()
            .filter(|(_, t)| now.signed_duration_since(*t) <= window)
            .collect();
        seen.sort();
        Ok((now, seen))
    }

    /// Creates lease `epoch` for this replica; losing the race means following the winner.
    async fn claim(
        &self,
        epoch: u64,
        stored: &[(u64, DateTime<Utc>)],
        started: Instant,
        replicas: Vec<(String, DateTime<Utc>)>,
    ) -> Result<Leadership> {
        let lease = Lease {
            epoch,
            holder: self.me.clone(),
            ttl_secs: self.ttl.as_secs_f64(),
        };
        match self.log.create(epoch, &lease).await {
            Ok(()) => {
                for (old, _) in stored.iter().filter(|(v, _)| v + KEPT_LEASES <= epoch) {
                    self.log.delete(*old).await?;
                }
                Ok(Leadership {
                    epoch,
                    leader: Some(self.me.clone()),
                    is_leader: true,
                    // A fifth of the TTL spare for clocks that run at slightly other rates.
                    valid_until: Some(started + self.ttl - self.ttl / 5),
                    replicas,
                })
            }
            Err(Error::Conflict(_)) => {
                let winner = self.log.get::<Lease>(epoch).await.ok().map(|l| l.holder);
                Ok(Leadership {
                    epoch,
                    leader: winner,
                    is_leader: false,
                    valid_until: None,
                    replicas,
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(store: &Arc<dyn ObjectStore>, id: &str, ttl: Duration) -> LeaseLog {
        LeaseLog::new(
            Arc::clone(store),
            Replica {
                id: id.into(),
                address: format!("http://{id}"),
            },
            ttl,
        )
    }

    #[tokio::test]
    async fn one_leader_renewals_raise_the_epoch_and_a_silent_leader_is_replaced() -> Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let ttl = Duration::from_millis(400);
        let (a, b, c) = (
            replica(&store, "a", ttl),
            replica(&store, "b", ttl),
            replica(&store, "c", ttl),
        );
        let la = a.tick(None).await?;
        let lb = b.tick(None).await?;
        let lc = c.tick(None).await?;
        assert!(la.leads() && !lb.is_leader && !lc.is_leader);
        assert_eq!((la.epoch, lb.epoch), (1, 1));
        assert_eq!(lb.leader.as_ref().map(|r| r.id.as_str()), Some("a"));
        assert_eq!(lc.replicas.len(), 3, "{:?}", lc.replicas);

        // Renewing: a new epoch each time; the followers follow.
        let la = a.tick(Some(la.epoch)).await?;
        assert!(la.leads());
        assert_eq!(la.epoch, 2);
        let lb = b.tick(None).await?;
        assert!(!lb.is_leader);
        assert_eq!(lb.epoch, 2);

        // `a` goes silent past the TTL: exactly one of the others takes over, a higher epoch.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert!(
            !la.leads(),
            "a stops acting on its own before anyone takes over"
        );
        let (lb, lc) = tokio::join!(b.tick(None), c.tick(None));
        let (lb, lc) = (lb?, lc?);
        assert!(lb.is_leader ^ lc.is_leader, "{lb:?} {lc:?}");
        assert_eq!(lb.epoch.max(lc.epoch), 3);
        // The deposed leader's renewal does not win: it follows.
        let la = a.tick(Some(la.epoch)).await?;
        assert!(!la.is_leader, "{la:?}");
        assert_eq!(la.epoch, 3);
        Ok(())
    }

    #[tokio::test]
    async fn old_leases_are_pruned() -> Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let a = replica(&store, "a", Duration::from_secs(5));
        let mut held = None;
        for _ in 0..40 {
            let l = a.tick(held).await?;
            assert!(l.leads());
            held = Some(l.epoch);
        }
        let log = DocumentLog::new(store, Path::from(LEASES));
        let versions = log.versions().await?;
        assert_eq!(versions.last(), Some(&40));
        assert!(versions.len() as u64 <= KEPT_LEASES, "{versions:?}");
        Ok(())
    }
}
