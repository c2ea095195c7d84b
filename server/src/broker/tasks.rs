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

async fn flush_loop(broker: Arc<Broker>) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(FLUSH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        for p in broker.partitions_where(Partition::may_need_sync) {
            if let Err(e) = p.sync_if_due().await {
                tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "interval fsync failed");
            }
        }
    }
}
