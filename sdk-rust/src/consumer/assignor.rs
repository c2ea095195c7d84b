//! Client-side partition assignment, computed by the group's leader member. Every member of a
//! group must list the chosen assignor; the coordinator picks the leader's most preferred one
//! that all support. Each assignor gives every subscribed partition to exactly one member.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tidelog_proto::v1::{GroupMember, MemberAssignment, TopicPartitions};

/// How partitions are spread over a group's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions (Kafka's RangeAssignor).
    Range,
    /// All partitions dealt out one by one over the members (Kafka's RoundRobinAssignor).
    RoundRobin,
    /// Balanced like round-robin, but members keep what they owned (Kafka's StickyAssignor).
    Sticky,
}

impl Assignor {
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::Sticky => "sticky",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky].into_iter().find(|a| a.name() == name)
    }

    /// Assigns the partitions of `partitions` (topic → count) to `members`.
    pub fn assign(self, members: &[GroupMember], partitions: &HashMap<String, u32>) -> Vec<MemberAssignment> {
        let mut ids: Vec<&GroupMember> = members.iter().collect();
        ids.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        let subscribed = |m: &GroupMember, t: &str| m.topics.iter().any(|x| x == t);
        let mut out: BTreeMap<String, BTreeSet<(String, u32)>> =
            ids.iter().map(|m| (m.member_id.clone(), BTreeSet::new())).collect();
        let mut topics: Vec<(&String, &u32)> = partitions.iter().collect();
        topics.sort();
        match self {
            Assignor::Range => {
                for (topic, &count) in topics {
                    let consumers: Vec<&&GroupMember> = ids.iter().filter(|m| subscribed(m, topic)).collect();
                    if consumers.is_empty() {
                        continue;
                    }
                    let (per, extra) = (count / consumers.len() as u32, count % consumers.len() as u32);
                    let mut next = 0;
                    for (i, m) in consumers.iter().enumerate() {
                        let n = per + u32::from((i as u32) < extra);
                        let set = out.entry(m.member_id.clone()).or_default();
                        set.extend((next..next + n).map(|p| (topic.clone(), p)));
                        next += n;
                    }
                }
            }
            Assignor::RoundRobin => {
                let mut turn = 0usize;
                for (topic, &count) in topics {
                    for p in 0..count {
                        // The next member (in turn order) that subscribes to this topic.
                        for _ in 0..ids.len() {
                            let m = ids[turn % ids.len()];
                            turn += 1;
                            if subscribed(m, topic) {
                                out.entry(m.member_id.clone()).or_default().insert((topic.clone(), p));
                                break;
                            }
                        }
                    }
                }
            }
            Assignor::Sticky => sticky(&ids, &topics, &mut out),
        }
        out.into_iter()
            .map(|(member_id, set)| {
                let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                for (t, p) in set {
                    by_topic.entry(t).or_default().push(p);
                }
                let partitions =
                    by_topic.into_iter().map(|(topic, partitions)| TopicPartitions { topic, partitions }).collect();
                MemberAssignment { member_id, partitions }
            })
            .collect()
    }
}

fn sticky(ids: &[&GroupMember], topics: &[(&String, &u32)], out: &mut BTreeMap<String, BTreeSet<(String, u32)>>) {
    let exists: BTreeSet<(String, u32)> =
        topics.iter().flat_map(|(t, &n)| (0..n).map(move |p| ((*t).clone(), p))).collect();
    let subscribed = |m: &GroupMember, t: &str| m.topics.iter().any(|x| x == t);
    let eligible = |m: &GroupMember| exists.iter().filter(|(t, _)| subscribed(m, t)).count();
    let quota_max = exists.len().div_ceil(ids.len().max(1));
    // 1. Everyone keeps what they owned (first claim wins), up to the quota.
    let mut taken = BTreeSet::new();
    for m in ids {
        for tp in &m.owned {
            for &p in &tp.partitions {
                let key = (tp.topic.clone(), p);
                let mine = out.entry(m.member_id.clone()).or_default();
                if exists.contains(&key)
                    && subscribed(m, &tp.topic)
                    && mine.len() < quota_max
                    && taken.insert(key.clone())
                {
                    mine.insert(key);
                }
            }
        }
    }
    // 2. The rest go, one at a time, to the eligible member with the fewest.
    for key in exists.iter().filter(|k| !taken.contains(*k)) {
        let target = ids
            .iter()
            .filter(|m| subscribed(m, &key.0))
            .min_by_key(|m| (out.get(&m.member_id).map_or(0, BTreeSet::len), m.member_id.clone()));
        if let Some(m) = target {
            out.entry(m.member_id.clone()).or_default().insert(key.clone());
        }
    }
    // 3. Even out: move from the fullest to the emptiest while they differ by more than one.
    loop {
        let loads: Vec<(usize, String)> =
            ids.iter().filter(|m| eligible(m) > 0).map(|m| (out[&m.member_id].len(), m.member_id.clone())).collect();
        let (Some(max), Some(min)) = (loads.iter().max(), loads.iter().min()) else { break };
        if max.0 <= min.0 + 1 {
            break;
        }
        let min_member = ids.iter().find(|m| m.member_id == min.1).copied();
        let movable = out[&max.1].iter().rev().find(|(t, _)| min_member.is_some_and(|m| subscribed(m, t))).cloned();
        let Some(tp) = movable else { break };
        if let Some(s) = out.get_mut(&max.1) {
            s.remove(&tp);
        }
        out.entry(min.1.clone()).or_default().insert(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, owned: &[u32]) -> GroupMember {
        GroupMember {
            member_id: id.into(),
            topics: vec!["t".into()],
            owned: vec![TopicPartitions { topic: "t".into(), partitions: owned.to_vec() }],
            client_id: String::new(),
        }
    }

    fn check_complete_and_disjoint(a: &[MemberAssignment], partitions: u32) -> Vec<usize> {
        let mut all: Vec<u32> = a.iter().flat_map(|m| m.partitions.iter().flat_map(|t| t.partitions.clone())).collect();
        all.sort_unstable();
        assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "every partition exactly once");
        a.iter().map(|m| m.partitions.iter().map(|t| t.partitions.len()).sum()).collect()
    }

    #[test]
    fn every_assignor_is_complete_disjoint_and_balanced() {
        let topics = HashMap::from([("t".to_string(), 12u32)]);
        for n in 1..=5 {
            let members: Vec<_> = (0..n).map(|i| member(&format!("m{i}"), &[])).collect();
            for a in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
                let loads = check_complete_and_disjoint(&a.assign(&members, &topics), 12);
                let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(max - min <= 1, "{a:?} with {n} members: loads {loads:?}");
            }
        }
    }

    #[test]
    fn sticky_keeps_owned_partitions_when_a_member_joins() {
        let topics = HashMap::from([("t".to_string(), 12u32)]);
        let before = [member("a", &[0, 1, 2, 3, 4, 5]), member("b", &[6, 7, 8, 9, 10, 11]), member("c", &[])];
        let after = Assignor::Sticky.assign(&before, &topics);
        let loads = check_complete_and_disjoint(&after, 12);
        assert_eq!(loads, vec![4, 4, 4]);
        let kept = |id: &str, owned: &[u32]| {
            let got = &after.iter().find(|m| m.member_id == id).unwrap().partitions[0].partitions;
            got.iter().filter(|p| owned.contains(p)).count()
        };
        assert_eq!(kept("a", &[0, 1, 2, 3, 4, 5]), 4, "a keeps 4 of its 6");
        assert_eq!(kept("b", &[6, 7, 8, 9, 10, 11]), 4, "b keeps 4 of its 6");
    }
}
