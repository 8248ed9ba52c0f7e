"""CA changes without processes: who may propose them, what a CA certificate must be, the
rules that keep the validators with a trusted CA (retire only while another added by vote
stays; a retired CA never comes back), the trust they amount to (`CaTrust.bundle`), and
PostgreSQL keeping them as the pure model does (tests/storage/test_key_changes.py)."""

from __future__ import annotations

import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from consortium.ledger import membership as ms
from consortium.ledger.blocks import EntryStatus
from consortium.ledger.ca import fingerprint
from consortium.ledger.transactions import CaChange, MemberVote, encode_governance_tx
from consortium.localnet import issue_cert, make_ca
from consortium.pbft import messages as m
from tests.ledger.test_client_keys import ALICE, Ledger
from tests.test_membership_unit import CHAIN, VALIDATORS, signed

"""Block time for these tests: the CAs are made now (the rules check their validity)."""
OLD_KEY, OLD = make_ca("ca-test old")
NEW_KEY, NEW = make_ca("ca-test new")
OLD_PEM = OLD.public_bytes(serialization.Encoding.PEM)
NEW_PEM = NEW.public_bytes(serialization.Encoding.PEM)


def by(replica_id: int, tx: CaChange | MemberVote) -> m.Request:
    return signed(ms.validator_client_id(replica_id), VALIDATORS[replica_id],
                  encode_governance_tx(tx))


def approve(ledger: Ledger, pid: str) -> str:
    block = ledger.execute(*[by(v, MemberVote(pid, True, 0, VALIDATORS[v].sign(
        ms.key_change_signing_bytes(CHAIN, 0, pid)))) for v in (0, 1, 2)])
    return block.entries[-1].reason


def test_a_ca_is_added_by_vote_and_retired_only_while_another_stays() -> None:
    ledger = Ledger(block_ms=int(time.time() * 1000))
    early = ledger.execute(by(1, CaChange(False, OLD_PEM)))
    assert "add the new CA first" in early.entries[0].reason
    block = ledger.execute(by(1, CaChange(True, NEW_PEM)))
    pid = block.entries[0].record_id
    assert (block.entries[0].status, block.entries[0].reason) == (EntryStatus.RECORDED, "")
    assert ledger.model.membership().ca_trust().added == {}  # a proposal alone trusts nothing
    assert approve(ledger, pid) == ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED
    assert ledger.model.membership().pending_change(0) is None  # no validator-set change
    trust = ledger.model.membership().ca_trust()
    assert trust.added == {fingerprint(NEW_PEM): NEW_PEM}
    retire = ledger.execute(by(2, CaChange(False, OLD_PEM)))
    assert approve(ledger, retire.entries[0].record_id).endswith("approved")
    trust = ledger.model.membership().ca_trust()
    assert trust.retired == {fingerprint(OLD_PEM)}
    bundle = x509.load_pem_x509_certificates(trust.bundle(OLD_PEM + NEW_PEM))
    assert [c.subject for c in bundle] == [NEW.subject]
    back = ledger.execute(by(0, CaChange(True, OLD_PEM)))
    assert "never trusted again" in back.entries[0].reason
    last = ledger.execute(by(0, CaChange(False, NEW_PEM)))
    assert "add the new CA first" in last.entries[0].reason


def test_what_a_ca_change_must_be() -> None:
    leaf_key, leaf = issue_cert(OLD_KEY, OLD, "validator-1", ["localhost"])
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    ledger = Ledger(block_ms=int(time.time() * 1000))
    cases = [(by(0, CaChange(True, leaf_pem)), "not a CA"),
             (by(0, CaChange(True, b"-----BEGIN CERTIFICATE-----\nnope\n")), "not a PEM"),
             (by(0, CaChange(True, "é".encode() + NEW_PEM)), "not a PEM"),
             (signed("alice", ALICE, encode_governance_tx(CaChange(True, NEW_PEM))),
              "current validators")]
    for request, message in cases:
        entry = ledger.execute(request).entries[0]
        assert entry.status == EntryStatus.INVALID and message in entry.reason, entry.reason
    assert leaf_key is not None
