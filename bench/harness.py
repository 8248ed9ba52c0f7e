"""`consortium bench`: end-to-end throughput, latency and cost of a consortium, next to the
unreplicated baseline, on this machine.

One run (per validator count of a sweep):

1. start a fresh local consortium on its own databases (or use a running one, `--dir`);
2. prepare the records (build, encrypt, sign) unless `--client-inline`;
3. submit them through the SDK, closed loop (`clients` workers) or open loop (`--rate`),
   snapshotting resource counters when the warm-up ends and when the last submission starts:
   everything per record is over that steady-state window;
4. replay the same records through the unreplicated baseline (`bench/baseline.py`) on the
   same PostgreSQL server;
5. stop the validators and drop every database the run created, whatever happened.

The machine's Ed25519 verify rate and PostgreSQL commit latency come first in the output, so a
slow machine is not mistaken for a slow product. Methodology and results: docs/performance.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from bench import baseline, chart, machine, observe, workload
from bench.cluster import (
    BenchError,
    Consortium,
    create_database,
    drop_databases,
    fresh_consortium,
    resolve_server_dsn,
    running_consortium,
    sigterm_as_interrupt,
)
from consortium import process
from consortium.pbft.params import ProtocolParams

TARGETS = {"throughput_rps": 5000.0, "open_loop_rate": 2500.0, "p99_ms": 250.0, "p50_ms": 50.0,
           "replication_efficiency": 0.7, "n7_vs_n4": 0.6}
"""Issue 7's and 13's throughput targets (n = 4, 1 KiB payloads, durability on)."""


@dataclass
class BenchConfig:
    validators: list[int] = field(default_factory=lambda: [4])
    records: int = 50_000
    clients: int = 16
    payload_bytes: int = 1024
    rate: float | None = None
    duration_s: float | None = None
    warmup_s: float = 3.0
    dsn: str | None = None
    directory: Path | None = None
    """A running consortium to target instead of starting one."""
    out: Path | None = None
    client_inline: bool = False
    stream: int = 0
    """Records in flight per client on a SubmitStream (0: one unary SubmitRecord at a time)."""
    envelope: int = 0
    """Records per client signature (one envelope); 0 or 1: one signature per record."""
    baseline: bool = True
    progress: bool = True
    protocol: ProtocolParams = field(default_factory=ProtocolParams)


Say = Callable[[str], None]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if not math.isnan(seconds) else math.nan


def _per_record_ms(cpu_s: float | None, records: int) -> float | None:
    if cpu_s is None or records <= 0:
        return None
    return round(1000 * cpu_s / records, 3)


def timeline(samples: list[workload.Sample], t0: float) -> list[dict[str, float]]:
    """Per second since the first submission: receipts and latency of those receipts."""
    buckets: dict[int, list[float]] = {}
    for s in samples:
        if s.ok:
            buckets.setdefault(int(s.done - t0), []).append(s.done - s.start)
    if not buckets:
        return []
    rows = []
    for sec in range(max(buckets) + 1):
        lat = sorted(buckets.get(sec, []))
        rows.append({"t_s": sec, "committed": len(lat),
                     "p50_ms": _ms(_percentile(lat, 50)) if lat else 0.0,
                     "p99_ms": _ms(_percentile(lat, 99)) if lat else 0.0})
    return rows


class _Progress:
    """tqdm on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="rec", file=sys.stderr, leave=False,
                         dynamic_ncols=True) if enabled else None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _summarise(cfg: BenchConfig, c: Consortium, load: workload.LoadResult,
               window: dict[str, Any], warm_t: float, end_t: float,
               prepare_cpu_s: float, prepared: int) -> dict[str, Any]:
    samples = load.samples
    committed = [s for s in samples if s.ok]
    in_window = [s for s in committed if warm_t <= s.done <= end_t]
    started = sorted(s.done - s.start for s in committed if warm_t <= s.start <= end_t)
    seconds = max(end_t - warm_t, 1e-9)
    n_window = len(in_window)
    validators_cpu = {str(rid): _per_record_ms(cpu, n_window)
                      for rid, cpu in window["validator_cpu_s"].items()}
    known = [v for v in validators_cpu.values() if v is not None]
    attributed = (sum(x for x in window["validator_cpu_s"].values() if x is not None)
                  + window["pg_backend_cpu_s"] + window["bench_cpu_s"])
    metrics = window["metrics"]
    blocks = [mm.get("consortium_blocks_committed_total", 0.0) for mm in metrics.values()]
    recs = [mm.get("consortium_records_committed_total", 0.0) for mm in metrics.values()]
    records_per_block = (sum(recs) / sum(blocks)) if sum(blocks) else None
    pg = window["pg"]
    rows = sum(s["tup_inserted"] for s in pg.values())
    xacts = sum(s["xact_commit"] for s in pg.values())
    n_blocks = sum(blocks) / max(1, len(blocks))
    wire = window.get("wire_bytes")
    request_sizes = [s.request_bytes for s in committed]
    build_cpu = load.build_cpu_s if cfg.client_inline else prepare_cpu_s
    built = len(load.built) if cfg.client_inline else prepared
    return {
        "validators": c.n,
        "chain_id": c.genesis.chain_id,
        "databases": list(c.databases),
        "mode": "open" if cfg.rate else "closed",
        "clients": cfg.clients,
        "rate": cfg.rate,
        "payload_bytes": cfg.payload_bytes,
        "client_inline": cfg.client_inline,
        "records_submitted": len(samples),
        "records_committed": len(committed),
        "records_failed": len(samples) - len(committed),
        "errors": load.errors,
        "throughput_rps": round(n_window / seconds, 1),
        "offered_rps": round(sum(1 for s in samples if warm_t <= s.start <= end_t) / seconds, 1),
        "failed_in_window": sum(1 for s in samples if warm_t <= s.start <= end_t and not s.ok),
        "latency_ms": {"p50": _ms(_percentile(started, 50)), "p95": _ms(_percentile(started, 95)),
                       "p99": _ms(_percentile(started, 99)),
                       "max": _ms(started[-1]) if started else math.nan},
        "window": {"start_s": round(warm_t - load.t0, 2), "end_s": round(end_t - load.t0, 2),
                   "seconds": round(seconds, 2), "records": n_window,
                   "warmup_excluded": warm_t > load.t0,
                   "total_s": round(max((s.done for s in samples), default=load.t0) - load.t0,
                                    2)},
        "open_loop_fell_behind": load.in_flight_capped,
        "cpu_ms_per_record": {
            "per_validator": validators_cpu,
            "validator_mean": round(sum(known) / len(known), 3) if known else None,
            "postgres_backends_total": _per_record_ms(window["pg_backend_cpu_s"], n_window),
            "bench_client_process": _per_record_ms(window["bench_cpu_s"], n_window),
            "machine_total": _per_record_ms(window["machine_busy_s"], n_window),
            "unattributed": _per_record_ms(window["machine_busy_s"] - attributed, n_window),
            "client_prepare": _per_record_ms(build_cpu, built),
        },
        "machine_cpu_busy_fraction": round(window["machine_busy_s"] / window["machine_total_s"],
                                           3) if window["machine_total_s"] else None,
        "wire_bytes_per_record": None if wire is None else {
            "client_validator": round(wire["client"] / n_window) if n_window else None,
            "validator_validator": round(wire["peer"] / n_window) if n_window else None,
            "validator_postgres": round(wire["postgres"] / n_window) if n_window else None,
            "total": round(sum(wire.values()) / n_window) if n_window else None,
            "method": "kernel TCP counters (ss -tin) of the connections, both directions, "
                      "TLS and HTTP/2 framing included"},
        "grpc_request_bytes_mean": round(sum(request_sizes) / len(request_sizes))
        if request_sizes else None,
        "postgres": {"rows_per_s": round(rows / seconds, 1),
                     "rows_per_record": round(rows / n_window / c.n, 3) if n_window else None,
                     "bytes_per_record": round(wire["postgres"] / n_window / c.n)
                     if n_window and wire is not None else None,
                     "per": "validator (all validators' databases divided by n)",
                     "transactions_per_s": round(xacts / seconds, 1),
                     "transactions_per_block": round(xacts / sum(blocks), 2)
                     if sum(blocks) else None},
        "cpu_ms_per_block": {
            "validator_mean": round(1000 * sum(x for x in window["validator_cpu_s"].values()
                                               if x is not None) / c.n / n_blocks, 3)
            if n_blocks else None,
            "blocks": round(n_blocks)},
        "envelope": cfg.envelope,
        "stream": cfg.stream,
        "records_per_block": round(records_per_block, 1) if records_per_block else None,
        "protocol": asdict(c.genesis.protocol),
        "timeline": timeline(samples, load.t0),
    }


async def _measure(cfg: BenchConfig, c: Consortium, say: Say) -> tuple[dict[str, Any], list[Any]]:
    """Prepare, load, observe. Returns the summary and the records (for the baseline)."""
    ids = workload.identities(c.directory, c.genesis, c.fresh)
    clients = workload.make_clients(c.directory, c.genesis, ids, cfg.clients)
    builders = workload.make_clients(c.directory, c.genesis, ids, len(ids))
    factory = workload.RecordFactory(builders, [o.org_id for o in c.genesis.member_orgs],
                                     cfg.payload_bytes, cfg.envelope)
    records = None
    prepare_cpu = 0.0
    if not cfg.client_inline:
        bar = _Progress(cfg.progress, cfg.records, "preparing")
        records, prepare_cpu = workload.prepare(factory, cfg.records, bar.update)
        bar.close()
        say(f"prepared {cfg.records} records (encrypted, signed): "
            f"{1000 * prepare_cpu / max(1, cfg.records):.3f} ms CPU each")
    observer = observe.Observer(c.pids(), c.server_dsn, c.databases, c.metrics_urls())
    pg_port = None
    if c.server_dsn is not None and urlsplit(c.server_dsn).hostname not in (None, ""):
        pg_port = urlsplit(c.server_dsn).port or 5432
    steady_end = asyncio.Event()
    snaps: dict[str, observe.Snapshot] = {}
    bar = _Progress(cfg.progress, cfg.records, f"n={c.n} submitting")

    async def monitor(t0: float) -> None:
        try:
            await asyncio.wait_for(steady_end.wait(), max(0.0, t0 + cfg.warmup_s
                                                          - time.perf_counter()))
        except TimeoutError:
            snaps["warm"] = await asyncio.to_thread(observer.snapshot)
            await steady_end.wait()
        snaps["end"] = await asyncio.to_thread(observer.snapshot)

    snaps["start"] = await asyncio.to_thread(observer.snapshot)
    t0 = time.perf_counter()
    mon = asyncio.create_task(monitor(t0))
    try:
        load = await workload.run(clients, records, factory, cfg.records,
                                  rate=cfg.rate, duration_s=cfg.duration_s,
                                  on_done=lambda s: bar.update(1),
                                  on_steady_end=steady_end.set, stream=cfg.stream)
        steady_end.set()
        await mon
    finally:
        mon.cancel()
        bar.close()
        for cl in clients + builders:
            await cl.close()
    warm = snaps.get("warm", snaps["start"])
    end = snaps["end"]
    window = observe.delta(warm, end)
    window["wire_bytes"] = observe.wire_bytes(warm.sockets, end.sockets, c.client_ports(),
                                              c.peer_ports(), set(observer.validator_pids.values()),
                                              pg_port)
    warm_t = warm.t if "warm" in snaps else load.t0
    summary = _summarise(cfg, c, load, window, warm_t, end.t, prepare_cpu, cfg.records)
    if "warm" not in snaps:
        summary["notes"] = [f"the run ended before the {cfg.warmup_s:g} s warm-up: figures "
                            "include the start-up (not a steady state)"]
    return summary, records if records is not None else load.built


async def _baseline(cfg: BenchConfig, c: Consortium, records: list[Any], batch: int,
                    say: Say) -> dict[str, Any]:
    assert c.server_dsn is not None
    name = f"{c.genesis.chain_id.replace('-', '_')}_baseline"
    dsn = await asyncio.to_thread(create_database, c.server_dsn, name)
    try:
        result = await baseline.run(dsn, c.genesis, records, batch, cfg.duration_s)
    finally:
        await asyncio.to_thread(drop_databases, c.server_dsn, [name])
    say(f"baseline (unreplicated, batch {batch}): {result['baseline_rps']:.0f} records/s")
    return result


def _targets(run: dict[str, Any]) -> dict[str, Any]:
    """Issue 7's targets that this run speaks to (n = 4 only)."""
    if run["validators"] != 4:
        return {}
    out: dict[str, Any] = {}
    lat = run["latency_ms"]
    if run["mode"] == "closed":
        out["throughput_rps>=5000"] = run["throughput_rps"] >= TARGETS["throughput_rps"]
        pg = run["postgres"]
        if pg.get("bytes_per_record") is not None:
            out["postgres_bytes_per_record<=2500"] = pg["bytes_per_record"] <= 2500
        if pg.get("rows_per_record") is not None:
            out["postgres_rows_per_record<=3"] = pg["rows_per_record"] <= 3
    elif run["rate"] and run["rate"] >= TARGETS["open_loop_rate"]:
        out["p99_ms<=250@2500"] = bool(lat["p99"] <= TARGETS["p99_ms"])
        out["p50_ms<=50@2500"] = bool(lat["p50"] <= TARGETS["p50_ms"])
    if run.get("replication_efficiency") is not None:
        out["replication_efficiency>=0.7"] = (run["replication_efficiency"]
                                              >= TARGETS["replication_efficiency"])
    return out


async def _one(cfg: BenchConfig, c: Consortium, say: Say) -> dict[str, Any]:
    run, records = await _measure(cfg, c, say)
    say(describe_run(run))
    if cfg.baseline and c.server_dsn is not None and records:
        batch = round(run["records_per_block"] or c.genesis.protocol.batch_requests_max)
        base = await _baseline(cfg, c, records, batch, say)
        run["baseline"] = base
        run["baseline_rps"] = base["baseline_rps"]
        run["replication_efficiency"] = round(run["validators"] * run["throughput_rps"]
                                              / base["baseline_rps"], 4) \
            if base["baseline_rps"] else None
    else:
        run["baseline_rps"] = None
        run["replication_efficiency"] = None
    run["targets"] = _targets(run)
    return run


def describe_run(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    cpu = run["cpu_ms_per_record"]
    wire = run["wire_bytes_per_record"] or {}
    offered = (f" at {run['offered_rps']:.0f}/s offered ({run['failed_in_window']} failed)"
               if run["rate"] else "")
    return (f"n={run['validators']}: {run['throughput_rps']:.1f} committed records/s{offered} over "
            f"{run['window']['seconds']:.1f} s ({run['records_committed']}/"
            f"{run['records_submitted']} committed); latency p50 {lat['p50']} ms, p95 "
            f"{lat['p95']} ms, p99 {lat['p99']} ms; CPU/record: validator "
            f"{cpu['validator_mean']} ms, postgres {cpu['postgres_backends_total']} ms, client "
            f"{cpu['bench_client_process']} ms; wire {wire.get('total')} B/record; "
            f"{run['records_per_block']} records/block; PostgreSQL "
            f"{run['postgres']['rows_per_s']:.0f} rows/s")


@contextlib.contextmanager
def _consortium(cfg: BenchConfig, n: int) -> Iterator[Consortium]:
    if cfg.directory is not None:
        yield running_consortium(cfg.directory)
        return
    with fresh_consortium(n, cfg.dsn, protocol=cfg.protocol,
                          keep_dir=None if cfg.out is None else cfg.out / f"logs-n{n}") as c:
        yield c


def run(cfg: BenchConfig, say: Say) -> dict[str, Any]:
    """Run the benchmark (a sweep when several validator counts are given); write result.json
    and the charts to `cfg.out`. Returns what `--json` prints."""
    if cfg.directory is not None and len(cfg.validators) > 1:
        raise BenchError("a sweep (--validators 4,7,...) starts its own consortia; drop --dir")
    runs = []
    machine_info: dict[str, Any] | None = None
    with sigterm_as_interrupt():
        for n in cfg.validators:
            with _consortium(cfg, n) as c:
                if cfg.directory is not None and c.n != n:
                    say(f"note: {cfg.directory} has {c.n} validators (not {n})")
                if machine_info is None:
                    machine_info = _machine(c, say)
                say(f"n={c.n}: {'fresh' if c.fresh else 'running'} consortium "
                    f"{c.genesis.chain_id} ready")
                runs.append(asyncio.run(_one(cfg, c, say)))
    assert machine_info is not None
    result: dict[str, Any]
    if len(runs) == 1:
        result = dict(runs[0])
        result["machine"] = machine_info
    else:
        first = runs[0]["throughput_rps"] or math.nan
        result = {"machine": machine_info, "sweep": runs,
                  "throughput_vs_first": {str(r["validators"]): round(r["throughput_rps"] / first,
                                                                       3) for r in runs}}
        by_n = {r["validators"]: r for r in runs}
        if 4 in by_n and 7 in by_n and by_n[4]["throughput_rps"]:
            result["n7_vs_n4"] = round(by_n[7]["throughput_rps"] / by_n[4]["throughput_rps"], 3)
    result["command"] = command_line(cfg)
    if cfg.out is not None:
        _write_outputs(cfg.out, result, runs, say)
    return result


def command_line(cfg: BenchConfig) -> str:
    """The `consortium bench` command that reproduces this configuration."""
    parts = ["consortium", "bench", "--validators", ",".join(map(str, cfg.validators)),
             "--records", str(cfg.records), "--clients", str(cfg.clients),
             "--payload-bytes", str(cfg.payload_bytes), "--warmup", f"{cfg.warmup_s:g}"]
    if cfg.rate is not None:
        parts += ["--rate", f"{cfg.rate:g}"]
    if cfg.duration_s is not None:
        parts += ["--duration", f"{cfg.duration_s:g}"]
    if cfg.stream:
        parts += ["--stream", str(cfg.stream)]
    if cfg.envelope:
        parts += ["--envelope", str(cfg.envelope)]
    if cfg.client_inline:
        parts.append("--client-inline")
    if not cfg.baseline:
        parts.append("--no-baseline")
    if cfg.directory is not None:
        parts += ["--dir", str(cfg.directory)]
    return " ".join(parts)


def _machine(c: Consortium, say: Say) -> dict[str, Any]:
    """Machine figures, measured in a scratch database on the consortium's server."""
    if c.server_dsn is None:
        raise BenchError("cannot tell which PostgreSQL server the consortium uses")
    name = f"{c.genesis.chain_id.replace('-', '_')}_machine"
    dsn = create_database(c.server_dsn, name)
    try:
        info = machine.describe(dsn)
    finally:
        drop_databases(c.server_dsn, [name])
    lat = info["pg_commit_latency_ms"]
    pgs = info["pg_settings"]
    say(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), load {info['load_average_1m']}; "
        f"Ed25519 {info['ed25519_verifies_per_s_per_core']} verifies/s/core; PostgreSQL commit "
        f"(fsync) p50 {lat['p50']} ms, p99 {lat['p99']} ms (fsync={pgs.get('fsync')}, "
        f"synchronous_commit={pgs.get('synchronous_commit')})")
    return info


def _write_outputs(out: Path, result: dict[str, Any], runs: list[dict[str, Any]],
                   say: Say) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if not chart.available():
        say("matplotlib is not installed: no chart (pip install 'consortium[bench]')")
        return
    for r in runs:
        name = "chart.png" if len(runs) == 1 else f"chart-n{r['validators']}.png"
        chart.write(out / name, r)
    say(f"wrote {out / 'result.json'} and the chart{'s' if len(runs) > 1 else ''} to {out}")


def check_dsn(dsn: str | None) -> str | None:
    """The server a fresh consortium will use (for messages)."""
    server = resolve_server_dsn(dsn)
    return None if server is None else process.redact(server)
