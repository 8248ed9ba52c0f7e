"""A patient's history as a FHIR R4 Bundle (`consortium audit patient --format fhir`).

For each record of the patient: a reader gets the FHIR payload itself (decrypted, which the
ledger logs as an Access with purpose "audit", as every read of a patient record); anyone else
gets the record's public metadata only, as a FHIR `Basic` resource (record type, resource types
and code systems, never codes or values). The access log follows as AuditEvent resources, which
is how FHIR servers expose who read what (formats/fhir_bundle.py). Erased records and records
the ledger refused are left out: they hold no clinical content.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from consortium.client.core import SubmitError
from consortium.formats.fhir import AccessLogEntry, bundle
from consortium.formats.fhir_bundle import RECORD_IDENTIFIER_SYSTEM

if TYPE_CHECKING:
    from consortium.client.sdk import ConsortiumClient

RECORD_TYPE_SYSTEM = "urn:consortium:patient-record-type"
METADATA_EXTENSION = "urn:consortium:fhir-metadata:"
"""Extension URL prefix of a public-only entry's metadata (fhir_resource_type, ...)."""
AUDIT_PURPOSE = "audit"


def public_entry(patient: str, rec: dict[str, Any]) -> dict[str, Any]:
    """What a non-reader may see of a record, as a FHIR Basic resource."""
    meta: dict[str, str] = rec.get("metadata", {})
    return {"resourceType": "Basic",
            "identifier": [{"system": RECORD_IDENTIFIER_SYSTEM, "value": rec["record_id"]}],
            "code": {"coding": [{"system": RECORD_TYPE_SYSTEM, "code": rec["type"]}]},
            "subject": {"reference": f"Patient/{patient}"},
            "created": rec["submitted_at"][:10],
            "extension": [{"url": f"{METADATA_EXTENSION}{k}", "valueString": v}
                          for k, v in sorted(meta.items()) if v]}


def patient_bundle(client: ConsortiumClient, patient: str, history: dict[str, Any],
                   timestamp_ms: int) -> dict[str, Any]:
    """The Bundle (searchset) of `history` (subjects.patient_history) as `client`'s org sees
    it. Raises SubmitError when no validator answers; FhirError if a payload is no longer
    FHIR (a record from before the format)."""
    resources: list[dict[str, Any]] = []
    log: list[AccessLogEntry] = []
    for rec in history["records"]:
        for a in rec["access_log"]:
            log.append(AccessLogEntry(a["by_org"] or "unknown", rec["record_id"], patient,
                                      a["at_ms"], a["purpose"], a["granted"], a["client_id"]))
        if rec["erased"] or rec["status"] != "recorded":
            continue
        view = client.get(rec["record_id"])
        if view.key_withheld.endswith("is not a reader of this record"):
            resources.append(public_entry(patient, rec))
            continue
        view = client.get(rec["record_id"], decrypt=True, purpose=AUDIT_PURPOSE)
        if view.payload is None:
            raise SubmitError(f"record {rec['record_id']}: {view.key_withheld or 'no payload'}")
        payload = view.payload if isinstance(view.payload, dict) else json.loads(view.payload)
        resources.append(payload)
    return bundle(resources, bundle_type="searchset", access_log=log,
                  timestamp_ms=timestamp_ms)
