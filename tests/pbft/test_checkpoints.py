"""Garbage collection and checkpoints (Castro & Liskov, OSDI 1999, section 4.3), plus the state
transfer a replica uses to catch up to a stable checkpoint it cannot reach by execution.

Parameters: K = checkpoint_interval = 2, L = log_window = 4, so the watermarks are (h, h + 4].
"""

from __future__ import annotations

from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.state import GENESIS_STATE_DIGEST, next_state_digest, snapshot_digest
from tests.pbft.harness import (
    GENESIS,
    Cluster,
    Node,
    checkpoint,
    commit,
    commit_batch,
    digest_of,
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
)

P = params(checkpoint_interval=2, log_window=4, status_interval_ms=100)


def _execute_two(node_id: int = 2) -> tuple[Node, list[ev.Action], m.Snapshot]:
    node = make_node(node_id, P)
    commit_batch(node, 1, [request("alice", 1)])
    actions = commit_batch(node, 2, [request("bob", 1)])
    return node, actions, node.replica.snapshot()


def test_checkpoint_broadcast_after_executing_a_multiple_of_k() -> None:
    """4.3: after executing a request whose sequence number is divisible by K, a replica
    multicasts CHECKPOINT(n, d) with d the digest of its state; not before."""
    node = make_node(2, P)
    actions = commit_batch(node, 1, [request("alice", 1)])
    assert sent_bodies(actions, m.Checkpoint) == []
    actions = commit_batch(node, 2, [request("bob", 1)])
    snap = node.replica.snapshot()
    assert snap.seq == 2
    d1 = digest_of(pre_prepare(0, 1, [request("alice", 1)]))
    d2 = digest_of(pre_prepare(0, 2, [request("bob", 1)]))
    assert snap.state_digest == next_state_digest(next_state_digest(GENESIS_STATE_DIGEST, 1, d1),
                                                  2, d2)
    assert snap.clients == (m.ClientEntry("alice", ((1, 1),)), m.ClientEntry("bob", ((1, 2),)))
    own = checkpoint(2, 2, snapshot_digest(GENESIS, snap))
    assert next(to for to, msg in sent(actions) if msg == own) == (0, 1, 3)
    # CHECKPOINT goes out after the Execute it certifies.
    i_exec = index_of(actions, lambda a: isinstance(a, ev.Execute) and a.seq == 2)
    assert i_exec < index_of(actions, is_send_of(m.Checkpoint))
    assert node.replica.stable_seq == 0  # own vote alone is not a proof


def test_2f_plus_1_matching_checkpoints_make_it_stable_and_persist_a_snapshot() -> None:
    """4.3: a checkpoint with a proof of 2f+1 CHECKPOINTs (own included) is stable; the
    replica persists the snapshot with its proof."""
    node, _, snap = _execute_two()
    digest = snapshot_digest(GENESIS, snap)
    assert node.deliver(checkpoint(0, 2, digest)) == []  # 2 of 3
    actions = node.deliver(checkpoint(3, 2, digest))
    proof = (checkpoint(0, 2, digest), checkpoint(2, 2, digest), checkpoint(3, 2, digest))
    assert of_type(actions, ev.PersistSnapshot) == [ev.PersistSnapshot(snap, proof)]
    assert node.replica.stable_seq == 2


def test_checkpoints_with_a_different_digest_or_duplicates_do_not_make_it_stable() -> None:
    """4.3: the 2f+1 CHECKPOINTs must be from distinct replicas and match the digest."""
    node, _, snap = _execute_two()
    digest = snapshot_digest(GENESIS, snap)
    other = snapshot_digest(GENESIS, m.Snapshot(2, b"\x01" * 32, (), (), None))
    actions = node.deliver(checkpoint(0, 2, digest), checkpoint(0, 2, digest),
                           checkpoint(3, 2, other))
    assert of_type(actions, ev.PersistSnapshot) == []
    assert node.replica.stable_seq == 0


def test_stable_checkpoint_garbage_collects_and_ignores_messages_at_or_below_it() -> None:
    """4.3: once checkpoint n is stable the replica discards pre-prepare/prepare/commit messages
    with sequence number <= n; later messages for those numbers are ignored."""
    node, _, snap = _execute_two()
    digest = snapshot_digest(GENESIS, snap)
    node.deliver(checkpoint(0, 2, digest), checkpoint(3, 2, digest))
    assert node.replica.stable_seq == 2
    late = [pre_prepare(0, 2, [request("carol", 1)]), pre_prepare(0, 1, [request("carol", 2)]),
            prepare(3, 0, 2, b"\x02" * 32), commit(3, 0, 1, b"\x03" * 32),
            checkpoint(1, 2, digest)]
    for msg in late:
        assert node.deliver(msg) == [], type(msg.body).__name__


def test_stable_checkpoint_advances_the_watermarks() -> None:
    """4.3: the low watermark h becomes the stable checkpoint and H = h + L: a PRE-PREPARE for
    seq 5 is ignored while h = 0 and accepted once checkpoint 2 is stable."""
    node, _, snap = _execute_two()
    pp5 = pre_prepare(0, 5, [request("carol", 5)])
    assert node.deliver(pp5) == []
    digest = snapshot_digest(GENESIS, snap)
    node.deliver(checkpoint(0, 2, digest), checkpoint(1, 2, digest))
    assert node.replica.stable_seq == 2
    actions = node.deliver(pp5)
    assert sent_bodies(actions, m.Prepare) == [m.Prepare(0, 0, 5, digest_of(pp5))]
    assert node.deliver(pre_prepare(0, 7, [request("carol", 7)])) == []  # 7 > 2 + 4


def test_checkpoint_quorum_received_before_executing_becomes_stable_on_execution() -> None:
    """4.3: CHECKPOINTs from others may arrive before the replica executes seq n; its own
    checkpoint then completes the proof."""
    node = make_node(2, P)
    commit_batch(node, 1, [request("alice", 1)])
    other = make_node(3, P)
    commit_batch(other, 1, [request("alice", 1)])
    commit_batch(other, 2, [request("bob", 1)])
    digest = snapshot_digest(GENESIS, other.replica.snapshot())
    assert node.deliver(checkpoint(0, 2, digest), checkpoint(3, 2, digest)) == []
    actions = commit_batch(node, 2, [request("bob", 1)])
    assert len(of_type(actions, ev.PersistSnapshot)) == 1
    assert node.replica.stable_seq == 2


# --------------------------------------------------------------------------- state transfer

def _proven_snapshot(seq: int = 4) -> tuple[m.Snapshot, tuple[m.SignedMessage, ...]]:
    """A snapshot at `seq` certified by CHECKPOINTs of replicas 0, 1 and 2."""
    state = GENESIS_STATE_DIGEST
    for s in range(1, seq + 1):
        state = next_state_digest(state, s, bytes([s]) * 32)
    snap = m.Snapshot(seq, state, (), (m.ClientEntry("alice", ((1, 1), (2, 3))),), None)
    d = snapshot_digest(GENESIS, snap)
    return snap, tuple(checkpoint(i, seq, d) for i in (0, 1, 2))


def test_lagging_replica_requests_state_at_its_next_status_tick() -> None:
    """4.3 (state transfer): a replica that learns of a stable checkpoint (2f+1 CHECKPOINTs) above
    its state does not fetch at once; at its next STATUS tick it asks the checkpoint's
    signers for the state.

    v2: the request names the asker's last executed sequence (`StateRequest(after_seq)`: any
    peer above it answers) and goes to two signers per tick, rotating through them."""
    node = make_node(3, P)
    _, proof = _proven_snapshot()
    assert node.deliver(*proof) == []
    assert node.replica.stable_seq == 0
    req = sign(3, m.StateRequest(0))

    def state_requests(actions: list[ev.Action]) -> list[tuple[tuple[int, ...], m.SignedMessage]]:
        return [(to, msg) for to, msg in sent(actions) if isinstance(msg.body, m.StateRequest)]

    assert state_requests(node.fire(ev.TimerKind.STATUS)) == [((0,), req), ((1,), req)]
    assert state_requests(node.fire(ev.TimerKind.STATUS)) == [((1,), req), ((2,), req)]


def test_valid_state_response_is_installed() -> None:
    """4.3: a replica adopts a snapshot proven by 2f+1 CHECKPOINTs: it installs it (InstallSnapshot
    then PersistSnapshot), moves h to its seq and adopts the client table."""
    node = make_node(3, P)
    snap, proof = _proven_snapshot()
    node.deliver(*proof)
    node.fire(ev.TimerKind.STATUS)
    actions = node.deliver(sign(1, m.StateResponse(snap, proof)))
    assert actions[:2] == [ev.InstallSnapshot(snap, proof), ev.PersistSnapshot(snap, proof)]
    assert node.replica.last_executed == 4 and node.replica.stable_seq == 4
    assert node.replica.state_digest == snap.state_digest
    r = request("alice", 2)
    assert node.submit(r) == [ev.AlreadyExecuted(r, 3)]
    # Watermarks moved: seq 5..8 now in window.
    pp = pre_prepare(0, 8, [request("bob", 8)])
    assert sent_bodies(node.deliver(pp), m.Prepare) == [m.Prepare(0, 0, 8, digest_of(pp))]


def test_state_response_with_a_forged_proof_is_rejected() -> None:
    """4.3: the snapshot must carry 2f+1 valid CHECKPOINT signatures; a proof where one vote is
    signed with the wrong key (or that has only 2f votes) is a peer fault."""
    node = make_node(3, P)
    snap, proof = _proven_snapshot()
    forged_vote = sign(2, proof[2].body, key_of=3)
    for bad_proof in ((*proof[:2], forged_vote), proof[:2], (proof[0], proof[0], proof[1])):
        actions = node.deliver(sign(1, m.StateResponse(snap, bad_proof)))
        assert of_type(actions, ev.InstallSnapshot) == []
        assert [f.sender for f in of_type(actions, ev.PeerFault)] == [1]
        assert node.replica.last_executed == 0 and node.replica.stable_seq == 0


def test_state_response_whose_snapshot_does_not_match_the_proven_digest_is_rejected() -> None:
    """4.3: the proof certifies a digest; a snapshot with other contents (here a different client
    table) under a valid proof is a peer fault and is not installed."""
    node = make_node(3, P)
    snap, proof = _proven_snapshot()
    tampered = m.Snapshot(snap.seq, snap.state_digest, (), (m.ClientEntry("alice", ((1, 1),)),),
                          None)
    actions = node.deliver(sign(0, m.StateResponse(tampered, proof)))
    assert of_type(actions, ev.InstallSnapshot) == []
    assert [f.sender for f in of_type(actions, ev.PeerFault)] == [0]
    assert node.replica.last_executed == 0


def test_replica_with_a_stable_checkpoint_answers_a_state_request() -> None:
    """4.3: a replica holding a stable checkpoint above the asker's state sends it with its
    proof (v2: `StateRequest(after_seq)` names the asker's last executed sequence, and any
    stable checkpoint above it is an answer)."""
    node, _, snap = _execute_two()
    digest = snapshot_digest(GENESIS, snap)
    node.deliver(checkpoint(0, 2, digest), checkpoint(3, 2, digest))
    actions = node.deliver(sign(1, m.StateRequest(1)))
    proof = (checkpoint(0, 2, digest), checkpoint(2, 2, digest), checkpoint(3, 2, digest))
    assert actions == [ev.Send((1,), sign(2, m.StateResponse(snap, proof)).wire)]
    assert node.deliver(sign(0, m.StateRequest(2))) == []  # the asker already has seq 2
    assert node.deliver(sign(3, m.StateRequest(4))) == []  # nothing that recent


def test_isolated_replica_catches_up_by_state_transfer_in_a_real_cluster() -> None:
    """4.3 end to end with four real replicas: while replica 3 is cut off, 0-2 execute 5 batches
    (checkpoint 4 becomes stable and the log below it is discarded). Reconnected, replica 3
    learns of the checkpoint from STATUS messages, fetches it at its next STATUS tick, installs
    exactly the snapshot the others certified, and then executes seq 5 from retransmitted
    messages.

    v2 (deliberate change): a claimed stable checkpoint counts only once f+1 members claim it,
    so replicas 0 and 1 both gossip before replica 3 asks."""
    cluster = Cluster(P)
    cluster.isolated = {3}
    for nonce in range(1, 6):
        cluster.submit(0, request("alice", nonce))
        cluster.run()
    leader = cluster.nodes[0].replica
    assert leader.last_executed == 5 and leader.stable_seq == 4
    lagging = cluster.nodes[3]
    assert lagging.replica.last_executed == 0
    cluster.isolated = set()
    cluster.fire(0, ev.TimerKind.STATUS)  # 0 tells 3 its stable checkpoint is 4
    cluster.run()
    cluster.fire(3, ev.TimerKind.STATUS)  # one claim is no proof: 3 asks nobody yet
    cluster.run()
    assert of_type(lagging.log, ev.InstallSnapshot) == []
    cluster.fire(1, ev.TimerKind.STATUS)  # f+1 = 2 members now claim checkpoint 4
    cluster.run()
    cluster.fire(3, ev.TimerKind.STATUS)  # 3 asks for it
    cluster.run()
    installs = of_type(lagging.log, ev.InstallSnapshot)
    stable = cluster.nodes[0].snapshot
    assert stable is not None and stable.seq == 4
    assert [(i.snapshot, i.proof) for i in installs] == [(stable, cluster.nodes[0].snapshot_proof)]
    assert lagging.replica.stable_seq == 4
    # Peers had no STATUS from it before (it was cut off): a first STATUS is answered with
    # what it lacks (one that shows progress since the previous one would not be).
    cluster.fire(3, ev.TimerKind.STATUS)  # peers retransmit seq 5 (pre-prepare + commits)
    cluster.run()
    assert lagging.replica.last_executed == 5
    assert lagging.replica.state_digest == leader.state_digest
    assert [e.seq for e in of_type(lagging.log, ev.Execute)] == [5]


def test_a_stable_proof_holds_exactly_a_quorum_of_checkpoints() -> None:
    """4.3: the proof of a stable checkpoint is 2f+1 CHECKPOINTs. When all the others' votes
    arrived before the replica executed (its own vote makes n), it keeps a quorum: the proof
    travels in every VIEW-CHANGE and STATE-RESPONSE, whose sizes are bounded with a quorum.

    regression: the proof kept every matching vote (n), so a VIEW-CHANGE could pass
    `view_change_bytes_max`."""
    node = make_node(2, P)
    commit_batch(node, 1, [request("alice", 1)])
    other = make_node(3, P)
    commit_batch(other, 1, [request("alice", 1)])
    commit_batch(other, 2, [request("bob", 1)])
    digest = snapshot_digest(GENESIS, other.replica.snapshot())
    node.deliver(*(checkpoint(i, 2, digest) for i in (0, 1, 3)))
    actions = commit_batch(node, 2, [request("bob", 1)])
    (ps,) = of_type(actions, ev.PersistSnapshot)
    assert [v.sender for v in ps.proof] == [0, 1, 2]
    assert node.replica.stable_checkpoint[1] == ps.proof


def test_a_padded_state_response_proof_is_installed_as_a_quorum() -> None:
    """4.3: a STATE-RESPONSE proof with extra entries (all four votes, a duplicate, a forged
    one) is still a valid proof; the replica keeps a quorum of valid votes of it."""
    node = make_node(3, P)
    snap, proof = _proven_snapshot()
    d = snapshot_digest(GENESIS, snap)
    forged = sign(1, m.Checkpoint(0, 4, d), key_of=0)
    padded = (forged, proof[2], proof[2], checkpoint(3, 4, d), proof[1], proof[0])
    actions = node.deliver(sign(1, m.StateResponse(snap, padded)))
    (inst,) = of_type(actions, ev.InstallSnapshot)
    assert inst.proof == proof  # replicas 0, 1, 2: sorted, distinct, valid, a quorum
    assert node.replica.stable_checkpoint[1] == proof
