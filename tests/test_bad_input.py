"""A replica fed garbage never crashes and never changes state.

Everything goes through the production entry point, `Replica.step(PeerMessage(data))`, with real
Ed25519 keys from fixed seeds. "State" is what a peer must not be able to move without a quorum:
view, last executed and stable sequence numbers, the consensus snapshot and the configuration.

Protocol v2: a PRE-PREPARE signs a header (Merkle root, batch size, time) and its batch travels
beside the signed message (`codec.wire_with_batch`), so garbage can hide in the attachment as
well as in the message; a BATCH-REQUEST asks for a batch by digest. `data_of` is what a peer
sends for a message (with its batch, if any).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortium.crypto.merkle import EMPTY_ROOT
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.replica import Replica
from consortium.pbft.state import batch_root, snapshot_digest
from consortium.sim.cluster import CHAIN_ID, StaticClients, sign_request

SIGNERS = [Ed25519Signer(bytes([0x40 + i]) * 32) for i in range(4)]
OUTSIDER = Ed25519Signer(b"\x5a" * 32)
CLIENT = Ed25519Signer(b"\x77" * 32)
GENESIS = EpochConfig(0, 0, tuple(Member(i, s.public_key) for i, s in enumerate(SIGNERS)))
CLIENTS = StaticClients({"alice": CLIENT.public_key})
PARAMS = ProtocolParams(checkpoint_interval=4, log_window=8, pipeline_depth=3,
                        batch_requests_max=4, future_messages_max=64)
ME = 2
"""The replica under test: a backup in views 0 and 1 (primaries 0 and 1)."""
D32 = bytes(32)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def make_replica(params: ProtocolParams = PARAMS, replica_id: int = ME, *,
                 start_actions: list[ev.Action] | None = None) -> Replica:
    rep = Replica(replica_id=replica_id, signer=SIGNERS[replica_id], chain_id=CHAIN_ID,
                  genesis=GENESIS, params=params, verifier=Ed25519Verifier(), clients=CLIENTS)
    actions = rep.start()
    if start_actions is not None:
        start_actions.extend(actions)
    return rep


def observable(rep: Replica) -> tuple[object, ...]:
    return (rep.view, rep.view_active, rep.last_executed, rep.stable_seq, rep.snapshot(),
            rep.config, rep.state_digest)


def sign(sender: int, body: m.Body, chain: bytes = CHAIN_ID) -> m.SignedMessage:
    return codec.sign_message(SIGNERS[sender], chain, sender, body)


def only_faults(actions: list[ev.Action]) -> bool:
    return all(isinstance(a, ev.PeerFault) for a in actions)


def reasons(actions: list[ev.Action]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, ev.PeerFault)]


def data_of(msg: m.SignedMessage) -> bytes:
    """What travels for `msg`: the signed message, and a PRE-PREPARE's batch attached."""
    if msg.batch is None:
        return msg.wire
    return codec.wire_with_batch(msg, codec.encode_batch(msg.batch))


def feed_garbage(rep: Replica, data: bytes) -> list[ev.Action]:
    """Deliver bytes that must be harmless; check the replica did not move."""
    before = observable(rep)
    actions = rep.step(ev.PeerMessage(data))
    assert only_faults(actions), actions
    assert observable(rep) == before
    return actions


REQ = sign_request(CLIENT, "alice", 1, m.RequestKind.APPLICATION, b"hello ledger")
REQ2 = sign_request(CLIENT, "alice", 2, m.RequestKind.APPLICATION, b"second")


def _pp(view: int, seq: int, reqs: tuple[m.Request, ...], *,
        sender: int | None = None) -> m.SignedMessage:
    """The primary's proposal header for `reqs`, the batch attached (`msg.batch`)."""
    header = sign(GENESIS.primary(view) if sender is None else sender,
                  m.PrePrepare(0, view, seq, batch_root(reqs), len(reqs), 0))
    return codec.decode_signed(codec.wire_with_batch(header, codec.encode_batch(reqs)),
                               CHAIN_ID)


def _pre_prepare(epoch: int, view: int, seq: int, root: bytes, count: int,
                 timestamp_ms: int) -> m.PrePrepare:
    """A header as generated, except that an empty batch gets the empty root (the only legal
    one: the constructor refuses any other)."""
    return m.PrePrepare(epoch, view, seq, root if count else EMPTY_ROOT, count, timestamp_ms)


def _header(msg: m.SignedMessage) -> m.SignedMessage:
    """A PRE-PREPARE as view changes and NEW-VIEWs carry it: the signed header alone."""
    return codec.decode_signed(msg.wire, CHAIN_ID)


PP1 = _pp(0, 1, (REQ,))
PP2 = _pp(0, 2, (REQ2,))
assert isinstance(PP1.body, m.PrePrepare)
PP1_DIGEST = PP1.body.digest


def _view_change(sender: int, new_view: int) -> m.SignedMessage:
    return sign(sender, m.ViewChange(0, new_view, 0, (), ()))


NEW_VIEW_1 = sign(1, m.NewView(0, 1, tuple(_view_change(s, 1) for s in (0, 1, 3)), ()))


def _certified_state_response(pending: m.PendingReconfiguration | None) -> m.SignedMessage:
    snap = m.Snapshot(4, bytes(range(32)), (), (m.ClientEntry("alice", ((1, 1),)),), pending)
    digest = snapshot_digest(GENESIS, snap)
    proof = tuple(sign(s, m.Checkpoint(0, 4, digest)) for s in (0, 1, 3))
    return sign(1, m.StateResponse(snap, proof))


STATE_RESPONSE = _certified_state_response(None)
PENDING = m.PendingReconfiguration(8, GENESIS.members)
STATE_RESPONSE_PENDING = _certified_state_response(PENDING)

VALID_POOL: dict[str, m.SignedMessage] = {
    "PrePrepare": PP1,
    "PrePrepare-future-view": _pp(1, 1, (REQ,)),
    "Prepare": sign(1, m.Prepare(0, 0, 1, PP1_DIGEST)),
    "Commit": sign(1, m.Commit(0, 0, 1, PP1_DIGEST)),
    "Checkpoint": sign(1, m.Checkpoint(0, 4, bytes(range(32)))),
    "ViewChange": _view_change(1, 1),
    "NewView": NEW_VIEW_1,
    "Status": sign(1, m.Status(0, 0, True, 0, 0)),
    "RequestForward": sign(1, m.RequestForward((REQ,))),
    "StateRequest": sign(1, m.StateRequest(4)),
    "BatchRequest": sign(1, m.BatchRequest(0, 1, PP1_DIGEST)),
}


def executed_replica(start_actions: list[ev.Action] | None = None) -> Replica:
    """Replica ME after executing seq 1 through the normal case, with seq 2 pre-prepared."""
    rep = make_replica(start_actions=start_actions)
    for msg in (PP1, sign(1, m.Prepare(0, 0, 1, PP1_DIGEST)),
                *(sign(s, m.Commit(0, 0, 1, PP1_DIGEST)) for s in (0, 1, 3)), PP2):
        rep.step(ev.PeerMessage(data_of(msg)))
    assert rep.last_executed == 1
    return rep


def test_executed_replica_fixture_is_live() -> None:
    """Sanity: the valid messages used below really move a replica (so their mutations are
    meaningful)."""
    rep = make_replica()
    actions = rep.step(ev.PeerMessage(data_of(PP1)))
    assert any(isinstance(a, ev.Send) for a in actions)  # it sent a PREPARE
    assert executed_replica().snapshot().seq == 1
    # The header alone (no batch) does not let a backup prepare: it has nothing to execute.
    rep = make_replica()
    assert not any(isinstance(a, ev.Persist) for a in rep.step(ev.PeerMessage(PP1.wire)))
    rep = make_replica()
    rep.step(ev.PeerMessage(STATE_RESPONSE.wire))
    assert rep.last_executed == 4 and rep.stable_seq == 4


# ------------------------------------------------------------------------------ strategies

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
seqs = st.integers(0, 20) | u64
views = st.integers(0, 3) | u64
epochs = st.integers(0, 2) | u32
digests = st.just(PP1_DIGEST) | st.binary(min_size=32, max_size=32)
counts = st.integers(0, 3) | u32
timestamps = st.just(0) | u64
requests = st.sampled_from([REQ, REQ2]) | st.builds(
    m.Request, st.sampled_from(["alice", "mallory"]), u64, st.sampled_from(list(m.RequestKind)),
    st.binary(max_size=32), st.binary(min_size=64, max_size=64))
request_lists = st.lists(requests, max_size=3).map(tuple)
valid_members = st.lists(st.integers(0, 9), min_size=1, max_size=5, unique=True).map(
    lambda ids: tuple(Member(i, SIGNERS[i % 4].public_key) for i in sorted(ids)))
any_members = st.lists(st.builds(Member, st.integers(0, 9), st.sampled_from(
    [s.public_key for s in SIGNERS])), max_size=4).map(tuple)
leaf_bodies = st.one_of(
    st.builds(_pre_prepare, epochs, views, seqs, digests, counts, timestamps),
    st.builds(m.Prepare, epochs, views, seqs, digests),
    st.builds(m.Commit, epochs, views, seqs, digests),
    st.builds(m.Checkpoint, epochs, seqs, digests),
    st.builds(m.Status, epochs, views, st.booleans(), seqs, seqs),
    st.builds(m.RequestForward, request_lists),
    st.builds(m.StateRequest, seqs),
    st.builds(m.BatchRequest, epochs, seqs, digests),
)
# Nested messages follow the protocol's structure, the only nesting the codec decodes (NEW-VIEW >
# VIEW-CHANGE > PRE-PREPARE / PREPARE / COMMIT; checkpoint proofs of CHECKPOINTs): anything else
# is refused before it reaches the replica (see test_deeply_nested_message_does_not_crash).
signed_checkpoints = st.builds(sign, st.integers(0, 3), st.builds(
    m.Checkpoint, epochs, seqs, digests)) | st.just(VALID_POOL["Checkpoint"])
checkpoint_lists = st.lists(signed_checkpoints, max_size=3).map(tuple)
signed_pre_prepares = st.builds(sign, st.integers(0, 3), st.builds(
    _pre_prepare, epochs, views, seqs, digests, counts, timestamps)) | st.sampled_from(
    [_header(PP1), _header(PP2), _header(VALID_POOL["PrePrepare-future-view"])])
signed_votes = st.builds(sign, st.integers(0, 3), st.one_of(
    st.builds(m.Prepare, epochs, views, seqs, digests),
    st.builds(m.Commit, epochs, views, seqs, digests))) | st.sampled_from(
    [VALID_POOL["Prepare"], VALID_POOL["Commit"]])
prepared_proofs = st.builds(m.PreparedProof, signed_pre_prepares,
                            st.lists(signed_votes, max_size=3).map(tuple))
view_change_bodies = st.builds(m.ViewChange, epochs, views, seqs, checkpoint_lists,
                               st.lists(prepared_proofs, max_size=2).map(tuple))
signed_view_changes = st.builds(sign, st.integers(0, 3), view_change_bodies) | st.just(
    VALID_POOL["ViewChange"])
snapshots = st.builds(
    m.Snapshot, seqs, digests,
    st.lists(st.builds(m.EpochRecord, epochs, seqs, any_members, digests, digests,
                       checkpoint_lists), max_size=2).map(tuple),
    st.lists(st.builds(m.ClientEntry, st.sampled_from(["alice", "bob"]),
                       st.lists(st.tuples(u64, seqs), max_size=2).map(tuple)),
             max_size=2).map(tuple),
    # Invalid pending member sets (empty, unsorted) included: a peer fault, never a crash
    # (test_state_response_with_bad_pending_does_not_crash).
    st.none() | st.builds(m.PendingReconfiguration, seqs, valid_members | any_members))
bodies = st.one_of(
    leaf_bodies,
    view_change_bodies,
    st.builds(m.NewView, epochs, views, st.lists(signed_view_changes, max_size=3).map(tuple),
              st.lists(signed_pre_prepares, max_size=3).map(tuple)),
    st.builds(m.StateResponse, snapshots, checkpoint_lists),
)
valid_messages = st.sampled_from(list(VALID_POOL.values())) | st.builds(
    sign, st.integers(0, 3), bodies) | st.builds(
    lambda view, seq, reqs, sender: _pp(view, seq, reqs, sender=sender),
    st.integers(0, 3), st.integers(0, 20), request_lists, st.integers(0, 3))
"""Valid signed messages, some PRE-PREPAREs with a batch attached that matches the header."""
replicas: st.SearchStrategy[Callable[[], Replica]] = st.sampled_from(
    [make_replica, executed_replica])


# ------------------------------------------------------------------------------ garbage

@FUZZ
@given(replicas, st.binary(max_size=400))
def test_random_bytes(factory: Callable[[], Replica], data: bytes) -> None:
    feed_garbage(factory(), data)


@FUZZ
@given(replicas, st.integers(0, 5) | st.integers(0, 2**16 - 1), st.integers(1, 10),
       st.binary(max_size=400), st.binary(min_size=64, max_size=64))
def test_random_body_behind_a_valid_header(factory: Callable[[], Replica], sender: int,
                                           t: int, rest: bytes, sig: bytes) -> None:
    feed_garbage(factory(), codec._wire(sender, bytes([t]) + rest, sig))


@FUZZ
@given(replicas, valid_messages, st.data())
def test_mutated_valid_message(factory: Callable[[], Replica], msg: m.SignedMessage,
                               data: st.DataObject) -> None:
    """One byte changed anywhere, the attached batch included (a batch that no longer hashes
    to the signed root is the sender's fault)."""
    wire = data_of(msg)
    pos = data.draw(st.integers(0, len(wire) - 1), label="pos")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != wire[pos]), label="byte")
    mutated = wire[:pos] + bytes([new]) + wire[pos + 1:]
    feed_garbage(factory(), mutated)


@FUZZ
@given(replicas, st.sampled_from([PP1, PP2]), request_lists)
def test_pre_prepare_with_another_batch_attached(factory: Callable[[], Replica],
                                                 msg: m.SignedMessage,
                                                 batch: tuple[m.Request, ...]) -> None:
    """A correctly signed header with a batch that is not the one its root commits to."""
    assert isinstance(msg.body, m.PrePrepare) and msg.batch is not None
    if batch_root(batch) == msg.body.root:
        batch = (*batch, REQ2 if REQ in batch else REQ)
    feed_garbage(factory(), codec.wire_with_batch(msg, codec.encode_batch(batch)))


@FUZZ
@given(replicas, valid_messages, st.integers(0, 200), st.binary(min_size=1, max_size=3))
def test_truncated_or_extended_valid_message(factory: Callable[[], Replica],
                                             msg: m.SignedMessage, cut: int,
                                             extra: bytes) -> None:
    rep = factory()
    wire = data_of(msg)
    truncated = wire[: max(0, len(wire) - 1 - cut)]
    if truncated != msg.wire:  # cut exactly at the attachment: the signed header, a message
        actions = feed_garbage(rep, truncated)
        assert len(actions) == 1 and "undecodable" in reasons(actions)[0]
    actions = feed_garbage(rep, wire + extra)
    assert len(actions) == 1 and "undecodable" in reasons(actions)[0]


@pytest.mark.parametrize("pending", [
    pytest.param(None, id="no-pending"),
    pytest.param(PENDING, id="pending"),
])
def test_mutated_state_response(pending: m.PendingReconfiguration | None) -> None:
    """A StateResponse is not checked by its envelope signature but by its checkpoint proof, so
    a mutation either changes nothing or (in the envelope) installs exactly the certified
    snapshot. Every single-byte mutation (one value per position) is tried.

    regression (pending): as in test_state_response_with_bad_pending_does_not_crash, mutating a
    pending member id of a certified response used to make step() raise ValueError."""
    valid = STATE_RESPONSE if pending is None else STATE_RESPONSE_PENDING
    assert isinstance(valid.body, m.StateResponse)
    certified = valid.body.snapshot
    wire = valid.wire
    envelope = {*range(7), *range(len(wire) - 64, len(wire))}
    crashes = []
    accepted_outside_envelope = []
    for pos in range(len(wire)):
        for flip in (0x01, 0x80):
            rep = make_replica()
            before = observable(rep)
            mutated = wire[:pos] + bytes([wire[pos] ^ flip]) + wire[pos + 1:]
            try:
                actions = rep.step(ev.PeerMessage(mutated))
            except Exception as exc:  # collected so that the report names every position
                crashes.append((pos, flip, repr(exc)))
                continue
            if observable(rep) != before:
                assert rep.snapshot() == certified, pos  # never anything but the certified state
                if pos not in envelope:
                    accepted_outside_envelope.append((pos, flip))
            else:
                assert only_faults(actions), (pos, actions)
    assert crashes == []
    assert accepted_outside_envelope == []


# ------------------------------------------------------------- non-members and impersonators

@FUZZ
@given(replicas, bodies, st.sampled_from([4, 9, 255, 2**16 - 1]))
def test_message_signed_by_a_non_member(factory: Callable[[], Replica], body: m.Body,
                                        sender: int) -> None:
    msg = codec.sign_message(OUTSIDER, CHAIN_ID, sender, body)
    feed_garbage(factory(), msg.wire)


@FUZZ
@given(replicas, request_lists, st.integers(0, 3), st.sampled_from([0, 1, 9, 2**16 - 1]))
def test_pre_prepare_with_batch_signed_by_a_non_member(factory: Callable[[], Replica],
                                                       reqs: tuple[m.Request, ...], view: int,
                                                       sender: int) -> None:
    """A header whose batch matches its root, signed by an outsider under a member's or a
    stranger's id: the batch is never taken in."""
    header = codec.sign_message(OUTSIDER, CHAIN_ID, sender,
                                m.PrePrepare(0, view, 1, batch_root(reqs), len(reqs), 0))
    feed_garbage(factory(), codec.wire_with_batch(header, codec.encode_batch(reqs)))


@FUZZ
@given(replicas, bodies, st.integers(0, 3), st.integers(0, 4))
def test_member_impersonated(factory: Callable[[], Replica], body: m.Body, sender: int,
                             key: int) -> None:
    """The sender field names a member, the signature is another member's or an outsider's."""
    signer = OUTSIDER if key == 4 else SIGNERS[key]
    if signer is SIGNERS[sender]:
        signer = OUTSIDER
    feed_garbage(factory(), codec.sign_message(signer, CHAIN_ID, sender, body).wire)


@pytest.mark.parametrize("name", sorted(VALID_POOL))
@pytest.mark.parametrize("forgery", ["outsider", "other-member", "other-chain", "zero-sig"])
def test_forged_copies_of_valid_messages_are_faults(name: str, forgery: str) -> None:
    msg = VALID_POOL[name]
    if forgery == "outsider":
        forged = codec.sign_message(OUTSIDER, CHAIN_ID, msg.sender, msg.body)
    elif forgery == "other-member":
        other = (msg.sender + 1) % 4
        forged = codec.sign_message(SIGNERS[other], CHAIN_ID, msg.sender, msg.body)
    elif forgery == "other-chain":
        forged = sign(msg.sender, msg.body, chain=b"another-chain")
    else:
        forged = codec.resign_message(msg.sender, msg.body, bytes(64))
    data = forged.wire if msg.batch is None else codec.wire_with_batch(
        forged, codec.encode_batch(msg.batch))
    for factory in (make_replica, executed_replica):
        actions = feed_garbage(factory(), data)
        assert any("bad signature or from a non-member" in r for r in reasons(actions)), actions


def test_valid_message_is_accepted_but_forgery_is_not() -> None:
    """Control for the tests above: the very same body, correctly signed, does act."""
    rep = make_replica()
    assert PP1.batch is not None
    forged = codec.wire_with_batch(codec.sign_message(OUTSIDER, CHAIN_ID, 0, PP1.body),
                                   codec.encode_batch(PP1.batch))
    assert feed_garbage(rep, forged)
    actions = rep.step(ev.PeerMessage(data_of(PP1)))
    assert any(isinstance(a, ev.Send) for a in actions)


# ----------------------------------------------------------------------------- size limit

def _pp_of_size(size: int) -> bytes:
    """A PRE-PREPARE whose wire bytes, batch attached, are exactly `size` long."""
    overhead = len(data_of(_pp(0, 1, (sign_request(CLIENT, "alice", 1,
                                                   m.RequestKind.APPLICATION, b""),))))
    payload = b"p" * (size - overhead)
    wire = data_of(_pp(0, 1, (sign_request(CLIENT, "alice", 1, m.RequestKind.APPLICATION,
                                           payload),)))
    assert len(wire) == size
    return wire


def test_message_over_the_size_limit_is_refused_before_decoding() -> None:
    limit = 2048
    params = ProtocolParams(checkpoint_interval=4, log_window=8, pipeline_depth=3,
                            message_bytes_max=limit)
    at_limit = _pp_of_size(limit)
    rep = make_replica(params)
    assert any(isinstance(a, ev.Send) for a in rep.step(ev.PeerMessage(at_limit)))
    for size in (limit + 1, limit + 1000):
        rep = make_replica(params)
        actions = feed_garbage(rep, _pp_of_size(size))
        assert len(actions) == 1 and "exceeds" in reasons(actions)[0]
    rep = make_replica(params)
    feed_garbage(rep, bytes(limit + 1))
    feed_garbage(rep, b"\x01" * (10 * limit))


# -------------------------------------------------------------------------------- replays

@pytest.mark.parametrize("name", sorted(VALID_POOL))
def test_valid_message_replayed_100_times(name: str) -> None:
    msg = VALID_POOL[name]
    rep = make_replica()
    rep.step(ev.PeerMessage(data_of(msg)))
    after_first = observable(rep)
    for _ in range(99):
        actions = rep.step(ev.PeerMessage(data_of(msg)))
        assert actions == []
    assert observable(rep) == after_first


def test_state_response_replayed_100_times() -> None:
    rep = make_replica()
    first = rep.step(ev.PeerMessage(STATE_RESPONSE.wire))
    assert any(isinstance(a, ev.InstallSnapshot) for a in first)
    after_first = observable(rep)
    for _ in range(99):
        assert rep.step(ev.PeerMessage(STATE_RESPONSE.wire)) == []
    assert observable(rep) == after_first


def test_executed_batch_replayed_100_times() -> None:
    rep = executed_replica()
    before = observable(rep)
    for msg in (PP1, *(sign(s, m.Commit(0, 0, 1, PP1_DIGEST)) for s in (0, 1, 3))):
        for _ in range(100):
            assert rep.step(ev.PeerMessage(data_of(msg))) == []
    assert observable(rep) == before


def test_status_from_an_up_to_date_peer_replayed_100_times() -> None:
    rep = executed_replica()
    status = sign(1, m.Status(0, 0, True, 1, 0))
    before = observable(rep)
    for _ in range(100):
        assert rep.step(ev.PeerMessage(status.wire)) == []
    assert observable(rep) == before


def _status_token(actions: list[ev.Action]) -> int:
    (token,) = [a.token for a in actions
                if isinstance(a, ev.SetTimer) and a.kind is ev.TimerKind.STATUS]
    return token


def _sends(actions: list[ev.Action]) -> list[ev.Send]:
    return [a for a in actions if isinstance(a, ev.Send)]


def test_replayed_status_is_not_an_amplifier() -> None:
    """A lagging peer's STATUS is answered (retransmission of what it misses) at most once per
    status tick, however many copies arrive; after the next tick it is answered again.

    regression (amplification): every copy of a replayed STATUS from a lagging peer used to make
    the replica retransmit up to retransmit_seqs_max pre-prepares plus their commit
    certificates to that peer, so anyone who recorded one STATUS could make replicas flood its
    sender."""
    started: list[ev.Action] = []
    rep = executed_replica(started)
    status = sign(1, m.Status(0, 0, True, 0, 0))
    first = _sends(rep.step(ev.PeerMessage(status.wire)))
    assert first  # a real lagging peer does get help...
    assert {s.to for s in first} == {(1,)}  # ...sent to it alone
    before = observable(rep)
    sends = 0
    for _ in range(99):
        sends += len(_sends(rep.step(ev.PeerMessage(status.wire))))
    assert observable(rep) == before
    assert sends == 0
    tick = rep.step(ev.TimerFired(ev.TimerKind.STATUS, _status_token(started)))
    assert _status_token(tick)  # re-armed
    assert _sends(rep.step(ev.PeerMessage(status.wire))) == first  # helped again, once
    assert _sends(rep.step(ev.PeerMessage(status.wire))) == []


# ------------------------------------------------------------------------- deep nesting

NESTED_TYPE_FAULT = "undecodable message: nested message of a type not allowed here"


def _nest(depth: int, inner: m.SignedMessage, signer: int | None = None) -> m.SignedMessage:
    """ViewChange -> prepared proof -> NewView -> StateResponse proof -> ... `depth` levels:
    nonsense at every level (the encoder does not check nesting, the decoder does)."""
    wrappers: list[Callable[[m.SignedMessage], m.Body]] = [
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(s, ()),)),
        lambda s: m.NewView(0, 1, (s,), ()),
        lambda s: m.ViewChange(0, 1, 0, (s,), ()),
        lambda s: m.NewView(0, 1, (), (s,)),
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(_header(PP1), (s,)),)),
        lambda s: m.StateResponse(m.Snapshot(9, D32, (), (), None), (s,)),
    ]
    msg = inner
    for level in range(depth):
        body = wrappers[level % len(wrappers)](msg)
        msg = codec.resign_message(level % 4, body, bytes(64))
    if signer is not None:
        msg = sign(signer, msg.body)
    return msg


@pytest.mark.parametrize("depth", [3, 10, 60, 200, 1000])
@pytest.mark.parametrize("top", ["unsigned", "signed-by-member"])
def test_deeply_nested_message_does_not_crash(depth: int, top: str) -> None:
    signer = 1 if top == "signed-by-member" else None
    msg = _nest(depth, VALID_POOL["Prepare"], signer)
    for factory in (make_replica, executed_replica):
        rep = factory()
        actions = feed_garbage(rep, msg.wire)
        # Rejected by the decoder at the outermost nested message of a type not allowed there
        # (a NEW-VIEW in a stable proof, a VIEW-CHANGE in a prepared proof...).
        assert reasons(actions) == [NESTED_TYPE_FAULT], actions


def test_deep_nesting_signed_by_the_new_primary_is_rejected() -> None:
    """The outermost message is a NEW-VIEW correctly signed by view 1's primary whose
    view changes are themselves deeply nested: the decoder refuses it (its "view changes" are
    NEW-VIEWs), before any signature is checked."""
    inner = _nest(50, VALID_POOL["Checkpoint"])
    assert isinstance(inner.body, m.NewView)
    nv = sign(1, m.NewView(0, 1, (inner, inner, inner), ()))
    for factory in (make_replica, executed_replica):
        actions = feed_garbage(factory(), nv.wire)
        assert reasons(actions) == [NESTED_TYPE_FAULT], actions


def test_deepest_legal_nesting_with_bogus_proofs_is_rejected_by_verification() -> None:
    """Nesting the decoder accepts (NEW-VIEW > VIEW-CHANGE > prepared proof), correctly signed
    at every level, but whose prepared proofs hold one PREPARE instead of 2f: the NEW-VIEW is
    rejected by verification and blamed on the new primary."""
    proof = m.PreparedProof(_header(PP1), (VALID_POOL["Prepare"],))
    vcs = tuple(sign(s, m.ViewChange(0, 1, 0, (VALID_POOL["Checkpoint"],), (proof,)))
                for s in (0, 1, 3))
    nv = sign(1, m.NewView(0, 1, vcs, (_header(_pp(1, 1, (REQ,))),)))
    assert codec.decode_signed(nv.wire, CHAIN_ID) == nv  # legal nesting: it decodes
    for factory in (make_replica, executed_replica):
        actions = feed_garbage(factory(), nv.wire)
        assert [(a.sender, a.reason) for a in actions if isinstance(a, ev.PeerFault)] == [
            (1, "invalid NEW-VIEW for view 1")], actions


# ------------------------------------------------------------------------ regressions

@pytest.mark.parametrize(("case", "sender", "problem"), [
    ("forged-from-scratch", 9, "an epoch has 1 to 256 members"),
    ("mutated-valid-response", 1,
     "members must be sorted by replica id, without duplicates"),
])
def test_state_response_with_bad_pending_does_not_crash(case: str, sender: int,
                                                        problem: str) -> None:
    """A state response whose pending reconfiguration is no valid validator set (empty, or
    unsorted ids) is a fault of its sender.

    regression: a StateResponse is processed before any signature check, and
    _on_state_response called snapshot_digest() -> _pending_digest() -> EpochConfig(...) on
    the peer-supplied pending reconfiguration before verifying the proof; an empty or unsorted
    member list raised ValueError out of Replica.step()."""
    if case == "forged-from-scratch":
        snap = m.Snapshot(4, D32, (), (), m.PendingReconfiguration(8, ()))
        data = codec.resign_message(9, m.StateResponse(snap, ()), bytes(64)).wire
    else:
        # Swap the order of two pending members of a certified response: ids become unsorted.
        wire = STATE_RESPONSE_PENDING.wire
        first_id = (0).to_bytes(2, "big") + GENESIS.members[0].public_key
        at = wire.index(first_id)
        data = wire[:at] + (7).to_bytes(2, "big") + wire[at + 2:]
    actions = feed_garbage(make_replica(), data)
    assert actions == [ev.PeerFault(sender, f"state response with a malformed snapshot: "
                                            f"{problem}")]


def _flood_then_enter_view_1(flood: int) -> list[ev.Action]:
    """A valid future-view pre-prepare is buffered; `flood` forged future-epoch messages from a
    non-member arrive; then the replica enters view 1 and replays its buffer."""
    rep = make_replica(ProtocolParams(checkpoint_interval=4, log_window=8, pipeline_depth=3,
                                      future_messages_max=16))
    assert rep.step(ev.PeerMessage(data_of(VALID_POOL["PrePrepare-future-view"]))) == []
    for i in range(flood):
        forged = codec.sign_message(OUTSIDER, CHAIN_ID, 9, m.Prepare(1, 0, i + 1, D32))
        feed_garbage(rep, forged.wire)
    actions = rep.step(ev.PeerMessage(NEW_VIEW_1.wire))
    assert rep.view == 1 and rep.view_active
    return actions


def _prepared_view_1(actions: list[ev.Action]) -> bool:
    for a in actions:
        if isinstance(a, ev.Persist):
            for msg in a.messages:
                if isinstance(msg.body, m.Prepare) and msg.body.view == 1 and msg.sender == ME:
                    return True
    return False


def test_buffered_future_view_pre_prepare_is_used_after_new_view() -> None:
    assert _prepared_view_1(_flood_then_enter_view_1(0))


def test_unauthenticated_messages_cannot_evict_buffered_valid_ones() -> None:
    """Future-epoch messages are buffered only if they verify against the current config, so
    a non-member's forgeries cannot push a verified message out of the buffer.

    regression (DoS): _on_signed buffered any message claiming a future epoch before checking
    its signature; the shared, FIFO-evicting future buffer then let a non-member flush verified
    future-view messages (here the view-1 PRE-PREPARE) with future_messages_max forgeries."""
    assert _prepared_view_1(_flood_then_enter_view_1(16))
