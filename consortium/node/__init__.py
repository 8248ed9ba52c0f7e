"""The validator node: the gRPC service around the PBFT replica and the ledger."""
