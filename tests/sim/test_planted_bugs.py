"""The checkers must catch broken replicas: tests that plant a bug and expect a violation.

If these stop failing the run, the simulator has gone blind, and every green matrix run means
nothing. Each planted bug breaks a quorum rule of the PBFT paper.
"""

from __future__ import annotations

import pytest

import consortium.pbft.recovery as recovery_module
import consortium.pbft.replica as replica_module
import consortium.pbft.viewchange as viewchange_module
import consortium.pbft.views as views_module
from consortium.node.driver import Driver
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.catchup import CatchUp
from consortium.pbft.replica import Replica
from consortium.pbft.slots import Slot
from consortium.pbft.viewchange import Proposal, null_proposal
from consortium.sim.scenarios import build


class CommitsWithTwoF(Replica):
    """Planted bug (paper 4.2, committed-local): executes after 2f matching COMMITs instead of
    2f+1, so two replicas that saw different batches from an equivocating primary can each
    gather "enough" commits for their own batch."""

    def _commit_certificate(self, slot: Slot) -> tuple[int, bytes, list[m.SignedMessage]] | None:
        counts: dict[tuple[int, bytes], list[m.SignedMessage]] = {}
        for (view, _sender, digest), msg in slot.commits.items():
            counts.setdefault((view, digest), []).append(msg)
        for (view, digest), msgs in counts.items():
            if len(msgs) >= self.config.quorum - 1 and slot.has_contents(digest):
                return view, digest, msgs
        return None


def forgetful_proposals(view_changes: list[m.ViewChange]) -> tuple[int, list[Proposal]]:
    """Planted bug (paper 4.4, NEW-VIEW): ignores the prepared certificates and re-proposes
    null batches for every sequence, forgetting requests that may already have committed."""
    min_s = max(vc.stable_seq for vc in view_changes)
    max_s = max((p.pre_prepare.body.seq for vc in view_changes for p in vc.prepared
                 if isinstance(p.pre_prepare.body, m.PrePrepare)), default=min_s)
    return min_s, [null_proposal(s) for s in range(min_s + 1, max_s + 1)]


class TrustingCatchUp(CatchUp):
    """Planted bug (the attack campaign's finding 2, as the validator had it): the highest
    stable checkpoint any one member claims is the target, and only that member is asked."""

    def target(self, last_executed: int) -> tuple[int, tuple[int, ...]]:
        if not self.claims:
            return super().target(last_executed)
        sender, claimed = max(self.claims.items(), key=lambda kv: kv[1])
        if claimed > last_executed:
            return claimed, (sender,)
        return super().target(last_executed)


def _first_violation(scenario: str, factory: type[Replica], seeds: range, *,
                     driver: type[Driver] = Driver) -> tuple[int, str]:
    for seed in seeds:
        result = build(scenario, seed, 4, 1, replica_factory=factory,
                       driver_factory=driver).run()
        if result.safety_violations:
            return seed, result.safety_violations[0]
    raise AssertionError(f"no seed in {seeds} exposed the planted bug in {scenario}")


def test_checker_catches_commit_with_only_2f_commits() -> None:
    """An equivocating primary plus a 2f commit quorum must produce an agreement violation."""
    _seed, violation = _first_violation("equivocating-primary", CommitsWithTwoF, range(1, 40))
    assert "agreement" in violation or "certificate" in violation, violation


def test_checker_catches_view_change_that_forgets_prepared_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A NEW-VIEW that drops prepared batches lets a null batch take the sequence number of one
    that a (since crashed) replica already executed: the agreement checker must fire. Both the
    new primary and the verifying backups run the forgetful computation, as a shared bug would."""
    monkeypatch.setattr(views_module, "new_view_proposals", forgetful_proposals)
    monkeypatch.setattr(viewchange_module, "new_view_proposals", forgetful_proposals)
    _seed, violation = _first_violation("commit-loss", Replica, range(1, 20))
    assert "agreement" in violation or "at-most-once" in violation, violation


def test_liveness_check_catches_catch_up_steered_by_one_liar(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that trusts one member's claimed checkpoint asks only the liar and never
    catches up; once the liar falls silent, the ledger stops (attack campaign, finding 2)."""
    monkeypatch.setattr(replica_module, "CatchUp", TrustingCatchUp)
    monkeypatch.setattr(recovery_module, "CatchUp", TrustingCatchUp)
    failed = [seed for seed in range(1, 6)
              if build("lying-status", seed, 4, 1).run().liveness_failure is not None]
    assert failed, "the planted catch-up bug went unnoticed"


def test_honest_replicas_pass_the_same_seeds() -> None:
    """Control: the unmodified replica is safe on the seeds that expose the planted bugs."""
    for scenario in ("equivocating-primary", "commit-loss", "lying-status"):
        for seed in range(1, 6):
            result = build(scenario, seed, 4, 1).run()
            assert result.ok, (scenario, seed, result.safety_violations, result.liveness_failure)


class SpeaksBeforePersisting(Driver):
    """Planted bug in the production driver: sends leave before what they commit to is
    durable (the order the driver exists to keep). A validator that crashes between the two
    forgets a PRE-PREPARE or a vote it already sent, and signs another after its restart."""

    async def carry_out(self, actions: list[ev.Action]) -> None:
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    self.host.send(to, a.data)
        await super().carry_out([a for a in actions if not isinstance(a, ev.Send)])


def test_checker_catches_a_driver_that_sends_before_it_persists() -> None:
    """The simulator runs the production driver, with crash points around every durable
    write: a driver that speaks before persisting is caught by a seeded run, and the failing
    seed reproduces alone (the same violation again)."""
    seed, violation = _first_violation("crash-points", Replica, range(1, 40),
                                       driver=SpeaksBeforePersisting)
    assert "equivocation" in violation, violation
    again = build("crash-points", seed, 4, 1, driver_factory=SpeaksBeforePersisting).run()
    assert again.safety_violations[0] == violation
    assert build("crash-points", seed, 4, 1).run().ok  # the production driver holds


class PreparesWithTooFewVotes(Replica):
    """Planted bug (paper 4.2, prepared): a replica counts itself prepared with 2f - 1 matching
    PREPAREs instead of 2f, so two prepared certificates of one view need not share an honest
    replica."""

    def _check_prepared(self, slot: Slot) -> None:
        if slot.pre_prepare is None or slot.view != self.view or not self.view_active:
            return
        digest = slot.digest
        assert digest is not None
        if (3, self.config.epoch, slot.view, slot.seq) in self._own:
            return
        prepares = slot.votes(slot.prepares, slot.view, digest)
        if len(prepares) < self.config.quorum - 2:
            return
        commit = self._sign_vote(m.Commit(self.config.epoch, slot.view, slot.seq, digest))
        if commit is None:
            return
        slot.commits[(slot.view, self.id, digest)] = commit
        self._out.append(ev.Persist((slot.pre_prepare, *prepares, commit)))
        self._broadcast(commit)
        self._try_execute()


def test_twins_catch_a_prepare_quorum_one_vote_short() -> None:
    """Two copies of one validator, each running honest code in different partitions, are
    what exposes a prepare quorum one vote short (an agreement violation: two digests
    executed at one sequence number). On the same seeds, the single-Byzantine scenarios
    (equivocating primary, conflicting votes, swarm) did not expose it when this test was
    written: Twins find equivocation bugs that scripted behaviours miss."""
    _seed, violation = _first_violation("twins", PreparesWithTooFewVotes, range(1, 60))
    assert "agreement" in violation, violation


class SignsWithItsFirstKey(Replica):
    """Planted bug: a replica that never uses a key it was given for a later epoch (signs
    everything with the key it started with). After a rotation its messages are refused: with
    b = f Byzantine validators the quorum needs it, so the ledger stops."""

    def add_signer(self, signer: object) -> None:
        return None


class CountsFormerKeyMessages(Replica):
    """Not a bug, an observer: counts the messages it receives in a later epoch that verify
    only under the sender's epoch-0 key (what a validator still on its old key sends)."""

    former_key_messages = 0

    def _on_signed(self, msg: m.SignedMessage) -> None:
        old = self.epoch_configs().get(0)
        if self.config.epoch > 0 and old is not None and not replica_module.verify_signed(
                msg, self.config, self.chain_id, self._verifier) and \
                replica_module.verify_signed(msg, old, self.chain_id, self._verifier):
            self.former_key_messages += 1
        super()._on_signed(msg)


def test_the_key_rotation_scenario_needs_the_new_key_to_sign() -> None:
    """A replica that ignores its next key cannot sign in the new epoch: the key-rotation
    scenario (Byzantine validators on their old keys) must end in a liveness failure."""
    failed = [seed for seed in range(1, 6)
              if build("key-rotation", seed, 4, 1,
                       replica_factory=SignsWithItsFirstKey).run().liveness_failure is not None]
    assert failed, "a replica that never switches keys went unnoticed"
    assert all(build("key-rotation", seed, 4, 1).run().ok for seed in failed)  # control


def test_the_key_rotation_scenario_sees_old_key_messages_after_the_switch() -> None:
    """The Byzantine validators keep signing with their old keys after the switch: the honest
    replicas receive such messages (and refuse them: the run passes only with their faults
    reported in the new epoch)."""
    sim = build("key-rotation", 3, 4, 1, replica_factory=CountsFormerKeyMessages)
    assert sim.run().ok
    honest = [n.replica for n in sim.nodes.values() if not n.byzantine]
    assert any(isinstance(r, CountsFormerKeyMessages) and r.former_key_messages
               for r in honest)
