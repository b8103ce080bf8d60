//! The warehouse root: a local directory (the embedded default) or `s3://bucket/prefix`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use deltalake::DeltaTableBuilder;

use crate::config::StorageConfig;
use crate::error::{Error, Result};
use crate::storage::TableRef;
use crate::storage::commit_guard::CommitGuard;

/// Where the warehouse is, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

/// An opened warehouse: its root URL, the storage options delta-rs needs to open tables
/// under it, and an object store rooted at the warehouse for our own listings.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
    location: Location,
    storage_options: HashMap<String, String>,
    store: Arc<dyn ObjectStore>,
    /// S3 only: the bucket-rooted store delta-rs opens tables with (behind [`CommitGuard`]).
    bucket_store: Option<Arc<dyn ObjectStore>>,
}

impl Warehouse {
    /// Parses a warehouse string without touching the store.
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!("{s}: missing bucket")));
            }
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else if s.contains("://") {
            Err(Error::Config(format!(
                "{s}: only local paths and s3:// are supported"
            )))
        } else {
            Ok(Location::Local(std::path::PathBuf::from(s)))
        }
    }

    /// Opens (and for local disk, creates) the warehouse.
    pub fn open(cfg: &StorageConfig) -> Result<Warehouse> {
        let location = Warehouse::parse(&cfg.warehouse)?;
        match &location {
            Location::Local(path) => {
                std::fs::create_dir_all(path).map_err(|e| {
                    Error::Config(format!("cannot create warehouse {}: {e}", path.display()))
                })?;
                let abs = std::fs::canonicalize(path)?;
                let root = Url::from_directory_path(&abs).map_err(|()| {
                    Error::Config(format!("warehouse path {} is not absolute", abs.display()))
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&abs)
                    .map_err(|e| Error::Config(format!("warehouse {}: {e}", abs.display())))?
                    .with_automatic_cleanup(true);
                Ok(Warehouse {
                    root,
                    location,
                    storage_options: HashMap::new(),
                    store: Arc::new(store),
                    bucket_store: None,
                })
            }
            Location::S3 { bucket, prefix } => {
                let mut opts = HashMap::new();
                let s3 = &cfg.s3;
                if let Some(v) = &s3.endpoint {
                    opts.insert("aws_endpoint".to_string(), v.clone());
                }
                if let Some(v) = &s3.region {
                    opts.insert("aws_region".to_string(), v.clone());
                }
                if let Some(v) = &s3.access_key_id {
                    opts.insert("aws_access_key_id".to_string(), v.expose().to_string());
                }
                if let Some(v) = &s3.secret_access_key {
                    opts.insert("aws_secret_access_key".to_string(), v.expose().to_string());
                }
                opts.insert("aws_allow_http".to_string(), s3.allow_http.to_string());
                opts.insert(
                    "aws_virtual_hosted_style_request".to_string(),
                    (!s3.path_style).to_string(),
                );
                // Delta commits rely on put-if-absent; object_store sends If-None-Match.
                opts.insert("aws_conditional_put".to_string(), "etag".to_string());
                let retry = object_store::RetryConfig {
                    max_retries: s3.max_retries,
                    retry_timeout: Duration::from_secs(s3.retry_timeout_secs),
                    ..Default::default()
                };
                let client = object_store::ClientOptions::new()
                    .with_timeout(Duration::from_secs(s3.request_timeout_secs))
                    .with_connect_timeout(Duration::from_secs(s3.connect_timeout_secs));
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket.clone())
                    .with_retry(retry)
                    .with_client_options(client);
                for (k, v) in &opts {
                    let key: object_store::aws::AmazonS3ConfigKey = k
                        .parse()
                        .map_err(|e| Error::Config(format!("storage option {k}: {e}")))?;
                    builder = builder.with_config(key, v.clone());
                }
                let bucket_store: Arc<dyn ObjectStore> = Arc::new(CommitGuard::new(Arc::new(
                    builder
                        .build()
                        .map_err(|e| Error::Config(format!("S3 warehouse: {e}")))?,
                )));
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::clone(&bucket_store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        Arc::clone(&bucket_store),
                        Path::from(prefix.as_str()),
                    ))
                };
                let root_str = if prefix.is_empty() {
                    format!("s3://{bucket}/")
                } else {
                    format!("s3://{bucket}/{prefix}/")
                };
                let root =
                    Url::parse(&root_str).map_err(|e| Error::Config(format!("{root_str}: {e}")))?;
                Ok(Warehouse {
                    root,
                    location,
                    storage_options: opts,
                    store,
                    bucket_store: Some(bucket_store),
                })
            }
        }
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// Object store rooted at the warehouse (paths are relative to it).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A delta-rs builder for the table at `url` (a table root under this warehouse). On S3
    /// it shares the warehouse's connection pool and [`CommitGuard`]; local disk creates
    /// atomically without retries, so it needs neither.
    pub fn delta_builder(&self, url: Url) -> Result<DeltaTableBuilder> {
        let builder = DeltaTableBuilder::from_url(url.clone())?
            .with_storage_options(self.storage_options.clone());
        Ok(match &self.bucket_store {
            Some(store) => builder.with_storage_backend(Arc::clone(store), url),
            None => builder,
        })
    }

    /// `{warehouse}/{layer}/{name}/`.
    pub fn table_url(&self, t: &TableRef) -> Result<Url> {
        self.root
            .join(&format!("{}/{}/", t.layer.dir(), t.name))
            .map_err(|e| Error::internal(format!("table url for {t}: {e}")))
    }

    /// Checks that the store honours put-if-absent, the one primitive Delta commits rely on:
    /// create a scratch key twice; the second create must fail. Some S3 emulators ignore
    /// `If-None-Match` and would silently lose concurrent commits.
    pub async fn preflight_conditional_put(&self) -> Result<()> {
        use object_store::{ObjectStoreExt, PutMode, PutOptions};
        let path = Path::from(format!("_strata/preflight/{}", uuid::Uuid::new_v4()));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&path, "1".into(), create())
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "storage preflight: cannot write to the warehouse: {e}"
                ))
            })?;
        let second = self.store.put_opts(&path, "2".into(), create()).await;
        let _ = self.store.delete(&path).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(()),
            Ok(_) => Err(Error::Config(
                "the object store accepted a second put-if-absent on the same key: it ignores conditional puts (If-None-Match), so concurrent Delta commits would be lost. Use a store that supports them (AWS S3, MinIO), or set storage.s3.allow_unsafe_single_writer = true if exactly one writer will ever commit".into(),
            )),
            Err(e) => Err(Error::Unavailable(format!("storage preflight: {e}"))),
        }
    }

    /// Path of a table's root relative to the warehouse store.
    pub fn table_path(t: &TableRef) -> Path {
        Path::from(format!("{}/{}", t.layer.dir(), t.name))
    }
}
