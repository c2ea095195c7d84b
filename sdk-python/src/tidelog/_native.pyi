# Types of the compiled extension (sdk-python/native, Rust); see tidelog/_accel.py.
from typing import Any

def encode_record(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None, timestamp_ms: int
) -> bytes: ...
def murmur2(data: bytes) -> int: ...
def crc32c(data: bytes) -> int: ...

class OpenBatch:
    count: int
    size: int
    opened: float
    def __init__(self) -> None: ...
    def append(self, encoded: bytes, entry: Any, memory: int, now: float, has_sink: bool) -> None: ...
    def take(self) -> tuple[bytes, list[Any], int, float, int]: ...

class Counts:
    memory_used: int
    pending: int
    def __init__(self) -> None: ...

class Appender:
    appended: int
    def __init__(self, core: Any, new_queue: Any) -> None: ...
    def append(
        self,
        topic: object,
        value: object,
        key: object,
        partition: object,
        timestamp: object,
        sink: object,
    ) -> int | None: ...

def decode_subscribe(
    raw: bytes, topic: str, starts: dict[int, int | None]
) -> tuple[int, int, int, list[Any], int] | None: ...

class Message:
    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 0,
        timestamp_type: int | None = None,
        error: Any = None,
    ) -> None: ...
