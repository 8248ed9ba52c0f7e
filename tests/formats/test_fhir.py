"""FHIR R4 patient payloads: what is accepted, the one-line errors, the public summary, and
the Bundle with AuditEvents."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from consortium.formats import fhir
from consortium.formats.errors import FhirError
from tests.formats.fhir_samples import (
    PATIENT,
    blood_pressure,
    collection,
    encounter,
    glucose,
    imaging,
    prescription,
    report,
)


@pytest.mark.parametrize("make", [glucose, blood_pressure, prescription, encounter, imaging,
                                  report])
def test_each_accepted_resource_validates(make: Any) -> None:
    s = fhir.validate_patient_payload(json.dumps(make()).encode(), PATIENT)
    assert s.resource_type == make()["resourceType"]
    assert json.loads(s.canonical_json) == make()


def test_summary_is_what_may_be_public() -> None:
    s = fhir.validate_patient_payload(glucose(), PATIENT)
    assert s.code_systems == ("http://loinc.org",
                              "http://terminology.hl7.org/CodeSystem/observation-category")
    assert ("http://loinc.org", "15074-8") in s.codes
    public = s.public_metadata()
    assert public == {"fhir_resource_type": "Observation",
                      "fhir_resource_types": "Observation",
                      "fhir_code_systems": "http://loinc.org,http://terminology.hl7.org/"
                                           "CodeSystem/observation-category"}
    assert "15074-8" not in json.dumps(public) and "5.8" not in json.dumps(public)
    assert b" " not in s.canonical_json.replace(b"Glucose [Moles/volume] in Blood", b"")


def test_bundle_with_a_patient_entry() -> None:
    b = collection({"resourceType": "Patient", "id": PATIENT, "gender": "male",
                    "birthDate": "1950"}, glucose(), prescription(), encounter())
    s = fhir.validate_patient_payload(b, PATIENT)
    assert s.resource_type == "Bundle"
    assert s.resource_types == ("Encounter", "MedicationRequest", "Observation")
    assert "http://www.whocc.no/atc" in s.code_systems


def named(resource: dict[str, Any]) -> dict[str, Any]:
    resource = copy.deepcopy(resource)
    resource["contained"][0]["name"] = [{"family": "Smith", "given": ["Jane"]}]
    return resource


@pytest.mark.parametrize(("payload", "message"), [
    (b"hello", "not FHIR: the payload is not JSON"),
    (b"[1]", "not FHIR: the payload is not a JSON object"),
    (b'{"age_years": 40, "labs": []}', "not FHIR: no resourceType"),
    ({"resourceType": "Condition", "subject": {"reference": "Patient/P-1001"}},
     "'Condition' resources are not accepted"),
    ({"resourceType": "Patient", "id": PATIENT}, "'Patient' resources are not accepted"),
    ({k: v for k, v in glucose().items() if k != "code"}, "Observation.code is required"),
    (dict(glucose(), code={"coding": [{"system": "http://acme.example/labs", "code": "GLU"}]}),
     "needs a LOINC coding"),
    (glucose(code="15074-7"), "LOINC 15074-7 has check digit 7, expected 8"),
    (named(glucose()), "a Patient may carry gender and birthDate only; found name"),
    (dict(glucose(), subject={"reference": "Patient/P-1001", "display": "Jane Smith"}),
     "subject.display would name the patient"),
    (dict(glucose(), subject={"reference": "Patient/P-2002"}),
     "subject must be {\"reference\": \"Patient/P-1001\"}"),
    (dict(glucose(), subject=None), "subject must be"),
    (dict(glucose(), valueQuantity={"value": 5.8, "unit": "mmol/L"}), "must be UCUM"),
    (dict(glucose(), valueQuantity={"value": "high", "unit": "mmol/L",
                                    "system": "http://unitsofmeasure.org", "code": "mmol/L"}),
     "Observation.valueQuantity.value"),
    (dict(glucose(), flavour="sweet"), "Observation.flavour: Extra inputs are not permitted"),
    (collection({"resourceType": "Patient", "id": PATIENT,
                 "name": [{"text": "Jane Smith"}]}, glucose()),
     "Bundle.entry[0].resource: a Patient may carry gender and birthDate only; found name"),
    (collection({"resourceType": "Patient", "id": "P-9", "gender": "male"}, glucose()),
     "the Patient entry must have id 'P-1001'"),
    ({"resourceType": "Bundle", "type": "message", "entry": [{"resource": glucose()}]},
     "Bundle.type 'message' is not accepted"),
    (collection({"resourceType": "Patient", "id": PATIENT}), "holds no clinical resource"),
    (dict(prescription(), contained=[{"resourceType": "Practitioner", "id": "dr"}]),
     "contained 'Practitioner' is not accepted"),
])
def test_refused_with_one_line(payload: Any, message: str) -> None:
    with pytest.raises(FhirError) as info:
        fhir.validate_patient_payload(payload, PATIENT)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_patient_id_must_be_a_fhir_id() -> None:
    with pytest.raises(FhirError, match="must be a FHIR id"):
        fhir.validate_patient_payload(glucose(), "Jane Smith")


def test_loinc_check_digits() -> None:
    for good in ("2345-7", "718-7", "8480-6", "15074-8", "4548-4", "85354-9"):
        fhir.check_loinc(good, "code")
    with pytest.raises(FhirError, match="is not a LOINC code"):
        fhir.check_loinc("2345", "code")


def test_bundle_with_access_log_round_trips() -> None:
    submitted = collection(glucose(), prescription(), imaging())
    records = [json.loads(fhir.validate_patient_payload(e["resource"], PATIENT).canonical_json)
               for e in submitted["entry"]]
    log = [fhir.AccessLogEntry("org0", "rec-1", PATIENT, 1772366400000, "treatment", True),
           fhir.AccessLogEntry("org9", "rec-1", PATIENT, 1772366500000, "research", False,
                               "client-9")]
    out = fhir.bundle(records, bundle_type="searchset", access_log=log,
                      timestamp_ms=1772366600000)
    assert out == fhir.bundle(records, bundle_type="searchset", access_log=log,
                              timestamp_ms=1772366600000)  # deterministic
    resources = [e["resource"] for e in out["entry"]]
    assert resources[:3] == [e["resource"] for e in submitted["entry"]]
    assert out["total"] == 3 and [e["search"]["mode"] for e in out["entry"]] == [
        "match", "match", "match", "include", "include"]
    granted, refused = resources[3:]
    assert granted["resourceType"] == "AuditEvent" and granted["outcome"] == "0"
    assert refused["outcome"] == "4" and refused["agent"][0]["who"]["identifier"]["value"] == \
        "org9"
    assert granted["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert granted["entity"][0]["what"]["reference"] == f"Patient/{PATIENT}"
    again = fhir.bundle([submitted], timestamp_ms=1)
    assert [e["resource"] for e in again["entry"]] == resources[:3]


def test_bundle_type_is_checked() -> None:
    with pytest.raises(FhirError, match="collection or searchset"):
        fhir.bundle([glucose()], bundle_type="history")
