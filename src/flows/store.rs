//! Deployed pipelines: `{warehouse}/_strata/pipelines/<name>/<version>.json`, immutable
//! versions created with put-if-absent ([`DocumentLog`]), so every replica sees a deploy on
//! its next request and two concurrent deploys cannot both win. Undeploying stores a
//! version without models (the history stays).

use std::sync::Arc;

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

#[derive(Debug, Clone)]
pub(crate) struct PipelineStore {
    store: Arc<dyn ObjectStore>,
}

impl PipelineStore {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> PipelineStore {
        PipelineStore { store }
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
        let listing = match self
            .store
            .list_with_delimiter(Some(&Path::from(PREFIX)))
            .await
        {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Stores `deployment` as the version after `previous` (a conflict when another deploy
    /// stored it first).
    pub(crate) async fn store(&self, deployment: &Deployment) -> Result<()> {
        self.log(&deployment.name)
            .create(deployment.version, deployment)
            .await
            .map_err(|e| match e {
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
        self.store
            .put(
                &Self::pause_path(name),
                object_store::PutPayload::from(body),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn resume(&self, name: &str) -> Result<()> {
        match self.store.delete(&Self::pause_path(name)).await {
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
