//! Bulk ingest (`CommandStatementIngest`, ADBC `adbc_ingest`).

use arrow_flight::sql::CommandStatementIngest;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
use tonic::{Request, Status};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::prepared::{do_put_batches, invalid_do_put};
use super::{FlightSqlServer, principal, to_status};
use crate::engine::tables::{IfExists, IngestMode};
use crate::error::{Error, Result};
use crate::storage::{CATALOG_NAME, TableRef};

/// The DoPut's batches as they arrive (the ingest writes them as they come), with the
/// schema from its first message.
async fn batch_stream(
    request: Request<PeekableFlightDataStream>,
) -> Result<(SchemaRef, BoxStream<'static, Result<RecordBatch>>)> {
    let mut decoder = do_put_batches(request);
    let first = decoder.try_next().await.map_err(invalid_do_put)?;
    let schema = decoder
        .schema()
        .map(std::sync::Arc::clone)
        .or_else(|| first.as_ref().map(RecordBatch::schema))
        .ok_or_else(|| Error::invalid("ingest without an Arrow schema"))?;
    let batches = futures::stream::iter(first.map(Ok))
        .chain(decoder.map_err(invalid_do_put))
        .boxed();
    Ok((schema, batches))
}

/// The target table: `schema` is the layer; a dotted `table` (`gold.t`) also works, since
/// ADBC passes `adbc_ingest("gold.t", …)` through as the table name.
fn target(cmd: &CommandStatementIngest, default_layer: &str) -> Result<TableRef> {
    if let Some(c) = cmd.catalog.as_deref()
        && !c.eq_ignore_ascii_case(CATALOG_NAME)
    {
        return Err(Error::NotFound(format!(
            "catalog {c:?} does not exist (use {CATALOG_NAME})"
        )));
    }
    if cmd.temporary {
        return Err(Error::Unsupported(
            "temporary tables are not supported".into(),
        ));
    }
    match cmd.schema.as_deref() {
        Some(layer) => TableRef::new(layer, &cmd.table),
        None if cmd.table.contains('.') => TableRef::parse(&cmd.table),
        None => TableRef::new(default_layer, &cmd.table),
    }
}

fn mode(cmd: &CommandStatementIngest) -> Result<IngestMode> {
    let opts = cmd.table_definition_options.unwrap_or_default();
    let create_if_missing = match TableNotExistOption::try_from(opts.if_not_exist) {
        Ok(TableNotExistOption::Create) => true,
        Ok(TableNotExistOption::Fail | TableNotExistOption::Unspecified) => false,
        Err(_) => return Err(Error::invalid("unknown if_not_exist option")),
    };
    let if_exists = match TableExistsOption::try_from(opts.if_exists) {
        Ok(TableExistsOption::Fail | TableExistsOption::Unspecified) => IfExists::Fail,
        Ok(TableExistsOption::Append) => IfExists::Append,
        Ok(TableExistsOption::Replace) => IfExists::Replace,
        Err(_) => return Err(Error::invalid("unknown if_exists option")),
    };
    let merge_schema = match cmd
        .options
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("merge_schema"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "ingest option merge_schema must be true or false, not {other:?}"
            )));
        }
    };
    Ok(IngestMode {
        create_if_missing,
        if_exists,
        merge_schema,
    })
}

impl FlightSqlServer {
    pub(super) async fn ingest_impl(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        let p = principal(&request)?;
        let run = async {
            if cmd.transaction_id.is_some() {
                return Err(Error::Unsupported("transactions are not supported".into()));
            }
            let t = target(&cmd, &self.default_layer)?;
            let mode = mode(&cmd)?;
            let (schema, batches) = batch_stream(request).await?;
            let outcome = self.engine.ingest(&p, &t, schema, batches, mode).await?;
            Ok(outcome.rows as i64)
        };
        run.await.map_err(to_status)
    }
}
