"""PostgreSQL keeps client key changes as the pure model does (`ledger.effects.LedgerState`):
a revocation by the client's own organisation is stored approved at its height, one proposed
by another organisation waits for votes and is approved at the height of the deciding vote,
and the key states a validator derives from the stored proposals after a restart are the ones
execution derived as it went."""

from __future__ import annotations

import time

from consortium.ledger import membership as ms
from consortium.storage.reads import LedgerReader
from consortium.storage.store import LedgerStore
from tests.ledger.test_client_keys import (
    ALICE,
    NEW,
    ORGS,
    Ledger,
    by_validator,
    change,
    from_alice,
    key_vote,
)
from tests.storage.test_store import with_store


def test_key_changes_and_their_votes_are_stored_as_the_model_holds_them(dsn: str) -> None:
    ledger = Ledger()
    blocks = [ledger.execute(by_validator(0, change()))]
    blocks.append(ledger.execute(by_validator(0, change(NEW.public_key))))
    blocks.append(ledger.execute(by_validator(1, change(old_key=NEW.public_key))))
    pid = blocks[-1].entries[0].record_id
    blocks.append(ledger.execute(key_vote(1, pid), key_vote(2, pid), key_vote(3, pid),
                                 from_alice(NEW)))
    assert blocks[-1].envelopes[3].status == "invalid"
    model = ledger.model.membership()

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        for block in blocks:
            await store.append_blocks([block])
        stored = await reader.membership()
        assert stored == model
        states = stored.key_states(ORGS.base_keys)
        assert states == model.key_states(ORGS.base_keys)
        alice = states["alice"]
        assert alice.keys == (ALICE.public_key, NEW.public_key)
        assert alice.revoked_by is not None and alice.revoked_by.proposal_id == pid
        assert alice.revoked_by.decided_height == blocks[-1].header.height
        kinds = {p.kind for p in await reader.proposals()}
        assert kinds == {ms.CLIENT_KEY}
    with_store(dsn, body, chain_id=blocks[0].header.chain_id)


def test_a_validator_key_rotation_and_its_votes_are_stored_as_the_model_holds_them(
        dsn: str) -> None:
    from consortium.ledger.transactions import MemberVote
    from tests.ledger.test_validator_keys import NEW as NEW_VALIDATOR_KEY
    from tests.ledger.test_validator_keys import by, rotation
    from tests.test_membership_unit import VALIDATORS, approval

    ledger = Ledger()
    blocks = [ledger.execute(by(2, rotation()))]
    pid = blocks[0].entries[0].record_id
    p = ledger.model.proposals[pid]
    blocks.append(ledger.execute(*[by(v, MemberVote(pid, True, 0, approval(VALIDATORS[v], p)))
                                   for v in (0, 1, 3)]))
    model = ledger.model.membership()
    assert model.proposals[pid].status == ms.ProposalStatus.APPROVED

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        for block in blocks:
            await store.append_blocks([block])
        stored = await reader.membership()
        assert stored == model
        assert stored.rotated_validator_keys() == {"validator-2": (NEW_VALIDATOR_KEY.public_key,)}
        assert stored.pending_change(0) == model.pending_change(0) is not None
    with_store(dsn, body, chain_id=blocks[0].header.chain_id)


def test_ca_proposals_are_stored_as_the_model_holds_them(dsn: str) -> None:
    from consortium.ledger.ca import CA
    from consortium.ledger.transactions import CaChange, MemberVote
    from tests.ledger.test_ca_changes import NEW_PEM
    from tests.ledger.test_ca_changes import by as ca_by
    from tests.test_membership_unit import CHAIN, VALIDATORS

    ledger = Ledger(block_ms=int(time.time() * 1000))
    blocks = [ledger.execute(ca_by(1, CaChange(True, NEW_PEM)))]
    pid = blocks[0].entries[0].record_id
    blocks.append(ledger.execute(*[ca_by(v, MemberVote(pid, True, 0, VALIDATORS[v].sign(
        ms.key_change_signing_bytes(CHAIN, 0, pid)))) for v in (0, 1, 2)]))
    model = ledger.model.membership()
    assert model.proposals[pid].kind == CA

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        for block in blocks:
            await store.append_blocks([block])
        stored = await reader.membership()
        assert stored == model
        assert stored.ca_trust() == model.ca_trust()
    with_store(dsn, body, chain_id=blocks[0].header.chain_id)
