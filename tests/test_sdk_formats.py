"""The SDK's EPCIS and FHIR submissions, without a network: what a sealed record holds (the
public event, subjects, event type; the encrypted private part; FHIR metadata), and what is
refused before anything is sealed (bad events by index, FHIR rule breaks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consortium import localnet
from consortium.client.sdk import AsyncConsortiumClient
from consortium.crypto import envelope
from consortium.crypto.envelope import OrgKeyPair
from consortium.formats import epcis
from consortium.formats.errors import FhirError, FormatError
from consortium.ledger.records import RecordKind, decode_submission
from tests.formats import fhir_samples

T = "2026-03-01T09:00:00.000Z"


def event(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "shipping",
        "disposition": "in_transit", "eventTime": T, "eventTimeZoneOffset": "+01:00",
        "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.LOT-A1",
                          "quantity": 200}],
        "bizLocation": {"id": "urn:epc:id:sgln:4012345.00001.0"},
        "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}],
        "destinationList": [{"type": "owning_party",
                             "destination": "urn:epc:id:pgln:4014345.00000"}]}
    e.update(over)
    return e


def document(events: list[dict[str, Any]], extra_ns: dict[str, str] | None = None
             ) -> dict[str, Any]:
    ctx: list[Any] = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"]
    if extra_ns:
        ctx.append(extra_ns)
    return {"@context": ctx, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": T, "epcisBody": {"eventList": events}}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("net")
    localnet.init(d, 4)
    return d


@pytest.fixture
def client(net: Path) -> AsyncConsortiumClient:
    return AsyncConsortiumClient.from_dir(net, "org0")


def _open(net: Path, item: bytes, org: str = "org0") -> tuple[Any, bytes]:
    sub = decode_submission(item)
    key = OrgKeyPair(bytes.fromhex((net / "orgs" / org / "encryption.key").read_text()))
    return sub, envelope.open_sealed(sub.ciphertext, sub.associated_data(),
                                     dict(sub.wrapped_keys)[org], key)


def test_epcis_event_becomes_a_record(net: Path, client: AsyncConsortiumClient) -> None:
    items, bad = client.epcis_items(document([event(), event(
        epcList=["urn:epc:id:sgtin:4012345.011111.987", "urn:epc:id:sscc:4012345.0000000001"],
        quantityList=[])]), readers=["org2"])
    assert bad == [] and [i for i, _ in items] == [0, 1]
    sub, payload = _open(net, items[0][1])
    assert sub.kind is RecordKind.PROVENANCE and sub.event_type == "shipping"
    assert sub.subject_id == "urn:epc:class:lgtin:4012345.012345.LOT-A1" and sub.also == ()
    assert sub.readers == ("org0", "org2") and sub.metadata == ()
    assert epcis.event_from_public_json(sub.document).quantity_list[0].quantity == 200
    assert json.loads(payload) == {}
    second = decode_submission(items[1][1])
    assert (second.subject_id, second.also) == ("urn:epc:id:sgtin:4012345.011111.987",
                                                ("urn:epc:id:sscc:4012345.0000000001",))


def test_private_fields_are_encrypted_not_public(net: Path,
                                                 client: AsyncConsortiumClient) -> None:
    doc = document([event(**{"priv:unitPrice": 12.5, "ext:carrier": "ACME"})],
                   {"priv": "urn:consortium:private:", "ext": "https://example.com/ext/"})
    items, _ = client.epcis_items(doc)
    sub, payload = _open(net, items[0][1])
    public = json.loads(sub.document)
    assert "priv:unitPrice" not in public and public["ext:carrier"] == "ACME"
    assert b"urn:consortium:private:" not in sub.document
    assert json.loads(payload) == {"extensions": {"priv:unitPrice": 12.5}}


def test_bad_document_is_refused_whole_unless_skip_invalid(
        client: AsyncConsortiumClient) -> None:
    doc = document([event(), event(bizStep="teleporting"), event(),
                    event(quantityList=[{"epcClass": "https://id.gs1.org/01/04012345123459/"
                                                     "10/LOT-A1", "quantity": 1}])])
    with pytest.raises(epcis.EpcisDocumentError) as info:
        client.epcis_items(doc)
    assert [e.index for e in info.value.errors] == [1, 3]
    assert "2 of 4 events are invalid" in str(info.value)
    assert "bizStep" in info.value.errors[0].message
    assert "check digit" in info.value.errors[1].message
    items, bad = client.epcis_items(doc, skip_invalid=True)
    assert [i for i, _ in items] == [0, 2] and [b.index for b in bad] == [1, 3]


def test_shorthand_builds_an_object_event(client: AsyncConsortiumClient) -> None:
    item = client.shorthand_item("LOT-1", "shipped", location="Basel plant",
                                 custodian_to="org2", quantity=10, details={"price": 3},
                                 event_time_ms=1_700_000_000_000)
    sub = decode_submission(item)
    ev = epcis.event_from_public_json(sub.document)
    assert (sub.event_type, ev.disposition) == ("shipping", "in_transit")
    assert ev.party("source", "owning_party") == "urn:epc:id:pgln:4012345.00000"  # org0's PGLN
    assert ev.party("destination", "owning_party") == "urn:epc:id:pgln:4014345.00000"
    assert sub.subject_id == "urn:consortium:lot:LOT-1"
    with pytest.raises(FormatError, match="--location is required"):
        client.shorthand_item("LOT-1", "manufactured", location=None)


def test_fhir_bundle_becomes_a_patient_record(net: Path, client: AsyncConsortiumClient) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": fhir_samples.glucose()}, {"resource": fhir_samples.prescription()}]}
    item = client.fhir_item(fhir_samples.PATIENT, bundle, readers=["org1"])
    sub, payload = _open(net, item)
    assert (sub.kind, sub.subject_id, sub.event_type) == (
        RecordKind.PATIENT, fhir_samples.PATIENT, "lab-result")
    meta = dict(sub.metadata)
    assert meta["fhir_resource_type"] == "Bundle"
    assert "http://loinc.org" in meta["fhir_code_systems"]
    assert "15074-8" not in json.dumps(meta) and "5.8" not in json.dumps(meta)
    assert json.loads(payload) == bundle


@pytest.mark.parametrize(("payload", "message"), [
    ({k: v for k, v in fhir_samples.glucose().items() if k != "code"}, "code"),
    ({**fhir_samples.glucose(), "contained": [{"resourceType": "Patient", "id": "demo",
                                               "name": [{"family": "Doe"}]}]}, "name"),
    (b'{"hb": 13.2}', "not FHIR"),
])
def test_fhir_refused_before_sealing(client: AsyncConsortiumClient, payload: Any,
                                     message: str) -> None:
    with pytest.raises(FhirError, match=message):
        client.fhir_item(fhir_samples.PATIENT, payload)
