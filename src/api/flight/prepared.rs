//! Prepared statements, stateless: the handle is a signed message carrying the SQL and any
//! bound parameters, so any replica can serve it and closing it frees nothing.
//!
//! ```text
//! DoAction(CreatePreparedStatement sql) → plan → {handle, dataset schema, parameter schema}
//! DoPut(CommandPreparedStatementQuery handle, batch of parameter rows) → new handle (params in);
//!     this replica also remembers them for the old handle (clients that execute the handle
//!     they bound, not the new one: `flightsql-dbapi`)
//! GetFlightInfo(CommandPreparedStatementQuery handle) → ticket as for ad-hoc statements
//! DoPut(CommandPreparedStatementUpdate handle [, rows]) → one execution per row → affected rows
//! DoAction(ClosePreparedStatement handle) → verified, nothing to free
//! ```

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, DoPutPreparedStatementResult,
};
use arrow_flight::{FlightDescriptor, FlightInfo};
use futures::TryStreamExt;
use tonic::{Request, Response, Status};

use super::encode::{schema_bytes, to_ipc, wire_schema};
use super::statement::affected_rows;
use super::{FlightSqlServer, principal, to_status};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::ticket::{Kind, proto};

/// The key of a handle in [`FlightSqlServer::bound`].
fn handle_digest(handle: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(handle).into()
}

impl FlightSqlServer {
    fn open_handle(&self, p: &Principal, handle: &[u8]) -> Result<proto::PreparedHandle> {
        self.signer
            .open(Kind::Prepared, handle, p, |m: &proto::PreparedHandle| {
                m.binding.as_ref()
            })
    }

    /// The handle, with the parameters last bound to it on this replica if it carries none
    /// (a client that executes the handle it bound, not the one DoPut returned).
    fn open_bound_handle(&self, p: &Principal, handle: &[u8]) -> Result<proto::PreparedHandle> {
        let mut opened = self.open_handle(p, handle)?;
        if opened.params_ipc.is_empty()
            && let Some(params) = self.bound.get(&handle_digest(handle))
        {
            opened.params_ipc = params;
        }
        Ok(opened)
    }

    /// The SQL of a prepared handle and the first row of parameters bound to it, if any.
    pub(super) fn prepared_statement(
        &self,
        p: &Principal,
        handle: &[u8],
    ) -> Result<(String, Option<Vec<datafusion::common::ScalarValue>>)> {
        let opened = self.open_bound_handle(p, handle)?;
        let first = match opened.params_ipc.is_empty() {
            true => None,
            false => super::statement::param_rows(&opened.params_ipc)?
                .into_iter()
                .next(),
        };
        Ok((opened.sql, first))
    }

    pub(super) async fn create_prepared_statement_impl(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        let p = principal(&request)?;
        let downcast = self.downcast(&request);
        let run = async {
            let prepared = self.engine.prepare(&p, &query.query).await?;
            let handle = proto::PreparedHandle {
                sql: query.query.clone(),
                params_ipc: Vec::new(),
                binding: Some(self.signer.binding(&p)),
                is_query: prepared.is_query(),
            };
            let dataset = match &prepared.schema {
                Some(s) => schema_bytes(&wire_schema(
                    &super::columns::with_metadata(s, &prepared.origins, true),
                    downcast,
                ))?,
                None => schema_bytes(&Schema::empty())?,
            };
            let params = Schema::new(
                prepared
                    .parameters
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        Field::new(
                            format!("${}", i + 1),
                            t.clone().unwrap_or(DataType::Null),
                            true,
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            Ok::<_, Error>(ActionCreatePreparedStatementResult {
                prepared_statement_handle: self.signer.seal(Kind::Prepared, &handle)?.into(),
                dataset_schema: dataset,
                parameter_schema: schema_bytes(&params)?,
            })
        };
        run.await.map_err(to_status)
    }

    pub(super) async fn close_prepared_statement_impl(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> std::result::Result<(), Status> {
        let p = principal(&request)?;
        self.open_handle(&p, &query.prepared_statement_handle)
            .map_err(to_status)?;
        Ok(())
    }

    pub(super) async fn get_flight_info_prepared_impl(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let p = principal(&request)?;
        let downcast = self.downcast(&request);
        let handle = self
            .open_bound_handle(&p, &query.prepared_statement_handle)
            .map_err(to_status)?;
        let info = self
            .statement_info(
                &p,
                &handle.sql,
                handle.params_ipc,
                downcast,
                request.into_inner(),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(info))
    }

    /// DoGet with the prepared command as the ticket. Our FlightInfos hand out statement
    /// tickets; a client that sends the prepared command instead gets the same result in one
    /// step, through the same statement DoGet.
    pub(super) async fn do_get_prepared_impl(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> std::result::Result<Response<super::DoGetStream>, Status> {
        let p = principal(&request)?;
        let downcast = self.downcast(&request);
        let handle = self
            .open_bound_handle(&p, &query.prepared_statement_handle)
            .map_err(to_status)?;
        let info = self
            .statement_info(
                &p,
                &handle.sql,
                handle.params_ipc,
                downcast,
                FlightDescriptor::new_cmd(Vec::<u8>::new()),
            )
            .await
            .map_err(to_status)?;
        let ticket = info
            .endpoint
            .into_iter()
            .next()
            .and_then(|e| e.ticket)
            .ok_or_else(|| to_status(Error::internal("no ticket")))?;
        let any = <arrow_flight::sql::Any as prost::Message>::decode(ticket.ticket.as_ref())
            .map_err(|e| to_status(Error::internal(format!("ticket: {e}"))))?;
        let stmt = any
            .unpack::<arrow_flight::sql::TicketStatementQuery>()
            .map_err(|e| to_status(Error::internal(e.to_string())))?
            .ok_or_else(|| to_status(Error::internal("no statement ticket")))?;
        let mut req = Request::new(ticket);
        req.extensions_mut().insert(p);
        self.do_get_statement_impl(stmt, req).await
    }

    /// Binds parameters: returns a new handle carrying them.
    pub(super) async fn bind_prepared_impl(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        let p = principal(&request)?;
        let mut handle = self
            .open_handle(&p, &query.prepared_statement_handle)
            .map_err(to_status)?;
        let (schema, batches) = read_batches(request).await.map_err(to_status)?;
        handle.params_ipc = match schema {
            Some(schema) if batches.iter().any(|b| b.num_rows() > 0) => {
                to_ipc(&schema, &batches).map_err(to_status)?
            }
            _ => Vec::new(),
        };
        handle.binding = Some(self.signer.binding(&p));
        self.bound.insert(
            handle_digest(&query.prepared_statement_handle),
            handle.params_ipc.clone(),
        );
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(
                self.signer
                    .seal(Kind::Prepared, &handle)
                    .map_err(to_status)?
                    .into(),
            ),
        })
    }

    pub(super) async fn prepared_update_impl(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        let p = principal(&request)?;
        let handle = self
            .open_bound_handle(&p, &query.prepared_statement_handle)
            .map_err(to_status)?;
        let (schema, batches) = read_batches(request).await.map_err(to_status)?;
        let params_ipc = match schema {
            Some(schema) if batches.iter().any(|b| b.num_rows() > 0) => {
                to_ipc(&schema, &batches).map_err(to_status)?
            }
            _ => handle.params_ipc,
        };
        let results = self
            .run_command(&p, &handle.sql, &params_ipc)
            .await
            .map_err(to_status)?;
        affected_rows(&results).map_err(to_status)
    }
}

/// The record batches of a DoPut, decoded as they arrive (the first message carries the
/// descriptor). A DoPut may carry only the descriptor (an update without parameters):
/// messages without an IPC header are skipped instead of failing to decode.
pub(super) fn do_put_batches(
    request: Request<PeekableFlightDataStream>,
) -> FlightRecordBatchStream {
    let stream = request
        .into_inner()
        .map_err(|s| FlightError::Tonic(Box::new(s)))
        .try_filter(|fd| futures::future::ready(!fd.data_header.is_empty()));
    FlightRecordBatchStream::new_from_flight_data(stream)
}

/// A DoPut whose data does not decode: the client's error.
pub(super) fn invalid_do_put(e: FlightError) -> Error {
    Error::invalid(format!("invalid Arrow data in DoPut: {e}"))
}

/// Reads all the record batches of a DoPut ([`do_put_batches`]).
pub(super) async fn read_batches(
    request: Request<PeekableFlightDataStream>,
) -> Result<(Option<arrow::datatypes::SchemaRef>, Vec<RecordBatch>)> {
    let mut decoder = do_put_batches(request);
    let mut batches = Vec::new();
    while let Some(batch) = decoder.try_next().await.map_err(invalid_do_put)? {
        batches.push(batch);
    }
    let schema = decoder
        .schema()
        .map(Arc::clone)
        .or_else(|| batches.first().map(|b| b.schema()));
    Ok((schema, batches))
}
