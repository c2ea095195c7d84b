//! Authentication, ACLs and quotas against real broker processes. Keys and certificates are
//! generated at test time (rcgen); tokens are JWTs signed with them (ES256).
//!
//! - tokens: a valid one maps to its principal; none, expired, wrong issuer, wrong key or
//!   garbage are UNAUTHENTICATED (or anonymous where allowed);
//! - an ACL matrix over every RPC kind: a principal with and without the ACL it needs (allow,
//!   deny wins, prefixed names, `User:*`); a denied call is PERMISSION_DENIED (a per-batch
//!   AUTHORIZATION_FAILED for produce) and changes nothing; ACLs survive a restart;
//! - a cluster: brokers authenticate each other by certificate, an ACL added at one broker is
//!   enforced by every broker, and a client with a valid certificate that is not a broker's
//!   cannot send Raft traffic;
//! - quotas: a throttled producer and a throttled consumer get their rate, an unlimited
//!   client on the same broker keeps its throughput.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::certs::{Ca, Signed};
use support::cluster::TestCluster;
use support::{eventually, produce_request, run_cli_output, BrokerProcess};
use tidelog::proto::v1 as pb;
use tidelog::proto::v1::{AclOperation as Op, AclPatternType as Pat, AclPermission as Perm, AclResourceType as Res};
use tidelog::{Client, Record, StartAt, Subscription, TlsOptions};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);
const ISSUER: &str = "https://issuer.test";

/// An identity provider: a signing key whose public half the brokers trust.
struct Issuer {
    key: EncodingKey,
}

impl Issuer {
    /// A new key pair; the public key is written to `dir/jwt.pem`.
    fn new(dir: &Path, file: &str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join(file), pair.public_key_pem()).unwrap();
        Self { key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap() }
    }

    fn token_with(&self, sub: &str, iss: &str, exp_in: i64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = serde_json::json!({"sub": sub, "iss": iss, "aud": "tidelog", "iat": now, "exp": now + exp_in});
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_with(sub, ISSUER, 600)
    }
}

/// A broker config with tokens from `jwt.pem` in `dir`, authorization on, `User:admin` super.
fn auth_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("auth.toml");
    let keys = dir.join("jwt.pem");
    std::fs::write(
        &path,
        format!(
            "[auth]\nauthorization = true\nsuperusers = [\"User:admin\"]\n{extra}\n[auth.jwt]\nkeys = {keys:?}\nissuer = \"{ISSUER}\"\naudience = \"tidelog\"\n"
        ),
    )
    .unwrap();
    path
}

async fn as_user(addr: &str, token: &str) -> Client {
    Client::connect(addr.to_string()).await.unwrap().with_token(token).unwrap()
}

fn acl(rt: Res, name: &str, pat: Pat, principal: &str, op: Op, perm: Perm) -> pb::AclBinding {
    pb::AclBinding {
        resource_type: rt as i32,
        resource_name: name.into(),
        pattern_type: pat as i32,
        principal: principal.into(),
        host: "*".into(),
        operation: op as i32,
        permission: perm as i32,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tidelog::Error>) -> Code {
    match r {
        Err(tidelog::Error::Status(s)) => s.code(),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

async fn produce_one(client: &Client, topic: &str, value: &str) -> pb::ErrorCode {
    let req = produce_request(1, topic, 0, vec![Record::new(value.to_string())]);
    let resp = support::produce_all(client, vec![req]).await.pop().unwrap();
    pb::ErrorCode::try_from(resp.error_code).unwrap()
}

async fn first_record(client: &Client, topic: &str) -> Result<Option<String>, tidelog::Error> {
    let mut s = Subscription::new(topic).start_at(StartAt::Earliest).open(client).await?;
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
        Ok(Some(Ok(r))) => Ok(r.value.map(|v| String::from_utf8_lossy(&v).into_owned())),
        Ok(Some(Err(e))) => Err(e),
        _ => Ok(None),
    }
}

#[tokio::test]
async fn tokens_authenticate_and_acls_decide_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(dir.path(), "jwt.pem");
    let config = auth_config(dir.path(), "");
    let mut broker = BrokerProcess::start(&dir.path().join("d"), &["--config", config.to_str().unwrap()]);
    let addr = broker.addr.clone();
    let admin = as_user(&addr, &issuer.token("admin")).await;
    let alice = as_user(&addr, &issuer.token("alice")).await;
    let bob = as_user(&addr, &issuer.token("bob")).await;
    let anonymous = Client::connect(addr.clone()).await.unwrap();

    // Authentication.
    let who = alice.security().who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!((who.principal.as_str(), who.authenticated_by.as_str()), ("User:alice", "token"));
    assert!(who.authorization_enabled && !who.superuser);
    let who = anonymous.security().who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(who.principal, "User:ANONYMOUS");
    let forged = Issuer::new(dir.path(), "other.pem");
    for (why, token) in [
        ("expired", issuer.token_with("alice", ISSUER, -3600)),
        ("another issuer", issuer.token_with("alice", "https://evil.test", 600)),
        ("signed by another key", forged.token("admin")),
        ("not a JWT", "garbage".to_string()),
    ] {
        let c = as_user(&addr, &token).await;
        let err = c.list_topics().await.unwrap_err();
        let tidelog::Error::Status(s) = &err else { panic!("{why}: {err:?}") };
        assert_eq!(s.code(), Code::Unauthenticated, "{why}: {s:?}");
        assert!(!s.message().is_empty() && !s.message().contains(&token), "{why}: a reason, never the token");
    }

    // Oversized credentials: a token past 16 KiB is refused with a reason; metadata past
    // 64 KiB does not reach the broker's handlers; the broker serves on either way.
    let huge = as_user(&addr, &"a".repeat(20 << 10)).await;
    let err = huge.list_topics().await.unwrap_err();
    assert!(err.to_string().contains("longer than"), "{err}");
    let mut request = tonic::Request::new(pb::WhoAmIRequest {});
    request.metadata_mut().insert("x-padding", "p".repeat(100 << 10).parse().unwrap());
    assert!(anonymous.security().who_am_i(request).await.is_err(), "100 KiB of metadata refused");
    assert!(admin.list_topics().await.is_ok());

    // With authorization on and no ACL, only superusers may act.
    assert_eq!(code(alice.create_topic("orders", 1).await), Code::PermissionDenied);
    assert!(admin.list_topics().await.unwrap().is_empty(), "the denied create created nothing");
    for t in ["orders", "pay.in", "pay.secret", "other"] {
        admin.create_topic(t, 1).await.unwrap();
    }
    assert!(alice.list_topics().await.unwrap().is_empty(), "alice may describe nothing yet");
    assert_eq!(produce_one(&alice, "orders", "x").await, pb::ErrorCode::AuthorizationFailed);
    assert_eq!(admin.describe_topic("orders").await.unwrap().partitions[0].high_watermark, 0, "nothing stored");

    let acls = vec![
        acl(Res::Topic, "orders", Pat::Literal, "User:alice", Op::Write, Perm::Allow),
        acl(Res::Topic, "pay.", Pat::Prefixed, "User:alice", Op::Read, Perm::Allow),
        acl(Res::Topic, "pay.secret", Pat::Literal, "User:alice", Op::All, Perm::Deny),
        acl(Res::Group, "billing", Pat::Literal, "User:alice", Op::Read, Perm::Allow),
    ];
    let denied = alice.security().create_acls(pb::CreateAclsRequest { acls: acls.clone() }).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied, "ACL admin needs ALTER on the cluster");
    let created = admin.security().create_acls(pb::CreateAclsRequest { acls }).await.unwrap().into_inner();
    assert_eq!(created.created, 4);

    // Produce: allowed on orders, not on pay.in (read only) — nothing stored there.
    assert_eq!(produce_one(&alice, "orders", "o1").await, pb::ErrorCode::Unspecified);
    assert_eq!(produce_one(&admin, "pay.in", "p1").await, pb::ErrorCode::Unspecified);
    assert_eq!(produce_one(&admin, "pay.secret", "s1").await, pb::ErrorCode::Unspecified);
    assert_eq!(produce_one(&alice, "pay.in", "x").await, pb::ErrorCode::AuthorizationFailed);
    assert_eq!(admin.describe_topic("pay.in").await.unwrap().partitions[0].high_watermark, 1);
    // Subscribe: READ by prefix; write does not imply read; deny wins over the prefix.
    assert_eq!(first_record(&alice, "pay.in").await.unwrap().as_deref(), Some("p1"));
    assert_eq!(code(first_record(&alice, "orders").await), Code::PermissionDenied);
    assert_eq!(code(first_record(&alice, "pay.secret").await), Code::PermissionDenied);
    // ACLs apply to open subscriptions: a DENY added ends alice's stream before it serves more.
    let mut live = Subscription::new("pay.in").start_at(StartAt::Earliest).open(&alice).await.unwrap();
    let first = tokio::time::timeout(WAIT, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.value.as_deref(), Some(&b"p1"[..]));
    let deny = acl(Res::Topic, "pay.in", Pat::Literal, "User:alice", Op::Read, Perm::Deny);
    admin.security().create_acls(pb::CreateAclsRequest { acls: vec![deny.clone()] }).await.unwrap();
    assert_eq!(produce_one(&admin, "pay.in", "p2").await, pb::ErrorCode::Unspecified);
    let ended = tokio::time::timeout(WAIT, live.next()).await.unwrap().unwrap();
    assert_eq!(code(ended), Code::PermissionDenied, "the open subscription ends");
    let undo = pb::AclBindingFilter {
        resource_type: Res::Topic as i32,
        resource_name: "pay.in".into(),
        pattern_type: Pat::Literal as i32,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: Op::Read as i32,
        permission: Perm::Deny as i32,
    };
    let removed = admin.security().delete_acls(pb::DeleteAclsRequest { filters: vec![undo] }).await.unwrap();
    assert_eq!(removed.into_inner().acls, vec![deny]);

    // Metadata: only what alice may describe (implied by READ and WRITE), denied topics hidden.
    let mut seen: Vec<String> = alice.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    seen.sort();
    assert_eq!(seen, ["orders", "pay.in"]);
    assert_eq!(code(alice.describe_topic("other").await), Code::PermissionDenied);
    assert_eq!(code(alice.describe_topic("pay.secret").await), Code::PermissionDenied);
    let offsets = pb::ListOffsetsRequest {
        topic: "other".into(),
        partitions: vec![],
        spec: Some(pb::OffsetSpec { spec: Some(pb::offset_spec::Spec::Latest(true)) }),
        isolation_level: 0,
    };
    assert_eq!(alice.admin().list_offsets(offsets).await.unwrap_err().code(), Code::PermissionDenied);
    // Admin calls alice has no right to change nothing.
    assert_eq!(code(alice.delete_topic("orders").await), Code::PermissionDenied);
    assert_eq!(code(alice.create_partitions("orders", 3).await), Code::PermissionDenied);
    assert_eq!(code(alice.delete_records("pay.in", &[(0, Some(1))]).await), Code::PermissionDenied);
    let alter = pb::AlterTopicConfigRequest { name: "orders".into(), ..Default::default() };
    assert_eq!(alice.admin().alter_topic_config(alter).await.unwrap_err().code(), Code::PermissionDenied);
    let orders = admin.describe_topic("orders").await.unwrap();
    assert_eq!((orders.partition_count, orders.partitions[0].high_watermark), (1, 1), "orders untouched");
    assert_eq!(admin.describe_topic("pay.in").await.unwrap().partitions[0].log_start_offset, 0);
    // Groups: commits need READ on the group and the topic; nothing is stored when denied.
    let commit = |group: &str, topic: &str| pb::CommitRequest {
        request_id: 1,
        group: group.into(),
        topic: topic.into(),
        offsets: vec![pb::PartitionOffset { partition: 0, offset: 1, metadata: String::new() }],
        ..Default::default()
    };
    for (group, topic, want) in [
        ("other-group", "pay.in", pb::ErrorCode::AuthorizationFailed),
        ("billing", "orders", pb::ErrorCode::AuthorizationFailed),
        ("billing", "pay.in", pb::ErrorCode::Unspecified),
    ] {
        let mut s = alice.offsets().commit(tokio_stream::iter([commit(group, topic)])).await.unwrap().into_inner();
        let resp = s.next().await.unwrap().unwrap();
        assert_eq!(pb::ErrorCode::try_from(resp.error_code).unwrap(), want, "commit {group}/{topic}");
    }
    let fetch =
        |group: &str| pb::FetchCommittedRequest { group: group.into(), topic: "pay.in".into(), partitions: vec![] };
    assert!(admin.offsets().fetch_committed(fetch("other-group")).await.unwrap().into_inner().offsets.is_empty());
    assert_eq!(admin.offsets().fetch_committed(fetch("billing")).await.unwrap().into_inner().offsets.len(), 1);
    let describe = pb::DescribeGroupRequest { group: "other-group".into() };
    assert_eq!(alice.groups().describe_group(describe).await.unwrap_err().code(), Code::PermissionDenied);
    let listed = alice.groups().list_groups(pb::ListGroupsRequest {}).await.unwrap().into_inner().groups;
    assert!(listed.iter().all(|g| g.group == "billing"), "only describable groups: {listed:?}");
    let delete = pb::DeleteGroupRequest { group: "billing".into() };
    assert_eq!(alice.groups().delete_group(delete).await.unwrap_err().code(), Code::PermissionDenied);
    // A group session's join needs READ on the group.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(join("other-group", "pay.in")).await.unwrap();
    let mut session =
        alice.groups().session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = tokio::time::timeout(WAIT, session.next()).await.unwrap().unwrap();
    assert_eq!(first.unwrap_err().code(), Code::PermissionDenied);
    drop(tx);
    // Idempotent producers: alice (WRITE on a topic) may init, bob may not.
    assert!(alice.records().init_producer(tidelog::proto::wire::InitProducerRequest::default()).await.is_ok());
    let bobs = bob.records().init_producer(tidelog::proto::wire::InitProducerRequest::default()).await;
    assert_eq!(bobs.unwrap_err().code(), Code::PermissionDenied);

    // Wildcards: User:* may describe every topic.
    let everyone = acl(Res::Topic, "*", Pat::Literal, "User:*", Op::Describe, Perm::Allow);
    admin.security().create_acls(pb::CreateAclsRequest { acls: vec![everyone] }).await.unwrap();
    assert_eq!(bob.list_topics().await.unwrap().len(), 4);
    assert_eq!(anonymous.list_topics().await.unwrap().len(), 4, "anonymous is a principal too");

    // The CLI: list ACLs as JSON, remove alice's; the audit log names the denials.
    let token = issuer.token("admin");
    let out = run_cli_output(
        &addr,
        &["acl", "list", "--principal", "User:alice", "--format", "json", "--token", &token],
        b"",
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    assert!(broker.log().contains("tidelog::audit") && broker.log().contains("User:alice"));

    // ACLs are durable once acknowledged: a broker killed (-9) and restarted enforces them.
    broker.kill9();
    let broker = BrokerProcess::start(&dir.path().join("d"), &["--config", config.to_str().unwrap()]);
    let alice = as_user(&broker.addr, &issuer.token("alice")).await;
    assert_eq!(produce_one(&alice, "orders", "o2").await, pb::ErrorCode::Unspecified);
    assert_eq!(produce_one(&alice, "other", "x").await, pb::ErrorCode::AuthorizationFailed);
    let out = run_cli_output(&broker.addr, &["acl", "remove", "--principal", "User:alice", "--token", &token], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 4 ACL(s)"), "{out:?}");
    assert_eq!(produce_one(&alice, "orders", "x").await, pb::ErrorCode::AuthorizationFailed);
}

#[tokio::test]
async fn require_authentication_refuses_anonymous_calls_but_not_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(dir.path(), "jwt.pem");
    let config = auth_config(dir.path(), "require_authentication = true");
    let broker = BrokerProcess::start(&dir.path().join("d"), &["--config", config.to_str().unwrap()]);
    let anonymous = Client::connect(broker.addr.clone()).await.unwrap();
    assert_eq!(code(anonymous.list_topics().await), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(anonymous.channel());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    let admin = as_user(&broker.addr, &issuer.token("admin")).await;
    admin.create_topic("t", 1).await.unwrap();
}

fn tls_args<'a>(server: &'a Signed, ca: &'a Ca, config: &'a Path) -> Vec<&'a str> {
    vec![
        "--tls-cert",
        server.cert.to_str().unwrap(),
        "--tls-key",
        server.key.to_str().unwrap(),
        "--tls-ca",
        ca.pem.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]
}

/// A client of broker `n` with `who`'s certificate.
async fn connect(ca: &Ca, c: &TestCluster, n: u64, who: &Signed) -> Client {
    let opts = TlsOptions::from_files(&ca.pem, Some(&who.cert), Some(&who.key)).unwrap();
    Client::connect_tls(c.addr(n).trim_start_matches("http://").to_string(), opts).await.unwrap()
}

/// A cluster whose brokers prove who they are by certificate: ACLs replicate to every broker,
/// a client certificate maps to its principal, and a non-broker certificate cannot speak Raft.
#[tokio::test]
async fn a_cluster_authenticates_its_brokers_and_enforces_acls_everywhere() {
    support::init_sdk_log();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "cluster");
    let server = ca.sign(dir.path(), "broker", "broker");
    let config = dir.path().join("auth.toml");
    std::fs::write(
        &config,
        "[auth]\nauthorization = true\nsuperusers = [\"User:admin\"]\nbroker_principals = [\"User:broker\"]\n",
    )
    .unwrap();
    let mut c = TestCluster::start_with(&tls_args(&server, &ca, &config)).await;
    let admin_cert = ca.sign(dir.path(), "admin", "admin");
    let alice_cert = ca.sign(dir.path(), "alice", "alice");
    let admin = connect(&ca, &c, 1, &admin_cert).await;
    eventually(Duration::from_secs(60), "a replicated topic (brokers reach each other)", || async {
        admin.create_topic_replicated("shared", 1, 3, Default::default()).await.ok()
    })
    .await;
    let who = admin.security().who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!((who.principal.as_str(), who.authenticated_by.as_str()), ("User:admin", "mtls"));

    let grant = acl(Res::Topic, "shared", Pat::Literal, "User:alice", Op::Read, Perm::Allow);
    admin.security().create_acls(pb::CreateAclsRequest { acls: vec![grant] }).await.unwrap();
    for n in 1..=3 {
        let alice = connect(&ca, &c, n, &alice_cert).await;
        eventually(WAIT, "the ACL on every broker", || async { alice.describe_topic_settled("shared").await.ok() })
            .await;
        assert_eq!(code(alice.create_topic("mine", 1).await), Code::PermissionDenied, "broker {n}");
    }

    // Group sessions, served by the coordinator or passed on to it: a join alice may not make
    // ends the session with PERMISSION_DENIED; one she may is answered, and closing it is clean.
    let team = acl(Res::Group, "team", Pat::Literal, "User:alice", Op::Read, Perm::Allow);
    admin.security().create_acls(pb::CreateAclsRequest { acls: vec![team] }).await.unwrap();
    for n in 1..=3 {
        let alice = connect(&ca, &c, n, &alice_cert).await;
        for (group, allowed) in [("not-hers", false), ("team", true)] {
            let first = eventually(WAIT, "a session answer", || async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(join(group, "shared")).await.ok()?;
                let mut s = alice.groups().session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.ok()?;
                let first = tokio::time::timeout(WAIT, s.get_mut().next()).await.ok()??;
                drop(tx); // the member closes its side
                match &first {
                    Err(e) if e.code() == Code::Unavailable => None, // no coordinator yet: retry
                    // The ACL reaches each broker a moment after the controller (as Kafka's).
                    Err(e) if allowed && e.code() == Code::PermissionDenied => None,
                    _ => Some(first),
                }
            })
            .await;
            match first {
                Err(e) => assert!(!allowed && e.code() == Code::PermissionDenied, "broker {n}, {group}: {e:?}"),
                Ok(_) => assert!(allowed, "broker {n}: joined {group}"),
            }
        }
    }

    // A grant added and then revoked stays revoked through the restart below (the replay
    // installs the ACLs as the whole log leaves them, never an earlier state).
    let brief = acl(Res::Topic, "other", Pat::Literal, "User:alice", Op::Describe, Perm::Allow);
    admin.security().create_acls(pb::CreateAclsRequest { acls: vec![brief] }).await.unwrap();
    let alice3 = connect(&ca, &c, 3, &alice_cert).await;
    eventually(WAIT, "broker 3 enforcing the grant", || async {
        (alice3.describe_topic("other").await.err().map(|e| code::<()>(Err(e)))? == Code::NotFound).then_some(())
    })
    .await;
    let revoke = pb::AclBindingFilter {
        resource_type: Res::Topic as i32,
        resource_name: "other".into(),
        principal: "User:alice".into(),
        ..Default::default()
    };
    admin.security().delete_acls(pb::DeleteAclsRequest { filters: vec![revoke] }).await.unwrap();
    // Broker 3 has both in its log (it enforces the revocation) before it is killed.
    eventually(WAIT, "broker 3 enforcing the revocation", || async {
        (alice3.describe_topic("other").await.err().map(|e| code::<()>(Err(e)))? == Code::PermissionDenied)
            .then_some(())
    })
    .await;

    // Replicated state: a broker killed (-9) and restarted rebuilds the ACLs from the
    // metadata log.
    c.kill9(3);
    c.start_node(3);
    let alice = connect(&ca, &c, 3, &alice_cert).await;
    eventually(Duration::from_secs(60), "broker 3 back, with the ACL", || async {
        alice.describe_topic_settled("shared").await.ok()
    })
    .await;
    assert_eq!(code(alice.describe_topic("other").await), Code::PermissionDenied);

    // A valid client certificate is not a broker's: Raft traffic is refused.
    let intruder = connect(&ca, &c, 2, &alice_cert).await;
    let mut raft = tidelog::proto::internal::raft_transport_client::RaftTransportClient::new(intruder.channel());
    let vote = raft.vote(tidelog::proto::internal::RaftMessage::default()).await.unwrap_err();
    assert_eq!(vote.code(), Code::PermissionDenied, "{vote:?}");
    for n in 1..=3 {
        assert!(!c.log(n).contains("panicked"), "broker {n} panicked:\n{}", c.log(n));
    }
}

/// A session's opening message: join `group` for `topic`.
fn join(group: &str, topic: &str) -> pb::SessionRequest {
    pb::SessionRequest {
        kind: Some(pb::session_request::Kind::Join(pb::JoinGroup {
            group: group.into(),
            topics: vec![topic.into()],
            assignors: vec!["range".into()],
            ..Default::default()
        })),
    }
}

/// Sends 64 KiB batches on one produce stream for `secs`; returns each acknowledgement's time
/// and size, and the throttle the broker reported in total.
async fn pump(client: &Client, topic: &str, secs: f64) -> (Vec<(Instant, u64)>, u64) {
    let value = "v".repeat(1000);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks =
        client.records().produce(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let sender = tokio::spawn({
        let topic = topic.to_string();
        async move {
            let mut id = 0;
            while Instant::now() < end {
                id += 1;
                let records = (0..64).map(|_| Record::new(value.clone())).collect();
                if tx.send(produce_request(id, &topic, 0, records)).await.is_err() {
                    return;
                }
            }
        }
    });
    let (mut out, mut throttled) = (Vec::new(), 0u64);
    while let Ok(Some(Ok(r))) = tokio::time::timeout(Duration::from_secs(30), acks.next()).await {
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        throttled += u64::from(r.throttle_time_ms);
        out.push((Instant::now(), 64 * 1000));
    }
    sender.await.unwrap();
    (out, throttled)
}

/// Bytes per second acknowledged between `from` and `to` after the first acknowledgement.
fn rate(acks: &[(Instant, u64)], from: f64, to: f64) -> f64 {
    let Some(start) = acks.first().map(|a| a.0) else { return 0.0 };
    let bytes: u64 = acks
        .iter()
        .filter(|(t, _)| {
            let s = t.duration_since(start).as_secs_f64();
            s >= from && s < to
        })
        .map(|(_, b)| b)
        .sum();
    bytes as f64 / (to - from)
}

#[tokio::test]
async fn quotas_throttle_one_client_and_not_the_others() {
    const LIMIT: u64 = 10_000_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let admin = Client::connect(broker.addr.clone()).await.unwrap();
    admin.create_topic("slow", 1).await.unwrap();
    admin.create_topic("fast", 1).await.unwrap();
    let cli = |args: &[&str]| {
        let out = run_cli_output(&broker.addr, args, b"");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["quota", "set", "--client", "etl", "--producer-byte-rate", &LIMIT.to_string()]);
    cli(&["quota", "set", "--client", "etl", "--consumer-byte-rate", &LIMIT.to_string()]);
    let described = cli(&["quota", "describe", "--client", "etl", "--user", "ANONYMOUS"]);
    assert!(described.contains("effective producer_byte_rate=10000000 consumer_byte_rate=10000000"), "{described}");

    let slow = Client::connect(broker.addr.clone()).await.unwrap().with_client_id("etl").unwrap();
    let fast = Client::connect(broker.addr.clone()).await.unwrap().with_client_id("web").unwrap();
    let (alone, _) = pump(&fast, "fast", 1.5).await;
    let alone = rate(&alone, 0.5, 1.5);
    let ((slow_acks, throttled), (fast_acks, _)) = tokio::join!(pump(&slow, "slow", 3.5), pump(&fast, "fast", 3.5));
    let (slow_rate, fast_rate) = (rate(&slow_acks, 1.0, 3.5), rate(&fast_acks, 1.0, 3.5));
    eprintln!("produce: limited {slow_rate:.0} B/s (limit {LIMIT}), unlimited {fast_rate:.0} B/s (alone {alone:.0})");
    assert!(throttled > 0, "the limited producer was told it was throttled");
    assert!((slow_rate - LIMIT as f64).abs() <= LIMIT as f64 * 0.15, "limited producer at {slow_rate:.0} B/s");
    assert!(fast_rate > LIMIT as f64 * 3.0, "the unlimited producer keeps going: {fast_rate:.0} B/s");

    // A default client-id quota gives each client id its own budget: two competing producers
    // under it each get the limit, not half of it.
    const EACH: u64 = 5_000_000;
    cli(&["quota", "set", "--client-defaults", "--producer-byte-rate", &EACH.to_string()]);
    let (a, b) = (
        Client::connect(broker.addr.clone()).await.unwrap().with_client_id("job-a").unwrap(),
        Client::connect(broker.addr.clone()).await.unwrap().with_client_id("job-b").unwrap(),
    );
    let ((a_acks, _), (b_acks, _)) = tokio::join!(pump(&a, "slow", 3.5), pump(&b, "slow", 3.5));
    for (who, acks) in [("job-a", &a_acks), ("job-b", &b_acks)] {
        let r = rate(acks, 1.0, 3.5);
        eprintln!("produce under the default client quota: {who} {r:.0} B/s (limit {EACH})");
        assert!((r - EACH as f64).abs() <= EACH as f64 * 0.15, "{who} at {r:.0} B/s");
    }

    // Consumers: the limited one reads at its rate, the other as fast as it can.
    let read = |client: Client, topic: &'static str| async move {
        let mut s = Subscription::new(topic).start_at(StartAt::Earliest).open(&client).await.unwrap();
        let (start, mut bytes) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(Duration::from_secs(3), s.next()).await {
                Ok(Some(Ok(r))) => bytes += r.value.map_or(0, |v| v.len() as u64),
                _ => break,
            }
        }
        bytes as f64 / start.elapsed().as_secs_f64()
    };
    let (slow_read, fast_read) = tokio::join!(read(slow.clone(), "fast"), read(fast.clone(), "fast"));
    eprintln!("consume: limited {slow_read:.0} B/s, unlimited {fast_read:.0} B/s");
    // The first 0.5 s of a bucket is its burst: over 3 s at most +20%.
    assert!(slow_read <= LIMIT as f64 * 1.25 && slow_read >= LIMIT as f64 * 0.7, "limited consumer at {slow_read:.0}");
    assert!(fast_read > slow_read * 2.0, "the unlimited consumer is not slowed: {fast_read:.0}");
}

/// Transactions under ACLs (Kafka's): WRITE on the transactional id for the producer's calls,
/// WRITE on the topics, READ on the group whose offsets go into a transaction, DESCRIBE on the
/// id to see it; aborting another's transaction is ALTER on the cluster.
#[tokio::test]
async fn transactions_need_acls_on_the_transactional_id_topic_and_group() {
    use tidelog::proto::v1::transaction_service_client::TransactionServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::new(dir.path(), "jwt.pem");
    let config = auth_config(dir.path(), "");
    let broker = BrokerProcess::start(&dir.path().join("d"), &["--config", config.to_str().unwrap()]);
    let addr = broker.addr.clone();
    let admin = as_user(&addr, &issuer.token("admin")).await;
    let app = as_user(&addr, &issuer.token("app")).await;
    admin.create_topic("t", 1).await.unwrap();
    let grant = |rt: Res, name: &str, op: Op| acl(rt, name, Pat::Literal, "User:app", op, Perm::Allow);
    let add = |acls: Vec<pb::AclBinding>| {
        let admin = admin.clone();
        async move { admin.security().create_acls(pb::CreateAclsRequest { acls }).await.unwrap() }
    };
    add(vec![grant(Res::Topic, "t", Op::Write)]).await;
    let config = || tidelog::ProducerConfig { transactional_id: Some("app-tx".into()), ..Default::default() };
    let producer = tidelog::Producer::new(app.clone(), config()).await.unwrap();
    // Without WRITE on the transactional id: refused, and nothing is registered.
    assert_eq!(code(producer.init_transactions().await), Code::PermissionDenied);
    let coordinator = |c: &Client| TransactionServiceClient::new(c.channel());
    let listed = coordinator(&admin).list_transactions(pb::ListTransactionsRequest {}).await.unwrap();
    assert!(listed.into_inner().transactions.is_empty());

    // With the CLI, as an administrator would.
    let token = issuer.token("admin");
    let args = ["acl", "add", "--principal", "User:app", "--operation", "write", "--transactional-id", "app-tx"];
    let out = run_cli_output(&addr, &[&args[..], &["--token", &token]].concat(), b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(WAIT, "the grant", || async { producer.init_transactions().await.ok() }).await;
    producer.begin_transaction().await.unwrap();
    producer.send_to("t", 0, Record::new("in a transaction")).await.unwrap();
    // Offsets of a group the caller may not READ: refused (the transaction must be aborted).
    let group = tidelog::ConsumerGroupMetadata { group: "g".into(), ..Default::default() };
    let offsets = [("t".to_string(), 0, 1)];
    assert_eq!(code(producer.send_offsets_to_transaction(&offsets, &group).await), Code::PermissionDenied);
    add(vec![grant(Res::Group, "g", Op::Read)]).await;
    eventually(WAIT, "the group grant", || async { producer.send_offsets_to_transaction(&offsets, &group).await.ok() })
        .await;
    producer.commit_transaction().await.unwrap();
    // WRITE implies DESCRIBE: the producer's principal sees its id, and only that.
    let seen = coordinator(&app).list_transactions(pb::ListTransactionsRequest {}).await.unwrap().into_inner();
    assert_eq!(seen.transactions.iter().map(|t| t.transactional_id.as_str()).collect::<Vec<_>>(), ["app-tx"]);
    let other = tidelog::ProducerConfig { transactional_id: Some("other-tx".into()), ..Default::default() };
    let other = tidelog::Producer::new(admin.clone(), other).await.unwrap();
    other.init_transactions().await.unwrap();
    let seen = coordinator(&app).list_transactions(pb::ListTransactionsRequest {}).await.unwrap().into_inner();
    assert_eq!(seen.transactions.len(), 1, "an id the caller may not DESCRIBE is not listed");
    // Aborting a transaction is administration: ALTER on the cluster.
    let mut as_app = coordinator(&app);
    let abort = as_app.abort_transaction(pb::AbortTransactionRequest { transactional_id: "app-tx".into() }).await;
    assert_eq!(abort.unwrap_err().code(), Code::PermissionDenied);
    drop(broker);
}
