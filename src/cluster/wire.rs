//! The signed part of a shipped scan, as the front end signs it and executors read it.

use arrow::datatypes::Schema;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::logical_plan::from_proto::parse_expr;
use datafusion_proto::protobuf::LogicalExprNode;
use prost::Message;

use crate::security::policy::{Enforcement, ScanSpec};
use crate::storage::TableRef;

/// A scan as the front end signs it.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ScanMessage {
    #[prost(string, tag = "1")]
    pub layer: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint64, tag = "3")]
    pub version: u64,
    #[prost(string, tag = "4")]
    pub table_id: String,
    #[prost(uint32, repeated, tag = "5")]
    pub requested: Vec<u32>,
    /// A `LogicalExprNode`.
    #[prost(bytes = "vec", optional, tag = "6")]
    pub filter: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "7")]
    pub masks: Vec<MaskMessage>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub pruning: Vec<Vec<u8>>,
    /// The scan's output schema, a datafusion-proto `Schema`.
    #[prost(bytes = "vec", tag = "9")]
    pub schema: Vec<u8>,
    /// Its output partitions: the executor's rebuild must have as many.
    #[prost(uint32, tag = "10")]
    pub partitions: u32,
    /// Unix milliseconds after which executors refuse it.
    #[prost(uint64, tag = "11")]
    pub expires_at_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MaskMessage {
    #[prost(uint32, tag = "1")]
    pub column: u32,
    /// A `LogicalExprNode`.
    #[prost(bytes = "vec", tag = "2")]
    pub expr: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Signed {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub mac: Vec<u8>,
}

impl ScanMessage {
    pub(crate) fn table(&self) -> DfResult<TableRef> {
        TableRef::new(&self.layer, &self.name).map_err(|e| internal(e.to_string()))
    }

    pub(crate) fn output_schema(&self) -> DfResult<Schema> {
        let proto =
            datafusion_proto::protobuf::Schema::decode(self.schema.as_slice()).map_err(internal)?;
        Schema::try_from(&proto).map_err(|e| internal(format!("schema: {e}")))
    }

    /// The spec the front end signed, its expressions resolved in `ctx`'s functions.
    pub(crate) fn spec(&self, ctx: &TaskContext) -> DfResult<ScanSpec> {
        let codec = DefaultLogicalExtensionCodec {};
        let expr = |b: &[u8]| -> DfResult<Expr> {
            let node = LogicalExprNode::decode(b).map_err(internal)?;
            parse_expr(&node, ctx, &codec).map_err(|e| internal(e.to_string()))
        };
        Ok(ScanSpec {
            table: self.table()?,
            version: self.version,
            table_id: self.table_id.clone(),
            requested: self.requested.iter().map(|i| *i as usize).collect(),
            enforcement: Enforcement {
                filter: self.filter.as_deref().map(expr).transpose()?,
                masks: self
                    .masks
                    .iter()
                    .map(|m| Ok((m.column as usize, expr(&m.expr)?)))
                    .collect::<DfResult<_>>()?,
            },
            pruning: self
                .pruning
                .iter()
                .map(|b| expr(b))
                .collect::<DfResult<_>>()?,
        })
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cluster codec: {e}"))
}

/// A plan the cluster must not run.
pub(crate) fn refused(why: &str) -> DataFusionError {
    DataFusionError::Execution(format!("refused by the cluster's plan check: {why}"))
}
