"""A patient's history as a FHIR Bundle, with the access log as AuditEvent resources.

FHIR servers show who read what as AuditEvent resources (type rest, subtype read); the ledger's
access log (who read which record of the patient, when, for what purpose, granted or refused)
is turned into exactly that, so FHIR tools can read it. Deterministic: entry fullUrls are
name-based UUIDs of the entry's content, and the Bundle's timestamp is given by the caller.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.formats.epcis_model import format_time_ms
from consortium.formats.errors import FhirError

Json = Any

ORG_IDENTIFIER_SYSTEM = "urn:consortium:org"
RECORD_IDENTIFIER_SYSTEM = "urn:consortium:record"
_NAMESPACE = uuid.UUID("6f1b3a52-5a0e-4c1b-9a53-0c6d7e0e6f15")
"""Namespace of the name-based (v5) UUIDs of bundle entries."""
PURPOSES: Mapping[str, str] = {"treatment": "TREAT", "emergency": "ETREAT",
                               "payment": "HPAYMT", "operations": "HOPERAT",
                               "screening": "HOPERAT", "audit": "HOPERAT",
                               "research": "HRESCH", "public-health": "PUBHLTH",
                               "patient-request": "PATRQT"}
"""Free-text purposes of the access log -> HL7 v3 ActReason (PurposeOfUse) codes; others are
kept as text only."""


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One read (or refused read) of a patient record, as the ledger logs it."""

    reader_org: str
    record_id: str
    patient_id: str
    at_ms: int
    purpose: str
    granted: bool
    reader_client: str | None = None


def audit_event(entry: AccessLogEntry) -> dict[str, Json]:
    """The FHIR R4 AuditEvent of one access (outcome 0 granted, 4 refused)."""
    purpose: dict[str, Json] = {"text": entry.purpose}
    code = PURPOSES.get(entry.purpose)
    if code is not None:
        purpose["coding"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                              "code": code}]
    who: dict[str, Json] = {"identifier": {"system": ORG_IDENTIFIER_SYSTEM,
                                           "value": entry.reader_org}}
    agent: dict[str, Json] = {"who": who, "requestor": True}
    if entry.reader_client:
        agent["altId"] = entry.reader_client
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read",
                     "display": "read"}],
        "action": "R", "recorded": format_time_ms(entry.at_ms),
        "outcome": "0" if entry.granted else "4",
        "outcomeDesc": "access granted" if entry.granted else "access refused: not a reader",
        "purposeOfEvent": [purpose], "agent": [agent],
        "source": {"observer": {"display": "consortium ledger"}},
        "entity": [
            {"what": {"reference": f"Patient/{entry.patient_id}"},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                      "code": "1", "display": "Person"},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                      "code": "1", "display": "Patient"}},
            {"what": {"identifier": {"system": RECORD_IDENTIFIER_SYSTEM,
                                     "value": entry.record_id}}}],
    }


def _full_url(resource: Mapping[str, Json]) -> str:
    text = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, text)}"


def bundle(resources: Sequence[Mapping[str, Json]], *, bundle_type: str = "collection",
           access_log: Sequence[AccessLogEntry] = (), timestamp_ms: int | None = None,
           bundle_id: str | None = None) -> dict[str, Json]:
    """A FHIR R4 Bundle (collection or searchset) of `resources` (a resource that is itself a
    Bundle contributes its entries), followed by one AuditEvent per access log entry. In a
    searchset, resources are matches and AuditEvents includes. Validated with the FHIR models
    before it is returned."""
    if bundle_type not in ("collection", "searchset"):
        raise FhirError(f"bundle_type is collection or searchset, not {bundle_type!r}")
    flat: list[Mapping[str, Json]] = []
    for r in resources:
        if r.get("resourceType") == "Bundle":
            flat.extend(e["resource"] for e in r.get("entry", []) if "resource" in e)
        else:
            flat.append(r)
    entries: list[dict[str, Json]] = []
    for resource, mode in [*((r, "match") for r in flat),
                           *((audit_event(a), "include") for a in access_log)]:
        entry: dict[str, Json] = {"fullUrl": _full_url(resource), "resource": dict(resource)}
        if bundle_type == "searchset":
            entry["search"] = {"mode": mode}
        entries.append(entry)
    out: dict[str, Json] = {"resourceType": "Bundle", "type": bundle_type, "entry": entries}
    if bundle_type == "searchset":
        out["total"] = len(flat)
    if timestamp_ms is not None:
        out["timestamp"] = format_time_ms(timestamp_ms)
    if bundle_id is not None:
        out["id"] = bundle_id
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(out)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FhirError(f"Bundle.{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") \
            from None
    return out
