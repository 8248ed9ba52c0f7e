"""v2 request pool: pending requests are bounded by count (`pending_requests_max`), by total
bytes (`pending_bytes_max`) and by bytes per client (`client_pending_bytes_max`); past a limit a
new request is refused with OVERLOADED (paper 4.1: the client retries later). Bytes come back
when a request executes; a dropped slot hands its requests back (in flight no longer, queued
again at a primary) without counting them twice.
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.pool import RequestPool
from tests.pbft.harness import (
    Node,
    commit,
    commit_batch,
    digest_of,
    make_node,
    new_view,
    of_type,
    params,
    pre_prepare,
    prepare,
    request,
    sent,
    sent_bodies,
    view_change,
)


def _req(client: str, nonce: int, size: int = 200) -> m.Request:
    r = request(client, nonce, b"p" * (size - 80 - len(client)))
    assert r.size_bytes == size
    return r


# ------------------------------------------------------------------------------ the pool alone

def test_pool_limits_count_total_bytes_and_client_bytes() -> None:
    pool = RequestPool(count_max=3, bytes_max=500, client_bytes_max=300)
    a1, a2 = _req("alice", 1), _req("alice", 2)
    b1, c1 = _req("bob", 1), _req("carol", 1, 100)
    assert pool.add(a1, 0)
    assert not pool.add(a2, 0)  # alice would hold 400 > 300
    assert pool.add(b1, 0)
    assert not pool.add(_req("carol", 2, 101), 0)  # 501 > 500 in total
    assert pool.add(c1, 0)  # exactly 500
    assert (len(pool), pool.bytes) == (3, 500)
    assert not pool.add(_req("dave", 1, 90), 0)  # count limit (and bytes)
    assert pool.add(a1, 0)  # already pending: accepted, not counted twice
    assert (len(pool), pool.bytes) == (3, 500)
    assert pool.remove(a1.key) == a1
    assert pool.bytes == 300 and pool.add(a2, 1)  # alice's share is free again
    assert pool.remove(("nobody", 1)) is None
    for key in (a2.key, b1.key, c1.key):
        pool.remove(key)
    assert (len(pool), pool.bytes, pool._client_bytes) == (0, 0, {})


def test_pool_release_requeues_at_a_primary_without_counting_twice() -> None:
    pool = RequestPool(10, 10_000, 10_000)
    r = _req("alice", 1)
    pool.add(r, 0)
    pool.queue.put(r)
    assert pool.queue.bytes == 200
    pool.mark_in_flight(r)
    assert (len(pool.queue), pool.queue.bytes, pool.in_flight) == (0, 0, {r.key})
    assert pool.waiting() == []
    pool.release(r, requeue=True)
    assert (len(pool.queue), pool.queue.bytes, pool.in_flight) == (1, 200, set())
    assert pool.bytes == 200 and pool.waiting() == [r]
    pool.release(r, requeue=True)  # not in flight: nothing changes
    assert pool.queue.bytes == 200
    pool.mark_in_flight(r)
    pool.release(r, requeue=False)  # a backup: no queue
    assert (len(pool.queue), pool.in_flight, pool.bytes) == (0, set(), 200)
    pool.remove(r.key)
    assert (pool.bytes, pool.queue.bytes) == (0, 0)


# ---------------------------------------------------------------------------- at the replica

def _limited(replica_id: int) -> Node:
    return make_node(replica_id, params(pending_requests_max=3, pending_bytes_max=500,
                                        client_pending_bytes_max=300, request_bytes_max=300))


def _overloaded(actions: list[ev.Action], r: m.Request) -> bool:
    return actions == [ev.RejectRequest(r, ev.RejectReason.OVERLOADED)]


def test_primary_refuses_past_each_limit_with_overloaded() -> None:
    node = _limited(0)
    a1, a2, b1 = _req("alice", 1), _req("alice", 2), _req("bob", 1)
    assert sent_bodies(node.submit(a1), m.PrePrepare)  # proposed, still pending (in flight)
    assert _overloaded(node.submit(a2), a2)  # per client: 400 > 300
    assert sent_bodies(node.submit(b1), m.PrePrepare)
    c1 = _req("carol", 1, 101)
    assert _overloaded(node.submit(c1), c1)  # total: 501 > 500
    c2 = _req("carol", 2, 100)
    assert sent_bodies(node.submit(c2), m.PrePrepare)  # exactly 500
    assert len(node.replica.pool) == 3 and node.replica.pool.bytes == 500
    counted = make_node(0, params(pending_requests_max=2))
    r1, r2, r3 = _req("alice", 1), _req("bob", 1), _req("carol", 1)
    assert sent_bodies(counted.submit(r1), m.PrePrepare)
    assert sent_bodies(counted.submit(r2), m.PrePrepare)
    assert _overloaded(counted.submit(r3), r3)  # count limit, bytes to spare


def test_bytes_are_released_when_the_request_executes() -> None:
    node = _limited(0)
    a1, a2 = _req("alice", 1), _req("alice", 2)
    node.submit(a1)
    assert _overloaded(node.submit(a2), a2)
    d = digest_of(pre_prepare(0, 1, [a1]))
    node.deliver(prepare(1, 0, 1, d), prepare(2, 0, 1, d), commit(1, 0, 1, d), commit(2, 0, 1, d))
    assert node.replica.last_executed == 1
    assert node.replica.pool.bytes == 0 and len(node.replica.pool) == 0
    assert [msg.batch for _to, msg in sent(node.submit(a2))
            if isinstance(msg.body, m.PrePrepare)] == [(a2,)]


def test_backup_retry_is_refused_when_the_client_share_is_full_and_taken_after_execution() -> None:
    """At a backup, requests of adopted proposals count too (they are pending there: it times
    them); once executed, the client's share is free for its retry."""
    node = _limited(2)
    a1, a2 = _req("alice", 1), _req("alice", 2)
    node.deliver(pre_prepare(0, 1, [a1]))
    assert node.replica.pool.bytes == 200
    assert _overloaded(node.submit(a2, retry=True), a2)
    commit_batch(node, 1, [a1])
    assert node.replica.pool.bytes == 0
    actions = node.submit(a2, retry=True)
    assert [b.requests for b in sent_bodies(actions, m.RequestForward)] == [(a2,)]


def test_dropped_slot_hands_its_requests_back_to_the_new_primary() -> None:
    """4.4: replica 1 adopted view 0's proposal of r at seq 1 (r is in flight there); the view
    changes with nothing prepared, so NEW-VIEW(1) drops the slot. As the new primary, replica 1
    proposes r again, counted once in its pool; executing it frees the bytes."""
    node = make_node(1)
    r = _req("alice", 1)
    node.deliver(pre_prepare(0, 1, [r]))
    pool = node.replica.pool
    assert r.key in pool.in_flight and pool.bytes == 200
    actions = node.deliver(view_change(2, 1), view_change(3, 1))
    assert sent_bodies(actions, m.NewView)
    proposed = [msg for _to, msg in sent(actions) if isinstance(msg.body, m.PrePrepare)]
    assert [(p.body.view, p.body.seq, p.batch) for p in proposed
            if isinstance(p.body, m.PrePrepare)] == [(1, 1, (r,))]
    assert pool.bytes == 200 and len(pool) == 1 and pool.queue.bytes == 0
    d = digest_of(pre_prepare(1, 1, [r]))
    node.deliver(prepare(2, 1, 1, d), prepare(3, 1, 1, d), commit(2, 1, 1, d), commit(3, 1, 1, d))
    assert node.replica.last_executed == 1
    assert (pool.bytes, len(pool), pool.in_flight) == (0, 0, set())


def test_a_backup_keeps_a_dropped_slot_request_pending_and_times_it() -> None:
    """At a backup the dropped slot's request stays pending (it is a valid request the new
    primary must order), no longer in flight, and the REQUEST timer keeps running for it."""
    node = make_node(3)
    r = _req("alice", 1)
    node.deliver(pre_prepare(0, 1, [r]))
    nv = new_view(1, 1, [view_change(0, 1), view_change(1, 1), view_change(2, 1)], [])
    actions = node.deliver(nv)
    assert ev.ViewEntered(1, 1) in actions
    pool = node.replica.pool
    assert r.key in pool and r.key not in pool.in_flight and pool.bytes == 200
    assert ev.TimerKind.REQUEST in node.timers
    assert of_type(actions, ev.RejectRequest) == []
