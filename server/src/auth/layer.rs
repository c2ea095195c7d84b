//! The auth layer: every gRPC call passes through here first (a tower layer, so no handler
//! can be reached without it). It turns the call's credentials into a [`Caller`] in the
//! request's extensions, refuses bad credentials, keeps non-brokers off the brokers' internal
//! services, refuses methods it does not know while authorization is on, and applies the
//! request-rate quota.
//!
//! Credentials, in order: `authorization: Bearer <JWT>` metadata (`token.rs`); else a client
//! certificate the TLS handshake verified (`principal.rs`'s mapping rule); else anonymous.
//! A token that does not verify is UNAUTHENTICATED with the reason — never a fall back to the
//! certificate or to anonymous.
//!
//! The per-resource checks (may this caller write to topic T?) are the handlers': they need
//! the request's body. [`METHODS`] lists every method with the checks its handler makes; a
//! test keeps it equal to the services' methods, so a new RPC cannot be served unchecked.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tower::{Layer, Service};

use super::principal::{certificate_name, Caller, Source};
use super::{Auth, Kind};
use crate::telemetry::metrics::instruments;

/// The metadata key a client names itself with (for quotas and logs).
pub const CLIENT_ID: &str = "x-tidelog-client-id";
/// Longest client id kept.
const MAX_CLIENT_ID: usize = 255;

/// Every method the broker serves and what its handler checks (documentation the test holds
/// true; "any caller" methods check nothing beyond authentication).
pub const METHODS: &[(&str, &str)] = &[
    ("/tidelog.v1.RecordService/Produce", "WRITE topic (per batch)"),
    ("/tidelog.v1.RecordService/Subscribe", "READ topic"),
    ("/tidelog.v1.RecordService/InitProducer", "IDEMPOTENT_WRITE cluster, or WRITE on any topic"),
    ("/tidelog.v1.OffsetService/Commit", "READ group, READ topic"),
    ("/tidelog.v1.OffsetService/FetchCommitted", "DESCRIBE group, DESCRIBE topic"),
    ("/tidelog.v1.AdminService/CreateTopic", "CREATE cluster or CREATE topic"),
    ("/tidelog.v1.AdminService/DeleteTopic", "DELETE topic"),
    ("/tidelog.v1.AdminService/ListTopics", "lists the topics the caller may DESCRIBE"),
    ("/tidelog.v1.AdminService/DescribeTopic", "DESCRIBE topic"),
    ("/tidelog.v1.AdminService/ListOffsets", "DESCRIBE topic"),
    ("/tidelog.v1.AdminService/DescribeCluster", "any caller"),
    ("/tidelog.v1.AdminService/AlterTopicConfig", "ALTER_CONFIGS topic"),
    ("/tidelog.v1.AdminService/CreatePartitions", "ALTER topic"),
    ("/tidelog.v1.AdminService/DeleteRecords", "DELETE topic"),
    ("/tidelog.v1.AdminService/AddBroker", "ALTER cluster"),
    ("/tidelog.v1.AdminService/RemoveBroker", "ALTER cluster"),
    ("/tidelog.v1.AdminService/AlterPartitionReassignments", "ALTER cluster"),
    ("/tidelog.v1.AdminService/ListPartitionReassignments", "DESCRIBE cluster"),
    ("/tidelog.v1.GroupService/Session", "READ group (at join)"),
    ("/tidelog.v1.GroupService/DescribeGroup", "DESCRIBE group"),
    ("/tidelog.v1.GroupService/ListGroups", "lists the groups the caller may DESCRIBE"),
    ("/tidelog.v1.GroupService/DeleteGroup", "DELETE group"),
    ("/tidelog.v1.GroupService/ResetOffsets", "READ group, READ topic"),
    ("/tidelog.v1.SecurityService/WhoAmI", "any caller"),
    ("/tidelog.v1.SecurityService/CreateAcls", "ALTER cluster"),
    ("/tidelog.v1.SecurityService/DescribeAcls", "DESCRIBE cluster"),
    ("/tidelog.v1.SecurityService/DeleteAcls", "ALTER cluster"),
    ("/tidelog.v1.SecurityService/AlterClientQuotas", "ALTER_CONFIGS cluster"),
    ("/tidelog.v1.SecurityService/DescribeClientQuotas", "DESCRIBE_CONFIGS cluster"),
    ("/tidelog.v1.TransactionService/InitTransactions", "WRITE transactional id"),
    ("/tidelog.v1.TransactionService/AddPartitionsToTransaction", "WRITE transactional id, WRITE topic"),
    ("/tidelog.v1.TransactionService/AddOffsetsToTransaction", "WRITE transactional id, READ group"),
    ("/tidelog.v1.TransactionService/EndTransaction", "WRITE transactional id"),
    ("/tidelog.v1.TransactionService/ListTransactions", "lists the ids the caller may DESCRIBE"),
    ("/tidelog.v1.TransactionService/DescribeTransactions", "DESCRIBE transactional id"),
    ("/tidelog.v1.TransactionService/AbortTransaction", "ALTER cluster"),
    ("/tidelog.v1.TransactionService/DescribeOpenTransactions", "DESCRIBE topic"),
    ("/tidelog.v1.TransactionService/WriteTransactionMarkers", "CLUSTER_ACTION cluster"),
];

/// Services anyone may call, credentials or not: health checks (load balancers carry none).
const OPEN_PREFIXES: &[&str] = &["/grpc.health."];
/// Services any authenticated caller may use: reflection (the schema is public).
const PUBLIC_PREFIXES: &[&str] = &["/grpc.reflection."];
/// The brokers' internal services (Raft): brokers only, once broker principals are configured.
const INTERNAL_PREFIX: &str = "/tidelog.internal.";

/// The layer (`api::Services::router`).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Auth>,
    brokers_here: bool,
}

impl AuthLayer {
    /// `brokers_here`: whether brokers call this listener (the only one, or the internal one);
    /// on a client-only listener no certificate makes its holder a broker.
    pub fn new(auth: Arc<Auth>, brokers_here: bool) -> Self {
        Self { auth, brokers_here }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: Arc::clone(&self.auth), brokers_here: self.brokers_here }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
    brokers_here: bool,
}

/// The caller a request was authenticated as; anonymous for requests that did not pass the
/// layer (in-process calls in tests).
pub fn caller<T>(req: &tonic::Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or_else(|| Caller::anonymous(None, Arc::from("")))
}

fn authenticate<B>(auth: &Auth, req: &http::Request<B>, brokers_here: bool) -> Result<Caller, Status> {
    let ext = req.extensions();
    let (host, certs) = match ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        Some(tls) => (tls.get_ref().remote_addr().map(|a| a.ip()), tls.peer_certs()),
        None => (ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip()), None),
    };
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d; ACL hosts name a.b.c.d.
    let host = host.map(|h| h.to_canonical());
    let client_id: Arc<str> = match req.headers().get(CLIENT_ID).and_then(|v| v.to_str().ok()) {
        Some(id) => Arc::from(&id[..id.len().min(MAX_CLIENT_ID)]),
        None => Arc::from(""),
    };
    if let Some(value) = req.headers().get(http::header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization metadata must be \"Bearer <token>\""))?;
        let Some(jwt) = auth.jwt() else {
            return Err(Status::unauthenticated(
                "this broker does not accept bearer tokens (no [auth.jwt] configured); connect without one",
            ));
        };
        let name = jwt.verify(token).map_err(|e| Status::unauthenticated(e.to_string()))?;
        let principal: Arc<str> = Arc::from(format!("User:{name}"));
        return Ok(Caller { principal, source: Source::Token, host, client_id, broker: false });
    }
    if let Some(cert) = certs.as_ref().and_then(|c| c.first()) {
        let name = certificate_name(cert.as_ref(), auth.settings().mtls_principal).ok_or_else(|| {
            Status::unauthenticated("the client certificate names no principal (no subject CN or DNS name)")
        })?;
        let principal = format!("User:{name}");
        let broker = brokers_here && auth.is_broker_principal(&principal);
        return Ok(Caller { principal: Arc::from(principal), source: Source::Mtls, host, client_id, broker });
    }
    Ok(Caller::anonymous(host, client_id))
}

fn refuse<RB: Default>(status: Status) -> http::Response<RB> {
    status.into_http()
}

impl<S, B, RB> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let open = OPEN_PREFIXES.iter().any(|p| path.starts_with(p));
        let settings = self.auth.settings();
        let checked = match authenticate(&self.auth, &req, self.brokers_here) {
            // Health checks are answered whatever credentials they carry.
            Err(_) if open => Ok(Caller::anonymous(None, Arc::from(""))),
            Err(status) => Err(status),
            Ok(c) if open => Ok(c),
            Ok(c) if c.source == Source::Anonymous && settings.require_authentication => {
                Err(Status::unauthenticated("this broker requires credentials: a bearer token or a client certificate"))
            }
            Ok(c) if path.starts_with(INTERNAL_PREFIX) && !settings.broker_principals.is_empty() && !c.broker => {
                Err(Status::permission_denied(format!(
                    "{} is not a broker of this cluster: only auth.broker_principals may send Raft traffic",
                    c.principal
                )))
            }
            Ok(_)
                if self.auth.authorization()
                    && !path.starts_with(INTERNAL_PREFIX)
                    && !PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p))
                    && !METHODS.iter().any(|(m, _)| *m == path) =>
            {
                Err(Status::permission_denied(format!("{path} is not a method this broker authorizes")))
            }
            Ok(c) => Ok(c),
        };
        let caller = match checked {
            Ok(c) => c,
            Err(status) => {
                if status.code() == tonic::Code::Unauthenticated {
                    instruments().authentication_failed.inc();
                    tracing::warn!(target: "tidelog::audit", path, error = status.message(), "unauthenticated");
                } else {
                    tracing::warn!(target: "tidelog::audit", path, error = status.message(), "denied");
                }
                return Box::pin(std::future::ready(Ok(refuse(status))));
            }
        };
        let delay = if open || caller.broker {
            std::time::Duration::ZERO
        } else {
            self.auth.throttle(&caller, Kind::Request, 1)
        };
        req.extensions_mut().insert(caller);
        // The service was polled ready: call it now, and wait (the request-rate quota) before
        // its response is awaited — a unary call's answer is held back by the delay.
        let call = self.inner.call(req);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            call.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of every public service is in [`METHODS`], and nothing else is.
    #[test]
    fn every_served_method_is_listed() {
        let set = prost_types::FileDescriptorSet::decode(tidelog_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut served: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let pkg = f.package().to_string();
                f.service.iter().flat_map(move |s| {
                    let svc = format!("{pkg}.{}", s.name());
                    s.method.iter().map(move |m| format!("/{svc}/{}", m.name())).collect::<Vec<_>>()
                })
            })
            .collect();
        served.sort();
        let mut listed: Vec<String> = METHODS.iter().map(|(m, _)| (*m).to_string()).collect();
        listed.sort();
        assert_eq!(served, listed);
    }
}
