//! Front ends: thin adapters from protocols to the engine. Nothing below `api` imports it.

pub mod flight;
pub(crate) mod rest;
pub mod wire;

use crate::error::{Error, ErrorKind};

/// What both front ends do once per failed request: log it under a fresh trace id (returned
/// for the client) and count refused commits.
pub(crate) fn report(e: &Error) -> String {
    if e.kind() == ErrorKind::Conflict {
        crate::telemetry::metrics().conflicts.inc();
    }
    e.log()
}
