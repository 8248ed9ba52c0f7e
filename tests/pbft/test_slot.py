"""Slot bookkeeping bounds (TigerBeetle style: a limit on everything, and the current view's
proposal always fits).

v2: a slot keeps proposal headers (by (view, digest)) and batch contents (by Merkle root) apart,
each with its own bound (`HEADERS_PER_SLOT_MAX`, `BATCHES_PER_SLOT_MAX`); the v1 tests of one
`remember(msg, body)` are split accordingly.
"""

from __future__ import annotations

from consortium.pbft import messages as m
from consortium.pbft.slots import BATCHES_PER_SLOT_MAX, HEADERS_PER_SLOT_MAX, Slot
from consortium.pbft.state import batch_root
from tests.pbft.harness import header_of, pre_prepare, request


def _pp(view: int, client: str) -> tuple[m.SignedMessage, m.PrePrepare]:
    msg = pre_prepare(view, 1, [request(client, 1)])
    assert isinstance(msg.body, m.PrePrepare)
    return msg, msg.body


def test_batches_per_slot_are_bounded() -> None:
    slot = Slot(1)
    for v in range(BATCHES_PER_SLOT_MAX + 3):
        msg, body = _pp(v, f"c{v}")
        assert msg.batch is not None
        held = slot.remember_batch(body.root, msg.batch)
        assert held == (v < BATCHES_PER_SLOT_MAX)
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX


def test_headers_per_slot_are_bounded() -> None:
    slot = Slot(1)
    for v in range(HEADERS_PER_SLOT_MAX + 3):
        slot.remember_header(header_of(_pp(v, f"c{v}")[0]))
    assert len(slot.proposals) == HEADERS_PER_SLOT_MAX


def test_the_adopted_batch_always_fits_even_when_old_views_filled_the_slot() -> None:
    """A Byzantine primary of earlier views cannot block the batch of the current view: it
    evicts the oldest other batch (and, for headers, the oldest other header) instead of being
    refused."""
    slot = Slot(1)
    for v in range(HEADERS_PER_SLOT_MAX):
        msg, body = _pp(v, f"c{v}")
        slot.remember_header(msg)
        if msg.batch is not None:
            slot.remember_batch(body.root, msg.batch)
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX
    msg, body = _pp(HEADERS_PER_SLOT_MAX, "current")
    assert msg.batch is not None
    assert not slot.remember_batch(body.root, msg.batch)  # not adopted: the bound holds
    slot.remember_header(msg)
    assert (body.view, body.digest) not in slot.proposals
    slot.pre_prepare = msg
    slot.remember_header(msg, adopt=True)
    assert slot.remember_batch(body.root, msg.batch, adopt=True)
    assert body.root in slot.batches and (body.view, body.digest) in slot.proposals
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX
    assert len(slot.proposals) == HEADERS_PER_SLOT_MAX
    oldest = _pp(0, "c0")[1]
    assert oldest.root not in slot.batches
    assert (0, oldest.digest) not in slot.proposals
    assert slot.contents(body.digest) == (request("current", 1),)


def test_contents_need_the_header_and_the_batch() -> None:
    """v2: a slot can hold a header without its batch (to be fetched) and a batch without a
    header; the contents of a digest are known only with both (a null batch needs none)."""
    slot = Slot(1)
    r = request("alice", 1)
    msg, body = _pp(0, "alice")
    assert slot.contents(body.digest) is None
    slot.remember_batch(body.root, (r,))
    assert slot.contents(body.digest) is None  # batch alone: no header says it is this digest
    slot.remember_header(header_of(msg))
    assert slot.contents(body.digest) == (r,)
    null = pre_prepare(1, 1, [])
    slot.remember_header(header_of(null))
    assert slot.contents(m.NULL_DIGEST) == ()
    assert m.proposal_digest(batch_root([]), 0, 0) == m.NULL_DIGEST
