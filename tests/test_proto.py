"""The wire contract: generated code is up to date, and consortium.wire converts between
protobuf messages and domain objects, rejecting anything malformed with WireError only; what
decodes is then judged by consortium.verify.

Blocks, certificates and checkpoints come from a real in-memory 4-replica cluster with Ed25519
keys from fixed seeds, so every signature checked here is a real one."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError

from consortium import wire
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.crypto.merkle import InclusionProof
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    ClientOrgs,
    EntryStatus,
    EnvelopeStatus,
    build_block,
)
from consortium.ledger.items import ItemView, digest_of
from consortium.ledger.records import RecordKind, Submission
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.payload import encode_envelope
from consortium.pbft.replica import Replica
from consortium.pbft.state import snapshot_digest, verify_checkpoint_proof
from consortium.verify import (
    item_receipts,
    verify_block_receipts,
    verify_certificate,
    verify_envelope_result,
    verify_receipt,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "consortium" / "api" / "v1"
CHAIN = b"proto-test-chain"
SIGNERS = [Ed25519Signer(bytes([0x30 + i]) * 32) for i in range(4)]
OUTSIDER = Ed25519Signer(b"\x77" * 32)
GENESIS = EpochConfig(0, 0, tuple(Member(i, s.public_key) for i, s in enumerate(SIGNERS)))
VERIFIER = Ed25519Verifier()
CLIENT_KEYS = {"acme-1": Ed25519Signer(b"\x41" * 32), "mercy-1": Ed25519Signer(b"\x42" * 32)}
ORGS = ClientOrgs({"acme-1": "acme", "mercy-1": "mercy"}, {"acme", "mercy", "auditor"})


# ------------------------------------------------------------------------------ code generation

def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Fails when ledger.proto changed without running scripts/gen-proto, or when someone
    edited the generated files by hand."""
    out = tmp_path / "v1"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(ROOT / "scripts" / "gen-proto"), str(out)], check=True, env=env,
                   cwd=tmp_path, capture_output=True)
    fresh = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    assert set(fresh) == {"__init__.py", "ledger_pb2.py", "ledger_pb2.pyi", "ledger_pb2_grpc.py"}
    assert set(committed) == set(fresh), "run scripts/gen-proto and commit consortium/api/v1"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"{stale} differ from scripts/gen-proto's output: regenerate and commit"


def test_services_have_the_expected_methods() -> None:
    services = pb.DESCRIPTOR.services_by_name
    ledger = {m.name: m for m in services["Ledger"].methods}
    replica = {m.name: m for m in services["Replica"].methods}
    assert set(ledger) == {"SubmitRecord", "GetRecord", "GetBlock", "StreamBlocks", "GetReceipt",
                           "GetStatus", "ListSubject", "ListScreening", "SubmitStream",
                           "ListMembers", "GetEpochs"}
    assert set(replica) == {"Connect", "FetchCheckpoint", "FetchBlocks"}
    streaming = {name: (d.client_streaming, d.server_streaming)
                 for name, d in (ledger | replica).items()}
    assert streaming["StreamBlocks"] == (False, True)
    assert streaming["FetchBlocks"] == (False, True)
    assert streaming["Connect"] == (True, True)
    assert streaming["SubmitRecord"] == (False, False)
    assert ledger["GetBlock"].output_type.name == "Block"
    assert ledger["SubmitRecord"].output_type.name == "BlockReceipts"
    assert ledger["GetReceipt"].output_type.name == "Receipt"
    for service, names in (("Ledger", ledger), ("Replica", replica)):
        stub = getattr(pb_grpc, f"{service}Stub")
        servicer = getattr(pb_grpc, f"{service}Servicer")
        assert callable(getattr(pb_grpc, f"add_{service}Servicer_to_server"))
        channel = grpc.insecure_channel("localhost:1")  # never connects: no RPC is made
        try:
            instance = stub(channel)
            for name in names:
                assert callable(getattr(servicer, name))
                assert callable(getattr(instance, name))
        finally:
            channel.close()
    assert pb_grpc.consortium_dot_v1_dot_ledger__pb2 is pb


CORE = ("consortium/pbft/", "consortium/ledger/", "consortium/crypto/", "consortium/sim/")


def test_generated_code_stays_out_of_the_core() -> None:
    """Consensus, ledger, crypto and simulator code never touch protobuf: conversion between
    messages and domain objects lives in consortium/wire/."""
    importers = []
    for path in sorted((ROOT / "consortium").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(CORE):
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "consortium.api" or n.startswith("consortium.api.") for n in names):
                importers.append(rel)
    assert importers == []


# ------------------------------------------------------------------------------- a real cluster

@dataclasses.dataclass
class ClusterRun:
    executes: list[ev.Execute]
    snapshots: list[ev.PersistSnapshot]


class _Clients:
    def client_keys(self, client_id: str) -> tuple[bytes, ...]:
        signer = CLIENT_KEYS.get(client_id)
        return () if signer is None else (signer.public_key,)


def _submission(org: str, n: int) -> bytes:
    sub = Submission(kind=RecordKind.PROVENANCE, subject_id=f"lot-{n}", event_type="shipped",
                     submitter_org=org, submitted_at_ms=1_700_000_000_000 + n,
                     metadata=(("location", f"dock {n}"), ("quantity", str(10 * n))),
                     ciphertext=bytes([n]) * 40,
                     wrapped_keys=tuple(sorted({org: b"k" * 80, "auditor": b"a" * 80}.items())))
    return sub.encode()


def _request(client: str, nonce: int, items: list[bytes]) -> m.Request:
    payload = encode_envelope(items)
    digest = m.request_digest(client, nonce, m.RequestKind.APPLICATION, payload)
    sig = CLIENT_KEYS[client].sign(m.request_signing_bytes(CHAIN, digest))
    return m.Request(client, nonce, m.RequestKind.APPLICATION, payload, sig)


def _run_cluster(batches: list[list[m.Request]]) -> ClusterRun:
    params = ProtocolParams(checkpoint_interval=2, log_window=8, pipeline_depth=1,
                            batch_requests_max=8, batch_delay_ms=0)
    replicas = [Replica(replica_id=i, signer=s, chain_id=CHAIN, genesis=GENESIS, params=params,
                        verifier=Ed25519Verifier(), clients=_Clients())
                for i, s in enumerate(SIGNERS)]
    inbox: deque[tuple[int, ev.Event]] = deque()
    run = ClusterRun([], [])

    def apply(i: int, actions: list[ev.Action]) -> None:
        for a in actions:
            if isinstance(a, ev.Send):
                inbox.extend((to, ev.PeerMessage(a.data)) for to in a.to)
            elif i == 0 and isinstance(a, ev.Execute):
                run.executes.append(a)
            elif i == 0 and isinstance(a, ev.PersistSnapshot):
                run.snapshots.append(a)

    for i, r in enumerate(replicas):
        apply(i, r.start())
    for batch in batches:
        for req in batch:
            apply(0, replicas[0].step(ev.ClientRequest(req)))
        while inbox:
            to, event = inbox.popleft()
            apply(to, replicas[to].step(event))
    return run


@pytest.fixture(scope="module")
def cluster() -> ClusterRun:
    s = _submission
    batches = [
        [_request("acme-1", 1, [s("acme", 1)])],
        [_request("acme-1", 2, [s("acme", 2), s("acme", 3), s("acme", 4)]),
         _request("mercy-1", 1, [s("mercy", 5), s("mercy", 6)]),
         _request("acme-1", 3, [b"not a transaction"]),
         _request("mercy-1", 2, [s("mercy", 7), s("acme", 8)]),
         _request("acme-1", 4, [s("acme", 9), s("acme", 10), s("acme", 11), s("acme", 12),
                                s("acme", 13)])],
        [_request("acme-1", 5, [s("acme", 14)]), _request("acme-1", 6, [s("acme", 15)])],
    ]
    run = _run_cluster(batches)
    assert run.snapshots, "the cluster should have reached a stable checkpoint"
    return run


@pytest.fixture(scope="module")
def blocks(cluster: ClusterRun) -> list[Block]:
    out: list[Block] = []
    prev: BlockHeader | None = None
    for a in cluster.executes:
        block = build_block(a, CHAIN, prev, ORGS)
        out.append(block)
        prev = block.header
    return out


@pytest.fixture(scope="module")
def big_block(blocks: list[Block]) -> Block:
    """The block with the most requests (executed and invalid envelopes, several items each:
    non-trivial proof paths at both levels)."""
    block = max(blocks, key=lambda b: len(b.envelopes))
    assert len(block.envelopes) >= 4 and len(block.entries) >= 7
    statuses = {e.status for e in block.envelopes}
    assert {EnvelopeStatus.EXECUTED, EnvelopeStatus.INVALID} <= statuses
    return block


def _receipt(block: Block, index: int) -> wire.Receipt:
    return wire.receipt_of(block, index, for_client=False)


def _rejects(fn: Callable[[], object]) -> wire.WireError:
    with pytest.raises(wire.WireError) as info:
        fn()
    return info.value


def _never_crashes(fn: Callable[[], object]) -> bool:
    """True when fn accepted the input, False when it raised WireError; anything else fails."""
    try:
        fn()
    except wire.WireError:
        return False
    return True


def _mutations(data: bytes) -> Iterator[bytes]:
    """Every truncation, and every byte flipped (both all bits and the low bit)."""
    for n in range(len(data)):
        yield data[:n]
    for i in range(len(data)):
        for mask in (0xFF, 0x01):
            yield data[:i] + bytes([data[i] ^ mask]) + data[i + 1:]
    yield data + b"\x00"


def _copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


# ------------------------------------------------------------------------------------- blocks

def test_block_round_trip(blocks: list[Block]) -> None:
    assert len(blocks) >= 3
    prev_hash = None
    for block in blocks:
        data = wire.block_to_proto(block).SerializeToString()
        got = wire.block_from_proto(pb.Block.FromString(data), CHAIN)
        assert got.header == block.header
        assert got.envelopes == block.envelopes
        assert got.items == tuple(e.item for e in block.entries)
        assert got.statuses == tuple(e.status for e in block.entries)
        assert got.pre_prepare == block.pre_prepare
        assert got.pre_prepare is not None and got.pre_prepare.wire == block.pre_prepare.wire
        assert got.certificate == block.certificate
        assert [c.wire for c in got.certificate] == [c.wire for c in block.certificate]
        assert verify_certificate(got.header, got.certificate, GENESIS, VERIFIER)
        if prev_hash is not None:
            assert got.header.prev_hash == prev_hash
        prev_hash = got.header.hash()


def test_a_client_block_shows_public_views_only(big_block: Block) -> None:
    """Clients get every item as its public header: key material only goes through the access
    rules. The views keep the digests, so the block still proves itself."""
    got = wire.block_from_proto(wire.block_to_proto(big_block, for_client=True), CHAIN)
    assert got.envelopes == big_block.envelopes
    for item, entry in zip(got.items, big_block.entries, strict=True):
        assert isinstance(item, ItemView)
        assert item.digest == entry.digest
        assert len([s for s in item.present() if s is not None]) == 1


def test_block_rejects_every_truncation_and_flip(big_block: Block) -> None:
    good = wire.block_to_proto(big_block)
    pp_body = big_block.pre_prepare.body
    assert isinstance(pp_body, m.PrePrepare)

    def check(name: str, data: bytes, setter: Callable[[Any, bytes], None],
              accepted_ok: Callable[[wire.WireBlock], bool]) -> None:
        for bad in _mutations(data):
            msg = _copy(good)
            setter(msg, bad)
            if _never_crashes(lambda msg=msg: wire.block_from_proto(msg, CHAIN)):
                got = wire.block_from_proto(msg, CHAIN)
                assert accepted_ok(got), (name, bad)

    # A header that still decodes keeps the root and the proposal (the requests pin it); the
    # rest (prev_hash, state digest, times) is for the chain verifier to refuse.
    check("header", good.header, lambda msg, b: setattr(msg, "header", b),
          lambda got: got.header.merkle_root == big_block.header.merkle_root)
    # Any change to an item breaks its envelope's digest.
    check("item", good.items[1], lambda msg, b: msg.items.__setitem__(1, b),
          lambda got: False)
    # Only what is not cross-checked here may change: view, sender and signature (verified by
    # the chain verifier against the primary of the header's view).
    check("pre_prepare", good.pre_prepare, lambda msg, b: setattr(msg, "pre_prepare", b),
          lambda got: isinstance(got.pre_prepare.body, m.PrePrepare)
          and dataclasses.replace(got.pre_prepare.body, view=pp_body.view) == pp_body)
    # A certificate entry that still decodes is a COMMIT; verify_certificate judges it.
    check("certificate", good.certificate[0], lambda msg, b: msg.certificate.__setitem__(0, b),
          lambda got: isinstance(got.certificate[0].body, m.Commit))


def test_block_rejects_mutated_protobuf_bytes(big_block: Block) -> None:
    data = wire.block_to_proto(big_block).SerializeToString()
    for bad in _mutations(data):
        try:
            msg = pb.Block.FromString(bad)
        except ProtobufDecodeError:
            continue
        _never_crashes(lambda msg=msg: wire.block_from_proto(msg, CHAIN))


def test_block_rejects_wrong_counts(big_block: Block) -> None:
    good = wire.block_to_proto(big_block)
    cases: list[Callable[[Any], None]] = [
        lambda msg: msg.statuses.pop(),
        lambda msg: msg.items.pop(),
        lambda msg: (msg.items.pop(), msg.statuses.pop()),
        lambda msg: msg.statuses.append(EntryStatus.RECORDED),
        lambda msg: (msg.items.append(msg.items[0]), msg.statuses.append(EntryStatus.RECORDED)),
        lambda msg: msg.ClearField("items"),
        lambda msg: msg.envelopes.pop(),
        lambda msg: msg.envelopes.append(msg.envelopes[0]),
        lambda msg: setattr(msg.envelopes[0], "entry_count", msg.envelopes[0].entry_count + 1),
    ]
    for mutate in cases:
        msg = _copy(good)
        mutate(msg)
        _rejects(lambda msg=msg: wire.block_from_proto(msg, CHAIN))


def test_block_rejects_inconsistent_parts(big_block: Block) -> None:
    good = wire.block_to_proto(big_block)
    # Items swapped between envelopes: their digests no longer match.
    msg = _copy(good)
    last = len(good.items) - 1
    msg.items[0], msg.items[last] = good.items[last], good.items[0]
    assert "digest" in str(_rejects(lambda: wire.block_from_proto(msg, CHAIN)))
    # Envelopes reordered: the requests no longer hash to the header's root.
    msg = _copy(good)
    first, second = _copy(good.envelopes[0]), _copy(good.envelopes[1])
    msg.envelopes[0].CopyFrom(second)
    msg.envelopes[1].CopyFrom(first)
    _rejects(lambda: wire.block_from_proto(msg, CHAIN))
    # An envelope whose status is changed to executed without its items, and back.
    invalid = next(i for i, e in enumerate(big_block.envelopes)
                   if e.status == EnvelopeStatus.INVALID)
    msg = _copy(good)
    msg.envelopes[invalid].status = EnvelopeStatus.EXECUTED
    msg.envelopes[invalid].entry_count = 1
    _rejects(lambda: wire.block_from_proto(msg, CHAIN))
    # A request signature swapped: the request digest is unchanged (it excludes the
    # signature), so the block decodes; the client's signature is what no longer verifies.
    # An unknown status.
    msg = _copy(good)
    msg.statuses[0] = "approved"
    _rejects(lambda: wire.block_from_proto(msg, CHAIN))
    msg = _copy(good)
    msg.envelopes[0].status = "approved"
    _rejects(lambda: wire.block_from_proto(msg, CHAIN))
    # Another chain's block (the header names its chain).
    _rejects(lambda: wire.block_from_proto(good, b"another-chain"))
    # A COMMIT where the proposal belongs, a PRE-PREPARE in the certificate.
    msg = _copy(good)
    msg.pre_prepare = good.certificate[0]
    assert "PrePrepare" in str(_rejects(lambda: wire.block_from_proto(msg, CHAIN)))
    msg = _copy(good)
    msg.certificate.append(good.pre_prepare)
    assert "Commit" in str(_rejects(lambda: wire.block_from_proto(msg, CHAIN)))
    msg = _copy(good)
    msg.ClearField("header")
    _rejects(lambda: wire.block_from_proto(msg, CHAIN))
    msg = _copy(good)
    msg.ClearField("pre_prepare")
    assert "proposal header" in str(_rejects(lambda: wire.block_from_proto(msg, CHAIN)))


def test_block_rejects_a_proposal_that_disagrees_with_the_header(big_block: Block) -> None:
    good = wire.block_to_proto(big_block)
    pp = big_block.pre_prepare.body
    assert isinstance(pp, m.PrePrepare)
    primary = big_block.pre_prepare.sender

    def signed(body: m.PrePrepare) -> bytes:
        return codec.sign_message(SIGNERS[primary], CHAIN, primary, body).wire

    for body in (dataclasses.replace(pp, root=bytes(32)),
                 dataclasses.replace(pp, count=pp.count - 1),
                 dataclasses.replace(pp, seq=pp.seq + 1),
                 dataclasses.replace(pp, timestamp_ms=pp.timestamp_ms + 1)):
        msg = _copy(good)
        msg.pre_prepare = signed(body)
        assert "proposal header" in str(_rejects(lambda msg=msg: wire.block_from_proto(msg,
                                                                                       CHAIN)))


def test_block_accepts_another_views_proposal_for_the_same_digest(big_block: Block) -> None:
    """A replica that fetched a batch after missing a NEW-VIEW holds another view's header for
    the same digest; it proves the same contents and time, so the block is well formed, and its
    hash (which holds no view) is every replica's."""
    pp = big_block.pre_prepare.body
    assert isinstance(pp, m.PrePrepare)
    later = dataclasses.replace(pp, view=pp.view + 1)
    msg = _copy(wire.block_to_proto(big_block))
    msg.pre_prepare = codec.sign_message(SIGNERS[1], CHAIN, 1, later).wire
    got = wire.block_from_proto(msg, CHAIN)
    assert got.pre_prepare.body == later
    assert got.header.hash() == big_block.header.hash()


# ----------------------------------------------------------------------------------- receipts

def _executed_entries(block: Block) -> list[int]:
    return [e.index for e in block.entries]


def test_receipt_round_trip_and_verifies(blocks: list[Block]) -> None:
    checked = 0
    for block in blocks:
        for i in _executed_entries(block):
            r = _receipt(block, i)
            data = wire.receipt_to_proto(r).SerializeToString()
            got = wire.receipt_from_proto(pb.Receipt.FromString(data), CHAIN)
            assert got == r
            key = CLIENT_KEYS[r.client_id].public_key
            assert verify_receipt(got, GENESIS, VERIFIER, client_key=key) is None
            checked += 1
    assert checked >= 10


def _reason(r: wire.Receipt, config: EpochConfig = GENESIS) -> str:
    # Through the wire and back, then verify.
    got = wire.receipt_from_proto(wire.receipt_to_proto(r), CHAIN)
    reason = verify_receipt(got, config, VERIFIER, client_key=CLIENT_KEYS[r.client_id].public_key)
    assert reason is not None, "a tampered receipt verified"
    return reason


def _multi_item(block: Block) -> int:
    """An entry of an envelope with several items (a non-trivial item proof)."""
    env = max(block.envelopes, key=lambda e: e.entry_count)
    assert env.entry_count >= 3
    return env.first_entry + 1


def test_receipt_with_a_tampered_proof_is_refused(big_block: Block) -> None:
    r = _receipt(big_block, _multi_item(big_block))
    for which in ("request_proof", "item_proof"):
        proof: InclusionProof = getattr(r, which)
        assert proof.path, f"want a non-trivial {which}"
        for k in range(len(proof.path)):
            h = bytearray(proof.path[k])
            h[0] ^= 1
            path = (*proof.path[:k], bytes(h), *proof.path[k + 1:])
            _reason(dataclasses.replace(r, **{which: dataclasses.replace(proof, path=path)}))
        _reason(dataclasses.replace(r, **{which: dataclasses.replace(proof,
                                                                     path=proof.path[:-1])}))
    other = r.request_proof.index ^ 1
    assert "inclusion" in _reason(dataclasses.replace(
        r, request_proof=big_block.request_proof(other)))


def test_receipt_with_a_wrong_size_is_refused(big_block: Block) -> None:
    r = _receipt(big_block, _multi_item(big_block))
    for size in (r.request_proof.size - 1, r.request_proof.size + 1, 0):
        _reason(dataclasses.replace(r, request_proof=dataclasses.replace(r.request_proof,
                                                                         size=size)))
    for size in (r.item_proof.size - 1, r.item_proof.size + 1, 0):
        _reason(dataclasses.replace(r, item_proof=dataclasses.replace(r.item_proof, size=size)))


def test_receipt_with_another_item_request_or_id_is_refused(big_block: Block) -> None:
    i = _multi_item(big_block)
    r = _receipt(big_block, i)
    other = big_block.entries[i + 1]
    assert "record id" in _reason(dataclasses.replace(r, item=other.item))
    assert "record id" in _reason(dataclasses.replace(r, record_id="00" * 32))
    assert "record id" in _reason(dataclasses.replace(r, nonce=r.nonce + 1))
    assert "height" in _reason(dataclasses.replace(r, height=r.height + 1))
    # Another envelope's item with its own proof, under this request's fields.
    far = next(e for e in big_block.entries if e.envelope != big_block.entries[i].envelope)
    _reason(dataclasses.replace(r, item=far.item, item_proof=big_block.item_proof(far),
                                record_id=far.record_id))
    # The client's signature of another request.
    other_env = big_block.envelopes[far.envelope]
    assert "signature" in _reason(dataclasses.replace(r, signature=other_env.signature))


def test_receipt_with_a_forged_certificate_is_refused(big_block: Block,
                                                      blocks: list[Block]) -> None:
    r = _receipt(big_block, 0)
    h = big_block.header
    good = big_block.certificate
    assert len(good) >= GENESIS.quorum
    view = good[0].body.view  # type: ignore[union-attr]
    commit = m.Commit(h.epoch, view, h.height, h.digest)
    assert "certificate" in _reason(dataclasses.replace(r, certificate=good[:GENESIS.quorum - 1]))
    assert "certificate" in _reason(dataclasses.replace(r, certificate=(good[0],) * 4))
    forged = tuple(codec.sign_message(OUTSIDER, CHAIN, i, commit) for i in range(4))
    assert "certificate" in _reason(dataclasses.replace(r, certificate=forged))
    flipped = tuple(codec.resign_message(c.sender, c.body, bytes([c.signature[0] ^ 1])
                                         + c.signature[1:]) for c in good)
    assert "certificate" in _reason(dataclasses.replace(r, certificate=flipped))
    other_chain = tuple(codec.sign_message(SIGNERS[i], b"other", i, commit) for i in range(4))
    assert "certificate" in _reason(dataclasses.replace(r, certificate=other_chain))
    other_block = next(b for b in blocks if b.header.height != h.height)
    assert "certificate" in _reason(dataclasses.replace(r, certificate=other_block.certificate))
    # The certificate signs the proposal time and request count: a header edited there (or in
    # height) no longer matches it.
    for moved in (dataclasses.replace(h, height=h.height + 1),
                  dataclasses.replace(h, proposed_ms=h.proposed_ms + 1)):
        assert "certificate" in _reason(dataclasses.replace(r, header=moved, height=moved.height))
    strangers = EpochConfig(0, 0, tuple(Member(i, Ed25519Signer(bytes([0x60 + i]) * 32)
                                               .public_key) for i in range(4)))
    assert "certificate" in _reason(r, strangers)
    assert "certificate" in _reason(r, EpochConfig(1, 0, GENESIS.members))
    assert verify_receipt(r, GENESIS, VERIFIER) is None


def test_receipt_from_proto_rejects_malformed(big_block: Block) -> None:
    good = wire.receipt_to_proto(_receipt(big_block, 2))
    cases: list[Callable[[Any], None]] = [
        lambda msg: msg.ClearField("request_proof"),
        lambda msg: msg.ClearField("item_proof"),
        lambda msg: msg.request_proof.path.append(b"\x00" * 31),
        lambda msg: msg.item_proof.path.append(b"\x00" * 33),
        lambda msg: msg.request_proof.path.extend([bytes(32)] * (wire.PROOF_PATH_MAX + 1)),
        lambda msg: setattr(msg, "item_view", b"\x02\x07"),
        lambda msg: setattr(msg, "item_view", b"x"),
        lambda msg: setattr(msg, "signature", b"short"),
        lambda msg: setattr(msg, "kind", 9),
        lambda msg: setattr(msg, "block_header", msg.block_header[:-1]),
        lambda msg: setattr(msg, "status", "committed"),
        lambda msg: msg.certificate.append(big_block.pre_prepare.wire),
        lambda msg: msg.certificate.append(b"\x01"),
    ]
    for mutate in cases:
        msg = _copy(good)
        mutate(msg)
        _rejects(lambda msg=msg: wire.receipt_from_proto(msg, CHAIN))
    _rejects(lambda: wire.receipt_from_proto(good, b"another-chain"))


def test_receipt_mutations_never_verify_or_crash(big_block: Block) -> None:
    r = _receipt(big_block, _multi_item(big_block))
    data = wire.receipt_to_proto(r).SerializeToString()
    for bad in _mutations(data):
        try:
            msg = pb.Receipt.FromString(bad)
        except ProtobufDecodeError:
            continue
        try:
            got = wire.receipt_from_proto(msg, CHAIN)
        except wire.WireError:
            continue
        if verify_receipt(got, GENESIS, VERIFIER) is None:
            # What a receipt proves survives every accepted mutation: this item, under this
            # request, at this leaf, under the root, size and time a quorum committed at this
            # height. Not covered by the certificate: prev_hash, state_digest, timestamp_ms and
            # entry_count of the header (checked by walking the chain), status and reason,
            # surplus commits, and the client's signature unless the verifier is given the key.
            assert (digest_of(got.item), got.record_id, got.item_proof, got.request_proof,
                    got.height) == (digest_of(r.item), r.record_id, r.item_proof,
                                    r.request_proof, r.height), bad
            h, g = r.header, got.header
            assert (g.chain_id, g.height, g.epoch, g.digest) == (
                h.chain_id, h.height, h.epoch, h.digest), bad


# ----------------------------------------------------------------------- per-block answers

def test_block_receipts_round_trip_and_prove_each_item(big_block: Block,
                                                       cluster: ClusterRun) -> None:
    """A block's answer to a client: header and certificate once, each request's proof; the
    client proves every item of its own envelopes from it."""
    indexes = [e.index for e in big_block.envelopes]
    b = wire.block_receipts_of(big_block, indexes)
    got = wire.block_receipts_from_proto(
        pb.BlockReceipts.FromString(wire.block_receipts_to_proto(b).SerializeToString()), CHAIN)
    assert got == b
    assert verify_block_receipts(got, GENESIS, VERIFIER) is None
    requests = {r.key: r for a in cluster.executes for r in a.requests}
    for result in got.envelopes:
        request = requests[(result.client_id, result.nonce)]
        assert verify_envelope_result(result, got.header, request) is None
        env = big_block.envelopes[result.request_proof.index]
        if env.status != EnvelopeStatus.EXECUTED:
            assert result.item_statuses == ()
            continue
        items = [e.item for e in big_block.entries_of(env)]
        assert isinstance(items[0], bytes)
        for receipt, entry in zip(item_receipts(result, got, request, items),  # type: ignore[arg-type]
                                  big_block.entries_of(env), strict=True):
            assert receipt.record_id == entry.record_id
            assert verify_receipt(receipt, GENESIS, VERIFIER) is None
    # Another request under a result's proof, a forged certificate: refused.
    r0 = got.envelopes[0]
    other = requests[(got.envelopes[1].client_id, got.envelopes[1].nonce)]
    assert verify_envelope_result(r0, got.header, other) is not None
    bad = dataclasses.replace(got, certificate=got.certificate[:1])
    assert verify_block_receipts(bad, GENESIS, VERIFIER) is not None


def test_block_receipts_from_proto_rejects_malformed(big_block: Block) -> None:
    good = wire.block_receipts_to_proto(wire.block_receipts_of(big_block, [0, 1]))
    cases: list[Callable[[Any], None]] = [
        lambda msg: setattr(msg, "height", msg.height + 1),
        lambda msg: setattr(msg, "block_header", b""),
        lambda msg: setattr(msg.envelopes[0], "status", "done"),
        lambda msg: msg.envelopes[0].item_statuses.append("maybe"),
        lambda msg: msg.envelopes[0].request_path.append(b"short"),
        lambda msg: msg.certificate.append(b"\x00"),
    ]
    for mutate in cases:
        msg = _copy(good)
        mutate(msg)
        _rejects(lambda msg=msg: wire.block_receipts_from_proto(msg, CHAIN))


# ----------------------------------------------------------------------------------- requests

def _some_request(cluster: ClusterRun) -> m.Request:
    return next(r for a in cluster.executes for r in a.requests if len(r.payload) > 200)


def test_submit_request_round_trip(cluster: ClusterRun) -> None:
    req = _some_request(cluster)
    data = codec.encode_request(req)
    got = wire.submit_request_from_proto(pb.SubmitRecordRequest(request=data, wait_ms=500),
                                         len(data))
    assert got == req and got.digest == req.digest and got.signature == req.signature


def test_submit_request_size_limit_checked_first(cluster: ClusterRun) -> None:
    data = codec.encode_request(_some_request(cluster))
    too_large = _rejects(lambda: wire.submit_request_from_proto(
        pb.SubmitRecordRequest(request=data), len(data) - 1))
    assert isinstance(too_large, wire.TooLarge)
    garbage = pb.SubmitRecordRequest(request=b"\xff" * 5000)
    assert isinstance(_rejects(lambda: wire.submit_request_from_proto(garbage, 4096)),
                      wire.TooLarge)
    assert issubclass(wire.TooLarge, wire.WireError)
    assert issubclass(wire.WireError, ValueError)


def test_submit_request_rejects_malformed(cluster: ClusterRun) -> None:
    req = _some_request(cluster)
    data = codec.encode_request(req)
    n_rejected = 0
    for bad in _mutations(data):
        msg = pb.SubmitRecordRequest(request=bad)
        if not _never_crashes(lambda msg=msg: wire.submit_request_from_proto(msg, 1 << 20)):
            n_rejected += 1
    assert n_rejected >= len(data)  # at least every truncation
    for bad in (b"", b"\x00\x00", data[:2] + b"\xff\xfe" + data[4:]):
        err = _rejects(lambda bad=bad: wire.submit_request_from_proto(
            pb.SubmitRecordRequest(request=bad), 1 << 20))
        assert not isinstance(err, wire.TooLarge) and str(err).startswith("request")
    kind_offset = 2 + len(req.client_id.encode()) + 8
    assert data[kind_offset] == m.RequestKind.APPLICATION
    bad_kind = data[:kind_offset] + b"\x07" + data[kind_offset + 1:]
    _rejects(lambda: wire.submit_request_from_proto(pb.SubmitRecordRequest(request=bad_kind),
                                                    1 << 20))


# ----------------------------------------------------------------------------- state transfer

def test_checkpoint_round_trip(cluster: ClusterRun) -> None:
    for ps in cluster.snapshots:
        data = wire.checkpoint_to_proto(ps.snapshot, ps.proof).SerializeToString()
        snap, proof = wire.checkpoint_from_proto(pb.Checkpoint.FromString(data), CHAIN)
        assert snap == ps.snapshot
        assert proof == ps.proof
        assert verify_checkpoint_proof(proof, GENESIS, snap.seq,
                                       snapshot_digest(GENESIS, snap), CHAIN, VERIFIER)


def test_checkpoint_rejects_malformed(cluster: ClusterRun, big_block: Block) -> None:
    ps = cluster.snapshots[-1]
    good = wire.checkpoint_to_proto(ps.snapshot, ps.proof)
    for bad in _mutations(good.snapshot):
        msg = _copy(good)
        msg.snapshot = bad
        _never_crashes(lambda msg=msg: wire.checkpoint_from_proto(msg, CHAIN))
    for bad in _mutations(good.proof[0]):
        msg = _copy(good)
        msg.proof[0] = bad
        _never_crashes(lambda msg=msg: wire.checkpoint_from_proto(msg, CHAIN))
    msg = _copy(good)
    msg.snapshot = good.snapshot[:-1]
    _rejects(lambda: wire.checkpoint_from_proto(msg, CHAIN))
    msg = _copy(good)
    msg.proof.append(big_block.certificate[0].wire)
    assert "Checkpoint" in str(_rejects(lambda: wire.checkpoint_from_proto(msg, CHAIN)))
    if len(cluster.snapshots) > 1:
        msg = _copy(good)
        msg.proof[0] = cluster.snapshots[0].proof[0].wire
        assert "sequence" in str(_rejects(lambda: wire.checkpoint_from_proto(msg, CHAIN)))
    msg = _copy(good)
    msg.snapshot = b""
    _rejects(lambda: wire.checkpoint_from_proto(msg, CHAIN))


def test_wire_round_trip_keeps_inclusion_proof_types(big_block: Block) -> None:
    r = _receipt(big_block, 0)
    got = wire.receipt_from_proto(wire.receipt_to_proto(r), CHAIN)
    for proof in (got.request_proof, got.item_proof):
        assert isinstance(proof, InclusionProof)
        assert all(type(h) is bytes for h in proof.path)
    assert type(got.header.chain_id) is bytes
