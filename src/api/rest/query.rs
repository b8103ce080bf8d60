//! `POST /api/v1/query`: SQL with bound parameters → streamed rows.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::encode::{Format, body_stream};
use super::openapi::{ErrorBody, Errors};
use crate::engine::{Executed, Submission};
use crate::error::{Error, Result};
use crate::security::Principal;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QueryRequest {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
}

#[utoipa::path(post, path = "/query", tag = "query",
    description = "Cacheable SELECT results carry an ETag; send it back in If-None-Match to get 304 without re-running the query. SELECT/EXPLAIN stream rows; CREATE TABLE [AS SELECT], INSERT INTO/OVERWRITE, MERGE, UPDATE, DELETE, CALL scd2, OPTIMIZE, VACUUM, RESTORE, ALTER and DROP TABLE return one summary row. Time travel: `FROM t VERSION AS OF n` or `TIMESTAMP AS OF '2024-05-01T00:00:00Z'`. Change data feed: `FROM table_changes('layer.t', start[, end])`. Parameters bind to $1…$n (or ?).",
    request_body = QueryRequest,
    params(("If-None-Match" = Option<String>, Header, description = "ETag of an earlier result: 304 while it is still current")),
    responses(
        (status = 200, description = "Rows, in the format the Accept header asks for", headers(("ETag" = String, description = "Cacheable results only"), ("Server-Timing" = String, description = "`first-batch;dur=<ms>`: planning and execution up to the first batch"), ("x-strata-cache" = String, description = "`hit` or `miss` (cacheable results only)")), content(
            (Vec<serde_json::Value> = "application/json"),
            (String = "text/csv"),
            (Vec<u8> = "application/vnd.apache.arrow.stream"))),
        (status = 304, description = "Not modified: the result for this ETag is still current"),
        (status = 406, description = "No accepted response type is one Strata writes", body = ErrorBody),
        Errors))]
pub(super) async fn query(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: http::HeaderMap,
    JsonBody(req): JsonBody<QueryRequest>,
) -> Result<Response> {
    let format = Format::negotiate(
        headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )?;
    let params = req
        .params
        .iter()
        .enumerate()
        .map(|(i, v)| json_to_scalar(v).map_err(|e| Error::invalid(format!("params[{i}]: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    let if_none_match = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let distributed = crate::cluster::parse_header(
        headers
            .get(crate::cluster::DISTRIBUTED_HEADER)
            .and_then(|v| v.to_str().ok()),
    )?;
    let request = Submission {
        sql: &req.sql,
        rows: vec![params],
        cached: None,
        if_none_match,
        distributed,
    };
    let output = match state.engine.submit(&principal, request).await? {
        Executed::Output(output) => output,
        Executed::NotModified(etag) => {
            return Response::builder()
                .status(http::StatusCode::NOT_MODIFIED)
                .header(http::header::ETAG, etag)
                .body(Body::empty())
                .map_err(|e| Error::internal(format!("response: {e}")));
        }
    };
    tracing::info!(
        principal = %principal.subject,
        statement = output.kind,
        tables = ?output.tables.iter().map(ToString::to_string).collect::<Vec<_>>(),
        cache_hit = output.cache_hit,
        "query"
    );
    let mut stream = output.stream;
    // Errors before the first batch still get a proper status code.
    let first = stream.next().await.transpose()?;
    // Planning and execution up to the first batch (the rest streams after the head).
    let first_batch_ms = started.elapsed().as_secs_f64() * 1000.0;
    let body = body_stream(format, output.schema, first, stream)?;
    let mut response = Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, format.content_type())
        .header("x-strata-statement", output.kind)
        .header(
            "server-timing",
            format!("first-batch;dur={first_batch_ms:.1};desc=\"plan and run to the first batch\""),
        );
    if let Some(etag) = &output.etag {
        // The tag identifies the rows, not their encoding.
        response = response
            .header(http::header::ETAG, etag)
            .header(http::header::VARY, "Accept, Authorization")
            .header(
                "x-strata-cache",
                if output.cache_hit { "hit" } else { "miss" },
            );
    }
    response
        .body(Body::from_stream(body))
        .map_err(|e| Error::internal(format!("response: {e}")))
}

/// JSON parameter → SQL value. The engine casts it to the placeholder's inferred type.
fn json_to_scalar(v: &serde_json::Value) -> std::result::Result<ScalarValue, String> {
    Ok(match v {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int64(Some(i))
            } else if let Some(u) = n.as_u64() {
                ScalarValue::UInt64(Some(u))
            } else if let Some(f) = n.as_f64() {
                ScalarValue::Float64(Some(f))
            } else {
                return Err(format!("unsupported number {n}"));
            }
        }
        serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            return Err("parameters must be scalars (null, boolean, number or string)".into());
        }
    })
}
