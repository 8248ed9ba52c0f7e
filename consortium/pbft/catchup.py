"""Deciding when a replica is behind and whom to ask for state, without trusting one peer.

A replica learns that others hold a stable checkpoint above its state in two ways:
- *proven*: a quorum of CHECKPOINTs for that sequence number (or a NEW-VIEW carrying them);
- *claimed*: STATUS messages, in which any member states its `stable_seq`. One Byzantine member
  can claim anything (the attack campaign's STATUS with `stable_seq = 2^62` kept an honest replica
  asking that liar alone, forever). So a claim counts only as far as f+1 members back it: the
  target is the (f+1)-th highest claimed stable checkpoint, which at least one honest member
  holds, and every member claiming at least that much is asked in turn.

A STATE-REQUEST names the asker's last executed sequence (`StateRequest.after_seq`); any peer with
a higher stable checkpoint answers, so a liar among the holders costs a tick, not the catch-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATE_REQUEST_FANOUT = 2
"""Holders asked per STATUS tick (rotating through them): one honest answer is enough."""


@dataclass(slots=True)
class CatchUp:
    weak_quorum: int
    claims: dict[int, int] = field(default_factory=dict)
    """Each member's latest claimed stable checkpoint (from its STATUS)."""
    proven_seq: int = 0
    proven_holders: tuple[int, ...] = ()
    rounds: int = 0
    """STATE-REQUEST rounds sent: the rotation through the holders."""

    def claim(self, sender: int, stable_seq: int) -> None:
        self.claims[sender] = stable_seq

    def prove(self, seq: int, holders: tuple[int, ...]) -> None:
        """A quorum certified a stable checkpoint at `seq`; `holders` signed it."""
        if seq > self.proven_seq:
            self.proven_seq = seq
            self.proven_holders = holders

    def forget(self, members: set[int]) -> None:
        """Keep only claims of current members (after an epoch change)."""
        self.claims = {s: c for s, c in self.claims.items() if s in members}

    def target(self, last_executed: int) -> tuple[int, tuple[int, ...]]:
        """(sequence we should catch up to, who may hold it), or (0, ()) when not behind."""
        seq, holders = 0, set[int]()
        if self.proven_seq > last_executed:
            seq, holders = self.proven_seq, set(self.proven_holders)
        ranked = sorted(self.claims.values(), reverse=True)
        if len(ranked) >= self.weak_quorum:
            backed = ranked[self.weak_quorum - 1]
            if backed > last_executed:
                claimers = {s for s, c in self.claims.items() if c >= backed}
                if backed > seq:
                    seq = backed
                holders |= claimers
        return seq, tuple(sorted(holders))

    def next_holders(self, holders: tuple[int, ...]) -> tuple[int, ...]:
        """The holders to ask this round (rotating, so a silent liar is skipped next time)."""
        if not holders:
            return ()
        start = self.rounds % len(holders)
        self.rounds += 1
        ordered = holders[start:] + holders[:start]
        return ordered[:STATE_REQUEST_FANOUT]
