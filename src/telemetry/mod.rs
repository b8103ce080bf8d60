//! Logging setup and the process's metrics.

pub(crate) mod heap;
pub(crate) mod metrics;
pub mod openlineage;

pub use metrics::{Metrics, metrics};

/// The audit event of one authenticated request, the same fields for both protocols:
/// `operation` is `METHOD /path` (REST) or the Flight method (`DoGet`, …).
pub fn audit_request(
    protocol: &str,
    principal: &str,
    operation: &str,
    status: &str,
    request_id: &str,
) {
    tracing::info!(
        target: "strata::audit",
        protocol,
        principal,
        operation,
        status,
        request_id,
        "request"
    );
}

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// The kernel logs a harmless ERROR ("No files in log segment") on every table creation; it
/// would drown real errors, so its target is silenced unless `RUST_LOG` asks for it.
const QUIET: &str = "buoyant_kernel=off";

/// Installs the global subscriber; a second call (tests) is a no-op.
///
/// `log.level` sets Strata's own events; dependencies log warnings and errors only. Their
/// debug output holds query plans with bound claim values and literals, and delta-rs's
/// holds DML predicates: Strata never logs claim or row values, and the configuration
/// cannot turn that on by accident. `RUST_LOG` overrides everything (a deliberate choice
/// for debugging, which may log such values).
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("warn,strata={},{QUIET}", cfg.level))
                .unwrap_or_else(|_| EnvFilter::new("warn,strata=info"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
