"""Blocks: one per executed sequence number, hash-chained, carrying their commit certificate.

    header = chain_id | height:u64 | epoch:u32 | prev_hash:32 | merkle_root:32
             | request_count:u32 | proposed_ms:u64 | timestamp_ms:u64 | state_digest:32
             | entry_count:u32
    block hash = tagged SHA-256 over the header encoding

`height` is the PBFT sequence number. `merkle_root` is the Merkle root over the batch's request
digests (each request a client's envelope of items), and with `request_count` and `proposed_ms`
(the primary's clock) it makes up the digest the 2f+1 COMMITs of the certificate sign
(`messages.proposal_digest`): a block's size and time are certified. `timestamp_ms`, the block
time, is `max(previous timestamp_ms, proposed_ms)`, and `entry_count` the number of entries (one
per item of an executed envelope); like `prev_hash` and `state_digest`, they are checked by
walking the chain.

Every item of an executed envelope becomes an entry with a record id (`items.record_id`) and a
status. Execution is atomic per envelope for what can be judged from the envelope alone (an
item that does not decode or breaks the record rules makes the whole envelope invalid, naming
the item), and per entry for what depends on the ledger's state (a grant by a non-reader, a
vote on a decided proposal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.merkle import InclusionProof, MerkleTree, merkle_root
from consortium.crypto.signing import Verifier
from consortium.ledger import membership as ms
from consortium.ledger.items import Item, ItemView, digest_of, record_id
from consortium.ledger.records import (
    RecordKind,
    Submission,
    document_problem,
    submission_from_segments,
)
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
    ReviewVote,
    Revoke,
    Tx,
    TxType,
    Verdict,
    applicant_key,
    decode_governance_tx,
    decode_record_tx,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import Reader, Writer
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import (
    encode_envelope,
    envelope_digest,
    split_envelope,
    split_segments,
)
from consortium.pbft.state import batch_root

GENESIS_PREV_HASH = bytes(DIGEST_BYTES)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What every correct validator computes alike for a height: its hash chains the ledger.

    No view: replicas may assemble the commit certificate of one batch in different views (a
    replica commits in view v while the others commit the same digest again in view v + 1 after
    a view change), so the view is a property of each replica's proof, carried by the
    certificate's COMMITs and the proposal header, never of the block."""

    chain_id: bytes
    height: int
    epoch: int
    prev_hash: bytes
    merkle_root: bytes
    request_count: int
    proposed_ms: int
    timestamp_ms: int
    state_digest: bytes
    entry_count: int

    @property
    def digest(self) -> bytes:
        """What the commit certificate signs for this block."""
        return m.proposal_digest(self.merkle_root, self.request_count, self.proposed_ms)

    def encode(self) -> bytes:
        w = Writer()
        w.blob(self.chain_id)
        w.u64(self.height)
        w.u32(self.epoch)
        w.fixed(self.prev_hash)
        w.fixed(self.merkle_root)
        w.u32(self.request_count)
        w.u64(self.proposed_ms)
        w.u64(self.timestamp_ms)
        w.fixed(self.state_digest)
        w.u32(self.entry_count)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        rd = Reader(data)
        h = cls(rd.blob(), rd.u64(), rd.u32(), rd.fixed(DIGEST_BYTES), rd.fixed(DIGEST_BYTES),
                rd.u32(), rd.u64(), rd.u64(), rd.fixed(DIGEST_BYTES), rd.u32())
        rd.end()
        return h

    def hash(self) -> bytes:
        return tagged_hash(b"consortium/block", self.encode())


class EntryStatus:
    """What became of one item of an executed envelope."""

    RECORDED = "recorded"
    INVALID = "invalid"
    """A well-formed transaction the ledger's state refuses (a grant by a non-reader, a vote
    on a decided proposal): ordered, without effect, with the reason."""


class EnvelopeStatus:
    """What became of one request (a client's envelope) of a committed batch."""

    EXECUTED = "executed"
    """Its items became entries (each RECORDED or INVALID)."""
    DUPLICATE = "duplicate"
    """Already executed (a replay or retry): ordered, without effect; its items are not kept
    again (only its digest, which the block's Merkle root needs)."""
    INVALID = "invalid"
    """Not an envelope, or an item that does not decode or breaks the record rules: ordered,
    without effect, with the reason naming the item."""
    GOVERNANCE = "governance"
    """A consensus-level request (a validator-set change); its payload is kept."""


ACCESS_DENIED = "not a reader of the record"
"""The reason of a recorded Access by an org that may not read the record: the attempt is
logged, no key is released."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One request of a committed batch, in batch order (its index is its Merkle leaf)."""

    index: int
    client_id: str
    nonce: int
    kind: m.RequestKind
    signature: bytes
    payload_digest: bytes
    status: str
    reason: str = ""
    first_entry: int = 0
    entry_count: int = 0
    raw: bytes | None = None
    """The payload, when it is not an envelope whose items are entries (a validator-set
    change, an invalid payload); None otherwise."""

    @property
    def digest(self) -> bytes:
        return m.request_digest_from(self.client_id, self.nonce, self.kind, self.payload_digest)

    @property
    def key(self) -> tuple[str, int]:
        return (self.client_id, self.nonce)


@dataclass(frozen=True, slots=True)
class Entry:
    """One item of an executed envelope (its index is its position in the block)."""

    index: int
    envelope: int
    item_index: int
    record_id: str
    item: Item
    """The item's bytes, or a view with erased or withheld segments."""
    status: str
    submission: Submission | None = None
    """The record, for a recorded record submission."""
    reason: str = ""
    action: Tx | None = None
    """The transaction an item carries, other than a record submission (any status)."""
    sender_org: str | None = None
    """The organisation of the envelope's client."""
    client_id: str = ""

    @property
    def digest(self) -> bytes:
        return digest_of(self.item)


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    envelopes: tuple[Envelope, ...]
    entries: tuple[Entry, ...]
    pre_prepare: m.SignedMessage
    """The proposal header the block executed (signed by the primary of its view)."""
    certificate: tuple[m.SignedMessage, ...]
    _trees: dict[int, MerkleTree] = field(default_factory=dict, init=False, repr=False,
                                          compare=False)
    """Merkle trees built on the first proof asked for (-1: the block's over its requests;
    i: envelope i's over its items); receipts of a block share them."""

    @property
    def hash(self) -> bytes:
        return self.header.hash()

    def _tree(self, key: int, leaves: Sequence[bytes]) -> MerkleTree:
        tree = self._trees.get(key)
        if tree is None:
            tree = self._trees[key] = MerkleTree(leaves)
        return tree

    def request_proof(self, envelope: int) -> InclusionProof:
        """Inclusion of request `envelope` in the block: leaf = request digest."""
        return self._tree(-1, [e.digest for e in self.envelopes]).proof(envelope)

    def item_proof(self, entry: Entry) -> InclusionProof:
        """Inclusion of an entry's item in its envelope: leaf = item digest."""
        env = self.envelopes[entry.envelope]
        items = self.entries[env.first_entry: env.first_entry + env.entry_count]
        return self._tree(env.index, [e.digest for e in items]).proof(entry.item_index)

    def entries_of(self, envelope: Envelope) -> tuple[Entry, ...]:
        return self.entries[envelope.first_entry: envelope.first_entry + envelope.entry_count]


class ClientOrgs:
    """Which organisation each client identity belongs to, and which organisations exist
    (from genesis and the ledger's approved joins, removed ones excluded); with their keys
    where membership governance needs them (who may sponsor a join request, which keys a new
    member may not reuse)."""

    def __init__(self, orgs: dict[str, str], known_orgs: set[str] | None = None, *,
                 keys: Mapping[str, bytes] | None = None,
                 keys_in_use: frozenset[bytes] = frozenset()) -> None:
        self._orgs = orgs
        self.known = frozenset(known_orgs if known_orgs is not None else orgs.values())
        self._keys = dict(keys or {})
        """Client id -> its request-signing public key (for the clients in `orgs`)."""
        self.keys_in_use = keys_in_use
        """Every key a member holds or held: signing keys of its clients and validators, its
        encryption key."""

    def org_of(self, client_id: str) -> str | None:
        return self._orgs.get(client_id)

    @property
    def clients(self) -> frozenset[str]:
        return frozenset(self._orgs)

    def sponsor_keys(self, admission_client: str | None) -> dict[str, frozenset[bytes]]:
        """Member organisation -> the client keys that may sponsor a join request for it: its
        clients', not its validators' (a validator key signs consensus and votes) nor the
        admission service's (it advises on join requests; it does not vouch for them)."""
        out: dict[str, set[bytes]] = {}
        for client_id, org in self._orgs.items():
            key = self._keys.get(client_id)
            if key is not None and client_id != admission_client \
                    and not client_id.startswith(ms.VALIDATOR_PREFIX):
                out.setdefault(org, set()).add(key)
        return {org: frozenset(keys) for org, keys in out.items()}


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

    @classmethod
    def of(cls, admission_client: str | None, config: EpochConfig,
           verifier: Verifier) -> Governance:
        """The governance of an epoch: its validators vote (as `validator-<id>`)."""
        return cls(admission_client,
                   {ms.validator_client_id(r): r for r in config.replica_ids}, config.quorum,
                   config, verifier)


FUTURE_MS_MAX_DEFAULT = 60_000
AGE_MS_MAX_DEFAULT = 7 * 24 * 3600 * 1000
"""The defaults of `Rules` and of the genesis policy (`config.DataPolicy`) that sets them."""


@dataclass(frozen=True, slots=True)
class Rules:
    """Ledger rules from genesis that execution applies alike on every validator."""

    future_ms_max: int = FUTURE_MS_MAX_DEFAULT
    """An item's signed submission time may be at most this far after the block's proposal
    time (the primary's clock, which backups check against theirs)."""
    age_ms_max: int = AGE_MS_MAX_DEFAULT
    """... and at most this far before it (a record prepared offline and sent later)."""
    join_pending_ttl_ms: int = ms.JOIN_PENDING_TTL_MS
    """How long, in block time, a join request waits for a decision before it expires."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """One envelope item, decoded once per validator (at admission or at execution)."""

    item: bytes
    segments: list[bytes] | None
    submission: Submission | None = None
    tx: Tx | None = None
    error: str = ""


def parse_item(item: bytes) -> Parsed:
    segments = split_segments(item)
    if segments is None or not segments[0]:
        return Parsed(item, segments, error="not a transaction (no public header segment)")
    try:
        if segments[0][0] == TxType.RECORD:
            return Parsed(item, segments, submission=submission_from_segments(segments))
        if segments[0][0] in GOVERNANCE_TYPES:
            return Parsed(item, segments, tx=decode_governance_tx(list(segments)))
        return Parsed(item, segments, tx=decode_record_tx(list(segments)))
    except InvalidTransaction as exc:
        return Parsed(item, segments, error=str(exc))


def parse_request(r: m.Request) -> list[Parsed] | None:
    """The decoded items of an application request's envelope (None: not an envelope).
    Memoised on the request, so the validator that checked a submission on arrival does not
    decode it again when it executes."""
    if "parsed" in r.memo:
        return r.memo["parsed"]  # type: ignore[return-value]
    items = split_envelope(r.payload)
    parsed = None if items is None else [parse_item(i) for i in items]
    r.memo["parsed"] = parsed
    return parsed


def envelope_problem(r: m.Request, parsed: list[Parsed] | None, orgs: ClientOrgs,
                     gov: Governance, rules: Rules, proposed_ms: int) -> str:
    """Why an application request cannot take effect, judged from the envelope alone (the
    same rules at admission and at execution); "" when it can."""
    if parsed is None or not parsed:
        return "the payload is not an envelope of transactions"
    sender = orgs.org_of(r.client_id)
    applicant = applicant_key(r.client_id) is not None
    for i, p in enumerate(parsed):
        problem = _item_problem(r.client_id, sender, applicant, p, orgs, gov, rules,
                                proposed_ms)
        if problem:
            return f"item {i}: {problem}"
    return ""


def _item_problem(client_id: str, sender: str | None, applicant: bool, p: Parsed,
                  orgs: ClientOrgs, gov: Governance, rules: Rules, proposed_ms: int) -> str:
    if p.error:
        return p.error
    if applicant and not isinstance(p.tx, JoinRequest):
        return "applicants submit join requests only"
    sub = p.submission
    if sub is None:
        return ""
    if sender != sub.submitter_org:
        return f"client {client_id} does not belong to {sub.submitter_org}"
    if client_id == gov.admission_client or client_id in gov.voters:
        return f"{client_id} advises or votes; it does not submit records"
    unknown = [o for o in sub.readers if o not in orgs.known]
    if unknown:
        return f"readers {unknown} are not member organisations"
    if proposed_ms:
        ahead = sub.submitted_at_ms - proposed_ms
        if ahead > rules.future_ms_max:
            return (f"submitted_at_ms is {ahead} ms after the block time (limit "
                    f"{rules.future_ms_max} ms): check the submitter's clock")
        if -ahead > rules.age_ms_max:
            return (f"submitted_at_ms is {-ahead // 1000} s before the block time (limit "
                    f"{rules.age_ms_max // 1000} s)")
    return document_problem(sub, proposed_ms, rules.future_ms_max)


def stored_request(env: Envelope, items: Sequence[Item]) -> m.Request:
    """The request an envelope of a block was, rebuilt from what a validator keeps of it (its
    envelope fields and its entries' items, `items`): in full when its raw payload or every
    item is kept, else a stub carrying its digest (a replay, an invalid envelope, an erased
    item), which recovery needs only to know what executed. Raises ValueError when what was
    kept does not rebuild to the envelope's digest (a damaged store)."""
    if env.raw is not None:
        r = m.Request(env.client_id, env.nonce, env.kind, env.raw, env.signature)
    elif env.status == EnvelopeStatus.EXECUTED and items and not any(
            isinstance(i, ItemView) for i in items):
        r = m.Request(env.client_id, env.nonce, env.kind,
                      encode_envelope([i for i in items if isinstance(i, bytes)]),
                      env.signature)
    else:
        r = m.Request.stub(env.client_id, env.nonce, env.kind, env.payload_digest,
                           env.signature)
    if r.payload_digest != env.payload_digest:
        raise ValueError(f"request {env.index}: its kept items do not match its digest")
    return r


def referenced_records(requests: Iterable[m.Request]) -> set[str]:
    """Ids of the existing records a batch's transactions act on (the executor's state
    lookups, fetched before `build_block`)."""
    out = set()
    for r in requests:
        if r.kind is not m.RequestKind.APPLICATION:
            continue
        for p in parse_request(r) or ():
            if p.tx is not None and not isinstance(p.tx, JoinRequest | RemoveRequest
                                                   | MemberVote):
                out.add(p.tx.record_id)
    return out


def build_block(a: ev.Execute, chain_id: bytes, prev: BlockHeader | None, orgs: ClientOrgs,
                state: Mapping[str, RecordState] | None = None,
                gov: Governance = Governance(),
                members: ms.MembershipState = ms.EMPTY, rules: Rules = Rules()) -> Block:
    """Execute one committed batch into a block. Pure and deterministic: every honest validator
    builds the same block from the same `Execute` and the same prior ledger state (`state`
    holds, for every record the batch's transactions reference, its state before the batch;
    `members` the membership proposals)."""
    pp = a.pre_prepare.body
    if not isinstance(pp, m.PrePrepare) or pp.digest != a.digest or (
            pp.root, pp.count) != (batch_root(a.requests), len(a.requests)):
        raise AssertionError(f"batch and proposal header differ at seq {a.seq}: a bug, not a "
                             "peer fault")
    executed = {id(r) for r in a.executed}
    block_ms = max(0 if prev is None else prev.timestamp_ms, pp.timestamp_ms)
    records: dict[str, RecordState] = dict(state or {})
    proposals: dict[str, ms.Proposal] = dict(members.proposals)
    envelopes: list[Envelope] = []
    entries: list[Entry] = []
    for i, r in enumerate(a.requests):
        base = Envelope(i, r.client_id, r.nonce, r.kind, r.signature, r.payload_digest,
                        EnvelopeStatus.EXECUTED, first_entry=len(entries))
        if id(r) not in executed:
            envelopes.append(replace(base, status=EnvelopeStatus.DUPLICATE))
            continue
        if r.kind is m.RequestKind.RECONFIGURATION:
            envelopes.append(replace(base, status=EnvelopeStatus.GOVERNANCE, raw=r.payload))
            continue
        parsed = parse_request(r)
        problem = envelope_problem(r, parsed, orgs, gov, rules, pp.timestamp_ms)
        if problem or parsed is None:
            envelopes.append(replace(base, status=EnvelopeStatus.INVALID, reason=problem,
                                     raw=r.payload if parsed is None else None))
            continue
        sender = orgs.org_of(r.client_id)
        digest = r.digest
        for k, p in enumerate(parsed):
            rid = record_id(digest, k)
            status, reason = _judge(rid, p, r.client_id, sender, records, proposals, orgs, gov,
                                    rules, chain_id, block_ms)
            entries.append(Entry(len(entries), i, k, rid, p.item, status, p.submission, reason,
                                 p.tx, sender, r.client_id))
        envelopes.append(replace(base, entry_count=len(parsed)))
    header = BlockHeader(
        chain_id=chain_id, height=a.seq, epoch=a.epoch,
        prev_hash=GENESIS_PREV_HASH if prev is None else prev.hash(),
        merkle_root=pp.root, request_count=pp.count, proposed_ms=pp.timestamp_ms,
        timestamp_ms=block_ms, state_digest=a.state_digest, entry_count=len(entries))
    return Block(header, tuple(envelopes), tuple(entries), a.pre_prepare, a.certificate)


def _judge(record_id_: str, p: Parsed, client_id: str, sender: str | None,
           records: dict[str, RecordState], proposals: dict[str, ms.Proposal],
           orgs: ClientOrgs, gov: Governance, rules: Rules, chain_id: bytes,
           block_ms: int) -> tuple[str, str]:
    """(status, reason) of one well-formed item against the ledger's state (updating
    `records`/`proposals`)."""
    sub = p.submission
    if sub is not None:
        records[record_id_] = RecordState(sub.kind, sub.subject_id, sub.submitter_org,
                                          frozenset(sub.readers),
                                          screening=gov.initial_screening)
        return EntryStatus.RECORDED, ""
    tx = p.tx
    assert tx is not None
    if isinstance(tx, JoinRequest | RemoveRequest | MemberVote) or (
            isinstance(tx, Verdict) and tx.record_id in proposals):
        problem = judge_governance(tx, client_id, record_id_, proposals, orgs, gov, rules,
                                   chain_id, block_ms)
        outcome = problem.startswith(ms.MEMBERSHIP_OUTCOME)
        return (EntryStatus.RECORDED if outcome or not problem else EntryStatus.INVALID,
                problem)
    assert not isinstance(tx, JoinRequest | RemoveRequest | MemberVote)
    problem, _ = _apply(tx, client_id, sender, records, orgs, gov)
    status = EntryStatus.INVALID if problem and problem != ACCESS_DENIED and \
        not problem.startswith(SCREENING_OUTCOME) else EntryStatus.RECORDED
    return status, problem


def changes_membership(block: Block) -> bool:
    """Whether executing this block changed the membership proposals (a join request, a
    removal proposal or a vote took effect)."""
    return any(e.status == EntryStatus.RECORDED
               and isinstance(e.action, JoinRequest | RemoveRequest | MemberVote)
               for e in block.entries)


def envelope_payload_digest(items: Sequence[Item]) -> bytes:
    """An executed envelope's payload digest from its entries' items (views included)."""
    return envelope_digest(len(items), merkle_root([digest_of(i) for i in items]))


def judge_governance(tx: Tx, client_id: str, proposal_id: str,
                     proposals: dict[str, ms.Proposal], orgs: ClientOrgs, gov: Governance,
                     rules: Rules, chain_id: bytes, block_ms: int) -> str:
    """Judge a join request, removal proposal, member vote or a verdict on a join request as
    of a block at `block_ms`: "" when it took effect (updating `proposals`), MEMBERSHIP_OUTCOME...
    when a vote decided its proposal, else why not. Execution calls it for every governance
    entry, and a validator for every join request it is sent (`node.submissions`), so both
    judge alike."""
    if gov.config is None or gov.verifier is None:
        return "membership changes are not enabled on this ledger"
    ctx = ms.Context(chain_id, gov.config, gov.voters, orgs.known, gov.verifier,
                     orgs.clients, block_ms, rules.join_pending_ttl_ms,
                     orgs.sponsor_keys(gov.admission_client), orgs.keys_in_use)
    if isinstance(tx, Verdict):
        if client_id != gov.admission_client:
            return "verdicts come only from the admission service named in genesis"
        if tx.decision not in JOIN_DECISIONS:
            return "a verdict on a join request decides approve, reject or review"
        return ""  # advice, kept on the ledger with the proposal; only votes decide
    if isinstance(tx, JoinRequest):
        return ms.judge_join(tx, client_id, proposal_id, proposals, ctx)
    if isinstance(tx, RemoveRequest):
        return ms.judge_remove(tx, client_id, proposal_id, proposals,
                               _validator_orgs(orgs, gov), ctx)
    assert isinstance(tx, MemberVote)
    return ms.judge_vote(tx, client_id, proposals, ctx)


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


