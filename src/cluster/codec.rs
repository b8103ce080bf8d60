//! [`StrataCodec`]: how a Strata plan crosses the wire to Ballista, around Ballista's own
//! codec.
//!
//! Why it exists: a Delta scan cannot be serialised by delta-rs 1.1 (delta-rs#4171 is open;
//! its `DeltaLogicalCodec` node methods are `todo!()`, never called here), and a scan must
//! not travel as a bare Parquet file list anyway: an executor would then read whatever
//! files a plan names with its own credentials. So every table read crosses the wire as
//! the [`PolicyExec`] the front end planned, encoded as its [`ScanSpec`] (table, version,
//! table id, requested columns, the principal's row filter and masks as datafusion-proto
//! expressions with claims already bound as literals), signed with the front end's
//! `cluster.plan_key`. The scheduler relays those bytes untouched (it holds no key and no
//! storage credentials); an executor checks the signature and its expiry when it decodes
//! them and rebuilds the scan on first execute (`super::remote`).
//!
//! Strata's own physical expressions (which datafusion-proto does not know) go through an
//! [`ExprCodec`] the engine provides.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion_proto::logical_plan::DefaultLogicalExtensionCodec;
use datafusion_proto::logical_plan::to_proto::serialize_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use hmac::{Hmac, Mac};
use prost::Message;
use sha2::Sha256;

use super::remote::{Rebuilder, RemoteScanExec, scan_shape, shape_of};
use super::wire::{MaskMessage, ScanMessage, Signed, internal, refused};
use crate::security::policy::{PolicyExec, ScanSpec};

/// The first bytes of a signed scan (never the start of one of Ballista's messages: a
/// protobuf field cannot begin with `S`, a group start).
const SCAN_MAGIC: &[u8] = b"STRATA-SCAN/1";

/// Strata's own physical expressions on the wire (the engine's: its string IN list).
pub trait ExprCodec: std::fmt::Debug + Send + Sync {
    /// Writes `node` to `buf` when it is one of Strata's; `false` when it is not.
    fn encode(&self, node: &Arc<dyn PhysicalExpr>, buf: &mut Vec<u8>) -> DfResult<bool>;
    /// The expression `buf` holds when it is one of Strata's, over its decoded `inputs`.
    fn decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
    ) -> DfResult<Option<Arc<dyn PhysicalExpr>>>;
}

/// A signed scan on the wire, with the partitions of it one task runs. The scheduler
/// chooses those (Ballista gives each task a slice of a stage's partitions), so they are
/// not signed: running fewer partitions of a signed scan reads nothing it does not allow.
#[derive(Clone, PartialEq, Message)]
struct Shipped {
    #[prost(message, optional, tag = "1")]
    signed: Option<Signed>,
    /// When set: the scan's partitions this task runs, in order (global indices).
    #[prost(message, optional, tag = "2")]
    selection: Option<Selection>,
}

#[derive(Clone, PartialEq, Message)]
struct Selection {
    #[prost(uint32, repeated, tag = "1")]
    partitions: Vec<u32>,
}

/// What the process using the codec may do with a scan.
#[derive(Clone)]
pub(crate) enum Role {
    /// Signs the scans it plans.
    FrontEnd { key: Arc<[u8]>, ttl_ms: u64 },
    /// Relays signed scans without reading them for more than their shape.
    Scheduler,
    /// Checks signatures and rebuilds scans.
    Executor {
        key: Arc<[u8]>,
        rebuilder: Arc<Rebuilder>,
    },
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::FrontEnd { .. } => "FrontEnd",
            Role::Scheduler => "Scheduler",
            Role::Executor { .. } => "Executor",
        })
    }
}

/// Strata's physical extension codec: signed scans and Strata's expressions; everything
/// else is Ballista's.
#[derive(Debug)]
pub(crate) struct StrataCodec {
    ballista: BallistaPhysicalExtensionCodec,
    role: Role,
    exprs: Arc<dyn ExprCodec>,
}

impl StrataCodec {
    pub(crate) fn new(role: Role, exprs: Arc<dyn ExprCodec>) -> StrataCodec {
        StrataCodec {
            ballista: BallistaPhysicalExtensionCodec::default(),
            role,
            exprs,
        }
    }

    fn sign(&self, spec: &ScanSpec, exec: &PolicyExec) -> DfResult<Vec<u8>> {
        let Role::FrontEnd { key, ttl_ms } = &self.role else {
            return Err(refused("only the front end signs scans"));
        };
        let payload = scan_message(spec, exec, now_ms().saturating_add(*ttl_ms))?.encode_to_vec();
        let mac = mac(key, &payload)?;
        Ok(shipped(Signed { payload, mac }, None))
    }

    fn decode_scan(&self, buf: &[u8]) -> DfResult<Arc<dyn ExecutionPlan>> {
        let shipped = Shipped::decode(&buf[SCAN_MAGIC.len()..]).map_err(internal)?;
        let signed = shipped
            .signed
            .ok_or_else(|| internal("a shipped scan without its signed part"))?;
        let message = ScanMessage::decode(signed.payload.as_slice()).map_err(internal)?;
        let selection = shipped
            .selection
            .map(|s| s.partitions.into_iter().map(|p| p as usize).collect());
        match &self.role {
            Role::Executor { key, rebuilder } => {
                verify(key, &signed.payload, &signed.mac)?;
                if message.expires_at_ms < now_ms() {
                    return Err(refused("the scan's signature has expired"));
                }
                Ok(Arc::new(RemoteScanExec::try_new(
                    message,
                    selection,
                    Arc::clone(rebuilder),
                )?))
            }
            // The scheduler gives each task a slice of a stage's partitions by rewriting
            // the leaves it knows: a file scan's groups are one of them.
            Role::Scheduler => scan_shape(signed, message, selection),
            Role::FrontEnd { .. } => Err(refused("a front end does not run scans")),
        }
    }
}

impl PhysicalExtensionCodec for StrataCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if buf.starts_with(SCAN_MAGIC) {
            return self.decode_scan(buf);
        }
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(exec) = node.downcast_ref::<PolicyExec>() {
            let spec = exec
                .spec()
                .ok_or_else(|| refused("this scan cannot leave the front end"))?;
            buf.extend(self.sign(spec, exec)?);
            return Ok(());
        }
        if let Some((signed, selection)) = shape_of(&node) {
            tracing::debug!(?selection, "scan slice for a task");
            buf.extend(shipped(signed, Some(selection)));
            return Ok(());
        }
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        if let Some(e) = self.exprs.decode(buf, inputs)? {
            return Ok(e);
        }
        self.ballista.try_decode_expr(buf, inputs, ctx)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> DfResult<()> {
        if self.exprs.encode(node, buf)? {
            return Ok(());
        }
        self.ballista.try_encode_expr(node, buf, ctx)
    }
}

fn shipped(signed: Signed, selection: Option<Vec<u32>>) -> Vec<u8> {
    let mut out = SCAN_MAGIC.to_vec();
    out.extend(
        Shipped {
            signed: Some(signed),
            selection: selection.map(|partitions| Selection { partitions }),
        }
        .encode_to_vec(),
    );
    out
}

/// `shipped` (a signed scan's bytes) changed by `change` and signed again with `key`: what
/// a front end with the key could have planned.
#[cfg(test)]
pub(super) fn resigned(
    shipped_bytes: &[u8],
    key: &[u8],
    change: impl FnOnce(&mut ScanMessage),
) -> Vec<u8> {
    let shipped = Shipped::decode(&shipped_bytes[SCAN_MAGIC.len()..]).unwrap_or_default();
    let signed = shipped.signed.unwrap_or_default();
    let mut message = ScanMessage::decode(signed.payload.as_slice()).unwrap_or_default();
    change(&mut message);
    let payload = message.encode_to_vec();
    let mac = mac(key, &payload).unwrap_or_default();
    self::shipped(Signed { payload, mac }, None)
}

fn scan_message(spec: &ScanSpec, exec: &PolicyExec, expires_at_ms: u64) -> DfResult<ScanMessage> {
    let codec = DefaultLogicalExtensionCodec {};
    let expr = |e: &Expr| -> DfResult<Vec<u8>> {
        Ok(serialize_expr(e, &codec)
            .map_err(|e| internal(format!("a policy expression cannot be shipped: {e}")))?
            .encode_to_vec())
    };
    let schema = exec.scan().schema();
    let schema = datafusion_proto::protobuf::Schema::try_from(schema.as_ref())
        .map_err(|e| internal(format!("schema: {e}")))?;
    Ok(ScanMessage {
        layer: spec.table.layer.as_str().to_string(),
        name: spec.table.name.clone(),
        version: spec.version,
        table_id: spec.table_id.clone(),
        requested: spec.requested.iter().map(|i| *i as u32).collect(),
        filter: spec.enforcement.filter.as_ref().map(expr).transpose()?,
        masks: spec
            .enforcement
            .masks
            .iter()
            .map(|(i, e)| {
                Ok(MaskMessage {
                    column: *i as u32,
                    expr: expr(e)?,
                })
            })
            .collect::<DfResult<_>>()?,
        pruning: spec.pruning.iter().map(expr).collect::<DfResult<_>>()?,
        schema: schema.encode_to_vec(),
        partitions: exec.scan().output_partitioning().partition_count() as u32,
        expires_at_ms,
    })
}

fn mac(key: &[u8], payload: &[u8]) -> DfResult<Vec<u8>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).map_err(internal)?;
    m.update(payload);
    Ok(m.finalize().into_bytes().to_vec())
}

fn verify(key: &[u8], payload: &[u8], tag: &[u8]) -> DfResult<()> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).map_err(internal)?;
    m.update(payload);
    // Constant time.
    m.verify_slice(tag)
        .map_err(|_| refused("the scan is not signed by a front end of this cluster"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
