"""Checkpoints and garbage collection (paper 4.3).

Every `checkpoint_interval` sequence numbers (and at an epoch boundary) the replica snapshots its
state and votes for it; a quorum of matching votes makes the checkpoint stable, which moves the
low watermark, drops the log below it and, at an epoch boundary, switches the validator set
through the core (`_enter_epoch`). The checkpoint state stays in the core, where state transfer,
view changes and retransmission read it: `stable_seq`, `_stable_proof`, `_stable_snapshot`,
`_snapshots`, `_checkpoint_votes`. This part writes those, prunes slots and `_own` below a
stable checkpoint, records proven targets in `_catchup`, and emits CHECKPOINT votes and
PersistSnapshot.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.errors import ReplicaBug
from consortium.pbft.state import clients_digest, snapshot_digest

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class Checkpoints:
    """Taking, collecting and stabilising checkpoints for one replica (no state of its own)."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica

    def take_checkpoint(self, seq: int, *, replay: bool) -> None:
        """Snapshot the state after executing `seq` and vote for it (at an epoch boundary the
        snapshot opens the next epoch); a replayed execution votes without sending."""
        rep = self._rep
        records = rep._epoch_records
        pending = rep.pending_reconfiguration
        if pending is not None and pending.effective_seq == seq:
            entries = rep._client_table.entries()
            opened = m.EpochRecord(rep.config.epoch + 1, seq, pending.members,
                                   rep.state_digest, clients_digest(entries), ())
            records = (*records, opened)
            pending = None
        snap = m.Snapshot(seq, rep.state_digest, records, rep._client_table.entries(), pending)
        rep._snapshots[seq] = snap
        digest = snapshot_digest(rep.genesis, snap)
        vote = rep._sign(m.Checkpoint(rep.config.epoch, seq, digest))
        rep._checkpoint_votes.setdefault(seq, {})[rep.id] = vote
        if not replay:
            rep._broadcast(vote)
        self.check_stable(seq, digest)

    def on_checkpoint(self, msg: m.SignedMessage, b: m.Checkpoint) -> None:
        """Keep a peer's CHECKPOINT vote, within a bounded window above the stable one."""
        rep = self._rep
        if b.seq <= rep.stable_seq or b.seq > rep.stable_seq + 4 * rep.params.log_window:
            return
        if b.seq not in rep._checkpoint_votes and len(rep._checkpoint_votes) > 4 * (
                rep.params.log_window // rep.params.checkpoint_interval) + 4:
            return  # bounded: far-future checkpoints wait for retransmission
        votes = rep._checkpoint_votes.setdefault(b.seq, {})
        if msg.sender in votes:
            return
        votes[msg.sender] = msg
        self.check_stable(b.seq, b.digest)

    def check_stable(self, seq: int, digest: bytes) -> None:
        """A quorum of votes for our own snapshot makes it stable; for a state we have not
        reached, it proves how far the others are (catch-up)."""
        rep = self._rep
        votes = [v for v in rep._checkpoint_votes.get(seq, {}).values()
                 if isinstance(v.body, m.Checkpoint) and v.body.digest == digest]
        if len(votes) < rep.config.quorum or seq <= rep.stable_seq:
            return
        # A quorum exactly (more may have arrived before our own vote): what VIEW-CHANGEs and
        # state responses carry stays within their size bounds.
        proof = tuple(sorted(votes, key=lambda v: v.sender))[: rep.config.quorum]
        own = rep._snapshots.get(seq)
        if own is not None:
            if snapshot_digest(rep.genesis, own) != digest:
                raise ReplicaBug(f"a quorum certified a different state at checkpoint {seq}")
            self.make_stable(own, proof)
        elif seq > rep.last_executed:
            rep._catchup.prove(seq, tuple(v.sender for v in proof))

    def make_stable(self, snap: m.Snapshot, proof: tuple[m.SignedMessage, ...]) -> None:
        """The checkpoint is stable: garbage-collect the log below it (paper 4.3) and, at an
        epoch boundary, switch to the new validator set."""
        rep = self._rep
        boundary = bool(snap.epochs) and snap.epochs[-1].start_seq == snap.seq and \
            snap.epochs[-1].epoch == rep.config.epoch + 1
        if boundary:
            last = snap.epochs[-1]
            proven = dataclasses.replace(last, proof=proof)
            snap = dataclasses.replace(snap, epochs=(*snap.epochs[:-1], proven))
        rep.stable_seq = snap.seq
        rep._stable_proof = proof
        rep._stable_snapshot = snap
        for s in [s for s in rep._slots if s <= snap.seq]:
            del rep._slots[s]
        for s in [s for s in rep._snapshots if s <= snap.seq]:
            del rep._snapshots[s]
        for s in [s for s in rep._checkpoint_votes if s <= snap.seq]:
            del rep._checkpoint_votes[s]
        rep._own = {k: d for k, d in rep._own.items()
                    if k[3] > snap.seq and k[1] >= rep.config.epoch}
        rep._fetch.forget_through(snap.seq)
        rep._out.append(ev.PersistSnapshot(snap, proof))
        if boundary:
            rep._enter_epoch(snap)
        rep._batcher.maybe_propose()
