//! The gRPC surface: thin tonic services that validate, call the broker, and map errors (one
//! table, `crate::error`). Also standard health checking and server reflection (v1 and
//! v1alpha, since grpcurl 1.8 and grpcio-reflection speak only v1alpha).
//!
//! Never: import `cluster` or `raft`, or ask whether the broker is a single node or a cluster.
//! What differs between the two is behind the broker's seam (`broker/seam.rs`); a call that
//! another broker must serve is passed on where the broker's routing says (`broker/route.rs`).

pub mod admin;
mod batch_trace;
pub mod group;
pub mod group_admin;
pub mod offsets;
mod produce_requests;
pub mod records;
pub mod security;
mod subscribe_body;
pub mod txn;

use std::sync::Arc;

use tidelog_proto::v1::admin_service_server::AdminServiceServer;
use tidelog_proto::v1::group_service_server::GroupServiceServer;
use tidelog_proto::v1::offset_service_server::OffsetServiceServer;
use tidelog_proto::v1::security_service_server::SecurityServiceServer;
use tidelog_proto::v1::transaction_service_server::TransactionServiceServer;
use tidelog_proto::wire::record_service_server::RecordServiceServer;
use tonic::transport::server::Router;
use tonic::transport::Server;

use crate::auth::layer::{caller, AuthLayer};
use crate::auth::{Operation, ResourceType};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::telemetry::grpc_trace::GrpcTraceLayer;
use crate::topic_config::MAX_BATCH_BYTES_LIMIT;

/// The server's layers, outermost first: a span per call (`telemetry/grpc_trace.rs`), then
/// authentication (`auth/layer.rs`), so a refused call is traced too.
pub type Traced =
    tower::layer::util::Stack<AuthLayer, tower::layer::util::Stack<GrpcTraceLayer, tower::layer::util::Identity>>;

/// Checks the request's caller may do `op` on the resource (`auth`): PERMISSION_DENIED, with
/// an audit line, if not. The per-resource half of authorization; the auth layer did the rest.
pub fn authorize<T>(
    broker: &Broker,
    request: &tonic::Request<T>,
    op: Operation,
    rt: ResourceType,
    name: &str,
) -> Result<(), tonic::Status> {
    broker.auth().authorize(&caller(request), op, rt, name).map_err(|d| BrokerError::from(d).into())
}

/// HTTP/2 flow-control windows and frame size (see `serve`). The stream window also bounds
/// what one stalled subscriber can have in flight in the transport.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Largest gRPC message either way: the largest batch plus room for the envelope.
pub const MAX_MESSAGE_BYTES: usize = MAX_BATCH_BYTES_LIMIT as usize * 2;
/// Most concurrent streams (calls) one connection may have open: a client that opens more
/// gets them refused (HTTP/2 REFUSED_STREAM, a retryable UNAVAILABLE) instead of making the
/// broker hold unbounded per-stream state. Produce streams also bound their in-flight batches
/// (`records::MAX_IN_FLIGHT`) and Subscribe its buffered responses.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header block (gRPC metadata) of one call: tokens are at most 16 KiB
/// (`auth::token`), and nothing else a client sends is large. A call with more is refused by
/// HTTP/2 before any handler sees it.
pub const MAX_METADATA_BYTES: u32 = 64 << 10;
/// On a listener brokers call: how many streams a peer may reset before the broker has
/// accepted them, before HTTP/2 drops the whole connection (h2's default is 20, a guard
/// against "rapid reset" floods). All of a peer's Raft groups share one connection; when a
/// saturated broker is slow to accept, thousands of heartbeats and votes time out and are
/// reset at once, and at 20 every group on the connection then lost its peer together, which
/// made elections cascade. Bounded still, by the streams a connection may have open.
const PEER_PENDING_RESETS: usize = MAX_STREAMS_PER_CONNECTION as usize;

/// Every client-facing service, built once: a broker with an internal listener serves them
/// on both listeners (the same coordinator, the same state).
#[derive(Clone)]
pub struct Services {
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    records: subscribe_body::RecordRoutes,
    offsets: OffsetServiceServer<offsets::OffsetApi>,
    groups: GroupServiceServer<group::GroupApi>,
    admin: AdminServiceServer<admin::AdminApi>,
    security: SecurityServiceServer<security::SecurityApi>,
    txns: TransactionServiceServer<txn::TxnApi>,
    auth: Arc<crate::auth::Auth>,
}

impl Services {
    pub async fn new(broker: Arc<Broker>) -> Self {
        let health = tonic_health::server::HealthReporter::new();
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        health.set_serving::<RecordServiceServer<records::RecordApi>>().await;
        health.set_serving::<AdminServiceServer<admin::AdminApi>>().await;
        health.set_serving::<OffsetServiceServer<offsets::OffsetApi>>().await;
        health.set_serving::<GroupServiceServer<group::GroupApi>>().await;
        health.set_serving::<SecurityServiceServer<security::SecurityApi>>().await;
        health.set_serving::<TransactionServiceServer<txn::TxnApi>>().await;
        let records = subscribe_body::RecordRoutes::new(records::RecordApi::new(Arc::clone(&broker)));
        let coordinator = crate::group::Coordinator::new(Arc::clone(&broker));
        crate::group::coordinator::spawn_reaper(Arc::clone(&coordinator), &broker);
        let offsets = OffsetServiceServer::new(offsets::OffsetApi::new(Arc::clone(&broker), Arc::clone(&coordinator)));
        let txn_coordinator = crate::txn::TxnCoordinator::new(Arc::clone(&broker));
        crate::txn::coordinator::spawn_sweeper(Arc::clone(&txn_coordinator));
        let txns = TransactionServiceServer::new(txn::TxnApi::new(txn_coordinator, Arc::clone(&coordinator)));
        let groups = GroupServiceServer::new(group::GroupApi::new(Arc::clone(&broker), coordinator));
        let admin = AdminServiceServer::new(admin::AdminApi::new(Arc::clone(&broker)));
        let security = SecurityServiceServer::new(security::SecurityApi::new(Arc::clone(&broker)));
        Self {
            health: health_service,
            records,
            offsets,
            groups,
            admin,
            security,
            txns,
            auth: Arc::clone(broker.auth()),
        }
    }

    /// A router serving them, with the transport settings they need; `node.rs` adds the
    /// brokers' internal services (Raft) where they are served and serves it. `brokers_here`:
    /// brokers call this listener (see `auth::layer::AuthLayer::new`).
    pub fn router(&self, brokers_here: bool) -> anyhow::Result<Router<Traced>> {
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tidelog_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let router = Server::builder()
            // h2's default 64 KiB windows cap one stream at a window per round trip; batches
            // are up to MiBs, so give each stream and connection room for several in flight.
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .http2_max_header_list_size(Some(MAX_METADATA_BYTES))
            .http2_max_pending_accept_reset_streams(brokers_here.then_some(PEER_PENDING_RESETS))
            .layer(GrpcTraceLayer)
            .layer(AuthLayer::new(Arc::clone(&self.auth), brokers_here))
            .add_service(self.health.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(self.records.clone())
            .add_service(self.offsets.clone())
            .add_service(self.groups.clone())
            .add_service(self.admin.clone())
            .add_service(self.security.clone())
            .add_service(self.txns.clone());
        Ok(router)
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Services")
    }
}
