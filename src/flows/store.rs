//! Deployed pipelines: `{warehouse}/_strata/pipelines/<name>/<version>.json`, immutable
//! versions created with put-if-absent ([`DocumentLog`]), so every replica sees a deploy on
//! its next request and two concurrent deploys cannot both win. Undeploying stores a
//! version without models (the history stays).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::model::{ModelFile, PipelineDef};
use crate::error::{Error, Result};
use crate::storage::documents::DocumentLog;

const PREFIX: &str = "_strata/pipelines";
/// `<name>.json` while a pipeline's scheduling is paused.
const PAUSED: &str = "_strata/paused";

/// A paused pipeline: the scheduler records its slots as `paused` and starts nothing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pause {
    pub paused_by: String,
    pub paused_at: DateTime<Utc>,
}

/// One stored version of a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    pub name: String,
    pub version: u64,
    pub deployed_at: DateTime<Utc>,
    pub deployed_by: String,
    /// SHA-256 of the definition and models: the same content deployed again is the same
    /// version (replicas deploying `[pipelines] dir` together do not pile up versions).
    pub content_hash: String,
    pub pipeline: PipelineDef,
    pub models: Vec<ModelFile>,
    /// An undeploy: the pipeline no longer runs; its tables stay.
    #[serde(default)]
    pub undeployed: bool,
    /// Models this version changed so that their tables must be rebuilt (deployed with
    /// `allow_full_refresh`): their next run rebuilds them, once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refresh: Vec<String>,
    /// The static lineage of the models planned at deploy (`system.lineage_edges`, the
    /// lineage API until a batch supersedes it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(ignore)]
    pub(crate) lineage: Vec<super::plan::StaticLineage>,
}

/// The content hash of a definition and its models (model order does not matter).
pub(crate) fn content_hash(pipeline: &PipelineDef, models: &[ModelFile]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&ModelFile> = models.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let bytes =
        serde_json::to_vec(&(pipeline, sorted)).map_err(|e| Error::internal(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[derive(Debug)]
pub(crate) struct PipelineStore {
    store: Arc<dyn ObjectStore>,
    /// The last [`PipelineStore::live`] listing: when, under which generation, what.
    listed: Mutex<Option<Listing>>,
    /// Raised by every deploy, pause and resume through this replica.
    generation: AtomicU64,
}

#[derive(Debug, Clone)]
struct Listing {
    at: Instant,
    generation: u64,
    live: Vec<(Deployment, Option<Pause>)>,
}

impl PipelineStore {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> PipelineStore {
        PipelineStore {
            store,
            listed: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Live (not undeployed) pipelines and their pauses, read again when the last listing
    /// is older than `max_age` or this replica changed one since.
    pub(crate) async fn live(&self, max_age: Duration) -> Result<Vec<(Deployment, Option<Pause>)>> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Ok(listed) = self.listed.lock()
            && let Some(l) = listed.as_ref()
            && l.generation == generation
            && l.at.elapsed() < max_age
        {
            return Ok(l.live.clone());
        }
        let at = Instant::now();
        let mut live = Vec::new();
        for name in self.names().await? {
            let Some(d) = self.latest(&name).await? else {
                continue;
            };
            if d.undeployed {
                continue;
            }
            let paused = self.paused(&name).await?;
            live.push((d, paused));
        }
        if let Ok(mut listed) = self.listed.lock() {
            *listed = Some(Listing {
                at,
                generation,
                live: live.clone(),
            });
        }
        Ok(live)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn log(&self, name: &str) -> DocumentLog {
        DocumentLog::new(Arc::clone(&self.store), Path::from(PREFIX).join(name))
    }

    /// The newest version of `name` (an undeploy included).
    pub(crate) async fn latest(&self, name: &str) -> Result<Option<Deployment>> {
        Ok(self.log(name).latest().await?.map(|(_, d)| d))
    }

    /// Names of every pipeline ever deployed.
    pub(crate) async fn names(&self) -> Result<Vec<String>> {
        crate::storage::documents::log_names(self.store.as_ref(), &Path::from(PREFIX)).await
    }

    /// Stores `deployment` as the version after `previous` (a conflict when another deploy
    /// stored it first).
    pub(crate) async fn store(&self, deployment: &Deployment) -> Result<()> {
        // (Raised after the write: a listing that read the old state has the old number.)
        let stored = self
            .log(&deployment.name)
            .create(deployment.version, deployment)
            .await;
        self.changed();
        stored.map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "pipeline {} was deployed concurrently; read it again and retry",
                deployment.name
            )),
            other => other,
        })
    }

    fn pause_path(name: &str) -> Path {
        Path::from(PAUSED).join(format!("{name}.json"))
    }

    pub(crate) async fn pause(&self, name: &str, pause: &Pause) -> Result<()> {
        let body = serde_json::to_vec(pause).map_err(|e| Error::internal(e.to_string()))?;
        let put = self
            .store
            .put(
                &Self::pause_path(name),
                object_store::PutPayload::from(body),
            )
            .await;
        self.changed();
        put?;
        Ok(())
    }

    pub(crate) async fn resume(&self, name: &str) -> Result<()> {
        let deleted = self.store.delete(&Self::pause_path(name)).await;
        self.changed();
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn paused(&self, name: &str) -> Result<Option<Pause>> {
        match self.store.get(&Self::pause_path(name)).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("pause of pipeline {name}: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, version: u64) -> Deployment {
        Deployment {
            name: name.into(),
            version,
            deployed_at: Utc::now(),
            deployed_by: "test".into(),
            content_hash: String::new(),
            pipeline: PipelineDef::default(),
            models: Vec::new(),
            undeployed: false,
            refresh: Vec::new(),
            lineage: Vec::new(),
        }
    }

    fn names(live: &[(Deployment, Option<Pause>)]) -> Vec<(String, u64, bool)> {
        live.iter()
            .map(|(d, p)| (d.name.clone(), d.version, p.is_some()))
            .collect()
    }

    /// Changes through this replica show at once; another replica's within `max_age`.
    #[tokio::test]
    async fn the_live_listing_is_reread_after_a_local_change_or_when_it_aged() -> Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let (here, there) = (
            PipelineStore::new(Arc::clone(&store)),
            PipelineStore::new(store),
        );
        let long = Duration::from_secs(3600);
        here.store(&deployment("a", 1)).await?;
        assert_eq!(names(&here.live(long).await?), [("a".into(), 1, false)]);
        there.store(&deployment("b", 1)).await?;
        there
            .pause(
                "a",
                &Pause {
                    paused_by: "x".into(),
                    paused_at: Utc::now(),
                },
            )
            .await?;
        // Not yet seen here...
        assert_eq!(names(&here.live(long).await?), [("a".into(), 1, false)]);
        // ...but once the listing is older than asked for,
        assert_eq!(
            names(&here.live(Duration::ZERO).await?),
            [("a".into(), 1, true), ("b".into(), 1, false)]
        );
        // and at once after a change through this replica.
        here.resume("a").await?;
        assert_eq!(
            names(&here.live(long).await?),
            [("a".into(), 1, false), ("b".into(), 1, false)]
        );
        let mut gone = deployment("b", 2);
        gone.undeployed = true;
        here.store(&gone).await?;
        assert_eq!(names(&here.live(long).await?), [("a".into(), 1, false)]);
        Ok(())
    }
}
