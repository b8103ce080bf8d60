//! `information_schema`, served by the secure catalog: DataFusion's own tables over the
//! principal's catalog (so they list only what it may see), with the descriptions of tables
//! and columns (`COMMENT ON`, Delta metadata) as a `comment` column of `tables` and
//! `columns`, as Databricks and MySQL name it.
//!
//! DataFusion's `information_schema` has no place for comments, and with
//! `datafusion.catalog.information_schema` on it answers the name itself, before any
//! catalog. So the session turns that off and this schema answers instead: DataFusion's
//! provider for every table, built over a catalog list holding only this principal's
//! [`SecureCatalog`]; `tables` and `columns` as views joining it to the comments of the
//! visible tables. `SHOW TABLES` / `SHOW COLUMNS` find it the same way. Every scan in it is
//! qualified `information_schema` (what [`super::PolicyGuard`] lets through) and none is a
//! `PolicyTable`, so no result of it is ever cached.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProviderList, SchemaProvider, TableProvider,
};
use datafusion::common::{JoinType, Result as DfResult, TableReference};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlanBuilder, col};

use super::SecureCatalog;
use crate::error::Error;
use crate::storage::types::COLUMN_COMMENT_KEY;
use crate::storage::{CATALOG_NAME, Layer, TableRef};

pub(crate) const INFORMATION_SCHEMA: &str = "information_schema";

/// The description column both views add.
const COMMENT: &str = "comment";

#[derive(Debug)]
pub(super) struct InformationSchema {
    inner: InformationSchemaProvider,
    catalog: Arc<SecureCatalog>,
}

impl InformationSchema {
    pub(super) fn new(catalog: Arc<SecureCatalog>) -> InformationSchema {
        let list = MemoryCatalogProviderList::new();
        datafusion::catalog::CatalogProviderList::register_catalog(
            &list,
            CATALOG_NAME.to_string(),
            Arc::clone(&catalog) as Arc<dyn CatalogProvider>,
        );
        InformationSchema {
            inner: InformationSchemaProvider::new(Arc::new(list)),
            catalog,
        }
    }

    /// `(layer, table, column or "", description)` of every visible layer table with a
    /// description (a column's, or the table's own with column "").
    async fn comments(&self) -> DfResult<Vec<(String, String, String, String)>> {
        let mut out = Vec::new();
        for layer in Layer::ALL {
            let Some(schema) = self.catalog.schema(layer.as_str()) else {
                continue;
            };
            for name in schema.table_names() {
                let t = TableRef {
                    layer,
                    name: name.clone(),
                };
                let table = match self.catalog.storage().load(&t).await {
                    Ok(table) => table,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                let snapshot = table.snapshot()?;
                let mut push = |column: &str, comment: &str| {
                    if !comment.is_empty() {
                        out.push((
                            layer.as_str().to_string(),
                            name.clone(),
                            column.to_string(),
                            comment.to_string(),
                        ));
                    }
                };
                if let Some(d) = snapshot.metadata().description() {
                    push("", d);
                }
                for f in snapshot.snapshot().arrow_schema().fields() {
                    if let Some(c) = f.metadata().get(COLUMN_COMMENT_KEY) {
                        push(f.name(), c);
                    }
                }
            }
        }
        Ok(out)
    }

    /// DataFusion's `table` LEFT JOINed to the comments on `keys`, its own columns then
    /// `comment`.
    async fn described(
        &self,
        table: &str,
        inner: Arc<dyn TableProvider>,
        columns: bool,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let comments = self.comments().await?;
        let rows: Vec<_> = comments
            .iter()
            .filter(|c| columns != c.2.is_empty())
            .collect();
        let text = |f: fn(&(String, String, String, String)) -> &str| {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("c_schema", DataType::Utf8, false),
            Field::new("c_table", DataType::Utf8, false),
            Field::new("c_column", DataType::Utf8, false),
            Field::new(COMMENT, DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                text(|r| &r.0),
                text(|r| &r.1),
                text(|r| &r.2),
                text(|r| &r.3),
            ],
        )?;
        let comments = MemTable::try_new(schema, vec![vec![batch]])?;
        let mut left = vec![col("table_schema"), col("table_name")];
        let mut right = vec![col("c_schema"), col("c_table")];
        if columns {
            left.push(col("column_name"));
            right.push(col("c_column"));
        }
        let mut output: Vec<_> = inner
            .schema()
            .fields()
            .iter()
            .map(|f| col(f.name().as_str()))
            .collect();
        output.push(col(COMMENT));
        let plan = LogicalPlanBuilder::scan(
            TableReference::partial(INFORMATION_SCHEMA, format!("{table}_base")),
            provider_as_source(inner),
            None,
        )?
        .join_with_expr_keys(
            LogicalPlanBuilder::scan(
                TableReference::partial(INFORMATION_SCHEMA, format!("{table}_comments")),
                provider_as_source(Arc::new(comments)),
                None,
            )?
            .build()?,
            JoinType::Left,
            (left, right),
            None,
        )?
        .project(output)?
        .build()?;
        Ok(Arc::new(datafusion::catalog::view::ViewTable::new(
            plan, None,
        )))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(inner) = self.inner.table(name).await? else {
            return Ok(None);
        };
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "tables" => self.described(&lower, inner, false).await.map(Some),
            "columns" => self.described(&lower, inner, true).await.map(Some),
            _ => Ok(Some(inner)),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
