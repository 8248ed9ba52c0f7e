"""Resource counters read before and after the timed window, from outside the validators.

Nothing here needs the validators' cooperation, so the harness measures the product as
shipped:

- CPU: utime+stime of each validator process (all its threads) and of each PostgreSQL backend
  serving a validator database, from /proc/<pid>/stat; the machine's busy time from /proc/stat
  (what is neither ours nor the validators' is other load on a shared machine: noise).
- Bytes on the wire: the kernel's per-socket TCP counters (`ss -tin`: bytes_sent,
  bytes_received) of every established connection to a validator's client or peer port and of
  the validators' PostgreSQL connections. These are real payload bytes on loopback, TLS and
  HTTP/2 framing included. A connection opened and closed inside the window is missed (the
  harness's connections are long-lived).
- PostgreSQL: pg_stat_database (xact_commit, tup_inserted) of the validator databases. A
  backend flushes these at most once a second, so a window's figure is accurate to about a
  second of traffic at each end.
- Validator metrics: the Prometheus counters each validator serves (blocks and records
  committed), to tell how many records the consensus batched per block.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_SS_ADDR = re.compile(r"^\S+\s+\S+\s+(\S+):(\d+)\s+(\S+):(\d+)")
_SS_PIDS = re.compile(r"pid=(\d+)")
_SS_SENT = re.compile(r"\bbytes_sent:(\d+)")
_SS_RECEIVED = re.compile(r"\bbytes_received:(\d+)")
_METRIC = re.compile(r"^(consortium_blocks_committed_total|consortium_records_committed_total"
                     r"|process_cpu_seconds_total) ([0-9.e+]+)$", re.M)


def proc_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of a process (all threads), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class SocketBytes:
    """Per-connection byte counters keyed by (local, remote) address."""

    sockets: dict[tuple[str, str], tuple[int, int, frozenset[int]]] = field(default_factory=dict)
    available: bool = True


def socket_bytes() -> SocketBytes:
    ss = shutil.which("ss")
    if ss is None:
        return SocketBytes(available=False)
    try:
        out = subprocess.run([ss, "-tinpH", "state", "established"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return SocketBytes(available=False)
    result = SocketBytes()
    current: tuple[str, str] | None = None
    pids: frozenset[int] = frozenset()
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            mt = _SS_ADDR.match(line)
            current = None
            if mt is not None:
                current = (f"{mt.group(1)}:{mt.group(2)}", f"{mt.group(3)}:{mt.group(4)}")
                pids = frozenset(int(p) for p in _SS_PIDS.findall(line))
            continue
        if current is None:
            continue
        sent = _SS_SENT.search(line)
        received = _SS_RECEIVED.search(line)
        result.sockets[current] = (int(sent.group(1)) if sent else 0,
                                   int(received.group(1)) if received else 0, pids)
        current = None
    return result


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def wire_bytes(before: SocketBytes, after: SocketBytes, client_ports: set[int],
               peer_ports: set[int], validator_pids: set[int],
               pg_port: int | None) -> dict[str, int] | None:
    """Bytes moved in the window, both directions, counted once per connection (at the end
    that dialled it): client <-> validators, validator <-> validator, validator <-> PostgreSQL."""
    if not (before.available and after.available):
        return None
    out = {"client": 0, "peer": 0, "postgres": 0}
    for key, (sent, received, pids) in after.sockets.items():
        remote = key[1]
        old = before.sockets.get(key, (0, 0, frozenset()))
        delta = max(0, sent - old[0]) + max(0, received - old[1])
        rport = _port(remote)
        if rport in client_ports:
            out["client"] += delta
        elif rport in peer_ports:
            out["peer"] += delta
        elif pg_port is not None and rport == pg_port and pids & validator_pids:
            out["postgres"] += delta
    return out


def scrape_metrics(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in _METRIC.findall(text)}


def pg_database_stats(dsn: str, names: list[str]) -> dict[str, dict[str, int]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT datname, xact_commit, tup_inserted FROM pg_stat_database "
            "WHERE datname = ANY(%s)", (names,)).fetchall()
    return {str(d): {"xact_commit": int(x), "tup_inserted": int(t)} for d, x, t in rows}


def pg_backend_pids(dsn: str, names: list[str]) -> dict[str, list[int]]:
    """PostgreSQL backend processes serving each database (the validators' connections)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT datname, pid FROM pg_stat_activity WHERE datname = ANY(%s) "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            (names,)).fetchall()
    out: dict[str, list[int]] = {}
    for d, pid in rows:
        out.setdefault(str(d), []).append(int(pid))
    return out


@dataclass
class Snapshot:
    """Every counter at one instant."""

    t: float
    validator_cpu: dict[int, float | None]
    pg_backend_cpu: dict[int, float | None]
    bench_cpu: float
    machine: tuple[float, float]
    sockets: SocketBytes
    pg: dict[str, dict[str, int]]
    metrics: dict[int, dict[str, float]]


@dataclass
class Observer:
    """Takes snapshots of one consortium. `pg_backends` is found once, at the first snapshot
    (the validators hold one connection each for their lifetime)."""

    validator_pids: dict[int, int]
    server_dsn: str | None
    databases: list[str]
    metrics_urls: dict[int, str]
    pg_backends: dict[str, list[int]] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        if self.server_dsn is not None and not self.pg_backends:
            try:
                self.pg_backends = pg_backend_pids(self.server_dsn, self.databases)
            except psycopg.Error:
                self.pg_backends = {}
        pg: dict[str, dict[str, int]] = {}
        if self.server_dsn is not None:
            try:
                pg = pg_database_stats(self.server_dsn, self.databases)
            except psycopg.Error:
                pg = {}
        backend_pids = [p for pids in self.pg_backends.values() for p in pids]
        return Snapshot(
            t=time.perf_counter(),
            validator_cpu={rid: proc_cpu_s(pid) for rid, pid in self.validator_pids.items()},
            pg_backend_cpu={pid: proc_cpu_s(pid) for pid in backend_pids},
            bench_cpu=time.process_time(),
            machine=machine_busy_s(),
            sockets=socket_bytes(),
            pg=pg,
            metrics={rid: scrape_metrics(url) for rid, url in self.metrics_urls.items()})


def delta(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots (seconds, CPU seconds, counts)."""
    def d(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    validators = {rid: d(a.validator_cpu.get(rid), b.validator_cpu.get(rid))
                  for rid in b.validator_cpu}
    backends = [d(a.pg_backend_cpu.get(p), b.pg_backend_cpu.get(p)) for p in b.pg_backend_cpu]
    pg = {name: {k: v - a.pg.get(name, {}).get(k, v) for k, v in stats.items()}
          for name, stats in b.pg.items()}
    metric_delta = {rid: {k: v - a.metrics.get(rid, {}).get(k, 0.0) for k, v in m.items()}
                    for rid, m in b.metrics.items()}
    return {
        "seconds": b.t - a.t,
        "validator_cpu_s": validators,
        "pg_backend_cpu_s": sum(x for x in backends if x is not None),
        "bench_cpu_s": b.bench_cpu - a.bench_cpu,
        "machine_busy_s": b.machine[0] - a.machine[0],
        "machine_total_s": b.machine[1] - a.machine[1],
        "pg": pg,
        "metrics": metric_delta,
    }
