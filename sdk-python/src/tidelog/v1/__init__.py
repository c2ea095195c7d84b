"""Generated protobuf and gRPC stubs for tidelog.v1 (scripts/gen-python-stubs.sh; do not edit)."""
