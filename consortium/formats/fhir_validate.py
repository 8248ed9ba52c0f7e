"""Validating a patient record's payload as HL7 FHIR R4, plus the consortium's rules on top.

Validators only ever see a patient record's ciphertext, so this runs in the SDK before
encryption (and in the admission service, when a payload is shared with it).

The FHIR models are `fhir.resources`' R4B package (FHIR 4.3.0, pinned with the package):
`fhir.resources` no longer ships plain R4 (4.0.1) models on a maintained line (R4 was its 6.x
line, on pydantic 1), and R4B changed none of the resources accepted here (Observation,
MedicationRequest, Encounter, DiagnosticReport, ImagingStudy, Patient, Bundle, AuditEvent);
its changes are in medication definitions, subscriptions and evidence resources.

Accepted: one of ACCEPTED_TYPES, or a Bundle (collection, searchset, transaction, batch) of
them, optionally with a Patient entry. The consortium's rules, checked before the FHIR models
so that the error is the rule's, one line, naming the path:
- the payload is FHIR at all (JSON object with a resourceType);
- every resource's subject is `Patient/<ID>` for the pseudonymous id the submitter gives;
- no patient name anywhere: a Patient (contained, or a Bundle entry with id <ID>) carries
  gender and birthDate only; no reference to the patient carries a display text;
- an Observation has a code with a LOINC coding (check digit verified), and a valueQuantity
  is UCUM (system http://unitsofmeasure.org with a code).
What may be public is in `FhirSummary.public_metadata()`: resource types and code systems,
never codes or values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from consortium.formats.errors import FhirError

ACCEPTED_TYPES = frozenset({"Observation", "MedicationRequest", "Encounter", "DiagnosticReport",
                            "ImagingStudy"})
BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch"})
CONTAINED_TYPES = frozenset({"Patient", "Medication", "Specimen"})
PATIENT_FIELDS = frozenset({"resourceType", "id", "meta", "gender", "birthDate"})
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LOINC_CODE = re.compile(r"(\d{1,7})-(\d)")

Json = Any


@dataclass(frozen=True, slots=True)
class FhirSummary:
    """What a validated payload is. Only `public_metadata()` may go into a record's public
    part; `codes` (which tests, which drugs) are clinical and stay encrypted."""

    resource_type: str
    """Observation, ..., or Bundle."""
    resource_types: tuple[str, ...]
    """The clinical resource types inside (the resource itself, or a Bundle's entries)."""
    code_systems: tuple[str, ...]
    codes: tuple[tuple[str, str], ...]
    """(system, code) of every coding, sorted."""
    canonical_json: bytes
    """The payload as canonical JSON (sorted keys, no whitespace, UTF-8): what is encrypted."""

    def public_metadata(self) -> dict[str, str]:
        return {"fhir_resource_type": self.resource_type,
                "fhir_resource_types": ",".join(self.resource_types),
                "fhir_code_systems": ",".join(self.code_systems)}


def load_payload(data: bytes | str | Mapping[str, Json]) -> dict[str, Json]:
    """Bytes, text or a mapping -> the JSON object. Raises FhirError: not FHIR at all."""
    if isinstance(data, Mapping):
        obj: Json = dict(data)
    else:
        try:
            obj = json.loads(data, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FhirError(f"not FHIR: the payload is not JSON ({str(exc).splitlines()[0]})") \
                from None
    if not isinstance(obj, dict):
        raise FhirError("not FHIR: the payload is not a JSON object")
    if "resourceType" not in obj:
        raise FhirError("not FHIR: no resourceType (a FHIR R4 resource or Bundle is expected: "
                        f"{', '.join(sorted(ACCEPTED_TYPES))})")
    return obj


def _no_constant(name: str) -> Json:
    raise ValueError(f"{name} is not a JSON number")


def validate_patient_payload(data: bytes | str | Mapping[str, Json],
                             patient_id: str) -> FhirSummary:
    """Validate a FHIR R4 resource or Bundle as the payload of a record about `patient_id`.
    Raises FhirError (one line, naming the path) on anything the rules refuse."""
    if not isinstance(patient_id, str) or not _FHIR_ID.fullmatch(patient_id):
        raise FhirError(f"patient id {patient_id!r} must be a FHIR id (1 to 64 of A-Z a-z 0-9 - "
                        "and .)")
    obj = load_payload(data)
    rtype = obj["resourceType"]
    resources: list[tuple[str, dict[str, Json]]] = []
    if rtype == "Bundle":
        resources = _bundle_resources(obj, patient_id)
    elif rtype in ACCEPTED_TYPES:
        resources = [(rtype, obj)]
    else:
        raise FhirError(f"{rtype!r} resources are not accepted as patient records (accepted: "
                        f"{', '.join(sorted(ACCEPTED_TYPES))}, or a Bundle of them)")
    for path, resource in resources:
        _project_rules(path, resource, patient_id)
    _fhir_model(rtype, obj)
    codes = sorted(set(_codings(obj)))
    return FhirSummary(
        resource_type=rtype,
        resource_types=tuple(sorted({r["resourceType"] for _, r in resources
                                     if r["resourceType"] != "Patient"})),
        code_systems=tuple(sorted({s for s, _ in codes})), codes=tuple(codes),
        canonical_json=json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False, allow_nan=False).encode())


def _bundle_resources(obj: Mapping[str, Json], patient_id: str
                      ) -> list[tuple[str, dict[str, Json]]]:
    btype = obj.get("type")
    if btype not in BUNDLE_TYPES:
        raise FhirError(f"Bundle.type {btype!r} is not accepted "
                        f"({', '.join(sorted(BUNDLE_TYPES))})")
    entries = obj.get("entry", [])
    if not isinstance(entries, list) or not entries:
        raise FhirError("Bundle.entry: a Bundle needs at least one entry")
    out: list[tuple[str, dict[str, Json]]] = []
    for i, entry in enumerate(entries):
        path = f"Bundle.entry[{i}].resource"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise FhirError(f"{path}: every entry needs a resource with a resourceType")
        rtype = resource["resourceType"]
        if rtype == "Patient":
            _check_patient(path, resource)
            if resource.get("id") != patient_id:
                raise FhirError(f"{path}.id: the Patient entry must have id {patient_id!r}")
        elif rtype not in ACCEPTED_TYPES:
            raise FhirError(f"{path}: {rtype!r} is not accepted in a patient record Bundle")
        out.append((f"{path}({rtype})", resource))
    if not any(r["resourceType"] != "Patient" for _, r in out):
        raise FhirError("Bundle.entry: the Bundle holds no clinical resource")
    return out


def _check_patient(path: str, patient: Mapping[str, Json]) -> None:
    extra = sorted(set(patient) - PATIENT_FIELDS)
    if extra:
        raise FhirError(f"{path}: a Patient may carry gender and birthDate only; found "
                        f"{', '.join(extra)} (no names or other identifying data on the ledger)")


def _project_rules(path: str, resource: Mapping[str, Json], patient_id: str) -> None:
    rtype = resource["resourceType"]
    if rtype == "Patient":
        return
    contained_patients: set[str] = set()
    for i, c in enumerate(resource.get("contained", []) or []):
        cpath = f"{path}.contained[{i}]"
        ctype = c.get("resourceType") if isinstance(c, dict) else None
        if ctype not in CONTAINED_TYPES:
            raise FhirError(f"{cpath}: contained {ctype!r} is not accepted "
                            f"({', '.join(sorted(CONTAINED_TYPES))})")
        if ctype == "Patient":
            _check_patient(cpath, c)
            contained_patients.add(f"#{c.get('id', '')}")
    subject = resource.get("subject")
    want = f"Patient/{patient_id}"
    if not isinstance(subject, dict) or subject.get("reference") != want:
        got = subject.get("reference") if isinstance(subject, dict) else subject
        raise FhirError(f"{path}.subject must be {{\"reference\": \"{want}\"}} (the pseudonymous "
                        f"patient id), got {got!r}")
    for ref_path, ref in _references(resource, path):
        target = ref.get("reference")
        if isinstance(target, str) and (target.startswith("Patient/")
                                        or target in contained_patients):
            if target.startswith("Patient/") and target != want:
                raise FhirError(f"{ref_path}: refers to {target}; this record is about {want}")
            if "display" in ref:
                raise FhirError(f"{ref_path}.display would name the patient: leave it out")
    if rtype == "Observation":
        _check_observation(path, resource)


def _check_observation(path: str, obs: Mapping[str, Json]) -> None:
    code = obs.get("code")
    if not isinstance(code, dict) or not code:
        raise FhirError(f"{path}.code is required: an Observation says what was observed (a "
                        "LOINC code)")
    codings = [c for c in code.get("coding", []) if isinstance(c, dict)]
    loinc = [c for c in codings if c.get("system") == LOINC]
    if not loinc:
        raise FhirError(f"{path}.code needs a LOINC coding (system {LOINC})")
    for c in loinc:
        check_loinc(str(c.get("code", "")), f"{path}.code")
    quantities = [(f"{path}.valueQuantity", obs.get("valueQuantity"))]
    for i, comp in enumerate(obs.get("component", []) or []):
        if isinstance(comp, dict):
            quantities.append((f"{path}.component[{i}].valueQuantity", comp.get("valueQuantity")))
            for c in (comp.get("code") or {}).get("coding", []):
                if isinstance(c, dict) and c.get("system") == LOINC:
                    check_loinc(str(c.get("code", "")), f"{path}.component[{i}].code")
    for qpath, q in quantities:
        if q is None:
            continue
        if not isinstance(q, dict) or q.get("system") != UCUM or not q.get("code"):
            raise FhirError(f"{qpath} must be UCUM: system {UCUM} and a code (e.g. mmol/L)")


def check_loinc(code: str, path: str) -> None:
    """A LOINC code is digits, a hyphen and a mod-10 check digit (LOINC's own algorithm, the
    Luhn formula)."""
    m = _LOINC_CODE.fullmatch(code)
    if m is None:
        raise FhirError(f"{path}: {code!r} is not a LOINC code (digits-check digit, e.g. 2345-7)")
    body, given = m.group(1), int(m.group(2))
    total = 0
    for position, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if position % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    expected = (10 - total % 10) % 10
    if given != expected:
        raise FhirError(f"{path}: LOINC {code} has check digit {given}, expected {expected}")


def _references(node: Json, path: str) -> Iterator[tuple[str, dict[str, Json]]]:
    if isinstance(node, dict):
        if "reference" in node and isinstance(node.get("reference"), str):
            yield path, node
        for k, v in node.items():
            if k != "contained":
                yield from _references(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, f"{path}[{i}]")


def _codings(node: Json) -> Iterator[tuple[str, str]]:
    """(system, code) of every Coding (objects with system and code, not a Quantity's)."""
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and isinstance(code, str) and "value" not in node:
            yield system, code
        for v in node.values():
            yield from _codings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _codings(v)


def _fhir_model(rtype: str, obj: Mapping[str, Json]) -> None:
    """The FHIR R4 (R4B models) schema: types, cardinalities, no unknown fields."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    try:
        get_fhir_model_class(rtype).model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise FhirError(f"{rtype}.{where}: {first['msg']} (FHIR R4)") from None
