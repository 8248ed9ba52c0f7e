"""consortium: a permissioned Byzantine-fault-tolerant ledger for supply-chain provenance and
patient records."""

__version__ = "0.1.0"
