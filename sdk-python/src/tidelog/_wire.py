"""Byte-level encoding shared by producer and consumer: records, batches, compression.

A batch on the wire is an encoded ``tidelog.v1.RecordBatch``: each record is the message's
field 1 (``repeated Record records = 1``), so a batch is just the concatenation of framed
records. The producer encodes each record once, when it is produced, and seals a batch by
joining the bytes; the broker stores those bytes unchanged and serves them back.

The public ``ProduceRequest`` declares ``records`` as a message; to send the already-encoded
batch without decoding and re-encoding it, :func:`produce_request_bytes` serializes the other
fields and appends field 5 as raw bytes. That is the same encoding on the wire (the broker's
own "wire view" of the proto relies on the same identity).

Invariants: :func:`encode_record` produces exactly what protobuf would for the same
``Record`` (checked against the generated code in the tests); decompression never inflates a
payload beyond :data:`MAX_DECOMPRESSED_BYTES`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import lz4.frame
import zstandard

from ._accel import native
from .errors import FatalError
from .v1 import record_pb2, records_service_pb2

#: A corrupt or hostile batch must not exhaust memory (same bound as the Rust SDK).
MAX_DECOMPRESSED_BYTES = 256 << 20
#: Zstandard level (the library default; the Rust SDK uses the same).
ZSTD_LEVEL = 3

# Field tags (field number << 3 | wire type 2 = length-delimited, 0 = varint).
_TAG_BATCH_RECORD = b"\x0a"  # RecordBatch.records = 1
_TAG_KEY = b"\x0a"  # Record.key = 1
_TAG_VALUE = b"\x12"  # Record.value = 2
_TAG_HEADER = b"\x1a"  # Record.headers = 3
_TAG_TIMESTAMP = b"\x20"  # Record.timestamp_ms = 4 (varint)
_NULL_VALUE = b"\x28\x01"  # Record.null_value = 5 (varint), true: a tombstone
_TAG_HEADER_KEY = b"\x0a"  # Header.key = 1
_TAG_HEADER_VALUE = b"\x12"  # Header.value = 2
_TAG_PRODUCE_RECORDS = b"\x2a"  # ProduceRequest.records = 5

_SMALL_VARINTS = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14)]


class Compression(enum.IntEnum):
    """Batch codec; the values are the proto's ``Compression`` numbers."""

    NONE = 0
    LZ4 = 1
    ZSTD = 2

    @classmethod
    def parse(cls, name: str) -> Compression:
        try:
            return {"none": cls.NONE, "lz4": cls.LZ4, "zstd": cls.ZSTD}[name.lower()]
        except KeyError:
            raise ValueError(f"unknown compression {name!r} (expected none, lz4 or zstd)") from None


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if n < (1 << 14):
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


Headers = list[tuple[str, bytes]]


# The last timestamp's encoding: records produced within the same millisecond share it.
_last_ts: tuple[int, bytes] = (0, _TAG_TIMESTAMP + b"\x00")


def _timestamp_field(ts: int) -> bytes:
    global _last_ts
    last = _last_ts  # one read: another thread may replace it meanwhile
    if last[0] != ts:
        last = _last_ts = (ts, _TAG_TIMESTAMP + varint(ts))
    return last[1]


def py_encode_record(
    key: bytes | None, value: bytes | None, headers: Headers | None, timestamp_ms: int
) -> bytes:
    """One record, framed as a ``RecordBatch.records`` element (ready to concatenate). A None
    ``value`` is a tombstone: no value bytes and ``null_value`` set."""
    ts = _timestamp_field(timestamp_ms) if timestamp_ms > 0 else b""
    if not headers and value:
        # The common record: key (or none), value, timestamp.
        if key is None:
            body = b"".join((_TAG_VALUE, varint(len(value)), value, ts))
        else:
            body = b"".join((_TAG_KEY, varint(len(key)), key, _TAG_VALUE, varint(len(value)), value, ts))
        return b"".join((_TAG_BATCH_RECORD, varint(len(body)), body))
    parts: list[bytes] = []
    if key is not None:
        parts += (_TAG_KEY, varint(len(key)), key)
    if value:
        parts += (_TAG_VALUE, varint(len(value)), value)
    if headers:
        for hk, hv in headers:
            kb = hk.encode()
            h = b"".join(
                (
                    (_TAG_HEADER_KEY + varint(len(kb)) + kb) if kb else b"",
                    (_TAG_HEADER_VALUE + varint(len(hv)) + hv) if hv else b"",
                )
            )
            parts += (_TAG_HEADER, varint(len(h)), h)
    parts.append(ts)
    if value is None:
        parts.append(_NULL_VALUE)
    body = b"".join(parts)
    return _TAG_BATCH_RECORD + varint(len(body)) + body


#: :func:`py_encode_record`, compiled when available (:mod:`tidelog._accel`; same bytes).
encode_record: Callable[[bytes | None, bytes | None, Headers | None, int], bytes] = (
    native.encode_record if native is not None else py_encode_record
)


def record_ends(raw: bytes) -> list[int]:
    """Where each record of an encoded (uncompressed) ``RecordBatch`` ends: the byte offset
    after its field, in order. Cutting ``raw`` at one gives two valid batches, which is how a
    batch refused as too large is split without decoding its records (as the Rust SDK's
    ``batch::record_ends``). A payload that is not only record fields is a :class:`FatalError`."""
    ends: list[int] = []
    i, n = 0, len(raw)
    while i < n:
        key, i = _read_varint(raw, i)
        if key != 0x0A:  # field 1 (records), length-delimited
            raise FatalError(f"a sealed batch holds field key {key}, not only records")
        length, i = _read_varint(raw, i)
        i += length
        if i > n:
            raise FatalError("a sealed batch: a record runs past its end")
        ends.append(i)
    return ends


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """The varint at ``buf[i:]`` and the index after it."""
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise FatalError("a sealed batch: a varint runs past its end")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def compress(codec: Compression, raw: bytes) -> bytes:
    """Compresses an encoded batch in the standard frame format of its codec."""
    if codec == Compression.LZ4:
        return bytes(lz4.frame.compress(raw))
    if codec == Compression.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return raw


def decompress(codec: int, data: bytes) -> bytes:
    """Inflates a compressed batch; a corrupt or oversized payload is a :class:`FatalError`."""
    try:
        if codec == Compression.LZ4:
            d = lz4.frame.LZ4FrameDecompressor()
            out = d.decompress(data, max_length=MAX_DECOMPRESSED_BYTES + 1)
        elif codec == Compression.ZSTD:
            out = _zstd_decompress(data)
        elif codec == Compression.NONE:
            return data
        else:
            raise FatalError(f"unknown compression codec {codec}")
    except FatalError:
        raise
    except Exception as e:  # the codec libraries raise their own types
        raise FatalError(f"corrupt compressed batch: {e}") from e
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise FatalError(f"compressed batch inflates beyond {MAX_DECOMPRESSED_BYTES} bytes")
    return bytes(out)


def _zstd_decompress(data: bytes) -> bytes:
    chunks: list[bytes] = []
    total = 0
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as r:
        while total <= MAX_DECOMPRESSED_BYTES:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)


def _crc32c_function() -> Callable[[bytes], int] | None:
    """The CRC-32C of bytes, from the compiled extension or ``google-crc32c`` when either is
    there; None in pure Python without it (a CRC-32C in Python costs more than the rest of a
    record's decode, so that fallback reads batches unchecked)."""
    if native is not None:
        return native.crc32c  # type: ignore[no-any-return]
    try:
        import google_crc32c  # type: ignore[import-not-found]
    except ImportError:
        return None
    return google_crc32c.value  # type: ignore[no-any-return]


_crc32c = _crc32c_function()


def decode_batch(batch: records_service_pb2.Batch) -> list[record_pb2.Record]:
    """The records of a served batch, decompressing if needed. A compressed payload is checked
    against the batch's CRC-32C (when a CRC-32C is at hand, :func:`_crc32c_function`), as the
    Rust SDK and Kafka's consumers check it: a damaged batch is a :class:`FatalError`, not data.
    An uncompressed one arrives parsed, its bytes gone; the compiled decoder checks those
    (``tidelog._native.decode_subscribe``, which checks every uncompressed batch of a response
    before it hands a response with compressed ones to this path)."""
    if batch.WhichOneof("payload") == "compressed_records":
        if _crc32c is not None and _crc32c(batch.compressed_records) != batch.crc32c:
            raise FatalError(f"CRC mismatch in batch at offset {batch.base_offset}")
        raw = decompress(batch.compression, batch.compressed_records)
        try:
            return list(record_pb2.RecordBatch.FromString(raw).records)
        except Exception as e:
            raise FatalError(f"corrupt batch at offset {batch.base_offset}: {e}") from e
    return list(batch.records.records)


def produce_request_bytes(
    header: records_service_pb2.ProduceRequest, payload: bytes, codec: Compression
) -> bytes:
    """Serializes a ProduceRequest whose payload is an already-encoded (or compressed) batch.

    ``header`` carries every field except the payload; the uncompressed batch is appended as
    field 5 verbatim, so the records are never decoded or re-encoded.
    """
    if codec != Compression.NONE:
        header.compressed_records = payload
        return header.SerializeToString()
    return header.SerializeToString() + _TAG_PRODUCE_RECORDS + varint(len(payload)) + payload
