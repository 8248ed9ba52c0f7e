"""Client request rules (Castro & Liskov, OSDI 1999, section 4.1 client, 4.2 normal case).

A request is identified by (client, nonce) (the paper's timestamp t); it executes at most once,
a retried request that already executed is answered from the log, and requests that are not
validly signed by a registered client never enter a batch.
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from tests.pbft.harness import (
    CHAIN_ID,
    CLIENT_SIGNERS,
    OUTSIDER,
    commit_batch,
    make_node,
    of_type,
    params,
    pre_prepare,
    request,
    sent,
    sent_bodies,
    sign,
    wire_of,
)


def proposed_batches(actions: list[ev.Action]) -> list[tuple[m.Request, ...] | None]:
    """The batches attached to the PRE-PREPAREs sent (v2: the batch travels beside the header)."""
    return [msg.batch for _to, msg in sent(actions) if isinstance(msg.body, m.PrePrepare)]

# ------------------------------------------------------------------------------ admission

def test_unknown_client_is_rejected() -> None:
    """4.1/4.2: only registered clients may submit; a request from an unknown client id is
    refused with UNKNOWN_CLIENT and nothing is proposed or forwarded."""
    for rid in (0, 2):  # primary and backup
        node = make_node(rid)
        r = request("mallory", 1, signer=OUTSIDER)
        assert node.submit(r) == [ev.RejectRequest(r, ev.RejectReason.UNKNOWN_CLIENT)]


def test_badly_signed_request_is_rejected() -> None:
    """4.2: the client's signature must verify: signed by another client's key, or for another
    chain, the request is refused with BAD_SIGNATURE."""
    node = make_node(0)
    wrong_key = request("bob", 1, signer=CLIENT_SIGNERS["alice"])
    wrong_chain = request("bob", 2, chain_id=CHAIN_ID + b"-other")
    assert node.submit(wrong_key) == [ev.RejectRequest(wrong_key,
                                                       ev.RejectReason.BAD_SIGNATURE)]
    assert node.submit(wrong_chain) == [ev.RejectRequest(wrong_chain,
                                                         ev.RejectReason.BAD_SIGNATURE)]


def test_oversized_request_is_rejected_and_one_at_the_limit_is_accepted() -> None:
    """Request size limit (request_bytes_max): larger is TOO_LARGE, exactly the limit is fine."""
    limit = 300
    node = make_node(0, params(request_bytes_max=limit))
    at_limit = request("alice", 1, b"a" * (limit - 80 - len("alice")))
    too_big = request("alice", 2, b"a" * (limit - 80 - len("alice") + 1))
    assert at_limit.size_bytes == limit and too_big.size_bytes == limit + 1
    assert node.submit(too_big) == [ev.RejectRequest(too_big, ev.RejectReason.TOO_LARGE)]
    actions = node.submit(at_limit)
    assert proposed_batches(actions) == [(at_limit,)]


def test_retried_request_that_already_executed_is_answered_with_its_seq() -> None:
    """4.1/4.2: a replica remembers the last reply per client; a retransmitted request that
    already executed is not ordered again but answered (AlreadyExecuted with its seq)."""
    node = make_node(2)
    r1, r2 = request("alice", 1), request("bob", 1)
    commit_batch(node, 1, [r1])
    commit_batch(node, 2, [r2])
    assert node.submit(r2) == [ev.AlreadyExecuted(r2, 2)]
    assert node.submit(r1) == [ev.AlreadyExecuted(r1, 1)]
    primary = make_node(0)
    assert of_type(primary.submit(r1), ev.AlreadyExecuted) == []  # not executed there


def test_nonce_below_the_window_is_stale() -> None:
    """4.1 (timestamps): a request whose nonce is older than the client's replay window is
    refused as STALE; a nonce just inside the window is still accepted.

    v2: at a backup, "accepted" means redirected to the primary (NOT_PRIMARY) on a first
    submission and taken in (relayed to the primary) on a retry; a stale one is STALE either
    way."""
    node = make_node(2, params(client_nonce_window=4))
    commit_batch(node, 1, [request("alice", 10)])
    stale = request("alice", 6)  # 6 <= 10 - 4
    fresh = request("alice", 7)
    assert node.submit(stale) == [ev.RejectRequest(stale, ev.RejectReason.STALE)]
    assert node.submit(stale, retry=True) == [ev.RejectRequest(stale, ev.RejectReason.STALE)]
    assert node.submit(fresh) == [ev.RejectRequest(fresh, ev.RejectReason.NOT_PRIMARY, 0)]
    actions = node.submit(fresh, retry=True)
    assert [b.requests for b in sent_bodies(actions, m.RequestForward)] == [(fresh,)]


def test_stale_request_inside_a_batch_is_skipped_at_execution() -> None:
    """4.2 at-most-once: a stale request that a primary puts in a batch does not take effect."""
    node = make_node(2, params(client_nonce_window=4))
    commit_batch(node, 1, [request("alice", 10)])
    stale, fresh = request("alice", 3), request("bob", 1)
    actions = commit_batch(node, 2, [stale, fresh])
    (e,) = of_type(actions, ev.Execute)
    assert e.requests == (stale, fresh) and e.executed == (fresh,)


def test_request_twice_in_one_batch_executes_once() -> None:
    """4.2 at-most-once: the same request twice in a batch takes effect once."""
    node = make_node(2)
    r = request("alice", 1)
    actions = commit_batch(node, 1, [r, r])
    (e,) = of_type(actions, ev.Execute)
    assert e.requests == (r, r) and e.executed == (r,)


def test_request_replayed_in_a_later_batch_executes_once() -> None:
    """4.2 at-most-once: a request already executed at seq 1 and proposed again at seq 2 is in
    the batch but not in Execute.executed."""
    node = make_node(2)
    r, other = request("alice", 1), request("bob", 1)
    commit_batch(node, 1, [r])
    actions = commit_batch(node, 2, [r, other])
    (e,) = of_type(actions, ev.Execute)
    assert e.seq == 2 and e.requests == (r, other) and e.executed == (other,)
    assert node.submit(r) == [ev.AlreadyExecuted(r, 1)]


def test_out_of_nonce_order_requests_inside_the_window_both_execute() -> None:
    """4.1 (pipelined clients): nonces inside the window may be ordered out of nonce order; each
    executes exactly once."""
    node = make_node(2)
    r5, r3 = request("alice", 5), request("alice", 3)
    e1 = of_type(commit_batch(node, 1, [r5]), ev.Execute)
    e2 = of_type(commit_batch(node, 2, [r3]), ev.Execute)
    assert [e.executed for e in (*e1, *e2)] == [(r5,), (r3,)]
    assert node.submit(r3) == [ev.AlreadyExecuted(r3, 2)]


# -------------------------------------------------------------------------- backups relay

def test_backup_redirects_a_first_submission_to_the_primary() -> None:
    """4.1: "a client sends a request to what it believes is the current primary".

    v2 (deliberate change): a backup no longer relays a first submission; it answers
    NOT_PRIMARY naming the primary, keeps nothing and times nothing (no signed forward per
    request on the normal path)."""
    node = make_node(2)
    r = request("alice", 1)
    assert node.submit(r) == [ev.RejectRequest(r, ev.RejectReason.NOT_PRIMARY, primary=0)]
    assert r.key not in node.replica.pool
    assert ev.TimerKind.REQUEST not in node.timers


def test_backup_relays_a_retried_request_to_the_primary_and_arms_request_timer() -> None:
    """4.1/4.4: a client that got no answer in time retries at the backups; a backup then
    takes the request in, relays it to the primary and starts a timer; if the request does not
    execute in time the backup suspects the primary (v2: only on a retry)."""
    node = make_node(2)
    r = request("alice", 1)
    actions = node.submit(r, retry=True)
    fwd = sign(2, m.RequestForward((r,)))
    assert actions[0] == ev.Send((0,), fwd.wire)
    timers = of_type(actions, ev.SetTimer)
    assert [(t.kind, t.delay_ms) for t in timers] == [(ev.TimerKind.REQUEST, 1000)]
    assert len(actions) == 2
    assert r.key in node.replica.pool


def test_a_second_retry_is_relayed_to_every_replica() -> None:
    """4.1: a client that retransmits again suspects the primary, so the backup relays the
    retry to all replicas (and keeps timing the same oldest request: no new timer).
    v2: the first retry goes to the primary only (above); the second is broadcast."""
    node = make_node(2)
    r = request("alice", 1)
    node.submit(r, retry=True)
    actions = node.submit(r, retry=True)
    fwd = sign(2, m.RequestForward((r,)))
    assert actions == [ev.Send((0, 1, 3), fwd.wire)]


def test_backup_in_view_change_takes_a_direct_submission_in() -> None:
    """4.4: while a view change is under way there is no primary to redirect to: a backup takes
    a first submission in (the new primary will order it) instead of answering NOT_PRIMARY."""
    node = make_node(2)
    node.submit(request("alice", 1), retry=True)
    node.suspect_primary()
    assert not node.replica.view_active
    r = request("bob", 1)
    actions = node.submit(r)
    assert of_type(actions, ev.RejectRequest) == [] and sent(actions) == []
    assert r.key in node.replica.pool


def test_primary_proposes_a_forwarded_request() -> None:
    """4.2: requests relayed by a backup are ordered by the primary like direct ones."""
    node = make_node(0)
    r = request("alice", 1)
    actions = node.deliver(sign(3, m.RequestForward((r,))))
    expected = pre_prepare(0, 1, [r])
    assert actions == [ev.Persist((expected,)), ev.Send((1, 2, 3), wire_of(expected))]


def test_forwarded_request_with_bad_signature_is_a_peer_fault_not_a_proposal() -> None:
    """4.2: a relayed request is checked like a direct one; the relaying replica is blamed."""
    node = make_node(0)
    bad = request("alice", 1, signer=CLIENT_SIGNERS["bob"])
    actions = node.deliver(sign(3, m.RequestForward((bad,))))
    assert sent(actions) == []
    assert len(of_type(actions, ev.PeerFault)) == 1
    assert of_type(actions, ev.RejectRequest) == []


def test_request_timer_cancelled_once_the_request_executes() -> None:
    """4.4: the backup's timer stops when the timed request executes."""
    node = make_node(2)
    r = request("alice", 1)
    node.submit(r, retry=True)
    assert ev.TimerKind.REQUEST in node.timers
    actions = commit_batch(node, 1, [r])
    assert ev.CancelTimer(ev.TimerKind.REQUEST) in actions
    assert ev.TimerKind.REQUEST not in node.timers


def test_request_timer_restarts_for_the_next_waiting_request() -> None:
    """4.4: when the timed request executes but the backup is still waiting for another one, the
    timer is restarted (for the oldest request still waiting)."""
    node = make_node(2)
    r1, r2 = request("alice", 1), request("bob", 1)
    node.submit(r1, retry=True)
    node.submit(r2, retry=True)
    (old_token, _) = node.timers[ev.TimerKind.REQUEST]
    actions = commit_batch(node, 1, [r1])
    timers = of_type(actions, ev.SetTimer)
    assert [(t.kind, t.delay_ms) for t in timers][-1] == (ev.TimerKind.REQUEST, 1000)
    assert node.timers[ev.TimerKind.REQUEST][0] != old_token
    # The superseded timer firing late is ignored: no view change.
    assert node.replica.step(ev.TimerFired(ev.TimerKind.REQUEST, old_token)) == []
    assert node.replica.view == 0 and node.replica.view_active
