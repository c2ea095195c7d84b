//! `GroupService`: the member session stream, DescribeGroup, and group administration
//! (`group_admin.rs`). The session handler only parses messages and forwards them to the
//! coordinator; when the stream ends for any reason
//! (leave, disconnect, broker shutdown) the member is removed and the group rebalances.
//!
//! Where the broker routes group calls elsewhere (`broker/route.rs`: in a cluster, to the
//! controller), a session opened here is proxied there, message for message, so members
//! connected to different brokers form one group. When this broker stops coordinating, its
//! sessions end (UNAVAILABLE); their members rejoin, and the proxies route them to the new
//! coordinator.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tidelog_proto::v1::group_service_client::GroupServiceClient;
use tidelog_proto::v1::group_service_server::GroupService;
use tidelog_proto::v1::{
    offset_spec, session_request, session_response, DeleteGroupRequest, DeleteGroupResponse, DescribeGroupRequest,
    DescribeGroupResponse, IsolationLevel, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest,
    ListOffsetsResponse, OffsetSpec, PartitionLag, Rebalance, ResetOffsetsRequest, ResetOffsetsResponse, SessionError,
    SessionRequest, SessionResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admin::list_offsets;
use super::authorize;
use super::group_admin;
use crate::auth::layer::caller;
use crate::auth::{Auth, Caller, Operation, ResourceType};
use crate::broker::route::{forwarded_request, upstream_status, Origin, Route, APPLY_WAIT, CONTROLLER_WAIT};
use crate::broker::Broker;
use crate::error::{error_code, BrokerError};
use crate::group::Coordinator;

#[derive(Debug)]
pub struct GroupApi {
    broker: Arc<Broker>,
    coordinator: Arc<Coordinator>,
    sessions: AtomicU64,
}

impl GroupApi {
    pub fn new(broker: Arc<Broker>, coordinator: Arc<Coordinator>) -> Self {
        Self { broker, coordinator, sessions: AtomicU64::new(1) }
    }
}

impl GroupApi {
    /// A client for the coordinator when a unary group call must be served there (`None`:
    /// here).
    async fn at_coordinator<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<GroupServiceClient<tonic::transport::Channel>>, Status> {
        Ok(match self.broker.coordinator_route(Origin::of(request)).await? {
            Route::Here => None,
            Route::To(channel, _) => Some(GroupServiceClient::new(channel)),
        })
    }

    /// A session opened here while the controller is broker `id`: the member's messages go
    /// up until its stream ends or fails, the controller's answers come back, and the session
    /// ends (UNAVAILABLE, so the member rejoins) when either side breaks, when this broker
    /// sees another controller, or when it shuts down, so no member stays attached to a
    /// coordinator that lost its place.
    async fn proxy(
        &self,
        channel: tonic::transport::Channel,
        id: u64,
        caller: Caller,
        inbound: Streaming<SessionRequest>,
    ) -> Result<Response<<Self as GroupService>::SessionStream>, Status> {
        // A join the caller may not make ends the forwarding, and the session with its status.
        // (An mpsc, not a oneshot: the loop below polls it again after the sender is gone.)
        let (denied_tx, mut denied_rx) = mpsc::channel::<Status>(1);
        let mut denied_tx = Some(denied_tx);
        let auth = Arc::clone(self.broker.auth());
        let up = inbound
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()))
            .take_while(move |m| {
                let allowed = match join_allowed(&auth, &caller, m) {
                    Ok(()) => true,
                    Err(status) => {
                        if let Some(t) = denied_tx.take() {
                            let _ = t.try_send(status);
                        }
                        false
                    }
                };
                std::future::ready(allowed)
            });
        let mut client = GroupServiceClient::new(channel);
        let opening = client.session(forwarded_request(up, None));
        let mut down = match tokio::time::timeout(CONTROLLER_WAIT, opening).await {
            Ok(opened) => opened.map_err(upstream_status)?.into_inner(),
            Err(_) => {
                return Err(Status::unavailable(format!("the group coordinator (broker {id}) did not answer; retry")))
            }
        };
        let mut shutdown = self.broker.shutdown_signal();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut moved = self.broker.coordinator_moved_from(id);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    Some(status) = denied_rx.recv() => Some(Err(status)),
                    m = down.next() => m,
                    () = &mut moved => Some(Err(Status::unavailable("the group coordinator moved; rejoin"))),
                    _ = shutdown.changed() => Some(Err(Status::unavailable("this broker is shutting down; rejoin"))),
                };
                let Some(msg) = msg else { return };
                let last = msg.is_err();
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

/// Whether a session message may go on: a join needs READ on its group and DESCRIBE on its
/// topics.
fn join_allowed(auth: &Auth, caller: &Caller, m: &SessionRequest) -> Result<(), Status> {
    let denied = |d| Status::from(BrokerError::from(d));
    if let Some(session_request::Kind::Join(j)) = &m.kind {
        auth.authorize(caller, Operation::Read, ResourceType::Group, &j.group).map_err(denied)?;
        // The coordinator tells the group's leader each topic's partitions.
        for t in &j.topics {
            auth.authorize(caller, Operation::Describe, ResourceType::Topic, t).map_err(denied)?;
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = caller(&request);
        if let Route::To(channel, id) = self.broker.coordinator_route(Origin::of(&request)).await? {
            return self.proxy(channel, id, caller, request.into_inner()).await;
        }
        let auth = Arc::clone(self.broker.auth());
        let mut inbound = request.into_inner();
        // Unbounded, but a member gets at most a few messages per rebalance, and a member that
        // stops reading stops heartbeating too and is removed after its session timeout.
        let (tx, rx) = mpsc::unbounded_channel();
        let coordinator = Arc::clone(&self.coordinator);
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let mut shutdown = self.broker.shutdown_signal();
        let mut lost = self.broker.coordinator_lost();
        tokio::spawn(async move {
            let mut member: Option<(String, String)> = None;
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    _ = shutdown.changed() => None,
                    () = &mut lost => {
                        let moved = "this broker is no longer the group coordinator; rejoin";
                        let _ = tx.send(Err(Status::unavailable(moved)));
                        None
                    }
                };
                let Some(Ok(request @ SessionRequest { kind: Some(_) })) = msg else { break };
                if let Err(status) = join_allowed(&auth, &caller, &request) {
                    let _ = tx.send(Err(status));
                    break;
                }
                let Some(kind) = request.kind else { break };
                let result = match kind {
                    session_request::Kind::Join(join) => {
                        let group = join.group.clone();
                        if member.as_ref().is_some_and(|(g, _)| *g != group) {
                            Err(BrokerError::InvalidArgument("one session serves one group".into()))
                        } else {
                            let id = member.as_ref().map(|(_, m)| m.as_str());
                            coordinator.join(session, id, join, tx.clone()).map(|id| member = Some((group, id)))
                        }
                    }
                    session_request::Kind::Sync(sync) => match &member {
                        Some((g, m)) => coordinator.sync(g, m, sync.generation, sync.assignments),
                        None => Err(BrokerError::InvalidArgument("sync before join".into())),
                    },
                    session_request::Kind::Heartbeat(_) => {
                        if let Some((g, m)) = &member {
                            if !coordinator.heartbeat(g, m) {
                                let reason = "this member was removed from the group (session timeout); rejoin".into();
                                let rebalance = session_response::Kind::Rebalance(Rebalance { reason });
                                let _ = tx.send(Ok(SessionResponse { kind: Some(rebalance) }));
                            }
                        }
                        Ok(())
                    }
                    session_request::Kind::Leave(_) => break,
                };
                if let Err(e) = result {
                    let error = SessionError { code: error_code(&e) as i32, message: e.to_string() };
                    let _ = tx.send(Ok(SessionResponse { kind: Some(session_response::Kind::Error(error)) }));
                }
            }
            if let Some((g, m)) = member {
                coordinator.remove(&g, &m, Some(session), "member left or its session ended");
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn list_groups(&self, request: Request<ListGroupsRequest>) -> Result<Response<ListGroupsResponse>, Status> {
        // Only the groups the caller may describe.
        let caller = caller(&request);
        let auth = self.broker.auth();
        let mut resp = if let Some(mut client) = self.at_coordinator(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            client.list_groups(req).await.map_err(upstream_status)?.into_inner()
        } else {
            group_admin::list_groups(&self.broker, &self.coordinator)?
        };
        resp.groups.retain(|g| auth.allowed(&caller, Operation::Describe, ResourceType::Group, &g.group));
        Ok(Response::new(resp))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        authorize(&self.broker, &request, Operation::Delete, ResourceType::Group, &request.get_ref().group)?;
        if let Some(mut client) = self.at_coordinator(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return client.delete_group(req).await.map_err(upstream_status);
        }
        let group = request.into_inner().group;
        Ok(Response::new(group_admin::delete_group(&self.broker, &self.coordinator, &group).await?))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        authorize(&self.broker, &request, Operation::Read, ResourceType::Group, &request.get_ref().group)?;
        authorize(&self.broker, &request, Operation::Read, ResourceType::Topic, &request.get_ref().topic)?;
        if let Some(mut client) = self.at_coordinator(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return client.reset_offsets(req).await.map_err(upstream_status);
        }
        group_admin::reset_offsets(&self.broker, &self.coordinator, request.into_inner()).await.map(Response::new)
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        authorize(&self.broker, &request, Operation::Describe, ResourceType::Group, &request.get_ref().group)?;
        // Lag and offsets only for the topics the caller may describe.
        let caller = caller(&request);
        let mut resp = if let Some(mut client) = self.at_coordinator(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            client.describe_group(req).await.map_err(upstream_status)?.into_inner()
        } else {
            self.describe_here(request.into_inner().group).await?
        };
        let auth = self.broker.auth();
        resp.partitions.retain(|p| auth.allowed(&caller, Operation::Describe, ResourceType::Topic, &p.topic));
        Ok(Response::new(resp))
    }
}

impl GroupApi {
    /// DescribeGroup on the coordinator.
    async fn describe_here(&self, group: String) -> Result<DescribeGroupResponse, Status> {
        group_admin::check_exists(&self.broker, &self.coordinator, &group)?;
        let view = self.coordinator.describe(&group);
        let mut resp = DescribeGroupResponse { group: group.clone(), state: "empty".into(), ..Default::default() };
        let mut owners = HashMap::new();
        if let Some(v) = &view {
            resp.state = v.state.name().into();
            resp.generation = v.generation;
            resp.leader_id = v.leader.clone().unwrap_or_default();
            resp.members = v.members.clone();
            for (member, tps) in &v.assignments {
                for tp in tps {
                    for p in &tp.partitions {
                        owners.insert((tp.topic.clone(), *p), member.clone());
                    }
                }
            }
        }
        // Lag for every topic the group has committed offsets for (high watermarks of
        // partitions held elsewhere asked of their replicas).
        for topic in self.broker.topics() {
            let name = &topic.record.name;
            let committed = self.broker.committed_offsets(&group, name)?;
            if committed.is_empty() {
                continue;
            }
            let latest = |isolation: IsolationLevel| ListOffsetsRequest {
                topic: name.clone(),
                partitions: committed.iter().map(|c| c.partition).filter(|p| *p < topic.record.partitions).collect(),
                spec: Some(OffsetSpec { spec: Some(offset_spec::Spec::Latest(true)) }),
                isolation_level: isolation as i32,
            };
            // Best effort: lag is left out for partitions whose replicas do not answer.
            let ends = |r: Result<_, Status>| -> HashMap<u32, u64> {
                match r {
                    Ok(ListOffsetsResponse { offsets }) => offsets.iter().map(|o| (o.partition, o.offset)).collect(),
                    Err(e) => {
                        tracing::debug!(topic = %name, error = %e, "no high watermarks for the group's lag");
                        HashMap::new()
                    }
                }
            };
            let hws = ends(list_offsets(&self.broker, latest(IsolationLevel::ReadUncommitted), Origin::Client).await);
            let lsos = ends(list_offsets(&self.broker, latest(IsolationLevel::ReadCommitted), Origin::Client).await);
            for c in committed {
                let Some(&hw) = hws.get(&c.partition) else { continue };
                resp.partitions.push(PartitionLag {
                    topic: name.clone(),
                    partition: c.partition,
                    member_id: owners.get(&(name.clone(), c.partition)).cloned().unwrap_or_default(),
                    committed_offset: c.offset,
                    high_watermark: hw,
                    lag: hw.saturating_sub(c.offset),
                    last_stable_offset: lsos.get(&c.partition).copied().unwrap_or(hw),
                });
            }
        }
        Ok(resp)
    }
}
