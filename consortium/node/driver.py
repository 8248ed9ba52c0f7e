"""The validator loop: steps the PBFT replica and carries out its actions, persisting before
speaking. Its storage and its host (network, timers, clients) are injected: a validator wires
PostgreSQL and gRPC, the simulator wires seeded fakes that can crash between any two durable
steps, so the code that orders, executes and stores blocks is the same in both (TigerBeetle's
rule; docs/validator.md, "The driver").

One round: step every event taken from the queue; then carry out the resulting actions in two
phases:
1. everything durable, in order: consensus messages to persist, executed blocks (the messages
   persisted before each in the same transaction), stable checkpoints, state transfer;
2. then everything that speaks: sends to peers, timers, answers to clients.
So nothing leaves the process before what it commits to is on disk ("durability before
speech"), and a crash at any point recovers from storage without equivocating. A round that
only executes does not wait for the disk to store its blocks: what they rest on (this replica's
votes, the batches) is durable already, so blocks a crash loses are executed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from consortium.crypto.signing import Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    ClientOrgs,
    Governance,
    RecordState,
    Rules,
    build_block,
    changes_membership,
    referenced_records,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.replica import Replica


class DriverStorage(Protocol):
    """What the driver needs of a validator's storage (PostgreSQL, or the simulator's)."""

    async def record_states(self, record_ids: Iterable[str]) -> Mapping[str, RecordState]: ...

    async def membership(self) -> ms.MembershipState: ...

    async def append_blocks(self, blocks: Sequence[Block], *,
                            also_persist: Sequence[m.SignedMessage] = (),
                            wait_for_disk: bool = True) -> None:
        """Store executed blocks and persist messages, atomically. `wait_for_disk=False`
        (never with messages) may return before the write is on disk: a crash may then lose
        the last blocks so written, whole, and nothing written before them."""

    async def persist_messages(self, msgs: Sequence[m.SignedMessage]) -> None: ...

    async def persist_snapshot(self, snapshot: m.Snapshot,
                               proof: Sequence[m.SignedMessage]) -> None: ...

    async def stored_merkle_root(self, height: int) -> bytes | None: ...


class DriverHost(Protocol):
    """Everything that speaks or reaches outside: peers, timers, waiting clients, state
    transfer, and what a validator does when the membership changes."""

    def send(self, to: int, data: bytes) -> None: ...

    def set_timer(self, kind: ev.TimerKind, token: int, delay_ms: int) -> None: ...

    def cancel_timer(self, kind: ev.TimerKind) -> None: ...

    async def fetch_blocks(self, target: int) -> None:
        """State transfer: bring the ledger up to `target` (verified blocks from peers)."""

    async def membership_changed(self, membership: ms.MembershipState) -> ClientOrgs:
        """The membership changed: reload what depends on it; the client organisations in
        force from now on."""

    def committed(self, blocks: Sequence[Block]) -> None:
        """Blocks are durable: answer the clients waiting for them."""

    def rejected(self, request: m.Request, reason: ev.RejectReason,
                 primary: int | None) -> None: ...

    def already_executed(self, request: m.Request, seq: int) -> None: ...

    def observed(self, action: ev.Action) -> None:
        """View and epoch changes, peer faults: logs and metrics."""

    def submit_change(self, block: Block) -> None:
        """A vote in this block approved a membership change: submit it to consensus."""


@dataclass
class LedgerContext:
    """What executing a batch needs besides the batch: the ledger's head, its rules and who
    may do what."""

    chain_id: bytes
    admission_client: str | None
    rules: Rules
    orgs: ClientOrgs
    membership: ms.MembershipState
    head: BlockHeader | None
    verifier: Verifier

    @property
    def height(self) -> int:
        return 0 if self.head is None else self.head.height


class StoredBatchMismatch(AssertionError):
    """A batch the ledger already holds differs from the one the replica executed: our bug or
    a corrupted database, never a peer's fault."""


class Driver:
    """Owns the replica and the ledger context; one instance per validator process."""

    def __init__(self, replica: Replica, ledger: LedgerContext, storage: DriverStorage,
                 host: DriverHost) -> None:
        self.replica = replica
        self.ledger = ledger
        self.storage = storage
        self.host = host

    async def boot(self) -> None:
        """Start from what is durable: the membership the ledger holds, then the blocks the
        replica executed but the ledger lacks (a crash after a state transfer's checkpoint was
        stored, before its blocks were), then the replica's timers."""
        self.ledger.membership = await self.storage.membership()
        self.ledger.orgs = await self.host.membership_changed(self.ledger.membership)
        if self.ledger.height < self.replica.last_executed:
            await self.host.fetch_blocks(self.replica.last_executed)
        await self.start()

    async def start(self) -> None:
        """Arm the replica's timers (after recovery) and carry out what that asks."""
        await self.carry_out(self.replica.start())

    async def round(self, events: Sequence[ev.Event]) -> None:
        actions: list[ev.Action] = []
        for event in events:
            actions.extend(self.replica.step(event))
        await self.carry_out(actions)

    async def carry_out(self, actions: list[ev.Action]) -> None:
        """Everything durable first, in order; then everything that speaks. The blocks a round
        executes and the messages it persists go to storage in one transaction (one fsync per
        round, not per block), unless a block's transactions need the state a previous block
        of the round leaves (then that one is written first)."""
        pending: list[m.SignedMessage] = []
        blocks: list[Block] = []
        executed: list[Block] = []

        async def flush() -> None:
            nonlocal pending, blocks
            if blocks:
                # Blocks alone need not wait for the disk: what they commit to (this replica's
                # votes, the batch) is durable already, so a crash that loses them is made good
                # by executing again. Messages always wait: they are about to be sent.
                await self.storage.append_blocks(blocks, also_persist=pending,
                                                 wait_for_disk=bool(pending))
                self.ledger.head = blocks[-1].header
                self.host.committed(blocks)
            elif pending:
                await self.storage.persist_messages(pending)
            pending, blocks = [], []

        for a in actions:
            if isinstance(a, ev.Persist):
                pending.extend(a.messages)
            elif isinstance(a, ev.Execute):
                if a.seq <= self.ledger.height:
                    await flush()
                    await self._check_stored(a)
                    continue
                refs = referenced_records(a.requests)
                if refs and blocks:
                    await flush()
                block = await self._build(a, blocks[-1].header if blocks else self.ledger.head,
                                          refs)
                blocks.append(block)
                executed.append(block)
                if changes_membership(block):
                    await flush()  # later blocks are judged against the new membership
                    self.ledger.membership = await self.storage.membership()
                    self.ledger.orgs = await self.host.membership_changed(
                        self.ledger.membership)
                    self.host.submit_change(block)
            elif isinstance(a, ev.PersistSnapshot):
                await flush()
                await self.storage.persist_snapshot(a.snapshot, a.proof)
            elif isinstance(a, ev.InstallSnapshot):
                await flush()
                await self.host.fetch_blocks(a.snapshot.seq)
        await flush()
        # --- durable from here on: speak
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    self.host.send(to, a.data)
            elif isinstance(a, ev.SetTimer):
                self.host.set_timer(a.kind, a.token, a.delay_ms)
            elif isinstance(a, ev.CancelTimer):
                self.host.cancel_timer(a.kind)
            elif isinstance(a, ev.RejectRequest):
                self.host.rejected(a.request, a.reason, a.primary)
            elif isinstance(a, ev.AlreadyExecuted):
                self.host.already_executed(a.request, a.seq)
            elif isinstance(a, ev.ViewEntered | ev.EpochEntered | ev.PeerFault):
                self.host.observed(a)

    async def _check_stored(self, a: ev.Execute) -> None:
        """A batch the ledger already holds (installed by state transfer) must be the same
        batch."""
        pp = a.pre_prepare.body
        assert isinstance(pp, m.PrePrepare)
        stored = await self.storage.stored_merkle_root(a.seq)
        if stored is None or stored != pp.root:
            raise StoredBatchMismatch(f"stored block {a.seq} differs from the executed batch")

    async def _build(self, a: ev.Execute, prev: BlockHeader | None, refs: set[str]) -> Block:
        state = await self.storage.record_states(refs) if refs else {}
        members = self.replica.epoch_configs().get(a.epoch, self.replica.config)
        gov = Governance.of(self.ledger.admission_client, members, self.ledger.verifier)
        return build_block(a, self.ledger.chain_id, prev, self.ledger.orgs, state, gov,
                           self.ledger.membership, self.ledger.rules)
