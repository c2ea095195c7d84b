"""gRPC channels to the broker, with the options every client needs."""

from __future__ import annotations

import grpc

# Batches are up to 1 MiB and a subscribe response carries up to fetch.max.bytes plus one
# batch; leave generous headroom over gRPC's 4 MiB default receive limit.
_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
    # A restarted broker is reachable again within a second, not after gRPC's default
    # reconnect backoff of up to 2 minutes: in a cluster it may be the partition's leader again.
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def aio_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=_OPTIONS)


def sync_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target, options=_OPTIONS)
