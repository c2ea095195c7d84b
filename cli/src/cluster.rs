//! `tidelog cluster describe|health|add-broker|remove-broker|rebalance`: the brokers (with their place
//! in the metadata group: voter or observer), the controller, and per partition its
//! leader, replicas, in-sync replicas and high watermark. Each partition is described by its
//! leader (only the leader knows who is in sync), so every reachable broker is asked.
//!
//! `rebalance` plans with `partition::plan_balance` and moves through partition reassignment;
//! `remove-broker` waits while the broker's replicas move away.
//!
//! `health` is `rpk cluster health`: healthy when every broker answers, a controller is
//! known, every partition has a leader and every partition's replicas are all in sync; the
//! exit status is 0 only then (2 otherwise), so scripts and probes can wait on it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::json;
use tidelog::proto::v1::{
    AddBrokerRequest, DescribeClusterRequest, DescribeClusterResponse, ListTopicsRequest, PartitionDescription,
    RemoveBrokerRequest,
};

use crate::output::{partition_json, print_json, OutputFormat};
use crate::partition;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show brokers, the controller, and every partition's leader, replicas and offsets.
    Describe,
    /// Check the cluster: brokers down, leaderless and under-replicated partitions. Exits
    /// with status 2 when unhealthy.
    Health,
    /// Add a broker started with `--join`: ID=HOST:PORT (its client address). It catches up
    /// on the metadata, votes while the metadata group has fewer than three voters (else it
    /// observes), and new topics are placed on it.
    AddBroker {
        /// `id=host:port`.
        #[arg(value_name = "ID=HOST:PORT")]
        new_broker: String,
        /// Its internal listener's host:port, if the brokers call each other there.
        #[arg(long)]
        internal: Option<String>,
    },
    /// Remove a broker: its partition replicas move to the other brokers first (this waits
    /// for them), then it leaves the metadata group and stops; it cannot return under its id
    /// unless added again.
    RemoveBroker {
        id: u32,
        /// Give up waiting for its replicas to move after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Even out replicas and preferred leaders over the brokers (after adding or removing
    /// some): the fewest replica moves that leave every broker within one replica of every
    /// other, then preferred-leader swaps; the plan goes through partition reassignment.
    Rebalance {
        /// Print the plan (Kafka's reassignment JSON) without moving anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        moves: partition::MoveArgs,
    },
}

/// What every reachable broker says about the cluster.
struct Survey {
    cluster: DescribeClusterResponse,
    /// Broker id → whether it answered.
    up: BTreeMap<u32, bool>,
    /// (topic, partition) → the best description seen: the leader's own, if reachable.
    partitions: BTreeMap<(String, u32), PartitionDescription>,
}

async fn survey(broker: &crate::BrokerArg) -> anyhow::Result<Survey> {
    let client = broker.connect().await?;
    let cluster = client.admin().describe_cluster(DescribeClusterRequest {}).await?.into_inner();
    let mut up = BTreeMap::new();
    let mut partitions: BTreeMap<(String, u32), (bool, PartitionDescription)> = BTreeMap::new();
    for b in &cluster.brokers {
        let reached = match client.to_broker(&b.address) {
            Ok(c) => c.admin().list_topics(ListTopicsRequest {}).await.map(|r| r.into_inner()).ok(),
            Err(_) => None,
        };
        up.insert(b.id, reached.is_some());
        for t in reached.map(|r| r.topics).unwrap_or_default() {
            for p in t.partitions {
                let from_leader = p.leader_id == b.id;
                let better = partitions.get(&(t.name.clone(), p.partition)).is_none_or(|(led, _)| from_leader && !led);
                if better {
                    partitions.insert((t.name.clone(), p.partition), (from_leader, p));
                }
            }
        }
    }
    let partitions = partitions.into_iter().map(|(k, (_, p))| (k, p)).collect();
    Ok(Survey { cluster, up, partitions })
}

pub async fn run(broker: &crate::BrokerArg, command: ClusterCommand, format: OutputFormat) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Describe => describe(&survey(broker).await?, format),
        ClusterCommand::Health => health(&survey(broker).await?, format),
        ClusterCommand::AddBroker { new_broker: spec, internal } => {
            let (id, address) = spec
                .split_once('=')
                .and_then(|(id, a)| Some((id.trim().parse::<u32>().ok()?, a.trim().to_string())))
                .ok_or_else(|| anyhow::anyhow!("{spec:?}: use ID=HOST:PORT, e.g. 4=10.0.0.4:9092"))?;
            let req = AddBrokerRequest { id, address, internal_address: internal.unwrap_or_default() };
            let added = broker.connect().await?.admin().add_broker(req).await?.into_inner();
            let b = added.broker.unwrap_or_default();
            println!("broker {} {} added ({})", b.id, b.address, if b.role.is_empty() { "joining" } else { &b.role });
            Ok(())
        }
        ClusterCommand::RemoveBroker { id, timeout } => remove_broker(broker, id, Duration::from_secs(timeout)).await,
        ClusterCommand::Rebalance { dry_run, moves: partition::MoveArgs { throttle, wait, timeout } } => {
            let client = broker.connect().await?;
            let cluster = client.admin().describe_cluster(DescribeClusterRequest {}).await?.into_inner();
            let brokers: Vec<u32> = cluster.brokers.iter().map(|b| b.id).collect();
            let moving =
                partition::in_progress(broker, None).await?.into_iter().map(|m| (m.topic, m.partition)).collect();
            let plan = partition::plan_balance(&brokers, &partition::assignment(broker).await?, &moving);
            if dry_run || plan.partitions.is_empty() {
                println!("{}", serde_json::to_string_pretty(&plan)?);
                if plan.partitions.is_empty() {
                    println!("balanced: nothing to move");
                }
                return Ok(());
            }
            partition::submit(broker, &plan, throttle).await?;
            println!("{} partition moves started", plan.partitions.len());
            if wait {
                partition::wait_done(broker, None, Duration::from_secs(timeout), format).await?;
            }
            Ok(())
        }
    }
}

/// Asks for the removal until the broker's replicas have moved away (the broker starts
/// those moves and refuses until they are done), within `timeout`.
async fn remove_broker(broker: &crate::BrokerArg, id: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut told = false;
    loop {
        let status = match broker.connect().await?.admin().remove_broker(RemoveBrokerRequest { id }).await {
            Ok(_) => {
                println!("broker {id} removed");
                return Ok(());
            }
            Err(s) => s,
        };
        let moving = status.code() == tonic::Code::FailedPrecondition && status.message().contains("moving them");
        // A controller change or a busy broker mid-move: retried too.
        let retry = moving || status.code() == tonic::Code::Unavailable;
        if !retry || Instant::now() >= deadline {
            return Err(status.into());
        }
        if moving && !told {
            println!("{}", status.message());
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn describe(s: &Survey, format: OutputFormat) -> anyhow::Result<()> {
    let c = &s.cluster;
    if format == OutputFormat::Json {
        let brokers: Vec<_> = c
            .brokers
            .iter()
            .map(|b| {
                let up = s.up.get(&b.id).copied().unwrap_or(false);
                json!({"id": b.id, "address": b.address, "up": up, "role": b.role})
            })
            .collect();
        let partitions: Vec<_> = s
            .partitions
            .iter()
            .map(|((topic, _), p)| {
                let mut v = partition_json(p);
                v["topic"] = json!(topic);
                v
            })
            .collect();
        print_json(
            &json!({"cluster_id": c.cluster_id, "controller": c.controller_id, "brokers": brokers, "partitions": partitions}),
        );
        return Ok(());
    }
    println!("cluster {} controller: {}", c.cluster_id, c.controller_id);
    for b in &c.brokers {
        let state = if s.up.get(&b.id).copied().unwrap_or(false) { "up" } else { "unreachable" };
        let role = if b.role.is_empty() { String::new() } else { format!(" {}", b.role) };
        println!("  broker {} {} {state}{role}", b.id, b.address);
    }
    for ((topic, index), p) in &s.partitions {
        let leader = if p.leader_id == 0 { "none".to_string() } else { p.leader_id.to_string() };
        let moving = if p.adding_replica_ids.is_empty() && p.removing_replica_ids.is_empty() {
            String::new()
        } else {
            format!(" moving: adding={:?} removing={:?}", p.adding_replica_ids, p.removing_replica_ids)
        };
        println!(
            "  {topic}/{index} leader={leader} replicas={:?} in_sync={:?} high_watermark={} log_end={}{moving}",
            p.replica_ids, p.in_sync_replica_ids, p.high_watermark, p.log_end_offset
        );
    }
    Ok(())
}

fn health(s: &Survey, format: OutputFormat) -> anyhow::Result<()> {
    let down: Vec<u32> = s.up.iter().filter(|(_, up)| !**up).map(|(id, _)| *id).collect();
    let name = |(t, p): &(String, u32)| format!("{t}/{p}");
    let leaderless: Vec<String> = s.partitions.iter().filter(|(_, p)| p.leader_id == 0).map(|(k, _)| name(k)).collect();
    // Only a leader's description knows who is in sync; a partition whose leader did not
    // describe it (unreachable) counts as leaderless above, not here.
    let under_replicated: Vec<String> = s
        .partitions
        .iter()
        .filter(|(_, p)| p.leader_id != 0 && !p.in_sync_replica_ids.is_empty())
        .filter(|(_, p)| p.replica_ids.iter().any(|r| !p.in_sync_replica_ids.contains(r)))
        .map(|(k, _)| name(k))
        .collect();
    let controller = s.cluster.controller_id;
    let healthy = down.is_empty() && controller != 0 && leaderless.is_empty() && under_replicated.is_empty();
    match format {
        OutputFormat::Json => print_json(&json!({
            "healthy": healthy,
            "controller": (controller != 0).then_some(controller),
            "brokers": s.up.keys().collect::<Vec<_>>(),
            "brokers_down": down,
            "leaderless_partitions": leaderless,
            "under_replicated_partitions": under_replicated,
        })),
        OutputFormat::Text => {
            println!("healthy: {healthy}");
            println!("controller: {}", if controller == 0 { "none".to_string() } else { controller.to_string() });
            println!("brokers: {:?}", s.up.keys().collect::<Vec<_>>());
            println!("brokers down: {down:?}");
            println!("leaderless partitions: {leaderless:?}");
            println!("under-replicated partitions: {under_replicated:?}");
        }
    }
    if !healthy {
        return Err(crate::Reported("the cluster is not healthy".into()).into());
    }
    Ok(())
}
