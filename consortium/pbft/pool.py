"""The requests a replica knows but has not executed: bounded by count and by bytes.

Three views of one set of client requests, kept consistent here so the replica cannot forget
one of them: `pending` (every known, unexecuted request, oldest first, with the STATUS tick it
arrived in: what backups time and forward), `queue` (primary only: pending requests not yet in
a live slot, in arrival order, with their total size so "is a full batch waiting?" is O(1)),
and `in_flight` (requests in some live slot). Bytes are counted per client and in total, so a
client sending big records fills its own share, not the replica's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from consortium.pbft import messages as m

Key = tuple[str, int]


class RequestQueue:
    """The primary's requests waiting for a batch, in arrival order, with their total size."""

    __slots__ = ("_items", "bytes")

    def __init__(self) -> None:
        self._items: OrderedDict[Key, m.Request] = OrderedDict()
        self.bytes = 0

    def put(self, r: m.Request) -> None:
        old = self._items.get(r.key)
        if old is not None:
            self.bytes -= old.size_bytes
        self._items[r.key] = r
        self.bytes += r.size_bytes

    def pop(self, key: Key) -> m.Request | None:
        r = self._items.pop(key, None)
        if r is not None:
            self.bytes -= r.size_bytes
        return r

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def values(self) -> Iterable[m.Request]:
        return self._items.values()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items


class RequestPool:
    """Pending requests with their limits (`pending_requests_max`, `pending_bytes_max`,
    `client_pending_bytes_max`)."""

    __slots__ = (
        "_client_bytes",
        "_pending",
        "bytes",
        "bytes_max",
        "client_bytes_max",
        "count_max",
        "in_flight",
        "queue",
    )

    def __init__(self, count_max: int, bytes_max: int, client_bytes_max: int) -> None:
        self.count_max = count_max
        self.bytes_max = bytes_max
        self.client_bytes_max = client_bytes_max
        self._pending: OrderedDict[Key, tuple[m.Request, int]] = OrderedDict()
        self.queue = RequestQueue()
        self.in_flight: set[Key] = set()
        self.bytes = 0
        self._client_bytes: dict[str, int] = {}

    # --------------------------------------------------------------------------- pending

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def room_for(self, r: m.Request) -> bool:
        """Whether `r` fits under every limit (it is not pending yet)."""
        size = r.size_bytes
        return (len(self._pending) < self.count_max and self.bytes + size <= self.bytes_max
                and self._client_bytes.get(r.client_id, 0) + size <= self.client_bytes_max)

    def add(self, r: m.Request, tick: int) -> bool:
        """Make `r` pending; False (nothing changes) when a limit would be passed."""
        if r.key in self._pending:
            return True
        if not self.room_for(r):
            return False
        self._pending[r.key] = (r, tick)
        size = r.size_bytes
        self.bytes += size
        self._client_bytes[r.client_id] = self._client_bytes.get(r.client_id, 0) + size
        return True

    def remove(self, key: Key) -> m.Request | None:
        """Forget a request everywhere (it executed, or can never execute)."""
        self.queue.pop(key)
        self.in_flight.discard(key)
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        r = entry[0]
        size = r.size_bytes
        self.bytes -= size
        left = self._client_bytes[r.client_id] - size
        if left:
            self._client_bytes[r.client_id] = left
        else:
            del self._client_bytes[r.client_id]
        return r

    def oldest(self) -> Key | None:
        return next(iter(self._pending), None)

    def items(self) -> Iterator[tuple[Key, m.Request, int]]:
        """(key, request, arrival tick), oldest first."""
        for key, (r, tick) in self._pending.items():
            yield key, r, tick

    def get(self, key: Key) -> m.Request | None:
        entry = self._pending.get(key)
        return None if entry is None else entry[0]

    def waiting(self) -> list[m.Request]:
        """Pending requests in no live slot, oldest first."""
        return [r for key, (r, _) in self._pending.items() if key not in self.in_flight]

    # ----------------------------------------------------------------------- the primary

    def requeue_all(self) -> None:
        """A new primary (this replica) takes every pending request not in a live slot."""
        self.queue.clear()
        for key, (r, _) in self._pending.items():
            if key not in self.in_flight:
                self.queue.put(r)

    def mark_in_flight(self, r: m.Request) -> None:
        self.queue.pop(r.key)
        self.in_flight.add(r.key)

    def release(self, r: m.Request, *, requeue: bool) -> None:
        """A slot holding `r` was dropped: it is no longer in flight; a primary queues it
        again if it is still pending."""
        if r.key in self.in_flight:
            self.in_flight.discard(r.key)
            if requeue and r.key in self._pending:
                self.queue.put(r)
