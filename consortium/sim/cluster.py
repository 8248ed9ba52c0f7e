"""A deterministic cluster simulation: simulated clock, seeded network, crash-restart, clients.

Everything random comes from one `random.Random(seed)`, keys are derived from the seed, and
Ed25519 signatures are deterministic, so a seed replays the same run bit for bit. Honest
validators run the production loop: `Replica` driven by `consortium.node.driver.Driver`, which
executes committed batches into ledger blocks, persists before it speaks and recovers from what
it persisted; the simulation supplies its storage (which can crash before or after any durable
write), network, timers, clients and state transfer (`sim/host.py`). Byzantine validators run
the replica with their behaviour applied to its actions and a minimal store of their own.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier, Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import Block, ClientOrgs, EnvelopeStatus, Rules, Screening
from consortium.ledger.items import record_id
from consortium.ledger.records import RecordKind, Submission
from consortium.ledger.transactions import WRAPPED_KEY_BYTES, Grant, encode_tx
from consortium.node.driver import Driver, LedgerContext
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.payload import encode_envelope
from consortium.pbft.replica import ExecutedBatch, Recovered, Replica
from consortium.pbft.viewchange import new_view_bytes_max, view_change_bytes_max
from consortium.sim.checkers import SafetyChecker
from consortium.sim.host import SimCrash, SimHost, SimStorage, run_sync

CHAIN_ID = b"sim-chain"
SIM_ORGS = ("org-a", "org-b", "org-c")
TWIN_KEY_OFFSET = 1000
"""A twin of validator i is node `TWIN_KEY_OFFSET + i`."""
"""The simulated clients' organisations (client k belongs to SIM_ORGS[k % 3])."""


def derive_seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


@dataclass
class NetworkFaults:
    """How the simulated network misbehaves while faults are active."""

    delay_ms_min: int = 1
    delay_ms_max: int = 15
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    """Share of messages held back by an extra delay (so later ones overtake them)."""
    reorder_delay_ms_max: int = 200
    partitions: list[tuple[int, int, list[set[int]]]] = field(default_factory=list)
    """(start_ms, end_ms, groups): messages between different groups are lost meanwhile."""
    drop_filter: Callable[[int, int, bytes, int], bool] | None = None
    """(src, dst, wire bytes, now_ms) -> True to lose that message (targeted faults)."""
    extra_delay: Callable[[int, int, int], int] | None = None
    """(src, dst, now_ms) -> extra milliseconds on that link (a slow but alive node)."""


@dataclass
class DurableStore:
    """What survives a Byzantine validator's crash (honest ones have a `SimStorage`)."""

    snapshot: m.Snapshot | None = None
    snapshot_proof: tuple[m.SignedMessage, ...] = ()
    executed: list[ExecutedBatch] = field(default_factory=list)
    messages: list[m.SignedMessage] = field(default_factory=list)

    def recovered(self) -> Recovered:
        return Recovered(self.snapshot, self.snapshot_proof, tuple(self.executed),
                         tuple(self.messages))

    def prune(self, seq: int) -> None:
        self.executed = [e for e in self.executed if e.seq > seq]

        def keep(msg: m.SignedMessage) -> bool:
            b = msg.body
            if isinstance(b, (m.PrePrepare, m.Prepare, m.Commit)):
                return b.seq > seq
            return True

        self.messages = [x for x in self.messages if keep(x)]


Behaviour = Callable[["SimNode", list[ev.Action]], list[ev.Action]]


@dataclass
class SimNode:
    replica_id: int
    signer: Ed25519Signer
    replica: Replica | None
    key: int = -1
    """Its place in `Simulation.nodes`: the replica id, except for a twin (a second running
    copy of a validator's identity, `add_twin`)."""
    store: DurableStore = field(default_factory=DurableStore)
    timers: dict[ev.TimerKind, int] = field(default_factory=dict)
    incarnation: int = 0
    byzantine: bool = False
    behaviour: Behaviour | None = None
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space for a Byzantine behaviour."""
    faults_seen: int = 0
    installed_snapshots: int = 0
    replica_class: type[Replica] | None = None
    """A Byzantine replica may run modified protocol code instead of the honest class."""
    storage: SimStorage | None = None
    """An honest validator's durable state (created at its first boot, kept across crashes)."""
    driver: Driver | None = None
    executing: dict[int, ev.Execute] = field(default_factory=dict)
    """The batches the round being carried out executes, by seq, until they are durable."""


@dataclass
class SimClient:
    client_id: str
    signer: Ed25519Signer
    next_nonce: int = 1
    primary: int = 0
    """Where it sends first submissions (as the SDK does): learnt from NOT_PRIMARY redirects."""
    outstanding: dict[int, tuple[m.Request, int, set[int]]] = field(default_factory=dict)
    """nonce -> (request, retry deadline, replicas that replied)."""
    records: list[str] = field(default_factory=list)
    """Ids of the records it submitted (its grants name them)."""


@dataclass
class SimConfig:
    validators: int = 4
    params: ProtocolParams = field(default_factory=lambda: ProtocolParams(
        checkpoint_interval=4, log_window=8, pipeline_depth=3, batch_requests_max=4,
        batch_delay_ms=5, request_timeout_ms=500, view_change_timeout_ms=500,
        view_change_timeout_max_ms=4000, status_interval_ms=200, retransmit_seqs_max=16,
        client_nonce_window=64, future_messages_max=512))
    clients: int = 3
    requests_per_client: int = 8
    item_bytes: tuple[int, int] = (8, 64)
    """Size range of one envelope item (a record) the simulated clients submit."""
    items_per_envelope: tuple[int, int] = (1, 4)
    submit_window_ms: int = 2000
    client_retry_ms: int = 800
    faults_end_ms: int = 3000
    """Faults (network and Byzantine silence/crashes scheduled by the scenario) stop here."""
    liveness_bound_ms: int = 30000
    """After faults heal, every request must be executed everywhere within this time."""
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    extra_nodes: int = 0
    """Nodes outside genesis (joiners for reconfiguration scenarios)."""
    notes: dict[str, int] = field(default_factory=dict)
    """Scenario-specific choices made with the config and used when the scenario builds."""
    crash_point_rate: float = 0.0
    """Chance that an honest validator dies just before or just after each durable write
    while faults are active (it restarts a little later from what it had written)."""
    grant_rate: float = 0.2
    """Share of client items that are grants on one of the client's earlier records (so
    execution reads record states back from storage) rather than new records."""


class StaticClients:
    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    def client_key(self, client_id: str) -> bytes | None:
        return self._keys.get(client_id)


class SimClock:
    """The replicas' clock: simulated milliseconds (a fixed epoch offset, so stamps look like
    wall-clock times and never go below zero)."""

    EPOCH_MS = 1_700_000_000_000

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    def now_ms(self) -> int:
        return self.EPOCH_MS + self._sim.now_ms


class Simulation:
    def __init__(self, seed: int, config: SimConfig, *, trace: bool = False,
                 replica_factory: type[Replica] = Replica,
                 driver_factory: type[Driver] = Driver) -> None:
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        self.now_ms = 0
        self._queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._counter = 0
        self.trace_enabled = trace
        self.trace: list[str] = []
        self.replica_factory = replica_factory
        self.driver_factory = driver_factory
        """The honest validators' loop: the production driver, or a planted bug's."""
        # One cache for the whole cluster: a broadcast is verified once, not once per receiver.
        # Verification is a pure function and only successes are cached, so no replica can
        # accept anything it would have rejected on its own.
        self.verifier: Verifier = CachingVerifier(Ed25519Verifier(), 1 << 18)

        total = config.validators + config.extra_nodes
        self.signers = {i: Ed25519Signer(derive_seed("replica", seed, i)) for i in range(total)}
        self.genesis = EpochConfig(0, 0, tuple(Member(i, self.signers[i].public_key)
                                               for i in range(config.validators)))
        self.clients = [SimClient(f"client-{c}", Ed25519Signer(derive_seed("client", seed, c)))
                        for c in range(config.clients)]
        self.governor = Ed25519Signer(derive_seed("governor", seed))
        keys = {c.client_id: c.signer.public_key for c in self.clients}
        keys["governor"] = self.governor.public_key
        self.client_registry = StaticClients(keys)
        self.chain_id = CHAIN_ID
        orgs = {c.client_id: SIM_ORGS[k % len(SIM_ORGS)] for k, c in enumerate(self.clients)}
        self.client_orgs = ClientOrgs(orgs, set(SIM_ORGS))
        self.ledger_at: dict[int, tuple[bytes, tuple[tuple[str, str], ...], int]] = {}
        """height -> (block hash, entry statuses and reasons, first honest validator): what
        every honest validator's ledger must hold at that height."""
        self.nodes = {i: SimNode(i, self.signers[i], None, key=i) for i in range(total)}
        self.copies: dict[int, list[int]] = {i: [i] for i in range(total)}
        """Replica id -> the node keys that run it (two for a validator with a twin)."""
        self.epoch_configs = {0: self.genesis}
        self.liveness_condition: Callable[[Simulation], bool] | None = None
        self.safety = SafetyChecker(CHAIN_ID, self.verifier)
        self.submitted: dict[tuple[str, int], bytes] = {}
        self.stats = {"delivered": 0, "dropped": 0, "duplicated": 0, "faults": 0,
                      "view_changes": 0, "state_transfers": 0, "batch_requests": 0,
                      "view_change_bytes_max": 0, "crash_points": 0, "blocks_fetched": 0,
                      "entries_recorded": 0, "entries_invalid": 0}
        self.hooks: list[tuple[int, Callable[[Simulation], None]]] = []

    def boot_all(self) -> None:
        """Start every node (after a scenario assigned Byzantine roles)."""
        for i in self.nodes:
            self._boot(i)

    # -------------------------------------------------------------------------- scheduling

    def schedule(self, at_ms: int, kind: str, *payload: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (at_ms, self._counter, kind, payload))

    def at(self, at_ms: int, hook: Callable[[Simulation], None]) -> None:
        self.schedule(at_ms, "hook", hook)

    def log(self, text: str) -> None:
        if self.trace_enabled:
            self.trace.append(f"{self.now_ms:>7}ms {text}")

    # ------------------------------------------------------------------------------- nodes

    def _make_replica(self, i: int, recovered: Recovered | None) -> Replica:
        node = self.nodes[i]
        cls = node.replica_class or self.replica_factory
        return cls(
            replica_id=node.replica_id, signer=node.signer, chain_id=CHAIN_ID,
            genesis=self.genesis,
            params=self.cfg.params, verifier=self.verifier,
            clients=self.client_registry, recovered=recovered, clock=SimClock(self))

    def _boot(self, i: int) -> None:
        node = self.nodes[i]
        if node.byzantine:
            node.replica = self._make_replica(
                i, node.store.recovered() if node.incarnation else None)
            node.timers.clear()
            self._apply(node, node.replica.start())
            return
        if node.storage is None:
            node.storage = SimStorage(Screening.ACCEPTED)
            node.storage.on_durable = functools.partial(self._durable, node)
        storage = node.storage
        storage.crash = functools.partial(self._crash_point, node)
        node.replica = self._make_replica(i, storage.recovered() if node.incarnation else None)
        node.timers.clear()
        node.executing.clear()
        ledger = LedgerContext(CHAIN_ID, None, Rules(), self.client_orgs, ms.EMPTY,
                               storage.head, self.verifier)
        node.driver = self.driver_factory(node.replica, ledger, storage, SimHost(self, node))
        try:
            run_sync(node.driver.boot())
        except SimCrash as crash:
            self._crashed(node, str(crash))

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        if node.replica is None:
            return
        self.log(f"CRASH replica {i}")
        if node.storage is not None:
            for b in node.storage.lose_volatile():
                self.log(f"LOST r{i}'s block {b.header.height} (not yet on disk)")
                self.safety.forget(i, [env.key for env in b.envelopes
                                       if env.status != EnvelopeStatus.DUPLICATE])
        node.replica = None
        node.driver = None
        node.timers.clear()
        node.executing.clear()
        node.incarnation += 1

    def _crash_point(self, node: SimNode, point: str) -> None:
        """Called by an honest validator's storage around every durable write."""
        if self._faulty_now() and self.rng.random() < self.cfg.crash_point_rate:
            raise SimCrash(point)

    def _crashed(self, node: SimNode, point: str) -> None:
        """An honest validator died inside a round: it restarts a little later."""
        self.stats["crash_points"] += 1
        self.log(f"CRASH-POINT r{node.replica_id} {point}")
        self.crash(node.replica_id)
        self.at(self.now_ms + self.rng.randint(50, 500),
                functools.partial(Simulation.restart, i=node.replica_id))

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        if node.replica is not None:
            return
        self.log(f"RESTART replica {i} from its durable store")
        self._boot(i)

    def honest_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if not n.byzantine]

    def add_twin(self, replica_id: int) -> int:
        """Twins (Bano et al.): a second running copy of validator `replica_id`, same key,
        honest code, its own storage. Together the two can equivocate without either running
        Byzantine code, which is what the twins scenario partitions them to do; the identity
        counts as the one Byzantine validator. Returns the twin's node key."""
        key = TWIN_KEY_OFFSET + replica_id
        self.nodes[replica_id].byzantine = True
        self.nodes[key] = SimNode(replica_id, self.signers[replica_id], None, key=key,
                                  byzantine=True)
        self.copies[replica_id].append(key)
        return key

    # ------------------------------------------------------------------------------ actions

    def _apply(self, node: SimNode, actions: list[ev.Action]) -> None:
        if node.byzantine:
            self._apply_byzantine(node, actions)
            return
        assert node.driver is not None
        for a in actions:
            if isinstance(a, ev.Execute):
                node.executing[a.seq] = a
        try:
            run_sync(node.driver.carry_out(actions))
        except SimCrash as crash:
            self._crashed(node, str(crash))
        node.executing.clear()

    def _durable(self, node: SimNode, blocks: Sequence[Block]) -> None:
        """Blocks an honest validator has just made durable (executed, or fetched by state
        transfer): the safety checker sees each batch it executed, and its ledger must hold
        exactly what every other honest ledger holds at each height (hash, and each entry's
        status and reason, which the hash does not cover)."""
        for b in blocks:
            h = b.header.height
            a = node.executing.pop(h, None)
            if a is not None:
                self.safety.on_execute(node.replica_id, a, self.submitted,
                                       self.epoch_configs[a.epoch])
                self.log(f"EXECUTE r{node.replica_id} seq={a.seq} view={a.view} "
                         f"digest={a.digest.hex()[:8]} reqs={[r.key for r in a.executed]}")
            outcome = tuple((e.status, e.reason) for e in b.entries)
            first = self.ledger_at.setdefault(h, (b.header.hash(), outcome, node.replica_id))
            if first[:2] != (b.header.hash(), outcome):
                what = "block hash" if first[0] != b.header.hash() else "entry outcomes"
                self.safety.violations.append(
                    f"ledger: replica {node.replica_id}'s block {h} differs from replica "
                    f"{first[2]}'s ({what})")
            elif first[2] == node.replica_id:
                for status, _reason in outcome:
                    self.stats[f"entries_{status}"] += 1

    def sent_by_honest(self, node: SimNode, to: int, data: bytes) -> None:
        """A message an honest validator's driver sends (after what it commits to is
        durable): watched for equivocation and size, then put on the network."""
        if data is not node.state.get("last_checked"):
            node.state["last_checked"] = data
            sent = codec.decode_signed(data, CHAIN_ID)
            self.safety.on_send(node.replica_id, sent)
            self._check_sizes(node, sent, len(data))
        self.send(node.key, to, data)

    def redirect(self, r: m.Request, primary: int) -> None:
        delay = self.rng.randint(self.cfg.faults.delay_ms_min, self.cfg.faults.delay_ms_max)
        self.schedule(self.now_ms + delay, "redirect", r, primary)

    def observe(self, node: SimNode, a: ev.Action) -> None:
        if isinstance(a, ev.PeerFault):
            node.faults_seen += 1
            self.stats["faults"] += 1
            self.log(f"FAULT seen by r{node.replica_id}: {a.reason}")
        elif isinstance(a, ev.ViewEntered):
            self.stats["view_changes"] += 1
            self.log(f"VIEW r{node.replica_id} entered view {a.view} (primary {a.primary})")
        elif isinstance(a, ev.EpochEntered):
            self.epoch_configs.setdefault(a.config.epoch, a.config)
            self.log(f"EPOCH r{node.replica_id} entered epoch {a.config.epoch} "
                     f"members {a.config.replica_ids}")

    def block_source(self, me: int, target: int) -> list[Block]:
        """The blocks of an honest validator that stored at least `target` of them."""
        for i in self.honest_ids():
            storage = self.nodes[i].storage
            if i != me and storage is not None and storage.height >= target:
                self.stats["state_transfers"] += 1
                self.log(f"STATE-TRANSFER r{me} to seq {target} from r{i}'s blocks")
                return storage.blocks
        raise AssertionError(f"replica {me} installed a checkpoint at {target} that no honest "
                             "validator stored blocks for")

    def _apply_byzantine(self, node: SimNode, actions: list[ev.Action]) -> None:
        """A Byzantine validator: its behaviour rewrites the replica's actions; it keeps just
        enough to restart (no ledger)."""
        if node.behaviour is not None:
            actions = node.behaviour(node, actions)
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    self.send(node.key, to, a.data)
            elif isinstance(a, ev.Persist):
                node.store.messages.extend(a.messages)
            elif isinstance(a, ev.PersistSnapshot):
                node.store.snapshot = a.snapshot
                node.store.snapshot_proof = a.proof
                node.store.prune(a.snapshot.seq)
            elif isinstance(a, ev.Execute):
                node.store.executed.append(ExecutedBatch(a.seq, a.pre_prepare, a.certificate,
                                                         a.requests))
            elif isinstance(a, ev.InstallSnapshot):
                node.installed_snapshots += 1
                node.store.executed = []
            elif isinstance(a, ev.SetTimer):
                node.timers[a.kind] = a.token
                self.schedule(self.now_ms + a.delay_ms, "timer", node.key,
                              node.incarnation, a.kind, a.token)
            elif isinstance(a, ev.CancelTimer):
                node.timers.pop(a.kind, None)
            elif isinstance(a, ev.ViewEntered | ev.EpochEntered | ev.PeerFault):
                self.observe(node, a)

    def _check_sizes(self, node: SimNode, msg: m.SignedMessage, size: int) -> None:
        """View changes carry headers only: an honest VIEW-CHANGE or NEW-VIEW stays under its
        bound whatever the batches hold (the attack campaign's 140 MB NEW-VIEW halted a chain)."""
        rep = node.replica
        assert rep is not None
        if isinstance(msg.body, m.BatchRequest):
            self.stats["batch_requests"] += 1
        elif isinstance(msg.body, (m.ViewChange, m.NewView)):
            self.stats["view_change_bytes_max"] = max(self.stats["view_change_bytes_max"], size)
            bound = (view_change_bytes_max if isinstance(msg.body, m.ViewChange)
                     else new_view_bytes_max)(rep.config, self.cfg.params.log_window)
            if size > bound:
                self.safety.violations.append(
                    f"size: replica {node.replica_id} sent a {type(msg.body).__name__} of "
                    f"{size} bytes, over its bound {bound}")

    def reply(self, replica_id: int, client_id: str, nonce: int) -> None:
        delay = self.rng.randint(self.cfg.faults.delay_ms_min, self.cfg.faults.delay_ms_max)
        self.schedule(self.now_ms + delay, "reply", client_id, nonce, replica_id)

    # ------------------------------------------------------------------------------ network

    def _faulty_now(self) -> bool:
        return self.now_ms < self.cfg.faults_end_ms

    def _partitioned(self, a: int, b: int) -> bool:
        for start, end, groups in self.cfg.faults.partitions:
            if start <= self.now_ms < end:
                ga = next((i for i, g in enumerate(groups) if a in g), -1)
                gb = next((i for i, g in enumerate(groups) if b in g), -1)
                if ga != gb:
                    return True
        return False

    def send(self, src: int, dst: int, data: bytes) -> None:
        """From node `src` to every running copy of replica `dst`, through the faults."""
        for key in self.copies.get(dst, ()):
            self._send_to(src, key, data)

    def _send_to(self, src: int, dst: int, data: bytes) -> None:
        f = self.cfg.faults
        if self.nodes[src].replica_id == self.nodes[dst].replica_id:
            return
        if self._partitioned(src, dst) or (self._faulty_now() and self.rng.random() < f.drop_rate) \
                or (f.drop_filter is not None and f.drop_filter(src, dst, data, self.now_ms)):
            self.stats["dropped"] += 1
            return
        copies = 1
        if self._faulty_now() and self.rng.random() < f.duplicate_rate:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            delay = self.rng.randint(f.delay_ms_min, f.delay_ms_max)
            if self._faulty_now() and self.rng.random() < f.reorder_rate:
                delay += self.rng.randint(1, f.reorder_delay_ms_max)
            if f.extra_delay is not None:
                delay += f.extra_delay(src, dst, self.now_ms)
            self.schedule(self.now_ms + delay, "deliver", src, dst, data)

    def _describe(self, data: bytes) -> str:
        try:
            msg = codec.decode_signed(data, CHAIN_ID)
        except codec.DecodeError as exc:
            return f"<garbage: {exc}>"
        b = msg.body
        fields = {k: getattr(b, k) for k in ("epoch", "view", "new_view", "seq", "last_executed",
                                            "stable_seq") if hasattr(b, k)}
        if hasattr(b, "digest"):
            fields["digest"] = b.digest.hex()[:8]
        return f"{type(b).__name__}(from={msg.sender} {fields})"

    # ------------------------------------------------------------------------------ clients

    def submit(self, client: SimClient) -> None:
        """A client signs an envelope of 1-4 items (as the SDK does) and sends it to the
        replica it believes is the primary. Items are ledger transactions: patient records
        (ciphertext the validators cannot read, wrapped keys for their readers) and grants on
        the client's earlier records (executed against the record's stored state; refused
        while that record is not yet on the ledger)."""
        nonce = client.next_nonce
        client.next_nonce += 1
        org = self.client_orgs.org_of(client.client_id) or ""
        at_ms = SimClock.EPOCH_MS + self.now_ms
        items: list[bytes] = []
        records: list[int] = []
        for k in range(self.rng.randint(*self.cfg.items_per_envelope)):
            if client.records and self.rng.random() < self.cfg.grant_rate:
                to = self.rng.choice([o for o in SIM_ORGS if o != org])
                items.append(encode_tx(Grant(self.rng.choice(client.records), to,
                                             self.rng.randbytes(WRAPPED_KEY_BYTES))))
                continue
            size = self.rng.randint(*self.cfg.item_bytes)
            items.append(Submission(
                RecordKind.PATIENT, f"P-{client.client_id}-{nonce}-{k}", "lab-result", org,
                at_ms, (), self.rng.randbytes(size),
                ((org, self.rng.randbytes(WRAPPED_KEY_BYTES)),)).encode())
            records.append(k)
        r = sign_request(client.signer, client.client_id, nonce, m.RequestKind.APPLICATION,
                         encode_envelope(items))
        client.records += [record_id(r.digest, k) for k in records]
        self.submitted[r.key] = r.digest
        client.outstanding[nonce] = (r, self.now_ms + self.cfg.client_retry_ms, set())
        self._send_request(r, [client.primary % self.cfg.validators], retry=False)

    def submit_request(self, r: m.Request) -> None:
        self.submitted[r.key] = r.digest
        self._send_request(r, list(range(self.cfg.validators)), retry=True)

    def _send_request(self, r: m.Request, targets: list[int], *, retry: bool) -> None:
        for t in targets:
            delay = self.rng.randint(self.cfg.faults.delay_ms_min, self.cfg.faults.delay_ms_max)
            self.schedule(self.now_ms + delay, "request", t, r, retry)

    # --------------------------------------------------------------------------------- run

    def run(self) -> SimResult:
        cfg = self.cfg
        for client in self.clients:
            for _ in range(cfg.requests_per_client):
                self.schedule(self.rng.randint(0, cfg.submit_window_ms), "submit", client)
        for at_ms, hook in self.hooks:
            self.at(at_ms, hook)
        self.schedule(cfg.faults_end_ms, "heal")
        deadline = cfg.faults_end_ms + cfg.liveness_bound_ms
        self.schedule(cfg.faults_end_ms, "check-live")
        live_at: int | None = None
        while self._queue:
            at_ms, _, kind, payload = heapq.heappop(self._queue)
            if at_ms > deadline:
                break
            self.now_ms = at_ms
            self._dispatch(kind, payload)
            if self.safety.violations:
                break
            if kind == "check-live":
                if self._all_executed():
                    live_at = self.now_ms
                    break
                self.schedule(self.now_ms + 50, "check-live")
        liveness_failure = None
        if not self.safety.violations and live_at is None:
            liveness_failure = self._liveness_report()
        return SimResult(self.seed, list(self.safety.violations), liveness_failure, live_at,
                         dict(self.stats), self.trace)

    def _dispatch(self, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "deliver":
            src, dst, data = payload
            node = self.nodes[dst]
            if node.replica is None:
                return
            self.stats["delivered"] += 1
            if self.trace_enabled:
                self.log(f"r{src} -> r{dst} {self._describe(data)}")
            self._apply(node, node.replica.step(ev.PeerMessage(data)))
        elif kind == "timer":
            i, incarnation, timer_kind, token = payload
            node = self.nodes[i]
            if node.replica is None or node.incarnation != incarnation:
                return
            if node.timers.get(timer_kind) != token:
                return
            del node.timers[timer_kind]
            self._apply(node, node.replica.step(ev.TimerFired(timer_kind, token)))
        elif kind == "request":
            i, r, retry = payload
            node = self.nodes[i]
            if node.replica is not None:
                self._apply(node, node.replica.step(ev.ClientRequest(r, retry=retry)))
        elif kind == "redirect":
            r, primary = payload
            client = next((c for c in self.clients if c.client_id == r.client_id), None)
            if client is not None and r.nonce in client.outstanding:
                client.primary = primary
                self._send_request(r, [primary], retry=False)
        elif kind == "submit":
            (client,) = payload
            self.submit(client)
            self.schedule(self.now_ms + self.cfg.client_retry_ms, "client-retry", client)
        elif kind == "client-retry":
            (client,) = payload
            for nonce, (r, due, replied) in list(client.outstanding.items()):
                if due <= self.now_ms and len(replied) < self.genesis.weak_quorum:
                    client.outstanding[nonce] = (r, self.now_ms + self.cfg.client_retry_ms,
                                                 replied)
                    self._send_request(r, list(range(self.cfg.validators)), retry=True)
            if client.outstanding:
                self.schedule(self.now_ms + self.cfg.client_retry_ms, "client-retry", client)
        elif kind == "reply":
            client_id, nonce, replica_id = payload
            client = next((c for c in self.clients if c.client_id == client_id), None)
            if client is not None and nonce in client.outstanding:
                r, due, replied = client.outstanding[nonce]
                replied.add(replica_id)
                if len(replied) >= self.genesis.weak_quorum:
                    del client.outstanding[nonce]
        elif kind == "hook":
            (hook,) = payload
            hook(self)
        elif kind == "heal":
            self.log("HEAL: network faults end")
        elif kind == "check-live":
            pass
        else:  # pragma: no cover
            raise ValueError(kind)

    # ----------------------------------------------------------------------------- liveness

    def live_honest_members(self) -> list[Replica]:
        out = []
        for i in self.honest_ids():
            rep = self.nodes[i].replica
            if rep is not None and rep.is_member:
                out.append(rep)
        return out

    def _all_executed(self) -> bool:
        reps = self.live_honest_members()
        if not reps:
            return False
        target_epoch = max(r.config.epoch for r in reps)
        for rep in reps:
            if rep.config.epoch != target_epoch:
                return False
            for client_id, nonce in self.submitted:
                if rep.nonce_status(client_id, nonce).value != "executed":
                    return False
        return self.extra_liveness_ok()

    def extra_liveness_ok(self) -> bool:
        """Scenarios may require more (e.g. a reconfiguration reached its final epoch)."""
        return self.liveness_condition is None or self.liveness_condition(self)

    def _liveness_report(self) -> str:
        lines = []
        for i in self.honest_ids():
            rep = self.nodes[i].replica
            if rep is None:
                lines.append(f"r{i}: crashed")
                continue
            missing = [k for k in self.submitted
                       if rep.nonce_status(*k).value != "executed"]
            lines.append(f"r{i}: epoch {rep.config.epoch} view {rep.view} "
                         f"active={rep.view_active} executed={rep.last_executed} "
                         f"stable={rep.stable_seq} member={rep.is_member} "
                         f"missing={len(missing)}")
        return "; ".join(lines)


@dataclass
class SimResult:
    seed: int
    safety_violations: list[str]
    liveness_failure: str | None
    live_at_ms: int | None
    stats: dict[str, int]
    trace: list[str]

    @property
    def ok(self) -> bool:
        return not self.safety_violations and self.liveness_failure is None


def sign_request(signer: Ed25519Signer, client_id: str, nonce: int, kind: m.RequestKind,
                 payload: bytes) -> m.Request:
    digest = m.request_digest(client_id, nonce, kind, payload)
    return m.Request(client_id, nonce, kind, payload,
                     signer.sign(m.request_signing_bytes(CHAIN_ID, digest)))
