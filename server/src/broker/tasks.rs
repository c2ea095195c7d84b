//! Background work of the broker: retention and interval fsync. Each loop ends when the
//! broker shuts down. A failure is logged and retried at the next tick; it never stops the
//! loop.

use std::sync::Arc;
use std::time::Duration;

use super::partition::Partition;
use super::{now_ms, Broker};
use crate::cluster::Replica;

/// How often the interval flusher looks for partitions whose fsync interval elapsed.
const FLUSH_TICK: Duration = Duration::from_millis(20);
/// How long one replicated partition's retention may wait for its snapshot and purge.
const RAFT_RETENTION_WAIT: Duration = Duration::from_secs(10);

/// Starts the background loops.
pub fn spawn(broker: &Arc<Broker>) {
    tokio::spawn(retention_loop(Arc::clone(broker)));
    tokio::spawn(flush_loop(Arc::clone(broker)));
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
            for (p, replica) in topic.local() {
                retain(p, replica).await;
            }
        }
    }
}

/// One retention pass over one partition; a replicated one goes through Raft (snapshot,
/// purge, then delete only below the durable purge point).
async fn retain(p: &Partition, replica: Option<&Replica>) {
    let outcome = match replica {
        Some(r) => crate::raft::retention::apply_retention(&r.raft, &r.store, p, now_ms(), RAFT_RETENTION_WAIT)
            .await
            .map_err(|e| e.to_string()),
        None => p.apply_retention(now_ms(), None).map_err(|e| e.to_string()),
    };
    match outcome {
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
        for p in broker.all_partitions() {
            if let Err(e) = p.sync_if_due().await {
                tracing::error!(topic = p.topic(), partition = p.index(), error = %e, "interval fsync failed");
            }
        }
    }
}
