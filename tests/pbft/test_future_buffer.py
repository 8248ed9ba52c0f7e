"""The future buffer alone (pbft/future.py): messages for a view or epoch the replica has not
entered are kept in arrival order, bounded by count (`future_messages_max`) and by bytes
(`FUTURE_BATCHES_BYTES` x `batch_bytes_max`, attached batches included), the oldest dropped
first; `take` hands them back and empties it. How the replica uses it (only authenticated
messages, replayed on entering a view) is pinned in tests/test_bad_input.py."""

from __future__ import annotations

from consortium.pbft import messages as m
from consortium.pbft.future import FUTURE_BATCHES_BYTES, FutureBuffer
from tests.pbft.harness import params, pre_prepare, prepare, request

D = bytes(32)


def _size(msg: m.SignedMessage) -> int:
    return len(msg.wire) + sum(r.size_bytes for r in msg.batch or ())


def test_the_count_bound_drops_the_oldest_and_take_empties_the_buffer() -> None:
    buf = FutureBuffer(params(future_messages_max=3))
    msgs = [prepare(1, 1, seq, D) for seq in range(1, 6)]
    for msg in msgs:
        buf.add(msg)
    assert buf.take() == msgs[2:]
    assert buf.take() == []
    for msg in msgs[:3]:  # the byte count was reset with the list: three fit again
        buf.add(msg)
    assert buf.take() == msgs[:3]


def test_attached_batches_count_against_the_byte_bound() -> None:
    p = params(batch_bytes_max=1000, request_bytes_max=1000, future_messages_max=64)
    limit = FUTURE_BATCHES_BYTES * p.batch_bytes_max
    batches = [[request("alice", seq, b"x" * 800)] for seq in range(1, 10)]
    headers = [pre_prepare(1, seq, b, attach=False) for seq, b in enumerate(batches, 1)]
    proposals = [pre_prepare(1, seq, b) for seq, b in enumerate(batches, 1)]

    buf = FutureBuffer(p)
    for msg in headers:
        buf.add(msg)
    assert buf.take() == headers  # headers alone: all nine fit

    for msg in proposals:
        buf.add(msg)
    kept = buf.take()
    assert 0 < len(kept) < len(proposals)
    assert kept == proposals[-len(kept):]  # the newest survive, in order
    assert sum(map(_size, kept)) <= limit < sum(map(_size, proposals[-len(kept) - 1:]))
