"""Request signers by height: which key signs for each client at each point of a chain.

A client's key comes from genesis or from its organisation's join request, and may later be
revoked or replaced on the ledger (a `ClientKeyChange` signed by the organisation's own
validator takes effect in the block that records it; one proposed by another organisation's
validator when a vote approves it). Consensus orders requests signed with any key the client
ever held; execution refuses those signed with a revoked or replaced key. So a verifier that
walks the chain learns the changes entry by entry, in ledger order, and checks both: every
request is signed by a key its client held, and none signed with a key no longer in force
was executed. Records signed before a change keep verifying with the key of their time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consortium.crypto.signing import Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import EnvelopeStatus
from consortium.ledger.transactions import ClientKeyChange, MemberVote, applicant_key
from consortium.pbft import messages as m


@dataclass
class ClientSigners:
    """Fed with the recorded governance entries of a chain in order (`follow`), it judges each
    request's signature as of its position (`problem`)."""

    chain_id: bytes
    verifier: Verifier
    keys: dict[str, bytes]
    """Client id -> the key in force (for a revoked client: the revoked key)."""
    former: dict[str, list[bytes]] = field(default_factory=dict)
    """Client id -> keys it held before (replaced)."""
    revoked: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Client id -> (height, revocation id) of the revocation of its current key."""
    proposals: dict[str, ClientKeyChange] = field(default_factory=dict)
    """Client key changes waiting for votes, by proposal id."""

    def problem(self, client_id: str, digest: bytes, signature: bytes, status: str,
                epoch_keys: tuple[bytes, ...] = ()) -> str:
        """Why request `digest` of `client_id`, with `status`, breaks the rules ("" if not).
        `epoch_keys`, for a validator's own client: the key its block's epoch names for it,
        then the others the epoch history gave it (after a rotation only the first signs;
        the others still order)."""
        signed = m.request_signing_bytes(self.chain_id, digest)
        key = self.keys.get(client_id) or applicant_key(client_id)
        former = list(self.former.get(client_id, ()))
        if epoch_keys and epoch_keys[0] != key:
            former += [k for k in (key, *epoch_keys[1:]) if k is not None and k != epoch_keys[0]]
            key = epoch_keys[0]
        if key is not None and self.verifier.verify(key, signed, signature):
            revoked = self.revoked.get(client_id)
            if revoked is not None and status == EnvelopeStatus.EXECUTED:
                return (f"signed with {client_id}'s key revoked at height {revoked[0]} "
                        f"(revocation {revoked[1][:16]}), yet executed")
            return ""
        if any(self.verifier.verify(k, signed, signature) for k in former):
            if status == EnvelopeStatus.EXECUTED:
                return f"signed with a former (replaced) key of {client_id}, yet executed"
            return ""
        return (f"not signed by a known client {client_id!r} (genesis, or named by an earlier "
                "join request or key change)")

    def learn(self, client_id: str, key: bytes) -> None:
        """A client named by a join request."""
        self.keys[client_id] = key

    def follow(self, height: int, proposal_id: str, tx: object, reason: str) -> None:
        """A recorded governance entry: a key change in force, a proposal, or a vote that
        approved one."""
        if isinstance(tx, ClientKeyChange):
            if reason.startswith(ms.KEY_CHANGED):
                self._apply(height, proposal_id, tx)
            else:
                self.proposals[proposal_id] = tx
        elif isinstance(tx, MemberVote) and \
                reason == ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED:
            change = self.proposals.pop(tx.proposal_id, None)
            if change is not None:
                self._apply(height, tx.proposal_id, change)

    def _apply(self, height: int, proposal_id: str, tx: ClientKeyChange) -> None:
        if tx.revokes:
            self.revoked[tx.client_id] = (height, proposal_id)
            return
        old = self.keys.get(tx.client_id)
        if old is not None:
            self.former.setdefault(tx.client_id, []).append(old)
        self.keys[tx.client_id] = tx.new_key
        self.revoked.pop(tx.client_id, None)
