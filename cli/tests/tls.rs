//! TLS against real broker processes, with certificates generated at test time: a TLS
//! listener refuses plaintext clients and clients that trust another CA; certificates are
//! reloaded on SIGHUP without dropping an open stream; mTLS refuses clients without a
//! certificate from the configured CA; the CLI speaks TLS with --tls-ca; a 3-broker cluster
//! replicates over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::certs::{Ca, Signed};
use support::cluster::TestCluster;
use support::{eventually, run_cli_output, BrokerProcess};
use tidelog::{Client, Producer, ProducerConfig, Record, StartAt, Subscription, TlsOptions};

const WAIT: Duration = Duration::from_secs(20);

fn tls_args<'a>(server: &'a Signed, ca: Option<&'a Ca>, require: bool) -> Vec<&'a str> {
    let mut args = vec!["--tls-cert", server.cert.to_str().unwrap(), "--tls-key", server.key.to_str().unwrap()];
    if let Some(ca) = ca {
        args.extend(["--tls-ca", ca.pem.to_str().unwrap()]);
    }
    if require {
        args.push("--tls-require-client-cert");
    }
    args
}

/// `host:port` of a broker process (its `addr` is `http://host:port`).
fn hostport(b: &BrokerProcess) -> String {
    b.addr.trim_start_matches("http://").to_string()
}

async fn tls_client(b: &BrokerProcess, ca: &Ca, identity: Option<&Signed>) -> Result<Client, tidelog::Error> {
    let opts = TlsOptions::from_files(&ca.pem, identity.map(|i| i.cert.as_path()), identity.map(|i| i.key.as_path()))?;
    let client =
        tokio::time::timeout(WAIT, Client::connect_tls(hostport(b), opts)).await.expect("connect timed out")?;
    client.list_topics().await?; // the handshake happens by the first call at the latest
    Ok(client)
}

#[tokio::test]
async fn tls_refuses_plaintext_and_other_cas_and_reloads_without_dropping_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new(dir.path(), "main"), Ca::new(dir.path(), "other"));
    let server = ca.sign(dir.path(), "broker", "broker-1");
    let broker = BrokerProcess::start(&dir.path().join("d"), &tls_args(&server, None, false));

    assert!(
        Client::connect(broker.addr.clone()).await.map(|_| ()).is_err() || {
            let c = Client::connect(broker.addr.clone()).await.unwrap();
            c.list_topics().await.is_err()
        },
        "a plaintext client is refused"
    );
    assert!(tls_client(&broker, &other, None).await.is_err(), "a client trusting another CA is refused");
    let client = tls_client(&broker, &ca, None).await.unwrap();
    client.create_topic("secure", 1).await.unwrap();

    // The CLI, with --tls-ca.
    let args = ["--tls-ca", ca.pem.to_str().unwrap()];
    let addr = hostport(&broker);
    let out = run_cli_output(&addr, &[&["produce", "secure"][..], &args].concat(), b"over tls\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_cli_output(
        &addr,
        &[&["consume", "secure", "-o", "beginning", "-e", "-f", "%v\\n"][..], &args].concat(),
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n", "{}", String::from_utf8_lossy(&out.stderr));

    // A subscription open across the reload keeps its stream.
    let mut live = Subscription::new("secure").start_at(StartAt::Earliest).open(&client).await.unwrap();
    let first = tokio::time::timeout(WAIT, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.value.as_deref(), Some(&b"over tls"[..]));

    // Replace the certificate with one from the other CA, and reload on SIGHUP.
    let renewed = other.sign(dir.path(), "broker", "broker-1");
    assert_eq!(renewed.cert, server.cert, "rewritten in place");
    support::signal(broker.pid(), libc::SIGHUP);
    eventually(WAIT, "new connections to get the new certificate", || async {
        tls_client(&broker, &other, None).await.ok()
    })
    .await;
    assert!(tls_client(&broker, &ca, None).await.is_err(), "the old CA no longer verifies new connections");
    let producer =
        Producer::new(tls_client(&broker, &other, None).await.unwrap(), ProducerConfig::default()).await.unwrap();
    producer.send("secure", Record::new("after reload")).await.unwrap().await.unwrap();
    producer.close().await;
    let next = tokio::time::timeout(WAIT, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.value.as_deref(), Some(&b"after reload"[..]), "the old stream still delivers");

    // A broken file keeps the current certificate.
    std::fs::write(&server.key, "not a key").unwrap();
    support::signal(broker.pid(), libc::SIGHUP);
    eventually(WAIT, "the failed reload logged", || async { broker.log().contains("TLS reload failed").then_some(()) })
        .await;
    assert!(tls_client(&broker, &other, None).await.is_ok(), "still serving with the previous certificate");
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new(dir.path(), "main"), Ca::new(dir.path(), "other"));
    let server = ca.sign(dir.path(), "broker", "broker-1");
    let broker = BrokerProcess::start(&dir.path().join("d"), &tls_args(&server, Some(&ca), true));
    let alice = ca.sign(dir.path(), "alice", "alice");
    let mallory = other.sign(dir.path(), "mallory", "mallory");

    assert!(tls_client(&broker, &ca, None).await.is_err(), "no client certificate");
    assert!(tls_client(&broker, &ca, Some(&mallory)).await.is_err(), "a certificate from another CA");
    let expired = ca.sign_expired(dir.path(), "old", "old");
    assert!(tls_client(&broker, &ca, Some(&expired)).await.is_err(), "an expired certificate");
    let client = tls_client(&broker, &ca, Some(&alice)).await.unwrap();
    client.create_topic("mutual", 1).await.unwrap();
    let cli = ["--tls-ca", ca.pem.to_str().unwrap()];
    let refused = run_cli_output(&hostport(&broker), &[&["topic", "list"][..], &cli].concat(), b"");
    assert!(!refused.status.success(), "the CLI without --tls-cert is refused too");
    let with_cert =
        [&cli[..], &["--tls-cert", alice.cert.to_str().unwrap(), "--tls-key", alice.key.to_str().unwrap()]].concat();
    let listed = run_cli_output(&hostport(&broker), &[&["topic", "list"][..], &with_cert].concat(), b"");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("mutual"), "{}", String::from_utf8_lossy(&listed.stderr));
}

#[tokio::test]
async fn a_cluster_replicates_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let server = ca.sign(dir.path(), "broker", "broker");
    let args = tls_args(&server, Some(&ca), false);
    let c = TestCluster::start_with(&args).await;
    let opts = TlsOptions::from_files(&ca.pem, None, None).unwrap();
    let addr = c.addr(1).trim_start_matches("http://").to_string();
    let client = eventually(WAIT, "a TLS client of broker 1", || async {
        Client::connect_tls(addr.clone(), opts.clone()).await.ok()
    })
    .await;
    let topic = eventually(Duration::from_secs(60), "a topic with three replicas", || async {
        client.create_topic_replicated("replicated", 1, 3, Default::default()).await.ok()
    })
    .await;
    assert_eq!(topic.partitions[0].replica_ids.len(), 3);
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let stored = producer.send("replicated", Record::new("everywhere")).await.unwrap().await.unwrap();
    producer.close().await;
    for n in 1..=3 {
        let addr = c.addr(n).trim_start_matches("http://").to_string();
        let at = Client::connect_tls(addr, opts.clone()).await.unwrap();
        eventually(WAIT, "the record committed on every replica", || async {
            let t = at.describe_topic("replicated").await.ok()?;
            (t.partitions[0].high_watermark > stored.offset).then_some(())
        })
        .await;
    }
}

/// Separate listeners: clients on one (TLS, no client certificates), brokers on another
/// (mTLS with their own CA). The cluster replicates and passes calls on over the internal
/// one; the client listener serves no Raft; a client cannot get past the internal one's
/// handshake.
#[tokio::test]
async fn separate_listeners_keep_broker_traffic_on_the_internal_one() {
    let dir = tempfile::tempdir().unwrap();
    let (client_ca, internal_ca) = (Ca::new(dir.path(), "clients"), Ca::new(dir.path(), "internal"));
    let front = client_ca.sign(dir.path(), "front", "tidelog");
    let broker_cert = internal_ca.sign(dir.path(), "broker", "broker");
    // Fixed ports below Linux's ephemeral range (32768+), where the other tests' port-0
    // listeners and connections cannot take them between this choice and the brokers' binds.
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    let mut candidate = 20_000 + (std::process::id() % 10_000) as u16;
    while held.len() < 6 {
        candidate = if candidate >= 32_000 { 20_000 } else { candidate + 1 };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", candidate)) {
            held.push(l);
        }
    }
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    drop(held);
    let list = |offset: usize| (1..=3).map(|n| format!("{n}=127.0.0.1:{}", ports[offset + n - 1])).collect::<Vec<_>>();
    let (peers, internal) = (list(0).join(","), list(3).join(","));
    let mut brokers = Vec::new();
    for n in 1..=3usize {
        let node = n.to_string();
        let internal_listen = format!("127.0.0.1:{}", ports[2 + n]);
        let args = [
            "--node-id",
            &node,
            "--peers",
            &peers,
            "--internal-listen",
            &internal_listen,
            "--internal-peers",
            &internal,
            "--tls-cert",
            front.cert.to_str().unwrap(),
            "--tls-key",
            front.key.to_str().unwrap(),
            "--internal-tls-cert",
            broker_cert.cert.to_str().unwrap(),
            "--internal-tls-key",
            broker_cert.key.to_str().unwrap(),
            "--internal-tls-ca",
            internal_ca.pem.to_str().unwrap(),
            "--internal-tls-require-client-cert",
        ];
        let data = dir.path().join(format!("node-{n}"));
        let log = dir.path().join(format!("node-{n}.log"));
        brokers.push(BrokerProcess::start_listening(&data, &log, &format!("127.0.0.1:{}", ports[n - 1]), &args));
    }
    let opts = TlsOptions::from_files(&client_ca.pem, None, None).unwrap();
    let client = Client::connect_tls(format!("127.0.0.1:{}", ports[0]), opts.clone()).await.unwrap();
    let topic = eventually(Duration::from_secs(60), "a topic with three replicas", || async {
        client.create_topic_replicated("split", 1, 3, Default::default()).await.ok()
    })
    .await;
    assert_eq!(topic.partitions[0].replica_ids.len(), 3);
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await.unwrap();
    let stored = producer.send("split", Record::new("over the internal listener")).await.unwrap().await.unwrap();
    producer.close().await;
    for port in &ports[..3] {
        let at = Client::connect_tls(format!("127.0.0.1:{port}"), opts.clone()).await.unwrap();
        eventually(WAIT, "the record committed on every replica", || async {
            let t = at.describe_topic("split").await.ok()?;
            (t.partitions[0].high_watermark > stored.offset).then_some(())
        })
        .await;
    }
    let mut raft = tidelog::proto::internal::raft_transport_client::RaftTransportClient::new(client.channel());
    let refused = raft.vote(tidelog::proto::internal::RaftMessage::default()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "no Raft on the client listener: {refused:?}");
    // The internal listener: a client trusting only the client CA, or the internal CA without
    // a broker certificate, does not get through.
    for ca in [&client_ca, &internal_ca] {
        let opts = TlsOptions::from_files(&ca.pem, None, None).unwrap();
        let through = match Client::connect_tls(format!("127.0.0.1:{}", ports[3]), opts).await {
            Ok(c) => c.list_topics().await.is_ok(),
            Err(_) => false,
        };
        assert!(!through, "a client reached the internal listener");
    }
}
