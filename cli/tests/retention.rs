//! Retention by bytes and by time against a running broker: whole segments go, the log start
//! offset moves up, and reading below it is a clear OUT_OF_RANGE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use tidelog::proto::v1::TopicConfig;
use tidelog::{Record, StartAt, Subscription};

async fn fill(client: &tidelog::Client, topic: &str, batches: u64) {
    let reqs = (0..batches).map(|i| produce_request(i, topic, 0, vec![Record::new(vec![b'r'; 400])])).collect();
    for r in produce_all(client, reqs).await {
        assert_eq!(r.error_code, 0);
    }
}

#[tokio::test]
async fn retention_by_bytes_and_time_deletes_segments_and_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &["--retention-check-interval-ms", "100"]);
    let client = broker.client().await;
    let small = TopicConfig { segment_bytes: Some(4096), max_batch_bytes: Some(2048), ..Default::default() };
    client.create_topic_with("by-bytes", 1, TopicConfig { retention_bytes: Some(16 * 1024), ..small }).await.unwrap();
    client.create_topic_with("by-time", 1, TopicConfig { retention_ms: Some(300), ..small }).await.unwrap();
    fill(&client, "by-bytes", 300).await;
    fill(&client, "by-time", 300).await;

    let p = eventually(Duration::from_secs(20), "retention by bytes", || {
        let client = client.clone();
        async move {
            let p = client.describe_topic("by-bytes").await.unwrap().partitions[0].clone();
            (p.log_start_offset > 0 && p.size_bytes <= 16 * 1024 + 4096).then_some(p)
        }
    })
    .await;
    assert!(p.size_bytes >= 16 * 1024 - 4096, "deleted too much: {} bytes left", p.size_bytes);
    assert_eq!(p.high_watermark, 300);

    // Reading below the log start: OUT_OF_RANGE naming the range; earliest starts at log start.
    let err = Subscription::new("by-bytes").start_at(StartAt::Offset(0)).open(&client).await.map(|_| ()).unwrap_err();
    let tidelog::Error::Status(st) = &err else { panic!("expected a status, got {err}") };
    assert_eq!(st.code(), tonic::Code::OutOfRange);
    assert!(st.message().contains(&format!("[{}, 300)", p.log_start_offset)), "{}", st.message());
    let mut stream = Subscription::new("by-bytes").start_at(StartAt::Earliest).open(&client).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.offset >= p.log_start_offset);

    // By time: everything but the active segment expires 300 ms after it was written.
    let t = eventually(Duration::from_secs(20), "retention by time", || {
        let client = client.clone();
        async move {
            let p = client.describe_topic("by-time").await.unwrap().partitions[0].clone();
            (p.segment_count == 1 && p.log_start_offset > 0).then_some(p)
        }
    })
    .await;
    assert!(t.log_start_offset <= 300 && t.high_watermark == 300);
}
