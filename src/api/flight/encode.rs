//! Result batches → Flight data.
//!
//! Every batch is compacted before encoding ([`crate::api::wire`]). Messages are split to stay under half the configured maximum (the encoder's size estimate is
//! approximate), so every message fits the client's limit.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::FlightData;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::to_status;
pub(crate) use crate::api::wire::{compact, wire_schema};
use crate::error::Error;

/// Encodes a result stream. `cancel` ends it with CANCELLED (never a silent, complete-looking
/// end).
pub fn flight_stream(
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    downcast: bool,
    max_message_bytes: usize,
    cancel: Option<CancellationToken>,
    on_end: impl FnOnce() + Send + 'static,
) -> impl Stream<Item = Result<FlightData, Status>> + Send + 'static {
    let wire = wire_schema(&schema, downcast);
    let wire_for_batches = Arc::clone(&wire);
    let batches = stream.map(move |r| {
        let batch = r.map_err(Error::from)?;
        compact(&batch, &wire_for_batches, downcast)
    });
    let batches = match cancel {
        Some(token) => {
            let cancelled = token.clone();
            let until = batches.take_until(async move { token.cancelled().await });
            let tail = futures::stream::once(async move {
                if cancelled.is_cancelled() {
                    Some(Err(Error::Cancelled(
                        "query cancelled (CancelFlightInfo)".into(),
                    )))
                } else {
                    None
                }
            })
            .filter_map(futures::future::ready);
            until.chain(tail).boxed()
        }
        None => batches.boxed(),
    };
    let mut on_end = Some(on_end);
    let batches = batches
        .map_err(|e| FlightError::ExternalError(Box::new(e)))
        .chain(futures::stream::poll_fn(move |_| {
            if let Some(f) = on_end.take() {
                f();
            }
            std::task::Poll::Ready(None)
        }));
    FlightDataEncoderBuilder::new()
        .with_schema(wire)
        .with_max_flight_data_size(max_message_bytes / 2)
        .build(batches)
        .map_err(|e| match e {
            FlightError::ExternalError(inner) => match inner.downcast::<Error>() {
                Ok(ours) => to_status(*ours),
                Err(other) => to_status(Error::internal(other.to_string())),
            },
            FlightError::Tonic(status) => *status,
            other => to_status(Error::internal(other.to_string())),
        })
}

/// Encodes finished batches (metadata results, command results).
pub(crate) fn batches_stream(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> impl Stream<Item = Result<FlightData, Status>> + Send + 'static {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(|e| to_status(Error::internal(e.to_string())))
}

/// Decodes the Arrow IPC stream bytes produced by [`to_ipc`].
pub(crate) fn from_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>, Error> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Serializes batches as an Arrow IPC stream (for tickets and handles).
pub(crate) fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// The IPC-encoded schema message (FlightInfo / prepared statement results).
pub(crate) fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Error> {
    let options = arrow::ipc::writer::IpcWriteOptions::default();
    let data = arrow_flight::SchemaAsIpc::new(schema, &options);
    let ipc: arrow_flight::IpcMessage = data.try_into()?;
    Ok(ipc.0)
}
