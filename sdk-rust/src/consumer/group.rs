//! A consumer-group member: joins the group over one session stream, takes part in
//! rebalances (the leader computes the assignment client side), fetches its partitions from
//! their committed offsets, and commits what the application has received.
//!
//! Revoke before assign: on a rebalance the member stops fetching, drops buffered records of
//! the old generation, commits the positions of records already handed to the application,
//! tells the listener, and only then rejoins. Auto-commit commits only positions of records
//! that `next()` returned (at-least-once: a record is never committed before the application
//! got it). Committed offsets only move forward, except after an explicit `seek`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use tidelog_proto::v1::{
    offset_spec, session_request, session_response, CommitRequest, CommittedOffset, ErrorCode, FetchCommittedRequest,
    Heartbeat, JoinGroup, LeaveGroup, ListOffsetsRequest, OffsetSpec, PartitionOffset, SessionRequest, SyncGroup,
    TopicPartitions,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::assignor::Assignor;
use super::{IsolationLevel, StartAt, Subscription};
use crate::batch::ConsumedRecord;
use crate::{Client, Error};

/// (topic, partition)
pub type TopicPartition = (String, u32);

/// Where to start a partition the group has no committed offset for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    #[default]
    Latest,
}

/// Told about partitions as they are assigned and revoked (in generation order).
pub trait RebalanceListener: Send + Sync {
    fn on_assigned(&self, _generation: u32, _partitions: &[TopicPartition]) {}
    /// Called after the member stopped fetching and committed, before it rejoins.
    fn on_revoked(&self, _generation: u32, _partitions: &[TopicPartition]) {}
}

/// Group consumer settings; `GroupConfig::new` gives the documented defaults.
#[derive(Clone)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// In preference order. Default sticky, range, round-robin.
    pub assignors: Vec<Assignor>,
    /// Default 10 s.
    pub session_timeout: Duration,
    /// Default 1 s (well below the session timeout).
    pub heartbeat_interval: Duration,
    /// `None` = commit only with [`GroupConsumer::commit`]. Default every 5 s.
    pub auto_commit_interval: Option<Duration>,
    /// Default `Latest` (as Kafka).
    pub offset_reset: OffsetReset,
    pub client_id: String,
    pub listener: Option<Arc<dyn RebalanceListener>>,
    /// Which records to read (Kafka's `isolation.level`). Default read_uncommitted; a
    /// consume-transform-produce application reads `ReadCommitted`.
    pub isolation: IsolationLevel,
    /// Commit the positions handed to the application when partitions are revoked and on
    /// close. Default on; off for an application that commits its offsets in its producer's
    /// transactions (`Producer::send_offsets_to_transaction`): a commit outside the
    /// transaction would count records whose output may yet be aborted.
    pub commit_on_revoke: bool,
}

impl std::fmt::Debug for GroupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConfig").field("group", &self.group).field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl GroupConfig {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            assignors: vec![Assignor::Sticky, Assignor::Range, Assignor::RoundRobin],
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            auto_commit_interval: Some(Duration::from_secs(5)),
            offset_reset: OffsetReset::Latest,
            client_id: "tidelog-rust".into(),
            listener: None,
            isolation: IsolationLevel::ReadUncommitted,
            commit_on_revoke: true,
        }
    }
}

#[derive(Debug, Default)]
struct MemberState {
    generation: u32,
    member_id: String,
    assigned: BTreeSet<TopicPartition>,
    /// Next offset to hand to the application, per partition.
    positions: HashMap<TopicPartition, u64>,
    committed: HashMap<TopicPartition, u64>,
    /// Partitions whose committed offset may move backwards once (after a seek).
    rewound: BTreeSet<TopicPartition>,
    /// Partitions not fetched until resumed (cleared by a rebalance, as in Kafka).
    paused: BTreeSet<TopicPartition>,
    /// Bumped (synchronously, by the caller) on assignment, seek, pause and resume; fetchers
    /// tag records with the epoch they started in, and `next` drops records of older epochs, so
    /// a seek backwards is never undone by records buffered before it.
    fetch_epoch: u64,
}

struct Fetched {
    fetch_epoch: u64,
    record: Result<ConsumedRecord, Error>,
}

enum Control {
    Commit(oneshot::Sender<Result<(), Error>>),
    Rewind(oneshot::Sender<Result<(), Error>>),
    Refetch,
    Close(oneshot::Sender<()>),
}

/// A member of a consumer group. Records come from [`GroupConsumer::next`].
pub struct GroupConsumer {
    group: String,
    isolation: IsolationLevel,
    records: mpsc::Receiver<Fetched>,
    state: Arc<Mutex<MemberState>>,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<MemberState>) -> std::sync::MutexGuard<'_, MemberState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GroupConsumer {
    /// Joins the group; records start flowing once the first assignment arrives.
    pub async fn join(client: Client, config: GroupConfig) -> Result<Self, Error> {
        if config.topics.is_empty() || config.assignors.is_empty() {
            return Err(Error::InvalidArgument("a group consumer needs topics and assignors".into()));
        }
        let (group, isolation) = (config.group.clone(), config.isolation);
        let (records_tx, records) = mpsc::channel(1024);
        let (control, control_rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(MemberState::default()));
        let member = Member {
            brokers: Vec::new(),
            client,
            config,
            state: Arc::clone(&state),
            records: records_tx,
            fetchers: Vec::new(),
            owned: Vec::new(),
            joining: false,
        };
        let task = tokio::spawn(member.run(control_rx));
        Ok(Self { group, isolation, records, state, control, task })
    }

    /// The next record of the current generation's partitions (records of revoked partitions
    /// are dropped here). `None` once the consumer is closed.
    pub async fn next(&mut self) -> Option<Result<ConsumedRecord, Error>> {
        std::future::poll_fn(|cx| self.poll_record(cx)).await
    }

    /// Receives until a record of the current fetch epoch arrives; handing it out advances the
    /// partition's position (what commits will cover).
    fn poll_record(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<ConsumedRecord, Error>>> {
        use std::task::Poll;
        loop {
            let f = match self.records.poll_recv(cx) {
                Poll::Ready(Some(f)) => f,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let record = match f.record {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            let mut s = lock(&self.state);
            let tp = (record.topic.to_string(), record.partition);
            if f.fetch_epoch != s.fetch_epoch || !s.assigned.contains(&tp) || s.paused.contains(&tp) {
                continue; // fetched before a rebalance, seek or pause
            }
            if s.positions.get(&tp).is_some_and(|p| record.offset < *p) {
                continue; // before a seek target
            }
            s.positions.insert(tp, record.offset + 1);
            return Poll::Ready(Some(Ok(record)));
        }
    }

    /// Commits the position of every assigned partition (what `next` has returned).
    pub async fn commit(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Commit(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Moves every assigned partition back to its committed offset (or where the reset policy
    /// says, without one): after an aborted transaction, its records are read again.
    pub async fn rewind_to_committed(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Rewind(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Moves a partition's position; the next commit may move its committed offset backwards.
    pub fn seek(&self, topic: &str, partition: u32, offset: u64) -> Result<(), Error> {
        {
            let mut s = lock(&self.state);
            let tp = (topic.to_string(), partition);
            if !s.assigned.contains(&tp) {
                return Err(Error::InvalidArgument(format!("{topic}/{partition} is not assigned to this member")));
            }
            s.positions.insert(tp.clone(), offset);
            s.rewound.insert(tp);
            s.fetch_epoch += 1; // from now on, records fetched before the seek are dropped
        }
        self.control.send(Control::Refetch).map_err(|_| Error::Closed)
    }

    /// Moves a partition's position to the first record appended at or after `timestamp_ms`
    /// (the end of the partition if there is none).
    pub async fn seek_to_timestamp(
        &self,
        client: &Client,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<(), Error> {
        let req = ListOffsetsRequest {
            topic: topic.into(),
            partitions: vec![partition],
            spec: Some(OffsetSpec { spec: Some(offset_spec::Spec::TimestampMs(timestamp_ms)) }),
            isolation_level: 0,
        };
        let offsets = client.admin().list_offsets(req).await?.into_inner().offsets;
        let offset =
            offsets.first().map(|o| o.offset).ok_or_else(|| Error::Decode("ListOffsets returned nothing".into()))?;
        self.seek(topic, partition, offset)
    }

    /// Stops fetching these partitions (they stay assigned) until [`GroupConsumer::resume`].
    pub fn pause(&self, partitions: &[TopicPartition]) -> Result<(), Error> {
        let mut s = lock(&self.state);
        s.paused.extend(partitions.iter().cloned());
        s.fetch_epoch += 1;
        drop(s);
        self.control.send(Control::Refetch).map_err(|_| Error::Closed)
    }

    pub fn resume(&self, partitions: &[TopicPartition]) -> Result<(), Error> {
        {
            let mut s = lock(&self.state);
            for tp in partitions {
                s.paused.remove(tp);
            }
            s.fetch_epoch += 1;
        }
        self.control.send(Control::Refetch).map_err(|_| Error::Closed)
    }

    /// Records between this member's position and the high watermark, per assigned partition.
    pub async fn lag(&self, client: &Client) -> Result<Vec<(TopicPartition, u64)>, Error> {
        let (assigned, positions) = {
            let s = lock(&self.state);
            (s.assigned.clone(), s.positions.clone())
        };
        let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (t, p) in &assigned {
            by_topic.entry(t.clone()).or_default().push(*p);
        }
        let mut out = Vec::new();
        // ListOffsets, not DescribeTopic: a broker answers it for partitions held elsewhere.
        // A read_committed member's lag ends at the last stable offset.
        let ask = |topic: &str, partitions: Vec<u32>, spec| ListOffsetsRequest {
            topic: topic.to_string(),
            partitions,
            spec: Some(OffsetSpec { spec: Some(spec) }),
            isolation_level: self.isolation as i32,
        };
        for (topic, partitions) in by_topic {
            let latest = ask(&topic, partitions.clone(), offset_spec::Spec::Latest(true));
            let earliest = ask(&topic, partitions, offset_spec::Spec::Earliest(true));
            let hws = client.admin().list_offsets(latest).await?.into_inner().offsets;
            let starts: HashMap<u32, u64> = client
                .admin()
                .list_offsets(earliest)
                .await?
                .into_inner()
                .offsets
                .iter()
                .map(|o| (o.partition, o.offset))
                .collect();
            for hw in hws {
                let tp = (topic.clone(), hw.partition);
                let position = positions.get(&tp).copied().or(starts.get(&hw.partition).copied()).unwrap_or(0);
                out.push((tp, hw.offset.saturating_sub(position)));
            }
        }
        Ok(out)
    }

    /// The member's group, generation and member id, for offsets sent in a transaction
    /// (`Producer::send_offsets_to_transaction`; KIP-447's fencing of zombie members).
    pub fn group_metadata(&self) -> crate::ConsumerGroupMetadata {
        let s = lock(&self.state);
        crate::ConsumerGroupMetadata {
            group: self.group.clone(),
            generation: s.generation,
            member_id: s.member_id.clone(),
        }
    }

    /// The next offset to hand to the application of every assigned partition: what to
    /// commit (or send in a transaction) once the records before it are processed.
    pub fn positions(&self) -> Vec<(String, u32, u64)> {
        let s = lock(&self.state);
        s.assigned.iter().filter_map(|tp| s.positions.get(tp).map(|o| (tp.0.clone(), tp.1, *o))).collect()
    }

    /// The partitions assigned in the current generation, and the generation.
    pub fn assignment(&self) -> (u32, Vec<TopicPartition>) {
        let s = lock(&self.state);
        (s.generation, s.assigned.iter().cloned().collect())
    }

    /// Commits, leaves the group (so it rebalances at once), and stops.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// The records of the member's partitions, as a `Stream` (same as calling `next`).
impl futures::Stream for GroupConsumer {
    type Item = Result<ConsumedRecord, Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.poll_record(cx)
    }
}

/// Fetches one topic's assigned partitions into the member's record channel, restarting after
/// errors: from where it got to, or by the reset policy if the position fell out of the log
/// (retention deleted it).
struct Fetcher {
    isolation: IsolationLevel,
    client: Client,
    records: mpsc::Sender<Fetched>,
    topic: String,
    starts: HashMap<u32, StartAt>,
    reset: StartAt,
    fetch_epoch: u64,
}

impl Fetcher {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        // A broker a stream stalled at (frozen, cut off): read elsewhere, and ask another
        // broker for the metadata if it is this member's own.
        let mut avoid: Option<String> = None;
        // Learnt now, while the member's broker answers (it may be the one that stalls).
        let brokers: Vec<String> = self.client.brokers().await.unwrap_or_default();
        loop {
            let mut sub = Subscription::new(&self.topic).isolation(self.isolation);
            for (p, start) in &self.starts {
                sub = sub.partition(*p, Some(*start));
            }
            let mut client = self.client.clone();
            if let Some(a) = &avoid {
                sub = sub.avoid(a.clone());
                if client.address() == a {
                    if let Some(other) = brokers.iter().find(|b| *b != a) {
                        client = client.to_broker(other).unwrap_or(client);
                    }
                }
            }
            let error = match sub.open(&client).await {
                Ok(mut stream) => loop {
                    match stream.next().await {
                        Some(Ok(record)) => {
                            backoff = Duration::from_millis(100);
                            self.starts.insert(record.partition, StartAt::Offset(record.offset + 1));
                            let f = Fetched { fetch_epoch: self.fetch_epoch, record: Ok(record) };
                            if self.records.send(f).await.is_err() {
                                return; // the consumer is gone
                            }
                        }
                        Some(Err(e)) => break e,
                        None => break Error::Decode("subscription ended".into()),
                    }
                },
                Err(e) => e,
            };
            if let Error::Stalled { broker, message } = &error {
                tracing::info!(topic = %self.topic, %broker, message, "fetch stalled; reading from another replica");
                avoid = Some(broker.clone());
                continue;
            }
            if matches!(&error, Error::Status(s) if s.code() == tonic::Code::OutOfRange) {
                tracing::warn!(topic = %self.topic, error = %error, "position out of range; applying the offset reset policy");
                for start in self.starts.values_mut() {
                    *start = self.reset;
                }
            } else {
                tracing::debug!(topic = %self.topic, error = %error, "fetch failed; retrying");
                let f = Fetched { fetch_epoch: self.fetch_epoch, record: Err(error) };
                if self.records.send(f).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// The membership task's state.
struct Member {
    /// Every broker of the cluster (just the bootstrap one on a single node), learnt when the
    /// member starts: a member whose broker fails rejoins through the next one, since any
    /// broker routes group sessions to the coordinator.
    brokers: Vec<String>,
    client: Client,
    config: GroupConfig,
    state: Arc<Mutex<MemberState>>,
    records: mpsc::Sender<Fetched>,
    fetchers: Vec<tokio::task::JoinHandle<()>>,
    /// Partitions owned before the last revoke (sent with Join, for the sticky assignor).
    owned: Vec<TopicPartition>,
    /// A Join was sent and its Joined has not come yet: a Rebalance now needs no new Join.
    joining: bool,
}

enum Outcome {
    Closed,
    Reconnect,
}

impl Member {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut backoff = Duration::from_millis(100);
        self.brokers = self.client.brokers().await.unwrap_or_else(|_| vec![self.client.address().to_string()]);
        loop {
            match self.session(&mut control).await {
                Ok(Outcome::Closed) => return,
                Ok(Outcome::Reconnect) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "group session failed; rejoining");
                    self.next_broker();
                }
            }
            self.revoke(false).await;
            // The membership is gone with the session: `group_metadata` must no longer name it
            // (a transaction sending offsets with it would pass for a member whose partitions
            // may go to another member meanwhile).
            {
                let mut s = lock(&self.state);
                s.generation = 0;
                s.member_id.clear();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Moves to the next broker of the cluster (no-op on a single node).
    fn next_broker(&mut self) {
        let Some(i) = self.brokers.iter().position(|b| b == self.client.address()) else { return };
        let next = &self.brokers[(i + 1) % self.brokers.len()];
        match self.client.to_broker(next) {
            Ok(c) => self.client = c,
            Err(e) => tracing::debug!(error = %e, broker = %next, "cannot reach the next broker"),
        }
    }

    fn join_request(&mut self) -> SessionRequest {
        self.joining = true;
        let owned = {
            let mut by_topic: HashMap<String, Vec<u32>> = HashMap::new();
            for (t, p) in &self.owned {
                by_topic.entry(t.clone()).or_default().push(*p);
            }
            by_topic.into_iter().map(|(topic, partitions)| TopicPartitions { topic, partitions }).collect()
        };
        SessionRequest {
            kind: Some(session_request::Kind::Join(JoinGroup {
                group: self.config.group.clone(),
                topics: self.config.topics.clone(),
                assignors: self.config.assignors.iter().map(|a| a.name().to_string()).collect(),
                session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                owned,
                client_id: self.config.client_id.clone(),
            })),
        }
    }

    async fn session(&mut self, control: &mut mpsc::UnboundedReceiver<Control>) -> Result<Outcome, Error> {
        let (tx, rx) = mpsc::channel::<SessionRequest>(16);
        let join = self.join_request();
        tx.send(join).await.map_err(|_| Error::Closed)?;
        // Bounded: a frozen broker accepts the connection and never answers.
        let mut groups = self.client.groups();
        let opening = groups.session(ReceiverStream::new(rx));
        let mut responses = tokio::time::timeout(self.config.session_timeout, opening)
            .await
            .map_err(|_| Error::Status(tonic::Status::deadline_exceeded("the group session did not open in time")))??
            .into_inner();
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        // After a stall, one heartbeat, not a burst of them.
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let commit_every = self.config.auto_commit_interval.unwrap_or(Duration::from_secs(3600));
        let mut auto_commit = tokio::time::interval(commit_every);
        loop {
            tokio::select! {
                resp = responses.next() => {
                    let Some(resp) = resp else { return Ok(Outcome::Reconnect) };
                    let Some(kind) = resp?.kind else { continue };
                    match kind {
                        session_response::Kind::Joined(j) => {
                            self.joining = false;
                            lock(&self.state).member_id = j.member_id.clone();
                            if j.leader_id == j.member_id {
                                let assignor = Assignor::from_name(&j.assignor).ok_or_else(|| Error::Decode(format!("unknown assignor {}", j.assignor)))?;
                                let counts = j.topic_partitions.iter().map(|t| (t.topic.clone(), t.partitions)).collect();
                                let assignments = assignor.assign(&j.members, &counts);
                                let sync = SyncGroup { generation: j.generation, assignments };
                                tx.send(SessionRequest { kind: Some(session_request::Kind::Sync(sync)) }).await.map_err(|_| Error::Closed)?;
                            }
                        }
                        session_response::Kind::Assignment(a) => self.assign(a.generation, a.partitions).await?,
                        session_response::Kind::Rebalance(r) if !self.joining => {
                            tracing::debug!(reason = %r.reason, "rebalance: revoking");
                            self.revoke(self.config.commit_on_revoke).await;
                            let join = self.join_request();
                            tx.send(join).await.map_err(|_| Error::Closed)?;
                        }
                        // Our Join is already on its way: it answers this rebalance too.
                        session_response::Kind::Rebalance(_) => {}
                        session_response::Kind::Error(e) => {
                            let code = crate::error::error_code(e.code);
                            let err = Error::Broker { code, message: e.message };
                            let fetch_epoch = lock(&self.state).fetch_epoch;
                            let _ = self.records.send(Fetched { fetch_epoch, record: Err(err) }).await;
                            if code == ErrorCode::InconsistentGroup || code == ErrorCode::InvalidRequest {
                                return Ok(Outcome::Closed);
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let generation = lock(&self.state).generation;
                    let hb = SessionRequest { kind: Some(session_request::Kind::Heartbeat(Heartbeat { generation })) };
                    tx.send(hb).await.map_err(|_| Error::Closed)?;
                }
                _ = auto_commit.tick(), if self.config.auto_commit_interval.is_some() => {
                    if let Err(e) = self.commit().await {
                        tracing::debug!(error = %e, "auto-commit failed");
                        fenced(e)?;
                    }
                }
                c = control.recv() => match c {
                    Some(Control::Commit(reply)) => {
                        let result = self.commit().await;
                        let rejoin = matches!(&result, Err(Error::Broker { code: ErrorCode::IllegalGeneration, .. }));
                        let _ = reply.send(result);
                        if rejoin {
                            return Err(Error::Broker { code: ErrorCode::IllegalGeneration, message: "fenced: rejoining".into() });
                        }
                    }
                    Some(Control::Refetch) => self.start_fetchers().await?,
                    Some(Control::Rewind(reply)) => {
                        let result = self.rewind().await;
                        let _ = reply.send(result);
                    }
                    Some(Control::Close(reply)) => {
                        self.leave(&tx).await;
                        let _ = reply.send(());
                        return Ok(Outcome::Closed);
                    }
                    None => {
                        // The GroupConsumer was dropped: leave so the group rebalances now.
                        self.leave(&tx).await;
                        return Ok(Outcome::Closed);
                    }
                },
            }
        }
    }

    /// Revokes (committing, unless configured not to), then tells the coordinator this
    /// member leaves.
    async fn leave(&mut self, tx: &mpsc::Sender<SessionRequest>) {
        self.revoke(self.config.commit_on_revoke).await;
        let _ = tx.send(SessionRequest { kind: Some(session_request::Kind::Leave(LeaveGroup {})) }).await;
    }

    /// A new generation's partitions: start from committed offsets (or the reset policy).
    /// Where assigned partitions start: their committed offsets, else the reset policy's.
    async fn starting_positions(
        &self,
        assigned: &BTreeSet<TopicPartition>,
    ) -> Result<(HashMap<TopicPartition, u64>, HashMap<TopicPartition, u64>), Error> {
        let mut committed = HashMap::new();
        for topic in assigned.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>() {
            let req =
                FetchCommittedRequest { group: self.config.group.clone(), topic: topic.clone(), partitions: vec![] };
            for o in self.fetch_committed(req).await? {
                committed.insert((topic.clone(), o.partition), o.offset);
            }
        }
        // Partitions without a committed offset start per the reset policy, resolved now, so a
        // later refetch (seek, pause) resumes from there rather than from a newer log end.
        let mut positions = committed.clone();
        let spec = match self.config.offset_reset {
            OffsetReset::Earliest => offset_spec::Spec::Earliest(true),
            OffsetReset::Latest => offset_spec::Spec::Latest(true),
        };
        let mut unset: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (t, p) in assigned.iter().filter(|tp| !committed.contains_key(*tp)) {
            unset.entry(t.clone()).or_default().push(*p);
        }
        // Only the partitions that need it: in a cluster the others may live on brokers that
        // are down.
        for (topic, partitions) in unset {
            let req =
                // A read_committed member starting at "latest" starts at the last stable offset.
                ListOffsetsRequest {
                    topic: topic.clone(),
                    partitions,
                    spec: Some(OffsetSpec { spec: Some(spec) }),
                    isolation_level: self.config.isolation as i32,
                };
            for o in self.client.admin().list_offsets(req).await?.into_inner().offsets {
                let tp = (topic.clone(), o.partition);
                if assigned.contains(&tp) && !committed.contains_key(&tp) {
                    positions.insert(tp, o.offset);
                }
            }
        }
        Ok((positions, committed))
    }

    /// Every assigned partition back to its starting position (`rewind_to_committed`).
    async fn rewind(&mut self) -> Result<(), Error> {
        let assigned = lock(&self.state).assigned.clone();
        let (positions, committed) = self.starting_positions(&assigned).await?;
        {
            let mut s = lock(&self.state);
            if s.assigned != assigned {
                return Ok(()); // a rebalance meanwhile started the partitions afresh
            }
            s.positions = positions;
            s.committed = committed;
            s.rewound.clear();
            s.fetch_epoch += 1;
        }
        self.start_fetchers().await
    }

    async fn assign(&mut self, generation: u32, partitions: Vec<TopicPartitions>) -> Result<(), Error> {
        let assigned: BTreeSet<TopicPartition> =
            partitions.iter().flat_map(|tp| tp.partitions.iter().map(move |p| (tp.topic.clone(), *p))).collect();
        let (positions, committed) = self.starting_positions(&assigned).await?;
        {
            let mut s = lock(&self.state);
            s.generation = generation;
            s.assigned = assigned.clone();
            s.positions = positions;
            s.committed = committed;
            s.rewound.clear();
            s.paused.clear();
            s.fetch_epoch += 1;
        }
        if let Some(l) = &self.config.listener {
            l.on_assigned(generation, &assigned.iter().cloned().collect::<Vec<_>>());
        }
        self.start_fetchers().await
    }

    /// A group's committed offsets, waiting (with back-off, up to a minute: Kafka's default
    /// transaction timeout) while an open transaction holds offsets of the group
    /// (UNSTABLE_OFFSET_COMMIT): the previous owner's transaction may still commit them.
    async fn fetch_committed(&self, req: FetchCommittedRequest) -> Result<Vec<CommittedOffset>, Error> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.client.offsets().fetch_committed(req.clone()).await {
                Ok(r) => return Ok(r.into_inner().offsets),
                Err(s) if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(group = %req.group, error = %s.message(), "committed offsets not stable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// (Re)starts one subscription per topic over the assigned partitions from their positions.
    async fn start_fetchers(&mut self) -> Result<(), Error> {
        for f in self.fetchers.drain(..) {
            f.abort();
        }
        let (fetch_epoch, assigned, positions) = {
            let s = lock(&self.state);
            let active: BTreeSet<TopicPartition> = s.assigned.difference(&s.paused).cloned().collect();
            (s.fetch_epoch, active, s.positions.clone())
        };
        let reset = match self.config.offset_reset {
            OffsetReset::Earliest => StartAt::Earliest,
            OffsetReset::Latest => StartAt::Latest,
        };
        for topic in assigned.iter().map(|(t, _)| t.clone()).collect::<BTreeSet<_>>() {
            let starts: HashMap<u32, StartAt> = assigned
                .iter()
                .filter(|(t, _)| *t == topic)
                .map(|(_, p)| (*p, positions.get(&(topic.clone(), *p)).map_or(reset, |o| StartAt::Offset(*o))))
                .collect();
            let fetcher = Fetcher {
                isolation: self.config.isolation,
                client: self.client.clone(),
                records: self.records.clone(),
                topic,
                starts,
                reset,
                fetch_epoch,
            };
            self.fetchers.push(tokio::spawn(fetcher.run()));
        }
        Ok(())
    }

    /// Stops fetching, commits what the application received (if still a member), tells the
    /// listener, and forgets the assignment.
    async fn revoke(&mut self, commit: bool) {
        // First: the application gets no more buffered records, so the positions committed
        // below are exactly what it received.
        lock(&self.state).fetch_epoch += 1;
        for f in self.fetchers.drain(..) {
            f.abort();
        }
        if commit {
            if let Err(e) = self.commit().await {
                // Its records are read again by the partitions' next owner (as Kafka warns of
                // a failed auto-commit on revocation).
                tracing::warn!(error = %e, "commit of the returned positions failed on revoke or close; they will be read again");
            }
        }
        let (generation, revoked) = {
            let mut s = lock(&self.state);
            let revoked: Vec<TopicPartition> = std::mem::take(&mut s.assigned).into_iter().collect();
            (s.generation, revoked)
        };
        if !revoked.is_empty() {
            if let Some(l) = &self.config.listener {
                l.on_revoked(generation, &revoked);
            }
            self.owned = revoked;
        }
    }

    /// Commits positions that moved forward (or were rewound by a seek), with the generation.
    /// Bounded by the session timeout (a member stuck in a commit sends no heartbeats).
    async fn commit(&mut self) -> Result<(), Error> {
        let wait = self.config.session_timeout;
        tokio::time::timeout(wait, self.commit_now())
            .await
            .map_err(|_| Error::Status(tonic::Status::deadline_exceeded("the commit was not answered in time")))?
    }

    async fn commit_now(&mut self) -> Result<(), Error> {
        let (generation, member_id, mut by_topic) = {
            let s = lock(&self.state);
            let mut by_topic: HashMap<String, Vec<PartitionOffset>> = HashMap::new();
            for tp in &s.assigned {
                let Some(&pos) = s.positions.get(tp) else { continue };
                let forward = s.committed.get(tp).is_none_or(|c| pos > *c);
                if forward || (s.rewound.contains(tp) && s.committed.get(tp) != Some(&pos)) {
                    by_topic.entry(tp.0.clone()).or_default().push(PartitionOffset {
                        partition: tp.1,
                        offset: pos,
                        metadata: String::new(),
                    });
                }
            }
            (s.generation, s.member_id.clone(), by_topic)
        };
        let mut requests = Vec::new();
        for (i, (topic, offsets)) in by_topic.drain().enumerate() {
            requests.push(CommitRequest {
                request_id: i as u64,
                group: self.config.group.clone(),
                topic,
                offsets,
                generation,
                member_id: member_id.clone(),
            });
        }
        if requests.is_empty() {
            return Ok(());
        }
        let sent = requests.clone();
        let mut responses = self.client.offsets().commit(tokio_stream::iter(requests)).await?.into_inner();
        while let Some(r) = responses.next().await {
            let r = r?;
            if r.error_code != ErrorCode::Unspecified as i32 {
                return Err(Error::broker(r.error_code, r.error_message));
            }
            if let Some(req) = sent.iter().find(|q| q.request_id == r.request_id) {
                let mut s = lock(&self.state);
                for o in &req.offsets {
                    let tp = (req.topic.clone(), o.partition);
                    s.committed.insert(tp.clone(), o.offset);
                    s.rewound.remove(&tp);
                }
            }
        }
        Ok(())
    }
}

/// A commit refused as ILLEGAL_GENERATION means this member was fenced (a rebalance it
/// missed, a new coordinator): it must rejoin, not keep its partitions. Other errors are
/// for the next commit to retry.
fn fenced(e: Error) -> Result<(), Error> {
    match e {
        Error::Broker { code: ErrorCode::IllegalGeneration, .. } => Err(e),
        _ => Ok(()),
    }
}
