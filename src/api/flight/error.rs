//! gRPC rendering of [`Error`]: the one gRPC status map, internal detail logged only.

use tonic::Status;

use crate::error::{Error, ErrorKind};

/// gRPC rendering of [`Error`]: code from its kind, internal detail logged only.
pub fn to_status(e: Error) -> Status {
    let trace_id = crate::api::report(&e);
    Status::new(grpc_code(e.kind()), e.client_message(&trace_id))
}

/// gRPC status code for Flight SQL responses.
pub(crate) fn grpc_code(kind: ErrorKind) -> tonic::Code {
    use tonic::Code as C;
    match kind {
        ErrorKind::InvalidArgument => C::InvalidArgument,
        ErrorKind::Unauthenticated => C::Unauthenticated,
        ErrorKind::PermissionDenied => C::PermissionDenied,
        ErrorKind::NotFound => C::NotFound,
        ErrorKind::AlreadyExists => C::AlreadyExists,
        ErrorKind::Conflict => C::Aborted,
        ErrorKind::PayloadTooLarge | ErrorKind::ResourceExhausted => C::ResourceExhausted,
        ErrorKind::UnsupportedMediaType | ErrorKind::NotAcceptable => C::InvalidArgument,
        ErrorKind::Unsupported => C::Unimplemented,
        ErrorKind::DeadlineExceeded => C::DeadlineExceeded,
        ErrorKind::Unavailable => C::Unavailable,
        ErrorKind::Cancelled => C::Cancelled,
        ErrorKind::Internal => C::Internal,
    }
}
