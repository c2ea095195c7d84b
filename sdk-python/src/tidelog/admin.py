"""Topic and group administration (synchronous; every call is one unary RPC).

::

    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9690"})
    admin.create_topic("orders", num_partitions=6, config={"retention.ms": 86_400_000})
    admin.describe_group("billing").lag   # {TopicPartition: records behind}

    # confluent-kafka's shapes: a dict of concurrent.futures.Future, the calls run at once
    for topic, f in admin.create_topics([NewTopic("a", 3), NewTopic("b", 1)]).items():
        f.result()   # None, or raises (TopicExistsError: a KafkaException, TOPIC_ALREADY_EXISTS)

Two families of calls: Tidelog's own, which return what they did (``create_topic``,
``describe_topic``, ``delete_group``, ``reset_offsets``, ...), and confluent-kafka's
(``create_topics``, ``delete_topics``, ``create_partitions``, ``delete_records``,
``alter_configs``, ``incremental_alter_configs``, ``describe_configs``,
``delete_consumer_groups``, which return futures, and ``list_topics`` / ``list_groups``),
whose types are in :mod:`tidelog.admin_types`. The futures' calls run on a small thread pool of
the client, several at once; ``close()`` waits for them.

ACLs, as confluent-kafka's ``create_acls`` / ``describe_acls`` / ``delete_acls`` with its
``AclBinding`` / ``AclBindingFilter``, and Tidelog's extensions ``alter_client_quotas`` /
``describe_client_quotas`` (futures) and ``whoami``, go to the broker's SecurityService::

    acl = AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:alice", "*",
                     AclOperation.WRITE, AclPermissionType.ALLOW)
    admin.create_acls([acl])[acl].result()
    admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                                         "User:alice", None, AclOperation.ANY,
                                         AclPermissionType.ANY)).result()   # [AclBinding]

Transactions, as Kafka's ``Admin`` has them (futures): ``list_transactions`` (every
transactional id the coordinator knows, with its state), ``describe_transactions`` (partitions,
pending offsets' groups, start time, timeout) and ``abort_transaction`` (aborts a hanging
transaction now, as its timeout would; its producer is fenced)::

    for t in admin.list_transactions(states=[TransactionState.ONGOING]).result():
        d = admin.describe_transactions([t.transactional_id])[t.transactional_id].result()

Failover: the client knows the ``bootstrap.servers`` brokers and, once learnt from the first
one that answers DescribeCluster, the rest of the cluster. A call goes to one of them; when it
is unreachable, stalled or otherwise failing retriably the call moves on to the next one and
retries with backoff until ``default.api.timeout.ms``, each attempt waiting up to
``request.timeout.ms`` (the policy the consumer shares, :mod:`tidelog._failover`). A broker's
real answer (the topic exists, an unknown topic, an invalid argument) is raised at once.

Retries are logged (the client's ``logger``; see :mod:`tidelog._failover`), and a broker that
fails goes to ``error_cb`` once per outage; ``stats_cb`` runs on a thread of the client every
``statistics.interval.ms``.

Errors are raised as :mod:`tidelog.errors` types (``TopicExistsError``, ``UnknownTopicError``,
``FatalError`` for invalid arguments, ``RetriableError`` when no broker answered in time). A
create or delete whose answer was lost is retried, and then reports that the topic exists (or
is unknown) if the first attempt went through, as in Kafka.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

import grpc

from ._brokers import Stubs
from ._channel import Transport, sync_channel
from ._config import ADMIN_KEYS, TRANSPORT, parse, target, targets
from ._events import Reporter, StatsEnvelope, broker_stats, client_logger, safe_call
from ._failover import Ring, call_sync
from .admin_types import (
    CLUSTER_RESOURCE_NAME,
    RESOURCE_TOPIC,
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AlterConfigOpType,
    BrokerMetadata,
    ClientQuotas,
    ClusterDescription,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    DeletedRecords,
    GroupDescription,
    GroupListing,
    GroupMember,
    NewPartitions,
    NewTopic,
    PartitionInfo,
    PartitionMetadata,
    PartitionReset,
    ResourcePatternType,
    ResourceType,
    TopicDescription,
    TopicMetadata,
    TransactionDescription,
    TransactionListing,
    TransactionState,
)
from .errors import (
    ConfigError,
    ErrorCode,
    FatalError,
    GroupNotEmptyError,
    KafkaError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
    from_rpc_error,
)
from .types import OFFSET_END, TopicPartition
from .v1 import (
    admin_service_pb2,
    group_service_pb2,
    offsets_service_pb2,
    security_service_pb2,
    transaction_service_pb2,
)

__all__ = [
    "CLUSTER_RESOURCE_NAME",
    "RESOURCE_TOPIC",
    "AclBinding",
    "AclBindingFilter",
    "AclOperation",
    "AclPermissionType",
    "AdminClient",
    "AlterConfigOpType",
    "BrokerMetadata",
    "ClientQuotas",
    "ClusterDescription",
    "ClusterMetadata",
    "ConfigEntry",
    "ConfigResource",
    "ConfigSource",
    "DeletedRecords",
    "GroupDescription",
    "GroupListing",
    "GroupMember",
    "NewPartitions",
    "NewTopic",
    "PartitionInfo",
    "PartitionMetadata",
    "PartitionReset",
    "ResourcePatternType",
    "ResourceType",
    "TopicDescription",
    "TopicMetadata",
    "TransactionDescription",
    "TransactionListing",
    "TransactionState",
    "internal_admin",
    "topic_config_proto",
]

T = TypeVar("T")
_POOL_WORKERS = 8

_FSYNC = {"always": 1, "interval": 2, "never": 3}
#: cleanup.policy values (Kafka's: a comma-separated list of delete / compact) → the proto's
#: CleanupPolicy, by the set of policies named.
_CLEANUP = {
    frozenset({"delete"}): admin_service_pb2.CLEANUP_POLICY_DELETE,
    frozenset({"compact"}): admin_service_pb2.CLEANUP_POLICY_COMPACT,
    frozenset({"compact", "delete"}): admin_service_pb2.CLEANUP_POLICY_COMPACT_DELETE,
}
_CLEANUP_NAME = {
    admin_service_pb2.CLEANUP_POLICY_DELETE: "delete",
    admin_service_pb2.CLEANUP_POLICY_COMPACT: "compact",
    admin_service_pb2.CLEANUP_POLICY_COMPACT_DELETE: "compact,delete",
}
_INT_TOPIC_KEYS = {
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "fsync.interval.ms": "fsync_interval_ms",
    "max.batch.bytes": "max_batch_bytes",
    "delete.retention.ms": "delete_retention_ms",
    "min.compaction.lag.ms": "min_compaction_lag_ms",
}
_FLOAT_TOPIC_KEYS = {"min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio"}
#: Kafka's names for Tidelog's topic settings.
_KEY_ALIASES = {"max.message.bytes": "max.batch.bytes"}

# The proto's TopicConfig field name of each config key, and back.
_FIELD_OF_KEY = {
    **_INT_TOPIC_KEYS,
    **_FLOAT_TOPIC_KEYS,
    "fsync": "fsync_policy",
    "cleanup.policy": "cleanup_policy",
}
_KEY_OF_FIELD = {v: k for k, v in _FIELD_OF_KEY.items()}


def _cleanup_policy(v: Any) -> int:
    """A cleanup.policy value: ``"delete"``, ``"compact"``, ``"compact,delete"`` (either order,
    spaces allowed) or a list of those words, as Kafka takes it."""
    words = v.split(",") if isinstance(v, str) else list(v) if isinstance(v, list | tuple | set) else [v]
    policy = _CLEANUP.get(frozenset(str(w).strip().lower() for w in words))
    if policy is None:
        raise ConfigError(f"topic config cleanup.policy={v!r}: expected delete, compact or compact,delete")
    return policy


def topic_config_proto(config: Mapping[str, Any] | None) -> admin_service_pb2.TopicConfig:
    """Kafka-style topic config keys → the proto's TopicConfig (unknown keys are an error):
    retention.ms, retention.bytes, segment.bytes, segment.ms, max.message.bytes (Kafka's name
    for max.batch.bytes), cleanup.policy (delete | compact | compact,delete),
    delete.retention.ms, min.cleanable.dirty.ratio, min.compaction.lag.ms, and Tidelog's fsync
    (always | interval | never), fsync.interval.ms, max.batch.bytes. Values may be strings, as
    confluent-kafka passes them."""
    tc = admin_service_pb2.TopicConfig()
    for key, v in (config or {}).items():
        k = _KEY_ALIASES.get(key, key)
        if k in _INT_TOPIC_KEYS:
            try:
                setattr(tc, _INT_TOPIC_KEYS[k], int(v))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"topic config {k}={v!r}: {e}") from None
        elif k in _FLOAT_TOPIC_KEYS:
            try:
                setattr(tc, _FLOAT_TOPIC_KEYS[k], float(v))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"topic config {k}={v!r}: {e}") from None
        elif k == "fsync":
            if str(v) not in _FSYNC:
                raise ConfigError(f"topic config fsync={v!r}: expected always, interval or never")
            tc.fsync_policy = _FSYNC[str(v)]  # type: ignore[assignment]
        elif k == "cleanup.policy":
            tc.cleanup_policy = _cleanup_policy(v)  # type: ignore[assignment]
        else:
            known = ", ".join(sorted([*_FIELD_OF_KEY, *_KEY_ALIASES]))
            raise ConfigError(f"unknown topic config key {k!r}; known keys: {known}")
    return tc


def _describe(t: admin_service_pb2.TopicDescription) -> TopicDescription:
    config: dict[str, Any] = {
        k: getattr(t.config, f) for k, f in _INT_TOPIC_KEYS.items() if t.config.HasField(f)
    }
    config.update({k: getattr(t.config, f) for k, f in _FLOAT_TOPIC_KEYS.items() if t.config.HasField(f)})
    fsync = {v: k for k, v in _FSYNC.items()}.get(t.config.fsync_policy)
    if fsync:
        config["fsync"] = fsync
    cleanup = _CLEANUP_NAME.get(t.config.cleanup_policy)
    if cleanup:
        config["cleanup.policy"] = cleanup
    parts = [
        PartitionInfo(
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            p.log_end_offset,
            p.size_bytes,
            p.leader_id,
            list(p.replica_ids),
            p.dirty_ratio,
            p.last_cleaned_ms,
            p.cleaned_offset,
        )
        for p in t.partitions
    ]
    own = {_KEY_OF_FIELD.get(f, f) for f in t.config_overrides}
    sources = {k: ("topic" if k in own else "default") for k in config}
    return TopicDescription(
        t.name, t.partition_count, t.replication_factor, config, parts, t.created_at_ms, sources
    )


class AdminClient:
    """Creates, deletes and describes topics; describes groups and their lag. Thread-safe."""

    def __init__(self, config: Mapping[str, Any], *, _transport: Transport | None = None) -> None:
        cfg = parse(config, ADMIN_KEYS, "admin", _transport)
        #: Every channel's transport (plaintext or TLS); a producer's or consumer's internal
        #: admin client shares its owner's (:func:`internal_admin`): files are read once.
        self._transport: Transport = cfg[TRANSPORT]
        self._timeout = cfg["request.timeout.ms"] / 1000
        self._api_timeout = cfg["default.api.timeout.ms"] / 1000
        self._log = client_logger(cfg, "admin")
        error_cb = cfg["error_cb"]
        sink = (lambda e: safe_call(self._log, "error_cb", error_cb, e)) if error_cb else None
        self._reporter = Reporter(self._log, sink, targets(cfg["bootstrap.servers"]))
        self._ring = Ring(targets(cfg["bootstrap.servers"]), reporter=self._reporter)
        self._lock = threading.Lock()  # the client may be shared by threads
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Stubs] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._calls = 0
        self._closed = threading.Event()
        if cfg["stats_cb"] is not None and cfg["statistics.interval.ms"] > 0:
            envelope = StatsEnvelope("admin", cfg["client.id"])
            threading.Thread(
                target=self._report_stats,
                args=(cfg["stats_cb"], cfg["statistics.interval.ms"] / 1000, envelope),
                name="tidelog-admin-stats",
                daemon=True,
            ).start()

    def _report_stats(self, cb: Callable[[str], None], interval: float, envelope: StatsEnvelope) -> None:
        while not self._closed.wait(interval):
            stats = {"tx": self._calls, "brokers": broker_stats(self._reporter, self._ring.ids)}
            safe_call(self._log, "stats_cb", cb, envelope.json(stats))

    def _stubs_of(self, addr: str) -> Stubs:
        """The stubs of ``addr``; its channel opens on first use and stays until close."""
        with self._lock:
            s = self._stubs.get(addr)
            if s is None:
                ch = self._channels[addr] = sync_channel(addr, self._transport)
                s = self._stubs[addr] = Stubs.of(ch)
            return s

    def _learn(self) -> None:
        """Learns the cluster's brokers from the current one, once. Best effort: a failure
        leaves the known brokers as they are and the next call tries again; a broker older
        than clusters (no DescribeCluster) is a single node."""
        if self._ring.learnt:
            return
        addr = self._ring.current
        try:
            resp = self._stubs_of(addr).admin.DescribeCluster(
                admin_service_pb2.DescribeClusterRequest(), timeout=self._timeout
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                err = from_rpc_error(e)
                if err.retriable:
                    self._reporter.failed(addr, err, "learning the cluster")
                self._log.debug("cannot learn the cluster from %s: %s", addr, err)
                return
            resp = admin_service_pb2.DescribeClusterResponse()
        self._reporter.answered(addr)
        with self._lock:
            if not self._ring.learnt:
                self._ring.adopt(resp)

    def _call(self, method: Callable[[Stubs], Any], request: Any, timeout: float | None = None) -> Any:
        """A unary call, failing over and retrying as the module docs say, for ``timeout``
        seconds (default ``default.api.timeout.ms``)."""
        return self._call_at(method, request, timeout)[1]

    def _call_at(
        self, method: Callable[[Stubs], Any], request: Any, timeout: float | None = None
    ) -> tuple[str, Any]:
        """:meth:`_call`, also returning the broker that answered."""
        self._learn()
        self._calls += 1
        return call_sync(
            self._ring,
            lambda addr, t: (addr, method(self._stubs_of(addr))(request, timeout=t)),
            self._api_timeout if timeout is None else timeout,
            self._timeout,
        )

    def create_topic(
        self,
        name: str,
        num_partitions: int = 1,
        replication_factor: int = 0,
        config: Mapping[str, Any] | None = None,
    ) -> TopicDescription:
        """Creates a topic; ``config`` takes retention.ms, retention.bytes, segment.bytes,
        segment.ms, fsync (always|interval|never), fsync.interval.ms, max.batch.bytes, and for
        log compaction cleanup.policy (delete|compact|compact,delete), delete.retention.ms,
        min.cleanable.dirty.ratio, min.compaction.lag.ms (a compacted topic needs a key on
        every record: a keyless one fails with :class:`~tidelog.errors.InvalidRecordError`).

        ``replication_factor`` 0 is the broker's default: 1 on a single node, the cluster's
        default in a cluster (docs/CLUSTER.md says which values a cluster accepts)."""
        req = admin_service_pb2.CreateTopicRequest(
            name=name,
            partitions=num_partitions,
            replication_factor=replication_factor,
            config=topic_config_proto(config),
        )
        return _describe(self._call(lambda s: s.admin.CreateTopic, req).topic)

    def alter_topic_config(
        self, name: str, config: Mapping[str, Any] | None = None, reset: list[str] | None = None
    ) -> TopicDescription:
        """Changes a topic's settings (the keys :meth:`create_topic` takes): those in ``config``
        become the topic's own, those named in ``reset`` go back to the broker's defaults.
        ``TopicDescription.config_sources`` says which is which."""
        unknown = [k for k in reset or [] if k not in _FIELD_OF_KEY]
        if unknown:
            raise ConfigError(f"cannot reset {unknown}: known keys are {sorted(_FIELD_OF_KEY)}")
        req = admin_service_pb2.AlterTopicConfigRequest(
            name=name, config=topic_config_proto(config), reset=[_FIELD_OF_KEY[k] for k in reset or []]
        )
        return _describe(self._call(lambda s: s.admin.AlterTopicConfig, req).topic)

    def delete_topic(self, name: str) -> None:
        self._call(lambda s: s.admin.DeleteTopic, admin_service_pb2.DeleteTopicRequest(name=name))

    def list_topic_descriptions(self) -> list[TopicDescription]:
        """Every topic, described (:meth:`list_topics` is confluent-kafka's metadata view)."""
        resp = self._call(lambda s: s.admin.ListTopics, admin_service_pb2.ListTopicsRequest())
        return [_describe(t) for t in resp.topics]

    def describe_topic(self, name: str) -> TopicDescription:
        req = admin_service_pb2.DescribeTopicRequest(name=name)
        return _describe(self._call(lambda s: s.admin.DescribeTopic, req).topic)

    def describe_cluster(self) -> ClusterDescription:
        """The cluster's brokers and its controller, as the broker that answered sees them."""
        r = self._call(lambda s: s.admin.DescribeCluster, admin_service_pb2.DescribeClusterRequest())
        brokers = {b.id: target(b.address) for b in r.brokers}
        return ClusterDescription(r.cluster_id, r.controller_id, brokers)

    def list_offsets(self, topic: str, at: str | int = "latest") -> dict[int, int]:
        """Per partition: the earliest retained offset (``"earliest"``), the log end
        (``"latest"``), or the first offset at or after a timestamp in ms (an int)."""
        spec = admin_service_pb2.OffsetSpec()
        if at == "earliest":
            spec.earliest = True
        elif at == "latest":
            spec.latest = True
        elif isinstance(at, int):
            spec.timestamp_ms = at
        else:
            raise ConfigError(f"list_offsets at={at!r}: expected 'earliest', 'latest' or a timestamp in ms")
        resp = self._call(
            lambda s: s.admin.ListOffsets, admin_service_pb2.ListOffsetsRequest(topic=topic, spec=spec)
        )
        return {o.partition: o.offset for o in resp.offsets}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offsets for ``topic`` (partitions without a commit are absent)."""
        req = offsets_service_pb2.FetchCommittedRequest(group=group, topic=topic)
        return {o.partition: o.offset for o in self._call(lambda s: s.offsets.FetchCommitted, req).offsets}

    def list_groups(self, group: str | None = None, timeout: float = -1) -> list[GroupListing]:
        """Every consumer group (or only ``group``): those with members and those with
        committed offsets."""
        r = self._call(
            lambda s: s.groups.ListGroups, group_service_pb2.ListGroupsRequest(), _seconds(timeout)
        )
        return [
            GroupListing(g.group, g.state, g.members, g.protocol)
            for g in r.groups
            if group is None or g.group == group
        ]

    def delete_group(self, group: str) -> int:
        """Deletes a group's committed offsets; returns how many. Raises
        :class:`UnknownGroupError` if it does not exist and :class:`GroupNotEmptyError` while it
        has members (stop its consumers first)."""
        req = group_service_pb2.DeleteGroupRequest(group=group)
        r = self._group_call(lambda s: s.groups.DeleteGroup, req, group)
        return int(r.offsets_deleted)

    def reset_offsets(
        self,
        group: str,
        topic: str,
        *,
        to: str | None = None,
        offset: int | None = None,
        timestamp_ms: int | None = None,
        shift_by: int | None = None,
        partitions: list[int] | None = None,
        dry_run: bool = False,
    ) -> list[PartitionReset]:
        """Moves an inactive group's committed offsets for ``topic`` (every partition unless
        ``partitions``), as ``kafka-consumer-groups --reset-offsets`` does. Give exactly one of
        ``to="earliest"`` / ``to="latest"``, ``offset``, ``timestamp_ms`` (the first record
        appended at or after it) or ``shift_by`` (from the committed offset). Targets are clamped
        into the partition's log. With ``dry_run`` nothing changes; either way each partition's
        offset before and after is returned. Raises :class:`GroupNotEmptyError` while the group
        has members."""
        req = group_service_pb2.ResetOffsetsRequest(
            group=group, topic=topic, partitions=partitions or [], dry_run=dry_run
        )
        given = [v is not None for v in (to, offset, timestamp_ms, shift_by)]
        if sum(given) != 1:
            raise ConfigError("reset_offsets: give exactly one of to=, offset=, timestamp_ms=, shift_by=")
        if to == "earliest":
            req.earliest = True
        elif to == "latest":
            req.latest = True
        elif to is not None:
            raise ConfigError(f"reset_offsets to={to!r}: expected 'earliest' or 'latest'")
        elif offset is not None:
            req.offset = offset
        elif timestamp_ms is not None:
            req.timestamp_ms = timestamp_ms
        elif shift_by is not None:
            req.shift_by = shift_by
        r = self._group_call(lambda s: s.groups.ResetOffsets, req, group)
        return [
            PartitionReset(p.partition, p.before if p.HasField("before") else None, p.after)
            for p in r.partitions
        ]

    def _group_call(
        self, method: Callable[[Stubs], Any], request: Any, group: str, timeout: float | None = None
    ) -> Any:
        """A group administration call. The broker answers an unknown group with NOT_FOUND and
        a group with members with FAILED_PRECONDITION, each with a message that starts by
        naming the group; those become :class:`UnknownGroupError` / :class:`GroupNotEmptyError`
        (an unknown topic stays :class:`UnknownTopicError`)."""
        named = f"group '{group}' "
        try:
            return self._call(method, request, timeout)
        except UnknownTopicError as e:
            if e.message.startswith(named):
                raise UnknownGroupError(e.message, ErrorCode.UNKNOWN_GROUP) from e
            raise
        except FatalError as e:
            if e.code == grpc.StatusCode.FAILED_PRECONDITION and e.message.startswith(named):
                raise GroupNotEmptyError(e.message, ErrorCode.NON_EMPTY_GROUP) from e
            raise

    def describe_group(self, group: str) -> GroupDescription:
        """Members, their assignments, committed offsets and lag. Raises
        :class:`UnknownGroupError` for a group that does not exist."""
        r = self._group_call(
            lambda s: s.groups.DescribeGroup, group_service_pb2.DescribeGroupRequest(group=group), group
        )
        members = [GroupMember(m.member_id, m.client_id, list(m.topics)) for m in r.members]
        committed = {TopicPartition(p.topic, p.partition): p.committed_offset for p in r.partitions}
        lag = {TopicPartition(p.topic, p.partition): p.lag for p in r.partitions}
        owners = {TopicPartition(p.topic, p.partition): p.member_id for p in r.partitions}
        return GroupDescription(r.group, r.state, r.generation, r.leader_id, members, committed, lag, owners)

    # ---- confluent-kafka's calls (futures; types in tidelog.admin_types) ----------------------

    def _submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Runs ``fn`` on the client's pool (several calls at once); its future."""
        with self._lock:
            if self._closed.is_set():
                raise FatalError("the admin client is closed")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(_POOL_WORKERS, "tidelog-admin")
            return self._pool.submit(fn)

    def create_topics(
        self,
        new_topics: list[NewTopic],
        operation_timeout: float | None = None,
        request_timeout: float | None = None,
        validate_only: bool = False,
    ) -> dict[str, concurrent.futures.Future[None]]:
        """Creates topics, all at once: topic name → future whose ``result()`` is None or
        raises (:class:`~tidelog.errors.TopicExistsError`, a ConfigError for a bad config key,
        ...). ``validate_only`` checks the request and that the topic does not exist yet,
        creating nothing. ``request_timeout`` (seconds) bounds each call, retries included;
        ``operation_timeout`` is accepted for confluent-kafka's signature (a creation is
        complete when answered)."""
        _check_list(new_topics, NewTopic, "new_topics")
        _check_unique([t.topic for t in new_topics], "topic")
        for t in new_topics:
            if t.replica_assignment is not None:
                raise ValueError(
                    f"{t.topic}: replica_assignment is not supported (placement is the broker's)"
                )
        timeout = _seconds(request_timeout)
        return {
            t.topic: self._submit(partial(self._create_one, t, timeout, validate_only)) for t in new_topics
        }

    def _create_one(self, t: NewTopic, timeout: float | None, validate_only: bool) -> None:
        config = topic_config_proto(t.config)
        if t.num_partitions == 0 or t.num_partitions < -1:
            raise ConfigError(f"{t.topic}: num_partitions must be at least 1 (or -1: the broker's default)")
        if validate_only:
            try:
                self._call(
                    lambda s: s.admin.DescribeTopic,
                    admin_service_pb2.DescribeTopicRequest(name=t.topic),
                    timeout,
                )
            except UnknownTopicError:
                return None
            raise TopicExistsError(f"topic '{t.topic}' already exists", grpc.StatusCode.ALREADY_EXISTS)
        req = admin_service_pb2.CreateTopicRequest(
            name=t.topic,
            partitions=max(t.num_partitions, 0),
            replication_factor=max(t.replication_factor, 0),
            config=config,
        )
        self._call(lambda s: s.admin.CreateTopic, req, timeout)
        return None

    def delete_topics(
        self, topics: list[str], operation_timeout: float | None = None, request_timeout: float | None = None
    ) -> dict[str, concurrent.futures.Future[None]]:
        """Deletes topics, all at once: topic name → future (None, or raises
        :class:`~tidelog.errors.UnknownTopicError`)."""
        _check_list(topics, str, "topics")
        timeout = _seconds(request_timeout)

        def delete(name: str) -> None:
            req = admin_service_pb2.DeleteTopicRequest(name=name)
            self._call(lambda s: s.admin.DeleteTopic, req, timeout)

        return {name: self._submit(partial(delete, name)) for name in dict.fromkeys(topics)}

    def create_partitions(
        self,
        new_partitions: list[NewPartitions],
        operation_timeout: float | None = None,
        request_timeout: float | None = None,
        validate_only: bool = False,
    ) -> dict[str, concurrent.futures.Future[None]]:
        """Raises topics' partition counts: topic name → future (None, or raises: an unknown
        topic, a count not above the current one). The new partitions start empty; keyed
        producers route by the new count once they read it again (``metadata.max.age.ms``)."""
        _check_list(new_partitions, NewPartitions, "new_partitions")
        _check_unique([n.topic for n in new_partitions], "topic")
        timeout = _seconds(request_timeout)

        def grow(n: NewPartitions) -> None:
            if n.replica_assignment is not None:
                raise ConfigError(
                    f"{n.topic}: replica_assignment is not supported (placement is the broker's)"
                )
            if validate_only:
                current = self._call(
                    lambda s: s.admin.DescribeTopic,
                    admin_service_pb2.DescribeTopicRequest(name=n.topic),
                    timeout,
                ).topic.partition_count
                if n.new_total_count <= current:
                    raise FatalError(
                        f"topic '{n.topic}' has {current} partitions; the new count must be higher",
                        grpc.StatusCode.INVALID_ARGUMENT,
                    )
                return
            req = admin_service_pb2.CreatePartitionsRequest(topic=n.topic, total_count=n.new_total_count)
            self._call(lambda s: s.admin.CreatePartitions, req, timeout)

        return {n.topic: self._submit(partial(grow, n)) for n in new_partitions}

    def delete_records(
        self,
        topic_partition_offsets: list[TopicPartition],
        request_timeout: float | None = None,
        operation_timeout: float | None = None,
    ) -> dict[TopicPartition, concurrent.futures.Future[DeletedRecords]]:
        """Deletes the records below each ``TopicPartition(topic, partition, offset)``'s offset
        (``OFFSET_END``, -1: below the high watermark, i.e. everything consumers can read):
        the given TopicPartition → future of :class:`~tidelog.admin_types.DeletedRecords`
        (the partition's new first offset). Consumers positioned below it get
        ``auto.offset.reset``. One request per topic, the topics at once."""
        _check_list(topic_partition_offsets, TopicPartition, "topic_partition_offsets")
        _check_unique([(tp.topic, tp.partition) for tp in topic_partition_offsets], "partition")
        for tp in topic_partition_offsets:
            if tp.offset is None or tp.offset < OFFSET_END:
                raise ValueError(f"{tp.topic}/{tp.partition}: an offset (or OFFSET_END) is needed")
        timeout = _seconds(request_timeout)
        futures: dict[TopicPartition, concurrent.futures.Future[DeletedRecords]] = {
            tp: concurrent.futures.Future() for tp in topic_partition_offsets
        }
        by_topic: dict[str, list[TopicPartition]] = {}
        for tp in topic_partition_offsets:
            by_topic.setdefault(tp.topic, []).append(tp)

        def delete(topic: str, tps: list[TopicPartition]) -> None:
            for tp in tps:
                futures[tp].set_running_or_notify_cancel()
            req = admin_service_pb2.DeleteRecordsRequest(
                topic=topic,
                partitions=[
                    admin_service_pb2.DeleteRecordsPartition(partition=tp.partition, before_offset=tp.offset)
                    for tp in tps
                ],
            )
            try:
                resp = self._call(lambda s: s.admin.DeleteRecords, req, timeout)
            except Exception as e:
                for tp in tps:
                    futures[tp].set_exception(e)
                return
            low = {p.partition: int(p.low_watermark) for p in resp.partitions}
            for tp in tps:
                if tp.partition in low:
                    futures[tp].set_result(DeletedRecords(low[tp.partition]))
                else:
                    futures[tp].set_exception(FatalError(f"no answer for {tp.topic}/{tp.partition}"))

        for topic, tps in by_topic.items():
            self._submit(partial(delete, topic, tps))
        return futures

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata:
        """confluent-kafka's metadata: the cluster id, its controller, its brokers by id and
        its topics by name (only ``topic`` if given: a topic that does not exist is listed
        with ``error`` ``UNKNOWN_TOPIC_OR_PART``), as the answering broker sees them.
        ``timeout`` in seconds (-1: ``default.api.timeout.ms``)."""
        seconds = _seconds(timeout)
        cluster = self._call(
            lambda s: s.admin.DescribeCluster, admin_service_pb2.DescribeClusterRequest(), seconds
        )
        md = ClusterMetadata(cluster.cluster_id or None, cluster.controller_id or -1)
        for b in cluster.brokers:
            host, _, port = target(b.address).rpartition(":")
            md.brokers[b.id] = BrokerMetadata(b.id, host, int(port) if port.isdigit() else -1)
        if topic is None:
            at, resp = self._call_at(
                lambda s: s.admin.ListTopics, admin_service_pb2.ListTopicsRequest(), seconds
            )
            described = list(resp.topics)
        else:
            try:
                req = admin_service_pb2.DescribeTopicRequest(name=topic)
                at, one = self._call_at(lambda s: s.admin.DescribeTopic, req, seconds)
                described = [one.topic]
            except UnknownTopicError as e:
                at, described = self._ring.current, []
                err = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, e.message)
                md.topics[topic] = TopicMetadata(topic, {}, err)
        for t in described:
            parts = {
                p.partition: PartitionMetadata(
                    p.partition, p.leader_id or -1, list(p.replica_ids), list(p.in_sync_replica_ids)
                )
                for p in t.partitions
            }
            md.topics[t.name] = TopicMetadata(t.name, parts)
        ids = {target(b.address): b.id for b in cluster.brokers}
        md.orig_broker_id = ids.get(at, cluster.brokers[0].id if len(cluster.brokers) == 1 else -1)
        md.orig_broker_name = at
        return md

    def delete_consumer_groups(
        self, group_ids: list[str], request_timeout: float | None = None
    ) -> dict[str, concurrent.futures.Future[None]]:
        """Deletes groups (their committed offsets), all at once: group → future (None, or
        raises :class:`~tidelog.errors.UnknownGroupError`, or
        :class:`~tidelog.errors.GroupNotEmptyError` while it has members)."""
        _check_list(group_ids, str, "group_ids")
        if not group_ids:
            raise ValueError("Expected at least one group to be deleted")
        timeout = _seconds(request_timeout)

        def delete(group: str) -> None:
            req = group_service_pb2.DeleteGroupRequest(group=group)
            self._group_call(lambda s: s.groups.DeleteGroup, req, group, timeout)

        return {g: self._submit(partial(delete, g)) for g in dict.fromkeys(group_ids)}

    delete_groups = delete_consumer_groups

    def alter_configs(
        self,
        resources: list[ConfigResource],
        request_timeout: float | None = None,
        validate_only: bool = False,
    ) -> dict[ConfigResource, concurrent.futures.Future[None]]:
        """Sets topics' configurations, as Kafka's AlterConfigs does: the keys in each
        resource's ``set_config`` become the topic's own and **every other key goes back to
        the broker's default** (use :meth:`incremental_alter_configs` to change some keys
        only). Resource → future (None, or raises). Keys are Kafka's (``retention.ms``,
        ``retention.bytes``, ``segment.bytes``, ``segment.ms``, ``max.message.bytes``,
        ``cleanup.policy``, ``delete.retention.ms``, ``min.cleanable.dirty.ratio``,
        ``min.compaction.lag.ms``) and Tidelog's (``fsync``, ``fsync.interval.ms``,
        ``max.batch.bytes``)."""
        _check_list(resources, ConfigResource, "resources")
        timeout = _seconds(request_timeout)

        def alter(r: ConfigResource) -> None:
            _check_topic_resource(r)
            config = _with_aliases(r.set_config_dict)
            reset = [k for k in _FIELD_OF_KEY if k not in config]
            self._alter_one(r.name, config, reset, validate_only, timeout)

        return {r: self._submit(partial(alter, r)) for r in resources}

    def incremental_alter_configs(
        self,
        resources: list[ConfigResource],
        request_timeout: float | None = None,
        validate_only: bool = False,
    ) -> dict[ConfigResource, concurrent.futures.Future[None]]:
        """Changes only the named keys of topics' configurations: each resource's
        ``incremental_configs`` are ``ConfigEntry(name, value,
        incremental_operation=AlterConfigOpType.SET)`` or ``.DELETE`` (back to the default).
        Resource → future (None, or raises)."""
        _check_list(resources, ConfigResource, "resources")
        timeout = _seconds(request_timeout)

        def alter(r: ConfigResource) -> None:
            _check_topic_resource(r)
            config: dict[str, Any] = {}
            reset: list[str] = []
            for e in r.incremental_configs:
                if e.incremental_operation == AlterConfigOpType.SET:
                    config[e.name] = e.value
                elif e.incremental_operation == AlterConfigOpType.DELETE:
                    reset.append(e.name)
                else:
                    raise ConfigError(f"{e.name}: {e.incremental_operation} is not supported (SET or DELETE)")
            self._alter_one(
                r.name, _with_aliases(config), [_KEY_ALIASES.get(k, k) for k in reset], validate_only, timeout
            )

        return {r: self._submit(partial(alter, r)) for r in resources}

    def _alter_one(
        self, topic: str, config: dict[str, Any], reset: list[str], validate_only: bool, timeout: float | None
    ) -> None:
        unknown = [k for k in reset if k not in _FIELD_OF_KEY]
        if unknown:
            raise ConfigError(f"cannot reset {unknown}: known keys are {sorted(_FIELD_OF_KEY)}")
        req = admin_service_pb2.AlterTopicConfigRequest(
            name=topic, config=topic_config_proto(config), reset=[_FIELD_OF_KEY[k] for k in reset]
        )
        if validate_only:
            self._call(
                lambda s: s.admin.DescribeTopic, admin_service_pb2.DescribeTopicRequest(name=topic), timeout
            )
            return
        self._call(lambda s: s.admin.AlterTopicConfig, req, timeout)

    def describe_configs(
        self, resources: list[ConfigResource], request_timeout: float | None = None
    ) -> dict[ConfigResource, concurrent.futures.Future[dict[str, ConfigEntry]]]:
        """Topics' configurations: resource → future of ``{key: ConfigEntry}``, each entry's
        ``source`` ``DYNAMIC_TOPIC_CONFIG`` (set on the topic) or ``DEFAULT_CONFIG``."""
        _check_list(resources, ConfigResource, "resources")
        timeout = _seconds(request_timeout)

        def describe(r: ConfigResource) -> dict[str, ConfigEntry]:
            _check_topic_resource(r)
            req = admin_service_pb2.DescribeTopicRequest(name=r.name)
            t = _describe(self._call(lambda s: s.admin.DescribeTopic, req, timeout).topic)
            out = {}
            for k, v in sorted(t.config.items()):
                own = t.config_sources.get(k) == "topic"
                source = ConfigSource.DYNAMIC_TOPIC_CONFIG if own else ConfigSource.DEFAULT_CONFIG
                out[k] = ConfigEntry(k, str(v), source, is_default=not own)
            return out

        return {r: self._submit(partial(describe, r)) for r in resources}

    # ---- ACLs (confluent-kafka's), quotas and whoami (Tidelog's) ------------------------------

    def create_acls(
        self, acls: list[AclBinding], request_timeout: float | None = None
    ) -> dict[AclBinding, concurrent.futures.Future[None]]:
        """Adds ACLs (ALTER on the cluster): binding → future (None, or raises: an
        :class:`~tidelog.errors.AuthorizationError` (``CLUSTER_AUTHORIZATION_FAILED``) for a
        caller that may not, a :class:`~tidelog.errors.FatalError` (``INVALID_REQUEST``) for
        an ACL the broker refuses). Adding an ACL that exists is not an error. One request for
        all; an ACL the broker refuses fails its own future and the others are sent again."""
        _check_list(acls, AclBinding, "acls")
        if not acls:
            raise ValueError("Expected non-empty list of AclBinding objects")
        if any(isinstance(a, AclBindingFilter) for a in acls):
            raise TypeError("acls must be a list of AclBinding, not AclBindingFilter")
        _check_unique(acls, "ACL binding")
        timeout = _seconds(request_timeout)
        futures: dict[AclBinding, concurrent.futures.Future[None]] = {
            a: concurrent.futures.Future() for a in acls
        }

        def create() -> None:
            pending = [a for a in acls if futures[a].set_running_or_notify_cancel()]
            while pending:
                req = security_service_pb2.CreateAclsRequest(acls=[_acl_proto(a) for a in pending])
                try:
                    self._call(lambda s: s.security.CreateAcls, req, timeout)
                except Exception as e:
                    bad = _refused_acl(e, len(pending))
                    if bad is None:
                        for a in pending:
                            futures[a].set_exception(e)
                        return
                    futures[pending.pop(bad)].set_exception(e)
                    continue
                for a in pending:
                    futures[a].set_result(None)
                return

        self._submit(create)
        return futures

    def describe_acls(
        self, acl_binding_filter: AclBindingFilter, request_timeout: float | None = None
    ) -> concurrent.futures.Future[list[AclBinding]]:
        """The ACLs a filter selects (DESCRIBE on the cluster): a future of a list of
        :class:`~tidelog.admin_types.AclBinding`."""
        if not isinstance(acl_binding_filter, AclBindingFilter):
            raise TypeError("Expected acl_binding_filter to be an AclBindingFilter")
        timeout = _seconds(request_timeout)
        req = security_service_pb2.DescribeAclsRequest(filter=_filter_proto(acl_binding_filter))

        def describe() -> list[AclBinding]:
            resp = self._call(lambda s: s.security.DescribeAcls, req, timeout)
            return [_acl_of(a) for a in resp.acls]

        return self._submit(describe)

    def delete_acls(
        self, acl_binding_filters: list[AclBindingFilter], request_timeout: float | None = None
    ) -> dict[AclBindingFilter, concurrent.futures.Future[list[AclBinding]]]:
        """Removes the ACLs the filters select (ALTER on the cluster): filter → future of the
        removed bindings it selected (an ACL several filters select is in each one's list, as
        in Kafka). One request for all. A retried request whose first attempt went through
        reports nothing removed."""
        _check_list(acl_binding_filters, AclBindingFilter, "acl_binding_filters")
        if not acl_binding_filters:
            raise ValueError("Expected non-empty list of AclBindingFilter objects")
        _check_unique(acl_binding_filters, "ACL binding filter")
        timeout = _seconds(request_timeout)
        futures: dict[AclBindingFilter, concurrent.futures.Future[list[AclBinding]]] = {
            f: concurrent.futures.Future() for f in acl_binding_filters
        }
        req = security_service_pb2.DeleteAclsRequest(filters=[_filter_proto(f) for f in acl_binding_filters])

        def delete() -> None:
            pending = [f for f in acl_binding_filters if futures[f].set_running_or_notify_cancel()]
            try:
                resp = self._call(lambda s: s.security.DeleteAcls, req, timeout)
            except Exception as e:
                for f in pending:
                    futures[f].set_exception(e)
                return
            removed = [_acl_of(a) for a in resp.acls]
            for f in pending:
                futures[f].set_result([a for a in removed if f.matches(a)])

        self._submit(delete)
        return futures

    def alter_client_quotas(
        self,
        entity: Mapping[str, str | None],
        set: Mapping[str, float | None] | None = None,
        remove: Iterable[str] = (),
        request_timeout: float | None = None,
    ) -> concurrent.futures.Future[dict[str, float]]:
        """Sets or removes an entity's quotas (ALTER_CONFIGS on the cluster; a Tidelog
        extension named after Kafka's). ``entity``: ``{"user": "alice"}``, ``{"client-id":
        "etl"}`` or both; a value None is the default (every user / client id without its
        own entry). ``set``: ``producer_byte_rate`` / ``consumer_byte_rate`` (bytes per second
        per broker), ``request_rate`` (requests per second); a None value removes that limit,
        as naming it in ``remove`` does. Limits not named stay. A future of the entity's
        limits afterwards (``{}``: it has no quota any more)."""
        req = security_service_pb2.AlterClientQuotasRequest(entity=_entity_proto(entity))
        removed = list(remove) if not isinstance(remove, str) else [remove]
        for key, value in (set or {}).items():
            if key not in _QUOTA_KEYS:
                raise ValueError(f"unknown quota {key!r}: expected one of {', '.join(_QUOTA_KEYS)}")
            if value is None:
                removed.append(key)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"quota {key}: expected a number, got {type(value).__name__}")
            elif key == "request_rate":
                req.set.request_rate = float(value)
            else:
                if value < 0 or value != int(value):
                    raise ValueError(f"quota {key}: expected a whole number of bytes per second, got {value}")
                setattr(req.set, key, int(value))
        for key in removed:
            if key not in _QUOTA_KEYS:
                raise ValueError(f"unknown quota {key!r}: expected one of {', '.join(_QUOTA_KEYS)}")
        req.remove.extend(dict.fromkeys(removed))
        timeout = _seconds(request_timeout)

        def alter() -> dict[str, float]:
            return _limits_of(self._call(lambda s: s.security.AlterClientQuotas, req, timeout).limits)

        return self._submit(alter)

    def describe_client_quotas(
        self, user: str | None = None, client_id: str | None = None, request_timeout: float | None = None
    ) -> concurrent.futures.Future[ClientQuotas]:
        """Every quota entity and its limits (DESCRIBE_CONFIGS on the cluster; a Tidelog
        extension): a future of :class:`~tidelog.admin_types.ClientQuotas` ``(quotas,
        effective)``, ``quotas`` a list of ``(entity, limits)`` dicts as
        :meth:`alter_client_quotas` takes and returns them; with ``user`` (a name, or
        ``"User:<name>"``) and/or ``client_id``, ``effective`` is the limits a caller with
        those gets (Kafka's resolution: the most specific entity setting each limit wins)."""
        req = security_service_pb2.DescribeClientQuotasRequest(
            effective_for_user=_user_name(user or ""), effective_for_client_id=client_id or ""
        )
        asked = bool(user or client_id)
        timeout = _seconds(request_timeout)

        def describe() -> ClientQuotas:
            resp = self._call(lambda s: s.security.DescribeClientQuotas, req, timeout)
            quotas = [(_entity_of(q.entity), _limits_of(q.limits)) for q in resp.quotas]
            return ClientQuotas(quotas, _limits_of(resp.effective) if asked else None)

        return self._submit(describe)

    # ---- transactions -----------------------------------------------------------------------

    def list_transactions(
        self,
        states: Iterable[TransactionState] | None = None,
        producer_ids: Iterable[int] | None = None,
        request_timeout: float | None = None,
    ) -> concurrent.futures.Future[list[TransactionListing]]:
        """Every transactional id the transaction coordinator knows (those the caller may
        DESCRIBE), as a future of :class:`~tidelog.admin_types.TransactionListing` sorted by
        id; ``states`` and ``producer_ids`` keep only those in one of them (Kafka's
        ``ListTransactionsOptions``)."""
        want_states = set(states) if states is not None else None
        want_ids = set(producer_ids) if producer_ids is not None else None
        timeout = _seconds(request_timeout)

        def list_all() -> list[TransactionListing]:
            resp = self._call(
                lambda s: s.transactions.ListTransactions,
                transaction_service_pb2.ListTransactionsRequest(),
                timeout,
            )
            out = [
                TransactionListing(t.transactional_id, t.producer_id, TransactionState.of(t.state))
                for t in resp.transactions
            ]
            return sorted(
                (
                    t
                    for t in out
                    if (want_states is None or t.state in want_states)
                    and (want_ids is None or t.producer_id in want_ids)
                ),
                key=lambda t: t.transactional_id,
            )

        return self._submit(list_all)

    def describe_transactions(
        self, transactional_ids: list[str], request_timeout: float | None = None
    ) -> dict[str, concurrent.futures.Future[TransactionDescription]]:
        """Transactional ids in detail, all at once: id → future of
        :class:`~tidelog.admin_types.TransactionDescription` (an id the coordinator does not
        know raises a :class:`~tidelog.errors.FatalError` with code ``INVALID_TXN_STATE``)."""
        _check_list(transactional_ids, str, "transactional_ids")
        timeout = _seconds(request_timeout)

        def describe(tid: str) -> TransactionDescription:
            req = transaction_service_pb2.DescribeTransactionsRequest(transactional_ids=[tid])
            resp = self._call(lambda s: s.transactions.DescribeTransactions, req, timeout)
            for t in resp.transactions:
                if t.transactional_id == tid:
                    return _transaction_of(t)
            raise FatalError(f"the coordinator did not describe transactional id {tid!r}")

        return {tid: self._submit(partial(describe, tid)) for tid in dict.fromkeys(transactional_ids)}

    def abort_transaction(
        self, transactional_id: str, request_timeout: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Aborts the open transaction of ``transactional_id`` now, as its timeout would (a
        hanging transaction holding back read_committed consumers; Kafka's
        ``kafka-transactions.sh abort``): its records are never seen by read_committed
        consumers, its offsets are not committed, and its producer is fenced. Needs ALTER on
        the cluster. A future of None; raises ``INVALID_TXN_STATE`` if no transaction is open."""
        req = transaction_service_pb2.AbortTransactionRequest(transactional_id=transactional_id)
        timeout = _seconds(request_timeout)

        def abort() -> None:
            self._call(lambda s: s.transactions.AbortTransaction, req, timeout)

        return self._submit(abort)

    def whoami(self, request_timeout: float | None = None) -> dict[str, Any]:
        """Who the broker takes this client for (a Tidelog extension): ``principal``
        (``"User:<name>"``, ``"User:ANONYMOUS"`` without credentials), ``authenticated_by``
        (``"token"``, ``"mtls"`` or ``"anonymous"``), ``authorization_enabled`` (whether the
        broker checks ACLs), ``superuser`` and ``client_id`` (the ``client.id`` it received)."""
        r = self._call(
            lambda s: s.security.WhoAmI, security_service_pb2.WhoAmIRequest(), _seconds(request_timeout)
        )
        return {
            "principal": r.principal,
            "authenticated_by": r.authenticated_by,
            "authorization_enabled": r.authorization_enabled,
            "superuser": r.superuser,
            "client_id": r.client_id,
        }

    def close(self) -> None:
        """Waits for the calls of pending futures, then disconnects."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for ch in channels:
            ch.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- helpers of the confluent-kafka-shaped calls ----------------------------------------------


def _with_aliases(config: Mapping[str, Any]) -> dict[str, Any]:
    return {_KEY_ALIASES.get(k, k): v for k, v in config.items()}


def _seconds(timeout: float | None) -> float | None:
    """A confluent-kafka timeout in seconds: None or negative means the client's default."""
    return None if timeout is None or timeout < 0 else float(timeout)


def _check_list(items: Any, kind: type, what: str) -> None:
    if not isinstance(items, list):
        raise TypeError(f"{what} must be a list of {kind.__name__}")
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{what} must be a list of {kind.__name__}, got a {type(item).__name__}")


def _check_unique(keys: list[Any], what: str) -> None:
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate {what} in the request")


def _check_topic_resource(r: ConfigResource) -> None:
    if r.restype != ResourceType.TOPIC:
        raise ConfigError(f"{r}: only topic configurations (RESOURCE_TOPIC) are supported")


# ---- ACL and quota conversions ----------------------------------------------------------------

_PATTERN_TO_PROTO = {
    ResourcePatternType.ANY: security_service_pb2.ACL_PATTERN_TYPE_ANY,
    ResourcePatternType.MATCH: security_service_pb2.ACL_PATTERN_TYPE_MATCH,
    ResourcePatternType.LITERAL: security_service_pb2.ACL_PATTERN_TYPE_LITERAL,
    ResourcePatternType.PREFIXED: security_service_pb2.ACL_PATTERN_TYPE_PREFIXED,
}
_PATTERN_OF_PROTO = {v: k for k, v in _PATTERN_TO_PROTO.items()}
_PERMISSION_TO_PROTO = {
    AclPermissionType.ANY: security_service_pb2.ACL_PERMISSION_ANY,
    AclPermissionType.ALLOW: security_service_pb2.ACL_PERMISSION_ALLOW,
    AclPermissionType.DENY: security_service_pb2.ACL_PERMISSION_DENY,
}
_PERMISSION_OF_PROTO = {v: k for k, v in _PERMISSION_TO_PROTO.items()}
# ResourceType and AclOperation have the proto's numbers (both follow Kafka's).
_RESOURCE_TO_PROTO = {
    ResourceType.ANY: security_service_pb2.ACL_RESOURCE_TYPE_ANY,
    ResourceType.TOPIC: security_service_pb2.ACL_RESOURCE_TYPE_TOPIC,
    ResourceType.GROUP: security_service_pb2.ACL_RESOURCE_TYPE_GROUP,
    ResourceType.BROKER: security_service_pb2.ACL_RESOURCE_TYPE_CLUSTER,
    ResourceType.TRANSACTIONAL_ID: security_service_pb2.ACL_RESOURCE_TYPE_TRANSACTIONAL_ID,
}
_RESOURCE_OF_PROTO = {v: k for k, v in _RESOURCE_TO_PROTO.items()}
_OPERATION_TO_PROTO: dict[AclOperation, int] = {
    op: op.value for op in AclOperation if op != AclOperation.UNKNOWN
}
_OPERATION_OF_PROTO = {v: k for k, v in _OPERATION_TO_PROTO.items()}

#: The limits a quota sets.
_QUOTA_KEYS = ("producer_byte_rate", "consumer_byte_rate", "request_rate")
#: An entity's parts: Kafka's names (and client_id).
_ENTITY_KEYS = {"user": "user", "client-id": "client_id", "client_id": "client_id"}


def _acl_fields(a: AclBinding) -> dict[str, Any]:
    return {
        "resource_type": _RESOURCE_TO_PROTO[a.restype],
        "resource_name": a.name or "",
        "pattern_type": _PATTERN_TO_PROTO[a.resource_pattern_type],
        "principal": a.principal or "",
        "host": a.host or "",
        "operation": _OPERATION_TO_PROTO[a.operation],
        "permission": _PERMISSION_TO_PROTO[a.permission_type],
    }


def _acl_proto(a: AclBinding) -> security_service_pb2.AclBinding:
    return security_service_pb2.AclBinding(**_acl_fields(a))


def _filter_proto(f: AclBindingFilter) -> security_service_pb2.AclBindingFilter:
    return security_service_pb2.AclBindingFilter(**_acl_fields(f))


def _acl_of(b: security_service_pb2.AclBinding) -> AclBinding:
    return AclBinding(
        _RESOURCE_OF_PROTO.get(b.resource_type, ResourceType.UNKNOWN),
        b.resource_name,
        _PATTERN_OF_PROTO.get(b.pattern_type, ResourcePatternType.UNKNOWN),
        b.principal,
        b.host,
        _OPERATION_OF_PROTO.get(b.operation, AclOperation.UNKNOWN),
        _PERMISSION_OF_PROTO.get(b.permission, AclPermissionType.UNKNOWN),
    )


#: The broker's INVALID_ARGUMENT for one ACL of a CreateAcls request: "ACL <index>: <why>".
_REFUSED_ACL = re.compile(r"ACL (\d+): ")


def _refused_acl(e: Exception, n: int) -> int | None:
    """The index of the ACL a failed CreateAcls refused, if the broker named one."""
    if not isinstance(e, FatalError) or e.code != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    m = _REFUSED_ACL.match(e.message)
    return int(m.group(1)) if m and int(m.group(1)) < n else None


def _user_name(user: str) -> str:
    """A quota's user: the principal's name, without ``User:``."""
    return user.removeprefix("User:")


def _entity_proto(entity: Mapping[str, str | None]) -> security_service_pb2.QuotaEntity:
    if not isinstance(entity, Mapping) or not entity:
        raise ValueError('a quota entity is a dict: {"user": name}, {"client-id": id} or both')
    e = security_service_pb2.QuotaEntity()
    for key, value in entity.items():
        field = _ENTITY_KEYS.get(key)
        if field is None:
            raise ValueError(f"unknown quota entity key {key!r}: expected user and/or client-id")
        part = getattr(e, field)
        if part.WhichOneof("part") is not None:
            raise ValueError(f"quota entity: {field} given twice")
        if value is None:
            part.default = True
        elif isinstance(value, str) and value:
            part.name = _user_name(value) if field == "user" else value
        else:
            raise ValueError(f"quota entity {key}: expected a non-empty name or None (the default)")
    return e


def _entity_of(e: security_service_pb2.QuotaEntity) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, part in (("user", e.user), ("client-id", e.client_id)):
        kind = part.WhichOneof("part") if e.HasField(key.replace("-", "_")) else None
        if kind == "name":
            out[key] = part.name
        elif kind == "default" and part.default:
            out[key] = None
    return out


def _limits_of(limits: security_service_pb2.QuotaLimits) -> dict[str, float]:
    return {k: getattr(limits, k) for k in _QUOTA_KEYS if limits.HasField(k)}


def _transaction_of(t: transaction_service_pb2.TransactionDescription) -> TransactionDescription:
    return TransactionDescription(
        t.transactional_id,
        t.producer_id,
        t.producer_epoch,
        TransactionState.of(t.state),
        t.transaction_timeout_ms,
        t.started_at_ms or None,
        [TopicPartition(tp.topic, p) for tp in t.partitions for p in tp.partitions],
        list(t.groups),
        t.last_update_ms,
    )


def internal_admin(cfg: Mapping[str, Any]) -> AdminClient:
    """The admin client a producer or consumer uses for its metadata calls (``list_topics``):
    the same brokers, client id, logger, timeouts and transport (TLS credentials included)."""
    conf: dict[str, Any] = {k: cfg[k] for k in ("bootstrap.servers", "client.id", "logger") if cfg.get(k)}
    conf["request.timeout.ms"] = cfg["request.timeout.ms"]
    if "default.api.timeout.ms" in cfg:
        conf["default.api.timeout.ms"] = cfg["default.api.timeout.ms"]
    conf["security.protocol"] = cfg["security.protocol"]
    return AdminClient(conf, _transport=cfg[TRANSPORT])
