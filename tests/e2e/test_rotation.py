"""Key revocation and rotation on a real local consortium (four validators, real gRPC and
PostgreSQL), driven through the `consortium keys` command as an operator runs it: an
organisation revokes its leaked client key and the key's next request is refused with an error
naming the revocation, while the records it signed before stay valid; it rotates in a new key
and records flow again; another organisation's key is revoked by a vote of the validators; a
validator rotates its signing key and TLS certificate under load (the certificate served at
once, the key from the next epoch on, no restart, no view change, no acknowledged record
lost); and `audit verify --all` passes across every change.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consortium.client import ConsortiumClient, SubmitError
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.localnet import issue_cert, load_ca, read_seed
from consortium.node.tls import served_certificate
from consortium.pbft import messages as m
from consortium.verify import ChainVerifier, commit_signers
from consortium.wire import block_from_proto
from tests.e2e.conftest import Cluster, running_consortium, wait_for
from tests.e2e.test_audit import Ran, verify_all
from tests.e2e.test_cli import cli, ok_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_consortium(tmp_path_factory.mktemp("rotation")) as c:
        yield c


def submit(d: Path, org: str, lot: str) -> int:
    """A provenance record of `org`'s client (as its key file says now); its height."""
    with ConsortiumClient.from_dir(d, org) as client:
        receipt = client.submit_provenance(lot, "shipped")
    assert receipt.status == "recorded", receipt.reason
    return receipt.height


def refused(d: Path, org: str, lot: str) -> SubmitError:
    with ConsortiumClient.from_dir(d, org) as client, pytest.raises(SubmitError) as info:
        client.submit_provenance(lot, "shipped")
    return info.value


def test_a_revoked_key_is_refused_at_once_and_a_rotated_key_signs_again(cluster: Cluster) -> None:
    d = cluster.directory
    before = submit(d, "org1", "lot-before-revocation")
    key_file = d / "orgs" / "org1" / "client.key"
    old_key = Ed25519Signer(read_seed(key_file)).public_key

    revoked = ok_json("keys", "revoke", "--dir", str(d), "--client", "org1", "--as", "org1",
                      "--reason", "laptop stolen")
    assert revoked["status"] == "recorded" and revoked["in_force"] is True
    assert revoked["reason"] == "client key: revoked"
    assert revoked["height"] > before

    error = refused(d, "org1", "lot-after-revocation")
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert f"revocation {revoked['record_id'][:16]}" in str(error)
    assert f"revoked at height {revoked['height']}" in str(error)
    with ConsortiumClient.from_dir(d, "org1") as client, pytest.raises(SubmitError) as info:
        client.list_members()  # reads with the revoked key are refused as clearly
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in str(info.value)

    again = cli("keys", "revoke", "--dir", str(d), "--client", "org1", "--as", "org1", "--json")
    assert again.returncode == 1 and "already revoked" in again.stdout

    rotated = ok_json("keys", "rotate", "--dir", str(d), "--client", "org1")
    assert rotated["status"] == "recorded" and rotated["reason"] == "client key: replaced"
    new_key = Ed25519Signer(read_seed(key_file)).public_key
    assert new_key != old_key and rotated["new_key"] == new_key.hex()
    assert Path(rotated["old_key_file"]).is_file()
    assert not key_file.with_name("client.key.next").exists()
    after = submit(d, "org1", "lot-after-rotation")
    assert after > rotated["height"]

    ran, report = verify_all(cluster)
    assert ran.code == 0 and report["ok"], report  # the record signed before still verifies


def test_another_orgs_key_is_revoked_by_a_vote(cluster: Cluster) -> None:
    d = cluster.directory
    submit(d, "org2", "lot-of-org2")
    proposed = ok_json("keys", "revoke", "--dir", str(d), "--client", "org2", "--as", "org0")
    assert proposed["in_force"] is False
    pid = proposed["proposal_id"]
    submit(d, "org2", "lot-while-voting")  # a proposal alone changes nothing
    listed = ok_json("members", "list", "--dir", str(d))
    (shown,) = [p for p in listed["proposals"] if p["proposal_id"] == pid]
    assert (shown["kind"], shown["name"], shown["status"]) == ("client-key", "org2-client",
                                                                "pending")
    for voter in ("org0", "org1", "org3"):
        vote = ok_json("members", "vote", "--dir", str(d), pid, "--approve", "--as", voter)
        assert vote["status"] == "recorded", vote
    error = refused(d, "org2", "lot-after-vote")
    assert error.code == grpc.StatusCode.UNAUTHENTICATED and pid[:16] in str(error)
    ran, report = verify_all(cluster)
    assert ran.code == 0 and report["ok"], report


def error_line(*args: str) -> str:
    res = cli(*args)
    assert res.returncode == 2, res.stdout + res.stderr
    return Ran(res.returncode, res.stdout, res.stderr).error_line("consortium keys: ")


def test_keys_commands_validate_their_input(cluster: Cluster) -> None:
    d = str(cluster.directory)
    assert "not a client of a member organisation" in error_line(
        "keys", "revoke", "--dir", d, "--client", "nobody", "--as", "org0")
    assert "runs no validator" in error_line(
        "keys", "revoke", "--dir", d, "--client", "org0", "--as", "nobody")
    assert "no client key of organisation" in error_line(
        "keys", "rotate", "--dir", d, "--client", "nobody")
    for command in ("revoke", "rotate"):
        res = cli("keys", command, "--help")
        assert res.returncode == 0 and "--json" in res.stdout and "--client" in res.stdout


# ----------------------------------------------------------------- validator key and TLS

class Load:
    """Records submitted back to back from two organisations' clients while a test runs;
    every acknowledged (verified) receipt is kept."""

    def __init__(self, d: Path, orgs: tuple[str, ...]) -> None:
        self.receipts: list[Any] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(d, org), daemon=True)
                         for org in orgs]

    def _run(self, d: Path, org: str) -> None:
        with ConsortiumClient.from_dir(d, org) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    self.receipts.append(client.submit_provenance(f"load-{org}-{n}", "shipped"))
                except SubmitError as exc:
                    self.errors.append(str(exc))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def server_certificate(address: str) -> bytes:
    """The DER certificate a validator's client port presents to a new connection."""
    return served_certificate(address).public_bytes(serialization.Encoding.DER)


def test_a_validator_rotates_its_key_and_certificate_under_load(cluster: Cluster) -> None:
    d = cluster.directory
    rotated = 2
    vdir = cluster.vdir(rotated)
    old_seed = read_seed(vdir / "signing.key")
    old_cert = server_certificate(cluster.client_address(rotated))
    epoch = cluster.status(0).epoch
    with Load(d, ("org0", "org3")) as load:
        wait_for("records under load", lambda: len(load.receipts) >= 5 or None, 60)
        proposed = ok_json("keys", "rotate", "--dir", str(d), "--validator", str(rotated))
        assert proposed["status"] == "recorded" and proposed["reason"] == "", proposed
        new_key = bytes.fromhex(proposed["signing_key"])
        assert (vdir / "signing.key.next").is_file()
        # the certificate is served at once (the CA vouches for it), before any vote
        new_cert = wait_for("the new certificate served", lambda: (
            c if (c := server_certificate(cluster.client_address(rotated))) != old_cert
            else None), 30)
        assert new_cert == x509.load_pem_x509_certificate(
            (vdir / "tls.crt").read_bytes()).public_bytes(serialization.Encoding.DER)
        for voter in ("org0", "org1", "org3"):
            vote = ok_json("members", "vote", "--dir", str(d), proposed["proposal_id"],
                           "--approve", "--as", voter)
            assert vote["status"] == "recorded", vote
        wait_for("every validator in the next epoch", lambda: {
            cluster.status(i).epoch for i in cluster.ids} == {epoch + 1} or None, 60)
        acknowledged = len(load.receipts)
        wait_for("records in the new epoch", lambda: len(load.receipts) >= acknowledged + 10
                 or None, 60)
    assert not load.errors, load.errors[:3]

    # every validator switched at the same height, with validator 2 on its new key
    members = ok_json("members", "list", "--dir", str(d))
    assert members["epoch"] == epoch + 1
    with ConsortiumClient.from_dir(d, "org0") as client:
        client.refresh_epochs()
        configs = dict(client.core.epochs)
    assert configs[epoch + 1].key_of(rotated) == new_key
    assert configs[epoch].key_of(rotated) == Ed25519Signer(old_seed).public_key
    # the key file was promoted at the switch, without a restart
    assert read_seed(vdir / "signing.key") != old_seed
    assert Ed25519Signer(read_seed(vdir / "signing.key")).public_key == new_key
    assert not (vdir / "signing.key.next").exists()
    assert list(vdir.glob("signing.key.replaced-*"))

    # no acknowledged record lost: every receipt's block is the one the ledger holds
    upto = cluster.wait_converged(30)
    hashes = cluster.chain(0, upto, verify=False)  # (certificates: below, by epoch)
    for r in load.receipts:
        assert hashes[r.height - 1].hex() == r.block_hash, f"record at {r.height} lost"
    # no view change: every block of both epochs was proposed in view 0; each block's
    # certificate holds for its epoch, and the new epoch's carry validator 2's commits under
    # its new key
    verifier = ChainVerifier(cluster.genesis.chain_id_bytes, configs, Ed25519Verifier())
    signers: dict[int, set[int]] = {}
    for blk in cluster.blocks(0, upto):
        wb = block_from_proto(blk, cluster.genesis.chain_id_bytes)
        verifier.check(wb)
        assert isinstance(wb.pre_prepare.body, m.PrePrepare)
        assert wb.pre_prepare.body.view == 0, f"block {wb.header.height} after a view change"
        signers.setdefault(wb.header.epoch, set()).update(commit_signers(
            wb.header, wb.certificate, configs[wb.header.epoch], Ed25519Verifier()))
    assert rotated in signers[epoch] and rotated in signers[epoch + 1]

    # what operators see: the key each validator signs with, the certificate it serves
    rows = {r["id"]: r for r in ok_json("status", "--dir", str(d))["validators"]}
    assert rows[rotated]["signing_key"] == new_key.hex() and not rows[rotated][
        "signing_key_next"]
    served = x509.load_der_x509_certificate(new_cert).not_valid_after_utc
    assert rows[rotated]["tls_not_after"] == served.isoformat()
    assert rows[rotated]["tls_days_left"] > 365
    assert all(rows[i]["signing_key"] == configs[epoch + 1].key_of(i).hex()  # type: ignore[union-attr]
               for i in cluster.ids)
    config = json.loads((vdir / "config.json").read_text())
    with urllib.request.urlopen(f"http://{config['listen_metrics']}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    (line,) = [x for x in metrics.splitlines() if x.startswith("consortium_tls_cert_expiry_days")]
    assert float(line.split()[-1]) == rows[rotated]["tls_days_left"]

    ran, report = verify_all(cluster)
    assert ran.code == 0 and report["ok"], report
    # an offline bundle across the switch verifies from the genesis file alone
    bundle = d / "rotation.bundle"
    exported = ok_json("audit", "export", "--dir", str(d), "--out", str(bundle), "--to",
                       str(upto))
    assert exported["blocks"] == upto
    checked = ok_json("audit", "verify-bundle", str(bundle), "--genesis",
                      str(d / "genesis.json"))
    assert checked["ok"] and checked["to_height"] == upto, checked


# ------------------------------------------------------------------------- CA rollover

def peer_health(address: str, ca_bundle: bytes, key: bytes, cert: bytes) -> bool:
    """Whether a validator's peer port (mutual TLS) takes a new connection presenting `cert`."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_bundle, private_key=key,
                                         certificate_chain=cert)
    with grpc.secure_channel(address, creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _pem(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def test_the_ca_rolls_over_by_vote_with_both_trusted_for_a_while(cluster: Cluster) -> None:
    d = cluster.directory
    ca_key, ca_cert = load_ca(d)
    # a certificate of the old CA, kept aside to knock on the door after the retirement
    old_key, old_cert = issue_cert(ca_key, ca_cert, "validator-3", ["localhost"])
    old_pair = (_pem(old_key), old_cert.public_bytes(serialization.Encoding.PEM))
    peer0 = cluster.peer_address(0)
    bundle = (d / "ca" / "ca.crt").read_bytes()
    assert peer_health(peer0, bundle, *old_pair)

    added = ok_json("ca", "add", "--dir", str(d), "--as", "org0")
    assert added["status"] == "recorded" and added["action"] == "add"
    for voter in ("org0", "org1", "org3"):
        assert ok_json("members", "vote", "--dir", str(d), added["proposal_id"], "--approve",
                       "--as", voter)["status"] == "recorded"
    activated = ok_json("ca", "activate", "--dir", str(d))
    old_file = Path(activated["old_cert"])
    bundle = (d / "ca" / "ca.crt").read_bytes()
    assert len(x509.load_pem_x509_certificates(bundle)) == 2

    # every validator now takes certificates of the new CA, and still those of the old one
    for i in cluster.ids:
        reissued = ok_json("keys", "rotate", "--dir", str(d), "--validator", str(i),
                           "--tls-only")
        assert reissued["status"] == "recorded"
    new_pair = ((cluster.vdir(1) / "tls.key").read_bytes(),
                (cluster.vdir(1) / "tls.crt").read_bytes())
    for i in cluster.ids:
        wait_for(f"validator {i} to take the new CA's certificates", lambda i=i: peer_health(
            cluster.peer_address(i), bundle, *new_pair) or None, 30)
        assert peer_health(cluster.peer_address(i), bundle, *old_pair)
    submit(d, "org0", "lot-between-the-cas")

    retired = ok_json("ca", "retire", "--dir", str(d), "--as", "org1", "--cert", str(old_file))
    assert retired["action"] == "retire" and retired["status"] == "recorded"
    for voter in ("org0", "org1", "org3"):
        assert ok_json("members", "vote", "--dir", str(d), retired["proposal_id"],
                       "--approve", "--as", voter)["status"] == "recorded"
    for i in cluster.ids:
        wait_for(f"validator {i} to refuse the old CA", lambda i=i: not peer_health(
            cluster.peer_address(i), bundle, *old_pair) or None, 30)
        assert peer_health(cluster.peer_address(i), bundle, *new_pair)
    submit(d, "org0", "lot-after-the-old-ca")  # the validators' links run on the new CA
    again = cli("ca", "add", "--dir", str(d), "--as", "org0", "--cert", str(old_file), "--json")
    assert again.returncode == 1 and "retired CA is never trusted again" in again.stdout
    ran, report = verify_all(cluster)
    assert ran.code == 0 and report["ok"], report
