//! sqllogictest files (`tests/slt/*.slt`), each against a fresh server over REST with Arrow
//! results. `statement error <regex>` matches the error message clients see.

use std::path::PathBuf;

use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::harness::TestServer;

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

struct Rest {
    client: reqwest::Client,
    url: String,
    /// Principal name → token. A statement whose first line is `-- as NAME` runs as NAME;
    /// others run as `admin`.
    tokens: std::collections::HashMap<String, String>,
}

#[async_trait]
impl sqllogictest::AsyncDB for Rest {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let who = sql
            .lines()
            .next()
            .and_then(|l| l.trim().strip_prefix("-- as "))
            .map(str::trim)
            .unwrap_or("admin");
        let token = self
            .tokens
            .get(who)
            .ok_or_else(|| SltError(format!("unknown principal {who:?} in -- as directive")))?;
        let r = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .header("accept", "application/vnd.apache.arrow.stream")
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .map_err(|e| SltError(e.to_string()))?;
        if !r.status().is_success() {
            let body: serde_json::Value = r.json().await.map_err(|e| SltError(e.to_string()))?;
            return Err(SltError(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        let bytes = r.bytes().await.map_err(|e| SltError(e.to_string()))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| SltError(e.to_string()))?;
        let schema = reader.schema();
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    DefaultColumnType::Integer
                }
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
                    DefaultColumnType::FloatingPoint
                }
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| SltError(e.to_string()))?;
            for r in 0..batch.num_rows() {
                let mut row = Vec::new();
                for c in batch.columns() {
                    let v = if c.is_null(r) {
                        "NULL".to_string()
                    } else {
                        array_value_to_string(c, r).map_err(|e| SltError(e.to_string()))?
                    };
                    row.push(if v.is_empty() {
                        "(empty)".to_string()
                    } else {
                        v
                    });
                }
                rows.push(row);
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    for file in files {
        // One isolated server per file; rls_* files start from the row-level security
        // fixture (gold.sales with filters and masks) and its principals.
        let rls = file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rls_"));
        let s = if rls {
            crate::rls::sales_server().await
        } else {
            TestServer::start().await
        };
        let mut tokens = std::collections::HashMap::new();
        tokens.insert("admin".to_string(), s.admin.clone());
        tokens.insert("ann".to_string(), crate::rls::ann(&s));
        tokens.insert(
            "bob".to_string(),
            s.token_with("bob", &["analyst"], serde_json::json!({"region": "us"})),
        );
        tokens.insert(
            "mia".to_string(),
            s.token_with("mia", &["manager"], serde_json::json!({})),
        );
        tokens.insert(
            "root".to_string(),
            s.token_with("root", &["admin", "policy_bypass"], serde_json::json!({})),
        );
        tokens.insert("nobody".to_string(), s.token("nobody", &[]));
        let (client, url) = (s.client.clone(), s.url("/api/v1/query"));
        let mut runner = sqllogictest::Runner::new(move || {
            let db = Rest {
                client: client.clone(),
                url: url.clone(),
                tokens: tokens.clone(),
            };
            async move { Ok::<_, SltError>(db) }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
        s.stop().await;
    }
}
