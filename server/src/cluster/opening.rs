//! Opening topics' replicas on this broker without hiding the topics meanwhile.
//!
//! A broker restarting with thousands of replicas needs seconds to reopen them all (each
//! group's log, Raft state and core: about 0.6 ms of CPU; 10,000 take 5–8 s on two cores).
//! Its topics are therefore published first ([`Pending::new`], then the caller publishes
//! [`Pending::slots`]), with a [`PartitionSlot::Opening`] slot for every replica held here;
//! [`open_all`] then opens the replicas of all of them as one queue, topic by topic in
//! partition order, [`CONCURRENT_OPENS`] at a time, and a request for one not open yet, of
//! any of the topics, moves it to the front ([`OpenQueue::hurry`]). So a client waits for
//! one group's opening, not for all of them: until its replica is open a partition is
//! answered as if held elsewhere (a retryable NOT_LEADER naming another replica, or no
//! leader when it has no other replica). Records deleted while the broker was down are
//! deleted before the replica is served ([`Pending::with_floors`]). The same path opens a new
//! topic's replicas and a grown topic's new partitions.
//!
//! Invariants:
//! - each replica is opened at most once (`Order::taken`), and each pending slot is settled
//!   exactly once, to `Here` or (its replica could not open) `Elsewhere`, as soon as its
//!   opening ends; `open_all` returns the settled slots for the caller to republish, so no
//!   `Opening` slot outlives it;
//! - the metadata applier applies nothing while `open_all` runs (it awaits it), so no other
//!   change to the topics races the republish;
//! - never: open a replica of a partition this broker does not host (`open_slot` checks the
//!   placement again), or serve one before its log start is raised to its floor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Log starts to raise before a replica is served (records deleted while this broker was
    /// down: `DeleteRecords` folded into the image it starts from).
    floors: BTreeMap<u32, u64>,
}

/// A topic's partitions `from..` once [`open_all`] opened them: the slots to republish.
pub(super) struct Opened {
    pub topic_id: u64,
    pub record: TopicRecord,
    pub slots: Vec<PartitionSlot>,
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
        Self { topic_id, record: record.clone(), from, slots, order, floors: BTreeMap::new() }
    }

    /// Raises these partitions' log starts as their replicas open, before any is served.
    pub(super) fn with_floors(mut self, floors: impl IntoIterator<Item = (u32, u64)>) -> Self {
        self.floors.extend(floors);
        self
    }

    /// The slots to publish while the replicas open (they settle in place as each opens).
    pub(super) fn slots(&self) -> Vec<PartitionSlot> {
        self.slots.clone()
    }
}

/// Opens every replica the `pending` topics hold here as one queue — replicas clients asked
/// for first, whichever topic they belong to, then topic by topic in partition order,
/// [`CONCURRENT_OPENS`] at a time — and returns each topic's settled slots (of partitions
/// `from..`), in the order given. A replica that cannot be opened (out of file descriptors,
/// a bad disk) is left to the other replicas: its slot sends clients to them, and the
/// failures are logged once per topic, so one broker's trouble does not hide a committed
/// topic.
pub(super) async fn open_all(broker: &Broker, cluster: &Cluster, pending: Vec<Pending>) -> Vec<Opened> {
    let topics = &pending;
    let orders: Vec<&Order> = pending.iter().map(|pd| &*pd.order).collect();
    let mut in_order = 0;
    let mut picked = 0usize;
    let picks = futures::stream::iter(std::iter::from_fn(|| {
        let (t, p, asked) = pick(&orders, &mut in_order)?;
        picked += 1;
        Some((t, p, asked, picked - 1))
    }));
    let failures: Vec<(usize, u32, BrokerError)> = picks
        .map(|(t, p, asked, before)| async move {
            let pd = &topics[t];
            if asked {
                tracing::info!(topic = %pd.record.name, partition = p, before, "opening first a replica a client asked for");
            }
            let (slot, failure) = match open_slot(broker, cluster, pd.topic_id, &pd.record, p).await {
                Ok(slot) => (slot, None),
                Err(e) => (super::reassign::elsewhere(cluster, &pd.record, p), Some((t, p, e))),
            };
            if let (PartitionSlot::Here { log, .. }, Some(floor)) = (&slot, pd.floors.get(&p)) {
                if let Err(e) = log.raise_log_start(*floor).await {
                    tracing::error!(topic = %pd.record.name, partition = p, error = %e, "deleting records failed on this broker");
                }
            }
            if let Some(PartitionSlot::Opening(pending)) = pd.slots.get((p - pd.from) as usize) {
                pending.settle(slot);
            }
            failure
        })
        .buffer_unordered(CONCURRENT_OPENS)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    pending
        .into_iter()
        .enumerate()
        .map(|(t, pd)| {
            let failed: Vec<&(usize, u32, BrokerError)> = failures.iter().filter(|f| f.0 == t).collect();
            if let Some((_, first, error)) = failed.iter().min_by_key(|f| f.1) {
                tracing::error!(
                    topic = %pd.record.name,
                    failed = failed.len(),
                    first_partition = first,
                    %error,
                    "replicas could not be opened on this broker; the other replicas serve those partitions"
                );
            }
            let hurried = pd.order.hurried();
            if hurried > 0 {
                tracing::info!(topic = %pd.record.name, hurried, "replicas opened early for clients that asked");
            }
            let slots = (pd.from..)
                .zip(&pd.slots)
                .map(|(p, slot)| match slot {
                    PartitionSlot::Opening(pending) => {
                        pending.settled().cloned().unwrap_or_else(|| super::reassign::elsewhere(cluster, &pd.record, p))
                    }
                    slot => slot.clone(),
                })
                .collect();
            Opened { topic_id: pd.topic_id, record: pd.record, slots }
        })
        .collect()
}

/// The next replica to open of several topics' (`(topic index, partition, asked for)`): one
/// a client asked for, of any topic, else the next in partition order of the first topic not
/// done (`in_order`, kept by the caller between picks). `None` once every one is taken.
fn pick(orders: &[&Order], in_order: &mut usize) -> Option<(usize, u32, bool)> {
    if let Some((t, p)) = orders.iter().enumerate().find_map(|(t, o)| Some((t, o.take_urgent()?))) {
        return Some((t, p, true));
    }
    while let Some(o) = orders.get(*in_order) {
        if let Some(p) = o.take_next() {
            return Some((*in_order, p, false));
        }
        *in_order += 1;
    }
    None
}

/// The order replicas open in: those clients asked for first, then partition order.
#[derive(Debug)]
struct Order {
    from: u32,
    /// How many partitions `state.urgent` holds (read without the lock).
    urgent: AtomicUsize,
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
        Self { from, urgent: AtomicUsize::new(0), state: Mutex::new(state) }
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

    /// A replica a client asked for, not yet taken, marked taken.
    fn take_urgent(&self) -> Option<u32> {
        if self.urgent.load(Ordering::Acquire) == 0 {
            return None; // the common case, without the lock: this is asked of every topic
        }
        let mut s = self.lock();
        while let Some(p) = s.urgent.pop_front() {
            self.urgent.fetch_sub(1, Ordering::AcqRel);
            let i = (p - self.from) as usize;
            if !s.taken[i] {
                s.taken[i] = true;
                return Some(p);
            }
        }
        None
    }

    /// The next replica in partition order not yet taken, marked taken.
    fn take_next(&self) -> Option<u32> {
        let mut s = self.lock();
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
            self.urgent.fetch_add(1, Ordering::AcqRel);
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

    fn take(o: &Order) -> Option<u32> {
        o.take_urgent().or_else(|| o.take_next())
    }

    fn drain(o: &Order) -> Vec<u32> {
        std::iter::from_fn(|| take(o)).take(100).collect()
    }

    #[test]
    fn replicas_open_in_partition_order_skipping_those_held_elsewhere() {
        let o = order(3, 9, &[3, 4, 6, 8]);
        assert_eq!(drain(&o), vec![3, 4, 6, 8]);
    }

    #[test]
    fn a_hurried_replica_opens_next_and_only_once() {
        let o = order(0, 6, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(take(&o), Some(0));
        o.hurry(4);
        o.hurry(4);
        o.hurry(0); // already opening: nothing to hurry
        o.hurry(9); // not a partition of this opening
        assert_eq!(take(&o), Some(4));
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
    fn a_replica_asked_for_opens_next_whichever_topic_it_belongs_to() {
        let (a, b) = (order(0, 3, &[0, 1, 2]), order(0, 3, &[0, 1, 2]));
        let orders = [&a, &b];
        let mut in_order = 0;
        assert_eq!(pick(&orders, &mut in_order), Some((0, 0, false)));
        b.hurry(2);
        assert_eq!(pick(&orders, &mut in_order), Some((1, 2, true)));
        let rest: Vec<(usize, u32, bool)> = std::iter::from_fn(|| pick(&orders, &mut in_order)).take(10).collect();
        assert_eq!(rest, vec![(0, 1, false), (0, 2, false), (1, 0, false), (1, 1, false)]);
    }

    #[test]
    fn partitions_below_the_first_added_are_ignored() {
        let o = order(4, 6, &[4, 5]);
        o.hurry(2);
        assert_eq!(drain(&o), vec![4, 5]);
    }
}
