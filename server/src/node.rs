//! The composition root: one running broker process. [`Node::start`] binds the listener, opens
//! the data directory, starts the control plane — the sled-backed [`LocalControl`] on a single
//! node, the Raft [`Cluster`] when `cluster.peers` is set — and the background tasks;
//! [`Node::serve`] serves gRPC until a shutdown signal, then stops in order:
//!
//! 1. hand over leadership (cluster: every group this broker leads moves to a follower, while
//!    this broker still serves Raft traffic);
//! 2. stop replication (every Raft group held here), before the partitions close: a group
//!    that wrote to a closed log would fail its storage and log errors for a clean stop;
//! 3. stop new work, end streams, fsync every partition and the metadata store;
//! 4. after the server stopped (or the grace period ran out): a last fsync.
//!
//! A signal, a cluster that removed this broker, or a metadata store that failed (`meta`: it
//! refuses every write until reopened) starts the same sequence; the last two end in an error,
//! so the process exits non-zero and a supervisor restarts it.
//!
//! This is the only module that knows both implementations of the broker's seam; the api
//! layer above it never learns which one runs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::broker::local::LocalControl;
use crate::broker::seam::ControlPlane;
use crate::broker::{tasks, Broker};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::tls::ServerTls;

/// Cluster mode: how long a stopping broker waits for the groups it leads to take a new leader.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// A started broker, not serving yet.
#[derive(Debug)]
pub struct Node {
    config: Config,
    listener: TcpListener,
    /// Where `/metrics` is served, if on.
    metrics: Option<TcpListener>,
    /// The listener's TLS, if configured.
    tls: Option<Arc<ServerTls>>,
    /// Cluster mode with `internal_listen`: the brokers' own listener and its TLS.
    internal: Option<(TcpListener, Option<Arc<ServerTls>>)>,
    broker: Arc<Broker>,
    /// Cluster mode: the Raft transport must be served beside the client services.
    cluster: Option<Arc<Cluster>>,
}

impl Node {
    /// Binds, opens the data directory (recovering every partition) and starts the control
    /// plane and the background tasks.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let bound = listener.local_addr()?;
        let metrics = match config.metrics_address()? {
            None => None,
            Some(a) => match TcpListener::bind(a).await {
                Ok(l) => Some(l),
                // `auto` chose the port: another one will do (it is printed and logged).
                Err(e) if config.metrics_listen == "auto" => {
                    tracing::warn!(address = %a, error = %e, "metrics port taken; serving metrics on a free port");
                    Some(TcpListener::bind((a.ip(), 0)).await.context("cannot serve metrics")?)
                }
                Err(e) => return Err(e).with_context(|| format!("cannot serve metrics on {a}")),
            },
        };
        let tls = if config.tls.enabled() {
            Some(ServerTls::load(&config.tls).context("cannot load the TLS certificates")?)
        } else {
            if !bound.ip().is_loopback() {
                tracing::warn!(%bound, "listening beyond loopback without TLS: anyone who reaches this port can read, write and delete every topic (docs/SECURITY.md)");
            }
            None
        };
        let internal = match config.internal_listen {
            None => None,
            Some(addr) => {
                let l = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (internal)"))?;
                let tls = match config.internal_tls.enabled() {
                    true => Some(
                        ServerTls::load(&config.internal_tls).context("cannot load the internal TLS certificates")?,
                    ),
                    false => {
                        if !addr.ip().is_loopback() {
                            tracing::warn!(%addr, "internal listener beyond loopback without TLS: anyone who reaches it can send Raft traffic (docs/SECURITY.md)");
                        }
                        None
                    }
                };
                Some((l, tls))
            }
        };
        let peer_tls = match config.peer_tls().enabled() && config.cluster.is_member() {
            true => {
                Some(crate::tls::peer_client_config(config.peer_tls()).context("cannot load the TLS certificates")?)
            }
            false => None,
        };
        let auth = Arc::new(crate::auth::Auth::new(config.auth.clone()).context("cannot load [auth.jwt] keys")?);
        let broker = Broker::open(config.broker_options(bound, auth))
            .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
        let (control, cluster): (Arc<dyn ControlPlane>, _) = if !config.cluster.is_member() {
            let local = LocalControl::start(&broker)
                .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
            (local, None)
        } else {
            let cluster =
                Cluster::start(&broker, &config.cluster, peer_tls).await.context("cannot join the cluster")?;
            (Arc::clone(&cluster) as Arc<dyn ControlPlane>, Some(cluster))
        };
        // ACL decisions wait until this broker's copy is the cluster's (fail closed).
        let check = Arc::clone(&control);
        broker.auth().set_current_check(Box::new(move || check.metadata_ready()));
        broker.set_control(control)?;
        tasks::spawn(&broker);
        Ok(Self { config, listener, metrics, tls, internal, broker, cluster })
    }

    /// Where `/metrics` is served (`None` when off).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address actually listened on (the configured port may be 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `signal` resolves, then shuts down gracefully (see the module docs).
    pub async fn serve(self, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { config, listener, metrics, tls, internal, broker, cluster } = self;
        if let Some(listener) = metrics {
            let registry = Arc::new(metrics_registry(&broker));
            tokio::spawn(crate::telemetry::http::serve(listener, registry, broker.shutdown_signal()));
        }
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        // The internal listener stops after the client one's shutdown sequence: the hand-over
        // needs Raft traffic.
        let (internal_stop_tx, mut internal_stop_rx) = tokio::sync::watch::channel(false);
        let b = Arc::clone(&broker);
        // A broker removed from its cluster stops as if signalled (`cluster/members.rs`).
        let member = cluster.clone();
        let removed = cluster.clone();
        // So does a broker whose metadata store failed (`meta`: it refuses every write).
        let store = Arc::clone(broker.store().health());
        let shutdown = async move {
            let removal = async {
                match member {
                    Some(c) => c.wait_removed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = signal => {}
                () = removal => {}
                _ = store.failed() => {}
            }
            tracing::info!("shutting down");
            // Before the server stops: a transfer needs this broker's Raft traffic.
            b.hand_over(HAND_OVER_WAIT).await;
            b.stop_control().await;
            b.shutdown(); // ends subscriptions and produce streams, fsyncs everything
            let _ = internal_stop_tx.send(true);
            let _ = stopped_tx.send(());
        };
        let raft = cluster.as_ref().map(|c| {
            crate::raft::append_stream::RaftRoutes::new(
                crate::raft::transport::RaftTransportService::new(c.groups().clone()),
                crate::api::MAX_MESSAGE_BYTES * 4,
            )
        });
        let control = cluster.as_ref().map(|c| {
            tidelog_proto::internal::cluster_control_server::ClusterControlServer::new(
                crate::cluster::reassign::ControlService::new(Arc::clone(&broker), Arc::clone(c)),
            )
        });
        let services = crate::api::Services::new(Arc::clone(&broker)).await;
        let server: Serving = match internal {
            // One listener: clients and peers alike.
            None => serve_on(
                services.router(true)?.add_optional_service(raft).add_optional_service(control),
                listener,
                tls,
                &broker,
                shutdown,
            ),
            // Two: clients here (no Raft), peers (Raft and passed-on calls) on the internal one.
            Some((internal, internal_tls)) => {
                let internal_done = async move {
                    let _ = internal_stop_rx.wait_for(|stop| *stop).await;
                };
                let peers = serve_on(
                    services.router(true)?.add_optional_service(raft).add_optional_service(control),
                    internal,
                    internal_tls,
                    &broker,
                    internal_done,
                );
                let clients = serve_on(services.router(false)?, listener, tls, &broker, shutdown);
                Box::pin(async move { tokio::try_join!(clients, peers).map(|_| ()) })
            }
        };
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        tokio::select! {
            res = server => if let Err(e) = res {
                broker.shutdown(); // everything acknowledged is fsynced, whatever stopped the server
                return Err(e.into());
            },
            _ = async { let _ = stopped_rx.await; tokio::time::sleep(grace).await } => {
                tracing::warn!("streams still open after the grace period; exiting anyway");
            }
        }
        broker.shutdown();
        tracing::info!("stopped");
        if let Some(e) = broker.store().health().failure() {
            anyhow::bail!(
                "the metadata store failed ({e}); restart the broker once the fault is fixed (e.g. the disk has space)"
            );
        }
        if removed.is_some_and(|c| c.is_removed()) {
            anyhow::bail!(
                "broker {} was removed from the cluster; add it again (tidelog cluster add-broker) to bring it back",
                broker.node_id()
            );
        }
        Ok(())
    }
}

type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves `router` on `listener` (TLS if given, reloaded live) until `shutdown`.
///
/// TCP_NODELAY on every accepted socket (`Server::tcp_nodelay` is ignored for a custom
/// incoming stream): without it, Nagle holds back small responses — a live tail's
/// single-record batches waited for the peer's delayed ACK, up to 40 ms.
fn serve_on(
    router: tonic::transport::server::Router<crate::api::Traced>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    broker: &Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Serving {
    match tls {
        Some(tls) => {
            Arc::clone(&tls).watch(broker.shutdown_signal());
            Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown))
        }
        None => Box::pin(
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown),
        ),
    }
}

/// Everything `/metrics` shows: the hot-path instruments, the broker's state at scrape time,
/// the process.
fn metrics_registry(broker: &Arc<Broker>) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    crate::telemetry::metrics::register(&mut registry);
    registry.register_collector(Box::new(crate::broker::stats::BrokerCollector::new(Arc::downgrade(broker))));
    registry.register_collector(Box::new(crate::telemetry::process::ProcessCollector));
    registry
}
