"""The request and result types of :class:`tidelog.AdminClient`: Tidelog's own
(``TopicDescription``, ``GroupDescription``, ...) and those of its confluent-kafka-shaped calls
(``create_topics``, ``list_topics``, ``alter_configs``, ...), with confluent-kafka's names,
fields and constants, so code written against ``confluent_kafka.admin`` reads the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeVar

from .errors import KafkaError
from .types import TopicPartition

# ---- Tidelog's own results ------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int
    leader: int
    replicas: list[int]
    #: Compacted topics (``cleanup.policy`` compact), as the broker that answered knows them:
    #: the fraction of the log (by bytes) written since its last cleaning;
    dirty_ratio: float = 0.0
    #: when the cleaner last finished a pass of the partition (ms since the epoch, 0 = not
    #: since the broker started);
    last_cleaned_ms: int = 0
    #: and the offset below which records were compacted (0 = none yet). Offsets below it have
    #: gaps where records were compacted away.
    cleaned_offset: int = 0


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
    """A consumer group as ``list_groups`` lists it. ``id``, ``protocol_type`` and ``error``
    are there for code written against confluent-kafka's ``GroupMetadata``; ``members`` is a
    count here (``describe_group`` lists them)."""

    group: str
    #: ``"empty"``, ``"rebalancing"``, ``"awaiting_sync"`` or ``"stable"``.
    state: str
    members: int
    #: The assignor of the current generation ("" when the group has none).
    protocol: str

    @property
    def id(self) -> str:
        return self.group

    @property
    def protocol_type(self) -> str:
        return "consumer"

    @property
    def error(self) -> KafkaError | None:
        return None


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


# ---- confluent-kafka's requests and results -------------------------------------------------


@dataclass
class NewTopic:
    """A topic to create. -1 (the default) means the broker's default for
    ``num_partitions`` (1) and ``replication_factor`` (1 on a single node, the cluster's
    default in a cluster). ``config`` takes Kafka's topic keys (see
    :func:`tidelog.admin.topic_config_proto`), values as strings or numbers."""

    topic: str
    num_partitions: int = -1
    replication_factor: int = -1
    replica_assignment: list[list[int]] | None = None
    config: dict[str, Any] | None = None


@dataclass
class NewPartitions:
    """Raise ``topic``'s partition count to ``new_total_count`` (never lowers it)."""

    topic: str
    new_total_count: int
    replica_assignment: list[list[int]] | None = None


@dataclass
class DeletedRecords:
    """What ``delete_records`` did to a partition: its first offset (low watermark) now."""

    low_watermark: int


class ResourceType(enum.Enum):
    """Kinds of resources, as confluent-kafka numbers them: configurable ones (only TOPIC
    here) and those ACLs protect. ``BROKER`` is librdkafka's name for Kafka's (and Tidelog's)
    cluster resource, named ``"kafka-cluster"``; ``CLUSTER`` is an alias of it."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    BROKER = 4
    TRANSACTIONAL_ID = 5
    CLUSTER = 4  # an alias: ResourceType.CLUSTER is ResourceType.BROKER


RESOURCE_UNKNOWN = ResourceType.UNKNOWN.value
RESOURCE_ANY = ResourceType.ANY.value
RESOURCE_TOPIC = ResourceType.TOPIC.value
RESOURCE_GROUP = ResourceType.GROUP.value
RESOURCE_BROKER = ResourceType.BROKER.value


class ConfigSource(enum.Enum):
    """Where a configuration value comes from (``describe_configs``)."""

    UNKNOWN_CONFIG = 0
    DYNAMIC_TOPIC_CONFIG = 1
    DYNAMIC_BROKER_CONFIG = 2
    DYNAMIC_DEFAULT_BROKER_CONFIG = 3
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


class AlterConfigOpType(enum.Enum):
    """``incremental_alter_configs`` operations: SET a value, DELETE (back to the default).
    APPEND and SUBTRACT are for list-valued keys, which Tidelog topics do not have."""

    SET = 0
    DELETE = 1
    APPEND = 2
    SUBTRACT = 3


@dataclass
class ConfigEntry:
    """A configuration value (``describe_configs``), or an operation on one
    (``incremental_alter_configs``, with ``incremental_operation``)."""

    name: str
    value: str | None
    source: ConfigSource = ConfigSource.UNKNOWN_CONFIG
    is_read_only: bool = False
    is_default: bool = False
    is_sensitive: bool = False
    is_synonym: bool = False
    synonyms: list[ConfigEntry] = field(default_factory=list)
    incremental_operation: AlterConfigOpType | None = None

    def __str__(self) -> str:
        return f'{self.name}="{self.value}"'


class ConfigResource:
    """A resource with configuration: ``ConfigResource(RESOURCE_TOPIC, "orders",
    set_config={"retention.ms": "86400000"})``. ``restype`` may be a :class:`ResourceType`,
    its number or its name (``"topic"``). Hashable by (type, name), as confluent-kafka's: the
    keys of the futures ``alter_configs`` returns."""

    Type = ResourceType

    def __init__(
        self,
        restype: ResourceType | int | str,
        name: str,
        set_config: Mapping[str, Any] | None = None,
        described_configs: dict[str, ConfigEntry] | None = None,
        error: KafkaError | None = None,
        incremental_configs: list[ConfigEntry] | None = None,
    ) -> None:
        if name is None:
            raise ValueError("Expected resource name to be a string")
        if isinstance(restype, str):
            try:
                restype = ResourceType[restype.upper()]
            except KeyError:
                raise ValueError(
                    f'Unknown resource type "{restype}": should be a ConfigResource.Type'
                ) from None
        elif isinstance(restype, int):
            restype = ResourceType(restype)
        self.restype: ResourceType = restype
        self.name = name
        self.set_config_dict: dict[str, Any] = dict(set_config or {})
        self.incremental_configs: list[ConfigEntry] = list(incremental_configs or [])
        self.configs = described_configs
        self.error = error

    def set_config(self, name: str, value: Any, overwrite: bool = True) -> None:
        """Sets a value for ``alter_configs`` (which resets every key not set, as in Kafka)."""
        if overwrite or name not in self.set_config_dict:
            self.set_config_dict[name] = value

    def add_incremental_config(self, config: ConfigEntry) -> None:
        """Adds an operation for ``incremental_alter_configs``."""
        self.incremental_configs.append(config)

    def __hash__(self) -> int:
        return hash((self.restype, self.name))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigResource):
            return NotImplemented
        return self.restype == other.restype and self.name == other.name

    def __len__(self) -> int:
        return len(self.set_config_dict)

    def __repr__(self) -> str:
        if self.error is not None:
            return f"ConfigResource({self.restype},{self.name},{self.error!r})"
        return f"ConfigResource({self.restype},{self.name})"


# ---- list_topics --------------------------------------------------------------------------


@dataclass
class BrokerMetadata:
    """A broker: its node id and where clients reach it."""

    id: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.id}"


@dataclass
class PartitionMetadata:
    """A partition: its leader (-1 while none is known), replicas and in-sync replicas (only
    the partition's leader knows its ISR; another broker's answer leaves ``isrs`` empty)."""

    id: int
    leader: int
    replicas: list[int]
    isrs: list[int]
    error: KafkaError | None = None

    def __str__(self) -> str:
        return str(self.id)


@dataclass
class TopicMetadata:
    """A topic and its partitions by id; ``error`` (``UNKNOWN_TOPIC_OR_PART``) for a topic
    asked for by name that does not exist."""

    topic: str
    partitions: dict[int, PartitionMetadata] = field(default_factory=dict)
    error: KafkaError | None = None

    def __str__(self) -> str:
        return self.topic


@dataclass
class ClusterMetadata:
    """What ``list_topics`` returns: the cluster, its brokers by id, its topics by name, and
    the broker that answered (``orig_broker_id``, ``orig_broker_name``)."""

    cluster_id: str | None = None
    controller_id: int = -1
    brokers: dict[int, BrokerMetadata] = field(default_factory=dict)
    topics: dict[str, TopicMetadata] = field(default_factory=dict)
    orig_broker_id: int = -1
    orig_broker_name: str | None = None

    def __str__(self) -> str:
        return str(self.cluster_id)


# ---- ACLs (create_acls, describe_acls, delete_acls) -----------------------------------------

#: The name of the one cluster resource (``ResourceType.BROKER`` / ``CLUSTER``), as Kafka's.
CLUSTER_RESOURCE_NAME = "kafka-cluster"


class ResourcePatternType(enum.Enum):
    """How an ACL's resource name selects resources, as confluent-kafka numbers them: LITERAL
    (the name exactly; ``"*"``: every one), PREFIXED (every name starting with it); in filters
    also ANY and MATCH (the ACLs that apply to the filter's name: literal, ``"*"`` and
    prefixes of it)."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(enum.Enum):
    """What an ACL allows or denies, as confluent-kafka numbers them. ALL is every operation;
    an ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE, of ALTER_CONFIGS also
    DESCRIBE_CONFIGS (as in Kafka). ANY is for filters."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class AclPermissionType(enum.Enum):
    """ALLOW or DENY (a matching DENY wins over every ALLOW); ANY is for filters."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


_E = TypeVar("_E", bound=enum.Enum)


def _to_enum(value: Any, cls: type[_E], what: str) -> _E:
    """confluent-kafka's conversion: an enum member, or its name (any case); a number too."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"Unknown value {value!r} for {what}: expected a {cls.__name__}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"Unknown value {value!r} for {what}: expected a {cls.__name__}") from None
    raise TypeError(f"Expected {what} to be a {cls.__name__}, got {type(value).__name__}")


class AclBinding:
    """An ACL, confluent-kafka's ``AclBinding``: ``principal`` (``"User:<name>"``, or
    ``"User:*"``) from ``host`` (an IP address, or ``"*"``) is allowed (or denied)
    ``operation`` on the resources of type ``restype`` that ``name`` and
    ``resource_pattern_type`` (LITERAL or PREFIXED) select::

        AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:alice", "*",
                   AclOperation.WRITE, AclPermissionType.ALLOW)

    Enum arguments may also be given by name (``"topic"``, ``"literal"``, ``"write"``, ...).
    The cluster resource is ``ResourceType.BROKER`` (alias ``CLUSTER``) named
    ``"kafka-cluster"``. Equal, hashable and ordered by value, so bindings work as dict keys
    (:meth:`~tidelog.admin.AdminClient.create_acls`' futures) and in sets."""

    #: Values an ACL may not have (a filter allows more, see :class:`AclBindingFilter`).
    _forbidden: ClassVar[dict[str, frozenset[enum.Enum]]] = {
        "restype": frozenset({ResourceType.UNKNOWN, ResourceType.ANY}),
        "resource_pattern_type": frozenset(
            {ResourcePatternType.UNKNOWN, ResourcePatternType.ANY, ResourcePatternType.MATCH}
        ),
        "operation": frozenset({AclOperation.UNKNOWN, AclOperation.ANY}),
        "permission_type": frozenset({AclPermissionType.UNKNOWN, AclPermissionType.ANY}),
    }
    #: Whether ``name``, ``principal`` and ``host`` may be None (any).
    _nullable_strings: ClassVar[bool] = False

    def __init__(
        self,
        restype: ResourceType | str | int,
        name: str | None,
        resource_pattern_type: ResourcePatternType | str | int,
        principal: str | None,
        host: str | None,
        operation: AclOperation | str | int,
        permission_type: AclPermissionType | str | int,
    ) -> None:
        self.restype: ResourceType = _to_enum(restype, ResourceType, "restype")
        self.resource_pattern_type: ResourcePatternType = _to_enum(
            resource_pattern_type, ResourcePatternType, "resource_pattern_type"
        )
        self.operation: AclOperation = _to_enum(operation, AclOperation, "operation")
        self.permission_type: AclPermissionType = _to_enum(
            permission_type, AclPermissionType, "permission_type"
        )
        for what, value in (("name", name), ("principal", principal), ("host", host)):
            if value is None:
                if not self._nullable_strings:
                    raise ValueError(f"Expected {what} to be not None")
            elif not isinstance(value, str):
                raise TypeError(f"Expected {what} to be a string")
        self.name = name
        self.principal = principal
        self.host = host
        for what, forbidden in self._forbidden.items():
            value = getattr(self, what)
            if value in forbidden:
                raise ValueError(f"Cannot use {what} {value.name} in a {type(self).__name__}")

    def _to_tuple(self) -> tuple[Any, ...]:
        return (
            self.restype,
            self.name,
            self.resource_pattern_type,
            self.principal,
            self.host,
            self.operation,
            self.permission_type,
        )

    def _sort_key(self) -> tuple[Any, ...]:
        return tuple(
            (v.value, "") if isinstance(v, enum.Enum) else (0, "" if v is None else v)
            for v in self._to_tuple()
        )

    def __hash__(self) -> int:
        return hash((type(self), *self._to_tuple()))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, AclBinding)
        return self._to_tuple() == other._to_tuple()

    def __lt__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, AclBinding)
        return self._sort_key() < other._sort_key()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(restype={self.restype.name},name={self.name},"
            f"resource_pattern_type={self.resource_pattern_type.name},principal={self.principal},"
            f"host={self.host},operation={self.operation.name},"
            f"permission_type={self.permission_type.name})"
        )

    __str__ = __repr__


class AclBindingFilter(AclBinding):
    """Selects ACLs (confluent-kafka's ``AclBindingFilter``), for ``describe_acls`` and
    ``delete_acls``: each field narrows the selection; ``None`` (``name``, ``principal``,
    ``host``) and ANY match every value. With ``ResourcePatternType.MATCH`` and a name it
    selects the ACLs that apply to that resource (literal, ``"*"`` and matching prefixes)."""

    _forbidden: ClassVar[dict[str, frozenset[enum.Enum]]] = {
        "restype": frozenset({ResourceType.UNKNOWN}),
        "resource_pattern_type": frozenset({ResourcePatternType.UNKNOWN}),
        "operation": frozenset({AclOperation.UNKNOWN}),
        "permission_type": frozenset({AclPermissionType.UNKNOWN}),
    }
    _nullable_strings: ClassVar[bool] = True

    def matches(self, acl: AclBinding) -> bool:
        """Whether this filter selects ``acl``, as the broker decides it."""
        if self.name is not None:
            if self.resource_pattern_type == ResourcePatternType.MATCH:
                if acl.resource_pattern_type == ResourcePatternType.PREFIXED:
                    if not self.name.startswith(acl.name or ""):
                        return False
                elif acl.name not in (self.name, "*"):
                    return False
            elif acl.name != self.name:
                return False
        pattern = self.resource_pattern_type
        return (
            pattern in (ResourcePatternType.ANY, ResourcePatternType.MATCH)
            or pattern == acl.resource_pattern_type
        ) and all(
            mine is None
            or mine == theirs
            or mine in (ResourceType.ANY, AclOperation.ANY, AclPermissionType.ANY)
            for mine, theirs in (
                (self.restype, acl.restype),
                (self.principal, acl.principal),
                (self.host, acl.host),
                (self.operation, acl.operation),
                (self.permission_type, acl.permission_type),
            )
        )


# ---- client quotas (alter_client_quotas, describe_client_quotas) ----------------------------


class ClientQuotas(NamedTuple):
    """What ``describe_client_quotas`` returns: every quota entity with its limits, e.g.
    ``({"user": "alice"}, {"producer_byte_rate": 1048576})`` (an entity's keys are ``user``
    and ``client-id``; a value None is the default entity), and, when asked for a user and/or
    client id, the limits that apply to them (``effective``; else None)."""

    quotas: list[tuple[dict[str, str | None], dict[str, float]]]
    effective: dict[str, float] | None


# ---- transactions (list_transactions, describe_transactions) ----------------------------------


class TransactionState(enum.Enum):
    """Where a transactional id is in its life (Kafka's ``TransactionState``): ``EMPTY``
    (initialised, no transaction open), ``ONGOING``, ``PREPARE_COMMIT`` / ``PREPARE_ABORT``
    (decided, markers being written), ``COMPLETE_COMMIT`` / ``COMPLETE_ABORT`` (the last
    transaction's outcome). Values are the proto's ``TransactionState`` numbers."""

    UNKNOWN = 0
    EMPTY = 1
    ONGOING = 2
    PREPARE_COMMIT = 3
    PREPARE_ABORT = 4
    COMPLETE_COMMIT = 5
    COMPLETE_ABORT = 6

    @classmethod
    def of(cls, value: int) -> TransactionState:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True)
class TransactionListing:
    """A transactional id as ``list_transactions`` lists it (Kafka's ``TransactionListing``)."""

    transactional_id: str
    producer_id: int
    state: TransactionState


@dataclass(frozen=True)
class TransactionDescription:
    """A transactional id in detail, as ``describe_transactions`` gives it (Kafka's
    ``TransactionDescription``)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: TransactionState
    transaction_timeout_ms: int
    #: When the open transaction began, ms since the epoch; None if none is open.
    transaction_start_time_ms: int | None
    #: The partitions in the open transaction.
    topic_partitions: list[TopicPartition]
    #: The groups whose offsets are pending in the open transaction.
    groups: list[str]
    #: When the coordinator last changed this id, ms since the epoch.
    last_update_ms: int
