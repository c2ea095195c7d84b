//! Replica placement for a new topic, decided once by the broker that proposes the topic and
//! recorded in its `CreateTopic` (so every broker applies the same placement, whatever its
//! own view of the cluster).
//!
//! Kafka's round-robin rule: partition `p`'s replicas are `rf` consecutive brokers (in id
//! order) starting at broker `(start + p) mod n`, and the first of them is its preferred
//! leader. `start` comes from the topic name, so one-partition topics do not all lead on the
//! first broker.
//!
//! Invariants (tested below): every partition has `rf` distinct replicas; the brokers'
//! preferred-leader counts differ by at most one; their replica counts are equal when the
//! partition count is a multiple of the broker count, and differ by at most `rf` otherwise.

/// The replica factor used when a create asks for 0 (Kafka's usual production choice).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Each partition's replicas (preferred leader first) over `brokers` (sorted, distinct).
pub fn assign(brokers: &[u64], partitions: u32, rf: u32, topic: &str) -> Vec<Vec<u64>> {
    let n = brokers.len();
    if n == 0 {
        return Vec::new();
    }
    let rf = (rf as usize).clamp(1, n);
    let start = tidelog_proto::checksum::crc32c(topic.as_bytes()) as usize % n;
    (0..partitions as usize).map(|p| (0..rf).map(|k| brokers[(start + p + k) % n]).collect()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn replicas_are_distinct_and_leaders_and_load_spread_evenly() {
        for n in 1..=7u64 {
            let brokers: Vec<u64> = (1..=n).collect();
            for rf in 1..=n as u32 {
                for partitions in [1u32, 2, 3, 10, 64] {
                    let a = assign(&brokers, partitions, rf, "orders");
                    assert_eq!(a.len(), partitions as usize);
                    let mut leaders: BTreeMap<u64, u32> = brokers.iter().map(|b| (*b, 0)).collect();
                    let mut load: BTreeMap<u64, u32> = leaders.clone();
                    for r in &a {
                        assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), rf as usize, "{r:?}");
                        *leaders.get_mut(&r[0]).unwrap() += 1;
                        for b in r {
                            *load.get_mut(b).unwrap() += 1;
                        }
                    }
                    let spread = |c: &BTreeMap<u64, u32>| c.values().max().unwrap() - c.values().min().unwrap();
                    assert!(spread(&leaders) <= 1, "n={n} rf={rf} p={partitions}: leaders {leaders:?}");
                    let most = if u64::from(partitions) % n == 0 { 0 } else { rf };
                    assert!(spread(&load) <= most, "n={n} rf={rf} p={partitions}: load {load:?}");
                }
            }
        }
    }

    #[test]
    fn the_start_broker_varies_with_the_topic() {
        let brokers = [1, 2, 3];
        let firsts: BTreeSet<u64> = (0..20).map(|i| assign(&brokers, 1, 1, &format!("t{i}"))[0][0]).collect();
        assert_eq!(firsts.len(), 3, "one-partition topics all lead on {firsts:?}");
    }
}
