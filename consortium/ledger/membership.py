"""Membership governance: join requests, removal proposals and the validators' votes on them.

Executed by every validator the same way (pure functions of the ordered transactions and the
state before them). A proposal is approved by 2f+1 approvals of the current validator set and
rejected as soon as approval has become impossible. Each approval carries the voter's replica-key
signature over the validator-set change (`reconfiguration_signing_bytes`), so once a proposal is
approved any validator can assemble the quorum-approved `Reconfiguration` the consensus layer
executes; it takes effect at the next checkpoint (docs/admission.md, "Membership").

An approved join makes the organisation a member at once (its clients may submit, records may
name it as a reader); its validator takes part in consensus from the epoch that opens at the
checkpoint after the reconfiguration executes.

A pending join request holds one of JOINS_PENDING_MAX slots, so it has a cost: a member sponsors
it (signs it with one of its client keys, at most JOINS_PENDING_PER_SPONSOR at a time) and it
expires after the genesis policy's join_pending_ttl_ms of block time without a decision. Block
time is certified (`blocks.BlockHeader.timestamp_ms`), so every validator, at admission and at
execution, counts the same requests as pending; no validator's clock is ever consulted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from consortium.crypto.hashing import tagged_hash
from consortium.crypto.signing import Verifier
from consortium.ledger import ca as cas
from consortium.ledger.transactions import (
    JoinRequest,
    MemberVote,
    RemoveRequest,
    applicant_client_id,
    sponsorship_signing_bytes,
)
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member

if TYPE_CHECKING:
    from consortium.ledger.keyrules import KeyState

JOINS_PENDING_MAX = 8
"""At most this many join requests wait for votes at once (what the members can review; a
pending request also reserves its organisation id, validator id and keys)."""
JOINS_PENDING_PER_SPONSOR = 2
"""... and at most this many of them sponsored by one member, so that no single member (or one
member's leaked client key) fills every slot."""
JOIN_PENDING_TTL_MS = 14 * 24 * 3600 * 1000
"""Default of the genesis policy's join_pending_ttl_ms: how long, in block time, a join request
waits for a decision before it expires and frees its slot (two weeks: a vote needs 2f+1
members' attention, not their immediate one)."""
MEMBERSHIP_OUTCOME = "membership: "
"""The reason of a vote that decided its proposal ("membership: approved" / "...rejected")."""
SLOTS_TAKEN = "no free join slot: "
"""The start of a refusal for want of a free pending slot (the request itself is fine: it may
succeed later), so that admission answers it FAILED_PRECONDITION rather than INVALID_ARGUMENT."""
VALIDATOR_PREFIX = "validator-"
CLIENT_KEY = "client-key"
"""The kind of a client key revocation or rotation proposal."""
VALIDATOR_KEY = "validator-key"
"""The kind of a validator key rotation proposal (validator_key: the new key, client_key: the
old one)."""
RECONFIGURING = frozenset({"join", "remove", VALIDATOR_KEY})
"""Kinds of proposal whose approval changes the validator set (a consensus reconfiguration)."""
KEY_CHANGED = "client key: "
"""The reason of a client key change that took effect in the block that recorded it (signed by
the client organisation's own validator): "client key: revoked" / "client key: replaced"."""


class ProposalStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    """Never stored: how a pending join request past its expiry is shown (`ListMembers`)."""


def join_expires_ms(recorded_ms: int, ttl_ms: int) -> int:
    """The block time after which a join request recorded at `recorded_ms` no longer counts."""
    return recorded_ms + ttl_ms


def expired(kind: str, status: str, recorded_ms: int, block_ms: int, ttl_ms: int) -> bool:
    """Whether a proposal has expired as of a block at `block_ms`: a join request still
    pending after `ttl_ms` of block time (removals are proposed by validators and hold no
    slot: they do not expire)."""
    return kind == "join" and status == ProposalStatus.PENDING and \
        block_ms > join_expires_ms(recorded_ms, ttl_ms)


@dataclass(frozen=True, slots=True)
class Vote:
    epoch: int
    replica_id: int
    approve: bool
    approval: bytes


def changed_members(members: tuple[Member, ...], kind: str, replica_id: int,
                    validator_key: bytes) -> tuple[Member, ...]:
    """The validator set after a join ("join": add the member, in id order), a key rotation
    (the member's key replaced by `validator_key`) or a removal."""
    if kind == VALIDATOR_KEY:
        return tuple(Member(mem.replica_id, validator_key) if mem.replica_id == replica_id
                     else mem for mem in members)
    if kind == "join":
        return tuple(sorted((*members, Member(replica_id, validator_key)),
                            key=lambda mem: mem.replica_id))
    return tuple(mem for mem in members if mem.replica_id != replica_id)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A join request or a removal proposal, with the votes cast on it so far."""

    proposal_id: str
    kind: str
    """"join" or "remove"."""
    replica_id: int
    org: str
    name: str = ""
    validator_key: bytes = b""
    client_key: bytes = b""
    encryption_key: bytes = b""
    peer_address: str = ""
    client_address: str = ""
    status: str = ProposalStatus.PENDING
    votes: tuple[Vote, ...] = ()
    sponsor: str = ""
    """The member organisation that sponsored a join request."""
    recorded_ms: int = 0
    """The time of the block that recorded it (its expiry counts from there)."""
    decided_height: int = 0
    """The height of the block that approved or rejected it (0: pending)."""
    certificate: bytes = b""
    """A CA proposal's certificate (PEM)."""

    def expired(self, block_ms: int, ttl_ms: int) -> bool:
        return expired(self.kind, self.status, self.recorded_ms, block_ms, ttl_ms)

    def new_members(self, config: EpochConfig) -> tuple[Member, ...]:
        """The validator set this proposal turns `config` into (unchanged: a client key)."""
        if self.kind not in RECONFIGURING:
            return config.members
        return changed_members(config.members, self.kind, self.replica_id, self.validator_key)

    @property
    def decided_epoch(self) -> int:
        """The epoch of the vote that decided it (the latest vote's; -1 without votes)."""
        return max((v.epoch for v in self.votes), default=-1)

    def approvals(self, epoch: int) -> tuple[tuple[int, bytes], ...]:
        return tuple(sorted((v.replica_id, v.approval) for v in self.votes
                            if v.epoch == epoch and v.approve))


def validator_client_id(replica_id: int) -> str:
    """A validator's own client identity (its validator key signs its governance votes)."""
    return f"{VALIDATOR_PREFIX}{replica_id}"


RECONFIG_PREFIX = "reconfig-"


def reconfig_client_id(replica_id: int) -> str:
    """The identity a validator submits an approved validator-set change under: its validator
    key, in a nonce space of its own (time-based, so it needs no state and never collides
    with the votes its operator signs as `validator-<id>`)."""
    return f"{RECONFIG_PREFIX}{replica_id}"


def org_client_id(org: str) -> str:
    return f"{org}-client"


@dataclass(frozen=True, slots=True)
class MembershipState:
    proposals: Mapping[str, Proposal]

    def joined(self) -> tuple[Proposal, ...]:
        """Approved joins, in replica id order."""
        return tuple(sorted((p for p in self.proposals.values()
                             if p.kind == "join" and p.status == ProposalStatus.APPROVED),
                            key=lambda p: p.replica_id))

    def client_keys(self) -> dict[str, bytes]:
        """Request signers of every join request on the ledger (pending ones too: a key is
        only ever usable by its holder, and knowing it early lets every validator check the
        first requests of a newly approved member, whatever block it has executed); whether
        they may act is decided at execution (`client_orgs`, the epoch's voters). `proposals`
        is in ledger order, so when an organisation applied again (after its earlier request
        expired or was rejected, or after its removal) its latest request's keys win."""
        out: dict[str, bytes] = {}
        for p in self.proposals.values():
            if p.kind == "join" and p.status != ProposalStatus.REJECTED:
                out[org_client_id(p.org)] = p.client_key
                out[validator_client_id(p.replica_id)] = p.validator_key
        return out

    def rotated_validator_keys(self) -> dict[str, tuple[bytes, ...]]:
        """`validator-<id>` -> the keys approved rotations gave it, oldest first (which one
        signs in a given epoch is that epoch's validator set's business)."""
        out: dict[str, tuple[bytes, ...]] = {}
        for p in self.proposals.values():
            if p.kind == VALIDATOR_KEY and p.status == ProposalStatus.APPROVED:
                cid = validator_client_id(p.replica_id)
                out[cid] = (*out.get(cid, ()), p.validator_key)
        return out

    def ca_trust(self) -> cas.CaTrust:
        """The CAs approved CA proposals added and retired, in the order they were decided."""
        added: dict[bytes, bytes] = {}
        retired: set[bytes] = set()
        for p in sorted((p for p in self.proposals.values()
                         if p.kind == cas.CA and p.status == ProposalStatus.APPROVED),
                        key=lambda p: p.decided_height):
            if p.name == "add":
                added[p.validator_key] = p.certificate
            else:
                retired.add(p.validator_key)
                added.pop(p.validator_key, None)
        return cas.CaTrust(added, frozenset(retired))

    def removed(self) -> frozenset[int]:
        """Validators removed by an approved removal."""
        return frozenset(p.replica_id for p in self.proposals.values()
                         if p.kind == "remove" and p.status == ProposalStatus.APPROVED)

    def pending_change(self, epoch: int) -> Proposal | None:
        """The proposal approved in `epoch`, whose validator-set change opens the next one."""
        return next((p for p in self.proposals.values() if p.status == ProposalStatus.APPROVED
                     and p.kind in RECONFIGURING and p.decided_epoch == epoch), None)

    def key_states(self, base_keys: Mapping[str, bytes]) -> dict[str, KeyState]:
        from consortium.ledger.keyrules import key_states  # it builds on this module
        return key_states(base_keys, self.proposals)

    def client_orgs(self) -> dict[str, str]:
        """Client id -> organisation, for approved joins."""
        out = {}
        for p in self.joined():
            out[org_client_id(p.org)] = p.org
            out[validator_client_id(p.replica_id)] = p.org
        return out


EMPTY = MembershipState({})


class Listed(Protocol):
    """A proposal as a validator lists it (`pb.ProposalInfo`)."""

    proposal_id: str
    kind: str
    replica_id: int
    org: str
    name: str
    validator_key: bytes
    client_key: bytes
    encryption_key: bytes
    status: str
    decided_height: int


def from_listing(listed: Iterable[Listed]) -> MembershipState:
    """The proposals a validator lists (newest first), as the membership state key states and
    admitted members are derived from (an expired join request counts as pending, as at
    execution)."""
    return MembershipState({p.proposal_id: Proposal(
        p.proposal_id, p.kind, p.replica_id, p.org, p.name, bytes(p.validator_key),
        bytes(p.client_key), bytes(p.encryption_key),
        status=ProposalStatus.PENDING if p.status == ProposalStatus.EXPIRED else p.status,
        decided_height=p.decided_height) for p in reversed(list(listed))})


def key_change_signing_bytes(chain_id: bytes, epoch: int, proposal_id: str) -> bytes:
    """What a validator's approval of a client key or CA proposal signs (with its replica key):
    the proposal, in the epoch the vote is cast (neither is a validator-set change, so an
    approval of one can never be assembled into a reconfiguration)."""
    return tagged_hash(b"consortium/client-key-approval", chain_id, epoch.to_bytes(4, "big"),
                       bytes.fromhex(proposal_id))


def approval_signing_bytes(chain_id: bytes, config: EpochConfig, p: Proposal) -> bytes:
    """What an approval of proposal `p`, cast in epoch `config`, signs."""
    if p.kind in RECONFIGURING:
        return m.reconfiguration_signing_bytes(chain_id, config.epoch, p.new_members(config))
    return key_change_signing_bytes(chain_id, config.epoch, p.proposal_id)


def reconfiguration_payload(p: Proposal, config: EpochConfig) -> bytes:
    """The consensus-level request body that carries out an approved proposal."""
    return codec.encode_reconfiguration(m.Reconfiguration(config.epoch, p.new_members(config),
                                                          p.approvals(config.epoch)))


@dataclass(frozen=True, slots=True)
class Context:
    """What judging a governance transaction needs, as of the batch being executed (or, at
    admission, as of the validator's head block)."""

    chain_id: bytes
    config: EpochConfig
    voters: Mapping[str, int]
    known_orgs: frozenset[str]
    verifier: Verifier
    known_clients: frozenset[str] = frozenset()
    """Client ids already taken (genesis clients and validators, admitted members')."""
    block_ms: int = 0
    """The block time judged at: the executing block's, or at admission the head's."""
    pending_ttl_ms: int = JOIN_PENDING_TTL_MS
    sponsor_keys: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    """Member organisation -> the client keys that may sponsor for it (removed organisations,
    validator keys and the admission service are not in it)."""
    keys_in_use: frozenset[bytes] = frozenset()
    """Every key a member holds or held (clients', validators', encryption keys): a join
    request that names one could act as, or read for, that member once approved."""
    height: int = 0
    """The height of the block being executed (at admission: the next one)."""
    client_orgs: Mapping[str, str] = field(default_factory=dict)
    """Client id -> organisation, for the member clients (removed organisations excluded)."""
    base_keys: Mapping[str, bytes] = field(default_factory=dict)
    """Client id -> its key from genesis or its organisation's join request."""


def sponsorship_problem(tx: JoinRequest, ctx: Context) -> str:
    """Why `tx`'s sponsorship does not stand ("" when it does): the sponsor must be a current
    member and have signed this application with one of its client keys."""
    if not tx.sponsor or not tx.sponsorship:
        return ("a join request needs a member's sponsorship (a member signs the application "
                "with `consortium members sponsor`)")
    keys = ctx.sponsor_keys.get(tx.sponsor)
    if not keys:
        return f"sponsor {tx.sponsor!r} is not a current member organisation"
    signed = sponsorship_signing_bytes(ctx.chain_id, tx)
    if not any(ctx.verifier.verify(key, signed, tx.sponsorship) for key in keys):
        return (f"the sponsorship is not a signature of {tx.sponsor!r}'s client key over this "
                "application (organisation, name, validator id and keys, on this chain)")
    return ""


def judge_join(tx: JoinRequest, client_id: str, proposal_id: str, state: dict[str, Proposal],
               ctx: Context) -> str:
    """"" and the proposal added to `state`, or why the request is refused. Join requests
    that expired (`Proposal.expired`) stand in nobody's way: their organisation id, validator
    id, keys and slot are free again."""
    if client_id != applicant_client_id(tx.validator_key):
        return "a join request is signed by the applicant's validator key " \
               "(client applicant-<key hex>)"
    problem = sponsorship_problem(tx, ctx)
    if problem:
        return problem
    live = [p for p in state.values() if p.status != ProposalStatus.REJECTED
            and not p.expired(ctx.block_ms, ctx.pending_ttl_ms)]
    joins = [p for p in live if p.kind == "join"]
    if tx.org in ctx.known_orgs or any(p.org == tx.org for p in joins):
        return f"organisation {tx.org!r} is a member or has a join request open"
    if ctx.config.is_member(tx.replica_id) or any(p.replica_id == tx.replica_id
                                                  for p in joins) \
            or validator_client_id(tx.replica_id) in ctx.known_clients:
        return f"replica id {tx.replica_id} is taken"
    if org_client_id(tx.org) in ctx.known_clients:
        return f"client id {org_client_id(tx.org)} is taken"
    pending = [p for p in joins if p.status == ProposalStatus.PENDING]
    mine = {tx.validator_key, tx.client_key, tx.encryption_key}
    held = ctx.keys_in_use | {mem.public_key for mem in ctx.config.members} | {
        k for p in joins if p.status == ProposalStatus.APPROVED
        for k in (p.validator_key, p.client_key, p.encryption_key)} | changed_keys(state)
    if mine & held:
        return ("the join request reuses a key a member already holds; generate new keys "
                "(consortium members apply)")
    if any(mine & {p.validator_key, p.client_key, p.encryption_key} for p in pending):
        return "the join request reuses a key of another open join request"
    if len(pending) >= JOINS_PENDING_MAX:
        return (f"{SLOTS_TAKEN}{JOINS_PENDING_MAX} join requests are already waiting for "
                "votes; try later")
    if sum(1 for p in pending if p.sponsor == tx.sponsor) >= JOINS_PENDING_PER_SPONSOR:
        return (f"{SLOTS_TAKEN}{tx.sponsor!r} already sponsors {JOINS_PENDING_PER_SPONSOR} "
                "join requests waiting for votes; try later or ask another member")
    state[proposal_id] = Proposal(proposal_id, "join", tx.replica_id, tx.org, tx.name,
                                  tx.validator_key, tx.client_key, tx.encryption_key,
                                  tx.peer_address, tx.client_address, sponsor=tx.sponsor,
                                  recorded_ms=ctx.block_ms)
    return ""


def judge_remove(tx: RemoveRequest, client_id: str, proposal_id: str,
                 state: dict[str, Proposal], org_of: Mapping[str, str], ctx: Context) -> str:
    if client_id not in ctx.voters:
        return "removals are proposed by current validators (validator-<id>)"
    if not ctx.config.is_member(tx.replica_id):
        return f"validator {tx.replica_id} is not a current member"
    if ctx.config.n <= 1:
        return "the last validator cannot be removed"
    if any(p.kind == "remove" and p.replica_id == tx.replica_id
           and p.status == ProposalStatus.PENDING for p in state.values()):
        return f"a removal of validator {tx.replica_id} is already open"
    state[proposal_id] = Proposal(proposal_id, "remove", tx.replica_id,
                                  org_of.get(validator_client_id(tx.replica_id), ""),
                                  recorded_ms=ctx.block_ms)
    return ""


def judge_vote(tx: MemberVote, client_id: str, state: dict[str, Proposal],
               ctx: Context) -> str:
    """"" (or MEMBERSHIP_OUTCOME + the new status) with the vote added, or why it is
    refused."""
    voter = ctx.voters.get(client_id)
    if voter is None:
        return "membership votes come only from current validators (validator-<id>)"
    p = state.get(tx.proposal_id)
    if p is None:
        return f"no membership proposal {tx.proposal_id}"
    if p.status != ProposalStatus.PENDING:
        return f"the proposal is already {p.status}"
    if p.expired(ctx.block_ms, ctx.pending_ttl_ms):
        return (f"the join request expired: it waited {ctx.pending_ttl_ms // 1000} s of block "
                f"time for a decision (until {join_expires_ms(p.recorded_ms, ctx.pending_ttl_ms)}"
                " ms); the applicant may apply again")
    config = ctx.config
    if tx.from_epoch != config.epoch:
        return (f"the vote is for epoch {tx.from_epoch}; the validator set is epoch "
                f"{config.epoch} now: vote again")
    if any(v.replica_id == voter and v.epoch == config.epoch for v in p.votes):
        return f"validator {voter} already voted on this proposal"
    if tx.approve and p.kind == CLIENT_KEY:
        from consortium.ledger.keyrules import key_change_problem  # it builds on this module
        problem = key_change_problem(p.name, p.validator_key, p.client_key, state, ctx)
        if problem:
            return f"{problem}: the proposal can no longer take effect"
    if tx.approve and p.kind == VALIDATOR_KEY and ctx.config.key_of(p.replica_id) != p.client_key:
        return (f"validator {p.replica_id} no longer holds the key this rotation replaces (it "
                "left the set or its key changed): the proposal can no longer take effect")
    if tx.approve:
        waiting = MembershipState(state).pending_change(config.epoch)
        if waiting is not None and p.kind in RECONFIGURING:
            # The consensus layer carries out one validator-set change per epoch, and
            # approvals are bound to the set they were cast for.
            return (f"membership change {waiting.proposal_id[:16]} was approved in this epoch "
                    "and takes effect at the next checkpoint: vote again after it")
        key = config.key_of(voter)
        signed = approval_signing_bytes(ctx.chain_id, config, p)
        if key is None or not ctx.verifier.verify(key, signed, tx.approval):
            return ("the approval is not the voter's signature over this validator-set change"
                    if p.kind in RECONFIGURING else
                    "the approval is not the voter's signature over this proposal")
    votes = (*p.votes, Vote(config.epoch, voter, tx.approve, tx.approval))
    current = [v for v in votes if v.epoch == config.epoch]
    approvals = sum(1 for v in current if v.approve)
    rejections = len(current) - approvals
    status = ProposalStatus.APPROVED if approvals >= config.quorum else \
        ProposalStatus.REJECTED if rejections > config.n - config.quorum else p.status
    state[tx.proposal_id] = replace(p, votes=votes, status=status, decided_height=(
        ctx.height if status != p.status else p.decided_height))
    return MEMBERSHIP_OUTCOME + status if status != p.status else ""


def changed_keys(state: Mapping[str, Proposal]) -> set[bytes]:
    """Keys named by client key proposals (new or old: never to be used again)."""
    return {k for p in state.values() if p.kind == CLIENT_KEY
            for k in (p.validator_key, p.client_key) if k}
