//! Delivery outcomes: one per batch, shared by the futures of its records.
//!
//! `send` returns a [`DeliveryFuture`] per record, as Kafka's producer returns a
//! `FutureRecordMetadata`: a handle on its batch's [`Outcome`] and the record's index in the
//! batch. Completing a batch is one store and one round of wake-ups, whatever its record
//! count; a record's [`RecordMetadata`] is built only when its future is polled ready, and
//! shares the batch's topic name. (Before, each record had a channel of its own, filled one by
//! one when its batch completed: 6 % of the SDK producer's CPU in a profile,
//! docs/PERFORMANCE.md.)
//!
//! Invariants: an outcome is set once and never changes; every waker registered before it is
//! set is woken after; a batch dropped without being completed (the producer's task gone)
//! completes its outcome as closed, so no future waits forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::RecordMetadata;
use crate::Error;

/// How a batch ended.
#[derive(Clone, Debug)]
pub(crate) enum Done {
    /// Stored at `base` (the first record's offset; `u64::MAX` when unknown, with acks=None)
    /// with the broker's append time.
    Stored { base: u64, append_time_ms: i64 },
    /// Failed for good; every record of the batch fails with this message.
    Failed(String),
    /// The producer stopped before the batch completed.
    Closed,
    /// The batch was split in two (`split.rs`): its records `..at` are the first part's,
    /// `at..` the second's (numbered from 0 there); each part has an outcome of its own.
    Split { at: u32, first: Arc<Outcome>, second: Arc<Outcome> },
}

#[derive(Debug)]
pub(crate) struct Outcome {
    topic: Arc<str>,
    partition: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    done: Option<Done>,
    wakers: Vec<Waker>,
}

impl Outcome {
    /// A new, unset outcome for the same partition.
    fn empty(like: &Outcome) -> Self {
        Self { topic: Arc::clone(&like.topic), partition: like.partition, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the outcome unless it is set already, and wakes every waiting future.
    fn finish(&self, done: Done) {
        let wakers = {
            let mut state = self.lock();
            if state.done.is_some() {
                return;
            }
            state.done = Some(done);
            std::mem::take(&mut state.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The producer's side of a batch's outcome: completes it once, or as closed when dropped.
#[derive(Debug)]
pub(crate) struct Completion(Arc<Outcome>);

impl Completion {
    pub fn new(topic: &str, partition: u32) -> Self {
        Self(Arc::new(Outcome { topic: Arc::from(topic), partition, state: Mutex::default() }))
    }

    /// The future of the batch's record number `index`.
    pub fn future(&self, index: u32) -> DeliveryFuture {
        DeliveryFuture { outcome: Arc::clone(&self.0), index }
    }

    pub fn complete(self, done: Done) {
        self.0.finish(done);
    }

    /// Splits the batch's outcome at record `at`: the futures already handed out follow their
    /// record to the completion of its part.
    pub fn split(self, at: u32) -> (Completion, Completion) {
        let part = || Completion(Arc::new(Outcome::empty(&self.0)));
        let (first, second) = (part(), part());
        self.0.finish(Done::Split { at, first: Arc::clone(&first.0), second: Arc::clone(&second.0) });
        (first, second)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.0.finish(Done::Closed);
    }
}

/// Resolves when the broker acknowledged (or finally rejected) the record.
#[derive(Debug)]
pub struct DeliveryFuture {
    outcome: Arc<Outcome>,
    index: u32,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        // A split batch passes the record on to its part's outcome (at most a few hops: each
        // split halves the batch).
        loop {
            let (part, index) = {
                let o = &me.outcome;
                let mut state = o.lock();
                let done = match &state.done {
                    Some(done) => done,
                    None => {
                        // Futures of one batch are usually awaited by one task: keep its waker once.
                        if !state.wakers.last().is_some_and(|w| w.will_wake(cx.waker())) {
                            state.wakers.push(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                };
                match done {
                    Done::Stored { base, append_time_ms } => {
                        return Poll::Ready(Ok(RecordMetadata {
                            topic: Arc::clone(&o.topic),
                            partition: o.partition,
                            // Unknown (acks=None) stays unknown for every record of the batch.
                            offset: if *base == u64::MAX { u64::MAX } else { base + u64::from(me.index) },
                            timestamp_ms: *append_time_ms,
                        }));
                    }
                    Done::Failed(message) => return Poll::Ready(Err(Error::Delivery(message.clone()))),
                    Done::Closed => return Poll::Ready(Err(Error::Closed)),
                    Done::Split { at, first, .. } if me.index < *at => (Arc::clone(first), me.index),
                    Done::Split { at, second, .. } => (Arc::clone(second), me.index - at),
                }
            };
            me.outcome = part;
            me.index = index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl futures::task::ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_record_gets_its_offset_and_each_waiting_task_is_woken() {
        let c = Completion::new("orders", 3);
        let mut futures: Vec<DeliveryFuture> = (0..4).map(|i| c.future(i)).collect();
        let (a, b) = (Arc::new(Count(AtomicUsize::new(0))), Arc::new(Count(AtomicUsize::new(0))));
        let (wa, wb) = (futures::task::waker(Arc::clone(&a)), futures::task::waker(Arc::clone(&b)));
        for (i, f) in futures.iter_mut().enumerate() {
            let w = if i < 2 { &wa } else { &wb };
            assert!(f.poll_unpin(&mut Context::from_waker(w)).is_pending());
        }
        assert_eq!(c.0.lock().wakers.len(), 2, "one waker per waiting task, not per record");
        c.complete(Done::Stored { base: 100, append_time_ms: 7 });
        assert_eq!((a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst)), (1, 1));
        for (i, f) in futures.into_iter().enumerate() {
            let m = f.now_or_never().expect("ready").expect("stored");
            assert_eq!((&*m.topic, m.partition, m.offset, m.timestamp_ms), ("orders", 3, 100 + i as u64, 7));
        }
    }

    #[test]
    fn unknown_offsets_stay_unknown_for_every_record() {
        let c = Completion::new("t", 0);
        let f = c.future(5);
        c.complete(Done::Stored { base: u64::MAX, append_time_ms: -1 });
        assert_eq!(f.now_or_never().expect("ready").expect("stored").offset, u64::MAX);
    }

    #[test]
    fn failure_reaches_every_record_and_a_dropped_batch_reads_as_closed() {
        let c = Completion::new("t", 0);
        let (f0, f1) = (c.future(0), c.future(1));
        c.complete(Done::Failed("not acknowledged within 2s".into()));
        for f in [f0, f1] {
            match f.now_or_never().expect("ready") {
                Err(Error::Delivery(m)) => assert_eq!(m, "not acknowledged within 2s"),
                other => panic!("{other:?}"),
            }
        }
        let c = Completion::new("t", 0);
        let f = c.future(0);
        drop(c);
        assert!(matches!(f.now_or_never(), Some(Err(Error::Closed))));
    }

    #[test]
    fn the_first_outcome_stands() {
        let c = Completion::new("t", 0);
        let f = c.future(0);
        c.0.finish(Done::Stored { base: 1, append_time_ms: 0 });
        c.complete(Done::Failed("late".into()));
        assert_eq!(f.now_or_never().expect("ready").expect("stored").offset, 1);
    }
}
