//! The gRPC Flight service: arrow-flight's Flight SQL dispatch for every RPC, plus the two
//! it leaves unimplemented and clients use.
//!
//! ```text
//! PollFlightInfo(cmd) → GetFlightInfo(cmd) → PollInfo{info, progress 1.0, no descriptor}
//!     (planning is all GetFlightInfo does for a query; execution starts at DoGet, so the
//!     info is complete at once: ADBC's incremental execution gets its answer in one poll)
//! GetSchema(query | prepared handle) → plan only, never run → the schema GetFlightInfo
//!     would announce
//! ```

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{Any, Command, CommandPreparedStatementQuery, CommandStatementQuery};
use arrow_flight::{
    Action, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo, HandshakeRequest, PollInfo,
    SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::encode::{schema_bytes, wire_schema};
use super::{FlightSqlServer, columns, principal, to_status};
use crate::error::Error;

/// [`FlightSqlServer`] as the gRPC service.
#[derive(Debug)]
pub struct StrataFlightService {
    inner: FlightSqlServer,
}

impl StrataFlightService {
    pub(super) fn new(inner: FlightSqlServer) -> StrataFlightService {
        StrataFlightService { inner }
    }
}

type Inner = FlightSqlServer;

#[tonic::async_trait]
impl FlightService for StrataFlightService {
    type HandshakeStream = <Inner as FlightService>::HandshakeStream;
    type ListFlightsStream = <Inner as FlightService>::ListFlightsStream;
    type DoGetStream = <Inner as FlightService>::DoGetStream;
    type DoPutStream = <Inner as FlightService>::DoPutStream;
    type DoExchangeStream = <Inner as FlightService>::DoExchangeStream;
    type DoActionStream = <Inner as FlightService>::DoActionStream;
    type ListActionsStream = <Inner as FlightService>::ListActionsStream;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(&self.inner, request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        FlightService::list_flights(&self.inner, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(&self.inner, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let info = FlightService::get_flight_info(&self.inner, request)
            .await?
            .into_inner();
        Ok(Response::new(PollInfo {
            info: Some(info),
            flight_descriptor: None,
            progress: Some(1.0),
            expiration_time: None,
        }))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let p = principal(&request)?;
        let downcast = self.inner.downcast(&request);
        let any = Any::decode(&*request.get_ref().cmd)
            .map_err(|e| to_status(Error::invalid(format!("GetSchema command: {e}"))))?;
        let command = Command::try_from(any)
            .map_err(|e| to_status(Error::invalid(format!("GetSchema command: {e}"))))?;
        let (sql, params) = match command {
            Command::CommandStatementQuery(CommandStatementQuery { query, .. }) => (query, None),
            Command::CommandPreparedStatementQuery(CommandPreparedStatementQuery {
                prepared_statement_handle,
            }) => self
                .inner
                .prepared_statement(&p, &prepared_statement_handle)
                .map_err(to_status)?,
            other => {
                return Err(to_status(Error::Unsupported(format!(
                    "GetSchema answers queries and prepared statements, not {}",
                    other.type_url()
                ))));
            }
        };
        let prepared = self
            .inner
            .engine
            .prepare_fetch(&p, &sql, params)
            .await
            .map_err(to_status)?;
        let schema = match &prepared.schema {
            Some(s) => wire_schema(
                &columns::with_metadata(s, &prepared.origins, true),
                downcast,
            ),
            None => crate::engine::command_schema(),
        };
        Ok(Response::new(SchemaResult {
            schema: schema_bytes(&schema).map_err(to_status)?,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(&self.inner, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.inner, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        FlightService::do_exchange(&self.inner, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.inner, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.inner, request).await
    }
}
