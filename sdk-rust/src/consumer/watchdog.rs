//! The reader's stall watchdog: a subscription stream whose broker is frozen (SIGSTOP) or cut
//! off from its peers goes silent, like an idle partition's. So after [`STALL_AFTER`] without
//! a record, the watchdog asks the cluster's other brokers for the partitions' high
//! watermarks (each within [`ASK`]), again every [`POLL`] while silent; if a high watermark
//! beyond what this stream delivered *grows* while it stays silent (records keep coming,
//! elsewhere), the stream ends with [`Error::Stalled`] naming the broker, and the reader
//! reopens at another replica ([`super::Subscription::avoid`]). A high watermark that is
//! merely ahead and still (replicas' commit points differ by a few records for a moment, as
//! during an election) is no stall.
//!
//! Only for read_uncommitted streams in a cluster: under read_committed a high watermark past
//! an open transaction is no sign of a stall. Never: end a stream that is merely idle (every
//! other broker's high watermark is at or below what it delivered), or drop a record.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::RecordStream;
use crate::{Client, Error};

/// Silence after which the other brokers are asked.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// How often they are asked while the stream stays silent.
const POLL: Duration = Duration::from_millis(250);
/// How long one broker may take to answer.
const ASK: Duration = Duration::from_millis(500);

struct Watch {
    inner: RecordStream,
    /// The broker this stream reads from, and every other broker of the cluster.
    at: String,
    others: Vec<Client>,
    topic: String,
    /// The next offset each partition should deliver, where known (a start offset, or the
    /// record after the last one delivered).
    next: HashMap<u32, u64>,
    last_record: Instant,
    last_ask: Instant,
    /// The highest high watermark another broker reported, per partition, in this silence.
    seen_elsewhere: HashMap<u32, u64>,
    ended: bool,
}

/// Wraps the stream `inner` read from `at` (see the module docs); `others` are the cluster's
/// other brokers, `next` the known start offsets.
pub fn watch(
    inner: RecordStream,
    at: String,
    others: Vec<Client>,
    topic: String,
    next: HashMap<u32, u64>,
) -> RecordStream {
    let now = Instant::now();
    let state = Watch {
        inner,
        at,
        others,
        topic,
        next,
        last_record: now,
        last_ask: now,
        seen_elsewhere: HashMap::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        if s.ended {
            return None;
        }
        // Silence counts only while the reader waits: one that stopped polling for a while
        // (busy, backpressure) did not see the stream stall.
        s.last_record = s.last_record.max(Instant::now() - POLL);
        loop {
            match tokio::time::timeout(POLL, s.inner.next()).await {
                Ok(Some(Ok(r))) => {
                    s.next.insert(r.partition, r.offset + 1);
                    s.last_record = Instant::now();
                    s.seen_elsewhere.clear();
                    return Some((Ok(r), s));
                }
                Ok(Some(Err(e))) => return Some((Err(e), s)),
                Ok(None) => return None,
                Err(_) if s.last_record.elapsed() >= STALL_AFTER && s.last_ask.elapsed() >= POLL => {
                    s.last_ask = Instant::now();
                    let silent = s.last_record.elapsed();
                    let why = behind(&s.at, &s.others, &s.topic, &s.next, &mut s.seen_elsewhere, silent).await;
                    if let Some(why) = why {
                        s.ended = true;
                        return Some((Err(Error::Stalled { broker: s.at.clone(), message: why }), s));
                    }
                }
                Err(_) => {}
            }
        }
    }))
}

/// Why the stream from `at`, silent for `silent`, has stalled: another broker of `others`
/// reports a high watermark of a watched partition beyond `next` and beyond the highest one
/// seen earlier in this silence (`seen`, updated). (Not a method: the watched stream is `Send`
/// but not `Sync`, so no borrow of the whole state may cross an await.)
async fn behind(
    at: &str,
    others: &[Client],
    topic: &str,
    next: &HashMap<u32, u64>,
    seen: &mut HashMap<u32, u64>,
    silent: Duration,
) -> Option<String> {
    let mut grew = None;
    for other in others {
        let Ok(Ok(desc)) = tokio::time::timeout(ASK, other.describe_topic(topic)).await else { continue };
        for p in &desc.partitions {
            let Some(n) = next.get(&p.partition) else { continue };
            let before = seen.get(&p.partition).copied();
            if p.high_watermark > *n && before.is_some_and(|b| p.high_watermark > b) && grew.is_none() {
                grew = Some(format!(
                    "{at} delivered nothing for {silent:?} while {} holds {topic}/{} up to offset {} and growing \
                     (this stream is at {n})",
                    other.address(),
                    p.partition,
                    p.high_watermark
                ));
            }
            let best = before.unwrap_or(0).max(p.high_watermark);
            seen.insert(p.partition, best);
        }
    }
    grew
}
