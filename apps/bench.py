"""`consortium bench`: the end-to-end benchmark (thin over bench/harness.py).

The harness lives in the source tree's `bench/` package, which is not part of the installed
wheel (benchmarks are run from a checkout): when `bench` is not importable, the checkout this
module sits in is put on the path.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click


def _import_harness() -> Any:
    try:
        import bench.harness as harness
    except ImportError:
        root = Path(__file__).resolve().parent.parent
        if not (root / "bench" / "harness.py").exists():
            raise click.ClickException("the benchmark harness (bench/) ships with the source "
                                       "tree: run `consortium bench` from a checkout") from None
        sys.path.insert(0, str(root))
        import bench.harness as harness
    return harness


def _validators(value: str) -> list[int]:
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("a validator count or a comma-separated list (4,7,10)"
                                 ) from None
    if not counts or any(not 1 <= n <= 100 for n in counts):
        raise click.BadParameter("validator counts are 1 to 100")
    return counts


def _json_safe(value: Any) -> Any:
    """NaN (no sample) is not JSON: print null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--validators", "validators", default="4", show_default=True,
              help="Validators, or a sweep: 4,7,10 (one fresh consortium each).")
@click.option("--records", type=click.IntRange(1), default=50_000, show_default=True,
              help="Records to submit (prepared before the window unless --client-inline).")
@click.option("--clients", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Concurrent SDK clients (closed loop: each waits for its receipt).")
@click.option("--payload-bytes", type=click.IntRange(16, 512 * 1024), default=1024,
              show_default=True, help="Plaintext payload per record (encrypted by the client).")
@click.option("--rate", type=click.FloatRange(min=0.1), default=None,
              help="Open loop: offered records/s on a fixed schedule (latency at that load).")
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=None,
              help="Stop submitting after this many seconds (default: when records run out).")
@click.option("--warmup", "warmup_s", type=click.FloatRange(min=0), default=3.0,
              show_default=True, help="Seconds excluded from the steady-state figures.")
@click.option("--dsn", default=None,
              help="PostgreSQL server for a fresh consortium's databases (default: "
                   "$CONSORTIUM_DSN, else postgresql://postgres@127.0.0.1:5432/postgres, else "
                   "the embedded server).")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Benchmark this running consortium instead of a fresh one.")
@click.option("--client-inline", is_flag=True,
              help="Build, encrypt and sign each record inside the timed window.")
@click.option("--stream", type=click.IntRange(0, 65536), default=0, show_default=True,
              help="Closed loop: each client keeps this many records in flight on a "
                   "SubmitStream (0: one SubmitRecord call at a time).")
@click.option("--envelope", type=click.IntRange(0, 16384), default=0, show_default=True,
              help="Records per client signature (one envelope, one request); 0: one "
                   "signature per record.")
@click.option("--no-baseline", is_flag=True, help="Skip the unreplicated baseline.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write result.json, the chart and the validators' logs here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def bench(validators: str, records: int, clients: int, payload_bytes: int, rate: float | None,
          duration_s: float | None, warmup_s: float, dsn: str | None, directory: Path | None,
          client_inline: bool, stream: int, envelope: int, no_baseline: bool,
          no_progress: bool, out: Path | None, as_json: bool) -> None:
    """Measure committed records/s, latency and cost per record of a consortium, next to the
    unreplicated baseline (see docs/performance.md)."""
    harness = _import_harness()
    cfg = harness.BenchConfig(
        validators=_validators(validators), records=records, clients=clients,
        payload_bytes=payload_bytes, rate=rate, duration_s=duration_s, warmup_s=warmup_s,
        dsn=dsn, directory=directory, out=out, client_inline=client_inline,
        baseline=not no_baseline, progress=not no_progress, stream=stream, envelope=envelope)

    def say(line: str) -> None:
        click.echo(line, err=as_json)

    try:
        result = harness.run(cfg, say)
    except harness.BenchError as exc:
        click.echo(f"consortium bench: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("consortium bench: interrupted (validators stopped, databases dropped)",
                   err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(_json_safe(result), indent=2, sort_keys=True))
