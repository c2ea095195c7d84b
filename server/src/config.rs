//! The broker's configuration: one typed struct, filled from defaults, then a TOML file, then
//! `TIDELOG_*` environment variables, then command-line flags (each later source wins).
//! Every field's default is documented here and in docs/CONFIG.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::BrokerOptions;
use crate::settings::TopicSettings;

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
    /// Settings for topics created without their own.
    pub topic_defaults: TopicSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9690))),
            data_dir: PathBuf::from("tidelog-data"),
            node_id: 1,
            advertised_address: None,
            retention_check_interval_ms: 300_000,
            shutdown_grace_ms: 5_000,
            topic_defaults: TopicSettings::default(),
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
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::Invalid("retention_check_interval_ms must be at least 1".into()));
        }
        self.topic_defaults.validate().map_err(|e| ConfigError::Invalid(format!("topic_defaults: {e}")))
    }

    pub fn broker_options(&self, bound: SocketAddr) -> BrokerOptions {
        BrokerOptions {
            data_dir: self.data_dir.clone(),
            node_id: self.node_id,
            advertised_address: self.advertised_address.clone().unwrap_or_else(|| bound.to_string()),
            topic_defaults: self.topic_defaults.clone(),
            retention_check_interval: Duration::from_millis(self.retention_check_interval_ms),
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
        assert_eq!(c.topic_defaults.fsync, crate::settings::FsyncSetting::Always);
        assert_eq!(c.topic_defaults.retention_ms, 1000);
        assert_eq!(c.topic_defaults.segment_bytes, TopicSettings::default().segment_bytes);

        std::fs::write(&path, "listn = \"127.0.0.1:0\"\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");

        std::fs::write(&path, "[topic_defaults]\nmax_batch_bytes = 0\n").unwrap();
        let err = Config::from_file(&path).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("max_batch_bytes"), "{err}");
    }
}
