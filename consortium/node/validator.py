"""The validator process: wires the driver (driver.py) to real time, gRPC and PostgreSQL.

One asyncio task runs the consensus loop: it takes events from a queue (client requests, peer
messages, timer expiries) and hands them to the driver round by round; the driver persists
before it speaks. The servicers (servicers.py) are thin: they check input, register waiting
clients (submissions.py) and read through the read pool.

A database outage (PostgreSQL down, disk full) does not crash the process: the loop stops,
the validator says NOT_SERVING and why, waits for the database, then rebuilds its replica from
what is durable (exactly a restart's recovery, in-process) and serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import signal
import time
from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from consortium.config import Genesis, ValidatorConfig, ValidatorInfo
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    ClientOrgs,
    Governance,
    Screening,
    changes_membership,
)
from consortium.ledger.transactions import MemberVote, applicant_key
from consortium.localnet import read_seed
from consortium.node import metrics
from consortium.node.driver import Driver, LedgerContext
from consortium.node.interceptors import MalformedRequests, NotReady
from consortium.node.state_transfer import StateTransfer
from consortium.node.submissions import SubmissionRules, Submissions
from consortium.node.transport import (
    CHANNEL_OPTIONS,
    PeerLink,
    channel_credentials,
    server_credentials,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.replica import Replica
from consortium.pbft.state import NonceStatus
from consortium.storage.reads import LedgerReader
from consortium.storage.rows import StoreUnavailable
from consortium.storage.store import LedgerStore
from consortium.wire import pb, pb_grpc

log = structlog.get_logger("consortium.validator")

EVENTS_QUEUED_MAX = 50_000
"""Events waiting for the consensus loop before peers are slowed and clients refused."""
EVENTS_QUEUED_BYTES_MAX = 128 << 20
"""Request bytes waiting for the consensus loop (clients are refused beyond it)."""
EVENTS_PER_ROUND_MAX = 512
"""Events stepped before the resulting writes are flushed together (group commit)."""
OUTAGE_RETRY_S_MAX = 5.0
CERT_EXPIRY_WARNING_DAYS = 30


class WallClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


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


class Validator:
    """One validator: the consensus loop, its peers, its servers (servicers.py)."""

    def __init__(self, config: ValidatorConfig, genesis: Genesis, store: LedgerStore,
                 reads: LedgerReader) -> None:
        self.config = config
        self.genesis = genesis
        self.store = store
        self.reads = reads
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
        self.clock = WallClock()
        store.erasure_deletes_ciphertext = genesis.policy.erasure_deletes_ciphertext
        store.initial_screening = Screening.ACCEPTED if genesis.admission_client is None \
            else Screening.PENDING
        self.clients = ClientKeys(genesis.client_keys())
        self.membership = ms.EMPTY
        self.submit_rules = SubmissionRules(
            self.chain_id, self.verifier, ClientOrgs(genesis.client_orgs(),
                                                     {o.org_id for o in genesis.orgs}),
            Governance(genesis.admission_client), genesis.rules())
        self.events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self.events_bytes = 0
        self.submissions = Submissions()
        self.driver: Driver | None = None
        self.links: dict[int, PeerLink] = {}
        self.peer_addresses: dict[int, str] = {}
        self.timers: dict[ev.TimerKind, asyncio.TimerHandle] = {}
        self.new_blocks = asyncio.Condition()
        self.health = health_aio.HealthServicer()
        self.state_transfer = StateTransfer(
            self.chain_id, self.verifier, lambda: channel_credentials(config.tls),
            CHANNEL_OPTIONS)
        self._servers: list[grpc.aio.Server] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._accepting = True
        self.serving = False
        self.problem = "starting"
        """Why the validator does not serve (empty while it does)."""
        self.failed = False
        """Set when the consensus loop died of our own bug: the process then exits non-zero."""

    # ------------------------------------------------------------------------- read-only view

    @property
    def replica(self) -> Replica:
        if self.driver is None:
            raise NotReady("the validator is starting: ask another validator or retry")
        return self.driver.replica

    @property
    def height(self) -> int:
        return 0 if self.driver is None else self.driver.ledger.height

    def nonce_status(self, client_id: str, nonce: int) -> NonceStatus:
        return self.replica.nonce_status(client_id, nonce)

    def epoch_config(self, epoch: int) -> EpochConfig | None:
        return self.replica.epoch_configs().get(epoch)

    def is_current_validator_cert(self, common_name: str | None) -> bool:
        """Peer RPCs take only current validators' certificates (CN `validator-<id>` of a member
        of the current epoch, or of a member admitted to the next)."""
        if common_name is None or not common_name.startswith("validator-"):
            return False
        try:
            rid = int(common_name.removeprefix("validator-"))
        except ValueError:
            return False
        if self.driver is None:
            return rid in {v.replica_id for v in self.genesis.validators}
        r = self.replica
        pending = r.pending_reconfiguration
        return r.config.is_member(rid) or (pending is not None and any(
            mem.replica_id == rid for mem in pending.members)) or rid in self.peer_addresses

    def primary_client_address(self) -> str:
        primary = self.replica.primary
        for v in self.genesis.validators:
            if v.replica_id == primary:
                return v.client_address
        for p in self.membership.joined():
            if p.replica_id == primary:
                return p.client_address
        return ""

    # --------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._start_servers()
        try:
            await self.store.check_writable()  # a full disk still answers reads
            await self._boot()
        except StoreUnavailable as exc:  # NOT_SERVING, with why, until it takes writes
            await self._outage(str(exc))
        self._loop_task = asyncio.create_task(self._run(), name="consensus-loop")
        self._loop_task.add_done_callback(self._loop_ended)
        if self.genesis.admission_client is not None:
            self._gauge_task = asyncio.create_task(self._screening_gauges(), name="gauges")
        self._cert_expiry_gauge()

    async def _boot(self) -> None:
        """Build the replica from what is durable (at start, and after a database outage)."""
        recovered, head = await self.store.load_recovered()
        replica = Replica(replica_id=self.me.replica_id, signer=self.signer,
                          chain_id=self.chain_id, genesis=self.genesis.epoch0(),
                          params=self.genesis.protocol, verifier=self.verifier,
                          clients=self.clients, recovered=recovered, clock=self.clock)
        ledger = LedgerContext(self.chain_id, self.genesis.admission_client,
                               self.genesis.rules(), self.submit_rules.orgs, ms.EMPTY, head,
                               self.verifier)
        self.driver = Driver(replica, ledger, _Storage(self.store, self.reads), _Host(self))
        log.info("recovered", height=self.height, replica_executed=replica.last_executed,
                 view=replica.view)
        self.submit_rules.block_ms = 0 if head is None else head.timestamp_ms
        await self.driver.boot()
        self._resubmit_pending_change()
        metrics.height.set(self.height)
        metrics.view.set(replica.view)
        metrics.epoch.set(replica.config.epoch)
        await self._set_serving(True, "")

    async def _set_serving(self, serving: bool, problem: str) -> None:
        self.serving = serving
        self.problem = problem
        status = health_pb2.HealthCheckResponse.SERVING if serving else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", "consortium.v1.Ledger"):
            await self.health.set(service, status)
        metrics.up.set(1 if serving else 0)

    async def membership_changed(self, membership: ms.MembershipState) -> ClientOrgs:
        """Membership from the ledger: who may sign, which organisations are members, and a
        peer link to every validator we know of (genesis and admitted ones)."""
        self.membership = membership
        self.clients.update(membership.client_keys())
        validator_orgs = {v.replica_id: v.org for v in self.genesis.validators}
        validator_orgs.update({p.replica_id: p.org for p in membership.joined()})
        gone = membership.removed()
        removed = {validator_orgs[r] for r in gone if r in validator_orgs} - {
            org for r, org in validator_orgs.items() if r not in gone}  # unless it rejoined
        client_orgs = {c: o for c, o in {**self.genesis.client_orgs(),
                                         **membership.client_orgs()}.items()
                       if o not in removed}
        joined = membership.joined()
        orgs = ClientOrgs(
            client_orgs, ({o.org_id for o in self.genesis.orgs} | {p.org for p in joined})
            - removed,
            keys={c: k for c in client_orgs if (k := self.clients.client_key(c)) is not None},
            keys_in_use=frozenset(self.genesis.client_keys().values())
            | frozenset(o.encryption_key for o in self.genesis.orgs)
            | frozenset(k for p in joined
                        for k in (p.validator_key, p.client_key, p.encryption_key)))
        self.submit_rules.orgs = orgs
        self.submit_rules.membership = membership
        addresses = {v.replica_id: v.peer_address for v in self.genesis.validators}
        addresses.update({p.replica_id: p.peer_address for p in membership.joined()})
        self.peer_addresses = {r: a for r, a in addresses.items() if r != self.me.replica_id}
        creds: grpc.ChannelCredentials | None = None
        for rid, address in sorted(self.peer_addresses.items()):
            if rid in self.links:
                continue
            creds = creds or channel_credentials(self.config.tls)
            link = PeerLink(rid, address, creds, metrics.peer_state)
            self.links[rid] = link
            link.start()
        self._submission_governance()
        return orgs

    def _submission_governance(self) -> None:
        """Submissions are judged with the current epoch's governance (its validators vote,
        its set judges join requests): after a membership change and in each new epoch."""
        if self.driver is not None:
            self.submit_rules.gov = Governance.of(self.genesis.admission_client,
                                                  self.replica.config, self.verifier)

    def submit_change(self, block: Block) -> None:
        """A vote in this block approved a membership proposal: submit the validator-set change
        it carries (every member does; the consensus layer executes the first and skips the
        rest)."""
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
        self.submit_event(ev.ClientRequest(request, retry=True))

    async def _start_servers(self) -> None:
        from consortium.node.servicers import LedgerService, ReplicaService
        await self._set_serving(False, "starting")
        peer = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=[MalformedRequests()])
        pb_grpc.add_ReplicaServicer_to_server(ReplicaService(self), peer)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, peer)
        peer.add_secure_port(self.config.listen_peer,
                             server_credentials(self.config.tls, require_client_auth=True))
        client = grpc.aio.server(interceptors=[MalformedRequests()], options=[
            ("grpc.max_receive_message_length", self.genesis.protocol.request_bytes_max + 4096),
            ("grpc.max_send_message_length", 64 << 20)])
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
        drain_ms), then stop servers, links and the database connections."""
        self._accepting = False
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + self.config.drain_ms / 1000
        while len(self.submissions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for server in self._servers:
            await server.stop(grace=1.0)
        for task in (self._gauge_task, self._loop_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for link in self.links.values():
            await link.stop()
        for handle in self.timers.values():
            handle.cancel()
        await self.reads.close()
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
        self.events_bytes += _event_bytes(event)
        self.events.put_nowait(event)

    def inbound_full(self, size: int) -> bool:
        """Whether the consensus loop's queue is too full to take `size` more bytes (of client
        requests and peer messages alike: peers are slowed by gRPC flow control, clients
        refused)."""
        return self.events.qsize() >= EVENTS_QUEUED_MAX or \
            self.events_bytes + size > EVENTS_QUEUED_BYTES_MAX

    @property
    def accepting(self) -> bool:
        return self._accepting and self.serving

    async def _run(self) -> None:
        while True:
            batch = [await self.events.get()]
            while len(batch) < EVENTS_PER_ROUND_MAX and not self.events.empty():
                batch.append(self.events.get_nowait())
            for e in batch:
                self.events_bytes -= _event_bytes(e)
            assert self.driver is not None
            try:
                await self.driver.round(batch)
            except StoreUnavailable as exc:
                await self._outage(str(exc))

    async def _outage(self, problem: str) -> None:
        """The database failed mid-round: stop, say why, wait for it, then rebuild from what
        is durable (nothing of the failed round left the process)."""
        log.error("database unavailable; not serving until it returns", error=problem[:300])
        metrics.outages.inc()
        await self._set_serving(False, f"database unavailable: {problem}")
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        while not self.events.empty():
            self.events.get_nowait()
        self.events_bytes = 0
        self.submissions.fail_all("the validator lost its database; retry (elsewhere)")
        delay = 0.2
        while True:
            await asyncio.sleep(delay)
            try:
                await self.store.ping()
                await self.store.check_writable()
                await self._boot()
                log.info("database back; serving again")
                return
            except StoreUnavailable as exc:
                self.problem = f"database unavailable: {exc}"
                delay = min(delay * 2, OUTAGE_RETRY_S_MAX)

    async def _screening_gauges(self) -> None:
        """Export the screening backlog and the review queue as gauges, every few seconds."""
        while True:
            try:
                counts = await self.reads.screening_counts()
            except StoreUnavailable as exc:
                log.warning("screening gauges failed", error=str(exc)[:200])
                counts = None
            if counts is not None:
                for status in (Screening.PENDING, Screening.QUARANTINED, Screening.REJECTED):
                    metrics.screening.labels(status=status).set(counts.get(status, 0))
            await asyncio.sleep(5)

    def _cert_expiry_gauge(self) -> None:
        """Days until this validator's TLS certificate expires (a health warning 30 days
        before)."""
        try:
            cert = x509.load_pem_x509_certificate(self.config.tls.cert.read_bytes())
        except (OSError, ValueError):
            return
        days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
        metrics.tls_cert_expiry_days.set(days)
        if days < CERT_EXPIRY_WARNING_DAYS:
            log.warning("TLS certificate expires soon", days=days,
                        cert=str(self.config.tls.cert))

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The consensus loop only ends by cancellation; anything else is our bug: stop
        serving and exit, so that the supervisor (`consortium up`, Kubernetes) restarts us from
        the database instead of leaving a validator that looks healthy and does nothing."""
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
        while self.height < height:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            async with self.new_blocks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.new_blocks.wait(), left)
        return True

    # --------------------------------------------------------------------------- host side

    def committed(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            self._remember(block)
        self.submissions.committed(blocks)
        asyncio.get_running_loop().create_task(self._notify_blocks())

    async def _notify_blocks(self) -> None:
        async with self.new_blocks:
            self.new_blocks.notify_all()

    def _remember(self, block: Block) -> None:
        """A block is durable: judge submissions as of its time from now on; metrics."""
        self.submit_rules.block_ms = block.header.timestamp_ms
        metrics.height.set(block.header.height)
        metrics.blocks_committed.inc()
        metrics.records_committed.inc(sum(1 for e in block.entries if e.status == "recorded"))
        metrics.postgres_rows.set(self.store.rows_written)
        metrics.postgres_bytes.set(self.store.bytes_written)

    def set_timer(self, kind: ev.TimerKind, token: int, delay_ms: int) -> None:
        old = self.timers.pop(kind, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.timers[kind] = loop.call_later(delay_ms / 1000, self.submit_event,
                                            ev.TimerFired(kind, token))

    def cancel_timer(self, kind: ev.TimerKind) -> None:
        handle = self.timers.pop(kind, None)
        if handle is not None:
            handle.cancel()

    def observed(self, a: ev.Action) -> None:
        if isinstance(a, ev.ViewEntered):
            metrics.view.set(a.view)
            metrics.view_changes.inc()
            log.info("view entered", view=a.view, primary=a.primary)
        elif isinstance(a, ev.EpochEntered):
            self._submission_governance()
            metrics.epoch.set(a.config.epoch)
            log.info("epoch entered", epoch=a.config.epoch, members=a.config.replica_ids,
                     member=a.config.is_member(self.me.replica_id))
        elif isinstance(a, ev.PeerFault):
            metrics.peer_faults.inc()
            log.warning("peer fault", sender=a.sender, reason=a.reason)

    async def fetch_blocks(self, target: int) -> None:
        assert self.driver is not None
        ledger = self.driver.ledger

        async def install(blocks: list[Block]) -> None:
            await self.store.install_blocks(blocks)
            ledger.head = blocks[-1].header
            for block in blocks:
                self._remember(block)
            if any(changes_membership(b) for b in blocks):
                ledger.membership = await self.reads.membership()
                ledger.orgs = await self.membership_changed(ledger.membership)
            self.submissions.committed(blocks)
            await self._notify_blocks()

        await self.state_transfer.fetch(
            target, lambda: ledger.head, lambda: sorted(self.peer_addresses.items()),
            self.replica.epoch_configs, install, ledger.orgs.org_of)


class _Storage:
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


class _Host:
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


def _event_bytes(event: ev.Event) -> int:
    """What an event queued for the consensus loop holds in memory, for its byte bound."""
    if isinstance(event, ev.ClientRequest):
        return event.request.size_bytes
    if isinstance(event, ev.PeerMessage):
        return len(event.data)
    return 0
