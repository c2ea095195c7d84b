"""The request and result types of :class:`tidelog.AdminClient`: Tidelog's own
(``TopicDescription``, ``GroupDescription``, ...) and those of its confluent-kafka-shaped calls
(``create_topics``, ``list_topics``, ``alter_configs``, ...), with confluent-kafka's names,
fields and constants, so code written against ``confluent_kafka.admin`` reads the same.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    """Kinds of configurable resources, as confluent-kafka numbers them (only TOPIC here)."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    BROKER = 4
    TRANSACTIONAL_ID = 5


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
