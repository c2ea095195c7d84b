//! Subscriptions: a live stream of records from one topic, pushed by the broker as batches are
//! appended. Records come in offset order per partition; batches are decoded (and their CRC
//! checked) here.
//!
//! In a cluster whose topics have fewer replicas than brokers, a broker serves only the
//! partitions it holds: [`Subscription::open`] reads each partition from a broker that holds
//! it (the client's own broker when it can, else the partition's leader, else any replica),
//! one stream per broker, merged. Order per partition is kept, since each partition comes from
//! exactly one stream.
//!
//! In a cluster each stream is watched (`watchdog.rs`): one that goes silent while another
//! broker holds records it has not delivered (its broker is frozen or cut off) ends with
//! [`Error::Stalled`]; reopened with [`Subscription::avoid`], the reader goes to another
//! replica.

pub mod assignor;
pub mod group;
mod subscribe_call;
pub mod watchdog;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;

use futures::{Stream, StreamExt};
pub use tidelog_proto::v1::IsolationLevel;
use tidelog_proto::wire::{self, start_position::Position};

use crate::batch::{decode_batch_each, records_hint, ConsumedRecord};
use crate::{Client, Error};

/// Where a subscription starts in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    /// Only records appended from now on.
    Latest,
    Offset(u64),
    /// The first batch appended at or after this time (ms since the epoch).
    Timestamp(i64),
}

impl StartAt {
    fn to_wire(self) -> wire::StartPosition {
        let position = match self {
            StartAt::Earliest => Position::Earliest(true),
            StartAt::Latest => Position::Latest(true),
            StartAt::Offset(o) => Position::Offset(o),
            StartAt::Timestamp(t) => Position::TimestampMs(t),
        };
        wire::StartPosition { position: Some(position) }
    }
}

/// A subscription request being built.
#[derive(Clone, Debug)]
pub struct Subscription {
    topic: String,
    start: StartAt,
    partitions: Vec<(u32, Option<StartAt>)>,
    max_bytes: u32,
    isolation: IsolationLevel,
    /// Brokers not to read from while another replica can serve (a stalled one).
    avoid: Vec<String>,
}

pub type RecordStream = Pin<Box<dyn Stream<Item = Result<ConsumedRecord, Error>> + Send>>;

impl Subscription {
    /// Every partition of `topic`, from the latest offset (change with [`Subscription::start_at`]).
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            start: StartAt::Latest,
            partitions: Vec::new(),
            max_bytes: 0,
            isolation: IsolationLevel::ReadUncommitted,
            avoid: Vec::new(),
        }
    }

    /// Reads from another replica than the broker at `addr` where one holds the partition
    /// (after [`Error::Stalled`] named it), and asks another broker for the metadata.
    pub fn avoid(mut self, addr: impl Into<String>) -> Self {
        self.avoid.push(addr.into());
        self
    }

    pub fn start_at(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Reads only the listed partitions (each may override the start position).
    pub fn partition(mut self, partition: u32, start: Option<StartAt>) -> Self {
        self.partitions.push((partition, start));
        self
    }

    /// Upper bound on one response's batch bytes (0 = broker default, 1 MiB).
    pub fn max_bytes(mut self, max_bytes: u32) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Which records to read (Kafka's `isolation.level`); default read_uncommitted.
    /// `ReadCommitted` reads only up to the last stable offset and leaves out the records of
    /// aborted transactions (offsets then have gaps).
    pub fn isolation(mut self, isolation: IsolationLevel) -> Self {
        self.isolation = isolation;
        self
    }

    /// Opens the stream of raw responses (batches as bytes).
    pub async fn open_raw(&self, client: &Client) -> Result<tonic::Streaming<wire::SubscribeResponse>, Error> {
        Ok(client.records().subscribe(self.request()).await?.into_inner())
    }

    fn request(&self) -> wire::SubscribeRequest {
        wire::SubscribeRequest {
            topic: self.topic.clone(),
            partitions: self
                .partitions
                .iter()
                .map(|(p, s)| wire::PartitionStart { partition: *p, start: s.map(StartAt::to_wire) })
                .collect(),
            start: Some(self.start.to_wire()),
            max_bytes: self.max_bytes,
            // The SDK decompresses itself: the broker serves the stored bytes.
            decompress: false,
            isolation_level: self.isolation as i32,
        }
    }

    /// Where each partition is read: `(broker, the part of this subscription it serves)`, and
    /// every broker of the cluster (empty on a single node). One route (this subscription,
    /// this client) unless the cluster holds some of the partitions only on other brokers.
    async fn routes(&self, client: &Client) -> Result<(Vec<(Client, Subscription)>, BTreeMap<u32, String>), Error> {
        let brokers = client.broker_ids().await?;
        if brokers.is_empty() {
            return Ok((vec![(client.clone(), self.clone())], brokers));
        }
        let desc = client.describe_topic_settled(&self.topic).await?;
        let own = brokers.iter().find(|(_, a)| a.as_str() == client.address()).map(|(id, _)| *id);
        let avoided = |id: u32| brokers.get(&id).is_some_and(|a| self.avoid.contains(a));
        let wanted: Vec<(u32, Option<StartAt>)> = if self.partitions.is_empty() {
            (0..desc.partition_count).map(|p| (p, None)).collect()
        } else {
            self.partitions.clone()
        };
        let mut by_broker: BTreeMap<u32, Vec<(u32, Option<StartAt>)>> = BTreeMap::new();
        for (p, start) in wanted {
            let d = desc.partitions.iter().find(|d| d.partition == p).ok_or_else(|| Error::Broker {
                code: tidelog_proto::v1::ErrorCode::UnknownPartition,
                message: format!("topic {} has no partition {p}", self.topic),
            })?;
            let held = |id: u32| d.replica_ids.contains(&id);
            // Without a known leader any replica serves what is committed; a random one, so
            // a retry after a failed open can reach a live replica when one is down.
            let fine: Vec<u32> = d.replica_ids.iter().copied().filter(|id| !avoided(*id)).collect();
            let any = || {
                let pool = if fine.is_empty() { &d.replica_ids } else { &fine };
                pool.get(rand::random::<u32>() as usize % pool.len().max(1)).copied()
            };
            let at = match own {
                Some(id) if held(id) && !avoided(id) => id,
                _ if d.leader_id != 0 && held(d.leader_id) && !avoided(d.leader_id) => d.leader_id,
                _ => any().or(own).unwrap_or_default(),
            };
            by_broker.entry(at).or_default().push((p, start));
        }
        if by_broker.len() == 1 && by_broker.keys().next().copied() == own {
            return Ok((vec![(client.clone(), self.clone())], brokers));
        }
        let routes = by_broker
            .into_iter()
            .map(|(id, partitions)| {
                let addr =
                    brokers.get(&id).ok_or_else(|| Error::InvalidArgument(format!("no address for broker {id}")))?;
                Ok((client.to_broker(addr)?, Subscription { partitions, ..self.clone() }))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((routes, brokers))
    }

    /// Opens the subscription as a stream of records (from every broker it needs, see the
    /// module docs). Records below a requested start offset (a batch may begin before it)
    /// are skipped.
    pub async fn open(&self, client: &Client) -> Result<RecordStream, Error> {
        let (routes, brokers) = self.routes(client).await?;
        let watched = |client: &Client, sub: &Subscription, stream: RecordStream| -> Result<RecordStream, Error> {
            if brokers.len() < 2 || sub.isolation != IsolationLevel::ReadUncommitted {
                return Ok(stream);
            }
            let others = brokers
                .values()
                .filter(|a| a.as_str() != client.address())
                .map(|a| client.to_broker(a))
                .collect::<Result<Vec<_>, Error>>()?;
            let next = sub.partitions.iter().filter_map(|(p, s)| match s.unwrap_or(sub.start) {
                StartAt::Offset(o) => Some((*p, o)),
                _ => None,
            });
            Ok(watchdog::watch(stream, client.address().to_string(), others, sub.topic.clone(), next.collect()))
        };
        if routes.len() == 1 {
            let (client, sub) = &routes[0];
            return watched(client, sub, sub.open_one(client).await?);
        }
        let mut streams = Vec::with_capacity(routes.len());
        for (client, sub) in &routes {
            // One broker's stream ending is an error for the whole: its partitions would
            // otherwise stop silently while the others go on.
            let ended = Error::Decode(format!("the subscription at {} ended", client.address()));
            let stream = watched(client, sub, sub.open_one(client).await?)?;
            streams.push(Box::pin(stream.chain(futures::stream::once(async { Err(ended) }))) as RecordStream);
        }
        Ok(Box::pin(futures::stream::select_all(streams)))
    }

    /// Opens the subscription at one broker.
    async fn open_one(&self, client: &Client) -> Result<RecordStream, Error> {
        let raw = subscribe_call::open(client.channel(), &self.request(), crate::client::MAX_MESSAGE_BYTES).await?;
        let topic: std::sync::Arc<str> = self.topic.as_str().into();
        let mut floors: HashMap<u32, u64> = HashMap::new();
        for (p, s) in &self.partitions {
            if let Some(StartAt::Offset(o)) = s.or(Some(self.start)) {
                floors.insert(*p, o);
            }
        }
        let default_floor = match self.start {
            StartAt::Offset(o) if self.partitions.is_empty() => o,
            _ => 0,
        };
        let stream = raw.flat_map(move |resp| {
            let items: Vec<Result<ConsumedRecord, Error>> = match resp {
                Err(status) => vec![Err(Error::Status(status))],
                Ok(resp) => {
                    // Records below the start asked for, or below where the broker read
                    // from (the log start, when records were deleted inside a batch).
                    let floor = floors.get(&resp.partition).copied().unwrap_or(default_floor).max(resp.read_from);
                    let mut out = Vec::with_capacity(resp.batches.iter().map(records_hint).sum());
                    for batch in resp.batches {
                        let whole = out.len();
                        if let Err(e) = decode_batch_each(&topic, resp.partition, batch, floor, |r| out.push(Ok(r))) {
                            out.truncate(whole); // a batch is delivered whole or not at all
                            out.push(Err(e));
                            break;
                        }
                    }
                    out
                }
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(stream))
    }
}
