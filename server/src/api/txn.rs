//! `TransactionService`: the transactional producer's calls, passed on to the transaction
//! coordinator (`txn::coordinator`, on the broker `Broker::coordinator_route` names), plus the
//! marker writes the coordinator asks partition leaders for and the views administrators use
//! to find hanging transactions.
//!
//! ACLs (Kafka's): WRITE on the transactional id for the producer's calls, WRITE on each topic
//! added, READ on the group whose offsets are added, DESCRIBE on the id to list or describe it,
//! ALTER on the cluster to abort another's transaction, CLUSTER_ACTION on the cluster to write
//! markers.

use std::sync::Arc;

use tidelog_proto::v1::transaction_service_client::TransactionServiceClient;
use tidelog_proto::v1::transaction_service_server::TransactionService;
use tidelog_proto::v1::{
    AbortTransactionRequest, AbortTransactionResponse, AddOffsetsToTransactionRequest, AddOffsetsToTransactionResponse,
    AddPartitionsToTransactionRequest, AddPartitionsToTransactionResponse, DescribeOpenTransactionsRequest,
    DescribeOpenTransactionsResponse, DescribeTransactionsRequest, DescribeTransactionsResponse, EndTransactionRequest,
    EndTransactionResponse, InitTransactionsRequest, InitTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, OpenTransaction, PartitionStability, TopicPartitions, TransactionDescription,
    TransactionState, WriteTransactionMarkersRequest, WriteTransactionMarkersResponse,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::authorize;
use crate::auth::{Operation, ResourceType, CLUSTER_NAME};
use crate::broker::route::{forwarded_request, upstream_status, Origin, Route, APPLY_WAIT};
use crate::broker::Broker;
use crate::clock::now_ms;
use crate::error::BrokerError;
use crate::group::Coordinator as GroupCoordinator;
use crate::meta::txn::{TxnEntry, TxnStatus};
use crate::meta::StoredOffset;
use crate::txn::markers::{self, Marker};
use crate::txn::TxnCoordinator;

/// Most transactional ids, topics or partitions one request may name.
const MAX_PER_REQUEST: usize = 10_000;

#[derive(Debug)]
pub struct TxnApi {
    txns: Arc<TxnCoordinator>,
    groups: Arc<GroupCoordinator>,
}

impl TxnApi {
    pub fn new(txns: Arc<TxnCoordinator>, groups: Arc<GroupCoordinator>) -> Self {
        Self { txns, groups }
    }

    fn broker(&self) -> &Broker {
        self.txns.broker()
    }

    /// Where the coordinator's calls go: `None` here, else the coordinator's client.
    async fn route<T>(&self, request: &Request<T>) -> Result<Option<TransactionServiceClient<Channel>>, Status> {
        match self.broker().coordinator_route(Origin::of(request)).await? {
            Route::Here => Ok(None),
            Route::To(channel, _) => Ok(Some(TransactionServiceClient::new(channel))),
        }
    }
}

fn epoch(e: i32) -> Result<i16, Status> {
    i16::try_from(e).map_err(|_| Status::invalid_argument(format!("producer_epoch {e} is out of range")))
}

fn pairs(tps: &[TopicPartitions]) -> Result<Vec<(String, Vec<u32>)>, Status> {
    if tps.len() > MAX_PER_REQUEST || tps.iter().map(|t| t.partitions.len()).sum::<usize>() > MAX_PER_REQUEST {
        return Err(Status::invalid_argument(format!("at most {MAX_PER_REQUEST} partitions per request")));
    }
    Ok(tps.iter().map(|t| (t.topic.clone(), t.partitions.clone())).collect())
}

fn state_to_proto(s: TxnStatus) -> TransactionState {
    match s {
        TxnStatus::Empty => TransactionState::Empty,
        TxnStatus::Ongoing => TransactionState::Ongoing,
        TxnStatus::PrepareCommit => TransactionState::PrepareCommit,
        TxnStatus::PrepareAbort => TransactionState::PrepareAbort,
        TxnStatus::CompleteCommit => TransactionState::CompleteCommit,
        TxnStatus::CompleteAbort => TransactionState::CompleteAbort,
    }
}

fn describe(id: String, e: TxnEntry) -> TransactionDescription {
    TransactionDescription {
        transactional_id: id,
        producer_id: e.producer_id,
        producer_epoch: i32::from(e.epoch),
        state: state_to_proto(e.status) as i32,
        transaction_timeout_ms: e.timeout_ms,
        started_at_ms: e.started_at_ms,
        partitions: e
            .partitions
            .into_iter()
            .map(|(topic, ps)| TopicPartitions { topic, partitions: ps.into_iter().collect() })
            .collect(),
        groups: e.offsets.into_keys().collect(),
        last_update_ms: e.last_update_ms,
    }
}

#[tonic::async_trait]
impl TransactionService for TxnApi {
    async fn init_transactions(
        &self,
        request: Request<InitTransactionsRequest>,
    ) -> Result<Response<InitTransactionsResponse>, Status> {
        let id = &request.get_ref().transactional_id;
        authorize(self.broker(), &request, Operation::Write, ResourceType::TransactionalId, id)?;
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.init_transactions(req).await.map_err(upstream_status);
        }
        let req = request.into_inner();
        let (producer_id, epoch) = self.txns.init(&req.transactional_id, req.transaction_timeout_ms).await?;
        Ok(Response::new(InitTransactionsResponse { producer_id, producer_epoch: i32::from(epoch) }))
    }

    async fn add_partitions_to_transaction(
        &self,
        request: Request<AddPartitionsToTransactionRequest>,
    ) -> Result<Response<AddPartitionsToTransactionResponse>, Status> {
        let r = request.get_ref();
        authorize(self.broker(), &request, Operation::Write, ResourceType::TransactionalId, &r.transactional_id)?;
        for t in &r.partitions {
            authorize(self.broker(), &request, Operation::Write, ResourceType::Topic, &t.topic)?;
        }
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.add_partitions_to_transaction(req).await.map_err(upstream_status);
        }
        let req = request.into_inner();
        let partitions = pairs(&req.partitions)?;
        self.txns
            .add_partitions(&req.transactional_id, req.producer_id, epoch(req.producer_epoch)?, &partitions)
            .await?;
        Ok(Response::new(AddPartitionsToTransactionResponse {}))
    }

    async fn add_offsets_to_transaction(
        &self,
        request: Request<AddOffsetsToTransactionRequest>,
    ) -> Result<Response<AddOffsetsToTransactionResponse>, Status> {
        let r = request.get_ref();
        authorize(self.broker(), &request, Operation::Write, ResourceType::TransactionalId, &r.transactional_id)?;
        authorize(self.broker(), &request, Operation::Read, ResourceType::Group, &r.group)?;
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.add_offsets_to_transaction(req).await.map_err(upstream_status);
        }
        let req = request.into_inner();
        super::offsets::validate_group(&req.group)?;
        if req.offsets.len() > MAX_PER_REQUEST {
            return Err(Status::invalid_argument(format!("at most {MAX_PER_REQUEST} topics per request")));
        }
        // KIP-447: a member that lost its partitions in a rebalance cannot commit them.
        self.groups.check_commit(&req.group, req.generation, &req.member_id)?;
        let now = now_ms();
        let offsets = req
            .offsets
            .into_iter()
            .map(|t| {
                let os = t
                    .offsets
                    .into_iter()
                    .map(|o| StoredOffset {
                        partition: o.partition,
                        offset: o.offset,
                        commit_time_ms: now,
                        metadata: o.metadata,
                    })
                    .collect();
                (t.topic, os)
            })
            .collect();
        self.txns
            .add_offsets(&req.transactional_id, req.producer_id, epoch(req.producer_epoch)?, &req.group, offsets)
            .await?;
        Ok(Response::new(AddOffsetsToTransactionResponse {}))
    }

    async fn end_transaction(
        &self,
        request: Request<EndTransactionRequest>,
    ) -> Result<Response<EndTransactionResponse>, Status> {
        let id = &request.get_ref().transactional_id;
        authorize(self.broker(), &request, Operation::Write, ResourceType::TransactionalId, id)?;
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.end_transaction(req).await.map_err(upstream_status);
        }
        let req = request.into_inner();
        let pending =
            self.txns.end(&req.transactional_id, req.producer_id, epoch(req.producer_epoch)?, req.commit).await?;
        Ok(Response::new(EndTransactionResponse { markers_pending: pending }))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsResponse>, Status> {
        // Filtered here, where the caller is known (a coordinator elsewhere sees this broker).
        let who = crate::auth::layer::caller(&request);
        let all: Vec<TransactionDescription> = match self.route(&request).await? {
            Some(mut c) => {
                let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
                c.list_transactions(req).await.map_err(upstream_status)?.into_inner().transactions
            }
            None => self.broker().transactions().all().into_iter().map(|(id, e)| describe(id, e)).collect(),
        };
        let auth = self.broker().auth();
        let transactions = all
            .into_iter()
            .filter(|t| {
                auth.authorize(&who, Operation::Describe, ResourceType::TransactionalId, &t.transactional_id).is_ok()
            })
            .collect();
        Ok(Response::new(ListTransactionsResponse { transactions }))
    }

    async fn describe_transactions(
        &self,
        request: Request<DescribeTransactionsRequest>,
    ) -> Result<Response<DescribeTransactionsResponse>, Status> {
        for id in &request.get_ref().transactional_ids {
            authorize(self.broker(), &request, Operation::Describe, ResourceType::TransactionalId, id)?;
        }
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.describe_transactions(req).await.map_err(upstream_status);
        }
        let mut transactions = Vec::new();
        for id in request.into_inner().transactional_ids {
            let e = self
                .broker()
                .transactions()
                .get(&id)
                .ok_or_else(|| Status::from(BrokerError::UnknownTransactionalId(id.clone())))?;
            transactions.push(describe(id, e));
        }
        Ok(Response::new(DescribeTransactionsResponse { transactions }))
    }

    async fn abort_transaction(
        &self,
        request: Request<AbortTransactionRequest>,
    ) -> Result<Response<AbortTransactionResponse>, Status> {
        authorize(self.broker(), &request, Operation::Alter, ResourceType::Cluster, CLUSTER_NAME)?;
        if let Some(mut c) = self.route(&request).await? {
            let req = forwarded_request(request.into_inner(), Some(APPLY_WAIT));
            return c.abort_transaction(req).await.map_err(upstream_status);
        }
        let epoch = self.txns.abort(&request.into_inner().transactional_id).await?;
        Ok(Response::new(AbortTransactionResponse { producer_epoch: i32::from(epoch) }))
    }

    async fn describe_open_transactions(
        &self,
        request: Request<DescribeOpenTransactionsRequest>,
    ) -> Result<Response<DescribeOpenTransactionsResponse>, Status> {
        let topic = &request.get_ref().topic;
        authorize(self.broker(), &request, Operation::Describe, ResourceType::Topic, topic)?;
        let req = request.into_inner();
        let t = self.broker().topic(&req.topic)?;
        let mut resp = DescribeOpenTransactionsResponse::default();
        let held: Vec<u32> = if req.partitions.is_empty() {
            t.local().map(|(p, _)| p.index()).collect()
        } else {
            req.partitions.clone()
        };
        for p in held {
            let log = t.partition(p)?;
            for (producer_id, epoch, first_offset) in log.open_transactions() {
                resp.transactions.push(OpenTransaction {
                    partition: p,
                    producer_id,
                    producer_epoch: i32::from(epoch),
                    first_offset,
                });
            }
            resp.partitions.push(PartitionStability {
                partition: p,
                last_stable_offset: log.last_stable_offset(),
                high_watermark: log.offsets().high_watermark.0,
            });
        }
        Ok(Response::new(resp))
    }

    async fn write_transaction_markers(
        &self,
        request: Request<WriteTransactionMarkersRequest>,
    ) -> Result<Response<WriteTransactionMarkersResponse>, Status> {
        authorize(self.broker(), &request, Operation::ClusterAction, ResourceType::Cluster, CLUSTER_NAME)?;
        let req = request.into_inner();
        if req.producer_id <= 0 {
            return Err(Status::invalid_argument("producer_id must be positive"));
        }
        let marker = Marker { producer_id: req.producer_id, epoch: epoch(req.producer_epoch)?, commit: req.commit };
        for (topic, ps) in pairs(&req.partitions)? {
            for p in ps {
                markers::write_here(self.broker(), &topic, p, marker).await?;
            }
        }
        Ok(Response::new(WriteTransactionMarkersResponse {}))
    }
}
