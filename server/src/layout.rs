//! Every name this broker gives a file or directory under its data directory, in one place
//! (docs/LOG_FORMAT.md has the byte layouts inside them).
//!
//! ```text
//! <data_dir>/meta/                       sled: topic definitions (single node), committed
//!                                        offsets, producer ids, Raft votes and purge points
//! <data_dir>/topics/<topic>/<p>/         one partition log (segments + indexes), single node
//! <data_dir>/cluster-meta/               the metadata Raft group's log (cluster mode)
//! <data_dir>/replicas/<topic id>/<p>/    one replicated partition log (cluster mode)
//! <data_dir>/raft-incoming/<group id>/   a snapshot being received (cluster mode)
//! ```
//!
//! Inside a partition directory the log names its segments and indexes (`log/segment.rs`);
//! inside `meta/` the store names its trees (`meta/mod.rs`).
//!
//! Never: name a path under the data directory anywhere else.

use std::path::{Path, PathBuf};

/// The sled metadata store.
pub const META_DIR: &str = "meta";
/// Single-node partition logs, by topic name.
pub const TOPICS_DIR: &str = "topics";
/// The cluster metadata group's log.
pub const CLUSTER_META_DIR: &str = "cluster-meta";
/// Replicated partition logs, by topic id (an incarnation, never reused by a recreated topic).
pub const REPLICAS_DIR: &str = "replicas";
/// Snapshots being received, by Raft group id.
pub const INCOMING_DIR: &str = "raft-incoming";

/// `<data_dir>/meta`.
pub fn meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(META_DIR)
}

/// `<data_dir>/topics`.
pub fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TOPICS_DIR)
}

/// `<data_dir>/topics/<topic>/<partition>`.
pub fn topic_partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topics_dir(data_dir).join(topic).join(partition.to_string())
}

/// `<data_dir>/cluster-meta`.
pub fn cluster_meta_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CLUSTER_META_DIR)
}

/// `<data_dir>/replicas/<topic id>`.
pub fn replicas_dir(data_dir: &Path, topic_id: u64) -> PathBuf {
    data_dir.join(REPLICAS_DIR).join(topic_id.to_string())
}

/// `<data_dir>/raft-incoming/<group id>`.
pub fn incoming_dir(data_dir: &Path, group_id: u64) -> PathBuf {
    data_dir.join(INCOMING_DIR).join(group_id.to_string())
}
