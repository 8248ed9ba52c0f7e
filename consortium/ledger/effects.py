"""The ledger state a block leaves behind, as a pure function: what `build_block` reads back
(each record's `RecordState`, the membership proposals) after the effects of every recorded
transaction.

PostgreSQL applies the same effects with SQL (`storage/store.py`, one round trip per block);
this is the model of it. The simulator's in-memory storage uses it, so the production driver
runs there on the same rules, and a storage test holds PostgreSQL's answers to it on every
kind of transaction: two implementations, one checked against the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    SCREENING_OUTCOME,
    Block,
    BlockHeader,
    EntryStatus,
    RecordState,
    Screening,
)
from consortium.ledger.ca import CA, fingerprint
from consortium.ledger.transactions import (
    CaChange,
    ClientKeyChange,
    Erase,
    Grant,
    JoinRequest,
    MemberVote,
    RemoveRequest,
    ReviewVote,
    Revoke,
    ValidatorKeyChange,
    Verdict,
)


@dataclass
class LedgerState:
    """Every record's execution state and every membership proposal, after the blocks applied
    so far (`apply`, in height order)."""

    initial_screening: str = Screening.ACCEPTED
    """A new record's screening status: pending-screening when genesis names an admission
    service."""
    records: dict[str, RecordState] = field(default_factory=dict)
    proposals: dict[str, ms.Proposal] = field(default_factory=dict)

    def record_states(self, record_ids: Iterable[str]) -> dict[str, RecordState]:
        return {r: self.records[r] for r in set(record_ids) if r in self.records}

    def membership(self) -> ms.MembershipState:
        return ms.MembershipState(dict(self.proposals))

    def apply(self, block: Block) -> None:
        """The effects of one block's recorded entries, in entry order (as the store applies
        them in one transaction)."""
        for e in block.entries:
            if e.status != EntryStatus.RECORDED:
                continue
            if e.submission is not None:
                s = e.submission
                self.records[e.record_id] = RecordState(
                    s.kind, s.subject_id, s.submitter_org, frozenset(s.readers),
                    screening=self.initial_screening)
                continue
            a = e.action
            if isinstance(a, JoinRequest | RemoveRequest):
                self._propose(e.record_id, a, block.header.timestamp_ms)
            elif isinstance(a, CaChange):
                if e.record_id not in self.proposals:
                    self.proposals[e.record_id] = ms.Proposal(
                        e.record_id, CA, int(e.client_id.removeprefix(ms.VALIDATOR_PREFIX)),
                        e.sender_org or "", "add" if a.add else "retire",
                        fingerprint(a.certificate), recorded_ms=block.header.timestamp_ms,
                        certificate=a.certificate)
            elif isinstance(a, ValidatorKeyChange):
                if e.record_id not in self.proposals:
                    self.proposals[e.record_id] = ms.Proposal(
                        e.record_id, ms.VALIDATOR_KEY, a.replica_id, e.sender_org or "", "",
                        a.new_key, a.old_key, recorded_ms=block.header.timestamp_ms)
            elif isinstance(a, ClientKeyChange):
                self._key_change(e.record_id, a, e.client_id, e.reason, block.header)
            elif isinstance(a, MemberVote):
                self._vote(a, e.client_id, e.reason, block.header.height)
            elif isinstance(a, Grant | Revoke | Erase | Verdict | ReviewVote):
                self._on_record(a, e.client_id, e.reason)

    def _on_record(self, a: Grant | Revoke | Erase | Verdict | ReviewVote, client_id: str,
                   reason: str) -> None:
        st = self.records.get(a.record_id)
        if st is None:
            return  # not recorded: build_block refused it, so it is not RECORDED
        if isinstance(a, Grant) and a.wrapped_key and not st.erased:
            st = replace(st, readers=st.readers | {a.org})
        elif isinstance(a, Revoke):
            st = replace(st, readers=st.readers - {a.org})
        elif isinstance(a, Erase):
            st = replace(st, erased=True, readers=frozenset())
        elif isinstance(a, ReviewVote):
            voter = int(client_id.removeprefix("validator-"))
            if all(v != voter for v, _ in st.votes):
                st = replace(st, votes=st.votes | {(voter, a.accept)})
        if reason.startswith(SCREENING_OUTCOME) and isinstance(a, Verdict | ReviewVote):
            st = replace(st, screening=reason.removeprefix(SCREENING_OUTCOME))
        self.records[a.record_id] = st

    def _propose(self, proposal_id: str, a: JoinRequest | RemoveRequest,
                 recorded_ms: int) -> None:
        if proposal_id in self.proposals:
            return
        if isinstance(a, JoinRequest):
            self.proposals[proposal_id] = ms.Proposal(
                proposal_id, "join", a.replica_id, a.org, a.name, a.validator_key,
                a.client_key, a.encryption_key, a.peer_address, a.client_address,
                sponsor=a.sponsor, recorded_ms=recorded_ms)
            return
        org = next((p.org for p in self.proposals.values() if p.kind == "join"
                    and p.replica_id == a.replica_id
                    and p.status == ms.ProposalStatus.APPROVED), "")
        self.proposals[proposal_id] = ms.Proposal(proposal_id, "remove", a.replica_id, org,
                                                  recorded_ms=recorded_ms)

    def _key_change(self, proposal_id: str, a: ClientKeyChange, client_id: str, reason: str,
                    header: BlockHeader) -> None:
        """A client key change: in force at once when its reason says so (its organisation's
        own validator signed it), else a proposal to vote on."""
        if proposal_id in self.proposals:
            return
        own = reason.startswith(ms.KEY_CHANGED)
        self.proposals[proposal_id] = ms.Proposal(
            proposal_id, ms.CLIENT_KEY, int(client_id.removeprefix(ms.VALIDATOR_PREFIX)),
            a.org, a.client_id, a.old_key, a.new_key,
            status=ms.ProposalStatus.APPROVED if own else ms.ProposalStatus.PENDING,
            recorded_ms=header.timestamp_ms, decided_height=header.height if own else 0)

    def _vote(self, a: MemberVote, client_id: str, reason: str, height: int) -> None:
        p = self.proposals.get(a.proposal_id)
        if p is None:
            return
        voter = int(client_id.removeprefix("validator-"))
        if not any(v.epoch == a.from_epoch and v.replica_id == voter for v in p.votes):
            p = replace(p, votes=(*p.votes, ms.Vote(a.from_epoch, voter, a.approve,
                                                     a.approval)))
        if reason.startswith(ms.MEMBERSHIP_OUTCOME):
            p = replace(p, status=reason.removeprefix(ms.MEMBERSHIP_OUTCOME),
                        decided_height=height)
        self.proposals[a.proposal_id] = p
