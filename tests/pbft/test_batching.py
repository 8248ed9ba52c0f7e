"""v2 adaptive batching (paper 4.2 batching optimisation, made load-dependent).

With nothing in flight the primary proposes a request at once (a quiet consortium answers
fast); with batches in flight a partial batch waits `batch_delay_ms` (the BATCH timer) to fill;
with `partial_batches_in_flight_max` batches in flight it waits for an execution, which then
proposes what accumulated (Nagle-style); a full batch never waits while the pipeline has room.
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import (
    Node,
    commit,
    digest_of,
    make_node,
    of_type,
    params,
    pre_prepare,
    prepare,
    request,
    sent,
)

DELAY = 5


def _primary(**overrides: int) -> Node:
    base = dict(batch_delay_ms=DELAY, partial_batches_in_flight_max=2, batch_requests_max=3)
    base.update(overrides)
    return make_node(0, params(**base))


def _proposed(actions: list[ev.Action]) -> list[tuple[int, tuple[m.Request, ...] | None]]:
    return [(msg.body.seq, msg.batch) for _to, msg in sent(actions)
            if isinstance(msg.body, m.PrePrepare)]


def _batch_timers(actions: list[ev.Action]) -> list[int]:
    return [a.delay_ms for a in of_type(actions, ev.SetTimer) if a.kind is ev.TimerKind.BATCH]


def _execute_at_primary(node: Node, seq: int, requests: list[m.Request]) -> list[ev.Action]:
    d = digest_of(pre_prepare(0, seq, requests))
    return node.deliver(prepare(1, 0, seq, d), prepare(2, 0, seq, d), commit(1, 0, seq, d),
                        commit(2, 0, seq, d))


def test_idle_primary_proposes_a_request_at_once() -> None:
    node = _primary()
    r = request("alice", 1)
    actions = node.submit(r)
    assert _proposed(actions) == [(1, (r,))]
    assert _batch_timers(actions) == []
    # Idle again after it executes: the next lone request goes at once too.
    _execute_at_primary(node, 1, [r])
    r2 = request("alice", 2)
    assert _proposed(node.submit(r2)) == [(2, (r2,))]


def test_with_one_batch_in_flight_a_partial_batch_waits_for_the_batch_timer() -> None:
    node = _primary()
    node.submit(request("alice", 1))
    r2, r3 = request("bob", 1), request("carol", 1)
    actions = node.submit(r2)
    assert _proposed(actions) == [] and _batch_timers(actions) == [DELAY]
    actions = node.submit(r3)
    assert actions == []  # the timer is armed once
    assert _proposed(node.fire(ev.TimerKind.BATCH)) == [(2, (r2, r3))]


def test_a_full_batch_never_waits() -> None:
    node = _primary()
    node.submit(request("alice", 1))
    full = [request("bob", i) for i in (1, 2, 3)]
    node.submit(full[0])
    node.submit(full[1])
    actions = node.submit(full[2])
    assert _proposed(actions) == [(2, tuple(full))]
    assert ev.CancelTimer(ev.TimerKind.BATCH) in actions
    # Even with partial_batches_in_flight_max batches in flight, a full one goes out.
    more = [request("carol", i) for i in (1, 2, 3)]
    for r in more[:2]:
        assert _proposed(node.submit(r)) == []
    assert _proposed(node.submit(more[2])) == [(3, tuple(more))]


def test_at_the_partial_limit_requests_wait_for_an_execution_then_go_at_once() -> None:
    """With partial_batches_in_flight_max (2) batches in flight, a partial batch is held even
    when the BATCH timer fires; the next execution proposes what accumulated, without a second
    batch delay (the requests already waited for it)."""
    node = _primary()
    r1, r2 = request("alice", 1), request("alice", 2)
    node.submit(r1)
    node.submit(r2)
    assert _proposed(node.fire(ev.TimerKind.BATCH)) == [(2, (r2,))]
    held = [request("bob", 1), request("carol", 1)]
    for r in held:
        actions = node.submit(r)
        assert _proposed(actions) == []
    assert ev.TimerKind.BATCH not in node.timers
    actions = _execute_at_primary(node, 1, [r1])
    assert [e.seq for e in of_type(actions, ev.Execute)] == [1]
    assert _proposed(actions) == [(3, tuple(held))]


def test_pipeline_depth_still_bounds_full_batches() -> None:
    node = _primary(pipeline_depth=2)
    node.submit(request("alice", 1))
    full = [request("bob", i) for i in (1, 2, 3)]
    for r in full:
        node.submit(r)
    more = [request("carol", i) for i in (1, 2, 3)]
    actions: list[ev.Action] = []
    for r in more:
        actions += node.submit(r)
    assert _proposed(actions) == []  # two in flight = pipeline depth
    assert _proposed(_execute_at_primary(node, 1, [request("alice", 1)])) == [(3, tuple(more))]
