"""`consortium chaos`: a seeded fault campaign across real hosts (thin over consortium.chaos)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click


def _duration(value: str) -> float:
    """Seconds, or a number with s/m/h."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        _fail(f"--duration: {value!r} is not a duration (e.g. 120, 120s, 2m, 1h)")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seed", type=int, default=None, help="Seed of the fault schedule and proxy.")
@click.option("--duration", default="120", show_default=True,
              help="How long faults are injected (seconds, or 2m, 20m, 1h).")
@click.option("--validators", type=click.IntRange(4, 10), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Concurrent SDK clients in the client host.")
@click.option("--rate", type=click.FloatRange(0.1, 1000), default=10.0, show_default=True,
              help="Records per second per client, at most.")
@click.option("--recovery-bound", type=click.FloatRange(1, 3600), default=60.0,
              show_default=True,
              help="Seconds after the faults heal within which a new record must commit.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=Path("/tmp"),
              show_default=True, help="Where the run directory cchaos-<run> goes.")
@click.option("--keep", is_flag=True,
              help="Keep the run directory (logs, events, consortium) even when all held; "
                   "it is always kept when something did not.")
@click.option("--cleanup", is_flag=True,
              help="Remove what dead runs left (namespaces, servers, mounts, directories "
                   "named cchaos-*) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def chaos(seed: int | None, duration: str, validators: int, workers: int, rate: float,
          recovery_bound: float, workdir: Path, keep: bool, cleanup: bool,
          as_json: bool) -> None:
    """Run a seeded fault campaign across network namespaces (needs root): partitions, a slow
    primary, kill -9, PostgreSQL outages, a full disk, lossy and slow links, while clients
    submit through the SDK; then check that no acknowledged record was lost, that all chains
    are identical and that `audit verify --all` passes. Exit 1 when anything did not hold."""
    from consortium.chaos import harness

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if cleanup:
        removed = harness.cleanup_stale(workdir)
        text = "; ".join(f"{k}: {len(v)}" for k, v in removed.items())
        click.echo(json.dumps(removed, indent=2) if as_json else f"removed {text}")
        return
    if seed is None:
        _fail("--seed is required (or --cleanup)")
    seconds = _duration(duration)
    from consortium.chaos.campaign import CampaignConfig, run_campaign
    from consortium.chaos.schedule import WARMUP_S

    if seconds < 2 * WARMUP_S:
        _fail(f"--duration must be at least {2 * WARMUP_S:.0f} s")
    reason = harness.unavailable_reason()
    if reason is not None:
        _fail(f"cannot run a campaign here: {reason}")
    config = CampaignConfig(seed, seconds, validators, workers, rate, recovery_bound,
                            workdir=workdir, keep=keep)
    try:
        report = run_campaign(config, _say)
    except KeyboardInterrupt:
        _fail("interrupted; everything the run made was removed (--keep keeps its "
              "directory)", 130)
    except (harness.HarnessError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else _summary(report))
    sys.exit(0 if report["ok"] else 1)


def _summary(r: dict[str, Any]) -> str:
    lines = [f"seed {r['seed']}, {r['duration_s']:.0f} s, {r['validators']} validators: "
             f"{r['faults_injected']} faults injected ({r['fault_errors']} failed to inject)",
             f"acknowledged {r['acknowledged']}, lost {r['lost']}, chains identical "
             f"{r['chains_identical']}, audit ok {r['audit_ok']}",
             f"longest stall {r['longest_stall_s']} s (outside deliberate unavailability "
             f"{r['longest_stall_outside_unavailability_s']} s), committing again "
             f"{r['recovered_within_s']} s after healing (bound {r['recovery_bound_s']} s)",
             f"validator crashes {r['validator_crash_count']}",
             "OK" if r["ok"] else f"FAILED (run directory kept: {r.get('run_dir')})"]
    return "\n".join(lines)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"consortium chaos: {message}", err=True)
    sys.exit(code)
