"""Normal-case operation (Castro & Liskov, OSDI 1999, section 4.2), one message at a time.

Replica 0 is the primary of view 0; the replica under test is usually backup 2. Every message fed
to it is really signed with the sender's Ed25519 key, and the tests assert the exact actions.
"""

from __future__ import annotations

import struct

from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    batch_root,
    next_state_digest,
    snapshot_digest,
)
from tests.pbft.harness import (
    CHAIN_ID,
    CLIENT_SIGNERS,
    GENESIS,
    SIGNERS,
    Node,
    checkpoint,
    commit,
    digest_of,
    header_of,
    index_of,
    is_send_of,
    make_node,
    of_type,
    params,
    pre_prepare,
    prepare,
    request,
    sent,
    sent_bodies,
    sign,
    summarize,
    wire_of,
    with_batch,
)

BACKUPS_OF_0 = (1, 2, 3)


def batch_digest(requests: list[m.Request]) -> bytes:
    """v2: what votes sign for a batch proposed without a clock (timestamp 0)."""
    return m.proposal_digest(batch_root(requests), len(requests), 0)


# --------------------------------------------------------------------------- primary: batching

def test_primary_assigns_next_sequence_number_and_multicasts_pre_prepare() -> None:
    """4.2: the primary assigns sequence number n to a request and multicasts
    PRE-PREPARE(v, n, d) with the request to the backups, persisting it first.

    v2: the PRE-PREPARE signs a header (root, count, timestamp) and the batch travels beside it
    as an unsigned attachment; what is persisted is the header alone."""
    node = make_node(0)
    r = request("alice", 1)
    actions = node.submit(r)
    expected = pre_prepare(0, 1, [r])
    assert actions == [ev.Persist((expected,)), ev.Send(BACKUPS_OF_0, wire_of(expected))]
    persisted = of_type(actions, ev.Persist)[0].messages[0]
    assert persisted.wire == header_of(expected).wire
    body = expected.body
    assert isinstance(body, m.PrePrepare)
    assert body.digest == batch_digest([r]) and (body.root, body.count) == (batch_root([r]), 1)
    assert expected.batch == (r,)

    r2 = request("bob", 1)
    actions = node.submit(r2)
    assert actions == [ev.Persist((pre_prepare(0, 2, [r2]),)),
                       ev.Send(BACKUPS_OF_0, wire_of(pre_prepare(0, 2, [r2])))]


def test_primary_waits_batch_delay_then_cuts_a_partial_batch() -> None:
    """4.2 (batching optimisation): with batch_delay_ms > 0 and a batch in flight, a request
    arms the BATCH timer instead of being proposed; when the timer fires, the partial batch
    goes out.

    v2 (adaptive batching): an idle primary proposes a lone request at once, so a first
    request (r0) goes out first and the delay applies to what follows."""
    node = make_node(0, params(batch_delay_ms=7, batch_requests_max=3))
    r0, r1, r2 = request("carol", 1), request("alice", 1), request("bob", 1)
    assert sent_bodies(node.submit(r0), m.PrePrepare) == [pre_prepare(0, 1, [r0]).body]
    actions = node.submit(r1)
    assert [type(a) for a in actions] == [ev.SetTimer]
    assert isinstance(actions[0], ev.SetTimer)
    assert (actions[0].kind, actions[0].delay_ms) == (ev.TimerKind.BATCH, 7)
    assert node.submit(r2) == []  # timer already armed: no second timer, no proposal
    actions = node.fire(ev.TimerKind.BATCH)
    expected = pre_prepare(0, 2, [r1, r2])
    assert actions == [ev.Persist((expected,)), ev.Send(BACKUPS_OF_0, wire_of(expected))]


def test_primary_cuts_a_full_batch_at_batch_requests_max() -> None:
    """4.2 batching: a batch never exceeds batch_requests_max; reaching the limit sends it at
    once (cancelling the batch timer), and the remainder waits for the next batch.

    v2: r0 keeps one batch in flight (an idle primary would propose r1 at once)."""
    node = make_node(0, params(batch_delay_ms=7, batch_requests_max=2))
    r0 = request("carol", 1)
    r1, r2, r3 = request("alice", 1), request("alice", 2), request("alice", 3)
    node.submit(r0)
    assert [a.kind for a in of_type(node.submit(r1), ev.SetTimer)] == [ev.TimerKind.BATCH]
    actions = node.submit(r2)
    full = pre_prepare(0, 2, [r1, r2])
    assert actions == [ev.Persist((full,)), ev.Send(BACKUPS_OF_0, wire_of(full)),
                       ev.CancelTimer(ev.TimerKind.BATCH)]
    actions = node.submit(r3)
    assert [(a.kind, a.delay_ms) for a in of_type(actions, ev.SetTimer)] == [
        (ev.TimerKind.BATCH, 7)]
    assert sent(actions) == []
    actions = node.fire(ev.TimerKind.BATCH)
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 3, [r3]).body]


def test_primary_respects_batch_bytes_max() -> None:
    """4.2 batching: a batch's total request size stays within batch_bytes_max.

    v2: r0 keeps one batch in flight, so r1 waits for the batch timer (an idle primary would
    propose it at once)."""
    r0 = request("carol", 1)
    r1, r2 = request("alice", 1, b"x" * 100), request("bob", 1, b"y" * 100)
    limit = r1.size_bytes + r2.size_bytes - 1
    node = make_node(0, params(batch_delay_ms=7, batch_bytes_max=limit, request_bytes_max=limit))
    node.submit(r0)
    assert sent(node.submit(r1)) == []
    actions = node.submit(r2)  # does not fit with r1: r1 goes alone, r2 waits for the timer
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 2, [r1]).body]
    actions = node.fire(ev.TimerKind.BATCH)
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 3, [r2]).body]


def _commit_at_primary(node: Node, seq: int, pp: m.SignedMessage) -> list[ev.Action]:
    """Feed the primary 2f PREPAREs and 2f COMMITs (from backups 1, 2) for `pp`."""
    d = digest_of(pp)
    out = node.deliver(prepare(1, 0, seq, d), prepare(2, 0, seq, d))
    out += node.deliver(commit(1, 0, seq, d), commit(2, 0, seq, d))
    return out


def test_primary_limits_in_flight_sequences_to_pipeline_depth() -> None:
    """4.2 (flow control): at most pipeline_depth sequence numbers are in flight beyond the last
    executed one; the next batch is proposed as soon as one executes."""
    node = make_node(0, params(pipeline_depth=2))
    r1, r2, r3 = request("alice", 1), request("alice", 2), request("alice", 3)
    node.submit(r1)
    node.submit(r2)
    assert node.submit(r3) == []  # seqs 1 and 2 in flight: r3 is queued
    actions = _commit_at_primary(node, 1, pre_prepare(0, 1, [r1]))
    i_exec = index_of(actions, lambda a: isinstance(a, ev.Execute))
    i_pp = index_of(actions, is_send_of(m.PrePrepare))
    assert i_exec < i_pp
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 3, [r3]).body]


def test_primary_never_proposes_above_the_high_watermark() -> None:
    """4.3: sequence numbers must stay in (h, H] with H = h + L; the primary holds batches once
    H is reached, even if the pipeline has room, until a checkpoint becomes stable."""
    p = params(checkpoint_interval=2, log_window=4, pipeline_depth=4)
    node = make_node(0, p)
    reqs = [request("alice", i) for i in range(1, 7)]
    for r in reqs[:4]:
        node.submit(r)
    for seq in (1, 2):
        _commit_at_primary(node, seq, pre_prepare(0, seq, [reqs[seq - 1]]))
    assert node.replica.last_executed == 2 and node.replica.stable_seq == 0
    # Pipeline would allow seq 5 and 6 (2 executed, depth 4), but H = 0 + 4.
    assert node.submit(reqs[4]) == []
    assert node.submit(reqs[5]) == []
    digest = snapshot_digest(GENESIS, node.replica.snapshot())
    assert node.deliver(checkpoint(1, 2, digest)) == []
    actions = node.deliver(checkpoint(2, 2, digest))
    assert node.replica.stable_seq == 2
    i_stable = index_of(actions, lambda a: isinstance(a, ev.PersistSnapshot))
    i_pp = index_of(actions, is_send_of(m.PrePrepare))
    assert i_stable < i_pp
    # Both held requests go out together in the first batch above the old watermark.
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 5, reqs[4:6]).body]


def test_partial_batches_wait_for_an_execution_when_enough_are_in_flight() -> None:
    """Batching under load (not in the paper): with partial_batches_in_flight_max batches in
    flight, a partial batch is held, and the next execution proposes everything that
    accumulated as one batch (so per-batch costs are shared by many requests)."""
    p = params(pipeline_depth=8, partial_batches_in_flight_max=2)
    node = make_node(0, p)
    reqs = [request("alice", i) for i in range(1, 7)]
    first = node.submit(reqs[0])
    second = node.submit(reqs[1])
    assert sent_bodies(first, m.PrePrepare) == [pre_prepare(0, 1, [reqs[0]]).body]
    assert sent_bodies(second, m.PrePrepare) == [pre_prepare(0, 2, [reqs[1]]).body]
    for r in reqs[2:]:  # two in flight: these wait
        assert sent_bodies(node.submit(r), m.PrePrepare) == []
    actions = _commit_at_primary(node, 1, pre_prepare(0, 1, [reqs[0]]))
    assert sent_bodies(actions, m.PrePrepare) == [pre_prepare(0, 3, reqs[2:]).body]


# ---------------------------------------------------------------------- backup: pre-prepare

def test_backup_accepts_pre_prepare_and_multicasts_prepare_after_persisting_it() -> None:
    """4.2: a backup accepts PRE-PREPARE(v, n, d) from the primary of its view and multicasts
    PREPARE(v, n, d, i) to all replicas; the vote, and the proposal with its batch, are
    persisted before it is sent."""
    node = make_node(2)
    r = request()
    pp = pre_prepare(0, 1, [r])
    actions = node.deliver(pp)
    own = prepare(2, 0, 1, digest_of(pp))
    assert actions[:2] == [ev.Persist((header_of(pp), own)), ev.Send((0, 1, 3), own.wire)]
    persist = actions[0]
    assert isinstance(persist, ev.Persist) and persist.messages[0].batch == (r,)
    # The request is now known: the backup times it (4.4).
    assert [(a.kind, a.delay_ms) for a in actions[2:] if isinstance(a, ev.SetTimer)] == [
        (ev.TimerKind.REQUEST, 1000)]
    assert len(actions) == 3


def test_backup_accepts_a_pre_prepare_with_an_empty_batch() -> None:
    """4.2/4.4: an empty (null) batch is a valid proposal; the backup prepares it but has no
    request to time."""
    node = make_node(3)
    pp = pre_prepare(0, 1, [])
    actions = node.deliver(pp)
    own = prepare(3, 0, 1, digest_of(pp))
    assert actions == [ev.Persist((header_of(pp), own)), ev.Send((0, 1, 2), own.wire)]


def test_backup_rejects_pre_prepare_from_a_non_primary() -> None:
    """4.2: a backup accepts a PRE-PREPARE only if it comes from the primary of view v."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request()], sender=1)
    actions = node.deliver(pp)
    assert sent(actions) == [] and of_type(actions, ev.Persist) == []
    assert [a.sender for a in of_type(actions, ev.PeerFault)] == [1]


def test_backup_rejects_pre_prepare_with_a_forged_primary_signature() -> None:
    """4.2: "the signatures in the request and the pre-prepare message are correct": a
    PRE-PREPARE claiming to come from the primary but signed with another key is dropped
    (v2: the signature covers the header; the batch rides beside it)."""
    node = make_node(2)
    header = m.PrePrepare(0, 0, 1, batch_root([request()]), 1, 0)
    forged = with_batch(sign(0, header, key_of=1), [request()])
    actions = node.deliver(forged)
    assert sent(actions) == []
    assert [a.sender for a in of_type(actions, ev.PeerFault)] == [0]


def test_backup_does_not_prepare_a_pre_prepare_for_another_view() -> None:
    """4.2: "it is in view v": a PRE-PREPARE for a later view (from that view's primary) gets no
    PREPARE while the backup is still in view 0."""
    node = make_node(2)
    pp = pre_prepare(1, 1, [request()])  # signed by replica 1, primary of view 1
    assert node.deliver(pp) == []
    assert node.replica.view == 0


def test_backup_ignores_pre_prepare_outside_the_watermarks() -> None:
    """4.2: "the sequence number in the pre-prepare message is between a low water mark, h, and a
    high water mark, H" (H = h + L); seq 0 and seq > L are ignored, seq L is accepted."""
    node = make_node(2, params(checkpoint_interval=2, log_window=4))
    assert node.deliver(pre_prepare(0, 5, [request("alice", 5)])) == []
    assert node.deliver(pre_prepare(0, 0, [request("alice", 6)])) == []
    actions = node.deliver(pre_prepare(0, 4, [request("alice", 4)]))
    assert [b.seq for b in sent_bodies(actions, m.Prepare)] == [4]


def test_backup_rejects_pre_prepare_whose_root_does_not_match_the_batch() -> None:
    """4.2: "d is the digest for m": a PRE-PREPARE whose header does not commit to the batch it
    carries is rejected.

    v2: the digest is proposal_digest(root, count, time), so the check is that the attached
    batch's Merkle root is the header's `root` (a root mismatch, not a digest mismatch)."""
    node = make_node(2)
    r1, r2 = request("alice", 1), request("bob", 1)
    pp = pre_prepare(0, 1, [r1], root=batch_root([r2]))
    actions = node.deliver(pp)
    assert sent(actions) == [] and of_type(actions, ev.Persist) == []
    faults = of_type(actions, ev.PeerFault)
    assert [a.sender for a in faults] == [0] and "root" in faults[0].reason
    # A correct pre-prepare for the same slot is still accepted afterwards.
    actions = node.deliver(pre_prepare(0, 1, [r1]))
    assert [b.seq for b in sent_bodies(actions, m.Prepare)] == [1]


def _raw_pre_prepare(root: bytes, count: int) -> bytes:
    """A PRE-PREPARE header signed by primary 0, encoded by hand (the dataclass refuses to
    build a malformed one), without an attachment."""
    w = codec.Writer()
    w.u8(codec.MsgType.PRE_PREPARE)
    w.u32(0)
    w.u64(0)
    w.u64(1)
    w.fixed(root)
    w.u32(count)
    w.u64(0)
    body = w.getvalue()
    signature = SIGNERS[0].sign(codec.signing_bytes(CHAIN_ID, 0, body))
    return bytes([codec.WIRE_VERSION]) + struct.pack(">HI", 0, len(body)) + body + signature


def test_backup_rejects_an_empty_header_whose_root_is_not_the_empty_root() -> None:
    """4.2 "d is the digest for m", v2: an empty batch needs no attachment, so its header must
    carry the empty Merkle root; a primary's header-only PRE-PREPARE claiming count 0 under
    another root is undecodable (it would otherwise be prepared and executed as an empty
    batch whose certified root matches no contents).

    regression: such a header was prepared, committed and executed, its block certifying a
    root no batch has."""
    node = make_node(2)
    actions = node.deliver_bytes(_raw_pre_prepare(b"\x09" * 32, 0))
    assert sent(actions) == [] and of_type(actions, ev.Persist) == []
    assert "empty Merkle root" in of_type(actions, ev.PeerFault)[0].reason
    actions = node.deliver_bytes(_raw_pre_prepare(batch_root([]), 0))  # the null batch
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 0, 1, m.NULL_DIGEST)]


def test_backup_rejects_pre_prepare_carrying_a_badly_signed_request() -> None:
    """4.2: the client's signature on each request in the batch must be correct."""
    node = make_node(2)
    good = request("alice", 1)
    bad = request("bob", 1, signer=CLIENT_SIGNERS["alice"])  # bob's request, alice's key
    actions = node.deliver(pre_prepare(0, 1, [good, bad]))
    assert sent(actions) == []
    assert [a.sender for a in of_type(actions, ev.PeerFault)] == [0]
    assert "invalid request" in of_type(actions, ev.PeerFault)[0].reason


def test_equivocating_primary_gets_a_fault_and_no_second_prepare() -> None:
    """4.2: a backup accepts a PRE-PREPARE only if "it has not accepted a pre-prepare message for
    view v and sequence number n containing a different digest"."""
    node = make_node(2)
    pp_a = pre_prepare(0, 1, [request("alice", 1)])
    pp_b = pre_prepare(0, 1, [request("bob", 1)])
    node.deliver(pp_a)
    actions = node.deliver(pp_b)
    assert sent(actions) == [] and of_type(actions, ev.Persist) == []
    faults = of_type(actions, ev.PeerFault)
    assert [f.sender for f in faults] == [0] and "equivocated" in faults[0].reason
    # Re-delivering the first pre-prepare does not produce a second vote either.
    assert sent(node.deliver(pp_a)) == []


# ------------------------------------------------------------------------------ prepared

def test_prepared_with_2f_matching_prepares_then_commit_after_persisting_the_proof() -> None:
    """4.2: prepared(m, v, n, i) = pre-prepare + 2f matching PREPAREs from distinct backups (the
    replica's own included); the replica then multicasts COMMIT, persisting the certificate
    (pre-prepare, prepares, commit) before the COMMIT leaves."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request()])
    d = digest_of(pp)
    node.deliver(pp)  # own PREPARE: 1 of 2f
    actions = node.deliver(prepare(3, 0, 1, d))
    own_prepare, own_commit = prepare(2, 0, 1, d), commit(2, 0, 1, d)
    assert actions == [ev.Persist((pp, own_prepare, prepare(3, 0, 1, d), own_commit)),
                       ev.Send((0, 1, 3), own_commit.wire)]


def test_not_prepared_with_only_2f_minus_1_prepares() -> None:
    """4.2: 2f-1 PREPAREs (here: only 1, from another backup, at the primary) are not enough."""
    node = make_node(0)
    r = request()
    node.submit(r)
    d = batch_digest([r])
    assert d == digest_of(pre_prepare(0, 1, [r]))
    actions = node.deliver(prepare(1, 0, 1, d))
    assert actions == []
    actions = node.deliver(prepare(3, 0, 1, d))
    assert sent_bodies(actions, m.Commit) == [m.Commit(0, 0, 1, d)]


def test_prepare_sent_by_the_primary_does_not_count() -> None:
    """4.2: the 2f PREPAREs must come from backups; a PREPARE signed by the primary is faulty and
    is not counted."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request()])
    d = digest_of(pp)
    node.deliver(pp)
    actions = node.deliver(prepare(0, 0, 1, d))
    assert sent(actions) == []
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [0]
    actions = node.deliver(prepare(1, 0, 1, d))
    assert sent_bodies(actions, m.Commit) == [m.Commit(0, 0, 1, d)]


def test_duplicate_prepares_from_one_backup_count_once() -> None:
    """4.2: the 2f PREPAREs come from *distinct* backups: the same PREPARE delivered twice (or a
    duplicate from the same sender) counts once."""
    node = make_node(0)
    r = request()
    node.submit(r)
    d = batch_digest([r])
    p1 = prepare(1, 0, 1, d)
    assert node.deliver(p1) == []
    assert node.deliver(p1) == []
    assert node.deliver(p1) == []
    actions = node.deliver(prepare(2, 0, 1, d))
    assert sent_bodies(actions, m.Commit) == [m.Commit(0, 0, 1, d)]


def test_prepares_for_another_digest_do_not_count() -> None:
    """4.2: the PREPAREs must *match* the pre-prepare (same view, sequence number and digest)."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request("alice", 1)])
    node.deliver(pp)
    other = batch_digest([request("bob", 1)])
    assert sent(node.deliver(prepare(3, 0, 1, other), prepare(1, 0, 1, other))) == []
    actions = node.deliver(prepare(1, 1, 1, digest_of(pp)))  # right digest, wrong view
    assert sent(actions) == []


def test_prepares_that_arrive_before_the_pre_prepare_are_counted() -> None:
    """4.2 (messages may be reordered): PREPAREs logged before the PRE-PREPARE arrives count once
    it does; the backup then prepares and commits on the same step."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request()])
    d = digest_of(pp)
    assert node.deliver(prepare(3, 0, 1, d)) == []
    actions = node.deliver(pp)
    kinds = [type(b).__name__ for b in (msg.body for _to, msg in sent(actions))]
    assert kinds == ["Prepare", "Commit"]
    i_persist_commit = index_of(actions, lambda a: isinstance(a, ev.Persist) and any(
        isinstance(x.body, m.Commit) for x in a.messages))
    assert i_persist_commit < index_of(actions, is_send_of(m.Commit))


# ------------------------------------------------------------------------------ execution

def test_execute_after_2f_plus_1_matching_commits_with_certificate() -> None:
    """4.2: committed-local(m, v, n, i): prepared plus 2f+1 matching COMMITs (own included); the
    replica executes the batch and the Execute action carries the 2f+1 COMMIT certificate."""
    node = make_node(2)
    r = request()
    pp = pre_prepare(0, 1, [r])
    d = digest_of(pp)
    node.deliver(pp, prepare(3, 0, 1, d))  # prepared, own COMMIT sent
    assert node.deliver(commit(0, 0, 1, d)) == []  # 2 of 3 commits
    actions = node.deliver(commit(3, 0, 1, d))
    execs = of_type(actions, ev.Execute)
    assert len(execs) == 1
    e = execs[0]
    assert (e.seq, e.view, e.epoch, e.digest) == (1, 0, 0, d)
    assert e.requests == (r,) and e.executed == (r,)
    assert e.pre_prepare == pp
    assert e.pre_prepare.wire == header_of(pp).wire  # v2: the header, as a block stores it
    assert e.certificate == (commit(0, 0, 1, d), commit(2, 0, 1, d), commit(3, 0, 1, d))
    assert e.state_digest == next_state_digest(GENESIS_STATE_DIGEST, 1, d)
    assert node.replica.last_executed == 1


def test_no_execution_with_2f_commits() -> None:
    """4.2: 2f COMMITs (own + one) do not make a batch committed-local."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request()])
    d = digest_of(pp)
    node.deliver(pp, prepare(3, 0, 1, d))
    actions = node.deliver(commit(3, 0, 1, d), commit(3, 0, 1, d))
    assert of_type(actions, ev.Execute) == []
    assert node.replica.last_executed == 0


def test_commits_for_a_different_digest_do_not_execute() -> None:
    """4.2: the 2f+1 COMMITs must match (v, n, d) of the batch."""
    node = make_node(2)
    pp = pre_prepare(0, 1, [request("alice", 1)])
    d = digest_of(pp)
    node.deliver(pp, prepare(3, 0, 1, d))
    other = batch_digest([request("bob", 1)])
    actions = node.deliver(commit(0, 0, 1, other), commit(3, 0, 1, other))
    assert of_type(actions, ev.Execute) == []


def test_execution_in_sequence_order_only() -> None:
    """4.2: "each replica i executes the operation requested by m after committed-local is true
    and i's state reflects the sequential execution of all requests with lower sequence
    numbers": seq 2 committed before seq 1 waits for seq 1."""
    node = make_node(2)
    r1, r2 = request("alice", 1), request("bob", 1)
    pp1, pp2 = pre_prepare(0, 1, [r1]), pre_prepare(0, 2, [r2])
    d1, d2 = digest_of(pp1), digest_of(pp2)
    node.deliver(pp1, pp2)
    actions = node.deliver(prepare(3, 0, 2, d2), commit(0, 0, 2, d2), commit(3, 0, 2, d2))
    assert of_type(actions, ev.Execute) == []
    assert node.replica.last_executed == 0
    actions = node.deliver(prepare(3, 0, 1, d1), commit(0, 0, 1, d1), commit(3, 0, 1, d1))
    assert [e.seq for e in of_type(actions, ev.Execute)] == [1, 2]
    e1, e2 = of_type(actions, ev.Execute)
    assert e2.state_digest == next_state_digest(e1.state_digest, 2, d2)
    assert node.replica.last_executed == 2


def test_primary_executes_with_its_own_commit() -> None:
    """4.2: the primary does not PREPARE, but it COMMITs once prepared and executes with 2f+1
    COMMITs including its own."""
    node = make_node(0)
    r = request()
    node.submit(r)
    d = batch_digest([r])
    actions = node.deliver(prepare(1, 0, 1, d), prepare(2, 0, 1, d))
    assert sent_bodies(actions, m.Prepare) == []
    assert sent_bodies(actions, m.Commit) == [m.Commit(0, 0, 1, d)]
    actions = node.deliver(commit(1, 0, 1, d), commit(3, 0, 1, d))
    (e,) = of_type(actions, ev.Execute)
    assert [c.sender for c in e.certificate] == [0, 1, 3], summarize(actions)
