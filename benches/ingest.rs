//! Upload decoding throughput: JSON, NDJSON and CSV rows → validated Arrow batches.
//!
//! `cargo bench --bench ingest` prints rows/s and MB/s per format (median of 5 runs).

#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use strata::ingest::{UploadFormat, decode};

const ROWS: usize = 100_000;

fn main() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
    ]));
    let ndjson: String = (0..ROWS)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"customer-{i}\",\"amount\":{}.25}}\n",
                i % 1000
            )
        })
        .collect();
    let json = format!("[{}]", ndjson.trim_end().replace('\n', ","));
    let csv: String = std::iter::once("id,name,amount\n".to_string())
        .chain((0..ROWS).map(|i| format!("{i},customer-{i},{}.25\n", i % 1000)))
        .collect();
    for (name, format, body) in [
        ("json", UploadFormat::Json, json),
        ("ndjson", UploadFormat::NdJson, ndjson),
        ("csv", UploadFormat::Csv, csv),
    ] {
        let body = Bytes::from(body);
        let mut samples: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let batches = decode(format, body.clone(), &schema).expect("decodes");
                assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), ROWS);
                start.elapsed()
            })
            .collect();
        samples.sort();
        let median = samples[2].as_secs_f64();
        println!(
            "ingest/{name:<7} {ROWS} rows  median {:>8.2} ms  {:>10.0} rows/s  {:>7.1} MB/s",
            median * 1e3,
            ROWS as f64 / median,
            body.len() as f64 / median / 1e6
        );
    }
}
