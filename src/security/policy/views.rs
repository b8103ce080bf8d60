//! `system` tables computed by a service rather than stored (`system.lineage_edges`).
//!
//! A view is served by the secure catalog's `system` schema like the stored system tables,
//! wrapped in a [`super::PolicyTable`] bound to the principal. Its rows are chosen for the
//! principal by the view itself, with the same [`AccessControl`] decisions the rest of the
//! server makes (a view's row is about tables; it is shown only to principals who may SELECT
//! every one of them), so a view never shows what a table query would not. Its fingerprint
//! (of the whole content, not the principal's share) is the version the result cache keys
//! on: a new commit anywhere the view reads gives a new key, never a stale hit.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, Weak};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;

use crate::error::Result;
use crate::security::{AccessControl, Principal};

/// The rows of a view a principal may see, and the fingerprint of the view's content.
#[derive(Debug, Clone)]
pub(crate) struct ViewRows {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) fingerprint: u64,
}

/// A `system` table a service computes.
#[async_trait]
pub(crate) trait SystemView: Send + Sync + std::fmt::Debug {
    fn schema(&self) -> SchemaRef;

    /// The rows `principal` may see under `access`.
    async fn rows(&self, access: &AccessControl, principal: &Principal) -> Result<ViewRows>;
}

/// The registered views, by name. Held weakly: the services behind them hold the engine,
/// which holds this.
#[derive(Debug, Default)]
pub(crate) struct SystemViews {
    views: RwLock<BTreeMap<String, Weak<dyn SystemView>>>,
}

impl SystemViews {
    pub(crate) fn register(&self, name: &str, view: Weak<dyn SystemView>) {
        if let Ok(mut views) = self.views.write() {
            views.insert(name.to_ascii_lowercase(), view);
        }
    }

    /// The view called `name` (case-insensitive), while its service lives.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn SystemView>> {
        let views = self.views.read().ok()?;
        views.get(&name.to_ascii_lowercase())?.upgrade()
    }

    /// Names of the live views.
    pub(crate) fn names(&self) -> Vec<String> {
        let Ok(views) = self.views.read() else {
            return Vec::new();
        };
        views
            .iter()
            .filter(|(_, v)| v.strong_count() > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }
}
