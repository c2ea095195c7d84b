//! The `tidelog` binary: `serve` runs a broker (the `tidelog-server` library does all of it;
//! `serve.rs` only turns flags into its config); the other subcommands are clients built on the
//! Rust SDK (`topic`, `cluster`, `group`, `produce`, `consume`) and the load tool (`bench`).
//!
//! This crate is the only place that joins the broker library with the client SDK, clap and
//! hdrhistogram: the broker library depends on none of them. It also holds the integration
//! tests that run the binary as real broker processes (`tests/`).

mod bench;
mod cluster;
mod consume;
mod group;
mod produce;
mod serve;
mod topic;

use clap::{Parser, Subcommand};

mod args;
pub use args::FsyncArg;

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

async fn run(cli: Cli) -> anyhow::Result<()> {
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidelog: error: {}", error_text(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// What the user is told, once: a broker's answer is its message (it says what to do); any
/// other error is its chain of causes.
fn error_text(e: &anyhow::Error) -> String {
    // Through the SDK, or from a raw generated client.
    let status = match e.downcast_ref::<tidelog::Error>() {
        Some(tidelog::Error::Status(s)) => Some(s),
        _ => e.downcast_ref::<tonic::Status>(),
    };
    match status {
        Some(s) if s.message().is_empty() => format!("the broker answered {:?}", s.code()),
        Some(s) if s.code() == tonic::Code::Unavailable => {
            format!("{} (broker unavailable; is it running and reachable?)", s.message())
        }
        Some(s) => s.message().to_string(),
        None => {
            // Transport layers repeat themselves ("tcp connect error: tcp connect error"): each
            // cause once.
            let mut causes: Vec<String> = Vec::new();
            for c in e.chain().map(ToString::to_string) {
                if causes.last() != Some(&c) {
                    causes.push(c);
                }
            }
            causes.join(": ")
        }
    }
}
