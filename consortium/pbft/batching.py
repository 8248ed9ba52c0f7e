"""Adaptive batching at the primary: when to propose, and which pending requests go into the
next batch (paper 4.2; docs/consensus.md, batching).

This part owns the batching policy's state: whether a partial batch is held for the next
execution (`_held_for_execution`) and the last proposal's timestamp (`last_proposal_ms`, which
recovery raises to the stamps this replica persisted, so that a restart never stamps backwards).
It reads the replica's queue of pending requests, view, watermarks, executed prefix and clock,
arms or cancels the BATCH timer, and proposes through the core's `_propose`, which signs,
persists and sends the PRE-PREPARE. It never changes the order or contents of what was proposed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.errors import ReplicaBug

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class Batcher:
    """The primary's batching policy for one replica."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self.last_proposal_ms = 0
        self._held_for_execution = False
        """Primary: a partial batch was held because `partial_batches_in_flight_max` batches
        were in flight; the next execution proposes it without a further batch delay."""

    def maybe_propose(self, *, force: bool = False) -> None:
        """Paper 4.2: the primary assigns sequence numbers to batches, keeping at most
        `pipeline_depth` batches in flight and never passing the high watermark.

        Adaptive batching: with nothing in flight a request is proposed at once (a quiet
        consortium answers fast); while batches are in flight a partial batch waits up to
        `batch_delay_ms` to fill, and beyond `partial_batches_in_flight_max` it waits for an
        execution (Nagle-style), so a busy consortium forms big batches; a full batch never
        waits."""
        rep = self._rep
        p = rep.params
        queue = rep.pool.queue
        while (rep.is_primary and rep.view_active and queue
               and rep._next_seq <= rep._high_watermark()
               and rep._next_seq - 1 - rep.last_executed < p.pipeline_depth):
            full = len(queue) >= p.batch_requests_max or queue.bytes > p.batch_bytes_max
            in_flight = rep._next_seq - 1 - rep.last_executed
            if not full:
                if in_flight >= min(p.partial_batches_in_flight_max, p.pipeline_depth):
                    # The next execution proposes what has accumulated by then.
                    self._held_for_execution = True
                    return
                if in_flight > 0 and not force and not self._held_for_execution \
                        and p.batch_delay_ms > 0:
                    if not rep._timer_armed(ev.TimerKind.BATCH):
                        rep._set_timer(ev.TimerKind.BATCH, p.batch_delay_ms)
                    return
            batch: list[m.Request] = []
            size = 0
            for r in queue.values():
                if len(batch) >= p.batch_requests_max or size + r.size_bytes > p.batch_bytes_max:
                    break
                batch.append(r)
                size += r.size_bytes
            if not batch:  # one request larger than batch_bytes_max: refused at entry
                raise ReplicaBug("queued request exceeds the batch size limit")
            rep._propose(tuple(batch))
            force = False
            self._held_for_execution = False
        if not queue:
            self._held_for_execution = False
            rep._cancel_timer(ev.TimerKind.BATCH)
            self.fill_to_epoch_boundary()

    def fill_to_epoch_boundary(self) -> None:
        """A validator-set change takes effect at a checkpoint: with no client traffic to fill
        the sequence numbers up to it, the primary fills them with empty batches, so that the
        change never waits for traffic."""
        rep = self._rep
        pending = rep.pending_reconfiguration
        while (pending is not None and rep.is_primary and rep.view_active
               and not rep.pool.queue
               and rep._next_seq <= min(pending.effective_seq, rep._high_watermark())
               and rep._next_seq - 1 - rep.last_executed < rep.params.pipeline_depth):
            rep._propose(())

    def proposal_time(self) -> int:
        """The primary's timestamp for its next proposal: its clock, never going backwards."""
        rep = self._rep
        if rep._clock is None:
            return 0
        self.last_proposal_ms = max(self.last_proposal_ms, rep._clock.now_ms())
        return self.last_proposal_ms
