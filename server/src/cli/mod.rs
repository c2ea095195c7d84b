//! The `tidelog` command line: `serve` runs a broker; the other subcommands are clients built
//! on the Rust SDK (`topic`, `cluster`, `group`, `produce`, `consume`, `bench`).

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod serve;
pub mod topic;

use clap::{Parser, Subcommand};

/// Default broker address for client subcommands.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:9690";

#[derive(Debug, Parser)]
#[command(name = "tidelog", version, about = "Tidelog: a partitioned, replayable commit log over gRPC")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct BrokerArg {
    /// Broker address.
    #[arg(long, short = 'b', env = "TIDELOG_BROKER", default_value = DEFAULT_BROKER, global = true)]
    pub broker: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker (a single node unless --peers names a cluster).
    Serve(serve::ServeArgs),
    /// Create, list, describe or delete topics.
    Topic {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// Describe a cluster: brokers, controller, partition leaders and replicas.
    Cluster {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Inspect consumer groups.
    Group {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Produce lines from stdin as records.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency against a running broker.
    Bench(bench::BenchArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topic { broker, command } => topic::run(&broker.broker, command).await,
        Command::Cluster { broker, command } => cluster::run(&broker.broker, command).await,
        Command::Group { broker, command } => group::run(&broker.broker, command).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
