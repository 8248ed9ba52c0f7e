"""Command line for the simulator.

    python -m consortium.sim --validators 4 --byzantine 1 --scenario equivocating-primary \
        --seeds 500 --seed-start 1 --json
    python -m consortium.sim --list-scenarios
    python -m consortium.sim --scenario partition --seed-start 17 --seeds 1 --trace
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from consortium.sim.scenarios import SCENARIOS, build


def run_one(args: tuple[str, int, int, int, bool]) -> dict[str, Any]:
    name, seed, validators, byzantine, trace = args
    result = build(name, seed, validators, byzantine, trace=trace).run()
    return {"scenario": name, "seed": seed, "ok": result.ok,
            "safety_violations": result.safety_violations,
            "liveness_failure": result.liveness_failure, "live_at_ms": result.live_at_ms,
            "stats": result.stats, "trace": result.trace if trace else []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m consortium.sim",
        description="Deterministic PBFT cluster simulation: seeded faults, safety and liveness "
                    "checks. A failing seed reproduces alone with --seeds 1 --seed-start SEED.")
    ap.add_argument("--validators", type=int, default=4, help="n (default 4)")
    ap.add_argument("--byzantine", type=int, default=1,
                    help="Byzantine replicas in Byzantine scenarios, at most f (default 1)")
    ap.add_argument("--scenario", default="all", help="a scenario name, or 'all' (default)")
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    ap.add_argument("--seed-start", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--trace", action="store_true",
                    help="print the message trace of failing runs (use with one seed)")
    ap.add_argument("--list-scenarios", action="store_true", help="list scenarios and exit")
    args = ap.parse_args(argv)

    if args.list_scenarios:
        for s in SCENARIOS.values():
            kind = "byzantine" if s.byzantine else "benign"
            print(f"{s.name:<22} {kind:<10} {s.description}")
        return 0
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        if name not in SCENARIOS:
            ap.error(f"unknown scenario {name!r}; see --list-scenarios")
    if args.validators < 1 or args.seeds < 1 or args.jobs < 1:
        ap.error("--validators, --seeds and --jobs must be positive")
    if args.byzantine < 0 or 3 * args.byzantine + 1 > args.validators:
        ap.error(f"--byzantine {args.byzantine} exceeds f for n = {args.validators}")

    work = [(name, seed, args.validators, args.byzantine, args.trace) for name in names
            for seed in range(args.seed_start, args.seed_start + args.seeds)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_one, work, chunksize=4))
    else:
        results = [run_one(w) for w in work]

    summary: dict[str, Any] = {"runs": len(results), "safety_violations": 0,
                               "liveness_failures": 0, "validators": args.validators,
                               "byzantine": args.byzantine, "scenarios": {},
                               "failing_seeds": []}
    for r in results:
        per = summary["scenarios"].setdefault(
            r["scenario"], {"runs": 0, "safety_violations": 0, "liveness_failures": 0,
                            "view_changes": 0, "state_transfers": 0})
        per["runs"] += 1
        per["view_changes"] += r["stats"]["view_changes"]
        per["state_transfers"] += r["stats"]["state_transfers"]
        if r["safety_violations"]:
            per["safety_violations"] += 1
            summary["safety_violations"] += 1
        elif r["liveness_failure"]:
            per["liveness_failures"] += 1
            summary["liveness_failures"] += 1
        if not r["ok"]:
            summary["failing_seeds"].append({
                "scenario": r["scenario"], "seed": r["seed"],
                "safety": r["safety_violations"], "liveness": r["liveness_failure"],
                "reproduce": f"python -m consortium.sim --validators {args.validators} "
                             f"--byzantine {args.byzantine} --scenario {r['scenario']} "
                             f"--seeds 1 --seed-start {r['seed']} --trace"})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, per in summary["scenarios"].items():
            print(f"{name:<22} runs={per['runs']:<5} safety_violations="
                  f"{per['safety_violations']:<3} liveness_failures={per['liveness_failures']}")
        for f in summary["failing_seeds"]:
            print(f"FAIL {f['scenario']} seed={f['seed']}: {f['safety'] or f['liveness']}")
            print(f"  reproduce with: {f['reproduce']}")
    if args.trace:
        for r in results:
            if not r["ok"] or len(results) == 1:
                print(f"--- trace of {r['scenario']} seed {r['seed']} ---", file=sys.stderr)
                print("\n".join(r["trace"]), file=sys.stderr)
    return 0 if summary["safety_violations"] == 0 and summary["liveness_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
