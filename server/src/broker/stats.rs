//! The broker's state as Prometheus metrics, read at scrape time (nothing is kept between
//! scrapes, so the hot path pays nothing): per partition held here its offsets, size,
//! leadership, replication and traffic; per consumer group its committed offsets and lag;
//! the cluster's brokers and controller. Names follow Kafka's exporters (kafka_exporter's
//! `kafka_topic_partition_*`, `kafka_consumergroup_*`), prefixed `tidelog_`.
//!
//! Cardinality: partition series carry `topic` and `partition` labels (one series per partition
//! held here per metric); group series add `group` and exist only on the broker that leads the
//! partition, so a cluster exports each lag once; follower lag adds `follower` (a broker id).
//! Nothing is labelled by an unbounded value.
//!
//! Never: hold the topic table's lock while reading the metadata store or a partition (each
//! read takes its own short lock, as a request would).

use std::fmt;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::Broker;

/// Collects the broker's metrics on each scrape; holds the broker weakly (a stopped broker
/// exports nothing).
#[derive(Debug)]
pub struct BrokerCollector {
    broker: Weak<Broker>,
}

impl BrokerCollector {
    pub fn new(broker: Weak<Broker>) -> Self {
        Self { broker }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Rows of one metric family, encoded with one descriptor.
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    rows: Vec<(Labels, i64)>,
}

impl Family {
    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self { name, help, counter: false, rows: Vec::new() }
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self { name, help, counter: true, rows: Vec::new() }
    }

    fn push(&mut self, labels: Labels, value: i64) {
        self.rows.push((labels, value));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        if self.rows.is_empty() {
            return Ok(());
        }
        let kind = if self.counter { MetricType::Counter } else { MetricType::Gauge };
        let mut family = encoder.encode_descriptor(self.name, self.help, None, kind)?;
        for (labels, value) in &self.rows {
            let metric = family.encode_family(labels)?;
            if self.counter {
                ConstCounter::new(u64::try_from(*value).unwrap_or(0)).encode(metric)?;
            } else {
                ConstGauge::new(*value).encode(metric)?;
            }
        }
        Ok(())
    }
}

fn tp(topic: &str, p: u32) -> Labels {
    vec![("topic", topic.to_string()), ("partition", p.to_string())]
}

fn with(mut labels: Labels, key: &'static str, value: String) -> Labels {
    labels.push((key, value));
    labels
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(broker) = self.broker.upgrade() else { return Ok(()) };
        let me = broker.node_id();
        let mut hw = Family::gauge(
            "tidelog_topic_partition_current_offset",
            "High watermark: offsets below it are visible to consumers",
        );
        let mut start = Family::gauge("tidelog_topic_partition_oldest_offset", "Log start offset");
        let mut end = Family::gauge("tidelog_topic_partition_log_end_offset", "Offset the next appended record gets");
        let mut size =
            Family::gauge("tidelog_topic_partition_size_bytes", "Bytes of the partition's log on this broker");
        let mut segments =
            Family::gauge("tidelog_topic_partition_segments", "Segments of the partition's log on this broker");
        let mut leader = Family::gauge(
            "tidelog_topic_partition_leader",
            "The partition's leader (broker id; 0 while none is known)",
        );
        let mut leads =
            Family::gauge("tidelog_topic_partition_leader_is_local", "1 if this broker leads the partition");
        let mut replicas = Family::gauge("tidelog_topic_partition_replicas", "Replicas of the partition");
        let mut isr =
            Family::gauge("tidelog_topic_partition_in_sync_replicas", "In-sync replicas (on the partition's leader)");
        let mut under = Family::gauge(
            "tidelog_topic_partition_under_replicated_partition",
            "1 if the partition has replicas out of sync (on its leader)",
        );
        let mut term = Family::gauge("tidelog_raft_term", "The partition's Raft term");
        let mut follower = Family::gauge(
            "tidelog_raft_follower_lag_entries",
            "Entries a follower is behind the leader (on the leader)",
        );
        let mut rin =
            Family::counter("tidelog_topic_partition_records_in", "Records produced (acknowledged by this broker)");
        let mut bin = Family::counter("tidelog_topic_partition_bytes_in", "Batch payload bytes produced");
        let mut rout = Family::counter("tidelog_topic_partition_records_out", "Records served to subscribers");
        let mut bout =
            Family::counter("tidelog_topic_partition_bytes_out", "Batch payload bytes served to subscribers");
        let mut committed = Family::gauge(
            "tidelog_consumergroup_current_offset",
            "A group's committed offset (on the partition's leader)",
        );
        let mut lag = Family::gauge(
            "tidelog_consumergroup_lag",
            "High watermark minus the group's committed offset (on the partition's leader)",
        );
        let mut dirty = Family::gauge(
            "tidelog_topic_partition_cleaner_dirty_percent",
            "Compacted topics: percent of the sealed log written since its last cleaning",
        );
        let mut cleaned = Family::gauge(
            "tidelog_topic_partition_cleaner_checkpoint",
            "Compacted topics: records below this offset were compacted",
        );
        let mut under_total = 0i64;

        let groups = broker.groups_with_offsets().unwrap_or_default();
        let ids = broker.broker_ids();
        for topic in broker.topics() {
            let name = &topic.record.name;
            // Each group's committed offsets for this topic, read once per topic.
            let offsets: Vec<(String, Vec<crate::meta::StoredOffset>)> = groups
                .iter()
                .filter_map(|g| {
                    broker.committed_offsets(g, name).ok().filter(|o| !o.is_empty()).map(|o| (g.clone(), o))
                })
                .collect();
            for (log, writer) in topic.local() {
                let p = log.index();
                let labels = tp(name, p);
                let o = log.offsets();
                let (bytes, segs) = log.size_bytes();
                let lead = writer.leader();
                let leading = lead == Some(me);
                hw.push(labels.clone(), o.high_watermark.0 as i64);
                start.push(labels.clone(), o.log_start.0 as i64);
                end.push(labels.clone(), o.log_end.0 as i64);
                size.push(labels.clone(), bytes as i64);
                segments.push(labels.clone(), segs as i64);
                leader.push(labels.clone(), lead.map_or(0, |l| l as i64));
                leads.push(labels.clone(), i64::from(leading));
                let all = topic.record.replicas_in(p, ids.iter().copied());
                replicas.push(labels.clone(), all.len() as i64);
                let t = &log.traffic;
                let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as i64;
                rin.push(labels.clone(), load(&t.records_in));
                bin.push(labels.clone(), load(&t.bytes_in));
                rout.push(labels.clone(), load(&t.records_out));
                bout.push(labels.clone(), load(&t.bytes_out));
                if topic.record.settings.cleanup_policy.compacts() {
                    let c = log.cleaner_status();
                    dirty.push(labels.clone(), (c.dirty_ratio * 100.0).round() as i64);
                    cleaned.push(labels.clone(), c.cleaned_offset as i64);
                }
                let replication = writer.replication();
                if let Some(t) = replication.term {
                    term.push(labels.clone(), t as i64);
                }
                if !leading {
                    continue;
                }
                let in_sync = writer.in_sync();
                let lagging = all.iter().any(|r| !in_sync.contains(r));
                isr.push(labels.clone(), in_sync.len() as i64);
                under.push(labels.clone(), i64::from(lagging));
                under_total += i64::from(lagging);
                for (f, behind) in replication.follower_lag {
                    follower.push(with(labels.clone(), "follower", f.to_string()), behind as i64);
                }
                for (group, offs) in &offsets {
                    if let Some(c) = offs.iter().find(|c| c.partition == p) {
                        let l = with(labels.clone(), "group", group.clone());
                        committed.push(l.clone(), c.offset as i64);
                        lag.push(l, o.high_watermark.0.saturating_sub(c.offset) as i64);
                    }
                }
            }
        }
        for f in [
            &hw, &start, &end, &size, &segments, &leader, &leads, &replicas, &isr, &under, &term, &follower, &rin,
            &bin, &rout, &bout, &committed, &lag, &dirty, &cleaned,
        ] {
            f.encode(&mut encoder)?;
        }
        let mut cluster = Family::gauge("tidelog_brokers", "Brokers in the cluster");
        cluster.push(Vec::new(), ids.len() as i64);
        cluster.encode(&mut encoder)?;
        let mut under_all = Family::gauge(
            "tidelog_under_replicated_partitions",
            "Partitions this broker leads that have replicas out of sync (Kafka's UnderReplicatedPartitions)",
        );
        under_all.push(Vec::new(), under_total);
        under_all.encode(&mut encoder)?;
        if let Ok(view) = broker.describe_cluster() {
            let mut controller =
                Family::gauge("tidelog_controller", "The controller's broker id (0 while none is known)");
            controller.push(Vec::new(), view.controller.map_or(0, |c| c as i64));
            controller.encode(&mut encoder)?;
        }
        Ok(())
    }
}
