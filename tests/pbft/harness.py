"""Test harness for message-by-message PBFT tests (in the style of etcd raft's raft_paper_test).

Everything is deterministic: replica and client keys come from fixed seeds, Ed25519 signatures are
deterministic, so a message the harness signs "as replica 1" is bit-for-bit the message replica 1
itself would produce. That lets tests assert exact action lists.

Conventions: a 4-replica genesis (f = 1, quorum 2f+1 = 3, weak quorum f+1 = 2); the primary of view
v is replica v mod 4. `Node` wraps one `Replica` under test, records what it persisted and which
timers are armed; `Cluster` drives several replicas by hand when a test needs real peers.

Protocol v2: `pre_prepare()` returns a signed header with its batch attached (`msg.batch`;
`wire_of` is what travels, `header_of` the header alone, `with_batch` attaches any batch). Replicas
have no clock unless a test passes a `FakeClock` (then proposals are stamped and checked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.replica import ExecutedBatch, Recovered, Replica
from consortium.pbft.state import batch_root

CHAIN_ID = b"pbft-paper-tests"
N = 4
F = 1
QUORUM = 2 * F + 1
IDS = tuple(range(N))
NULL_BATCH_DIGEST = m.NULL_DIGEST

T = TypeVar("T")


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(("tests/pbft", *parts)).encode()).digest()


SIGNERS: dict[int, Ed25519Signer] = {i: Ed25519Signer(_seed("replica", i)) for i in IDS}
CLIENT_SIGNERS: dict[str, Ed25519Signer] = {
    name: Ed25519Signer(_seed("client", name)) for name in ("alice", "bob", "carol")}
OUTSIDER = Ed25519Signer(_seed("outsider"))
"""A key that belongs to no replica and no registered client."""
GENESIS = EpochConfig(0, 0, tuple(Member(i, SIGNERS[i].public_key) for i in IDS))
VERIFIER = Ed25519Verifier()


class Clients:
    """The client registry: only the registered clients have keys."""

    def client_keys(self, client_id: str) -> tuple[bytes, ...]:
        s = CLIENT_SIGNERS.get(client_id)
        return () if s is None else (s.public_key,)


def params(**overrides: int) -> ProtocolParams:
    """Small parameters: K=4, L=8, immediate batches, round timeouts that are easy to read."""
    base: dict[str, int] = dict(
        checkpoint_interval=4, log_window=8, pipeline_depth=8, batch_requests_max=8,
        batch_delay_ms=0, request_timeout_ms=1000, view_change_timeout_ms=1000,
        view_change_timeout_max_ms=16000, status_interval_ms=100, client_nonce_window=16)
    base.update(overrides)
    if "pipeline_depth" not in overrides:
        base["pipeline_depth"] = min(base["pipeline_depth"], base["log_window"])
    if "partial_batches_in_flight_max" not in overrides:
        # The message-level tests follow the paper: every batch goes out at once.
        base["partial_batches_in_flight_max"] = base["pipeline_depth"]
    return ProtocolParams(**base)


# ----------------------------------------------------------------------------- signing helpers

def sign(sender: int, body: m.Body, *, key_of: int | None = None) -> m.SignedMessage:
    """Sign `body` as replica `sender` (with another replica's key if `key_of` is given: a
    forgery)."""
    signer = SIGNERS[sender if key_of is None else key_of]
    return codec.sign_message(signer, CHAIN_ID, sender, body)


def request(client: str = "alice", nonce: int = 1, payload: bytes | None = None, *,
            signer: Ed25519Signer | None = None, chain_id: bytes = CHAIN_ID) -> m.Request:
    """A client request, signed by the client's key unless `signer` says otherwise."""
    if payload is None:
        payload = f"{client}-op-{nonce}".encode()
    s = signer if signer is not None else CLIENT_SIGNERS.get(client, OUTSIDER)
    kind = m.RequestKind.APPLICATION
    digest = m.request_digest(client, nonce, kind, payload)
    return m.Request(client, nonce, kind, payload, s.sign(m.request_signing_bytes(chain_id,
                                                                                    digest)))


def primary_of(view: int) -> int:
    return GENESIS.primary(view)


def pre_prepare(view: int, seq: int, requests: Sequence[m.Request], *, sender: int | None = None,
                root: bytes | None = None, epoch: int = 0, timestamp_ms: int = 0,
                attach: bool = True) -> m.SignedMessage:
    """A signed proposal header for `requests`, with the batch attached (`msg.batch`; `wire_of`
    sends both) unless `attach` is False. `root` forges the header's Merkle root."""
    reqs = tuple(requests)
    body = m.PrePrepare(epoch, view, seq, batch_root(reqs) if root is None else root, len(reqs),
                        timestamp_ms)
    msg = sign(primary_of(view) if sender is None else sender, body)
    if not attach:
        return msg
    return codec.decode_signed(codec.wire_with_batch(msg, codec.encode_batch(reqs)), CHAIN_ID)


def with_batch(msg: m.SignedMessage, requests: Sequence[m.Request]) -> m.SignedMessage:
    """`msg` (a PRE-PREPARE header) with `requests` attached, whatever its root says (a forged
    or mismatched attachment; decoding still checks the count)."""
    return codec.decode_signed(codec.wire_with_batch(msg, codec.encode_batch(tuple(requests))),
                               CHAIN_ID)


def header_of(msg: m.SignedMessage) -> m.SignedMessage:
    """The proposal header alone (as a view change or the log carries it)."""
    return codec.decode_signed(msg.wire, CHAIN_ID)


def wire_of(msg: m.SignedMessage) -> bytes:
    """What travels: the signed message, with its batch attached if it has one."""
    if msg.batch is None:
        return msg.wire
    return codec.wire_with_batch(msg, codec.encode_batch(msg.batch))


def digest_of(pp: m.SignedMessage) -> bytes:
    b = pp.body
    assert isinstance(b, m.PrePrepare)
    return b.digest


def prepare(sender: int, view: int, seq: int, digest: bytes) -> m.SignedMessage:
    return sign(sender, m.Prepare(0, view, seq, digest))


def commit(sender: int, view: int, seq: int, digest: bytes) -> m.SignedMessage:
    return sign(sender, m.Commit(0, view, seq, digest))


def checkpoint(sender: int, seq: int, digest: bytes) -> m.SignedMessage:
    return sign(sender, m.Checkpoint(0, seq, digest))


def prepared_proof(pp: m.SignedMessage, backups: Iterable[int]) -> m.PreparedProof:
    """A PREPARE certificate: the pre-prepare plus PREPAREs from the given backups."""
    b = pp.body
    assert isinstance(b, m.PrePrepare)
    return m.PreparedProof(header_of(pp), tuple(prepare(s, b.view, b.seq, b.digest)
                                                for s in backups))


def view_change(sender: int, new_view: int, prepared: Sequence[m.PreparedProof] = (), *,
                stable_seq: int = 0,
                stable_proof: Sequence[m.SignedMessage] = ()) -> m.SignedMessage:
    return sign(sender, m.ViewChange(0, new_view, stable_seq, tuple(stable_proof),
                                     tuple(prepared)))


def new_view(sender: int, view: int, view_changes: Sequence[m.SignedMessage],
             pre_prepares: Sequence[m.SignedMessage]) -> m.SignedMessage:
    return sign(sender, m.NewView(0, view, tuple(view_changes),
                                  tuple(header_of(pp) for pp in pre_prepares)))


# ------------------------------------------------------------------------------ action helpers

def sent(actions: Iterable[ev.Action]) -> list[tuple[tuple[int, ...], m.SignedMessage]]:
    """Every Send, decoded: (recipients, signed message)."""
    return [(a.to, codec.decode_signed(a.data, CHAIN_ID)) for a in actions
            if isinstance(a, ev.Send)]


def sent_bodies(actions: Iterable[ev.Action], kind: type[T]) -> list[T]:
    return [msg.body for _to, msg in sent(actions) if isinstance(msg.body, kind)]


def of_type(actions: Iterable[ev.Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def index_of(actions: Sequence[ev.Action], predicate: object) -> int:
    """Index of the first action satisfying `predicate` (a callable); fails if none does."""
    assert callable(predicate)
    for i, a in enumerate(actions):
        if predicate(a):
            return i
    raise AssertionError(f"no matching action in {summarize(actions)}")


def is_send_of(kind: type[m.Body]) -> object:
    def pred(a: ev.Action) -> bool:
        return isinstance(a, ev.Send) and isinstance(
            codec.decode_signed(a.data, CHAIN_ID).body, kind)
    return pred


def summarize(actions: Iterable[ev.Action]) -> list[str]:
    """A readable summary of actions, for assertion messages."""
    out = []
    for a in actions:
        if isinstance(a, ev.Send):
            msg = codec.decode_signed(a.data, CHAIN_ID)
            out.append(f"Send{a.to} {type(msg.body).__name__} from {msg.sender}")
        elif isinstance(a, ev.Persist):
            out.append("Persist" + str([type(x.body).__name__ for x in a.messages]))
        elif isinstance(a, ev.SetTimer):
            out.append(f"SetTimer({a.kind.value}, {a.delay_ms}ms)")
        elif isinstance(a, ev.Execute):
            out.append(f"Execute(seq={a.seq})")
        else:
            out.append(repr(a)[:120])
    return out


# ------------------------------------------------------------------------------ one replica

@dataclass
class Node:
    """One Replica under test plus what a driver would keep: armed timers and durable storage."""

    replica: Replica
    timers: dict[ev.TimerKind, tuple[int, int]] = field(default_factory=dict)
    """kind -> (token, delay_ms) of the armed timer."""
    persisted: list[m.SignedMessage] = field(default_factory=list)
    executed: list[ExecutedBatch] = field(default_factory=list)
    snapshot: m.Snapshot | None = None
    snapshot_proof: tuple[m.SignedMessage, ...] = ()
    log: list[ev.Action] = field(default_factory=list)
    start_actions: list[ev.Action] = field(default_factory=list)
    clock: FakeClock | None = None

    @property
    def id(self) -> int:
        return self.replica.id

    def _record(self, actions: list[ev.Action]) -> list[ev.Action]:
        for a in actions:
            if isinstance(a, ev.SetTimer):
                self.timers[a.kind] = (a.token, a.delay_ms)
            elif isinstance(a, ev.CancelTimer):
                self.timers.pop(a.kind, None)
            elif isinstance(a, ev.Persist):
                self.persisted.extend(a.messages)
            elif isinstance(a, ev.Execute):
                self.executed.append(ExecutedBatch(a.seq, a.pre_prepare, a.certificate,
                                                   a.requests))
            elif isinstance(a, ev.PersistSnapshot):
                self.snapshot, self.snapshot_proof = a.snapshot, a.proof
        self.log.extend(actions)
        return actions

    def deliver(self, *msgs: m.SignedMessage) -> list[ev.Action]:
        """Deliver peer messages in order; returns all resulting actions."""
        out: list[ev.Action] = []
        for msg in msgs:
            out += self._record(self.replica.step(ev.PeerMessage(wire_of(msg))))
        return out

    def deliver_bytes(self, data: bytes) -> list[ev.Action]:
        return self._record(self.replica.step(ev.PeerMessage(data)))

    def submit(self, r: m.Request, *, retry: bool = False) -> list[ev.Action]:
        """A client submission (`retry`: the client already sent it and suspects the
        primary)."""
        return self._record(self.replica.step(ev.ClientRequest(r, retry=retry)))

    def fire(self, kind: ev.TimerKind) -> list[ev.Action]:
        """Fire the armed timer of this kind (the test fails if none is armed)."""
        assert kind in self.timers, f"{kind} timer is not armed (armed: {list(self.timers)})"
        token, _ = self.timers.pop(kind)
        return self._record(self.replica.step(ev.TimerFired(kind, token)))

    def suspect_primary(self) -> list[ev.Action]:
        """Let the REQUEST timer expire twice (paper 4.4 with the two-phase timeout): the first
        expiry only relays the waiting requests to everyone and re-arms the timer; the second
        starts the view change. Returns the second expiry's actions."""
        first = self.fire(ev.TimerKind.REQUEST)
        relays = [a for a in first if isinstance(a, ev.Send)]
        assert len(relays) == 1 and not any(isinstance(a, ev.Persist) for a in first), first
        assert ev.TimerKind.REQUEST in self.timers, "first expiry must re-arm the REQUEST timer"
        return self.fire(ev.TimerKind.REQUEST)

    def timer_delay(self, kind: ev.TimerKind) -> int | None:
        t = self.timers.get(kind)
        return None if t is None else t[1]

    def recovered(self) -> Recovered:
        return Recovered(self.snapshot, self.snapshot_proof, tuple(self.executed),
                         tuple(self.persisted))


@dataclass
class FakeClock:
    """A clock the test sets by hand (`Replica`'s injected `Clock`)."""

    ms: int = 0

    def now_ms(self) -> int:
        return self.ms


def make_node(replica_id: int, p: ProtocolParams | None = None, *,
              recovered: Recovered | None = None, clock: FakeClock | None = None) -> Node:
    """A started replica; its start() actions are in `node.start_actions`. Without `clock` the
    replica has none (proposals are stamped 0 and stamps are not checked)."""
    rep = Replica(replica_id=replica_id, signer=SIGNERS[replica_id], chain_id=CHAIN_ID,
                  genesis=GENESIS, params=p if p is not None else params(), verifier=VERIFIER,
                  clients=Clients(), recovered=recovered, clock=clock)
    node = Node(rep, clock=clock)
    node.start_actions = node._record(rep.start())
    return node


def restart(node: Node, p: ProtocolParams | None = None, *,
            clock: FakeClock | None = None) -> Node:
    """Crash `node` and rebuild it from what it persisted (as a driver would on reboot); it
    keeps its clock unless `clock` gives another."""
    fresh = make_node(node.id, p if p is not None else node.replica.params,
                      recovered=node.recovered(),
                      clock=clock if clock is not None else node.clock)
    fresh.persisted = list(node.persisted)
    fresh.executed = list(node.executed)
    fresh.snapshot, fresh.snapshot_proof = node.snapshot, node.snapshot_proof
    return fresh


def commit_batch(node: Node, seq: int, requests: Sequence[m.Request], *, view: int = 0,
                 preparers: Sequence[int] | None = None,
                 committers: Sequence[int] | None = None) -> list[ev.Action]:
    """Drive `node` (a backup of `view`) through one sequence number: the primary's PRE-PREPARE,
    PREPAREs from the other backups, COMMITs from 2f other replicas."""
    primary = primary_of(view)
    assert node.id != primary
    others = [i for i in IDS if i not in (node.id, primary)]
    pp = pre_prepare(view, seq, requests)
    d = digest_of(pp)
    prep = others[:2 * F - 1] if preparers is None else preparers
    com = [primary, *others][:2 * F] if committers is None else committers
    out = node.deliver(pp)
    out += node.deliver(*(prepare(s, view, seq, d) for s in prep))
    out += node.deliver(*(commit(s, view, seq, d) for s in com))
    return out


# --------------------------------------------------------------------------- several replicas

class Cluster:
    """Drive several real replicas by hand: Send actions are queued and delivered FIFO, except to
    replicas listed in `isolated` (their messages in and out are dropped)."""

    def __init__(self, p: ProtocolParams | None = None, *, ids: Sequence[int] = IDS) -> None:
        self.nodes = {i: make_node(i, p) for i in ids}
        self.isolated: set[int] = set()
        self._queue: list[tuple[int, int, bytes]] = []
        self.delivered = 0

    def _enqueue(self, src: int, actions: list[ev.Action]) -> None:
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    self._queue.append((src, to, a.data))

    def submit(self, to: int, r: m.Request, *, retry: bool = False) -> None:
        self._enqueue(to, self.nodes[to].submit(r, retry=retry))

    def fire(self, i: int, kind: ev.TimerKind) -> None:
        self._enqueue(i, self.nodes[i].fire(kind))

    def run(self, limit: int = 10_000) -> None:
        """Deliver queued messages until the network is quiet."""
        while self._queue:
            limit -= 1
            assert limit > 0, "the cluster did not quiesce"
            src, dst, data = self._queue.pop(0)
            if src in self.isolated or dst in self.isolated or dst not in self.nodes:
                continue
            self.delivered += 1
            self._enqueue(dst, self.nodes[dst].deliver_bytes(data))
