"""Nagle's rule for records: concurrent `submit_item` calls share envelopes.

The first record goes at once; while envelopes are in flight, later records wait for the next
one (at most `items_max` per envelope), so a lone caller is never delayed and many callers
share one signature, one request and one answer per block.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from consortium.client.core import SubmitError, VerifiedReceipt

if TYPE_CHECKING:
    from consortium.client.sdk import AsyncConsortiumClient


class Coalescer:
    """Concurrent `submit_item` calls share envelopes: the first goes at once; while envelopes
    are in flight, later items wait for the next one (at most `items_max` per envelope)."""

    IN_FLIGHT_MAX = 4

    def __init__(self, client: AsyncConsortiumClient, items_max: int) -> None:
        self._client = client
        self._items_max = items_max
        self._waiting: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]] = []
        self._in_flight = 0

    async def add(self, item: bytes) -> VerifiedReceipt:
        fut: asyncio.Future[VerifiedReceipt] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        self._pump()
        return await fut

    def _pump(self) -> None:
        # Nagle: send when nothing is in flight, or when a full envelope is waiting.
        while self._waiting and self._in_flight < self.IN_FLIGHT_MAX and (
                self._in_flight == 0 or len(self._waiting) >= self._items_max):
            batch = self._waiting[: self._items_max]
            del self._waiting[: len(batch)]
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]]) -> None:
        try:
            receipts = await self._client.submit_items([item for item, _ in batch])
            for (_, fut), receipt in zip(batch, receipts, strict=True):
                if not fut.done():
                    fut.set_result(receipt)
        except BaseException as exc:  # every waiting caller hears of it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else
                                      SubmitError(repr(exc)))
        finally:
            self._in_flight -= 1
            self._pump()
