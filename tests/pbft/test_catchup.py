"""v2 catch-up (paper 4.3 state transfer, hardened): whom a replica believes is ahead of it.

A STATUS claim of a stable checkpoint counts only as far as f+1 members back it (one of them
is honest); a proof (2f+1 CHECKPOINTs, or a NEW-VIEW carrying them) counts alone. The holders
are asked two at a time, in rotation, one round per STATUS tick; `StateRequest(after_seq)` is
answered by any peer whose stable checkpoint is above `after_seq`.
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.catchup import STATE_REQUEST_FANOUT, CatchUp
from consortium.pbft.state import snapshot_digest
from tests.pbft.harness import (
    GENESIS,
    checkpoint,
    commit_batch,
    make_node,
    params,
    request,
    sent,
    sign,
)

LIE = 1 << 62


def test_one_liars_claim_alone_does_not_make_a_replica_behind() -> None:
    c = CatchUp(weak_quorum=2)
    c.claim(1, LIE)
    assert c.target(0) == (0, ())
    c.claim(2, 0)
    c.claim(3, 0)
    assert c.target(0) == (0, ())  # the (f+1)-th highest claim is 0: not behind


def test_f_plus_1_claims_make_a_replica_behind_up_to_the_backed_checkpoint() -> None:
    c = CatchUp(weak_quorum=2)
    c.claim(1, LIE)
    c.claim(2, 8)
    c.claim(3, 4)
    # The second highest claim (8) is held by at least one honest member; every member that
    # claims at least that much may hold it, the liar included (rotation skips it if silent).
    assert c.target(0) == (8, (1, 2))
    assert c.target(8) == (0, ())  # caught up to the backed claim
    c.claim(2, 16)
    assert c.target(8) == (16, (1, 2))


def test_claims_with_n_7_need_three_members() -> None:
    c = CatchUp(weak_quorum=3)
    c.claim(5, LIE)
    c.claim(6, LIE)
    assert c.target(0) == (0, ())  # f = 2 liars
    c.claim(1, 12)
    assert c.target(0) == (12, (1, 5, 6))


def test_a_newer_claim_replaces_the_senders_older_one() -> None:
    c = CatchUp(weak_quorum=2)
    c.claim(1, 8)
    c.claim(2, 8)
    c.claim(1, 0)  # replica 1 restarted from scratch (or lied before)
    assert c.target(0) == (0, ())


def test_a_proven_target_counts_alone_and_wins_over_lower_claims() -> None:
    c = CatchUp(weak_quorum=2)
    c.prove(12, (0, 1, 2))
    assert c.target(0) == (12, (0, 1, 2))  # no claim needed
    c.claim(3, 4)
    c.claim(2, 4)
    assert c.target(0) == (12, (0, 1, 2, 3))  # claims below the proof do not lower it
    c.prove(8, (3,))  # an older proof never replaces a newer one
    assert c.target(0) == (12, (0, 1, 2, 3))
    assert c.target(12) == (0, ())


def test_backed_claims_above_a_proof_raise_the_target_and_keep_the_provers() -> None:
    c = CatchUp(weak_quorum=2)
    c.prove(8, (0, 1, 2))
    c.claim(2, 16)
    c.claim(3, 16)
    assert c.target(0) == (16, (0, 1, 2, 3))


def test_holders_rotate_so_a_silent_liar_is_not_asked_forever() -> None:
    c = CatchUp(weak_quorum=2)
    holders = (0, 1, 2)
    rounds = [c.next_holders(holders) for _ in range(4)]
    assert rounds == [(0, 1), (1, 2), (2, 0), (0, 1)]
    assert all(len(r) == STATE_REQUEST_FANOUT for r in rounds)
    assert c.next_holders(()) == ()
    assert c.next_holders((5,)) == (5,)


def test_forget_keeps_only_current_members_claims() -> None:
    c = CatchUp(weak_quorum=2)
    c.claim(1, 8)
    c.claim(9, 8)
    c.forget({0, 1, 2, 3})
    assert c.claims == {1: 8} and c.target(0) == (0, ())


# ----------------------------------------------------------------------- at the replica

def _state_requests(actions: list[ev.Action]) -> list[tuple[tuple[int, ...], m.StateRequest]]:
    return [(to, msg.body) for to, msg in sent(actions) if isinstance(msg.body, m.StateRequest)]


def test_a_status_claiming_2_62_from_one_member_triggers_no_state_request() -> None:
    """The attack v2 closes: one Byzantine member's STATUS with stable_seq 2^62 used to make an
    honest replica ask that liar alone for state, tick after tick."""
    node = make_node(3)
    liar = sign(1, m.Status(0, 0, True, LIE, LIE))
    assert _state_requests(node.deliver(liar)) == []
    for _ in range(3):
        assert _state_requests(node.fire(ev.TimerKind.STATUS)) == []
        node.deliver(liar)
    assert node.replica.last_executed == 0


def test_f_plus_1_status_claims_trigger_a_state_request_to_the_claimers() -> None:
    node = make_node(3)
    node.deliver(sign(1, m.Status(0, 0, True, LIE, LIE)))
    node.deliver(sign(2, m.Status(0, 0, True, 9, 8)))
    actions = node.fire(ev.TimerKind.STATUS)
    req = m.StateRequest(0)
    assert _state_requests(actions) == [((1,), req), ((2,), req)]
    # Once per tick, whatever else arrives.
    assert _state_requests(node.deliver(sign(0, m.Status(0, 0, True, 9, 8)))) == []


def test_any_peer_above_after_seq_answers_a_state_request() -> None:
    """The asker names its own state, not the (possibly lied-about) target: an honest holder of
    any higher stable checkpoint answers, and nobody answers a request it cannot improve."""
    node = make_node(2, params(checkpoint_interval=2, log_window=4))
    commit_batch(node, 1, [request("alice", 1)])
    commit_batch(node, 2, [request("bob", 1)])
    d = snapshot_digest(GENESIS, node.replica.snapshot())
    node.deliver(checkpoint(0, 2, d), checkpoint(1, 2, d))
    assert node.replica.stable_seq == 2
    answers = sent(node.deliver(sign(3, m.StateRequest(0))))
    assert [(to, type(msg.body)) for to, msg in answers] == [((3,), m.StateResponse)]
    assert node.deliver(sign(1, m.StateRequest(2))) == []
