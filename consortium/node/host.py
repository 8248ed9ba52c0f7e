"""The driver's storage and host as a validator process wires them: PostgreSQL for the one,
the validator's links, timers and waiting clients for the other (the simulator wires its own,
consortium/sim/host.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consortium.ledger import membership as ms
from consortium.ledger.blocks import Block, ClientOrgs
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.storage.reads import LedgerReader
from consortium.storage.store import LedgerStore

if TYPE_CHECKING:
    from consortium.node.validator import Validator


class ValidatorStorage:
    """The driver's storage: writes on the writer connection, reads (which see its commits)
    on the read pool."""

    def __init__(self, store: LedgerStore, reads: LedgerReader) -> None:
        self._store = store
        self._reads = reads

    async def record_states(self, record_ids: Any) -> Any:
        return await self._reads.record_states(record_ids)

    async def membership(self) -> ms.MembershipState:
        return await self._reads.membership()

    async def append_blocks(self, blocks: Sequence[Block], *,
                            also_persist: Sequence[m.SignedMessage] = (),
                            wait_for_disk: bool = True) -> None:
        await self._store.append_blocks(blocks, also_persist=also_persist,
                                        wait_for_disk=wait_for_disk)

    async def persist_messages(self, msgs: Sequence[m.SignedMessage]) -> None:
        await self._store.persist_messages(msgs)

    async def persist_snapshot(self, snapshot: m.Snapshot,
                               proof: Sequence[m.SignedMessage]) -> None:
        await self._store.persist_snapshot(snapshot, proof)

    async def stored_merkle_root(self, height: int) -> bytes | None:
        return await self._reads.stored_merkle_root(height)


class ValidatorHost:
    """The driver's host: the validator's links, timers and waiting clients."""

    def __init__(self, v: Validator) -> None:
        self._v = v

    def send(self, to: int, data: bytes) -> None:
        link = self._v.links.get(to)
        if link is not None:
            link.send(data)

    def set_timer(self, kind: ev.TimerKind, token: int, delay_ms: int) -> None:
        self._v.set_timer(kind, token, delay_ms)

    def cancel_timer(self, kind: ev.TimerKind) -> None:
        self._v.cancel_timer(kind)

    async def fetch_blocks(self, target: int) -> None:
        await self._v.fetch_blocks(target)

    async def membership_changed(self, membership: ms.MembershipState) -> ClientOrgs:
        return await self._v.membership_changed(membership)

    def committed(self, blocks: Sequence[Block]) -> None:
        self._v.committed(blocks)

    def rejected(self, request: m.Request, reason: ev.RejectReason,
                 primary: int | None) -> None:
        self._v.submissions.rejected(request, reason, primary)

    def already_executed(self, request: m.Request, seq: int) -> None:
        self._v.submissions.already_executed(request)

    def observed(self, action: ev.Action) -> None:
        self._v.observed(action)

    def submit_change(self, block: Block) -> None:
        self._v.submit_change(block)
