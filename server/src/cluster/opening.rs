//! Opening a topic's replicas on this broker without hiding the topic meanwhile.
//!
//! A broker restarting with thousands of replicas needs seconds to reopen them all (each
//! group's log, Raft state and core: about 0.6 ms of CPU; 10,000 take 5–8 s on two cores).
//! Its topics are therefore published first ([`Pending::new`], then the caller publishes
//! [`Pending::slots`]), with an [`PartitionSlot::Opening`] slot for every replica held here;
//! [`Pending::open`] then opens them in partition order, [`CONCURRENT_OPENS`] at a time, and
//! a request for one not open yet moves it to the front ([`OpenQueue::hurry`]). So a client
//! waits for one group's opening, not for all of them: until its replica is open a partition
//! is answered as if held elsewhere (a retryable NOT_LEADER naming another replica). The
//! same path opens a new topic's replicas and a grown topic's new partitions.
//!
//! Invariants:
//! - each replica is opened at most once (`Order::taken`), and each pending slot is settled
//!   exactly once, to `Here` or (its replica could not open) `Elsewhere`, as soon as its
//!   opening ends; `open` returns the settled slots for the caller to republish, so no
//!   `Opening` slot outlives it;
//! - the metadata applier applies nothing while `open` runs (it awaits it), so no other
//!   change to the topic races the republish;
//! - never: open a replica of a partition this broker does not host (`open_slot` checks the
//!   placement again).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;

use super::replica::{self, GroupSpec};
use super::writer::RaftWriter;
use super::{group_id, Cluster, Hosted};
use crate::broker::topic::{OpenQueue, PendingSlot};
use crate::broker::{Broker, PartitionSlot};
use crate::error::BrokerError;
use crate::meta::TopicRecord;

/// Replicas opened at once: opening is mostly file and Raft-state I/O with short waits
/// between, so a few in flight overlap them; more would only queue.
pub(super) const CONCURRENT_OPENS: usize = 8;

/// Partitions `from..record.partitions` of a topic, published before their replicas here are
/// open.
pub(super) struct Pending {
    topic_id: u64,
    record: TopicRecord,
    from: u32,
    slots: Vec<PartitionSlot>,
    order: Arc<Order>,
}

impl Pending {
    /// The slots of partitions `from..` of `record`: `Opening` where this broker hosts the
    /// partition, else where it lives. Opens nothing.
    pub(super) fn new(cluster: &Cluster, topic_id: u64, record: &TopicRecord, from: u32) -> Self {
        let me = cluster.node_id();
        let brokers = cluster.brokers();
        let order = Arc::new(Order::new(from, record.partitions));
        let queue: Arc<dyn OpenQueue> = order.clone();
        let slots = (from..record.partitions)
            .map(|p| {
                let hosts = record.hosts_in(p, record.replicas_in(p, brokers.keys().copied()).into_iter());
                if !hosts.contains(&me) {
                    return super::reassign::elsewhere(cluster, record, p);
                }
                order.hold(p);
                let others = hosts.iter().filter(|h| **h != me).filter_map(|h| cluster.leader_hint(Some(*h))).collect();
                PartitionSlot::Opening(Arc::new(PendingSlot::new(p, others, Arc::clone(&queue))))
            })
            .collect();
        Self { topic_id, record: record.clone(), from, slots, order }
    }

    pub(super) fn record(&self) -> &TopicRecord {
        &self.record
    }

    pub(super) fn topic_id(&self) -> u64 {
        self.topic_id
    }

    /// The slots to publish while the replicas open (they settle in place as each opens).
    pub(super) fn slots(&self) -> Vec<PartitionSlot> {
        self.slots.clone()
    }

    /// Opens every replica held here (hurried ones first) and returns the settled slots of
    /// partitions `from..`. A replica that cannot be opened (out of file descriptors, a bad
    /// disk) is left to the other replicas: its slot sends clients to them, and the failure
    /// is logged once for the topic, so one broker's trouble does not hide a committed topic.
    pub(super) async fn open(self, broker: &Broker, cluster: &Cluster) -> Vec<PartitionSlot> {
        let Pending { topic_id, record, from, slots, order } = self;
        let (slots, record) = (&slots, &record);
        let picks = futures::stream::iter(std::iter::from_fn(|| order.take()));
        let failures: Vec<(u32, BrokerError)> = picks
            .map(|p| async move {
                let result = open_slot(broker, cluster, topic_id, record, p).await;
                let (slot, failure) = match result {
                    Ok(slot) => (slot, None),
                    Err(e) => (super::reassign::elsewhere(cluster, record, p), Some((p, e))),
                };
                if let Some(PartitionSlot::Opening(pending)) = slots.get((p - from) as usize) {
                    pending.settle(slot);
                }
                failure
            })
            .buffer_unordered(CONCURRENT_OPENS)
            .filter_map(|f| async move { f })
            .collect()
            .await;
        if let Some((first, error)) = failures.iter().min_by_key(|(p, _)| *p) {
            tracing::error!(
                topic = %record.name,
                failed = failures.len(),
                first_partition = first,
                %error,
                "replicas could not be opened on this broker; the other replicas serve those partitions"
            );
        }
        let hurried = order.hurried();
        if hurried > 0 {
            tracing::info!(topic = %record.name, hurried, "replicas opened early for clients that asked");
        }
        (from..)
            .zip(slots)
            .map(|(p, slot)| match slot {
                PartitionSlot::Opening(pending) => {
                    pending.settled().cloned().unwrap_or_else(|| super::reassign::elsewhere(cluster, record, p))
                }
                slot => slot.clone(),
            })
            .collect()
    }
}

/// The order replicas open in: those clients asked for first, then partition order.
#[derive(Debug)]
struct Order {
    from: u32,
    state: Mutex<OrderState>,
}

#[derive(Debug, Default)]
struct OrderState {
    /// Partitions asked for, oldest first (each at most once).
    urgent: VecDeque<u32>,
    /// The next partition in partition order.
    next: u32,
    /// Per partition from `from`: hosted here (to open), taken (opening or open), hurried.
    hosted: Vec<bool>,
    taken: Vec<bool>,
    hurried: Vec<bool>,
}

impl Order {
    fn new(from: u32, to: u32) -> Self {
        let n = to.saturating_sub(from) as usize;
        let state = OrderState {
            urgent: VecDeque::new(),
            next: from,
            hosted: vec![false; n],
            taken: vec![false; n],
            hurried: vec![false; n],
        };
        Self { from, state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index(&self, p: u32) -> Option<usize> {
        p.checked_sub(self.from).map(|i| i as usize)
    }

    fn hold(&self, p: u32) {
        let Some(i) = self.index(p) else { return };
        if let Some(h) = self.lock().hosted.get_mut(i) {
            *h = true;
        }
    }

    /// The next replica to open, marked taken; `None` once every hosted one is.
    fn take(&self) -> Option<u32> {
        let mut s = self.lock();
        while let Some(p) = s.urgent.pop_front() {
            let i = (p - self.from) as usize;
            if !s.taken[i] {
                s.taken[i] = true;
                return Some(p);
            }
        }
        while (s.next - self.from) < s.hosted.len() as u32 {
            let (p, i) = (s.next, (s.next - self.from) as usize);
            s.next += 1;
            if s.hosted[i] && !s.taken[i] {
                s.taken[i] = true;
                return Some(p);
            }
        }
        None
    }

    fn hurried(&self) -> usize {
        self.lock().hurried.iter().filter(|h| **h).count()
    }
}

impl OpenQueue for Order {
    fn hurry(&self, partition: u32) {
        let Some(i) = self.index(partition) else { return };
        let mut s = self.lock();
        if s.hosted.get(i) == Some(&true) && !s.taken[i] && !s.hurried[i] {
            s.hurried[i] = true;
            s.urgent.push_back(partition);
        }
    }
}

/// Partition `p` of a topic as this broker holds it: its Raft replica, started, if this
/// broker is among its hosts (its replicas, and during a move the brokers it may add:
/// `reassign.rs`); else where it lives.
pub(super) async fn open_slot(
    broker: &Broker,
    cluster: &Cluster,
    topic_id: u64,
    record: &TopicRecord,
    p: u32,
) -> Result<PartitionSlot, BrokerError> {
    let replicas = record.replicas_in(p, cluster.brokers().keys().copied());
    if !record.hosts_in(p, replicas.iter().copied()).contains(&cluster.node_id()) {
        return Ok(super::reassign::elsewhere(cluster, record, p));
    }
    let cx = cluster.context();
    let spec = GroupSpec {
        group_id: group_id(topic_id, p),
        dir: crate::layout::replicas_dir(&cluster.data_dir, topic_id).join(p.to_string()),
        topic: record.name.clone(),
        partition: p,
        log_config: record.settings.log_config(),
        fsync: record.settings.fsync_policy(),
    };
    // Leaders spread as placement decided: a new group's preferred leader starts it and wins
    // unopposed (replica::Start). Topics placed before placement existed have no preferred
    // leader: every replica starts them.
    // A broker a move adds starts empty and waits for the partition's leader to add it.
    let start = match replicas.iter().position(|r| *r == cluster.node_id()) {
        _ if record.replicas.is_empty() => replica::Start::Now,
        Some(rank) => replica::Start::by_rank(cx.config, &replicas, rank),
        None => replica::Start::Never,
    };
    let opened = replica::open(&cx, broker.store(), spec, replicas.iter().copied().collect(), start).await?;
    cluster.host(Hosted { replica: opened.replica.clone(), preferred: record.replicas_of(p).first().copied() });
    let writer = RaftWriter {
        replica: opened.replica,
        log: Arc::clone(&opened.partition),
        brokers: Arc::clone(&cluster.brokers),
        groups: cluster.groups().clone(),
    };
    Ok(PartitionSlot::Here { log: opened.partition, writer: Arc::new(writer) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(from: u32, to: u32, hosted: &[u32]) -> Order {
        let o = Order::new(from, to);
        for p in hosted {
            o.hold(*p);
        }
        o
    }

    fn drain(o: &Order) -> Vec<u32> {
        std::iter::from_fn(|| o.take()).take(100).collect()
    }

    #[test]
    fn replicas_open_in_partition_order_skipping_those_held_elsewhere() {
        let o = order(3, 9, &[3, 4, 6, 8]);
        assert_eq!(drain(&o), vec![3, 4, 6, 8]);
    }

    #[test]
    fn a_hurried_replica_opens_next_and_only_once() {
        let o = order(0, 6, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(o.take(), Some(0));
        o.hurry(4);
        o.hurry(4);
        o.hurry(0); // already opening: nothing to hurry
        o.hurry(9); // not a partition of this opening
        assert_eq!(o.take(), Some(4));
        assert_eq!(drain(&o), vec![1, 2, 3, 5]);
        assert_eq!(o.hurried(), 1);
    }

    #[test]
    fn a_replica_held_elsewhere_is_never_opened_when_asked() {
        let o = order(0, 3, &[0, 2]);
        o.hurry(1);
        assert_eq!(drain(&o), vec![0, 2]);
        assert_eq!(o.hurried(), 0);
    }

    #[test]
    fn partitions_below_the_first_added_are_ignored() {
        let o = order(4, 6, &[4, 5]);
        o.hurry(2);
        assert_eq!(drain(&o), vec![4, 5]);
    }
}
