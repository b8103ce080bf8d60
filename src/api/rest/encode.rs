//! Streaming result encoders: JSON rows, CSV, Arrow IPC stream.
//!
//! Batches are encoded one at a time as they arrive; the body is never buffered whole. A
//! failure after the first byte aborts the response (the client sees a broken transfer, not a
//! truncated result that looks complete).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }

    /// Picks the first supported type in `Accept` (JSON when absent or `*/*`).
    pub(super) fn negotiate(accept: Option<&str>) -> Result<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Ok(Format::Json);
        };
        for part in accept.split(',') {
            let media = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match media.as_str() {
                "application/json" | "*/*" | "application/*" => return Ok(Format::Json),
                "text/csv" | "text/*" => return Ok(Format::Csv),
                "application/vnd.apache.arrow.stream" => return Ok(Format::Arrow),
                _ => {}
            }
        }
        Err(Error::NotAcceptable(format!(
            "cannot produce {accept:?}; use application/json, text/csv or application/vnd.apache.arrow.stream"
        )))
    }
}

enum Encoder {
    Json { rows: u64 },
    Csv { header_written: bool },
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<(Encoder, Bytes)> {
        Ok(match format {
            Format::Json => (Encoder::Json { rows: 0 }, Bytes::from_static(b"[")),
            Format::Csv => (
                Encoder::Csv {
                    header_written: false,
                },
                Bytes::new(),
            ),
            Format::Arrow => {
                let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                let head = std::mem::take(w.get_mut());
                (Encoder::Arrow(Box::new(w)), Bytes::from(head))
            }
        })
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        match self {
            Encoder::Json { rows } => {
                let mut buf = Vec::new();
                {
                    let mut w = arrow::json::WriterBuilder::new()
                        .with_explicit_nulls(true)
                        .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                    w.write(batch)?;
                    w.finish()?;
                }
                let mut out = Vec::with_capacity(buf.len() + 1);
                for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if *rows > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    *rows += 1;
                }
                Ok(Bytes::from(out))
            }
            Encoder::Csv { header_written } => {
                let mut buf = Vec::new();
                {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(!*header_written)
                        .build(&mut buf);
                    w.write(batch)?;
                }
                *header_written = true;
                Ok(Bytes::from(buf))
            }
            Encoder::Arrow(w) => {
                w.write(&crate::api::wire::compact(batch, &batch.schema(), false)?)?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<Bytes> {
        match self {
            Encoder::Json { .. } => Ok(Bytes::from_static(b"]")),
            Encoder::Csv { header_written } => {
                if *header_written {
                    return Ok(Bytes::new());
                }
                // No rows: still send the header line.
                let empty = RecordBatch::new_empty(std::sync::Arc::clone(schema));
                let mut buf = Vec::new();
                {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(&mut buf);
                    w.write(&empty)?;
                }
                Ok(Bytes::from(buf))
            }
            Encoder::Arrow(w) => {
                w.finish()?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
        }
    }
}

/// Encodes `first` and then the rest of `stream` as a body stream.
pub(super) fn body_stream(
    format: Format,
    schema: SchemaRef,
    first: Option<RecordBatch>,
    stream: SendableRecordBatchStream,
) -> Result<impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static> {
    let (encoder, head) = Encoder::new(format, &schema)?;
    struct St {
        encoder: Encoder,
        schema: SchemaRef,
        pending: Vec<Bytes>,
        first: Option<RecordBatch>,
        stream: SendableRecordBatchStream,
        done: bool,
    }
    let st = St {
        encoder,
        schema,
        pending: vec![head],
        first,
        stream,
        done: false,
    };
    let out = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop() {
                if chunk.is_empty() {
                    continue;
                }
                return Some((Ok(chunk), st));
            }
            if st.done {
                return None;
            }
            let next = match st.first.take() {
                Some(b) => Some(Ok(b)),
                None => st.stream.next().await,
            };
            let encoded = match next {
                Some(Ok(batch)) => st.encoder.batch(&batch),
                Some(Err(e)) => Err(Error::from(e)),
                None => {
                    st.done = true;
                    st.encoder.finish(&st.schema)
                }
            };
            match encoded {
                Ok(bytes) => st.pending.push(bytes),
                Err(e) => {
                    let trace_id = crate::api::report(&e);
                    st.done = true;
                    return Some((
                        Err(std::io::Error::other(format!(
                            "result stream failed (trace id {trace_id})"
                        ))),
                        st,
                    ));
                }
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert_eq!(Format::negotiate(None).unwrap(), Format::Json);
        assert_eq!(Format::negotiate(Some("text/csv")).unwrap(), Format::Csv);
        assert_eq!(
            Format::negotiate(Some("application/vnd.apache.arrow.stream, */*")).unwrap(),
            Format::Arrow
        );
        assert!(Format::negotiate(Some("application/xml")).is_err());
    }
}
