"""Realistic FHIR R4 payloads about the pseudonymous patient P-1001."""

from __future__ import annotations

import json
from typing import Any

PATIENT = "P-1001"
SUBJECT = {"reference": f"Patient/{PATIENT}"}


def glucose(value: float = 5.8, unit: str = "mmol/L", code: str = "15074-8") -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                "observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code,
                                 "display": "Glucose [Moles/volume] in Blood"}]},
            "subject": dict(SUBJECT), "effectiveDateTime": "2026-02-28T08:30:00Z",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit},
            "referenceRange": [{"low": {"value": 3.9, "unit": "mmol/L",
                                        "system": "http://unitsofmeasure.org",
                                        "code": "mmol/L"},
                                "high": {"value": 7.8, "unit": "mmol/L",
                                         "system": "http://unitsofmeasure.org",
                                         "code": "mmol/L"}}],
            "contained": [{"resourceType": "Patient", "id": "demo", "gender": "female",
                           "birthDate": "1971-05-02"}]}


def blood_pressure() -> dict[str, Any]:
    def comp(code: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mmHg",
                                  "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}

    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": dict(SUBJECT), "effectiveDateTime": "2026-02-28",
            "component": [comp("8480-6", 142), comp("8462-4", 91)]}


def prescription() -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.whocc.no/atc", "code": "A10BA02",
                "display": "metformin"}]},
            "subject": dict(SUBJECT), "authoredOn": "2026-02-27",
            "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1,
                                                         "periodUnit": "d"}},
                                   "doseAndRate": [{"doseQuantity": {
                                       "value": 500, "unit": "mg",
                                       "system": "http://unitsofmeasure.org",
                                       "code": "mg"}}]}]}


def encounter() -> dict[str, Any]:
    return {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "AMB"},
            "subject": dict(SUBJECT), "period": {"start": "2026-02-27T09:00:00Z"},
            "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                        "code": "E11.9"}]}]}


def imaging() -> dict[str, Any]:
    return {"resourceType": "ImagingStudy", "status": "available", "subject": dict(SUBJECT),
            "started": "2026-02-26T14:00:00Z",
            "series": [{"uid": "1.2.840.113619.2.55.3.1", "modality": {
                "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                "bodySite": {"system": "http://snomed.info/sct", "code": "69536005",
                             "display": "Head structure"}}]}


def report() -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "24725-4"}]},
            "subject": dict(SUBJECT), "conclusion": "No acute intracranial abnormality."}


def collection(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}


def impossible_patient(patient: str = PATIENT) -> dict[str, Any]:
    """A Bundle the screening rules must flag: the patient is 131 years old at the prescription,
    and on 320 mg of oxycodone a day (the maximum is 160)."""
    return collection(
        {"resourceType": "Patient", "id": patient, "gender": "female",
         "birthDate": "1894-11-02"},
        {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
         "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc",
                                                   "code": "N02AA05", "display": "oxycodone"}]},
         "subject": {"reference": f"Patient/{patient}"}, "authoredOn": "2026-01-05",
         "dosageInstruction": [{"timing": {"repeat": {"frequency": 4, "period": 1,
                                                      "periodUnit": "d"}},
                                "doseAndRate": [{"doseQuantity": {
                                    "value": 80, "unit": "mg",
                                    "system": "http://unitsofmeasure.org", "code": "mg"}}]}]})


def about(patient: str, resource: dict[str, Any]) -> bytes:
    """A sample resource about another pseudonymous patient, as payload bytes."""
    text = json.dumps(resource).replace(f"Patient/{PATIENT}", f"Patient/{patient}")
    return text.encode()
