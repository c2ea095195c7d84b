//! Forwarding between brokers in cluster mode. Some calls only the controller (the metadata
//! group's leader) may serve: topic creates and deletes, and everything of consumer groups
//! (sessions, commits, committed offsets), since one coordinator must fence every commit of a
//! group. Such a call may arrive at any broker; that broker passes it on to the controller,
//! once.
//!
//! Invariant: at most one hop. A forwarded call carries the [`FORWARDED`] header; a broker that
//! receives one and is not the controller (it just moved) answers a retryable `NOT_LEADER`
//! naming the controller it knows, and never forwards again, so calls cannot loop between
//! brokers that disagree about who leads.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Request;

use crate::broker::{Broker, BrokerError};
use crate::cluster::Cluster;

/// Set on a call one broker forwards to the controller: it is not forwarded again.
pub const FORWARDED: &str = "x-tidelog-forwarded";
/// How long a coordinator call waits for a controller to be elected before it is answered
/// with a retryable `NOT_LEADER`.
pub const CONTROLLER_WAIT: Duration = Duration::from_secs(5);

/// Whether `request` was forwarded by another broker.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// `msg` as a forwarded call, with a deadline when `timeout` is given (streams have none).
pub fn forwarded_request<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

/// The channel to broker `id`.
pub fn channel_to(cluster: &Cluster, id: u64) -> Result<Channel, BrokerError> {
    cluster.channel_to(id).ok_or_else(|| BrokerError::NotLeader {
        what: format!("this call here (no address is known for the controller, broker {id})"),
        leader: None,
    })
}

/// What a forwarded call's failure becomes for the caller: a broker's real answer (not found,
/// invalid, fenced, ...) passes through; a failure of the hop itself (the controller went away
/// mid-call, timed out, or answered garbage) is a retryable UNAVAILABLE, as NOT_LEADER is.
pub fn upstream_status(s: tonic::Status) -> tonic::Status {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown | Code::Internal => {
            tonic::Status::unavailable(format!("forwarded call failed ({}: {}); retry", s.code(), s.message()))
        }
        _ => s,
    }
}

/// Where a consumer-group call is served.
pub enum Route {
    /// On this broker: a single node, or the controller.
    Here,
    /// On the controller (broker id), through this channel.
    Controller(Channel, u64),
}

/// Routes a consumer-group call (session, commit, fetch or describe) to the coordinator.
pub async fn coordinator_route(broker: &Broker, forwarded: bool) -> Result<Route, BrokerError> {
    let Some(cluster) = broker.cluster() else { return Ok(Route::Here) };
    match cluster.coordinator(CONTROLLER_WAIT).await? {
        None => Ok(Route::Here),
        Some(id) if forwarded => Err(BrokerError::NotLeader {
            what: format!("the group coordinator (it moved to broker {id}; retry)"),
            leader: cluster.leader_hint(Some(id)),
        }),
        Some(id) => Ok(Route::Controller(channel_to(cluster, id)?, id)),
    }
}
