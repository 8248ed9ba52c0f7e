"""Slot bookkeeping bounds (TigerBeetle style: a limit on everything, and the current view's
batch always fits)."""

from __future__ import annotations

from consortium.pbft import messages as m
from consortium.pbft.replica import BATCHES_PER_SLOT_MAX, Slot
from tests.pbft.harness import pre_prepare, request


def _pp(view: int, client: str) -> tuple[m.SignedMessage, m.PrePrepare]:
    msg = pre_prepare(view, 1, [request(client, 1)])
    assert isinstance(msg.body, m.PrePrepare)
    return msg, msg.body


def test_batches_per_slot_are_bounded() -> None:
    slot = Slot(1)
    for v in range(BATCHES_PER_SLOT_MAX + 3):
        msg, body = _pp(v, f"c{v}")
        slot.remember(msg, body)
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX


def test_the_adopted_batch_always_fits_even_when_old_views_filled_the_slot() -> None:
    """A Byzantine primary of earlier views cannot block the batch of the current view: it
    evicts the oldest other batch (and its proposals) instead of being refused."""
    slot = Slot(1)
    for v in range(BATCHES_PER_SLOT_MAX):
        msg, body = _pp(v, f"c{v}")
        slot.remember(msg, body)
    msg, body = _pp(BATCHES_PER_SLOT_MAX, "current")
    slot.remember(msg, body)
    assert body.digest not in slot.batches  # not adopted: the bound holds
    slot.remember(msg, body, adopt=True)
    assert body.digest in slot.batches
    assert len(slot.batches) == BATCHES_PER_SLOT_MAX
    oldest = _pp(0, "c0")[1].digest
    assert oldest not in slot.batches
    assert all(d != oldest for _, d in slot.proposals)
