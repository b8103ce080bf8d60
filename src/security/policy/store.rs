//! The policy store: `{warehouse}/_strata/policies.json`.
//!
//! Reads are cheap: each request does one HEAD and re-reads the document only when its
//! ETag changed, so a change made on any replica applies to the next query everywhere.
//! Writes are compare-and-swap (conditional put on the ETag we read): a concurrent change
//! is a conflict, never a lost update.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::sync::RwLock;

use super::model::PolicyDoc;
use crate::config::AccessConfig;
use crate::error::{Error, Result};
use crate::security::AccessControl;

#[derive(Debug, Clone)]
struct Loaded {
    e_tag: Option<String>,
    version: Option<String>,
    doc: PolicyDoc,
    access: Arc<AccessControl>,
}

#[derive(Debug)]
pub struct PolicyStore {
    store: Arc<dyn ObjectStore>,
    path: Path,
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
            path: Path::from("_strata/policies.json"),
            admin_role,
            bypass_role,
            static_grants,
            current: RwLock::new(None),
        }
    }

    fn build(
        &self,
        doc: PolicyDoc,
        e_tag: Option<String>,
        version: Option<String>,
    ) -> Result<Loaded> {
        let access = AccessControl::from_doc(
            self.admin_role.clone(),
            self.bypass_role.clone(),
            &self.static_grants,
            &doc,
        )?;
        Ok(Loaded {
            e_tag,
            version,
            doc,
            access: Arc::new(access),
        })
    }

    /// The current policies (one HEAD; a GET only after a change).
    pub async fn current(&self) -> Result<Arc<AccessControl>> {
        Ok(self.loaded().await?.access)
    }

    /// The current document.
    pub async fn document(&self) -> Result<PolicyDoc> {
        Ok(self.loaded().await?.doc)
    }

    async fn loaded(&self) -> Result<Loaded> {
        let head = match self.store.head(&self.path).await {
            Ok(meta) => Some(meta),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(cached) = self.current.read().await.as_ref() {
            let same = match &head {
                Some(meta) => meta.e_tag.is_some() && meta.e_tag == cached.e_tag,
                None => cached.e_tag.is_none(),
            };
            if same {
                return Ok(cached.clone());
            }
        }
        let loaded = match head {
            None => self.build(PolicyDoc::default(), None, None)?,
            Some(_) => {
                let got = match self.store.get(&self.path).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Box::pin(self.loaded()).await;
                    }
                    Err(e) => return Err(e.into()),
                };
                let e_tag = got.meta.e_tag.clone();
                let version = got.meta.version.clone();
                let bytes = got.bytes().await?;
                let doc: PolicyDoc = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("policy document {} is corrupt: {e}", self.path))
                })?;
                self.build(doc, e_tag, version)?
            }
        };
        *self.current.write().await = Some(loaded.clone());
        Ok(loaded)
    }

    /// Applies `change` to the current document and stores it with a conditional put.
    /// `expected_version`, when given, must match the stored version (optimistic locking
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
        self.build(doc.clone(), None, None)?;
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| Error::internal(e.to_string()))?;
        let mode = match &current.e_tag {
            None => PutMode::Create,
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag.clone()),
                version: current.version.clone(),
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path, PutPayload::from(body), opts)
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
        *self.current.write().await = None;
        Ok(doc)
    }
}
