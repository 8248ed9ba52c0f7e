"""View changes (Castro & Liskov, OSDI 1999, section 4.4) and their liveness rules (4.5.2).

The primary of view v is replica v mod 4. Tests build VIEW-CHANGE and NEW-VIEW messages by hand,
signed with the real keys, and check what the replica under test does with them.
"""

from __future__ import annotations

import pytest

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.state import snapshot_digest
from consortium.pbft.viewchange import new_view_bytes_max, view_change_bytes_max
from tests.pbft.harness import (
    GENESIS,
    NULL_BATCH_DIGEST,
    Node,
    checkpoint,
    commit,
    commit_batch,
    digest_of,
    header_of,
    index_of,
    is_send_of,
    make_node,
    new_view,
    of_type,
    params,
    pre_prepare,
    prepare,
    prepared_proof,
    request,
    sent,
    sent_bodies,
    sign,
    view_change,
)


def _timed_out_backup(node_id: int = 2) -> Node:
    """A backup with a pending request whose REQUEST timer is armed (v2: the client retried at
    the backup; a first submission would be redirected to the primary)."""
    node = make_node(node_id)
    node.submit(request("alice", 99), retry=True)
    assert ev.TimerKind.REQUEST in node.timers
    return node


def _vc_timer_delays(actions: list[ev.Action]) -> list[int]:
    return [a.delay_ms for a in of_type(actions, ev.SetTimer) if a.kind is ev.TimerKind.VIEW_CHANGE]


# ------------------------------------------------------------------------- starting a change

def test_request_timer_expiry_multicasts_view_change_for_next_view_after_persisting() -> None:
    """4.4: a backup whose timer expires in view v starts a view change to v+1: it stops
    accepting messages other than checkpoint/view-change/new-view and multicasts
    VIEW-CHANGE(v+1, n, C, P, i), persisted before it is sent; it then waits for NEW-VIEW."""
    node = _timed_out_backup(2)
    # First expiry: the waiting request is relayed to everyone (so every backup times it) and
    # the timer re-armed; no view change yet.
    first = node.fire(ev.TimerKind.REQUEST)
    relay = sent(first)
    assert len(relay) == 1 and relay[0][0] == (0, 1, 3)
    assert relay[0][1].body == m.RequestForward((request("alice", 99),))
    assert node.replica.view == 0 and node.replica.view_active
    assert ev.TimerKind.REQUEST in node.timers
    # Second expiry: VIEW-CHANGE, persisted before it is sent.
    actions = node.fire(ev.TimerKind.REQUEST)
    vc = view_change(2, 1)
    assert actions[:2] == [ev.Persist((vc,)), ev.Send((0, 1, 3), vc.wire)]
    assert node.replica.view == 1 and not node.replica.view_active
    # In view change: a PRE-PREPARE of view 0 is no longer prepared.
    assert sent(node.deliver(pre_prepare(0, 1, [request("bob", 1)]))) == []


def test_a_primary_that_makes_progress_gets_patience_then_is_replaced() -> None:
    """Not in the paper (request_patience): a deep queue under load keeps the oldest request
    waiting while the primary executes other batches; each expiry after progress re-arms the
    timer (no relay, no vote), up to request_patience times. Then the backup relays the
    request and, one period later, votes: a primary censoring one request is still replaced.
    Without progress the backup relays on the first expiry and votes on the second (above)."""
    node = make_node(2, params(request_patience=2))
    node.submit(request("alice", 99), retry=True)
    for seq in (1, 2):
        commit_batch(node, seq, [request("bob", seq)])  # other requests execute
        actions = node.fire(ev.TimerKind.REQUEST)
        assert sent(actions) == [], f"relayed or voted despite progress ({seq})"
        assert node.replica.view_active and ev.TimerKind.REQUEST in node.timers
    commit_batch(node, 3, [request("bob", 3)])
    relay = sent(node.fire(ev.TimerKind.REQUEST))  # patience used up: relay it to everyone
    assert [msg.body for _, msg in relay] == [m.RequestForward((request("alice", 99),))]
    actions = node.fire(ev.TimerKind.REQUEST)  # still not executed: vote
    assert sent_bodies(actions, m.ViewChange) and node.replica.view == 1


def test_view_change_carries_prepared_proofs_only_for_prepared_sequences() -> None:
    """4.4: P holds, for every request prepared at i with seq > n (the stable checkpoint), a
    PRE-PREPARE and 2f matching PREPAREs; a sequence with fewer PREPAREs is left out.

    v2 (deliberate change): the PRE-PREPARE in P is the signed header alone, never its batch."""
    node = make_node(2)
    pp1 = pre_prepare(0, 1, [request("alice", 1)])
    pp2 = pre_prepare(0, 2, [request("bob", 1)])
    d1 = digest_of(pp1)
    node.deliver(pp1, prepare(3, 0, 1, d1))  # seq 1 prepared (own + replica 3)
    node.deliver(pp2)  # seq 2: own PREPARE only
    actions = node.suspect_primary()
    proof = m.PreparedProof(header_of(pp1), (prepare(2, 0, 1, d1), prepare(3, 0, 1, d1)))
    vc = view_change(2, 1, [proof])
    assert actions[:2] == [ev.Persist((vc,)), ev.Send((0, 1, 3), vc.wire)]
    (sent_vc,) = sent_bodies(actions, m.ViewChange)
    assert sent_vc.prepared[0].pre_prepare.batch is None
    assert request("alice", 1).payload not in vc.wire


def test_view_change_reports_the_certificate_of_the_highest_view_it_prepared_in() -> None:
    """4.4: P must contain, for each seq, the prepared certificate of the *highest* view in which
    the replica prepared it. Replica 2 pre-prepared batch B in view 0 without preparing it;
    NEW-VIEW(1) re-proposes B and replica 2 prepares it in view 1. Its VIEW-CHANGE for view 2
    must carry the view-1 certificate (otherwise a batch that may have committed in view 1 can
    be replaced by a null batch in view 2).

    regression: VIEW-CHANGE used to report the prepared certificate of the first view a digest
    was pre-prepared in, not the highest view where it prepared, so a batch re-proposed in view
    1 and prepared only there was omitted (slots now keep every pre-prepare by (view, digest))."""
    node = make_node(2)
    r = request("alice", 1)
    pp0 = pre_prepare(0, 1, [r])
    d = digest_of(pp0)
    node.deliver(pp0)  # PREPARE in view 0, never prepared there
    node.suspect_primary()  # VIEW-CHANGE(1)
    vcs = [view_change(0, 1, [prepared_proof(pp0, (1, 3))]), view_change(1, 1),
           view_change(3, 1)]
    pp1 = pre_prepare(1, 1, [r])  # re-proposed by replica 1, primary of view 1
    actions = node.deliver(new_view(1, 1, vcs, [pp1]))
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 1, 1, d)]
    actions = node.deliver(prepare(3, 1, 1, d))  # prepared in view 1
    assert sent_bodies(actions, m.Commit) == [m.Commit(0, 1, 1, d)]
    actions = node.suspect_primary()  # the request still did not execute
    (vc,) = sent_bodies(actions, m.ViewChange)
    assert vc.new_view == 2
    assert [p.pre_prepare for p in vc.prepared] == [pp1]
    assert {v.sender for v in vc.prepared[0].votes} == {2, 3}


# ------------------------------------------------------------------------------- new primary

def test_new_primary_sends_new_view_reproposing_highest_view_batch_and_null_fill() -> None:
    """4.4: with 2f+1 valid VIEW-CHANGEs (its own included) the primary of v+1 multicasts
    NEW-VIEW(v+1, V, O); for each seq between min-s and max-s, O re-proposes the batch of the
    prepared certificate with the highest view, or a null request where none exists. It persists
    NEW-VIEW before sending it and enters the view."""
    node = make_node(2)  # primary of view 2
    ra, rb, rc = request("alice", 1), request("bob", 1), request("carol", 1)
    pp_a = pre_prepare(0, 1, [ra])  # seq 1 prepared in view 0...
    pp_b = pre_prepare(1, 1, [rb])  # ...and another batch prepared at seq 1 in view 1
    pp_c = pre_prepare(0, 3, [rc])  # seq 3 prepared in view 0; nothing at seq 2
    vc0 = view_change(0, 2, [prepared_proof(pp_a, (1, 3)), prepared_proof(pp_c, (1, 3))])
    vc3 = view_change(3, 2, [prepared_proof(pp_b, (0, 3))])
    assert node.deliver(vc0) == []  # one VIEW-CHANGE: nothing yet
    actions = node.deliver(vc3)  # f+1 for view 2: joins it (4.5.2), then has 2f+1
    own_vc = view_change(2, 2)
    expected_pps = [pre_prepare(2, 1, [rb]), pre_prepare(2, 2, []), pre_prepare(2, 3, [rc])]
    nv = new_view(2, 2, [vc0, own_vc, vc3], expected_pps)
    assert actions[:2] == [ev.Persist((own_vc,)), ev.Send((0, 1, 3), own_vc.wire)]
    i_persist = actions.index(ev.Persist((nv,)))
    i_send = actions.index(ev.Send((0, 1, 3), nv.wire))
    assert i_persist < i_send
    assert ev.ViewEntered(2, 2) in actions[i_send:]
    assert digest_of(expected_pps[1]) == NULL_BATCH_DIGEST
    assert node.replica.view == 2 and node.replica.view_active
    # The next new request gets the first sequence number after max-s.
    rd = request("alice", 2)
    assert sent_bodies(node.submit(rd), m.PrePrepare) == [pre_prepare(2, 4, [rd]).body]


def test_new_primary_waits_for_2f_plus_1_view_changes() -> None:
    """4.4: the new primary sends NEW-VIEW only once it holds 2f+1 VIEW-CHANGEs for its view."""
    node = _timed_out_backup(1)  # replica 1 will be primary of view 1
    actions = node.suspect_primary()
    assert sent_bodies(actions, m.NewView) == []
    actions = node.deliver(view_change(2, 1))
    assert sent_bodies(actions, m.NewView) == []  # 2 of 3
    assert not node.replica.view_active
    actions = node.deliver(view_change(3, 1))
    (nv,) = sent_bodies(actions, m.NewView)
    assert [vc.sender for vc in nv.view_changes] == [1, 2, 3]
    assert nv.pre_prepares == ()
    assert node.replica.view_active and node.replica.is_primary


# ---------------------------------------------------------------------------- backups: NEW-VIEW

def _valid_new_view_1() -> tuple[m.SignedMessage, m.SignedMessage]:
    """A NEW-VIEW for view 1 (from replica 1) re-proposing a batch prepared in view 0 at seq 1."""
    pp0 = pre_prepare(0, 1, [request("alice", 1)])
    vcs = [view_change(0, 1, [prepared_proof(pp0, (1, 2))]), view_change(1, 1),
           view_change(2, 1)]
    pp1 = pre_prepare(1, 1, [request("alice", 1)])
    return new_view(1, 1, vcs, [pp1]), pp1


def test_backup_accepts_valid_new_view_and_prepares_its_pre_prepares() -> None:
    """4.4: a backup accepts a correct NEW-VIEW for v+1, enters the view, and for each
    PRE-PREPARE in O multicasts a PREPARE (persisted first); the VIEW_CHANGE timer stops."""
    node = _timed_out_backup(3)
    node.suspect_primary()
    nv, pp1 = _valid_new_view_1()
    assert isinstance(nv.body, m.NewView)
    # 4.5.2: the timer runs once the backup holds 2f+1 VIEW-CHANGEs for view 1 (its own + 2).
    others = [vc for vc in nv.body.view_changes if vc.sender in (0, 2)]
    assert _vc_timer_delays(node.deliver(others[0])) == []
    assert _vc_timer_delays(node.deliver(others[1])) == [1000]
    assert node.replica.view == 1 and not node.replica.view_active
    actions = node.deliver(nv)
    own = prepare(3, 1, 1, digest_of(pp1))
    assert actions[0] == ev.Persist((nv,))
    assert ev.CancelTimer(ev.TimerKind.VIEW_CHANGE) in actions
    assert ev.ViewEntered(1, 1) in actions
    i_persist = next(i for i, a in enumerate(actions)
                     if isinstance(a, ev.Persist) and own in a.messages)
    i_send = actions.index(ev.Send((0, 1, 2), own.wire))
    assert i_persist < i_send
    assert node.replica.view == 1 and node.replica.view_active
    # Normal case resumes in view 1: the new primary's next batch is prepared, the old one's not.
    pp2 = pre_prepare(1, 2, [request("bob", 1)])
    assert sent_bodies(node.deliver(pp2), m.Prepare) == [m.Prepare(0, 1, 2, digest_of(pp2))]
    stale = pre_prepare(0, 3, [request("bob", 2)])
    assert sent_bodies(node.deliver(stale), m.Prepare) == []


def test_pre_prepare_for_the_next_view_is_prepared_once_the_view_starts() -> None:
    """4.4: messages for view v+1 that arrive before NEW-VIEW are kept and processed once the
    backup enters v+1."""
    node = make_node(3)
    pp = pre_prepare(1, 1, [request("bob", 1)])
    assert node.deliver(pp) == []
    nv = new_view(1, 1, [view_change(0, 1), view_change(1, 1), view_change(2, 1)], [])
    actions = node.deliver(nv)
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 1, 1, digest_of(pp))]


def _assert_rejected(node: Node, nv: m.SignedMessage, blamed: int) -> None:
    actions = node.deliver(nv)
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [blamed]
    assert of_type(actions, ev.ViewEntered) == [] and sent(actions) == []
    assert of_type(actions, ev.Persist) == []


def test_new_view_that_omits_a_prepared_request_is_rejected() -> None:
    """4.4: a backup checks that O is what the primary must compute from V; a NEW-VIEW that
    drops a prepared batch, or replaces it with a null batch, is rejected."""
    node = _timed_out_backup(3)
    node.suspect_primary()
    good, _ = _valid_new_view_1()
    body = good.body
    assert isinstance(body, m.NewView)
    _assert_rejected(node, new_view(1, 1, body.view_changes, []), 1)
    _assert_rejected(node, new_view(1, 1, body.view_changes, [pre_prepare(1, 1, [])]), 1)
    other = pre_prepare(1, 1, [request("carol", 1)])
    _assert_rejected(node, new_view(1, 1, body.view_changes, [other]), 1)
    assert node.replica.view == 1 and not node.replica.view_active
    assert ev.ViewEntered(1, 1) in node.deliver(good)


def test_new_view_with_too_few_view_changes_is_rejected() -> None:
    """4.4: NEW-VIEW must carry 2f+1 VIEW-CHANGEs from distinct replicas."""
    node = make_node(3)
    two = [view_change(1, 1), view_change(2, 1)]
    _assert_rejected(node, new_view(1, 1, two, []), 1)
    dup = [view_change(1, 1), view_change(2, 1), view_change(2, 1)]
    _assert_rejected(node, new_view(1, 1, dup, []), 1)
    assert node.replica.view == 0


def test_new_view_from_a_replica_that_is_not_the_new_primary_is_rejected() -> None:
    """4.4: only the primary of v+1 may send NEW-VIEW(v+1)."""
    node = make_node(3)
    vcs = [view_change(0, 1), view_change(1, 1), view_change(2, 1)]
    _assert_rejected(node, new_view(2, 1, vcs, []), 2)
    assert node.replica.view == 0


def test_view_change_with_an_unproven_prepared_entry_is_rejected() -> None:
    """4.4: a VIEW-CHANGE is valid only if each entry of P holds a pre-prepare and 2f matching
    PREPAREs (here only one) from backups."""
    node = make_node(3)
    pp = pre_prepare(0, 1, [request()])
    bad = view_change(1, 1, [prepared_proof(pp, (2,))])
    actions = node.deliver(bad)
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [1]
    # It does not count toward the f+1 that would make replica 3 join view 1.
    assert sent_bodies(node.deliver(view_change(2, 1)), m.ViewChange) == []
    assert node.replica.view == 0


# ----------------------------------------------------------------------------------- liveness

def _others_view_changes(node_id: int, view: int) -> list[m.SignedMessage]:
    """VIEW-CHANGE(view) from the two replicas that are neither `node_id` nor the primary of
    `view`: with the replica's own, 2f+1 VIEW-CHANGEs but no NEW-VIEW."""
    senders = [i for i in (0, 1, 2, 3) if i not in (node_id, view % 4)][:2]
    return [view_change(s, view) for s in senders]


@pytest.mark.parametrize(("timeout_max_ms", "expected_delays"), [
    (16000, [2000, 4000]),  # doubled each time: 2T, 4T
    (3000, [2000, 3000]),  # doubled, then capped at view_change_timeout_max_ms (4T > max)
])
def test_view_change_timer_expiry_moves_to_next_view_with_doubled_timeout(
        timeout_max_ms: int, expected_delays: list[int]) -> None:
    """4.5.2: a replica with 2f+1 VIEW-CHANGEs for v+1 waits T for NEW-VIEW; if the timer expires
    it starts a view change for v+2 and, once it again holds 2f+1 VIEW-CHANGEs for v+2, waits
    2T, then 4T... (capped at the maximum). Replica 0 goes through views 1, 2, 3 (it would be
    the primary of view 4, and would then send NEW-VIEW itself)."""
    node = make_node(0, params(view_change_timeout_max_ms=timeout_max_ms))
    actions = node.deliver(*_others_view_changes(0, 1))  # f+1: joins view 1, holds 2f+1
    assert node.replica.view == 1
    assert _vc_timer_delays(actions) == [1000]
    delays = []
    for expected_view in (2, 3):
        actions = node.fire(ev.TimerKind.VIEW_CHANGE)
        vc = view_change(0, expected_view)
        assert actions[:2] == [ev.Persist((vc,)), ev.Send((1, 2, 3), vc.wire)]
        assert node.replica.view == expected_view and not node.replica.view_active
        # Alone in view `expected_view`: no timer yet (4.5.2), and one more VIEW-CHANGE is
        # still only 2f.
        assert _vc_timer_delays(actions) == []
        assert ev.TimerKind.VIEW_CHANGE not in node.timers
        first, second = _others_view_changes(0, expected_view)
        assert _vc_timer_delays(node.deliver(first)) == []
        actions = node.deliver(second)  # 2f+1 VIEW-CHANGEs for the view, its own included
        delays += _vc_timer_delays(actions)
        assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) == delays[-1]
    assert delays == expected_delays


def test_view_change_timer_starts_only_with_2f_plus_1_view_changes() -> None:
    """4.5.2: "when a replica receives 2f+1 valid VIEW-CHANGE messages for view v+1 it starts its
    timer"; a replica alone in its suspicion must not escalate to v+2, v+3... on its own.

    regression (4.5.2 departure): the VIEW_CHANGE timer used to be armed as soon as the replica
    sent its own VIEW-CHANGE, not when it held 2f+1 VIEW-CHANGEs for the new view, so a lone
    replica escalated views by itself."""
    node = _timed_out_backup(2)
    actions = node.suspect_primary()
    assert sent_bodies(actions, m.ViewChange) == [m.ViewChange(0, 1, 0, (), ())]
    assert _vc_timer_delays(actions) == []
    assert _vc_timer_delays(node.deliver(view_change(3, 1))) == []
    assert _vc_timer_delays(node.deliver(view_change(0, 1))) == [1000]


def test_view_change_timer_backoff_restarts_after_progress() -> None:
    """4.5.2: the back-off is for consecutive failed view changes; once requests execute in a
    new view, the next view change waits the base timeout again."""
    node = make_node(0)
    node.deliver(*_others_view_changes(0, 1))  # joins view 1
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) == 1000
    node.fire(ev.TimerKind.VIEW_CHANGE)  # no NEW-VIEW(1): view 2...
    assert node.replica.view == 2
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) is None
    node.deliver(*_others_view_changes(0, 2))  # ...and with 2f+1 VIEW-CHANGE(2) waits 2T
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) == 2000
    nv = new_view(2, 2, [view_change(0, 2), view_change(1, 2), view_change(2, 2)], [])
    node.deliver(nv)
    r = request("alice", 99)
    pp = pre_prepare(2, 1, [r])
    d = digest_of(pp)
    actions = node.deliver(pp, prepare(1, 2, 1, d), commit(1, 2, 1, d), commit(2, 2, 1, d))
    assert [e.executed for e in of_type(actions, ev.Execute)] == [(r,)]
    node.submit(request("bob", 5), retry=True)
    node.suspect_primary()
    assert node.replica.view == 3
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) is None
    node.deliver(*_others_view_changes(0, 3))
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) == 1000


def test_f_plus_1_view_changes_for_higher_views_make_a_replica_join_the_smallest() -> None:
    """4.5.2: a replica that receives f+1 valid VIEW-CHANGEs from other replicas for views above
    its own sends a VIEW-CHANGE for the smallest of those views, even if its timer has not
    expired; a single VIEW-CHANGE is not enough."""
    node = make_node(3)
    assert node.deliver(view_change(1, 2)) == []
    assert node.replica.view == 0 and node.replica.view_active
    actions = node.deliver(view_change(2, 1))
    vc = view_change(3, 1)
    assert actions[:2] == [ev.Persist((vc,)), ev.Send((0, 1, 2), vc.wire)]
    assert node.replica.view == 1 and not node.replica.view_active
    assert index_of(actions, is_send_of(m.ViewChange)) == 1


# ------------------------------------------------------------- checkpoints in view changes

def _stable_at_2(node_id: int) -> tuple[Node, tuple[m.SignedMessage, ...]]:
    """A replica (K=2, L=4) that executed seqs 1-2 and holds a stable checkpoint proof for 2."""
    node = make_node(node_id, params(checkpoint_interval=2, log_window=4))
    commit_batch(node, 1, [request("alice", 1)])
    commit_batch(node, 2, [request("bob", 1)])
    d = snapshot_digest(GENESIS, node.replica.snapshot())
    others = [i for i in (0, 1, 2, 3) if i != node_id][:2]
    node.deliver(*(checkpoint(i, 2, d) for i in others))
    assert node.replica.stable_seq == 2
    proof = tuple(sorted((checkpoint(i, 2, d) for i in (*others, node_id)),
                         key=lambda c: c.sender))
    return node, proof


def test_view_change_carries_the_stable_checkpoint_and_only_later_prepared_proofs() -> None:
    """4.4: VIEW-CHANGE(v+1, n, C, P, i): n is the last stable checkpoint, C its 2f+1 CHECKPOINT
    proof, and P only covers sequence numbers above n."""
    node, proof = _stable_at_2(2)
    pp3 = pre_prepare(0, 3, [request("carol", 1)])
    d3 = digest_of(pp3)
    node.deliver(pp3, prepare(3, 0, 3, d3))
    actions = node.suspect_primary()
    (vc,) = sent_bodies(actions, m.ViewChange)
    assert (vc.new_view, vc.stable_seq, vc.stable_proof) == (1, 2, proof)
    assert [p.pre_prepare for p in vc.prepared] == [pp3]


def test_new_view_with_a_higher_min_s_makes_an_executed_checkpoint_stable() -> None:
    """4.4: on NEW-VIEW the replica moves its low watermark to min-s (the highest stable checkpoint
    in V); having executed up to it, it makes its own checkpoint stable with the proof in V."""
    src, proof = _stable_at_2(1)
    node = make_node(3, params(checkpoint_interval=2, log_window=4))
    commit_batch(node, 1, [request("alice", 1)])
    commit_batch(node, 2, [request("bob", 1)])
    assert node.replica.stable_seq == 0
    vcs = [view_change(0, 1, stable_seq=2, stable_proof=proof), view_change(1, 1),
           view_change(2, 1)]
    actions = node.deliver(new_view(1, 1, vcs, []))
    assert of_type(actions, ev.PersistSnapshot) == [
        ev.PersistSnapshot(node.replica.snapshot(), proof)]
    assert node.replica.stable_seq == 2 and node.replica.view == 1
    assert src.replica.stable_seq == 2


def test_new_view_with_min_s_above_the_replica_state_triggers_state_transfer() -> None:
    """4.4 + 4.3: a replica whose state is below min-s fetches the checkpoint from its signers.

    v2: STATE-REQUEST names the asker's last executed sequence (any peer above it answers), and
    the proven holders are asked two at a time, in rotation, one round per STATUS tick."""
    _, proof = _stable_at_2(1)
    node = make_node(3, params(checkpoint_interval=2, log_window=4))
    vcs = [view_change(0, 1, stable_seq=2, stable_proof=proof), view_change(1, 1),
           view_change(2, 1)]
    actions = node.deliver(new_view(1, 1, vcs, []))
    req = sign(3, m.StateRequest(0))

    def state_requests(acts: list[ev.Action]) -> list[tuple[tuple[int, ...], m.SignedMessage]]:
        return [(to, msg) for to, msg in sent(acts) if isinstance(msg.body, m.StateRequest)]

    assert state_requests(actions) == [((0,), req), ((1,), req)]
    assert node.replica.view == 1 and node.replica.view_active
    assert state_requests(node.fire(ev.TimerKind.STATUS)) == [((1,), req), ((2,), req)]


def test_new_primary_orders_pending_requests_after_new_view() -> None:
    """4.4: after NEW-VIEW the new primary proposes requests that were waiting, with sequence
    numbers after max-s."""
    node = _timed_out_backup(1)  # alice/99 is pending at replica 1
    node.suspect_primary()
    node.deliver(view_change(2, 1))
    actions = node.deliver(view_change(3, 1))
    i_nv = index_of(actions, is_send_of(m.NewView))
    i_pp = index_of(actions, is_send_of(m.PrePrepare))
    assert i_nv < i_pp
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(1, 1, [request("alice", 99)]).body]


# ------------------------------------------------------------------- view-change size bounds

def test_a_padded_view_change_is_rejected_and_the_new_view_stays_bounded() -> None:
    """4.4 with bounded messages: an honest VIEW-CHANGE is never larger than
    `view_change_bytes_max` (headers and a quorum of votes per sequence), so a larger one is
    padded: here a Byzantine replica 0 repeats one valid PREPARE thousands of times in its
    prepared proof (distinct senders are counted, so it would otherwise verify). The new
    primary refuses it and builds its NEW-VIEW from honest VIEW-CHANGEs, within
    `new_view_bytes_max`.

    regression: the padded VIEW-CHANGE was accepted and an honest new primary embedded it,
    making its NEW-VIEW as large as the attacker liked (up to `message_bytes_max`)."""
    p = params()
    pp = pre_prepare(0, 1, [request("alice", 1)])
    proof = prepared_proof(pp, (2, 3))
    padded = view_change(0, 1, [m.PreparedProof(proof.pre_prepare, proof.votes * 2000)])
    assert len(padded.wire) > view_change_bytes_max(GENESIS, p.log_window)
    node = make_node(1, p)  # primary of view 1
    actions = node.deliver(padded)
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [0]
    actions = node.deliver(view_change(2, 1, [proof]), view_change(3, 1))
    (nv_msg,) = [msg for _to, msg in sent(actions) if isinstance(msg.body, m.NewView)]
    assert isinstance(nv_msg.body, m.NewView)
    assert [vc.sender for vc in nv_msg.body.view_changes] == [1, 2, 3]
    assert len(nv_msg.wire) <= new_view_bytes_max(GENESIS, p.log_window)
    # A backup refuses a NEW-VIEW that carries the padded VIEW-CHANGE.
    backup = make_node(3, p)
    bad = new_view(1, 1, [padded, view_change(2, 1), view_change(3, 1)], [pre_prepare(1, 1, [
        request("alice", 1)])])
    _assert_rejected(backup, bad, 1)
