//! The broker's configuration: one typed struct, filled from defaults, then a TOML file, then
//! `TIDELOG_*` environment variables, then command-line flags (each later source wins).
//! Every field's default is documented here and in docs/CONFIG.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::{Auth, AuthSettings};
use crate::broker::BrokerOptions;
use crate::topic_config::TopicSettings;

/// The default listen address: loopback only, so a first `tidelog serve` exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9690";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:9690`; port 0 picks a free port (printed).
    pub listen: SocketAddr,
    /// Where partition logs and metadata live. Default `./tidelog-data`.
    pub data_dir: PathBuf,
    /// This broker's id. Default 1.
    pub node_id: u32,
    /// Address clients are told to use; default: the address actually listened on.
    pub advertised_address: Option<String>,
    /// How often retention runs. Default 300000 (5 minutes, as Kafka).
    pub retention_check_interval_ms: u64,
    /// How long shutdown waits for open streams to finish. Default 5000.
    pub shutdown_grace_ms: u64,
    /// Where Prometheus scrapes `/metrics`: `auto` (the default: the listen address's IP and
    /// port + 100, e.g. 9790 beside 9690, or any free port if that one is taken or the listen
    /// port is 0), `off`, or `host:port`.
    pub metrics_listen: String,
    /// Settings for topics created without their own.
    pub topic_defaults: TopicSettings,
    /// Cluster membership; empty `peers` (the default) = a single node.
    pub cluster: ClusterSettings,
    /// TLS for the listener and for calls to peers; off unless `cert` and `key` are set.
    pub tls: TlsSettings,
    /// Authentication, authorization (ACLs) and who the brokers are (docs/SECURITY.md).
    pub auth: AuthSettings,
    /// Cluster mode: a second listener for the brokers' own traffic (Raft, and calls one
    /// broker passes on to another), with its own TLS settings (`internal_tls`); peers are
    /// reached at `cluster.internal_peers`. Default: none, `listen` serves both, and the
    /// client listener then serves no Raft at all when this is set.
    pub internal_listen: Option<SocketAddr>,
    /// TLS of the internal listener and of calls to peers when `internal_listen` is set
    /// (`[tls]` then covers clients only). Same keys as `[tls]`.
    pub internal_tls: TlsSettings,
    /// The log cleaner of compacted topics (docs/COMPACTION.md).
    pub cleaner: CleanerSettings,
}

/// `[cleaner]`: the background compaction of topics with `cleanup_policy` compact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanerSettings {
    /// How often the cleaner looks for a partition dirty enough to clean. Default 15000.
    pub interval_ms: u64,
    /// Memory of one cleaning's key map (24 bytes per distinct key of the dirty part; when it
    /// is full a cleaning covers less and the rest waits for the next). Default 64 MiB.
    pub map_bytes: u64,
    /// Read rate limit of a cleaning in bytes per second; 0 (the default) = unlimited.
    pub io_bytes_per_sec: u64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        Self { interval_ms: 15_000, map_bytes: 64 << 20, io_bytes_per_sec: 0 }
    }
}

impl CleanerSettings {
    pub fn options(&self) -> crate::partition::compaction::CleanerOptions {
        crate::partition::compaction::CleanerOptions {
            map_bytes: usize::try_from(self.map_bytes).unwrap_or(usize::MAX),
            io_bytes_per_sec: (self.io_bytes_per_sec > 0).then_some(self.io_bytes_per_sec),
            interval: Duration::from_millis(self.interval_ms),
        }
    }
}

/// `[tls]`: certificates and keys as PEM files, reloaded on SIGHUP and when the files change
/// (docs/SECURITY.md). With `cert` and `key` the listener speaks only TLS, and a cluster's
/// brokers call each other over TLS (presenting `cert` as their client certificate, trusting
/// `ca`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// This broker's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates (mTLS) and peers' certificates must
    /// chain to.
    pub ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `ca` (mTLS). Default false: a client
    /// certificate is verified if presented.
    pub require_client_cert: bool,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::Invalid("tls.cert and tls.key go together: set both, or neither".into()));
        }
        if self.require_client_cert && self.ca.is_none() {
            return Err(ConfigError::Invalid(
                "tls.require_client_cert needs tls.ca (the CA client certificates must chain to)".into(),
            ));
        }
        if !self.enabled() && (self.ca.is_some() || self.require_client_cert) {
            return Err(ConfigError::Invalid("tls.ca and tls.require_client_cert need tls.cert and tls.key".into()));
        }
        Ok(())
    }
}

/// `[cluster]`: the brokers of a static cluster. Every broker is a voter of the metadata group;
/// each partition has `replication_factor` replicas placed over the brokers (docs/CLUSTER.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Every broker of the cluster, this one included, as `id=host:port` (the address clients
    /// and peers reach it at). Default empty: single node.
    pub peers: Vec<String>,
    /// Raft heartbeat interval. Default 250 ms.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in [min, 2 × min] stands for
    /// election. Default 1000 ms.
    pub election_timeout_ms: u64,
    /// How often a leader checks whether a partition's preferred leader (its first replica)
    /// is back in sync and hands the leadership back to it. Default 10 s; 0 = never.
    pub leader_rebalance_ms: u64,
    /// A partition group with no write for this long stops ticking on every replica (no
    /// heartbeats, no timers; brokers ping each other instead: `raft/quiesce.rs`). Default
    /// 2000 ms; 0 = never (every group ticks, about half a core per broker per 1,000 idle
    /// partitions).
    pub quiesce_ms: u64,
    /// With quiescing on: how many new partition groups this broker starts (elects) at once;
    /// a started group holds its place until it sleeps or is written to (60 s at most), so a
    /// large topic is created at the pace the machine allows instead of thousands of groups
    /// electing and heartbeating together (`cluster/replica.rs`). Default 128.
    pub group_starts: u32,
    /// The metadata log is snapshotted (its sealed prefix replaced by the state it leaves:
    /// `cluster/meta_snapshot.rs`) once this many bytes of it were written since the last
    /// snapshot; its segments roll at a quarter of it. A broker starting replays at most about
    /// this much history. Default 16 MiB.
    pub metadata_snapshot_bytes: u64,
    /// What a partition's leader sends per second, at most, to replicas catching up for a move
    /// (`tidelog partition reassign`), over all the moves it leads; a move may name its own.
    /// Default 64 MiB/s; 0 = unthrottled.
    pub reassignment_throttle_bytes_per_sec: u64,
    /// A new broker joining a running cluster: the address (`host:port`) of any member. It
    /// learns the brokers from it, and waits to be added (`tidelog cluster add-broker`);
    /// `peers` is then not needed. Default none.
    pub join: Option<String>,
    /// With `internal_listen`: every broker's internal listener, `id=host:port`, this one
    /// included (peers call each other there); `peers` are then the addresses clients are told.
    pub internal_peers: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            heartbeat_ms: 250,
            election_timeout_ms: 1000,
            leader_rebalance_ms: 10_000,
            quiesce_ms: 2000,
            group_starts: 128,
            metadata_snapshot_bytes: 16 << 20,
            reassignment_throttle_bytes_per_sec: 64 << 20,
            join: None,
            internal_peers: Vec::new(),
        }
    }
}

impl ClusterSettings {
    /// Whether this broker is a cluster member (peers given, or joining one).
    pub fn is_member(&self) -> bool {
        !self.peers.is_empty() || self.join.is_some()
    }

    /// The peers as id → the address clients are told; errors name the bad entry.
    pub fn parse_peers(&self) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
        parse_addresses(&self.peers, "cluster peer")
    }

    /// Where brokers call each other: `internal_peers` if set, else `peers`.
    pub fn peer_endpoints(&self) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
        if self.internal_peers.is_empty() {
            self.parse_peers()
        } else {
            parse_addresses(&self.internal_peers, "cluster internal peer")
        }
    }
}

/// `id=host:port` entries as id → address; errors name the bad entry.
fn parse_addresses(entries: &[String], what: &str) -> Result<std::collections::BTreeMap<u64, String>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    for entry in entries {
        let bad = |why: &str| ConfigError::Invalid(format!("{what} {entry:?}: {why} (use id=host:port)"));
        let (id, addr) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: u64 = id.trim().parse().map_err(|_| bad("the id is not a number"))?;
        if id == 0 || id >= MAX_NODE_ID {
            return Err(bad(&format!("ids must be 1..{MAX_NODE_ID}")));
        }
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
            return Err(bad("the address has no port"));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(bad("the id is listed twice"));
        }
    }
    Ok(out)
}

/// `metrics_listen = "auto"` serves metrics this many ports above the listen port (not the
/// next port: cluster members often listen on consecutive ones).
pub const METRICS_PORT_OFFSET: u16 = 100;

/// Node ids are below this: producer ids embed the node id in their low bits.
pub const MAX_NODE_ID: u64 = 1024;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9690))),
            data_dir: PathBuf::from("tidelog-data"),
            node_id: 1,
            advertised_address: None,
            retention_check_interval_ms: 300_000,
            shutdown_grace_ms: 5_000,
            metrics_listen: "auto".into(),
            topic_defaults: TopicSettings::default(),
            cluster: ClusterSettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            internal_listen: None,
            internal_tls: TlsSettings::default(),
            cleaner: CleanerSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file over the defaults. Unknown keys are errors (a typo must not be
    /// silently ignored).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let peers = self.cluster.parse_peers()?;
        if let Some(join) = &self.cluster.join {
            if !peers.is_empty() {
                return Err(ConfigError::Invalid(
                    "cluster.join is for a new broker: it learns the brokers from the member it joins; drop \
                     cluster.peers"
                        .into(),
                ));
            }
            if join.parse::<std::net::SocketAddr>().is_err() && !join.contains(':') {
                return Err(ConfigError::Invalid(format!("cluster.join {join:?}: use host:port of a member")));
            }
            if self.listen.port() == 0 || self.node_id == 0 || u64::from(self.node_id) >= MAX_NODE_ID {
                return Err(ConfigError::Invalid(format!(
                    "a joining broker needs a fixed listen port and a node_id in 1..{MAX_NODE_ID}"
                )));
            }
            if self.internal_listen.is_some() {
                return Err(ConfigError::Invalid(
                    "cluster.join with internal_listen is not supported yet: start it with cluster.peers".into(),
                ));
            }
        }
        if !peers.is_empty() && !peers.contains_key(&u64::from(self.node_id)) {
            return Err(ConfigError::Invalid(format!(
                "node_id {} is not among cluster.peers; list every broker, this one included",
                self.node_id
            )));
        }
        if self.cluster.is_member() {
            if self.listen.port() == 0 {
                return Err(ConfigError::Invalid("a cluster member needs a fixed listen port, not 0".into()));
            }
            let c = &self.cluster;
            if c.heartbeat_ms == 0 || c.election_timeout_ms < 3 * c.heartbeat_ms {
                return Err(ConfigError::Invalid(
                    "cluster.election_timeout_ms must be at least 3 x cluster.heartbeat_ms (and the heartbeat positive)"
                        .into(),
                ));
            }
            if c.group_starts == 0 {
                return Err(ConfigError::Invalid("cluster.group_starts must be at least 1".into()));
            }
            if c.metadata_snapshot_bytes < 64 << 10 {
                return Err(ConfigError::Invalid(
                    "cluster.metadata_snapshot_bytes must be at least 65536 (64 KiB)".into(),
                ));
            }
        }
        self.metrics_address()?;
        self.tls.validate()?;
        self.internal_tls.validate().map_err(|e| ConfigError::Invalid(format!("internal_tls: {e}")))?;
        self.validate_internal(&peers)?;
        let peer_tls = self.peer_tls();
        if self.cluster.is_member() && peer_tls.enabled() && peer_tls.ca.is_none() {
            return Err(ConfigError::Invalid(
                "a cluster with TLS between brokers needs its ca (tls.ca, or internal_tls.ca with an internal \
                 listener): the CA the brokers' certificates chain to"
                    .into(),
            ));
        }
        let cluster_mtls = peer_tls.enabled() && peer_tls.ca.is_some();
        self.auth.validate(!peers.is_empty(), cluster_mtls).map_err(ConfigError::Invalid)?;
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::Invalid("retention_check_interval_ms must be at least 1".into()));
        }
        if self.cleaner.interval_ms == 0 {
            return Err(ConfigError::Invalid("cleaner.interval_ms must be at least 1".into()));
        }
        let min_map = (crate::partition::compaction::SLOT_BYTES * 1024) as u64;
        if self.cleaner.map_bytes < min_map {
            return Err(ConfigError::Invalid(format!(
                "cleaner.map_bytes must be at least {min_map} (1024 slots of 24 bytes), got {}",
                self.cleaner.map_bytes
            )));
        }
        self.topic_defaults.validate().map_err(|e| ConfigError::Invalid(format!("topic_defaults: {e}")))
    }

    /// The TLS brokers use between themselves: `internal_tls` with an internal listener, else
    /// `tls`.
    pub fn peer_tls(&self) -> &TlsSettings {
        if self.internal_listen.is_some() {
            &self.internal_tls
        } else {
            &self.tls
        }
    }

    fn validate_internal(&self, peers: &std::collections::BTreeMap<u64, String>) -> Result<(), ConfigError> {
        let Some(internal) = self.internal_listen else {
            if !self.cluster.internal_peers.is_empty() || self.internal_tls != TlsSettings::default() {
                return Err(ConfigError::Invalid(
                    "cluster.internal_peers and internal_tls need internal_listen (the brokers' own listener)".into(),
                ));
            }
            return Ok(());
        };
        if peers.is_empty() {
            return Err(ConfigError::Invalid("internal_listen is for cluster members (set cluster.peers)".into()));
        }
        if internal.port() == 0 || internal == self.listen {
            return Err(ConfigError::Invalid(
                "internal_listen needs its own fixed port, not 0 and not the client listener's".into(),
            ));
        }
        let internal_peers = parse_addresses(&self.cluster.internal_peers, "cluster internal peer")?;
        if internal_peers.keys().ne(peers.keys()) {
            return Err(ConfigError::Invalid(
                "cluster.internal_peers must list the same broker ids as cluster.peers (each broker's internal \
                 address)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Where to serve `/metrics` (see `metrics_listen`); `None` when off.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_listen.as_str() {
            "off" | "" => Ok(None),
            "auto" => {
                let port = self.listen.port().checked_add(METRICS_PORT_OFFSET).filter(|_| self.listen.port() != 0);
                let port = port.unwrap_or(0);
                Ok(Some(SocketAddr::new(self.listen.ip(), port)))
            }
            a => a.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "metrics_listen {a:?} is not auto, off or host:port (e.g. 127.0.0.1:9691)"
                ))
            }),
        }
    }

    /// The broker's options; `auth` is built from `self.auth` by the caller (it reads files).
    pub fn broker_options(&self, bound: SocketAddr, auth: std::sync::Arc<Auth>) -> BrokerOptions {
        let own = self.cluster.parse_peers().ok().and_then(|mut p| p.remove(&u64::from(self.node_id)));
        BrokerOptions {
            data_dir: self.data_dir.clone(),
            node_id: self.node_id,
            advertised_address: self.advertised_address.clone().or(own).unwrap_or_else(|| bound.to_string()),
            topic_defaults: self.topic_defaults.clone(),
            retention_check_interval: Duration::from_millis(self.retention_check_interval_ms),
            cleaner: self.cleaner.options(),
            auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\n[topic_defaults]\nfsync = \"always\"\nretention_ms = 1000\n")
            .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.topic_defaults.fsync, crate::topic_config::FsyncSetting::Always);
        assert_eq!(c.topic_defaults.retention_ms, 1000);
        assert_eq!(c.topic_defaults.segment_bytes, TopicSettings::default().segment_bytes);

        std::fs::write(&path, "listn = \"127.0.0.1:0\"\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");

        std::fs::write(&path, "[topic_defaults]\nmax_batch_bytes = 0\n").unwrap();
        let err = Config::from_file(&path).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("max_batch_bytes"), "{err}");
    }

    #[test]
    fn cluster_peers_are_checked() {
        let mut c = Config { listen: "127.0.0.1:7001".parse().unwrap(), ..Config::default() };
        c.cluster.peers = vec!["1=127.0.0.1:7001".into(), "2=127.0.0.1:7002".into()];
        c.validate().unwrap();
        assert_eq!(c.cluster.parse_peers().unwrap()[&2], "127.0.0.1:7002");
        for (peers, want) in [
            (vec!["2=127.0.0.1:7002"], "node_id 1"),
            (vec!["1=127.0.0.1"], "no port"),
            (vec!["x=127.0.0.1:1"], "not a number"),
            (vec!["1=127.0.0.1:1", "1=127.0.0.1:2"], "twice"),
        ] {
            c.cluster.peers = peers.into_iter().map(String::from).collect();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        c.cluster.peers = vec!["1=127.0.0.1:7001".into()];
        c.cluster.group_starts = 0;
        assert!(c.validate().unwrap_err().to_string().contains("group_starts must be at least 1"));
        c.cluster.group_starts = 1;
        c.validate().unwrap();
        c.listen = "127.0.0.1:0".parse().unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("fixed listen port"));
    }

    #[test]
    fn internal_listener_and_auth_are_checked() {
        let mut c = Config { listen: "127.0.0.1:7001".parse().unwrap(), ..Config::default() };
        c.cluster.peers = vec!["1=127.0.0.1:7001".into(), "2=127.0.0.1:7002".into()];
        c.internal_listen = Some("127.0.0.1:7101".parse().unwrap());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("same broker ids"), "{err}");
        c.cluster.internal_peers = vec!["1=127.0.0.1:7101".into(), "2=127.0.0.1:7102".into()];
        c.validate().unwrap();
        assert_eq!(c.cluster.peer_endpoints().unwrap()[&2], "127.0.0.1:7102");
        assert_eq!(c.cluster.parse_peers().unwrap()[&2], "127.0.0.1:7002", "clients are told the client address");
        c.internal_listen = Some("127.0.0.1:7001".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("its own fixed port"));
        c.internal_listen = None;
        assert!(c.validate().unwrap_err().to_string().contains("need internal_listen"));
        c.cluster.internal_peers.clear();

        // Authorization in a cluster needs brokers to prove who they are.
        c.auth.authorization = true;
        assert!(c.validate().unwrap_err().to_string().contains("mutual TLS between brokers"));
        c.tls = TlsSettings {
            cert: Some("b.pem".into()),
            key: Some("b.key".into()),
            ca: Some("ca.pem".into()),
            require_client_cert: false,
        };
        assert!(c.validate().unwrap_err().to_string().contains("broker_principals"));
        c.auth.broker_principals = vec!["User:broker".into()];
        c.validate().unwrap();
        c.auth.superusers = vec!["admin".into()];
        assert!(c.validate().unwrap_err().to_string().contains("User:<name>"));
    }
}
