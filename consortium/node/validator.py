"""The validator process: drives the PBFT replica with real time, sockets and PostgreSQL.

One asyncio task owns the replica. It takes events from a queue (client requests, peer messages,
timer expiries), steps the replica, and carries out the actions: first everything durable
(consensus log, blocks, checkpoints) in PostgreSQL, then the sends. So nothing leaves this
process before what it commits to is on disk ("durability before speech"), and a `kill -9` at
any point recovers from the database without equivocating.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import grpc
import psycopg
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.config import Genesis, ValidatorConfig, ValidatorInfo, validator_client_id
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    ClientOrgs,
    EntryStatus,
    Governance,
    Screening,
    build_block,
    changes_membership,
    referenced_records,
    verify_certificate,
)
from consortium.ledger.records import InvalidRecord, RecordKind, decode_submission
from consortium.ledger.transactions import (
    Erase,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RequestView,
    TxType,
    applicant_key,
    decode_tx,
)
from consortium.localnet import read_seed
from consortium.node import metrics, wire
from consortium.node.transport import (
    CHANNEL_OPTIONS,
    COALESCE_MESSAGES_MAX,
    PeerLink,
    channel_credentials,
    server_credentials,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import encode_epoch_records
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import split_segments
from consortium.pbft.replica import Replica
from consortium.pbft.state import GENESIS_STATE_DIGEST, NonceStatus, next_state_digest
from consortium.pbft.viewchange import verify_pre_prepare_msg
from consortium.storage.store import LedgerStore, StoredBlock, StoreError

log = structlog.get_logger("consortium.validator")

EVENTS_QUEUED_MAX = 50_000
"""Events waiting for the consensus loop before peers are slowed and clients refused."""
EVENTS_PER_ROUND_MAX = 512
"""Events stepped before the resulting writes are flushed together (group commit)."""
RECENT_BLOCKS_MAX = 256
MIN_HEIGHT_WAIT_S = 5.0
STREAM_IN_FLIGHT_MAX = 4096
"""Submissions one SubmitStream may have waiting for their commit."""
STATE_TRANSFER_BATCH_BLOCKS = 256
APPLICANT_REQUESTS_PER_MINUTE = 30
"""Join requests (from applicants, who need no standing) one validator accepts per minute."""


class RateLimit:
    """At most `limit` events in any `window_s` seconds."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class ClientKeys:
    """Who may sign requests: the genesis clients and validators, the identities named by join
    requests on the ledger (`MembershipState.client_keys`), and applicants, whose client id
    carries their key (what each identity may do is decided at execution)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._genesis = keys
        self._ledger: dict[str, bytes] = {}

    def update(self, keys: dict[str, bytes]) -> None:
        self._ledger = {k: v for k, v in keys.items() if k not in self._genesis}

    def client_key(self, client_id: str) -> bytes | None:
        if client_id.startswith(ms.RECONFIG_PREFIX):
            client_id = "validator-" + client_id.removeprefix(ms.RECONFIG_PREFIX)
        key = self._genesis.get(client_id)
        if key is None:
            key = self._ledger.get(client_id)
        return key if key is not None else applicant_key(client_id)


@dataclass
class Outcome:
    """How a submitted request ended, as the waiting SubmitRecord call learns it."""

    height: int = 0
    rejected: ev.RejectReason | None = None


@dataclass
class Waiters:
    by_record: dict[str, list[asyncio.Future[Outcome]]] = field(default_factory=dict)

    def add(self, record_id: str) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.by_record.setdefault(record_id, []).append(fut)
        return fut

    def resolve(self, record_id: str, outcome: Outcome) -> None:
        for fut in self.by_record.pop(record_id, []):
            if not fut.done():
                fut.set_result(outcome)

    def discard(self, record_id: str, fut: asyncio.Future[Outcome]) -> None:
        futs = self.by_record.get(record_id)
        if futs and fut in futs:
            futs.remove(fut)
            if not futs:
                del self.by_record[record_id]


class Validator:
    def __init__(self, config: ValidatorConfig, genesis: Genesis, store: LedgerStore) -> None:
        self.config = config
        self.genesis = genesis
        self.store = store
        self.chain_id = genesis.chain_id_bytes
        self.signer = Ed25519Signer(read_seed(config.signing_key))
        self.joining = config.replica_id not in {v.replica_id for v in genesis.validators}
        """Not in genesis: a validator admitted later (a join request approved by the
        members), which catches up by state transfer (docs/admission.md)."""
        if self.joining:
            self.me = ValidatorInfo(config.replica_id, config.org or "", self.signer.public_key,
                                    config.listen_peer, config.listen_client)
        else:
            self.me = genesis.validator(config.replica_id)
            if self.signer.public_key != self.me.public_key:
                raise ValueError(f"{config.signing_key} does not hold validator "
                                 f"{config.replica_id}'s key from the genesis file")
        self._reconfig_nonce = 0
        """Last nonce of `reconfig-<id>` (time-based: no state to keep, restarts move on)."""
        self.verifier = CachingVerifier(Ed25519Verifier(), 1 << 17)
        store.erasure_deletes_ciphertext = genesis.policy.erasure_deletes_ciphertext
        store.initial_screening = Screening.ACCEPTED if genesis.admission_client is None \
            else Screening.PENDING
        self.clients = ClientKeys(genesis.client_keys())
        self.orgs = ClientOrgs(genesis.client_orgs(), {o.org_id for o in genesis.orgs})
        self.membership = ms.EMPTY
        self.applicant_quota = RateLimit(APPLICANT_REQUESTS_PER_MINUTE, 60.0)
        self.events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self.waiters = Waiters()
        self.recent: OrderedDict[int, Block] = OrderedDict()
        self.recent_entries: dict[str, tuple[int, int]] = {}
        """record id -> (height, index) of the entries of `recent` that took effect (not
        duplicates): receipts for just-committed requests come from memory, not PostgreSQL."""
        self.head: BlockHeader | None = None
        self.replica: Replica | None = None
        self.links: dict[int, PeerLink] = {}
        self.timers: dict[ev.TimerKind, asyncio.TimerHandle] = {}
        self.new_blocks = asyncio.Condition()
        self.health = health_aio.HealthServicer()
        self._servers: list[grpc.aio.Server] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._accepting = True
        self.failed = False
        """Set when the consensus loop died: the process then exits non-zero."""

    # --------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        recovered, self.head = await self.store.load_recovered()
        self.replica = Replica(replica_id=self.me.replica_id, signer=self.signer,
                               chain_id=self.chain_id, genesis=self.genesis.epoch0(),
                               params=self.genesis.protocol, verifier=self.verifier,
                               clients=self.clients, recovered=recovered)
        log.info("recovered", height=self.head.height if self.head else 0,
                 replica_executed=self.replica.last_executed, view=self.replica.view)
        await self._load_membership()
        await self._start_servers()
        if self._ledger_height() < self.replica.last_executed:
            await self._fetch_missing_blocks(self.replica.last_executed)
        await self._carry_out(self.replica.start())
        self._resubmit_pending_change()
        self._loop_task = asyncio.create_task(self._run(), name="consensus-loop")
        if self.genesis.admission_client is not None:
            self._gauge_task = asyncio.create_task(self._screening_gauges(), name="gauges")
        self._loop_task.add_done_callback(self._loop_ended)
        metrics.height.set(self._ledger_height())
        metrics.view.set(self.replica.view)
        metrics.epoch.set(self.replica.config.epoch)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("consortium.v1.Ledger", health_pb2.HealthCheckResponse.SERVING)
        metrics.up.set(1)

    async def _load_membership(self) -> None:
        """Membership from the ledger: who may sign, which organisations are members, and a
        peer link to every validator we know of (genesis and admitted ones)."""
        self.membership = await self.store.membership()
        self.clients.update(self.membership.client_keys())
        # A removed validator's organisation is no longer a member: its clients may not act.
        validator_orgs = {v.replica_id: v.org for v in self.genesis.validators}
        validator_orgs.update({p.replica_id: p.org for p in self.membership.joined()})
        gone = self.membership.removed()
        removed = {validator_orgs[r] for r in gone if r in validator_orgs} - {
            org for r, org in validator_orgs.items() if r not in gone}  # unless it rejoined
        client_orgs = {**self.genesis.client_orgs(), **self.membership.client_orgs()}
        self.orgs = ClientOrgs({c: o for c, o in client_orgs.items() if o not in removed},
                               ({o.org_id for o in self.genesis.orgs}
                                | {p.org for p in self.membership.joined()}) - removed)
        addresses = {v.replica_id: v.peer_address for v in self.genesis.validators}
        addresses.update({p.replica_id: p.peer_address for p in self.membership.joined()})
        creds: grpc.ChannelCredentials | None = None
        for rid, address in sorted(addresses.items()):
            if rid == self.me.replica_id or rid in self.links:
                continue
            creds = creds or channel_credentials(self.config.tls)
            link = PeerLink(rid, address, creds, metrics.peer_state)
            self.links[rid] = link
            link.start()

    def _submit_reconfigurations(self, block: Block) -> None:
        """A vote in this block approved a membership proposal: submit the validator-set change
        it carries (every member does; the consensus layer executes the first and skips the
        rest)."""
        assert self.replica is not None
        config = self.replica.epoch_configs().get(block.header.epoch)
        for e in block.entries:
            if (config is not None and isinstance(e.action, MemberVote)
                    and e.reason == ms.MEMBERSHIP_OUTCOME + ms.ProposalStatus.APPROVED):
                proposal = self.membership.proposals.get(e.action.proposal_id)
                if proposal is not None:
                    self._submit_change(proposal, config)

    def _resubmit_pending_change(self) -> None:
        """After a restart: a change approved in the current epoch that the consensus layer
        has not taken up yet (every member may have crashed before submitting it)."""
        assert self.replica is not None
        config = self.replica.config
        proposal = self.membership.pending_change(config.epoch)
        if proposal is not None and self.replica.pending_reconfiguration is None:
            self._submit_change(proposal, config)

    def _submit_change(self, proposal: ms.Proposal, config: EpochConfig) -> None:
        """Submit the quorum-approved Reconfiguration, signed with this validator's key as
        client `reconfig-<id>` (a nonce space of its own, time-based)."""
        if not config.is_member(self.me.replica_id):
            return
        payload = ms.reconfiguration_payload(proposal, config)
        client_id = ms.reconfig_client_id(self.me.replica_id)
        nonce = self._reconfig_nonce = max(self._reconfig_nonce + 1, time.time_ns() // 1000)
        digest = m.request_digest(client_id, nonce, m.RequestKind.RECONFIGURATION, payload)
        request = m.Request(client_id, nonce, m.RequestKind.RECONFIGURATION, payload,
                            self.signer.sign(m.request_signing_bytes(self.chain_id, digest)))
        log.info("membership approved; submitting the validator-set change",
                 proposal=proposal.proposal_id, kind=proposal.kind,
                 replica=proposal.replica_id, from_epoch=config.epoch)
        self.submit_event(ev.ClientRequest(request))

    async def _start_servers(self) -> None:
        # The health servicer starts SERVING: say NOT_SERVING until recovery is complete.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        peer = grpc.aio.server(options=CHANNEL_OPTIONS)
        pb_grpc.add_ReplicaServicer_to_server(ReplicaService(self), peer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, peer)
        peer.add_secure_port(self.config.listen_peer,
                             server_credentials(self.config.tls, require_client_auth=True))
        client = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.genesis.protocol.request_bytes_max + 4096)])
        pb_grpc.add_LedgerServicer_to_server(LedgerService(self), client)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, client)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["Ledger"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), client)
        client.add_secure_port(self.config.listen_client,
                               server_credentials(self.config.tls, require_client_auth=False))
        servers = [peer, client]
        if self.config.listen_health:
            probe = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, probe)
            probe.add_insecure_port(self.config.listen_health)
            servers.append(probe)
        for server in servers:
            await server.start()
            self._servers.append(server)

    async def stop(self) -> None:
        """Graceful shutdown: refuse new submissions, let in-flight ones finish (bounded by
        drain_ms), then stop servers, links and the database connection."""
        self._accepting = False
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + self.config.drain_ms / 1000
        while self.waiters.by_record and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for server in self._servers:
            await server.stop(grace=1.0)
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(BaseException):
                await self._loop_task
        for link in self.links.values():
            await link.stop()
        for handle in self.timers.values():
            handle.cancel()
        await self.store.close()
        metrics.up.set(0)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        log.info("validator serving", replica_id=self.me.replica_id,
                 peer=self.config.listen_peer, client=self.config.listen_client)
        await self._stopping.wait()
        log.info("shutting down")
        await self.stop()

    # ------------------------------------------------------------------------- consensus loop

    def submit_event(self, event: ev.Event) -> None:
        self.events.put_nowait(event)

    async def _run(self) -> None:
        assert self.replica is not None
        while True:
            batch = [await self.events.get()]
            while len(batch) < EVENTS_PER_ROUND_MAX and not self.events.empty():
                batch.append(self.events.get_nowait())
            actions: list[ev.Action] = []
            for event in batch:
                actions.extend(self.replica.step(event))
            await self._carry_out(actions)

    async def _screening_gauges(self) -> None:
        """Export the screening backlog (records waiting for the admission service) and the
        review queue as gauges, every few seconds."""
        while True:
            try:
                counts = await self.store.screening_counts()
            except (StoreError, psycopg.Error) as exc:
                log.warning("screening gauges failed", error=str(exc)[:200])
                counts = None
            if counts is not None:
                for status in (Screening.PENDING, Screening.QUARANTINED, Screening.REJECTED):
                    metrics.screening.labels(status=status).set(counts.get(status, 0))
            await asyncio.sleep(5)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The consensus loop only ends by cancellation; anything else is fatal: stop serving
        and exit, so that the supervisor (`consortium up`, Kubernetes) restarts us from the
        database instead of leaving a validator that looks healthy and does nothing."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("consensus loop died; stopping", error=repr(exc)[:500])
            self.failed = True
            metrics.up.set(0)
            self._accepting = False
            self._stopping.set()

    async def wait_height(self, height: int, timeout_s: float) -> bool:
        """Wait until the ledger reaches `height` (at most timeout_s); whether it did."""
        deadline = time.monotonic() + timeout_s
        while self._ledger_height() < height:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            async with self.new_blocks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.new_blocks.wait(), left)
        return True

    def _ledger_height(self) -> int:
        return 0 if self.head is None else self.head.height

    async def _carry_out(self, actions: list[ev.Action]) -> None:
        """Everything durable first, in order; then everything that speaks. The blocks a round
        executes and the messages it persists go to PostgreSQL in one transaction (one fsync
        per round, not per block), unless a block's transactions need the state a previous
        block of the round leaves (then that one is written first)."""
        pending: list[m.SignedMessage] = []
        blocks: list[Block] = []
        executed: list[Block] = []

        async def flush() -> None:
            nonlocal pending, blocks
            if blocks:
                await self.store.append_blocks(blocks, also_persist=pending)
                for block in blocks:
                    self._remember(block)
            elif pending:
                await self.store.persist_messages(pending)
            pending, blocks = [], []

        for a in actions:
            if isinstance(a, ev.Persist):
                pending.extend(a.messages)
            elif isinstance(a, ev.Execute):
                if a.seq <= self._ledger_height():
                    await flush()
                    await self._check_stored(a)
                    continue
                refs = referenced_records(a.requests)
                if refs and blocks:
                    await flush()
                block = await self._build(a, blocks[-1].header if blocks else self.head, refs)
                blocks.append(block)
                executed.append(block)
                if changes_membership(block):
                    await flush()  # later blocks are judged against the new membership
                    await self._load_membership()
                    self._submit_reconfigurations(block)
            elif isinstance(a, ev.PersistSnapshot):
                await flush()
                await self.store.persist_snapshot(a.snapshot, a.proof)
            elif isinstance(a, ev.InstallSnapshot):
                await flush()
                await self._fetch_missing_blocks(a.snapshot.seq)
        await flush()
        # --- durable from here on: speak
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    link = self.links.get(to)
                    if link is not None:
                        link.send(a.data)
            elif isinstance(a, ev.SetTimer):
                self._set_timer(a.kind, a.token, a.delay_ms)
            elif isinstance(a, ev.CancelTimer):
                handle = self.timers.pop(a.kind, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(a, ev.RejectRequest):
                self.waiters.resolve(a.request.digest.hex(), Outcome(rejected=a.reason))
            elif isinstance(a, ev.AlreadyExecuted):
                self.waiters.resolve(a.request.digest.hex(), Outcome(height=a.seq))
            elif isinstance(a, ev.ViewEntered):
                metrics.view.set(a.view)
                metrics.view_changes.inc()
                log.info("view entered", view=a.view, primary=a.primary)
            elif isinstance(a, ev.EpochEntered):
                metrics.epoch.set(a.config.epoch)
                log.info("epoch entered", epoch=a.config.epoch, members=a.config.replica_ids,
                         member=a.config.is_member(self.me.replica_id))
            elif isinstance(a, ev.PeerFault):
                metrics.peer_faults.inc()
                log.warning("peer fault", sender=a.sender, reason=a.reason)
        for block in executed:
            for entry in block.entries:
                self.waiters.resolve(entry.record_id, Outcome(height=block.header.height))
        if executed:
            async with self.new_blocks:
                self.new_blocks.notify_all()

    async def _check_stored(self, a: ev.Execute) -> None:
        """A batch the ledger already holds (installed by state transfer: recovery stops at a
        block whose pre-prepare a peer had dropped after an erasure) must be the same batch."""
        stored = await self.store.get_block(a.seq)
        if stored is None or BlockHeader.decode(stored.header).merkle_root != a.digest:
            raise AssertionError(f"stored block {a.seq} differs from the executed batch")

    async def _build(self, a: ev.Execute, prev: BlockHeader | None,
                     refs: set[str]) -> Block:
        state = await self.store.record_states(refs) if refs else {}
        assert self.replica is not None
        members = self.replica.epoch_configs().get(a.epoch, self.replica.config)
        gov = Governance(self.genesis.admission_client,
                         {validator_client_id(r): r for r in members.replica_ids},
                         members.quorum, members, self.verifier)
        return build_block(a, self.chain_id, prev, self.orgs, state, gov, self.membership)

    def _remember(self, block: Block) -> None:
        """A block is durable: it becomes the head and serves receipts from memory."""
        seq = block.header.height
        self.head = block.header
        if any(isinstance(e.action, Erase) and e.status == EntryStatus.RECORDED
               for e in block.entries):
            self.recent.clear()  # cached blocks may hold the erased request in full
            self.recent_entries.clear()
        self.recent[seq] = block
        for e in block.entries:
            if e.status != EntryStatus.DUPLICATE:
                self.recent_entries[e.record_id] = (seq, e.index)
        while len(self.recent) > RECENT_BLOCKS_MAX:
            _, old = self.recent.popitem(last=False)
            for e in old.entries:
                if self.recent_entries.get(e.record_id, (0, 0))[0] == old.header.height:
                    del self.recent_entries[e.record_id]
        metrics.height.set(seq)
        metrics.blocks_committed.inc()
        metrics.records_committed.inc(sum(1 for e in block.entries if e.status == "recorded"))

    def _set_timer(self, kind: ev.TimerKind, token: int, delay_ms: int) -> None:
        old = self.timers.pop(kind, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.timers[kind] = loop.call_later(delay_ms / 1000, self.submit_event,
                                            ev.TimerFired(kind, token))

    # ------------------------------------------------------------------------ state transfer

    async def _fetch_missing_blocks(self, target: int) -> None:
        """Fetch blocks (head, target] from peers and verify them (hash links and commit
        certificates against the validator set of each block's epoch, from the verified epoch
        history) before storing them."""
        attempts = 0
        while self._ledger_height() < target:
            progressed = False
            for link in self.links.values():
                try:
                    progressed |= await self._fetch_from(link.address, target)
                except (grpc.aio.AioRpcError, wire.WireError, ValueError, TimeoutError,
                        StoreError, psycopg.Error) as exc:
                    log.warning("state transfer from peer failed", peer=link.peer_id,
                                error=str(exc)[:200])
                if self._ledger_height() >= target:
                    return
            if not progressed:
                attempts += 1
                await asyncio.sleep(min(0.1 * 2 ** attempts, 5.0))

    async def _fetch_from(self, address: str, target: int) -> bool:
        assert self.replica is not None
        configs = self.replica.epoch_configs()  # verified (snapshot epoch history)
        start = self._ledger_height() + 1
        async with grpc.aio.secure_channel(address, channel_credentials(self.config.tls),
                                           options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ReplicaStub(channel)
            stream = stub.FetchBlocks(pb.FetchBlocksRequest(
                from_height=start, to_height=min(target, start + STATE_TRANSFER_BATCH_BLOCKS)),
                timeout=30)
            progressed = False
            async for msg in stream:
                blk = wire.block_from_proto(msg, self.chain_id)
                header = blk.header
                if header.height > target:
                    break  # never run the ledger ahead of the consensus state
                config = configs.get(header.epoch)
                if config is None:
                    raise ValueError(f"block {header.height} is from epoch {header.epoch}, "
                                     "which our verified epoch history does not hold")
                if blk.pre_prepare is not None:  # dropped from blocks with erased entries
                    pp = blk.pre_prepare.body
                    assert isinstance(pp, m.PrePrepare)
                    if pp.view != header.view or verify_pre_prepare_msg(
                            blk.pre_prepare, config, self.chain_id, self.verifier) is None:
                        raise ValueError(f"block {header.height} carries an invalid "
                                         "pre-prepare")
                prev_state = self.head.state_digest if self.head else GENESIS_STATE_DIGEST
                if header.state_digest != next_state_digest(prev_state, header.height,
                                                            header.merkle_root):
                    raise ValueError(f"block {header.height} has a wrong state digest")
                expected_prev = self.head.hash() if self.head else bytes(32)
                if header.height != self._ledger_height() + 1 or header.prev_hash != \
                        expected_prev:
                    raise ValueError(f"peer sent block {header.height} that does not extend "
                                     f"our chain at {self._ledger_height()}")
                if not verify_certificate(header, blk.certificate, config, self.verifier):
                    raise ValueError(f"block {header.height} has no valid commit certificate")
                block = wire.block_from_wire(blk, self.orgs.org_of)
                await self.store.install_blocks([block])
                if changes_membership(block):
                    await self._load_membership()
                self.head = header
                for entry in block.entries:  # clients waiting here learn of it too
                    self.waiters.resolve(entry.record_id, Outcome(height=header.height))
                async with self.new_blocks:
                    self.new_blocks.notify_all()
                metrics.height.set(header.height)
                progressed = True
            return progressed


# ------------------------------------------------------------------------------- servicers

def check_submission(req: m.Request, v: Validator) -> tuple[grpc.StatusCode, str] | None:
    """Validate a submission before it is ordered, so the client gets a precise error (the
    replica and the ledger re-check everything; this only answers early)."""
    if req.kind is not m.RequestKind.APPLICATION:
        return grpc.StatusCode.PERMISSION_DENIED, "clients submit application requests only"
    key = v.clients.client_key(req.client_id)
    if key is None:
        return grpc.StatusCode.UNAUTHENTICATED, f"unknown client {req.client_id!r}"
    if not v.verifier.verify(key, m.request_signing_bytes(v.chain_id, req.digest),
                             req.signature):
        return grpc.StatusCode.UNAUTHENTICATED, "bad request signature (or another chain)"
    applicant = applicant_key(req.client_id) is not None
    segments = split_segments(req.payload)
    if segments is not None and segments[0] and segments[0][0] != TxType.RECORD:
        try:
            tx = decode_tx(list(segments))
        except InvalidTransaction as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if applicant and not isinstance(tx, JoinRequest):
            return grpc.StatusCode.PERMISSION_DENIED, "applicants submit join requests only"
        if applicant and not v.applicant_quota.take(time.monotonic()):
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this validator takes at most {APPLICANT_REQUESTS_PER_MINUTE} join "
                    "requests a minute; retry later")
        return None  # judged against the ledger's state when executed (see the receipt)
    if applicant:
        return grpc.StatusCode.PERMISSION_DENIED, "applicants submit join requests only"
    try:
        sub = decode_submission(req.payload)
    except InvalidRecord as exc:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if v.orgs.org_of(req.client_id) != sub.submitter_org:
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"client {req.client_id} may not submit as {sub.submitter_org}")
    unknown = [o for o in sub.readers if o not in v.orgs.known]
    if unknown:
        return grpc.StatusCode.INVALID_ARGUMENT, f"readers {unknown} are not member organisations"
    return None



class ReplicaService(pb_grpc.ReplicaServicer):
    """Peer-facing: reachable only with a certificate from the consortium CA (mutual TLS)."""

    def __init__(self, v: Validator) -> None:
        self.v = v

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        received = 0
        limit = self.v.genesis.protocol.message_bytes_max
        async for msg in request_iterator:
            received += 1
            while self.v.events.qsize() >= EVENTS_QUEUED_MAX:
                await asyncio.sleep(0.005)  # back-pressure: gRPC flow control slows the peer
            for data in (msg.data, *msg.batch[:COALESCE_MESSAGES_MAX]):  # honest peers: <=
                if data and len(data) <= limit:
                    self.v.submit_event(ev.PeerMessage(data))
            if received % 1024 == 0:
                yield pb.PeerAck(received=received)

    async def FetchCheckpoint(self, request, context):  # type: ignore[no-untyped-def]
        replica = self.v.replica
        if replica is None or replica._stable_snapshot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no stable checkpoint yet")
        assert replica is not None and replica._stable_snapshot is not None
        return wire.checkpoint_to_proto(replica._stable_snapshot, replica._stable_proof)

    async def FetchBlocks(self, request, context):  # type: ignore[no-untyped-def]
        if request.to_height < request.from_height or request.from_height < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad height range")
        to = min(request.to_height, request.from_height + STATE_TRANSFER_BATCH_BLOCKS)
        for stored in await self.v.store.get_blocks(request.from_height, to,
                                                    STATE_TRANSFER_BATCH_BLOCKS):
            yield wire.stored_block_to_proto(stored)


RECORD_ID_CHARS = frozenset("0123456789abcdef")


async def _check_record_id(record_id: str, context: grpc.aio.ServicerContext) -> None:
    """A record id is 64 lowercase hex digits; anything else is answered without echoing it."""
    if len(record_id) != 64 or not set(record_id) <= RECORD_ID_CHARS:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"a record id is 64 lowercase hex digits (got {len(record_id)} "
                            "characters)")


class SubmitFailed(Exception):
    """A submission answered with a non-OK status (and, for ALREADY_EXISTS, the receipt)."""

    def __init__(self, code: grpc.StatusCode, message: str, record_id: str = "",
                 receipt: pb.Receipt | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.record_id = record_id
        self.receipt = receipt


class LedgerService(pb_grpc.LedgerServicer):
    """Client-facing. Every input is validated and answered with a precise status."""

    def __init__(self, v: Validator) -> None:
        self.v = v

    async def SubmitRecord(self, request, context):  # type: ignore[no-untyped-def]
        try:
            return await self._submit(request)
        except SubmitFailed as exc:
            if exc.receipt is not None:
                context.set_trailing_metadata((("receipt-bin",
                                                exc.receipt.SerializeToString()),))
            await context.abort(exc.code, exc.message)

    async def SubmitStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        """Many submissions on one stream, answered as they commit (in commit order, each
        naming its record): what a busy submitter uses instead of one call per record."""
        replies: asyncio.Queue[pb.SubmitReply | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT_MAX)
        tasks: set[asyncio.Task[None]] = set()

        async def one(msg: pb.SubmitRecordRequest) -> None:
            try:
                receipt = await self._submit(msg)
                await replies.put(pb.SubmitReply(record_id=receipt.record_id, receipt=receipt))
            except SubmitFailed as exc:
                reply = pb.SubmitReply(record_id=exc.record_id, code=exc.code.value[0],
                                       error=exc.message)
                if exc.receipt is not None:
                    reply.receipt.CopyFrom(exc.receipt)
                await replies.put(reply)
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    await slots.acquire()  # back-pressure: gRPC flow control slows the client
                    task = asyncio.create_task(one(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await replies.put(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _submit(self, request: pb.SubmitRecordRequest) -> pb.Receipt:
        """One submission, up to its receipt; raises SubmitFailed with the status to answer."""
        v = self.v
        started = time.monotonic()
        if not v._accepting:
            raise SubmitFailed(grpc.StatusCode.UNAVAILABLE, "validator is shutting down")
        try:
            req = wire.submit_request_from_proto(request, v.genesis.protocol.request_bytes_max)
        except wire.TooLarge as exc:
            raise SubmitFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        except wire.WireError as exc:
            raise SubmitFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        record_id = req.digest.hex()
        problem = check_submission(req, v)
        if problem is not None:
            raise SubmitFailed(problem[0], problem[1], record_id)
        if v.events.qsize() >= EVENTS_QUEUED_MAX:
            raise SubmitFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "validator is overloaded; retry later or elsewhere", record_id)
        assert v.replica is not None
        fresh = v.replica._client_table.check(req.client_id, req.nonce)[0] is NonceStatus.FRESH
        # A nonce the replica never executed cannot be in the ledger: no database lookup.
        found = None if fresh else await v.store.find_entry(record_id)
        if found is not None:
            raise SubmitFailed(grpc.StatusCode.ALREADY_EXISTS,
                               f"request {record_id} was already committed at height "
                               f"{found[0]}; the original receipt is in the trailers",
                               record_id, await self._receipt(record_id))
        fut = v.waiters.add(record_id)
        v.submit_event(ev.ClientRequest(req))
        wait_ms = min(request.wait_ms or v.config.submit_wait_ms_max, v.config.submit_wait_ms_max)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(fut), wait_ms / 1000)
        except TimeoutError as exc:
            raise SubmitFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"not committed within {wait_ms} ms; retrying the same request "
                               "is safe (it executes at most once)", record_id) from exc
        finally:
            v.waiters.discard(record_id, fut)
        if outcome.rejected is not None:
            code = {ev.RejectReason.BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
                    ev.RejectReason.UNKNOWN_CLIENT: grpc.StatusCode.UNAUTHENTICATED,
                    ev.RejectReason.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ev.RejectReason.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
                    ev.RejectReason.STALE: grpc.StatusCode.FAILED_PRECONDITION,
                    }[outcome.rejected]
            raise SubmitFailed(code, f"request rejected: {outcome.rejected.value}", record_id)
        if record_id not in v.recent_entries and await v.store.find_entry(record_id) is None:
            # AlreadyExecuted names (client, nonce): another request used this nonce.
            raise SubmitFailed(grpc.StatusCode.FAILED_PRECONDITION,
                               f"nonce {req.nonce} of {req.client_id} was already used by "
                               "another request; submit again with a fresh nonce", record_id)
        metrics.submit_latency.observe(time.monotonic() - started)
        return await self._receipt(record_id)

    async def _receipt(self, record_id: str) -> pb.Receipt:
        """The receipt a submitter gets: its own request in full."""
        cached = self.v.recent_entries.get(record_id)
        if cached is not None and cached[0] in self.v.recent:
            return wire.receipt_to_proto(wire.receipt_from_block(self.v.recent[cached[0]],
                                                                 cached[1]))
        found = await self.v.store.find_entry(record_id)
        if found is None:
            raise LookupError(record_id)
        height, index = found[0], found[1]
        block = self.v.recent.get(height)
        if block is not None:
            return wire.receipt_to_proto(wire.receipt_from_block(block, index))
        stored = await self.v.store.get_block(height)
        assert stored is not None
        item = stored.requests[index]
        show = RequestView.decode(item) if stored.redacted[index] else None
        return wire.receipt_from_stored(stored, index, self.v.chain_id,
                                        show=show or wire._request("stored request", item))

    async def _authorize(self, auth: pb.ReadAuth, method: str, argument: str,
                         context: grpc.aio.ServicerContext) -> str:
        """The organisation of the member whose signed ReadAuth this is, or abort with
        UNAUTHENTICATED."""
        v = self.v
        key = v.clients.client_key(auth.client_id) if auth.client_id else None
        org = v.orgs.org_of(auth.client_id) if auth.client_id else None
        if key is None or org is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "reads need a signed ReadAuth from a member's client key")
        assert key is not None and org is not None
        await self._check_read_signature(auth, method, argument, context, key)
        return org

    async def _check_read_signature(self, auth: pb.ReadAuth, method: str, argument: str,
                                    context: grpc.aio.ServicerContext,
                                    key: bytes | None) -> None:
        v = self.v
        if key is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad read signature")
        assert key is not None
        skew = abs(int(time.time() * 1000) - auth.timestamp_ms)
        if skew > v.genesis.policy.read_clock_skew_ms:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"read timestamp is {skew} ms away from the validator's clock "
                                f"(limit {v.genesis.policy.read_clock_skew_ms} ms)")
        signed = wire.read_signing_bytes(v.chain_id, auth.client_id, auth.timestamp_ms, method,
                                         argument)
        if len(auth.signature) != 64 or not v.verifier.verify(key, signed, auth.signature):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad read signature")

    async def GetReceipt(self, request, context):  # type: ignore[no-untyped-def]
        await _check_record_id(request.record_id, context)
        await self._authorize(request.auth, "GetReceipt", request.record_id, context)
        found = await self.v.store.find_entry(request.record_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id}")
        assert found is not None
        stored = await self.v.store.get_block(found[0])
        assert stored is not None
        return wire.receipt_from_stored(stored, found[1], self.v.chain_id)

    async def GetRecord(self, request, context):  # type: ignore[no-untyped-def]
        await _check_record_id(request.record_id, context)
        org = await self._authorize(request.auth, "GetRecord",
                                    f"{request.record_id}/{request.access_id}", context)
        if request.min_height and not await self.v.wait_height(request.min_height,
                                                               MIN_HEIGHT_WAIT_S):
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"this validator is at height {self.v._ledger_height()}, below "
                                f"{request.min_height}: ask another or retry")
        rec = await self.v.store.get_record(request.record_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id}")
        assert rec is not None
        view = wire.record_view(rec)
        keys: dict[str, bytes] = {}
        withheld = ""
        if rec.erasure is not None:
            withheld = "the record was erased"
        elif org not in rec.wrapped_keys:
            withheld = f"{org} is not a reader of this record"
        elif rec.kind == RecordKind.PATIENT.value:
            withheld = await self._access_problem(request.access_id, rec.record_id, org)
        if not withheld:
            keys = {org: rec.wrapped_keys[org]}
        stored = await self.v.store.get_block(rec.height)
        assert stored is not None
        receipt = wire.receipt_from_stored(stored, rec.idx, self.v.chain_id, show=view)
        reply = wire.record_to_proto(rec, view, keys, receipt, withheld)
        reply.screening = rec.screening
        return reply

    async def _access_problem(self, access_id: str, record_id: str, org: str) -> str:
        """Why a committed Access does not (or no longer) let `org` read `record_id`'s key;
        "" when it does."""
        if not access_id:
            return ("a patient record's key is released only against a committed Access "
                    "transaction (access_id)")
        found = await self.v.store.find_entry(access_id)
        row = None if found is None else next(
            (a for a in await self.v.store.access_log(record_id)
             if (a.height, a.idx) == (found[0], found[1])), None)
        if row is None:
            return f"no committed access {access_id} to this record"
        if row.org != org:
            return "the access was made by another organisation"
        if not row.granted:
            return f"{org} is not a reader of this record"
        age = abs(int(time.time() * 1000) - row.at_ms)
        if age > self.v.genesis.policy.access_ttl_ms:
            return (f"the access is {age // 1000} s old; the limit is "
                    f"{self.v.genesis.policy.access_ttl_ms // 1000} s: access again")
        return ""

    async def _block_proto(self, stored: StoredBlock, audit: bool) -> pb.Block:
        msg = wire.stored_block_to_proto(stored, for_client=True)
        if audit:
            msg.stored_hash = stored.hash
            for c in await self.v.store.record_columns(stored.height, stored.height):
                msg.records.append(wire.record_columns_to_proto(c))
        return msg

    async def GetBlock(self, request, context):  # type: ignore[no-untyped-def]
        await self._authorize(request.auth, "GetBlock", str(request.height), context)
        stored = await self.v.store.get_block(request.height)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no block at height {request.height}")
        assert stored is not None
        return await self._block_proto(stored, request.audit)

    async def StreamBlocks(self, request, context):  # type: ignore[no-untyped-def]
        await self._authorize(request.auth, "StreamBlocks",
                              f"{request.from_height}-{request.to_height}", context)
        height = max(1, request.from_height)
        last = request.to_height or (1 << 63)
        while height <= last:
            blocks = await self.v.store.get_blocks(height, min(last, height + 255), 256)
            for stored in blocks:
                yield await self._block_proto(stored, request.audit)
                height = stored.height + 1  # a gap (a deleted block) is skipped
            if not blocks:
                if request.to_height and height > self.v._ledger_height():
                    return  # a bounded range past the head: nothing more to send
                async with self.v.new_blocks:
                    await self.v.new_blocks.wait()

    async def ListScreening(self, request, context):  # type: ignore[no-untyped-def]
        if request.screening not in {Screening.PENDING, Screening.ACCEPTED,
                                     Screening.QUARANTINED, Screening.REJECTED}:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "screening is pending-screening, accepted, quarantined or "
                                "rejected")
        org = await self._authorize(request.auth, "ListScreening",
                                    f"{request.screening}/{request.after_height}", context)
        v = self.v
        records = await v.store.records_by_screening(request.screening, request.after_height,
                                                     request.limit or 1000)
        assert v.replica is not None
        reply = pb.ScreeningReply(quorum=v.replica.config.quorum)
        for rec in records:
            votes, verdicts = await v.store.review_state(rec.record_id)
            readable = rec.kind != RecordKind.PATIENT.value or org in rec.wrapped_keys
            reply.records.append(pb.ScreeningEntry(
                record_id=rec.record_id, height=rec.height, kind=rec.kind,
                subject_id=rec.subject_id, event_type=rec.event_type,
                submitter_org=rec.submitter_org, screening=rec.screening,
                verdicts=[pb.VerdictInfo(decision=d, risk_milli=r,
                                         verdict_json=j if readable else "")
                          for d, r, j in verdicts],
                votes=[pb.ReviewVoteInfo(replica_id=r, accept=a) for r, a in votes]))
        return reply

    async def ListSubject(self, request, context):  # type: ignore[no-untyped-def]
        if request.kind not in {k.value for k in RecordKind}:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "kind is provenance or patient")
        if not 1 <= len(request.subject_id.encode()) <= 256:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "subject_id must be 1 to 256 bytes")
        await self._authorize(request.auth, "ListSubject",
                              f"{request.kind}/{request.subject_id}", context)
        records = await self.v.store.records_for_subject(request.kind, request.subject_id)
        history = await self.v.store.record_history([r.record_id for r in records])
        blocks: dict[int, StoredBlock] = {}
        reply = pb.SubjectReply()
        for entry in history:
            if entry.height not in blocks:
                got = await self.v.store.get_block(entry.height)
                assert got is not None
                blocks[entry.height] = got
            receipt = wire.receipt_from_stored(blocks[entry.height], entry.idx,
                                               self.v.chain_id)
            reply.entries.append(pb.SubjectEntry(receipt=receipt,
                                                 target_record_id=entry.target_record_id or ""))
        return reply

    async def ListMembers(self, request, context):  # type: ignore[no-untyped-def]
        v = self.v
        auth = request.auth
        if applicant_key(auth.client_id) is not None:
            # An applicant may see the queue (to pick a free replica id and follow its own
            # request), without other applicants' statements.
            await self._check_read_signature(auth, "ListMembers", "", context,
                                             applicant_key(auth.client_id))
            org = None
        else:
            org = await self._authorize(auth, "ListMembers", "", context)
        assert v.replica is not None
        config = v.replica.config
        proposals = await v.store.proposals()
        reply = pb.MembersReply(epoch=config.epoch, quorum=config.quorum)
        addresses = {x.replica_id: (x.org, x.peer_address, x.client_address)
                     for x in v.genesis.validators}
        for p in reversed(proposals):  # oldest first: addresses of admitted validators
            if p.kind == "join" and p.status == ms.ProposalStatus.APPROVED:
                addresses[p.replica_id] = (p.org, p.peer_address, p.client_address)
        for p in proposals:
            reply.proposals.append(pb.ProposalInfo(
                proposal_id=p.proposal_id, kind=p.kind, replica_id=p.replica_id,
                org=p.org or addresses.get(p.replica_id, ("",))[0],
                name=p.name, peer_address=p.peer_address, client_address=p.client_address,
                statement=p.statement if org is not None else "", reason=p.reason,
                status=p.status, height=p.height, decided_height=p.decided_height or 0,
                validator_key=p.validator_key, client_key=p.client_key,
                encryption_key=p.encryption_key,
                verdicts=[pb.VerdictInfo(decision=d, risk_milli=r) for d, r in p.verdicts],
                votes=[pb.MemberVoteInfo(epoch=x.epoch, replica_id=x.replica_id,
                                         approve=x.approve) for x in p.votes]))
        for member in config.members:
            org_name, peer, client = addresses.get(member.replica_id, ("", "", ""))
            reply.validators.append(pb.MemberInfo(
                replica_id=member.replica_id, org=org_name, public_key=member.public_key,
                peer_address=peer, client_address=client))
        return reply

    async def GetEpochs(self, request, context):  # type: ignore[no-untyped-def]
        assert self.v.replica is not None
        return pb.EpochsReply(epochs=encode_epoch_records(self.v.replica.epoch_records))

    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        r = self.v.replica
        assert r is not None
        head = self.v.head
        return pb.StatusReply(replica_id=self.v.me.replica_id, org=self.v.me.org,
                              height=0 if head is None else head.height, view=r.view,
                              epoch=r.config.epoch, view_active=r.view_active,
                              last_block_hash=b"" if head is None else head.hash(),
                              stable_checkpoint=r.stable_seq, primary=r.primary)

