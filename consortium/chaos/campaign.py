"""A fault campaign: build the hosts, run the seeded schedule under load, heal, check.

The timeline: the load starts, the schedule's faults are injected and healed at their times
(the supervisor restarting validators that exit unasked meanwhile), then everything is healed
for certain and the campaign measures how long the consortium takes to commit again (bounded by
`recovery_bound_s`). The load stops, the validators get `converge_timeout_s` to reach the same
head, and the checker reads every validator's database; `audit verify --all` runs from the
client host. The report is one JSON object (`Report.to_json`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.chaos import checker, schedule
from consortium.chaos.faults import Applied, Injector
from consortium.chaos.harness import Harness
from consortium.chaos.pg import FS_SIZE_MIB_DEFAULT

PROGRESS_INTERVAL_S = 5.0
TICK_S = 0.2


@dataclass(frozen=True)
class CampaignConfig:
    seed: int
    duration_s: float
    validators: int = 4
    workers: int = 4
    rate_per_worker: float = 10.0
    recovery_bound_s: float = 60.0
    converge_timeout_s: float = 120.0
    workdir: Path = Path("/tmp")
    keep: bool = False
    fs_size_mib: int = FS_SIZE_MIB_DEFAULT


def run_campaign(config: CampaignConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run one campaign and return its report (`ok` False when anything did not hold)."""
    faults = schedule.generate(config.seed, config.duration_s, config.validators)
    started = time.monotonic()
    harness = Harness(config.validators, config.seed, config.workdir, config.fs_size_mib,
                      keep=config.keep, log=progress)
    report: dict[str, Any] = {"seed": config.seed, "duration_s": config.duration_s,
                              "validators": config.validators, "run_id": harness.run_id}
    ok = False
    with harness:
        harness.start_load(config.workers, config.rate_per_worker)
        tail = checker.EventTail(harness.events_file)
        t0_wall = time.time()
        injector = Injector(harness)
        applied, crashes = _run_schedule(harness, injector, faults, tail, config, progress)
        injector.heal_everything()
        heal_wall = time.time()
        recovered = _wait_recovery(harness, tail, heal_wall, config.recovery_bound_s, crashes,
                                   t0_wall)
        progress("chaos: faults healed; "
                 + (f"committing again after {recovered:.1f} s" if recovered is not None
                    else f"NOT committing {config.recovery_bound_s:.0f} s after healing")
                 + "; stopping the load")
        harness.stop_load()
        load_end = time.time()
        converged = harness.wait_converged(
            config.converge_timeout_s, lambda: _note_crashes(harness, crashes, t0_wall))
        events = checker.read_events(harness.events_file)
        ledgers = harness.ledgers([a.record_id for a in events.acks])
        verdict = checker.check(events.acks, ledgers)
        progress(f"chaos: checked {verdict.acknowledged} acknowledged records on "
                 f"{len(ledgers)} validators; running audit verify --all")
        audit = harness.audit()
        windows = [(t0_wall + a.injected_at_s, t0_wall + (a.healed_at_s or a.injected_at_s))
                   for a in applied if a.fault.deliberate_unavailability]
        stall, stall_at = checker.longest_gap([a.t for a in events.acks], t0_wall, load_end)
        stall_out, _ = checker.longest_gap([a.t for a in events.acks], t0_wall, load_end,
                                           windows)
        report.update(
            faults_scheduled=len(faults),
            faults_injected=sum(1 for a in applied if a.error is None),
            fault_errors=sum(1 for a in applied if a.error is not None),
            faults=[a.to_json() for a in applied],
            **verdict.to_json(),
            submit_errors=events.errors, unknown_outcome=events.unknown,
            audit_ok=bool(audit["ok"]), audit=audit,
            longest_stall_s=round(stall, 2), longest_stall_at_s=round(stall_at, 2),
            longest_stall_outside_unavailability_s=round(stall_out, 2),
            recovered_within_s=None if recovered is None else round(recovered, 2),
            recovery_bound_s=config.recovery_bound_s, converged=converged,
            validator_crashes={f"v{i}": [c for c in crashes if c["validator"] == i]
                               for i in range(config.validators)},
            validator_crash_count=len(crashes),
            postgres_restarted_after_disk_full=sum(
                1 for a in applied if a.notes.get("postgres_restarted")))
        ok = (report["lost"] == 0 and report["chains_identical"] and report["audit_ok"]
              and recovered is not None)
        report["ok"] = ok
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        if config.keep or not ok:
            harness.keep = True
            report["run_dir"] = str(harness.run_dir)
    return report


def _run_schedule(harness: Harness, injector: Injector, faults: list[schedule.Fault],
                  tail: checker.EventTail, config: CampaignConfig,
                  progress: Callable[[str], None]) -> tuple[list[Applied], list[dict[str, Any]]]:
    timeline = sorted([(f.at_s, 1, f) for f in faults] + [(f.end_s, 0, f) for f in faults],
                      key=lambda e: (e[0], e[1], e[2].index))
    active: dict[int, Applied] = {}
    applied: list[Applied] = []
    crashes: list[dict[str, Any]] = []
    next_progress = 0.0
    t0_wall = time.time()
    while timeline or injector.now_s() < config.duration_s:
        now = injector.now_s()
        while timeline and timeline[0][0] <= now:
            _, is_start, fault = timeline.pop(0)
            if is_start:
                done = injector.inject(fault)
                applied.append(done)
                if done.healed_at_s is None:
                    active[fault.index] = done
            elif fault.index in active:
                injector.heal(active.pop(fault.index))
        _note_crashes(harness, crashes, t0_wall)
        if now >= next_progress:
            tail.poll()
            next_progress = now + PROGRESS_INTERVAL_S
            kinds = ",".join(f"{a.fault.kind}({a.resolved})" for a in active.values()) or "-"
            heights = harness.heights()
            progress(f"chaos: {now:5.0f}/{config.duration_s:.0f} s  faults "
                     f"{len(applied)}/{len(faults)}  active {kinds}  acked "
                     f"{tail.acknowledged}  errors {tail.errors}  height "
                     f"{max(heights.values(), default=0)}  crashes {len(crashes)}")
        wait = TICK_S if not timeline else min(TICK_S, max(0.0, timeline[0][0] - now))
        time.sleep(wait)
    return applied, crashes


def _note_crashes(harness: Harness, crashes: list[dict[str, Any]], t0_wall: float) -> None:
    for replica_id, returncode in harness.supervise():
        crashes.append({"validator": replica_id, "returncode": returncode,
                        "at_s": round(time.time() - t0_wall, 1)})


def _wait_recovery(harness: Harness, tail: checker.EventTail, heal_wall: float,
                   bound_s: float, crashes: list[dict[str, Any]], t0_wall: float) -> float | None:
    """Seconds from the heal to the first acknowledgement after it, or None past the bound."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        tail.poll()
        if tail.last_ack_t is not None and tail.last_ack_t > heal_wall:
            return tail.last_ack_t - heal_wall
        _note_crashes(harness, crashes, t0_wall)
        time.sleep(TICK_S)
    return None
