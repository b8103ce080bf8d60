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

/// What a replay did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    pub model: String,
    /// Names the rows the replay quarantined again (`_strata_run_id`).
    pub replay_id: String,
    /// The quarantine version whose rows were replayed.
    pub quarantine_version: u64,
    /// Rows read from the quarantine.
    pub rows_in: u64,
    /// Rows written to the model's table.
    pub rows_out: u64,
    pub rows_dropped: u64,
    /// Rows that failed a `quarantine` expectation again (quarantined anew).
    pub rows_quarantined: u64,
    pub expectations: Vec<crate::engine::expect::RuleTally>,
    /// The model's table already held this replay (a retry after a crash): only the
    /// quarantine's clean-up was left to do.
    pub duplicate: bool,
}

impl Flows {
    /// Runs every quarantined row of `model` through its current expectations into its
    /// table, then removes them from the quarantine (rows failing a `quarantine` rule again
    /// are quarantined anew under the replay's id). The table's commit carries
    /// `strata:model:<model>:replay` = the quarantine version read, the quarantine's
    /// clean-up `…:replayed` = the same: a replay interrupted between the two is finished by
    /// the next one and never writes its rows twice.
    pub async fn replay(
        &self,
        p: &Arc<Principal>,
        pipeline: &str,
        model: &str,
    ) -> Result<ReplayOutcome> {
        use super::model::Kind;
        use crate::engine::expect::{BATCH, Checks, FAILED, QUARANTINED_AT, RUN_ID};
        use crate::engine::models::{ModelCommit, ModelWrite};
        use deltalake::kernel::Transaction;
        let (d, _) = self.managed(p, pipeline).await?;
        let node = self.model_of(p, pipeline, model).await?;
        let t = &node.model.target;
        let header = &node.model.header;
        if !matches!(header.kind, Kind::Append | Kind::Merge | Kind::Scd2) {
            return Err(Error::invalid(format!(
                "replay adds rows to append, merge and scd2 models; {t} is a {} model, rebuilt from its sources (run it with full_refresh)",
                header.kind.as_str()
            )));
        }
        let qt = t.quarantine()?;
        let catalog = self.engine.catalog();
        let quarantine = match catalog.load(&qt).await {
            Ok(q) => q,
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!("{t} has quarantined nothing")));
            }
            Err(e) => return Err(e),
        };
        let run_as = self.run_as(&d.pipeline)?;
        let replay_app = format!("{}{t}:replay", super::run::MODEL_APP_PREFIX);
        let cleaned_app = format!("{}{t}:replayed", super::run::MODEL_APP_PREFIX);
        let mark = |table: &deltalake::DeltaTable, app: &str| {
            let (table, app) = (table.clone(), app.to_string());
            async move {
                Ok::<_, Error>(if table.version().is_none() {
                    None
                } else {
                    table
                        .snapshot()?
                        .transaction_version(table.log_store().as_ref(), &app)
                        .await?
                })
            }
        };
        // An earlier replay whose table commit landed and whose clean-up did not.
        let target = catalog.load(t).await?;
        if let Some(done) = mark(&target, &replay_app).await?
            && mark(&quarantine, &cleaned_app)
                .await?
                .is_none_or(|c| c < done)
        {
            self.clean_replayed(&run_as, &qt, done, &cleaned_app)
                .await?;
        }
        let quarantine = catalog.load(&qt).await?;
        let version = quarantine.version().unwrap_or(0);
        let extras = [RUN_ID, FAILED, QUARANTINED_AT, BATCH];
        let columns: Vec<String> = super::run::columns_of(&quarantine)?
            .into_iter()
            .filter(|c| !extras.contains(&c.as_str()))
            .collect();
        let quoted: Vec<String> = columns
            .iter()
            .map(|c| super::statements::quoted(c))
            .collect();
        let select = format!(
            "SELECT {} FROM {qt} VERSION AS OF {version}",
            quoted.join(", ")
        );
        let rows_in = super::audit::count(
            &self.engine,
            &run_as,
            &format!("SELECT count(*) FROM ({select}) AS __q"),
        )
        .await?;
        let (sql, write) = match header.kind {
            Kind::Merge => super::statements::merge_statement(
                &select,
                header,
                &columns,
                &super::run::columns_of(&target)?,
            )?,
            Kind::Scd2 => super::statements::scd2_statement(&select, header, &columns)?,
            _ => (select, ModelWrite::Append),
        };
        let replay_id = uuid::Uuid::now_v7().to_string();
        let progress = [Transaction::new(replay_app.clone(), version as i64)];
        let outcome = self
            .engine
            .commit_model(
                &run_as,
                ModelCommit {
                    table: t,
                    sql: &sql,
                    params: &[],
                    write,
                    progress: &progress,
                    add_columns: false,
                    schema: None,
                    resets: &[],
                    checks: (!header.expectations.is_empty()).then(|| Checks {
                        rules: &header.expectations,
                        run_id: &replay_id,
                        quarantine_room: header
                            .quarantine_max_rows_per_run
                            .unwrap_or(super::model::QUARANTINE_MAX_ROWS),
                        now: self.clock.now(),
                    }),
                },
            )
            .await?;
        if let Some(why) = outcome.refused() {
            return Err(Error::invalid(format!(
                "{t}: {why} (the quarantine is unchanged)"
            )));
        }
        self.clean_replayed(&run_as, &qt, version as i64, &cleaned_app)
            .await?;
        let quality = outcome.quality.clone().unwrap_or_default();
        Ok(ReplayOutcome {
            model: t.to_string(),
            replay_id,
            quarantine_version: version,
            rows_in,
            rows_out: outcome.rows_out,
            rows_dropped: quality.dropped,
            rows_quarantined: quality.quarantined,
            expectations: quality.rules,
            duplicate: outcome.duplicate,
        })
    }

    /// Removes from the quarantine the rows a replay read at `version` (those of the
    /// batches it held then), with `cleaned_app` = `version` in the same commit.
    async fn clean_replayed(
        &self,
        run_as: &Arc<Principal>,
        qt: &crate::storage::TableRef,
        version: i64,
        cleaned_app: &str,
    ) -> Result<()> {
        use crate::engine::expect::BATCH;
        let batches = self
            .engine
            .query_rows(
                run_as,
                &format!("SELECT DISTINCT {BATCH} FROM {qt} VERSION AS OF {version}"),
                Vec::new(),
            )
            .await?;
        let mut keys = Vec::new();
        for b in &batches {
            let Some(col) = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
            else {
                let cast = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
                let col = cast
                    .as_any()
                    .downcast_ref::<arrow::array::StringArray>()
                    .ok_or_else(|| Error::internal("batch keys"))?;
                keys.extend(
                    col.iter()
                        .flatten()
                        .map(|k| format!("'{}'", k.replace('\'', "''"))),
                );
                continue;
            };
            keys.extend(
                col.iter()
                    .flatten()
                    .map(|k| format!("'{}'", k.replace('\'', "''"))),
            );
        }
        let predicate = if keys.is_empty() {
            "false".to_string()
        } else {
            format!("{BATCH} IN ({})", keys.join(", "))
        };
        let access = self.engine.access().await?;
        self.engine
            .delete_with_progress(
                run_as,
                &access,
                qt,
                Some(&predicate),
                &[],
                &[deltalake::kernel::Transaction::new(cleaned_app, version)],
            )
            .await?;
        Ok(())
    }
}
