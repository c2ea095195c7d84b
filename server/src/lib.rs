//! The Tidelog broker, as a library (the `tidelog` binary is a thin shell around it).
//!
//! Layers, with dependencies pointing downward only:
//!
//! ```text
//! api      tonic services: validate, route, map errors to gRPC status (api/error.rs)
//! broker   topics → partitions; appends, durability waits, live-tail wake-ups, retention
//! meta     sled: topic definitions and committed group offsets (swappable, one module)
//! log      segments, indexes, recovery, retention — no gRPC, no sled, no Raft types
//! ```
pub mod api;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod group;
pub mod log;
pub mod meta;
pub mod raft;
pub mod topic_config;
pub mod telemetry;
