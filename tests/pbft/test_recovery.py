"""Restart from durable state (Castro & Liskov, OSDI 1999, sections 4.2 and 4.4; the paper assumes
replicas keep their log in stable storage, cf. "durability before speech" in events.py).

A replica is rebuilt with `Recovered(...)` from exactly what it asked its driver to persist
(Persist, PersistSnapshot, Execute). It must not contradict anything it signed before the crash,
must come back in the view it was in, and must not execute anything twice.
"""

from __future__ import annotations

import dataclasses

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.state import next_state_digest, snapshot_digest
from tests.pbft.harness import (
    GENESIS,
    Node,
    checkpoint,
    commit,
    commit_batch,
    digest_of,
    header_of,
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
    with_batch,
)


def test_restarted_backup_never_prepares_a_different_batch_for_the_same_view_and_seq() -> None:
    """4.2 (no equivocation, across a restart): replica 2 PREPAREd batch A at (view 0, seq 1) and
    crashed; rebuilt from its log, it refuses to PREPARE a different batch B for (0, 1)."""
    node = make_node(2)
    pp_a = pre_prepare(0, 1, [request("alice", 1)])
    pp_b = pre_prepare(0, 1, [request("bob", 1)])
    node.deliver(pp_a)
    node = restart(node)
    assert node.replica.view == 0 and node.replica.view_active
    actions = node.deliver(pp_b)
    assert sent_bodies(actions, m.Prepare) == []
    assert of_type(actions, ev.Persist) == []
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [0]


def test_restarted_backup_keeps_its_prepare_and_the_batch() -> None:
    """4.2: the restarted replica holds the very PREPARE (same digest, same signature bytes)
    it sent before the crash, and the batch it prepared (persisted with the proposal before the
    PREPARE left), so it can execute it even if every other holder of the batch restarted too;
    re-delivered the PRE-PREPARE, it sends nothing that differs."""
    node = make_node(2)
    batch = (request("alice", 1),)
    pp_a = pre_prepare(0, 1, batch)
    before = node.deliver(pp_a)
    own = prepare(2, 0, 1, digest_of(pp_a))
    assert ev.Send((0, 1, 3), own.wire) in before
    persisted = [x for x in node.persisted if isinstance(x.body, m.PrePrepare)]
    assert [x.batch for x in persisted] == [batch]
    node = restart(node)
    slot = node.replica._slots[1]
    assert slot.prepares[(0, 2, digest_of(pp_a))].wire == own.wire
    assert slot.contents(digest_of(pp_a)) == batch
    assert all(msg == own for _to, msg in sent(node.deliver(pp_a)) if msg.sender == 2)


def test_restarted_primary_never_proposes_a_different_batch_for_a_used_seq() -> None:
    """4.2: the primary's PRE-PREPAREs are persisted; after a restart it continues after the last
    sequence number it assigned instead of re-using it for another batch."""
    node = make_node(0)
    r1, r2 = request("alice", 1), request("bob", 1)
    node.submit(r1)
    node = restart(node)
    actions = node.submit(r2)
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 2, [r2]).body]


def _new_primary_of_view_1() -> tuple[Node, m.NewView]:
    """Replica 1 joins view 1 on VIEW-CHANGEs from 2 and 3 (3 proves batch A prepared at seq 1 in
    view 0) and, as its primary, sends NEW-VIEW(1) re-proposing A at seq 1."""
    node = make_node(1)
    pp_a = pre_prepare(0, 1, [request("alice", 1)])
    actions = node.deliver(view_change(2, 1), view_change(3, 1, [prepared_proof(pp_a, (2, 3))]))
    (nv,) = sent_bodies(actions, m.NewView)
    return node, nv


def test_restarted_new_primary_never_reassigns_a_seq_its_new_view_assigned() -> None:
    """4.4 + 4.2 (no equivocation across restart): the primary of view 1 sent NEW-VIEW(1) whose O
    set pre-prepares batch A at (view 1, seq 1); that NEW-VIEW is all it persisted. Restarted, it
    must not sign a PRE-PREPARE for a different batch at (view 1, seq 1): a new request goes to
    seq 2, exactly as it does without the restart."""
    r = request("bob", 1)
    control, nv = _new_primary_of_view_1()
    alice = pre_prepare(0, 1, [request("alice", 1)]).body
    assert isinstance(alice, m.PrePrepare)
    assert [(p.body.view, p.body.seq, p.body.digest) for p in nv.pre_prepares
            if isinstance(p.body, m.PrePrepare)] == [(1, 1, alice.digest)]  # v2: headers
    assert [(b.view, b.seq) for b in sent_bodies(control.submit(r), m.PrePrepare)] == [(1, 2)]

    node, _ = _new_primary_of_view_1()
    node = restart(node)
    assert node.replica.view == 1 and node.replica.view_active and node.replica.is_primary
    proposed = sent_bodies(node.submit(r), m.PrePrepare)
    assert [(b.view, b.seq) for b in proposed] == [(1, 2)]


def test_restart_during_view_change_stays_in_view_change() -> None:
    """4.4: a replica that persisted VIEW-CHANGE(v+1) comes back in view v+1, still waiting for
    NEW-VIEW (no PREPARE for view v), and accepts NEW-VIEW(v+1)."""
    node = make_node(2)
    node.submit(request("alice", 1), retry=True)
    node.suspect_primary()
    node = restart(node)
    assert node.replica.view == 1 and not node.replica.view_active
    assert sent_bodies(node.deliver(pre_prepare(0, 1, [request("bob", 1)])), m.Prepare) == []
    nv = new_view(1, 1, [view_change(0, 1), view_change(1, 1), view_change(3, 1)], [])
    assert ev.ViewEntered(1, 1) in node.deliver(nv)
    assert node.replica.view_active


def test_restart_after_view_change_timeout_comes_back_in_the_latest_view() -> None:
    """4.4/4.5.2: after VIEW-CHANGE(1) and VIEW-CHANGE(2) were persisted, the restarted replica
    is in view 2 (not 1) and still in view change."""
    node = make_node(3)
    node.submit(request("alice", 1), retry=True)
    node.suspect_primary()
    # The VIEW_CHANGE timer starts once 2f+1 VIEW-CHANGE(1) are in, its own included (4.5.2).
    assert ev.TimerKind.VIEW_CHANGE not in node.timers
    node.deliver(view_change(0, 1), view_change(2, 1))
    assert node.timer_delay(ev.TimerKind.VIEW_CHANGE) == 1000
    actions = node.fire(ev.TimerKind.VIEW_CHANGE)
    assert sent_bodies(actions, m.ViewChange) == [m.ViewChange(0, 2, 0, (), ())]
    assert node.replica.view == 2
    node = restart(node)
    assert (node.replica.view, node.replica.view_active) == (2, False)


def test_restart_after_new_view_resumes_in_the_new_view() -> None:
    """4.4: a backup that persisted NEW-VIEW(1) comes back active in view 1: it prepares the new
    primary's pre-prepares and ignores the old primary's."""
    node = make_node(3)
    node.deliver(new_view(1, 1, [view_change(0, 1), view_change(1, 1), view_change(2, 1)], []))
    node = restart(node)
    assert (node.replica.view, node.replica.view_active) == (1, True)
    pp = pre_prepare(1, 1, [request("bob", 1)])
    assert sent_bodies(node.deliver(pp), m.Prepare) == [m.Prepare(0, 1, 1, digest_of(pp))]
    assert sent_bodies(node.deliver(pre_prepare(0, 2, [request("bob", 2)])), m.Prepare) == []


def test_restart_re_executes_nothing() -> None:
    """4.2: executed batches are replayed into the state on restart without new Execute actions;
    the same commit certificate delivered again executes nothing; execution continues at the
    next sequence number with the same state digest chain."""
    node = make_node(2)
    r1, r2 = request("alice", 1), request("bob", 1)
    commit_batch(node, 1, [r1])
    commit_batch(node, 2, [r2])
    digest_before = node.replica.state_digest
    node = restart(node)
    assert of_type(node.start_actions, ev.Execute) == []
    assert node.replica.last_executed == 2 and node.replica.state_digest == digest_before
    assert node.submit(r1) == [ev.AlreadyExecuted(r1, 1)]
    pp2 = pre_prepare(0, 2, [r2])
    d2 = digest_of(pp2)
    again = node.deliver(pp2, commit(0, 0, 2, d2), commit(1, 0, 2, d2), commit(3, 0, 2, d2))
    assert of_type(again, ev.Execute) == [] and sent(again) == []
    r3 = request("carol", 1)
    (e,) = of_type(commit_batch(node, 3, [r3]), ev.Execute)
    assert e.seq == 3 and e.executed == (r3,)
    assert e.state_digest == next_state_digest(digest_before, 3, digest_of(
        pre_prepare(0, 3, [r3])))


def test_restart_from_a_stable_snapshot_plus_later_batches() -> None:
    """4.3: after a restart from the persisted stable checkpoint and the batches executed after
    it, the low watermark is the checkpoint and execution state includes the later batches."""
    p = params(checkpoint_interval=2, log_window=4)
    reqs = [request("alice", i) for i in (1, 2, 3)]
    node = make_node(2, p)
    for seq, r in enumerate(reqs[:2], start=1):
        commit_batch(node, seq, [r])
    digest = snapshot_digest(GENESIS, node.replica.snapshot())
    node.deliver(checkpoint(0, 2, digest), checkpoint(1, 2, digest))
    assert node.snapshot is not None and node.snapshot.seq == 2
    commit_batch(node, 3, [reqs[2]])
    state = node.replica.state_digest
    node = restart(node)
    assert (node.replica.stable_seq, node.replica.last_executed) == (2, 3)
    assert node.replica.state_digest == state
    assert node.submit(reqs[2]) == [ev.AlreadyExecuted(reqs[2], 3)]
    assert node.submit(reqs[0]) == [ev.AlreadyExecuted(reqs[0], 1)]
    # Window is (2, 6]: seq 6 accepted, seq 7 not.
    assert sent_bodies(node.deliver(pre_prepare(0, 7, [request("bob", 7)])), m.Prepare) == []
    pp6 = pre_prepare(0, 6, [request("bob", 6)])
    assert sent_bodies(node.deliver(pp6), m.Prepare) == [m.Prepare(0, 0, 6, digest_of(pp6))]


def test_restarted_backup_executes_the_batch_it_persisted_with_its_prepare() -> None:
    """4.2 + v2 headers: the proposal is persisted with its batch before the PREPARE leaves, so
    a prepared batch survives even if every replica holding it restarts. Replica 2 prepared
    seq 1 and crashed; rebuilt, it asks no one for the batch and executes once 2f+1 COMMITs
    are in, without signing anything new for seq 1."""
    node = make_node(2)
    r = request("alice", 1)
    pp = pre_prepare(0, 1, [r])
    d = digest_of(pp)
    node.deliver(pp, prepare(3, 0, 1, d))
    node = restart(node)
    assert sent_bodies(node.start_actions, m.BatchRequest) == []
    actions = node.deliver(commit(0, 0, 1, d), commit(3, 0, 1, d))
    (e,) = of_type(actions, ev.Execute)
    assert (e.seq, e.digest, e.requests, e.executed) == (1, d, (r,), (r,))
    assert [c.sender for c in e.certificate] == [0, 2, 3]
    assert sent_bodies(actions, m.Prepare) == [] and sent_bodies(actions, m.Commit) == []


def test_a_persisted_batch_that_does_not_match_its_header_is_fetched_again() -> None:
    """A damaged log: the batch stored with a proposal does not hash to its root. The rebuilt
    replica does not trust it: it asks the primary (BATCH-REQUEST), refuses a wrong answer as
    a fault, and executes with the right one."""
    node = make_node(2)
    r = request("alice", 1)
    pp = pre_prepare(0, 1, [r])
    d = digest_of(pp)
    node.deliver(pp, prepare(3, 0, 1, d))
    node.persisted = [dataclasses.replace(x, batch=(request("bob", 1),))
                      if isinstance(x.body, m.PrePrepare) else x for x in node.persisted]
    node = restart(node)
    asked = [(to, msg.body) for to, msg in sent(node.start_actions)
             if isinstance(msg.body, m.BatchRequest)]
    assert asked == [((0,), m.BatchRequest(0, 1, d))]
    node.deliver(commit(0, 0, 1, d), commit(3, 0, 1, d))
    actions = node.deliver(with_batch(header_of(pp), [request("bob", 1)]))
    assert of_type(actions, ev.Execute) == [] and node.replica.last_executed == 0
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [0]
    (e,) = of_type(node.deliver(pp), ev.Execute)
    assert e.requests == (r,)
