"""Deterministic checks: they always run first, and their findings go into the prompt and
the verdict.

A `certain` finding decides by itself (reject / flag) and no model can clear it; a `suspect`
finding is a warning the model weighs (the rules backend alone resolves it to review / flag);
`info` is context. The checks are pure functions of their inputs, so every validator's service
computes the same findings for the same record.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from consortium.admission.model import (
    Finding,
    JoinContext,
    JoinRequest,
    PatientRecordInput,
    ProvenanceEvent,
    RecordContext,
    Severity,
    Task,
)
from consortium.admission.schema import PATIENT_PAYLOAD_SCHEMA, REQUIRED_SECTION

CERTAIN, SUSPECT, INFO = Severity.CERTAIN, Severity.SUSPECT, Severity.INFO

CLOCK_SKEW_MS = 5 * 60 * 1000
"""Timestamps this far ahead of the service's clock are still accepted (clock drift)."""
OBSERVED_GRACE_MS = 24 * 3600 * 1000
"""A patient observation may carry a date up to a day after submission (time zones)."""
BURST_WINDOW_MS = 60 * 1000
BURST_LIMIT = 20
"""More patient records than this from one organisation within the window is a burst."""
STATEMENT_CHARS_MIN = 40

SECTORS = frozenset({"manufacturer", "distributor", "wholesaler", "logistics", "pharmacy",
                     "hospital", "clinic", "laboratory", "regulator", "research"})
FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "proton.me",
                       "protonmail.com", "mail.ru", "yandex.ru", "gmx.net", "aol.com",
                       "icloud.com", "qq.com"})

# --- prompt injection ---------------------------------------------------------------------

_INJECTION_CERTAIN = [re.compile(p) for p in (
    r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|earlier|"
    r"preceding|all|any|your|the)\b.{0,30}\b(instructions?|rules?|prompts?|guidelines?|"
    r"checks?|directions?|policy|policies)\b",
    r"\b(system|developer)\s+(prompt|message|instructions?|override)\b",
    r"\byou\s+are\s+(now\s+)?(an?\s+|the\s+)?(ai|assistant|model|language model|llm|reviewer|"
    r"screener|chatgpt|gpt)\b",
    r"\b(note|message|instruction)s?\s+(to|for)\s+(the\s+)?(ai|model|assistant|reviewer|"
    r"screener|llm|automated\s+\w+|admission\s+\w+)\b",
    r"\b(respond|answer|reply|output|return|classify|mark|label|rate|set)\b.{0,25}"
    r"[\"'`]?\b(approve|approved|ok)\b[\"'`]?\s*(with|and|,|\.|$|risk)",
    r"[\"']?decision[\"']?\s*[:=]\s*[\"']?(approve|ok|review|reject|flag)",
    r"\brisk\s*(score|level)?\s*(=|:|to|of)\s*0(\.0+)?\b",
    r"</?\s*(data|findings|record|request|system|user|assistant)\s*>",
    r"<\|?\s*(im_start|im_end|system|endoftext)\s*\|?>",
    r"\[/?inst\]|###\s*(instruction|system|response)",
    r"\bnew\s+instructions?\b",
    # Text telling the reviewer what the outcome is, or that the review already happened:
    # an applicant or a record has no reason to speak about its own screening.
    r"\b(correct|proper|agreed)\s+(screening\s+|review\s+)?(outcome|decision|verdict)\b",
    r"\bexpected\s+(screening|review)\s+(outcome|decision|verdict|result)\b",
    r"\b(agreed|discussed|settled|arranged|cleared)\b.{0,40}\bwith\s+the\s+(consortium|"
    r"validators?|chair|reviewers?|screeners?|board)\b",
    r"\bnothing\s+(further\s+|else\s+|here\s+|more\s+)?(to\s+(look\s+at|check|review)|"
    r"(needs|requires)\s+(attention|review|checking|a\s+look))\b",
    r"\b(go|goes|pass|passes)\s+straight\s+through\b",
    r"\breviewers?\s+(have|has)\s+already\b",
)]
_INJECTION_SUSPECT = [re.compile(p) for p in (
    r"\bpre-?(approved|cleared|verified)\b",
    r"\b(do\s+not|don't|no\s+need\s+to)\s+(flag|reject|review|check|verify|escalate)\b",
    r"\b(must|should)\s+be\s+(approved|accepted|cleared|marked\s+ok)\b",
    r"\bauto-?approv",
)]
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def normalise_text(text: str) -> str:
    """Fold the usual disguises (full-width letters, zero-width joiners, odd spacing, case)."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).casefold()
    return " ".join(folded.split())


def injection_findings(fields: Mapping[str, str | None], rule: str) -> list[Finding]:
    """Text addressed to the screener instead of describing the subject."""
    out: list[Finding] = []
    for name, value in sorted(fields.items()):
        if not value:
            continue
        t = normalise_text(value)
        if any(p.search(t) for p in _INJECTION_CERTAIN):
            out.append(Finding(rule, CERTAIN, f"{name} contains instructions addressed to the "
                                              "reviewer (prompt injection)"))
        elif any(p.search(t) for p in _INJECTION_SUSPECT):
            out.append(Finding(rule, SUSPECT, f"{name} tries to pre-empt the review "
                                              "(claims approval or asks not to be checked)"))
    return out


# --- join requests ------------------------------------------------------------------------

_CONFUSABLE = str.maketrans({"0": "o", "1": "l", "3": "e", "5": "s", "7": "t", "$": "s",
                             "@": "a", "|": "l", "!": "i"})
_ORG_SUFFIX = re.compile(r"\b(inc|ltd|llc|gmbh|ag|sa|bv|plc|co|corp|corporation|company|"
                         r"limited|group|holdings?)\b\.?")


def _org_key(name: str) -> str:
    t = normalise_text(name)
    t = _ORG_SUFFIX.sub(" ", t)
    return re.sub(r"[^0-9a-z]", "", t)


def _lookalike_key(name: str) -> str:
    return _org_key(normalise_text(name).translate(_CONFUSABLE)).replace("rn", "m")


_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}"
                   r"[a-z0-9])?)*$")
_EMAIL = re.compile(r"^[a-z0-9._%+-]{1,64}@([a-z0-9-]+\.)+[a-z]{2,}$")


def _split_endpoint(endpoint: str) -> tuple[str, int] | None:
    host, sep, port = endpoint.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    host = host.strip("[]").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            return None
    return host, int(port)


def check_join(req: JoinRequest, ctx: JoinContext) -> list[Finding]:
    f: list[Finding] = []
    for name in ("request_id", "org_name", "endpoint", "statement"):
        if not getattr(req, name).strip():
            f.append(Finding("join.missing-field", CERTAIN, f"{name} is empty"))
    key = _org_key(req.org_name)
    members = {_org_key(m): m for m in ctx.members}
    looks = {_lookalike_key(m): m for m in ctx.members}
    if key and key in members:
        f.append(Finding("join.already-member", CERTAIN,
                         f"an organisation named {members[key]!r} is already a member"))
    elif key:
        lk = _lookalike_key(req.org_name)
        close = [m for k, m in looks.items()
                 if k == lk or difflib.SequenceMatcher(None, k, lk).ratio() >= 0.88]
        if close:
            f.append(Finding("join.lookalike-name", SUSPECT,
                             f"name resembles existing member {sorted(close)[0]!r}"))
    parsed = _split_endpoint(req.endpoint)
    if req.endpoint.strip() and parsed is None:
        f.append(Finding("join.endpoint-malformed", CERTAIN,
                         "endpoint is not host:port with a valid port"))
    elif parsed is not None:
        host, _ = parsed
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        loopback = host == "localhost" or (ip is not None and ip.is_loopback)
        if (loopback and not ctx.loopback_ok) or (ip is not None and (
                ip.is_unspecified or ip.is_link_local or ip.is_multicast)):
            f.append(Finding("join.endpoint-unreachable", CERTAIN,
                             "endpoint is a loopback, unspecified, link-local or multicast "
                             "address other validators cannot reach"))
        if req.endpoint.strip().lower() in {e.lower() for e in ctx.member_endpoints}:
            f.append(Finding("join.endpoint-taken", CERTAIN,
                             "endpoint is already used by a member's validator"))
    unknown = [s for s in req.sponsors if s not in ctx.members]
    if unknown:
        f.append(Finding("join.sponsor-unknown", SUSPECT,
                         f"named sponsor(s) {', '.join(sorted(unknown))} are not members"))
    if not req.sponsors and not req.verified_sponsor:
        f.append(Finding("join.no-sponsor", INFO, "no member vouches for the applicant"))
    email = req.contact_email.strip().lower()
    if not _EMAIL.match(email):
        f.append(Finding("join.contact-malformed", SUSPECT, "contact email is malformed"))
    elif email.rpartition("@")[2] in FREE_MAIL:
        f.append(Finding("join.contact-free-mail", SUSPECT,
                         "contact email is on a free mail service, not the organisation's "
                         "domain"))
    if normalise_text(req.sector) not in SECTORS:
        f.append(Finding("join.sector-unknown", SUSPECT,
                         "sector is not one the consortium serves"))
    if req.statement.strip() and len(req.statement.strip()) < STATEMENT_CHARS_MIN:
        f.append(Finding("join.statement-short", SUSPECT, "statement is too short to judge"))
    if ctx.now_ms and req.submitted_at_ms > ctx.now_ms + CLOCK_SKEW_MS:
        f.append(Finding("join.future-timestamp", SUSPECT, "request is dated in the future"))
    f += injection_findings({"statement": req.statement, "org_name": req.org_name,
                             "sector": req.sector}, "join.injection")
    return f


# --- provenance ---------------------------------------------------------------------------

@dataclass
class _Lot:
    """A lot's state after replaying its history."""

    manufacturer: str | None = None
    holder: str | None = None
    ever_held: set[str] | None = None
    pending: ProvenanceEvent | None = None
    """A shipment not yet received."""
    quantity: int | None = None
    status: str = "active"
    last_ms: int | None = None

    def apply(self, e: ProvenanceEvent) -> None:
        held = self.ever_held if self.ever_held is not None else set()
        self.ever_held = held
        if e.event_type == "manufactured":
            self.manufacturer = e.submitter_org
            self.holder = e.custodian_to or e.submitter_org
            held.add(self.holder)
        elif e.event_type == "shipped":
            self.pending, self.holder = e, None
        elif e.event_type == "received":
            self.holder = e.custodian_to or e.submitter_org
            held.add(self.holder)
            self.pending = None
        elif e.event_type == "recalled":
            self.status = "recalled" if self.status == "active" else self.status
        elif e.event_type == "destroyed":
            self.status = "destroyed"
        if e.quantity is not None:
            self.quantity = e.quantity if self.quantity is None else min(self.quantity,
                                                                         e.quantity)
        self.last_ms = e.submitted_at_ms if self.last_ms is None else max(self.last_ms,
                                                                          e.submitted_at_ms)


def check_provenance(e: ProvenanceEvent, ctx: RecordContext) -> list[Finding]:
    f: list[Finding] = []
    lot = _Lot()
    for h in ctx.history:
        lot.apply(h)
    held = lot.ever_held or set()
    if lot.last_ms is not None and e.submitted_at_ms < lot.last_ms:
        f.append(Finding("time.out-of-order", CERTAIN,
                         "dated before an earlier event of the same lot"))
    if ctx.now_ms and e.submitted_at_ms > ctx.now_ms + CLOCK_SKEW_MS:
        f.append(Finding("time.future", CERTAIN, "dated in the future"))
    if lot.status == "destroyed":
        f.append(Finding("lot.destroyed", CERTAIN, "event on a lot that was destroyed"))
    elif lot.status == "recalled":
        returning = e.event_type in ("shipped", "received") and lot.manufacturer is not None \
            and e.custodian_to == lot.manufacturer
        if e.event_type not in ("inspected", "destroyed", "recalled") and not returning:
            f.append(Finding("lot.recalled", CERTAIN,
                             f"{e.event_type} on a recalled lot (only inspection, destruction "
                             "or return to the manufacturer)"))
    if e.event_type == "manufactured" and ctx.history:
        f.append(Finding("lot.manufactured-twice", CERTAIN,
                         "lot id already has a history: manufactured again"))
    if not ctx.history and e.event_type != "manufactured":
        f.append(Finding("custody.no-origin", SUSPECT,
                         "first event of this lot on the ledger is not its manufacture"))
    if e.event_type == "shipped":
        _check_shipped(e, lot, held, f)
    elif e.event_type == "received":
        _check_received(e, lot, f)
    elif e.event_type == "recalled" and lot.manufacturer and e.submitter_org != lot.manufacturer:
        f.append(Finding("custody.recall-by-other", SUSPECT,
                         "recall announced by someone other than the manufacturer"))
    if e.quantity_raw is not None or (e.quantity is not None and e.quantity <= 0):
        f.append(Finding("quantity.invalid", CERTAIN, "quantity is not a positive whole number"))
    elif e.quantity is not None and lot.quantity is not None and e.quantity > lot.quantity:
        f.append(Finding("quantity.grew", CERTAIN,
                         f"quantity {e.quantity} exceeds the {lot.quantity} earlier in the "
                         "chain"))
    if e.event_type in ("manufactured", "shipped", "received") and not e.location:
        f.append(Finding("location.missing", SUSPECT, f"{e.event_type} without a location"))
    reg = ctx.registry
    if e.location and reg.known_locations and e.location not in reg.known_locations:
        f.append(Finding("location.unknown", SUSPECT,
                         f"location {e.location!r} is not a registered site"))
    if reg.known_orgs:
        parties = {e.submitter_org, e.custodian_from, e.custodian_to} - {None}
        unknown = sorted(p for p in parties if p is not None and p not in reg.known_orgs)
        if unknown:
            f.append(Finding("party.unknown", SUSPECT,
                             f"unknown part{'ies' if len(unknown) > 1 else 'y'}: "
                             f"{', '.join(unknown)}"))
    free_text: dict[str, str | None] = {"notes": e.notes, "location": e.location}
    free_text.update({f"metadata {k}": v for k, v in e.extra})
    f += injection_findings(free_text, "record.injection")
    return f


def _check_shipped(e: ProvenanceEvent, lot: _Lot, held: set[str], f: list[Finding]) -> None:
    if not e.custodian_from or not e.custodian_to:
        f.append(Finding("custody.missing-parties", CERTAIN,
                         "shipment without custodian_from and custodian_to"))
        return
    if e.custodian_from == e.custodian_to:
        f.append(Finding("custody.self-shipment", SUSPECT, "shipped to itself"))
    if e.submitter_org != e.custodian_from:
        f.append(Finding("custody.shipper-not-submitter", CERTAIN,
                         "shipment reported by someone other than the shipper"))
    if lot.pending is not None:
        f.append(Finding("custody.already-in-transit", CERTAIN,
                         "shipped while an earlier shipment was not received"))
    elif held and e.custodian_from not in held:
        f.append(Finding("custody.shipper-never-held", CERTAIN,
                         f"{e.custodian_from} never held this lot"))
    elif lot.holder is not None and e.custodian_from != lot.holder:
        f.append(Finding("custody.shipper-not-holder", CERTAIN,
                         f"{e.custodian_from} no longer holds this lot ({lot.holder} does)"))


def _check_received(e: ProvenanceEvent, lot: _Lot, f: list[Finding]) -> None:
    receiver = e.custodian_to or e.submitter_org
    if e.submitter_org != receiver:
        f.append(Finding("custody.receiver-not-submitter", SUSPECT,
                         "receipt reported by someone other than the receiver"))
    p = lot.pending
    if p is None:
        f.append(Finding("custody.received-without-shipment", CERTAIN,
                         "received, but no shipment of this lot is in transit"))
        return
    if p.custodian_to != receiver:
        f.append(Finding("custody.wrong-receiver", CERTAIN,
                         f"the shipment in transit goes to {p.custodian_to}, not {receiver}"))
    if e.custodian_from and e.custodian_from != p.custodian_from:
        f.append(Finding("custody.wrong-sender", CERTAIN,
                         f"received from {e.custodian_from}, but {p.custodian_from} shipped it"))


# --- patient records ----------------------------------------------------------------------

MAX_DAILY_MG: dict[str, float] = {
    "paracetamol": 4000, "acetaminophen": 4000, "ibuprofen": 3200, "naproxen": 1500,
    "aspirin": 4000, "amoxicillin": 6000, "azithromycin": 2000, "ciprofloxacin": 1500,
    "doxycycline": 300, "metformin": 3000, "atorvastatin": 80, "simvastatin": 80,
    "lisinopril": 80, "amlodipine": 10, "metoprolol": 400, "losartan": 100,
    "omeprazole": 120, "pantoprazole": 240, "sertraline": 200, "fluoxetine": 80,
    "levothyroxine": 0.3, "warfarin": 20, "prednisone": 250, "furosemide": 600,
    "gabapentin": 3600, "morphine": 300, "oxycodone": 160, "tramadol": 400,
    "codeine": 240, "diazepam": 40, "insulin glargine": 10, "salbutamol": 32,
    "cetirizine": 20, "clopidogrel": 300, "apixaban": 20,
}
"""Upper bounds on the daily oral dose (mg/day) of common drugs, deliberately generous: a rule
may only flag what no prescription could mean. Unlisted drugs get a looser generic bound."""
GENERIC_DOSE_MG_MAX = 4000.0
PAEDIATRIC_AGE = 12

_VITALS: dict[str, tuple[float, float]] = {
    k: (v["minimum"], v["maximum"])
    for k, v in PATIENT_PAYLOAD_SCHEMA["properties"]["vitals"]["properties"].items()
}
_LABS: dict[tuple[str, str], tuple[float, float]] = {
    ("glucose", "mmol/l"): (0.5, 60), ("glucose", "mg/dl"): (10, 1100),
    ("hba1c", "%"): (3, 20), ("potassium", "mmol/l"): (1, 10),
    ("sodium", "mmol/l"): (95, 190), ("hemoglobin", "g/dl"): (2, 25),
    ("haemoglobin", "g/dl"): (2, 25), ("creatinine", "umol/l"): (10, 2500),
    ("creatinine", "mg/dl"): (0.1, 30), ("cholesterol", "mmol/l"): (1, 25),
    ("inr", "ratio"): (0.5, 15), ("tsh", "miu/l"): (0.001, 200),
    ("wbc", "10^9/l"): (0.1, 500), ("platelets", "10^9/l"): (1, 2000),
    ("crp", "mg/l"): (0, 600), ("alt", "u/l"): (1, 10000),
}
_ICD10 = re.compile(PATIENT_PAYLOAD_SCHEMA["properties"]["diagnosis_codes"]["items"]["pattern"])
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)


def _num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _parse_date(value: str) -> dt.datetime | None:
    try:
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=dt.UTC)


def _schema_problems(p: Mapping[str, Any], event_type: str) -> tuple[list[str], list[str]]:
    """(hard problems, unknown keys) against PATIENT_PAYLOAD_SCHEMA."""
    props = PATIENT_PAYLOAD_SCHEMA["properties"]
    hard: list[str] = []
    unknown = sorted(k for k in p if k not in props)
    for k in PATIENT_PAYLOAD_SCHEMA["required"]:
        if k not in p:
            hard.append(f"missing {k}")
    section = REQUIRED_SECTION.get(event_type)
    if section and not p.get(section):
        hard.append(f"a {event_type} needs {section}")
    if "age_years" in p and (not isinstance(p["age_years"], int)
                             or isinstance(p["age_years"], bool)):
        hard.append("age_years is not a whole number")
    if "observed_at" in p and not isinstance(p["observed_at"], str):
        hard.append("observed_at is not a date string")
    if "sex" in p and p["sex"] not in props["sex"]["enum"]:
        hard.append("sex is not female/male/other/unknown")
    if "vitals" in p:
        v = p["vitals"]
        if not isinstance(v, dict) or any(not _num(x) for x in v.values()):
            hard.append("vitals must map names to numbers")
        else:
            unknown += sorted(f"vitals.{k}" for k in v if k not in _VITALS)
    for name, fields in (("labs", ("test", "value", "unit")),
                         ("medications", ("name", "dose_mg", "frequency_per_day"))):
        items = p.get(name, [])
        if not isinstance(items, list) or any(
                not isinstance(i, dict) or any(x not in i for x in fields) for i in items):
            hard.append(f"{name} entries need {', '.join(fields)}")
    for m in p.get("medications", []) if isinstance(p.get("medications"), list) else []:
        if isinstance(m, dict) and (not _num(m.get("dose_mg")) or not isinstance(
                m.get("frequency_per_day"), int) or isinstance(m.get("frequency_per_day"),
                                                               bool)):
            hard.append("medication dose_mg must be a number, frequency_per_day an integer")
    for lab in p.get("labs", []) if isinstance(p.get("labs"), list) else []:
        if isinstance(lab, dict) and not _num(lab.get("value")):
            hard.append("lab value must be a number")
    img = p.get("imaging")
    if img is not None and (not isinstance(img, dict) or img.get("modality") not in
                            props["imaging"]["properties"]["modality"]["enum"]):
        hard.append("imaging needs a known modality")
    for k in ("notes",):
        if k in p and not isinstance(p[k], str):
            hard.append(f"{k} is not text")
    return hard, unknown


def check_patient(r: PatientRecordInput, ctx: RecordContext) -> list[Finding]:
    f: list[Finding] = []
    f += _burst_and_duplicates(r, ctx)
    meta_text = {f"metadata {k}": v for k, v in r.metadata}
    if r.payload is None:
        f.append(Finding("payload.unreadable", INFO, "payload not shared with the admission "
                                                     "service: metadata screened only"))
        f += injection_findings(meta_text, "record.injection")
        return f
    p = r.payload
    hard, unknown = _schema_problems(p, r.event_type)
    if hard:
        f.append(Finding("payload.schema", CERTAIN, "; ".join(sorted(set(hard)))[:300]))
    if unknown:
        f.append(Finding("payload.unknown-fields", SUSPECT,
                         f"fields outside the schema: {', '.join(unknown)[:200]}"))
    age = p.get("age_years")
    if _num(age) and not 0 <= age <= 120:
        f.append(Finding("range.age", CERTAIN, f"age {age} is impossible"))
    vitals = p.get("vitals")
    if isinstance(vitals, dict):
        for k, (lo, hi) in _VITALS.items():
            x = vitals.get(k)
            if _num(x) and not lo <= x <= hi:
                f.append(Finding("range.vitals", CERTAIN, f"{k} {x} is outside {lo:g}..{hi:g}"))
        sys_, dia = vitals.get("systolic_mmhg"), vitals.get("diastolic_mmhg")
        if _num(sys_) and _num(dia) and sys_ <= dia:
            f.append(Finding("range.vitals", CERTAIN, "systolic pressure not above diastolic"))
    f += _dose_findings(p, age if _num(age) else None)
    labs = p.get("labs")
    for lab in labs if isinstance(labs, list) else []:
        if not isinstance(lab, dict) or not _num(lab.get("value")):
            continue
        key = (normalise_text(str(lab.get("test", ""))), normalise_text(str(lab.get("unit", ""))))
        if key in _LABS:
            lo, hi = _LABS[key]
            if not lo <= lab["value"] <= hi:
                f.append(Finding("range.lab", CERTAIN,
                                 f"{key[0]} {lab['value']} {key[1]} is impossible"))
    codes = p.get("diagnosis_codes")
    if isinstance(codes, list) and any(not isinstance(c, str) or not _ICD10.match(c)
                                       for c in codes):
        f.append(Finding("payload.diagnosis-code", SUSPECT,
                         "diagnosis code is not ICD-10 shaped"))
    f += _date_findings(p, r, ctx)
    text: dict[str, str | None] = dict(meta_text)
    if isinstance(p.get("notes"), str):
        text["notes"] = p["notes"]
    img = p.get("imaging")
    if isinstance(img, dict):
        text.update({f"imaging {k}": v for k, v in img.items() if isinstance(v, str)})
    for m in p.get("medications", []) if isinstance(p.get("medications"), list) else []:
        if isinstance(m, dict) and isinstance(m.get("name"), str):
            text[f"medication {m['name'][:20]}"] = m["name"]
    f += injection_findings(text, "record.injection")
    return f


def _dose_findings(p: Mapping[str, Any], age: float | None) -> list[Finding]:
    out: list[Finding] = []
    meds = p.get("medications")
    for m in meds if isinstance(meds, list) else []:
        if not isinstance(m, dict) or not _num(m.get("dose_mg")) or not _num(
                m.get("frequency_per_day")):
            continue
        name = normalise_text(str(m.get("name", "")))
        dose, freq = float(m["dose_mg"]), float(m["frequency_per_day"])
        if dose <= 0 or not 1 <= freq <= 24:
            out.append(Finding("range.dose", CERTAIN, f"{name}: dose or frequency impossible"))
            continue
        daily = dose * freq
        limit = MAX_DAILY_MG.get(name)
        if limit is None:
            if dose > GENERIC_DOSE_MG_MAX:
                out.append(Finding("range.dose", SUSPECT,
                                   f"{name}: a single dose of {dose:g} mg is unusually high"))
        elif daily > limit:
            out.append(Finding("range.dose", CERTAIN,
                               f"{name}: {daily:g} mg/day exceeds the {limit:g} mg/day maximum"))
        elif age is not None and age < PAEDIATRIC_AGE and daily > 0.6 * limit:
            out.append(Finding("range.paediatric-dose", SUSPECT,
                               f"{name}: {daily:g} mg/day is near the adult maximum for a "
                               f"{age:g}-year-old"))
    return out


def _date_findings(p: Mapping[str, Any], r: PatientRecordInput,
                   ctx: RecordContext) -> list[Finding]:
    raw = p.get("observed_at")
    if not isinstance(raw, str):
        return []
    when = _parse_date(raw)
    if when is None:
        return [Finding("date.invalid", CERTAIN, "observed_at is not an ISO 8601 date")]
    ms = int(when.timestamp() * 1000)
    out: list[Finding] = []
    if ms > r.submitted_at_ms + OBSERVED_GRACE_MS or (
            ctx.now_ms and ms > ctx.now_ms + OBSERVED_GRACE_MS):
        out.append(Finding("date.future", CERTAIN, "observed after the record was submitted"))
    if when < _EARLIEST:
        out.append(Finding("date.implausible", CERTAIN, "observed before 1900"))
    age = p.get("age_years")
    if _num(age) and when.year < dt.datetime.fromtimestamp(
            r.submitted_at_ms / 1000, dt.UTC).year - int(age) - 1:
        out.append(Finding("date.before-birth", CERTAIN,
                           "observed before the patient was born"))
    return out


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


# --- the rules alone ----------------------------------------------------------------------

RULE_RISK = {CERTAIN: 0.95, SUSPECT: 0.6}
CLEAN_RISK = 0.05


def rules_outcome(task: Task, findings: Iterable[Finding]) -> tuple[str, float]:
    """The decision the rules reach by themselves: certain -> reject/flag, suspect ->
    review/flag, nothing -> approve/ok."""
    sev = {x.severity for x in findings}
    if CERTAIN in sev:
        return ("reject" if task is Task.JOIN else "flag"), RULE_RISK[CERTAIN]
    if SUSPECT in sev:
        return ("review" if task is Task.JOIN else "flag"), RULE_RISK[SUSPECT]
    return ("approve" if task is Task.JOIN else "ok"), CLEAN_RISK


def check_record(record: ProvenanceEvent | PatientRecordInput,
                 ctx: RecordContext) -> list[Finding]:
    if isinstance(record, ProvenanceEvent):
        return check_provenance(record, ctx)
    return check_patient(record, ctx)
