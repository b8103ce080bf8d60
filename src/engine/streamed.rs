//! Rows written as they arrive: a write's input conformed and checked batch by batch on its
//! way to the data files, so a write holds one batch at a time whatever its size (ADBC
//! ingest, `INSERT … SELECT`, `CREATE TABLE … AS SELECT`). A bad row fails the stream, and
//! with it the write before its commit: nothing is committed, only unreferenced files are
//! left (VACUUM removes them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::Engine;
use crate::error::{Error, Result};
use crate::ingest;
use crate::pipelines::commit::{WriteInput, WriteMode};
use crate::security::{AccessControl, Principal};
use crate::storage::TableRef;

/// What is done to each batch before the writer's row check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Cast by name onto the target (client data: ADBC ingest), then as [`Shape::Enforce`].
    Conform,
    /// NOT NULL columns checked, the batch re-labelled with the target schema.
    Enforce,
    /// As produced (a new table made from the plan's own schema).
    AsIs,
}

/// A write's rows on their way, and what they did.
pub(crate) struct Streamed {
    /// The rows for the write: a stream, or no batches when they ran out before the first
    /// row (an empty write commits as one always did).
    input: Option<WriteInput>,
    rows: Arc<AtomicU64>,
    failure: Arc<std::sync::Mutex<Option<Error>>>,
}

impl Streamed {
    /// The input to hand to the write (once).
    pub(crate) fn take_input(&mut self) -> WriteInput {
        self.input.take().unwrap_or(WriteInput::Batches(Vec::new()))
    }

    /// Rows that passed so far (all of them once the write finished).
    pub(crate) fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// The error the write failed with: the stream's own (delta-rs reports it as text), or
    /// `e`.
    pub(crate) fn failure(&self, e: Error) -> Error {
        self.failure
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(e)
    }
}

impl Engine {
    /// `batches` shaped to `target` and held to `p`'s WITH CHECK on `t` as they pass. Reads
    /// up to the first row, so an empty input is known before anything is written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn streamed(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
        mode: WriteMode,
        target: &SchemaRef,
        shape: Shape,
        mut batches: BoxStream<'static, Result<RecordBatch>>,
    ) -> Result<Streamed> {
        let mut check = self.row_check(access, p, t, mode, target)?;
        let rows = Arc::new(AtomicU64::new(0));
        let mut prepare = {
            let (target, rows) = (Arc::clone(target), Arc::clone(&rows));
            move |batch: RecordBatch| -> Result<RecordBatch> {
                let offset = rows.load(Ordering::Relaxed) as usize;
                let batch = match shape {
                    Shape::Conform => {
                        ingest::enforce_batch(ingest::conform(&batch, &target)?, &target, offset)?
                    }
                    Shape::Enforce => ingest::enforce_batch(batch, &target, offset)?,
                    Shape::AsIs => batch,
                };
                check.check(&batch)?;
                rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                Ok(batch)
            }
        };
        let failure = Arc::new(std::sync::Mutex::new(None::<Error>));
        let mut first = None;
        while let Some(batch) = batches.try_next().await? {
            if batch.num_rows() > 0 {
                first = Some(prepare(batch)?);
                break;
            }
        }
        let Some(first) = first else {
            return Ok(Streamed {
                input: None,
                rows,
                failure,
            });
        };
        let schema = first.schema();
        let stream = {
            let failure = Arc::clone(&failure);
            futures::stream::once(std::future::ready(Ok(first)))
                .chain(batches.and_then(move |b| std::future::ready(prepare(b))))
                .map_err(move |e| {
                    let message = e.to_string();
                    if let Ok(mut slot) = failure.lock() {
                        slot.get_or_insert(e);
                    }
                    datafusion::error::DataFusionError::Execution(message)
                })
        };
        Ok(Streamed {
            input: Some(WriteInput::Stream(Box::pin(RecordBatchStreamAdapter::new(
                schema, stream,
            )))),
            rows,
            failure,
        })
    }
}
