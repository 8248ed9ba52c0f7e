"""Members' GS1 identities in the membership: genesis, `consortium init`, join requests (their
encoding and what validators refuse), and the admission service's directory built from them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from consortium import localnet
from consortium.admission.service import Screener
from consortium.api.v1 import ledger_pb2 as pb
from consortium.config import ConfigError, Genesis
from consortium.crypto.signing import Ed25519Signer
from consortium.formats.directory import MemberGs1
from consortium.formats.errors import FormatError
from consortium.ledger.transactions import (
    InvalidTransaction,
    JoinRequest,
    decode_governance_tx,
    sponsor_join,
    sponsorship_signing_bytes,
)
from consortium.pbft.codec import Writer

ACME = MemberGs1("acme", ("5412345",), ("https://id.gs1.org/417/5412345000013",),
                 ("urn:epc:id:sgln:5412345.00002.0",))


def _join(gs1: bytes = b"") -> JoinRequest:
    return JoinRequest("acme", "Acme Logistics", 4, bytes(range(32)), bytes(range(1, 33)),
                       bytes(range(2, 34)), "127.0.0.1:7104", "127.0.0.1:7204",
                       "we move pallets", gs1=gs1)


def test_identity_canonical_bytes_round_trip() -> None:
    data = ACME.canonical()
    assert json.loads(data)["pglns"] == ["urn:epc:id:pgln:5412345.00001"]  # Digital Link -> URN
    assert MemberGs1.from_canonical("acme", data) == ACME
    assert MemberGs1("x").canonical() == b""


@pytest.mark.parametrize(("data", "message"), [
    (b'{"company_prefixes":["5412345"],"pglns":["https://id.gs1.org/417/5412345000013"],'
     b'"sglns":[]}', "is not an EPC URN"),
    (b'{"pglns":[],"sglns":[],"company_prefixes":["5412345"]}', "not in canonical form"),
    (b'{"company_prefixes":["123"],"pglns":[],"sglns":[]}', "6 to 12 digits"),
    (b'{"company_prefixes":[]}', "exactly company_prefixes, pglns, sglns"),
    (b"not json", "not JSON"),
])
def test_identity_refused(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        MemberGs1.from_canonical("acme", data)


def test_join_request_carries_identity() -> None:
    tx = _join(ACME.canonical())
    back = decode_governance_tx(list(tx.segments()))
    assert back == tx
    assert MemberGs1.from_canonical("acme", back.gs1) == ACME
    plain = _join()
    assert decode_governance_tx(list(plain.segments())) == plain
    assert len(plain.segments()[0]) < len(tx.segments()[0])


def test_join_request_identity_refused_by_validators() -> None:
    header, statement = _join(b'{"company_prefixes":["5412345"],"pglns":[],"sglns":["x"]}'
                              ).segments()
    with pytest.raises(InvalidTransaction, match="GS1 identity: sglns: 'x' is not an EPC URN"):
        decode_governance_tx([header, statement])
    empty_blob = Writer()
    empty_blob.blob(b"")
    with pytest.raises(InvalidTransaction, match="written by leaving it out"):
        decode_governance_tx([_join().segments()[0] + empty_blob.getvalue(), statement])


def test_sponsorship_covers_identity() -> None:
    signer = Ed25519Signer.generate()
    sponsored = sponsor_join(_join(ACME.canonical()), "org0", signer, b"chain")
    other = replace(sponsored, gs1=MemberGs1("acme", ("5412346",)).canonical())
    assert sponsorship_signing_bytes(b"chain", sponsored) != \
        sponsorship_signing_bytes(b"chain", other)


def test_init_gives_each_org_an_identity(tmp_path: Path) -> None:
    genesis = localnet.init(tmp_path, 4)
    loaded = Genesis.load(tmp_path / "genesis.json")
    assert loaded == genesis
    directory = loaded.gs1_directory()
    assert [m.org for m in directory.members] == ["org0", "org1", "org2", "org3"]
    org2 = directory.member("org2")
    assert org2 is not None and org2.company_prefixes == ("4014345",)
    assert directory.org_of("urn:epc:id:sgln:4014345.00001.0") == "org2"
    assert directory.org_of("urn:epc:class:lgtin:4013345.012345.LOT-1") == "org1"
    assert directory.party_uri("org3") == "urn:epc:id:pgln:4015345.00000"
    assert loaded.org("admission").gs1 is None


def test_genesis_identity_errors(tmp_path: Path) -> None:
    localnet.init(tmp_path, 2)
    data = json.loads((tmp_path / "genesis.json").read_text())
    data["organisations"][1]["gs1"]["company_prefixes"] = ["4012345"]  # org0's
    with pytest.raises(ConfigError, match="company prefix 4012345 of org1 overlaps one of org0"):
        Genesis.from_json(data)
    data["organisations"][1]["gs1"] = {"company_prefixes": ["12"]}
    with pytest.raises(ConfigError, match=r"organisation org1: gs1: .*6 to 12 digits"):
        Genesis.from_json(data)


def test_admission_directory_from_membership(tmp_path: Path) -> None:
    genesis = localnet.init(tmp_path, 4)
    screener = Screener.__new__(Screener)  # the directory logic only: no client, no backend
    screener.directory = genesis.gs1_directory()
    clash = MemberGs1("thief", ("4012345",)).canonical()
    admitted = [pb.ProposalInfo(kind="join", status="approved", org="thief", gs1=clash.decode()),
                pb.ProposalInfo(kind="join", status="approved", org="acme",
                                gs1=ACME.canonical().decode())]
    screener._learn_gs1(admitted)
    assert screener.directory.org_of("urn:epc:id:sgln:5412345.00002.0") == "acme"
    assert screener.directory.org_of("urn:epc:id:pgln:4012345.00000") == "org0"
    assert screener.directory.member("thief") is None
