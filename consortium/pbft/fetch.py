"""Batch fetch: ask peers for batches this replica lacks, and answer their BATCH-REQUESTs.

Proposal headers travel without their batches in view changes, the log and retransmission, so a
replica can hold a header or a commit certificate without the batch (docs/consensus.md 4.4). This
part owns the answer throttles (`_batches_sent`, `_batch_bytes_sent`). It reads the replica's
slots, configuration, parameters and tick, records whom it asked in each slot (`fetch_asked`,
`fetch_attempts`), and emits only BATCH-REQUESTs and the headers with batches that answer them,
through the replica's send helpers; it changes no consensus state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from consortium.pbft import messages as m
from consortium.pbft.slots import Slot, header

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class BatchFetch:
    """Fetching missing batches and answering BATCH-REQUESTs for one replica."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self._batches_sent: dict[tuple[int, int], int] = {}
        """(peer, seq) -> tick of the last batch sent in answer to a BATCH-REQUEST."""
        self._batch_bytes_sent: dict[int, tuple[int, int]] = {}
        """peer -> (tick, bytes of batches sent to it in answer to BATCH-REQUESTs that tick):
        bounded by `batch_answer_bytes_max` per peer per tick."""

    def ask_batch(self, slot: Slot, digest: bytes, candidates: Iterable[int]) -> None:
        """Ask one peer for the batch behind `digest`: the first candidate not asked yet in this
        round (candidates first, then the other peers), so a silent peer is not asked again
        before every other one was."""
        rep = self._rep
        preferred = [p for p in dict.fromkeys(candidates) if p != rep.id and
                     rep.config.is_member(p)]
        peers = preferred + [p for p in rep._peers() if p not in preferred]
        if not peers:
            return
        fresh = [p for p in peers if p not in slot.fetch_asked]
        if not fresh:
            slot.fetch_asked.clear()
            fresh = peers
        peer = fresh[0]
        slot.fetch_asked.add(peer)
        slot.fetch_attempts += 1
        rep._send(peer, rep._sign(m.BatchRequest(rep.config.epoch, slot.seq, digest)))

    def missing_batch(self, slot: Slot) -> tuple[bytes, list[int]] | None:
        """The digest whose batch this slot needs to execute (a commit certificate's, else the
        adopted proposal's) and who should hold it, if its contents are missing."""
        rep = self._rep
        counts: dict[tuple[int, bytes], list[int]] = {}
        for (view, sender, digest) in slot.commits:
            counts.setdefault((view, digest), []).append(sender)
        for (_view, digest), senders in counts.items():
            if len(senders) >= rep.config.quorum and not slot.has_contents(digest):
                return digest, senders
        if slot.pre_prepare is not None:
            digest = header(slot.pre_prepare).digest
            if not slot.has_contents(digest):
                voters = [s for (_v, s, d) in (*slot.prepares, *slot.commits) if d == digest]
                return digest, [slot.pre_prepare.sender, *voters]
        return None

    def fetch_missing_batches(self) -> None:
        """Each STATUS tick: ask for the batches the next sequence numbers need."""
        rep = self._rep
        asked = 0
        for seq in sorted(rep._slots):
            if asked >= rep.params.batch_fetch_seqs_max:
                return
            if seq <= rep.last_executed:
                continue
            slot = rep._slots[seq]
            missing = self.missing_batch(slot)
            if missing is not None:
                self.ask_batch(slot, missing[0], missing[1])
                asked += 1

    def on_batch_request(self, sender: int, b: m.BatchRequest) -> None:
        """Answer with a proposal header for that digest and its batch, at most once per peer
        and sequence number per tick, and for at most `batch_answer_bytes_max` bytes per peer
        per tick."""
        rep = self._rep
        slot = rep._slots.get(b.seq)
        if slot is None or self._batches_sent.get((sender, b.seq)) == rep._tick:
            return
        requests = slot.contents(b.digest)
        msg = slot.header_for(b.digest)
        if requests is None or msg is None:
            return
        tick, used = self._batch_bytes_sent.get(sender, (rep._tick, 0))
        if tick != rep._tick:
            used = 0
        if used >= rep.params.batch_answer_bytes_max:
            return  # a small request must not buy a window of full batches every tick
        self._batches_sent[(sender, b.seq)] = rep._tick
        if len(self._batches_sent) > 4 * rep.params.log_window * max(1, rep.config.n):
            self._batches_sent = {k: t for k, t in self._batches_sent.items()
                                  if t >= rep._tick - 1}
        used += rep._send_with_batch((sender,), msg, requests)
        self._batch_bytes_sent[sender] = (rep._tick, used)

    def forget_through(self, seq: int) -> None:
        """A checkpoint at `seq` became stable: its slots are gone, and so are their answers."""
        self._batches_sent = {k: t for k, t in self._batches_sent.items() if k[1] > seq}
