"""The view change (paper 4.4): suspect the primary, collect VIEW-CHANGEs, send or check the
NEW-VIEW, and enter the new view.

The checks and the NEW-VIEW computation are pure and live in `viewchange.py`; this part runs the
protocol around them on the replica's view state, which stays in the core because the normal
case reads it all the time: `view`, `view_active`, `_view_changes`, `_new_view_msg` and
`_view_change_attempts`. It also signs (through `_sign_vote`, so never against what it signed
before), persists and sends VIEW-CHANGE, NEW-VIEW and the re-proposed PRE-PREPAREs, arms the
VIEW_CHANGE timer, and on entering a view drops slots beyond it, makes its checkpoint stable or
asks for state, and adopts its re-proposals through the core's normal-case steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.errors import ReplicaBug
from consortium.pbft.state import checkpoint_quorum, snapshot_digest
from consortium.pbft.viewchange import new_view_proposals, verify_new_view, verify_view_change

if TYPE_CHECKING:
    from consortium.pbft.replica import Replica


class ViewChanger:
    """View changes for one replica (it holds no state of its own: see the module docstring)."""

    def __init__(self, replica: Replica) -> None:
        self._rep = replica

    def view_change_timeout_ms(self) -> int:
        """The VIEW_CHANGE timeout, doubling with each attempt that did not end in a view."""
        rep = self._rep
        base = rep.params.view_change_timeout_ms << min(rep._view_change_attempts, 16)
        return min(base, rep.params.view_change_timeout_max_ms)

    def prepared_proofs(self) -> tuple[m.PreparedProof, ...]:
        """For each sequence above the stable checkpoint, the proof of the highest view in which
        this replica saw the batch prepared (or committed): headers and votes only."""
        rep = self._rep
        proofs = []
        quorum = rep.config.quorum
        for seq in sorted(rep._slots):
            slot = rep._slots[seq]
            for view, digest in sorted(slot.proposals, reverse=True):
                pp_msg = slot.proposals[(view, digest)]
                primary = rep.config.primary(view)
                prepares = [p for p in slot.votes(slot.prepares, view, digest)
                            if p.sender != primary]
                commits = slot.votes(slot.commits, view, digest)
                if len(prepares) >= quorum - 1:
                    proofs.append(m.PreparedProof(pp_msg, tuple(prepares[: quorum - 1])))
                    break
                if len(commits) >= quorum:
                    proofs.append(m.PreparedProof(pp_msg, tuple(commits[:quorum])))
                    break
        return tuple(proofs)

    def start_view_change(self, new_view: int) -> None:
        """Suspect the primary: leave the view and broadcast a VIEW-CHANGE for `new_view`."""
        rep = self._rep
        if new_view <= rep.view or not rep.is_member:
            return
        rep.view = new_view
        rep.view_active = False
        rep._new_view_msg = None
        rep._cancel_timer(ev.TimerKind.REQUEST)
        rep._cancel_timer(ev.TimerKind.BATCH)
        rep._intake.timed_request = None
        stable_proof = () if rep.stable_seq == rep.config.start_seq else rep._stable_proof
        vc = rep._sign(m.ViewChange(rep.config.epoch, new_view, rep.stable_seq, stable_proof,
                                    self.prepared_proofs()))
        rep._view_changes.setdefault(new_view, {})[rep.id] = vc
        rep._out.append(ev.Persist((vc,)))
        rep._broadcast(vc)
        rep._cancel_timer(ev.TimerKind.VIEW_CHANGE)
        self.arm_view_change_timer()
        self.maybe_send_new_view()
        rep._replay_future()

    def arm_view_change_timer(self) -> None:
        """Paper 4.5.2: the timer for the new view starts once 2f+1 replicas (this one
        included) want it, so that a replica alone in suspecting the primary does not climb
        views by itself."""
        rep = self._rep
        if rep.view_active or rep._timer_armed(ev.TimerKind.VIEW_CHANGE):
            return
        if len(rep._view_changes.get(rep.view, {})) >= rep.config.quorum:
            rep._set_timer(ev.TimerKind.VIEW_CHANGE, self.view_change_timeout_ms())

    def on_view_change(self, msg: m.SignedMessage, b: m.ViewChange) -> None:
        """Keep a peer's valid VIEW-CHANGE; join once f+1 want a higher view (paper 4.5.2)."""
        rep = self._rep
        if b.new_view < rep.view or (b.new_view == rep.view and rep.view_active):
            # A peer is behind us: help it by resending our NEW-VIEW.
            if b.new_view <= rep.view:
                rep._retransmit.resend_new_view(msg.sender)
            return
        if b.new_view > rep.view + 64 * rep.config.n:
            return  # absurdly far ahead: ignore rather than store
        bucket = rep._view_changes.setdefault(b.new_view, {})
        if msg.sender in bucket:
            return
        if verify_view_change(msg, rep.config, rep.chain_id, rep._verifier,
                              rep.params.log_window) is None:
            rep._fault(msg.sender, f"invalid VIEW-CHANGE for view {b.new_view}")
            return
        bucket[msg.sender] = msg
        # Paper 4.5.2 liveness: join once f+1 replicas want a higher view.
        higher = {s for v, vcs in rep._view_changes.items() if v > rep.view for s in vcs}
        if len(higher) >= rep.config.weak_quorum:
            self.start_view_change(min(v for v, vcs in rep._view_changes.items()
                                       if v > rep.view and vcs))
        self.arm_view_change_timer()
        self.maybe_send_new_view()

    def maybe_send_new_view(self) -> None:
        """The new view's primary, holding a quorum of VIEW-CHANGEs, sends the NEW-VIEW."""
        rep = self._rep
        if rep.view_active or rep.config.primary(rep.view) != rep.id:
            return
        vcs = rep._view_changes.get(rep.view, {})
        if rep.id not in vcs or len(vcs) < rep.config.quorum:
            return
        chosen = [vcs[rep.id]] + [vcs[s] for s in sorted(vcs) if s != rep.id]
        # Sorted by sender, as carried in the NEW-VIEW: backups recompute the proposals over
        # exactly this order, so ties between equal (view, digest) entries resolve alike.
        chosen = sorted(chosen[: rep.config.quorum], key=lambda c: c.sender)
        bodies = [vc.body for vc in chosen if isinstance(vc.body, m.ViewChange)]
        if len(bodies) != len(chosen):
            raise ReplicaBug("a stored VIEW-CHANGE has another body type")
        _, proposals = new_view_proposals(bodies)
        pre_prepares = []
        for p in proposals:
            pp = rep._sign_vote(m.PrePrepare(rep.config.epoch, rep.view, p.seq, p.root,
                                             p.count, p.timestamp_ms))
            if pp is None:
                raise ReplicaBug(f"already pre-prepared seq {p.seq} in view {rep.view}")
            pre_prepares.append(pp)
        nv = rep._sign(m.NewView(rep.config.epoch, rep.view, tuple(chosen),
                                 tuple(pre_prepares)))
        rep._out.append(ev.Persist((nv,)))
        rep._broadcast(nv)
        self.install_new_view(nv)

    def on_new_view(self, msg: m.SignedMessage) -> None:
        """A backup checks a NEW-VIEW against the VIEW-CHANGEs it carries, then enters it."""
        rep = self._rep
        b = msg.body
        assert isinstance(b, m.NewView)
        if b.new_view < rep.view or (b.new_view == rep.view and rep.view_active):
            return
        if verify_new_view(msg, rep.config, rep.chain_id, rep._verifier,
                           rep.params.log_window) is None:
            rep._fault(msg.sender, f"invalid NEW-VIEW for view {b.new_view}")
            return
        rep._out.append(ev.Persist((msg,)))
        self.install_new_view(msg)

    def install_new_view(self, nv_msg: m.SignedMessage) -> None:
        """Enter the view: catch up to its checkpoint, adopt its re-proposals (fetching batches
        this replica lacks), and hand pending requests to the new primary."""
        rep = self._rep
        nv = nv_msg.body
        assert isinstance(nv, m.NewView)
        vcs = [vc.body for vc in nv.view_changes if isinstance(vc.body, m.ViewChange)]
        min_s = max(vc.stable_seq for vc in vcs)
        rep.view = nv.new_view
        rep.view_active = True
        rep._new_view_msg = nv_msg
        rep._cancel_timer(ev.TimerKind.VIEW_CHANGE)
        rep._view_changes = {v: s for v, s in rep._view_changes.items() if v > rep.view}
        if min_s > rep.stable_seq:
            holder = next(vc for vc in nv.view_changes
                          if isinstance(vc.body, m.ViewChange) and vc.body.stable_seq == min_s)
            body = holder.body
            assert isinstance(body, m.ViewChange)
            own = rep._snapshots.get(min_s)
            proof = body.stable_proof
            if own is not None and proof and isinstance(proof[0].body, m.Checkpoint) and \
                    snapshot_digest(rep.genesis, own) == proof[0].body.digest:
                rep._checkpoints.make_stable(own, checkpoint_quorum(
                    proof, rep.config, min_s, proof[0].body.digest, rep.chain_id,
                    rep._verifier))
            elif min_s > rep.last_executed:
                holders = tuple(s.sender for s in proof) or (holder.sender,)
                rep._catchup.prove(min_s, holders)
                rep._transfer.request_state(holders)
        max_s = max((pp.body.seq for pp in nv.pre_prepares if isinstance(pp.body, m.PrePrepare)),
                    default=min_s)
        for s in [s for s in rep._slots if s > max_s]:
            rep._drop_slot(s)
        rep._next_seq = max(max_s, rep.last_executed) + 1
        rep.pool.in_flight.clear()
        rep._out.append(ev.ViewEntered(rep.view, rep.primary))
        for pp_msg in nv.pre_prepares:
            pp = pp_msg.body
            assert isinstance(pp, m.PrePrepare)
            if pp.seq <= rep.last_executed or not rep._in_window(pp.seq):
                continue
            slot = rep._slot(pp.seq)
            rep._adopt_pre_prepare(slot, pp_msg, pp)
            if not slot.has_contents(pp.digest):
                rep._fetch.ask_batch(slot, pp.digest,
                                     [vc.sender for vc in nv.view_changes] + [nv_msg.sender])
        rep._after_leader_change()
        rep._try_execute()
