//! Cache keys.
//!
//! Invariant: two requests share a key only if they ran the same plan (parameters bound) over
//! the same table versions for a principal with the same identity, roles and claims under the
//! same policy version. The key is a SHA-256 digest, not a 64-bit hash.

use std::fmt;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use sha2::{Digest, Sha256};

use crate::storage::TableRef;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

impl CacheKey {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The HTTP entity tag for this key (strong validator).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.hex())
    }
}

/// One scanned table as a result depends on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableVersion {
    pub table: TableRef,
    pub version: u64,
    /// Delta metadata `id`: differs between a dropped table and its re-creation, whose
    /// versions restart at 0.
    pub id: String,
}

/// Digest of everything that determines a result.
pub fn compute(
    plan: &LogicalPlan,
    tables: &[TableVersion],
    policy_version: u64,
    principal_fingerprint: &[u8],
) -> CacheKey {
    let mut h = Sha256::new();
    h.update(b"strata-result-cache-v2\0");
    h.update(plan.display_indent_schema().to_string().as_bytes());
    h.update([0]);
    for t in tables {
        h.update(t.table.to_string().as_bytes());
        h.update(b"@");
        h.update(t.version.to_le_bytes());
        h.update(b"#");
        h.update(t.id.as_bytes());
        h.update([0]);
    }
    h.update(policy_version.to_le_bytes());
    h.update(principal_fingerprint);
    CacheKey(h.finalize().into())
}

/// Whether the plan's result depends only on its inputs: no `now()`, `random()`,
/// `current_date` or other non-immutable function, anywhere (subqueries included).
pub fn is_deterministic(plan: &LogicalPlan) -> bool {
    let mut ok = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let volatile = match e {
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    Expr::AggregateFunction(f) => {
                        f.func.signature().volatility == Volatility::Volatile
                    }
                    Expr::WindowFunction(_) => false,
                    _ => false,
                };
                if volatile {
                    ok = false;
                    Ok(TreeNodeRecursion::Stop)
                } else {
                    Ok(TreeNodeRecursion::Continue)
                }
            })
        })?;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}
