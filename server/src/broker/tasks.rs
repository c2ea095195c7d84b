//! Background work of the broker: retention, the log cleaner and interval fsync. Each loop ends when the
//! broker shuts down. A failure is logged and retried at the next tick; it never stops the
//! loop.

use std::sync::Arc;
use std::time::Duration;

use super::seam::PartitionWriter;
use super::Broker;
use crate::clock::now_ms;
use crate::partition::Partition;

/// How often the interval flusher looks for partitions whose fsync interval elapsed.
const FLUSH_TICK: Duration = Duration::from_millis(20);

/// Starts the background loops.
pub fn spawn(broker: &Arc<Broker>) {
    tokio::spawn(retention_loop(Arc::clone(broker)));
    tokio::spawn(flush_loop(Arc::clone(broker)));
    tokio::spawn(cleaner_loop(Arc::clone(broker)));
}

/// The log cleaner: each tick, one cleaning per partition of a compacted topic that is dirty
/// enough (`partition::compaction`), one partition at a time, so the cleaner's memory (one
/// key map) and I/O stay bounded.
async fn cleaner_loop(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown_signal();
    let options = broker.options().cleaner.clone();
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for topic in broker.topics() {
            let Some(policy) = topic.record.settings.compaction() else { continue };
            for (p, writer) in topic.local() {
                match writer.compact(now_ms(), policy, &options, false).await {
                    Ok(Some(s)) => {
                        let m = crate::telemetry::metrics::instruments();
                        m.cleaner_passes.inc();
                        m.cleaner_bytes_read.inc_by(s.bytes_read);
                        m.cleaner_bytes_written.inc_by(s.bytes_written);
                        m.cleaner_records_removed.inc_by(s.records_removed);
                        m.cleaner_pass_seconds.observe(s.elapsed_ms as f64 / 1000.0);
                        tracing::info!(
                            topic = p.topic(),
                            partition = p.index(),
                            segments = s.segments,
                            bytes_read = s.bytes_read,
                            bytes_written = s.bytes_written,
                            records_removed = s.records_removed,
                            cleaned_offset = s.cleaned_offset,
                            ms = s.elapsed_ms,
                            "compacted"
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = p.topic(), partition = p.index(), error = %e, "compaction failed; retried next pass")
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

async fn retention_loop(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(broker.options().retention_check_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for topic in broker.topics() {
            for (p, writer) in topic.local() {
                retain(p, writer.as_ref()).await;
            }
        }
    }
}

/// One retention pass over one partition, by its writer (a replicated one goes through Raft:
/// snapshot, purge, then delete only below the durable purge point).
async fn retain(p: &Partition, writer: &dyn PartitionWriter) {
    match writer.retain(now_ms()).await {
        Ok(out) if out.segments_deleted > 0 => {
            tracing::info!(topic = p.topic(), partition = p.index(), segments = out.segments_deleted, bytes = out.bytes_deleted, log_start = %p.offsets().log_start, "retention deleted segments");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "retention failed"),
    }
}

/// The interval flusher. Invariant: every partition with unsynced bytes is in `pending`, or
/// was written after `seen` was read (the write counter moved, so the next tick looks at every
/// partition again). A partition leaves `pending` once synced, or closed.
async fn flush_loop(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(FLUSH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    let mut pending: Vec<Arc<Partition>> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Read before the pass: a write after this moves it again.
        let writes = crate::partition::writes_so_far();
        if seen != Some(writes) {
            seen = Some(writes);
            pending = broker.partitions_where(Partition::may_need_sync);
        }
        for p in &pending {
            if let Err(e) = p.sync_if_due().await {
                tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "interval fsync failed");
            }
        }
        pending.retain(|p| p.check_open().is_ok() && p.may_need_sync());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tidelog_proto::v1::{FsyncPolicy, TopicConfig};

    use super::*;
    use crate::broker::local::LocalControl;
    use crate::broker::route::Origin;
    use crate::broker::seam::NewTopic;
    use crate::broker::BrokerOptions;
    use crate::log::AppendBatch;

    fn one_record(p: &Partition, value: &[u8]) {
        let batch = AppendBatch {
            payload: value,
            record_count: 1,
            compression: 0,
            payload_crc: tidelog_proto::checksum::crc32c(value),
            raft: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            flags: 0,
        };
        p.append(batch, now_ms()).unwrap();
    }

    /// Polls `synced` until it holds, for at most 5 s.
    async fn eventually_synced(what: &str, synced: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !synced() {
            assert!(Instant::now() < deadline, "{what}: not fsynced within 5 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The flusher looks at partitions again only after a write: each write below comes after
    /// the flusher found nothing left to sync (so it holds no pending partition), and must still
    /// be fsynced within the interval, with no further write to prompt it.
    #[tokio::test]
    async fn the_interval_flusher_finds_every_write_without_scanning_idle_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(BrokerOptions::for_test(dir.path())).unwrap());
        broker.set_control(LocalControl::start(&broker).unwrap()).unwrap();
        let config = TopicConfig {
            fsync_policy: FsyncPolicy::Interval as i32,
            fsync_interval_ms: Some(30),
            ..TopicConfig::default()
        };
        let new = NewTopic { name: "t".into(), partitions: 8, config: Some(config), ..NewTopic::default() };
        broker.create_topic(new, Origin::Client).await.unwrap();
        tokio::spawn(flush_loop(Arc::clone(&broker)));
        let partitions = broker.all_partitions();
        assert_eq!(partitions.len(), 8);
        for (round, p) in partitions.iter().enumerate() {
            one_record(p, format!("round-{round}").as_bytes());
            eventually_synced(&format!("partition {}", p.index()), || !p.may_need_sync()).await;
            // Idle for several flusher ticks (its pending list empty) before the next write.
            tokio::time::sleep(FLUSH_TICK * 3).await;
        }
        // Two partitions at once, one written after the other's sync was picked up.
        one_record(&partitions[0], b"a");
        one_record(&partitions[7], b"b");
        eventually_synced("both", || partitions.iter().all(|q| !q.may_need_sync())).await;
    }

    /// Under fsync=never the flusher fsyncs nothing but starts writeback once a partition has
    /// `EARLY_SYNC_BYTES` (1 MiB) written since the last time: less than that is left to the
    /// kernel, more is picked up without another write to prompt it.
    #[tokio::test]
    async fn under_fsync_never_the_flusher_starts_writeback_every_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(BrokerOptions::for_test(dir.path())).unwrap());
        broker.set_control(LocalControl::start(&broker).unwrap()).unwrap();
        let config = TopicConfig { fsync_policy: FsyncPolicy::Never as i32, ..TopicConfig::default() };
        let new = NewTopic { name: "t".into(), partitions: 1, config: Some(config), ..NewTopic::default() };
        broker.create_topic(new, Origin::Client).await.unwrap();
        tokio::spawn(flush_loop(Arc::clone(&broker)));
        let p = broker.all_partitions().pop().unwrap();
        let value = vec![7u8; 64 << 10];
        one_record(&p, &value);
        assert!(!p.may_need_sync(), "64 KiB written: nothing for the flusher yet");
        for _ in 0..16 {
            one_record(&p, &value);
        }
        assert!(p.may_need_sync(), "over 1 MiB written: writeback is due");
        eventually_synced("writeback started", || !p.may_need_sync()).await;
    }
}
