"""State transfer: fetch a proven stable checkpoint from peers, answer peers that ask, and
install one (docs/consensus.md, state transfer).

This part owns its throttles (`_state_requested_tick`, `_state_sent`: at most one request per
tick, one answer per peer per tick). Answering reads the replica's stable snapshot and proof.
Installing a verified snapshot is the one place besides recovery that replaces the replica's
executed state wholesale: `last_executed`, `state_digest`, the client table, the stable checkpoint,
epoch records, slots, snapshots and checkpoint votes below it, and pending requests that can no
longer execute; at an epoch change it hands over to the core's epoch switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import (
    NonceStatus,
    checkpoint_quorum,
    signing_config,
    snapshot_digest,
    verify_checkpoint_proof,
    verify_epoch_history,
    verify_signed,
)

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class StateTransfer:
    """Asking for, answering with and installing stable checkpoints for one replica."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica
        self._state_requested_tick = -1
        self._state_sent: dict[int, int] = {}
        """peer -> tick of the last state response sent to it."""

    def request_state(self, holders: Iterable[int]) -> None:
        """Ask holders for a stable checkpoint above our state (at most once per tick)."""
        rep = self._rep
        if self._state_requested_tick == rep._tick:
            return
        targets = rep._catchup.next_holders(tuple(h for h in holders if h != rep.id))
        if not targets:
            return
        self._state_requested_tick = rep._tick
        msg = rep._sign(m.StateRequest(rep.last_executed))
        for holder in targets:
            rep._send(holder, msg)

    def on_state_request(self, sender: int, b: m.StateRequest) -> None:
        """Answer with our stable checkpoint and its proof, once per peer per tick."""
        rep = self._rep
        snap = rep._stable_snapshot
        if snap is None or snap.seq <= b.after_seq or self._state_sent.get(sender) == rep._tick:
            return
        self._state_sent[sender] = rep._tick
        rep._send(sender, rep._sign(m.StateResponse(snap, rep._stable_proof)))

    def on_state_response(self, sender: int, b: m.StateResponse) -> None:
        """Self-certifying: install it if its epoch history and checkpoint proof verify."""
        rep = self._rep
        snap = b.snapshot
        if snap.seq <= rep.last_executed:
            return
        configs = verify_epoch_history(rep.genesis, snap.epochs, rep.chain_id, rep._verifier)
        if configs is None:
            rep._fault(sender, "state response with an unverifiable epoch history")
            return
        signer_config = signing_config(configs, snap.seq)
        try:
            digest = snapshot_digest(rep.genesis, snap)
        except ValueError as exc:  # e.g. a pending member list that is no valid validator set
            rep._fault(sender, f"state response with a malformed snapshot: {exc}")
            return
        if not verify_checkpoint_proof(b.proof, signer_config, snap.seq, digest, rep.chain_id,
                                       rep._verifier):
            rep._fault(sender, f"state response for seq {snap.seq} without a valid proof")
            return
        proof = checkpoint_quorum(b.proof, signer_config, snap.seq, digest, rep.chain_id,
                                  rep._verifier)
        self.install_snapshot(snap, proof, configs[-1])

    def install_snapshot(self, snap: m.Snapshot, proof: tuple[m.SignedMessage, ...],
                         config: EpochConfig) -> None:
        """Jump to a verified stable checkpoint: the replica's state becomes the snapshot's."""
        rep = self._rep
        epoch_changed = config.epoch != rep.config.epoch
        rep.adopt_snapshot(snap, proof)
        for s in [s for s in rep._slots if s <= snap.seq]:
            rep._drop_slot(s)
        rep._snapshots = {s: v for s, v in rep._snapshots.items() if s > snap.seq}
        rep._checkpoint_votes = {s: v for s, v in rep._checkpoint_votes.items()
                                 if s > snap.seq}
        rep._next_seq = max(rep._next_seq, snap.seq + 1)
        for key, _r, _t in list(rep.pool.items()):
            if rep._client_table.check(*key)[0] is not NonceStatus.FRESH:
                rep.pool.remove(key)
        rep._out.append(ev.InstallSnapshot(snap, proof))
        rep._out.append(ev.PersistSnapshot(snap, proof))
        if epoch_changed:
            rep.config = config
            rep._forget_epoch_state()
            rep._next_seq = snap.seq + 1
            rep._reset_view_for_epoch()
            rep._after_leader_change()
        else:
            rep._try_execute()
            rep._intake.arm_request_timer()
            rep._batcher.maybe_propose()
            rep._replay_future()

    def on_former_member_status(self, msg: m.SignedMessage, b: m.Status) -> None:
        """A replica removed in an epoch change it did not witness keeps gossiping to us. Answer
        (once per tick) with our stable checkpoint: its epoch history proves the removal, so the
        former member learns it is out instead of waiting forever."""
        rep = self._rep
        if b.epoch >= rep.config.epoch or rep._stable_snapshot is None:
            return
        former = [rep.genesis] + [EpochConfig(r.epoch, r.start_seq, r.members)
                                  for r in rep._epoch_records]
        config = next((c for c in former if c.epoch == b.epoch), None)
        if config is None or not verify_signed(msg, config, rep.chain_id, rep._verifier):
            rep._fault(msg.sender, "STATUS from a non-member")
            return
        if self._state_sent.get(msg.sender) == rep._tick:
            return
        self._state_sent[msg.sender] = rep._tick
        rep._send(msg.sender, rep._sign(m.StateResponse(rep._stable_snapshot,
                                                        rep._stable_proof)))
