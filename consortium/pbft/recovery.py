"""Recovery from durable state: rebuild a replica from what its driver persisted.

Runs once, from `Replica.__init__`, before `start()`: it writes the replica's consensus state
(snapshot, executed prefix, its own signatures in `_own`, slots, view) and discards any action
the replay produced (a restart re-sends nothing; retransmission does that). It may touch every
field of the replica, but only here, before the replica has emitted anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consortium.pbft import messages as m
from consortium.pbft.catchup import CatchUp
from consortium.pbft.slots import VOTE_TYPE
from consortium.pbft.state import batch_root, verify_epoch_history

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


@dataclass(frozen=True, slots=True)
class ExecutedBatch:
    """A batch the application durably applied, as the driver hands it back on recovery."""

    seq: int
    pre_prepare: m.SignedMessage
    """Its proposal header."""
    certificate: tuple[m.SignedMessage, ...]
    requests: tuple[m.Request, ...]


@dataclass(frozen=True, slots=True)
class Recovered:
    """Everything a driver persisted, handed back when a replica restarts."""

    snapshot: m.Snapshot | None = None
    snapshot_proof: tuple[m.SignedMessage, ...] = ()
    executed: tuple[ExecutedBatch, ...] = ()
    messages: tuple[m.SignedMessage, ...] = ()


def with_new_view_pre_prepares(messages: Iterable[m.SignedMessage]
                               ) -> Iterable[m.SignedMessage]:
    """Persisted messages, with the PRE-PREPAREs a NEW-VIEW carries listed after it: for a new
    primary they are its own signatures, which a restart must honour like any other."""
    for msg in messages:
        yield msg
        if isinstance(msg.body, m.NewView):
            yield from msg.body.pre_prepares


def recover(rep: Replica, rec: Recovered) -> None:
    """Rebuild from what the driver persisted: stable snapshot, executed batches after it,
    every message this replica signed (so it never signs a conflicting one), and the
    batch of every proposal it accepted (persisted with the proposal before its PREPARE
    left: a prepared batch must survive even if every replica that holds it restarts,
    or a view change that re-proposes it could never execute)."""
    if rec.snapshot is not None:
        configs = verify_epoch_history(rep.genesis, rec.snapshot.epochs, rep.chain_id,
                                       rep._verifier)
        if configs is None:
            raise ValueError("persisted snapshot has an unverifiable epoch history")
        snap = rec.snapshot
        rep.adopt_snapshot(snap, rec.snapshot_proof)
        rep.config = configs[-1]
        rep._catchup = CatchUp(rep.config.weak_quorum)
        rep._next_seq = snap.seq + 1
    for batch in sorted(rec.executed, key=lambda e: e.seq):
        if batch.seq <= rep.last_executed:
            continue
        pp = batch.pre_prepare.body
        if not isinstance(pp, m.PrePrepare):
            raise ValueError("persisted executed batch lacks its pre-prepare")
        rep._execute(batch.seq, pp.view, pp.digest, batch.requests, batch.pre_prepare,
                     batch.certificate, replay=True)
        # Keep what proves the batch until the next stable checkpoint: a lagging peer may
        # need this certificate retransmitted, and a view change may need it as a proof.
        slot = rep._slot(batch.seq)
        slot.remember_header(batch.pre_prepare)
        if not any(r.is_stub for r in batch.requests):  # stubs are never sent on
            slot.remember_batch(pp.root, batch.requests)
        for c in batch.certificate:
            if isinstance(c.body, m.Commit):
                slot.commits.setdefault((c.body.view, c.sender, c.body.digest), c)
    rep._out.clear()
    rep._next_seq = max(rep._next_seq, rep.last_executed + 1)
    max_view, active = 0, True
    for msg in with_new_view_pre_prepares(rec.messages):
        b = msg.body
        if isinstance(b, (m.PrePrepare, m.Prepare, m.Commit)):
            if b.epoch != rep.config.epoch:
                continue
            if msg.sender == rep.id:
                rep._own[(VOTE_TYPE[type(b)], b.epoch, b.view, b.seq)] = b.digest
                if b.view > max_view or (b.view == max_view and not active):
                    max_view, active = b.view, True
                if isinstance(b, m.PrePrepare):
                    rep._next_seq = max(rep._next_seq, b.seq + 1)
                    rep._batcher.last_proposal_ms = max(rep._batcher.last_proposal_ms,
                                                        b.timestamp_ms)
            if b.seq <= rep.last_executed or not rep._in_window(b.seq):
                continue
            slot = rep._slot(b.seq)
            if isinstance(b, m.PrePrepare):
                slot.remember_header(msg)
                if msg.batch is not None and batch_root(msg.batch) == b.root:
                    slot.remember_batch(b.root, msg.batch)
                if b.view >= slot.view:
                    slot.pre_prepare = dataclasses.replace(msg, batch=None)
            elif isinstance(b, m.Prepare):
                slot.prepares.setdefault((b.view, msg.sender, b.digest), msg)
            else:
                slot.commits.setdefault((b.view, msg.sender, b.digest), msg)
        elif isinstance(b, m.ViewChange) and b.epoch == rep.config.epoch:
            if msg.sender == rep.id and b.new_view > max_view:
                max_view, active = b.new_view, False
                rep._view_changes.setdefault(b.new_view, {})[rep.id] = msg
        elif (isinstance(b, m.NewView) and b.epoch == rep.config.epoch
              and (b.new_view > max_view or (b.new_view == max_view and not active))):
            max_view, active = b.new_view, True
            rep._new_view_msg = msg
    rep.view = max_view
    rep.view_active = active
    nv = None if rep._new_view_msg is None else rep._new_view_msg.body
    if isinstance(nv, m.NewView) and (not rep.view_active or nv.new_view != rep.view):
        rep._new_view_msg = None
    rep._out.clear()
