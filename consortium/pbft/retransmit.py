"""STATUS answers: retransmit what a peer's STATUS shows it lacks (our stand-in for the paper's
reliable channels; docs/consensus.md, retransmission).

This part owns its once-per-tick throttles (`_retransmitted`, `_new_view_sent`) and each peer's
last reported `last_executed` (`_peer_executed`: a peer that advanced catches up by itself). It
records stable-checkpoint claims in the replica's `_catchup`, and otherwise only reads: the
stable proof, checkpoint votes, slots and their commit certificates, view-change messages and
the NEW-VIEW, which it sends again to the peer that lacks them. It changes no consensus state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.slots import Slot

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class Retransmission:
    """Answering peers' STATUS messages for one replica."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self._retransmitted: dict[int, tuple[int, bool]] = {}
        """peer -> (tick, whether it was stuck) of the last answer to its STATUS."""
        self._peer_executed: dict[int, int] = {}
        """Each peer's last_executed in its previous STATUS: a peer that advanced since is
        catching up by itself and gets no retransmission of batches (they are large)."""
        self._new_view_sent: dict[int, int] = {}
        """peer -> tick of the last NEW-VIEW resent to it."""

    def _status_under_former_key(self, sender: int, epoch: int) -> None:
        """A member still in an earlier epoch cannot authenticate us if our key changed since
        (it learns the new key only with the epoch it lags behind): tell it where we are under
        the key its epoch knows, once per tick, so that it counts us towards catching up. Only
        a claim: what it fetches then proves itself."""
        rep = self._rep
        theirs = rep.epoch_configs().get(epoch)
        key = None if theirs is None else theirs.key_of(rep.id)
        signer = None if key is None else rep._signers.get(key)
        if signer is None or key == rep.config.key_of(rep.id) or \
                self._retransmitted.get(sender) == (rep._tick, True):
            return
        self._retransmitted[sender] = (rep._tick, True)
        status = m.Status(rep.config.epoch, rep.view, rep.view_active, rep.last_executed,
                          rep.stable_seq, 0 if rep._clock is None else rep._clock.now_ms())
        rep._send(sender, codec.sign_message(signer, rep.chain_id, rep.id, status))

    def on_status(self, sender: int, b: m.Status) -> None:
        """Retransmit what the sender lacks (our stand-in for the paper's reliable channels)."""
        rep = self._rep
        if b.epoch >= rep.config.epoch:
            rep._catchup.claim(sender, b.stable_seq)
        if b.epoch > rep.config.epoch or b.stable_seq > rep.last_executed:
            return  # it is ahead of us: our tick decides whether enough members say so
        if b.epoch < rep.config.epoch:
            self._status_under_former_key(sender, b.epoch)
            return
        if b.last_executed < rep.stable_seq:
            return  # it will ask us for state after our own STATUS
        previous = self._peer_executed.get(sender)
        self._peer_executed[sender] = b.last_executed
        stuck = previous is None or b.last_executed <= previous
        if self._retransmitted.get(sender) == (rep._tick, stuck):
            return  # once per peer per tick: a replayed STATUS must not make us a flood source
        self._retransmitted[sender] = (rep._tick, stuck)
        if b.stable_seq < rep.stable_seq and rep._stable_proof:
            for vote in rep._stable_proof:
                rep._send(sender, vote)
        # Our own votes for checkpoints it has not seen become stable: checkpoint messages
        # lost in a partition would otherwise stall everyone at the high watermark.
        for seq in sorted(rep._checkpoint_votes):
            own = rep._checkpoint_votes[seq].get(rep.id)
            if seq > max(b.stable_seq, rep.stable_seq) and own is not None:
                rep._send(sender, own)
        budget = rep.params.retransmit_seqs_max
        # Decided sequence numbers it lacks, only when it made no progress since its last
        # STATUS (a replica merely behind under load catches up by itself): the proposal
        # header and a commit certificate. Never the batch: the peer most likely has it
        # already (it lost a vote, not the proposal), and if not it asks (BATCH-REQUEST), so
        # retransmission costs a few hundred bytes per sequence number, whatever batches hold.
        seq = b.last_executed + 1
        while stuck and seq <= rep.last_executed and budget > 0:
            slot = rep._slots.get(seq)
            if slot is None:
                break
            cert = rep._commit_certificate(slot)
            if cert is not None:
                view, digest, commits = cert
                rep._send(sender, slot.proposal(view, digest))
                for c in commits:
                    rep._send(sender, c)
            seq += 1
            budget -= 1
        if b.view < rep.view or (b.view == rep.view and not b.view_active):
            if rep.view_active:
                self.resend_new_view(sender)
            elif not rep.view_active and rep.id in rep._view_changes.get(rep.view, {}):
                rep._send(sender, rep._view_changes[rep.view][rep.id])
            return
        if b.view != rep.view or not rep.view_active or not stuck:
            return
        # Same view, and it is stuck: resend our votes for in-progress sequences that have
        # been stuck a tick (headers only, as above).
        for seq in sorted(rep._slots):
            if budget <= 0:
                break
            slot = rep._slots[seq]
            if seq <= b.last_executed or slot.created_tick >= rep._tick - 1:
                continue
            if slot.pre_prepare is not None and slot.view == rep.view:
                rep._send(sender, slot.pre_prepare)
            for table in (slot.prepares, slot.commits):
                own = Slot.own_vote(table, rep.view, rep.id)
                if own is not None:
                    rep._send(sender, own)
            budget -= 1

    def resend_new_view(self, peer: int) -> None:
        """At most once per peer per status tick, so replayed old messages cannot turn this
        replica into an amplifier."""
        rep = self._rep
        if rep._new_view_msg is None or self._new_view_sent.get(peer) == rep._tick:
            return
        self._new_view_sent[peer] = rep._tick
        rep._send(peer, rep._new_view_msg)
