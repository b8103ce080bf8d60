//! An append-only log of versioned JSON documents under one warehouse prefix:
//! `{prefix}/<version:020>.json`, each created with put-if-absent.
//!
//! The pattern of the Delta log and the policy store: the current document is the highest
//! version, two writers cannot both create the same version (one gets a conflict, never a
//! lost update), and every replica sees a new version on its next read. It needs only
//! put-if-absent, which local disk and S3 both offer; no conditional update.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The names of the logs under `prefix` (its immediate sub-directories), sorted.
pub(crate) async fn log_names(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<String>> {
    let listing = match store.list_with_delimiter(Some(prefix)).await {
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

/// A name of a document log that is also a URL path segment (webhooks, connectors):
/// 1 to 64 of `A-Z a-z 0-9 _ -`; `kind` names what it is in the error.
pub(crate) fn check_log_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} name {name:?}: 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DocumentLog {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl DocumentLog {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> DocumentLog {
        DocumentLog { store, prefix }
    }

    fn path(&self, version: u64) -> Path {
        self.prefix.clone().join(format!("{version:020}.json"))
    }

    /// Every stored version, oldest first.
    pub(crate) async fn versions(&self) -> Result<Vec<u64>> {
        Ok(self.stored().await?.into_iter().map(|(v, _)| v).collect())
    }

    /// Every stored version with the time the store created it (its own clock, not a
    /// writer's), oldest first.
    pub(crate) async fn stored(&self) -> Result<Vec<(u64, chrono::DateTime<chrono::Utc>)>> {
        let metas: Vec<_> = match self.store.list(Some(&self.prefix)).try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut versions: Vec<(u64, chrono::DateTime<chrono::Utc>)> = metas
            .iter()
            .filter(|m| m.location.prefix_matches(&self.prefix))
            .filter(|m| m.location.parts().count() == self.prefix.parts().count() + 1)
            .filter_map(|m| {
                let v = m
                    .location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()?;
                Some((v, m.last_modified))
            })
            .collect();
        versions.sort_unstable_by_key(|(v, _)| *v);
        Ok(versions)
    }

    /// Deletes `version` (pruning an old part of a log whose readers only need its end).
    pub(crate) async fn delete(&self, version: u64) -> Result<()> {
        match self.store.delete(&self.path(version)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest version and its document, if any.
    pub(crate) async fn latest<T: DeserializeOwned>(&self) -> Result<Option<(u64, T)>> {
        match self.versions().await?.last() {
            None => Ok(None),
            Some(&v) => Ok(Some((v, self.get(v).await?))),
        }
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, version: u64) -> Result<T> {
        let bytes = match self.store.get(&self.path(version)).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound(format!(
                    "{} has no version {version}",
                    self.prefix
                )));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::internal(format!(
                "document {} version {version} is corrupt: {e}",
                self.prefix
            ))
        })
    }

    /// Creates `version`; a conflict when it exists (another writer got there first).
    pub(crate) async fn create<T: Serialize>(&self, version: u64, doc: &T) -> Result<()> {
        let body = serde_json::to_vec_pretty(doc).map_err(|e| Error::internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(version), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Error::Conflict(format!(
                "{} version {version} was created concurrently; read it again and retry",
                self.prefix
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_are_created_once_and_the_newest_wins() -> Result<()> {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let log = DocumentLog::new(Arc::clone(&store), Path::from("_strata/pipelines/p"));
        let other = DocumentLog::new(store, Path::from("_strata/pipelines/p2"));
        assert!(log.latest::<serde_json::Value>().await?.is_none());
        log.create(1, &serde_json::json!({"a": 1})).await?;
        log.create(2, &serde_json::json!({"a": 2})).await?;
        other.create(7, &serde_json::json!({"b": 1})).await?;
        let again = log.create(2, &serde_json::json!({"a": 3})).await;
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        assert_eq!(log.versions().await?, vec![1, 2]);
        let (v, doc) = log
            .latest::<serde_json::Value>()
            .await?
            .ok_or_else(|| Error::internal("missing"))?;
        assert_eq!((v, doc), (2, serde_json::json!({"a": 2})));
        Ok(())
    }
}
