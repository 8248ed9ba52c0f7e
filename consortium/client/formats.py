"""What the SDK puts on the ledger for an EPCIS event or a FHIR payload (no I/O, no keys).

A provenance record from EPCIS: the public document is the event's canonical JSON
(`Event.public_json()`, what every validator checks at consensus time); the record's subjects
are the objects it concerns (`Event.identifiers()`: the first is the main subject, the rest go
to `also`, so a trace finds the event under each); the event type is the CBV bizStep. What must
stay private rides in the encrypted payload: extension fields in the private namespace
`urn:consortium:private:` (a price, a patient link: `"priv:price": 12.5` with `"priv"` declared
as that namespace) are taken out of the public event, and the caller's own `private` mapping is
added to them.

A patient record from FHIR: the payload is validated (formats.fhir) before it is encrypted,
because validators only ever see ciphertext; the public metadata holds the resource types and
code systems, never codes or values; the record type follows the resource (an Observation or a
DiagnosticReport is a lab result, a MedicationRequest a prescription, an Encounter an encounter,
an ImagingStudy imaging).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consortium.formats import epcis
from consortium.formats.errors import EpcisError, FhirError
from consortium.formats.fhir import FhirSummary, validate_patient_payload
from consortium.ledger.records import DOCUMENT_BYTES_MAX, SUBJECTS_MAX, TEXT_BYTES_MAX

PRIVATE_NAMESPACE = "urn:consortium:private:"
"""Extension fields in this namespace are encrypted, never public."""

RECORD_TYPE_OF: Mapping[str, str] = {
    "Observation": "lab-result", "DiagnosticReport": "lab-result",
    "MedicationRequest": "prescription", "Encounter": "encounter", "ImagingStudy": "imaging"}
"""FHIR resource type -> the ledger's patient record type."""


@dataclass(frozen=True, slots=True)
class EpcisRecord:
    """One EPCIS event as a provenance record's parts."""

    subject_id: str
    also: tuple[str, ...]
    event_type: str
    document: bytes
    payload: bytes
    event: epcis.Event
    """The public event (private extension fields removed)."""


def epcis_record(event: epcis.Event, private: Mapping[str, Any] | None = None) -> EpcisRecord:
    """The record parts of one validated event. Raises EpcisError (one line) when the event
    cannot be a record (too many objects to index, too large)."""
    ids = event.identifiers()
    if not ids:
        raise EpcisError("the event names no object (epcList, quantityList, parentID, "
                         "childEPCs, inputs or outputs)")
    if len(ids) > SUBJECTS_MAX + 1:
        raise EpcisError(f"the event concerns {len(ids)} objects; a record indexes at most "
                         f"{SUBJECTS_MAX + 1}: split it into several events")
    long = next((i for i in ids if len(i.encode()) > TEXT_BYTES_MAX), None)
    if long is not None:
        raise EpcisError(f"identifier {long[:40]}... is over {TEXT_BYTES_MAX} bytes")
    public, secret = split_private(event)
    document = public.public_json()
    if len(document) > DOCUMENT_BYTES_MAX:
        raise EpcisError(f"the event is {len(document)} bytes as canonical JSON, more than "
                         f"{DOCUMENT_BYTES_MAX}")
    body: dict[str, Any] = {}
    if secret:
        body["extensions"] = secret
    if private:
        body["private"] = dict(private)
    payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert public.biz_step is not None  # parse_event requires it
    return EpcisRecord(ids[0], ids[1:], public.biz_step, document, payload, public)


def split_private(event: epcis.Event) -> tuple[epcis.Event, dict[str, Any]]:
    """(the event without its top-level private-namespace extension fields, those fields).
    Private-namespace keys nested in ilmd or an errorDeclaration stay public (and so does
    their prefix declaration): only top-level extension fields are taken out."""
    private_prefixes = {p for p, iri in event.namespaces if iri == PRIVATE_NAMESPACE}
    if not private_prefixes:
        return event, {}
    keep = tuple((k, v) for k, v in event.extensions
                 if k.partition(":")[0] not in private_prefixes)
    secret = {k: json.loads(v) for k, v in event.extensions
              if k.partition(":")[0] in private_prefixes}
    public = dataclasses.replace(event, extensions=keep)
    text = public.public_json().decode()
    namespaces = tuple((p, iri) for p, iri in event.namespaces
                       if p not in private_prefixes or f'"{p}:' in text)
    return dataclasses.replace(public, namespaces=namespaces), secret


@dataclass(frozen=True, slots=True)
class FhirRecord:
    """One FHIR payload as a patient record's parts."""

    record_type: str
    metadata: dict[str, str]
    payload: bytes
    summary: FhirSummary


def fhir_record(data: bytes | str | Mapping[str, Any], patient_id: str) -> FhirRecord:
    """Validate a FHIR R4 resource or Bundle for pseudonymous patient `patient_id` and give
    the record's parts. Raises FhirError (one line, naming the path)."""
    summary = validate_patient_payload(data, patient_id)
    types = {RECORD_TYPE_OF[t] for t in summary.resource_types if t in RECORD_TYPE_OF}
    if not types:
        raise FhirError(f"{summary.resource_type}: no clinical resource "
                        f"({', '.join(sorted(RECORD_TYPE_OF))})")
    # a Bundle of several kinds is filed under the first in a fixed order
    record_type = next(t for t in ("lab-result", "prescription", "encounter", "imaging")
                       if t in types)
    return FhirRecord(record_type, summary.public_metadata(), summary.canonical_json, summary)
