"""Tidelog: a Python client for a gRPC-native partitioned commit log.

- :class:`Producer` / :class:`Consumer` / :class:`AdminClient`: synchronous, shaped like
  confluent-kafka's (dict configs with Kafka's key names, ``poll``, ``flush``, delivery
  callbacks, consumer groups with ``subscribe(on_assign=, on_revoke=)``).
- :mod:`tidelog.aio`: :class:`~tidelog.aio.AIOProducer` and :class:`~tidelog.aio.AIOConsumer`
  for asyncio, on ``grpc.aio``.
- :mod:`tidelog.tracing`: OpenTelemetry spans and W3C trace context in record headers (a
  no-op without ``opentelemetry``; ``pip install tidelog[otel]``).

Keys are partitioned exactly as Kafka and the Rust SDK do (murmur2), so Python and Rust
producers agree, and Python and Rust consumers can share one consumer group.

confluent-kafka's names are here too (``Message`` accessors, ``KafkaError``,
``KafkaException``, ``TopicPartition``, ``OFFSET_BEGINNING``, ``TIMESTAMP_CREATE_TIME``, and in
:mod:`tidelog.admin` ``NewTopic``, ``NewPartitions``, ``ConfigResource``, ...), so a
confluent-kafka program runs with ``import tidelog as confluent_kafka``.
"""

from . import admin, tracing
from .admin import AdminClient
from .admin_types import (
    RESOURCE_BROKER,
    RESOURCE_GROUP,
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
    NewPartitions,
    NewTopic,
    PartitionMetadata,
    PartitionReset,
    ResourcePatternType,
    ResourceType,
    TopicDescription,
    TopicMetadata,
)
from .consumer import Consumer
from .errors import (
    AuthenticationError,
    AuthorizationError,
    ClosedError,
    ConfigError,
    DeliveryTimeoutError,
    ErrorCode,
    FatalError,
    GroupNotEmptyError,
    IllegalGenerationError,
    KafkaError,
    KafkaException,
    OffsetOutOfRangeError,
    ProducerFencedError,
    QueueFullError,
    RetriableError,
    TidelogError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
    kafka_error,
)
from .partitioner import murmur2, partition_for_key
from .producer import Producer
from .types import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    OFFSET_STORED,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    TIMESTAMP_NOT_AVAILABLE,
    Message,
    TopicPartition,
)

__all__ = [
    "OFFSET_BEGINNING",
    "OFFSET_END",
    "OFFSET_INVALID",
    "OFFSET_STORED",
    "RESOURCE_BROKER",
    "RESOURCE_GROUP",
    "RESOURCE_TOPIC",
    "TIMESTAMP_CREATE_TIME",
    "TIMESTAMP_LOG_APPEND_TIME",
    "TIMESTAMP_NOT_AVAILABLE",
    "AclBinding",
    "AclBindingFilter",
    "AclOperation",
    "AclPermissionType",
    "AdminClient",
    "AlterConfigOpType",
    "AuthenticationError",
    "AuthorizationError",
    "BrokerMetadata",
    "ClientQuotas",
    "ClosedError",
    "ClusterDescription",
    "ClusterMetadata",
    "ConfigEntry",
    "ConfigError",
    "ConfigResource",
    "ConfigSource",
    "Consumer",
    "DeletedRecords",
    "DeliveryTimeoutError",
    "ErrorCode",
    "FatalError",
    "GroupDescription",
    "GroupListing",
    "GroupNotEmptyError",
    "IllegalGenerationError",
    "KafkaError",
    "KafkaException",
    "Message",
    "NewPartitions",
    "NewTopic",
    "OffsetOutOfRangeError",
    "PartitionMetadata",
    "PartitionReset",
    "Producer",
    "ProducerFencedError",
    "QueueFullError",
    "ResourcePatternType",
    "ResourceType",
    "RetriableError",
    "TidelogError",
    "TopicDescription",
    "TopicExistsError",
    "TopicMetadata",
    "TopicPartition",
    "UnknownGroupError",
    "UnknownTopicError",
    "admin",
    "kafka_error",
    "murmur2",
    "partition_for_key",
    "tracing",
]
__version__ = "0.1.0"
