"""The fault schedule of a campaign: a pure function of (seed, duration, validators).

Two tracks run side by side:

- node faults (a validator isolated, stopped, killed, its database stopped or its disk full, a
  slow primary): at most `budget` = f = (n-1)//3 at once, and each is followed by a settle
  time before its slot is reused, so the cluster never has more faulty validators than PBFT
  tolerates. The exception is a 2/2 split, which deliberately leaves no quorum: it is scheduled
  alone (no node fault overlaps it) and flagged, so that liveness is only asked after it heals;
- link faults (latency and jitter, bandwidth caps, loss, stalls, resets on some peer links):
  they slow messages down but make no validator faulty, so they do not count against f.

Targets that are roles ("primary", "backup") are resolved when the fault is injected (the
primary changes with the view); `pick` then chooses among the candidates deterministically.
Every fault ends (is healed) by `duration_s`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    ISOLATE_PRIMARY = "isolate-primary"
    ISOLATE_BACKUP = "isolate-backup"
    SPLIT = "split-2-2"
    SIGSTOP_PRIMARY = "sigstop-primary"
    SLOW_PRIMARY_LINKS = "slow-primary-links"
    KILL9 = "kill9"
    PG_STOP = "pg-stop"
    DISK_FULL = "disk-full"
    LATENCY = "latency"
    BANDWIDTH = "bandwidth"
    LOSS = "loss"
    STALL = "stall"
    RESET = "reset"


NODE_KINDS = frozenset({Kind.ISOLATE_PRIMARY, Kind.ISOLATE_BACKUP, Kind.SPLIT,
                        Kind.SIGSTOP_PRIMARY, Kind.SLOW_PRIMARY_LINKS, Kind.KILL9,
                        Kind.PG_STOP, Kind.DISK_FULL})
UNAVAILABLE_KINDS = frozenset({Kind.SPLIT})

NODE_WEIGHTS: dict[Kind, int] = {
    Kind.ISOLATE_PRIMARY: 3, Kind.ISOLATE_BACKUP: 3, Kind.SIGSTOP_PRIMARY: 3,
    Kind.SLOW_PRIMARY_LINKS: 2, Kind.KILL9: 4, Kind.PG_STOP: 3, Kind.DISK_FULL: 2,
    Kind.SPLIT: 1}
NODE_DURATION_S: dict[Kind, tuple[float, float]] = {
    Kind.ISOLATE_PRIMARY: (4, 10), Kind.ISOLATE_BACKUP: (4, 10), Kind.SPLIT: (4, 8),
    Kind.SIGSTOP_PRIMARY: (3, 8), Kind.SLOW_PRIMARY_LINKS: (5, 12), Kind.KILL9: (2, 8),
    Kind.PG_STOP: (5, 15), Kind.DISK_FULL: (5, 12)}
LINK_WEIGHTS: dict[Kind, int] = {Kind.LATENCY: 4, Kind.BANDWIDTH: 2, Kind.LOSS: 3,
                                 Kind.STALL: 2, Kind.RESET: 2}
LINK_DURATION_S: dict[Kind, tuple[float, float]] = {
    Kind.LATENCY: (3, 10), Kind.BANDWIDTH: (3, 8), Kind.LOSS: (3, 8), Kind.STALL: (1, 3),
    Kind.RESET: (0, 0)}

SETTLE_S = 4.0
"""After a node fault heals, its slot stays taken this long: a restarted validator catches up
before another one may fail."""
NODE_GAP_S = (1.0, 5.0)
LINK_GAP_S = (0.5, 3.0)
WARMUP_S = 5.0
SPLIT_NOT_AFTER = 0.8
"""No deliberate unavailability in the last fifth of the run."""


@dataclass(frozen=True)
class Fault:
    index: int
    kind: Kind
    at_s: float
    duration_s: float
    target: str
    """`primary`, `backup`, `v<i>`, or for link faults `v<i>->v<j>`, `v<i>->*`, `*->v<i>`,
    `*`; for a split, the two groups `v0,v1|v2,v3`."""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s

    @property
    def node_fault(self) -> bool:
        return self.kind in NODE_KINDS

    @property
    def deliberate_unavailability(self) -> bool:
        return self.kind in UNAVAILABLE_KINDS

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "kind": str(self.kind), "at_s": self.at_s,
                "duration_s": self.duration_s, "target": self.target,
                "params": self.params,
                "deliberate_unavailability": self.deliberate_unavailability}


def budget(validators: int) -> int:
    """f: how many validators may be faulty at once."""
    return (validators - 1) // 3


def _weighted(rng: random.Random, weights: dict[Kind, int]) -> Kind:
    kinds = sorted(weights)
    return rng.choices(kinds, weights=[weights[k] for k in kinds])[0]


def _node_fault(rng: random.Random, kind: Kind, at_s: float, duration_s: float,
                validators: int) -> tuple[str, dict[str, Any]]:
    ids = list(range(validators))
    if kind in (Kind.ISOLATE_PRIMARY, Kind.SIGSTOP_PRIMARY):
        return "primary", {}
    if kind == Kind.SLOW_PRIMARY_LINKS:
        return "primary", {"latency_ms": rng.randint(300, 800), "jitter_ms": rng.randint(0, 200)}
    if kind == Kind.ISOLATE_BACKUP:
        return "backup", {"pick": rng.randrange(validators - 1)}
    if kind == Kind.SPLIT:
        rng.shuffle(ids)
        half = validators // 2
        a, b = sorted(ids[:half]), sorted(ids[half:])
        return ",".join(f"v{i}" for i in a) + "|" + ",".join(f"v{i}" for i in b), {}
    target = f"v{rng.randrange(validators)}"
    if kind == Kind.PG_STOP:
        return target, {"mode": rng.choice(["fast", "immediate"])}
    return target, {}


def _link_target(rng: random.Random, validators: int) -> str:
    shape = rng.randrange(4)
    a, b = rng.sample(range(validators), 2)
    return [f"v{a}->v{b}", f"v{a}->*", f"*->v{a}", "*"][shape]


def _link_params(rng: random.Random, kind: Kind) -> dict[str, Any]:
    if kind == Kind.LATENCY:
        return {"latency_ms": rng.randint(5, 150), "jitter_ms": rng.randint(0, 100)}
    if kind == Kind.BANDWIDTH:
        return {"bandwidth_bytes_per_s": rng.choice([50_000, 100_000, 250_000, 500_000])}
    if kind == Kind.LOSS:
        return {"loss_per_chunk": round(rng.uniform(0.01, 0.1), 3)}
    return {}


def _ceil_ds(t: float) -> float:
    """Round up to a tenth of a second (never before a slot frees up)."""
    return math.ceil(round(t * 10, 6)) / 10


def generate(seed: int, duration_s: float, validators: int) -> list[Fault]:
    """The faults of a campaign, ordered by start time."""
    if validators < 4:
        raise ValueError("a fault campaign needs at least 4 validators (f >= 1)")
    if duration_s < 2 * WARMUP_S:
        raise ValueError(f"a campaign lasts at least {2 * WARMUP_S:.0f} s")
    f = budget(validators)
    node_rng = random.Random(f"{seed}/node")
    link_rng = random.Random(f"{seed}/link")
    raw: list[tuple[Kind, float, float, str, dict[str, Any]]] = []
    busy_until: list[float] = []
    """End (plus settle) of each node fault still holding a slot."""
    t = WARMUP_S
    while True:
        t += node_rng.uniform(*NODE_GAP_S)
        kind = _weighted(node_rng, NODE_WEIGHTS)
        busy_until = [end for end in busy_until if end > t]
        if kind in UNAVAILABLE_KINDS:
            t = max([t, *busy_until])  # alone: after every other node fault
            if t > duration_s * SPLIT_NOT_AFTER:
                kind = Kind.KILL9
        if kind not in UNAVAILABLE_KINDS and len(busy_until) >= f:
            t = max(t, sorted(busy_until)[len(busy_until) - f])
        duration = round(node_rng.uniform(*NODE_DURATION_S[kind]), 1)
        t = _ceil_ds(t)
        if t + duration > duration_s:
            break
        target, params = _node_fault(node_rng, kind, t, duration, validators)
        raw.append((kind, t, duration, target, params))
        end = round(t + duration + SETTLE_S, 1)
        busy_until = [e for e in busy_until if e > t] + [end]
        if kind in UNAVAILABLE_KINDS:
            t = end  # nothing else starts until the quorum is back
    t = WARMUP_S
    while True:
        t = round(t + link_rng.uniform(*LINK_GAP_S), 1)
        kind = _weighted(link_rng, LINK_WEIGHTS)
        duration = round(link_rng.uniform(*LINK_DURATION_S[kind]), 1)
        if t + duration > duration_s:
            break
        raw.append((kind, t, duration, _link_target(link_rng, validators),
                    _link_params(link_rng, kind)))
        t += duration
    raw.sort(key=lambda r: (r[1], str(r[0])))
    return [Fault(i, kind, at, d, target, params)
            for i, (kind, at, d, target, params) in enumerate(raw)]


def concurrent_node_faults(faults: list[Fault], at_s: float) -> list[Fault]:
    """The node faults holding a slot at `at_s` (running, or healed less than SETTLE_S ago)."""
    return [f for f in faults
            if f.node_fault and f.at_s <= at_s < round(f.end_s + SETTLE_S, 1)]


def max_concurrent_node_faults(faults: list[Fault], *, deliberate: bool = False) -> int:
    """Most node faults holding slots at once (counting deliberate unavailability only with
    `deliberate`): at most `budget` for a valid schedule."""
    counted = [f for f in faults if f.node_fault and (deliberate or
                                                      not f.deliberate_unavailability)]
    starts = sorted({f.at_s for f in counted})
    return max((len(concurrent_node_faults(counted, t)) for t in starts), default=0)
