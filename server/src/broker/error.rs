//! The broker's error type. `api/error.rs` maps each variant to one stable error code and gRPC
//! status (the one table clients rely on).

use crate::log::LogError;
use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic '{0}' does not exist; create it first (tidelog topic create {0})")]
    UnknownTopic(String),
    #[error("partition {partition} does not exist: topic '{topic}' has partitions 0..{count}")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("batch of {size} bytes exceeds the topic's max_batch_bytes ({max}); send smaller batches or raise max_batch_bytes")]
    BatchTooLarge { size: usize, max: u32 },
    #[error("corrupt batch: {0}")]
    CorruptBatch(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("topic '{0}' was deleted")]
    TopicDeleted(String),
    #[error("the broker is shutting down; retry after it restarts")]
    ShuttingDown,
    #[error("producer {producer_id}: expected sequence {expected}, got {got}; resend the missing batches first")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}: another instance took over this producer id")]
    ProducerFenced { producer_id: i64, epoch: i16, current: i16 },
    #[error("producer {producer_id} is unknown on this partition and the batch starts at sequence {base_sequence}, not 0: call InitProducer again")]
    UnknownProducer { producer_id: i64, base_sequence: i32 },
    #[error("{0}")]
    IllegalGeneration(String),
    #[error("{0}")]
    InconsistentGroup(String),
    #[error("partition {partition} of topic '{topic}' stopped after an fsync failed; check the disk, then restart the broker")]
    PartitionFailed { topic: String, partition: u32 },
    /// This broker does not lead what the request needs (a partition, or the metadata group);
    /// `leader` is the leader's broker id and client address, when known.
    #[error("this broker does not lead {what}; {}", leader_hint(.leader))]
    NotLeader { what: String, leader: Option<(u64, String)> },
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("its leader is broker {id} at {addr}: send it there"),
        None => "no leader is elected right now: retry shortly".to_string(),
    }
}
