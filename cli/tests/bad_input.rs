//! Bad input gets a precise error and loses nothing: per-batch error codes keep the produce
//! stream alive; RPC errors carry the right gRPC status and a message a person can act on;
//! the broker keeps serving afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use tidelog::proto::v1::{CreateTopicRequest, DeleteTopicRequest, ErrorCode, TopicConfig};
use tidelog::proto::wire;
use tidelog::{Record, StartAt, Subscription};
use tonic::Code;

fn code(e: &tidelog::Error) -> Code {
    match e {
        tidelog::Error::Status(s) => s.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn bad_batches_get_error_codes_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic_with("t", 2, TopicConfig { max_batch_bytes: Some(4096), ..Default::default() }).await.unwrap();

    let good = |id| produce_request(id, "t", 0, vec![Record::new("ok")]);
    let mut unknown_topic = good(2);
    unknown_topic.topic = "nope".into();
    let mut unknown_partition = good(3);
    unknown_partition.partition = 2;
    let too_large = produce_request(4, "t", 0, vec![Record::new(vec![0u8; 5000])]);
    let mut bad_crc = good(5);
    bad_crc.crc32c = Some(1);
    let mut bad_framing = good(6);
    bad_framing.payload = Some(wire::produce_request::Payload::Records(bytes::Bytes::from_static(&[0x0a, 0x7f, 0x01])));
    bad_framing.crc32c = None;
    let mut empty = good(7);
    empty.payload = Some(wire::produce_request::Payload::Records(bytes::Bytes::new()));
    empty.crc32c = None;
    let mut no_payload = good(8);
    no_payload.payload = None;
    let mut wrong_count = good(9);
    wrong_count.record_count = 3;
    let mut bad_codec = good(10);
    bad_codec.compression = 9;

    let resps = produce_all(
        &client,
        vec![
            good(1),
            unknown_topic,
            unknown_partition,
            too_large,
            bad_crc,
            bad_framing,
            empty,
            no_payload,
            wrong_count,
            bad_codec,
            good(11),
        ],
    )
    .await;
    let got: Vec<(u64, i32)> = resps.iter().map(|r| (r.request_id, r.error_code)).collect();
    use ErrorCode as E;
    let want = [
        (1, E::Unspecified),
        (2, E::UnknownTopic),
        (3, E::UnknownPartition),
        (4, E::BatchTooLarge),
        (5, E::CorruptBatch),
        (6, E::CorruptBatch),
        (7, E::InvalidRequest),
        (8, E::InvalidRequest),
        (9, E::InvalidRequest),
        (10, E::InvalidRequest),
        (11, E::Unspecified),
    ]
    .map(|(id, c)| (id, c as i32));
    assert_eq!(got, want.to_vec());
    for r in &resps[1..10] {
        assert!(!r.error_message.is_empty(), "request {} has no message", r.request_id);
    }
    assert!(resps[2].error_message.contains("partitions 0..2"), "{}", resps[2].error_message);
    assert!(resps[3].error_message.contains("max_batch_bytes"), "{}", resps[3].error_message);
    // Nothing bad was stored; the good batches are at offsets 0 and 1.
    assert_eq!((resps[0].base_offset, resps[10].base_offset), (0, 1));
    assert_eq!(high_watermark(&client, "t", 0).await, 2);
}

#[tokio::test]
async fn rpc_errors_have_precise_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    produce_all(&client, vec![produce_request(1, "t", 0, vec![Record::new("a"), Record::new("b")])]).await;

    let sub = |s: Subscription| {
        let client = client.clone();
        async move {
            let mut stream = s.open(&client).await?;
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Err(e))) => Err::<(), tidelog::Error>(e),
                other => panic!("expected an error, got {:?}", other.map(|o| o.map(|r| r.map(|r| r.offset)))),
            }
        }
    };
    let e = sub(Subscription::new("missing")).await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    assert!(e.to_string().contains("tidelog topic create"), "{e}");
    let e = sub(Subscription::new("t").partition(3, None)).await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    let e = sub(Subscription::new("t").start_at(StartAt::Offset(3))).await.unwrap_err();
    assert_eq!(code(&e), Code::OutOfRange);
    assert!(e.to_string().contains("[0, 2)"), "{e}");
    let e = sub(Subscription::new("t").partition(0, None).partition(0, None)).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);

    let create = |name: &str, partitions: u32, rf: u32, config: Option<TopicConfig>| {
        let mut admin = client.admin();
        let req = CreateTopicRequest { name: name.into(), partitions, replication_factor: rf, config };
        async move { admin.create_topic(req).await.map(|_| ()).unwrap_err().code() }
    };
    assert_eq!(create("bad name!", 1, 1, None).await, Code::InvalidArgument);
    assert_eq!(create("..", 1, 1, None).await, Code::InvalidArgument);
    assert_eq!(create(&"x".repeat(250), 1, 1, None).await, Code::InvalidArgument);
    assert_eq!(create("t", 1, 1, None).await, Code::AlreadyExists);
    assert_eq!(create("rf", 1, 3, None).await, Code::InvalidArgument);
    assert_eq!(create("big", 100_000, 1, None).await, Code::InvalidArgument);
    let bad = TopicConfig { segment_bytes: Some(10), ..Default::default() };
    assert_eq!(create("cfg", 1, 1, Some(bad)).await, Code::InvalidArgument);
    let bad = TopicConfig { retention_ms: Some(0), ..Default::default() };
    assert_eq!(create("cfg", 1, 1, Some(bad)).await, Code::InvalidArgument);
    let e = client.admin().delete_topic(DeleteTopicRequest { name: "missing".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The broker still serves.
    assert_eq!(high_watermark(&client, "t", 0).await, 2);
}

#[tokio::test]
async fn client_disconnecting_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    {
        // A producer that sends 20 batches, reads 5 acknowledgements and vanishes.
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let mut resp =
            client.records().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        for i in 0..20 {
            tx.send(produce_request(i, "t", 0, vec![Record::new(format!("v{i}"))])).await.unwrap();
        }
        for _ in 0..5 {
            assert_eq!(resp.next().await.unwrap().unwrap().error_code, 0);
        }
        // A subscriber that vanishes too.
        let mut s = Subscription::new("t").start_at(StartAt::Earliest).open(&client).await.unwrap();
        s.next().await.unwrap().unwrap();
    }
    let fresh = broker.client().await;
    let hw = eventually(Duration::from_secs(10), "in-flight batches to land", || {
        let fresh = fresh.clone();
        async move {
            let hw = high_watermark(&fresh, "t", 0).await;
            (hw >= 5).then_some(hw)
        }
    })
    .await;
    let got = read_range(&fresh, "t", 0, 0, hw).await;
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.value.as_deref(), Some(format!("v{i}").as_bytes()), "stored batches are whole and in order");
    }
}

#[tokio::test]
async fn deleting_a_topic_ends_its_subscriptions_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let client = broker.client().await;
    client.create_topic("gone", 1).await.unwrap();
    let mut s = Subscription::new("gone").open(&client).await.unwrap();
    client.admin().delete_topic(DeleteTopicRequest { name: "gone".into() }).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap().unwrap();
    let e = end.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    assert!(e.to_string().contains("deleted"), "{e}");
    // The name can be reused, starting empty.
    client.create_topic("gone", 1).await.unwrap();
    assert_eq!(high_watermark(&client, "gone", 0).await, 0);
}

#[test]
fn bad_config_stops_the_broker_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[topic_defaults]\nfsync = \"sometimes\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("fsync"), "{err}");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--retention-check-interval-ms", "0", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("retention_check_interval_ms"));
}

#[tokio::test]
async fn cli_errors_are_said_once_and_broker_logs_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let run = |args: &[&str], broker: &str| {
        std::process::Command::new(BIN).args(args).args(["--broker", broker]).output().unwrap()
    };
    let out = run(&["topic", "describe", "nope"], &broker.addr);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "tidelog: error: topic 'nope' does not exist; create it first (tidelog topic create nope)");
    let out = run(&["topic", "list"], "http://127.0.0.1:1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("tidelog: error: cannot connect to the broker"), "{err}");
    assert_eq!(err.matches("tcp connect error").count(), 1, "{err}");
    // stderr is a file here: plain text for log files and collectors.
    assert!(!broker.log().contains('\x1b'), "ANSI escapes in a broker log written to a file");
}
