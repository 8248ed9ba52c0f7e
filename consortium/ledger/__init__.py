"""Blocks, records and the deterministic execution of committed batches (no network I/O)."""
