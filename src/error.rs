//! One error type for the whole server.
//!
//! Every failure is an [`Error`]; [`Error::kind`] classifies it into a protocol-neutral
//! [`ErrorKind`], and each front end derives its status from that kind alone, in one
//! exhaustive match of its own (`api::rest::error::http_status`, `api::flight::error::grpc_code`).
//! Adding a kind forces a decision in both at compile time: neither match has a catch-all arm.
//!
//! Internal and unavailable errors reach clients as a code plus a trace id; the detail is only
//! logged.

use std::fmt;

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Protocol-neutral classification of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or semantically invalid (bad SQL, bad rows, bad parameters).
    InvalidArgument,
    /// No credentials, or credentials that do not verify.
    Unauthenticated,
    /// The principal can see the object but lacks the privilege for this operation.
    PermissionDenied,
    /// The object does not exist, or does not exist for this principal.
    NotFound,
    /// The object already exists.
    AlreadyExists,
    /// A concurrent change won; the caller may retry.
    Conflict,
    /// The request body exceeds a configured limit.
    PayloadTooLarge,
    /// The request's content type is not one we read.
    UnsupportedMediaType,
    /// None of the accepted response types is one we write.
    NotAcceptable,
    /// The statement or feature is valid SQL but not offered by Strata.
    Unsupported,
    /// A limit (memory, concurrency, result size) was hit.
    ResourceExhausted,
    /// The statement ran past its time limit and was stopped.
    DeadlineExceeded,
    /// A dependency (object store) is unreachable; the request may succeed later.
    Unavailable,
    /// The client cancelled the request.
    Cancelled,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// Stable machine-readable code used in REST error bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::NotAcceptable => "not_acceptable",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the message may be shown to clients as is. Internal details never are.
    fn is_client_visible(self) -> bool {
        !matches!(self, ErrorKind::Internal | ErrorKind::Unavailable)
    }
}

/// The crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    /// The cluster (scheduler, executors) cannot run a query; its message is the client's.
    #[error("{0}")]
    ClusterUnavailable(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Internal(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    DataFusion(Box<DataFusionError>),
    #[error(transparent)]
    Delta(Box<DeltaTableError>),
    #[error(transparent)]
    ObjectStore(Box<object_store::Error>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Classifies the error. Every variant is decided here.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::PayloadTooLarge(_) => ErrorKind::PayloadTooLarge,
            Error::UnsupportedMediaType(_) => ErrorKind::UnsupportedMediaType,
            Error::NotAcceptable(_) => ErrorKind::NotAcceptable,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            Error::Unavailable(_) | Error::ClusterUnavailable(_) => ErrorKind::Unavailable,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            Error::Internal(_) | Error::Config(_) | Error::Io(_) => ErrorKind::Internal,
            Error::DataFusion(e) => classify_datafusion(e),
            Error::Delta(e) => classify_delta(e),
            Error::ObjectStore(e) => classify_object_store(e),
        }
    }

    /// The message a client may see: the error text for client errors, and for internal
    /// ones only a generic sentence with the trace id under which the detail was logged.
    pub fn client_message(&self, trace_id: &str) -> String {
        let kind = self.kind();
        if kind.is_client_visible() {
            truncate_on_char_boundary(&self.root_message(), 4096)
        } else {
            match (self, kind) {
                // The cluster's own: what is missing, with nothing of storage in it.
                (Error::ClusterUnavailable(m), _) => format!("{m} (trace id {trace_id})"),
                (_, ErrorKind::Unavailable) => {
                    format!(
                        "the storage backend is unavailable, try again later (trace id {trace_id})"
                    )
                }
                (_, _) => format!("internal error (trace id {trace_id})"),
            }
        }
    }

    /// For wrapped DataFusion errors, the message of the root cause (DataFusion nests
    /// contexts and external errors; the root is what the user needs to read).
    fn root_message(&self) -> String {
        match self {
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
                    Some(ours) => ours.root_message(),
                    None => inner.to_string(),
                },
                root => strip_datafusion_prefix(&root.to_string()),
            },
            other => other.to_string(),
        }
    }

    /// Logs the error with a fresh trace id and returns that id.
    pub fn log(&self) -> String {
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        match self.kind() {
            ErrorKind::Internal | ErrorKind::Unavailable => {
                tracing::error!(trace_id = %trace_id, error = %self, error_debug = ?self, "request failed");
            }
            kind => {
                tracing::debug!(trace_id = %trace_id, kind = kind.code(), error = %self, "request rejected")
            }
        }
        trace_id
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        // Our own errors travel through DataFusion as External; unwrap them so their kind
        // survives the round trip.
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Error::DataFusion(Box::new(DataFusionError::External(other))),
            },
            other => Error::DataFusion(Box::new(other)),
        }
    }
}

impl From<DeltaTableError> for Error {
    fn from(e: DeltaTableError) -> Self {
        use deltalake::kernel::transaction::TransactionError as T;
        match e {
            // delta-rs says "Failed to commit transaction: 15"; say what happened instead.
            DeltaTableError::Transaction {
                source: T::MaxCommitAttempts(n),
            } => Error::Conflict(format!(
                "the table kept changing under this write ({n} commit attempts lost the race to concurrent writers); nothing was committed, retry the request"
            )),
            DeltaTableError::Transaction {
                source: T::CommitConflict(c),
            } => Error::Conflict(format!(
                "a concurrent commit conflicts with this write ({c}); nothing was committed, retry the request"
            )),
            other => Error::Delta(Box::new(other)),
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::ObjectStore(Box::new(e))
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::DataFusion(Box::new(DataFusionError::ArrowError(Box::new(e), None)))
    }
}

impl From<Error> for DataFusionError {
    fn from(e: Error) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

pub(crate) fn classify_datafusion(e: &DataFusionError) -> ErrorKind {
    match e.find_root() {
        DataFusionError::External(inner) => {
            if let Some(ours) = inner.downcast_ref::<Error>() {
                ours.kind()
            } else if let Some(delta) = inner.downcast_ref::<DeltaTableError>() {
                classify_delta(delta)
            } else if let Some(os) = inner.downcast_ref::<object_store::Error>() {
                classify_object_store(os)
            } else {
                ErrorKind::Internal
            }
        }
        DataFusionError::Plan(msg) if msg.contains("not found") => ErrorKind::NotFound,
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => ErrorKind::InvalidArgument,
        DataFusionError::NotImplemented(_) => ErrorKind::Unsupported,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::ResourceExhausted,
        DataFusionError::ObjectStore(os) => classify_object_store(os),
        DataFusionError::ExecutionJoin(_) => ErrorKind::Internal,
        // DataFusion's enum is not ours; anything else (Internal, IoError, ParquetError,
        // Substrait, …) is a server-side failure.
        _ => ErrorKind::Internal,
    }
}

fn classify_delta(e: &DeltaTableError) -> ErrorKind {
    match e {
        DeltaTableError::NotATable(_) | DeltaTableError::InvalidVersion(_) => ErrorKind::NotFound,
        DeltaTableError::VersionAlreadyExists(_) => ErrorKind::Conflict,
        DeltaTableError::Transaction { source } => classify_transaction(source),
        DeltaTableError::InvalidDateTimeString { .. }
        | DeltaTableError::SchemaMismatch { .. }
        | DeltaTableError::InvalidData { .. }
        | DeltaTableError::PartitionError { .. }
        | DeltaTableError::InvalidPartitionFilter { .. }
        | DeltaTableError::CommitValidation { .. } => ErrorKind::InvalidArgument,
        DeltaTableError::ObjectStore { source } => classify_object_store(source),
        _ => ErrorKind::Internal,
    }
}

fn classify_transaction(e: &deltalake::kernel::transaction::TransactionError) -> ErrorKind {
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        T::VersionAlreadyExists(_) | T::CommitConflict(_) | T::MaxCommitAttempts(_) => {
            ErrorKind::Conflict
        }
        T::ObjectStore { source } => classify_object_store(source),
        T::LogStoreError { .. } => ErrorKind::Unavailable,
        T::DeltaTableAppendOnly => ErrorKind::InvalidArgument,
        T::UnsupportedTableFeatures(_) | T::TableFeaturesRequired(_) => ErrorKind::Unsupported,
        T::SerializeLogJson { .. } => ErrorKind::Internal,
    }
}

fn classify_object_store(e: &object_store::Error) -> ErrorKind {
    match e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            ErrorKind::Conflict
        }
        object_store::Error::Generic { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// DataFusion prefixes messages with the variant ("Error during planning: …"); users don't
/// need that noise twice.
fn strip_datafusion_prefix(msg: &str) -> String {
    const PREFIXES: [&str; 5] = [
        "Error during planning: ",
        "Execution error: ",
        "SQL error: ",
        "Schema error: ",
        "Invalid or Unsupported Configuration: ",
    ];
    let mut out = msg;
    for p in PREFIXES {
        if let Some(rest) = out.strip_prefix(p) {
            out = rest;
        }
    }
    out.to_string()
}

/// Cuts `s` to at most `max` bytes without splitting a UTF-8 character.
pub fn truncate_on_char_boundary(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Displays an error chain on one line for logs.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "ééééé";
        let t = truncate_on_char_boundary(s, 3);
        assert_eq!(t, "é…");
    }

    #[test]
    fn internal_errors_are_masked() {
        let e = Error::internal("secret path /etc/x");
        let msg = e.client_message("abc");
        assert!(!msg.contains("secret"));
        assert!(msg.contains("abc"));
    }

    #[test]
    fn our_errors_survive_a_datafusion_round_trip() {
        let df: DataFusionError = Error::NotFound("table gold.x not found".into()).into();
        let back: Error = df.into();
        assert_eq!(back.kind(), ErrorKind::NotFound);
        let wrapped = Error::DataFusion(Box::new(DataFusionError::Context(
            "ctx".into(),
            Box::new(Error::PermissionDenied("no".into()).into()),
        )));
        assert_eq!(wrapped.kind(), ErrorKind::PermissionDenied);
        assert_eq!(wrapped.client_message("t"), "no");
    }
}
