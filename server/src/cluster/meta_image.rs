//! The state a prefix of the metadata log leaves behind: live topics (with their ids,
//! placement and every alteration folded in), committed offsets, records deleted, ACLs and
//! quotas, and transactional ids. [`MetaImage::fold`] applies one command to it with exactly
//! the rules the applier uses on a broker (`metadata.rs`); [`MetaImage::commands`] writes it
//! back as commands.
//!
//! Two users:
//! - the metadata snapshot (`meta_snapshot.rs`) folds the sealed prefix of the log and
//!   replaces it by the image's commands, so the log holds state instead of history;
//! - the applier folds the whole committed log when a broker starts or installs a snapshot,
//!   and reconciles its topic table, offset store, ACLs and transactions with the result.
//!
//! Invariants:
//! - folding `commands()` (at the offsets and with the headers it returns) gives the same
//!   image back, and folding further commands after it gives the same image as folding them
//!   after the original prefix: an image is a faithful stand-in for the prefix it replaced;
//! - every command of `commands()` sits at the offset (and with the Raft index and term) of
//!   an original command it stands for, so offsets keep their meaning: a topic's create stays
//!   at `topic id - 1`, and a command's position never moves;
//! - memory is proportional to the live state, never to the number of commands folded.
//!
//! Never: depend on the broker (this is a pure function of the log).

use std::collections::{BTreeMap, HashMap};

use super::metadata::{altered, topic_id_at, MetaCommand};
use crate::auth::SecurityState;
use crate::log::format::BatchHeader;
use crate::meta::txn::TxnEntry;
use crate::meta::{StoredOffset, TopicRecord};

/// A group's committed offsets for one topic, with the header of the last command that
/// changed them.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupOffsets {
    pub at: BatchHeader,
    /// The incarnation committed to (0: commits that predate topic ids, applied by name).
    pub topic_id: u64,
    pub offsets: BTreeMap<u32, StoredOffset>,
}

/// A live topic and the header of its create.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageTopic {
    pub at: BatchHeader,
    pub record: TopicRecord,
    /// Records deleted below these offsets, with the header of the last `DeleteRecords`.
    pub deleted_below: Option<(BatchHeader, BTreeMap<u32, u64>)>,
}

/// A broker added to the cluster, with the header of its `AddBroker`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBroker {
    pub at: BatchHeader,
    pub address: String,
    pub internal: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaImage {
    /// Brokers added through the metadata (those of `--peers` are not in it).
    pub brokers: BTreeMap<u64, ImageBroker>,
    /// Brokers removed (kept for good, so a removed id stays removed until added again).
    pub removed: BTreeMap<u64, BatchHeader>,
    /// Live topics by id.
    pub topics: BTreeMap<u64, ImageTopic>,
    /// Topic name -> id of the live incarnation.
    names: HashMap<String, u64>,
    /// (group, topic name) -> offsets.
    pub offsets: BTreeMap<(String, String), GroupOffsets>,
    pub security: Option<(BatchHeader, SecurityState)>,
    pub txns: BTreeMap<String, (BatchHeader, TxnEntry)>,
}

impl MetaImage {
    /// The live incarnation of topic `name`.
    pub fn topic_id(&self, name: &str) -> Option<u64> {
        self.names.get(name).copied()
    }

    /// The ACLs and quotas (empty when none were ever set).
    pub fn security_state(&self) -> SecurityState {
        self.security.as_ref().map(|(_, s)| s.clone()).unwrap_or_default()
    }

    /// Applies the command stored in the batch with header `h` (see the module docs).
    pub fn fold(&mut self, h: &BatchHeader, cmd: MetaCommand) {
        let offset = h.base_offset;
        match cmd {
            MetaCommand::CreateTopic { record } => {
                if !self.names.contains_key(&record.name) {
                    let id = topic_id_at(offset);
                    self.names.insert(record.name.clone(), id);
                    self.topics.insert(id, ImageTopic { at: *h, record, deleted_below: None });
                }
            }
            MetaCommand::DeleteTopic { name, topic_id, .. } => {
                match self.names.get(&name) {
                    Some(id) if *id != topic_id => return, // deletes another incarnation, already gone
                    Some(_) => {
                        self.names.remove(&name);
                        self.topics.remove(&topic_id);
                    }
                    None => {}
                }
                // Every group's offsets for the name go with it (the applier's rule).
                self.offsets.retain(|(_, topic), _| *topic != name);
            }
            MetaCommand::CommitOffsets { group, topic, offsets, topic_id } => {
                if topic_id != 0 && self.names.get(&topic) != Some(&topic_id) {
                    return; // for a deleted incarnation: skipped
                }
                let entry = self.offsets.entry((group, topic)).or_insert_with(|| GroupOffsets {
                    at: *h,
                    topic_id,
                    offsets: BTreeMap::new(),
                });
                entry.at = *h;
                if topic_id != 0 {
                    entry.topic_id = topic_id;
                }
                for o in offsets {
                    entry.offsets.insert(o.partition, o);
                }
            }
            ref alter @ (MetaCommand::AlterTopic { ref name, topic_id, .. }
            | MetaCommand::AddPartitions { ref name, topic_id, .. }
            | MetaCommand::ReassignPartitions { ref name, topic_id, .. }
            | MetaCommand::ReassignmentDone { ref name, topic_id, .. }) => {
                if self.names.get(name) == Some(&topic_id) {
                    if let Some(t) = self.topics.get_mut(&topic_id) {
                        if let Some(record) = altered(&t.record, alter) {
                            t.record = record;
                        }
                    }
                }
            }
            MetaCommand::DeleteGroup { group } => self.offsets.retain(|(g, _), _| *g != group),
            MetaCommand::DeleteRecords { name, topic_id, before } => {
                if self.names.get(&name) != Some(&topic_id) {
                    return;
                }
                if let Some(t) = self.topics.get_mut(&topic_id) {
                    let (at, floors) = t.deleted_below.get_or_insert_with(|| (*h, BTreeMap::new()));
                    *at = *h;
                    for (p, o) in before {
                        let floor = floors.entry(p).or_insert(o);
                        *floor = (*floor).max(o);
                    }
                }
            }
            MetaCommand::Security { change } => {
                let mut state = self.security_state();
                state.apply(&change);
                self.security = Some((*h, state));
            }
            MetaCommand::SecurityState { state } => self.security = Some((*h, state)),
            MetaCommand::Txn { id, entry } => {
                // Compare-and-set, as `TxnTable::compare_and_set`.
                let current = self.txns.get(&id).map_or(0, |(_, e)| e.version);
                if entry.version == current + 1 {
                    self.txns.insert(id, (*h, entry));
                }
            }
            MetaCommand::TxnState { id, entry } => {
                self.txns.insert(id, (*h, entry));
            }
            MetaCommand::AddBroker { id, address, internal } => {
                self.removed.remove(&id);
                self.brokers.insert(id, ImageBroker { at: *h, address, internal });
            }
            MetaCommand::RemoveBroker { id } => {
                self.brokers.remove(&id);
                self.removed.insert(id, *h);
            }
        }
    }

    /// The image as commands, each with the header of the command it stands for, in log
    /// order (by Raft index, which orders them as their offsets do).
    pub fn commands(&self) -> Vec<(BatchHeader, MetaCommand)> {
        let mut out = Vec::new();
        for (id, b) in &self.brokers {
            out.push((
                b.at,
                MetaCommand::AddBroker { id: *id, address: b.address.clone(), internal: b.internal.clone() },
            ));
        }
        for (id, at) in &self.removed {
            out.push((*at, MetaCommand::RemoveBroker { id: *id }));
        }
        for (id, t) in &self.topics {
            out.push((t.at, MetaCommand::CreateTopic { record: t.record.clone() }));
            if let Some((at, floors)) = &t.deleted_below {
                let before = floors.iter().map(|(p, o)| (*p, *o)).collect();
                out.push((*at, MetaCommand::DeleteRecords { name: t.record.name.clone(), topic_id: *id, before }));
            }
        }
        for ((group, topic), g) in &self.offsets {
            out.push((
                g.at,
                MetaCommand::CommitOffsets {
                    group: group.clone(),
                    topic: topic.clone(),
                    offsets: g.offsets.values().cloned().collect(),
                    topic_id: g.topic_id,
                },
            ));
        }
        if let Some((at, state)) = &self.security {
            out.push((*at, MetaCommand::SecurityState { state: state.clone() }));
        }
        for (id, (at, entry)) in &self.txns {
            out.push((*at, MetaCommand::TxnState { id: id.clone(), entry: entry.clone() }));
        }
        out.sort_by_key(|(h, _)| (h.raft_index, h.base_offset));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SecurityChange;
    use crate::topic_config::TopicSettings;

    fn header(offset: u64) -> BatchHeader {
        BatchHeader {
            batch_len: 0,
            compression: 0,
            flags: 0,
            record_count: 1,
            base_offset: offset,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            payload_crc: 0,
            delete_horizon_s: 0,
            append_time_ms: 1_000 + offset as i64,
            raft_term: 1,
            raft_index: offset + 1,
        }
    }

    fn topic(name: &str, partitions: u32) -> MetaCommand {
        MetaCommand::CreateTopic {
            record: TopicRecord {
                name: name.into(),
                partitions,
                created_at_ms: 1,
                settings: TopicSettings::default(),
                replicas: (0..partitions).map(|p| vec![u64::from(p % 3) + 1]).collect(),
                overrides: None,
                reassigning: Default::default(),
            },
        }
    }

    fn commit(group: &str, topic: &str, topic_id: u64, p: u32, offset: u64) -> MetaCommand {
        MetaCommand::CommitOffsets {
            group: group.into(),
            topic: topic.into(),
            offsets: vec![StoredOffset { partition: p, offset, commit_time_ms: 5, metadata: String::new() }],
            topic_id,
        }
    }

    fn fold_all(cmds: &[MetaCommand]) -> MetaImage {
        let mut image = MetaImage::default();
        for (i, c) in cmds.iter().enumerate() {
            image.fold(&header(i as u64), c.clone());
        }
        image
    }

    /// A history with every kind of command; offsets are positions in the list.
    fn history() -> Vec<MetaCommand> {
        let mut txn = TxnEntry {
            producer_id: 7,
            epoch: 0,
            status: crate::meta::txn::TxnStatus::Empty,
            timeout_ms: 1000,
            started_at_ms: 0,
            last_update_ms: 0,
            partitions: BTreeMap::new(),
            offsets: BTreeMap::new(),
            version: 1,
        };
        let txn1 = txn.clone();
        txn.version = 2;
        txn.epoch = 1;
        vec![
            topic("a", 2),                                                             // 0: id 1
            topic("b", 1),                                                             // 1: id 2
            commit("g", "a", 1, 0, 10),                                                // 2
            commit("g", "a", 1, 1, 11),                                                // 3
            commit("g", "b", 2, 0, 5),                                                 // 4
            MetaCommand::DeleteTopic { name: "b".into(), topic_id: 2, partitions: 1 }, // 5
            topic("b", 3),                                                             // 6: id 7, a new incarnation
            commit("g", "b", 2, 0, 99), // 7: the old incarnation: skipped
            commit("h", "b", 7, 2, 3),  // 8
            MetaCommand::AddPartitions {
                name: "a".into(),
                topic_id: 1,
                from: 2,
                partitions: 4,
                replicas: vec![vec![3], vec![1]],
            }, // 9
            commit("g", "a", 1, 0, 20), // 10
            MetaCommand::DeleteRecords { name: "a".into(), topic_id: 1, before: vec![(0, 4)] }, // 11
            MetaCommand::DeleteRecords { name: "a".into(), topic_id: 1, before: vec![(0, 2), (1, 6)] }, // 12
            commit("dead", "a", 1, 0, 1), // 13
            MetaCommand::DeleteGroup { group: "dead".into() }, // 14
            MetaCommand::Security { change: SecurityChange::AddAcls { acls: vec![] } }, // 15
            MetaCommand::Txn { id: "t".into(), entry: txn1.clone() }, // 16
            MetaCommand::Txn { id: "t".into(), entry: txn1 }, // 17: stale version: refused
            MetaCommand::Txn { id: "t".into(), entry: txn }, // 18
            topic("a", 9),              // 19: the name is taken: ignored
            MetaCommand::AddBroker { id: 4, address: "h:4".into(), internal: None }, // 20
            MetaCommand::AddBroker { id: 5, address: "h:5".into(), internal: Some("i:5".into()) }, // 21
            MetaCommand::RemoveBroker { id: 4 }, // 22
        ]
    }

    #[test]
    fn folding_follows_the_appliers_rules() {
        let image = fold_all(&history());
        assert_eq!(image.topics.keys().copied().collect::<Vec<_>>(), vec![1, 7]);
        let a = &image.topics[&1];
        assert_eq!((a.record.partitions, a.record.replicas.len()), (4, 4));
        assert_eq!(a.at.base_offset, 0);
        let (at, floors) = a.deleted_below.as_ref().unwrap();
        assert_eq!((at.base_offset, floors.clone()), (12, BTreeMap::from([(0, 4), (1, 6)])));
        assert_eq!(image.topic_id("b"), Some(7));
        let keys: Vec<_> = image.offsets.keys().cloned().collect();
        assert_eq!(keys, vec![("g".into(), "a".into()), ("h".into(), "b".into())]);
        let ga = &image.offsets[&("g".to_string(), "a".to_string())];
        assert_eq!(ga.at.base_offset, 10);
        assert_eq!(ga.offsets.values().map(|o| o.offset).collect::<Vec<_>>(), vec![20, 11]);
        assert_eq!(image.txns["t"].1.epoch, 1);
        assert_eq!(image.txns["t"].0.base_offset, 18);
        assert!(image.security.is_some());
        assert_eq!(image.brokers.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(image.removed.keys().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn an_image_stands_for_its_prefix_under_any_suffix() {
        let all = history();
        for cut in 0..=all.len() {
            // The prefix folded, written back as commands, folded again, then the suffix.
            let prefix = fold_all(&all[..cut]);
            let mut replayed = MetaImage::default();
            let commands = prefix.commands();
            let mut last = None;
            for (h, c) in commands {
                assert!(last < Some(h.raft_index), "commands in log order");
                last = Some(h.raft_index);
                replayed.fold(&h, c);
            }
            assert_eq!(replayed, prefix, "an image folds back to itself (cut {cut})");
            for (i, c) in all.iter().enumerate().skip(cut) {
                replayed.fold(&header(i as u64), c.clone());
            }
            assert_eq!(replayed, fold_all(&all), "prefix image + suffix = whole history (cut {cut})");
        }
    }

    #[test]
    fn many_commits_fold_into_one_command_per_group_and_topic() {
        let mut image = MetaImage::default();
        image.fold(&header(0), topic("t", 4));
        for i in 1..200_000u64 {
            image.fold(&header(i), commit(&format!("g{}", i % 3), "t", 1, (i % 4) as u32, i));
        }
        let commands = image.commands();
        assert_eq!(commands.len(), 1 + 3);
    }
}
