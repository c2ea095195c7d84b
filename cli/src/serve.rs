//! `tidelog serve`: load the configuration, open the data directory (recovering every
//! partition), serve until SIGTERM/SIGINT, then shut down gracefully: end streams, fsync every
//! partition and the metadata store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use tidelog_server::broker::{tasks, Broker};
use tidelog_server::config::Config;

use crate::FsyncArg;

/// Cluster mode: how long a stopping broker waits for the groups it leads to take a new leader.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/CONFIG.md).
    #[arg(long, env = "TIDELOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:9690; port 0 = any free port).
    #[arg(long, env = "TIDELOG_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory (default ./tidelog-data).
    #[arg(long, env = "TIDELOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "TIDELOG_NODE_ID")]
    pub node_id: Option<u32>,
    /// fsync policy for topics created without one.
    #[arg(long, env = "TIDELOG_DEFAULT_FSYNC", value_enum)]
    pub default_fsync: Option<FsyncArg>,
    /// How often retention runs, in ms.
    #[arg(long, env = "TIDELOG_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Cluster members, this broker included: `1=127.0.0.1:9701,2=127.0.0.1:9702,...`.
    /// Without it the broker runs as a single node.
    #[arg(long, env = "TIDELOG_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Cluster mode: how often leaders hand partitions back to their preferred replica, in ms
    /// (0 = never).
    #[arg(long, env = "TIDELOG_LEADER_REBALANCE_MS")]
    pub leader_rebalance_ms: Option<u64>,
    /// Cluster mode: an idle partition stops ticking after this many ms without a write
    /// (default 2000; 0 = never).
    #[arg(long, env = "TIDELOG_QUIESCE_MS")]
    pub quiesce_ms: Option<u64>,
}

/// Defaults < file < environment < flags (clap already merged the last two).
pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = args.node_id {
        config.node_id = v;
    }
    if let Some(v) = args.default_fsync {
        config.topic_defaults.fsync = v.into();
    }
    if let Some(v) = args.retention_check_interval_ms {
        config.retention_check_interval_ms = v;
    }
    if !args.peers.is_empty() {
        config.cluster.peers = args.peers.clone();
    }
    if let Some(v) = args.leader_rebalance_ms {
        config.cluster.leader_rebalance_ms = v;
    }
    if let Some(v) = args.quiesce_ms {
        config.cluster.quiesce_ms = v;
    }
    config.validate()?;
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the broker still runs; it just cannot shut down gracefully.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let _telemetry = tidelog_server::telemetry::init("tidelog")?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let broker = Broker::open(config.broker_options(bound))
        .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
    let cluster = if config.cluster.peers.is_empty() {
        None
    } else {
        Some(tidelog_server::cluster::Cluster::start(&broker, &config.cluster).await.context("cannot join the cluster")?)
    };
    tasks::spawn(&broker);
    // The one line scripts and tests wait for.
    println!("tidelog listening on {bound} (data dir {})", config.data_dir.display());
    tracing::info!(%bound, data_dir = %config.data_dir.display(), topics = broker.topics().len(), "broker started");

    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let b = broker.clone();
    let signal = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(c) = b.cluster() {
            // Before the server stops: the transfer needs this broker's Raft traffic.
            c.hand_over_leadership(&b, HAND_OVER_WAIT).await;
        }
        b.shutdown(); // ends subscriptions and produce streams, fsyncs everything
        let _ = stopped_tx.send(());
    };
    let server = tidelog_server::api::serve(broker.clone(), listener, signal);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    tokio::select! {
        res = server => res?,
        _ = async { let _ = stopped_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!("streams still open after the grace period; exiting anyway");
        }
    }
    if let Some(c) = &cluster {
        c.shutdown(&broker).await;
    }
    broker.shutdown();
    tracing::info!("stopped");
    Ok(())
}
