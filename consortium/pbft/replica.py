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

This file is the core: the normal case (4.2: PRE-PREPARE, PREPARE, COMMIT, execution), the epoch
switch, the timers and the dispatch of events, over the state every phase reads (configuration,
view, slots, the executed prefix, the stable checkpoint). The other responsibilities are parts the
replica composes, each a small class holding a reference to it and whatever state only it uses;
each module's docstring says what of the replica it may touch: `intake.py` (client requests, the
backup's request timer), `batching.py` (when the primary proposes, and what), `fetch.py` (missing
batches), `checkpoints.py` (4.3), `views.py` (4.4), `transfer.py` (state transfer), `retransmit.py`
(answers to STATUS), `monitor.py` (the slow-primary monitor), `future.py` (messages for a later
view or epoch); `recovery.py` (restart from durable state) is a function the constructor runs once.
The pure parts: `viewchange.py` (VIEW-CHANGE/NEW-VIEW checks and computation), `state.py` (digests,
client table, proofs), `slots.py` (per-sequence storage), `pool.py` (pending requests and their
limits), `catchup.py` (who to ask for state).

Size: what stays here is the core state machine (the three phases on a slot, execution and the
epoch switch), which shares the slots, watermarks and view state; every part with a job of its
own is one of the modules named above.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from consortium.crypto.signing import Signer, Verifier
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.batching import Batcher
from consortium.pbft.catchup import CatchUp
from consortium.pbft.checkpoints import Checkpoints
from consortium.pbft.errors import ReplicaBug
from consortium.pbft.fetch import BatchFetch
from consortium.pbft.future import FutureBuffer
from consortium.pbft.intake import RequestIntake
from consortium.pbft.membership import EpochConfig
from consortium.pbft.monitor import SlowPrimaryMonitor
from consortium.pbft.params import ProtocolParams
from consortium.pbft.pool import RequestPool
from consortium.pbft.recovery import ExecutedBatch, Recovered, recover
from consortium.pbft.retransmit import Retransmission
from consortium.pbft.slots import VOTE_TYPE, VOTES_PER_SLOT_PER_MEMBER, Slot, VoteKey, header
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    ClientTable,
    NonceStatus,
    approved_reconfiguration,
    batch_root,
    next_state_digest,
    verify_signed,
)
from consortium.pbft.transfer import StateTransfer
from consortium.pbft.views import ViewChanger

__all__ = ["ClientRegistry", "Clock", "ExecutedBatch", "Recovered", "Replica", "ReplicaBug"]


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


def _durable_proposal(msg: m.SignedMessage,
                      batch: tuple[m.Request, ...] | None) -> m.SignedMessage:
    """A proposal header to persist, with its batch attached when it has requests."""
    return dataclasses.replace(msg, batch=batch) if batch else msg


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
        self.pool = RequestPool(params.pending_requests_max, params.pending_bytes_max,
                                params.client_pending_bytes_max)
        """Known requests not executed yet (read-only outside the replica)."""

        self._view_changes: dict[int, dict[int, m.SignedMessage]] = {}
        self._new_view_msg: m.SignedMessage | None = None
        self._own: dict[tuple[int, int, int, int], bytes] = {}
        """(message type, epoch, view, seq) -> digest this replica signed: never sign another."""
        self._view_change_attempts = 0

        self._timer_tokens: dict[ev.TimerKind, int] = {}
        self._token_counter = 0
        self._tick = 0
        self._future = FutureBuffer(params)
        self._catchup = CatchUp(genesis.weak_quorum)
        # The parts this replica composes (module docstring): each holds the replica and the
        # state only it uses.
        self._batcher = Batcher(self)
        self._fetch = BatchFetch(self)
        self._intake = RequestIntake(self)
        self._transfer = StateTransfer(self)
        self._monitor = SlowPrimaryMonitor(self)
        self._retransmit = Retransmission(self)
        self._views = ViewChanger(self)
        self._checkpoints = Checkpoints(self)

        self._out: list[ev.Action] = []
        if recovered is not None:
            recover(self, recovered)

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
        self._views.arm_view_change_timer()
        self._intake.arm_request_timer()
        return self._flush()

    def step(self, event: ev.Event) -> list[ev.Action]:
        if isinstance(event, ev.ClientRequest):
            self._intake.on_client_request(event.request, forwarded=False, retry=event.retry)
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

    def adopt_snapshot(self, snap: m.Snapshot, proof: tuple[m.SignedMessage, ...]) -> None:
        """Take a verified stable checkpoint's state as this replica's (recovery and state
        transfer alike; what else each must reset is theirs)."""
        self.last_executed = snap.seq
        self.state_digest = snap.state_digest
        self._client_table = ClientTable.from_entries(self.params.client_nonce_window,
                                                      snap.clients)
        self.pending_reconfiguration = snap.pending
        self.stable_seq = snap.seq
        self._stable_proof = proof
        self._stable_snapshot = snap
        self._epoch_records = snap.epochs

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
        key = (VOTE_TYPE[type(body)], body.epoch, body.view, body.seq)
        previous = self._own.get(key)
        if previous is not None and previous != body.digest:
            return None
        self._own[key] = body.digest
        return self._sign(body)

    # -------------------------------------------------------------- watermarks, proposals

    def _epoch_limit(self) -> int:
        """Highest sequence number the current epoch may order."""
        if self.pending_reconfiguration is not None:
            return self.pending_reconfiguration.effective_seq
        return 1 << 62

    def _high_watermark(self) -> int:
        return min(self.stable_seq + self.params.log_window, self._epoch_limit())

    def _propose(self, batch: tuple[m.Request, ...]) -> None:
        """Primary: sign, persist and send a PRE-PREPARE for `batch` at the next sequence
        number (`Batcher` decides when, and what the batch holds)."""
        seq = self._next_seq
        body = m.PrePrepare(self.config.epoch, self.view, seq, batch_root(batch), len(batch),
                            self._batcher.proposal_time())
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

    def _replay_future(self) -> None:
        for msg in self._future.take():
            self._on_signed(msg)

    def _on_signed(self, msg: m.SignedMessage) -> None:
        b = msg.body
        if isinstance(b, m.StateResponse):
            self._transfer.on_state_response(msg.sender, b)  # self-certifying: proofs checked
            return
        if isinstance(b, m.Status) and not self.config.is_member(msg.sender):
            self._transfer.on_former_member_status(msg, b)
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
                self._future.add(msg)
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
            self._checkpoints.on_checkpoint(msg, b)
        elif isinstance(b, m.ViewChange):
            self._views.on_view_change(msg, b)
        elif isinstance(b, m.NewView):
            self._views.on_new_view(msg)
        elif isinstance(b, m.Status):
            self._monitor.heard(msg.sender, b)
            self._retransmit.on_status(msg.sender, b)
        elif isinstance(b, m.RequestForward):
            for r in b.requests[: self.params.batch_requests_max]:
                self._intake.on_client_request(r, forwarded=True)
        elif isinstance(b, m.StateRequest):
            self._transfer.on_state_request(msg.sender, b)
        elif isinstance(b, m.BatchRequest):
            self._fetch.on_batch_request(msg.sender, b)

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
                if self._intake.verify_request(r) is not None:
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
            self._future.add(msg)
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
            self._fetch.ask_batch(slot, b.digest, (msg.sender,))
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
        self._intake.arm_request_timer()
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
            self._future.add(msg)
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
            self._future.add(msg)
            return
        slot = self._slot(b.seq)
        if self._store_vote(slot, slot.commits, msg, b):
            self._try_execute()

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
                missing = self._fetch.missing_batch(slot)
                if missing is not None and slot.fetch_attempts == 0:
                    self._fetch.ask_batch(slot, missing[0], missing[1])  # then once per tick
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
            self._checkpoints.take_checkpoint(seq, replay=replay)
        if not replay:
            timed = self._intake.timed_request
            if timed is not None and timed not in self.pool:
                self._cancel_timer(ev.TimerKind.REQUEST)
            self._intake.arm_request_timer()
            self._batcher.maybe_propose()

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

    # ------------------------------------------------------------------------ epoch change

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
        self._monitor.leader_changed()
        self.pool.queue.clear()
        if self.is_primary:
            self.pool.requeue_all()
            self._cancel_timer(ev.TimerKind.REQUEST)
            self._intake.timed_request = None
            self._batcher.maybe_propose()
        else:
            self._intake.forward_pending(waited_only=False)
            self._cancel_timer(ev.TimerKind.REQUEST)
            self._intake.arm_request_timer()
        self._replay_future()

    # ---------------------------------------------------------------------------- timers

    def _on_timer(self, kind: ev.TimerKind, token: int) -> None:
        if self._timer_tokens.get(kind) != token:
            return  # stale: re-armed or cancelled since
        del self._timer_tokens[kind]
        if kind is ev.TimerKind.BATCH:
            self._batcher.maybe_propose(force=True)
        elif kind is ev.TimerKind.REQUEST:
            self._intake.on_request_timer()
        elif kind is ev.TimerKind.VIEW_CHANGE:
            if not self.view_active:
                self._view_change_attempts += 1
                self._views.start_view_change(self.view + 1)
        elif kind is ev.TimerKind.STATUS:
            self._on_status_tick()

    def _on_status_tick(self) -> None:
        self._tick += 1
        target, holders = self._catchup.target(self.last_executed)
        if target > self.last_executed:
            self._transfer.request_state(holders)
        if self.is_member or self.last_executed == 0:
            status = self._sign(m.Status(self.config.epoch, self.view, self.view_active,
                                         self.last_executed, self.stable_seq,
                                         0 if self._clock is None else self._clock.now_ms()))
            self._broadcast(status)
        self._monitor.watch_primary()
        if self.view_active:
            self._intake.forward_pending(waited_only=True)
        self._fetch.fetch_missing_batches()
        self._set_timer(ev.TimerKind.STATUS, self.params.status_interval_ms)
