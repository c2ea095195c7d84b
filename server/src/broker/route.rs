//! Routing between brokers: the vocabulary the api layer and the cluster share for calls that
//! one broker passes on to another. Some calls only one broker may serve — topic creates and
//! deletes (the controller), everything of consumer groups (the coordinator, which must fence
//! every commit of a group), offsets of a partition held elsewhere (one of its replicas). Such
//! a call may arrive at any broker; that broker passes it on, once. A single node serves
//! everything itself ([`Route::Here`]).
//!
//! Invariant: at most one hop. A passed-on call carries the [`FORWARDED`] header
//! ([`Origin::Forwarded`]); a broker that receives one and cannot serve it (the controller just
//! moved) answers a retryable `NOT_LEADER` naming the broker it believes serves it, and never
//! passes it on again, so calls cannot loop between brokers that disagree.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Request;

use crate::error::BrokerError;

/// Set on a call one broker passes on to another: it is not passed on again.
pub const FORWARDED: &str = "x-tidelog-forwarded";
/// How long a coordinator call waits for a controller to be elected before it is answered
/// with a retryable `NOT_LEADER`.
pub const CONTROLLER_WAIT: Duration = Duration::from_secs(5);
/// How long a call passed on to another broker, or a metadata write, may take.
pub const APPLY_WAIT: Duration = Duration::from_secs(15);
/// What opening one partition replica may add to applying a create (files, Raft state, the
/// group's start) on a loaded broker: about 4 ms each measured on 2 cores shared by 3 brokers.
const OPEN_ALLOWANCE: Duration = Duration::from_millis(6);

/// How long a create of (or growth by) `partitions` partitions may take to apply: each broker
/// opens its replicas as it applies it, so 10,000 partitions take tens of seconds, and a
/// fixed wait would answer a create that is committed and progressing with a timeout.
pub fn apply_wait_for(partitions: u32) -> Duration {
    APPLY_WAIT + OPEN_ALLOWANCE.saturating_mul(partitions)
}

/// Where a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client.
    Client,
    /// Another broker passed it on: serve it here or refuse it, never pass it on again.
    Forwarded,
}

impl Origin {
    /// The origin of a gRPC request, from its metadata.
    pub fn of<T>(request: &Request<T>) -> Self {
        if request.metadata().contains_key(FORWARDED) {
            Self::Forwarded
        } else {
            Self::Client
        }
    }
}

/// Where a call is served.
#[derive(Debug)]
pub enum Route {
    /// On this broker.
    Here,
    /// On broker `id`, through this channel.
    To(Channel, u64),
}

/// `msg` as a call passed on to another broker, with a deadline when `timeout` is given
/// (streams have none).
pub fn forwarded_request<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

/// What a passed-on call's failure becomes for the caller: a broker's real answer (not found,
/// invalid, fenced, ...) passes through; a failure of the hop itself (the other broker went
/// away mid-call, timed out, or answered garbage) is a retryable UNAVAILABLE, as NOT_LEADER is.
pub fn upstream_status(s: tonic::Status) -> tonic::Status {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown | Code::Internal => {
            tonic::Status::unavailable(format!("forwarded call failed ({}: {}); retry", s.code(), s.message()))
        }
        _ => s,
    }
}

/// A passed-on call that failed in transport or at the other broker, as a retryable error.
pub fn upstream_error(what: &str, s: &tonic::Status) -> BrokerError {
    BrokerError::NotLeader { what: format!("{what} ({}: {})", s.code(), s.message()), leader: None }
}
