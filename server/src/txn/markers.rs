//! Writing transaction markers: one commit or abort marker (`log::format::FLAG_TXN_MARKER`)
//! on every partition of a transaction, by its leader, acks=all.
//!
//! A marker is written where the partition is led: through this broker's `PartitionWriter` if
//! it leads it, else by `WriteTransactionMarkers` on the broker that does (found from the
//! local replica's view of the leader, or by trying the partition's replicas in turn). Writing
//! a marker twice is harmless (the second finds no open transaction), and a marker refused as
//! fenced means a newer epoch's marker is already there: both count as done.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_proto::v1::transaction_service_client::TransactionServiceClient;
use tidelog_proto::v1::{ErrorCode, TopicPartitions, WriteTransactionMarkersRequest};

use crate::broker::route::forwarded_request;
use crate::broker::seam::Acks;
use crate::broker::Broker;
use crate::error::{error_code, BrokerError};
use crate::log::format::{FLAG_TRANSACTIONAL, FLAG_TXN_ABORT, FLAG_TXN_MARKER};
use crate::log::AppendBatch;
use crate::meta::txn::TxnEntry;

/// How long one marker may take, across retries, in one attempt of the coordinator.
pub const MARKER_WAIT: Duration = Duration::from_secs(10);
/// Pause between tries of one marker.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A marker to write: for this producer and epoch, commit or abort.
#[derive(Clone, Copy, Debug)]
pub struct Marker {
    pub producer_id: i64,
    pub epoch: i16,
    pub commit: bool,
}

impl Marker {
    fn payload(self) -> &'static [u8] {
        if self.commit {
            b"commit"
        } else {
            b"abort"
        }
    }

    fn flags(self) -> u16 {
        FLAG_TXN_MARKER | FLAG_TRANSACTIONAL | if self.commit { 0 } else { FLAG_TXN_ABORT }
    }
}

/// Writes the markers of `entry`'s transaction on all its partitions, concurrently; returns
/// how many could not be written within [`MARKER_WAIT`] (0: all written).
pub async fn write_all(broker: &Arc<Broker>, entry: &TxnEntry, commit: bool) -> u32 {
    let marker = Marker { producer_id: entry.producer_id, epoch: entry.epoch, commit };
    let writes = entry.partitions.iter().flat_map(|(topic, ps)| {
        ps.iter().map(move |p| async move {
            let done = tokio::time::timeout(MARKER_WAIT, write_until_done(broker, topic, *p, marker)).await;
            match done {
                Ok(Ok(())) => 0u32,
                Ok(Err(e)) => {
                    tracing::warn!(topic, partition = p, error = %e, "transaction marker not written; retrying later");
                    1
                }
                Err(_) => {
                    tracing::warn!(topic, partition = p, "transaction marker not written in time; retrying later");
                    1
                }
            }
        })
    });
    futures::future::join_all(writes).await.into_iter().sum()
}

/// Writes one marker, retrying past leader changes until it is written (or cannot be).
async fn write_until_done(broker: &Arc<Broker>, topic: &str, p: u32, marker: Marker) -> Result<(), BrokerError> {
    let mut next_replica = 0usize;
    let mut leader_hint: Option<u64> = None;
    loop {
        let target = match leader_hint.take() {
            Some(id) => Some(id),
            None => {
                let t = match broker.topic(topic) {
                    Ok(t) => t,
                    // The topic went: nothing to mark.
                    Err(BrokerError::UnknownTopic(_) | BrokerError::TopicDeleted(_)) => return Ok(()),
                    Err(e) => return Err(e),
                };
                match t.held(p) {
                    Ok((_, writer)) => writer.leader(),
                    Err(_) => {
                        let replicas = t.record.replicas_of(p);
                        next_replica += 1;
                        replicas.get(next_replica % replicas.len().max(1)).copied()
                    }
                }
            }
        };
        let result = match target {
            Some(id) if id == broker.node_id() => write_here(broker, topic, p, marker).await,
            Some(id) => write_there(broker, id, topic, p, marker).await,
            None => Err(BrokerError::NotLeader { what: format!("partition {p} of '{topic}'"), leader: None }),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(BrokerError::ProducerFenced { .. }) => return Ok(()), // a newer marker is there
            Err(BrokerError::UnknownTopic(_) | BrokerError::TopicDeleted(_)) => return Ok(()),
            Err(BrokerError::NotLeader { leader, .. }) => {
                leader_hint = leader.map(|(id, _)| id);
            }
            Err(e) if is_retryable(&e) => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

fn is_retryable(e: &BrokerError) -> bool {
    matches!(
        error_code(e),
        ErrorCode::NotLeader | ErrorCode::ShuttingDown | ErrorCode::StorageError | ErrorCode::ConcurrentTransactions
    )
}

/// Writes one marker through this broker's writer of the partition (acks=all).
pub async fn write_here(broker: &Broker, topic: &str, p: u32, marker: Marker) -> Result<(), BrokerError> {
    let t = broker.topic(topic)?;
    let (_, writer) = t.held(p)?;
    let payload = Bytes::from_static(marker.payload());
    let batch = AppendBatch {
        payload: &payload,
        record_count: 1,
        compression: 0,
        payload_crc: tidelog_proto::checksum::crc32c(&payload),
        raft: None,
        producer_id: marker.producer_id,
        producer_epoch: marker.epoch,
        base_sequence: -1,
        flags: marker.flags(),
    };
    let answer = writer.write(batch, &payload, Acks::All).await?;
    match answer.await? {
        Ok(_) => Ok(()),
        Err(rejected) if rejected.code == ErrorCode::ProducerFenced as i32 => {
            Err(BrokerError::ProducerFenced { producer_id: marker.producer_id, epoch: marker.epoch, current: -1 })
        }
        Err(rejected) => Err(BrokerError::InvalidTxnState(rejected.message)),
    }
}

/// Asks broker `id` to write one marker.
async fn write_there(broker: &Broker, id: u64, topic: &str, p: u32, marker: Marker) -> Result<(), BrokerError> {
    let mut client = TransactionServiceClient::new(broker.channel_to(id)?);
    let req = WriteTransactionMarkersRequest {
        producer_id: marker.producer_id,
        producer_epoch: i32::from(marker.epoch),
        commit: marker.commit,
        partitions: vec![TopicPartitions { topic: topic.to_string(), partitions: vec![p] }],
    };
    match client.write_transaction_markers(forwarded_request(req, Some(MARKER_WAIT))).await {
        Ok(_) => Ok(()),
        Err(s) => Err(match s.metadata().get(crate::error::ERROR_CODE_METADATA).and_then(|v| v.to_str().ok()) {
            Some(code) if code == ErrorCode::ProducerFenced.as_str_name() => {
                BrokerError::ProducerFenced { producer_id: marker.producer_id, epoch: marker.epoch, current: -1 }
            }
            Some(code) if code == ErrorCode::UnknownTopic.as_str_name() => BrokerError::UnknownTopic(topic.into()),
            _ if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::DeadlineExceeded => {
                BrokerError::NotLeader { what: format!("partition {p} of '{topic}' ({})", s.message()), leader: None }
            }
            _ => BrokerError::Forwarded(s),
        }),
    }
}
