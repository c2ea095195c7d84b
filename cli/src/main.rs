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
mod offsets;
mod output;
mod partition;
mod produce;
mod render;
mod security;
mod serve;
mod topic;
mod txn;

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
    /// Connect over TLS, trusting the CA certificates in this PEM file.
    #[arg(long, env = "TIDELOG_TLS_CA", global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: this client's certificate (PEM), for brokers that require one (mTLS).
    #[arg(long, env = "TIDELOG_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// With --tls-cert: its private key (PEM).
    #[arg(long, env = "TIDELOG_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the broker's certificate must carry (default: the address's host).
    #[arg(long, env = "TIDELOG_TLS_SERVER_NAME", global = true)]
    pub tls_server_name: Option<String>,
    /// A bearer token (JWT) to authenticate with (brokers with `[auth.jwt]`).
    #[arg(long, env = "TIDELOG_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The client id to send (quotas can be set per client id).
    #[arg(long, env = "TIDELOG_CLIENT_ID", global = true, default_value = "tidelog-cli")]
    pub client_id: String,
}

impl BrokerArg {
    /// A client of the broker, over TLS when `--tls-ca` is given.
    pub async fn connect(&self) -> anyhow::Result<tidelog::Client> {
        let Some(ca) = &self.tls_ca else {
            anyhow::ensure!(
                self.tls_cert.is_none(),
                "--tls-cert needs --tls-ca (the CA that signed the broker's certificate)"
            );
            return self.credentials(tidelog::Client::connect(&self.broker).await?);
        };
        let mut tls = tidelog::TlsOptions::from_files(ca, self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        tls.server_name.clone_from(&self.tls_server_name);
        self.credentials(tidelog::Client::connect_tls(&self.broker, tls).await?)
    }

    fn credentials(&self, client: tidelog::Client) -> anyhow::Result<tidelog::Client> {
        let client = client.with_client_id(&self.client_id)?;
        Ok(match &self.token {
            Some(t) => client.with_token(t.trim())?,
            None => client,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a broker (a single node unless --peers names a cluster).
    Serve(serve::ServeArgs),
    /// Create, list, describe, alter, grow, trim or delete topics.
    Topic {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// Describe a cluster and check its health.
    Cluster {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Move partition replicas between brokers, and follow the moves.
    Partition {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: partition::PartitionCommand,
    },
    /// List, describe, delete consumer groups and reset their offsets.
    Group {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Add, list and remove ACLs (brokers with `[auth] authorization = true`).
    Acl {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: security::AclCommand,
    },
    /// Set, remove and describe client quotas (bytes/s, requests/s per user or client id).
    Quota {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: security::QuotaCommand,
    },
    /// List and describe transactions, find hanging ones, abort one.
    Txn {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
        #[command(subcommand)]
        command: txn::TxnCommand,
    },
    /// The principal the broker sees for these credentials.
    Whoami {
        #[command(flatten)]
        broker: BrokerArg,
        #[command(flatten)]
        output: output::OutputArg,
    },
    /// Offsets of a topic's partitions: earliest, latest, or the first at or after a time.
    Offsets(offsets::OffsetsArgs),
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
        Command::Topic { broker, output, command } => topic::run(&broker, command, output.format).await,
        Command::Cluster { broker, output, command } => cluster::run(&broker, command, output.format).await,
        Command::Partition { broker, output, command } => partition::run(&broker, command, output.format).await,
        Command::Group { broker, output, command } => group::run(&broker, command, output.format).await,
        Command::Acl { broker, output, command } => security::acl(&broker, command, output.format).await,
        Command::Quota { broker, output, command } => security::quota(&broker, command, output.format).await,
        Command::Txn { broker, output, command } => txn::run(&broker, command, output.format).await,
        Command::Whoami { broker, output } => security::whoami(&broker, output.format).await,
        Command::Offsets(args) => offsets::run(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// A failure already reported to the user (per item, by the command): main only sets the
/// exit status.
#[derive(Debug)]
pub struct Reported(pub String);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reported {}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keep_freed_buffers();
    let cli = Cli::parse();
    // Client subcommands trace like any service: with an OTLP endpoint their records' spans
    // (`send`, `process`) are exported and carried in record headers.
    let _telemetry = if matches!(cli.command, Command::Serve(_)) {
        None
    } else {
        die_on_closed_pipe();
        match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(e) if !e.is_empty() => {
                tidelog_server::telemetry::init_with("tidelog-cli", None, "warn,tidelog=info").ok()
            }
            _ => None,
        }
    };
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Reported>().is_some() => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("tidelog: error: {}", error_text(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// glibc's allocator hands large freed blocks back to the kernel (heap trim, `madvise`) and
/// maps blocks above its mmap threshold afresh, so large buffers freed and allocated again
/// are faulted in and zeroed by the kernel every time. In the broker that was a consumer's
/// 1 MiB read buffers: 9 % of its CPU per byte served. In the client subcommands it is the
/// SDK consumer's per-response buffers (tonic's decode buffer, the decoded records): runs of
/// `bench consume --sdk` took 2-4 thousand page faults or 50-290 thousand, and 0.34 or up to
/// 0.64 µs of CPU per 1 KiB record, by which way glibc went (docs/PERFORMANCE.md). Blocks up to
/// 32 MiB now come from the heap, and up to 128 MiB of freed memory stays there for reuse. The
/// memory is what the process used at its peak anyway; it is not returned while idle. An
/// application of the SDK can do the same (`mallopt`, or `GLIBC_TUNABLES` without code).
#[allow(unsafe_code)]
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; any value is valid for these two.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// A client writing to a closed pipe (`tidelog consume t | head`) ends quietly, as `cat`
/// does, instead of panicking in `println!`. Only for client subcommands: the broker keeps
/// Rust's default (SIGPIPE ignored), so a vanished peer is an error it handles.
#[allow(unsafe_code)]
fn die_on_closed_pipe() {
    // SAFETY: `signal` only sets the process's disposition for SIGPIPE to the default; no
    // handler runs, so nothing about the calling context matters.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// What the user is told, once: a broker's answer is its message (it says what to do); any
/// other error is its chain of causes.
pub fn error_text(e: &anyhow::Error) -> String {
    // Through the SDK, or from a raw generated client.
    let status = match e.downcast_ref::<tidelog::Error>() {
        Some(tidelog::Error::Status(s)) => Some(s),
        _ => e.downcast_ref::<tonic::Status>(),
    };
    match status {
        Some(s) if s.message().is_empty() => format!("the broker answered {:?}", s.code()),
        // Not the broker's own answer (which names its error code): the connection's.
        Some(s) if s.code() == tonic::Code::Unavailable && s.metadata().get("x-tidelog-error-code").is_none() => {
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
