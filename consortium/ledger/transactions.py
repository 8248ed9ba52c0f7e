"""Ledger transactions and request views.

Every application request's payload is segmented (consortium/pbft/payload.py). Segment 0 is
the transaction's public header and always stays visible; its first byte names the type.
Later segments carry what may be withheld or erased: a record's ciphertext and its key wrapped
for each reader, or the key a grant wraps for a new reader.

    record  seg0 = submission public part (type 1 = SUBMISSION_VERSION, records.py)
            seg1 = ciphertext, seg2.. = key_segment(org, wrapped key) sorted by org
    grant   seg0 = 2 | record_id:32 | org:text        seg1 = key_segment(org, wrapped key)
    revoke  seg0 = 3 | record_id:32 | org:text
    erase   seg0 = 4 | record_id:32 | subject_id:text | reason:text
    access  seg0 = 5 | record_id:32 | purpose:text | requested_at_ms:u64
    verdict seg0 = 6 | record_id:32 | decision:text | risk_milli:u16   seg1 = verdict JSON
    review  seg0 = 7 | record_id:32 | accept:u8
    join    seg0 = 8 | org:text | name:text | replica_id:u32 | validator_key:32 | client_key:32
                   | encryption_key:32 | peer_address:text | client_address:text
                   | sponsor:text | sponsorship:64 (zeros: none)
            seg1 = statement (UTF-8)
    vote    seg0 = 9 | proposal_id:32 | approve:u8 | from_epoch:u32 | approval:64
    remove  seg0 = 10 | replica_id:u32 | reason:text

Withheld segments (an erased payload shown by its hash) are handled item by item: see
`ledger.items`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.signing import SIGNATURE_BYTES, Signer
from consortium.formats.directory import MemberGs1
from consortium.formats.errors import FormatError
from consortium.pbft.codec import DecodeError, Reader, Writer
from consortium.pbft.payload import (
    encode_segments,
)

TEXT_BYTES_MAX = 256
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL: one regex search instead of a Python loop per
character (every text field of every record is checked on every validator)."""
WRAPPED_KEY_BYTES = 80
"""A 32-byte record key in a libsodium sealed box (32-byte ephemeral key + 16-byte MAC)."""


class TxType(enum.IntEnum):
    RECORD = 1
    GRANT = 2
    REVOKE = 3
    ERASE = 4
    ACCESS = 5
    VERDICT = 6
    REVIEW_VOTE = 7
    JOIN = 8
    MEMBER_VOTE = 9
    REMOVE = 10


class InvalidTransaction(ValueError):
    """A payload that breaks the transaction rules (the submitter's fault)."""


def check_text(name: str, value: str, *, allow_empty: bool = False) -> None:
    """Bounded, no control characters (NUL cannot even be stored in PostgreSQL text): a field
    that could not be stored faithfully must be refused by every validator alike."""
    size = len(value.encode())
    if size > TEXT_BYTES_MAX or (size == 0 and not allow_empty):
        raise InvalidTransaction(f"{name} must be {0 if allow_empty else 1} to "
                                 f"{TEXT_BYTES_MAX} bytes")
    if CONTROL_CHARACTER.search(value):
        raise InvalidTransaction(f"{name} contains a control character")


def key_segment(org: str, wrapped_key: bytes) -> bytes:
    w = Writer()
    w.text(org)
    w.blob(wrapped_key)
    return w.getvalue()


def parse_key_segment(segment: bytes) -> tuple[str, bytes]:
    """`key_segment`'s inverse (org:text | key:blob), read with slices: it runs for every
    reader of every record on every validator."""
    size = len(segment)
    end = 2 + int.from_bytes(segment[:2], "big")
    if size < 2 or end + 4 > size:
        raise InvalidTransaction("malformed wrapped key: message is truncated")
    try:
        org = segment[2:end].decode()
    except UnicodeDecodeError as exc:
        raise InvalidTransaction("malformed wrapped key: text is not UTF-8") from exc
    if end + 4 + int.from_bytes(segment[end:end + 4], "big") != size:
        raise InvalidTransaction("malformed wrapped key: its length does not match")
    key = segment[end + 4:]
    check_text("reader org", org)
    if len(key) != WRAPPED_KEY_BYTES:
        raise InvalidTransaction(f"a wrapped key is {WRAPPED_KEY_BYTES} bytes")
    return org, key


# ------------------------------------------------------------------------------ transactions

@dataclass(frozen=True, slots=True)
class Grant:
    """Let `org` read a record: the record key wrapped for it (by a current reader)."""

    record_id: str
    org: str
    wrapped_key: bytes

    def segments(self) -> list[bytes]:
        return [_header(TxType.GRANT, self.record_id, self.org),
                key_segment(self.org, self.wrapped_key)]


@dataclass(frozen=True, slots=True)
class Revoke:
    """Remove `org`'s wrapped key: no future reads through the ledger (what it already read,
    it keeps; docs/audit.md)."""

    record_id: str
    org: str

    def segments(self) -> list[bytes]:
        return [_header(TxType.REVOKE, self.record_id, self.org)]


@dataclass(frozen=True, slots=True)
class Erase:
    """Right to be forgotten: delete every wrapped key of a patient record (and, by policy,
    its ciphertext) on every validator. `subject_id` must be the record's patient id, so the
    patient's history shows the erasure."""

    record_id: str
    subject_id: str
    reason: str

    def segments(self) -> list[bytes]:
        return [_header(TxType.ERASE, self.record_id, self.subject_id, self.reason)]


@dataclass(frozen=True, slots=True)
class Access:
    """A reader announces that it reads a patient record's key: validators release the key
    only against a committed Access, so every read is on the ledger."""

    record_id: str
    purpose: str
    requested_at_ms: int
    """The reader's clock when it asked (signed): validators release the key only while this
    is within the genesis policy's access_ttl_ms of their own clock."""

    def segments(self) -> list[bytes]:
        w = Writer()
        w.fixed(_header(TxType.ACCESS, self.record_id, self.purpose))
        w.u64(self.requested_at_ms)
        return [w.getvalue()]


VERDICT_JSON_BYTES_MAX = 16 << 10
SCREENING_DECISIONS = frozenset({"ok", "flag"})
JOIN_DECISIONS = frozenset({"approve", "reject", "review"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The admission service's advice on a record (ok / flag), with the full verdict as
    canonical JSON (consortium/admission/model.py). Only the service named in genesis may
    submit one; it only moves a record out of pending-screening (docs/admission.md)."""

    record_id: str
    decision: str
    risk_milli: int
    verdict_json: str

    def segments(self) -> list[bytes]:
        w = Writer()
        w.fixed(_header(TxType.VERDICT, self.record_id, self.decision))
        w.u16(self.risk_milli)
        return [w.getvalue(), self.verdict_json.encode()]


@dataclass(frozen=True, slots=True)
class ReviewVote:
    """A validator's vote on a quarantined record: 2f+1 accepts accept it, 2f+1 rejects
    reject it. Signed as the validator's own client (`validator-<id>`, its validator key)."""

    record_id: str
    accept: bool

    def segments(self) -> list[bytes]:
        w = Writer()
        w.fixed(_header(TxType.REVIEW_VOTE, self.record_id))
        w.u8(1 if self.accept else 0)
        return [w.getvalue()]


RecordTx = Grant | Revoke | Erase | Access | Verdict | ReviewVote
"""Transactions that act on an existing record."""


def _header(kind: TxType, record_id: str, *texts: str) -> bytes:
    w = Writer()
    w.u8(int(kind))
    w.fixed(_record_id_bytes(record_id))
    for t in texts:
        w.text(t)
    return w.getvalue()


def _record_id_bytes(record_id: str) -> bytes:
    if len(record_id) != 2 * DIGEST_BYTES or record_id != record_id.lower():
        raise InvalidTransaction("a record id is 64 lowercase hex digits")
    try:
        return bytes.fromhex(record_id)
    except ValueError as exc:
        raise InvalidTransaction("a record id is 64 lowercase hex digits") from exc


def encode_tx(tx: RecordTx) -> bytes:
    return encode_segments(tx.segments())


def tx_type(seg0: bytes) -> TxType:
    if not seg0:
        raise InvalidTransaction("empty transaction header")
    try:
        return TxType(seg0[0])
    except ValueError as exc:
        raise InvalidTransaction(f"unknown transaction type {seg0[0]}") from exc


def decode_record_tx(segments: list[bytes | None]) -> RecordTx:
    """Parse a grant/revoke/erase/access from its segments (a withheld segment is None).
    Raises InvalidTransaction."""
    if not segments or segments[0] is None:
        raise InvalidTransaction("transaction header missing")
    kind = tx_type(segments[0])
    rd = Reader(segments[0])
    try:
        rd.u8()
        record_id = rd.fixed(DIGEST_BYTES).hex()
        texts = [rd.text() for _ in range({TxType.ERASE: 2, TxType.REVIEW_VOTE: 0}.get(
            kind, 1))]
        at_ms = rd.u64() if kind is TxType.ACCESS else 0
        risk_milli = rd.u16() if kind is TxType.VERDICT else 0
        accept = rd.u8() if kind is TxType.REVIEW_VOTE else 0
        rd.end()
    except DecodeError as exc:
        raise InvalidTransaction(f"malformed {kind.name.lower()} transaction: {exc}") from exc
    expected_segments = 2 if kind in (TxType.GRANT, TxType.VERDICT) else 1
    if len(segments) != expected_segments:
        raise InvalidTransaction(f"a {kind.name.lower()} transaction has {expected_segments} "
                                 "segment(s)")
    if kind is TxType.GRANT:
        check_text("org", texts[0])
        key_seg = segments[1]
        if key_seg is None:  # withheld or erased: the grant's effect is gone with it
            return Grant(record_id, texts[0], b"")
        org, key = parse_key_segment(key_seg)
        if org != texts[0]:
            raise InvalidTransaction("the grant's key is wrapped for another org")
        return Grant(record_id, org, key)
    if kind is TxType.REVOKE:
        check_text("org", texts[0])
        return Revoke(record_id, texts[0])
    if kind is TxType.ERASE:
        check_text("subject_id", texts[0])
        check_text("reason", texts[1], allow_empty=True)
        return Erase(record_id, texts[0], texts[1])
    if kind is TxType.ACCESS:
        check_text("purpose", texts[0], allow_empty=True)
        if at_ms >= 1 << 63:
            raise InvalidTransaction("requested_at_ms out of range")
        return Access(record_id, texts[0], at_ms)
    if kind is TxType.VERDICT:
        if texts[0] not in SCREENING_DECISIONS | JOIN_DECISIONS:
            raise InvalidTransaction("a verdict decides ok or flag (a record) or approve, "
                                     f"reject or review (a join request), not {texts[0]!r}")
        if risk_milli > 1000:
            raise InvalidTransaction("risk is 0..1000 thousandths")
        verdict_json = segments[1]
        if verdict_json is None:  # withheld (a block view): the decision is in the header
            return Verdict(record_id, texts[0], risk_milli, "")
        if len(verdict_json) > VERDICT_JSON_BYTES_MAX:
            raise InvalidTransaction(f"verdict JSON over {VERDICT_JSON_BYTES_MAX} bytes")
        try:
            text = verdict_json.decode()
        except UnicodeDecodeError as exc:
            raise InvalidTransaction("verdict JSON is not UTF-8") from exc
        return Verdict(record_id, texts[0], risk_milli, text)
    if kind is TxType.REVIEW_VOTE:
        if accept not in (0, 1):
            raise InvalidTransaction("a review vote accepts (1) or rejects (0)")
        return ReviewVote(record_id, accept == 1)
    raise InvalidTransaction(f"{kind.name.lower()} is not a record transaction")


# ---------------------------------------------------------------------------- governance

ORG_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A new organisation's id: short, lowercase, usable as a DNS label and a directory name."""
STATEMENT_BYTES_MAX = 4096
APPROVAL_BYTES = SIGNATURE_BYTES


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """An organisation asks to join and run validator `replica_id`. Signed by the applicant's
    own validator key (client id `applicant_client_id(validator_key)`), which proves it holds
    the key it asks the consortium to trust. The statement is the applicant's own words: data
    for the reviewers, never instructions.

    A pending request holds one of the few slots the ledger keeps for votes, so it costs a
    member's word: `sponsorship` is the signature of one of `sponsor`'s client keys over
    `sponsorship_signing_bytes` (what identifies the application). It is in the public segment
    because every validator checks it, at admission and at execution."""

    org: str
    name: str
    replica_id: int
    validator_key: bytes
    client_key: bytes
    encryption_key: bytes
    peer_address: str
    client_address: str
    statement: str
    sponsor: str = ""
    """The member organisation that vouches for the applicant ("" : none, refused)."""
    sponsorship: bytes = b""
    """The sponsor's client-key signature (64 bytes; empty: none)."""
    gs1: bytes = b""
    """The applicant's GS1 identity (company prefixes, PGLNs, SGLNs of its sites) as
    `formats.directory.MemberGs1.canonical()` bytes; empty: none registered. Public, so the
    custody rules can tell which member an EPCIS party or location is once it is admitted."""

    def segments(self) -> list[bytes]:
        w = Writer()
        w.u8(int(TxType.JOIN))
        w.text(self.org)
        w.text(self.name)
        w.u32(self.replica_id)
        w.fixed(self.validator_key)
        w.fixed(self.client_key)
        w.fixed(self.encryption_key)
        w.text(self.peer_address)
        w.text(self.client_address)
        w.text(self.sponsor)
        w.fixed(self.sponsorship or bytes(SIGNATURE_BYTES))
        if self.gs1:  # a trailing optional field: requests without one encode as before
            w.blob(self.gs1)
        return [w.getvalue(), self.statement.encode()]


def sponsorship_signing_bytes(chain_id: bytes, tx: JoinRequest) -> bytes:
    """What a sponsor signs: who applies (org id and the name members see), for which
    validator id, with which keys, sponsored by whom, on which chain. Not the endpoints (an
    applicant may move its servers without asking again) nor the statement (the applicant's
    own words, which a block view may withhold)."""
    parts = [chain_id, tx.sponsor.encode(), tx.org.encode(), tx.name.encode(),
             tx.replica_id.to_bytes(4, "big"), tx.validator_key, tx.client_key,
             tx.encryption_key]
    if tx.gs1:  # the sponsor vouches for the GS1 identity too
        parts.append(tx.gs1)
    return tagged_hash(b"consortium/join-sponsorship", *parts)


def sponsor_join(tx: JoinRequest, sponsor: str, signer: Signer, chain_id: bytes) -> JoinRequest:
    """`tx` sponsored by `sponsor`, signed with `signer` (one of the sponsor's client keys)."""
    named = replace(tx, sponsor=sponsor, sponsorship=b"")
    return replace(named, sponsorship=signer.sign(sponsorship_signing_bytes(chain_id, named)))


@dataclass(frozen=True, slots=True)
class MemberVote:
    """A validator's vote on a membership proposal (a join or a removal), signed as its own
    client `validator-<id>`. An approval also carries the validator's replica-key signature
    over the reconfiguration it approves (`reconfiguration_signing_bytes(chain, from_epoch,
    new members)`): 2f+1 of them are the quorum approval the consensus layer requires, so the
    validator-set change assembles itself from committed votes."""

    proposal_id: str
    approve: bool
    from_epoch: int
    approval: bytes
    """64-byte signature for an approval; empty for a rejection."""

    def segments(self) -> list[bytes]:
        w = Writer()
        w.fixed(_header(TxType.MEMBER_VOTE, self.proposal_id))
        w.u8(1 if self.approve else 0)
        w.u32(self.from_epoch)
        w.fixed(self.approval if self.approve else bytes(APPROVAL_BYTES))
        return [w.getvalue()]


@dataclass(frozen=True, slots=True)
class RemoveRequest:
    """A current validator proposes removing member `replica_id` (voted on like a join)."""

    replica_id: int
    reason: str

    def segments(self) -> list[bytes]:
        w = Writer()
        w.u8(int(TxType.REMOVE))
        w.u32(self.replica_id)
        w.text(self.reason)
        return [w.getvalue()]


GovernanceTx = JoinRequest | MemberVote | RemoveRequest
GOVERNANCE_TYPES = frozenset({TxType.JOIN, TxType.MEMBER_VOTE, TxType.REMOVE})
APPLICANT_PREFIX = "applicant-"


def applicant_client_id(validator_key: bytes) -> str:
    """The self-certifying client id a join request is signed under: the key is in the id, so
    any validator can check the signature before the applicant is known to anyone."""
    return APPLICANT_PREFIX + validator_key.hex()


def applicant_key(client_id: str) -> bytes | None:
    """The key of an applicant client id, None for any other id."""
    if not client_id.startswith(APPLICANT_PREFIX):
        return None
    raw = client_id.removeprefix(APPLICANT_PREFIX)
    if len(raw) != 64 or raw != raw.lower():
        return None
    try:
        return bytes.fromhex(raw)
    except ValueError:
        return None


def encode_governance_tx(tx: GovernanceTx) -> bytes:
    return encode_segments(tx.segments())


def _check_statement(raw: bytes) -> str:
    if not 1 <= len(raw) <= STATEMENT_BYTES_MAX:
        raise InvalidTransaction(f"a statement is 1 to {STATEMENT_BYTES_MAX} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidTransaction("the statement is not UTF-8") from exc
    if any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text):
        raise InvalidTransaction("the statement contains a control character")
    return text


def _check_gs1(org: str, data: bytes, present: bool) -> None:
    """A join request's GS1 identity: absent, or `MemberGs1.canonical()` bytes (never an
    empty blob: one request, one encoding)."""
    if present and not data:
        raise InvalidTransaction("an empty GS1 identity is written by leaving it out")
    if data:
        try:
            MemberGs1.from_canonical(org, data)
        except FormatError as exc:
            raise InvalidTransaction(f"GS1 identity: {exc}") from None


def decode_governance_tx(segments: list[bytes | None]) -> GovernanceTx:
    """Parse a join request, member vote or removal proposal. Raises InvalidTransaction."""
    if not segments or segments[0] is None:
        raise InvalidTransaction("transaction header missing")
    kind = tx_type(segments[0])
    rd = Reader(segments[0])
    try:
        rd.u8()
        if kind is TxType.JOIN:
            org, name, replica_id = rd.text(), rd.text(), rd.u32()
            keys = [rd.fixed(32) for _ in range(3)]
            peer, client = rd.text(), rd.text()
            sponsor, sponsorship = rd.text(), rd.fixed(SIGNATURE_BYTES)
            has_gs1 = not rd.at_end()
            gs1 = rd.blob() if has_gs1 else b""
            rd.end()
            if len(segments) != 2:
                raise InvalidTransaction("a join request has 2 segments")
            if not ORG_ID_PATTERN.fullmatch(org):
                raise InvalidTransaction("an organisation id is 1 to 32 characters of a-z, "
                                         "0-9 and '-', starting with a letter or digit")
            check_text("name", name)
            check_text("peer_address", peer)
            check_text("client_address", client)
            check_text("sponsor", sponsor, allow_empty=True)
            if not sponsor and sponsorship != bytes(SIGNATURE_BYTES):
                raise InvalidTransaction("a sponsorship without a sponsor")
            if not 0 <= replica_id < 1 << 16:
                raise InvalidTransaction("replica id out of range")
            raw = segments[1]
            statement = "" if raw is None else _check_statement(raw)
            _check_gs1(org, gs1, present=has_gs1)
            return JoinRequest(org, name, replica_id, keys[0], keys[1], keys[2], peer, client,
                               statement, sponsor,
                               b"" if sponsorship == bytes(SIGNATURE_BYTES) else sponsorship,
                               gs1)
        if kind is TxType.MEMBER_VOTE:
            proposal_id = rd.fixed(DIGEST_BYTES).hex()
            approve, from_epoch, approval = rd.u8(), rd.u32(), rd.fixed(APPROVAL_BYTES)
            rd.end()
            if len(segments) != 1:
                raise InvalidTransaction("a member vote has 1 segment")
            if approve not in (0, 1):
                raise InvalidTransaction("a member vote approves (1) or rejects (0)")
            if not approve and approval != bytes(APPROVAL_BYTES):
                raise InvalidTransaction("a rejection carries no approval (zeros)")
            return MemberVote(proposal_id, approve == 1, from_epoch,
                              approval if approve else b"")
        if kind is TxType.REMOVE:
            replica_id, reason = rd.u32(), rd.text()
            rd.end()
            if len(segments) != 1:
                raise InvalidTransaction("a removal proposal has 1 segment")
            check_text("reason", reason, allow_empty=True)
            return RemoveRequest(replica_id, reason)
    except DecodeError as exc:
        raise InvalidTransaction(f"malformed {kind.name.lower()} transaction: {exc}") from exc
    raise InvalidTransaction(f"{kind.name.lower()} is not a governance transaction")


Tx = RecordTx | GovernanceTx


def decode_tx(segments: list[bytes | None]) -> Tx:
    """Any non-record transaction, by its type byte. Raises InvalidTransaction."""
    if segments and segments[0] and segments[0][0] in GOVERNANCE_TYPES:
        return decode_governance_tx(segments)
    return decode_record_tx(segments)


def target_of(tx: Tx) -> str | None:
    """The id of the record or proposal a transaction acts on (None: it creates one)."""
    if isinstance(tx, MemberVote):
        return tx.proposal_id
    if isinstance(tx, JoinRequest | RemoveRequest):
        return None
    return tx.record_id
