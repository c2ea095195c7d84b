//! `tidelog cluster describe|health|add-broker|remove-broker`: the brokers (with their place
//! in the metadata group: voter or observer), the controller, and per partition its
//! leader, replicas, in-sync replicas and high watermark. Each partition is described by its
//! leader (only the leader knows who is in sync), so every reachable broker is asked.
//!
//! `health` is `rpk cluster health`: healthy when every broker answers, a controller is
//! known, every partition has a leader and every partition's replicas are all in sync; the
//! exit status is 0 only then (2 otherwise), so scripts and probes can wait on it.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::json;
use tidelog::proto::v1::{
    AddBrokerRequest, DescribeClusterRequest, DescribeClusterResponse, ListTopicsRequest, PartitionDescription,
    RemoveBrokerRequest,
};

use crate::output::{partition_json, print_json, OutputFormat};

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
    /// Remove a broker that holds no partition replica: it leaves the metadata group and
    /// stops; it cannot return under its id unless added again.
    RemoveBroker { id: u32 },
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
        ClusterCommand::RemoveBroker { id } => {
            broker.connect().await?.admin().remove_broker(RemoveBrokerRequest { id }).await?;
            println!("broker {id} removed");
            Ok(())
        }
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
        println!(
            "  {topic}/{index} leader={leader} replicas={:?} in_sync={:?} high_watermark={} log_end={}",
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
