//! The cluster's connections: mutual TLS between its nodes (`cluster.transport = "tls"`)
//! and the check that keeps the executors' shuffle service to the holders of the plan key.
//!
//! Mutual TLS: every node presents a certificate issued by the cluster's own authority
//! (`[cluster.tls] ca_file`) and accepts only peers whose certificate chains to it; the
//! scheduler's gRPC, the executors' Arrow Flight (shuffle data, result rows) and every
//! client of them (front end, executors) use it. A peer's certificate is checked against
//! `server_name` when set (one name for the whole cluster: executors advertise pod IPs,
//! which no certificate names), else against the address dialled.
//!
//! Ballista 55 serves an executor's own gRPC service (the scheduler pushing tasks to it)
//! without a TLS hook, so under mutual TLS executors pull their tasks from the scheduler
//! instead and open no gRPC port at all ([`Transport::pull_tasks`]). A cancelled job then
//! starts no further task; a task already running finishes its slice on the executor.
//!
//! The shuffle service. Whoever can fetch an executor's shuffle files reads other
//! principals' rows after their policy was applied, so a caller must also prove it holds
//! the plan key (front ends and executors do; the scheduler, which holds a certificate,
//! does not). Ballista's shuffle client takes no interceptor, only an endpoint hook, and
//! the endpoint's user agent is the one header that hook can set: a token derived from the
//! plan key travels there (encrypted under mutual TLS), never to the scheduler.

use std::path::Path;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::error::BallistaError;
use ballista_core::extension::{BallistaConfigGrpcEndpoint, EndpointOverrideFn};
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint, create_grpc_server};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::flight_service::BallistaFlightService;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

use crate::config::{ClusterConfig, ClusterTransport};
use crate::error::{Error, Result};

/// The user agent's prefix that carries the shuffle token.
const TOKEN_AGENT: &str = "strata-shuffle/";

/// Largest gRPC message between the cluster's nodes.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// How this node talks to the rest of the cluster.
#[derive(Clone)]
pub(crate) struct Transport {
    tls: Option<Tls>,
    /// The shuffle token (a node holding the plan key; the scheduler has none).
    token: Option<String>,
    /// `host:port` of the scheduler, which never receives the token.
    scheduler: Option<String>,
}

#[derive(Clone)]
struct Tls {
    ca: Certificate,
    identity: Identity,
    server_name: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("scheduler", &self.scheduler)
            .finish()
    }
}

impl Transport {
    /// This node's transport; `key`: the plan key, on the nodes that hold it.
    pub(crate) fn from_config(cfg: &ClusterConfig, key: Option<&[u8]>) -> Result<Transport> {
        let tls = match cfg.transport {
            ClusterTransport::Tls => Some(Tls::load(cfg)?),
            ClusterTransport::Loopback | ClusterTransport::Mesh => None,
        };
        let scheduler = cfg
            .scheduler_url
            .as_deref()
            .and_then(|u| u.parse::<http::Uri>().ok())
            .and_then(|u| host_port(&u));
        Ok(Transport {
            tls,
            token: key.map(shuffle_token).transpose()?,
            scheduler,
        })
    }

    /// Whether executors pull their tasks (mutual TLS: see the module's docs).
    pub(crate) fn pull_tasks(&self) -> bool {
        self.tls.is_some()
    }

    pub(crate) fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A server builder with this node's TLS (client certificates required).
    pub(crate) fn server(&self, builder: Server) -> Result<Server> {
        match &self.tls {
            None => Ok(builder),
            Some(t) => builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(t.identity.clone())
                        .client_ca_root(t.ca.clone()),
                )
                .map_err(|e| Error::Config(format!("cluster.tls: {e}"))),
        }
    }

    /// `endpoint` set up for this node: TLS with its certificate, and the shuffle token
    /// unless it leads to the scheduler.
    pub(crate) fn endpoint(&self, endpoint: Endpoint) -> Result<Endpoint> {
        let uri = endpoint.uri().clone();
        let authority = uri.authority().map(|a| a.as_str().to_string());
        let peer = host_port(&uri);
        let mut endpoint = match &self.tls {
            // Ballista dials the scheduler with `http://` whatever its configuration says.
            Some(_) if uri.scheme_str() != Some("https") => {
                let https = format!("https://{}", authority.clone().unwrap_or_default());
                create_grpc_client_endpoint(https, Some(&GrpcClientConfig::default()))
                    .map_err(|e| Error::Config(format!("cluster endpoint {uri}: {e}")))?
            }
            _ => endpoint,
        };
        if let Some(t) = &self.tls {
            let mut client = ClientTlsConfig::new()
                .ca_certificate(t.ca.clone())
                .identity(t.identity.clone());
            if let Some(name) = &t.server_name {
                client = client.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(client)
                .map_err(|e| Error::Config(format!("cluster.tls: {e}")))?;
        }
        // Never to the scheduler, however its address is spelled.
        if let Some(token) = &self.token
            && peer.is_some()
            && self.scheduler.is_some()
            && peer != self.scheduler
        {
            endpoint = endpoint
                .user_agent(format!("{TOKEN_AGENT}{token}"))
                .map_err(|e| Error::internal(format!("cluster endpoint: {e}")))?;
        }
        Ok(endpoint)
    }

    /// [`Self::endpoint`] as Ballista's endpoint hook.
    pub(crate) fn endpoint_hook(&self) -> EndpointOverrideFn {
        let this = self.clone();
        Arc::new(move |endpoint| this.endpoint(endpoint).map_err(|e| e.to_string().into()))
    }

    /// [`Self::endpoint_hook`] as a session extension (Ballista's shuffle reader).
    pub(crate) fn endpoint_extension(&self) -> Arc<BallistaConfigGrpcEndpoint> {
        Arc::new(BallistaConfigGrpcEndpoint::new(self.endpoint_hook()))
    }

    /// An executor's Arrow Flight service (shuffle files, result rows): Ballista's, behind
    /// this node's TLS and the shuffle token check.
    pub(crate) fn flight_service(&self) -> Result<Arc<ArrowFlightServerProvider>> {
        let token = self
            .token
            .clone()
            .ok_or_else(|| Error::Config("cluster.plan_key is not set".into()))?;
        let this = self.clone();
        Ok(Arc::new(move |work_dir, address, mut shutdown, grpc| {
            let (this, token) = (this.clone(), token.clone());
            tokio::spawn(async move {
                let flight = FlightServiceServer::new(BallistaFlightService::new(work_dir))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
                let guarded = InterceptedService::new(flight, move |r| check_token(&token, r));
                this.server(create_grpc_server(&grpc))
                    .map_err(|e| BallistaError::General(e.to_string()))?
                    .add_service(guarded)
                    .serve_with_shutdown(address, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        }))
    }
}

impl Tls {
    fn load(cfg: &ClusterConfig) -> Result<Tls> {
        let t = &cfg.tls;
        let read = |what: &str, path: Option<&Path>| -> Result<Vec<u8>> {
            let path = path.ok_or_else(|| {
                Error::Config(format!(
                    "cluster.transport = \"tls\": set cluster.tls.{what}"
                ))
            })?;
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("cluster.tls.{what} {}: {e}", path.display())))
        };
        let ca = read("ca_file", t.ca_file.as_deref())?;
        let cert = read("cert_file", t.cert_file.as_deref())?;
        let key = read("key_file", t.key_file.as_deref())?;
        install_crypto();
        Ok(Tls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
            server_name: t.server_name.clone(),
        })
    }
}

/// `host:port` of `uri`, the host in lower case and the port explicit.
pub(super) fn host_port(uri: &http::Uri) -> Option<String> {
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    Some(format!("{}:{port}", uri.host()?.to_ascii_lowercase()))
}

/// rustls in this build has two crypto providers compiled in, so it picks none by
/// itself: the process's is aws-lc-rs (the one `jsonwebtoken` uses).
fn install_crypto() {
    // Fails only when one is installed already, which is as good.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The shuffle token of the nodes holding `key`.
pub(super) fn shuffle_token(key: &[u8]) -> Result<String> {
    let mut m = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| Error::Config(format!("cluster.plan_key: {e}")))?;
    m.update(b"strata cluster shuffle service/1");
    Ok(hex::encode(m.finalize().into_bytes()))
}

/// Lets a call to the shuffle service through when its user agent carries `token`.
pub(super) fn check_token(
    token: &str,
    request: tonic::Request<()>,
) -> std::result::Result<tonic::Request<()>, tonic::Status> {
    let presented = request
        .metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| {
            ua.split_whitespace()
                .find_map(|w| w.strip_prefix(TOKEN_AGENT))
        })
        .unwrap_or_default();
    // Constant time in the token's bytes.
    let same = presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(request)
    } else {
        Err(tonic::Status::unauthenticated(
            "this executor's shuffle service answers only the nodes of its cluster",
        ))
    }
}
