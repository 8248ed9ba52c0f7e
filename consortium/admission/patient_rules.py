"""Patient record rules on FHIR R4 payloads (the admission service's side; validators only
see ciphertext).

A payload the service may read is first validated as the SDK validates it
(formats/fhir.validate_patient_payload): anything it refuses is `payload.fhir` (certain).
Then the clinical checks a table can decide (clinical.py):
- values no patient can have, per LOINC code and UCUM unit (range.vitals, range.lab), a
  systolic pressure not above the diastolic, a weight impossible for the age, an age over
  120 (certain); a unit that does not fit the LOINC test (clinical.unit, suspect: often a
  coding slip, and the value cannot be judged);
- contradictions with the patient's sex or age: a test, condition (ICD-10) or body site only
  the other sex has, a condition impossible at that age (certain);
- doses: above the drug's daily maximum (certain), a drug below its labelled minimum age
  (certain), a near-adult dose under 12 or an unusually large dose of an unlisted drug
  (suspect);
- dates after the submission (a day's grace), before 1900, before birth (certain);
- duplicates and bursts (certain), text addressed to the reviewer (record.injection), a
  payment card number in clinical text (suspect).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consortium.admission import clinical
from consortium.admission.injection import injection_findings, normalise_text
from consortium.admission.model import Finding, PatientRecordInput, RecordContext, Severity
from consortium.formats import fhir

CERTAIN, SUSPECT, INFO = Severity.CERTAIN, Severity.SUSPECT, Severity.INFO

OBSERVED_GRACE_MS = 24 * 3600 * 1000
"""A clinical date may be up to a day after submission (time zones)."""
BURST_WINDOW_MS = 60 * 1000
BURST_LIMIT = 20
"""More patient records than this from one organisation within the window is a burst."""
AGE_YEARS_MAX = 120
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm"})
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"
_ICD10 = re.compile(r"[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?")
_CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
_DATE_FIELDS = ("effectiveDateTime", "effectiveInstant", "issued", "authoredOn", "started")
_VITALS = frozenset({"8867-4", "8480-6", "8462-4", "8310-5", "59408-5", "2708-6", "9279-1",
                     "29463-7", "8302-2"})

Json = Any


@dataclass(frozen=True, slots=True)
class _Patient:
    gender: str | None
    birth: dt.datetime | None

    def age_at(self, when: dt.datetime) -> float | None:
        if self.birth is None:
            return None
        return (when - self.birth).days / 365.25


def check_patient(r: PatientRecordInput, ctx: RecordContext) -> list[Finding]:
    f = _burst_and_duplicates(r, ctx)
    meta_text = {f"metadata {k}": v for k, v in r.metadata}
    if r.payload is None:
        f.append(Finding("payload.unreadable", INFO, "payload not shared with the admission "
                                                     "service: metadata screened only"))
        return f + injection_findings(meta_text, "record.injection")
    payload = r.payload
    text = {**meta_text, **_free_text(payload)}
    try:
        fhir.validate_patient_payload(payload, r.subject_id)
    except fhir.FhirError as exc:
        f.append(Finding("payload.fhir", CERTAIN, str(exc)[:300]))
        return f + injection_findings(text, "record.injection")
    resources = _resources(payload)
    patient = _patient(payload, resources)
    when = _record_date(resources) or dt.datetime.fromtimestamp(r.submitted_at_ms / 1000,
                                                                dt.UTC)
    age = patient.age_at(when)
    if age is not None and not 0 <= age <= AGE_YEARS_MAX:
        f.append(Finding("range.age", CERTAIN, f"age {int(age)} at {when.date()} is impossible"))
    f += _date_findings(resources, patient, r, ctx)
    for res in resources:
        rtype = res.get("resourceType")
        if rtype == "Observation":
            f += _observation_findings(res, patient, age)
        elif rtype == "MedicationRequest":
            f += _dose_findings(res, age)
        elif rtype == "ImagingStudy":
            f += _imaging_findings(res, patient)
    f += _diagnosis_findings(payload, patient, age)
    f += _card_findings(text)
    f += injection_findings(text, "record.injection")
    return f


# --- reading the FHIR payload -----------------------------------------------------------

def _resources(payload: Mapping[str, Json]) -> list[Mapping[str, Json]]:
    if payload.get("resourceType") == "Bundle":
        return [e["resource"] for e in payload.get("entry", []) if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)]
    return [payload]


def _patient(payload: Mapping[str, Json], resources: Sequence[Mapping[str, Json]]) -> _Patient:
    candidates = [r for r in resources if r.get("resourceType") == "Patient"]
    for r in resources:
        candidates += [c for c in r.get("contained", []) or []
                       if isinstance(c, dict) and c.get("resourceType") == "Patient"]
    for p in candidates:
        return _Patient(p.get("gender"), _parse_date(p.get("birthDate")))
    return _Patient(None, None)


def _parse_date(value: Json) -> dt.datetime | None:
    """A FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or with a time) -> UTC datetime at
    the start of the period it names."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 4:
            return dt.datetime(int(value), 1, 1, tzinfo=dt.UTC)
        if len(value) == 7:
            return dt.datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=dt.UTC)
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=dt.UTC)


def _dates(resource: Mapping[str, Json]) -> Iterator[tuple[str, dt.datetime]]:
    rtype = resource.get("resourceType", "")
    for key in _DATE_FIELDS:
        d = _parse_date(resource.get(key))
        if d is not None:
            yield f"{rtype}.{key}", d
    for key in ("period", "effectivePeriod"):
        period = resource.get(key)
        if isinstance(period, dict):
            d = _parse_date(period.get("start"))
            if d is not None:
                yield f"{rtype}.{key}.start", d


def _record_date(resources: Sequence[Mapping[str, Json]]) -> dt.datetime | None:
    found = [d for r in resources for _, d in _dates(r)]
    return min(found) if found else None


def _codings(node: Json, systems: frozenset[str]) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("system") in systems and isinstance(node.get("code"), str):
            yield node["code"]
        for v in node.values():
            yield from _codings(v, systems)
    elif isinstance(node, list):
        for v in node:
            yield from _codings(v, systems)


def _free_text(payload: Mapping[str, Json]) -> dict[str, str]:
    """Clinical free text: notes, conclusions, descriptions, dosage text, narrative."""
    out: dict[str, str] = {}
    for i, res in enumerate(_resources(payload)):
        rtype = res.get("resourceType", "resource")
        for j, note in enumerate(res.get("note", []) or []):
            if isinstance(note, dict) and isinstance(note.get("text"), str):
                out[f"{rtype}[{i}].note[{j}]"] = note["text"]
        for key in ("conclusion", "description", "comment"):
            if isinstance(res.get(key), str):
                out[f"{rtype}[{i}].{key}"] = res[key]
        for j, dosage in enumerate(res.get("dosageInstruction", []) or []):
            if isinstance(dosage, dict) and isinstance(dosage.get("text"), str):
                out[f"{rtype}[{i}].dosage[{j}]"] = dosage["text"]
        narrative = res.get("text")
        if isinstance(narrative, dict) and isinstance(narrative.get("div"), str):
            out[f"{rtype}[{i}].text"] = re.sub(r"<[^>]*>", " ", narrative["div"])
    return out


# --- checks -------------------------------------------------------------------------------

def _date_findings(resources: Sequence[Mapping[str, Json]], patient: _Patient,
                   r: PatientRecordInput, ctx: RecordContext) -> list[Finding]:
    out: list[Finding] = []
    limit_ms = r.submitted_at_ms + OBSERVED_GRACE_MS
    if ctx.now_ms:
        limit_ms = min(limit_ms, ctx.now_ms + OBSERVED_GRACE_MS)
    for res in resources:
        for where, d in _dates(res):
            if d.timestamp() * 1000 > limit_ms:
                out.append(Finding("date.future", CERTAIN,
                                   f"{where} {d.date()} is after the record was submitted"))
            elif d < _EARLIEST:
                out.append(Finding("date.implausible", CERTAIN, f"{where} {d.date()} is "
                                                                "before 1900"))
            elif patient.birth is not None and d < patient.birth:
                out.append(Finding("date.before-birth", CERTAIN,
                                   f"{where} {d.date()} is before the patient was born"))
    first: dict[str, Finding] = {}
    for finding in out:  # one finding per rule: the first date that breaks it
        first.setdefault(finding.rule, finding)
    return list(first.values())


def _quantity_values(obs: Mapping[str, Json]) -> Iterator[tuple[str, float, str]]:
    """(LOINC code, value, UCUM code) of the observation and its components."""
    parts = [obs, *[c for c in obs.get("component", []) or [] if isinstance(c, dict)]]
    for part in parts:
        q = part.get("valueQuantity")
        if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
            continue
        for code in _codings(part.get("code"), frozenset({fhir.LOINC})):
            yield code, float(q["value"]), str(q.get("code", ""))


def _observation_findings(obs: Mapping[str, Json], patient: _Patient,
                          age: float | None) -> list[Finding]:
    out: list[Finding] = []
    values: dict[str, float] = {}
    for code in _codings(obs.get("code"), frozenset({fhir.LOINC})):
        test = clinical.LOINC_TESTS.get(code)
        if test is not None and test.sex and patient.gender in ("female", "male") \
                and patient.gender != test.sex:
            out.append(Finding("clinical.sex-mismatch", CERTAIN,
                               f"{test.name} (LOINC {code}) for a {patient.gender} patient"))
    for code, value, unit in _quantity_values(obs):
        test = clinical.LOINC_TESTS.get(code)
        if test is None:
            continue
        rule = "range.vitals" if code in _VITALS else "range.lab"
        if unit not in test.bounds:
            out.append(Finding("clinical.unit", SUSPECT,
                               f"{test.name} (LOINC {code}) is measured in "
                               f"{' or '.join(sorted(test.bounds))}, not {unit}"))
            continue
        lo, hi = test.bounds[unit]
        values[code] = value
        if not lo <= value <= hi:
            out.append(Finding(rule, CERTAIN, f"{test.name} {value:g} {unit} is impossible "
                                              f"(outside {lo:g}..{hi:g})"))
        if code == "29463-7" and unit == "kg" and age is not None:
            heaviest = next((w for below, w in clinical.WEIGHT_FOR_AGE_KG_MAX if age < below),
                            None)
            if heaviest is not None and value > heaviest:
                out.append(Finding("range.weight-for-age", CERTAIN,
                                   f"{value:g} kg at age {int(age)} is impossible (at most "
                                   f"{heaviest:g} kg)"))
    systolic, diastolic = values.get("8480-6"), values.get("8462-4")
    if systolic is not None and diastolic is not None and systolic <= diastolic:
        out.append(Finding("range.vitals", CERTAIN, "systolic pressure not above diastolic"))
    return out


def _drug_name(req: Mapping[str, Json]) -> str:
    concept = req.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        return ""
    for code in _codings(concept, frozenset({ATC})):
        if code in clinical.ATC_NAMES:
            return clinical.ATC_NAMES[code]
    for c in concept.get("coding", []) or []:
        if isinstance(c, dict) and isinstance(c.get("display"), str):
            return normalise_text(c["display"])
    return normalise_text(str(concept.get("text", "")))


def _doses(req: Mapping[str, Json]) -> Iterator[tuple[float, float]]:
    """(dose in mg, administrations per day) of each dosage instruction that says both."""
    for dosage in req.get("dosageInstruction", []) or []:
        if not isinstance(dosage, dict):
            continue
        repeat = (dosage.get("timing") or {}).get("repeat") or {}
        frequency = float(repeat.get("frequency", 1))
        period = float(repeat.get("period", 1))
        per_day = clinical.PERIOD_UNITS_PER_DAY.get(str(repeat.get("periodUnit", "d")))
        for dr in dosage.get("doseAndRate", []) or []:
            q = dr.get("doseQuantity") if isinstance(dr, dict) else None
            if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
                continue
            factor = clinical.MASS_UNITS_TO_MG.get(str(q.get("code", "")))
            if factor is None or per_day is None or period <= 0:
                continue
            yield float(q["value"]) * factor, frequency / period * per_day


def _dose_findings(req: Mapping[str, Json], age: float | None) -> list[Finding]:
    out: list[Finding] = []
    name = _drug_name(req)
    min_age = clinical.MIN_AGE_YEARS.get(name)
    if min_age is not None and age is not None and age < min_age:
        out.append(Finding("clinical.age-contraindicated", CERTAIN,
                           f"{name} is not for patients under {min_age:g} (patient is "
                           f"{int(age)})"))
    for dose, per_day in _doses(req):
        if dose <= 0 or not 0 < per_day <= 24:
            out.append(Finding("range.dose", CERTAIN, f"{name}: dose or frequency impossible"))
            continue
        daily = dose * per_day
        limit = clinical.MAX_DAILY_MG.get(name)
        if limit is None:
            if dose > clinical.GENERIC_DOSE_MG_MAX:
                out.append(Finding("range.dose", SUSPECT,
                                   f"{name}: a single dose of {dose:g} mg is unusually high"))
        elif daily > limit:
            out.append(Finding("range.dose", CERTAIN,
                               f"{name}: {daily:g} mg/day exceeds the {limit:g} mg/day maximum"))
        elif age is not None and age < clinical.PAEDIATRIC_AGE and daily > 0.6 * limit:
            out.append(Finding("range.paediatric-dose", SUSPECT,
                               f"{name}: {daily:g} mg/day is near the adult maximum for a "
                               f"{int(age)}-year-old"))
    return out


def _imaging_findings(study: Mapping[str, Json], patient: _Patient) -> list[Finding]:
    out: list[Finding] = []
    for series in study.get("series", []) or []:
        if not isinstance(series, dict):
            continue
        modality = series.get("modality") or {}
        if modality.get("system") == DICOM and modality.get("code") not in \
                clinical.DICOM_MODALITIES:
            out.append(Finding("payload.code", CERTAIN, f"modality {modality.get('code')!r} "
                                                        "is not a DICOM modality code"))
        site = series.get("bodySite") or {}
        known = clinical.SNOMED_BODY_SITE_SEX.get(str(site.get("code"))) \
            if site.get("system") == SNOMED else None
        if known is not None and patient.gender in ("female", "male") \
                and patient.gender != known[1]:
            out.append(Finding("clinical.sex-mismatch", CERTAIN,
                               f"imaging of the {known[0]} of a {patient.gender} patient"))
    return out


def _diagnosis_findings(payload: Mapping[str, Json], patient: _Patient,
                        age: float | None) -> list[Finding]:
    out: list[Finding] = []
    for code in sorted(set(_codings(payload, ICD10_SYSTEMS))):
        if not _ICD10.fullmatch(code):
            out.append(Finding("payload.diagnosis-code", SUSPECT,
                               f"diagnosis code {code!r} is not ICD-10 shaped"))
            continue
        sex = next((s for prefix, s in clinical.ICD10_SEX if code.startswith(prefix)), None)
        if sex is not None and patient.gender in ("female", "male") and patient.gender != sex:
            out.append(Finding("clinical.sex-mismatch", CERTAIN,
                               f"ICD-10 {code} only applies to {sex} patients; this one is "
                               f"{patient.gender}"))
        for prefix, youngest, oldest, what in clinical.ICD10_AGE:
            if code.startswith(prefix) and age is not None and not youngest <= age <= oldest:
                out.append(Finding("clinical.age-mismatch", CERTAIN,
                                   f"ICD-10 {code} ({what}) at age {int(age)} is impossible"))
    return out


def _card_findings(text: Mapping[str, str]) -> list[Finding]:
    for where, value in sorted(text.items()):
        for m in _CARD.finditer(value):
            digits = re.sub(r"\D", "", m.group())
            if digits[0] in "3456" and _luhn_ok(digits):
                return [Finding("record.payment-card", SUSPECT,
                                f"{where} holds what looks like a payment card number")]
    return []


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if position % 2 == 1 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _burst_and_duplicates(r: PatientRecordInput, ctx: RecordContext) -> list[Finding]:
    out: list[Finding] = []
    digest = r.payload_digest()
    others = [s for s in ctx.recent if s.record_id != r.record_id]
    if digest is not None and any(
            s.payload_digest == digest and s.subject_id == r.subject_id
            and s.event_type == r.event_type for s in others):
        out.append(Finding("duplicate.payload", CERTAIN,
                           "same payload already submitted for this patient"))
    window = [s for s in others if s.submitter_org == r.submitter_org
              and 0 <= r.submitted_at_ms - s.submitted_at_ms <= BURST_WINDOW_MS]
    if len(window) >= BURST_LIMIT:
        out.append(Finding("burst.submitter", CERTAIN,
                           f"{len(window) + 1} records from {r.submitter_org} within "
                           f"{BURST_WINDOW_MS // 1000} s"))
    return out
