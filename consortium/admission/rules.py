"""Deterministic checks: they always run first, and their findings go into the prompt and
the verdict.

A `certain` finding decides by itself (reject / flag) and no model can clear it; a `suspect`
finding is a warning the model weighs (the rules backend alone resolves it to review / flag);
`info` is context. The checks are pure functions of their inputs, so every validator's service
computes the same findings for the same record.

Entry points: `check_join`, `check_provenance` (custody on EPCIS events: custody.py), and
`check_patient` (FHIR payloads: patient_rules.py), `check_record`, `rules_outcome`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Iterator

from consortium.admission.application import COUNTRY, SECTORS
from consortium.admission.custody import CLOCK_SKEW_MS, check_custody
from consortium.admission.injection import injection_findings, normalise_text
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
from consortium.admission.patient_rules import (
    BURST_LIMIT,
    BURST_WINDOW_MS,
    OBSERVED_GRACE_MS,
    check_patient,
)
from consortium.formats.epcis import Event
from consortium.formats.errors import FormatError
from consortium.formats.private_ids import PRIVATE_PREFIX, parse_private

__all__ = ["BURST_LIMIT", "BURST_WINDOW_MS", "CLOCK_SKEW_MS", "OBSERVED_GRACE_MS",
           "check_join", "check_patient", "check_provenance", "check_record",
           "injection_findings", "normalise_text", "rules_outcome"]

CERTAIN, SUSPECT, INFO = Severity.CERTAIN, Severity.SUSPECT, Severity.INFO

STATEMENT_CHARS_MIN = 40

FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "proton.me",
                       "protonmail.com", "mail.ru", "yandex.ru", "gmx.net", "aol.com",
                       "icloud.com", "qq.com"})


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
NOT_GIVEN = "join.not-given"
"""Info: the applicant left a field out. Absent is not bad: only what is given is judged."""


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
    f += _given_field_findings(req, ctx)
    if req.statement.strip() and len(req.statement.strip()) < STATEMENT_CHARS_MIN:
        f.append(Finding("join.statement-short", SUSPECT, "statement is too short to judge"))
    if ctx.now_ms and req.submitted_at_ms > ctx.now_ms + CLOCK_SKEW_MS:
        f.append(Finding("join.future-timestamp", SUSPECT, "request is dated in the future"))
    f += injection_findings({"statement": req.statement, "org_name": req.org_name,
                             "sector": req.sector}, "join.injection")
    return f


def _given_field_findings(req: JoinRequest, ctx: JoinContext) -> list[Finding]:
    """Sponsors, contact, sector and country: judged when given, an info finding when not
    (a statement-only request is normal and must not read as a malformed one)."""
    f: list[Finding] = []
    unknown = [s for s in req.sponsors if s not in ctx.members]
    if unknown:
        f.append(Finding("join.sponsor-unknown", SUSPECT,
                         f"named sponsor(s) {', '.join(sorted(unknown))} are not members"))
    if req.verified_sponsor and ctx.members and req.verified_sponsor not in ctx.members:
        f.append(Finding("join.sponsor-not-member", SUSPECT,
                         f"the verified sponsor {req.verified_sponsor!r} is no longer a "
                         "member"))
    if not req.sponsors and not req.verified_sponsor:
        f.append(Finding("join.no-sponsor", INFO, "no member vouches for the applicant"))
    missing = [name for name, value in (("sector", req.sector), ("country", req.country),
                                        ("contact email", req.contact_email))
               if not value.strip()]
    if missing:
        f.append(Finding(NOT_GIVEN, INFO, f"not given: {', '.join(missing)}"))
    email = req.contact_email.strip().lower()
    if email and not _EMAIL.match(email):
        f.append(Finding("join.contact-malformed", SUSPECT, "contact email is malformed"))
    elif email and email.rpartition("@")[2] in FREE_MAIL:
        f.append(Finding("join.contact-free-mail", SUSPECT,
                         "contact email is on a free mail service, not the organisation's "
                         "domain"))
    if req.sector.strip() and normalise_text(req.sector) not in SECTORS:
        f.append(Finding("join.sector-unknown", SUSPECT,
                         "sector is not one the consortium serves"))
    if req.country.strip() and not COUNTRY.match(req.country.strip().upper()):
        f.append(Finding("join.country-malformed", SUSPECT,
                         "country is not an ISO 3166 two-letter code"))
    return f


# --- provenance ---------------------------------------------------------------------------

def check_provenance(e: ProvenanceEvent, ctx: RecordContext) -> list[Finding]:
    """Custody (custody.py) plus the sites, parties and free text of the event."""
    if e.event is None:
        raw = e.public_json.decode(errors="replace")[:4000]
        return [Finding("record.malformed", CERTAIN,
                        f"not a valid EPCIS event: {e.malformed}"[:300]),
                *injection_findings({"record": raw}, "record.injection")]
    f = check_custody(e, ctx)
    f += _place_and_party_findings(e.event, e.submitter_org, ctx)
    f += injection_findings(dict(_free_text(e.event)), "record.injection")
    return f


def _name(uri: str) -> str:
    if uri.startswith(PRIVATE_PREFIX):
        try:
            return parse_private(uri)[1]
        except FormatError:
            return uri
    return uri


def _place_and_party_findings(ev: Event, submitter: str, ctx: RecordContext) -> list[Finding]:
    out: list[Finding] = []
    reg, directory = ctx.registry, ctx.directory
    places = [p for p in (ev.read_point, ev.biz_location) if p is not None]
    places += [p.id for p in (*ev.sources, *ev.destinations) if p.type == "location"]
    if not places:
        out.append(Finding("location.missing", SUSPECT,
                           f"{ev.biz_step} without a readPoint or bizLocation"))
    if reg.known_locations:
        unknown = sorted({_name(p) for p in places if directory.org_of(p) is None
                          and p not in reg.known_locations
                          and _name(p) not in reg.known_locations})
        if unknown:
            out.append(Finding("location.unknown", SUSPECT,
                               f"location {', '.join(unknown)} is not a registered site"))
    if reg.known_orgs:
        parties = [p.id for p in (*ev.sources, *ev.destinations) if p.type != "location"]
        unknown = sorted({_name(p) for p in parties if directory.org_of(p) is None
                          and p not in reg.known_orgs and _name(p) not in reg.known_orgs
                          and _name(p) != submitter})
        if submitter not in reg.known_orgs and directory.member(submitter) is None:
            unknown.append(submitter)
        if unknown:
            out.append(Finding("party.unknown", SUSPECT,
                               f"unknown part{'ies' if len(unknown) > 1 else 'y'}: "
                               f"{', '.join(unknown)}"))
    return out


def _free_text(ev: Event) -> Iterator[tuple[str, str]]:
    """Every string in the event's extension fields and ilmd (notes, product names...)."""
    import json

    def strings(path: str, value: object) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from strings(f"{path}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from strings(f"{path}[{i}]", v)

    for key, text in ev.extensions:
        yield from strings(key, json.loads(text))
    if ev.ilmd is not None:
        yield from strings("ilmd", json.loads(ev.ilmd))


# --- patient records: patient_rules.check_patient -----------------------------------------

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
