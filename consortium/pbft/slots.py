"""What a replica knows about one sequence number: proposal headers, batches and votes.

Proposal headers (signed PRE-PREPAREs) and batch contents are kept apart: a header commits to a
batch through its Merkle root, size and time (`messages.proposal_digest`), and the same batch
may be proposed again in a later view under another header. A replica can hold a header without
its batch (from a NEW-VIEW, or its own log after a restart) and fetch the batch; it can hold a
batch from one view and a certificate from another. Everything here is bounded, so an
equivocating primary cannot fill memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consortium.pbft import messages as m

BATCHES_PER_SLOT_MAX = 8
"""Distinct batches (by Merkle root) remembered per sequence number (one per view is enough for
honest primaries; the bound stops an equivocating primary from filling memory)."""
HEADERS_PER_SLOT_MAX = 2 * BATCHES_PER_SLOT_MAX
"""Distinct (view, digest) proposal headers remembered per sequence number."""
VOTES_PER_SLOT_PER_MEMBER = 8
"""PREPAREs (likewise COMMITs) kept per sequence number, per member of the epoch."""

VoteKey = tuple[int, int, bytes]
"""(view, sender, digest)."""
VOTE_TYPE = {m.PrePrepare: 1, m.Prepare: 2, m.Commit: 3}
"""A vote's type in the key of what a replica signed: (type, epoch, view, seq) -> digest."""


def header(msg: m.SignedMessage) -> m.PrePrepare:
    b = msg.body
    assert isinstance(b, m.PrePrepare)
    return b


@dataclass(slots=True)
class Slot:
    seq: int
    pre_prepare: m.SignedMessage | None = None
    """The proposal header this replica adopted in the highest view it adopted one."""
    batches: dict[bytes, tuple[m.Request, ...]] = field(default_factory=dict)
    """Verified batch contents by Merkle root."""
    proposals: dict[tuple[int, bytes], m.SignedMessage] = field(default_factory=dict)
    """Verified proposal headers by (view, digest): a prepared proof must pair the votes of a
    view with that view's header, also when the same batch was re-proposed later."""
    prepares: dict[VoteKey, m.SignedMessage] = field(default_factory=dict)
    """(view, sender, digest) -> PREPARE. Keyed by digest too: a Byzantine replica may send
    different votes to different replicas, and its first (fake) vote must not hide the real one
    that arrives later in a retransmitted certificate."""
    commits: dict[VoteKey, m.SignedMessage] = field(default_factory=dict)
    created_tick: int = 0
    fetch_attempts: int = 0
    """BATCH-REQUESTs sent for this slot."""
    fetch_asked: set[int] = field(default_factory=set)
    """Peers asked for this slot's batch in the current round: the next request goes to a peer
    not asked yet, whatever order the next candidates come in (a new round starts once every
    peer was asked)."""

    @property
    def view(self) -> int:
        return -1 if self.pre_prepare is None else header(self.pre_prepare).view

    @property
    def digest(self) -> bytes | None:
        return None if self.pre_prepare is None else header(self.pre_prepare).digest

    # ------------------------------------------------------------------------ headers

    def remember_header(self, msg: m.SignedMessage, *, adopt: bool = False) -> None:
        """Keep a verified header (bounded; a header adopted in the current view always fits:
        the oldest other one goes)."""
        b = header(msg)
        key = (b.view, b.digest)
        if key in self.proposals:
            return
        if len(self.proposals) >= HEADERS_PER_SLOT_MAX:
            if not adopt:
                return
            current = self.digest
            oldest = next(k for k in self.proposals if k[1] != current or k[0] != self.view)
            del self.proposals[oldest]
        self.proposals[key] = msg

    def header_for(self, digest: bytes) -> m.SignedMessage | None:
        """Any header we hold for this digest (same digest: same root, size and time)."""
        for (_v, d), msg in self.proposals.items():
            if d == digest:
                return msg
        return None

    def proposal(self, view: int, digest: bytes) -> m.SignedMessage:
        """The header of `view` for `digest` if we hold it, else any with that digest."""
        msg = self.proposals.get((view, digest)) or self.header_for(digest)
        assert msg is not None, "a certificate's batch is executed only with its header"
        return msg

    # ------------------------------------------------------------------------ batches

    def remember_batch(self, root: bytes, requests: tuple[m.Request, ...], *,
                       adopt: bool = False) -> bool:
        """Keep verified contents (bounded; adopted contents always fit). Whether they are
        held now."""
        if root in self.batches:
            return True
        if len(self.batches) >= BATCHES_PER_SLOT_MAX:
            if not adopt:
                return False
            keep = None if self.pre_prepare is None else header(self.pre_prepare).root
            oldest = next(r for r in self.batches if r != keep)
            del self.batches[oldest]
        self.batches[root] = requests
        return True

    def contents(self, digest: bytes) -> tuple[m.Request, ...] | None:
        """The batch behind `digest`, if we hold its header and its requests."""
        msg = self.header_for(digest)
        if msg is None:
            return None
        b = header(msg)
        if b.count == 0:
            return ()
        return self.batches.get(b.root)

    def has_contents(self, digest: bytes) -> bool:
        return self.contents(digest) is not None

    # -------------------------------------------------------------------------- votes

    @staticmethod
    def votes(table: dict[VoteKey, m.SignedMessage], view: int,
              digest: bytes) -> list[m.SignedMessage]:
        return [msg for (v, _s, d), msg in table.items() if v == view and d == digest]

    @staticmethod
    def own_vote(table: dict[VoteKey, m.SignedMessage], view: int,
                 me: int) -> m.SignedMessage | None:
        for (v, s, _d), msg in table.items():
            if v == view and s == me:
                return msg
        return None

    def all_requests(self) -> list[m.Request]:
        return [r for batch in self.batches.values() for r in batch]
