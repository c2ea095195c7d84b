//! `tidelog partition reassign|reassignments`: moving partition replicas between brokers
//! (Kafka's `kafka-reassign-partitions`), and the balancer's plan (`plan_balance`, used by
//! `tidelog cluster rebalance`).
//!
//! A plan is Kafka's JSON: `{"version":1,"partitions":[{"topic":"t","partition":0,
//! "replicas":[1,2,4]}]}`, replicas preferred leader first. `reassign --plan` submits it (and
//! prints the current assignment of those partitions, as a plan to roll back with);
//! `reassign --cancel` cancels the moves of the plan's partitions; `reassignments` shows the
//! moves in progress with each new replica's lag, asked of every broker (only a partition's
//! leader knows its progress); `--wait` polls until none is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidelog::proto::v1::{
    AlterPartitionReassignmentsRequest, DescribeClusterRequest, ListPartitionReassignmentsRequest, ListTopicsRequest,
    OngoingReassignment, PartitionReassignment,
};

use crate::output::{print_json, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum PartitionCommand {
    /// Move partition replicas as a JSON plan says (Kafka's reassignment JSON).
    Reassign {
        /// The plan: {"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2,4]}]}.
        #[arg(long)]
        plan: std::path::PathBuf,
        /// Cancel the moves of the plan's partitions instead (back to their replicas before).
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        moves: MoveArgs,
    },
    /// The moves in progress, with each new replica's progress.
    Reassignments {
        /// Only this topic's.
        #[arg(long)]
        topic: Option<String>,
        /// Wait until none is left (or `--timeout` passes).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

/// How moves are started and followed (`partition reassign`, `cluster rebalance`).
#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// Bytes/s each leader sends to replicas catching up (0: the brokers' default).
    #[arg(long, default_value_t = 0)]
    pub throttle: u64,
    /// Wait until the moves are done (or `--timeout` passes), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

/// Kafka's reassignment JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default = "one")]
    pub version: u32,
    pub partitions: Vec<PlannedPartition>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPartition {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<u32>,
}

pub async fn run(broker: &crate::BrokerArg, command: PartitionCommand, format: OutputFormat) -> anyhow::Result<()> {
    match command {
        PartitionCommand::Reassign { plan, cancel, moves: MoveArgs { throttle, wait, timeout } } => {
            let text = std::fs::read_to_string(&plan)
                .map_err(|e| anyhow::anyhow!("cannot read the plan {}: {e}", plan.display()))?;
            let mut plan: Plan = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a reassignment plan ({e})", plan.display()))?;
            if cancel {
                plan.partitions.iter_mut().for_each(|p| p.replicas.clear());
            }
            let before = current_assignment(broker, &plan).await?;
            submit(broker, &plan, throttle).await?;
            if !cancel && format == OutputFormat::Text {
                println!("current assignment (to roll back with --plan):");
                println!("{}", serde_json::to_string(&before)?);
            }
            println!("{} partition moves {}", plan.partitions.len(), if cancel { "cancelled" } else { "started" });
            if wait {
                wait_done(broker, None, Duration::from_secs(timeout), format).await?;
            }
            Ok(())
        }
        PartitionCommand::Reassignments { topic, wait, timeout } => {
            if wait {
                return wait_done(broker, topic.as_deref(), Duration::from_secs(timeout), format).await;
            }
            let moves = in_progress(broker, topic.as_deref()).await?;
            show(&moves, format);
            Ok(())
        }
    }
}

/// Submits a plan (an empty replica list cancels that partition's move).
pub async fn submit(broker: &crate::BrokerArg, plan: &Plan, throttle: u64) -> anyhow::Result<()> {
    let req = AlterPartitionReassignmentsRequest {
        reassignments: plan
            .partitions
            .iter()
            .map(|p| PartitionReassignment {
                topic: p.topic.clone(),
                partition: p.partition,
                replicas: p.replicas.clone(),
            })
            .collect(),
        throttle_bytes_per_sec: throttle,
    };
    broker.connect().await?.admin().alter_partition_reassignments(req).await?;
    Ok(())
}

/// The plan's partitions as they are placed now.
async fn current_assignment(broker: &crate::BrokerArg, plan: &Plan) -> anyhow::Result<Plan> {
    let placed = assignment(broker).await?;
    let partitions = plan
        .partitions
        .iter()
        .filter_map(|p| {
            let replicas = placed.get(&(p.topic.clone(), p.partition))?;
            Some(PlannedPartition { topic: p.topic.clone(), partition: p.partition, replicas: replicas.clone() })
        })
        .collect();
    Ok(Plan { version: 1, partitions })
}

/// Every partition's replicas, preferred leader first.
pub async fn assignment(broker: &crate::BrokerArg) -> anyhow::Result<BTreeMap<(String, u32), Vec<u32>>> {
    let topics = broker.connect().await?.admin().list_topics(ListTopicsRequest {}).await?.into_inner().topics;
    Ok(topics
        .into_iter()
        .flat_map(|t| t.partitions.into_iter().map(move |p| ((t.name.clone(), p.partition), p.replica_ids)))
        .collect())
}

/// The moves in progress, each from its partition's leader where one answered (with
/// progress), else from any broker.
pub async fn in_progress(broker: &crate::BrokerArg, topic: Option<&str>) -> anyhow::Result<Vec<OngoingReassignment>> {
    let client = broker.connect().await?;
    let cluster = client.admin().describe_cluster(DescribeClusterRequest {}).await?.into_inner();
    let req = ListPartitionReassignmentsRequest { topic: topic.unwrap_or_default().to_string() };
    let mut best: BTreeMap<(String, u32), OngoingReassignment> = BTreeMap::new();
    let mut answered = 0;
    for b in &cluster.brokers {
        let Ok(c) = client.to_broker(&b.address) else { continue };
        let Ok(list) = c.admin().list_partition_reassignments(req.clone()).await else { continue };
        answered += 1;
        for m in list.into_inner().reassignments {
            let key = (m.topic.clone(), m.partition);
            if best.get(&key).is_none_or(|seen| seen.leader_id == 0 && m.leader_id != 0) {
                best.insert(key, m);
            }
        }
    }
    anyhow::ensure!(answered > 0, "no broker of the cluster answered");
    Ok(best.into_values().collect())
}

fn show(moves: &[OngoingReassignment], format: OutputFormat) {
    if format == OutputFormat::Json {
        let v: Vec<_> = moves
            .iter()
            .map(|m| {
                let adding: Vec<_> = m
                    .adding
                    .iter()
                    .map(|a| json!({"broker": a.broker_id, "lag_entries": a.lag_entries, "role": a.role}))
                    .collect();
                json!({
                    "topic": m.topic, "partition": m.partition, "replicas": m.replicas,
                    "target_replicas": m.target_replicas, "adding": m.adding_replica_ids,
                    "removing": m.removing_replica_ids,
                    "leader": (m.leader_id != 0).then_some(m.leader_id), "progress": adding,
                })
            })
            .collect();
        print_json(&json!({ "reassignments": v }));
        return;
    }
    if moves.is_empty() {
        println!("no partition moves in progress");
    }
    for m in moves {
        let progress: Vec<String> = m
            .adding
            .iter()
            .map(|a| format!("{}: {} ({} entries behind)", a.broker_id, a.role, a.lag_entries))
            .collect();
        let progress = if progress.is_empty() { "progress: ask its leader".to_string() } else { progress.join(", ") };
        println!(
            "  {}/{} {:?} -> {:?} adding={:?} removing={:?} {progress}",
            m.topic, m.partition, m.replicas, m.target_replicas, m.adding_replica_ids, m.removing_replica_ids
        );
    }
}

/// Polls until no move (of `topic`, or at all) is in progress.
pub async fn wait_done(
    broker: &crate::BrokerArg,
    topic: Option<&str>,
    timeout: Duration,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now() - Duration::from_secs(60);
    loop {
        // A broker busy with a move may miss an answer: that is not the end of the wait.
        let moves = match in_progress(broker, topic).await {
            Ok(m) => m,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting: {}", crate::error_text(&e));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if moves.is_empty() {
            println!("every partition move is done");
            return Ok(());
        }
        if Instant::now() >= deadline {
            show(&moves, format);
            anyhow::bail!("{} partition moves still in progress after {timeout:?}", moves.len());
        }
        if last_print.elapsed() >= Duration::from_secs(5) && format == OutputFormat::Text {
            println!("{} partition moves in progress:", moves.len());
            show(&moves, format);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The balancer's plan: the fewest single-replica moves that leave every broker's replica
/// count within one of every other's, then replica reorderings (no data moves) that leave
/// every broker's preferred-leader count within one of every other's where a partition
/// allows it. Rule for replicas: repeatedly move one replica across the widest gap between
/// two brokers whose counts differ by more than one and where some partition allows it (the
/// first, in topic and partition order, that the receiving broker does not hold), in the
/// replica's place in the list. Partitions already moving are left as they are.
pub fn plan_balance(
    brokers: &[u32],
    assignment: &BTreeMap<(String, u32), Vec<u32>>,
    moving: &BTreeSet<(String, u32)>,
) -> Plan {
    let mut placed: BTreeMap<(String, u32), Vec<u32>> =
        assignment.iter().filter(|(k, _)| !moving.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let count = |placed: &BTreeMap<(String, u32), Vec<u32>>, leaders: bool| -> BTreeMap<u32, usize> {
        let mut c: BTreeMap<u32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
        for (k, r) in assignment {
            let r = placed.get(k).unwrap_or(r);
            for b in if leaders { &r[..r.len().min(1)] } else { &r[..] } {
                if let Some(n) = c.get_mut(b) {
                    *n += 1;
                }
            }
        }
        c
    };
    // Bounded: each move lowers the sum of squares of the counts.
    for _ in 0..assignment.len() * brokers.len() + 1 {
        let c = count(&placed, false);
        let Some((from, to)) =
            pairs(&c).into_iter().find(|(from, to)| placed.values().any(|r| r.contains(from) && !r.contains(to)))
        else {
            break;
        };
        if let Some(r) = placed.values_mut().find(|r| r.contains(&from) && !r.contains(&to)) {
            let pos = r.iter().position(|b| *b == from).unwrap_or(0);
            r[pos] = to;
        }
    }
    for _ in 0..assignment.len() * brokers.len() + 1 {
        let c = count(&placed, true);
        let Some((from, to)) =
            pairs(&c).into_iter().find(|(from, to)| placed.values().any(|r| r.first() == Some(from) && r.contains(to)))
        else {
            break;
        };
        if let Some(r) = placed.values_mut().find(|r| r.first() == Some(&from) && r.contains(&to)) {
            let pos = r.iter().position(|b| *b == to).unwrap_or(0);
            r.swap(0, pos);
        }
    }
    let partitions = placed
        .into_iter()
        .filter(|(k, r)| assignment.get(k) != Some(r))
        .map(|((topic, partition), replicas)| PlannedPartition { topic, partition, replicas })
        .collect();
    Plan { version: 1, partitions }
}

/// The broker pairs `(from, to)` whose counts differ by more than one, the widest gaps first
/// (ties: lower ids), for the balancer to move one replica or leadership between.
fn pairs(counts: &BTreeMap<u32, usize>) -> Vec<(u32, u32)> {
    let mut out: Vec<(usize, u32, u32)> = Vec::new();
    for (from, hi) in counts {
        for (to, lo) in counts {
            if *hi > lo + 1 {
                out.push((hi - lo, *from, *to));
            }
        }
    }
    out.sort_by_key(|(gap, from, to)| (std::cmp::Reverse(*gap), *from, *to));
    out.into_iter().map(|(_, from, to)| (from, to)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(brokers: &[u32], a: &BTreeMap<(String, u32), Vec<u32>>, plan: &Plan, leaders: bool) -> usize {
        let mut a = a.clone();
        for p in &plan.partitions {
            a.insert((p.topic.clone(), p.partition), p.replicas.clone());
        }
        let mut c: BTreeMap<u32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
        for r in a.values() {
            for b in if leaders { &r[..1] } else { &r[..] } {
                *c.get_mut(b).unwrap() += 1;
            }
        }
        c.values().max().unwrap() - c.values().min().unwrap()
    }

    #[test]
    fn a_grown_cluster_is_evened_with_few_moves() {
        // 12 partitions, RF 3, on brokers 1-3; brokers 4 and 5 join empty.
        let a: BTreeMap<(String, u32), Vec<u32>> =
            (0..12u32).map(|p| (("t".to_string(), p), (0..3).map(|k| (p + k) % 3 + 1).collect())).collect();
        let brokers = [1, 2, 3, 4, 5];
        let plan = plan_balance(&brokers, &a, &BTreeSet::new());
        assert!(spread(&brokers, &a, &plan, false) <= 1);
        assert!(spread(&brokers, &a, &plan, true) <= 1);
        // 36 replicas over 5 brokers: 7.2 each, so 14 or 15 replica moves are the least.
        let moved: usize = plan
            .partitions
            .iter()
            .map(|p| p.replicas.iter().filter(|b| !a[&(p.topic.clone(), p.partition)].contains(b)).count())
            .sum();
        assert!(moved <= 15, "{moved} replica moves");
        for p in &plan.partitions {
            assert_eq!(p.replicas.iter().collect::<BTreeSet<_>>().len(), 3, "{p:?}");
        }
        // Balanced already: nothing to do. Partitions in flight are left alone.
        let mut done = a.clone();
        for p in &plan.partitions {
            done.insert((p.topic.clone(), p.partition), p.replicas.clone());
        }
        assert!(plan_balance(&brokers, &done, &BTreeSet::new()).partitions.is_empty());
        let all: BTreeSet<(String, u32)> = a.keys().cloned().collect();
        assert!(plan_balance(&brokers, &a, &all).partitions.is_empty());
    }

    #[test]
    fn plans_are_kafka_json() {
        let text = r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2,4]}]}"#;
        let plan: Plan = serde_json::from_str(text).unwrap();
        assert_eq!(plan.partitions[0].replicas, vec![1, 2, 4]);
        assert_eq!(serde_json::to_string(&plan).unwrap(), text);
    }
}
