//! `CancelFlightInfo` (and the older `CancelQuery` action): stops a running DoGet of that
//! ticket on this replica, or makes a later DoGet of it fail with CANCELLED.

use arrow_flight::sql::TicketStatementQuery;
use arrow_flight::{CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightInfo};
use prost::Message;
use tonic::Status;

use super::{FlightSqlServer, to_status};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::ticket::{Kind, proto};

/// The Flight RPC action name.
pub(super) const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";

impl FlightSqlServer {
    pub(super) fn cancel_info(
        &self,
        p: &Principal,
        info: Option<FlightInfo>,
    ) -> Result<CancelStatus> {
        let info = info.ok_or_else(|| Error::invalid("CancelFlightInfo needs the FlightInfo"))?;
        let mut found = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else {
                continue;
            };
            let any = prost_types_any(&ticket.ticket)?;
            let Ok(Some(stmt)) = any.unpack::<TicketStatementQuery>() else {
                // Metadata tickets run to completion instantly; nothing to cancel.
                continue;
            };
            let t: proto::StatementTicket = self.signer.open(
                Kind::Statement,
                &stmt.statement_handle,
                p,
                |m: &proto::StatementTicket| m.binding.as_ref(),
            )?;
            self.cancels.cancel(&t.id);
            found = true;
        }
        Ok(if found {
            CancelStatus::Cancelled
        } else {
            CancelStatus::NotCancellable
        })
    }

    pub(super) fn cancel_action(
        &self,
        p: &Principal,
        body: &[u8],
    ) -> std::result::Result<bytes::Bytes, Status> {
        let req = CancelFlightInfoRequest::decode(body).map_err(|e| {
            to_status(Error::invalid(format!(
                "invalid CancelFlightInfoRequest: {e}"
            )))
        })?;
        let status = self.cancel_info(p, req.info).map_err(to_status)?;
        Ok(CancelFlightInfoResult {
            status: status as i32,
        }
        .encode_to_vec()
        .into())
    }
}

fn prost_types_any(bytes: &[u8]) -> Result<arrow_flight::sql::Any> {
    arrow_flight::sql::Any::decode(bytes)
        .map_err(|e| Error::invalid(format!("invalid ticket: {e}")))
}
