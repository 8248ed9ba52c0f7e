"""The simulator matrix: every scenario, n = 4 and n = 7, many seeds; plus regression seeds.

Each run checks safety at every execution and liveness after faults heal (see
consortium/sim/checkers.py). A failure names the command that reproduces it alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consortium.sim.scenarios import SCENARIOS, build

SEEDS = int(os.environ.get("SIM_SEEDS", "100"))
MATRIX = [(4, 1), (7, 2)]


def _run(validators: int, byzantine: int, scenario: str, seeds: range) -> list[str]:
    failures = []
    for seed in seeds:
        result = build(scenario, seed, validators, byzantine).run()
        if not result.ok:
            problem = result.safety_violations or [str(result.liveness_failure)]
            failures.append(
                f"seed {seed}: {problem[0]}\n  reproduce with: python -m consortium.sim "
                f"--validators {validators} --byzantine {byzantine} --scenario {scenario} "
                f"--seeds 1 --seed-start {seed} --trace")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize(("validators", "byzantine"), MATRIX, ids=["n4f1", "n7f2"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_is_safe_and_live(validators: int, byzantine: int, scenario: str) -> None:
    """Safety (agreement, validity, at-most-once, certificates) and liveness for SIM_SEEDS seeds."""
    failures = _run(validators, byzantine, scenario, range(1, SEEDS + 1))
    assert not failures, "\n".join(failures)


def _regression_seeds() -> list[tuple[int, int, str, int]]:
    path = Path(__file__).with_name("regression_seeds.txt")
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            n, b, scenario, seed = line.split()
            out.append((int(n), int(b), scenario, int(seed)))
    return out


@pytest.mark.parametrize(("validators", "byzantine", "scenario", "seed"), _regression_seeds())
def test_regression_seed(validators: int, byzantine: int, scenario: str, seed: int) -> None:
    """Seeds that once exposed a bug stay green."""
    failures = _run(validators, byzantine, scenario, range(seed, seed + 1))
    assert not failures, "\n".join(failures)


def test_a_seed_replays_identically() -> None:
    """Determinism: the same seed gives the same trace, byte for byte, and the same counters."""
    first = build("swarm", 7, 4, 1, trace=True).run()
    second = build("swarm", 7, 4, 1, trace=True).run()
    assert first.trace == second.trace
    assert first.stats == second.stats
    assert len(first.trace) > 100


def test_different_seeds_explore_different_runs() -> None:
    a = build("lossy-network", 1, 4, 1).run()
    b = build("lossy-network", 2, 4, 1).run()
    assert a.stats != b.stats


def test_crashes_lose_blocks_written_without_waiting_and_the_chain_recovers() -> None:
    """A round that only executes stores its blocks without waiting for the disk; a crash
    loses them (whole, and only those). Seed 6 of crash-points crashes replicas holding such
    blocks: they execute them again and every honest ledger still agrees."""
    result = build("crash-points", 6, 4, 1, trace=True).run()
    assert result.ok, result.safety_violations or result.liveness_failure
    assert any("not yet on disk" in line for line in result.trace)
