"""The short fault campaign (CI's 2-minute run of `consortium chaos`): every kind of fault the
schedule has, on 4 validators on their own hosts, and nothing acknowledged may be lost."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consortium.chaos import netns, pg, schedule
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


def test_sigterm_mid_run_removes_everything() -> None:
    """A campaign stopped with SIGTERM while validators run leaves no namespace, server,
    mount or directory behind, and says so in one line."""
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "chaos", "--seed", "3",
                             "--duration", "300"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 120
    run_id = None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        found = re.search(r"run ([0-9a-f]{6}):", line)
        run_id = run_id or (found.group(1) if found else None)
        if "chaos:" in line and "faults" in line:
            break
    assert run_id is not None, "".join(lines)
    assert netns.stale_namespaces(f"{netns.PREFIX}{run_id}-")
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert rest.strip().splitlines()[-1].startswith("consortium chaos: interrupted")
    assert netns.stale_namespaces(f"{netns.PREFIX}{run_id}-") == []
    assert pg.mounts_under(f"{netns.PREFIX}{run_id}") == []
    assert not (Path("/tmp") / f"{netns.PREFIX}{run_id}").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"{netns.PREFIX}{run_id}" not in ps
