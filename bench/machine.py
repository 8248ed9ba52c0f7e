"""How fast this machine is at the two things the ledger's cost is made of.

Printed before any result so that a reader can tell a slow machine from a slow product: the
Ed25519 verify rate of one core (every record's client signature and every consensus message
is verified), and the latency of one durable PostgreSQL commit (every block is one transaction).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import nacl.signing
import psycopg
from psycopg import sql

VERIFY_SECONDS = 0.5
FSYNC_COMMITS = 100


def ed25519_verifies_per_s(seconds: float = VERIFY_SECONDS) -> float:
    """Single-core pynacl verifications per second (the verifier the validators use)."""
    key = nacl.signing.SigningKey(bytes(range(32)))
    message = os.urandom(32)  # validators verify 32-byte tagged digests
    signed = key.sign(message)
    verify = key.verify_key.verify
    count = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(200):
            verify(signed)
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - t0)


def pg_settings(dsn: str) -> dict[str, str]:
    """The server settings that decide what a commit costs (durability on = fsync and
    synchronous_commit on)."""
    names = ["fsync", "synchronous_commit", "wal_sync_method", "full_page_writes",
             "commit_delay", "shared_buffers", "server_version"]
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                            (names,)).fetchall()
    return {str(k): str(v) for k, v in rows}


def pg_commit_latency_ms(dsn: str, commits: int = FSYNC_COMMITS) -> dict[str, float]:
    """Latency of `commits` single-row INSERT transactions (each one WAL flush), in a scratch
    table of the database `dsn` (which the caller owns and drops)."""
    table = sql.Identifier(f"bench_fsync_{os.getpid()}")
    samples = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int8, data bytea)").format(table))
        try:
            insert = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table)
            payload = os.urandom(128)
            for i in range(commits):
                t0 = time.perf_counter()
                conn.execute(insert, (i, payload))  # autocommit: one transaction, one flush
                samples.append((time.perf_counter() - t0) * 1000)
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(table))
    samples.sort()
    return {"p50": round(statistics.median(samples), 3),
            "p99": round(samples[int(0.99 * (len(samples) - 1))], 3),
            "mean": round(statistics.fmean(samples), 3)}


def describe(dsn: str) -> dict[str, Any]:
    """Everything `bench` prints about the machine before it measures the product."""
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "load_average_1m": round(load[0], 2),
        "ed25519_verifies_per_s_per_core": round(ed25519_verifies_per_s()),
        "pg_commit_latency_ms": pg_commit_latency_ms(dsn),
        "pg_settings": pg_settings(dsn),
    }
