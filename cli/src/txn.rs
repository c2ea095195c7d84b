//! `tidelog txn`: the transaction coordinator's view of transactional ids (Kafka's
//! `kafka-transactions.sh list|describe`), open transactions per partition and the hanging
//! ones among them (`find-hanging`), and aborting a transaction: by transactional id through
//! the coordinator, or by producer id and epoch with markers written straight to a partition
//! (for a transaction the coordinator no longer knows).

use clap::Subcommand;
use serde_json::json;
use tidelog::proto::v1::transaction_service_client::TransactionServiceClient;
use tidelog::proto::v1::{
    AbortTransactionRequest, DescribeOpenTransactionsRequest, DescribeTransactionsRequest, ListTransactionsRequest,
    TopicPartitions, TransactionDescription, TransactionState, WriteTransactionMarkersRequest,
};
use tidelog::Client;

use crate::output::{print_json, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// Every transactional id: producer id and epoch, state, timeout, partitions.
    List,
    /// Transactional ids in detail: partitions, groups with pending offsets, times.
    Describe {
        #[arg(required = true)]
        transactional_ids: Vec<String>,
    },
    /// Open transactions on a topic's partitions, as their replicas see them, with each
    /// partition's last stable offset; `hanging` marks those the coordinator does not know as
    /// open there (they hold the last stable offset back until aborted).
    FindHanging {
        #[arg(long)]
        topic: String,
    },
    /// Abort a transaction: `ID` through the coordinator (its producer is fenced), or, with
    /// `--topic --partition --producer-id --producer-epoch`, by writing an abort marker to one
    /// partition (a hanging transaction; needs CLUSTER_ACTION on the cluster).
    Abort(AbortArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["transactional_id", "producer_id"])))]
pub struct AbortArgs {
    pub transactional_id: Option<String>,
    #[arg(long, requires_all = ["partition", "producer_id", "producer_epoch"])]
    pub topic: Option<String>,
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, requires = "topic")]
    pub producer_id: Option<i64>,
    #[arg(long)]
    pub producer_epoch: Option<i32>,
}

fn coordinator(client: &Client) -> TransactionServiceClient<tidelog::Channel> {
    TransactionServiceClient::new(client.channel())
}

fn state_name(state: i32) -> &'static str {
    match TransactionState::try_from(state).unwrap_or(TransactionState::Unspecified) {
        TransactionState::Empty => "Empty",
        TransactionState::Ongoing => "Ongoing",
        TransactionState::PrepareCommit => "PrepareCommit",
        TransactionState::PrepareAbort => "PrepareAbort",
        TransactionState::CompleteCommit => "CompleteCommit",
        TransactionState::CompleteAbort => "CompleteAbort",
        TransactionState::Unspecified => "Unknown",
    }
}

fn partitions_text(tps: &[TopicPartitions]) -> String {
    let parts: Vec<String> = tps.iter().map(|t| format!("{}{:?}", t.topic, t.partitions)).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn txn_json(t: &TransactionDescription) -> serde_json::Value {
    let partitions: Vec<_> =
        t.partitions.iter().map(|p| json!({"topic": p.topic, "partitions": p.partitions})).collect();
    json!({"transactional_id": t.transactional_id, "producer_id": t.producer_id, "producer_epoch": t.producer_epoch,
           "state": state_name(t.state), "timeout_ms": t.transaction_timeout_ms, "started_at_ms": t.started_at_ms,
           "last_update_ms": t.last_update_ms, "partitions": partitions, "groups": t.groups})
}

pub async fn run(broker: &crate::BrokerArg, command: TxnCommand, format: OutputFormat) -> anyhow::Result<()> {
    let client = broker.connect().await?;
    let json = format == OutputFormat::Json;
    match command {
        TxnCommand::List => {
            let list = coordinator(&client).list_transactions(ListTransactionsRequest {}).await?.into_inner();
            if json {
                print_json(&json!(list.transactions.iter().map(txn_json).collect::<Vec<_>>()));
                return Ok(());
            }
            for t in &list.transactions {
                println!(
                    "{}\tproducer={}/{} state={} timeout_ms={} partitions={}",
                    t.transactional_id,
                    t.producer_id,
                    t.producer_epoch,
                    state_name(t.state),
                    t.transaction_timeout_ms,
                    partitions_text(&t.partitions)
                );
            }
        }
        TxnCommand::Describe { transactional_ids } => {
            let req = DescribeTransactionsRequest { transactional_ids };
            let d = coordinator(&client).describe_transactions(req).await?.into_inner();
            if json {
                print_json(&json!(d.transactions.iter().map(txn_json).collect::<Vec<_>>()));
                return Ok(());
            }
            for t in &d.transactions {
                println!("transactional id {}", t.transactional_id);
                println!("  producer id {} epoch {}", t.producer_id, t.producer_epoch);
                println!("  state {} (timeout {} ms)", state_name(t.state), t.transaction_timeout_ms);
                if t.started_at_ms > 0 {
                    println!("  started at {} ms", t.started_at_ms);
                }
                println!("  partitions {}", partitions_text(&t.partitions));
                if !t.groups.is_empty() {
                    println!("  offsets pending for groups {}", t.groups.join(", "));
                }
            }
        }
        TxnCommand::FindHanging { topic } => find_hanging(&client, &topic, json).await?,
        TxnCommand::Abort(args) => abort(&client, args, json).await?,
    }
    Ok(())
}

/// Asks every broker for the open transactions it sees on `topic` (a partition's replicas
/// agree on what is committed), and marks those the coordinator does not know as open.
async fn find_hanging(client: &Client, topic: &str, json: bool) -> anyhow::Result<()> {
    let known = coordinator(client).list_transactions(ListTransactionsRequest {}).await?.into_inner().transactions;
    let mut seen = std::collections::BTreeMap::new();
    for addr in client.brokers().await? {
        let Ok(c) = client.to_broker(&addr) else { continue };
        let req = DescribeOpenTransactionsRequest { topic: topic.into(), partitions: vec![] };
        let Ok(resp) = coordinator(&c).describe_open_transactions(req).await else { continue };
        let resp = resp.into_inner();
        for p in &resp.partitions {
            seen.entry((p.partition, None)).or_insert((p.last_stable_offset, p.high_watermark, None));
        }
        for t in resp.transactions {
            let owner = known.iter().find(|k| k.producer_id == t.producer_id);
            let open_there = owner.is_some_and(|k| {
                k.state == TransactionState::Ongoing as i32
                    && k.partitions.iter().any(|tp| tp.topic == topic && tp.partitions.contains(&t.partition))
            });
            let entry = (t.partition, Some((t.producer_id, t.producer_epoch, t.first_offset)));
            seen.insert(entry, (0, 0, Some((owner.map(|k| k.transactional_id.clone()), !open_there))));
        }
    }
    let mut out = Vec::new();
    for ((partition, open), (lso, hw, owner)) in &seen {
        match (open, owner) {
            (None, _) => {
                if json {
                    out.push(json!({"partition": partition, "last_stable_offset": lso, "high_watermark": hw}));
                } else {
                    println!("{topic}/{partition} last_stable_offset={lso} high_watermark={hw}");
                }
            }
            (Some((pid, epoch, first)), Some((id, hanging))) => {
                let id = id.as_deref().unwrap_or("-");
                if json {
                    out.push(json!({"partition": partition, "producer_id": pid, "producer_epoch": epoch,
                                    "first_offset": first, "transactional_id": id, "hanging": hanging}));
                } else {
                    let mark = if *hanging { " HANGING" } else { "" };
                    println!(
                        "{topic}/{partition} open transaction: producer={pid}/{epoch} first_offset={first} transactional_id={id}{mark}"
                    );
                }
            }
            (Some(_), None) => {}
        }
    }
    if json {
        print_json(&json!(out));
    }
    Ok(())
}

async fn abort(client: &Client, args: AbortArgs, json: bool) -> anyhow::Result<()> {
    if let Some(id) = args.transactional_id {
        let req = AbortTransactionRequest { transactional_id: id.clone() };
        let resp = coordinator(client).abort_transaction(req).await?.into_inner();
        if json {
            print_json(&json!({"transactional_id": id, "aborted": true, "producer_epoch": resp.producer_epoch}));
        } else {
            println!(
                "aborted the open transaction of {id} (its producer is fenced: epoch now {})",
                resp.producer_epoch
            );
        }
        return Ok(());
    }
    let (Some(topic), Some(partition), Some(producer_id), Some(producer_epoch)) =
        (args.topic, args.partition, args.producer_id, args.producer_epoch)
    else {
        anyhow::bail!("give a transactional id, or --topic, --partition, --producer-id and --producer-epoch");
    };
    let req = WriteTransactionMarkersRequest {
        producer_id,
        producer_epoch,
        commit: false,
        partitions: vec![TopicPartitions { topic: topic.clone(), partitions: vec![partition] }],
    };
    // Written by the partition's leader: try each broker until one leads it.
    let mut last = None;
    for addr in client.brokers().await? {
        let c = client.to_broker(&addr)?;
        match coordinator(&c).write_transaction_markers(req.clone()).await {
            Ok(_) => {
                if json {
                    print_json(
                        &json!({"topic": topic, "partition": partition, "producer_id": producer_id, "aborted": true}),
                    );
                } else {
                    println!(
                        "wrote an abort marker for producer {producer_id}/{producer_epoch} to {topic}/{partition}"
                    );
                }
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no broker answered"), anyhow::Error::from))
}
