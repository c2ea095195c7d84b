//! `tidelog group`: list groups; describe one (state, generation, members with their
//! partitions, committed offset and lag per partition); delete one; reset its committed
//! offsets (Kafka's `kafka-consumer-groups --reset-offsets`: a dry run unless `--execute`).

use clap::Subcommand;
use serde_json::json;
use tidelog::ResetTo;

use crate::output::{print_json, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List every group: state, members, assignor.
    List,
    /// Show a group's members, assignments and lag.
    Describe { group: String },
    /// Delete a group's committed offsets (refused while it has members).
    Delete { group: String },
    /// Move an inactive group's committed offsets for one topic. Shows each partition's offset
    /// before and after; changes nothing unless `--execute` is given.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_timestamp_ms", "shift_by"])))]
pub struct ResetArgs {
    pub group: String,
    #[arg(long)]
    pub topic: String,
    /// Only these partitions (repeat, or comma-separated); default every partition.
    #[arg(long = "partition", value_delimiter = ',')]
    pub partitions: Vec<u32>,
    /// To each partition's log start.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's high watermark (skip everything there is).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (clamped into log start..high watermark).
    #[arg(long)]
    pub to_offset: Option<u64>,
    /// To the first record appended at or after this time (ms since the epoch).
    #[arg(long)]
    pub to_timestamp_ms: Option<i64>,
    /// By this many records from the committed offset (negative: back).
    #[arg(long, allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Commit the new offsets (without it: a dry run).
    #[arg(long, conflicts_with = "dry_run")]
    pub execute: bool,
    /// Only show what would change (the default).
    #[arg(long)]
    pub dry_run: bool,
}

impl ResetArgs {
    fn to(&self) -> ResetTo {
        match (self.to_offset, self.to_timestamp_ms, self.shift_by) {
            (Some(o), _, _) => ResetTo::Offset(o),
            (_, Some(t), _) => ResetTo::TimestampMs(t),
            (_, _, Some(d)) => ResetTo::ShiftBy(d),
            _ if self.to_latest => ResetTo::Latest(true),
            _ => ResetTo::Earliest(true),
        }
    }
}

pub async fn run(broker: &crate::BrokerArg, command: GroupCommand, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    let json = format == OutputFormat::Json;
    match command {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            if json {
                let all: Vec<_> = groups
                    .iter()
                    .map(|g| json!({"group": g.group, "state": g.state, "members": g.members, "protocol": g.protocol}))
                    .collect();
                print_json(&json!(all));
            }
            for g in groups.iter().filter(|_| !json) {
                let protocol = if g.protocol.is_empty() { "-" } else { g.protocol.as_str() };
                println!("{}\tstate={} members={} protocol={protocol}", g.group, g.state, g.members);
            }
        }
        GroupCommand::Describe { group } => {
            let d = client.describe_group(&group).await?;
            if json {
                let members: Vec<_> = d
                    .members
                    .iter()
                    .map(|m| {
                        let owned: Vec<_> =
                            m.owned.iter().map(|t| json!({"topic": t.topic, "partitions": t.partitions})).collect();
                        json!({"member_id": m.member_id, "client_id": m.client_id, "topics": m.topics, "assigned": owned})
                    })
                    .collect();
                let partitions: Vec<_> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({"topic": p.topic, "partition": p.partition, "committed": p.committed_offset,
                               "high_watermark": p.high_watermark, "lag": p.lag,
                               "last_stable_offset": p.last_stable_offset,
                               "member_id": (!p.member_id.is_empty()).then_some(&p.member_id)})
                    })
                    .collect();
                print_json(&json!({"group": d.group, "state": d.state, "generation": d.generation,
                                   "leader": d.leader_id, "members": members, "partitions": partitions}));
                return Ok(());
            }
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
                // The last stable offset only where a transaction holds it below the HW.
                let stable = if p.last_stable_offset < p.high_watermark {
                    format!(" last_stable_offset={}", p.last_stable_offset)
                } else {
                    String::new()
                };
                println!(
                    "  {}/{} committed={} high_watermark={} lag={}{stable} member={owner}",
                    p.topic, p.partition, p.committed_offset, p.high_watermark, p.lag
                );
            }
        }
        GroupCommand::Delete { group } => {
            let n = client.delete_group(&group).await?;
            if json {
                print_json(&json!({"group": group, "deleted": true, "offsets_deleted": n}));
            } else {
                println!("deleted group {group} ({n} committed offsets)");
            }
        }
        GroupCommand::ResetOffsets(args) => {
            let execute = args.execute;
            let resets = client.reset_offsets(&args.group, &args.topic, &args.partitions, args.to(), !execute).await?;
            if json {
                let all: Vec<_> = resets
                    .iter()
                    .map(|r| json!({"topic": args.topic, "partition": r.partition, "before": r.before, "after": r.after}))
                    .collect();
                print_json(&json!({"group": args.group, "executed": execute, "partitions": all}));
                return Ok(());
            }
            for r in &resets {
                let before = r.before.map_or_else(|| "-".to_string(), |b| b.to_string());
                println!("{}/{} before={before} after={}", args.topic, r.partition, r.after);
            }
            if execute {
                println!("committed new offsets for group {} ({} partitions)", args.group, resets.len());
            } else {
                println!("dry run: nothing changed (add --execute to commit these offsets)");
            }
        }
    }
    Ok(())
}
