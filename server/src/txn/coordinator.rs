//! The transaction coordinator: each transactional id's state machine (`meta::txn`), driven
//! by the producer's calls, by timeouts, and by recovery.
//!
//! Every change is computed from the id's entry in the broker's table and stored with
//! `Broker::store_transaction` (compare-and-set, durable before it is visible). Calls for one
//! id are serialized by a per-id lock; a change that loses a race with another coordinator (a
//! failover) is refused as retryable `CONCURRENT_TRANSACTIONS`.
//!
//! Invariants:
//! - a transaction's outcome is decided by storing `PrepareCommit` or `PrepareAbort`; only then
//!   are markers written, and a prepared transaction only ever completes the way it was
//!   decided (roll forward), whoever completes it (this call, a retry, the background pass on a
//!   new controller after a failover or a full restart);
//! - a transaction's offsets are committed to their groups after its commit markers are
//!   written and before it is `CompleteCommit`; never for an aborted one;
//! - an abort the coordinator decides on its own (timeout, an older instance's open
//!   transaction at init, an administrator's abort) bumps the producer epoch, and its markers
//!   carry the new epoch: a batch of the older epoch still in flight is fenced at every
//!   partition, so it cannot reopen a transaction nobody will end;
//! - `Ongoing` begins only from an idle state, with the partitions and offsets emptied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::broker::route::Route;
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::meta::txn::{TxnEntry, TxnStatus};
use crate::meta::StoredOffset;

/// A transaction's timeout when the producer asks for none (Kafka's `transaction.timeout.ms`).
pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;
/// The longest timeout a producer may ask for (Kafka's `transaction.max.timeout.ms`).
pub const MAX_TIMEOUT_MS: u32 = 900_000;
/// How often the coordinator looks for expired and unfinished transactions.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Longest transactional id accepted.
const MAX_ID_LEN: usize = 255;

#[derive(Debug)]
pub struct TxnCoordinator {
    broker: Arc<Broker>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Checks a transactional id: 1-255 printable characters.
pub fn validate_id(id: &str) -> Result<(), BrokerError> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(BrokerError::InvalidArgument(format!(
            "invalid transactional id {id:?}: use 1-{MAX_ID_LEN} printable characters"
        )));
    }
    Ok(())
}

impl TxnCoordinator {
    pub fn new(broker: Arc<Broker>) -> Arc<Self> {
        Arc::new(Self { broker, locks: Mutex::default() })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(id.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    fn entry(&self, id: &str) -> Result<TxnEntry, BrokerError> {
        self.broker.transactions().get(id).ok_or_else(|| BrokerError::UnknownTransactionalId(id.to_string()))
    }

    /// Stores `new` over `old` (its version + 1).
    async fn store(&self, id: &str, old: Option<&TxnEntry>, mut new: TxnEntry) -> Result<TxnEntry, BrokerError> {
        new.version = old.map_or(0, |e| e.version) + 1;
        new.last_update_ms = now_ms();
        if self.broker.store_transaction(id, new.clone()).await? {
            Ok(new)
        } else {
            Err(BrokerError::ConcurrentTransactions(format!(
                "transactional id {id:?} changed meanwhile (a coordinator failover); retry"
            )))
        }
    }

    /// InitTransactions: a new epoch (or producer id) for `id`, after finishing whatever an
    /// older instance left: an open transaction is aborted, a prepared one completed.
    pub async fn init(&self, id: &str, timeout_ms: u32) -> Result<(i64, i16), BrokerError> {
        validate_id(id)?;
        let timeout_ms = match timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t if t > MAX_TIMEOUT_MS => {
                return Err(BrokerError::InvalidArgument(format!(
                    "transaction_timeout_ms {t} is above the broker's maximum {MAX_TIMEOUT_MS}"
                )))
            }
            t => t,
        };
        let _turn = self.lock(id).await;
        // Bounded: each round moves the id one step towards idle.
        for _ in 0..4 {
            let Some(e) = self.broker.transactions().get(id) else {
                let producer_id = self.broker.next_producer_id().await?;
                let new = TxnEntry {
                    producer_id,
                    epoch: 0,
                    status: TxnStatus::Empty,
                    timeout_ms,
                    started_at_ms: 0,
                    last_update_ms: 0,
                    partitions: Default::default(),
                    offsets: Default::default(),
                    version: 0,
                };
                let stored = self.store(id, None, new).await?;
                tracing::info!(transactional_id = id, producer_id, "transactional id registered");
                return Ok((stored.producer_id, stored.epoch));
            };
            match e.status {
                TxnStatus::Ongoing => {
                    tracing::info!(
                        transactional_id = id,
                        epoch = e.epoch,
                        "aborting an older instance's open transaction"
                    );
                    let prepared = self.prepare(id, &e, false, true).await?;
                    self.complete(id, prepared).await?;
                }
                s if s.is_prepared() => {
                    self.complete(id, e).await?;
                }
                _ => {
                    let (producer_id, epoch) = if e.epoch >= i16::MAX - 1 {
                        (self.broker.next_producer_id().await?, 0)
                    } else {
                        (e.producer_id, e.epoch + 1)
                    };
                    let new = TxnEntry {
                        producer_id,
                        epoch,
                        status: TxnStatus::Empty,
                        timeout_ms,
                        started_at_ms: 0,
                        partitions: Default::default(),
                        offsets: Default::default(),
                        ..e.clone()
                    };
                    let stored = self.store(id, Some(&e), new).await?;
                    tracing::info!(
                        transactional_id = id,
                        producer_id,
                        epoch,
                        "producer epoch bumped: older instances fenced"
                    );
                    return Ok((stored.producer_id, stored.epoch));
                }
            }
        }
        Err(BrokerError::ConcurrentTransactions(format!(
            "transactional id {id:?} is still completing an earlier transaction; retry"
        )))
    }

    /// Checks the caller is the id's current producer instance.
    fn check_producer(id: &str, e: &TxnEntry, producer_id: i64, epoch: i16) -> Result<(), BrokerError> {
        if producer_id != e.producer_id {
            return Err(BrokerError::InvalidTxnState(format!(
                "producer id {producer_id} is not transactional id {id:?}'s ({}); call InitTransactions",
                e.producer_id
            )));
        }
        if epoch < e.epoch {
            return Err(BrokerError::ProducerFenced { producer_id, epoch, current: e.epoch });
        }
        if epoch > e.epoch {
            return Err(BrokerError::InvalidTxnState(format!(
                "epoch {epoch} of transactional id {id:?} was never issued (current {})",
                e.epoch
            )));
        }
        Ok(())
    }

    /// The entry with a transaction open (begun now if the id is idle), for a change to it.
    fn opened(id: &str, e: &TxnEntry) -> Result<TxnEntry, BrokerError> {
        match e.status {
            TxnStatus::Ongoing => Ok(e.clone()),
            s if s.is_prepared() => Err(BrokerError::ConcurrentTransactions(format!(
                "transactional id {id:?}'s previous transaction is still completing; retry"
            ))),
            _ => Ok(TxnEntry {
                status: TxnStatus::Ongoing,
                started_at_ms: now_ms(),
                partitions: Default::default(),
                offsets: Default::default(),
                ..e.clone()
            }),
        }
    }

    /// AddPartitionsToTransaction: the partitions join the open transaction (which begins if
    /// none is open).
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, Vec<u32>)],
    ) -> Result<(), BrokerError> {
        let _turn = self.lock(id).await;
        let e = self.entry(id)?;
        Self::check_producer(id, &e, producer_id, epoch)?;
        for (topic, ps) in partitions {
            let t = self.broker.topic(topic)?;
            for p in ps {
                t.check_partition(*p)?;
            }
        }
        if e.status == TxnStatus::Ongoing && partitions.iter().all(|(t, ps)| ps.iter().all(|p| e.includes(t, *p))) {
            return Ok(());
        }
        let mut new = Self::opened(id, &e)?;
        for (topic, ps) in partitions {
            new.partitions.entry(topic.clone()).or_default().extend(ps.iter().copied());
        }
        self.store(id, Some(&e), new).await.map(|_| ())
    }

    /// AddOffsetsToTransaction: `group`'s offsets join the open transaction (the caller
    /// checked the group generation), replacing earlier ones of the same partitions.
    pub async fn add_offsets(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        group: &str,
        offsets: Vec<(String, Vec<StoredOffset>)>,
    ) -> Result<(), BrokerError> {
        let _turn = self.lock(id).await;
        let e = self.entry(id)?;
        Self::check_producer(id, &e, producer_id, epoch)?;
        for (topic, os) in &offsets {
            let t = self.broker.topic(topic)?;
            for o in os {
                t.check_partition(o.partition)?;
            }
        }
        let mut new = Self::opened(id, &e)?;
        let of_group = new.offsets.entry(group.to_string()).or_default();
        for (topic, os) in offsets {
            let stored = of_group.entry(topic).or_default();
            for o in os {
                stored.retain(|s| s.partition != o.partition);
                stored.push(o);
            }
            stored.sort_by_key(|o| o.partition);
        }
        self.store(id, Some(&e), new).await.map(|_| ())
    }

    /// EndTransaction: decides the open transaction (durably) and completes it. Returns how
    /// many markers are still to be written (0 normally; else the background pass goes on).
    pub async fn end(&self, id: &str, producer_id: i64, epoch: i16, commit: bool) -> Result<u32, BrokerError> {
        let _turn = self.lock(id).await;
        let e = self.entry(id)?;
        Self::check_producer(id, &e, producer_id, epoch)?;
        let wanted = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
        match e.status {
            TxnStatus::Ongoing => {
                let prepared = self.prepare(id, &e, commit, false).await?;
                self.complete(id, prepared).await
            }
            // A retry of an end that was decided already.
            s if s == wanted => self.complete(id, e).await,
            // Nothing open (nothing was sent), or a retry after it completed.
            TxnStatus::Empty => Ok(0),
            TxnStatus::CompleteCommit if commit => Ok(0),
            TxnStatus::CompleteAbort if !commit => Ok(0),
            s => Err(BrokerError::InvalidTxnState(format!(
                "cannot {} transactional id {id:?}: its transaction is {s:?} (aborted by the coordinator?); abort, or init again",
                if commit { "commit" } else { "abort" }
            ))),
        }
    }

    /// Administration: aborts `id`'s open transaction now, fencing its producer. Returns the
    /// epoch the id has afterwards.
    pub async fn abort(&self, id: &str) -> Result<i16, BrokerError> {
        let _turn = self.lock(id).await;
        let e = self.entry(id)?;
        match e.status {
            TxnStatus::Ongoing => {
                let prepared = self.prepare(id, &e, false, true).await?;
                let epoch = prepared.epoch;
                self.complete(id, prepared).await?;
                Ok(epoch)
            }
            s if s.is_prepared() => {
                let epoch = e.epoch;
                self.complete(id, e).await?;
                Ok(epoch)
            }
            s => Err(BrokerError::InvalidTxnState(format!(
                "transactional id {id:?} has no open transaction (it is {s:?})"
            ))),
        }
    }

    /// Decides an open transaction: `PrepareCommit` or `PrepareAbort`; `fence` bumps the epoch
    /// (an abort the coordinator decides on its own).
    async fn prepare(&self, id: &str, e: &TxnEntry, commit: bool, fence: bool) -> Result<TxnEntry, BrokerError> {
        let status = if commit { TxnStatus::PrepareCommit } else { TxnStatus::PrepareAbort };
        let epoch = if fence { e.epoch.saturating_add(1) } else { e.epoch };
        self.store(id, Some(e), TxnEntry { status, epoch, ..e.clone() }).await
    }

    /// Completes a prepared transaction: markers, then (commit) its offsets, then `Complete*`.
    /// Returns how many markers are still to be written (then it stays prepared).
    async fn complete(&self, id: &str, prepared: TxnEntry) -> Result<u32, BrokerError> {
        let commit = prepared.status == TxnStatus::PrepareCommit;
        let pending = super::markers::write_all(&self.broker, &prepared, commit).await;
        if pending > 0 {
            return Ok(pending);
        }
        if commit {
            for (group, topics) in &prepared.offsets {
                for (topic, offsets) in topics {
                    let t = match self.broker.topic(topic) {
                        Ok(t) => t,
                        Err(BrokerError::UnknownTopic(_) | BrokerError::TopicDeleted(_)) => continue,
                        Err(e) => return Err(e),
                    };
                    match self.broker.commit_offsets(group, &t, offsets.clone()).await {
                        Ok(()) | Err(BrokerError::TopicDeleted(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let status = if commit { TxnStatus::CompleteCommit } else { TxnStatus::CompleteAbort };
        let done = TxnEntry {
            status,
            started_at_ms: 0,
            partitions: Default::default(),
            offsets: Default::default(),
            ..prepared.clone()
        };
        self.store(id, Some(&prepared), done).await?;
        tracing::debug!(transactional_id = id, commit, "transaction completed");
        Ok(0)
    }

    /// One pass of the background work, on the coordinator only: aborts transactions open
    /// longer than their timeout, completes prepared ones (after a failover, a restart, or
    /// markers that could not be written). Returns how many transactions it acted on.
    pub async fn sweep(&self) -> usize {
        if !matches!(self.broker.coordinator_route(crate::broker::route::Origin::Forwarded).await, Ok(Route::Here)) {
            return 0;
        }
        let now = now_ms();
        let mut acted = 0;
        for id in self.broker.transactions().needing_attention(now) {
            let _turn = self.lock(&id).await;
            // As it is now, under the lock (a call may have changed it meanwhile).
            let Some(e) = self.broker.transactions().get(&id) else { continue };
            let result = match e.status {
                TxnStatus::Ongoing if e.expired(now) => {
                    tracing::warn!(transactional_id = %id, producer_id = e.producer_id, timeout_ms = e.timeout_ms, "transaction timed out; aborting it");
                    match self.prepare(&id, &e, false, true).await {
                        Ok(prepared) => self.complete(&id, prepared).await,
                        Err(err) => Err(err),
                    }
                }
                s if s.is_prepared() => self.complete(&id, e).await,
                _ => continue,
            };
            acted += 1;
            if let Err(err) = result {
                tracing::warn!(transactional_id = %id, error = %err, "transaction not completed yet; retrying");
            }
        }
        acted
    }
}

/// Runs [`TxnCoordinator::sweep`] every [`SWEEP_INTERVAL`] until the broker shuts down.
pub fn spawn_sweeper(coordinator: Arc<TxnCoordinator>) {
    let mut shutdown = coordinator.broker.shutdown_signal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { coordinator.sweep().await; }
                _ = shutdown.changed() => return,
            }
        }
    });
}
