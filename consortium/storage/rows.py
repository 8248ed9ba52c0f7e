"""What the store hands back: plain, frozen rows (no psycopg types leak out of storage/)."""

from __future__ import annotations

from dataclasses import dataclass

from consortium.ledger.blocks import Screening
from consortium.ledger.membership import Vote


class StoreError(Exception):
    """Base class of the storage layer's own errors."""


class WrongDatabase(StoreError):
    """The database belongs to another chain or another replica."""


class BlockRejected(StoreError):
    """A block that does not extend the stored chain (wrong height, prev_hash or chain id).
    Nothing of it was written."""


class StoreCorrupted(StoreError):
    """Stored bytes that do not decode: the database was damaged or edited."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or refuses writes (down, disk full): the validator says
    so (NOT_SERVING) and retries; nothing was written."""


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    index: int
    client_id: str
    nonce: int
    kind: int
    signature: bytes
    payload_digest: bytes
    status: str
    reason: str
    first_entry: int
    entry_count: int
    raw: bytes | None


@dataclass(frozen=True, slots=True)
class StoredItem:
    data: bytes
    """The item's bytes, or its `ItemView` encoding when `redacted`."""
    redacted: bool
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    """`BlockHeader.encode()`, byte-exact."""
    envelopes: tuple[StoredEnvelope, ...]
    items: tuple[StoredItem, ...]
    """Every entry's item in block order (envelope by envelope)."""
    pre_prepare: bytes
    """Wire bytes of the signed proposal header."""
    certificate: tuple[bytes, ...]
    """Wire bytes of the 2f+1 signed COMMITs."""


@dataclass(frozen=True, slots=True)
class ReceiptMaterial:
    """What one entry's receipt is built from, without reading the whole block: the block's
    header and certificate, every request's digest parts (for the request's proof in the
    block), and the items of the entry's own envelope (for the item's proof in it)."""

    header: bytes
    certificate: tuple[bytes, ...]
    envelopes: tuple[StoredEnvelope, ...]
    envelope: int
    items: tuple[StoredItem, ...]
    """The items of the entry's envelope, in order."""
    item_index: int


@dataclass(frozen=True, slots=True)
class EntryRef:
    """Where an entry is: enough to build its receipt from the block."""

    height: int
    idx: int
    envelope: int
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class Erasure:
    height: int
    by_org: str
    at_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    height: int
    idx: int
    envelope: int
    kind: str
    subject_id: str
    also: tuple[str, ...]
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: dict[str, str]
    item: bytes
    """The record's item as stored (bytes, or an `ItemView` encoding when `redacted`)."""
    redacted: bool
    readers: tuple[str, ...]
    """Current readers (sorted): those the record was wrapped for, plus grants, minus
    revocations; empty once erased."""
    status: str
    reason: str
    erasure: Erasure | None = None
    screening: str = Screening.ACCEPTED


@dataclass(frozen=True, slots=True)
class AccessRow:
    height: int
    idx: int
    record_id: str
    client_id: str
    org: str
    purpose: str
    granted: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """An entry of a record's history: the record itself or a transaction that acted on it."""

    height: int
    idx: int
    record_id: str
    target_record_id: str | None
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """What a validator stores about one record beside its item, as an auditor compares it
    with the signed item: its query columns and current readers."""

    height: int
    idx: int
    record_id: str
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: dict[str, str]
    readers: tuple[str, ...]
    erased_height: int | None


@dataclass(frozen=True, slots=True)
class StoredProposal:
    proposal_id: str
    kind: str
    replica_id: int
    org: str
    name: str
    peer_address: str
    client_address: str
    statement: str
    reason: str
    status: str
    height: int
    decided_height: int | None
    validator_key: bytes
    client_key: bytes
    encryption_key: bytes
    verdicts: list[tuple[str, int]]
    """(decision, risk in thousandths) of the admission service's verdicts, oldest first."""
    votes: list[Vote]
    sponsor: str
    """The member that sponsored a join request ("" for a removal)."""
    recorded_ms: int
    """The time of the block that recorded it (a pending join request expires from there)."""
    gs1: bytes = b""
    """A join request's GS1 identity (`MemberGs1.canonical()` bytes; empty: none)."""
