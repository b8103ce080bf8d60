//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.

use axum::Json;
use serde_json::{Value, json};

pub(super) async fn document() -> Json<Value> {
    Json(spec())
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn table_path_params() -> Value {
    json!([
        {"name": "layer", "in": "path", "required": true, "schema": {"type": "string", "enum": ["bronze", "silver", "gold"]}},
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"}}
    ])
}

pub(crate) fn spec() -> Value {
    let std_errors = json!({
        "400": error_response("Invalid request"),
        "401": error_response("Missing or invalid bearer token"),
        "403": error_response("Privilege not granted"),
        "404": error_response("Not found (or not visible to the caller)"),
        "409": error_response("Already exists, or a concurrent commit won"),
        "413": error_response("Body too large"),
        "503": error_response("Storage unavailable")
    });
    let with_errors = |ok: Value| -> Value {
        let mut r = std_errors.clone();
        if let (Some(r), Some(ok)) = (r.as_object_mut(), ok.as_object()) {
            for (k, v) in ok {
                r.insert(k.clone(), v.clone());
            }
        }
        r
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Strata REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Lakehouse query server: Delta Lake tables in bronze/silver/gold layers, SQL over REST and Flight SQL."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/query": {"post": {
                "summary": "Run one SQL statement",
                "description": "Cacheable SELECT results carry an ETag; send it back in If-None-Match to get 304 without re-running the query. SELECT/EXPLAIN stream rows; CREATE TABLE [AS SELECT], INSERT INTO/OVERWRITE and DROP TABLE return one summary row. Time travel: `FROM t VERSION AS OF n` or `TIMESTAMP AS OF '2024-05-01T00:00:00Z'`. Change data feed (tables with delta.enableChangeDataFeed): `FROM table_changes('layer.t', start[, end])` with _change_type, _commit_version, _commit_timestamp; row filters and masks apply. Parameters bind to $1…$n.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QueryRequest"}}}},
                "responses": with_errors(json!({
                    "200": {"description": "Rows", "content": {
                        "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                        "text/csv": {"schema": {"type": "string"}},
                        "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}
                    }},
                    "406": error_response("Unsupported Accept type")
                }))
            }},
            "/api/v1/tables": {
                "get": {
                    "summary": "List the tables visible to the caller",
                    "parameters": [{"name": "layer", "in": "query", "schema": {"type": "string", "enum": ["bronze", "silver", "gold"]}}],
                    "responses": with_errors(json!({"200": {"description": "Tables", "content": {"application/json": {"schema": {"type": "object", "properties": {"tables": {"type": "array", "items": {"$ref": "#/components/schemas/Table"}}}}}}}}))
                },
                "post": {
                    "summary": "Create a table (MANAGE on the layer)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTable"}}}},
                    "responses": with_errors(json!({"201": {"description": "Created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}}, "200": {"description": "Existed (if_not_exists)"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}": {
                "parameters": table_path_params(),
                "get": {"summary": "Describe a table", "responses": with_errors(json!({"200": {"description": "Table", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Table"}}}}}))},
                "patch": {
                    "summary": "Evolve the schema and metadata (MANAGE)",
                    "description": "Applied in this order, one commit each: add_columns (nullable, added last), properties (delta.enableChangeDataFeed, delta.appendOnly, delta.checkpointInterval, delta.targetFileSize, delta.dataSkippingNumIndexedCols, delta.logRetentionDuration, delta.deletedFileRetentionDuration, delta.enableExpiredLogCleanup), column_descriptions, description. SQL: ALTER TABLE … ADD COLUMN / SET TBLPROPERTIES / ALTER COLUMN c TYPE wider / ALTER COLUMN c DROP NOT NULL, COMMENT ON TABLE|COLUMN.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "add_columns": {"type": "array", "items": {"$ref": "#/components/schemas/Column"}},
                        "properties": {"type": "object", "additionalProperties": {"type": "string"}},
                        "column_descriptions": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                        "description": {"type": "string"}
                    }, "additionalProperties": false}}}},
                    "responses": with_errors(json!({"200": {"description": "Table"}}))
                },
                "delete": {"summary": "Drop a table (MANAGE)", "responses": with_errors(json!({"204": {"description": "Dropped"}}))}
            },
            "/api/v1/tables/{layer}/{name}/rows": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "Append or overwrite rows (INSERT; overwrite also MODIFY)",
                    "description": "All rows are validated before anything is committed. An Idempotency-Key makes a retried upload commit once (Delta txn action).",
                    "parameters": [
                        {"name": "mode", "in": "query", "schema": {"type": "string", "enum": ["append", "overwrite"], "default": "append"}},
                        {"name": "idempotency_key", "in": "query", "schema": {"type": "string"}},
                        {"name": "merge_schema", "in": "query", "description": "Add columns the table lacks (nullable, types as uploaded or inferred) in the same commit; needs MANAGE. Without it, unknown columns are a 400.", "schema": {"type": "boolean", "default": false}},
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                    ],
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                        "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}}
                    }},
                    "responses": with_errors(json!({"200": {"description": "Committed", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WriteOutcome"}}}}, "415": error_response("Unsupported Content-Type")}))
                }
            },
            "/api/v1/tables/{layer}/{name}/history": {
                "parameters": table_path_params(),
                "get": {
                    "summary": "Commit history, newest first (MANAGE)",
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 100}}],
                    "responses": with_errors(json!({"200": {"description": "History"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/merge": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "MERGE a source into the table (MODIFY)",
                    "description": "Body: {\"source\": {\"sql\": \"query or table\"} | {\"rows\": [{…}]}, \"on\": \"t.id = s.id\" | \"keys\": [\"id\"], \"clauses\": [{\"when\": \"matched\"|\"not_matched\"|\"not_matched_by_source\", \"if\": \"condition\", \"update\": \"*\"|{col: expr} | \"insert\": \"*\"|{col: expr} | \"delete\": true}]}. Without clauses: upsert (update * / insert *). Target alias t, source alias s. Delta semantics: a target row matched by two source rows fails with 400 and commits nothing. The writer's row filter applies: hidden rows never match, written rows must stay visible (403 otherwise).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["source"]}}}},
                    "responses": with_errors(json!({"200": {"description": "Committed: version, inserted, updated, deleted, files_added, files_removed"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/scd2": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "SCD Type 2 upsert in one commit (MODIFY)",
                    "description": "Body: {\"source\": {\"sql\": …} | {\"rows\": […]}, \"keys\": [\"id\"], \"tracked\": [cols] (default: all non-key data columns), \"effective_time\": \"column\" (default: commit time), \"close_missing\": false, \"valid_from\"/\"valid_to\"/\"is_current\": column names}. New key → open row; changed tracked values (null-safe) → close the current row at the effective time and open a new one; unchanged → nothing; several changes of a key → a chain in effective-time order; a change dated at or before the key's current version → 400 (late changes are rejected).",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["source", "keys"]}}}},
                    "responses": with_errors(json!({"200": {"description": "Committed (or nothing to do): version, inserted, updated"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/optimize": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "Compact small files, optionally Z-ordered (MANAGE); SQL: OPTIMIZE t [WHERE partition predicate] [ZORDER BY (c, …)]",
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"zorder": {"type": "array", "items": {"type": "string"}}, "target_size": {"type": "integer", "description": "bytes"}, "where": {"type": "string", "description": "partition predicate, e.g. region = 'eu' AND day >= '2024-05-01'"}}}}}},
                    "responses": with_errors(json!({"200": {"description": "version, files_removed, files_added, bytes_removed, bytes_added, partitions_optimized"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/vacuum": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "Delete unreferenced files older than the retention (MANAGE); SQL: VACUUM t [RETAIN n HOURS] [DRY RUN]",
                    "description": "Default retention 168 hours; a shorter one is refused (400) unless storage.allow_short_vacuum_retention is set. A dry run lists what would be deleted.",
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"retain_hours": {"type": "integer"}, "dry_run": {"type": "boolean"}}}}}},
                    "responses": with_errors(json!({"200": {"description": "dry_run, retain_hours, files"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/restore": {
                "parameters": table_path_params(),
                "post": {
                    "summary": "Return the table to an earlier version in one new commit (MANAGE); SQL: RESTORE TABLE t TO VERSION AS OF n | TIMESTAMP AS OF '…'",
                    "description": "Refused (409) when the version's files were vacuumed.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"version": {"type": "integer"}, "timestamp": {"type": "string"}}}}}},
                    "responses": with_errors(json!({"200": {"description": "version, restored_version, files_removed, files_restored"}}))
                }
            },
            "/api/v1/tables/{layer}/{name}/policies": {
                "parameters": table_path_params(),
                "get": {"summary": "Row filters and column masks of a table (MANAGE)", "responses": with_errors(json!({"200": {"description": "Policies", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TablePolicy"}}}}}))},
                "put": {
                    "summary": "Replace the row filters and column masks of a table (MANAGE)",
                    "description": "Validated before storing: predicates must be boolean over the table's columns; masks must name existing columns. Predicates and masks may call current_user(), has_role('r'), current_claim('k'). Applies to the next query on every replica.",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TablePolicy"}}}},
                    "responses": with_errors(json!({"200": {"description": "Stored"}}))
                }
            },
            "/api/v1/grants": {
                "get": {"summary": "Run-time grants (admin role)", "responses": with_errors(json!({"200": {"description": "Grants", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Grants"}}}}}))},
                "put": {
                    "summary": "Replace the run-time grants (admin role)",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Grants"}}}},
                    "responses": with_errors(json!({"200": {"description": "Stored"}}))
                }
            },
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format; bearer token required)", "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}, "401": error_response("Missing or invalid bearer token")}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: catalog loaded and object store reachable", "security": [], "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "trace_id": {"type": "string"}}}}},
                "QueryRequest": {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}, "params": {"type": "array", "items": {}}}},
                "Column": {"type": "object", "required": ["name", "type"], "properties": {"name": {"type": "string"}, "type": {"type": "string", "examples": ["bigint", "string", "decimal(10,2)", "timestamp"]}, "nullable": {"type": "boolean", "default": true}, "description": {"type": "string"}}},
                "CreateTable": {"type": "object", "required": ["layer", "name", "columns"], "properties": {"layer": {"type": "string", "enum": ["bronze", "silver", "gold"]}, "name": {"type": "string"}, "columns": {"type": "array", "items": {"$ref": "#/components/schemas/Column"}}, "partition_by": {"type": "array", "items": {"type": "string"}}, "description": {"type": "string"}, "properties": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Delta table properties, e.g. {\"delta.enableChangeDataFeed\": \"true\"}"}, "if_not_exists": {"type": "boolean"}}},
                "Table": {"type": "object", "properties": {"layer": {"type": "string"}, "name": {"type": "string"}, "full_name": {"type": "string"}, "description": {"type": ["string", "null"]}, "owner": {"type": ["string", "null"]}, "version": {"type": "integer", "description": "MANAGE holders only"}, "columns": {"type": "array", "items": {"$ref": "#/components/schemas/Column"}}, "partition_columns": {"type": "array", "items": {"type": "string"}}, "file_count": {"type": "integer", "description": "MANAGE holders only"}, "size_bytes": {"type": "integer", "description": "MANAGE holders only"}, "created_at": {"type": ["string", "null"]}}},
                "Grant": {"type": "object", "required": ["role", "privilege", "on"], "properties": {"role": {"type": "string"}, "privilege": {"type": "string", "enum": ["SELECT", "INSERT", "MODIFY", "MANAGE"]}, "on": {"type": "string", "description": "*, a layer, or layer.table"}}},
                "Grants": {"type": "object", "required": ["grants"], "properties": {"version": {"type": "integer"}, "expected_version": {"type": "integer"}, "grants": {"type": "array", "items": {"$ref": "#/components/schemas/Grant"}}, "config_grants": {"type": "array", "readOnly": true, "items": {"$ref": "#/components/schemas/Grant"}}}},
                "TablePolicy": {"type": "object", "properties": {
                    "version": {"type": "integer"},
                    "expected_version": {"type": "integer"},
                    "row_filters": {"type": "array", "items": {"type": "object", "required": ["roles", "predicate"], "properties": {"roles": {"type": "array", "items": {"type": "string"}}, "predicate": {"type": "string", "examples": ["region = current_claim('region')"]}}}},
                    "column_masks": {"type": "array", "items": {"type": "object", "required": ["column", "mask"], "properties": {"column": {"type": "string"}, "mask": {"type": "string", "examples": ["'***'", "left(email, 2) || '…'"]}, "exempt_roles": {"type": "array", "items": {"type": "string"}}}}}
                }},
                "WriteOutcome": {"type": "object", "properties": {"version": {"type": "integer"}, "rows": {"type": "integer"}, "duplicate": {"type": "boolean"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_documented() {
        let spec = super::spec();
        for (method, path) in super::super::ROUTES {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
}
