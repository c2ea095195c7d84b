//! The cluster's `ControlPlane` (`broker/seam.rs`): metadata decisions are entries of the
//! metadata Raft group, proposed by the controller (its leader) and applied by every broker
//! (`metadata.rs`). A write that reaches another broker is passed on to the controller, once
//! (`broker/route.rs`), and answered when this broker has applied it too, so a client that
//! created a topic anywhere can use it there at once.
//!
//! Consumer groups are coordinated by the controller alone, so one coordinator fences every
//! commit of a group: [`Cluster::coordinator_location`] decides where their calls go.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tidelog_proto::v1::admin_service_client::AdminServiceClient;
use tidelog_proto::v1::{CreateTopicRequest, DeleteTopicRequest};

use super::metadata::{self, MetaCommand};
use super::{placement, Cluster};
use crate::broker::route::{forwarded_request, upstream_status, Origin, Route, APPLY_WAIT, CONTROLLER_WAIT};
use crate::broker::seam::{ClusterView, ControlPlane, NewTopic};
use crate::broker::{Broker, Topic};
use crate::clock::now_ms;
use crate::config::MAX_NODE_ID;
use crate::error::BrokerError;
use crate::meta::{StoredOffset, TopicRecord};

#[tonic::async_trait]
impl ControlPlane for Cluster {
    async fn create_topic(&self, broker: &Broker, new: NewTopic, origin: Origin) -> Result<Arc<Topic>, BrokerError> {
        let brokers: Vec<u64> = self.brokers().keys().copied().collect();
        let n = brokers.len() as u32;
        let rf = match new.replication_factor {
            0 => placement::DEFAULT_REPLICATION_FACTOR.min(n),
            rf if rf <= n => rf,
            rf => {
                return Err(BrokerError::InvalidArgument(format!(
                    "replication_factor {rf} is more than the {n} brokers of this cluster (use 1..={n}, or 0 for {})",
                    placement::DEFAULT_REPLICATION_FACTOR.min(n)
                )))
            }
        };
        let replicas = placement::assign(&brokers, new.partitions, rf, &new.name);
        let record = TopicRecord {
            name: new.name.clone(),
            partitions: new.partitions,
            created_at_ms: now_ms(),
            settings: new.settings.clone(),
            replicas,
        };
        match metadata::propose(self, &MetaCommand::CreateTopic { record }).await {
            Ok(offset) => {
                self.wait_applied(offset + 1, APPLY_WAIT).await?;
                let topic = broker.topic(&new.name)?;
                if topic.topic_id != metadata::topic_id_at(offset) {
                    return Err(BrokerError::TopicExists(new.name));
                }
                Ok(topic)
            }
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = CreateTopicRequest {
                    name: new.name.clone(),
                    partitions: new.partitions,
                    replication_factor: rf,
                    config: Some(new.settings.to_proto()),
                };
                self.admin_client(id)?
                    .create_topic(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                self.wait_topic(broker, &new.name, true).await
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_topic(&self, broker: &Broker, name: &str, origin: Origin) -> Result<(), BrokerError> {
        let topic = broker.topic(name)?;
        let cmd = MetaCommand::DeleteTopic {
            name: name.to_string(),
            topic_id: topic.topic_id,
            partitions: topic.record.partitions,
        };
        match metadata::propose(self, &cmd).await {
            Ok(offset) => self.wait_applied(offset + 1, APPLY_WAIT).await,
            Err(BrokerError::NotLeader { leader: Some((id, _)), .. }) if origin == Origin::Client => {
                let req = DeleteTopicRequest { name: name.to_string() };
                self.admin_client(id)?
                    .delete_topic(forwarded_request(req, Some(APPLY_WAIT)))
                    .await
                    .map_err(|s| BrokerError::Forwarded(upstream_status(s)))?;
                match self.wait_topic(broker, name, false).await {
                    Ok(_) | Err(BrokerError::UnknownTopic(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A `CommitOffsets` entry of the metadata group naming the topic's incarnation, answered
    /// once a majority stored it (fsynced) and this broker applied it. Applying skips it if
    /// that incarnation was deleted by an earlier entry (`metadata.rs`).
    async fn commit_offsets(
        &self,
        broker: &Broker,
        group: &str,
        topic: &Topic,
        offsets: Vec<StoredOffset>,
    ) -> Result<(), BrokerError> {
        let name = &topic.record.name;
        let cmd = MetaCommand::CommitOffsets {
            group: group.to_string(),
            topic: name.clone(),
            offsets,
            topic_id: topic.topic_id,
        };
        let offset = metadata::propose(self, &cmd).await?;
        self.wait_applied(offset + 1, APPLY_WAIT).await?;
        match broker.topic(name) {
            Ok(current) if current.topic_id == topic.topic_id => Ok(()),
            _ => Err(BrokerError::TopicDeleted(name.clone())),
        }
    }

    /// Unique across the cluster without a round trip: the low bits name the broker that
    /// issued it (node ids are below `MAX_NODE_ID`).
    async fn next_producer_id(&self, broker: &Broker) -> Result<i64, BrokerError> {
        let local = broker.store().next_producer_id().await?;
        Ok(local * MAX_NODE_ID as i64 + self.node_id() as i64)
    }

    async fn coordinator(&self, origin: Origin) -> Result<Route, BrokerError> {
        match self.coordinator_location(CONTROLLER_WAIT).await? {
            None => Ok(Route::Here),
            Some(id) if origin == Origin::Forwarded => Err(BrokerError::NotLeader {
                what: format!("the group coordinator (it moved to broker {id}; retry)"),
                leader: self.leader_hint(Some(id)),
            }),
            Some(id) => Ok(Route::To(self.channel_to_broker(id)?, id)),
        }
    }

    fn coordinator_lost(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.controller_lost().await })
    }

    fn coordinator_moved_from(self: Arc<Self>, id: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.controller_moved_from(id).await })
    }

    fn channel_to(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        self.channel_to_broker(id)
    }

    fn describe_cluster(&self, _broker: &Broker) -> Result<ClusterView, BrokerError> {
        Ok(ClusterView {
            // The metadata group's first entry is the same everywhere; name the cluster by its
            // members instead of this broker's local id.
            cluster_id: format!("tidelog-{}", self.brokers().keys().map(u64::to_string).collect::<Vec<_>>().join("-")),
            controller: self.controller(),
            brokers: self.brokers().clone(),
        })
    }

    fn metadata_ready(&self) -> bool {
        Cluster::metadata_ready(self)
    }

    fn generation_base(&self) -> u32 {
        (self.meta_term().min(0xFFFF) as u32) << 16
    }

    async fn hand_over(&self, _broker: &Broker, wait: Duration) {
        self.hand_over_leadership(wait).await;
    }

    async fn stop(&self, _broker: &Broker) {
        self.shutdown().await;
    }
}

impl Cluster {
    /// The channel to broker `id`, or a retryable error when its address is unknown.
    fn channel_to_broker(&self, id: u64) -> Result<tonic::transport::Channel, BrokerError> {
        self.channel_to(id).ok_or_else(|| BrokerError::NotLeader {
            what: format!("this call here (no address is known for broker {id})"),
            leader: None,
        })
    }

    /// The admin service of broker `id` (the controller).
    fn admin_client(&self, id: u64) -> Result<AdminServiceClient<tonic::transport::Channel>, BrokerError> {
        Ok(AdminServiceClient::new(self.channel_to_broker(id)?))
    }

    /// Waits until this broker's topic table shows topic `name` (`present`) or no longer
    /// shows it.
    async fn wait_topic(&self, broker: &Broker, name: &str, present: bool) -> Result<Arc<Topic>, BrokerError> {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        let mut applied = self.watch_applied();
        loop {
            match broker.topic(name) {
                Ok(t) if present => return Ok(t),
                Err(e @ BrokerError::UnknownTopic(_)) if !present => return Err(e),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, applied.changed()).await.is_err() {
                return Err(BrokerError::NotLeader {
                    what: format!("the metadata of topic '{name}' yet (not applied on this broker in time)"),
                    leader: None,
                });
            }
        }
    }
}
