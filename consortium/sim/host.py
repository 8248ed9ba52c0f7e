"""The simulated environment of the production driver (`consortium.node.driver.Driver`): an
in-memory storage that can crash before or after any durable write, and a host whose network,
timers, clients and state transfer belong to the seeded `Simulation`.

The driver's methods are coroutines because PostgreSQL and gRPC are awaited in production;
here nothing they await ever suspends, so `run_sync` runs a whole round to completion inside
one simulation event, and a seed replays bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    ClientOrgs,
    Envelope,
    RecordState,
    changes_membership,
    stored_request,
)
from consortium.ledger.effects import LedgerState
from consortium.node.driver import Driver
from consortium.node.state_transfer import block_from_wire
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.replica import ExecutedBatch, Recovered
from consortium.verify.chain import ChainBroken, ChainVerifier
from consortium.wire import block_from_proto, block_to_proto

if TYPE_CHECKING:
    from consortium.sim.cluster import SimNode, Simulation

T = TypeVar("T")


class SimCrash(Exception):
    """The simulated machine died at this point of a round: what was durable stays, the rest
    of the round (the writes after it, and everything it would have sent) is lost."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a driver coroutine whose awaits never suspend (simulated storage and host)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a simulated driver step waited for real I/O")


class SimStorage:
    """One validator's durable state, as its PostgreSQL would hold it: blocks (their effects
    applied by the pure model `LedgerState`), the consensus log and the stable checkpoint.

    `crash(point)` is called before and after every durable write; the simulation makes it
    raise `SimCrash` at seeded points. Before a write, the crash loses that write; after it,
    the write is kept and what the round would have done next is lost."""

    def __init__(self, initial_screening: str) -> None:
        self.blocks: list[Block] = []
        self.state = LedgerState(initial_screening)
        self.messages: list[m.SignedMessage] = []
        self.snapshot: m.Snapshot | None = None
        self.snapshot_proof: tuple[m.SignedMessage, ...] = ()
        self.volatile = 0
        """How many of the last blocks were written without waiting for the disk."""
        self.crash: Callable[[str], None] = lambda point: None
        self.on_durable: Callable[[Sequence[Block]], None] = lambda blocks: None
        """Called with blocks once they are durable (the simulation's ledger checker)."""

    @property
    def head(self) -> BlockHeader | None:
        return self.blocks[-1].header if self.blocks else None

    @property
    def height(self) -> int:
        return len(self.blocks)

    # ------------------------------------------------------------------- DriverStorage

    async def record_states(self, record_ids: Iterable[str]) -> Mapping[str, RecordState]:
        return self.state.record_states(record_ids)

    async def membership(self) -> ms.MembershipState:
        return self.state.membership()

    async def append_blocks(self, blocks: Sequence[Block], *,
                            also_persist: Sequence[m.SignedMessage] = (),
                            wait_for_disk: bool = True) -> None:
        self.crash("before appending blocks")
        self.messages.extend(also_persist)
        self._add(blocks)
        if wait_for_disk or also_persist:
            self._on_disk()
        else:
            self.volatile += len(blocks)  # a crash before the next waiting write loses them
        self.crash("after appending blocks")

    async def persist_messages(self, msgs: Sequence[m.SignedMessage]) -> None:
        self.crash("before persisting messages")
        self.messages.extend(msgs)
        self._on_disk()
        self.crash("after persisting messages")

    async def persist_snapshot(self, snapshot: m.Snapshot,
                               proof: Sequence[m.SignedMessage]) -> None:
        self.crash("before persisting a checkpoint")
        self.snapshot, self.snapshot_proof = snapshot, tuple(proof)
        self._on_disk()

        def keep(msg: m.SignedMessage) -> bool:
            b = msg.body
            return not isinstance(b, m.PrePrepare | m.Prepare | m.Commit) or b.seq > snapshot.seq

        self.messages = [x for x in self.messages if keep(x)]
        self.crash("after persisting a checkpoint")

    async def stored_merkle_root(self, height: int) -> bytes | None:
        if not 1 <= height <= len(self.blocks):
            return None
        return self.blocks[height - 1].header.merkle_root

    # ---------------------------------------------------------------- state transfer

    def install(self, blocks: Sequence[Block]) -> None:
        """Blocks fetched from a peer and verified (the store's `install_blocks`)."""
        self.crash("before installing fetched blocks")
        self._add(blocks)
        self._on_disk()
        self.crash("after installing fetched blocks")

    def _on_disk(self) -> None:
        """A write that waited for the disk: everything written before it is durable too (the
        WAL is flushed in order). Stored blocks hold their batches: the log keeps headers."""
        self.volatile = 0
        stored = self.height
        self.messages = [dataclasses.replace(x, batch=None)
                         if x.batch is not None and isinstance(x.body, m.PrePrepare)
                         and x.body.seq <= stored else x for x in self.messages]

    def lose_volatile(self) -> list[Block]:
        """The machine died: blocks written without waiting for the disk since the last
        write that waited are gone (the ledger state is rebuilt from what remains). Returns
        the lost blocks."""
        if not self.volatile:
            return []
        kept = self.blocks[:len(self.blocks) - self.volatile]
        lost = self.blocks[len(kept):]
        self.volatile = 0
        self.blocks = []
        self.state = LedgerState(self.state.initial_screening)
        for b in kept:
            self.blocks.append(b)
            self.state.apply(b)
        return lost

    def _add(self, blocks: Sequence[Block]) -> None:
        for b in blocks:
            if b.header.height != len(self.blocks) + 1 or (
                    self.blocks and b.header.prev_hash != self.blocks[-1].header.hash()):
                raise AssertionError(f"block {b.header.height} does not extend the stored "
                                     f"chain at height {len(self.blocks)}: a driver bug")
            self.blocks.append(b)
            self.state.apply(b)
        self.on_durable(blocks)

    # ----------------------------------------------------------------------- recovery

    def recovered(self) -> Recovered:
        """What a restarting replica is built from (the store's `load_recovered`)."""
        above = -1 if self.snapshot is None else self.snapshot.seq
        executed = tuple(
            ExecutedBatch(b.header.height, b.pre_prepare, b.certificate,
                          tuple(stored_request(env, _items_of(b, env)) for env in b.envelopes))
            for b in self.blocks if b.header.height > above)
        return Recovered(self.snapshot, self.snapshot_proof, executed, tuple(self.messages))


def _items_of(block: Block, env: Envelope) -> list[Any]:
    return [e.item for e in block.entries[env.first_entry:env.first_entry + env.entry_count]]


class SimHost:
    """The driver's host for one simulated validator: peers, timers and clients are the
    simulation's; state transfer copies verified blocks from another honest validator's
    storage."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self.sim = sim
        self.node = node

    @property
    def driver(self) -> Driver:
        assert self.node.driver is not None
        return self.node.driver

    def send(self, to: int, data: bytes) -> None:
        self.sim.sent_by_honest(self.node, to, data)

    def set_timer(self, kind: ev.TimerKind, token: int, delay_ms: int) -> None:
        self.node.timers[kind] = token
        self.sim.schedule(self.sim.now_ms + delay_ms, "timer", self.node.key,
                          self.node.incarnation, kind, token)

    def cancel_timer(self, kind: ev.TimerKind) -> None:
        self.node.timers.pop(kind, None)

    async def fetch_blocks(self, target: int) -> None:
        """Blocks up to `target` from the storage of an honest validator that holds them,
        checked link by link and certificate by certificate as a validator checks a peer's
        (`ChainVerifier`). A validator that installed a checkpoint at `target` had it from
        2f+1 signers, so at least f+1 honest validators stored those blocks before saying so;
        their storage is read even while they are down (a simplification: in production the
        validator retries until one is up)."""
        storage = self.node.storage
        assert storage is not None
        if storage.height >= target:
            return
        source = self.sim.block_source(self.node.replica_id, target)
        chain = ChainVerifier(self.sim.chain_id, self.driver.replica.epoch_configs(),
                              self.sim.verifier, prev=storage.head)
        fetched = []
        for b in source[storage.height:target]:
            # Through the wire codec and the checks a validator runs on a peer's blocks.
            wb = block_from_proto(block_to_proto(b), self.sim.chain_id)
            try:
                chain.check(wb)
            except ChainBroken as exc:
                raise AssertionError(f"an honest validator's block {b.header.height} does not "
                                     f"verify: {exc}") from exc
            fetched.append(block_from_wire(wb, self.sim.client_orgs.org_of))
        storage.install(fetched)
        self.driver.ledger.head = storage.head
        if any(changes_membership(b) for b in fetched):
            self.driver.ledger.membership = storage.state.membership()
            self.driver.ledger.orgs = await self.membership_changed(
                self.driver.ledger.membership)
        self.committed(fetched)
        self.sim.stats["blocks_fetched"] += len(fetched)

    async def membership_changed(self, membership: ms.MembershipState) -> ClientOrgs:
        """The simulated clients' organisations are fixed (reconfiguration scenarios change the
        validator set with RECONFIGURATION requests, not with ledger votes)."""
        return self.sim.client_orgs

    def committed(self, blocks: Sequence[Block]) -> None:
        for b in blocks:
            for env in b.envelopes:
                self.sim.reply(self.node.replica_id, env.client_id, env.nonce)

    def rejected(self, request: m.Request, reason: ev.RejectReason,
                 primary: int | None) -> None:
        if primary is not None:
            self.sim.redirect(request, primary)

    def already_executed(self, request: m.Request, seq: int) -> None:
        self.sim.reply(self.node.replica_id, request.client_id, request.nonce)

    def observed(self, action: ev.Action) -> None:
        self.sim.observe(self.node, action)

    def submit_change(self, block: Block) -> None:
        """Simulated clients cast no membership votes, so no block approves a change by votes:
        one that did would be a bug in execution."""
        raise AssertionError(f"block {block.header.height} approved a membership change that "
                             "no simulated client voted for")
