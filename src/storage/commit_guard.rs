//! Put-if-absent that survives lost responses.
//!
//! Delta commits (and our policy documents) are created with put-if-absent. Over HTTP a
//! create can land while its response is lost; the client then retries the same request,
//! gets `412 Precondition Failed`, and reports "already exists". delta-rs reads that as
//! "another writer took this version" and commits the same actions again at the next
//! version: a duplicated commit (the AWS SDKs have the same trap, aws-sdk-java-v2#6580).
//! Any other error after the request was sent leaves the outcome unknown in the same way.
//!
//! [`CommitGuard`] wraps the store: when a create fails, it reads the object back, and if
//! the bytes there are exactly the bytes it tried to write, the create landed: it reports
//! success. Every Strata commit carries a unique `strata.commit_id`, so equal bytes mean
//! this very request, never a look-alike commit of another writer.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result as StoreResult,
};

/// An [`ObjectStore`] whose put-if-absent reads back before reporting a failure.
pub(crate) struct CommitGuard {
    inner: Arc<dyn ObjectStore>,
}

impl CommitGuard {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> CommitGuard {
        CommitGuard { inner }
    }

    /// Whether `location` now holds exactly `payload`.
    async fn holds(&self, location: &Path, payload: &PutPayload) -> bool {
        let Ok(found) = self.inner.get_opts(location, GetOptions::default()).await else {
            return false;
        };
        let Ok(found) = found.bytes().await else {
            return false;
        };
        let ours: Bytes = payload.iter().flatten().copied().collect();
        found == ours
    }
}

impl fmt::Debug for CommitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitGuard({})", self.inner)
    }
}

impl fmt::Display for CommitGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitGuard({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CommitGuard {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreResult<PutResult> {
        if !matches!(opts.mode, PutMode::Create) {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let result = self.inner.put_opts(location, payload.clone(), opts).await;
        match result {
            Ok(done) => Ok(done),
            Err(err) => {
                if self.holds(location, &payload).await {
                    crate::telemetry::metrics().ambiguous_resolved.inc();
                    tracing::warn!(
                        path = %location,
                        error = %err,
                        "a create reported failure but its object is in place: it landed"
                    );
                    Ok(PutResult {
                        e_tag: None,
                        version: None,
                    })
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> StoreResult<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> StoreResult<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> StoreResult<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, StoreResult<Path>>,
    ) -> BoxStream<'static, StoreResult<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> StoreResult<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> StoreResult<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> StoreResult<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_create_that_already_landed_with_our_bytes_is_success() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let guard = CommitGuard::new(Arc::clone(&inner));
        let path = Path::from("_delta_log/00000000000000000001.json");
        // The first attempt landed but its response was lost …
        inner
            .put_opts(&path, "ours".into(), create())
            .await
            .unwrap();
        // … so the retry of the very same bytes is reported as success.
        assert!(guard.put_opts(&path, "ours".into(), create()).await.is_ok());
        // Someone else's commit at that version is still a conflict.
        let other = guard.put_opts(&path, "theirs".into(), create()).await;
        assert!(matches!(
            other,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        // Overwrites are passed through untouched.
        assert!(guard.put(&path, "x".into()).await.is_ok());
    }
}
