"""Record submissions: what a client puts in a PBFT request's payload.

A submission carries public metadata (for queries and audits) in clear and the payload only as
ciphertext (see consortium/crypto/envelope.py). Its binary encoding is canonical (the codec's
Writer/Reader): a client signs these exact bytes, and every validator decodes them alike.

    submission = segments (consortium/pbft/payload.py), one item of a client's envelope:
        seg0 = public part = version:u8 | kind:text | subject_id:text | event_type:text
               | submitter_org:text | submitted_at_ms:u64 | metadata:[key:text value:text]
               | also:[text] | document:blob
        seg1 = ciphertext
        seg2.. = one per reader, sorted by org: org:text | wrapped key:blob

`subject_id` is the record's main subject (a product, lot or shipment; a pseudonymous patient);
`also` lists further subjects it concerns (an aggregation's children, a transformation's inputs)
so traces find it under each; `document` is a public structured document (a provenance record's
GS1 EPCIS event as canonical JSON), empty when the record has none.

The version byte doubles as the transaction type (transactions.py, TxType.RECORD). The
associated data of the payload encryption is the public part, so ciphertext cannot be
re-attached to other metadata. Keeping the ciphertext and each wrapped key in a segment of its
own lets a validator withhold or erase them while the request digest stays verifiable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from consortium.formats import cbv
from consortium.formats.epcis_consensus import check_event_at_consensus, event_from_public_json
from consortium.formats.errors import FormatError
from consortium.ledger.transactions import (
    CONTROL_CHARACTER,
    WRAPPED_KEY_BYTES,
    InvalidTransaction,
    key_segment,
    parse_key_segment,
)
from consortium.pbft.codec import Writer
from consortium.pbft.payload import encode_segments, split_segments

SUBMISSION_VERSION = 1
TEXT_BYTES_MAX = 256
METADATA_ENTRIES_MAX = 32
METADATA_VALUE_BYTES_MAX = 1024
READERS_MAX = 64
SUBJECTS_MAX = 64
"""Further subjects one record may name (`also`)."""
DOCUMENT_BYTES_MAX = 32 << 10
"""Largest public document (an EPCIS event's canonical JSON)."""


class RecordKind(enum.StrEnum):
    PROVENANCE = "provenance"
    PATIENT = "patient"


PROVENANCE_EVENTS = frozenset({"manufactured", "shipped", "received", "inspected", "recalled",
                               "destroyed"})
"""Event types of a legacy provenance record (free-form metadata, no public document)."""
EPCIS_EVENT_TYPES = cbv.BIZ_STEPS
"""Event types of a provenance record whose public document is an EPCIS event: its CBV bizStep
(blocks.py checks at consensus time that the document says the same)."""
_PROVENANCE_TYPES = PROVENANCE_EVENTS | EPCIS_EVENT_TYPES
PATIENT_RECORD_TYPES = frozenset({"lab-result", "prescription", "encounter", "imaging"})


class InvalidRecord(InvalidTransaction):
    """A submission that breaks the record rules (the submitter's fault)."""


def _check_text(name: str, value: str) -> None:
    """No control characters (NUL cannot even be stored in PostgreSQL text): a field that
    could not be stored faithfully must be refused by every validator alike."""
    if CONTROL_CHARACTER.search(value):
        raise InvalidRecord(f"{name} contains a control character")


@dataclass(frozen=True, slots=True)
class Submission:
    kind: RecordKind
    subject_id: str
    """Product or lot id (provenance) or pseudonymous patient id (patient)."""
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: tuple[tuple[str, str], ...]
    """Public fields: location, custodian_from, custodian_to, quantity, document hashes..."""
    ciphertext: bytes
    wrapped_keys: tuple[tuple[str, bytes], ...]
    also: tuple[str, ...] = ()
    """Further subjects the record concerns (sorted, distinct, not the main subject)."""
    document: bytes = b""
    """A public document (canonical JSON), empty when none."""

    def __post_init__(self) -> None:
        allowed = _PROVENANCE_TYPES if self.kind is RecordKind.PROVENANCE \
            else PATIENT_RECORD_TYPES
        if self.event_type not in allowed:
            raise InvalidRecord(f"{self.kind.value} records take event types "
                                f"{', '.join(sorted(allowed))}; got {self.event_type!r}")
        for name in ("subject_id", "submitter_org"):
            value = getattr(self, name)
            if not 1 <= len(value.encode()) <= TEXT_BYTES_MAX:
                raise InvalidRecord(f"{name} must be 1 to {TEXT_BYTES_MAX} bytes")
            _check_text(name, value)
        if not 0 <= self.submitted_at_ms < 1 << 63:
            raise InvalidRecord("submitted_at_ms out of range")
        keys = [k for k, _ in self.metadata]
        if keys != sorted(set(keys)) or len(keys) > METADATA_ENTRIES_MAX:
            raise InvalidRecord(f"metadata keys must be unique, sorted, at most "
                                f"{METADATA_ENTRIES_MAX}")
        for k, v in self.metadata:
            if not 1 <= len(k.encode()) <= 64 or len(v.encode()) > METADATA_VALUE_BYTES_MAX:
                raise InvalidRecord(f"metadata entry {k!r} is too long")
            _check_text("metadata key", k)
            _check_text(f"metadata {k!r}", v)
        orgs = [o for o, _ in self.wrapped_keys]
        object.__setattr__(self, "_readers", tuple(orgs))
        if orgs != sorted(set(orgs)) or not 1 <= len(orgs) <= READERS_MAX:
            raise InvalidRecord(f"wrapped keys: 1 to {READERS_MAX} distinct reader orgs, sorted")
        if any(len(key) != WRAPPED_KEY_BYTES for _, key in self.wrapped_keys):
            raise InvalidRecord(f"a wrapped key is {WRAPPED_KEY_BYTES} bytes")
        for org in orgs:
            if not 1 <= len(org.encode()) <= TEXT_BYTES_MAX:
                raise InvalidRecord(f"reader org names are 1 to {TEXT_BYTES_MAX} bytes")
            _check_text("reader org", org)
        if self.submitter_org not in orgs:
            raise InvalidRecord("the submitter's organisation must be among the readers")
        check_subjects(self.subject_id, self.also)
        if len(self.document) > DOCUMENT_BYTES_MAX:
            raise InvalidRecord(f"the public document is over {DOCUMENT_BYTES_MAX} bytes")

    _readers: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    @property
    def readers(self) -> tuple[str, ...]:
        """The reader organisations, in order (computed once, at construction)."""
        return self._readers

    def metadata_dict(self) -> dict[str, str]:
        return dict(self.metadata)

    @property
    def subjects(self) -> tuple[str, ...]:
        return (self.subject_id, *self.also)

    def associated_data(self) -> bytes:
        return public_part(self.kind, self.subject_id, self.event_type, self.submitter_org,
                           self.submitted_at_ms, self.metadata, self.also, self.document)

    def encode(self) -> bytes:
        return encode_segments([self.associated_data(), self.ciphertext,
                                *(key_segment(org, key) for org, key in self.wrapped_keys)])


def document_problem(sub: Submission, block_ms: int, clock_skew_ms: int) -> str:
    """Why a record's public EPCIS event must be refused, judged from the record alone and the
    block's time (the same on every validator: formats/epcis_consensus.py reads EPC URNs only,
    no library, no clock); "" when it may stand. Checked: a provenance record is either legacy
    (a legacy event type, no document) or EPCIS (its event type is the document's bizStep, its
    subjects are exactly the event's identifiers, so the ledger indexes what the event says);
    the event is canonical and valid (GS1 identifiers, CBV bizStep and disposition and their
    consistency, required fields); it is not later than the block time plus the clock skew
    (`block_ms` 0: no block time to judge against, as the time rules above).
    What needs history or judgement (custody, quantities, recalls) is the admission
    service's."""
    if not sub.document:
        if sub.event_type in EPCIS_EVENT_TYPES:
            return (f"event type {sub.event_type!r} is an EPCIS bizStep: the record needs its "
                    "event as public document")
        return ""
    if sub.kind is not RecordKind.PROVENANCE:
        return "only provenance records carry a public document (an EPCIS event)"
    try:
        event = check_event_at_consensus(sub.document, block_ms, clock_skew_ms) if block_ms \
            else event_from_public_json(sub.document)
    except FormatError as exc:
        return f"EPCIS event: {str(exc).removeprefix('event 0: ')}"
    if sub.event_type != event.biz_step:
        return (f"event type {sub.event_type!r} differs from the event's bizStep "
                f"{event.biz_step!r}")
    ids = event.identifiers()
    if sub.subjects != ids:
        return ("the record's subjects are not the event's identifiers (main subject the "
                "first, the others in `also`, sorted)")
    return ""


def check_subjects(subject_id: str, also: tuple[str, ...]) -> None:
    if list(also) != sorted(set(also)) or subject_id in also or len(also) > SUBJECTS_MAX:
        raise InvalidRecord(f"further subjects must be distinct, sorted, other than the main "
                            f"subject, at most {SUBJECTS_MAX}")
    for s in also:
        if not 1 <= len(s.encode()) <= TEXT_BYTES_MAX:
            raise InvalidRecord(f"a subject id is 1 to {TEXT_BYTES_MAX} bytes")
        _check_text("subject id", s)


def public_part(kind: RecordKind, subject_id: str, event_type: str, submitter_org: str,
                submitted_at_ms: int, metadata: tuple[tuple[str, str], ...],
                also: tuple[str, ...] = (), document: bytes = b"") -> bytes:
    w = Writer()
    w.u8(SUBMISSION_VERSION)
    w.text(kind.value)
    w.text(subject_id)
    w.text(event_type)
    w.text(submitter_org)
    w.u64(submitted_at_ms)
    w.u32(len(metadata))
    for k, v in metadata:
        w.text(k)
        w.text(v)
    w.u32(len(also))
    for a in also:
        w.text(a)
    w.blob(document)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class PublicRecord:
    """A record's public part (segment 0): what anyone with the block can see."""

    kind: RecordKind
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: tuple[tuple[str, str], ...]
    also: tuple[str, ...] = ()
    document: bytes = b""

    @property
    def subjects(self) -> tuple[str, ...]:
        return (self.subject_id, *self.also)


class _Malformed(Exception):
    """Internal: the bytes end early or hold an undecodable field."""


def _fields(b: bytes) -> tuple[str, str, str, str, int, tuple[tuple[str, str], ...],
                              tuple[str, ...], bytes]:
    """The public part's fields, read with slices and `int.from_bytes` (every validator
    decodes every record once: the generic Reader's per-field calls and copies made this a
    third of a validator's time). Same format and the same refusals as `codec.Reader`:
    lengths are bounds-checked, text is strict UTF-8, lists cannot claim more items than
    bytes remain, no trailing bytes."""
    size = len(b)
    pos = 1

    def text() -> str:
        nonlocal pos
        end = pos + 2 + int.from_bytes(b[pos:pos + 2], "big")
        if pos + 2 > size or end > size:
            raise _Malformed("message is truncated")
        value = b[pos + 2:end].decode()
        pos = end
        return value

    def count() -> int:
        nonlocal pos
        if pos + 4 > size:
            raise _Malformed("message is truncated")
        n = int.from_bytes(b[pos:pos + 4], "big")
        pos += 4
        if n > size - pos:
            raise _Malformed("list length exceeds the message")
        return n

    kind, subject_id, event_type, org = text(), text(), text(), text()
    if pos + 8 > size:
        raise _Malformed("message is truncated")
    submitted_at_ms = int.from_bytes(b[pos:pos + 8], "big")
    pos += 8
    metadata = tuple((text(), text()) for _ in range(count()))
    also = tuple(text() for _ in range(count()))
    if pos + 4 > size:
        raise _Malformed("message is truncated")
    end = pos + 4 + int.from_bytes(b[pos:pos + 4], "big")
    if end > size:
        raise _Malformed("message is truncated")
    document = b[pos + 4:end]
    if end != size:
        raise _Malformed("trailing bytes after message")
    return kind, subject_id, event_type, org, submitted_at_ms, metadata, also, document


def _read_public(seg0: bytes) -> tuple[RecordKind, str, str, str, int,
                                       tuple[tuple[str, str], ...], tuple[str, ...], bytes]:
    if not seg0 or seg0[0] != SUBMISSION_VERSION:
        raise InvalidRecord("unsupported submission version")
    try:
        kind, *rest = _fields(seg0)
        return (RecordKind(kind), *rest)  # type: ignore[return-value]
    except UnicodeDecodeError as exc:
        raise InvalidRecord("malformed submission: text is not UTF-8") from exc
    except (_Malformed, ValueError) as exc:  # ValueError: an unknown kind
        raise InvalidRecord(f"malformed submission: {exc}") from exc


def decode_public(seg0: bytes) -> PublicRecord:
    """Parse a submission's public part. Raises InvalidRecord."""
    return PublicRecord(*_read_public(seg0))


def decode_submission(data: bytes) -> Submission:
    """Parse and validate. Raises InvalidRecord (malformed bytes included)."""
    return submission_from_segments(split_segments(data))


def submission_from_segments(segments: list[bytes] | None) -> Submission:
    """`decode_submission` for an item already split into segments."""
    if segments is None or len(segments) < 3:
        raise InvalidRecord("malformed submission: expected a public part, a ciphertext and "
                            "at least one wrapped key")
    kind, subject_id, event_type, org, at_ms, metadata, also, document = _read_public(
        segments[0])
    try:
        wrapped = tuple(parse_key_segment(s) for s in segments[2:])
    except InvalidTransaction as exc:
        raise InvalidRecord(str(exc)) from exc
    return Submission(kind, subject_id, event_type, org, at_ms, metadata, segments[1], wrapped,
                      also, document)
