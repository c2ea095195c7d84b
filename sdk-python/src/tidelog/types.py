"""Value types the application sees: consumed/delivered records and topic-partitions."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A partition of a topic, optionally with an offset (``commit``, ``seek``, ``committed``)."""

    topic: str
    partition: int
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A record: as consumed (``Consumer.poll``) or as delivered (``on_delivery``).

    ``offset`` is the record's position in its partition; -1 for a record produced with
    acks=none (the broker does not answer). ``timestamp`` is the producer's create time in
    milliseconds since the Unix epoch, or the broker's append time when the producer set none.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0

    def header(self, name: str) -> bytes | None:
        """The value of the first header called ``name``, if any."""
        for k, v in self.headers:
            if k == name:
                return v
        return None
