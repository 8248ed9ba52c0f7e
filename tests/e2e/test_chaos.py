"""The short fault campaign (CI's 2-minute run of `consortium chaos`): every kind of fault the
schedule has, on 4 validators on their own hosts, and nothing acknowledged may be lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from consortium.chaos import schedule
from consortium.chaos.harness import unavailable_reason

UNAVAILABLE = unavailable_reason()
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(UNAVAILABLE is not None,
                                 reason=f"needs root, `ip netns` and PostgreSQL 15 binaries: "
                                        f"{UNAVAILABLE}")]

SEED = 18
DURATION_S = 120
WALL_S_MAX = 240


def test_two_minute_campaign_loses_nothing() -> None:
    planned = schedule.generate(SEED, DURATION_S, 4)
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "chaos", "--seed", str(SEED),
                           "--duration", str(DURATION_S), "--json"],
                          capture_output=True, text=True, timeout=WALL_S_MAX + 120)
    assert proc.stdout, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    summary = {k: v for k, v in report.items() if k != "faults"}
    print(json.dumps(summary, indent=2))
    assert "chaos:" in proc.stderr, "progress lines on stderr"
    assert report["faults_scheduled"] == len(planned)
    assert report["faults_injected"] == len(planned), [
        f for f in report["faults"] if f.get("error")]
    assert {f["kind"] for f in report["faults"]} == {str(f.kind) for f in planned}
    assert report["acknowledged"] > 100
    assert report["lost"] == 0, report["lost_by_validator"]
    assert report["chains_identical"], report["divergence"] or report["receipt_mismatches"]
    assert report["audit_ok"], report["audit"]
    assert report["recovered_within_s"] is not None
    assert report["recovered_within_s"] <= report["recovery_bound_s"]
    assert report["ok"] and proc.returncode == 0
    assert report["elapsed_s"] <= WALL_S_MAX
