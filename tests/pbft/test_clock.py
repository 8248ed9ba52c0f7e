"""v2 timestamps: the primary stamps each proposal with its clock (never going backwards); a
backup with a clock refuses to prepare a new proposal of the current view stamped further than
`clock_skew_ms_max` from its own clock (0 disables the check; without a clock proposals are
stamped 0 and not checked). The stamp is part of the batch digest, so the block time is
certified by the commit quorum.

Paper context: 4.2 acceptance of a PRE-PREPARE (an extra, local condition on preparing).
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import (
    FakeClock,
    commit,
    digest_of,
    make_node,
    new_view,
    of_type,
    params,
    pre_prepare,
    prepare,
    prepared_proof,
    request,
    restart,
    sent,
    sent_bodies,
    view_change,
)

SKEW = 30_000
NOW = 1_700_000_000_000


def _stamps(actions: list[ev.Action]) -> list[int]:
    return [b.timestamp_ms for b in sent_bodies(actions, m.PrePrepare)]


def test_backup_refuses_a_far_off_proposal_and_accepts_a_near_one() -> None:
    clock = FakeClock(NOW)
    for stamp, prepared in ((NOW + SKEW + 1, False), (NOW - SKEW - 1, False),
                            (NOW + SKEW, True), (NOW - SKEW, True), (NOW, True)):
        node = make_node(2, clock=clock)
        pp = pre_prepare(0, 1, [request()], timestamp_ms=stamp)
        actions = node.deliver(pp)
        assert bool(sent_bodies(actions, m.Prepare)) == prepared, stamp
        if not prepared:
            (fault,) = of_type(actions, ev.PeerFault)
            assert fault.sender == 0 and "clock" in fault.reason
            assert of_type(actions, ev.Persist) == []


def test_no_clock_or_a_zero_limit_checks_nothing() -> None:
    far = pre_prepare(0, 1, [request()], timestamp_ms=NOW)
    assert sent_bodies(make_node(2).deliver(far), m.Prepare)  # no clock
    node = make_node(2, params(clock_skew_ms_max=0), clock=FakeClock(0))
    assert sent_bodies(node.deliver(far), m.Prepare)


def test_re_proposals_in_a_new_view_are_not_checked_against_the_clock() -> None:
    """A NEW-VIEW re-proposes a prepared batch with its original stamp (possibly old): the
    stamp is part of the digest a quorum may have committed, so it is not a new proposal."""
    r = request()
    old = NOW - 10 * SKEW
    pp0 = pre_prepare(0, 1, [r], timestamp_ms=old)
    vcs = [view_change(0, 1, [prepared_proof(pp0, (1, 2))]), view_change(1, 1),
           view_change(2, 1)]
    pp1 = pre_prepare(1, 1, [r], timestamp_ms=old)
    node = make_node(3, clock=FakeClock(NOW))
    actions = node.deliver(new_view(1, 1, vcs, [pp1]))
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 1, 1, digest_of(pp1))]
    assert of_type(actions, ev.PeerFault) == []


def test_a_refused_stamp_still_lets_the_committed_batch_execute() -> None:
    """A backup whose clock is off (or that receives a proposal late, e.g. retransmitted after
    a partition) does not prepare it, but once 2f+1 COMMITs certify the digest it must still
    execute the batch: the quorum certified the stamp, and refusing the batch would leave the
    backup stuck at that sequence number until a state transfer.

    regression: the batch of a proposal refused for its stamp was dropped, and the fetched
    answer (the same header) was refused again, so the backup never executed it."""
    node = make_node(3, clock=FakeClock(NOW))
    r = request()
    late = pre_prepare(0, 1, [r], timestamp_ms=NOW - 2 * SKEW)
    d = digest_of(late)
    assert sent_bodies(node.deliver(late), m.Prepare) == []
    actions = node.deliver(*(commit(s, 0, 1, d) for s in (0, 1, 2)))
    (e,) = of_type(actions, ev.Execute)
    assert (e.seq, e.digest, e.requests) == (1, d, (r,))
    # Same when the commits come first and the proposal (a fetch answer) after.
    node = make_node(3, clock=FakeClock(NOW))
    asked = node.deliver(*(commit(s, 0, 1, d) for s in (0, 1, 2)))
    assert [type(msg.body) for _to, msg in sent(asked)] == [m.BatchRequest]
    assert [x.seq for x in of_type(node.deliver(late), ev.Execute)] == [1]


def test_primary_stamps_proposals_with_its_clock_monotonically() -> None:
    clock = FakeClock(NOW)
    node = make_node(0, clock=clock)
    assert _stamps(node.submit(request("alice", 1))) == [NOW]
    clock.ms = NOW - 5_000  # the wall clock stepped back (NTP)
    assert _stamps(node.submit(request("alice", 2))) == [NOW]
    clock.ms = NOW + 7
    assert _stamps(node.submit(request("alice", 3))) == [NOW + 7]
    # The stamp is in the digest the backups vote for.
    pp = pre_prepare(0, 3, [request("alice", 3)], timestamp_ms=NOW + 7)
    d = digest_of(pp)
    assert m.Commit(0, 0, 3, d) in sent_bodies(
        node.deliver(prepare(1, 0, 3, d), prepare(2, 0, 3, d)), m.Commit)


def test_restarted_primary_never_stamps_earlier_than_what_it_persisted() -> None:
    clock = FakeClock(NOW)
    node = make_node(0, clock=clock)
    node.submit(request("alice", 1))
    node = restart(node, clock=FakeClock(NOW - 60_000))
    assert _stamps(node.submit(request("alice", 2))) == [NOW]


def test_restarted_new_primary_counts_the_stamps_its_new_view_re_proposed() -> None:
    """The PRE-PREPAREs inside a persisted NEW-VIEW are the new primary's own signatures: a
    restart keeps their stamps as a floor too."""
    later = NOW + 90_000
    pp0 = pre_prepare(0, 1, [request("alice", 1)], timestamp_ms=later)
    node = make_node(1, params(clock_skew_ms_max=0), clock=FakeClock(NOW))
    node.deliver(view_change(2, 1), view_change(3, 1, [prepared_proof(pp0, (2, 3))]))
    assert node.replica.is_primary and node.replica.view_active
    node = restart(node)
    assert _stamps(node.submit(request("bob", 1))) == [later]
