"""Key and CA changes: which client keys are in force (revocations and rotations, folded into
`KeyState`s), and the rules execution applies to client key changes, validator key rotations
and CA changes (`judge_*`, called by `blocks.judge_governance` like the membership rules of
consortium/ledger/membership.py, on which they build). docs/deploy.md, "Rotation and
revocation".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consortium.ledger import ca as cas
from consortium.ledger.membership import (
    CLIENT_KEY,
    KEY_CHANGED,
    RECONFIGURING,
    VALIDATOR_KEY,
    VALIDATOR_PREFIX,
    Context,
    MembershipState,
    Proposal,
    ProposalStatus,
    changed_keys,
    validator_client_id,
)
from consortium.ledger.transactions import (
    CaChange,
    ClientKeyChange,
    ValidatorKeyChange,
    validator_key_signing_bytes,
)


@dataclass(frozen=True, slots=True)
class KeyState:
    """A client whose request-signing key was revoked or replaced on the ledger."""

    client_id: str
    key: bytes
    """Its current key (the revoked one, when `revoked_by` is set)."""
    keys: tuple[bytes, ...]
    """Every key it held, oldest first (requests signed before a change still verify)."""
    revoked_by: Proposal | None = None
    replaced_by: Proposal | None = None
    """The change that installed `key` (None: `key` is the key from genesis or a join)."""

    def refusal(self) -> str:
        """Why a request signed with a key it no longer holds is refused."""
        if self.revoked_by is not None:
            p = self.revoked_by
            return (f"{self.client_id}'s key {self.key.hex()[:16]}… was revoked at height "
                    f"{p.decided_height} (revocation {p.proposal_id[:16]}): its organisation "
                    "rotates in a new key with `consortium keys rotate --client`")
        assert self.replaced_by is not None
        return (f"signed with a former key of {self.client_id}: its key was replaced at height "
                f"{self.replaced_by.decided_height} (rotation "
                f"{self.replaced_by.proposal_id[:16]}); sign with the new key")


def key_states(base_keys: Mapping[str, bytes],
               proposals: Mapping[str, Proposal]) -> dict[str, KeyState]:
    """The clients whose key changed, from their key at genesis or join (`base_keys`) and the
    approved client key proposals. Every approved change named the key current when it was
    approved and new keys are never reused, so a client's keys form one chain
    (base -> replacement -> ...) whose end is its key; it is revoked when a revocation names
    that end. Whatever order the approvals are folded in, the result is the same."""
    changes: dict[str, list[Proposal]] = {}
    for p in proposals.values():
        if p.kind == CLIENT_KEY and p.status == ProposalStatus.APPROVED:
            changes.setdefault(p.name, []).append(p)
    out = {}
    for client_id, ps in changes.items():
        key = base_keys.get(client_id)
        if key is None:
            continue
        rotations = {p.validator_key: p for p in ps if p.client_key}
        revocations = {p.validator_key: p for p in ps if not p.client_key}
        keys, installed = [key], None
        while key in rotations and len(keys) <= len(rotations):
            installed = rotations[key]
            key = installed.client_key
            keys.append(key)
        out[client_id] = KeyState(client_id, key, tuple(keys), revocations.get(key), installed)
    return out


def judge_validator_key(tx: ValidatorKeyChange, client_id: str, proposal_id: str,
                        state: dict[str, Proposal], ctx: Context) -> str:
    """"" with a rotation proposal to vote on, or why the request is refused: a current
    validator asks for itself, signing with its current key, and its new key signs too."""
    if ctx.voters.get(client_id) != tx.replica_id:
        return ("a validator key change is signed by that validator itself "
                f"({validator_client_id(tx.replica_id)}, with its current key)")
    if ctx.config.key_of(tx.replica_id) != tx.old_key:
        return f"{tx.old_key.hex()[:16]}… is not validator {tx.replica_id}'s current key"
    if not ctx.verifier.verify(tx.new_key, validator_key_signing_bytes(
            ctx.chain_id, tx.replica_id, tx.old_key, tx.new_key), tx.possession):
        return "the new key did not sign the change (possession signature)"
    if tx.new_key in ctx.keys_in_use or tx.new_key in changed_keys(state) or any(
            tx.new_key in (p.validator_key, p.client_key, p.encryption_key)
            for p in state.values() if p.kind in ("join", VALIDATOR_KEY)) or any(
            mem.public_key == tx.new_key for mem in ctx.config.members):
        return "the new key is one a member holds or held; generate a new key"
    if any(p.kind in RECONFIGURING and p.replica_id == tx.replica_id and p.kind != "join"
           and p.status == ProposalStatus.PENDING for p in state.values()):
        return f"a removal or key change of validator {tx.replica_id} is already open"
    state[proposal_id] = Proposal(proposal_id, VALIDATOR_KEY, tx.replica_id,
                                  ctx.client_orgs.get(client_id, ""), "", tx.new_key,
                                  tx.old_key, recorded_ms=ctx.block_ms)
    return ""


def judge_ca(tx: CaChange, client_id: str, proposal_id: str, state: dict[str, Proposal],
             ctx: Context) -> str:
    """"" with a CA proposal to vote on, or why it is refused."""
    voter = ctx.voters.get(client_id)
    if voter is None:
        return "CA changes are proposed by current validators (validator-<id>)"
    problem = cas.ca_problem(tx.certificate, ctx.block_ms) if tx.add else ""
    fp = b""
    try:
        fp = cas.fingerprint(tx.certificate)
    except cas.NotACa as exc:
        problem = problem or str(exc)
    if problem:
        return problem
    trust = MembershipState(state).ca_trust()
    if tx.add and fp in trust.added:
        return "the CA is trusted already"
    if tx.add and fp in trust.retired:
        return "the CA was retired; a retired CA is never trusted again"
    if not tx.add and fp in trust.retired:
        return "the CA is retired already"
    if not tx.add and not set(trust.added) - {fp}:
        return ("a CA is retired only while another, added by vote, stays trusted: add the "
                "new CA first")
    if any(p.kind == cas.CA and p.validator_key == fp and p.status == ProposalStatus.PENDING
           for p in state.values()):
        return "a change of this CA is already open"
    state[proposal_id] = Proposal(proposal_id, cas.CA, voter, ctx.client_orgs.get(client_id, ""),
                                  "add" if tx.add else "retire", fp, recorded_ms=ctx.block_ms,
                                  certificate=tx.certificate)
    return ""


def key_change_problem(client_id: str, old_key: bytes, new_key: bytes,
                        state: Mapping[str, Proposal], ctx: Context) -> str:
    """Why a change of `client_id`'s key from `old_key` to `new_key` (b"": revocation) cannot
    take effect now ("" when it can)."""
    base = ctx.base_keys.get(client_id)
    if base is None or client_id not in ctx.client_orgs:
        return f"{client_id!r} is not a client of a member organisation"
    current = key_states({client_id: base}, state).get(client_id)
    key = base if current is None else current.key
    if old_key != key:
        return (f"{old_key.hex()[:16]}… is not {client_id}'s current key "
                f"({key.hex()[:16]}…)")
    if not new_key and current is not None and current.revoked_by is not None:
        return f"{client_id}'s key is already revoked"
    if new_key and (new_key in ctx.keys_in_use or new_key in changed_keys(state)
                    or any(mem.public_key == new_key for mem in ctx.config.members)
                    or any(new_key in (p.validator_key, p.client_key, p.encryption_key)
                           for p in state.values() if p.kind == "join")):
        return "the new key is one a member holds or held; generate a new key"
    return ""


def judge_key_change(tx: ClientKeyChange, client_id: str, proposal_id: str,
                     state: dict[str, Proposal], ctx: Context) -> str:
    """KEY_CHANGED... with the change in force (the client's own organisation's validator
    signed it), "" with a proposal to vote on (another organisation's validator), or why the
    change is refused."""
    voter = ctx.voters.get(client_id)
    if voter is None:
        return "client keys are revoked or rotated by current validators (validator-<id>)"
    if tx.client_id.startswith(VALIDATOR_PREFIX):
        return "a validator's key is rotated with a validator key change, not a client one"
    if ctx.client_orgs.get(tx.client_id) != tx.org:
        return f"{tx.client_id!r} is not a client of member organisation {tx.org!r}"
    problem = key_change_problem(tx.client_id, tx.old_key, tx.new_key, state, ctx)
    if problem:
        return problem
    own = ctx.client_orgs.get(client_id) == tx.org
    if not own and any(p.kind == CLIENT_KEY and p.name == tx.client_id
                       and p.status == ProposalStatus.PENDING for p in state.values()):
        return f"a key change of {tx.client_id} is already open"
    state[proposal_id] = Proposal(
        proposal_id, CLIENT_KEY, voter, tx.org, tx.client_id, tx.old_key, tx.new_key,
        status=ProposalStatus.APPROVED if own else ProposalStatus.PENDING,
        recorded_ms=ctx.block_ms, decided_height=ctx.height if own else 0)
    if not own:
        return ""
    return KEY_CHANGED + ("revoked" if tx.revokes else "replaced")
