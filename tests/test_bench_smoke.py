"""`consortium bench` end to end on a few hundred records: a fresh 4-validator consortium on
the test PostgreSQL, the real SDK, the baseline, the JSON and the files.

Only the shape and the bookkeeping are checked (every submitted record committed, every
database dropped afterwards): never a timing, which depends on the machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from apps.bench import bench

ADMIN_DSN = os.environ.get("CONSORTIUM_TEST_PG_ADMIN_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
RECORDS = 300

try:  # registered by tests/e2e/conftest.py when that directory is collected too
    pytestmark = [pytest.mark.e2e]
except pytest.fail.Exception:  # this file alone under --strict-markers
    pytestmark = []


def _databases() -> set[str]:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


@pytest.fixture(scope="module")
def postgres() -> None:
    try:
        _databases()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {ADMIN_DSN}: {exc}")


def test_bench_smoke(postgres: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(bench, [
        "--validators", "4", "--records", str(RECORDS), "--clients", "8",
        "--payload-bytes", "512", "--warmup", "0.5", "--dsn", ADMIN_DSN, "--no-progress",
        "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    for key in ("throughput_rps", "latency_ms", "baseline_rps", "replication_efficiency",
                "validators", "cpu_ms_per_record", "wire_bytes_per_record", "postgres",
                "records_per_block", "machine", "timeline", "command"):
        assert key in data, key
    assert set(data["latency_ms"]) >= {"p50", "p95", "p99"}
    assert data["validators"] == 4
    assert data["records_submitted"] == RECORDS
    assert data["records_committed"] == RECORDS
    assert data["records_failed"] == 0
    assert data["throughput_rps"] > 0
    assert data["baseline"]["records"] == RECORDS
    assert data["replication_efficiency"] is not None
    assert set(data["cpu_ms_per_record"]["per_validator"]) == {"0", "1", "2", "3"}
    assert data["machine"]["ed25519_verifies_per_s_per_core"] > 0

    assert json.loads((out / "result.json").read_text())["records_committed"] == RECORDS
    try:  # the chart needs the optional matplotlib
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (out / "chart.png").stat().st_size > 0

    # Only the bench's own databases: tests on other workers create and drop theirs meanwhile.
    assert len(data["databases"]) == 4, data["databases"]
    assert not set(data["databases"]) & _databases(), "the bench left its databases behind"
