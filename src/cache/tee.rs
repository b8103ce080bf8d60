//! A result stream that fills the cache as it is consumed.
//!
//! Invariant: an entry is inserted only when the underlying stream ended cleanly (`None`
//! after every batch succeeded) and stayed under the per-entry limit. An error, a cancelled
//! or dropped stream, or an oversized result inserts nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::Result as DfResult;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::Stream;

use super::key::TableVersion;
use super::{CacheKey, CachedResult, ResultCache};

pub(crate) struct Tee {
    inner: SendableRecordBatchStream,
    cache: Arc<ResultCache>,
    key: CacheKey,
    versions: Vec<TableVersion>,
    batches: Vec<RecordBatch>,
    bytes: u64,
    state: State,
}

#[derive(PartialEq, Eq)]
enum State {
    Collecting,
    GaveUp,
    Done,
}

impl std::fmt::Debug for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("key", &self.key)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Tee {
    pub(crate) fn new(
        inner: SendableRecordBatchStream,
        cache: Arc<ResultCache>,
        key: CacheKey,
        versions: Vec<TableVersion>,
    ) -> Tee {
        Tee {
            inner,
            cache,
            key,
            versions,
            batches: Vec::new(),
            bytes: 0,
            state: State::Collecting,
        }
    }
}

impl Stream for Tee {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                if this.state == State::Collecting {
                    this.bytes += batch.get_array_memory_size() as u64;
                    if this.bytes > this.cache.max_entry_bytes() {
                        this.state = State::GaveUp;
                        this.batches.clear();
                        this.cache.stats().too_large.fetch_add(1, Ordering::Relaxed);
                    } else {
                        this.batches.push(batch.clone());
                    }
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state = State::GaveUp;
                this.batches.clear();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if this.state == State::Collecting {
                    let result = CachedResult {
                        schema: this.inner.schema(),
                        batches: std::mem::take(&mut this.batches),
                        bytes: this.bytes,
                        versions: std::mem::take(&mut this.versions),
                    };
                    this.cache.insert(this.key, result);
                }
                this.state = State::Done;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecordBatchStream for Tee {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}
