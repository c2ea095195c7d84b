//! The transactional producer (Kafka's `transactional.id`, KIP-98/447): the client half of
//! exactly once. The broker's coordinator keeps the transaction; this keeps which partitions
//! already joined the open one, so each is added once (`AddPartitionsToTransaction`) before
//! its first batch is sent.
//!
//! ```text
//! init_transactions ─▶ begin_transaction ─▶ send… / send_offsets_to_transaction
//!        (fences older instances)            │ first record to a partition: add it first
//!                                            ▼
//!                          commit_transaction (flush, then EndTransaction(commit))
//!                          abort_transaction  (flush, then EndTransaction(abort))
//! ```
//!
//! Errors: PRODUCER_FENCED means another instance with the same id initialised (or the
//! coordinator aborted this one's transaction after its timeout): this producer can do nothing
//! more; a failed `send` or commit leaves the transaction to abort.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tidelog_proto::v1::transaction_service_client::TransactionServiceClient;
use tidelog_proto::v1::{
    AddOffsetsToTransactionRequest, AddPartitionsToTransactionRequest, EndTransactionRequest, InitTransactionsRequest,
    PartitionOffset, TopicOffsets, TopicPartitions,
};

use super::Producer;
use crate::Error;

/// How long a coordinator call is retried while its answer is retryable (a coordinator
/// failover, an earlier transaction still completing).
const COORDINATOR_RETRY: Duration = Duration::from_secs(30);

/// A consumer's group membership, for offsets sent in a transaction (KIP-447: a member that
/// lost its partitions cannot commit them). `GroupConsumer::group_metadata` gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub group: String,
    pub generation: u32,
    pub member_id: String,
}

#[derive(Debug, Default)]
struct Local {
    initialised: bool,
    open: bool,
    /// Partitions that joined the open transaction.
    joined: HashSet<(String, u32)>,
}

/// Where coordinator calls go: every broker's address, the one in use, and its client.
#[derive(Debug, Default)]
struct Coordinators {
    addrs: Vec<String>,
    at: usize,
    client: Option<crate::Client>,
}

#[derive(Debug)]
pub(crate) struct TxnState {
    id: String,
    local: tokio::sync::Mutex<Local>,
    /// Every broker's address (learnt at init) and the one coordinator calls go to now: any
    /// broker passes them on to the coordinator, and a broker that cannot be reached is
    /// skipped for the next.
    brokers: std::sync::Mutex<Coordinators>,
    /// A batch of the open transaction failed: it can only be aborted.
    pub(crate) failed: AtomicBool,
}

impl TxnState {
    pub(crate) fn new(id: String) -> Self {
        Self { id, local: Default::default(), failed: AtomicBool::new(false), brokers: Default::default() }
    }

    /// The partition a record goes to (`partition`, or the topic's sticky one), added to the
    /// open transaction if it is not yet.
    pub(crate) async fn join(
        &self,
        producer: &Producer,
        topic: &str,
        partitions: u32,
        partition: Option<u32>,
    ) -> Result<u32, Error> {
        let mut local = self.local.lock().await;
        if !local.open {
            return Err(Error::InvalidArgument("no transaction is open: call begin_transaction first".into()));
        }
        let p = match partition {
            Some(p) => p,
            None => {
                let mut acc = producer.shared.lock();
                *acc.sticky.entry(topic.to_string()).or_insert_with(|| rand::random::<u32>() % partitions)
            }
        };
        if !local.joined.contains(&(topic.to_string(), p)) {
            let req = AddPartitionsToTransactionRequest {
                transactional_id: self.id.clone(),
                producer_id: producer.producer_id(),
                producer_epoch: producer.shared.producer_epoch.load(Ordering::Acquire),
                partitions: vec![TopicPartitions { topic: topic.to_string(), partitions: vec![p] }],
            };
            producer
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.add_partitions_to_transaction(req).await.map(|_| ()) }
                })
                .await?;
            local.joined.insert((topic.to_string(), p));
        }
        Ok(p)
    }
}

impl Producer {
    fn txn(&self) -> Result<&TxnState, Error> {
        self.shared.txn.as_ref().ok_or_else(|| Error::InvalidArgument("the producer has no transactional_id".into()))
    }

    /// The coordinator's client through the broker calls go to now.
    fn coordinator(&self) -> TransactionServiceClient<crate::client::Channel> {
        let client = self.txn().ok().and_then(|t| {
            let mut to = t.brokers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if to.client.is_none() {
                let addr = to.addrs.get(to.at % to.addrs.len().max(1))?;
                to.client = self.shared.client.to_broker(addr).ok();
            }
            to.client.clone()
        });
        TransactionServiceClient::new(client.unwrap_or_else(|| self.shared.client.clone()).channel())
    }

    /// Calls the coordinator again while its answer is retryable, for up to
    /// [`COORDINATOR_RETRY`]; a broker that cannot be reached (no answer of its own) is left
    /// for the next one.
    async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut(TransactionServiceClient<crate::client::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + COORDINATOR_RETRY;
        let mut backoff = Duration::from_millis(20);
        loop {
            match call(self.coordinator()).await {
                Err(s)
                    if Error::Status(s.clone()).is_retryable() && tokio::time::Instant::now() + backoff < deadline =>
                {
                    tracing::debug!(error = %s.message(), "transaction coordinator call failed; retrying");
                    if s.metadata().get("x-tidelog-error-code").is_none() {
                        if let Ok(txn) = self.txn() {
                            let mut to = txn.brokers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            to.at += 1;
                            to.client = None;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                other => return other.map_err(Error::Status),
            }
        }
    }

    fn ids(&self) -> (i64, i32) {
        (self.producer_id(), self.shared.producer_epoch.load(Ordering::Acquire))
    }

    /// Registers the transactional id with the coordinator and gets this instance's producer
    /// epoch, fencing every older instance with the same id; an open transaction of theirs is
    /// aborted (a prepared one completed) first. Call once, before the first transaction.
    pub async fn init_transactions(&self) -> Result<(), Error> {
        let txn = self.txn()?;
        let mut local = txn.local.lock().await;
        let timeout_ms = u32::try_from(self.shared.config.transaction_timeout.as_millis()).unwrap_or(u32::MAX);
        let req = InitTransactionsRequest { transactional_id: txn.id.clone(), transaction_timeout_ms: timeout_ms };
        let brokers = self.shared.client.brokers().await.unwrap_or_else(|_| vec![self.shared.client.address().into()]);
        *txn.brokers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Coordinators { addrs: brokers, at: 0, client: None };
        let resp = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.init_transactions(req).await }
            })
            .await?
            .into_inner();
        self.shared.producer_id.store(resp.producer_id, Ordering::Release);
        self.shared.producer_epoch.store(resp.producer_epoch, Ordering::Release);
        local.initialised = true;
        Ok(())
    }

    /// Begins a transaction (locally: the coordinator learns of it with its first partition
    /// or offsets).
    pub async fn begin_transaction(&self) -> Result<(), Error> {
        let txn = self.txn()?;
        let mut local = txn.local.lock().await;
        if !local.initialised {
            return Err(Error::InvalidArgument("call init_transactions first".into()));
        }
        if local.open {
            return Err(Error::InvalidArgument("a transaction is open already".into()));
        }
        local.open = true;
        local.joined.clear();
        txn.failed.store(false, Ordering::Release);
        Ok(())
    }

    /// Adds consumed positions (`(topic, partition, next offset)`) of `group` to the open
    /// transaction: they become the group's committed offsets if, and only if, it commits.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[(String, u32, u64)],
        group: &ConsumerGroupMetadata,
    ) -> Result<(), Error> {
        let txn = self.txn()?;
        let local = txn.local.lock().await;
        if !local.open {
            return Err(Error::InvalidArgument("no transaction is open: call begin_transaction first".into()));
        }
        let mut by_topic: Vec<TopicOffsets> = Vec::new();
        for (topic, partition, offset) in offsets {
            let po = PartitionOffset { partition: *partition, offset: *offset, metadata: String::new() };
            match by_topic.iter_mut().find(|t| t.topic == *topic) {
                Some(t) => t.offsets.push(po),
                None => by_topic.push(TopicOffsets { topic: topic.clone(), offsets: vec![po] }),
            }
        }
        let (producer_id, producer_epoch) = self.ids();
        let req = AddOffsetsToTransactionRequest {
            transactional_id: txn.id.clone(),
            producer_id,
            producer_epoch,
            group: group.group.clone(),
            offsets: by_topic,
            generation: group.generation,
            member_id: group.member_id.clone(),
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.add_offsets_to_transaction(req).await.map(|_| ()) }
        })
        .await
    }

    /// Sends every record of the open transaction, then commits it: its records become visible
    /// to read_committed consumers and its offsets are committed. Fails (the transaction must
    /// then be aborted) if a record of it could not be delivered.
    pub async fn commit_transaction(&self) -> Result<(), Error> {
        self.end(true).await
    }

    /// Aborts the open transaction: read_committed consumers never see its records, its
    /// offsets are not committed.
    pub async fn abort_transaction(&self) -> Result<(), Error> {
        self.end(false).await
    }

    async fn end(&self, commit: bool) -> Result<(), Error> {
        let txn = self.txn()?;
        let mut local = txn.local.lock().await;
        if !local.open {
            return Err(Error::InvalidArgument("no transaction is open".into()));
        }
        self.flush().await;
        if commit && txn.failed.load(Ordering::Acquire) {
            return Err(Error::Delivery("a record of the transaction was not delivered: abort the transaction".into()));
        }
        let (producer_id, producer_epoch) = self.ids();
        let req = EndTransactionRequest { transactional_id: txn.id.clone(), producer_id, producer_epoch, commit };
        let ended = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.end_transaction(req).await.map(|_| ()) }
            })
            .await;
        if ended.is_ok() || !commit {
            // After an abort (even a failed one: the coordinator's timeout ends it) a new
            // transaction may begin.
            local.open = false;
            local.joined.clear();
        }
        ended
    }
}
