"""Peer transport: one long-lived mutual-TLS gRPC stream from this validator to each peer.

Sending never blocks the consensus loop: each link has a bounded queue, and when a peer is slow
or down its oldest messages are dropped (PBFT recovers lost messages through STATUS-driven
retransmission, so a drop costs time, never safety). Links reconnect with capped exponential
back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from consortium.wire import pb, pb_grpc

log = structlog.get_logger("consortium.transport")

QUEUE_MESSAGES_MAX = 20_000
COALESCE_MESSAGES_MAX = 1024
COALESCE_BYTES_MAX = 8 << 20
"""Most queued messages (and bytes, checked before adding one) sent in one stream message."""
RECONNECT_DELAY_S_MIN = 0.05
RECONNECT_DELAY_S_MAX = 2.0


CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20),
                   ("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.keepalive_time_ms", 10_000)]


class PeerLink:
    def __init__(self, peer_id: int, address: str, credentials: grpc.ChannelCredentials,
                 on_state: Callable[[int, bool], None]) -> None:
        self.peer_id = peer_id
        self.address = address
        self._credentials = credentials
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MESSAGES_MAX)
        self._on_state = on_state
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def use_credentials(self, credentials: grpc.ChannelCredentials) -> None:
        """Credentials for the next connection (a rotated certificate); the current one stays
        up until it breaks."""
        self._credentials = credentials

    def send(self, data: bytes) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(data)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-link-{self.peer_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _outgoing(self) -> AsyncIterator[pb.PeerMessage]:
        """One stream message per wake-up, carrying everything queued by then (bounded):
        a consensus round's votes to a peer cost one gRPC message, not one each."""
        while True:
            data = await self._queue.get()
            batch: list[bytes] = []
            size = len(data)
            while (not self._queue.empty() and len(batch) < COALESCE_MESSAGES_MAX
                   and size < COALESCE_BYTES_MAX):
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item)
            yield pb.PeerMessage(data=data, batch=batch)

    async def _run(self) -> None:
        delay = RECONNECT_DELAY_S_MIN
        while True:
            try:
                async with grpc.aio.secure_channel(self.address, self._credentials,
                                                   options=CHANNEL_OPTIONS) as channel:
                    await asyncio.wait_for(channel.channel_ready(), timeout=2.0)
                    self._on_state(self.peer_id, True)
                    delay = RECONNECT_DELAY_S_MIN
                    call = pb_grpc.ReplicaStub(channel).Connect(self._outgoing())
                    async for _ack in call:
                        pass
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                log.debug("peer link down", peer=self.peer_id, error=str(exc)[:200])
            except Exception as exc:  # never let one peer's link die for good
                log.warning("peer link error", peer=self.peer_id, error=repr(exc)[:200])
            self._on_state(self.peer_id, False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_S_MAX)
