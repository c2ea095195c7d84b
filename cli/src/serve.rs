//! `tidelog serve`: the configuration from defaults, a TOML file, `TIDELOG_*` variables and
//! flags, then a broker (`tidelog_server::node`) served until SIGTERM/SIGINT and shut down
//! gracefully: leadership handed over, streams ended, every partition and the store fsynced.

use std::path::PathBuf;

use tidelog_server::config::Config;
use tidelog_server::node::Node;

use crate::FsyncArg;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see docs/CONFIG.md).
    #[arg(long, env = "TIDELOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:9690; port 0 = any free port).
    #[arg(long, env = "TIDELOG_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics (`/metrics`) here: `auto` (default: the listen port + 1),
    /// `off`, or host:port.
    #[arg(long, env = "TIDELOG_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// TLS: this broker's certificate chain (PEM); with --tls-key the listener speaks only TLS.
    #[arg(long, env = "TIDELOG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, env = "TIDELOG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TLS: the CA (PEM) client certificates and peers' certificates must chain to.
    #[arg(long, env = "TIDELOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: refuse clients without a certificate signed by --tls-ca (mTLS).
    #[arg(long, env = "TIDELOG_TLS_REQUIRE_CLIENT_CERT")]
    pub tls_require_client_cert: bool,
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
    /// How often the log cleaner looks for compacted partitions to clean, in ms
    /// (`[cleaner] interval_ms`).
    #[arg(long, env = "TIDELOG_CLEANER_INTERVAL_MS")]
    pub cleaner_interval_ms: Option<u64>,
    /// Read rate limit of the log cleaner in bytes/s; 0 = unlimited (`[cleaner] io_bytes_per_sec`).
    #[arg(long, env = "TIDELOG_CLEANER_IO_BYTES_PER_SEC")]
    pub cleaner_io_bytes_per_sec: Option<u64>,
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
    /// Cluster mode: new partition groups this broker starts (elects) at once (default 128).
    #[arg(long, env = "TIDELOG_GROUP_STARTS")]
    pub group_starts: Option<u32>,
    /// A new broker joining a running cluster: `host:port` of any member (instead of --peers).
    /// It waits to be added with `tidelog cluster add-broker ID=ADDR`.
    #[arg(long, env = "TIDELOG_JOIN", conflicts_with = "peers")]
    pub join: Option<String>,
    /// Cluster mode: snapshot the metadata log after this many bytes of it (default 16 MiB).
    #[arg(long, env = "TIDELOG_METADATA_SNAPSHOT_BYTES")]
    pub metadata_snapshot_bytes: Option<u64>,
    /// Cluster mode: a second listener for the brokers' own traffic (Raft, passed-on calls),
    /// with its own TLS (--internal-tls-*); --listen then serves clients only.
    #[arg(long, env = "TIDELOG_INTERNAL_LISTEN", requires = "internal_peers")]
    pub internal_listen: Option<std::net::SocketAddr>,
    /// With --internal-listen: every broker's internal address, `1=10.0.1.1:9790,...`.
    #[arg(long, env = "TIDELOG_INTERNAL_PEERS", value_delimiter = ',')]
    pub internal_peers: Vec<String>,
    /// Internal listener TLS: certificate chain (PEM), also presented to peers.
    #[arg(long, env = "TIDELOG_INTERNAL_TLS_CERT", requires = "internal_tls_key")]
    pub internal_tls_cert: Option<PathBuf>,
    /// Internal listener TLS: its private key (PEM).
    #[arg(long, env = "TIDELOG_INTERNAL_TLS_KEY", requires = "internal_tls_cert")]
    pub internal_tls_key: Option<PathBuf>,
    /// Internal listener TLS: the CA peers' certificates must chain to.
    #[arg(long, env = "TIDELOG_INTERNAL_TLS_CA")]
    pub internal_tls_ca: Option<PathBuf>,
    /// Internal listener TLS: refuse callers without a certificate from --internal-tls-ca.
    #[arg(long, env = "TIDELOG_INTERNAL_TLS_REQUIRE_CLIENT_CERT")]
    pub internal_tls_require_client_cert: bool,
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
    if args.tls_cert.is_some() {
        config.tls.cert.clone_from(&args.tls_cert);
        config.tls.key.clone_from(&args.tls_key);
    }
    if args.tls_ca.is_some() {
        config.tls.ca.clone_from(&args.tls_ca);
    }
    if args.tls_require_client_cert {
        config.tls.require_client_cert = true;
    }
    if let Some(v) = &args.metrics_listen {
        config.metrics_listen.clone_from(v);
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
    if let Some(v) = args.cleaner_interval_ms {
        config.cleaner.interval_ms = v;
    }
    if let Some(v) = args.cleaner_io_bytes_per_sec {
        config.cleaner.io_bytes_per_sec = v;
    }
    if args.internal_listen.is_some() {
        config.internal_listen = args.internal_listen;
    }
    if !args.internal_peers.is_empty() {
        config.cluster.internal_peers = args.internal_peers.clone();
    }
    if args.internal_tls_cert.is_some() {
        config.internal_tls.cert.clone_from(&args.internal_tls_cert);
        config.internal_tls.key.clone_from(&args.internal_tls_key);
    }
    if args.internal_tls_ca.is_some() {
        config.internal_tls.ca.clone_from(&args.internal_tls_ca);
    }
    if args.internal_tls_require_client_cert {
        config.internal_tls.require_client_cert = true;
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
    if let Some(v) = args.group_starts {
        config.cluster.group_starts = v;
    }
    if let Some(v) = &args.join {
        config.cluster.join = Some(v.trim_start_matches("http://").to_string());
    }
    if let Some(v) = args.metadata_snapshot_bytes {
        config.cluster.metadata_snapshot_bytes = v;
    }
    config.validate()?;
    Ok(config)
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: called before the broker says it is listening, a SIGTERM sent right
/// after that line shuts it down gracefully instead of killing it (the default action).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers the broker still runs; it just cannot shut down gracefully.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    if let Ok(peers) = config.cluster.parse_peers() {
        if !peers.is_empty() {
            // As DescribeCluster names it.
            let ids: Vec<String> = peers.keys().map(u64::to_string).collect();
            tidelog_server::telemetry::set_cluster_id(format!("tidelog-{}", ids.join("-")));
        }
    }
    let _telemetry = tidelog_server::telemetry::init("tidelog", Some(config.node_id.to_string()))?;
    match raise_open_files_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit (one per log segment, plus connections)"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open files limit"),
    }
    let data_dir = config.data_dir.clone();
    let node = Node::start(config).await?;
    let bound = node.local_addr()?;
    let metrics = node.metrics_addr().map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics"));
    let shutdown = shutdown_signal();
    // The one line scripts and tests wait for (the broker's address is its fourth word).
    println!("tidelog listening on {bound} (data dir {}) metrics {metrics}", data_dir.display());
    tracing::info!(%bound, data_dir = %data_dir.display(), topics = node.broker().topics().len(), "broker started");
    node.serve(shutdown).await
}

/// Raises the soft limit on open files to the hard one, as a broker that holds one file per
/// log segment (and one per connection) needs: at 10,000 partitions the usual soft limit of
/// 1,024 is far too low, and the hard limit is what the administrator allowed. Returns the
/// limits now in force.
#[allow(unsafe_code)]
fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes the current limits into the struct we own and pass by
    // pointer; `setrlimit` only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}
