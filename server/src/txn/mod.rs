//! Transactions (exactly once): the transaction coordinator and the markers it writes.
//!
//! Kafka's design (KIP-98, KIP-447), on the broker's seam so a single node and a cluster run
//! the same code (docs/TRANSACTIONS.md):
//!
//! ```text
//! producer ──InitTransactions / AddPartitions / AddOffsets / EndTransaction──▶ coordinator
//!             (the broker `Broker::coordinator_route` names: the controller)
//! coordinator ── state change ──▶ ControlPlane::store_transaction (sled / metadata group)
//!             ── markers ──────▶ each partition's leader (PartitionWriter, or
//!                                WriteTransactionMarkers on the broker that leads it)
//!             ── offsets ──────▶ Broker::commit_offsets (after the commit markers)
//! ```
//!
//! - `coordinator`: the state machine of a transactional id, timeouts, recovery of prepared
//!   transactions after a failover or restart;
//! - `markers`: writing commit/abort markers to the partitions of a transaction.
//!
//! Never: imported by `broker`, `partition`, `cluster` or `raft` (they know transactions only as
//! stored records, `meta::txn`, and header flags).

pub mod coordinator;
pub mod markers;

pub use coordinator::TxnCoordinator;
