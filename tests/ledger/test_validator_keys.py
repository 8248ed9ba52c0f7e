"""Validator key rotation without processes: the transaction, who may ask for it (the
validator itself, with its current key, and its new key's possession signature), the vote that
approves it turning into the validator-set change the consensus layer executes (same members,
one key replaced), and execution refusing the validator's own client under its former key once
the new epoch names the new one.
"""

from __future__ import annotations

import pytest

from consortium.crypto.signing import Ed25519Signer
from consortium.ledger import membership as ms
from consortium.ledger.blocks import EntryStatus, EnvelopeStatus, Governance
from consortium.ledger.transactions import (
    InvalidTransaction,
    MemberVote,
    RemoveRequest,
    ValidatorKeyChange,
    decode_governance_tx,
    encode_governance_tx,
    validator_key_signing_bytes,
)
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.payload import split_segments
from tests.ledger.test_client_keys import Ledger
from tests.test_membership_unit import (
    CHAIN,
    CONFIG0,
    VALIDATORS,
    VERIFIER,
    approval,
    reconfigure,
    signed,
    voters_of,
)

NEW = Ed25519Signer.generate()


def rotation(replica_id: int = 2, new: Ed25519Signer = NEW, *, old: bytes | None = None,
             possession_by: Ed25519Signer | None = None) -> ValidatorKeyChange:
    old_key = VALIDATORS[replica_id].public_key if old is None else old
    prover = new if possession_by is None else possession_by
    return ValidatorKeyChange(replica_id, old_key, new.public_key, prover.sign(
        validator_key_signing_bytes(CHAIN, replica_id, old_key, new.public_key)))


def by(replica_id: int, tx: ValidatorKeyChange | MemberVote | RemoveRequest,
       signer: Ed25519Signer | None = None) -> m.Request:
    return signed(ms.validator_client_id(replica_id), signer or VALIDATORS[replica_id],
                  encode_governance_tx(tx))


def test_a_validator_key_change_round_trips() -> None:
    tx = rotation()
    segments = split_segments(encode_governance_tx(tx))
    assert segments is not None
    assert decode_governance_tx(list(segments)) == tx
    same = ValidatorKeyChange(2, NEW.public_key, NEW.public_key, bytes(64))
    segments = split_segments(encode_governance_tx(same))
    assert segments is not None
    with pytest.raises(InvalidTransaction, match="replaces a key with another"):
        decode_governance_tx(list(segments))


@pytest.mark.parametrize(("signer", "tx", "message"), [
    (1, rotation(), "signed by that validator itself"),
    (2, rotation(old=VALIDATORS[1].public_key), "is not validator 2's current key"),
    (2, rotation(possession_by=VALIDATORS[2]), "the new key did not sign"),
    (2, rotation(new=VALIDATORS[3]), "one a member holds or held"),
    (2, rotation(new=Ed25519Signer(bytes(32)), old=None), ""),
])
def test_who_may_ask_for_a_validator_key_change(signer: int, tx: ValidatorKeyChange,
                                               message: str) -> None:
    block = Ledger().execute(by(signer, tx))
    entry = block.entries[0]
    if not message:
        assert (entry.status, entry.reason) == (EntryStatus.RECORDED, "")
        return
    assert entry.status == EntryStatus.INVALID and message in entry.reason


def test_an_approved_rotation_is_the_validator_set_change_with_the_key_replaced() -> None:
    ledger = Ledger()
    pid = ledger.execute(by(2, rotation())).entries[0].record_id
    again = ledger.execute(by(2, rotation(new=Ed25519Signer.generate())))
    assert "already open" in again.entries[0].reason
    p = ledger.model.proposals[pid]
    assert (p.kind, p.status, p.validator_key, p.client_key) == (
        ms.VALIDATOR_KEY, ms.ProposalStatus.PENDING, NEW.public_key, VALIDATORS[2].public_key)
    votes = [by(v, MemberVote(pid, True, 0, approval(VALIDATORS[v], p))) for v in (0, 1, 2)]
    block = ledger.execute(*votes)
    assert block.entries[2].reason == ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED
    approved = ledger.model.membership().pending_change(0)
    assert approved is not None and approved.proposal_id == pid
    pending = reconfigure(approved, CONFIG0)
    assert pending is not None
    assert pending.members == tuple(Member(i, NEW.public_key if i == 2 else s.public_key)
                                    for i, s in VALIDATORS.items())
    assert ledger.model.membership().rotated_validator_keys() == {
        "validator-2": (NEW.public_key,)}


def test_after_the_switch_only_the_new_key_signs_for_the_validators_client() -> None:
    config1 = EpochConfig(1, 8, tuple(Member(i, NEW.public_key if i == 2 else s.public_key)
                                      for i, s in VALIDATORS.items()))
    ledger = Ledger(Governance(voters=voters_of(config1), quorum=config1.quorum,
                               config=config1, verifier=VERIFIER))
    block = ledger.execute(by(2, RemoveRequest(3, "x")), by(2, RemoveRequest(3, "y"), NEW))
    assert block.envelopes[0].status == EnvelopeStatus.INVALID
    assert "former key of validator 2" in block.envelopes[0].reason
    assert block.envelopes[1].status == EnvelopeStatus.EXECUTED


def test_a_rotation_of_a_validator_that_left_the_set_takes_no_approval() -> None:
    ledger = Ledger()
    pid = ledger.execute(by(2, rotation())).entries[0].record_id
    p = ledger.model.proposals[pid]
    without_2 = EpochConfig(1, 8, tuple(Member(i, s.public_key) for i, s in VALIDATORS.items()
                                        if i != 2))
    later = Ledger(Governance(voters=voters_of(without_2), quorum=without_2.quorum,
                              config=without_2, verifier=VERIFIER))
    later.model = ledger.model
    block = later.execute(by(0, MemberVote(pid, True, 1, approval(VALIDATORS[0], p,
                                                                    without_2))))
    assert block.entries[0].status == EntryStatus.INVALID
    assert "no longer holds the key" in block.entries[0].reason
