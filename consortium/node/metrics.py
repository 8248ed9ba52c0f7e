"""Prometheus metrics of a validator (served over HTTP on `listen_metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

up = Gauge("consortium_up", "1 while the validator serves")
height = Gauge("consortium_height", "Height of the last block in this validator's ledger")
view = Gauge("consortium_view", "Current PBFT view")
epoch = Gauge("consortium_epoch", "Current validator-set epoch")
blocks_committed = Counter("consortium_blocks_committed_total", "Blocks executed and stored")
records_committed = Counter("consortium_records_committed_total", "Records committed")
view_changes = Counter("consortium_view_changes_total", "Views entered after the first")
peer_faults = Counter("consortium_peer_faults_total",
                      "Invalid messages received from peers (ignored)")
screening = Gauge("consortium_records_screening",
                  "Records by screening status (pending-screening is the screening backlog)",
                  ["status"])
peer_connected = Gauge("consortium_peer_connected", "1 while the link to a peer is up", ["peer"])
submit_latency = Histogram("consortium_submit_latency_seconds",
                           "SubmitRecord: request received to commit receipt",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def peer_state(peer: int, connected: bool) -> None:
    peer_connected.labels(peer=str(peer)).set(1 if connected else 0)
outages = Counter("consortium_database_outages_total",
                  "Times the validator lost its database and stopped serving until it returned")
tls_cert_expiry_days = Gauge("consortium_tls_cert_expiry_days",
                             "Days until this validator's TLS certificate expires")
postgres_rows = Gauge("consortium_postgres_rows_written",
                      "Rows this validator wrote to PostgreSQL for blocks (since start)")
postgres_bytes = Gauge("consortium_postgres_payload_bytes_written",
                       "Request bytes this validator wrote to PostgreSQL for blocks (since start)")
