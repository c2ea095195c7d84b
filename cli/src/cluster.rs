//! `tidelog cluster describe`: the brokers, the controller, and per partition its leader,
//! replicas, in-sync replicas and high watermark. Each partition is described by its leader
//! (only the leader knows who is in sync), so every reachable broker is asked.

use std::collections::BTreeMap;

use clap::Subcommand;
use tidelog::proto::v1::{DescribeClusterRequest, ListTopicsRequest, PartitionDescription};
use tidelog::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show brokers, the controller, and every partition's leader, replicas and offsets.
    Describe,
}

pub async fn run(broker: &str, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Describe => describe(broker).await,
    }
}

async fn describe(broker: &str) -> anyhow::Result<()> {
    let client = Client::connect(broker).await?;
    let cluster = client.admin().describe_cluster(DescribeClusterRequest {}).await?.into_inner();
    println!("cluster {} controller: {}", cluster.cluster_id, cluster.controller_id);
    // (topic, partition) → the best description seen: the leader's own, if reachable.
    let mut partitions: BTreeMap<(String, u32), (bool, PartitionDescription)> = BTreeMap::new();
    for b in &cluster.brokers {
        let reached = match client.to_broker(&b.address) {
            Ok(c) => c.admin().list_topics(ListTopicsRequest {}).await.map(|r| r.into_inner()).ok(),
            Err(_) => None,
        };
        println!("  broker {} {} {}", b.id, b.address, if reached.is_some() { "up" } else { "unreachable" });
        for t in reached.map(|r| r.topics).unwrap_or_default() {
            for p in t.partitions {
                let from_leader = p.leader_id == b.id;
                let slot = partitions.entry((t.name.clone(), p.partition));
                match slot {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((from_leader, p));
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) if from_leader && !o.get().0 => {
                        o.insert((true, p));
                    }
                    std::collections::btree_map::Entry::Occupied(_) => {}
                }
            }
        }
    }
    for ((topic, index), (_, p)) in &partitions {
        let leader = if p.leader_id == 0 { "none".to_string() } else { p.leader_id.to_string() };
        println!(
            "  {topic}/{index} leader={leader} replicas={:?} in_sync={:?} high_watermark={} log_end={}",
            p.replica_ids, p.in_sync_replica_ids, p.high_watermark, p.log_end_offset
        );
    }
    Ok(())
}
