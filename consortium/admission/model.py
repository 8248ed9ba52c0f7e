"""What the admission service reviews, and the verdict it gives.

The input types are plain frozen dataclasses, independent of the ledger: whoever follows the
block stream maps ledger records and join requests onto them (`ProvenanceEvent.from_public_json`
reads a provenance record's public part, the EPCIS event's canonical JSON;
`ProvenanceEvent.from_metadata` reads legacy records). Keeping them ledger-free lets the rules,
the prompts and the evaluation set run without a consortium.

A `Verdict` is advice, never a decision of the consortium: validators vote on what it flags.
It carries enough to audit it later: which backend and model file (by sha256), which prompt
template (by hash), which input (by hash), the rule findings, and how long it took.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from consortium.formats import epcis
from consortium.formats.directory import EMPTY_DIRECTORY, Gs1Directory
from consortium.formats.epcis import Event
from consortium.formats.errors import FormatError

VERDICT_VERSION = 1


class Task(enum.StrEnum):
    JOIN = "join"
    RECORD = "record"


class JoinDecision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    REVIEW = "review"


class RecordDecision(enum.StrEnum):
    OK = "ok"
    FLAG = "flag"


DECISIONS: dict[Task, tuple[str, ...]] = {
    Task.JOIN: tuple(d.value for d in JoinDecision),
    Task.RECORD: tuple(d.value for d in RecordDecision),
}

MODEL_DECISIONS: dict[Task, tuple[str, ...]] = {
    Task.JOIN: ("approve", "reject"),
    Task.RECORD: ("ok", "flag"),
}
"""What the model may answer. Small models use a third option as a hedge whatever the
evidence, so the model chooses between two and expresses doubt through its risk; review comes
from the rules, from failures and from the combination in review.py."""

PERMISSIVENESS: dict[str, int] = {"approve": 0, "review": 1, "reject": 2, "ok": 0, "flag": 2}
"""Lower is more permissive. Used to combine advice (the stricter wins) and to tell whether an
injection attempt moved a verdict towards what the attacker wanted."""


class Severity(enum.StrEnum):
    CERTAIN = "certain"
    """The rule is sure: it rejects or flags by itself and no model can clear it."""
    SUSPECT = "suspect"
    """A warning sign a reviewer weighs; the rules backend alone treats it as review/flag."""
    INFO = "info"
    """Context only (e.g. a check that could not run)."""


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    """Stable rule id, e.g. ``custody.received-without-shipment``."""
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity.value, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        return cls(str(data["rule"]), Severity(data["severity"]), str(data["message"]))


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """An organisation asking to become a member (and run a validator)."""

    request_id: str
    org_name: str
    endpoint: str
    """host:port of the applicant's validator."""
    sector: str
    """What the applicant says it is: manufacturer, distributor, pharmacy, hospital, lab..."""
    country: str
    contact_email: str
    statement: str
    """The applicant's own free text: data to judge, never instructions."""
    sponsors: tuple[str, ...] = ()
    """Existing members the applicant says vouch for it."""
    submitted_at_ms: int = 0
    verified_sponsor: str = ""
    """The member whose signed sponsorship the validators checked (a request on the ledger);
    "" for one reviewed off the ledger (`ReviewJoin`). Unlike `sponsors`, not the applicant's
    claim."""

    def to_dict(self) -> dict[str, Any]:
        out = {"request_id": self.request_id, "org_name": self.org_name,
               "endpoint": self.endpoint, "sector": self.sector, "country": self.country,
               "contact_email": self.contact_email, "statement": self.statement,
               "sponsors": list(self.sponsors), "submitted_at_ms": self.submitted_at_ms}
        if self.verified_sponsor:  # absent off the ledger: the prompts stay as they were
            out["verified_sponsor"] = self.verified_sponsor
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JoinRequest:
        return cls(str(d["request_id"]), str(d["org_name"]), str(d["endpoint"]),
                   str(d["sector"]), str(d["country"]), str(d["contact_email"]),
                   str(d["statement"]), tuple(str(s) for s in d.get("sponsors", ())),
                   int(d.get("submitted_at_ms", 0)), str(d.get("verified_sponsor", "")))


@dataclass(frozen=True, slots=True)
class JoinContext:
    """What the consortium already is, for the join rules."""

    members: frozenset[str] = frozenset()
    member_endpoints: frozenset[str] = frozenset()
    now_ms: int = 0
    loopback_ok: bool = False
    """A local consortium (all validators on loopback): loopback endpoints are reachable."""

    def to_dict(self) -> dict[str, Any]:
        return {"members": sorted(self.members), "member_endpoints": sorted(
            self.member_endpoints), "now_ms": self.now_ms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JoinContext:
        return cls(frozenset(d.get("members", ())), frozenset(d.get("member_endpoints", ())),
                   int(d.get("now_ms", 0)))


@dataclass(frozen=True, slots=True)
class ProvenanceEvent:
    """One provenance record: an EPCIS 2.0 event (its public part) and who submitted it when.

    `event` is None when the public part cannot be read as an EPCIS event (`malformed` says
    why): records submitted before the consensus check existed, or a test of the rules. The
    rules flag such a record (record.malformed) instead of failing."""

    record_id: str
    submitter_org: str
    submitted_at_ms: int
    public_json: bytes
    """The record's public part: the event's canonical JSON (Event.public_json())."""
    event: Event | None = field(default=None, compare=False)
    malformed: str | None = None

    @classmethod
    def of(cls, record_id: str, submitter_org: str, submitted_at_ms: int,
           event: Event) -> ProvenanceEvent:
        return cls(record_id, submitter_org, submitted_at_ms, event.public_json(), event)

    @classmethod
    def from_public_json(cls, record_id: str, submitter_org: str, submitted_at_ms: int,
                         public_json: bytes) -> ProvenanceEvent:
        """A ledger record whose public part is an event's canonical JSON. Never raises: an
        unreadable part becomes `malformed`."""
        try:
            event = epcis.event_from_public_json(public_json)
        except FormatError as exc:
            return cls(record_id, submitter_org, submitted_at_ms, public_json, None, str(exc))
        return cls(record_id, submitter_org, submitted_at_ms, public_json, event)

    @classmethod
    def from_metadata(cls, record_id: str, subject_id: str, event_type: str,
                      submitter_org: str, submitted_at_ms: int, metadata: Mapping[str, str],
                      directory: Gs1Directory = EMPTY_DIRECTORY) -> ProvenanceEvent:
        """A legacy record (free-form metadata as the SDK wrote it before EPCIS) read as the
        ObjectEvent its shorthand means (formats/shorthand.py). Legacy records may lack a
        location; such an event has neither readPoint nor bizLocation (rule
        location.missing). A record the shorthand cannot express becomes `malformed`."""
        extra = {k: v for k, v in sorted(metadata.items()) if k not in LEGACY_KEYS}
        raw_q = metadata.get("quantity")
        try:
            quantity = None if raw_q is None else _whole(raw_q)
            location = metadata.get("location")
            event = epcis.object_event_from_shorthand(
                subject_id, event_type, metadata.get("custodian_from"),
                metadata.get("custodian_to"), location or LEGACY_NO_LOCATION, quantity,
                submitter_org=submitter_org, event_time_ms=submitted_at_ms,
                directory=directory, note=metadata.get("notes"),
                documents=[d for d in (metadata.get("documents") or "").split(",") if d],
                extensions={f"consortium:{k}": v for k, v in extra.items()
                            if _EXTENSION_NAME.fullmatch(k)})
        except FormatError as exc:
            legacy = canonical_json({"subject_id": subject_id, "event_type": event_type,
                                     "metadata": dict(metadata)}).encode()
            return cls(record_id, submitter_org, submitted_at_ms, legacy, None, str(exc))
        if not location:
            event = replace(event, biz_location=None)
        return cls(record_id, submitter_org, submitted_at_ms, event.public_json(), event)

    def to_dict(self) -> dict[str, Any]:
        try:
            event: Any = json.loads(self.public_json)
        except ValueError:
            event = self.public_json.decode(errors="replace")
        return {"record_id": self.record_id, "submitter_org": self.submitter_org,
                "submitted_at_ms": self.submitted_at_ms, "event": event}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProvenanceEvent:
        event = d["event"]
        data = event.encode() if isinstance(event, str) else canonical_json(event).encode()
        return cls.from_public_json(str(d["record_id"]), str(d["submitter_org"]),
                                    int(d["submitted_at_ms"]), data)


LEGACY_KEYS = frozenset({"location", "custodian_from", "custodian_to", "quantity",
                         "documents", "notes"})
LEGACY_NO_LOCATION = "urn:consortium:site:unknown"
"""Placeholder while building a legacy event without location; removed again at once."""
_EXTENSION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _whole(text: str) -> int:
    if not text.strip().isdigit():
        raise FormatError(f"quantity {text!r} is not a positive whole number")
    return int(text.strip())


@dataclass(frozen=True, slots=True)
class PatientRecordInput:
    """A patient record: public metadata plus, when the service may read it, the payload.

    `payload` is the decrypted FHIR R4 resource or Bundle (formats/fhir.py), or None when the
    submitter did not wrap the record key for the service: then only the metadata is screened.
    """

    record_id: str
    subject_id: str
    """Pseudonymous patient id."""
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: tuple[tuple[str, str], ...] = ()
    payload: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    ciphertext_sha256: str = ""
    """Hash of the record's ciphertext: binds the verdict to the record without putting a hash
    of the plaintext (a guessing oracle for small payloads) into a public verdict."""

    def payload_digest(self) -> str | None:
        """Plaintext digest for duplicate detection inside the service (never published)."""
        if self.payload is None:
            return None
        return hashlib.sha256(canonical_json(self.payload).encode()).hexdigest()

    def public_dict(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "subject_id": self.subject_id,
                "event_type": self.event_type, "submitter_org": self.submitter_org,
                "submitted_at_ms": self.submitted_at_ms, "metadata": dict(self.metadata),
                "ciphertext_sha256": self.ciphertext_sha256}

    def to_dict(self) -> dict[str, Any]:
        out = self.public_dict()
        out["payload"] = None if self.payload is None else dict(self.payload)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatientRecordInput:
        payload = d.get("payload")
        return cls(str(d["record_id"]), str(d["subject_id"]), str(d["event_type"]),
                   str(d["submitter_org"]), int(d["submitted_at_ms"]),
                   tuple(sorted((str(k), str(v)) for k, v in d.get("metadata", {}).items())),
                   None if payload is None else dict(payload),
                   str(d.get("ciphertext_sha256", "")))


@dataclass(frozen=True, slots=True)
class RecentSubmission:
    """A patient record the service saw recently (for duplicate and burst checks)."""

    record_id: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    payload_digest: str | None = None

    @classmethod
    def of(cls, record: PatientRecordInput) -> RecentSubmission:
        return cls(record.record_id, record.subject_id, record.event_type,
                   record.submitter_org, record.submitted_at_ms, record.payload_digest())


@dataclass(frozen=True, slots=True)
class Registry:
    """Parties and places the consortium knows besides its members' GS1 identities (operator
    data: partners such as a contract carrier, and their sites). Entries are names or
    identifiers (PGLN, SGLN, private ids). An empty set switches that check off."""

    known_orgs: frozenset[str] = frozenset()
    known_locations: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {"known_orgs": sorted(self.known_orgs),
                "known_locations": sorted(self.known_locations)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Registry:
        return cls(frozenset(d.get("known_orgs", ())), frozenset(d.get("known_locations", ())))


@dataclass(frozen=True, slots=True)
class RecordContext:
    """What a record is judged against.

    `history`: earlier provenance records sharing an identifier with this one (Event.
    identifiers(): the lot, the items, a pallet they were packed on), in ledger order.
    `recent`: patient records the service saw in the burst window (any subject). `directory`:
    the members' GS1 identities (which member a party, site or prefix is). `now_ms`: the
    service's clock (0 switches the future-date checks off)."""

    history: tuple[ProvenanceEvent, ...] = ()
    recent: tuple[RecentSubmission, ...] = ()
    registry: Registry = Registry()
    now_ms: int = 0
    directory: Gs1Directory = field(default=EMPTY_DIRECTORY, compare=False)


Record = ProvenanceEvent | PatientRecordInput


def canonical_json(data: Any) -> str:
    """One byte string per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The admission service's advice on one join request or record."""

    subject: str
    """The join request id or the record id."""
    task: Task
    decision: str
    """approve / reject / review (joins); ok / flag (records)."""
    risk: float
    reasons: tuple[str, ...]
    findings: tuple[Finding, ...]
    backend: str
    model: str
    model_sha256: str
    prompt_sha256: str
    input_sha256: str
    latency_ms: int
    model_decision: str | None = None
    """What the model itself answered (None: not asked, or no usable answer)."""
    model_error: str | None = None
    """Why the model's answer was not used (timeout, unparsable, inconsistent...)."""
    version: int = VERDICT_VERSION
    precedents: tuple[str, ...] = ()
    """The decided cases shown to the model (`id:sha256-prefix`, precedents.py)."""
    path: str = ""
    """How the verdict came about (triage.py): rules:certain, rules:clear, model:uncertain,
    model:free-text, model:sample, model:join, rules:model-busy:<reason>... ("" in verdicts
    written before issue 16)."""

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS[self.task]:
            raise ValueError(f"{self.task.value} verdicts decide one of "
                             f"{', '.join(DECISIONS[self.task])}; got {self.decision!r}")
        if not 0.0 <= self.risk <= 1.0:
            raise ValueError("risk must be within 0..1")

    @property
    def permissive(self) -> bool:
        return self.decision in ("approve", "ok")

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "subject": self.subject, "task": self.task.value,
                "decision": self.decision, "risk": self.risk, "reasons": list(self.reasons),
                "findings": [f.to_dict() for f in self.findings], "backend": self.backend,
                "model": self.model, "model_sha256": self.model_sha256,
                "prompt_sha256": self.prompt_sha256, "input_sha256": self.input_sha256,
                "latency_ms": self.latency_ms, "model_decision": self.model_decision,
                "model_error": self.model_error, "path": self.path,
                "precedents": list(self.precedents)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal verdicts give equal bytes."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> Verdict:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("version") != VERDICT_VERSION:
            raise ValueError("not a version-1 verdict")
        return cls(str(d["subject"]), Task(d["task"]), str(d["decision"]), float(d["risk"]),
                   tuple(str(r) for r in d["reasons"]),
                   tuple(Finding.from_dict(f) for f in d["findings"]), str(d["backend"]),
                   str(d["model"]), str(d["model_sha256"]), str(d["prompt_sha256"]),
                   str(d["input_sha256"]), int(d["latency_ms"]),
                   None if d.get("model_decision") is None else str(d["model_decision"]),
                   None if d.get("model_error") is None else str(d["model_error"]),
                   path=str(d.get("path", "")),
                   precedents=tuple(str(x) for x in d.get("precedents", ())))


def strictest(decisions: Sequence[str]) -> str:
    return max(decisions, key=lambda d: PERMISSIVENESS[d])
