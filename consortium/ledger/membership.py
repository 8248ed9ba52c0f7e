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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from consortium.crypto.signing import Verifier
from consortium.ledger.transactions import (
    JoinRequest,
    MemberVote,
    RemoveRequest,
    applicant_client_id,
)
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member

JOINS_PENDING_MAX = 8
"""At most this many join requests wait for votes at once (flood protection: an applicant needs
no prior standing to file one)."""
MEMBERSHIP_OUTCOME = "membership: "
"""The reason of a vote that decided its proposal ("membership: approved" / "...rejected")."""


class ProposalStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Vote:
    epoch: int
    replica_id: int
    approve: bool
    approval: bytes


def changed_members(members: tuple[Member, ...], kind: str, replica_id: int,
                    validator_key: bytes) -> tuple[Member, ...]:
    """The validator set after a join ("join": add the member, in id order) or a removal."""
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

    def new_members(self, config: EpochConfig) -> tuple[Member, ...]:
        """The validator set this proposal turns `config` into."""
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
    return f"validator-{replica_id}"


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
        they may act is decided at execution (`client_orgs`, the epoch's voters)."""
        out: dict[str, bytes] = {}
        for p in self.proposals.values():
            if p.kind == "join" and p.status != ProposalStatus.REJECTED:
                out[org_client_id(p.org)] = p.client_key
                out[validator_client_id(p.replica_id)] = p.validator_key
        return out

    def removed(self) -> frozenset[int]:
        """Validators removed by an approved removal."""
        return frozenset(p.replica_id for p in self.proposals.values()
                         if p.kind == "remove" and p.status == ProposalStatus.APPROVED)

    def pending_change(self, epoch: int) -> Proposal | None:
        """The proposal approved in `epoch`, whose validator-set change opens the next one."""
        return next((p for p in self.proposals.values() if p.status == ProposalStatus.APPROVED
                     and p.decided_epoch == epoch), None)

    def client_orgs(self) -> dict[str, str]:
        """Client id -> organisation, for approved joins."""
        out = {}
        for p in self.joined():
            out[org_client_id(p.org)] = p.org
            out[validator_client_id(p.replica_id)] = p.org
        return out


EMPTY = MembershipState({})


def reconfiguration_payload(p: Proposal, config: EpochConfig) -> bytes:
    """The consensus-level request body that carries out an approved proposal."""
    return codec.encode_reconfiguration(m.Reconfiguration(config.epoch, p.new_members(config),
                                                          p.approvals(config.epoch)))


@dataclass(frozen=True, slots=True)
class Context:
    """What judging a governance transaction needs, as of the batch being executed."""

    chain_id: bytes
    config: EpochConfig
    voters: Mapping[str, int]
    known_orgs: frozenset[str]
    verifier: Verifier
    known_clients: frozenset[str] = frozenset()
    """Client ids already taken (genesis clients and validators, admitted members')."""


def judge_join(tx: JoinRequest, client_id: str, proposal_id: str, state: dict[str, Proposal],
               ctx: Context) -> str:
    """"" and the proposal added to `state`, or why the request is refused."""
    if client_id != applicant_client_id(tx.validator_key):
        return "a join request is signed by the applicant's validator key " \
               "(client applicant-<key hex>)"
    live = [p for p in state.values() if p.status != ProposalStatus.REJECTED]
    if tx.org in ctx.known_orgs or any(p.org == tx.org and p.kind == "join" for p in live):
        return f"organisation {tx.org!r} is a member or has a join request open"
    if ctx.config.is_member(tx.replica_id) or any(p.replica_id == tx.replica_id and
                                                  p.kind == "join" for p in live) \
            or validator_client_id(tx.replica_id) in ctx.known_clients:
        return f"replica id {tx.replica_id} is taken"
    if org_client_id(tx.org) in ctx.known_clients:
        return f"client id {org_client_id(tx.org)} is taken"
    keys = {mem.public_key for mem in ctx.config.members} | {p.validator_key for p in live}
    if tx.validator_key in keys:
        return "that validator key is already in use"
    if sum(1 for p in live if p.kind == "join" and p.status == ProposalStatus.PENDING) \
            >= JOINS_PENDING_MAX:
        return f"{JOINS_PENDING_MAX} join requests are already waiting for votes; try later"
    state[proposal_id] = Proposal(proposal_id, "join", tx.replica_id, tx.org, tx.name,
                                  tx.validator_key, tx.client_key, tx.encryption_key,
                                  tx.peer_address, tx.client_address)
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
                                  org_of.get(validator_client_id(tx.replica_id), ""))
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
    config = ctx.config
    if tx.from_epoch != config.epoch:
        return (f"the vote is for epoch {tx.from_epoch}; the validator set is epoch "
                f"{config.epoch} now: vote again")
    if any(v.replica_id == voter and v.epoch == config.epoch for v in p.votes):
        return f"validator {voter} already voted on this proposal"
    if tx.approve:
        waiting = MembershipState(state).pending_change(config.epoch)
        if waiting is not None:
            # The consensus layer carries out one validator-set change per epoch, and
            # approvals are bound to the set they were cast for.
            return (f"membership change {waiting.proposal_id[:16]} was approved in this epoch "
                    "and takes effect at the next checkpoint: vote again after it")
        key = config.key_of(voter)
        signed = m.reconfiguration_signing_bytes(ctx.chain_id, config.epoch,
                                                 p.new_members(config))
        if key is None or not ctx.verifier.verify(key, signed, tx.approval):
            return "the approval is not the voter's signature over this validator-set change"
    votes = (*p.votes, Vote(config.epoch, voter, tx.approve, tx.approval))
    current = [v for v in votes if v.epoch == config.epoch]
    approvals = sum(1 for v in current if v.approve)
    rejections = len(current) - approvals
    status = ProposalStatus.APPROVED if approvals >= config.quorum else \
        ProposalStatus.REJECTED if rejections > config.n - config.quorum else p.status
    state[tx.proposal_id] = replace(p, votes=votes, status=status)
    return MEMBERSHIP_OUTCOME + status if status != p.status else ""
