"""Tidelog: a Python client for a gRPC-native partitioned commit log.

- :class:`Producer` / :class:`Consumer` / :class:`AdminClient`: synchronous, shaped like
  confluent-kafka's (dict configs with Kafka's key names, ``poll``, ``flush``, delivery
  callbacks, consumer groups with ``subscribe(on_assign=, on_revoke=)``).
- :mod:`tidelog.aio`: :class:`~tidelog.aio.AIOProducer` and :class:`~tidelog.aio.AIOConsumer`
  for asyncio, on ``grpc.aio``.

Keys are partitioned exactly as Kafka and the Rust SDK do (murmur2), so Python and Rust
producers agree, and Python and Rust consumers can share one consumer group.
"""

from .admin import (
    AdminClient,
    ClusterDescription,
    GroupDescription,
    GroupListing,
    PartitionReset,
    TopicDescription,
)
from .consumer import Consumer
from .errors import (
    ClosedError,
    ConfigError,
    DeliveryTimeoutError,
    ErrorCode,
    FatalError,
    GroupNotEmptyError,
    IllegalGenerationError,
    OffsetOutOfRangeError,
    ProducerFencedError,
    RetriableError,
    TidelogError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicError,
)
from .partitioner import murmur2, partition_for_key
from .producer import Producer
from .types import Message, TopicPartition

__all__ = [
    "AdminClient",
    "ClosedError",
    "ClusterDescription",
    "ConfigError",
    "Consumer",
    "DeliveryTimeoutError",
    "ErrorCode",
    "FatalError",
    "GroupDescription",
    "GroupListing",
    "GroupNotEmptyError",
    "IllegalGenerationError",
    "Message",
    "OffsetOutOfRangeError",
    "PartitionReset",
    "Producer",
    "ProducerFencedError",
    "RetriableError",
    "TidelogError",
    "TopicDescription",
    "TopicExistsError",
    "TopicPartition",
    "UnknownGroupError",
    "UnknownTopicError",
    "murmur2",
    "partition_for_key",
]
__version__ = "0.1.0"
