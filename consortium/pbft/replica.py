"""The PBFT replica state machine: `step(event) -> list[Action]`, no I/O.

Section numbers refer to Castro & Liskov, "Practical Byzantine Fault Tolerance" (OSDI 1999):
4.2 normal case, 4.3 garbage collection / checkpoints, 4.4 view changes. Departures from the paper
are listed in docs/consensus.md; the main ones:
- a PRE-PREPARE signs a header (Merkle root, size and time of its batch); the batch travels beside
  it, so view changes and the log carry headers only, and a replica that lacks a batch fetches it
  (the paper's digest optimisation for large requests, for every batch);
- a batch executes once its contents and 2f+1 matching COMMITs are known (a commit certificate),
  which also lets a lagging replica execute from a retransmitted certificate;
- STATUS gossip drives retransmission, so lost messages are recovered without a view change;
- validator-set changes open a new epoch at a stable checkpoint.

This file is one state machine over one set of variables; it is longer than the project's
~600-line guide because splitting the protocol's phases across classes that all mutate the same
state would hide, not remove, that coupling. The pure parts live elsewhere: `viewchange.py`
(VIEW-CHANGE/NEW-VIEW checks and computation), `state.py` (digests, client table, proofs),
`slots.py` (per-sequence storage), `pool.py` (pending requests and their limits),
`catchup.py` (who to ask for state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from consortium.crypto.signing import Signer, Verifier
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.catchup import CatchUp
from consortium.pbft.membership import EpochConfig
from consortium.pbft.params import ProtocolParams
from consortium.pbft.pool import RequestPool
from consortium.pbft.slots import VOTES_PER_SLOT_PER_MEMBER, Slot, VoteKey, header
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    ClientTable,
    NonceStatus,
    approved_reconfiguration,
    batch_root,
    checkpoint_quorum,
    clients_digest,
    next_state_digest,
    signing_config,
    snapshot_digest,
    verify_checkpoint_proof,
    verify_epoch_history,
    verify_signed,
)
from consortium.pbft.viewchange import (
    new_view_proposals,
    verify_new_view,
    verify_view_change,
)

FUTURE_BATCHES_BYTES = 8
"""The future buffer holds at most this many `batch_bytes_max` of messages (PRE-PREPAREs with
batches are the big ones), besides its count limit `future_messages_max`."""
LAG_SAMPLES = 64
"""STATUS arrival lags remembered per member (about half a minute of ticks): the fastest is its
baseline in the slow-primary monitor."""
LAG_RECENT = 8
"""The slow-primary monitor judges the median of a member's last this-many lags."""


class ClientRegistry(Protocol):
    """Who may submit requests: maps a client id to the Ed25519 public keys whose signatures
    consensus orders for it (every key it held: which one may still sign is decided at
    execution, so that replicas at different heights agree on every batch)."""

    def client_keys(self, client_id: str) -> tuple[bytes, ...]: ...


class Clock(Protocol):
    """Milliseconds since the epoch. Injected (wall clock in a validator, simulated time in the
    simulator): the replica reads time only to stamp its proposals and to check a primary's
    stamp, never to decide an order."""

    def now_ms(self) -> int: ...


class ReplicaBug(AssertionError):
    """An invariant of our own code broke (never raised because of what a peer sent)."""


@dataclass(frozen=True, slots=True)
class ExecutedBatch:
    """A batch the application durably applied, as the driver hands it back on recovery."""

    seq: int
    pre_prepare: m.SignedMessage
    """Its proposal header."""
    certificate: tuple[m.SignedMessage, ...]
    requests: tuple[m.Request, ...]


@dataclass(frozen=True, slots=True)
class Recovered:
    """Everything a driver persisted, handed back when a replica restarts."""

    snapshot: m.Snapshot | None = None
    snapshot_proof: tuple[m.SignedMessage, ...] = ()
    executed: tuple[ExecutedBatch, ...] = ()
    messages: tuple[m.SignedMessage, ...] = ()


def _durable_proposal(msg: m.SignedMessage,
                      batch: tuple[m.Request, ...] | None) -> m.SignedMessage:
    """A proposal header to persist, with its batch attached when it has requests."""
    return dataclasses.replace(msg, batch=batch) if batch else msg


def _with_new_view_pre_prepares(messages: Iterable[m.SignedMessage]
                                 ) -> Iterable[m.SignedMessage]:
    """Persisted messages, with the PRE-PREPAREs a NEW-VIEW carries listed after it: for a new
    primary they are its own signatures, which a restart must honour like any other."""
    for msg in messages:
        yield msg
        if isinstance(msg.body, m.NewView):
            yield from msg.body.pre_prepares


_VOTE_TYPE = {m.PrePrepare: 1, m.Prepare: 2, m.Commit: 3}


class Replica:
    """One PBFT replica. Drive it with `start()` once, then `step(event)` for every event."""

    def __init__(self, *, replica_id: int, signer: Signer, chain_id: bytes,
                 genesis: EpochConfig, params: ProtocolParams, verifier: Verifier,
                 clients: ClientRegistry, recovered: Recovered | None = None,
                 clock: Clock | None = None) -> None:
        if genesis.epoch != 0 or genesis.start_seq != 0:
            raise ValueError("the genesis configuration is epoch 0 starting at sequence 0")
        self.id = replica_id
        self._signer = signer
        self._signers: dict[bytes, Signer] = {signer.public_key: signer}
        """Every key this replica holds, by public key: after a key rotation, the messages of
        each epoch are signed with the key that epoch's validator set names for it."""
        self.chain_id = chain_id
        self.genesis = genesis
        self.params = params
        self._verifier = verifier
        self._clients = clients
        self._clock = clock

        self.config = genesis
        self._epoch_records: tuple[m.EpochRecord, ...] = ()
        self.view = 0
        self.view_active = True
        self.last_executed = 0
        self.state_digest = GENESIS_STATE_DIGEST
        self._client_table = ClientTable(params.client_nonce_window)
        self.pending_reconfiguration: m.PendingReconfiguration | None = None

        self.stable_seq = 0
        self._stable_proof: tuple[m.SignedMessage, ...] = ()
        self._stable_snapshot: m.Snapshot | None = None
        self._snapshots: dict[int, m.Snapshot] = {}
        self._checkpoint_votes: dict[int, dict[int, m.SignedMessage]] = {}

        self._slots: dict[int, Slot] = {}
        self._next_seq = 1
        self._last_proposal_ms = 0
        self._held_for_execution = False
        """Primary: a partial batch was held because `partial_batches_in_flight_max` batches
        were in flight; the next execution proposes it without a further batch delay."""
        self.pool = RequestPool(params.pending_requests_max, params.pending_bytes_max,
                                params.client_pending_bytes_max)
        """Known requests not executed yet (read-only outside the replica)."""
        self._verified_requests: dict[bytes, None] = {}

        self._view_changes: dict[int, dict[int, m.SignedMessage]] = {}
        self._new_view_msg: m.SignedMessage | None = None
        self._own: dict[tuple[int, int, int, int], bytes] = {}
        """(message type, epoch, view, seq) -> digest this replica signed: never sign another."""
        self._view_change_attempts = 0

        self._timer_tokens: dict[ev.TimerKind, int] = {}
        self._token_counter = 0
        self._timed_request: tuple[str, int] | None = None
        self._request_relayed = False
        self._request_patience_used = 0
        self._request_progress_mark = 0
        """last_executed when the request timer was last armed: progress since then earns
        patience (see ProtocolParams.request_patience)."""
        self._tick = 0
        self._state_requested_tick = -1
        self._future: list[m.SignedMessage] = []
        self._future_bytes = 0
        self._catchup = CatchUp(genesis.weak_quorum)
        self._new_view_sent: dict[int, int] = {}
        self._state_sent: dict[int, int] = {}
        self._batches_sent: dict[tuple[int, int], int] = {}
        """(peer, seq) -> tick of the last batch sent in answer to a BATCH-REQUEST."""
        self._batch_bytes_sent: dict[int, tuple[int, int]] = {}
        """peer -> (tick, bytes of batches sent to it in answer to BATCH-REQUESTs that tick):
        bounded by `batch_answer_bytes_max` per peer per tick."""
        self._retransmitted: dict[int, tuple[int, bool]] = {}
        self._lags: dict[int, list[int]] = {}
        """Each peer's last few STATUS arrival lags (our clock minus its stamp), for the
        slow-primary monitor."""
        self._heard_ms: dict[int, int] = {}
        """When each peer's last STATUS arrived (our clock): a primary that stops sending them
        (stopped, cut off) is slow by the length of its silence."""
        self._slow_ticks = 0
        self._peer_executed: dict[int, int] = {}
        """Each peer's last_executed in its previous STATUS: a peer that advanced since is
        catching up by itself and gets no retransmission of batches (they are large)."""

        self._out: list[ev.Action] = []
        if recovered is not None:
            self._recover(recovered)

    # ------------------------------------------------------------------------------ interface

    @property
    def primary(self) -> int:
        return self.config.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def epoch_records(self) -> tuple[m.EpochRecord, ...]:
        """How each epoch after genesis was opened (verifiable from genesis alone)."""
        return self._epoch_records

    @property
    def stable_checkpoint(self) -> tuple[m.Snapshot | None, tuple[m.SignedMessage, ...]]:
        """The last stable snapshot and its proof (a quorum of CHECKPOINTs)."""
        return self._stable_snapshot, self._stable_proof

    def nonce_status(self, client_id: str, nonce: int) -> NonceStatus:
        """Whether (client, nonce) executed, is stale, or may still execute."""
        return self._client_table.check(client_id, nonce)[0]

    def epoch_configs(self) -> dict[int, EpochConfig]:
        """Every validator set this replica knows, by epoch (genesis included)."""
        out = {self.genesis.epoch: self.genesis}
        for r in self._epoch_records:
            out[r.epoch] = EpochConfig(r.epoch, r.start_seq, r.members)
        return out

    @property
    def is_member(self) -> bool:
        return self.config.is_member(self.id)

    def start(self) -> list[ev.Action]:
        """Arm the initial timers. Call once, after construction or recovery."""
        self._set_timer(ev.TimerKind.STATUS, self.params.status_interval_ms)
        self._try_execute()
        self._arm_view_change_timer()
        self._arm_request_timer()
        return self._flush()

    def step(self, event: ev.Event) -> list[ev.Action]:
        if isinstance(event, ev.ClientRequest):
            self._on_client_request(event.request, forwarded=False, retry=event.retry)
        elif isinstance(event, ev.PeerMessage):
            self._on_peer_bytes(event.data)
        elif isinstance(event, ev.TimerFired):
            self._on_timer(event.kind, event.token)
        else:  # pragma: no cover - closed union
            raise TypeError(f"not an event: {event!r}")
        return self._flush()

    def snapshot(self) -> m.Snapshot:
        """The current consensus-layer state (for checkpoints, tests and the status command)."""
        return m.Snapshot(self.last_executed, self.state_digest, self._epoch_records,
                          self._client_table.entries(), self.pending_reconfiguration)

    # ------------------------------------------------------------------------- output helpers

    def _flush(self) -> list[ev.Action]:
        out, self._out = self._out, []
        return out

    def add_signer(self, signer: Signer) -> None:
        """Another key of this replica (a rotation approved or under way): it signs from the
        epoch whose validator set names it for this replica on, and not before."""
        self._signers[signer.public_key] = signer

    @property
    def signing_keys(self) -> frozenset[bytes]:
        return frozenset(self._signers)

    def _sign(self, body: m.Body) -> m.SignedMessage:
        signer = self._signer
        if len(self._signers) > 1:
            epoch = self._message_epoch(body)
            config = self.config if epoch is None or epoch == self.config.epoch else \
                self.epoch_configs().get(epoch, self.config)
            signer = self._signers.get(config.key_of(self.id) or b"", signer)
        return codec.sign_message(signer, self.chain_id, self.id, body)

    def _peers(self) -> tuple[int, ...]:
        return tuple(r for r in self.config.replica_ids if r != self.id)

    def _broadcast(self, msg: m.SignedMessage) -> None:
        peers = self._peers()
        if peers:
            self._out.append(ev.Send(peers, msg.wire))

    def _send(self, to: int, msg: m.SignedMessage) -> None:
        if to != self.id:
            self._out.append(ev.Send((to,), msg.wire))

    def _send_with_batch(self, to: tuple[int, ...], msg: m.SignedMessage,
                         requests: tuple[m.Request, ...] | None) -> int:
        """Send a proposal header with its batch attached when we hold it; bytes sent."""
        to = tuple(r for r in to if r != self.id)
        if not to:
            return 0
        data = msg.wire if requests is None else codec.wire_with_batch(
            msg, codec.encode_batch(requests))
        self._out.append(ev.Send(to, data))
        return len(data)

    def _fault(self, sender: int | None, reason: str) -> None:
        self._out.append(ev.PeerFault(sender, reason))

    def _set_timer(self, kind: ev.TimerKind, delay_ms: int) -> None:
        self._token_counter += 1
        self._timer_tokens[kind] = self._token_counter
        self._out.append(ev.SetTimer(kind, self._token_counter, delay_ms))

    def _cancel_timer(self, kind: ev.TimerKind) -> None:
        if self._timer_tokens.pop(kind, None) is not None:
            self._out.append(ev.CancelTimer(kind))

    def _timer_armed(self, kind: ev.TimerKind) -> bool:
        return kind in self._timer_tokens

    def _sign_vote(self, body: m.PrePrepare | m.Prepare | m.Commit) -> m.SignedMessage | None:
        """Sign a vote unless this replica already signed a different digest for the same
        (type, view, seq): the rule that makes equivocation impossible, across restarts too."""
        key = (_VOTE_TYPE[type(body)], body.epoch, body.view, body.seq)
        previous = self._own.get(key)
        if previous is not None and previous != body.digest:
            return None
        self._own[key] = body.digest
        return self._sign(body)

    # ------------------------------------------------------------------------ client requests

    def _verify_request(self, r: m.Request) -> ev.RejectReason | None:
        if r.size_bytes > self.params.request_bytes_max:
            return ev.RejectReason.TOO_LARGE
        cache_key = r.digest + r.signature
        if cache_key in self._verified_requests:
            return None
        keys = self._clients.client_keys(r.client_id)
        if not keys:
            return ev.RejectReason.UNKNOWN_CLIENT
        signed = m.request_signing_bytes(self.chain_id, r.digest)
        if not any(self._verifier.verify(key, signed, r.signature) for key in keys):
            return ev.RejectReason.BAD_SIGNATURE
        self._verified_requests[cache_key] = None
        if len(self._verified_requests) > 4 * self.params.pending_requests_max:
            del self._verified_requests[next(iter(self._verified_requests))]
        return None

    def _on_client_request(self, r: m.Request, *, forwarded: bool, retry: bool = False) -> None:
        if not self.is_member:
            return
        reason = self._verify_request(r)
        if reason is not None:
            if forwarded:
                self._fault(None, f"forwarded request rejected: {reason.value}")
            else:
                self._out.append(ev.RejectRequest(r, reason))
            return
        status, seq = self._client_table.check(r.client_id, r.nonce)
        if status is NonceStatus.EXECUTED:
            if not forwarded:
                self._out.append(ev.AlreadyExecuted(r, seq))
            return
        if status is NonceStatus.STALE:
            if not forwarded:
                self._out.append(ev.RejectRequest(r, ev.RejectReason.STALE))
            return
        primary = self.is_primary and self.view_active
        if not primary and not forwarded and not retry and self.view_active:
            # Clients send to the primary (paper 4.1); a first submission here is redirected,
            # not relayed: a backup signs no forward per request on the normal path.
            self._out.append(ev.RejectRequest(r, ev.RejectReason.NOT_PRIMARY, self.primary))
            return
        known = r.key in self.pool
        if not known and not self.pool.add(r, self._tick):
            if not forwarded:
                self._out.append(ev.RejectRequest(r, ev.RejectReason.OVERLOADED))
            return
        if primary:
            if r.key not in self.pool.in_flight:
                self.pool.queue.put(r)
            self._maybe_propose()
        elif not forwarded and self.view_active:
            # A client retrying at a backup suspects the primary: relay the request to it, and
            # on a second retry to everyone, so every backup starts timing it (paper 4.1).
            body = m.RequestForward((r,))
            if known:
                self._broadcast(self._sign(body))
            else:
                self._send(self.primary, self._sign(body))
        self._arm_request_timer()

    def _arm_request_timer(self) -> None:
        """Backups time the oldest pending request (paper 4.4): if it does not execute in time,
        the primary is suspected, even if it keeps executing other clients' requests."""
        if self.is_primary or not self.view_active or not self.is_member:
            return
        self._drop_stale_pending()
        oldest = self.pool.oldest()
        if oldest is None:
            self._timed_request = None
            self._cancel_timer(ev.TimerKind.REQUEST)
            return
        if self._timed_request != oldest or not self._timer_armed(ev.TimerKind.REQUEST):
            if self._timed_request != oldest:
                self._request_relayed = False
                self._request_patience_used = 0
            self._timed_request = oldest
            self._request_progress_mark = self.last_executed
            self._set_timer(ev.TimerKind.REQUEST, self.params.request_timeout_ms)

    def _drop_stale_pending(self) -> None:
        """Requests whose nonce fell out of their client's window (it executed newer ones)
        can never execute: drop them from the front of the waiting list, telling their
        client, instead of timing them and suspecting an honest primary."""
        while True:
            key = self.pool.oldest()
            if key is None or self._client_table.check(*key)[0] is not NonceStatus.STALE:
                return
            r = self.pool.remove(key)
            assert r is not None
            self._out.append(ev.RejectRequest(r, ev.RejectReason.STALE))

    # ------------------------------------------------------------------------ primary: batching

    def _epoch_limit(self) -> int:
        """Highest sequence number the current epoch may order."""
        if self.pending_reconfiguration is not None:
            return self.pending_reconfiguration.effective_seq
        return 1 << 62

    def _high_watermark(self) -> int:
        return min(self.stable_seq + self.params.log_window, self._epoch_limit())

    def _maybe_propose(self, *, force: bool = False) -> None:
        """Paper 4.2: the primary assigns sequence numbers to batches, keeping at most
        `pipeline_depth` batches in flight and never passing the high watermark.

        Adaptive batching: with nothing in flight a request is proposed at once (a quiet
        consortium answers fast); while batches are in flight a partial batch waits up to
        `batch_delay_ms` to fill, and beyond `partial_batches_in_flight_max` it waits for an
        execution (Nagle-style), so a busy consortium forms big batches; a full batch never
        waits."""
        p = self.params
        queue = self.pool.queue
        while (self.is_primary and self.view_active and queue
               and self._next_seq <= self._high_watermark()
               and self._next_seq - 1 - self.last_executed < p.pipeline_depth):
            full = len(queue) >= p.batch_requests_max or queue.bytes > p.batch_bytes_max
            in_flight = self._next_seq - 1 - self.last_executed
            if not full:
                if in_flight >= min(p.partial_batches_in_flight_max, p.pipeline_depth):
                    # The next execution proposes what has accumulated by then.
                    self._held_for_execution = True
                    return
                if in_flight > 0 and not force and not self._held_for_execution \
                        and p.batch_delay_ms > 0:
                    if not self._timer_armed(ev.TimerKind.BATCH):
                        self._set_timer(ev.TimerKind.BATCH, p.batch_delay_ms)
                    return
            batch: list[m.Request] = []
            size = 0
            for r in queue.values():
                if len(batch) >= p.batch_requests_max or size + r.size_bytes > p.batch_bytes_max:
                    break
                batch.append(r)
                size += r.size_bytes
            if not batch:  # one request larger than batch_bytes_max: refused at entry
                raise ReplicaBug("queued request exceeds the batch size limit")
            self._propose(tuple(batch))
            force = False
            self._held_for_execution = False
        if not queue:
            self._held_for_execution = False
            self._cancel_timer(ev.TimerKind.BATCH)
            self._fill_to_epoch_boundary()

    def _fill_to_epoch_boundary(self) -> None:
        """A validator-set change takes effect at a checkpoint: with no client traffic to fill
        the sequence numbers up to it, the primary fills them with empty batches, so that the
        change never waits for traffic."""
        pending = self.pending_reconfiguration
        while (pending is not None and self.is_primary and self.view_active
               and not self.pool.queue
               and self._next_seq <= min(pending.effective_seq, self._high_watermark())
               and self._next_seq - 1 - self.last_executed < self.params.pipeline_depth):
            self._propose(())

    def _proposal_time(self) -> int:
        """The primary's timestamp for its next proposal: its clock, never going backwards."""
        if self._clock is None:
            return 0
        self._last_proposal_ms = max(self._last_proposal_ms, self._clock.now_ms())
        return self._last_proposal_ms

    def _propose(self, batch: tuple[m.Request, ...]) -> None:
        seq = self._next_seq
        body = m.PrePrepare(self.config.epoch, self.view, seq, batch_root(batch), len(batch),
                            self._proposal_time())
        msg = self._sign_vote(body)
        if msg is None:
            raise ReplicaBug(f"primary already signed another batch for view {self.view} "
                             f"seq {seq}")
        self._next_seq += 1
        for r in batch:
            self.pool.mark_in_flight(r)
        slot = self._slot(seq)
        slot.pre_prepare = msg
        slot.remember_header(msg, adopt=True)
        slot.remember_batch(body.root, batch, adopt=True)
        self._out.append(ev.Persist((_durable_proposal(msg, batch),)))
        self._send_with_batch(self._peers(), msg, batch)
        self._check_prepared(slot)

    # ------------------------------------------------------------------------- peer messages

    def _on_peer_bytes(self, data: bytes) -> None:
        if len(data) > self.params.message_bytes_max:
            self._fault(None, f"message of {len(data)} bytes exceeds the limit")
            return
        try:
            msg = codec.decode_signed(data, self.chain_id)
        except codec.DecodeError as exc:
            self._fault(None, f"undecodable message: {exc}")
            return
        self._on_signed(msg)

    def _message_epoch(self, b: m.Body) -> int | None:
        if isinstance(b, (m.PrePrepare, m.Prepare, m.Commit, m.Checkpoint, m.ViewChange,
                          m.NewView, m.Status, m.BatchRequest)):
            return b.epoch
        return None

    def _buffer_future(self, msg: m.SignedMessage) -> None:
        """Bounded by count and by bytes (a buffered PRE-PREPARE may carry its batch)."""
        size = len(msg.wire) + (0 if msg.batch is None else
                                sum(r.size_bytes for r in msg.batch))
        limit = FUTURE_BATCHES_BYTES * self.params.batch_bytes_max
        self._future.append(msg)
        self._future_bytes += size
        while self._future and (len(self._future) > self.params.future_messages_max
                                or self._future_bytes > limit):
            old = self._future.pop(0)
            self._future_bytes -= len(old.wire) + (0 if old.batch is None else
                                                   sum(r.size_bytes for r in old.batch))

    def _replay_future(self) -> None:
        future, self._future = self._future, []
        self._future_bytes = 0
        for msg in future:
            self._on_signed(msg)

    def _on_signed(self, msg: m.SignedMessage) -> None:
        b = msg.body
        if isinstance(b, m.StateResponse):
            self._on_state_response(msg.sender, b)  # self-certifying: checked against proofs
            return
        if isinstance(b, m.Status) and not self.config.is_member(msg.sender):
            self._on_former_member_status(msg, b)
            return
        epoch = self._message_epoch(b)
        verified = verify_signed(msg, self.config, self.chain_id, self._verifier)
        if not verified and isinstance(b, m.Status | m.StateRequest) and (
                epoch is None or epoch < self.config.epoch):
            verified = self._signed_under_former_key(msg)
        if epoch is not None and epoch > self.config.epoch and not isinstance(b, m.Status):
            # Only a sender we can authenticate now may fill the buffer (a member that joins
            # with the new epoch is heard again through retransmission once we switch).
            if verified:
                self._buffer_future(msg)
            return
        if not verified:
            self._fault(msg.sender, f"{type(b).__name__} with a bad signature or from a "
                                    "non-member")
            return
        if epoch is not None and epoch < self.config.epoch and not isinstance(b, m.Status):
            return  # an old epoch's message: harmless, ignored
        if not self.is_member and not isinstance(b, m.Status):
            return
        if isinstance(b, m.PrePrepare):
            self._on_pre_prepare(msg, b)
        elif isinstance(b, m.Prepare):
            self._on_prepare(msg, b)
        elif isinstance(b, m.Commit):
            self._on_commit(msg, b)
        elif isinstance(b, m.Checkpoint):
            self._on_checkpoint(msg, b)
        elif isinstance(b, m.ViewChange):
            self._on_view_change(msg, b)
        elif isinstance(b, m.NewView):
            self._on_new_view(msg)
        elif isinstance(b, m.Status):
            self._on_status(msg.sender, b)
        elif isinstance(b, m.RequestForward):
            for r in b.requests[: self.params.batch_requests_max]:
                self._on_client_request(r, forwarded=True)
        elif isinstance(b, m.StateRequest):
            self._on_state_request(msg.sender, b)
        elif isinstance(b, m.BatchRequest):
            self._on_batch_request(msg.sender, b)

    def _signed_under_former_key(self, msg: m.SignedMessage) -> bool:
        """A member that lags an epoch behind a change of its own key still signs with the key
        of its epoch: its STATUS and STATE-REQUEST (how it asks to catch up) are taken under
        that key, so that it can reach the epoch that names its new one. Nothing it could
        vote is (those are old-epoch messages, ignored anyway)."""
        current = self.config.key_of(msg.sender)
        b = msg.body
        epoch = b.epoch if isinstance(b, m.Status) else None
        for config in sorted(self.epoch_configs().values(), key=lambda c: -c.epoch):
            if (epoch is None or config.epoch == epoch) and config.epoch < self.config.epoch \
                    and config.key_of(msg.sender) not in (None, current) \
                    and verify_signed(msg, config, self.chain_id, self._verifier):
                return True
        return False

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self._high_watermark()

    def _slot(self, seq: int) -> Slot:
        slot = self._slots.get(seq)
        if slot is None:
            slot = Slot(seq, created_tick=self._tick)
            self._slots[seq] = slot
        return slot

    def _vouched(self, slot: Slot, digest: bytes) -> bool:
        """A quorum already vouched for this batch: a NEW-VIEW re-proposed it (every
        re-proposal comes from a prepared certificate, which at least one honest replica
        checked) or quorum COMMITs name it. Its contents then need only match the root, not
        a fresh check of every client signature (which could fail later, e.g. after a key
        was revoked, and must not stop a decided batch from executing)."""
        if slot.pre_prepare is not None and slot.digest == digest and \
                self._new_view_msg is not None and any(
                    isinstance(pp.body, m.PrePrepare) and pp.body.seq == slot.seq
                    and pp.body.digest == digest
                    for pp in self._new_view_msg_pre_prepares()):
            return True
        views: dict[int, int] = {}
        for (view, _s, d) in slot.commits:
            if d == digest:
                views[view] = views.get(view, 0) + 1
        return any(n >= self.config.quorum for n in views.values())

    def _new_view_msg_pre_prepares(self) -> tuple[m.SignedMessage, ...]:
        nv = None if self._new_view_msg is None else self._new_view_msg.body
        return nv.pre_prepares if isinstance(nv, m.NewView) else ()

    def _accept_batch(self, msg: m.SignedMessage, b: m.PrePrepare, *,
                      adopt: bool = False) -> bool:
        """Paper 4.2 acceptance checks that do not depend on the view: the attached batch
        matches the header's root and size, respects the limits, and every client signature
        is valid. Keeps the header and the batch in the slot; whether its contents are held."""
        slot = self._slot(b.seq)
        requests = msg.batch
        if requests is None:
            # A header alone (retransmitted, or from a log): keep it, so a certificate for
            # its digest knows what batch to fetch and from whom.
            slot.remember_header(msg, adopt=adopt or self._vouched(slot, b.digest))
            return b.count == 0 or b.root in slot.batches
        if len(requests) != b.count or batch_root(requests) != b.root:
            self._fault(msg.sender, f"pre-prepare batch does not match its root at seq {b.seq}")
            return False
        vouched = self._vouched(slot, b.digest)
        if not vouched:
            p = self.params
            if len(requests) > p.batch_requests_max or sum(
                    r.size_bytes for r in requests) > p.batch_bytes_max:
                self._fault(msg.sender, f"oversized batch at seq {b.seq}")
                return False
            for r in requests:
                if self._verify_request(r) is not None:
                    self._fault(msg.sender, f"batch at seq {b.seq} carries an invalid request")
                    return False
        # A vouched batch always fits, like the adopted one: an equivocating primary may have
        # filled the slot's bounded tables with other batches of its own, and the one a quorum
        # decided must not be the one left out.
        keep = adopt or vouched
        slot.remember_header(msg, adopt=keep)
        slot.remember_batch(b.root, requests, adopt=keep)
        return slot.has_contents(b.digest)

    def _clock_problem(self, b: m.PrePrepare) -> str | None:
        """Why a primary's new proposal is too far from our clock to prepare, if it is."""
        skew = self.params.clock_skew_ms_max
        if self._clock is None or skew == 0:
            return None
        now = self._clock.now_ms()
        if abs(b.timestamp_ms - now) > skew:
            return (f"proposal at seq {b.seq} is stamped {b.timestamp_ms - now:+d} ms from our "
                    f"clock (limit {skew} ms)")
        return None

    def _on_pre_prepare(self, msg: m.SignedMessage, b: m.PrePrepare) -> None:
        if b.seq <= self.last_executed or not self._in_window(b.seq):
            return
        if msg.sender != self.config.primary(b.view):
            self._fault(msg.sender, f"pre-prepare for view {b.view} from a non-primary")
            return
        if b.view > self.view or (b.view == self.view and not self.view_active):
            self._buffer_future(msg)
            return
        slot = self._slot(b.seq)
        if b.view < self.view or (slot.pre_prepare is not None and slot.view == b.view):
            if b.view == self.view and slot.digest != b.digest:
                self._fault(msg.sender, f"primary equivocated at view {b.view} seq {b.seq}")
            # An old view's proposal, our own adopted one again (a fetched batch) or an
            # equivocation: never vote for it, but keep its batch: with a commit certificate
            # for its digest, it is all we need to execute.
            if self._accept_batch(msg, b):
                self._adopted_contents(slot)
                self._try_execute()
            return
        problem = self._clock_problem(b)
        if problem is not None:
            # Never vote for it, but keep its batch (checked like any other): if a quorum
            # commits this digest anyway (our clock is off, or the proposal reached us late),
            # the batch is what we need to execute, and a fetch would only bring this header
            # back to this same check.
            self._fault(msg.sender, problem)
            if self._accept_batch(msg, b):
                self._try_execute()
            return
        if msg.batch is None and not (b.count == 0 or b.root in slot.batches):
            self._ask_batch(slot, b.digest, (msg.sender,))
            return
        if not self._accept_batch(msg, b, adopt=True):
            return
        self._adopt_pre_prepare(slot, msg, b)
        self._try_execute()

    def _adopt_pre_prepare(self, slot: Slot, msg: m.SignedMessage, b: m.PrePrepare) -> None:
        """Accept a pre-prepare of the current view; a backup answers with PREPARE."""
        slot.pre_prepare = msg
        slot.remember_header(msg, adopt=True)
        self._adopted_contents(slot)
        if msg.sender != self.id:
            prepare = self._sign_vote(m.Prepare(b.epoch, b.view, b.seq, b.digest))
            if prepare is None:
                self._fault(msg.sender, f"pre-prepare conflicts with what this replica "
                                        f"prepared at view {b.view} seq {b.seq}")
                return
            slot.prepares[(b.view, self.id, b.digest)] = prepare
            self._out.append(ev.Persist((_durable_proposal(msg, slot.batches.get(b.root)),
                                         prepare)))
            self._broadcast(prepare)
        self._arm_request_timer()
        self._check_prepared(slot)

    def _adopted_contents(self, slot: Slot) -> None:
        """The requests of the adopted batch are in flight (a primary must not propose them
        again in another slot), and pending here (so a backup times them)."""
        if slot.pre_prepare is None:
            return
        requests = slot.contents(header(slot.pre_prepare).digest)
        for r in requests or ():
            if r.key not in self.pool.in_flight and \
                    self._client_table.check(r.client_id, r.nonce)[0] is NonceStatus.FRESH:
                self.pool.add(r, self._tick)
                self.pool.mark_in_flight(r)

    def _store_vote(self, slot: Slot, table: dict[VoteKey, m.SignedMessage],
                    msg: m.SignedMessage, b: m.Prepare | m.Commit) -> bool:
        """Keep a vote. A sender's first vote in a view is always kept; a further, different
        one only if it is for a batch we hold (bounded memory, and the real vote of an
        equivocating replica still counts where it is real)."""
        key = (b.view, msg.sender, b.digest)
        if key in table:
            return False
        known = slot.header_for(b.digest) is not None
        if len(table) >= VOTES_PER_SLOT_PER_MEMBER * self.config.n and (
                b.view != self.view or not known):
            return False  # bounded: old-view or unknown-batch votes beyond the cap are dropped
        if any(v == b.view and s == msg.sender for v, s, _d in table):
            self._fault(msg.sender, f"conflicting {type(b).__name__} at view {b.view} "
                                    f"seq {b.seq}")
            if not known:
                return False
        table[key] = msg
        return True

    def _on_prepare(self, msg: m.SignedMessage, b: m.Prepare) -> None:
        if b.seq <= self.last_executed or not self._in_window(b.seq):
            return
        if msg.sender == self.config.primary(b.view):
            self._fault(msg.sender, "the primary sent a PREPARE")
            return
        if b.view > self.view or (b.view == self.view and not self.view_active):
            self._buffer_future(msg)
            return
        if b.view < self.view:
            return
        slot = self._slot(b.seq)
        if self._store_vote(slot, slot.prepares, msg, b):
            self._check_prepared(slot)

    def _check_prepared(self, slot: Slot) -> None:
        """Paper 4.2: prepared(m, v, n) = pre-prepare + 2f matching PREPAREs from distinct
        backups; then multicast COMMIT, after persisting the proof it rests on."""
        if slot.pre_prepare is None or slot.view != self.view or not self.view_active:
            return
        digest = slot.digest
        assert digest is not None
        if (3, self.config.epoch, slot.view, slot.seq) in self._own:
            return
        prepares = slot.votes(slot.prepares, slot.view, digest)
        if len(prepares) < self.config.quorum - 1:
            return
        commit = self._sign_vote(m.Commit(self.config.epoch, slot.view, slot.seq, digest))
        if commit is None:  # pragma: no cover - guarded by the membership test above
            raise ReplicaBug("commit already signed for another digest")
        slot.commits[(slot.view, self.id, digest)] = commit
        # The proposal again, as the proof the commit rests on (its batch went with the
        # PREPARE, or is the primary's own).
        self._out.append(ev.Persist((dataclasses.replace(slot.pre_prepare, batch=None),
                                     *prepares, commit)))
        self._broadcast(commit)
        self._try_execute()

    def _on_commit(self, msg: m.SignedMessage, b: m.Commit) -> None:
        if b.seq <= self.last_executed or not self._in_window(b.seq):
            return
        if b.view > self.view:
            self._buffer_future(msg)
            return
        slot = self._slot(b.seq)
        if self._store_vote(slot, slot.commits, msg, b):
            self._try_execute()

    # -------------------------------------------------------------------------- batch fetch

    def _ask_batch(self, slot: Slot, digest: bytes, candidates: Iterable[int]) -> None:
        """Ask one peer for the batch behind `digest`: the first candidate not asked yet in this
        round (candidates first, then the other peers), so a silent peer is not asked again
        before every other one was."""
        preferred = [p for p in dict.fromkeys(candidates) if p != self.id and
                     self.config.is_member(p)]
        peers = preferred + [p for p in self._peers() if p not in preferred]
        if not peers:
            return
        fresh = [p for p in peers if p not in slot.fetch_asked]
        if not fresh:
            slot.fetch_asked.clear()
            fresh = peers
        peer = fresh[0]
        slot.fetch_asked.add(peer)
        slot.fetch_attempts += 1
        self._send(peer, self._sign(m.BatchRequest(self.config.epoch, slot.seq, digest)))

    def _missing_batch(self, slot: Slot) -> tuple[bytes, list[int]] | None:
        """The digest whose batch this slot needs to execute (a commit certificate's, else the
        adopted proposal's) and who should hold it, if its contents are missing."""
        counts: dict[tuple[int, bytes], list[int]] = {}
        for (view, sender, digest) in slot.commits:
            counts.setdefault((view, digest), []).append(sender)
        for (_view, digest), senders in counts.items():
            if len(senders) >= self.config.quorum and not slot.has_contents(digest):
                return digest, senders
        if slot.pre_prepare is not None:
            digest = header(slot.pre_prepare).digest
            if not slot.has_contents(digest):
                voters = [s for (_v, s, d) in (*slot.prepares, *slot.commits) if d == digest]
                return digest, [slot.pre_prepare.sender, *voters]
        return None

    def _fetch_missing_batches(self) -> None:
        """Each STATUS tick: ask for the batches the next sequence numbers need."""
        asked = 0
        for seq in sorted(self._slots):
            if asked >= self.params.batch_fetch_seqs_max:
                return
            if seq <= self.last_executed:
                continue
            slot = self._slots[seq]
            missing = self._missing_batch(slot)
            if missing is not None:
                self._ask_batch(slot, missing[0], missing[1])
                asked += 1

    def _on_batch_request(self, sender: int, b: m.BatchRequest) -> None:
        """Answer with a proposal header for that digest and its batch, at most once per peer
        and sequence number per tick, and for at most `batch_answer_bytes_max` bytes per peer
        per tick."""
        slot = self._slots.get(b.seq)
        if slot is None or self._batches_sent.get((sender, b.seq)) == self._tick:
            return
        requests = slot.contents(b.digest)
        msg = slot.header_for(b.digest)
        if requests is None or msg is None:
            return
        tick, used = self._batch_bytes_sent.get(sender, (self._tick, 0))
        if tick != self._tick:
            used = 0
        if used >= self.params.batch_answer_bytes_max:
            return  # a small request must not buy a window of full batches every tick
        self._batches_sent[(sender, b.seq)] = self._tick
        if len(self._batches_sent) > 4 * self.params.log_window * max(1, self.config.n):
            self._batches_sent = {k: t for k, t in self._batches_sent.items()
                                  if t >= self._tick - 1}
        used += self._send_with_batch((sender,), msg, requests)
        self._batch_bytes_sent[sender] = (self._tick, used)

    # ---------------------------------------------------------------------------- execution

    def _commit_certificate(self, slot: Slot) -> tuple[int, bytes, list[m.SignedMessage]] | None:
        """(view, digest, commits) once 2f+1 matching COMMITs and the batch itself are known."""
        counts: dict[tuple[int, bytes], list[m.SignedMessage]] = {}
        for (view, _sender, digest), msg in slot.commits.items():
            counts.setdefault((view, digest), []).append(msg)
        for (view, digest), msgs in counts.items():
            if len(msgs) >= self.config.quorum and slot.has_contents(digest):
                return view, digest, msgs
        return None

    def _try_execute(self) -> None:
        """Execute committed batches strictly in sequence order (paper 4.2)."""
        while True:
            seq = self.last_executed + 1
            slot = self._slots.get(seq)
            if slot is None or seq > self._epoch_limit():
                return
            cert = self._commit_certificate(slot)
            if cert is None:
                missing = self._missing_batch(slot)
                if missing is not None and slot.fetch_attempts == 0:
                    self._ask_batch(slot, missing[0], missing[1])  # then once per tick
                return
            view, digest, commits = cert
            requests = slot.contents(digest)
            assert requests is not None
            self._execute(seq, view, digest, requests, slot.proposal(view, digest),
                          tuple(sorted(commits, key=lambda c: c.sender)))

    def _execute(self, seq: int, view: int, digest: bytes, requests: tuple[m.Request, ...],
                 pp_msg: m.SignedMessage, certificate: tuple[m.SignedMessage, ...],
                 *, replay: bool = False) -> None:
        if seq != self.last_executed + 1:
            raise ReplicaBug(f"executing seq {seq} after {self.last_executed}")
        executed = []
        for r in requests:
            status, _ = self._client_table.check(r.client_id, r.nonce)
            if status is not NonceStatus.FRESH:
                continue
            if r.kind is m.RequestKind.RECONFIGURATION and not self._apply_reconfiguration(
                    r, seq):
                continue
            self._client_table.record(r.client_id, r.nonce, seq)
            executed.append(r)
        self.last_executed = seq
        self.state_digest = next_state_digest(self.state_digest, seq, digest)
        for r in requests:
            self.pool.remove(r.key)
        if executed:
            self._view_change_attempts = 0
        if not replay:
            self._out.append(ev.Execute(seq, view, self.config.epoch, digest, requests,
                                        tuple(executed), pp_msg, certificate,
                                        self.state_digest))
        if seq % self.params.checkpoint_interval == 0 or (
                self.pending_reconfiguration is not None
                and seq == self.pending_reconfiguration.effective_seq):
            self._take_checkpoint(seq, replay=replay)
        if not replay:
            if self._timed_request is not None and self._timed_request not in self.pool:
                self._cancel_timer(ev.TimerKind.REQUEST)
            self._arm_request_timer()
            self._maybe_propose()

    def _apply_reconfiguration(self, r: m.Request, seq: int) -> bool:
        """A validator-set change takes effect at the first checkpoint at or after `seq`, for
        every honest replica at the same point. Invalid proposals are skipped deterministically."""
        if self.pending_reconfiguration is not None:
            return False
        pending = approved_reconfiguration(r.payload, self.config, seq,
                                           self.params.checkpoint_interval, self.chain_id,
                                           self._verifier)
        if pending is None:
            return False
        self.pending_reconfiguration = pending
        effective = pending.effective_seq
        for s in [s for s in self._slots if s > effective]:
            self._drop_slot(s)
        return True

    def _drop_slot(self, seq: int) -> None:
        slot = self._slots.pop(seq)
        for r in slot.all_requests():
            self.pool.release(r, requeue=self.is_primary)

    # -------------------------------------------------------------------- checkpoints (4.3)

    def _take_checkpoint(self, seq: int, *, replay: bool) -> None:
        records = self._epoch_records
        pending = self.pending_reconfiguration
        if pending is not None and pending.effective_seq == seq:
            entries = self._client_table.entries()
            opened = m.EpochRecord(self.config.epoch + 1, seq, pending.members,
                                   self.state_digest, clients_digest(entries), ())
            records = (*records, opened)
            pending = None
        snap = m.Snapshot(seq, self.state_digest, records, self._client_table.entries(), pending)
        self._snapshots[seq] = snap
        digest = snapshot_digest(self.genesis, snap)
        vote = self._sign(m.Checkpoint(self.config.epoch, seq, digest))
        self._checkpoint_votes.setdefault(seq, {})[self.id] = vote
        if not replay:
            self._broadcast(vote)
        self._check_stable(seq, digest)

    def _on_checkpoint(self, msg: m.SignedMessage, b: m.Checkpoint) -> None:
        if b.seq <= self.stable_seq or b.seq > self.stable_seq + 4 * self.params.log_window:
            return
        if b.seq not in self._checkpoint_votes and len(self._checkpoint_votes) > 4 * (
                self.params.log_window // self.params.checkpoint_interval) + 4:
            return  # bounded: far-future checkpoints wait for retransmission
        votes = self._checkpoint_votes.setdefault(b.seq, {})
        if msg.sender in votes:
            return
        votes[msg.sender] = msg
        self._check_stable(b.seq, b.digest)

    def _check_stable(self, seq: int, digest: bytes) -> None:
        votes = [v for v in self._checkpoint_votes.get(seq, {}).values()
                 if isinstance(v.body, m.Checkpoint) and v.body.digest == digest]
        if len(votes) < self.config.quorum or seq <= self.stable_seq:
            return
        # A quorum exactly (more may have arrived before our own vote): what VIEW-CHANGEs and
        # state responses carry stays within their size bounds.
        proof = tuple(sorted(votes, key=lambda v: v.sender))[: self.config.quorum]
        own = self._snapshots.get(seq)
        if own is not None:
            if snapshot_digest(self.genesis, own) != digest:
                raise ReplicaBug(f"a quorum certified a different state at checkpoint {seq}")
            self._make_stable(own, proof)
        elif seq > self.last_executed:
            self._catchup.prove(seq, tuple(v.sender for v in proof))

    def _make_stable(self, snap: m.Snapshot, proof: tuple[m.SignedMessage, ...]) -> None:
        """The checkpoint is stable: garbage-collect the log below it (paper 4.3) and, at an
        epoch boundary, switch to the new validator set."""
        boundary = bool(snap.epochs) and snap.epochs[-1].start_seq == snap.seq and \
            snap.epochs[-1].epoch == self.config.epoch + 1
        if boundary:
            last = snap.epochs[-1]
            proven = dataclasses.replace(last, proof=proof)
            snap = dataclasses.replace(snap, epochs=(*snap.epochs[:-1], proven))
        self.stable_seq = snap.seq
        self._stable_proof = proof
        self._stable_snapshot = snap
        for s in [s for s in self._slots if s <= snap.seq]:
            del self._slots[s]
        for s in [s for s in self._snapshots if s <= snap.seq]:
            del self._snapshots[s]
        for s in [s for s in self._checkpoint_votes if s <= snap.seq]:
            del self._checkpoint_votes[s]
        self._own = {k: d for k, d in self._own.items()
                     if k[3] > snap.seq and k[1] >= self.config.epoch}
        self._batches_sent = {k: t for k, t in self._batches_sent.items() if k[1] > snap.seq}
        self._out.append(ev.PersistSnapshot(snap, proof))
        if boundary:
            self._enter_epoch(snap)
        self._maybe_propose()

    def _enter_epoch(self, snap: m.Snapshot) -> None:
        last = snap.epochs[-1]
        self.config = EpochConfig(last.epoch, last.start_seq, last.members)
        self._epoch_records = snap.epochs
        self.pending_reconfiguration = None
        self._forget_epoch_state()
        self._next_seq = snap.seq + 1
        self._reset_view_for_epoch()
        self._after_leader_change()

    def _forget_epoch_state(self) -> None:
        """What belongs to the epoch that ended: its votes, view changes and slots."""
        self._checkpoint_votes.clear()
        self._view_changes.clear()
        self._new_view_msg = None
        for s in list(self._slots):
            self._drop_slot(s)
        self.pool.in_flight.clear()
        self._catchup = CatchUp(self.config.weak_quorum, proven_seq=self._catchup.proven_seq,
                                proven_holders=self._catchup.proven_holders)

    def _reset_view_for_epoch(self) -> None:
        """Views restart at 0 in every epoch, so that a replica that joins knows the primary
        without needing a NEW-VIEW from an epoch it never belonged to."""
        self.view = 0
        self.view_active = True
        self._view_change_attempts = 0
        self._cancel_timer(ev.TimerKind.VIEW_CHANGE)
        self._out.append(ev.EpochEntered(self.config))
        self._out.append(ev.ViewEntered(0, self.primary))

    def _after_leader_change(self) -> None:
        """New primary (view or epoch change): hand it every pending request."""
        self._slow_ticks = 0
        if self._clock is not None:  # its silence counts from now
            self._heard_ms[self.primary] = self._clock.now_ms()
        self.pool.queue.clear()
        if self.is_primary:
            self.pool.requeue_all()
            self._cancel_timer(ev.TimerKind.REQUEST)
            self._timed_request = None
            self._maybe_propose()
        else:
            self._forward_pending(waited_only=False)
            self._cancel_timer(ev.TimerKind.REQUEST)
            self._arm_request_timer()
        self._replay_future()

    def _forward_pending(self, *, waited_only: bool) -> None:
        """Relay pending requests to the primary; with `waited_only`, only those that have
        already waited a full status tick (their first forward may have been lost). One
        forward carries at most a batch's worth (count and bytes)."""
        if not self.is_member or self.is_primary:
            return
        batch: list[m.Request] = []
        size = 0
        for key, r, tick in self.pool.items():
            if key in self.pool.in_flight or (waited_only and tick >= self._tick - 1):
                continue
            if len(batch) >= self.params.batch_requests_max or \
                    size + r.size_bytes > self.params.batch_bytes_max:
                break
            batch.append(r)
            size += r.size_bytes
        if batch:
            self._send(self.primary, self._sign(m.RequestForward(tuple(batch))))

    # ----------------------------------------------------------------------- state transfer

    def _request_state(self, holders: Iterable[int]) -> None:
        """Ask holders for a stable checkpoint above our state (at most once per tick)."""
        if self._state_requested_tick == self._tick:
            return
        targets = self._catchup.next_holders(tuple(h for h in holders if h != self.id))
        if not targets:
            return
        self._state_requested_tick = self._tick
        msg = self._sign(m.StateRequest(self.last_executed))
        for holder in targets:
            self._send(holder, msg)

    def _on_state_request(self, sender: int, b: m.StateRequest) -> None:
        snap = self._stable_snapshot
        if snap is None or snap.seq <= b.after_seq or self._state_sent.get(sender) == self._tick:
            return
        self._state_sent[sender] = self._tick
        self._send(sender, self._sign(m.StateResponse(snap, self._stable_proof)))

    def _on_state_response(self, sender: int, b: m.StateResponse) -> None:
        snap = b.snapshot
        if snap.seq <= self.last_executed:
            return
        configs = verify_epoch_history(self.genesis, snap.epochs, self.chain_id, self._verifier)
        if configs is None:
            self._fault(sender, "state response with an unverifiable epoch history")
            return
        signer_config = signing_config(configs, snap.seq)
        try:
            digest = snapshot_digest(self.genesis, snap)
        except ValueError as exc:  # e.g. a pending member list that is no valid validator set
            self._fault(sender, f"state response with a malformed snapshot: {exc}")
            return
        if not verify_checkpoint_proof(b.proof, signer_config, snap.seq, digest, self.chain_id,
                                       self._verifier):
            self._fault(sender, f"state response for seq {snap.seq} without a valid proof")
            return
        proof = checkpoint_quorum(b.proof, signer_config, snap.seq, digest, self.chain_id,
                                  self._verifier)
        self._install_snapshot(snap, proof, configs[-1])

    def _install_snapshot(self, snap: m.Snapshot, proof: tuple[m.SignedMessage, ...],
                          config: EpochConfig) -> None:
        epoch_changed = config.epoch != self.config.epoch
        self.last_executed = snap.seq
        self.state_digest = snap.state_digest
        self._client_table = ClientTable.from_entries(self.params.client_nonce_window,
                                                      snap.clients)
        self.pending_reconfiguration = snap.pending
        self.stable_seq = snap.seq
        self._stable_proof = proof
        self._stable_snapshot = snap
        self._epoch_records = snap.epochs
        for s in [s for s in self._slots if s <= snap.seq]:
            self._drop_slot(s)
        self._snapshots = {s: v for s, v in self._snapshots.items() if s > snap.seq}
        self._checkpoint_votes = {s: v for s, v in self._checkpoint_votes.items()
                                  if s > snap.seq}
        self._next_seq = max(self._next_seq, snap.seq + 1)
        for key, _r, _t in list(self.pool.items()):
            if self._client_table.check(*key)[0] is not NonceStatus.FRESH:
                self.pool.remove(key)
        self._out.append(ev.InstallSnapshot(snap, proof))
        self._out.append(ev.PersistSnapshot(snap, proof))
        if epoch_changed:
            self.config = config
            self._forget_epoch_state()
            self._next_seq = snap.seq + 1
            self._reset_view_for_epoch()
            self._after_leader_change()
        else:
            self._try_execute()
            self._arm_request_timer()
            self._maybe_propose()
            self._replay_future()

    # ------------------------------------------------------------------------ view change (4.4)

    def _view_change_timeout_ms(self) -> int:
        base = self.params.view_change_timeout_ms << min(self._view_change_attempts, 16)
        return min(base, self.params.view_change_timeout_max_ms)

    def _prepared_proofs(self) -> tuple[m.PreparedProof, ...]:
        """For each sequence above the stable checkpoint, the proof of the highest view in which
        this replica saw the batch prepared (or committed): headers and votes only."""
        proofs = []
        quorum = self.config.quorum
        for seq in sorted(self._slots):
            slot = self._slots[seq]
            for view, digest in sorted(slot.proposals, reverse=True):
                pp_msg = slot.proposals[(view, digest)]
                primary = self.config.primary(view)
                prepares = [p for p in slot.votes(slot.prepares, view, digest)
                            if p.sender != primary]
                commits = slot.votes(slot.commits, view, digest)
                if len(prepares) >= quorum - 1:
                    proofs.append(m.PreparedProof(pp_msg, tuple(prepares[: quorum - 1])))
                    break
                if len(commits) >= quorum:
                    proofs.append(m.PreparedProof(pp_msg, tuple(commits[:quorum])))
                    break
        return tuple(proofs)

    def _start_view_change(self, new_view: int) -> None:
        if new_view <= self.view or not self.is_member:
            return
        self.view = new_view
        self.view_active = False
        self._new_view_msg = None
        self._cancel_timer(ev.TimerKind.REQUEST)
        self._cancel_timer(ev.TimerKind.BATCH)
        self._timed_request = None
        stable_proof = () if self.stable_seq == self.config.start_seq else self._stable_proof
        vc = self._sign(m.ViewChange(self.config.epoch, new_view, self.stable_seq, stable_proof,
                                     self._prepared_proofs()))
        self._view_changes.setdefault(new_view, {})[self.id] = vc
        self._out.append(ev.Persist((vc,)))
        self._broadcast(vc)
        self._cancel_timer(ev.TimerKind.VIEW_CHANGE)
        self._arm_view_change_timer()
        self._maybe_send_new_view()
        self._replay_future()

    def _arm_view_change_timer(self) -> None:
        """Paper 4.5.2: the timer for the new view starts once 2f+1 replicas (this one
        included) want it, so that a replica alone in suspecting the primary does not climb
        views by itself."""
        if self.view_active or self._timer_armed(ev.TimerKind.VIEW_CHANGE):
            return
        if len(self._view_changes.get(self.view, {})) >= self.config.quorum:
            self._set_timer(ev.TimerKind.VIEW_CHANGE, self._view_change_timeout_ms())

    def _on_view_change(self, msg: m.SignedMessage, b: m.ViewChange) -> None:
        if b.new_view < self.view or (b.new_view == self.view and self.view_active):
            # A peer is behind us: help it by resending our NEW-VIEW.
            if b.new_view <= self.view:
                self._resend_new_view(msg.sender)
            return
        if b.new_view > self.view + 64 * self.config.n:
            return  # absurdly far ahead: ignore rather than store
        bucket = self._view_changes.setdefault(b.new_view, {})
        if msg.sender in bucket:
            return
        if verify_view_change(msg, self.config, self.chain_id, self._verifier,
                              self.params.log_window) is None:
            self._fault(msg.sender, f"invalid VIEW-CHANGE for view {b.new_view}")
            return
        bucket[msg.sender] = msg
        # Paper 4.5.2 liveness: join once f+1 replicas want a higher view.
        higher = {s for v, vcs in self._view_changes.items() if v > self.view for s in vcs}
        if len(higher) >= self.config.weak_quorum:
            self._start_view_change(min(v for v, vcs in self._view_changes.items()
                                        if v > self.view and vcs))
        self._arm_view_change_timer()
        self._maybe_send_new_view()

    def _maybe_send_new_view(self) -> None:
        if self.view_active or self.config.primary(self.view) != self.id:
            return
        vcs = self._view_changes.get(self.view, {})
        if self.id not in vcs or len(vcs) < self.config.quorum:
            return
        chosen = [vcs[self.id]] + [vcs[s] for s in sorted(vcs) if s != self.id]
        # Sorted by sender, as carried in the NEW-VIEW: backups recompute the proposals over
        # exactly this order, so ties between equal (view, digest) entries resolve alike.
        chosen = sorted(chosen[: self.config.quorum], key=lambda c: c.sender)
        bodies = [vc.body for vc in chosen if isinstance(vc.body, m.ViewChange)]
        if len(bodies) != len(chosen):
            raise ReplicaBug("a stored VIEW-CHANGE has another body type")
        _, proposals = new_view_proposals(bodies)
        pre_prepares = []
        for p in proposals:
            pp = self._sign_vote(m.PrePrepare(self.config.epoch, self.view, p.seq, p.root,
                                              p.count, p.timestamp_ms))
            if pp is None:
                raise ReplicaBug(f"already pre-prepared seq {p.seq} in view {self.view}")
            pre_prepares.append(pp)
        nv = self._sign(m.NewView(self.config.epoch, self.view, tuple(chosen),
                                  tuple(pre_prepares)))
        self._out.append(ev.Persist((nv,)))
        self._broadcast(nv)
        self._install_new_view(nv)

    def _on_new_view(self, msg: m.SignedMessage) -> None:
        b = msg.body
        assert isinstance(b, m.NewView)
        if b.new_view < self.view or (b.new_view == self.view and self.view_active):
            return
        if verify_new_view(msg, self.config, self.chain_id, self._verifier,
                           self.params.log_window) is None:
            self._fault(msg.sender, f"invalid NEW-VIEW for view {b.new_view}")
            return
        self._out.append(ev.Persist((msg,)))
        self._install_new_view(msg)

    def _install_new_view(self, nv_msg: m.SignedMessage) -> None:
        nv = nv_msg.body
        assert isinstance(nv, m.NewView)
        vcs = [vc.body for vc in nv.view_changes if isinstance(vc.body, m.ViewChange)]
        min_s = max(vc.stable_seq for vc in vcs)
        self.view = nv.new_view
        self.view_active = True
        self._new_view_msg = nv_msg
        self._cancel_timer(ev.TimerKind.VIEW_CHANGE)
        self._view_changes = {v: s for v, s in self._view_changes.items() if v > self.view}
        if min_s > self.stable_seq:
            holder = next(vc for vc in nv.view_changes
                          if isinstance(vc.body, m.ViewChange) and vc.body.stable_seq == min_s)
            body = holder.body
            assert isinstance(body, m.ViewChange)
            own = self._snapshots.get(min_s)
            proof = body.stable_proof
            if own is not None and proof and isinstance(proof[0].body, m.Checkpoint) and \
                    snapshot_digest(self.genesis, own) == proof[0].body.digest:
                self._make_stable(own, checkpoint_quorum(
                    proof, self.config, min_s, proof[0].body.digest, self.chain_id,
                    self._verifier))
            elif min_s > self.last_executed:
                holders = tuple(s.sender for s in proof) or (holder.sender,)
                self._catchup.prove(min_s, holders)
                self._request_state(holders)
        max_s = max((pp.body.seq for pp in nv.pre_prepares if isinstance(pp.body, m.PrePrepare)),
                    default=min_s)
        for s in [s for s in self._slots if s > max_s]:
            self._drop_slot(s)
        self._next_seq = max(max_s, self.last_executed) + 1
        self.pool.in_flight.clear()
        self._out.append(ev.ViewEntered(self.view, self.primary))
        for pp_msg in nv.pre_prepares:
            pp = pp_msg.body
            assert isinstance(pp, m.PrePrepare)
            if pp.seq <= self.last_executed or not self._in_window(pp.seq):
                continue
            slot = self._slot(pp.seq)
            self._adopt_pre_prepare(slot, pp_msg, pp)
            if not slot.has_contents(pp.digest):
                self._ask_batch(slot, pp.digest,
                                [vc.sender for vc in nv.view_changes] + [nv_msg.sender])
        self._after_leader_change()
        self._try_execute()

    # ---------------------------------------------------------------------------- timers

    def _on_timer(self, kind: ev.TimerKind, token: int) -> None:
        if self._timer_tokens.get(kind) != token:
            return  # stale: re-armed or cancelled since
        del self._timer_tokens[kind]
        if kind is ev.TimerKind.BATCH:
            self._maybe_propose(force=True)
        elif kind is ev.TimerKind.REQUEST:
            self._on_request_timer()
        elif kind is ev.TimerKind.VIEW_CHANGE:
            if not self.view_active:
                self._view_change_attempts += 1
                self._start_view_change(self.view + 1)
        elif kind is ev.TimerKind.STATUS:
            self._on_status_tick()

    def _on_request_timer(self) -> None:
        timed = self._timed_request
        if timed is not None and self._client_table.check(*timed)[0] is NonceStatus.STALE:
            self._arm_request_timer()  # it can never execute: time the next one
        elif timed in self.pool and self.view_active:
            if (self.last_executed > self._request_progress_mark
                    and self._request_patience_used < self.params.request_patience):
                # The primary is executing batches: a deep queue drains, give it time
                # (and do not flood peers with relays of requests it is getting to).
                self._request_patience_used += 1
                self._request_progress_mark = self.last_executed
                self._set_timer(ev.TimerKind.REQUEST, self.params.request_timeout_ms)
            elif not self._request_relayed:
                # First expiry without progress: the other backups may never have seen
                # these requests (a client reaches one validator). Relay them to everyone,
                # as the paper's client retransmission does, so that all backups time
                # them; vote for a view change only if they still wait one more period. A
                # replica that is merely slow thus does not leave the group alone.
                self._request_relayed = True
                waiting: list[m.Request] = []
                size = 0
                for _key, r, _tick in self.pool.items():
                    if len(waiting) >= self.params.batch_requests_max or \
                            size + r.size_bytes > self.params.batch_bytes_max:
                        break
                    waiting.append(r)
                    size += r.size_bytes
                self._broadcast(self._sign(m.RequestForward(tuple(waiting))))
                self._request_progress_mark = self.last_executed
                self._set_timer(ev.TimerKind.REQUEST, self.params.request_timeout_ms)
            else:
                self._start_view_change(self.view + 1)

    def _on_status_tick(self) -> None:
        self._tick += 1
        target, holders = self._catchup.target(self.last_executed)
        if target > self.last_executed:
            self._request_state(holders)
        if self.is_member or self.last_executed == 0:
            status = self._sign(m.Status(self.config.epoch, self.view, self.view_active,
                                         self.last_executed, self.stable_seq,
                                         0 if self._clock is None else self._clock.now_ms()))
            self._broadcast(status)
        self._watch_primary()
        if self.view_active:
            self._forward_pending(waited_only=True)
        self._fetch_missing_batches()
        self._set_timer(ev.TimerKind.STATUS, self.params.status_interval_ms)

    # ------------------------------------------------------------------- status: retransmission

    def _watch_primary(self) -> None:
        """The slow-primary monitor (see ProtocolParams.slow_primary_lag_ms).

        A member's delay is how much later than its fastest STATUS of the last `LAG_SAMPLES`
        its recent STATUS messages arrive: measured against its own best, a constant clock
        offset between it and us cancels out (clocks may differ by up to `clock_skew_ms_max`;
        an offset must not make an honest primary look slow). A primary that falls silent (it
        sends a STATUS every tick, busy or idle) is as late as its silence is long, so a stopped
        or cut-off primary is replaced in a few ticks, without waiting for a client's request to
        time out."""
        limit = self.params.slow_primary_lag_ms
        if (limit == 0 or self._clock is None or self.is_primary or not self.view_active
                or not self.is_member):
            self._slow_ticks = 0
            return
        now = self._clock.now_ms()

        def delay(peer: int) -> int | None:
            lags = self._lags.get(peer, [])
            heard = self._heard_ms.get(peer)
            silence = 0 if heard is None else now - heard - self.params.status_interval_ms
            if len(lags) < 3:
                return silence if silence > 0 else None
            recent = sorted(lags[-LAG_RECENT:])
            return max(recent[len(recent) // 2] - min(lags), silence)
        lag = delay(self.primary)
        others = [d for p in self.config.replica_ids
                  if p not in (self.primary, self.id) and (d := delay(p)) is not None]
        if lag is None or not others:
            self._slow_ticks = 0
            return
        usual = sorted(others)[len(others) // 2]
        if lag >= limit and lag >= 4 * max(usual, 0) + 100:
            self._slow_ticks += 1
        else:
            self._slow_ticks = 0
        if self._slow_ticks >= self.params.slow_primary_ticks:
            self._fault(self.primary, f"primary {self.primary} is slow: its STATUS arrives "
                                      f"{lag} ms later than its best, the others' {usual} ms")
            self._slow_ticks = 0
            self._lags.pop(self.primary, None)
            self._start_view_change(self.view + 1)

    def _status_under_former_key(self, sender: int, epoch: int) -> None:
        """A member still in an earlier epoch cannot authenticate us if our key changed since
        (it learns the new key only with the epoch it lags behind): tell it where we are under
        the key its epoch knows, once per tick, so that it counts us towards catching up. Only
        a claim: what it fetches then proves itself."""
        theirs = self.epoch_configs().get(epoch)
        key = None if theirs is None else theirs.key_of(self.id)
        signer = None if key is None else self._signers.get(key)
        if signer is None or key == self.config.key_of(self.id) or \
                self._retransmitted.get(sender) == (self._tick, True):
            return
        self._retransmitted[sender] = (self._tick, True)
        status = m.Status(self.config.epoch, self.view, self.view_active, self.last_executed,
                          self.stable_seq, 0 if self._clock is None else self._clock.now_ms())
        self._send(sender, codec.sign_message(signer, self.chain_id, self.id, status))

    def _on_status(self, sender: int, b: m.Status) -> None:
        """Retransmit what the sender lacks (our stand-in for the paper's reliable channels)."""
        if self._clock is not None:
            self._heard_ms[sender] = self._clock.now_ms()
        if b.sent_ms and self._clock is not None:
            lags = self._lags.setdefault(sender, [])
            lags.append(self._clock.now_ms() - b.sent_ms)
            del lags[:-LAG_SAMPLES]
        if b.epoch >= self.config.epoch:
            self._catchup.claim(sender, b.stable_seq)
        if b.epoch > self.config.epoch or b.stable_seq > self.last_executed:
            return  # it is ahead of us: our tick decides whether enough members say so
        if b.epoch < self.config.epoch:
            self._status_under_former_key(sender, b.epoch)
            return
        if b.last_executed < self.stable_seq:
            return  # it will ask us for state after our own STATUS
        previous = self._peer_executed.get(sender)
        self._peer_executed[sender] = b.last_executed
        stuck = previous is None or b.last_executed <= previous
        if self._retransmitted.get(sender) == (self._tick, stuck):
            return  # once per peer per tick: a replayed STATUS must not make us a flood source
        self._retransmitted[sender] = (self._tick, stuck)
        if b.stable_seq < self.stable_seq and self._stable_proof:
            for vote in self._stable_proof:
                self._send(sender, vote)
        # Our own votes for checkpoints it has not seen become stable: checkpoint messages
        # lost in a partition would otherwise stall everyone at the high watermark.
        for seq in sorted(self._checkpoint_votes):
            own = self._checkpoint_votes[seq].get(self.id)
            if seq > max(b.stable_seq, self.stable_seq) and own is not None:
                self._send(sender, own)
        budget = self.params.retransmit_seqs_max
        # Decided sequence numbers it lacks, only when it made no progress since its last
        # STATUS (a replica merely behind under load catches up by itself): the proposal
        # header and a commit certificate. Never the batch: the peer most likely has it
        # already (it lost a vote, not the proposal), and if not it asks (BATCH-REQUEST), so
        # retransmission costs a few hundred bytes per sequence number, whatever batches hold.
        seq = b.last_executed + 1
        while stuck and seq <= self.last_executed and budget > 0:
            slot = self._slots.get(seq)
            if slot is None:
                break
            cert = self._commit_certificate(slot)
            if cert is not None:
                view, digest, commits = cert
                self._send(sender, slot.proposal(view, digest))
                for c in commits:
                    self._send(sender, c)
            seq += 1
            budget -= 1
        if b.view < self.view or (b.view == self.view and not b.view_active):
            if self.view_active:
                self._resend_new_view(sender)
            elif not self.view_active and self.id in self._view_changes.get(self.view, {}):
                self._send(sender, self._view_changes[self.view][self.id])
            return
        if b.view != self.view or not self.view_active or not stuck:
            return
        # Same view, and it is stuck: resend our votes for in-progress sequences that have
        # been stuck a tick (headers only, as above).
        for seq in sorted(self._slots):
            if budget <= 0:
                break
            slot = self._slots[seq]
            if seq <= b.last_executed or slot.created_tick >= self._tick - 1:
                continue
            if slot.pre_prepare is not None and slot.view == self.view:
                self._send(sender, slot.pre_prepare)
            for table in (slot.prepares, slot.commits):
                own = Slot.own_vote(table, self.view, self.id)
                if own is not None:
                    self._send(sender, own)
            budget -= 1

    def _on_former_member_status(self, msg: m.SignedMessage, b: m.Status) -> None:
        """A replica removed in an epoch change it did not witness keeps gossiping to us. Answer
        (once per tick) with our stable checkpoint: its epoch history proves the removal, so the
        former member learns it is out instead of waiting forever."""
        if b.epoch >= self.config.epoch or self._stable_snapshot is None:
            return
        former = [self.genesis] + [EpochConfig(r.epoch, r.start_seq, r.members)
                                   for r in self._epoch_records]
        config = next((c for c in former if c.epoch == b.epoch), None)
        if config is None or not verify_signed(msg, config, self.chain_id, self._verifier):
            self._fault(msg.sender, "STATUS from a non-member")
            return
        if self._state_sent.get(msg.sender) == self._tick:
            return
        self._state_sent[msg.sender] = self._tick
        self._send(msg.sender, self._sign(m.StateResponse(self._stable_snapshot,
                                                          self._stable_proof)))

    def _resend_new_view(self, peer: int) -> None:
        """At most once per peer per status tick, so replayed old messages cannot turn this
        replica into an amplifier."""
        if self._new_view_msg is None or self._new_view_sent.get(peer) == self._tick:
            return
        self._new_view_sent[peer] = self._tick
        self._send(peer, self._new_view_msg)

    # ------------------------------------------------------------------------------ recovery

    def _recover(self, rec: Recovered) -> None:
        """Rebuild from what the driver persisted: stable snapshot, executed batches after it,
        every message this replica signed (so it never signs a conflicting one), and the
        batch of every proposal it accepted (persisted with the proposal before its PREPARE
        left: a prepared batch must survive even if every replica that holds it restarts,
        or a view change that re-proposes it could never execute)."""
        if rec.snapshot is not None:
            configs = verify_epoch_history(self.genesis, rec.snapshot.epochs, self.chain_id,
                                           self._verifier)
            if configs is None:
                raise ValueError("persisted snapshot has an unverifiable epoch history")
            snap = rec.snapshot
            self.last_executed = snap.seq
            self.state_digest = snap.state_digest
            self._client_table = ClientTable.from_entries(self.params.client_nonce_window,
                                                          snap.clients)
            self.pending_reconfiguration = snap.pending
            self.stable_seq = snap.seq
            self._stable_proof = rec.snapshot_proof
            self._stable_snapshot = snap
            self._epoch_records = snap.epochs
            self.config = configs[-1]
            self._catchup = CatchUp(self.config.weak_quorum)
            self._next_seq = snap.seq + 1
        for batch in sorted(rec.executed, key=lambda e: e.seq):
            if batch.seq <= self.last_executed:
                continue
            pp = batch.pre_prepare.body
            if not isinstance(pp, m.PrePrepare):
                raise ValueError("persisted executed batch lacks its pre-prepare")
            self._execute(batch.seq, pp.view, pp.digest, batch.requests, batch.pre_prepare,
                          batch.certificate, replay=True)
            # Keep what proves the batch until the next stable checkpoint: a lagging peer may
            # need this certificate retransmitted, and a view change may need it as a proof.
            slot = self._slot(batch.seq)
            slot.remember_header(batch.pre_prepare)
            if not any(r.is_stub for r in batch.requests):  # stubs are never sent on
                slot.remember_batch(pp.root, batch.requests)
            for c in batch.certificate:
                if isinstance(c.body, m.Commit):
                    slot.commits.setdefault((c.body.view, c.sender, c.body.digest), c)
        self._out.clear()
        self._next_seq = max(self._next_seq, self.last_executed + 1)
        max_view, active = 0, True
        for msg in _with_new_view_pre_prepares(rec.messages):
            b = msg.body
            if isinstance(b, (m.PrePrepare, m.Prepare, m.Commit)):
                if b.epoch != self.config.epoch:
                    continue
                if msg.sender == self.id:
                    self._own[(_VOTE_TYPE[type(b)], b.epoch, b.view, b.seq)] = b.digest
                    if b.view > max_view or (b.view == max_view and not active):
                        max_view, active = b.view, True
                    if isinstance(b, m.PrePrepare):
                        self._next_seq = max(self._next_seq, b.seq + 1)
                        self._last_proposal_ms = max(self._last_proposal_ms, b.timestamp_ms)
                if b.seq <= self.last_executed or not self._in_window(b.seq):
                    continue
                slot = self._slot(b.seq)
                if isinstance(b, m.PrePrepare):
                    slot.remember_header(msg)
                    if msg.batch is not None and batch_root(msg.batch) == b.root:
                        slot.remember_batch(b.root, msg.batch)
                    if b.view >= slot.view:
                        slot.pre_prepare = dataclasses.replace(msg, batch=None)
                elif isinstance(b, m.Prepare):
                    slot.prepares.setdefault((b.view, msg.sender, b.digest), msg)
                else:
                    slot.commits.setdefault((b.view, msg.sender, b.digest), msg)
            elif isinstance(b, m.ViewChange) and b.epoch == self.config.epoch:
                if msg.sender == self.id and b.new_view > max_view:
                    max_view, active = b.new_view, False
                    self._view_changes.setdefault(b.new_view, {})[self.id] = msg
            elif (isinstance(b, m.NewView) and b.epoch == self.config.epoch
                  and (b.new_view > max_view or (b.new_view == max_view and not active))):
                max_view, active = b.new_view, True
                self._new_view_msg = msg
        self.view = max_view
        self.view_active = active
        nv = None if self._new_view_msg is None else self._new_view_msg.body
        if isinstance(nv, m.NewView) and (not self.view_active or nv.new_view != self.view):
            self._new_view_msg = None
        self._out.clear()
