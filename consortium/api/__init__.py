"""Generated protobuf/gRPC code for the wire contract (see scripts/gen-proto)."""
