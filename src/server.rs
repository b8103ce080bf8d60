//! Server lifecycle: [`Server::build`] validates the configuration, opens the warehouse and
//! binds both listeners (so tests can ask for port 0 and read the addresses);
//! [`Server::run_until_stopped`] serves until the shutdown future resolves, then stops
//! accepting and gives in-flight requests `server.shutdown_grace_secs` to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

use crate::api::flight::FlightSqlServer;
use crate::api::rest::{self, AppState};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::flows::Flows;
use crate::security::Authenticator;
use crate::security::policy::store::PolicyStore;
use crate::storage::{Catalog, Warehouse};

/// Every problem in `config`: its own checks ([`Config::problems`]) and those that need the
/// types the values configure (token algorithms, grants, the warehouse URL, the default
/// layer), which live with those types so that `config` stays a leaf.
pub fn config_problems(config: &Config) -> Vec<String> {
    let mut out = config.problems();
    out.extend(crate::security::auth::config_problems(&config.auth));
    out.extend(crate::security::access::config_problems(&config.access));
    out.extend(crate::storage::config_problems(
        &config.storage,
        &config.query.default_layer,
    ));
    out.extend(crate::scheduler::config_problems(&config.scheduler));
    out.extend(crate::connectors::config_problems(&config.connectors));
    out.extend(crate::flows::config_problems(
        &config.pipelines,
        &config.auth.admin_role,
    ));
    out
}

#[derive(Debug)]
pub struct Server {
    config: Config,
    http: TcpListener,
    flight: TcpListener,
    /// `server.metrics_addr`, when configured.
    metrics: Option<TcpListener>,
    engine: Arc<Engine>,
    flows: Arc<Flows>,
    scheduler: Arc<crate::scheduler::Scheduler>,
    auth: Arc<Authenticator>,
    lineage: Arc<crate::lineage::LineageService>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    connectors: Arc<crate::connectors::Connectors>,
}

impl Server {
    pub async fn build(config: Config) -> Result<Server> {
        Server::build_with_clock(config, crate::clock::system()).await
    }

    /// [`Server::build`] with the clock the scheduler and flows read (tests drive one).
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Server> {
        let problems = config_problems(&config);
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        deltalake::aws::register_handlers(None);
        let warehouse = Warehouse::open(&config.storage)?;
        if matches!(
            warehouse.location(),
            crate::storage::warehouse::Location::S3 { .. }
        ) {
            match warehouse.preflight_conditional_put().await {
                Ok(()) => tracing::info!("storage preflight: conditional put honoured"),
                Err(Error::Config(msg)) if config.storage.s3.allow_unsafe_single_writer => {
                    tracing::error!(
                        "UNSAFE: {msg}; continuing because storage.s3.allow_unsafe_single_writer = true"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let catalog = Arc::new(Catalog::new(warehouse));
        // Loads the table list (and proves the store answers) before we accept requests.
        let tables = catalog.list(None).await?;
        tracing::info!(tables = tables.len(), warehouse = %catalog.warehouse().root(), "catalog loaded");
        let policies = Arc::new(PolicyStore::new(
            Arc::clone(catalog.warehouse().store()),
            config.auth.admin_role.clone(),
            config.access.bypass_role.clone(),
            config.access.clone(),
        ));
        // Fails start-up on an unreadable policy document rather than serving without it.
        policies.current().await?;
        let auth = Arc::new(Authenticator::from_config(&config.auth, &config.server)?);
        let engine = Arc::new(Engine::new(&config, catalog, policies)?);
        let flows = Arc::new(Flows::new(
            Arc::clone(&engine),
            &config.pipelines,
            &config.query.default_layer,
            &config.auth.admin_role,
            Arc::clone(&clock),
            config.scheduler.pipeline_threads,
        )?);
        let readers: std::sync::Weak<Flows> = Arc::downgrade(&flows);
        engine.set_change_readers(readers);
        let lineage = crate::lineage::LineageService::start(
            Arc::clone(&engine),
            Arc::clone(&flows),
            &config.lineage,
        );
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            Arc::clone(&engine),
            &config.webhooks,
            &config.connectors,
            crate::security::principal::ServicePrincipals::new(&config.pipelines.principals),
            &config.auth.admin_role,
            Arc::clone(&clock),
        ));
        let connectors = Arc::new(crate::connectors::Connectors::new(
            Arc::clone(&engine),
            &config.connectors,
            config.auth.mode == crate::config::AuthMode::Dev,
            crate::security::principal::ServicePrincipals::new(&config.pipelines.principals),
            Arc::clone(&clock),
        ));
        if let Some(dir) = &config.pipelines.dir {
            // A pipeline that cannot deploy (a source not created yet) is logged, not fatal:
            // the server still serves everything else, and a later deploy fixes it.
            match flows.deploy_dir(dir).await {
                Ok(plans) => {
                    for p in plans {
                        tracing::info!(pipeline = %p.pipeline, version = ?p.version, unchanged = p.unchanged, "pipeline deployed from [pipelines] dir");
                    }
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "deploying [pipelines] dir")
                }
            }
        }
        let http = bind(config.server.http_addr, "server.http_addr").await?;
        let scheduler = Arc::new(crate::scheduler::Scheduler::new(
            Arc::clone(&flows),
            format!("http://{}", http.local_addr()?),
            &config.scheduler,
        ));
        scheduler.set_connectors(Arc::clone(&connectors));
        let flight = bind(config.server.flight_addr, "server.flight_addr").await?;
        let metrics = match config.server.metrics_addr {
            Some(addr) => Some(bind(addr, "server.metrics_addr").await?),
            None => None,
        };
        Ok(Server {
            config,
            http,
            flight,
            metrics,
            engine,
            flows,
            scheduler,
            auth,
            lineage,
            webhooks,
            connectors,
        })
    }

    pub fn http_addr(&self) -> Result<SocketAddr> {
        Ok(self.http.local_addr()?)
    }

    pub fn flight_addr(&self) -> Result<SocketAddr> {
        Ok(self.flight.local_addr()?)
    }

    /// The metrics listener's address, when `server.metrics_addr` is set.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(match &self.metrics {
            Some(l) => Some(l.local_addr()?),
            None => None,
        })
    }

    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth)
    }

    /// The query engine both front ends call (for embedding and the internals benchmarks).
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves REST and Flight SQL until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = Duration::from_secs(self.config.server.shutdown_grace_secs);
        let state = AppState {
            engine: Arc::clone(&self.engine),
            flows: Arc::clone(&self.flows),
            scheduler: Arc::clone(&self.scheduler),
            lineage: Arc::clone(&self.lineage),
            webhooks: Arc::clone(&self.webhooks),
            connectors: Arc::clone(&self.connectors),
            auth: Arc::clone(&self.auth),
            started: Instant::now(),
            config_grants: self.config.access.grants.clone(),
            console: match self.config.console.enabled {
                true => Some(Arc::new(crate::console::Console::new(
                    &self.config.console,
                    self.config.auth.mode == crate::config::AuthMode::Dev,
                )?)),
                false => None,
            },
        };
        let router = rest::router(state, self.config.server.max_request_bytes);
        let http = axum::serve(self.http, router).with_graceful_shutdown(stopped(stop_rx.clone()));
        let flight_server = FlightSqlServer::new(
            &self.config,
            Arc::clone(&self.engine),
            Arc::clone(&self.auth),
        )?;
        let auth_layer = flight_server.auth_layer();
        let flight_service = flight_server.into_service();
        // tonic only sets TCP_NODELAY on listeners it binds itself; without it every small
        // Flight reply waits on Nagle/delayed ACK (~40 ms per round trip).
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.flight).map(|conn| {
            if let Ok(stream) = &conn {
                let _ = stream.set_nodelay(true);
            }
            conn
        });
        let flight = tonic::transport::Server::builder()
            .http2_max_header_list_size(crate::api::flight::transport_header_limit(
                self.config.flight.max_header_list_bytes,
            ))
            .layer(auth_layer)
            .add_service(flight_service)
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

        // The metrics listener holds no request worth draining: it ends with the process.
        if let Some(listener) = self.metrics {
            let router = rest::metrics_router(Arc::clone(&self.engine));
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        let scheduling = tokio_util::sync::CancellationToken::new();
        tokio::spawn(Arc::clone(&self.scheduler).run(scheduling.clone()));
        let _stop_scheduling = scheduling.drop_guard();
        let mut http_task = tokio::spawn(async move { http.await });
        let mut flight_task = tokio::spawn(flight);
        tokio::select! {
            () = shutdown => {
                tracing::info!(grace_secs = grace.as_secs(), "shutting down: no new connections, finishing in-flight requests");
            }
            r = &mut http_task => {
                return match r {
                    Ok(Ok(())) => Err(Error::internal("REST server stopped unexpectedly")),
                    Ok(Err(e)) => Err(Error::internal(format!("REST server: {e}"))),
                    Err(e) => Err(Error::internal(format!("REST server task: {e}"))),
                };
            }
            r = &mut flight_task => {
                return match r {
                    Ok(Ok(())) => Err(Error::internal("Flight SQL server stopped unexpectedly")),
                    Ok(Err(e)) => Err(Error::internal(format!("Flight SQL server: {e}"))),
                    Err(e) => Err(Error::internal(format!("Flight SQL server task: {e}"))),
                };
            }
        }
        let _ = stop_tx.send(true);
        let stopping = std::time::Instant::now();
        let drained = tokio::time::timeout(grace, async {
            let _ = (&mut http_task).await;
            let _ = (&mut flight_task).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("grace period over; aborting remaining requests");
            http_task.abort();
            flight_task.abort();
        }
        // The lineage events of the writes that just finished, within what is left of it.
        let left = grace.saturating_sub(stopping.elapsed());
        self.engine.openlineage().flush(left).await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("{key} = {addr}: cannot bind: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_found_by_other_modules_are_listed_too() {
        let mut cfg = Config::default();
        cfg.server.http_addr = "0.0.0.0:8080".parse().unwrap();
        cfg.auth.algorithms = vec!["none".into()];
        cfg.query.default_layer = "platinum".into();
        cfg.storage.warehouse = "ftp://host/path".into();
        let p = config_problems(&cfg);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("auth.algorithms")), "{p:?}");
        assert!(
            p.iter().any(|p| p.starts_with("query.default_layer")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("storage.warehouse")),
            "{p:?}"
        );
        assert_eq!(config_problems(&Config::default()), Vec::<String>::new());
    }
}
