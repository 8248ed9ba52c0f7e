"""Bad input over real connections to running validators (ledger format 2: requests are signed
envelopes of items). Each case gets its precise status code, and afterwards every validator is
healthy and the chain is exactly as it was: nothing of a refused envelope is stored.

Includes the attack campaign's cases (issue 12): malformed protobuf on every RPC, a record
stamped 50 years ahead (finding 5), peer RPCs with a consortium certificate that is not a
validator's (finding 4)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from consortium import localnet, wire
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client.core import VerifiedReceipt
from consortium.client.nonces import NonceFile
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.items import record_id
from consortium.ledger.records import RecordKind, Submission, public_part
from consortium.localnet import read_seed
from consortium.node.submissions import StreamSink
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.payload import encode_envelope
from consortium.verify import verify_block_receipts, verify_envelope_result
from tests.e2e.conftest import Cluster, wait_for

pytestmark = pytest.mark.e2e

YEAR_MS = 365 * 24 * 3600 * 1000


# ---------------------------------------------------------------------------------- helpers

def item(cluster: Cluster, org: str, *, subject: str = "lot-bad-input", event: str = "shipped",
         readers: Sequence[str] = (), at_ms: int | None = None,
         ciphertext_bytes: int = 0) -> bytes:
    """A sealed provenance record of `org`, built as the SDK builds one."""
    now = int(time.time() * 1000) if at_ms is None else at_ms
    meta = (("location", "Antwerp"),)
    aad = public_part(RecordKind.PROVENANCE, subject, event, org, now, meta)
    sealed = envelope.seal(b'{"temperature": 4}' + b" " * ciphertext_bytes, aad,
                           {o: cluster.genesis.org(o).encryption_key
                            for o in sorted({org, *readers})})
    return Submission(RecordKind.PROVENANCE, subject, event, org, now, meta, sealed.ciphertext,
                      tuple(sorted(sealed.wrapped_keys.items()))).encode()


def make_request(cluster: Cluster, items: Sequence[bytes] | None, *, client_id: str,
                 signer: Ed25519Signer, nonce: int, chain_id: bytes | None = None,
                 kind: m.RequestKind = m.RequestKind.APPLICATION,
                 payload: bytes | None = None) -> m.Request:
    """A signed request whose payload is an envelope of `items` (or `payload` as given)."""
    data = encode_envelope(items) if payload is None and items is not None else payload
    assert data is not None
    digest = m.request_digest(client_id, nonce, kind, data)
    signature = signer.sign(m.request_signing_bytes(
        chain_id or cluster.genesis.chain_id_bytes, digest))
    return m.Request(client_id, nonce, kind, data, signature)


def org_signer(cluster: Cluster, org: str) -> Ed25519Signer:
    return Ed25519Signer(read_seed(cluster.directory / "orgs" / org / "client.key"))


def org_request(cluster: Cluster, org: str, items: Sequence[bytes], *,
                nonce: int | None = None) -> m.Request:
    """`org`'s client signs an envelope of `items` with a fresh nonce of its nonce file."""
    return make_request(cluster, items, client_id=f"{org}-client",
                        signer=org_signer(cluster, org),
                        nonce=real_nonce(cluster, org) if nonce is None else nonce)


def real_nonce(cluster: Cluster, org: str) -> int:
    """A fresh nonce from the organisation's own nonce file (shared with the SDK clients)."""
    return NonceFile(cluster.directory / "orgs" / org / "client.nonce").next()


def primary(cluster: Cluster) -> int:
    return cluster.status(0).primary


def backup(cluster: Cluster) -> int:
    return (primary(cluster) + 1) % cluster.n


def submit_raw(cluster: Cluster, data: bytes, validator: int | None = None, *,
               retry: bool = False, wait_ms: int = 10_000) -> pb.BlockReceipts:
    target = primary(cluster) if validator is None else validator
    return cluster.ledger(target).SubmitRecord(
        pb.SubmitRecordRequest(request=data, wait_ms=wait_ms, retry=retry),
        timeout=wait_ms / 1000 + 5)


def expect_code(code: grpc.StatusCode, fn: object, *args: object,
                **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    assert info.value.code() == code, f"{info.value.code()} {info.value.details()}"
    return info.value


def trailers(err: grpc.RpcError) -> dict[str, str | bytes]:
    return dict(err.trailing_metadata() or ())


@contextlib.contextmanager
def chain_unchanged(cluster: Cluster) -> Iterator[None]:
    """The body leaves every validator healthy and the chain (height, head hash) untouched."""
    before = cluster.snapshot()
    yield
    time.sleep(0.5)  # let anything wrongly ordered commit, so the comparison would see it
    for i in cluster.ids:
        assert cluster.healthy(i), f"validator {i} is not healthy; {cluster.describe()}"
    assert cluster.snapshot() == before, f"chain changed: {before} -> {cluster.describe()}"


def assert_not_stored(cluster: Cluster, req: m.Request, count: int) -> None:
    """No validator knows any item of `req` (each item's record id is NOT_FOUND)."""
    for k in range(count):
        rid = record_id(req.digest, k)
        for i in cluster.ids:
            expect_code(grpc.StatusCode.NOT_FOUND, cluster.ledger(i).GetReceipt,
                        pb.GetRecordRequest(record_id=rid, auth=cluster.auth("GetReceipt", rid)),
                        timeout=5)


def assert_keeps_committing(cluster: Cluster) -> None:
    r = cluster.client("org3").submit_provenance("still-alive", "inspected")
    cluster.wait_converged(30.0, min_height=r.height)


# ------------------------------------------------------------------------ client requests

def test_malformed_request_bytes_are_invalid_argument(cluster: Cluster) -> None:
    good = org_request(cluster, "org0", [item(cluster, "org0")], nonce=10**12)
    data = codec.encode_request(good)
    rng = random.Random(7)
    cases = [b"", b"\x00", b"\xff" * 9, data[:-1], data[: len(data) // 2], data + b"\x00",
             bytes(rng.getrandbits(8) for _ in range(300))]
    with chain_unchanged(cluster):
        for validator in (primary(cluster), backup(cluster)):
            for case in cases:
                expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster, case,
                            validator)


def test_well_signed_payload_that_is_no_envelope_is_invalid_argument(cluster: Cluster) -> None:
    garbage = make_request(cluster, None, client_id="org0-client",
                           signer=org_signer(cluster, "org0"), nonce=10**12 + 1,
                           payload=b"\x01not an envelope")
    with chain_unchanged(cluster):
        err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                          codec.encode_request(garbage))
        assert "not an envelope" in (err.details() or "")


def test_a_bad_item_refuses_its_whole_envelope_naming_the_item(cluster: Cluster) -> None:
    """An envelope is atomic for what it says itself: one item that does not decode or breaks
    the record rules refuses the envelope with INVALID_ARGUMENT naming the item's index, and
    none of its items (the good ones included) is stored."""
    good = [item(cluster, "org0", subject=f"lot-atomic-{k}") for k in range(2)]
    org0_key = cluster.genesis.org("org0").encryption_key
    now = int(time.time() * 1000)
    meta = (("location", "Antwerp"),)
    sealed = envelope.seal(b"{}", public_part(RecordKind.PROVENANCE, "lot-x", "shipped", "org0",
                                              now, meta), {"org0": org0_key})
    key = sealed.wrapped_keys["org0"]
    # Reader org names that are no member (here two that PostgreSQL would store alike, NUL
    # vs U+FFFD), control characters, an unknown reader, not a transaction, an event type of
    # the wrong kind: each written to bypass the client-side checks.
    bad_readers = Submission(RecordKind.PROVENANCE, "lot-x", "shipped", "org0", now, meta,
                             sealed.ciphertext,
                             (("org0", key), ("zX", key), ("z\ufffd", key))).encode()
    bad_readers = bad_readers.replace(b"zX", b"z\x00")
    control = Submission(RecordKind.PROVENANCE, "lotXA", "shipped", "org0", now, meta,
                         sealed.ciphertext, (("org0", key),)).encode().replace(b"lotXA",
                                                                               b"lot\x07A")
    unknown = Submission(RecordKind.PROVENANCE, "lot-y", "shipped", "org0", now, meta,
                         sealed.ciphertext, (("nobody", key), ("org0", key))).encode()
    wrong_event = item(cluster, "org0", subject="lot-event").replace(b"shipped", b"flowerz")
    cases = {"control character": [bad_readers, control], "member": [unknown],
             "not a transaction": [b"\x01plain bytes"], "event types": [wrong_event]}
    with chain_unchanged(cluster):
        for expected, bad_items in cases.items():
            for bad in bad_items:
                req = org_request(cluster, "org0", [*good, bad])
                err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                                  codec.encode_request(req))
                details = err.details() or ""
                assert details.startswith("item 2: "), details
                assert expected in details or "reader" in details, details
                assert_not_stored(cluster, req, 3)
    assert_keeps_committing(cluster)


def test_a_record_stamped_50_years_ahead_is_refused_and_never_stored(cluster: Cluster) -> None:
    """Attack finding 5: a signed submission time far in the future would let a record claim
    to precede (or follow) anything; it is refused on arrival with a message naming the clock,
    and execution refuses it alike (the primary's proposal time is the reference)."""
    ahead = item(cluster, "org1", subject="lot-future",
                 at_ms=int(time.time() * 1000) + 50 * YEAR_MS)
    req = org_request(cluster, "org1", [ahead])
    with chain_unchanged(cluster):
        for validator in (primary(cluster), backup(cluster)):
            err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                              codec.encode_request(req), validator, retry=True)
            details = err.details() or ""
            assert "item 0: submitted_at_ms" in details and "clock" in details, details
        assert_not_stored(cluster, req, 1)
    old = item(cluster, "org1", subject="lot-past", at_ms=int(time.time() * 1000) - YEAR_MS)
    err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                      codec.encode_request(org_request(cluster, "org1", [old])))
    assert "before the block time" in (err.details() or "")


def test_envelope_over_the_size_limit_is_resource_exhausted(cluster: Cluster) -> None:
    limit = cluster.genesis.protocol.request_bytes_max
    nonce = real_nonce(cluster, "org0")
    size = limit // 2
    for _ in range(3):  # size the envelope's request to 100 bytes over the limit
        items = [item(cluster, "org0", subject=f"lot-big-{k}", ciphertext_bytes=size)
                 for k in range(2)]
        big = org_request(cluster, "org0", items, nonce=nonce)
        data = codec.encode_request(big)
        size += (limit + 100 - len(data)) // 2
    assert limit < len(data) <= limit + 200
    with chain_unchanged(cluster):
        # A well-signed envelope just over the protocol limit: the validator's own check.
        err = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, submit_raw, cluster, data)
        assert str(limit) in (err.details() or "")
        # Far over it: gRPC's message size limit on the client port.
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, submit_raw, cluster,
                    b"\x01" * (3 * limit))
        assert_not_stored(cluster, big, 1)


def test_bad_signatures_are_unauthenticated_and_store_nothing(cluster: Cluster) -> None:
    items = [item(cluster, "org0", subject="lot-sig"), item(cluster, "org0", subject="lot-sig")]
    nonce = 10**12 + 2
    wrong = make_request(cluster, items, client_id="org0-client",
                         signer=Ed25519Signer.generate(), nonce=nonce)
    other_chain = make_request(cluster, items, client_id="org0-client",
                               signer=org_signer(cluster, "org0"), nonce=nonce,
                               chain_id=b"consortium-other")
    org1_key = make_request(cluster, items, client_id="org0-client",
                            signer=org_signer(cluster, "org1"), nonce=nonce)
    signed = make_request(cluster, items, client_id="org0-client",
                          signer=org_signer(cluster, "org0"), nonce=nonce)
    # The signature of one envelope on another (items swapped): the digest differs.
    swapped = m.Request("org0-client", nonce, m.RequestKind.APPLICATION,
                        encode_envelope(items[::-1]), signed.signature)
    with chain_unchanged(cluster):
        for req in (wrong, other_chain, org1_key, swapped):
            err = expect_code(grpc.StatusCode.UNAUTHENTICATED, submit_raw, cluster,
                              codec.encode_request(req))
            assert "signature" in (err.details() or "")
            assert_not_stored(cluster, req, 2)


def test_unknown_client_is_unauthenticated(cluster: Cluster) -> None:
    req = make_request(cluster, [item(cluster, "org0")], client_id="mallory-client",
                       signer=Ed25519Signer.generate(), nonce=1)
    with chain_unchanged(cluster):
        err = expect_code(grpc.StatusCode.UNAUTHENTICATED, submit_raw, cluster,
                          codec.encode_request(req))
        assert "mallory-client" in (err.details() or "")


def test_client_claiming_another_org_is_permission_denied(cluster: Cluster) -> None:
    req = org_request(cluster, "org0", [item(cluster, "org0"), item(cluster, "org1")],
                      nonce=10**12 + 5)
    governance = make_request(cluster, None, client_id="org0-client",
                              signer=org_signer(cluster, "org0"), nonce=10**12 + 6,
                              kind=m.RequestKind.RECONFIGURATION, payload=b"new validators")
    with chain_unchanged(cluster):
        err = expect_code(grpc.StatusCode.PERMISSION_DENIED, submit_raw, cluster,
                          codec.encode_request(req))
        assert "item 1" in (err.details() or "") and "org1" in (err.details() or "")
        expect_code(grpc.StatusCode.PERMISSION_DENIED, submit_raw, cluster,
                    codec.encode_request(governance))


def test_a_first_submission_to_a_backup_is_redirected_to_the_primary(cluster: Cluster) -> None:
    """A backup does not take in a first submission: FAILED_PRECONDITION with the primary in
    the `consortium-primary` trailer, and nothing ordered (the nonce is still free, so the same
    request then commits at the primary). A retry (`retry=True`) is taken in by anyone."""
    req = org_request(cluster, "org2", [item(cluster, "org2", subject="lot-redirect")])
    data = codec.encode_request(req)
    leader = primary(cluster)
    with chain_unchanged(cluster):
        err = expect_code(grpc.StatusCode.FAILED_PRECONDITION, submit_raw, cluster, data,
                          backup(cluster))
        assert trailers(err).get("consortium-primary") == str(leader)
        assert str(leader) in (err.details() or "")
    receipts = wire.block_receipts_from_proto(submit_raw(cluster, data, leader),
                                              cluster.genesis.chain_id_bytes)
    assert [(e.client_id, e.nonce, e.status) for e in receipts.envelopes] == [
        (req.client_id, req.nonce, "executed")]
    retried = org_request(cluster, "org2", [item(cluster, "org2", subject="lot-retry")])
    got = wire.block_receipts_from_proto(
        submit_raw(cluster, codec.encode_request(retried), backup(cluster), retry=True),
        cluster.genesis.chain_id_bytes)
    assert got.envelopes[0].status == "executed"


def test_replayed_envelope_is_already_exists_with_the_original_receipts(
        cluster: Cluster) -> None:
    req = org_request(cluster, "org2", [item(cluster, "org2", readers=["org3"]),
                                        item(cluster, "org2", subject="lot-replay")])
    data = codec.encode_request(req)
    chain_id = cluster.genesis.chain_id_bytes
    config = cluster.genesis.epoch0()
    verifier = Ed25519Verifier()
    first = wire.block_receipts_from_proto(submit_raw(cluster, data), chain_id)
    assert verify_block_receipts(first, config, verifier) is None
    (original,) = first.envelopes
    assert verify_envelope_result(original, first.header, req) is None
    assert original.status == "executed" and original.item_statuses == ("recorded",) * 2
    cluster.wait_converged(30.0, min_height=first.height)

    with chain_unchanged(cluster):
        for validator in cluster.ids:
            err = expect_code(grpc.StatusCode.ALREADY_EXISTS, submit_raw, cluster, data,
                              validator)
            found = trailers(err)
            assert "receipts-bin" in found, found.keys()
            raw = found["receipts-bin"]
            assert isinstance(raw, bytes)
            again = pb.BlockReceipts()
            again.ParseFromString(raw)
            replayed = wire.block_receipts_from_proto(again, chain_id)
            assert verify_block_receipts(replayed, config, verifier) is None
            assert (replayed.height, replayed.header.hash()) == (first.height,
                                                                first.header.hash())
            assert replayed.envelopes == first.envelopes
            assert verify_envelope_result(replayed.envelopes[0], replayed.header, req) is None
        # GetReceipt of each item proves the same block.
        for k in range(2):
            rid = record_id(req.digest, k)
            got = wire.receipt_from_proto(cluster.ledger(0).GetReceipt(pb.GetRecordRequest(
                record_id=rid, auth=cluster.auth("GetReceipt", rid)), timeout=5), chain_id)
            assert (got.record_id, got.height) == (rid, first.height)


def test_unknown_record_and_future_block_are_not_found(cluster: Cluster) -> None:
    ledger = cluster.ledger(backup(cluster))
    height = cluster.status(backup(cluster)).height
    with chain_unchanged(cluster):
        for rid in ("00" * 32, "ab" * 32):
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetRecord,
                        pb.GetRecordRequest(record_id=rid,
                                            auth=cluster.auth("GetRecord", f"{rid}/")))
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetReceipt,
                        pb.GetRecordRequest(record_id=rid,
                                            auth=cluster.auth("GetReceipt", rid)))
        for h in (height + 1, height + 1000, 2**63 - 1, 0):
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetBlock,
                        pb.GetBlockRequest(height=h, auth=cluster.auth("GetBlock", str(h))))


def test_malformed_record_ids_are_invalid_argument(cluster: Cluster) -> None:
    """Not 64 lowercase hex digits: INVALID_ARGUMENT before any lookup (never INTERNAL), and
    the id is not echoed back."""
    ledger = cluster.ledger(backup(cluster))
    with chain_unchanged(cluster):
        for rid in ("", "xyz", "zz" * 32, "00" * 33, "AB" * 32, "%' OR 1=1 --", "\x00",
                    "a" * 20_000):
            for call in (ledger.GetRecord, ledger.GetReceipt):
                err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, call,
                                  pb.GetRecordRequest(record_id=rid), timeout=5)
                assert len(err.details() or "") < 200


# ------------------------------------------------------------------- malformed protobuf

LEDGER_METHODS = {
    "SubmitRecord": "unary", "GetRecord": "unary", "GetBlock": "unary",
    "StreamBlocks": "server-stream", "GetReceipt": "unary", "GetStatus": "unary",
    "ListSubject": "unary", "ListScreening": "unary", "SubmitStream": "bidi",
    "ListMembers": "unary", "GetEpochs": "unary"}
REPLICA_METHODS = {"Connect": "bidi", "FetchCheckpoint": "unary",
                   "FetchBlocks": "server-stream"}
TRUNCATED_VARINT = b"\x08\x80\x80"
"""Field 1, varint, whose continuation bits promise bytes that never come."""
DEEPLY_NESTED = b"\x0b" * 200 + b"\x0c" * 200
"""Unknown groups nested 200 deep: beyond protobuf's recursion limit."""


def _raw_call(channel: grpc.Channel, service: str, method: str, shape: str,
              data: bytes) -> None:
    path = f"/consortium.v1.{service}/{method}"
    if shape == "unary":
        channel.unary_unary(path)(data, timeout=10)
    elif shape == "server-stream":
        list(channel.unary_stream(path)(data, timeout=10))
    else:
        list(channel.stream_stream(path)(iter([data]), timeout=10))


@pytest.mark.parametrize("data", [TRUNCATED_VARINT, DEEPLY_NESTED],
                         ids=["truncated-varint", "deeply-nested"])
def test_malformed_protobuf_is_invalid_argument_on_every_rpc(cluster: Cluster,
                                                             data: bytes) -> None:
    """gRPC decodes a request before the servicer sees it: bytes that are not the message get
    INVALID_ARGUMENT on every Ledger and Replica method (not UNKNOWN), on a backup and the
    primary alike, and the validator is unharmed."""
    with chain_unchanged(cluster):
        for v in (primary(cluster), backup(cluster)):
            for method, shape in LEDGER_METHODS.items():
                err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, _raw_call,
                                  cluster.channel(v), "Ledger", method, shape, data)
                assert "not a well-formed protobuf" in (err.details() or ""), method
            sender = (v + 1) % cluster.n
            with grpc.secure_channel(cluster.peer_address(v),
                                     _validator_credentials(cluster, sender)) as ch:
                for method, shape in REPLICA_METHODS.items():
                    expect_code(grpc.StatusCode.INVALID_ARGUMENT, _raw_call, ch, "Replica",
                                method, shape, data)


# ---------------------------------------------------------------------------- peer port

def _outsider_credentials(cluster: Cluster) -> grpc.ChannelCredentials:
    """Trusts the consortium CA (so the server is accepted) but presents a certificate of
    another CA, with a validator-like name."""
    ca_key, ca_cert = localnet.make_ca("outsider")
    key, cert = localnet.issue_cert(ca_key, ca_cert, "validator-1", ["localhost", "validator-1"])
    return grpc.ssl_channel_credentials(
        root_certificates=cluster.ca,
        private_key=key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM))


def _validator_credentials(cluster: Cluster, i: int) -> grpc.ChannelCredentials:
    vdir = cluster.vdir(i)
    return grpc.ssl_channel_credentials(root_certificates=cluster.ca,
                                        private_key=(vdir / "tls.key").read_bytes(),
                                        certificate_chain=(vdir / "tls.crt").read_bytes())


def _admission_credentials(cluster: Cluster) -> grpc.ChannelCredentials:
    """The admission service's TLS files: issued by the consortium CA, not a validator's."""
    adir = cluster.directory / "admission"
    return grpc.ssl_channel_credentials(root_certificates=cluster.ca,
                                        private_key=(adir / "tls.key").read_bytes(),
                                        certificate_chain=(adir / "tls.crt").read_bytes())


def _connect(address: str, creds: grpc.ChannelCredentials,
             messages: list[bytes], timeout_s: float = 15.0) -> list[pb.PeerAck]:
    with grpc.secure_channel(address, creds) as ch:
        stub = pb_grpc.ReplicaStub(ch)
        call = stub.Connect(iter([pb.PeerMessage(data=d) for d in messages]), timeout=timeout_s)
        return list(call)


@pytest.mark.parametrize("who", ["other CA", "no client certificate"])
def test_non_member_peer_connection_is_refused_at_tls(cluster: Cluster, who: str) -> None:
    victim = 2
    creds = (_outsider_credentials(cluster) if who == "other CA"
             else grpc.ssl_channel_credentials(root_certificates=cluster.ca))
    with chain_unchanged(cluster):
        with pytest.raises(grpc.RpcError) as info:
            _connect(cluster.peer_address(victim), creds, [b"\x01" * 80], timeout_s=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        # Nor can it read the ledger through state transfer.
        with grpc.secure_channel(cluster.peer_address(victim), creds) as ch:
            with pytest.raises(grpc.RpcError) as info:
                list(pb_grpc.ReplicaStub(ch).FetchBlocks(
                    pb.FetchBlocksRequest(from_height=1, to_height=5), timeout=5))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.ReplicaStub(ch).FetchCheckpoint(pb.FetchCheckpointRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value


def test_a_consortium_certificate_that_is_no_validators_gets_no_peer_rpc(
        cluster: Cluster) -> None:
    """Attack finding 4: the admission service's certificate (issued by the consortium CA,
    so TLS accepts it) is refused PERMISSION_DENIED on every peer RPC and gets no block, no
    checkpoint and no say in consensus; a validator's certificate does get blocks."""
    victim = 2
    assert cluster.status(victim).height >= 1 or cluster.client("org3").submit_provenance(
        "lot-peer", "inspected")
    with chain_unchanged(cluster), grpc.secure_channel(cluster.peer_address(victim),
                             _admission_credentials(cluster)) as ch:
        stub = pb_grpc.ReplicaStub(ch)
        blocks: list[pb.Block] = []
        with pytest.raises(grpc.RpcError) as info:
            for b in stub.FetchBlocks(pb.FetchBlocksRequest(from_height=1, to_height=5),
                                      timeout=5):
                blocks.append(b)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value
        assert blocks == []
        expect_code(grpc.StatusCode.PERMISSION_DENIED, stub.FetchCheckpoint,
                    pb.FetchCheckpointRequest(), timeout=5)
        expect_code(grpc.StatusCode.PERMISSION_DENIED, lambda: list(stub.Connect(
            iter([pb.PeerMessage(data=b"\x01" * 80)]), timeout=5)))
    with grpc.secure_channel(cluster.peer_address(victim),
                             _validator_credentials(cluster, 0)) as ch:
        got = list(pb_grpc.ReplicaStub(ch).FetchBlocks(
            pb.FetchBlocksRequest(from_height=1, to_height=1), timeout=5))
        assert len(got) == 1
        assert wire.block_from_proto(got[0], cluster.genesis.chain_id_bytes).header.height == 1


def test_garbage_on_a_member_peer_stream(cluster: Cluster) -> None:
    """A legitimate peer identity (a validator's TLS files) sends random bytes, truncated and
    corrupted signed messages and forged senders to the primary."""
    leader = primary(cluster)
    sender = (leader + 1) % cluster.n
    chain_id = cluster.genesis.chain_id_bytes
    signer = Ed25519Signer(read_seed(cluster.vdir(sender) / "signing.key"))
    status = cluster.status(sender)
    valid = codec.sign_message(signer, chain_id, sender, m.Status(
        status.epoch, status.view, status.view_active, status.height,
        status.stable_checkpoint)).wire
    forged = codec.sign_message(signer, chain_id, (sender + 1) % cluster.n, m.Status(
        status.epoch, status.view, True, status.height, status.stable_checkpoint)).wire
    rng = random.Random(11)
    messages: list[bytes] = [b"", b"\x00", valid, forged]
    messages += [valid[:k] for k in range(0, len(valid), 3)]
    for _ in range(200):
        flipped = bytearray(valid)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        messages.append(bytes(flipped))
    messages += [os.urandom(rng.randrange(1, 4096)) for _ in range(900)]
    # A length prefix that promises more than is sent, and one far larger than anything legal.
    messages.append(valid[:1] + (sender).to_bytes(2, "big") + (2**32 - 1).to_bytes(4, "big"))
    rng.shuffle(messages)
    assert len(messages) >= 1024

    with chain_unchanged(cluster):
        acks = _connect(cluster.peer_address(leader), _validator_credentials(cluster, sender),
                        messages)
        assert acks and acks[-1].received >= 1024  # the stream was read, not dropped
        wait_for("the primary to stay healthy", lambda: cluster.healthy(leader), 10.0)
    before = cluster.status(leader).view
    assert_keeps_committing(cluster)
    assert cluster.status(leader).view == before, "garbage caused a view change"


# ------------------------------------------------------------------------ bounded answers

def test_list_subject_pages_are_bounded_and_list_a_large_subject_completely(
        cluster: Cluster) -> None:
    """A subject with more entries than a page: every page holds at most the validator's page
    size whatever `limit` asks, `more` and the cursor lead through all of them, and every
    entry shows up exactly once, in ledger order."""
    client = cluster.client("org1")
    subject = "lot-many"
    items = [client.core.record_item(RecordKind.PROVENANCE, subject, "inspected",
                                     {"n": str(k)}, b"{}", ()) for k in range(1100)]
    results = client.submit_many(items)
    ids = [r.record_id for r in results if isinstance(r, VerifiedReceipt)]
    assert len(ids) == 1100, [r for r in results if not isinstance(r, VerifiedReceipt)][:3]
    ledger = cluster.ledger(backup(cluster))
    cluster.wait_converged(60.0)

    def page(after: tuple[int, int], limit: int) -> pb.SubjectReply:
        return ledger.ListSubject(pb.ListSubjectRequest(
            kind="provenance", subject_id=subject, after_height=after[0],
            after_index=after[1], limit=limit,
            auth=cluster.auth("ListSubject", f"provenance/{subject}", "org1")), timeout=60)

    capped = page((0, -1), 100_000)
    assert 0 < len(capped.entries) <= 1000 and capped.more
    small = page((0, -1), 7)
    assert len(small.entries) == 7 and small.more
    listed: list[str] = []
    positions: list[tuple[int, int]] = []
    after = (0, -1)
    for _ in range(10):
        reply = page(after, 400)
        assert len(reply.entries) <= 400
        for e in reply.entries:
            listed.append(e.receipt.record_id)
            positions.append((e.receipt.height, e.receipt.item_proof.index))
        if not reply.more:
            break
        after = (reply.next_height, reply.next_index)
    else:
        raise AssertionError("ListSubject did not end")
    assert sorted(listed) == sorted(ids) and len(set(listed)) == len(listed)
    heights = [h for h, _ in positions]
    assert heights == sorted(heights)
    assert [e.receipt.record_id for e in small.entries] == listed[:7]


def test_a_stream_over_its_bytes_in_flight_is_slowed_not_failed() -> None:
    """SubmitStream's flow control (StreamSink): a request that would take the stream over
    its bytes in flight waits until earlier ones commit, then goes on; it never fails, and a
    single request larger than the budget still goes when nothing else is in flight."""
    async def body() -> None:
        sink = StreamSink(1000)
        await sink.reserve(("c", 1), 600)
        blocked = asyncio.create_task(sink.reserve(("c", 2), 600))
        await asyncio.sleep(0.05)
        assert not blocked.done() and sink.bytes == 600
        sink.release(("c", 1))
        await asyncio.wait_for(blocked, 1.0)
        assert sink.bytes == 600 and sink.replies.empty()
        sink.release(("c", 2))
        await asyncio.wait_for(sink.reserve(("c", 3), 5000), 1.0)  # alone: not refused
        assert sink.bytes == 5000
    asyncio.run(body())
