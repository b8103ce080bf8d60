//! Flight SQL front end: a thin adapter over the same engine the REST API uses.
//!
//! ```text
//! any RPC but Handshake ── AuthLayer: Bearer/Basic JWT → Principal in the request ─┐
//! Handshake: Basic user:<JWT> or Bearer → HandshakeResponse + authorization: Bearer <JWT>
//! GetFlightInfo(cmd) → classify (requirement) → plan / list for the principal → FlightInfo
//! DoGet(ticket)      → statement tickets: verify HMAC, expiry, principal → re-plan → stream
//! DoPut(cmd, data)   → updates, prepared binding, ingest
//! DoAction           → prepared statements, CancelFlightInfo
//! PollFlightInfo, GetSchema → [`service`] (arrow-flight leaves them unimplemented)
//! ```
//!
//! One file per command family: [`statement`], [`prepared`], [`metadata`], [`ingest`],
//! [`cancel_action`]; this file only dispatches.

mod auth;
mod cancel;
mod cancel_action;
mod columns;
pub mod encode;
mod error;
mod handshake;
mod ingest;
mod metadata;
mod prepared;
mod service;
mod statement;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionCreatePreparedSubstraitPlanRequest,
    ActionEndSavepointRequest, ActionEndTransactionRequest, Command, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest,
    HandshakeResponse, Ticket,
};
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::ticket::TicketSigner;
use crate::security::{Authenticator, Principal};

pub(crate) use auth::{AuthLayer, transport_header_limit};

type DoGetStream =
    Pin<Box<dyn Stream<Item = std::result::Result<FlightData, Status>> + Send + 'static>>;

pub use error::to_status;

/// The principal the auth layer attached; fails closed if it is missing.
fn principal<T>(req: &Request<T>) -> std::result::Result<Arc<Principal>, Status> {
    req.extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| to_status(Error::Unauthenticated("not authenticated".into())))
}

/// What a command needs before it runs. Decided for every command in one exhaustive match:
/// a new Flight SQL command does not compile until it is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requirement {
    /// Metadata: any principal; results list only what the principal may see.
    Catalog,
    /// SQL: the engine checks privileges per statement and table (SELECT, INSERT, MODIFY,
    /// MANAGE), exactly as for REST.
    Statement,
    /// Ingest: INSERT (append), INSERT + MODIFY (replace), MANAGE on the layer (create).
    Ingest,
    /// A signed handle or ticket: its HMAC and principal binding are checked.
    Handle,
    /// Not offered: UNIMPLEMENTED.
    Unsupported,
    /// A response message no client sends as a request.
    NotARequest,
}

fn requirement(cmd: &Command) -> Requirement {
    use Requirement as R;
    match cmd {
        Command::CommandGetCatalogs(_)
        | Command::CommandGetDbSchemas(_)
        | Command::CommandGetTables(_)
        | Command::CommandGetTableTypes(_)
        | Command::CommandGetSqlInfo(_)
        | Command::CommandGetXdbcTypeInfo(_)
        | Command::CommandGetPrimaryKeys(_)
        | Command::CommandGetExportedKeys(_)
        | Command::CommandGetImportedKeys(_)
        | Command::CommandGetCrossReference(_) => R::Catalog,
        Command::CommandStatementQuery(_)
        | Command::CommandStatementUpdate(_)
        | Command::ActionCreatePreparedStatementRequest(_) => R::Statement,
        Command::CommandStatementIngest(_) => R::Ingest,
        Command::CommandPreparedStatementQuery(_)
        | Command::CommandPreparedStatementUpdate(_)
        | Command::ActionClosePreparedStatementRequest(_)
        | Command::TicketStatementQuery(_)
        | Command::ActionCancelQueryRequest(_) => R::Handle,
        Command::CommandStatementSubstraitPlan(_)
        | Command::ActionCreatePreparedSubstraitPlanRequest(_)
        | Command::ActionBeginTransactionRequest(_)
        | Command::ActionEndTransactionRequest(_)
        | Command::ActionBeginSavepointRequest(_)
        | Command::ActionEndSavepointRequest(_)
        | Command::Unknown(_) => R::Unsupported,
        Command::ActionBeginSavepointResult(_)
        | Command::ActionBeginTransactionResult(_)
        | Command::ActionCancelQueryResult(_)
        | Command::ActionCreatePreparedStatementResult(_)
        | Command::DoPutPreparedStatementResult(_)
        | Command::DoPutUpdateResult(_) => R::NotARequest,
    }
}

/// Rejects commands Strata does not offer, with the decision from [`requirement`].
fn refuse(cmd: Command) -> Status {
    let name = cmd
        .type_url()
        .rsplit('.')
        .next()
        .unwrap_or("command")
        .to_string();
    match requirement(&cmd) {
        Requirement::NotARequest => to_status(Error::invalid(format!(
            "{name} is a response, not a request"
        ))),
        _ => Status::unimplemented(format!(
            "{name} is not supported by Strata (no Substrait plans or transactions; every statement commits on its own)"
        )),
    }
}

#[derive(Clone)]
pub struct FlightSqlServer {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    signer: Arc<TicketSigner>,
    cancels: Arc<cancel::Cancellations>,
    flight: crate::config::FlightConfig,
    default_layer: String,
    sql_info: Arc<SqlInfoData>,
    xdbc: Arc<XdbcTypeInfoData>,
    /// Parameters last bound to a prepared handle, by the handle's digest: for clients that
    /// ignore the new handle DoPut returns and execute the original one (`flightsql-dbapi`).
    /// Bounded and short-lived, and per replica: those clients must stay on one; everyone
    /// else uses the stateless handles.
    bound: moka::sync::Cache<[u8; 32], Vec<u8>>,
}

impl std::fmt::Debug for FlightSqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSqlServer")
            .field("flight", &self.flight)
            .finish_non_exhaustive()
    }
}

impl FlightSqlServer {
    pub fn new(
        cfg: &Config,
        engine: Arc<Engine>,
        auth: Arc<Authenticator>,
    ) -> Result<FlightSqlServer> {
        let signer = Arc::new(TicketSigner::for_deployment(
            &cfg.auth,
            &auth,
            Duration::from_secs(cfg.flight.ticket_ttl_secs),
        ));
        Ok(FlightSqlServer {
            engine,
            auth,
            signer,
            cancels: Arc::new(cancel::Cancellations::default()),
            flight: cfg.flight.clone(),
            default_layer: cfg.query.default_layer.to_ascii_lowercase(),
            sql_info: Arc::new(metadata::sql_info_data()?),
            xdbc: Arc::new(metadata::xdbc_data()?),
            bound: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(cfg.flight.ticket_ttl_secs))
                .build(),
        })
    }

    pub fn into_service(self) -> FlightServiceServer<service::StrataFlightService> {
        let max = self.flight.max_message_bytes;
        FlightServiceServer::new(service::StrataFlightService::new(self))
            .max_decoding_message_size(max.max(16 * 1024 * 1024))
            .max_encoding_message_size(max.max(16 * 1024 * 1024))
    }

    pub(crate) fn auth_layer(&self) -> AuthLayer {
        AuthLayer {
            auth: Arc::clone(&self.auth),
            max_header_bytes: self.flight.max_header_list_bytes as usize,
        }
    }
}

fn result_response(
    r: Result<(arrow::datatypes::SchemaRef, arrow::array::RecordBatch)>,
) -> std::result::Result<Response<DoGetStream>, Status> {
    let (schema, batch) = r.map_err(to_status)?;
    Ok(metadata::batch_response(schema, batch))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<
        Response<
            Pin<Box<dyn Stream<Item = std::result::Result<HandshakeResponse, Status>> + Send>>,
        >,
        Status,
    > {
        handshake::handshake(&self.auth, request)
    }

    // ---- statements ----

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.get_flight_info_statement_impl(query, request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.do_get_statement_impl(ticket, request).await
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        if command.transaction_id.is_some() {
            return Err(refuse(Command::ActionBeginTransactionRequest(
                ActionBeginTransactionRequest {},
            )));
        }
        self.do_put_statement_update_impl(command, &request).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        self.ingest_impl(command, request).await
    }

    // ---- prepared statements ----

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        self.create_prepared_statement_impl(query, request).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> std::result::Result<(), Status> {
        self.close_prepared_statement_impl(query, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        self.get_flight_info_prepared_impl(query, request).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<DoPutPreparedStatementResult, Status> {
        self.bind_prepared_impl(query, request).await
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        self.prepared_update_impl(query, request).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        self.do_get_prepared_impl(query, request).await
    }

    // ---- metadata ----

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        result_response(self.catalogs_batch(query))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        result_response(self.schemas_batch(query))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let p = principal(&request)?;
        let downcast = self.downcast(&request);
        result_response(self.tables_batch(&p, query, downcast).await)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        result_response(self.table_types_batch(query))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&self.sql_info);
        let schema = b.schema();
        result_response(
            b.build()
                .map(|batch| (schema, batch))
                .map_err(metadata::flight_error),
        )
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc).schema();
        metadata::info_for(query, &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        let b = query.into_builder(&self.xdbc);
        let schema = b.schema();
        result_response(
            b.build()
                .map(|batch| (schema, batch))
                .map_err(metadata::flight_error),
        )
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        metadata::info_for(
            query,
            &metadata::primary_keys_schema(),
            request.into_inner(),
        )
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        Ok(metadata::empty_response(metadata::primary_keys_schema()))
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        metadata::info_for(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        Ok(metadata::empty_response(metadata::foreign_keys_schema()))
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        metadata::info_for(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        Ok(metadata::empty_response(metadata::foreign_keys_schema()))
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        metadata::info_for(
            query,
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        Ok(metadata::empty_response(metadata::foreign_keys_schema()))
    }

    // ---- cancellation ----

    async fn list_custom_actions(&self) -> Option<Vec<std::result::Result<ActionType, Status>>> {
        Some(vec![Ok(ActionType {
            r#type: cancel_action::CANCEL_FLIGHT_INFO.to_string(),
            description: "Cancel a query by its FlightInfo (CancelFlightInfoRequest → CancelFlightInfoResult)".to_string(),
        })])
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoActionStream>,
        Status,
    > {
        let p = principal(&request)?;
        if request.get_ref().r#type == cancel_action::CANCEL_FLIGHT_INFO {
            let body = self.cancel_action(&p, &request.get_ref().body)?;
            let result = arrow_flight::Result { body };
            return Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
                result,
            )]))));
        }
        Err(Status::unimplemented(format!(
            "unknown action {:?}",
            request.get_ref().r#type
        )))
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> std::result::Result<ActionCancelQueryResult, Status> {
        let p = principal(&request)?;
        let info = FlightInfo::decode_from(&query.info)?;
        let status = self.cancel_info(&p, Some(info)).map_err(to_status)?;
        // CancelQuery uses its own enum: 1 = cancelled, 3 = not cancellable.
        let result = match status {
            arrow_flight::CancelStatus::Cancelled => 1,
            _ => 3,
        };
        Ok(ActionCancelQueryResult { result })
    }

    // ---- not offered (classified in `requirement`) ----

    async fn get_flight_info_substrait_plan(
        &self,
        query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(refuse(Command::CommandStatementSubstraitPlan(query)))
    }

    async fn do_put_substrait_plan(
        &self,
        query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> std::result::Result<i64, Status> {
        Err(refuse(Command::CommandStatementSubstraitPlan(query)))
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<Action>,
    ) -> std::result::Result<ActionCreatePreparedStatementResult, Status> {
        Err(refuse(Command::ActionCreatePreparedSubstraitPlanRequest(
            query,
        )))
    }

    async fn do_action_begin_transaction(
        &self,
        query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> std::result::Result<ActionBeginTransactionResult, Status> {
        Err(refuse(Command::ActionBeginTransactionRequest(query)))
    }

    async fn do_action_end_transaction(
        &self,
        query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> std::result::Result<(), Status> {
        Err(refuse(Command::ActionEndTransactionRequest(query)))
    }

    async fn do_action_begin_savepoint(
        &self,
        query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> std::result::Result<ActionBeginSavepointResult, Status> {
        Err(refuse(Command::ActionBeginSavepointRequest(query)))
    }

    async fn do_action_end_savepoint(
        &self,
        query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> std::result::Result<(), Status> {
        Err(refuse(Command::ActionEndSavepointRequest(query)))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: arrow_flight::sql::Any,
    ) -> std::result::Result<Response<DoGetStream>, Status> {
        Err(refuse(Command::Unknown(message)))
    }

    async fn get_flight_info_fallback(
        &self,
        cmd: Command,
        _request: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        Err(refuse(cmd))
    }

    async fn do_put_fallback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        message: arrow_flight::sql::Any,
    ) -> std::result::Result<
        Response<<Self as arrow_flight::flight_service_server::FlightService>::DoPutStream>,
        Status,
    > {
        Err(refuse(Command::Unknown(message)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Decoding helpers for messages nested in actions.
trait DecodeFrom: Sized {
    fn decode_from(bytes: &[u8]) -> std::result::Result<Self, Status>;
}

impl DecodeFrom for FlightInfo {
    fn decode_from(bytes: &[u8]) -> std::result::Result<Self, Status> {
        <FlightInfo as prost::Message>::decode(bytes)
            .map_err(|e| to_status(Error::invalid(format!("invalid FlightInfo: {e}"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_commands_are_refused_with_the_right_code() {
        let s = refuse(Command::ActionBeginTransactionRequest(
            ActionBeginTransactionRequest {},
        ));
        assert_eq!(s.code(), tonic::Code::Unimplemented);
        let s = refuse(Command::DoPutUpdateResult(
            arrow_flight::sql::DoPutUpdateResult { record_count: 1 },
        ));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            requirement(&Command::CommandGetTables(CommandGetTables::default())),
            Requirement::Catalog
        );
        assert_eq!(
            requirement(&Command::CommandStatementIngest(
                CommandStatementIngest::default()
            )),
            Requirement::Ingest
        );
    }
}
