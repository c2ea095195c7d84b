//! Consumer-group coordination: membership, generations, and fencing of stale commits. The
//! assignment itself is computed by the group's leader member (client side), as in Kafka.
//!
//! State machine per group (revoke before assign):
//!
//! ```text
//!   Empty ──join──► Rebalancing ──all members (re)joined──► AwaitingSync ──leader's sync──► Stable
//!                      ▲   (members not rejoined by the rebalance deadline are removed)  │
//!                      └──────── join / leave / stream end / missed heartbeats ◄─────────┘
//! ```
//!
//! Invariants:
//! - a new generation's assignment is sent only after every member of the previous generation
//!   has rejoined (having revoked its partitions) or been removed, so no partition has two
//!   owners within one generation among members that follow the protocol;
//! - commits carry (generation, member id) and are accepted only from a current member of the
//!   current generation; a group without members accepts commits only without a generation;
//! - group state lives in memory: after a broker restart every member's stream has broken and
//!   the members rejoin (committed offsets are durable in the metadata store);
//! - in a cluster, a group's generations start above 65,536 × the metadata term of the
//!   controller that first sees it, so generations grow across controller failovers.

pub mod coordinator;

pub use coordinator::Coordinator;
