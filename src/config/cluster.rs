//! `[cluster]`: scale-out on Ballista (`src/cluster`). The front end (`strata serve`) decides
//! which queries go to the cluster; `strata cluster scheduler` and `strata cluster executor`
//! read the same file for their own part.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// Which queries the front end hands to the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// Every query runs on this node (the default; the cluster is not contacted).
    #[default]
    Off,
    /// Queries whose planned scan reads more than `min_bytes_scanned`.
    Auto,
    /// Every eligible query (one whose every leaf is a Delta table scan).
    Always,
}

/// What protects the cluster's connections (front end ↔ scheduler ↔ executors: plans,
/// shuffle data, result rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterTransport {
    /// Every cluster address is a loopback address (one host).
    #[default]
    Loopback,
    /// A service mesh (Istio, Linkerd, …) wraps every connection between the cluster's
    /// pods in mutual TLS: the operator declares it, Strata cannot see it.
    Mesh,
    /// Strata's own mutual TLS on every cluster connection (`[cluster.tls]`).
    Tls,
}

/// `[cluster.tls]`: the cluster's mutual TLS (`transport = "tls"`), the same authority on
/// every node, each node its own certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// PEM: the authority a peer's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM: this node's certificate (chain) and private key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name a peer's certificate is checked against instead of the address dialled
    /// (executors advertise pod IPs, which no certificate names). Default: that address.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub mode: ClusterMode,
    pub transport: ClusterTransport,
    pub tls: ClusterTlsConfig,
    /// The scheduler's gRPC address, `http://host:port` (`https://` under `transport =
    /// "tls"`), for the front end and the executors.
    pub scheduler_url: Option<String>,
    /// `auto`: the planned scan (bytes of the data files after pruning) above which a query
    /// goes to the cluster.
    pub min_bytes_scanned: u64,
    /// The key the front end signs every shipped table scan with and executors check it
    /// with (at least 32 bytes). The scheduler must not have it: it only relays plans.
    pub plan_key: Option<Secret>,
    /// How long a signed scan may be executed after it was planned, in seconds.
    pub plan_ttl_secs: u64,
    /// `strata cluster scheduler`: where its gRPC service listens.
    pub scheduler_bind: SocketAddr,
    /// `strata cluster executor`: the address it listens on and advertises.
    pub executor_bind_host: String,
    pub executor_external_host: Option<String>,
    /// Its Arrow Flight port (shuffle and results) and its gRPC port.
    pub executor_flight_port: u16,
    pub executor_grpc_port: u16,
    /// Tasks run at once (0: the machine's cores).
    pub executor_vcores: usize,
    /// Where it writes shuffle files (default: `<server.data_dir>/cluster`).
    pub executor_work_dir: Option<PathBuf>,
    /// Its memory pool, in bytes (0: DataFusion's unbounded pool).
    pub executor_memory_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            mode: ClusterMode::Off,
            transport: ClusterTransport::Loopback,
            tls: ClusterTlsConfig::default(),
            scheduler_url: None,
            min_bytes_scanned: 8 << 30,
            plan_key: None,
            plan_ttl_secs: 3600,
            scheduler_bind: SocketAddr::from(([127, 0, 0, 1], 50050)),
            executor_bind_host: "127.0.0.1".to_string(),
            executor_external_host: None,
            executor_flight_port: 50061,
            executor_grpc_port: 50062,
            executor_vcores: 0,
            executor_work_dir: None,
            executor_memory_bytes: 0,
        }
    }
}

impl ClusterConfig {
    /// Problems of the front end's part (`strata serve`).
    pub(super) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode == ClusterMode::Off {
            return out;
        }
        match self.scheduler_url.as_deref().map(url::Url::parse) {
            None => out.push("cluster.mode is not \"off\": set cluster.scheduler_url".to_string()),
            Some(Err(e)) => out.push(format!("cluster.scheduler_url: {e}")),
            Some(Ok(u)) if !self.allows(u.host_str().unwrap_or_default()) => out.push(
                format!("cluster.scheduler_url is not a loopback address: the cluster's connections need mutual TLS there ({NEED_TLS})"),
            ),
            Some(Ok(u)) => out.extend(self.scheme_problems(&u)),
        }
        out.extend(self.key_problems());
        out.extend(self.tls_problems());
        out
    }

    /// Problems of an executor's part (`strata cluster executor`).
    pub fn executor_problems(&self) -> Vec<String> {
        let mut out = self.key_problems();
        out.extend(self.tls_problems());
        match self.scheduler_url.as_deref().map(url::Url::parse) {
            None => out.push("cluster.scheduler_url is not set".to_string()),
            Some(Err(e)) => out.push(format!("cluster.scheduler_url: {e}")),
            Some(Ok(u)) => out.extend(self.scheme_problems(&u)),
        }
        if !self.allows(&self.executor_bind_host) {
            out.push(format!(
                "cluster.executor_bind_host {:?} is not a loopback address: plans and shuffle data need mutual TLS there ({NEED_TLS})",
                self.executor_bind_host
            ));
        }
        if self.executor_flight_port == 0 || self.executor_grpc_port == 0 {
            out.push("cluster.executor_flight_port and executor_grpc_port must be fixed ports (Ballista advertises what it is given)".to_string());
        }
        out
    }

    /// Problems of the scheduler's part (`strata cluster scheduler`).
    pub fn scheduler_problems(&self) -> Vec<String> {
        let mut out = self.tls_problems();
        if !self.allows(&self.scheduler_bind.ip().to_string()) {
            out.push(format!(
                "cluster.scheduler_bind {} is not a loopback address: the scheduler's gRPC needs mutual TLS there ({NEED_TLS})",
                self.scheduler_bind
            ));
        }
        out
    }

    /// Whether the cluster may use `host`.
    fn allows(&self, host: &str) -> bool {
        self.transport != ClusterTransport::Loopback || is_loopback_host(host)
    }

    /// `https://` exactly when Strata's own TLS is on.
    fn scheme_problems(&self, url: &url::Url) -> Vec<String> {
        let tls = self.transport == ClusterTransport::Tls;
        match (url.scheme(), tls) {
            ("https", true) | ("http", false) => Vec::new(),
            (_, true) => vec![
                "cluster.scheduler_url: cluster.transport = \"tls\" needs an https:// address"
                    .to_string(),
            ],
            (_, false) => vec![format!(
                "cluster.scheduler_url: {}:// needs cluster.transport = \"tls\" (else http://)",
                url.scheme()
            )],
        }
    }

    fn tls_problems(&self) -> Vec<String> {
        if self.transport != ClusterTransport::Tls {
            return Vec::new();
        }
        let t = &self.tls;
        [
            ("ca_file", &t.ca_file),
            ("cert_file", &t.cert_file),
            ("key_file", &t.key_file),
        ]
        .into_iter()
        .filter_map(|(name, path)| match path {
            None => Some(format!(
                "cluster.transport = \"tls\": set cluster.tls.{name}"
            )),
            Some(p) if !p.is_file() => Some(format!(
                "cluster.tls.{name}: {} is not a readable file",
                p.display()
            )),
            Some(_) => None,
        })
        .collect()
    }

    fn key_problems(&self) -> Vec<String> {
        match &self.plan_key {
            None => vec!["cluster.plan_key is not set (at least 32 bytes, the same on the front end and every executor, never on the scheduler)".to_string()],
            Some(k) if k.expose().len() < 32 => {
                vec!["cluster.plan_key is weaker than 32 bytes".to_string()]
            }
            Some(_) => Vec::new(),
        }
    }
}

/// What a non-loopback cluster address needs.
const NEED_TLS: &str =
    "cluster.transport = \"tls\" with [cluster.tls], or \"mesh\" when a service mesh provides it";

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
