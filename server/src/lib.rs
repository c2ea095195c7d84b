//! The Tidelog broker, as a library. The `tidelog` binary (crate `tidelog-cli`) parses flags
//! into a [`config::Config`] and hands it to [`node`]; everything else lives here.
//!
//! Modules, each above the ones it uses (`scripts/check-module-deps.py` fails the test suite
//! on any import cycle between them and on the rules in the last column):
//!
//! ```text
//! node          composition root: opens the broker, starts its control plane (local or
//!               cluster), the background tasks and the gRPC server
//! api           tonic services: validate, call the broker, map errors    never: cluster, raft
//! cluster       the Raft implementation of the broker's seam: metadata group, partition
//!               groups, placement, forwarding to the controller, quiescing
//! group         consumer-group coordinator: membership, generations, fencing   never: cluster
//! txn           transaction coordinator: transactional ids, epochs, markers, timeouts
//!                                                                       never: cluster, raft
//! broker        topic table and THE SEAM (`broker::seam`): `ControlPlane` and
//!               `PartitionWriter`, with the single-node implementation (`broker::local`);
//!               retention and fsync tasks                               never: cluster, raft, api
//! raft          openraft over a partition log: log store, state machine, transport
//!                                                                never: broker, cluster, api
//! partition     one partition: log + producer state + batch validation   never: broker, raft
//! meta          sled: topics (single node), committed offsets, producer ids, Raft votes
//! error         BrokerError and the one error-code table (ErrorCode, gRPC status)
//! config        the process's config (→ broker options); topic_config: per-topic settings
//! log           segments, indexes, recovery, retention       never: tonic, openraft, sled
//! auth          principals (tokens, mTLS), ACLs, quotas; the auth layer
//!                                          never: broker, cluster, raft, api, group, config
//! grpc          gRPC messages framed and decoded without tonic's copies (Subscribe, Produce,
//!               replication)                                           never: any module here
//! layout, clock, telemetry   leaves: on-disk names, wall clock, tracing/OTLP setup
//! ```
//!
//! docs/ARCHITECTURE.md draws the same graph and traces the produce and subscribe paths
//! through the files.

pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod group;
pub mod grpc;
pub mod layout;
pub mod log;
pub mod meta;
pub mod node;
pub mod partition;
pub mod raft;
pub mod telemetry;
pub mod tls;
pub mod topic_config;
pub mod txn;
