"""What every validator refuses in a provenance record's public EPCIS event, judged from the
envelope alone (`blocks.envelope_problem`, run at admission and again at execution with the
block's proposal time): malformed GS1 identifiers, unknown bizStep or disposition, a
disposition that contradicts its bizStep, an event in the future beyond the clock skew, and a
record whose event type or subjects are not what its event says."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from consortium import localnet
from consortium.client.sdk import AsyncConsortiumClient
from consortium.formats import epcis
from consortium.ledger.blocks import ClientOrgs, Governance, Rules, envelope_problem, parse_request
from consortium.ledger.records import RecordKind

NOW = int(time.time() * 1000)  # block (proposal) time: the SDK stamps submissions now
SKEW = Rules().future_ms_max


def raw_event(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "shipping",
        "disposition": "in_transit", "eventTime": epcis.format_time_ms(NOW - 60_000),
        "eventTimeZoneOffset": "+00:00",
        "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.LOT-A1",
                          "quantity": 20000}],
        "bizLocation": {"id": "urn:epc:id:sgln:4012345.00001.0"}}
    e.update({k: v for k, v in over.items() if v is not None})
    for k in [k for k, v in over.items() if v is None]:
        e.pop(k, None)
    return e


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncConsortiumClient:
    d: Path = tmp_path_factory.mktemp("net")
    localnet.init(d, 4)
    return AsyncConsortiumClient.from_dir(d, "org0")


def judge(client: AsyncConsortiumClient, *items: bytes, block_ms: int = NOW) -> str:
    """The envelope's problem at a block proposed at `block_ms`. Items the SDK stamps
    itself (epcis_item, provenance_item) carry the time they were built, minutes after NOW
    when the suite is slow: judge those at the present."""
    genesis = client.core.genesis
    orgs = ClientOrgs(genesis.client_orgs(), {o.org_id for o in genesis.orgs})
    request = client.core.sign(list(items)).request
    return envelope_problem(request, parse_request(request), orgs,
                            Governance(genesis.admission_client), Rules(), block_ms)


def now_ms() -> int:
    return int(time.time() * 1000)


def record(client: AsyncConsortiumClient, document: bytes, *, event_type: str = "shipping",
           subject: str = "urn:epc:class:lgtin:4012345.012345.LOT-A1",
           also: tuple[str, ...] = (), kind: RecordKind = RecordKind.PROVENANCE) -> bytes:
    return client.core.record_item(kind, subject, event_type, {}, b"{}", [], also=also,
                                   document=document, submitted_at_ms=NOW)


def canonical(raw: dict[str, Any]) -> bytes:
    """What a client that skipped the SDK's validation could send: canonical JSON of an
    event as given (GS1's context added), unchecked."""
    return epcis.canonical_json({"@context": [epcis.GS1_CONTEXT_URL], **raw})


def test_a_valid_event_stands(client: AsyncConsortiumClient) -> None:
    event = epcis.parse_event(raw_event())
    assert judge(client, client.epcis_item(event), block_ms=now_ms()) == ""
    assert canonical(raw_event()) == event.public_json()
    assert judge(client, record(client, canonical(raw_event()))) == ""


@pytest.mark.parametrize(("over", "message"), [
    ({"quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.01234X.LOT-A1"}]},
     "item 0: EPCIS event: quantityList[0].epcClass"),
    ({"bizStep": "teleporting"}, "item 0: EPCIS event: bizStep: unknown bizStep 'teleporting'"),
    ({"disposition": "sleeping"}, "item 0: EPCIS event: disposition: unknown disposition"),
    ({"disposition": "destroyed"},
     "item 0: EPCIS event: disposition: disposition destroyed contradicts bizStep shipping"),
    ({"eventTime": epcis.format_time_ms(NOW + SKEW + 1)},
     "later than the block time plus the clock skew"),
    ({"bizLocation": None}, "an event needs a readPoint or a bizLocation"),
])
def test_refused_at_consensus(client: AsyncConsortiumClient, over: dict[str, Any],
                              message: str) -> None:
    problem = judge(client, record(client, canonical(raw_event(**over))))
    assert message in problem, problem


def test_event_in_the_skew_window_stands(client: AsyncConsortiumClient) -> None:
    ok = raw_event(eventTime=epcis.format_time_ms(NOW + SKEW))
    assert judge(client, record(client, canonical(ok))) == ""


def test_digital_links_are_refused_at_consensus(client: AsyncConsortiumClient) -> None:
    """Validators read EPC URNs only (no library in consensus): the SDK converts first."""
    dl = raw_event(quantityList=[{"epcClass": "https://id.gs1.org/01/04012345123456/10/LOT-A1",
                                  "quantity": 1}])
    problem = judge(client, record(client, canonical(dl)))
    assert "EPCIS event: quantityList[0].epcClass" in problem and "URN" in problem, problem


def test_non_canonical_bytes_are_refused(client: AsyncConsortiumClient) -> None:
    spaced = json.dumps({"@context": [epcis.GS1_CONTEXT_URL], **raw_event()}, indent=1).encode()
    assert "not in canonical form" in judge(client, record(client, spaced))


def test_record_must_say_what_its_event_says(client: AsyncConsortiumClient) -> None:
    doc = canonical(raw_event())
    assert "differs from the event's bizStep 'shipping'" in judge(
        client, record(client, doc, event_type="receiving"))
    assert "subjects are not the event's identifiers" in judge(
        client, record(client, doc, subject="urn:epc:class:lgtin:4012345.012345.OTHER"))
    assert "subjects are not the event's identifiers" in judge(
        client, record(client, doc, also=("urn:epc:class:lgtin:4012345.012345.EXTRA",)))
    assert "needs its event as public document" in judge(client, record(client, b""))
    assert "only provenance records carry a public document" in judge(
        client, record(client, doc, kind=RecordKind.PATIENT, event_type="lab-result",
                       subject="P-1"))


def test_one_bad_item_makes_the_envelope_invalid(client: AsyncConsortiumClient) -> None:
    good = client.epcis_item(epcis.parse_event(raw_event()))
    bad = record(client, canonical(raw_event(bizStep="teleporting")))
    assert judge(client, good, bad, block_ms=now_ms()).startswith(
        "item 1: EPCIS event: bizStep")


def test_legacy_records_are_unchanged(client: AsyncConsortiumClient) -> None:
    legacy = client.provenance_item("LOT-1", "shipped", location="Basel")
    assert judge(client, legacy, block_ms=now_ms()) == ""
