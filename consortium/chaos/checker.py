"""What must hold after the faults heal, checked against each validator's own database.

- every acknowledged record (a receipt the SDK verified) is stored by every honest validator;
- every acknowledged receipt's block is the block each validator holds at that height (an
  acknowledged block that was later replaced would be a fork);
- all chains are identical: the same block hash at every height up to the lowest head.

The databases are read directly, through each host's Unix socket, so a validator that does
not answer gRPC is still checked. The comparisons are pure functions (tested on synthetic
disagreements); `read_ledger` is the only I/O.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

LOST_IDS_SHOWN_MAX = 20


@dataclass(frozen=True)
class Ack:
    record_id: str
    height: int
    block_hash: str
    t: float
    """time.time() of the acknowledgement."""


@dataclass
class Events:
    acks: list[Ack] = field(default_factory=list)
    errors: int = 0
    unknown: int = 0
    """Requests still unacknowledged when the load stopped (may or may not have committed)."""


def read_events(path: Path) -> Events:
    out = Events()
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash of the load generator
        if e.get("event") == "ack":
            out.acks.append(Ack(str(e["record_id"]), int(e["height"]), str(e["block_hash"]),
                                float(e["t"])))
        elif e.get("event") == "error":
            out.errors += 1
        elif e.get("event") == "unknown":
            out.unknown += 1
    return out


@dataclass(frozen=True)
class Ledger:
    hashes: list[bytes]
    """Block hash at height h is hashes[h-1]."""
    records: frozenset[str]
    """Which of the asked record ids it stores."""


def read_ledger(dsn: str, record_ids: Iterable[str]) -> Ledger:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = conn.execute("SELECT height, hash FROM blocks ORDER BY height").fetchall()
        hashes = []
        for expected, (height, block_hash) in enumerate(rows, start=1):
            if height != expected:
                break  # a gap: the chain is only what is contiguous from genesis
            hashes.append(bytes(block_hash))
        present = conn.execute("SELECT record_id FROM entries WHERE record_id = ANY(%s)",
                               (list(record_ids),)).fetchall()
    return Ledger(hashes, frozenset(r[0] for r in present))


@dataclass(frozen=True)
class ChainComparison:
    identical: bool
    heights: dict[int, int]
    common_height: int
    """The lowest head: heights 1..common_height are compared."""
    divergence: dict[str, Any] | None
    """The first height where they differ, with each validator's hash."""


def compare_chains(chains: dict[int, list[bytes]]) -> ChainComparison:
    heights = {i: len(c) for i, c in chains.items()}
    common = min(heights.values(), default=0)
    for h in range(common):
        seen = {i: c[h] for i, c in chains.items()}
        if len(set(seen.values())) > 1:
            return ChainComparison(False, heights, common, {
                "height": h + 1, "hashes": {f"v{i}": b.hex() for i, b in sorted(seen.items())}})
    return ChainComparison(True, heights, common, None)


def lost_records(acks: list[Ack], ledgers: dict[int, Ledger]) -> dict[int, list[str]]:
    """Per validator, the acknowledged record ids it does not store."""
    return {i: sorted({a.record_id for a in acks} - set(ledger.records))
            for i, ledger in ledgers.items()}


def receipt_mismatches(acks: list[Ack], ledgers: dict[int, Ledger]) -> list[dict[str, Any]]:
    """Acknowledged receipts whose block is not the block a validator holds at that height
    (only heights the validator has: a lagging one is `lost_records`' business)."""
    out = []
    for a in acks:
        for i, ledger in sorted(ledgers.items()):
            if a.height <= len(ledger.hashes) and ledger.hashes[a.height - 1].hex() != \
                    a.block_hash:
                out.append({"record_id": a.record_id, "height": a.height, "validator": f"v{i}",
                            "receipt_block": a.block_hash,
                            "held_block": ledger.hashes[a.height - 1].hex()})
    return out


def longest_gap(times: list[float], start: float, end: float,
                exclude: Sequence[tuple[float, float]] = ()) -> tuple[float, float]:
    """The longest interval in [start, end] without an acknowledgement, ignoring intervals
    that overlap one of `exclude` (deliberate unavailability): (length s, offset s from
    `start`)."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    best, at = 0.0, 0.0
    for a, b in itertools.pairwise(points):
        if any(a < x_end and x_start < b for x_start, x_end in exclude):
            continue
        if b - a > best:
            best, at = b - a, a - start
    return best, at


class EventTail:
    """Follows the load generator's events file while it grows (for progress and for the
    first acknowledgement after the faults heal)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.acknowledged = 0
        self.errors = 0
        self.last_ack_t: float | None = None

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") == "ack":
                self.acknowledged += 1
                self.last_ack_t = float(e["t"])
            elif e.get("event") == "error":
                self.errors += 1


@dataclass(frozen=True)
class Verdict:
    acknowledged: int
    lost: dict[int, list[str]]
    mismatches: list[dict[str, Any]]
    chains: ChainComparison

    @property
    def lost_count(self) -> int:
        """Acknowledged records missing from at least one validator."""
        return len({r for ids in self.lost.values() for r in ids})

    def to_json(self) -> dict[str, Any]:
        return {"acknowledged": self.acknowledged, "lost": self.lost_count,
                "lost_by_validator": {f"v{i}": {"count": len(ids),
                                                "ids": ids[:LOST_IDS_SHOWN_MAX]}
                                      for i, ids in sorted(self.lost.items()) if ids},
                "receipt_mismatches": self.mismatches[:LOST_IDS_SHOWN_MAX],
                "chains_identical": self.chains.identical and not self.mismatches,
                "chain_heights": {f"v{i}": h for i, h in sorted(self.chains.heights.items())},
                "common_height": self.chains.common_height,
                "divergence": self.chains.divergence}


def check(acks: list[Ack], ledgers: dict[int, Ledger]) -> Verdict:
    return Verdict(len({a.record_id for a in acks}), lost_records(acks, ledgers),
                   receipt_mismatches(acks, ledgers),
                   compare_chains({i: ledger.hashes for i, ledger in ledgers.items()}))
