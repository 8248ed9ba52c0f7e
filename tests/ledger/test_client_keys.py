"""Client key revocation and rotation without processes: the transaction's encoding, the rules
execution applies (who may change whose key, in force when), how a revoked or replaced key's
requests are refused from the next request on while earlier ones stay valid, the vote path for
another organisation's client, the pure model of the storage (`effects.LedgerState`) and the
chain verifier's view of signers by height (`verify.signers`).

Real Ed25519 keys throughout; blocks are built by `build_block` as a validator builds them.
"""

from __future__ import annotations

import itertools

import pytest

from consortium.crypto.signing import Ed25519Signer
from consortium.ledger import keyrules as kr
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    ClientOrgs,
    EntryStatus,
    EnvelopeStatus,
    Governance,
    build_block,
    changes_membership,
)
from consortium.ledger.effects import LedgerState
from consortium.ledger.transactions import (
    ClientKeyChange,
    InvalidTransaction,
    MemberVote,
    RemoveRequest,
    decode_governance_tx,
    encode_governance_tx,
    target_of,
)
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.payload import split_segments
from consortium.pbft.state import batch_root
from consortium.verify.signers import ClientSigners
from tests.test_membership_unit import (
    CHAIN,
    CLIENT_KEYS,
    CLIENT_ORGS,
    CONFIG0,
    GENESIS_ORGS,
    GOV,
    ORGS,
    T0,
    VALIDATORS,
    VERIFIER,
    signed,
)

ALICE = CLIENT_KEYS["alice"]
"""acme's client; acme runs validator 0, globex validator 1."""
NEW = Ed25519Signer.generate()


def change(new_key: bytes = b"", old_key: bytes = ALICE.public_key, *, org: str = "acme",
           client_id: str = "alice", reason: str = "leaked") -> ClientKeyChange:
    return ClientKeyChange(org, client_id, old_key, new_key, reason)


def by_validator(replica_id: int, tx: ClientKeyChange | MemberVote) -> m.Request:
    return signed(ms.validator_client_id(replica_id), VALIDATORS[replica_id],
                  encode_governance_tx(tx))


def from_alice(signer: Ed25519Signer = ALICE) -> m.Request:
    """A well-formed request of alice (a removal proposal: refused at execution for its
    content, but its envelope executes, which is what the key rules decide)."""
    return signed("alice", signer, encode_governance_tx(RemoveRequest(3, "x")))


class Ledger:
    """Blocks in a row, each judged against the state the previous ones left (as the driver
    does: the membership reloaded, the client organisations rebuilt with its key states)."""

    def __init__(self, gov: Governance = GOV, block_ms: int = T0) -> None:
        self.gov = gov
        self.block_ms = block_ms
        self.model = LedgerState()
        self.prev: BlockHeader | None = None
        self._seqs = itertools.count(1)

    @property
    def orgs(self) -> ClientOrgs:
        membership = self.model.membership()
        return ClientOrgs(dict(CLIENT_ORGS), set(GENESIS_ORGS), keys=ORGS.base_keys,
                          keys_in_use=ORGS.keys_in_use,
                          key_states=membership.key_states(ORGS.base_keys))

    def execute(self, *requests: m.Request) -> Block:
        reqs = tuple(requests)
        seq = next(self._seqs)
        header = m.PrePrepare(0, 0, seq, batch_root(reqs), len(reqs), self.block_ms)
        a = ev.Execute(seq=seq, view=0, epoch=0, digest=header.digest, requests=reqs,
                       executed=reqs, pre_prepare=codec.sign_message(VALIDATORS[0], CHAIN, 0,
                                                                     header),
                       certificate=(), state_digest=bytes(32))
        block = build_block(a, CHAIN, self.prev, self.orgs, gov=self.gov,
                            members=self.model.membership())
        self.model.apply(block)
        self.prev = block.header
        return block


def envelope_reasons(block: Block) -> list[tuple[str, str]]:
    return [(e.status, e.reason) for e in block.envelopes]


# ------------------------------------------------------------------------------ encoding

@pytest.mark.parametrize("tx", [change(), change(NEW.public_key)])
def test_a_client_key_change_round_trips(tx: ClientKeyChange) -> None:
    segments = split_segments(encode_governance_tx(tx))
    assert segments is not None
    assert decode_governance_tx(list(segments)) == tx
    assert target_of(tx) is None
    assert tx.revokes == (not tx.new_key)


def test_a_change_to_the_same_key_does_not_decode() -> None:
    segments = split_segments(encode_governance_tx(change(ALICE.public_key)))
    assert segments is not None
    with pytest.raises(InvalidTransaction, match="replaces a key with another"):
        decode_governance_tx(list(segments))


# ----------------------------------------------------------------------- own organisation

def test_a_revocation_by_the_orgs_validator_refuses_later_requests_only() -> None:
    ledger = Ledger()
    before = ledger.execute(from_alice())
    assert before.envelopes[0].status == EnvelopeStatus.EXECUTED
    revocation = by_validator(0, change())
    block = ledger.execute(from_alice(), revocation, from_alice())
    assert changes_membership(block)
    entry = block.entries_of(block.envelopes[1])[0]
    assert (entry.status, entry.reason) == (EntryStatus.RECORDED, "client key: revoked")
    # ordered before the revocation: executes; after it, in the same block: refused
    assert block.envelopes[0].status == EnvelopeStatus.EXECUTED
    status, reason = envelope_reasons(block)[2]
    assert status == EnvelopeStatus.INVALID
    assert f"revocation {entry.record_id[:16]}" in reason
    assert f"revoked at height {block.header.height}" in reason
    later = ledger.execute(from_alice())
    assert later.envelopes[0].status == EnvelopeStatus.INVALID
    assert "revoked" in later.envelopes[0].reason


def test_a_rotation_lets_the_new_key_sign_and_refuses_the_old_one() -> None:
    ledger = Ledger()
    ledger.execute(by_validator(0, change()))
    rotation = ledger.execute(by_validator(0, change(NEW.public_key)))
    assert rotation.entries[0].reason == "client key: replaced"
    block = ledger.execute(from_alice(NEW), from_alice(ALICE))
    assert block.envelopes[0].status == EnvelopeStatus.EXECUTED
    assert block.envelopes[1].status == EnvelopeStatus.INVALID
    assert "former key of alice" in block.envelopes[1].reason
    state = ledger.model.membership().key_states(ORGS.base_keys)["alice"]
    assert state.key == NEW.public_key and state.revoked_by is None
    assert state.keys == (ALICE.public_key, NEW.public_key)


@pytest.mark.parametrize(("signer", "tx", "message"), [
    (1, change(), "a proposal"),  # another org's validator: not refused, but not in force
    (0, change(org="globex"), "is not a client of member organisation 'globex'"),
    (0, change(client_id="validator-1", org="globex"), "validator key change"),
    (0, change(old_key=NEW.public_key), "is not alice's current key"),
    (0, change(CLIENT_KEYS["bob"].public_key), "one a member holds or held"),
    (0, change(VALIDATORS[2].public_key), "one a member holds or held"),
])
def test_key_change_rules(signer: int, tx: ClientKeyChange, message: str) -> None:
    block = Ledger().execute(by_validator(signer, tx))
    entry = block.entries[0]
    if message == "a proposal":
        assert (entry.status, entry.reason) == (EntryStatus.RECORDED, "")
        return
    assert entry.status == EntryStatus.INVALID
    assert message in entry.reason


def test_only_validators_change_client_keys() -> None:
    block = Ledger().execute(signed("alice", ALICE, encode_governance_tx(change())))
    assert block.entries[0].status == EntryStatus.INVALID
    assert "current validators" in block.entries[0].reason


def test_a_key_is_revoked_once_and_a_replaced_key_never_comes_back() -> None:
    ledger = Ledger()
    ledger.execute(by_validator(0, change()))
    again = ledger.execute(by_validator(0, change()))
    assert "already revoked" in again.entries[0].reason
    ledger.execute(by_validator(0, change(NEW.public_key)))
    back = ledger.execute(by_validator(0, change(ALICE.public_key, NEW.public_key)))
    assert "one a member holds or held" in back.entries[0].reason


# ------------------------------------------------------------------- by vote of the others

def key_vote(voter: int, proposal_id: str, approve: bool = True) -> m.Request:
    approval = VALIDATORS[voter].sign(ms.key_change_signing_bytes(CHAIN, 0, proposal_id)) \
        if approve else b""
    return by_validator(voter, MemberVote(proposal_id, approve, 0, approval))


def test_another_orgs_revocation_takes_effect_when_2f_plus_1_approve() -> None:
    ledger = Ledger()
    block = ledger.execute(by_validator(1, change()))
    pid = block.entries[0].record_id
    assert ledger.model.proposals[pid].status == ms.ProposalStatus.PENDING
    assert ledger.execute(from_alice()).envelopes[0].status == EnvelopeStatus.EXECUTED
    votes = ledger.execute(key_vote(1, pid), key_vote(2, pid), key_vote(3, pid), from_alice())
    assert votes.entries[2].reason == ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED
    assert votes.envelopes[3].status == EnvelopeStatus.INVALID
    assert f"revocation {pid[:16]}" in votes.envelopes[3].reason
    # a client key approval never assembles into a validator-set change
    assert ledger.model.membership().pending_change(0) is None


def test_an_approval_must_sign_the_key_proposal_not_a_reconfiguration() -> None:
    ledger = Ledger()
    pid = ledger.execute(by_validator(1, change())).entries[0].record_id
    forged = VALIDATORS[2].sign(m.reconfiguration_signing_bytes(CHAIN, 0, CONFIG0.members))
    block = ledger.execute(by_validator(2, MemberVote(pid, True, 0, forged)))
    assert block.entries[0].status == EntryStatus.INVALID
    assert "signature over this proposal" in block.entries[0].reason


def test_an_approved_proposal_whose_key_changed_meanwhile_is_refused() -> None:
    ledger = Ledger()
    pid = ledger.execute(by_validator(1, change())).entries[0].record_id
    ledger.execute(by_validator(0, change(NEW.public_key)))  # acme rotated first
    block = ledger.execute(key_vote(1, pid), key_vote(2, pid), key_vote(3, pid))
    assert block.entries[2].status == EntryStatus.INVALID
    assert "can no longer take effect" in block.entries[2].reason
    assert ledger.execute(from_alice(NEW)).envelopes[0].status == EnvelopeStatus.EXECUTED


# ----------------------------------------------------------------- folding and verifying

def test_key_states_do_not_depend_on_the_order_changes_are_folded_in() -> None:
    second = Ed25519Signer.generate().public_key
    rotate = ms.Proposal("a" * 64, ms.CLIENT_KEY, 0, "acme", "alice", ALICE.public_key,
                         NEW.public_key, status=ms.ProposalStatus.APPROVED, decided_height=3)
    rotate2 = ms.Proposal("b" * 64, ms.CLIENT_KEY, 0, "acme", "alice", NEW.public_key, second,
                          status=ms.ProposalStatus.APPROVED, decided_height=4)
    revoke = ms.Proposal("c" * 64, ms.CLIENT_KEY, 1, "acme", "alice", second, b"",
                         status=ms.ProposalStatus.APPROVED, decided_height=5)
    pending = ms.Proposal("d" * 64, ms.CLIENT_KEY, 1, "acme", "alice", second, b"")
    results = set()
    for order in itertools.permutations([rotate, rotate2, revoke, pending]):
        state = kr.key_states(ORGS.base_keys, {p.proposal_id: p for p in order})["alice"]
        results.add((state.key, state.keys, state.revoked_by))
    assert results == {(second, (ALICE.public_key, NEW.public_key, second), revoke)}


def test_the_chain_verifier_learns_key_changes_by_height() -> None:
    signers = ClientSigners(CHAIN, VERIFIER, {"alice": ALICE.public_key})
    old = from_alice()
    assert signers.problem("alice", old.digest, old.signature, EnvelopeStatus.EXECUTED) == ""
    signers.follow(5, "e" * 64, change(NEW.public_key), "client key: replaced")
    newer = from_alice(NEW)
    assert signers.problem("alice", newer.digest, newer.signature, "executed") == ""
    assert signers.problem("alice", old.digest, old.signature, "invalid") == ""
    assert "former (replaced) key" in signers.problem("alice", old.digest, old.signature,
                                                      "executed")
    signers.follow(6, "f" * 64, change(old_key=NEW.public_key), "")  # a proposal: no effect
    assert signers.problem("alice", newer.digest, newer.signature, "executed") == ""
    signers.follow(7, "0" * 64, MemberVote("f" * 64, True, 0, bytes(64)),
                   ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED)
    assert "revoked at height 7" in signers.problem("alice", newer.digest, newer.signature,
                                                    "executed")
    outsider = from_alice(Ed25519Signer.generate())
    assert "not signed by a known client" in signers.problem(
        "alice", outsider.digest, outsider.signature, "invalid")
