"""Blocks: one per executed sequence number, hash-chained, carrying their commit certificate.

    header = chain_id | height:u64 | epoch:u32 | view:u64 | prev_hash:32 | merkle_root:32
             | entry_count:u32 | state_digest:32 | timestamp_ms:u64
    block hash = tagged SHA-256 over the header encoding

`height` is the PBFT sequence number, `merkle_root` is the batch digest that the 2f+1 COMMITs
of the certificate sign, and `entry_count` binds the size of the Merkle tree (an inclusion proof
states its tree size; an auditor checks it against this). So a block is verifiable offline from
the genesis keys: recompute the root from the entries, check the certificate signs (view,
height, root), check prev_hash against the previous block.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.merkle import InclusionProof, MerkleTree
from consortium.crypto.signing import Verifier
from consortium.ledger import membership as ms
from consortium.ledger.records import InvalidRecord, RecordKind, Submission, decode_submission
from consortium.ledger.transactions import (
    GOVERNANCE_TYPES,
    JOIN_DECISIONS,
    Access,
    Erase,
    Grant,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RecordTx,
    RemoveRequest,
    RequestView,
    ReviewVote,
    Revoke,
    Tx,
    TxType,
    Verdict,
    decode_governance_tx,
    decode_record_tx,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import Reader, Writer
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import split_segments
from consortium.pbft.state import batch_digest, verify_signed

GENESIS_PREV_HASH = bytes(DIGEST_BYTES)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: bytes
    height: int
    epoch: int
    view: int
    prev_hash: bytes
    merkle_root: bytes
    entry_count: int
    state_digest: bytes
    timestamp_ms: int

    def encode(self) -> bytes:
        w = Writer()
        w.blob(self.chain_id)
        w.u64(self.height)
        w.u32(self.epoch)
        w.u64(self.view)
        w.fixed(self.prev_hash)
        w.fixed(self.merkle_root)
        w.u32(self.entry_count)
        w.fixed(self.state_digest)
        w.u64(self.timestamp_ms)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        rd = Reader(data)
        h = cls(rd.blob(), rd.u64(), rd.u32(), rd.u64(), rd.fixed(DIGEST_BYTES),
                rd.fixed(DIGEST_BYTES), rd.u32(), rd.fixed(DIGEST_BYTES), rd.u64())
        rd.end()
        return h

    def hash(self) -> bytes:
        return tagged_hash(b"consortium/block", self.encode())


class EntryStatus:
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    """Already executed (a replay or retry): ordered, but without effect."""
    INVALID = "invalid"
    """Well-signed request whose payload breaks the ledger's rules: ordered, without effect."""
    GOVERNANCE = "governance"
    """A consensus-level request (validator-set change)."""


ACCESS_DENIED = "not a reader of the record"
"""The reason of a recorded Access by an org that may not read the record: the attempt is
logged, no key is released."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One request of a committed batch, in batch order (its index is its Merkle leaf index).

    `request` is the full request, or None when only a view of it is kept (an erased record
    or a grant of one): `view` then holds it with the erased segments withheld."""

    index: int
    request: m.Request | None
    status: str
    submission: Submission | None = None
    """The record, for a recorded record submission with its full request."""
    reason: str = ""
    action: Tx | None = None
    """The record or governance transaction, for a request carrying one (any status)."""
    redacted: RequestView | None = None
    sender_org: str | None = None
    """The organisation of the request's client, for a record transaction."""

    @property
    def digest(self) -> bytes:
        if self.request is not None:
            return self.request.digest
        assert self.redacted is not None
        return self.redacted.digest

    @property
    def record_id(self) -> str:
        return self.digest.hex()

    @property
    def view(self) -> RequestView:
        return self.redacted if self.request is None else RequestView.of(self.request)  # type: ignore[return-value]

    @property
    def client_id(self) -> str:
        return self.request.client_id if self.request is not None else self.view.client_id

    @property
    def nonce(self) -> int:
        return self.request.nonce if self.request is not None else self.view.nonce


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    entries: tuple[Entry, ...]
    pre_prepare: m.SignedMessage | None
    """None once an entry of the block was erased (the pre-prepare carried the full request;
    the commit certificate alone proves the block)."""
    certificate: tuple[m.SignedMessage, ...]
    _tree: list[MerkleTree] = field(default_factory=list, init=False, repr=False,
                                    compare=False)
    """The block's Merkle tree, built on the first proof asked for (receipts of a block share
    its subtree roots)."""

    @property
    def hash(self) -> bytes:
        return self.header.hash()

    def proof(self, index: int) -> InclusionProof:
        """Inclusion proof of entry `index`: leaf = request digest, root = merkle_root."""
        if not self._tree:
            self._tree.append(MerkleTree([e.digest for e in self.entries]))
        return self._tree[0].proof(index)


class ClientOrgs:
    """Which organisation each client identity belongs to, and which organisations exist
    (from genesis)."""

    def __init__(self, orgs: dict[str, str], known_orgs: set[str] | None = None) -> None:
        self._orgs = orgs
        self.known = frozenset(known_orgs if known_orgs is not None else orgs.values())

    def org_of(self, client_id: str) -> str | None:
        return self._orgs.get(client_id)

    @property
    def clients(self) -> frozenset[str]:
        return frozenset(self._orgs)


class Screening:
    """A record's screening status (docs/admission.md)."""

    PENDING = "pending-screening"
    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"
    REJECTED = "rejected"


SCREENING_OUTCOME = "screening: "
"""A recorded verdict or review vote that changes a record's screening status says so in its
entry's reason ("screening: quarantined"): receipts show it, and state transfer applies it."""


@dataclass(frozen=True, slots=True)
class RecordState:
    """What executing a record transaction needs to know about its record."""

    kind: RecordKind
    subject_id: str
    submitter_org: str
    readers: frozenset[str]
    erased: bool = False
    screening: str = Screening.ACCEPTED
    votes: frozenset[tuple[int, bool]] = frozenset()
    """(replica id, accept) of the review votes so far."""


@dataclass(frozen=True, slots=True)
class Governance:
    """Who may advise and who may vote, as of the batch being executed."""

    admission_client: str | None = None
    """The admission service's client id (genesis); None: records are accepted unscreened."""
    voters: Mapping[str, int] = field(default_factory=dict)
    """Client id (`validator-<id>`) -> replica id, for the members of the current epoch."""
    quorum: int = 1
    config: EpochConfig | None = None
    """The validator set of the batch's epoch (membership votes are judged against it)."""
    verifier: Verifier | None = None

    @property
    def initial_screening(self) -> str:
        return Screening.ACCEPTED if self.admission_client is None else Screening.PENDING


def _timestamp(previous_ms: int, submissions: list[Submission]) -> int:
    """Deterministic block time: the median of the records' signed submission times, never
    earlier than the previous block (a lone lying client cannot move time in a busy block)."""
    if not submissions:
        return previous_ms
    return max(previous_ms, int(statistics.median_low(s.submitted_at_ms for s in submissions)))


def parse_action(r: m.Request) -> RecordTx | None:
    """The record transaction a request carries, None for a record submission or a payload
    that is not a record transaction (those are judged by `decode_submission`)."""
    segments = split_segments(r.payload)
    if segments is None or not segments[0] or segments[0][0] == TxType.RECORD:
        return None
    try:
        return decode_record_tx(list(segments))
    except InvalidTransaction:
        return None


def referenced_records(requests: Iterable[m.Request]) -> set[str]:
    """Ids of the existing records a batch's transactions act on (the executor's state
    lookups, fetched before `build_block`)."""
    out = set()
    for r in requests:
        if r.kind is m.RequestKind.APPLICATION:
            action = parse_action(r)
            if action is not None:
                out.add(action.record_id)
    return out


def build_block(a: ev.Execute, chain_id: bytes, prev: BlockHeader | None, orgs: ClientOrgs,
                state: Mapping[str, RecordState] | None = None,
                gov: Governance = Governance(),
                members: ms.MembershipState = ms.EMPTY) -> Block:
    """Execute one committed batch into a block. Pure and deterministic: every honest validator
    builds the same block from the same `Execute` and the same prior ledger state (`state`
    holds, for every record the batch's transactions reference, its state before the batch;
    `members` the membership proposals)."""
    executed = {id(r) for r in a.executed}
    records: dict[str, RecordState] = dict(state or {})
    proposals: dict[str, ms.Proposal] = dict(members.proposals)
    entries = []
    accepted: list[Submission] = []
    for i, r in enumerate(a.requests):
        if id(r) not in executed:
            entries.append(Entry(i, r, EntryStatus.DUPLICATE))
            continue
        if r.kind is m.RequestKind.RECONFIGURATION:
            entries.append(Entry(i, r, EntryStatus.GOVERNANCE))
            continue
        sender = orgs.org_of(r.client_id)
        segments = split_segments(r.payload)
        if segments is not None and segments[0] and (
                segments[0][0] in GOVERNANCE_TYPES or _verdict_on(segments, proposals)):
            gtx, problem = _judge_governance(list(segments), r, proposals, orgs, gov, chain_id)
            outcome = problem.startswith(ms.MEMBERSHIP_OUTCOME)
            entries.append(Entry(i, r, EntryStatus.RECORDED if outcome or not problem
                                 else EntryStatus.INVALID, reason=problem, action=gtx,
                                 sender_org=sender))
            continue
        if segments is not None and segments[0] and segments[0][0] != TxType.RECORD:
            try:
                action = decode_record_tx(list(segments))
            except InvalidTransaction as exc:
                entries.append(Entry(i, r, EntryStatus.INVALID, reason=str(exc)))
                continue
            problem, records = _apply(action, r.client_id, sender, records, orgs, gov)
            status = EntryStatus.INVALID if problem and problem != ACCESS_DENIED and \
                not problem.startswith(SCREENING_OUTCOME) else EntryStatus.RECORDED
            entries.append(Entry(i, r, status, reason=problem, action=action,
                                 sender_org=sender))
            continue
        try:
            sub = decode_submission(r.payload)
        except InvalidRecord as exc:
            entries.append(Entry(i, r, EntryStatus.INVALID, reason=str(exc)))
            continue
        if sender != sub.submitter_org:
            entries.append(Entry(i, r, EntryStatus.INVALID, reason=
                                 f"client {r.client_id} does not belong to {sub.submitter_org}"))
            continue
        if r.client_id == gov.admission_client or r.client_id in gov.voters:
            entries.append(Entry(i, r, EntryStatus.INVALID, reason=
                                 f"{r.client_id} advises or votes; it does not submit records"))
            continue
        unknown = [o for o in sub.readers if o not in orgs.known]
        if unknown:
            entries.append(Entry(i, r, EntryStatus.INVALID,
                                 reason=f"readers {unknown} are not member organisations"))
            continue
        entries.append(Entry(i, r, EntryStatus.RECORDED, sub))
        records[r.digest.hex()] = RecordState(sub.kind, sub.subject_id, sub.submitter_org,
                                              frozenset(sub.readers),
                                              screening=gov.initial_screening)
        accepted.append(sub)
    header = BlockHeader(
        chain_id=chain_id, height=a.seq, epoch=a.epoch, view=a.view,
        prev_hash=GENESIS_PREV_HASH if prev is None else prev.hash(),
        merkle_root=a.digest, entry_count=len(a.requests), state_digest=a.state_digest,
        timestamp_ms=_timestamp(0 if prev is None else prev.timestamp_ms, accepted))
    if batch_digest(a.requests) != a.digest:
        raise AssertionError(f"batch digest mismatch at seq {a.seq}: a bug, not a peer fault")
    return Block(header, tuple(entries), a.pre_prepare, a.certificate)


def changes_membership(block: Block) -> bool:
    """Whether executing this block changed the membership proposals (a join request, a
    removal proposal or a vote took effect)."""
    return any(e.status == EntryStatus.RECORDED
               and isinstance(e.action, JoinRequest | RemoveRequest | MemberVote)
               for e in block.entries)


def _verdict_on(segments: Sequence[bytes], proposals: Mapping[str, ms.Proposal]) -> bool:
    """Whether these segments are a verdict on a membership proposal (not on a record)."""
    if segments[0][0] != TxType.VERDICT or len(segments[0]) < 33:
        return False
    return segments[0][1:33].hex() in proposals


def _judge_governance(segments: list[bytes | None], r: m.Request,
                      proposals: dict[str, ms.Proposal], orgs: ClientOrgs, gov: Governance,
                      chain_id: bytes) -> tuple[Tx | None, str]:
    """Judge a join request, removal proposal, member vote or a verdict on a join request;
    returns the transaction (None if it does not parse) and why not ("" when it took effect,
    MEMBERSHIP_OUTCOME... when a vote decided its proposal)."""
    try:
        tx: Tx = decode_record_tx(segments) if segments[0] and \
            segments[0][0] == TxType.VERDICT else decode_governance_tx(segments)
    except InvalidTransaction as exc:
        return None, str(exc)
    if gov.config is None or gov.verifier is None:
        return tx, "membership changes are not enabled on this ledger"
    ctx = ms.Context(chain_id, gov.config, gov.voters, orgs.known, gov.verifier,
                     orgs.clients)
    if isinstance(tx, Verdict):
        if r.client_id != gov.admission_client:
            return tx, "verdicts come only from the admission service named in genesis"
        if tx.decision not in JOIN_DECISIONS:
            return tx, "a verdict on a join request decides approve, reject or review"
        return tx, ""  # advice, kept on the ledger with the proposal; only votes decide
    if isinstance(tx, JoinRequest):
        return tx, ms.judge_join(tx, r.client_id, r.digest.hex(), proposals, ctx)
    if isinstance(tx, RemoveRequest):
        return tx, ms.judge_remove(tx, r.client_id, r.digest.hex(), proposals,
                                   _validator_orgs(orgs, gov), ctx)
    assert isinstance(tx, MemberVote)
    return tx, ms.judge_vote(tx, r.client_id, proposals, ctx)


def _validator_orgs(orgs: ClientOrgs, gov: Governance) -> dict[str, str]:
    out = {}
    for client_id in gov.voters:
        org = orgs.org_of(client_id)
        if org is not None:
            out[client_id] = org
    return out


def _apply(action: RecordTx, client_id: str, sender: str | None,
           records: dict[str, RecordState], orgs: ClientOrgs,
           gov: Governance) -> tuple[str, dict[str, RecordState]]:
    """Judge one record transaction against the state; returns (why not, or "" when it takes
    effect; ACCESS_DENIED for a logged but refused access; SCREENING_OUTCOME... for a verdict
    or vote that changed the record's screening status) and the state after it."""
    rec = records.get(action.record_id)
    if sender is None:
        return "the client belongs to no member organisation", records
    if isinstance(action, Verdict) and client_id != gov.admission_client:
        return "verdicts come only from the admission service named in genesis", records
    if isinstance(action, ReviewVote) and client_id not in gov.voters:
        return "review votes come only from current validators (validator-<id>)", records
    if client_id == gov.admission_client and not isinstance(action, (Verdict, Access)):
        return "the admission service only advises and reads", records
    if rec is None:
        return f"no record {action.record_id}", records
    if isinstance(action, Verdict):
        if rec.screening != Screening.PENDING:
            return "", records  # kept on the ledger as advice; the status was decided before
        new = Screening.ACCEPTED if action.decision == "ok" else Screening.QUARANTINED
        records[action.record_id] = replace(rec, screening=new)
        return SCREENING_OUTCOME + new, records
    if isinstance(action, ReviewVote):
        if rec.screening != Screening.QUARANTINED:
            return f"the record is {rec.screening}, not quarantined", records
        voter = gov.voters[client_id]
        if any(v == voter for v, _ in rec.votes):
            return f"validator {voter} already voted on this record", records
        votes = rec.votes | {(voter, action.accept)}
        accepts = sum(1 for _, a in votes if a)
        rejects = len(votes) - accepts
        new = Screening.ACCEPTED if accepts >= gov.quorum else \
            Screening.REJECTED if rejects >= gov.quorum else rec.screening
        records[action.record_id] = replace(rec, votes=votes, screening=new)
        return (SCREENING_OUTCOME + new if new != rec.screening else ""), records
    if rec.erased:
        return "the record was erased", records
    if isinstance(action, Access):
        return ("" if sender in rec.readers else ACCESS_DENIED), records
    if isinstance(action, Grant):
        if sender != rec.submitter_org and sender not in rec.readers:
            return f"{sender} is neither the submitter nor a reader of the record", records
        if action.org not in orgs.known:
            return f"{action.org} is not a member organisation", records
        if action.org in rec.readers:
            return f"{action.org} already reads the record", records
        records[action.record_id] = replace(rec, readers=rec.readers | {action.org})
        return "", records
    if isinstance(action, Revoke):
        if sender != rec.submitter_org:
            return "only the submitter's organisation revokes readers", records
        if action.org == rec.submitter_org:
            return "the submitter's organisation cannot revoke itself", records
        if action.org not in rec.readers:
            return f"{action.org} does not read the record", records
        records[action.record_id] = replace(rec, readers=rec.readers - {action.org})
        return "", records
    assert isinstance(action, Erase)
    if rec.kind is not RecordKind.PATIENT:
        return "only patient records are erased", records
    if sender != rec.submitter_org:
        return "only the submitter's organisation erases a record", records
    if action.subject_id != rec.subject_id:
        return "the erasure names another patient than the record's", records
    records[action.record_id] = replace(rec, readers=frozenset(), erased=True)
    return "", records


def verify_certificate(header: BlockHeader, certificate: tuple[m.SignedMessage, ...],
                       config: EpochConfig, verifier: Verifier) -> bool:
    """2f+1 distinct members of the block's epoch signed COMMIT(view, height, merkle_root)."""
    signers: set[int] = set()
    for c in certificate:
        b = c.body
        if (isinstance(b, m.Commit) and (b.epoch, b.view, b.seq, b.digest)
                == (config.epoch, header.view, header.height, header.merkle_root)
                and c.sender not in signers
                and verify_signed(c, config, header.chain_id, verifier)):
            signers.add(c.sender)
    return len(signers) >= config.quorum
