//! Ad-hoc statements.
//!
//! ```text
//! query:   GetFlightInfo(CommandStatementQuery) → plan only → FlightInfo{schema, signed ticket}
//!          DoGet(ticket) → verify signature, expiry, principal → re-plan → stream batches
//!          (a cacheable query's ticket carries its result cache key: while the policies it
//!          was planned under are in force and the result is cached, DoGet replays it
//!          without planning again)
//! command: GetFlightInfo(CommandStatementQuery "INSERT …") → runs once now → ticket carries
//!          the one-row result;  DoPut(CommandStatementUpdate) → runs → affected rows
//! ```

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow_flight::sql::{
    CommandStatementQuery, CommandStatementUpdate, ProstMessageExt, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::common::ScalarValue;
use futures::TryStreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use super::encode::{self, flight_stream, from_ipc, to_ipc, wire_schema};
use super::{DoGetStream, FlightSqlServer, columns, principal, to_status};
use crate::cache::CacheKey;
use crate::engine::{Executed, ResultKey, Submission, command_schema};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::ticket::{Kind, proto};

impl FlightSqlServer {
    /// Whether this call wants view types downcast (config, overridable per call).
    pub(super) fn downcast<T>(&self, req: &Request<T>) -> bool {
        match req
            .metadata()
            .get("x-strata-view-types")
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.eq_ignore_ascii_case("keep") => false,
            Some(v) if v.eq_ignore_ascii_case("downcast") => true,
            _ => self.flight.downcast_view_types,
        }
    }

    /// FlightInfo for `sql` with `params_ipc` bound (one execution per parameter row).
    pub(super) async fn statement_info(
        &self,
        p: &Arc<Principal>,
        sql: &str,
        params_ipc: Vec<u8>,
        downcast: bool,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        // The first bound row types the result (a parameter in the select list).
        let first = match params_ipc.is_empty() {
            true => None,
            false => param_rows(&params_ipc)?.into_iter().next(),
        };
        let prepared = self.engine.prepare_fetch(p, sql, first).await?;
        let mut ticket = proto::StatementTicket {
            id: uuid::Uuid::new_v4().to_string(),
            sql: sql.to_string(),
            params_ipc,
            binding: Some(self.signer.binding(p)),
            downcast_views: downcast,
            result_ipc: Vec::new(),
            cache_key: Vec::new(),
            policy_version: 0,
            origins: prepared
                .origins
                .iter()
                .map(|o| o.as_ref().map(ToString::to_string).unwrap_or_default())
                .collect(),
        };
        // The key holds for this statement without parameters only.
        if let Some(k) = prepared.result_key
            && ticket.params_ipc.is_empty()
        {
            ticket.cache_key = k.key.0.to_vec();
            ticket.policy_version = k.policy_version;
        }
        let schema = match &prepared.schema {
            Some(schema) => wire_schema(
                &columns::with_metadata(schema, &prepared.origins, true),
                downcast,
            ),
            None => {
                // A command: run it exactly once, now; DoGet only replays the summary row.
                let batches = self.run_command(p, sql, &ticket.params_ipc).await?;
                let schema = command_schema();
                ticket.result_ipc = to_ipc(&schema, &batches)?;
                schema
            }
        };
        let handle = self.signer.seal(Kind::Statement, &ticket)?;
        let ticket = Ticket::new(
            TicketStatementQuery {
                statement_handle: handle.into(),
            }
            .as_any()
            .encode_to_vec(),
        );
        Ok(FlightInfo::new()
            .try_with_schema(&schema)?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor)
            .with_ordered(true))
    }

    /// Runs a command once per parameter row (or once without parameters).
    pub(super) async fn run_command(
        &self,
        p: &Arc<Principal>,
        sql: &str,
        params_ipc: &[u8],
    ) -> Result<Vec<RecordBatch>> {
        let request = Submission {
            sql,
            rows: param_rows(params_ipc)?,
            ..Submission::default()
        };
        match self.engine.submit(p, request).await? {
            Executed::Output(output) => Ok(output.stream.try_collect().await?),
            Executed::NotModified(_) => Err(Error::internal("not modified without a validator")),
        }
    }

    pub(super) async fn get_flight_info_statement_impl(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let p = principal(&request)?;
        let downcast = self.downcast(&request);
        let info = self
            .statement_info(&p, &query.query, Vec::new(), downcast, request.into_inner())
            .await
            .map_err(to_status)?;
        Ok(Response::new(info))
    }

    pub(super) async fn do_get_statement_impl(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let p = principal(&request)?;
        let t: proto::StatementTicket = self
            .signer
            .open(
                Kind::Statement,
                &ticket.statement_handle,
                &p,
                |m: &proto::StatementTicket| m.binding.as_ref(),
            )
            .map_err(to_status)?;
        if !t.result_ipc.is_empty() {
            let batches = from_ipc(&t.result_ipc).map_err(to_status)?;
            return Ok(Response::new(Box::pin(encode::batches_stream(
                command_schema(),
                batches,
            ))));
        }
        let Some(cancel) = self.cancels.start(&t.id) else {
            return Err(to_status(Error::Cancelled("query was cancelled".into())));
        };
        let finish = {
            let (cancels, id) = (Arc::clone(&self.cancels), t.id.clone());
            move || cancels.finish(&id)
        };
        // A ticket of a cacheable query carries its result key: replayed without planning
        // while current (see `Engine::submit`).
        let cached = <[u8; 32]>::try_from(t.cache_key.as_slice())
            .ok()
            .map(|key| ResultKey {
                key: CacheKey(key),
                policy_version: t.policy_version,
            });
        let distributed = crate::cluster::parse_header(
            request
                .metadata()
                .get(crate::cluster::DISTRIBUTED_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let submitted = match (param_rows(&t.params_ipc), distributed) {
            (Ok(rows), Ok(distributed)) => {
                let request = Submission {
                    sql: &t.sql,
                    rows,
                    cached,
                    if_none_match: None,
                    distributed,
                };
                self.engine.submit(&p, request).await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let output = match submitted {
            Ok(Executed::Output(output)) => output,
            Ok(Executed::NotModified(_)) => {
                finish();
                return Err(to_status(Error::internal(
                    "not modified without a validator",
                )));
            }
            Err(e) => {
                finish();
                return Err(to_status(e));
            }
        };
        let stream = flight_stream(
            columns::with_metadata(&output.schema, &origins(&t.origins), true),
            output.stream,
            t.downcast_views,
            self.flight.max_message_bytes,
            Some(cancel),
            finish,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    pub(super) async fn do_put_statement_update_impl<T>(
        &self,
        command: CommandStatementUpdate,
        request: &Request<T>,
    ) -> std::result::Result<i64, Status> {
        let p = principal(request)?;
        let batches = self
            .run_command(&p, &command.query, &[])
            .await
            .map_err(to_status)?;
        affected_rows(&batches).map_err(to_status)
    }
}

/// The column origins a ticket carries.
fn origins(names: &[String]) -> Vec<Option<crate::storage::TableRef>> {
    names
        .iter()
        .map(|n| crate::storage::TableRef::parse(n).ok())
        .collect()
}

/// Parameter rows from an Arrow IPC stream: one `Vec<ScalarValue>` per row, or a single empty
/// row when there are none.
pub(super) fn param_rows(params_ipc: &[u8]) -> Result<Vec<Vec<ScalarValue>>> {
    let batches = from_ipc(params_ipc)?;
    let mut rows = Vec::new();
    for batch in &batches {
        for r in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, r))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            );
        }
    }
    if rows.is_empty() {
        rows.push(Vec::new());
    }
    Ok(rows)
}

/// Sum of `rows_affected` over command summary rows; for a query run as an update, its row
/// count.
pub(super) fn affected_rows(batches: &[RecordBatch]) -> Result<i64> {
    let mut total = 0i64;
    for b in batches {
        match b
            .column_by_name("rows_affected")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        {
            Some(col) if b.schema().field_with_name("operation").is_ok() => {
                total += (0..col.len())
                    .filter(|i| col.is_valid(*i))
                    .map(|i| col.value(i))
                    .sum::<i64>();
            }
            _ => total += b.num_rows() as i64,
        }
    }
    Ok(total)
}
