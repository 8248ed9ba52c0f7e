"""Bad input over real connections to a running validator. Each case gets its precise status
code, and afterwards every validator is healthy and the chain is exactly as it was."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from consortium import localnet
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client.nonces import NonceFile
from consortium.config import Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.records import RecordKind, Submission, public_part
from consortium.localnet import read_seed
from consortium.node import wire
from consortium.pbft import codec
from consortium.pbft import messages as m
from tests.e2e.conftest import Cluster, wait_for

pytestmark = pytest.mark.e2e

TARGET = 1
"""The validator the client-facing cases talk to (a backup: it must relay to the primary)."""


# ---------------------------------------------------------------------------------- helpers

def make_request(genesis: Genesis, *, client_id: str, signer: Ed25519Signer, org: str,
                 nonce: int, readers: Sequence[str] = (), event: str = "shipped",
                 chain_id: bytes | None = None,
                 kind: m.RequestKind = m.RequestKind.APPLICATION,
                 payload: bytes | None = None) -> m.Request:
    """A request built exactly as the SDK builds one, with every part under the test's control.
    """
    now = int(time.time() * 1000)
    meta = (("location", "Antwerp"),)
    if payload is None:
        aad = public_part(RecordKind.PROVENANCE, "lot-bad-input", event, org, now, meta)
        names = sorted({org, *readers})
        sealed = envelope.seal(b'{"temperature": 4}', aad,
                               {o: genesis.org(o).encryption_key for o in names})
        payload = Submission(RecordKind.PROVENANCE, "lot-bad-input", event, org, now, meta,
                             sealed.ciphertext,
                             tuple(sorted(sealed.wrapped_keys.items()))).encode()
    digest = m.request_digest(client_id, nonce, kind, payload)
    signature = signer.sign(m.request_signing_bytes(chain_id or genesis.chain_id_bytes, digest))
    return m.Request(client_id, nonce, kind, payload, signature)


def org_signer(cluster: Cluster, org: str) -> Ed25519Signer:
    return Ed25519Signer(read_seed(cluster.directory / "orgs" / org / "client.key"))


def real_nonce(cluster: Cluster, org: str) -> int:
    """A fresh nonce from the organisation's own nonce file (shared with the SDK clients)."""
    return NonceFile(cluster.directory / "orgs" / org / "client.nonce").next()


def submit_raw(cluster: Cluster, data: bytes, validator: int = TARGET,
               wait_ms: int = 10_000) -> pb.Receipt:
    return cluster.ledger(validator).SubmitRecord(
        pb.SubmitRecordRequest(request=data, wait_ms=wait_ms), timeout=wait_ms / 1000 + 5)


def expect_code(code: grpc.StatusCode, fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)  # type: ignore[operator]
    assert info.value.code() == code, f"{info.value.code()} {info.value.details()}"
    return info.value


@contextlib.contextmanager
def chain_unchanged(cluster: Cluster) -> Iterator[None]:
    """The body leaves every validator healthy and the chain (height, head hash) untouched."""
    before = cluster.snapshot()
    yield
    time.sleep(0.5)  # let anything wrongly ordered commit, so the comparison would see it
    for i in cluster.ids:
        assert cluster.healthy(i), f"validator {i} is not healthy; {cluster.describe()}"
    assert cluster.snapshot() == before, f"chain changed: {before} -> {cluster.describe()}"


def assert_keeps_committing(cluster: Cluster) -> None:
    r = cluster.client("org3").submit_provenance("still-alive", "inspected")
    cluster.wait_converged(30.0, min_height=r.height)


# ------------------------------------------------------------------------ client requests

def test_malformed_request_bytes_are_invalid_argument(cluster: Cluster) -> None:
    good = make_request(cluster.genesis, client_id="org0-client",
                        signer=org_signer(cluster, "org0"), org="org0", nonce=10**12)
    data = codec.encode_request(good)
    rng = random.Random(7)
    cases = [b"", b"\x00", b"\xff" * 9, data[:-1], data[: len(data) // 2], data + b"\x00",
             bytes(rng.getrandbits(8) for _ in range(300))]
    with chain_unchanged(cluster):
        for case in cases:
            expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster, case)


def test_well_signed_but_malformed_submission_is_invalid_argument(cluster: Cluster) -> None:
    signer = org_signer(cluster, "org0")
    garbage = make_request(cluster.genesis, client_id="org0-client", signer=signer, org="org0",
                           nonce=10**12 + 1, payload=b"\x01not a submission")
    with chain_unchanged(cluster):
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                    codec.encode_request(garbage))


def test_unknown_reader_orgs_and_control_characters_are_invalid_argument(
        cluster: Cluster) -> None:
    """Regression (a client could halt every validator): reader org names that are no member
    (here two that PostgreSQL would store alike, NUL vs U+FFFD) and control characters in any
    text field are refused up front, and would be marked invalid in a block regardless."""
    signer = org_signer(cluster, "org0")
    org0_key = cluster.genesis.org("org0").encryption_key
    now = int(time.time() * 1000)
    meta = (("location", "Antwerp"),)
    sealed = envelope.seal(b"{}", public_part(RecordKind.PROVENANCE, "lot-x", "shipped", "org0",
                                              now, meta), {"org0": org0_key})
    key = sealed.wrapped_keys["org0"]
    bad_readers = Submission(RecordKind.PROVENANCE, "lot-x", "shipped", "org0", now, meta,
                             sealed.ciphertext,
                             (("org0", key), ("zX", key), ("z\ufffd", key))).encode()
    bad_readers = bad_readers.replace(b"zX", b"z\x00")  # bypass the client-side checks
    control = Submission(RecordKind.PROVENANCE, "lotXA", "shipped", "org0", now, meta,
                         sealed.ciphertext, (("org0", key),)).encode().replace(b"lotXA",
                                                                               b"lot\x07A")
    unknown = Submission(RecordKind.PROVENANCE, "lot-y", "shipped", "org0", now, meta,
                         sealed.ciphertext, (("nobody", key), ("org0", key))).encode()
    with chain_unchanged(cluster):
        for i, payload in enumerate((bad_readers, control, unknown)):
            req = make_request(cluster.genesis, client_id="org0-client", signer=signer,
                               org="org0", nonce=10**12 + 100 + i, payload=payload)
            err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, submit_raw, cluster,
                              codec.encode_request(req))
            assert "control character" in err.details() or "member" in err.details()
    assert_keeps_committing(cluster)


def test_request_over_the_size_limit_is_resource_exhausted(cluster: Cluster) -> None:
    limit = cluster.genesis.protocol.request_bytes_max
    with chain_unchanged(cluster):
        # Just over the protocol limit: the validator's own check.
        err = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, submit_raw, cluster,
                          b"\x01" * (limit + 1))
        assert str(limit) in (err.details() or "")
        # Far over it: gRPC's message size limit on the client port.
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, submit_raw, cluster,
                    b"\x01" * (3 * limit))


def test_wrong_key_and_other_chain_are_unauthenticated(cluster: Cluster) -> None:
    wrong = make_request(cluster.genesis, client_id="org0-client",
                         signer=Ed25519Signer.generate(), org="org0", nonce=10**12 + 2)
    other_chain = make_request(cluster.genesis, client_id="org0-client",
                               signer=org_signer(cluster, "org0"), org="org0",
                               nonce=10**12 + 3, chain_id=b"consortium-other")
    org1_key = make_request(cluster.genesis, client_id="org0-client",
                            signer=org_signer(cluster, "org1"), org="org0", nonce=10**12 + 4)
    with chain_unchanged(cluster):
        for req in (wrong, other_chain, org1_key):
            expect_code(grpc.StatusCode.UNAUTHENTICATED, submit_raw, cluster,
                        codec.encode_request(req))


def test_unknown_client_is_unauthenticated(cluster: Cluster) -> None:
    req = make_request(cluster.genesis, client_id="mallory-client",
                       signer=Ed25519Signer.generate(), org="org0", nonce=1)
    with chain_unchanged(cluster):
        err = expect_code(grpc.StatusCode.UNAUTHENTICATED, submit_raw, cluster,
                          codec.encode_request(req))
        assert "mallory-client" in (err.details() or "")


def test_client_claiming_another_org_is_permission_denied(cluster: Cluster) -> None:
    req = make_request(cluster.genesis, client_id="org0-client",
                       signer=org_signer(cluster, "org0"), org="org1", nonce=10**12 + 5)
    governance = make_request(cluster.genesis, client_id="org0-client",
                              signer=org_signer(cluster, "org0"), org="org0",
                              nonce=10**12 + 6, kind=m.RequestKind.RECONFIGURATION)
    with chain_unchanged(cluster):
        expect_code(grpc.StatusCode.PERMISSION_DENIED, submit_raw, cluster,
                    codec.encode_request(req))
        expect_code(grpc.StatusCode.PERMISSION_DENIED, submit_raw, cluster,
                    codec.encode_request(governance))


def test_replayed_request_is_already_exists_with_the_original_receipt(cluster: Cluster) -> None:
    req = make_request(cluster.genesis, client_id="org2-client",
                       signer=org_signer(cluster, "org2"), org="org2",
                       nonce=real_nonce(cluster, "org2"), readers=["org3"])
    data = codec.encode_request(req)
    first = submit_raw(cluster, data)
    chain_id = cluster.genesis.chain_id_bytes
    config = cluster.genesis.epoch0()
    original = wire.receipt_from_proto(first, chain_id)
    assert wire.verify_receipt(original, config, Ed25519Verifier()) is None
    assert original.record_id == req.digest.hex() and original.status == "recorded"
    cluster.wait_converged(30.0, min_height=original.height)

    with chain_unchanged(cluster):
        for validator in (TARGET, 0, 3):
            err = expect_code(grpc.StatusCode.ALREADY_EXISTS, submit_raw, cluster, data,
                              validator)
            trailers = dict(err.trailing_metadata() or ())
            assert "receipt-bin" in trailers, trailers.keys()
            again = pb.Receipt()
            again.ParseFromString(trailers["receipt-bin"])
            replayed = wire.receipt_from_proto(again, chain_id)
            assert wire.verify_receipt(replayed, config, Ed25519Verifier()) is None
            assert (replayed.record_id, replayed.height, replayed.header.hash()) == \
                (original.record_id, original.height, original.header.hash())
        # GetReceipt returns the same proof.
        got = cluster.ledger(0).GetReceipt(pb.GetRecordRequest(
            record_id=original.record_id,
            auth=cluster.auth("GetReceipt", original.record_id)), timeout=5)
        assert wire.verify_receipt(wire.receipt_from_proto(got, chain_id), config,
                                   Ed25519Verifier()) is None


def test_unknown_record_and_future_block_are_not_found(cluster: Cluster) -> None:
    ledger = cluster.ledger(TARGET)
    height = cluster.status(TARGET).height
    with chain_unchanged(cluster):
        for rid in ("00" * 32, "ab" * 32):
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetRecord,
                        pb.GetRecordRequest(record_id=rid,
                                            auth=cluster.auth("GetRecord", f"{rid}/")))
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetReceipt,
                        pb.GetRecordRequest(record_id=rid,
                                            auth=cluster.auth("GetReceipt", rid)))
        for h in (height + 1, height + 1000, 2**63 - 1):
            expect_code(grpc.StatusCode.NOT_FOUND, ledger.GetBlock,
                        pb.GetBlockRequest(height=h, auth=cluster.auth("GetBlock", str(h))))


def test_malformed_record_ids_get_a_client_error(cluster: Cluster) -> None:
    """Not a hex digest: a client error (NOT_FOUND or INVALID_ARGUMENT), never INTERNAL."""
    ledger = cluster.ledger(TARGET)
    with chain_unchanged(cluster):
        for rid in ("", "xyz", "zz" * 32, "00" * 33, "%' OR 1=1 --", "\x00"):
            for call in (ledger.GetRecord, ledger.GetReceipt):
                with pytest.raises(grpc.RpcError) as info:
                    call(pb.GetRecordRequest(record_id=rid), timeout=5)
                assert info.value.code() in (grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.INVALID_ARGUMENT), \
                    f"{call}({rid!r}): {info.value.code()} {info.value.details()}"


def test_overlong_record_id_gets_a_client_error(cluster: Cluster) -> None:
    ledger = cluster.ledger(TARGET)
    with chain_unchanged(cluster):
        for call in (ledger.GetRecord, ledger.GetReceipt):
            with pytest.raises(grpc.RpcError) as info:
                call(pb.GetRecordRequest(record_id="a" * 20_000), timeout=5)
            assert info.value.code() in (grpc.StatusCode.NOT_FOUND,
                                         grpc.StatusCode.INVALID_ARGUMENT), \
                f"{info.value.code()} {info.value.details()}"


def test_block_zero_is_not_found(cluster: Cluster) -> None:
    with chain_unchanged(cluster):
        expect_code(grpc.StatusCode.NOT_FOUND, cluster.ledger(TARGET).GetBlock,
                    pb.GetBlockRequest(height=0, auth=cluster.auth("GetBlock", "0")))


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
    # A member's certificate does get through (the refusal above is about identity).
    with grpc.secure_channel(cluster.peer_address(victim),
                             _validator_credentials(cluster, 0)) as ch:
        blocks = list(pb_grpc.ReplicaStub(ch).FetchBlocks(
            pb.FetchBlocksRequest(from_height=1, to_height=1), timeout=5))
        assert len(blocks) == (1 if cluster.status(victim).height >= 1 else 0)


def test_garbage_on_a_member_peer_stream(cluster: Cluster) -> None:
    """A legitimate peer identity (validator 1's TLS files) sends random bytes, truncated and
    corrupted signed messages and forged senders to the primary."""
    primary = cluster.status(0).primary
    sender = (primary + 1) % cluster.n
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
        acks = _connect(cluster.peer_address(primary), _validator_credentials(cluster, sender),
                        messages)
        assert acks and acks[-1].received >= 1024  # the stream was read, not dropped
        wait_for("the primary to stay healthy", lambda: cluster.healthy(primary), 10.0)
    before = cluster.status(primary).view
    assert_keeps_committing(cluster)
    assert cluster.status(primary).view == before, "garbage caused a view change"
