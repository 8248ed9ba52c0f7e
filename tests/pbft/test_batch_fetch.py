"""v2: proposals travel as headers; a replica that holds a header (or a commit certificate)
without the batch fetches it with BATCH-REQUEST(epoch, seq, digest), and peers answer with a
header of that digest plus its batch, checked against the header's Merkle root.

Paper context: 4.4 (NEW-VIEW re-proposes by digest) and the paper's digest optimisation for
large requests (section 5.1 of the OSDI paper), applied to every batch.
"""

from __future__ import annotations

from itertools import islice, permutations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.slots import BATCHES_PER_SLOT_MAX, HEADERS_PER_SLOT_MAX
from consortium.pbft.viewchange import new_view_bytes_max, view_change_bytes_max
from tests.pbft.harness import (
    GENESIS,
    OUTSIDER,
    Node,
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
    sent,
    sent_bodies,
    sign,
    view_change,
    wire_of,
    with_batch,
)


def _batch_requests(actions: list[ev.Action]) -> list[tuple[tuple[int, ...], m.BatchRequest]]:
    return [(to, msg.body) for to, msg in sent(actions) if isinstance(msg.body, m.BatchRequest)]


def _adopted_without_batch(requests: list[m.Request]) -> tuple[Node, m.SignedMessage,
                                                                 m.SignedMessage, list[ev.Action]]:
    """Replica 3, which never saw view 0's PRE-PREPARE at seq 1, adopts NEW-VIEW(1) whose O set
    re-proposes that batch (proven prepared by replicas 1 and 2). Returns (node, view-0
    proposal with batch, view-1 re-proposal with batch, actions of the NEW-VIEW)."""
    node = make_node(3)
    pp0 = pre_prepare(0, 1, requests)
    vcs = [view_change(0, 1, [prepared_proof(pp0, (1, 2))]), view_change(1, 1),
           view_change(2, 1)]
    pp1 = pre_prepare(1, 1, requests)
    actions = node.deliver(new_view(1, 1, vcs, [pp1]))
    return node, pp0, pp1, actions


def test_replica_missing_a_re_proposed_batch_asks_for_it_and_still_prepares() -> None:
    """4.4 with headers only: the NEW-VIEW proves the re-proposal (a prepared certificate backs
    it), so the backup PREPAREs it at once, and asks a VIEW-CHANGE sender for the batch."""
    r = request("alice", 1)
    node, pp0, pp1, actions = _adopted_without_batch([r])
    d = digest_of(pp1)
    assert d == digest_of(pp0)  # same root, count and time: the same batch digest
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 1, 1, d)]
    assert _batch_requests(actions) == [((0,), m.BatchRequest(0, 1, d))]
    assert node.replica.last_executed == 0


def test_fetched_batch_of_a_vouched_proposal_is_accepted_without_rechecking_signatures() -> None:
    """A batch a NEW-VIEW re-proposed is accepted on root match alone: here its request is from a
    client this replica does not know (say, revoked since), which would make a fresh proposal
    invalid, yet the decided batch executes once the commit certificate is in."""
    r = request("mallory", 1, signer=OUTSIDER)
    node, pp0, pp1, _ = _adopted_without_batch([r])
    d = digest_of(pp1)
    answer = node.deliver(pp0)  # a peer answers with the header it holds (view 0) + the batch
    assert of_type(answer, ev.PeerFault) == []
    assert node.replica.last_executed == 0
    actions = node.deliver(*(commit(s, 1, 1, d) for s in (0, 1, 2)))
    (e,) = of_type(actions, ev.Execute)
    assert (e.seq, e.view, e.digest, e.requests) == (1, 1, d, (r,))
    assert e.pre_prepare.wire == header_of(pp1).wire  # the header of the certificate's view
    # Contrast: the same request in a fresh proposal of the current view is refused.
    fresh = make_node(3)
    faults = of_type(fresh.deliver(pre_prepare(0, 1, [r])), ev.PeerFault)
    assert faults and "invalid request" in faults[0].reason


def test_fetch_answer_with_the_current_view_header_executes() -> None:
    r = request("alice", 1)
    node, _pp0, pp1, _ = _adopted_without_batch([r])
    d = digest_of(pp1)
    node.deliver(*(commit(s, 1, 1, d) for s in (0, 1, 2)))
    assert node.replica.last_executed == 0  # certificate without the batch: waits
    actions = node.deliver(pp1)
    assert [e.seq for e in of_type(actions, ev.Execute)] == [1]
    assert sent_bodies(actions, m.Prepare) == []  # no second vote


def test_fetch_answer_with_a_wrong_batch_is_refused() -> None:
    """The answer's batch must hash to the header's root: a wrong batch under the right header
    is a fault and is not kept; a different batch (another header) does not satisfy the
    certificate either."""
    r, other = request("alice", 1), request("bob", 1)
    node, _pp0, pp1, _ = _adopted_without_batch([r])
    d = digest_of(pp1)
    node.deliver(*(commit(s, 1, 1, d) for s in (0, 1, 2)))
    forged = with_batch(header_of(pp1), [other])
    actions = node.deliver(forged)
    faults = of_type(actions, ev.PeerFault)
    assert [f.sender for f in faults] == [1] and "root" in faults[0].reason
    assert of_type(actions, ev.Execute) == []
    slot = node.replica._slots[1]
    assert not slot.has_contents(d) and len(slot.batches) == 0
    # Another (validly signed) batch of the old view for seq 1: kept, but not what was decided.
    actions = node.deliver(pre_prepare(0, 1, [other]))
    assert of_type(actions, ev.Execute) == [] and node.replica.last_executed == 0
    # The right batch still executes.
    assert [e.seq for e in of_type(node.deliver(pp1), ev.Execute)] == [1]


def test_fetch_is_retried_at_each_status_tick_with_the_next_peer() -> None:
    r = request("alice", 1)
    node, _pp0, pp1, first = _adopted_without_batch([r])
    d = digest_of(pp1)
    assert [to for to, _ in _batch_requests(first)] == [(0,)]
    asked = [to for to, _ in _batch_requests(node.fire(ev.TimerKind.STATUS))]
    asked += [to for to, _ in _batch_requests(node.fire(ev.TimerKind.STATUS))]
    assert asked == [(1,), (2,)]
    node.deliver(pp1)
    assert _batch_requests(node.fire(ev.TimerKind.STATUS)) == []  # held now: no more asking
    assert node.replica._slots[1].has_contents(d)


def test_commit_certificate_without_any_proposal_fetches_from_the_committers() -> None:
    """A replica that missed the PRE-PREPARE entirely but holds 2f+1 COMMITs asks a committer for
    the batch (not only the primary) and executes with the answer."""
    node = make_node(3)
    r = request("alice", 1)
    pp = pre_prepare(0, 1, [r])
    d = digest_of(pp)
    actions = node.deliver(*(commit(s, 0, 1, d) for s in (0, 1, 2)))
    assert _batch_requests(actions) == [((0,), m.BatchRequest(0, 1, d))]
    actions = node.deliver(pp)
    assert [e.seq for e in of_type(actions, ev.Execute)] == [1]


def test_replica_answers_a_batch_request_once_per_peer_per_seq_per_tick() -> None:
    node = make_node(2)
    r = request("alice", 1)
    commit_batch(node, 1, [r])
    pp = pre_prepare(0, 1, [r])
    ask = m.BatchRequest(0, 1, digest_of(pp))
    actions = node.deliver(sign(3, ask))
    assert actions == [ev.Send((3,), wire_of(pp))]
    (_to, answer), = sent(actions)
    assert answer.batch == (r,) and answer.wire == header_of(pp).wire
    assert node.deliver(sign(3, ask)) == []  # same peer, same seq, same tick
    assert node.deliver(sign(1, ask)) == [ev.Send((1,), wire_of(pp))]  # another peer
    assert node.deliver(sign(3, m.BatchRequest(0, 1, b"\x07" * 32))) == []  # unknown digest
    assert node.deliver(sign(3, m.BatchRequest(0, 2, digest_of(pp)))) == []  # no such seq
    node.fire(ev.TimerKind.STATUS)
    assert node.deliver(sign(3, ask)) == [ev.Send((3,), wire_of(pp))]  # next tick


def test_replica_answers_a_null_batch_request() -> None:
    node = make_node(2)
    commit_batch(node, 1, [])
    actions = node.deliver(sign(3, m.BatchRequest(0, 1, m.NULL_DIGEST)))
    (_to, answer), = sent(actions)
    assert answer.batch == () and isinstance(answer.body, m.PrePrepare)


# ------------------------------------------------------------------ view-change message sizes

def _big(nonce: int, size: int) -> m.Request:
    """A request of `size` bytes (`Request.size_bytes`) from alice."""
    return request("alice", nonce, b"x" * (size - 80 - len("alice")))


def _prepared_everywhere(node_id: int, size: int, window: int) -> Node:
    """A backup of view 0 that prepared every sequence number of the window, each batch one
    request of `size` bytes."""
    node = make_node(node_id)
    for seq in range(1, window + 1):
        pp = pre_prepare(0, seq, [_big(seq, size)])
        d = digest_of(pp)
        others = [i for i in (1, 2, 3) if i != node_id]
        node.deliver(pp, *(prepare(s, 0, seq, d) for s in others))
    return node


def test_view_change_and_new_view_sizes_do_not_depend_on_batch_sizes() -> None:
    """VIEW-CHANGE and NEW-VIEW carry headers only: with every sequence of the window prepared
    with a batch at batch_bytes_max, they stay under `view_change_bytes_max` /
    `new_view_bytes_max` (and are byte-for-byte as large as with tiny batches)."""
    p = params()
    window = p.log_window
    bound_vc = view_change_bytes_max(GENESIS, window)
    bound_nv = new_view_bytes_max(GENESIS, window)
    sizes = {}
    for size in (p.batch_bytes_max, 200):
        primary = _prepared_everywhere(1, size, window)  # will be primary of view 1
        vc_msgs = []
        for node_id in (2, 3):
            backup = _prepared_everywhere(node_id, size, window)
            backup.deliver(*(view_change(s, 1) for s in (0, 1) if s != node_id))
            (to_vc,) = [msg for _to, msg in sent(backup.log) if isinstance(msg.body,
                                                                           m.ViewChange)]
            vc_msgs.append(to_vc)
        for vc in vc_msgs:
            body = vc.body
            assert isinstance(body, m.ViewChange) and len(body.prepared) == window
            assert len(vc.wire) <= bound_vc
        actions = primary.deliver(*vc_msgs)
        (nv,) = [msg for _to, msg in sent(actions) if isinstance(msg.body, m.NewView)]
        assert isinstance(nv.body, m.NewView) and len(nv.body.pre_prepares) == window
        assert len(nv.wire) <= bound_nv
        sizes[size] = (max(len(v.wire) for v in vc_msgs), len(nv.wire))
    assert sizes[p.batch_bytes_max] == sizes[200]
    assert sizes[200][0] < p.batch_bytes_max


def test_size_bounds_for_the_documented_configurations() -> None:
    """The figures docs/consensus.md quotes (log_window 128)."""
    from consortium.pbft.membership import EpochConfig, Member
    members7 = tuple(Member(i, bytes([i + 1]) * 32) for i in range(7))
    g7 = EpochConfig(0, 0, members7)
    assert view_change_bytes_max(GENESIS, 128) == 68_048
    assert new_view_bytes_max(GENESIS, 128) == 222_172
    assert view_change_bytes_max(g7, 128) == 101_056
    assert new_view_bytes_max(g7, 128) == 523_316
    assert params().message_bytes_max > new_view_bytes_max(g7, 128)


def test_batch_answers_to_one_peer_are_bounded_by_bytes_per_tick() -> None:
    """A BATCH-REQUEST is a few dozen bytes and its answer up to a full batch: a peer asking
    for every sequence of the window each tick gets at most `batch_answer_bytes_max` bytes of
    batches per tick (the budget STATUS retransmission has), other peers keep theirs."""
    size = 2_000
    node = make_node(2, params(batch_answer_bytes_max=3_000))
    pps = []
    for seq in (1, 2, 3):
        r = _big(seq, size)
        commit_batch(node, seq, [r])
        pps.append(pre_prepare(0, seq, [r]))
    asks = [sign(3, m.BatchRequest(0, seq, digest_of(pp))) for seq, pp in zip((1, 2, 3), pps,
                                                                            strict=True)]
    answered = [bool(sent(node.deliver(ask))) for ask in asks]
    assert answered == [True, True, False]  # the second answer passes the 3 000-byte budget
    other = sign(1, m.BatchRequest(0, 3, digest_of(pps[2])))
    assert sent(node.deliver(other))  # another peer has its own budget
    node.fire(ev.TimerKind.STATUS)
    assert sent(node.deliver(asks[2]))  # a new tick, a new budget


def test_the_decided_batch_fits_even_when_an_equivocating_primary_filled_the_slot() -> None:
    """4.2 with bounded slots: an equivocating primary sends this backup one batch and then many
    other orderings of the same requests for seq 1, filling the slot's headers and batches; a
    quorum commits yet another one. Its batch (vouched for by the COMMITs) must still be kept,
    or the backup could never execute seq 1.

    regression: a vouched batch was refused when the slot was full, so the fetched answer was
    dropped and the backup asked again forever."""
    node = make_node(2)
    reqs = [request("alice", i) for i in range(1, 5)]
    orders = [list(o) for o in islice(permutations(reqs), HEADERS_PER_SLOT_MAX + 3)]
    for o in orders[:-1]:
        node.deliver(pre_prepare(0, 1, o))
    slot = node.replica._slots[1]
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX
    assert len(slot.proposals) == HEADERS_PER_SLOT_MAX
    decided = pre_prepare(0, 1, orders[-1])
    d = digest_of(decided)
    node.deliver(*(commit(s, 0, 1, d) for s in (0, 1, 3)))
    actions = node.deliver(decided)  # the answer to its BATCH-REQUEST
    (e,) = of_type(actions, ev.Execute)
    assert (e.seq, e.digest, e.requests) == (1, d, tuple(orders[-1]))
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX
