"""The future buffer: messages that arrived before this replica can use them.

A PRE-PREPARE or vote for a view it has not entered yet, or a message of an epoch it has not
switched to, is kept here and handed back (`take`) when the replica enters a view or an epoch
(the core then processes each again from the start). Only authenticated messages are buffered
(the core checks); the buffer is bounded by count and by bytes, oldest dropped first, so a peer
cannot fill memory. It touches nothing but its own list.
"""

from __future__ import annotations

from consortium.pbft import messages as m
from consortium.pbft.params import ProtocolParams

FUTURE_BATCHES_BYTES = 8
"""The future buffer holds at most this many `batch_bytes_max` of messages (PRE-PREPAREs with
batches are the big ones), besides its count limit `future_messages_max`."""


class FutureBuffer:
    """Messages for a later view or epoch, bounded by count and bytes."""

    def __init__(self, params: ProtocolParams) -> None:
        self.params = params
        self._future: list[m.SignedMessage] = []
        self._future_bytes = 0

    def add(self, msg: m.SignedMessage) -> None:
        """Bounded by count and by bytes (a buffered PRE-PREPARE may carry its batch)."""
        size = len(msg.wire) + (0 if msg.batch is None else
                                sum(r.size_bytes for r in msg.batch))
        limit = FUTURE_BATCHES_BYTES * self.params.batch_bytes_max
        self._future.append(msg)
        self._future_bytes += size
        while self._future and (len(self._future) > self.params.future_messages_max
                                or self._future_bytes > limit):
            old = self._future.pop(0)
            self._future_bytes -= len(old.wire) + (0 if old.batch is None else
                                                   sum(r.size_bytes for r in old.batch))

    def take(self) -> list[m.SignedMessage]:
        """Everything buffered, oldest first; the buffer is empty afterwards."""
        future, self._future = self._future, []
        self._future_bytes = 0
        return future
