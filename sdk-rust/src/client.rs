//! A connection to a broker: one HTTP/2 channel shared by every service client (cheap to
//! clone), plus typed helpers for the admin calls. In a cluster, [`Client::brokers`] lists
//! every broker and [`Client::to_broker`] reaches another one (the producer routes each
//! partition to its leader that way).

use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::group_service_client::GroupServiceClient;
use tidelog_proto::v1::offset_service_client::OffsetServiceClient;
use tidelog_proto::v1::security_service_client::SecurityServiceClient;
use tidelog_proto::v1::{
    AlterTopicConfigRequest, CreatePartitionsRequest, CreateTopicRequest, DeleteGroupRequest, DeleteRecordsPartition,
    DeleteRecordsRequest, DeleteTopicRequest, DescribeGroupRequest, DescribeGroupResponse, DescribeTopicRequest,
    GroupListing, ListGroupsRequest, ListOffsetsRequest, ListTopicsRequest, OffsetSpec, PartitionReset,
    ResetOffsetsRequest, TopicConfig, TopicDescription,
};
use tidelog_proto::wire::record_service_client::RecordServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::Error;

/// The channel every service client of a [`Client`] uses: one HTTP/2 connection, with the
/// client's [`Credentials`] added to each call.
pub type Channel = InterceptedService<tonic::transport::Channel, Credentials>;

/// What every call carries: a bearer token (`authorization: Bearer <JWT>`), if set, and the
/// client id (`x-tidelog-client-id`, for quotas), if set. Shared by every clone of a client
/// and every client it derives ([`Client::to_broker`]), so [`Client::set_token`] renews the
/// token everywhere at once.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: std::sync::Arc<std::sync::RwLock<Option<MetadataValue<Ascii>>>>,
    client_id: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = self.token.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            req.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(id) = &self.client_id {
            req.metadata_mut().insert("x-tidelog-client-id", id.clone());
        }
        Ok(req)
    }
}

fn ascii(what: &str, v: &str) -> Result<MetadataValue<Ascii>, Error> {
    v.parse().map_err(|_| Error::InvalidArgument(format!("the {what} must be printable ASCII")))
}

/// Largest gRPC message the client sends or accepts (matches the broker's limit).
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// How long a cluster's brokers may take to all know a just-created topic, as far as clients
/// wait for it (a few metadata heartbeats).
pub const METADATA_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct Client {
    channel: tonic::transport::Channel,
    addr: String,
    /// TLS for this broker and every other one this client reaches (`to_broker`).
    tls: Option<TlsOptions>,
    credentials: Credentials,
}

/// TLS to the brokers: the CA their certificates chain to, and for mTLS this client's
/// certificate and key (PEM).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub ca_pem: Vec<u8>,
    /// (certificate chain, private key), PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the broker's certificate must carry; default: the address's host.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// From PEM files: the CA, and optionally a client certificate and its key (both or
    /// neither).
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", p.display())))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        Ok(Self { ca_pem: read(ca)?, identity, server_name: None })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            c = c.domain_name(name.clone());
        }
        c
    }
}

/// `http://host:port` (or `https://` with TLS) for `host:port`; an address with a scheme as
/// it is.
pub(crate) fn normalize(addr: impl Into<String>, tls: bool) -> String {
    let addr = addr.into();
    if addr.contains("://") {
        addr
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    /// Connects to `addr` (`http://host:port`; `host:port` is accepted too).
    pub async fn connect(addr: impl Into<String>) -> Result<Self, Error> {
        let addr = normalize(addr, false);
        Ok(Self {
            channel: endpoint(&addr, None)?.connect().await?,
            addr,
            tls: None,
            credentials: Credentials::default(),
        })
    }

    /// Connects to `addr` over TLS (`host:port` or `https://host:port`).
    pub async fn connect_tls(addr: impl Into<String>, tls: TlsOptions) -> Result<Self, Error> {
        let addr = normalize(addr, true);
        let channel = endpoint(&addr, Some(&tls))?.connect().await?;
        Ok(Self { channel, addr, tls: Some(tls), credentials: Credentials::default() })
    }

    /// This client (and every clone made after) sends `token` as its bearer token: a JWT
    /// from the identity provider the brokers trust (`[auth.jwt]`, docs/SECURITY.md).
    pub fn with_token(self, token: &str) -> Result<Self, Error> {
        self.set_token(Some(token))?;
        Ok(self)
    }

    /// Replaces the bearer token of this client, its clones and the clients derived from it
    /// (a renewed token before the old one expires); `None` sends none.
    pub fn set_token(&self, token: Option<&str>) -> Result<(), Error> {
        let value = token.map(|t| ascii("token", &format!("Bearer {t}"))).transpose()?;
        *self.credentials.token.write().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
        Ok(())
    }

    /// Names this client to the brokers (`x-tidelog-client-id`): quotas can be set per client
    /// id (`tidelog quota set --client-id`), and brokers log it.
    pub fn with_client_id(mut self, id: &str) -> Result<Self, Error> {
        self.credentials.client_id = Some(ascii("client id", id)?);
        Ok(self)
    }

    /// A client of another broker, connected on first use (never fails on an unreachable
    /// broker: its calls do), with this client's TLS.
    pub fn to_broker(&self, addr: &str) -> Result<Self, Error> {
        let addr = self.broker_url(addr);
        if addr == self.addr {
            return Ok(self.clone());
        }
        Ok(Self {
            channel: endpoint(&addr, self.tls.as_ref())?.connect_lazy(),
            addr,
            tls: self.tls.clone(),
            credentials: self.credentials.clone(),
        })
    }

    /// The URL this client reaches broker `addr` at: `host:port` (as brokers advertise
    /// themselves) with this client's scheme; over TLS every broker is reached by https.
    pub(crate) fn broker_url(&self, addr: &str) -> String {
        let url = normalize(addr, self.tls.is_some());
        match (self.tls.is_some(), url.strip_prefix("http://")) {
            (true, Some(rest)) => format!("https://{rest}"),
            _ => url,
        }
    }

    /// The broker this client talks to (`http://host:port`).
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Every broker of the cluster (`http://host:port`), this one first; just this one on a
    /// single node (whose advertised address may not be reachable from here: a proxy, NAT).
    pub async fn brokers(&self) -> Result<Vec<String>, Error> {
        let mut out = vec![self.addr.clone()];
        for a in self.broker_ids().await?.into_values() {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

impl Client {
    /// Every broker of the cluster by id (`http://host:port`); empty on a single node (whose
    /// advertised address may not be reachable from here, so only this client's address is
    /// used there).
    pub async fn broker_ids(&self) -> Result<std::collections::BTreeMap<u32, String>, Error> {
        let resp = self.admin().describe_cluster(tidelog_proto::v1::DescribeClusterRequest {}).await?.into_inner();
        if resp.brokers.len() <= 1 {
            return Ok(Default::default());
        }
        Ok(resp.brokers.into_iter().map(|b| (b.id, self.broker_url(&b.address))).collect())
    }
}

/// How long the controller's admin calls (create, delete, add partitions) are retried while
/// the answer is NOT_LEADER: a cluster that is electing its controller (Kafka's admin client
/// retries such answers likewise). Nothing was done by a NOT_LEADER answer.
pub const ADMIN_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a broker's answer is NOT_LEADER (its `x-tidelog-error-code` metadata).
pub fn is_not_leader(status: &tonic::Status) -> bool {
    status.metadata().get("x-tidelog-error-code").is_some_and(|v| v == "ERROR_CODE_NOT_LEADER")
}

/// `call` again while it answers NOT_LEADER, for up to [`ADMIN_RETRY`].
async fn retry_not_leader<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + ADMIN_RETRY;
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match call().await {
            Err(s) if is_not_leader(&s) && tokio::time::Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

fn endpoint(addr: &str, tls: Option<&TlsOptions>) -> Result<Endpoint, Error> {
    let mut e = Endpoint::from_shared(addr.to_string())
        .map_err(|e| Error::InvalidArgument(format!("bad broker address {addr:?}: {e}")))?;
    if let Some(t) = tls {
        e = e.tls_config(t.config()).map_err(|e| Error::InvalidArgument(format!("TLS to {addr}: {e}")))?;
    }
    Ok(e.tcp_nodelay(true)
        // Room for several MiB-sized batches per round trip (h2's default is 64 KiB). The
        // stream window is what a broker may send a subscription ahead of what it has read:
        // h2 returns window once half of it was consumed, so with 4 MiB the broker sat idle
        // between 1 MiB responses. 8 MiB: SDK consume of one partition +15 % MB/s at the same
        // CPU (docs/PERFORMANCE.md, "Consume: the subscriber's receive window"); it also
        // bounds what one subscription buffers here, as Kafka's fetch size does.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        // Frames of up to 1 MiB from the broker (h2's default is 16 KiB): a 1 MiB Subscribe
        // response arrives in one DATA frame instead of 64, which h2 reads and tonic gathers
        // one by one. Client CPU per consumed 1 KiB record -20 % (1 partition) and -27 %
        // (4 consumers), docs/PERFORMANCE.md. The broker allows the same towards it.
        .max_frame_size(1 << 20)
        .connect_timeout(std::time::Duration::from_secs(5))
        // A frozen broker (SIGSTOP) keeps the connection open: HTTP/2 pings notice it, so
        // long-lived streams (group sessions, subscriptions) fail over instead of hanging.
        // Tuned to the brokers' election timeout (1-2 s): a broker silent for 4 s is given up,
        // about when its peers have elected new leaders.
        .http2_keep_alive_interval(std::time::Duration::from_secs(1))
        .keep_alive_timeout(std::time::Duration::from_secs(3))
        .keep_alive_while_idle(true))
}

impl Client {
    /// The underlying HTTP/2 channel, for any generated client.
    pub fn channel(&self) -> Channel {
        InterceptedService::new(self.channel.clone(), self.credentials.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    pub fn offsets(&self) -> OffsetServiceClient<Channel> {
        OffsetServiceClient::new(self.channel())
    }

    pub fn groups(&self) -> GroupServiceClient<Channel> {
        GroupServiceClient::new(self.channel())
    }

    /// ACLs, quotas and "who am I".
    pub fn security(&self) -> SecurityServiceClient<Channel> {
        SecurityServiceClient::new(self.channel())
    }

    /// The byte-level record client (batches as bytes; see `tidelog_proto::wire`).
    pub fn records(&self) -> RecordServiceClient<Channel> {
        RecordServiceClient::new(self.channel())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Creates a topic with the broker's default settings.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicDescription, Error> {
        self.create_topic_with(name, partitions, TopicConfig::default()).await
    }

    /// Creates a topic with `config` over the broker's defaults, and the cluster's default
    /// replication factor (3, or the cluster size if smaller; 1 on a single node).
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription, Error> {
        self.create_topic_replicated(name, partitions, 0, config).await
    }

    /// Creates a topic whose partitions have `replication_factor` replicas each (0: the
    /// cluster's default), placed and led evenly across the brokers.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription, Error> {
        let req = CreateTopicRequest { name: name.into(), partitions, replication_factor, config: Some(config) };
        let resp = retry_not_leader(|| {
            let (mut admin, req) = (self.admin(), req.clone());
            async move { admin.create_topic(req).await }
        })
        .await?
        .into_inner();
        resp.topic.ok_or_else(|| Error::Decode("CreateTopic returned no topic".into()))
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, Error> {
        let resp = self.admin().describe_topic(DescribeTopicRequest { name: name.into() }).await?.into_inner();
        resp.topic.ok_or_else(|| Error::Decode("DescribeTopic returned no topic".into()))
    }

    /// As [`Client::describe_topic`], but in a cluster a topic this broker does not know yet is
    /// asked again for up to [`METADATA_SETTLE`]: a topic just created at another broker
    /// reaches each broker's metadata a moment apart (Kafka's clients wait for it likewise).
    /// On a single node "unknown" is final at once.
    pub async fn describe_topic_settled(&self, name: &str) -> Result<TopicDescription, Error> {
        let deadline = tokio::time::Instant::now() + METADATA_SETTLE;
        let mut clustered = None;
        loop {
            match self.describe_topic(name).await {
                Err(Error::Status(s)) if s.code() == tonic::Code::NotFound => {
                    if clustered.is_none() {
                        clustered = Some(!self.broker_ids().await?.is_empty());
                    }
                    if clustered != Some(true) || tokio::time::Instant::now() >= deadline {
                        return Err(Error::Status(s));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Every topic, described as this broker knows it.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, Error> {
        Ok(self.admin().list_topics(ListTopicsRequest {}).await?.into_inner().topics)
    }

    /// Deletes a topic and its data (and every group's committed offsets for it).
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let req = DeleteTopicRequest { name: name.into() };
        retry_not_leader(|| {
            let (mut admin, req) = (self.admin(), req.clone());
            async move { admin.delete_topic(req).await }
        })
        .await?;
        Ok(())
    }

    /// Each partition's offset for `spec` (every partition when `partitions` is empty):
    /// `Earliest(true)` (log start), `Latest(true)` (high watermark) or `TimestampMs(t)` (the
    /// first batch appended at or after `t`, with its time; the high watermark and `None` where
    /// there is none). Kafka's `offsetsForTimes` / `beginningOffsets` / `endOffsets`.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        spec: OffsetSpecKind,
    ) -> Result<Vec<(u32, u64, Option<i64>)>, Error> {
        let req = ListOffsetsRequest {
            topic: topic.into(),
            partitions: partitions.to_vec(),
            spec: Some(OffsetSpec { spec: Some(spec) }),
            isolation_level: 0,
        };
        let offsets = self.admin().list_offsets(req).await?.into_inner().offsets;
        Ok(offsets
            .into_iter()
            .map(|o| (o.partition, o.offset, (o.timestamp_ms >= 0).then_some(o.timestamp_ms)))
            .collect())
    }

    /// Changes a topic's settings: those set in `config` become the topic's own, those named
    /// in `reset` (`TopicConfig` field names) go back to the broker's defaults.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        config: TopicConfig,
        reset: &[String],
    ) -> Result<TopicDescription, Error> {
        let req = AlterTopicConfigRequest { name: name.into(), config: Some(config), reset: reset.to_vec() };
        let resp = self.admin().alter_topic_config(req).await?.into_inner();
        resp.topic.ok_or_else(|| Error::Decode("AlterTopicConfig returned no topic".into()))
    }

    /// Raises `topic`'s partition count to `total` (never lowers it). Producers route keys by
    /// the new count once they read it again (`ProducerConfig::metadata_max_age`).
    pub async fn create_partitions(&self, topic: &str, total: u32) -> Result<TopicDescription, Error> {
        let req = CreatePartitionsRequest { topic: topic.into(), total_count: total };
        let resp = retry_not_leader(|| {
            let (mut admin, req) = (self.admin(), req.clone());
            async move { admin.create_partitions(req).await }
        })
        .await?
        .into_inner();
        resp.topic.ok_or_else(|| Error::Decode("CreatePartitions returned no topic".into()))
    }

    /// Deletes the records below `before` in each `(partition, before)` (`None`: below the
    /// high watermark, i.e. everything consumers can see now) by moving the log start up;
    /// returns each partition's new log start. Refused as a whole (OUT_OF_RANGE) if an offset
    /// is above its partition's high watermark.
    pub async fn delete_records(&self, topic: &str, before: &[(u32, Option<u64>)]) -> Result<Vec<(u32, u64)>, Error> {
        let mut partitions = Vec::with_capacity(before.len());
        for (partition, offset) in before {
            let before_offset = match offset {
                None => -1,
                Some(o) => i64::try_from(*o)
                    .map_err(|_| Error::InvalidArgument(format!("offset {o} of partition {partition} is too large")))?,
            };
            partitions.push(DeleteRecordsPartition { partition: *partition, before_offset });
        }
        let req = DeleteRecordsRequest { topic: topic.into(), partitions };
        let resp = self.admin().delete_records(req).await?.into_inner();
        Ok(resp.partitions.into_iter().map(|p| (p.partition, p.low_watermark)).collect())
    }

    /// Every consumer group the cluster knows (members or committed offsets), with its state,
    /// member count and assignor.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, Error> {
        Ok(self.groups().list_groups(ListGroupsRequest {}).await?.into_inner().groups)
    }

    /// A group's members, assignments and lag; `Error::Status` with NOT_FOUND for a group
    /// that does not exist.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, Error> {
        Ok(self.groups().describe_group(DescribeGroupRequest { group: group.into() }).await?.into_inner())
    }

    /// Deletes a group's committed offsets; refused (FAILED_PRECONDITION) while it has
    /// members. Returns how many partitions' offsets were deleted.
    pub async fn delete_group(&self, group: &str) -> Result<u32, Error> {
        Ok(self.groups().delete_group(DeleteGroupRequest { group: group.into() }).await?.into_inner().offsets_deleted)
    }

    /// Moves an inactive group's committed offsets for `topic` (every partition when
    /// `partitions` is empty), as `kafka-consumer-groups --reset-offsets` does; with `dry_run`
    /// only reports what would change. Each partition's offset before and after.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: ResetTo,
        dry_run: bool,
    ) -> Result<Vec<PartitionReset>, Error> {
        let req = ResetOffsetsRequest {
            group: group.into(),
            topic: topic.into(),
            partitions: partitions.to_vec(),
            to: Some(to),
            dry_run,
        };
        Ok(self.groups().reset_offsets(req).await?.into_inner().partitions)
    }
}

/// Where [`Client::reset_offsets`] moves a group's offsets: `Earliest(true)`,
/// `Latest(true)`, `Offset(n)`, `TimestampMs(t)` or `ShiftBy(d)` (targets are clamped into
/// the partition's log start..high watermark).
pub use crate::proto::v1::reset_offsets_request::To as ResetTo;

/// What [`Client::list_offsets`] looks up.
pub use crate::proto::v1::offset_spec::Spec as OffsetSpecKind;
