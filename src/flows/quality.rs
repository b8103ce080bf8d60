//! Quality as users ask for it (PLATFORM P4): a model's results over time, a table's
//! standalone checks, replaying quarantined rows, and the quarantine's retention.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Flows;
use super::records::{AUDIT_RESULTS, EXPECTATION_RESULTS};
use crate::error::{Error, Result};
use crate::security::{Principal, Privilege};

/// `GET /api/v1/pipelines/{p}/models/{m}/quality`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QualityReport {
    pub pipeline: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Rows of `system.expectation_results` (newest first, at most 1000).
    #[schema(value_type = Vec<Object>)]
    pub expectations: Vec<serde_json::Value>,
    /// Rows of `system.audit_results` for the model's table (newest first, at most 1000).
    #[schema(value_type = Vec<Object>)]
    pub audits: Vec<serde_json::Value>,
}

impl Flows {
    /// The model `model` (`layer.name`, or its name alone) of deployed pipeline `pipeline`,
    /// when `p` may read its table (404 otherwise, as for any table it may not see).
    async fn model_of(
        &self,
        p: &Arc<Principal>,
        pipeline: &str,
        model: &str,
    ) -> Result<super::dag::Node> {
        let d = self.deployed(pipeline).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        let node = dag
            .nodes
            .into_iter()
            .find(|n| {
                n.model.target.to_string() == model.to_ascii_lowercase()
                    || n.model.target.name == model.to_ascii_lowercase()
            })
            .filter(|n| access.allows(p, Privilege::Select, &n.model.target))
            .ok_or_else(|| Error::NotFound(format!("pipeline {pipeline} has no model {model}")))?;
        Ok(node)
    }

    /// What a model's expectations and audits found since `since`, through the
    /// policy-enforcing catalog as `p` (samples only for managers of the sources).
    pub async fn quality(
        &self,
        p: &Arc<Principal>,
        pipeline: &str,
        model: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<QualityReport> {
        let node = self.model_of(p, pipeline, model).await?;
        let t = node.model.target.to_string();
        let expectations = self
            .records
            .results(p, EXPECTATION_RESULTS, ("model", &t), Some(pipeline), since)
            .await?;
        let audits = self
            .records
            .results(p, AUDIT_RESULTS, ("table_name", &t), None, since)
            .await?;
        Ok(QualityReport {
            pipeline: pipeline.to_string(),
            model: t,
            since,
            expectations,
            audits,
        })
    }
}
