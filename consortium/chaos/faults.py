"""Carrying out a schedule's faults on a running harness, and undoing them.

Link faults are contributions: several may cover one link at once (a latency fault on every
link and a loss fault on one), so each link's proxy setting is recomputed from every active
contribution (latencies add up, the tightest bandwidth cap and the highest loss win, stalls
and blackholes hold while any asks for them) and healing one fault leaves the others in force.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

from consortium.chaos.harness import Harness
from consortium.chaos.proxy import NO_FAULTS, LinkFaults
from consortium.chaos.schedule import Fault, Kind

Link = tuple[int, int]


def parse_links(target: str, validators: int) -> list[Link]:
    """`v1->v2`, `v1->*`, `*->v1` or `*` as directed links."""
    if target == "*":
        src, dst = "*", "*"
    else:
        src, sep, dst = target.partition("->")
        if not sep:
            raise ValueError(f"not a link target: {target!r}")
    ids = range(validators)

    def side(s: str) -> list[int]:
        return list(ids) if s == "*" else [int(s.removeprefix("v"))]

    return [(a, b) for a in side(src) for b in side(dst) if a != b]


def combine(parts: list[LinkFaults]) -> LinkFaults:
    if not parts:
        return NO_FAULTS
    caps = [p.bandwidth_bytes_per_s for p in parts if p.bandwidth_bytes_per_s]
    return LinkFaults(latency_ms=sum(p.latency_ms for p in parts),
                      jitter_ms=max(p.jitter_ms for p in parts),
                      bandwidth_bytes_per_s=min(caps) if caps else 0,
                      loss_per_chunk=max(p.loss_per_chunk for p in parts),
                      stalled=any(p.stalled for p in parts),
                      blackholed=any(p.blackholed for p in parts))


@dataclass
class Applied:
    """A fault as carried out: what it resolved to and when (seconds from the start)."""

    fault: Fault
    injected_at_s: float
    resolved: str = ""
    victim: int = -1
    """The validator a node fault hit (-1 for link faults and splits)."""
    healed_at_s: float | None = None
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.fault.to_json(), "resolved": self.resolved,
                "injected_at_s": round(self.injected_at_s, 2),
                "healed_at_s": None if self.healed_at_s is None else round(self.healed_at_s, 2),
                **({"error": self.error} if self.error else {}), **self.notes}


@dataclass
class Injector:
    harness: Harness
    started: float = field(default_factory=time.monotonic)
    _links: dict[int, tuple[list[Link], LinkFaults]] = field(default_factory=dict)
    """Active link contributions by fault index."""

    @property
    def n(self) -> int:
        return self.harness.validators

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def _set_links(self, links: list[Link]) -> None:
        assert self.harness.proxy is not None
        for link in sorted(set(links)):
            parts = [f for covered, f in self._links.values() if link in covered]
            self.harness.proxy.call(op="set", src=link[0], dst=link[1],
                                    faults=combine(parts).__dict__ if parts else {})

    def _contribute(self, index: int, links: list[Link], faults: LinkFaults) -> None:
        self._links[index] = (links, faults)
        self._set_links(links)

    def _withdraw(self, index: int) -> None:
        links, _ = self._links.pop(index, ([], NO_FAULTS))
        self._set_links(links)

    def _backup(self, primary: int, pick: int) -> int:
        backups = [i for i in range(self.n) if i != primary]
        return backups[pick % len(backups)]

    def inject(self, fault: Fault) -> Applied:
        applied = Applied(fault, self.now_s())
        try:
            self._inject(fault, applied)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            applied.error = f"{type(exc).__name__}: {exc}"[:300]
        return applied

    def _inject(self, fault: Fault, applied: Applied) -> None:
        h = self.harness
        k = fault.kind
        if k in (Kind.ISOLATE_PRIMARY, Kind.SIGSTOP_PRIMARY, Kind.SLOW_PRIMARY_LINKS):
            victim = h.primary()
        elif k == Kind.ISOLATE_BACKUP:
            victim = self._backup(h.primary(), int(fault.params.get("pick", 0)))
        elif k in (Kind.KILL9, Kind.PG_STOP, Kind.DISK_FULL):
            victim = int(fault.target.removeprefix("v"))
        else:
            victim = -1
        applied.victim = victim
        if fault.node_fault:
            applied.notes["primary_before"] = f"v{h.primary()}"
        applied.resolved = f"v{victim}" if victim >= 0 else fault.target
        assert h.topology is not None and h.proxy is not None
        if k in (Kind.ISOLATE_PRIMARY, Kind.ISOLATE_BACKUP):
            h.topology.set_link(f"v{victim}", False)
        elif k == Kind.SIGSTOP_PRIMARY:
            if not h.nodes[victim].sigstop():
                raise RuntimeError(f"v{victim} is not running")
        elif k == Kind.SLOW_PRIMARY_LINKS:
            links = [(victim, j) for j in range(self.n) if j != victim]
            links += [(j, victim) for j in range(self.n) if j != victim]
            self._contribute(fault.index, links, LinkFaults(
                latency_ms=int(fault.params["latency_ms"]),
                jitter_ms=int(fault.params.get("jitter_ms", 0))))
        elif k == Kind.KILL9:
            if not h.nodes[victim].kill9():
                raise RuntimeError(f"v{victim} was not running")
        elif k == Kind.PG_STOP:
            h.databases[victim].stop(str(fault.params.get("mode", "fast")))
        elif k == Kind.DISK_FULL:
            applied.notes["filled_bytes"] = h.databases[victim].fill()
        elif k == Kind.SPLIT:
            a, b = (sorted(int(x.removeprefix("v")) for x in side.split(","))
                    for side in fault.target.split("|"))
            links = [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
            self._contribute(fault.index, links, LinkFaults(blackholed=True))
        elif k == Kind.RESET:
            total = 0
            for src, dst in parse_links(fault.target, self.n):
                total += int(h.proxy.call(op="reset", src=src, dst=dst)["reset"])
            applied.notes["connections_reset"] = total
            applied.healed_at_s = self.now_s()
        else:
            self._contribute(fault.index, parse_links(fault.target, self.n),
                             _link_faults(fault))

    def heal(self, applied: Applied) -> None:
        if applied.healed_at_s is not None:
            return
        fault = applied.fault
        h = self.harness
        try:
            # undone even when injecting failed half-way (a disk half filled, a server that
            # stopped but timed out): each undo is harmless when there is nothing to undo
            victim = applied.victim
            k = fault.kind
            if k in (Kind.ISOLATE_PRIMARY, Kind.ISOLATE_BACKUP):
                assert h.topology is not None
                h.topology.set_link(f"v{victim}", True)
            elif k == Kind.SIGSTOP_PRIMARY:
                h.nodes[victim].sigcont()
            elif k == Kind.KILL9:
                h.nodes[victim].start()
            elif k == Kind.PG_STOP:
                if not h.databases[victim].running():
                    h.databases[victim].start()
            elif k == Kind.DISK_FULL:
                db = h.databases[victim]
                db.free()
                if not db.running():  # the server died of it: start it, as systemd would
                    applied.notes["postgres_restarted"] = True
                    db.start()
            else:
                self._withdraw(fault.index)
        except Exception as exc:
            applied.error = (applied.error or "") + f" heal: {type(exc).__name__}: {exc}"[:300]
        applied.healed_at_s = self.now_s()

    def heal_everything(self) -> None:
        """The safety net at the end (and on errors): every link up, every process running and
        continued, every server started, every disk freed, the proxy cleared."""
        h = self.harness
        assert h.topology is not None
        for i in range(self.n):
            h.topology.set_link(f"v{i}", True)
            h.databases[i].free()
            if not h.databases[i].running():
                h.databases[i].start()
            node = h.nodes[i]
            node.signal(signal.SIGCONT)
            node.stopped = False
            if not node.wanted:
                node.start()
        self._links.clear()
        if h.proxy is not None:
            h.proxy.call(op="clear")


def _link_faults(fault: Fault) -> LinkFaults:
    p = fault.params
    if fault.kind == Kind.STALL:
        return LinkFaults(stalled=True)
    return LinkFaults(latency_ms=int(p.get("latency_ms", 0)), jitter_ms=int(p.get("jitter_ms", 0)),
                      bandwidth_bytes_per_s=int(p.get("bandwidth_bytes_per_s", 0)),
                      loss_per_chunk=float(p.get("loss_per_chunk", 0.0)))
