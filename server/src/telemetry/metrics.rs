//! The broker's hot-path instruments (Prometheus, through `prometheus-client`): counters and
//! histograms that requests and fsyncs update as they happen. Everything that is a state
//! rather than an event (offsets, sizes, leaders, lag) is read at scrape time instead, by the
//! broker's collector (`broker/stats.rs`), so it costs nothing between scrapes.
//!
//! The instruments are process-wide (one broker per process in production; in-process test
//! clusters share them). Each update is an atomic add or a histogram bucket increment on a
//! pre-built label set: no allocation, no lock beyond a read lock on a small family map.
//!
//! Never: a label whose values grow without bound (record keys, client ids, offsets). Labels
//! here are an error-code name, an acks level, an RPC name.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Produce answers by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The `ErrorCode` name (`ERROR_CODE_UNSPECIFIED` for success), as clients see it.
    pub code: &'static str,
}

/// Produce latencies by acknowledgement level.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcksLabel {
    pub acks: &'static str,
}

/// Open streams by RPC.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    pub rpc: &'static str,
}

/// The process-wide instruments.
#[derive(Debug)]
pub struct Instruments {
    /// Produce batches answered, by error code.
    pub produce_batches: Family<CodeLabel, Counter>,
    /// From a produce request's arrival to its answer (durable per acks and fsync policy).
    pub produce_latency: Family<AcksLabel, Histogram>,
    /// One fsync of a partition's log.
    pub fsync_latency: Histogram,
    /// Cluster mode: from a batch's proposal to its commit by a majority (acks=all).
    pub replication_commit_latency: Histogram,
    /// Cluster mode: AppendEntries requests a follower received, by how they came (`unary`:
    /// one call each, heartbeats included; `stream`: pipelined on a StreamAppend call).
    pub raft_append_requests: Family<ModeLabel, Counter>,
    /// Cluster mode: pipelined replication streams (StreamAppend calls) open here as a
    /// follower. Each holds one of its connection's HTTP/2 stream slots.
    pub raft_append_streams: Gauge,
    /// Cluster mode: Raft entries read back from partition logs (a leader's to send them to
    /// followers, every replica's to apply them), by where they came from (`memory`: the
    /// recent entries, `raft/recent.rs`; `disk`: the log).
    pub raft_entry_reads: Family<SourceLabel, Counter>,
    /// Cluster mode: bytes of recent Raft entries this broker keeps in memory for replication
    /// and apply (`raft/recent.rs`: at most 256 MiB; nothing for asleep groups).
    pub raft_recent_bytes: Gauge,
    /// Cluster mode: partition groups hosted here by whether they sleep (`asleep`, `awake`),
    /// as the quiescing loop last counted them.
    pub raft_groups: Family<StateLabel, Gauge>,
    /// Cluster mode: new partition groups started here and not asleep yet (holding a permit
    /// of the start budget).
    pub raft_group_starts: Gauge,
    /// Subscribe responses sent.
    pub subscribe_responses: Counter,
    /// Subscribe streams ended with an error status.
    pub subscribe_errors: Family<CodeLabel, Counter>,
    /// Produce and Subscribe streams open now.
    pub open_streams: Family<RpcLabel, Gauge>,
    /// Calls (or produce batches) refused by the ACLs.
    pub authorization_denied: Counter,
    /// Calls refused for bad credentials.
    pub authentication_failed: Counter,
    /// Time responses were held back by quotas, by kind (produce, consume, request).
    pub throttle_seconds: Family<QuotaLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// The log cleaner: passes finished, bytes read and written, records removed, pass time.
    pub cleaner_passes: Counter,
    pub cleaner_bytes_read: Counter,
    pub cleaner_bytes_written: Counter,
    pub cleaner_records_removed: Counter,
    pub cleaner_pass_seconds: Histogram,
    /// Metadata snapshots taken here, and the size of the last one's image segment.
    pub metadata_snapshots: Counter,
    pub metadata_image_bytes: Gauge,
}

/// How Raft requests arrived.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

/// Where entries were read from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// A Raft group's state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Throttle time by quota kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabel {
    pub quota: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    produce_batches: Family::default(),
    produce_latency: Family::new_with_constructor(latency_histogram),
    fsync_latency: latency_histogram(),
    replication_commit_latency: latency_histogram(),
    raft_append_requests: Family::default(),
    raft_append_streams: Gauge::default(),
    raft_entry_reads: Family::default(),
    raft_recent_bytes: Gauge::default(),
    raft_groups: Family::default(),
    raft_group_starts: Gauge::default(),
    subscribe_responses: Counter::default(),
    subscribe_errors: Family::default(),
    open_streams: Family::default(),
    authorization_denied: Counter::default(),
    authentication_failed: Counter::default(),
    throttle_seconds: Family::default(),
    cleaner_passes: Counter::default(),
    cleaner_bytes_read: Counter::default(),
    cleaner_bytes_written: Counter::default(),
    cleaner_records_removed: Counter::default(),
    cleaner_pass_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
    metadata_snapshots: Counter::default(),
    metadata_image_bytes: Gauge::default(),
});

/// The instruments (created on first use).
pub fn instruments() -> &'static Instruments {
    &INSTRUMENTS
}

/// Registers the instruments in `registry` (names as Prometheus shows them, `_total` added to
/// counters by the encoder).
pub fn register(registry: &mut Registry) {
    let i = instruments();
    registry.register("tidelog_produce_batches", "Produce batches answered, by error code", i.produce_batches.clone());
    registry.register(
        "tidelog_produce_latency_seconds",
        "Produce request arrival to answer (durable per acks and fsync policy)",
        i.produce_latency.clone(),
    );
    registry.register("tidelog_fsync_latency_seconds", "One fsync of a partition log", i.fsync_latency.clone());
    registry.register(
        "tidelog_replication_commit_latency_seconds",
        "Cluster: a batch's proposal to its commit by a majority (acks=all)",
        i.replication_commit_latency.clone(),
    );
    registry.register(
        "tidelog_raft_append_requests",
        "Cluster: AppendEntries requests received from leaders, by mode (unary or pipelined stream)",
        i.raft_append_requests.clone(),
    );
    registry.register(
        "tidelog_raft_append_streams",
        "Cluster: pipelined replication streams (StreamAppend calls) open here as a follower",
        i.raft_append_streams.clone(),
    );
    registry.register(
        "tidelog_raft_entry_reads",
        "Cluster: Raft entries read back from partition logs to replicate or apply them, by source (memory or disk)",
        i.raft_entry_reads.clone(),
    );
    registry.register(
        "tidelog_raft_recent_bytes",
        "Cluster: bytes of recent Raft entries kept in memory for replication and apply",
        i.raft_recent_bytes.clone(),
    );
    registry.register(
        "tidelog_raft_groups",
        "Cluster: partition groups hosted here, by state (asleep or awake)",
        i.raft_groups.clone(),
    );
    registry.register(
        "tidelog_raft_group_starts",
        "Cluster: new partition groups started here and not asleep yet (the start budget in use)",
        i.raft_group_starts.clone(),
    );
    registry.register("tidelog_subscribe_responses", "Subscribe responses sent", i.subscribe_responses.clone());
    registry.register("tidelog_subscribe_errors", "Subscribe streams ended by an error", i.subscribe_errors.clone());
    registry.register("tidelog_open_streams", "Produce and Subscribe streams open now", i.open_streams.clone());
    registry.register(
        "tidelog_authorization_denied",
        "Calls and produce batches refused by the ACLs",
        i.authorization_denied.clone(),
    );
    registry.register(
        "tidelog_authentication_failed",
        "Calls refused for bad credentials",
        i.authentication_failed.clone(),
    );
    registry.register(
        "tidelog_throttle_seconds",
        "Time responses were held back by client quotas, by quota",
        i.throttle_seconds.clone(),
    );
    registry.register("tidelog_cleaner_passes", "Log cleaner passes finished", i.cleaner_passes.clone());
    registry.register("tidelog_cleaner_read_bytes", "Bytes the log cleaner read", i.cleaner_bytes_read.clone());
    registry.register("tidelog_cleaner_written_bytes", "Bytes the log cleaner wrote", i.cleaner_bytes_written.clone());
    registry.register(
        "tidelog_cleaner_removed_records",
        "Records the log cleaner removed (superseded, expired tombstones, aborted)",
        i.cleaner_records_removed.clone(),
    );
    registry.register("tidelog_cleaner_pass_seconds", "One log cleaner pass", i.cleaner_pass_seconds.clone());
    registry.register(
        "tidelog_metadata_snapshots",
        "Snapshots of the cluster metadata log taken by this broker",
        i.metadata_snapshots.clone(),
    );
    registry.register(
        "tidelog_metadata_image_bytes",
        "Size of the metadata log's image segment after this broker's last snapshot",
        i.metadata_image_bytes.clone(),
    );
}

/// Counts one in a gauge while alive: an open stream, a group starting.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn hold(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }

    /// A Produce or Subscribe stream in `tidelog_open_streams`.
    pub fn stream(rpc: &'static str) -> Self {
        Self::hold(&instruments().open_streams.get_or_create(&RpcLabel { rpc }))
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
