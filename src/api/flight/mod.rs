//! Flight SQL front end.
//!
//! This issue serves the handshake only (the Flight SQL issue adds statements, prepared
//! statements, metadata and ingest on top of the same engine):
//!
//! ```text
//! client                                   strata
//!   Handshake  authorization: Basic user:<JWT>  →  verify JWT (password) or Bearer header
//!              ←  HandshakeResponse + authorization: Bearer <JWT>
//!   later calls authorization: Bearer <JWT>
//! ```

mod handshake;

use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::SqlInfo;
use arrow_flight::sql::server::FlightSqlService;
use tonic::Status;

use crate::engine::Engine;
use crate::error::Error;
use crate::security::{Authenticator, Principal};

#[derive(Debug, Clone)]
pub struct FlightSqlServer {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
}

impl FlightSqlServer {
    pub fn into_service(self) -> FlightServiceServer<FlightSqlServer> {
        FlightServiceServer::new(self)
    }

    /// The principal of a call: `authorization: Bearer <JWT>` metadata.
    #[allow(dead_code)]
    pub(crate) fn principal<T>(&self, req: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
        let token = handshake::bearer(req.metadata())
            .ok_or_else(|| to_status(Error::Unauthenticated("missing bearer token".into())))?;
        self.auth
            .authenticate(&token)
            .map(Arc::new)
            .map_err(to_status)
    }
}

/// gRPC rendering of [`Error`]: code from its kind, internal detail logged only.
pub fn to_status(e: Error) -> Status {
    let trace_id = e.log();
    let kind = e.kind();
    Status::new(kind.grpc_code(), e.client_message(&trace_id))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    async fn do_handshake(
        &self,
        request: tonic::Request<tonic::Streaming<arrow_flight::HandshakeRequest>>,
    ) -> Result<
        tonic::Response<
            std::pin::Pin<
                Box<
                    dyn futures::Stream<Item = Result<arrow_flight::HandshakeResponse, Status>>
                        + Send,
                >,
            >,
        >,
        Status,
    > {
        handshake::handshake(&self.auth, request)
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
