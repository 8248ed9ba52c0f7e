"""GS1 EPCIS 2.0 and HL7 FHIR R4 end to end, as a user runs them: `consortium submit epcis` /
`submit fhir` into a real consortium (validators, PostgreSQL, the admission service on the
rules backend), `consortium audit trace --format epcis` / `audit patient --format fhir` out.

- 1,000 EPCIS events in, the same events out (GS1's event hash), the export valid against
  GS1's EPCIS 2.0 JSON Schema; GS1's own examples (URN and Digital Link forms) likewise, with
  `--product` as an EPC URI or as a Digital Link;
- a FHIR Bundle in, the same resources out for a reader; a non-reader gets public metadata
  only (no clinical value), and the access log as AuditEvents;
- bad input refused with one line and nothing stored.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, running_consortium, use_rules_backend
from tests.e2e.test_cli import assert_one_line_error, cli, ok_json
from tests.formats import fhir_samples
from tests.formats.shared import examples, gs1_hashes, needs_shared, schema_validator

pytestmark = pytest.mark.e2e

CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
LOTS = 10
EVENTS = 1000


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_consortium(tmp_path_factory.mktemp("formats")) as c:
        use_rules_backend(c.directory)
        yield c


def lot(i: int) -> str:
    return f"urn:epc:class:lgtin:4012345.012345.RT-{i}"


def event(i: int, **over: Any) -> dict[str, Any]:
    """Event i of a chain over LOTS lots: commissioned by org0 at its plant, then shipped to
    org1 and received there in turns (org0's prefix 4012345 and sites, org1's 4013345)."""
    step = i // LOTS
    kind = ["shipping", "receiving"][step % 2] if step else "commissioning"
    e: dict[str, Any] = {
        "type": "ObjectEvent", "action": "ADD" if kind == "commissioning" else "OBSERVE",
        "bizStep": kind,
        "disposition": {"commissioning": "active", "shipping": "in_transit",
                        "receiving": "in_progress"}[kind],
        "eventTime": f"2026-02-{1 + step // 24:02d}T{step % 24:02d}:{i % 60:02d}:00.{i % 1000:03d}"
                     "+01:00",
        "eventTimeZoneOffset": "+01:00",
        "quantityList": [{"epcClass": lot(i % LOTS), "quantity": 1000}],
        "bizLocation": {"id": "urn:epc:id:sgln:4012345.00001.0" if kind != "receiving"
                        else "urn:epc:id:sgln:4013345.00001.0"},
        "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:"
                                                               f"4012345000009:PO-{i}"}]}
    if kind == "shipping":
        e["sourceList"] = [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}]
        e["destinationList"] = [{"type": "owning_party",
                                 "destination": "urn:epc:id:pgln:4013345.00000"}]
    e.update(over)
    return e


def document(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@context": [CONTEXT], "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-03-01T00:00:00.000Z", "epcisBody": {"eventList": events}}


def write(path: Path, doc: Any) -> str:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def height(net: Cluster) -> int:
    return max(net.status(i).height for i in net.running())


def exported(net: Cluster, product: str) -> dict[str, Any]:
    res = cli("audit", "trace", "--dir", str(net.directory), "--product", product,
              "--format", "epcis")
    assert "Traceback" not in res.stderr and res.stdout, res.stderr[-2000:]
    doc: dict[str, Any] = json.loads(res.stdout)
    errors = [e.message for e in schema_validator().iter_errors(doc)]
    assert errors == [], errors[:3]
    return doc


def without_extensions(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for e in out["epcisBody"]["eventList"]:
        for key in [k for k in e if k.startswith("consortium:")]:
            del e[key]
    return out


@needs_shared
def test_thousand_events_in_and_out_equal(net: Cluster, tmp_path: Path) -> None:
    doc = document([event(i) for i in range(EVENTS)])
    out = ok_json("submit", "epcis", "--dir", str(net.directory), "--as", "org0",
                  write(tmp_path / "chain.jsonld", doc))
    assert (out["submitted"], out["recorded"], out["bad_events"]) == (EVENTS, EVENTS, [])
    assert [e["index"] for e in out["events"]] == list(range(EVENTS))
    back: list[dict[str, Any]] = []
    for i in range(LOTS):
        got = exported(net, lot(i))
        events = got["epcisBody"]["eventList"]
        assert len(events) == EVENTS // LOTS
        assert all(e["consortium:proof"] == "verified" and e["consortium:height"] >= 1
                   for e in events)
        back.extend(without_extensions(got)["epcisBody"]["eventList"])
    want = sorted(gs1_hashes(doc, tmp_path))
    assert sorted(gs1_hashes(document(back), tmp_path)) == want


@needs_shared
def test_gs1_examples_in_and_out_equal(net: Cluster, tmp_path: Path) -> None:
    """Each example goes in as it is, and comes out (asked for by EPC URI, and by Digital
    Link) holding the same events by GS1's event hash."""
    from consortium.formats import gs1

    for path in examples():
        original = json.loads(path.read_text())
        out = ok_json("submit", "epcis", "--dir", str(net.directory), "--as", "org2",
                      str(path))
        assert out["recorded"] == len(original["epcisBody"]["eventList"]), path.name
        want = set(gs1_hashes(original, tmp_path))
        from consortium.formats import epcis
        first = epcis.parse_document(path.read_bytes())[0].identifiers()[0]
        for product in (first, gs1.parse_urn(first).digital_link()):
            got = set(gs1_hashes(without_extensions(exported(net, product)), tmp_path))
            assert got & want, (path.name, product)
        # every event of the example is found under one of its identifiers
        seen: set[str] = set()
        for ev in epcis.parse_document(path.read_bytes()):
            seen |= set(gs1_hashes(without_extensions(exported(net, ev.identifiers()[0])),
                                   tmp_path))
        assert want <= seen, path.name


def test_fhir_bundle_round_trip_and_non_reader(net: Cluster, tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": fhir_samples.glucose()}, {"resource": fhir_samples.blood_pressure()},
        {"resource": fhir_samples.prescription()}]}
    r = ok_json("submit", "fhir", "--dir", str(net.directory), "--as", "org1", "--patient",
                fhir_samples.PATIENT, "--readers", "org2", write(tmp_path / "b.json", bundle))
    assert r["status"] == "recorded"
    res = cli("audit", "patient", "--dir", str(net.directory), "--patient",
              fhir_samples.PATIENT, "--as", "org2", "--format", "fhir")
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["resourceType"] == "Bundle" and got["type"] == "searchset"
    matches = [e["resource"] for e in got["entry"] if e["search"]["mode"] == "match"]
    assert matches == [e["resource"] for e in bundle["entry"]]
    # the audit's own read is logged: a second export shows it as an AuditEvent
    again = json.loads(cli("audit", "patient", "--dir", str(net.directory), "--patient",
                           fhir_samples.PATIENT, "--as", "org2", "--format", "fhir").stdout)
    audits = [e["resource"] for e in again["entry"] if e["resource"]["resourceType"] ==
              "AuditEvent"]
    assert any(a["agent"][0]["who"]["identifier"]["value"] == "org2" and a["outcome"] == "0"
               for a in audits)
    outsider = cli("audit", "patient", "--dir", str(net.directory), "--patient",
                   fhir_samples.PATIENT, "--as", "org3", "--format", "fhir")
    assert outsider.returncode == 0, outsider.stderr[-2000:]
    public = json.loads(outsider.stdout)
    kinds = {e["resource"]["resourceType"] for e in public["entry"]}
    assert kinds <= {"Basic", "AuditEvent"} and "Basic" in kinds
    assert "15074-8" not in outsider.stdout and "5.8" not in outsider.stdout
    assert "Observation" in outsider.stdout  # the resource type is public metadata


def test_bad_input_is_one_line_and_stores_nothing(net: Cluster, tmp_path: Path) -> None:
    d = str(net.directory)
    before = height(net)
    wrong_gtin = event(0, quantityList=[{"epcClass": "https://id.gs1.org/01/04012345123457/"
                                                     "10/A", "quantity": 1}])
    line = assert_one_line_error(cli("submit", "epcis", "--dir", d, "--as", "org0",
                                     write(tmp_path / "gtin.json", document([wrong_gtin]))),
                                 "event 0: quantityList[0].epcClass: GTIN check digit is 7, "
                                 "expected 6")
    assert "nothing submitted" in line
    assert_one_line_error(cli("submit", "epcis", "--dir", d, "--as", "org0",
                              write(tmp_path / "step.json",
                                    document([event(0, bizStep="teleporting")]))),
                          "event 0: bizStep: unknown bizStep 'teleporting'")
    mixed = document([event(1), event(2), event(3, bizStep="shiping"), event(4)])
    res = cli("submit", "epcis", "--dir", d, "--as", "org0", write(tmp_path / "mixed.json",
                                                                   mixed), "--json")
    assert res.returncode == 2 and json.loads(res.stdout)["bad_events"][0]["index"] == 2
    assert_one_line_error(cli("submit", "epcis", "--dir", d, "--as", "org0",
                              str(tmp_path / "mixed.json")),
                          "1 of 4 events are invalid", "event 2: bizStep")
    no_code = {k: v for k, v in fhir_samples.glucose().items() if k != "code"}
    named = {**fhir_samples.glucose(), "contained": [{"resourceType": "Patient", "id": "x",
                                                      "name": [{"family": "Doe"}]}]}
    for payload, fragment in ((no_code, "code"), (named, "name"),
                              ('{"hb": 13.2}', "not FHIR")):
        assert_one_line_error(cli("submit", "fhir", "--dir", d, "--as", "org1", "--patient",
                                  fhir_samples.PATIENT, "--readers", "org2",
                                  write(tmp_path / "p.json", payload)), fragment)
    assert height(net) == before, "bad input committed something"
    ok = ok_json("submit", "epcis", "--dir", d, "--as", "org0", "--skip-invalid",
                 str(tmp_path / "mixed.json"))
    assert (ok["recorded"], [b["index"] for b in ok["bad_events"]]) == (3, [2])
