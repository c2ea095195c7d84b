"""Topic and group administration (synchronous; every call is one unary RPC).

::

    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9690"})
    admin.create_topic("orders", num_partitions=6, config={"retention.ms": 86_400_000})
    admin.describe_group("billing").lag   # {TopicPartition: records behind}

Failover: the client knows the ``bootstrap.servers`` brokers and, once learnt from the first
one that answers DescribeCluster, the rest of the cluster. A call goes to one of them; when it
is unreachable, stalled or otherwise failing retriably the call moves on to the next one and
retries with backoff until ``default.api.timeout.ms``, each attempt waiting up to
``request.timeout.ms`` (the policy the consumer shares, :mod:`tidelog._failover`). A broker's
real answer (the topic exists, an unknown topic, an invalid argument) is raised at once.

Errors are raised as :mod:`tidelog.errors` types (``TopicExistsError``, ``UnknownTopicError``,
``FatalError`` for invalid arguments, ``RetriableError`` when no broker answered in time). A
create or delete whose answer was lost is retried, and then reports that the topic exists (or
is unknown) if the first attempt went through, as in Kafka.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from ._brokers import Stubs
from ._channel import sync_channel
from ._config import ADMIN_KEYS, parse, target, targets
from ._failover import Ring, call_sync
from .errors import (
    ConfigError,
    ErrorCode,
    FatalError,
    GroupNotEmptyError,
    UnknownGroupError,
    UnknownTopicError,
    from_rpc_error,
)
from .types import TopicPartition
from .v1 import admin_service_pb2, group_service_pb2, offsets_service_pb2

log = logging.getLogger("tidelog.admin")

_FSYNC = {"always": 1, "interval": 2, "never": 3}
_INT_TOPIC_KEYS = {
    "retention.ms": "retention_ms",
    "retention.bytes": "retention_bytes",
    "segment.bytes": "segment_bytes",
    "segment.ms": "segment_ms",
    "fsync.interval.ms": "fsync_interval_ms",
    "max.batch.bytes": "max_batch_bytes",
}


# The proto's TopicConfig field name of each config key, and back.
_FIELD_OF_KEY = {**_INT_TOPIC_KEYS, "fsync": "fsync_policy"}
_KEY_OF_FIELD = {v: k for k, v in _FIELD_OF_KEY.items()}


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int
    leader: int
    replicas: list[int]


@dataclass(frozen=True)
class TopicDescription:
    name: str
    num_partitions: int
    replication_factor: int
    config: dict[str, Any]
    partitions: list[PartitionInfo]
    created_at_ms: int
    #: Per config key: ``"topic"`` if set on the topic, ``"default"`` if the broker's default.
    config_sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterDescription:
    cluster_id: str
    #: The broker leading the cluster metadata (it coordinates every group); 0 if none now.
    controller_id: int
    #: Broker id → address (``host:port``); a single node lists itself.
    brokers: dict[int, str]


@dataclass(frozen=True)
class GroupListing:
    group: str
    #: ``"empty"``, ``"rebalancing"``, ``"awaiting_sync"`` or ``"stable"``.
    state: str
    members: int
    #: The assignor of the current generation ("" when the group has none).
    protocol: str


@dataclass(frozen=True)
class PartitionReset:
    partition: int
    #: The committed offset before the reset (``None``: the group had none).
    before: int | None
    after: int


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    client_id: str
    topics: list[str]


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    generation: int
    leader_id: str
    members: list[GroupMember]
    #: Committed offset per partition (absent: nothing committed).
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    #: Records between the committed offset and the high watermark, per partition.
    lag: dict[TopicPartition, int] = field(default_factory=dict)
    #: The member currently assigned each committed partition ("" if none).
    owners: dict[TopicPartition, str] = field(default_factory=dict)


def topic_config_proto(config: Mapping[str, Any] | None) -> admin_service_pb2.TopicConfig:
    """Kafka-style topic config keys → the proto's TopicConfig (unknown keys are an error)."""
    tc = admin_service_pb2.TopicConfig()
    for k, v in (config or {}).items():
        if k in _INT_TOPIC_KEYS:
            try:
                setattr(tc, _INT_TOPIC_KEYS[k], int(v))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"topic config {k}={v!r}: {e}") from None
        elif k == "fsync":
            if str(v) not in _FSYNC:
                raise ConfigError(f"topic config fsync={v!r}: expected always, interval or never")
            tc.fsync_policy = _FSYNC[str(v)]  # type: ignore[assignment]
        else:
            known = ", ".join(sorted([*_INT_TOPIC_KEYS, "fsync"]))
            raise ConfigError(f"unknown topic config key {k!r}; known keys: {known}")
    return tc


def _describe(t: admin_service_pb2.TopicDescription) -> TopicDescription:
    config: dict[str, Any] = {
        k: getattr(t.config, f) for k, f in _INT_TOPIC_KEYS.items() if t.config.HasField(f)
    }
    fsync = {v: k for k, v in _FSYNC.items()}.get(t.config.fsync_policy)
    if fsync:
        config["fsync"] = fsync
    parts = [
        PartitionInfo(
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            p.log_end_offset,
            p.size_bytes,
            p.leader_id,
            list(p.replica_ids),
        )
        for p in t.partitions
    ]
    own = {_KEY_OF_FIELD.get(f, f) for f in t.config_overrides}
    sources = {k: ("topic" if k in own else "default") for k in config}
    return TopicDescription(
        t.name, t.partition_count, t.replication_factor, config, parts, t.created_at_ms, sources
    )


class AdminClient:
    """Creates, deletes and describes topics; describes groups and their lag."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        cfg = parse(config, ADMIN_KEYS, "admin")
        self._timeout = cfg["request.timeout.ms"] / 1000
        self._api_timeout = cfg["default.api.timeout.ms"] / 1000
        self._ring = Ring(targets(cfg["bootstrap.servers"]))
        self._lock = threading.Lock()  # the client may be shared by threads
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Stubs] = {}

    def _stubs_of(self, addr: str) -> Stubs:
        """The stubs of ``addr``; its channel opens on first use and stays until close."""
        with self._lock:
            s = self._stubs.get(addr)
            if s is None:
                ch = self._channels[addr] = sync_channel(addr)
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
                log.debug("cannot learn the cluster from %s: %s", addr, from_rpc_error(e))
                return
            resp = admin_service_pb2.DescribeClusterResponse()
        with self._lock:
            if not self._ring.learnt:
                self._ring.adopt(resp)

    def _call(self, method: Callable[[Stubs], Any], request: Any) -> Any:
        """A unary call, failing over and retrying as the module docs say."""
        self._learn()
        return call_sync(
            self._ring,
            lambda addr, t: method(self._stubs_of(addr))(request, timeout=t),
            self._api_timeout,
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
        segment.ms, fsync (always|interval|never), fsync.interval.ms, max.batch.bytes.

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

    def list_topics(self) -> list[TopicDescription]:
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

    def list_groups(self) -> list[GroupListing]:
        """Every consumer group: those with members and those with committed offsets."""
        r = self._call(lambda s: s.groups.ListGroups, group_service_pb2.ListGroupsRequest())
        return [GroupListing(g.group, g.state, g.members, g.protocol) for g in r.groups]

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

    def _group_call(self, method: Callable[[Stubs], Any], request: Any, group: str) -> Any:
        """A group administration call. The broker answers an unknown group with NOT_FOUND and
        a group with members with FAILED_PRECONDITION, each with a message that starts by
        naming the group; those become :class:`UnknownGroupError` / :class:`GroupNotEmptyError`
        (an unknown topic stays :class:`UnknownTopicError`)."""
        named = f"group '{group}' "
        try:
            return self._call(method, request)
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

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for ch in channels:
            ch.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
