//! Client quotas (Kafka's model): limits per user and/or client id, each a name or the
//! default, and the per-broker limiter that enforces them by delaying, not refusing.
//!
//! Resolution: for each kind of limit, the most specific entity that sets it wins, in Kafka's
//! order (user+client, user+default client, user, default user+client, default user+default
//! client, default user, client, default client). The limiter's bucket is that entity with its
//! defaults filled in by the caller's names: `User:alice`'s quota is shared by all of alice's
//! clients, a default client-id quota gives each client id its own.
//!
//! Enforcement (GCRA, a leaky bucket in one timestamp per bucket): a bucket holds the time its
//! traffic would have taken at the limit; a call that brings it more than [`BURST`] ahead of
//! now is delayed by the difference. So a client gets `BURST` worth at once, then exactly its
//! rate; the produce and subscribe paths wait that long before reading or sending more, and
//! tell the client (`throttle_time_ms`).
//!
//! Invariants: a limiter never blocks; with no quota configured it does nothing but one map
//! lookup of an empty set per call. Never: drop or fail a request because of a quota.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far ahead of now a bucket may run before calls are delayed.
pub const BURST: Duration = Duration::from_millis(500);
/// The map is swept when it holds this many buckets (and again at twice what a sweep kept).
const SWEEP_AT: usize = 4096;
/// The longest delay one call gets (Kafka caps its throttle time too).
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// One part of an entity: a name or the default.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Name(String),
    Default,
}

/// Whom a quota applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity {
    /// The principal's name, without `User:`.
    pub user: Option<Part>,
    pub client_id: Option<Part>,
}

/// Limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub producer_byte_rate: Option<u64>,
    pub consumer_byte_rate: Option<u64>,
    pub request_rate: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.producer_byte_rate.is_none() && self.consumer_byte_rate.is_none() && self.request_rate.is_none()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.producer_byte_rate == Some(0) || self.consumer_byte_rate == Some(0) {
            return Err("a byte rate must be at least 1 byte/s (remove the quota to lift it)".into());
        }
        if self.request_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err("request_rate must be a positive number of requests per second".into());
        }
        Ok(())
    }
}

/// Which limit a call counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Produce,
    Consume,
    Request,
}

impl Kind {
    fn of(self, l: &Limits) -> Option<f64> {
        match self {
            Kind::Produce => l.producer_byte_rate.map(|v| v as f64),
            Kind::Consume => l.consumer_byte_rate.map(|v| v as f64),
            Kind::Request => l.request_rate,
        }
    }
}

/// Every configured quota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaSet {
    /// Stored as a list of `[entity, limits]` pairs (JSON map keys must be strings).
    #[serde(with = "pairs")]
    quotas: BTreeMap<QuotaEntity, Limits>,
}

mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Limits, QuotaEntity};

    pub fn serialize<S: Serializer>(m: &BTreeMap<QuotaEntity, Limits>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<QuotaEntity, Limits>, D::Error> {
        Ok(Vec::<(QuotaEntity, Limits)>::deserialize(d)?.into_iter().collect())
    }
}

fn name(s: &str) -> Option<Part> {
    Some(Part::Name(s.to_string()))
}

impl QuotaSet {
    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&QuotaEntity, &Limits)> {
        self.quotas.iter()
    }

    pub fn get(&self, e: &QuotaEntity) -> Option<&Limits> {
        self.quotas.get(e)
    }

    /// Sets `set`'s limits and removes those named in `remove` (`producer_byte_rate`, ...);
    /// an entity left without limits goes. Returns its limits afterwards.
    pub fn alter(&mut self, e: &QuotaEntity, set: &Limits, remove: &[String]) -> Limits {
        let mut l = self.quotas.get(e).copied().unwrap_or_default();
        if set.producer_byte_rate.is_some() {
            l.producer_byte_rate = set.producer_byte_rate;
        }
        if set.consumer_byte_rate.is_some() {
            l.consumer_byte_rate = set.consumer_byte_rate;
        }
        if set.request_rate.is_some() {
            l.request_rate = set.request_rate;
        }
        for r in remove {
            match r.as_str() {
                "producer_byte_rate" => l.producer_byte_rate = None,
                "consumer_byte_rate" => l.consumer_byte_rate = None,
                "request_rate" => l.request_rate = None,
                _ => {}
            }
        }
        if l.is_empty() {
            self.quotas.remove(e);
        } else {
            self.quotas.insert(e.clone(), l);
        }
        l
    }

    /// The entities a caller matches, most specific first (Kafka's order), each with the
    /// bucket key it shares (defaults filled with the caller's names).
    fn candidates(user: &str, client: &str) -> [(QuotaEntity, QuotaEntity); 8] {
        let e = |u: Option<Part>, c: Option<Part>| QuotaEntity { user: u, client_id: c };
        let d = || Some(Part::Default);
        [
            (e(name(user), name(client)), e(name(user), name(client))),
            (e(name(user), d()), e(name(user), name(client))),
            (e(name(user), None), e(name(user), None)),
            (e(d(), name(client)), e(name(user), name(client))),
            (e(d(), d()), e(name(user), name(client))),
            (e(d(), None), e(name(user), None)),
            (e(None, name(client)), e(None, name(client))),
            (e(None, d()), e(None, name(client))),
        ]
    }

    /// The limit of `kind` for a caller and the bucket it counts in, if any.
    pub fn resolve(&self, kind: Kind, user: &str, client: &str) -> Option<(f64, QuotaEntity)> {
        if self.quotas.is_empty() {
            return None;
        }
        Self::candidates(user, client)
            .into_iter()
            .find_map(|(entity, bucket)| self.quotas.get(&entity).and_then(|l| kind.of(l)).map(|r| (r, bucket)))
    }

    /// The limits a caller gets (each kind resolved on its own).
    pub fn effective(&self, user: &str, client: &str) -> Limits {
        let r = |k| self.resolve(k, user, client).map(|(r, _)| r);
        Limits {
            producer_byte_rate: r(Kind::Produce).map(|v| v as u64),
            consumer_byte_rate: r(Kind::Consume).map(|v| v as u64),
            request_rate: r(Kind::Request),
        }
    }
}

/// The per-broker buckets. A bucket whose time is past is the same as no bucket, so a sweep
/// drops those: the map holds only clients with debt, whatever client ids callers invent.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<(Kind, QuotaEntity), Instant>,
    sweep_at: usize,
}

impl Limiter {
    /// Counts `amount` (bytes, or 1 request) against the bucket at `rate` per second and
    /// returns how long the caller must wait before it does more (zero: not throttled).
    pub fn record(&self, kind: Kind, bucket: QuotaEntity, rate: f64, amount: u64) -> Duration {
        let now = Instant::now();
        let cost = Duration::from_secs_f64((amount as f64 / rate).min(MAX_DELAY.as_secs_f64() * 4.0));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.map.len() >= buckets.sweep_at.max(SWEEP_AT) {
            buckets.map.retain(|_, tat| *tat > now);
            buckets.sweep_at = buckets.map.len() * 2;
        }
        let tat = buckets.map.entry((kind, bucket)).or_insert(now);
        *tat = (*tat).max(now) + cost;
        tat.saturating_duration_since(now).saturating_sub(BURST).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(u: Option<Part>, c: Option<Part>) -> QuotaEntity {
        QuotaEntity { user: u, client_id: c }
    }

    #[test]
    fn most_specific_entity_wins_per_kind() {
        let mut q = QuotaSet::default();
        q.alter(&ent(Some(Part::Default), None), &Limits { producer_byte_rate: Some(100), ..Limits::default() }, &[]);
        q.alter(&ent(name("alice"), None), &Limits { consumer_byte_rate: Some(7), ..Limits::default() }, &[]);
        q.alter(&ent(None, name("etl")), &Limits { producer_byte_rate: Some(5), ..Limits::default() }, &[]);
        let e = q.effective("alice", "etl");
        assert_eq!(e.producer_byte_rate, Some(100), "default user beats client id");
        assert_eq!(e.consumer_byte_rate, Some(7));
        assert_eq!(q.resolve(Kind::Produce, "bob", "x").map(|(_, b)| b), Some(ent(name("bob"), None)));
        let removed = q.alter(&ent(name("alice"), None), &Limits::default(), &["consumer_byte_rate".into()]);
        assert!(removed.is_empty());
        assert!(q.get(&ent(name("alice"), None)).is_none(), "an entity without limits goes");
        assert!(Limits { request_rate: Some(f64::NAN), ..Limits::default() }.validate().is_err());
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<QuotaSet>(&json).unwrap(), q, "stored and read back: {json}");
    }

    #[test]
    fn limiter_allows_a_burst_then_the_rate() {
        let l = Limiter::default();
        let b = ent(name("a"), None);
        // 1000 B/s: the first 500 B are the burst, then every byte costs 1 ms.
        assert_eq!(l.record(Kind::Produce, b.clone(), 1000.0, 500), Duration::ZERO);
        let d = l.record(Kind::Produce, b.clone(), 1000.0, 100);
        assert!(d > Duration::from_millis(90) && d <= Duration::from_millis(100), "{d:?}");
        // Another bucket is not affected.
        assert_eq!(l.record(Kind::Produce, ent(name("b"), None), 1000.0, 100), Duration::ZERO);
        assert!(l.record(Kind::Produce, b, 1.0, u64::MAX) <= MAX_DELAY);
    }
}
