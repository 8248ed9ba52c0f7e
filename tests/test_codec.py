"""Adversarial tests of the canonical codec: round trips, mutations, length bombs, nesting and
domain separation of the signed bytes. Real Ed25519 keys from fixed seeds throughout."""

from __future__ import annotations

import contextlib
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.state import batch_root, verify_signed

CHAIN = b"codec-test-chain"
OTHER_CHAIN = b"codec-test-chain-2"
SIGNERS = [Ed25519Signer(bytes([0x10 + i]) * 32) for i in range(4)]
OUTSIDER = Ed25519Signer(b"\x99" * 32)
CONFIG = EpochConfig(0, 0, tuple(Member(i, s.public_key) for i, s in enumerate(SIGNERS)))
VERIFIER = Ed25519Verifier()
HEADER_BYTES = 7
SIG_BYTES = 64

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])

# ------------------------------------------------------------------------------ strategies

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small_u64 = st.integers(0, 1000)
digests = st.binary(min_size=32, max_size=32)
sig64 = st.binary(min_size=64, max_size=64)
keys32 = st.binary(min_size=32, max_size=32)
client_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda s: 1 <= len(s.encode()) <= m.CLIENT_ID_BYTES_MAX
    and not m.CONTROL_CHARACTERS.search(s))
requests = st.builds(m.Request, client_ids, u64, st.sampled_from(list(m.RequestKind)),
                     st.binary(max_size=48), sig64)
request_lists = st.lists(requests, max_size=3).map(tuple)
members = st.builds(Member, st.integers(0, 2**16 - 1), keys32)


def _sign(sender: int, body: m.Body) -> m.SignedMessage:
    return codec.sign_message(SIGNERS[sender], CHAIN, sender, body)


pre_prepares = st.builds(m.PrePrepare, u32, u64, u64, digests, u32.filter(bool), u64)
prepares = st.builds(m.Prepare, u32, u64, u64, digests)
commits = st.builds(m.Commit, u32, u64, u64, digests)
checkpoints = st.builds(m.Checkpoint, u32, u64, digests)
statuses = st.builds(m.Status, u32, u64, st.booleans(), u64, u64)
forwards = st.builds(m.RequestForward, request_lists)
state_requests = st.builds(m.StateRequest, u64)
batch_requests = st.builds(m.BatchRequest, u32, u64, digests)


def signed_of(bodies: st.SearchStrategy[m.Body]) -> st.SearchStrategy[m.SignedMessage]:
    return st.builds(_sign, st.integers(0, len(SIGNERS) - 1), bodies)


# Nested messages follow the protocol's structure, the only nesting the codec accepts
# (NEW-VIEW > VIEW-CHANGE > PRE-PREPARE / PREPARE / COMMIT, checkpoint proofs of CHECKPOINTs):
# see test_nested_message_of_a_wrong_type_is_rejected for everything else.
signed_checkpoints = signed_of(checkpoints)
checkpoint_proofs = st.lists(signed_checkpoints, max_size=2).map(tuple)
prepared_proofs = st.builds(
    m.PreparedProof, signed_of(pre_prepares),
    st.lists(signed_of(st.one_of(prepares, commits)), max_size=2).map(tuple))
view_changes = st.builds(m.ViewChange, u32, u64, u64, checkpoint_proofs,
                         st.lists(prepared_proofs, max_size=2).map(tuple))
new_views = st.builds(m.NewView, u32, u64, st.lists(signed_of(view_changes), max_size=2).map(tuple),
                      st.lists(signed_of(pre_prepares), max_size=2).map(tuple))


def snapshots() -> st.SearchStrategy[m.Snapshot]:
    member_tuples = st.lists(members, max_size=3).map(tuple)
    records = st.builds(m.EpochRecord, u32, u64, member_tuples, digests, digests,
                        checkpoint_proofs)
    clients = st.builds(m.ClientEntry, st.text(max_size=10),
                        st.lists(st.tuples(u64, u64), max_size=3).map(tuple))
    pending = st.none() | st.builds(m.PendingReconfiguration, u64, member_tuples)
    return st.builds(m.Snapshot, u64, digests, st.lists(records, max_size=2).map(tuple),
                     st.lists(clients, max_size=3).map(tuple), pending)


state_responses = st.builds(m.StateResponse, snapshots(), checkpoint_proofs)

BODY_STRATEGIES: dict[str, st.SearchStrategy[m.Body]] = {
    "PrePrepare": pre_prepares,
    "Prepare": prepares,
    "Commit": commits,
    "Checkpoint": checkpoints,
    "ViewChange": view_changes,
    "NewView": new_views,
    "Status": statuses,
    "RequestForward": forwards,
    "StateRequest": state_requests,
    "StateResponse": state_responses,
    "BatchRequest": batch_requests,
}
ALL_BODIES = st.one_of(*BODY_STRATEGIES.values())
TYPE_NAMES = sorted(BODY_STRATEGIES)


def messages_of(name: str) -> st.SearchStrategy[m.SignedMessage]:
    return signed_of(BODY_STRATEGIES[name])


def _reencode(msg: m.SignedMessage) -> bytes:
    return codec.resign_message(msg.sender, msg.body, msg.signature).wire


# ------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("name", TYPE_NAMES)
@SETTINGS
@given(data=st.data())
def test_round_trip_is_identity_and_canonical(name: str, data: st.DataObject) -> None:
    msg = data.draw(messages_of(name))
    assert type(msg.body).__name__ == name
    decoded = codec.decode_signed(msg.wire, CHAIN)
    assert decoded == msg
    assert decoded.body == msg.body
    assert decoded.wire == msg.wire
    assert decoded.body_bytes == msg.body_bytes == codec.encode_body(msg.body)
    assert codec.encode_body(decoded.body) == msg.body_bytes
    assert _reencode(decoded) == msg.wire
    assert verify_signed(decoded, CONFIG, CHAIN, VERIFIER)
    # The layout is the documented one: version | sender | len | body | signature.
    assert msg.wire[0] == codec.WIRE_VERSION
    assert struct.unpack(">HI", msg.wire[1:7]) == (msg.sender, len(msg.body_bytes))
    assert msg.wire[-SIG_BYTES:] == msg.signature


@SETTINGS
@given(requests)
def test_request_round_trip(r: m.Request) -> None:
    raw = codec.encode_request(r)
    back = codec.decode_request(raw)
    assert back == r and back.digest == r.digest
    assert codec.encode_request(back) == raw


@SETTINGS
@given(snapshots())
def test_snapshot_round_trip(s: m.Snapshot) -> None:
    raw = codec.encode_snapshot(s)
    back = codec.decode_snapshot(raw, CHAIN)
    assert back == s
    assert codec.encode_snapshot(back) == raw


@SETTINGS
@given(u32, st.lists(members, max_size=4).map(tuple),
       st.lists(st.tuples(st.integers(0, 2**16 - 1), sig64), max_size=4).map(tuple))
def test_reconfiguration_round_trip(from_epoch: int, mems: tuple[Member, ...],
                                    approvals: tuple[tuple[int, bytes], ...]) -> None:
    r = m.Reconfiguration(from_epoch, mems, approvals)
    raw = codec.encode_reconfiguration(r)
    assert codec.decode_reconfiguration(raw) == r
    assert codec.encode_reconfiguration(codec.decode_reconfiguration(raw)) == raw


def test_every_body_type_has_a_distinct_type_byte() -> None:
    d = bytes(32)
    snap = m.Snapshot(0, d, (), (), None)
    bodies: list[m.Body] = [
        m.PrePrepare(0, 0, 1, d, 1, 0), m.Prepare(0, 0, 1, d), m.Commit(0, 0, 1, d),
        m.Checkpoint(0, 1, d), m.ViewChange(0, 1, 0, (), ()), m.NewView(0, 1, (), ()),
        m.Status(0, 0, True, 0, 0), m.RequestForward(()), m.StateRequest(1),
        m.StateResponse(snap, ()), m.BatchRequest(0, 1, d)]
    assert sorted(type(b).__name__ for b in bodies) == TYPE_NAMES
    assert len({codec.encode_body(b)[0] for b in bodies}) == len(bodies)


# ------------------------------------------------------------------------------ mutations

def _decode_or_none(data: bytes) -> m.SignedMessage | None:
    """Decode; the only acceptable failure is DecodeError (anything else fails the test)."""
    try:
        return codec.decode_signed(data, CHAIN)
    except codec.DecodeError:
        return None


@pytest.mark.parametrize("name", TYPE_NAMES)
@SETTINGS
@given(data=st.data())
def test_single_byte_mutation_is_rejected_or_unverifiable(name: str,
                                                          data: st.DataObject) -> None:
    msg = data.draw(messages_of(name))
    pos = data.draw(st.integers(0, len(msg.wire) - 1), label="pos")
    new = data.draw(u8.filter(lambda b: b != msg.wire[pos]), label="new byte")
    mutated = msg.wire[:pos] + bytes([new]) + msg.wire[pos + 1:]
    decoded = _decode_or_none(mutated)
    if decoded is None:
        return
    assert not verify_signed(decoded, CONFIG, CHAIN, VERIFIER)
    assert decoded.wire == mutated
    assert _reencode(decoded) == mutated  # whatever decodes is canonical


@pytest.mark.parametrize("name", TYPE_NAMES)
@SETTINGS
@given(data=st.data())
def test_truncation_and_appended_bytes_are_rejected(name: str, data: st.DataObject) -> None:
    msg = data.draw(messages_of(name))
    cut = data.draw(st.integers(0, len(msg.wire) - 1), label="cut")
    extra = data.draw(st.binary(min_size=1, max_size=3), label="extra")
    with pytest.raises(codec.DecodeError):
        codec.decode_signed(msg.wire[:cut], CHAIN)
    with pytest.raises(codec.DecodeError):
        codec.decode_signed(msg.wire + extra, CHAIN)
    with pytest.raises(codec.DecodeError):
        codec.decode_signed(msg.wire[1:], CHAIN)
    # Consistent header but a body one byte shorter / longer than the type needs.
    for body in (msg.body_bytes[:-1], msg.body_bytes + extra):
        if not body:
            continue
        with pytest.raises(codec.DecodeError):
            codec.decode_signed(codec._wire(msg.sender, body, msg.signature), CHAIN)


@pytest.mark.parametrize("name", TYPE_NAMES)
@SETTINGS
@given(data=st.data())
def test_signature_does_not_survive_body_swap(name: str, data: st.DataObject) -> None:
    """A valid signature grafted onto another valid body (or another sender) never verifies.
    Both messages nest only what the protocol allows, so the grafted message still decodes."""
    a = data.draw(messages_of(name))
    b = data.draw(signed_of(ALL_BODIES))
    if a.body_bytes != b.body_bytes:
        grafted = codec.decode_signed(codec._wire(a.sender, b.body_bytes, a.signature), CHAIN)
        assert not verify_signed(grafted, CONFIG, CHAIN, VERIFIER)
    other = (a.sender + 1) % len(SIGNERS)
    relabelled = codec.decode_signed(codec._wire(other, a.body_bytes, a.signature), CHAIN)
    assert not verify_signed(relabelled, CONFIG, CHAIN, VERIFIER)


@FUZZ_SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    decoded = _decode_or_none(data)
    if decoded is not None:
        assert decoded.wire == data


@FUZZ_SETTINGS
@given(st.integers(0, 2**16 - 1), st.binary(max_size=400), sig64)
def test_random_body_with_valid_header_only_raises_decode_error(sender: int, body: bytes,
                                                                sig: bytes) -> None:
    data = codec._wire(sender, body, sig)
    decoded = _decode_or_none(data)
    if decoded is not None:
        assert decoded.body_bytes == body
        assert not verify_signed(decoded, CONFIG, CHAIN, VERIFIER)
        assert codec.encode_body(decoded.body) == body


@FUZZ_SETTINGS
@given(st.integers(1, 10), st.binary(max_size=300), sig64)
def test_random_body_of_each_type_only_raises_decode_error(t: int, rest: bytes,
                                                           sig: bytes) -> None:
    data = codec._wire(1, bytes([t]) + rest, sig)
    decoded = _decode_or_none(data)
    if decoded is not None:
        assert decoded.body_bytes == bytes([t]) + rest
        assert codec.encode_body(decoded.body) == bytes([t]) + rest


@FUZZ_SETTINGS
@given(st.binary(max_size=200))
def test_standalone_decoders_only_raise_decode_error(data: bytes) -> None:
    decoders: list[Callable[[], object]] = [
        lambda: codec.decode_request(data),
        lambda: codec.decode_snapshot(data, CHAIN),
        lambda: codec.decode_reconfiguration(data),
    ]
    for decode in decoders:
        with contextlib.suppress(codec.DecodeError):
            decode()


def test_snapshot_pending_flag_is_canonical() -> None:
    """Regression: read_snapshot once accepted any non-zero flag byte (`if rd.u8():`)."""
    snap = m.Snapshot(4, bytes(32), (), (), m.PendingReconfiguration(8, (Member(0, bytes(32)),)))
    raw = codec.encode_snapshot(snap)
    flag_at = 8 + 32 + 4 + 4  # seq, state digest, epoch count, client count
    assert raw[flag_at] == 1
    for flag in (2, 0x80, 0xFF):
        with pytest.raises(codec.DecodeError):
            codec.decode_snapshot(raw[:flag_at] + bytes([flag]) + raw[flag_at + 1:], CHAIN)


def test_status_boolean_is_canonical() -> None:
    msg = _sign(1, m.Status(0, 3, True, 5, 4))
    at = HEADER_BYTES + 1 + 4 + 8
    assert msg.wire[at] == 1
    for flag in (2, 0xFF):
        with pytest.raises(codec.DecodeError):
            codec.decode_signed(msg.wire[:at] + bytes([flag]) + msg.wire[at + 1:], CHAIN)


@pytest.mark.parametrize("raw", [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe0\x80\x80",
                                 b"\xf4\x90\x80\x80"])
def test_client_id_must_be_strict_utf8(raw: bytes) -> None:
    """Invalid, overlong and surrogate encodings would let one id have several encodings."""
    r = m.Request("x", 1, m.RequestKind.APPLICATION, b"p", bytes(64))
    good = codec.encode_request(r)
    bad = struct.pack(">H", len(raw)) + raw + good[3:]
    with pytest.raises(codec.DecodeError):
        codec.decode_request(bad)


@pytest.mark.parametrize("raw", [b"mal\x00lory", b"line\nbreak", b"\x7f", b"\x1b[31mred"])
def test_client_id_with_a_control_character_is_a_decode_error(raw: bytes) -> None:
    """Such an id cannot be stored as PostgreSQL text or printed safely: no request has one."""
    good = codec.encode_request(m.Request("x", 1, m.RequestKind.APPLICATION, b"p", bytes(64)))
    with pytest.raises(codec.DecodeError):
        codec.decode_request(struct.pack(">H", len(raw)) + raw + good[3:])


def test_bad_request_fields_are_decode_errors() -> None:
    r = m.Request("x", 1, m.RequestKind.APPLICATION, b"p", bytes(64))
    good = codec.encode_request(r)
    assert codec.decode_request(good) == r
    empty_id = b"\x00\x00" + good[3:]
    long_id = struct.pack(">H", 129) + b"a" * 129 + good[3:]
    bad_kind = good[:3 + 8] + b"\x07" + good[3 + 9:]
    for raw in (empty_id, long_id, bad_kind):
        with pytest.raises(codec.DecodeError):
            codec.decode_request(raw)


# --------------------------------------------------------------------------- length bombs

def _measure(fn: Callable[[], object]) -> tuple[float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak


def _expect_decode_error(data: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.decode_signed(data, CHAIN)


def test_list_count_bomb_in_a_20_byte_buffer() -> None:
    buf = struct.pack(">I", 2**31) + bytes(16)
    assert len(buf) == 20

    def read() -> None:
        rd = codec.Reader(buf)
        with pytest.raises(codec.DecodeError):
            rd.items(rd.u8)

    elapsed, peak = _measure(read)
    assert elapsed < 0.5
    assert peak < 64 * 1024


D32 = bytes(32)
# Body prefixes that end right before a list count, one per list in the format.
COUNT_SITES = {
    "PrePrepare.requests": bytes([1]) + bytes(4 + 8 + 8) + D32,
    "ViewChange.stable_proof": bytes([5]) + bytes(4 + 8 + 8),
    "ViewChange.prepared": bytes([5]) + bytes(4 + 8 + 8) + bytes(4),
    "NewView.view_changes": bytes([6]) + bytes(4 + 8),
    "NewView.pre_prepares": bytes([6]) + bytes(4 + 8) + bytes(4),
    "RequestForward.requests": bytes([8]),
    "Snapshot.epochs": bytes([10]) + bytes(8) + D32,
    "Snapshot.clients": bytes([10]) + bytes(8) + D32 + bytes(4),
    "StateResponse.proof": bytes([10]) + bytes(8) + D32 + bytes(4 + 4 + 1),
}


@pytest.mark.parametrize("site", sorted(COUNT_SITES))
@pytest.mark.parametrize("count", [2**31, 2**32 - 1, codec.LIST_ITEMS_MAX + 1, 17, 1])
def test_list_count_larger_than_the_message_is_rejected_cheaply(site: str, count: int) -> None:
    body = COUNT_SITES[site] + struct.pack(">I", count) + bytes(16)
    data = codec._wire(0, body, bytes(64))

    def decode() -> None:
        _expect_decode_error(data)

    elapsed, peak = _measure(decode)
    assert elapsed < 0.5
    assert peak < 64 * 1024 + 4 * len(data)


@pytest.mark.parametrize("length", [2**32 - 1, 2**31, 1000])
def test_blob_length_bomb_is_rejected_cheaply(length: int) -> None:
    r = m.Request("c", 1, m.RequestKind.APPLICATION, b"", bytes(64))
    raw = codec.encode_request(r)
    at = 2 + 1 + 8 + 1  # id length, id, nonce, kind
    bomb = raw[:at] + struct.pack(">I", length) + raw[at + 4:]
    body = bytes([8]) + struct.pack(">I", 1) + bomb

    def decode() -> None:
        _expect_decode_error(codec._wire(0, body, bytes(64)))
        with pytest.raises(codec.DecodeError):
            codec.decode_request(bomb)

    elapsed, peak = _measure(decode)
    assert elapsed < 0.5
    assert peak < 64 * 1024


def test_header_length_bomb_is_rejected() -> None:
    msg = _sign(0, m.StateRequest(5))
    for length in (2**32 - 1, len(msg.body_bytes) + 1, len(msg.body_bytes) - 1, 0):
        forged = msg.wire[:3] + struct.pack(">I", length) + msg.wire[7:]
        _expect_decode_error(forged)


def test_unknown_version_and_type_are_rejected() -> None:
    msg = _sign(0, m.StateRequest(5))
    for version in (0, 1, 3, 255):  # 1 is format 1's: refused, never misread
        _expect_decode_error(bytes([version]) + msg.wire[1:])
    for t in (0, 12, 255):
        _expect_decode_error(codec._wire(0, bytes([t]) + msg.body_bytes[1:], msg.signature))


# -------------------------------------------------------------------------------- nesting

EMPTY_SNAPSHOT = m.Snapshot(1, D32, (), (), None)
SAMPLES: dict[str, m.SignedMessage] = {
    "PrePrepare": _sign(0, m.PrePrepare(0, 1, 1, D32, 1, 0)),
    "Prepare": _sign(1, m.Prepare(0, 1, 1, D32)),
    "Commit": _sign(2, m.Commit(0, 1, 1, D32)),
    "Checkpoint": _sign(3, m.Checkpoint(0, 4, D32)),
    "ViewChange": _sign(2, m.ViewChange(0, 1, 0, (), ())),
    "NewView": _sign(1, m.NewView(0, 1, (), ())),
    "Status": _sign(0, m.Status(0, 0, True, 0, 0)),
    "RequestForward": _sign(3, m.RequestForward(())),
    "StateRequest": _sign(3, m.StateRequest(7)),
    "StateResponse": _sign(1, m.StateResponse(EMPTY_SNAPSHOT, ())),
    "BatchRequest": _sign(2, m.BatchRequest(0, 3, D32)),
}
"""One small, well-formed message of every type."""


def _with_epoch_record_proof(s: m.SignedMessage) -> m.Snapshot:
    return m.Snapshot(1, D32, (m.EpochRecord(1, 1, (), D32, D32, (s,)),), (), None)


NESTING_SITES: dict[str, tuple[frozenset[str], Callable[[m.SignedMessage], m.Body]]] = {
    "ViewChange.stable_proof": (
        frozenset({"Checkpoint"}), lambda s: m.ViewChange(0, 1, 0, (s,), ())),
    "PreparedProof.pre_prepare": (
        frozenset({"PrePrepare"}),
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(s, ()),))),
    "PreparedProof.votes": (
        frozenset({"Prepare", "Commit"}),
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(SAMPLES["PrePrepare"], (s,)),))),
    "NewView.view_changes": (frozenset({"ViewChange"}), lambda s: m.NewView(0, 1, (s,), ())),
    "NewView.pre_prepares": (frozenset({"PrePrepare"}), lambda s: m.NewView(0, 1, (), (s,))),
    "StateResponse.proof": (
        frozenset({"Checkpoint"}), lambda s: m.StateResponse(EMPTY_SNAPSHOT, (s,))),
    "EpochRecord.proof": (
        frozenset({"Checkpoint"}), lambda s: m.StateResponse(_with_epoch_record_proof(s), ())),
}
NOT_ALLOWED = "nested message of a type not allowed here"


def test_samples_cover_every_type() -> None:
    assert sorted(SAMPLES) == TYPE_NAMES
    assert all(type(msg.body).__name__ == name for name, msg in SAMPLES.items())


@pytest.mark.parametrize("inner", TYPE_NAMES)
@pytest.mark.parametrize("site", sorted(NESTING_SITES))
def test_nested_message_of_a_wrong_type_is_rejected(site: str, inner: str) -> None:
    """Each place a signed message nests accepts only the protocol's own types there; anything
    else is a DecodeError before the nested message is decoded."""
    allowed, wrap = NESTING_SITES[site]
    msg = _sign(0, wrap(SAMPLES[inner]))
    if inner in allowed:
        decoded = codec.decode_signed(msg.wire, CHAIN)
        assert decoded == msg
        assert _reencode(decoded) == msg.wire
    else:
        with pytest.raises(codec.DecodeError, match=NOT_ALLOWED):
            codec.decode_signed(msg.wire, CHAIN)


@pytest.mark.parametrize("inner", TYPE_NAMES)
def test_snapshot_epoch_proof_holds_only_checkpoints(inner: str) -> None:
    raw = codec.encode_snapshot(_with_epoch_record_proof(SAMPLES[inner]))
    if inner == "Checkpoint":
        assert codec.decode_snapshot(raw, CHAIN) == _with_epoch_record_proof(SAMPLES[inner])
    else:
        with pytest.raises(codec.DecodeError, match=NOT_ALLOWED):
            codec.decode_snapshot(raw, CHAIN)


@pytest.mark.parametrize("nested", [
    pytest.param(b"", id="empty"),
    pytest.param(SAMPLES["Checkpoint"].wire[:7], id="header-only"),
    pytest.param(SAMPLES["Checkpoint"].wire[:8], id="header-and-type"),
    pytest.param(SAMPLES["Checkpoint"].wire[:-1], id="truncated"),
    pytest.param(SAMPLES["Checkpoint"].wire + b"\x00", id="extended"),
])
def test_malformed_nested_blob_of_an_allowed_type_is_a_decode_error(nested: bytes) -> None:
    """A blob too short to carry a type byte, or one that claims an allowed type but is not a
    well-formed message, is rejected as well."""
    good = _sign(0, m.ViewChange(0, 1, 0, (SAMPLES["Checkpoint"],), ()))
    blob = struct.pack(">I", len(SAMPLES["Checkpoint"].wire)) + SAMPLES["Checkpoint"].wire
    assert good.body_bytes.count(blob) == 1
    body = good.body_bytes.replace(blob, struct.pack(">I", len(nested)) + nested)
    _expect_decode_error(codec._wire(0, body, good.signature))


def _deepest_legal(payload: bytes = b"op") -> m.SignedMessage:
    """NEW-VIEW > VIEW-CHANGE > PREPARED proof (PRE-PREPARE + PREPARE/COMMIT votes), with
    CHECKPOINT stable proofs: every nesting site of a NEW-VIEW used, at the protocol's depth."""
    r = m.Request("c", 1, m.RequestKind.APPLICATION, payload, bytes(64))
    pp = _sign(0, m.PrePrepare(0, 0, 5, batch_root((r,)), 1, 0))
    d = pp.body.digest  # type: ignore[union-attr]
    stable = tuple(_sign(i, m.Checkpoint(0, 4, D32)) for i in range(3))
    proofs = (m.PreparedProof(pp, (_sign(1, m.Prepare(0, 0, 5, d)),
                                   _sign(2, m.Prepare(0, 0, 5, d)))),
              m.PreparedProof(pp, tuple(_sign(i, m.Commit(0, 0, 5, d)) for i in range(3))))
    vcs = tuple(_sign(i, m.ViewChange(0, 1, 4, stable, proofs)) for i in range(3))
    new_pp = _sign(1, m.PrePrepare(0, 1, 5, batch_root((r,)), 1, 0))
    return _sign(1, m.NewView(0, 1, vcs, (new_pp,)))


def test_deepest_legal_nesting_round_trips() -> None:
    msg = _deepest_legal()
    decoded = codec.decode_signed(msg.wire, CHAIN)
    assert decoded == msg
    assert _reencode(decoded) == msg.wire
    assert verify_signed(decoded, CONFIG, CHAIN, VERIFIER)
    nv = decoded.body
    assert isinstance(nv, m.NewView)
    vc = nv.view_changes[0].body
    assert isinstance(vc, m.ViewChange)
    assert [type(p.pre_prepare.body) for p in vc.prepared] == [m.PrePrepare, m.PrePrepare]
    assert {type(v.body) for p in vc.prepared for v in p.votes} == {m.Prepare, m.Commit}
    assert {type(c.body) for c in vc.stable_proof} == {m.Checkpoint}
    for inner in nv.view_changes:
        assert verify_signed(inner, CONFIG, CHAIN, VERIFIER)
    sr = _sign(2, m.StateResponse(_with_epoch_record_proof(SAMPLES["Checkpoint"]),
                                  (SAMPLES["Checkpoint"],)))
    assert codec.decode_signed(sr.wire, CHAIN) == sr


def _nest(depth: int, inner: m.SignedMessage) -> m.SignedMessage:
    """Wrap `inner` `depth` times, cycling through every place a signed message can nest: the
    result is nonsense at every level (a NEW-VIEW inside a prepared proof, a STATE-RESPONSE
    inside a NEW-VIEW...), which the encoder does not check but the decoder must refuse."""
    wrappers: list[Callable[[m.SignedMessage], m.Body]] = [
        lambda s: m.ViewChange(0, 1, 0, (s,), ()),
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(s, ()),)),
        lambda s: m.ViewChange(0, 1, 0, (), (m.PreparedProof(SAMPLES["PrePrepare"], (s,)),)),
        lambda s: m.NewView(0, 1, (s,), ()),
        lambda s: m.NewView(0, 1, (), (s,)),
        lambda s: m.StateResponse(m.Snapshot(1, D32, (), (), None), (s,)),
        lambda s: m.StateResponse(_with_epoch_record_proof(s), ()),
    ]
    msg = inner
    for level in range(depth):
        msg = codec.resign_message(level % 4, wrappers[level % len(wrappers)](msg), bytes(64))
    return msg


def test_new_view_inside_a_prepared_proof_is_rejected() -> None:
    nv = _deepest_legal()
    for body in (m.ViewChange(0, 2, 0, (), (m.PreparedProof(nv, ()),)),
                 m.ViewChange(0, 2, 0, (), (m.PreparedProof(SAMPLES["PrePrepare"], (nv,)),)),
                 m.ViewChange(0, 2, 0, (nv,), ()),
                 m.NewView(0, 2, (nv,), ())):
        _expect_decode_error(_sign(2, body).wire)


@pytest.mark.parametrize("depth", [2, 7, 30, sys.getrecursionlimit() // 5,
                                   sys.getrecursionlimit()])
def test_deep_nonsensical_nesting_is_rejected_quickly(depth: int) -> None:
    """Regression for unbounded nesting: decoding used to recurse through every level (up to
    the recursion limit). Now the outermost nested message of the wrong type is refused, in
    time and memory independent of the depth."""
    msg = _nest(depth, _sign(0, m.StateRequest(1)))

    def decode() -> None:
        with pytest.raises(codec.DecodeError, match=NOT_ALLOWED):
            codec.decode_signed(msg.wire, CHAIN)

    elapsed, peak = _measure(decode)
    assert elapsed < 0.5
    assert peak <= 4 * len(msg.wire) + 64 * 1024, (peak, len(msg.wire))


def test_nested_decoding_memory_is_linear_in_message_size() -> None:
    """regression: decoding nested messages was quadratic in memory: every nesting level keeps
    its own copy of `wire` and `body_bytes`, so 100 levels made a replica allocate ~190x the
    message it received. Nesting is now capped at the protocol's own depth (NEW-VIEW >
    VIEW-CHANGE > PRE-PREPARE), so the deepest legal message costs a small constant factor and
    deeper nesting is refused."""
    payload = b"x" * 65536
    msg = _deepest_legal(payload)
    decoded: list[m.SignedMessage] = []
    _, peak = _measure(lambda: decoded.append(codec.decode_signed(msg.wire, CHAIN)))
    assert decoded[0] == msg
    assert peak <= 8 * len(msg.wire) + (1 << 20), (peak, len(msg.wire))

    r = m.Request("c", 1, m.RequestKind.APPLICATION, payload, bytes(64))
    deep = _nest(100, _sign(0, m.RequestForward((r,))))
    _, peak = _measure(lambda: _expect_decode_error(deep.wire))
    assert peak <= 4 * len(deep.wire) + (1 << 20), (peak, len(deep.wire))


# --------------------------------------------------------------------- domain separation

@SETTINGS
@given(st.integers(0, len(SIGNERS) - 1), ALL_BODIES)
def test_signature_is_bound_to_the_chain(sender: int, body: m.Body) -> None:
    msg = codec.sign_message(SIGNERS[sender], CHAIN, sender, body)
    assert verify_signed(msg, CONFIG, CHAIN, VERIFIER)
    assert not verify_signed(msg, CONFIG, OTHER_CHAIN, VERIFIER)
    assert not verify_signed(msg, CONFIG, b"", VERIFIER)
    on_other = codec.sign_message(SIGNERS[sender], OTHER_CHAIN, sender, body)
    assert on_other.signature != msg.signature
    assert not verify_signed(on_other, CONFIG, CHAIN, VERIFIER)


def test_signing_bytes_separate_chain_sender_and_type() -> None:
    d = bytes(range(32))
    prepare = codec.encode_body(m.Prepare(0, 1, 2, d))
    commit = codec.encode_body(m.Commit(0, 1, 2, d))
    assert prepare[1:] == commit[1:]  # same fields: only the type byte differs
    seen = {
        codec.signing_bytes(CHAIN, 1, prepare),
        codec.signing_bytes(CHAIN, 1, commit),
        codec.signing_bytes(CHAIN, 2, prepare),
        codec.signing_bytes(OTHER_CHAIN, 1, prepare),
        codec.signing_bytes(CHAIN + b"\x00", 1, prepare),
        codec.signing_bytes(CHAIN + b"\x00\x01", 0, prepare[:0]),  # no chain/sender ambiguity
        codec.signing_bytes(CHAIN, 256, prepare),
        m.request_signing_bytes(CHAIN, codec.signing_bytes(CHAIN, 1, prepare)),
    }
    assert len(seen) == 8


def test_prepare_signature_does_not_authorise_a_commit() -> None:
    d = bytes(range(32))
    prepare = _sign(2, m.Prepare(0, 1, 2, d))
    assert verify_signed(prepare, CONFIG, CHAIN, VERIFIER)
    as_commit = codec.resign_message(2, m.Commit(0, 1, 2, d), prepare.signature)
    assert not verify_signed(as_commit, CONFIG, CHAIN, VERIFIER)
    checkpoint = _sign(2, m.Checkpoint(0, 2, d))
    as_state_request = codec.resign_message(2, m.StateRequest(2), checkpoint.signature)
    assert not verify_signed(as_state_request, CONFIG, CHAIN, VERIFIER)


def test_sender_is_signed_even_when_two_members_share_a_key() -> None:
    shared = EpochConfig(0, 0, (Member(1, SIGNERS[1].public_key),
                                Member(2, SIGNERS[1].public_key)))
    msg = _sign(1, m.Prepare(0, 1, 2, bytes(32)))
    assert verify_signed(msg, shared, CHAIN, VERIFIER)
    relabelled = codec.resign_message(2, msg.body, msg.signature)
    assert not verify_signed(relabelled, shared, CHAIN, VERIFIER)


def test_request_signature_is_bound_to_the_chain() -> None:
    digest = m.request_digest("c", 1, m.RequestKind.APPLICATION, b"p")
    sig = OUTSIDER.sign(m.request_signing_bytes(CHAIN, digest))
    assert VERIFIER.verify(OUTSIDER.public_key, m.request_signing_bytes(CHAIN, digest), sig)
    assert not VERIFIER.verify(OUTSIDER.public_key, m.request_signing_bytes(OTHER_CHAIN, digest),
                               sig)
    # A request signature is not a peer-message signature over the same digest.
    assert not VERIFIER.verify(OUTSIDER.public_key, codec.signing_bytes(CHAIN, 0, digest), sig)


def test_non_member_and_outsider_signatures_do_not_verify() -> None:
    body = m.Prepare(0, 1, 2, bytes(32))
    outsider_as_member = codec.sign_message(OUTSIDER, CHAIN, 1, body)
    assert not verify_signed(outsider_as_member, CONFIG, CHAIN, VERIFIER)
    outsider_as_itself = codec.sign_message(OUTSIDER, CHAIN, 9, body)
    assert not verify_signed(outsider_as_itself, CONFIG, CHAIN, VERIFIER)
    member_as_other = codec.sign_message(SIGNERS[3], CHAIN, 1, body)
    assert not verify_signed(member_as_other, CONFIG, CHAIN, VERIFIER)


# ------------------------------------------------------------------------ batch attachments

def _with_batch(msg: m.SignedMessage, batch: tuple[m.Request, ...]) -> bytes:
    return codec.wire_with_batch(msg, codec.encode_batch(batch))


@SETTINGS
@given(batch=request_lists)
def test_pre_prepare_with_its_batch_round_trips(batch: tuple[m.Request, ...]) -> None:
    """The batch travels beside the signed header: decoding gives the header (its wire is the
    signed message alone, what the log and view changes keep) and the batch."""
    msg = _sign(0, m.PrePrepare(0, 1, 9, batch_root(batch), len(batch), 1234))
    decoded = codec.decode_signed(_with_batch(msg, batch), CHAIN)
    assert decoded == msg
    assert decoded.wire == msg.wire
    assert decoded.batch == batch
    assert verify_signed(decoded, CONFIG, CHAIN, VERIFIER)
    assert codec.decode_signed(msg.wire, CHAIN).batch is None


def test_attached_batch_must_have_the_headers_size() -> None:
    r = m.Request("c", 1, m.RequestKind.APPLICATION, b"op", bytes(64))
    msg = _sign(0, m.PrePrepare(0, 1, 9, batch_root((r, r)), 2, 0))
    with pytest.raises(codec.DecodeError, match="header's size"):
        codec.decode_signed(_with_batch(msg, (r,)), CHAIN)


@pytest.mark.parametrize("name", [n for n in TYPE_NAMES if n != "PrePrepare"])
def test_only_a_pre_prepare_carries_an_attachment(name: str) -> None:
    with pytest.raises(codec.DecodeError, match="only a PRE-PREPARE"):
        codec.decode_signed(SAMPLES[name].wire + codec.encode_batch(()), CHAIN)


def test_a_nested_pre_prepare_carries_no_batch() -> None:
    """View changes carry headers only: a batch smuggled into a prepared proof is refused, so
    a VIEW-CHANGE stays small whatever the batches hold."""
    r = m.Request("c", 1, m.RequestKind.APPLICATION, b"x" * 1000, bytes(64))
    pp = _sign(0, m.PrePrepare(0, 0, 5, batch_root((r,)), 1, 0))
    nested = _with_batch(pp, (r,))
    proof = m.PreparedProof(pp, ())
    vc = _sign(1, m.ViewChange(0, 1, 0, (), (proof,)))
    tampered = vc.wire.replace(struct.pack(">I", len(pp.wire)) + pp.wire,
                               struct.pack(">I", len(nested)) + nested)
    assert tampered != vc.wire
    body_len = len(vc.body_bytes) + len(nested) - len(pp.wire)
    forged = tampered[:3] + struct.pack(">I", body_len) + tampered[7:]
    with pytest.raises(codec.DecodeError):
        codec.decode_signed(forged, CHAIN)
