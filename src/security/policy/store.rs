//! The policy store: `{warehouse}/_strata/policies/<version>.json`.
//!
//! Like the Delta log, every version is an immutable object created with put-if-absent: the
//! current policies are the highest version, two concurrent writers cannot both create the
//! same next version (one gets a conflict, never a lost update), and the history stays for
//! audit. Conditional *update* is not needed, which local disk does not offer.
//!
//! Reads are cheap: each request lists only versions newer than the cached one, so a change
//! made on any replica applies to the next query everywhere.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::RwLock;

use super::model::PolicyDoc;
use crate::config::AccessConfig;
use crate::error::{Error, Result};
use crate::security::AccessControl;

#[derive(Debug, Clone)]
struct Loaded {
    doc: PolicyDoc,
    access: Arc<AccessControl>,
}

#[derive(Debug)]
pub struct PolicyStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    admin_role: String,
    bypass_role: String,
    static_grants: AccessConfig,
    current: RwLock<Option<Loaded>>,
}

impl PolicyStore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        admin_role: String,
        bypass_role: String,
        static_grants: AccessConfig,
    ) -> PolicyStore {
        PolicyStore {
            store,
            prefix: Path::from("_strata/policies"),
            admin_role,
            bypass_role,
            static_grants,
            current: RwLock::new(None),
        }
    }

    fn path(&self, version: u64) -> Path {
        self.prefix.clone().join(format!("{version:020}.json"))
    }

    fn build(&self, doc: PolicyDoc) -> Result<Loaded> {
        let access = AccessControl::from_doc(
            self.admin_role.clone(),
            self.bypass_role.clone(),
            &self.static_grants,
            &doc,
        )?;
        Ok(Loaded {
            doc,
            access: Arc::new(access),
        })
    }

    /// The current policies.
    pub async fn current(&self) -> Result<Arc<AccessControl>> {
        Ok(self.loaded().await?.access)
    }

    /// The current document.
    pub async fn document(&self) -> Result<PolicyDoc> {
        Ok(self.loaded().await?.doc)
    }

    /// Highest stored version newer than `after` (all versions when `None`).
    async fn latest_after(&self, after: Option<u64>) -> Result<Option<u64>> {
        let listing = match after {
            Some(v) => self
                .store
                .list_with_offset(Some(&self.prefix), &self.path(v)),
            None => self.store.list(Some(&self.prefix)),
        };
        let metas: Vec<_> = match listing.try_collect().await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(metas
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|v| after.is_none_or(|a| *v > a))
            .max())
    }

    async fn loaded(&self) -> Result<Loaded> {
        let cached = self.current.read().await.clone();
        let newest = self
            .latest_after(cached.as_ref().map(|c| c.doc.version))
            .await?;
        let loaded = match (newest, cached) {
            (None, Some(cached)) => return Ok(cached),
            (None, None) => self.build(PolicyDoc::default())?,
            (Some(v), _) => {
                let bytes = self.store.get(&self.path(v)).await?.bytes().await?;
                let doc: PolicyDoc = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("policy document version {v} is corrupt: {e}"))
                })?;
                self.build(doc)?
            }
        };
        let mut slot = self.current.write().await;
        // Keep the newest of what concurrent loads found.
        if slot
            .as_ref()
            .is_none_or(|c| c.doc.version <= loaded.doc.version)
        {
            *slot = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// Applies `change` to the current document and stores it as the next version.
    /// `expected_version`, when given, must match the current version (optimistic locking
    /// for clients); a concurrent writer makes this a conflict.
    pub async fn update(
        &self,
        expected_version: Option<u64>,
        change: impl FnOnce(&mut PolicyDoc) -> Result<()>,
    ) -> Result<PolicyDoc> {
        let current = self.loaded().await?;
        if let Some(v) = expected_version
            && v != current.doc.version
        {
            return Err(Error::Conflict(format!(
                "policies changed: expected version {v}, current is {}",
                current.doc.version
            )));
        }
        let mut doc = current.doc.clone();
        change(&mut doc)?;
        doc.version = current.doc.version + 1;
        // Validate the whole result before storing it.
        let next = self.build(doc.clone())?;
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| Error::internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(doc.version), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => {}
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                return Err(Error::Conflict(
                    "policies were changed concurrently; read them again and retry".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        *self.current.write().await = Some(next);
        Ok(doc)
    }
}
