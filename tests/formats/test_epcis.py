"""EPCIS 2.0 documents: GS1's examples in and out, validation errors by index and field,
export that validates against GS1's schema, canonical JSON."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from consortium.formats import epcis
from consortium.formats.epcis import EpcisDocumentError, EpcisError, Event
from tests.formats.shared import SHARED, examples, gs1_hashes, needs_shared, schema_validator

T0 = 1772366400000  # 2026-03-01T12:00:00Z


def event(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "shipping",
        "disposition": "in_transit", "eventTime": "2026-02-01T10:00:00.000+01:00",
        "eventTimeZoneOffset": "+01:00",
        "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.LOT-A1",
                          "quantity": 20000}],
        "bizLocation": {"id": "urn:epc:id:sgln:4012345.00001.0"},
        "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}],
        "destinationList": [{"type": "owning_party",
                             "destination": "urn:epc:id:pgln:5412345.00000"}]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def document(*events: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return {"@context": context or ["https://ref.gs1.org/standards/epcis/2.0.0/"
                                    "epcis-context.jsonld", {"ex": "https://ex.example/epcis/"}],
            "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-03-01T12:00:00Z", "epcisBody": {"eventList": list(events)}}


# --- GS1's examples -----------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("path", examples(), ids=lambda p: p.name)
def test_gs1_examples_go_in_and_come_out_equal(path: Path, tmp_path: Path) -> None:
    """URN and Digital Link examples: parsed, exported (both id forms), and equal by GS1's
    event hash; the export validates against GS1's schema."""
    original = json.loads(path.read_text())
    events = epcis.parse_document(path.read_bytes())
    assert len(events) == len(original["epcisBody"]["eventList"])
    want = gs1_hashes(original, tmp_path)
    validator = schema_validator()
    for form in ("urn", "digital_link"):
        out = epcis.export_document(events, creation_time_ms=T0, id_form=form,
                                    namespaces={"example": "http://ns.example.com/epcis/"})
        errors = [e.message for e in validator.iter_errors(out)]
        assert errors == [], errors
        assert gs1_hashes(out, tmp_path) == want
        assert epcis.parse_document(out) == events


@needs_shared
def test_urn_and_digital_link_of_the_same_event_are_one_event() -> None:
    urn = epcis.parse_document((SHARED / "examples" / "Example_9.6.4-TransformationEvent.jsonld")
                               .read_bytes())
    dl = epcis.parse_document((SHARED / "examples" /
                               "Example_9.6.4-TransformationEventWithDigitalLink.jsonld")
                              .read_bytes())
    assert [e.identifiers() for e in urn] == [e.identifiers() for e in dl]


@needs_shared
def test_export_with_consortium_extensions_validates(tmp_path: Path) -> None:
    ev = epcis.parse_document(document(event()))[0]
    out = epcis.export_document([(ev, {"consortium:height": 42, "consortium:proof": "verified"})],
                                creation_time_ms=T0)
    assert [e.message for e in schema_validator().iter_errors(out)] == []
    assert out["@context"][1] == {"consortium": epcis.CONSORTIUM_NAMESPACE}
    body = out["epcisBody"]["eventList"][0]
    assert body["consortium:height"] == 42
    stripped = copy.deepcopy(out)
    for e in stripped["epcisBody"]["eventList"]:
        e.pop("consortium:height")
        e.pop("consortium:proof")
    assert gs1_hashes(stripped, tmp_path) == gs1_hashes(
        epcis.export_document([ev], creation_time_ms=T0), tmp_path)


@needs_shared
def test_thousand_events_round_trip(tmp_path: Path) -> None:
    raw = [event(quantityList=[{"epcClass": f"urn:epc:class:lgtin:4012345.012345.L{i}",
                                "quantity": 1 + i}],
                 eventTime=f"2026-02-01T10:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}+01:00")
           for i in range(1000)]
    doc = document(*raw)
    events = epcis.parse_document(doc)
    stored = [e.public_json() for e in events]
    back = [epcis.event_from_public_json(b) for b in stored]
    out = epcis.export_document(back, creation_time_ms=T0)
    assert gs1_hashes(out, tmp_path) == gs1_hashes(doc, tmp_path)


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("over", "message"), [
    ({"quantityList": [{"epcClass": "https://id.gs1.org/01/04012345123457/10/A"}]},
     "event 0: quantityList[0].epcClass: GTIN check digit is 7, expected 6"),
    ({"epcList": ["urn:epc:id:sgtin:0614141.107346.1",
                  "https://id.gs1.org/01/04012345123453/21/9"]},
     "event 0: epcList[1]: GTIN check digit is 3, expected 6"),
    ({"bizStep": "shiping"}, "event 0: bizStep: unknown bizStep 'shiping'"),
    ({"bizStep": None}, "event 0: bizStep: required"),
    ({"disposition": "destroyed"}, "event 0: disposition: disposition destroyed contradicts "
                                   "bizStep shipping"),
    ({"bizLocation": None}, "event 0: readPoint: an event needs a readPoint or a bizLocation"),
    ({"eventTime": "2026-02-01 10:00"}, "event 0: eventTime: '2026-02-01 10:00' is not an RFC "
                                        "3339"),
    ({"eventTime": "2026-02-01T10:00:00"}, "is not an RFC 3339 date-time with a time zone"),
    ({"eventTimeZoneOffset": "+1:00"}, "eventTimeZoneOffset: '+1:00' is not"),
    ({"action": "MOVE"}, "event 0: action: required: ADD, OBSERVE or DELETE"),
    ({"quantityList": [{"epcClass": "urn:epc:id:sgtin:4012345.012345.1", "quantity": 2}]},
     "quantityList[0].epcClass: urn:epc:id:sgtin:4012345.012345.1 is a SGTIN; this field takes "
     "a class"),
    ({"epcList": ["urn:epc:class:lgtin:4012345.012345.A"], "quantityList": None},
     "epcList[0]: urn:epc:class:lgtin:4012345.012345.A is a LGTIN"),
    ({"bizLocation": {"id": "urn:epc:id:pgln:4012345.00000"}},
     "bizLocation.id: urn:epc:id:pgln:4012345.00000 is a PGLN; this field takes a location"),
    ({"quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.A",
                        "quantity": 2.5}]}, "without a uom the quantity is a count"),
    ({"quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.A",
                        "quantity": -3}]}, "must be positive"),
    ({"quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.A",
                        "quantity": 2, "uom": "kg"}]}, "is not a UN/ECE Rec 20 code"),
    ({"quantityList": [], "epcList": []}, "an ObjectEvent names at least one object"),
    ({"epcList": ["urn:epc:id:sscc:0614141.1234567890", "urn:epc:id:sscc:0614141.1234567890"]},
     "epcList: urn:epc:id:sscc:0614141.1234567890 is listed twice"),
    ({"bizstep": "shipping"}, "event 0: bizstep: unknown field (did you mean bizStep?)"),
    ({"acme:batch": "X"}, "acme:batch: uses prefix 'acme', which the @context does not "
                          "declare"),
    ({"ilmd": {"ex:bestBefore": "2027-01-01"}}, "ilmd: instance/lot master data only comes "
                                                "with action ADD"),
    ({"type": "TransactionEvent"}, "event 0: type: TransactionEvent is not supported"),
    ({"bizTransactionList": [{"type": "desadv",
                              "bizTransaction": "urn:epcglobal:cbv:bt:4012345000001:DN1"}]},
     "bizTransactionList[0].bizTransaction: GLN check digit is 1, expected 9"),
    ({"sourceList": [{"type": "owner", "source": "urn:epc:id:pgln:4012345.00000"}]},
     "sourceList[0].type: unknown source/destination type 'owner'"),
    ({"bizLocation": {"id": "Basel plant"}}, "bizLocation.id: 'Basel plant' is not a URI"),
    ({"quantityList": [{"epcClass": "urn:consortium:site:Basel", "quantity": 1}]},
     "is a private site id; this field takes a class"),
])
def test_errors_name_event_and_field(over: dict[str, Any], message: str) -> None:
    with pytest.raises(EpcisError) as info:
        epcis.parse_document(document(event(**over)))
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_broken_event_among_good_ones_is_named_by_index() -> None:
    doc = document(event(), event(), event(), event(bizStep="shiping"), event(),
                   event(disposition="destroyed"))
    with pytest.raises(EpcisError, match=r"^event 3: bizStep"):
        epcis.parse_document(doc)
    with pytest.raises(EpcisDocumentError) as info:
        epcis.parse_document(doc, all_errors=True)
    assert [e.index for e in info.value.errors] == [3, 5]
    assert str(info.value).startswith("2 of 6 events are invalid: event 3: bizStep")
    good, bad = epcis.validate_document(json.dumps(doc).encode())
    assert [i for i, _ in good] == [0, 1, 2, 4] and len(bad) == 2


@pytest.mark.parametrize(("data", "message"), [
    (b"{not json", "not JSON"),
    (b'{"type": "EPCISDocument", "a": 1, "a": 2}', "duplicate key 'a'"),
    (b'{"type": "Invoice"}', "not an EPCIS document: type is 'Invoice'"),
    (b'{"type": "EPCISDocument", "schemaVersion": "1.2", "creationDate": "2026-01-01T00:00Z"}',
     "schemaVersion must be \"2.0\""),
    (b'[1, 2]', "the top level is not a JSON object"),
    (b'{"type": "ObjectEvent", "eventTime": NaN}', "NaN is not a JSON number"),
])
def test_unreadable_documents(data: bytes, message: str) -> None:
    with pytest.raises(EpcisError) as info:
        epcis.parse_document(data)
    assert message in str(info.value)


def test_aggregation_and_transformation() -> None:
    pack = event(type="AggregationEvent", action="ADD", bizStep="packing", disposition=None,
                 quantityList=None, parentID="urn:epc:id:sscc:4012345.0000000001",
                 childQuantityList=[{"epcClass": "urn:epc:class:lgtin:4012345.012345.LOT-A1",
                                     "quantity": 400}])
    ev = epcis.parse_document(document(pack))[0]
    assert ev.identifiers() == ("urn:epc:class:lgtin:4012345.012345.LOT-A1",
                                "urn:epc:id:sscc:4012345.0000000001")
    unpack_all = dict(pack, action="DELETE", bizStep="unpacking")
    del unpack_all["childQuantityList"]
    assert epcis.parse_document(document(unpack_all))[0].child_quantity_list == ()
    with pytest.raises(EpcisError, match="parentID: required when action is ADD"):
        epcis.parse_document(document({k: v for k, v in pack.items() if k != "parentID"}))
    with pytest.raises(EpcisError, match="action DELETE contradicts bizStep packing"):
        epcis.parse_document(document(dict(pack, action="DELETE")))
    repack = event(type="TransformationEvent", action=None, bizStep="repackaging",
                   disposition=None, quantityList=None,
                   inputQuantityList=[{"epcClass": "urn:epc:class:lgtin:4012345.012345.A",
                                       "quantity": 10, "uom": "KGM"}],
                   outputEPCList=["urn:epc:id:sgtin:4012345.077889.25"])
    t = epcis.parse_document(document(repack))[0]
    assert t.input_quantity_list[0].uom == "KGM" and t.action is None
    with pytest.raises(EpcisError, match="needs inputs and outputs"):
        epcis.parse_document(document(dict(repack, outputEPCList=[])))


def test_canonical_json_is_form_independent() -> None:
    urn = epcis.parse_document(document(event()))[0]
    link = epcis.parse_document(document(event(
        eventTime="2026-02-01T09:00:00Z",
        quantityList=[{"epcClass": "https://id.gs1.org/01/04012345123456/10/LOT-A1",
                       "quantity": 20000.0}],
        bizLocation={"id": "https://id.gs1.org/414/4012345000016"},
        sourceList=[{"type": "urn:epcglobal:cbv:sdt:owning_party",
                     "source": "https://id.gs1.org/417/4012345000009"}],
        bizStep="https://ref.gs1.org/cbv/BizStep-shipping")))[0]
    assert urn == link and urn.public_json() == link.public_json()
    text = urn.public_json()
    assert b" " not in text and json.loads(text)["eventTime"] == "2026-02-01T09:00:00.000Z"
    assert epcis.event_from_public_json(text) == urn


def test_extension_fields_and_ilmd_are_kept() -> None:
    commission = event(action="ADD", bizStep="commissioning", disposition="active",
                       sourceList=None, destinationList=None,
                       ilmd={"ex:bestBefore": "2027-01-01", "cbvmda:lotNumber": "LOT-A1"},
                       **{"ex:line": {"ex:speed": 3}, "sensorElementList": [{"sensorReport": []}]})
    ev = epcis.parse_document(document(commission))[0]
    assert ev.namespaces == (("ex", "https://ex.example/epcis/"),)
    assert ev.extension("ex:line") == {"ex:speed": 3}
    out = ev.to_json()
    assert out["ilmd"]["cbvmda:lotNumber"] == "LOT-A1" and "sensorElementList" in out
    assert epcis.event_from_public_json(ev.public_json()) == ev


def test_model_is_frozen_and_identifiers_sorted() -> None:
    ev: Event = epcis.parse_document(document(event(
        epcList=["urn:epc:id:sgtin:4012345.012345.2", "urn:epc:id:sgtin:4012345.012345.1"])))[0]
    assert ev.identifiers() == ("urn:epc:class:lgtin:4012345.012345.LOT-A1",
                                "urn:epc:id:sgtin:4012345.012345.1",
                                "urn:epc:id:sgtin:4012345.012345.2")
    with pytest.raises(AttributeError):
        ev.biz_step = "receiving"  # type: ignore[misc]


def test_query_documents_and_reserved_prefix() -> None:
    query = {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
             "type": "EPCISQueryDocument", "schemaVersion": "2.0",
             "creationDate": "2026-03-01T12:00:00Z",
             "epcisBody": {"queryResults": {"queryName": "SimpleEventQuery",
                                            "resultsBody": {"eventList": [event()]}}}}
    assert len(epcis.parse_document(query)) == 1
    hijack = document(event(), context=["https://ref.gs1.org/standards/epcis/2.0.0/"
                                        "epcis-context.jsonld",
                                        {"consortium": "https://evil.example/"}])
    with pytest.raises(EpcisError, match="reserved for urn:consortium:epcis:"):
        epcis.parse_document(hijack)


def test_error_declaration_is_kept() -> None:
    declared = event(errorDeclaration={"declarationTime": "2026-02-02T10:00:00Z",
                                       "reason": "incorrect_data",
                                       "correctiveEventIDs": ["urn:uuid:404d95fc-9457-4a51-bd6a-"
                                                              "0bba133845a8"]})
    ev = epcis.parse_document(document(declared))[0]
    assert ev.error_declaration is not None and ev.error_declaration.reason == "incorrect_data"
    assert epcis.event_from_public_json(ev.public_json()) == ev
    with pytest.raises(EpcisError, match=r"errorDeclaration\.reason: unknown error reason"):
        epcis.parse_document(document(event(errorDeclaration={
            "declarationTime": "2026-02-02T10:00:00Z", "reason": "oops"})))
