"""Key revocation and rotation on a real local consortium (four validators, real gRPC and
PostgreSQL), driven through the `consortium keys` command as an operator runs it: an
organisation revokes its leaked client key and the key's next request is refused with an error
naming the revocation, while the records it signed before stay valid; it rotates in a new key
and records flow again; another organisation's key is revoked by a vote of the validators; and
`audit verify --all` passes across every change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from consortium.client import ConsortiumClient, SubmitError
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from tests.e2e.conftest import Cluster, running_consortium
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
