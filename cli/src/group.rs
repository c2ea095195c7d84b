//! `tidelog group describe GROUP`: state, generation, members with their partitions, and the
//! committed offset and lag of every partition the group has committed.

use clap::Subcommand;
use tidelog::proto::v1::DescribeGroupRequest;
use tidelog::Client;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Show a group's members, assignments and lag.
    Describe { group: String },
}

pub async fn run(broker: &str, command: GroupCommand) -> anyhow::Result<()> {
    let client = Client::connect(broker).await?;
    match command {
        GroupCommand::Describe { group } => {
            let d = client.groups().describe_group(DescribeGroupRequest { group }).await?.into_inner();
            println!("group {} state={} generation={} leader={}", d.group, d.state, d.generation, d.leader_id);
            for m in &d.members {
                let parts: Vec<String> = m.owned.iter().map(|t| format!("{}{:?}", t.topic, t.partitions)).collect();
                println!(
                    "  member {} client={} topics={:?} partitions={}",
                    m.member_id,
                    m.client_id,
                    m.topics,
                    parts.join(" ")
                );
            }
            for p in &d.partitions {
                let owner = if p.member_id.is_empty() { "-" } else { p.member_id.as_str() };
                println!(
                    "  {}/{} committed={} high_watermark={} lag={} member={owner}",
                    p.topic, p.partition, p.committed_offset, p.high_watermark, p.lag
                );
            }
        }
    }
    Ok(())
}
