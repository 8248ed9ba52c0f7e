"""Protocol messages: frozen, slotted dataclasses, validated on construction.

Peer messages travel inside a `SignedMessage` (sender, body, Ed25519 signature). The signature
covers a domain tag, the chain id, the sender and the canonical body bytes (see codec.py), so a
message signed for one chain or one purpose can never be replayed as another.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.merkle import EMPTY_ROOT
from consortium.crypto.signing import SIGNATURE_BYTES
from consortium.pbft.membership import Member
from consortium.pbft.payload import payload_digest

CLIENT_ID_BYTES_MAX = 128
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
"""Refused in client ids: they are stored as PostgreSQL text (which holds no NUL), printed in
logs and audit reports, and an id that looks like another on a terminal is a forgery aid."""


class RequestKind(enum.IntEnum):
    APPLICATION = 0
    """An opaque application operation (a ledger record, a vote...)."""
    RECONFIGURATION = 1
    """A validator-set change; payload is an encoded `Reconfiguration` approved by a quorum."""


def _check_digest(name: str, value: bytes) -> None:
    if len(value) != DIGEST_BYTES:
        raise ValueError(f"{name} must be {DIGEST_BYTES} bytes")


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} out of range")


@dataclass(frozen=True, slots=True)
class Request:
    """A client's signed operation. (client_id, nonce) identifies it; it executes at most once."""

    client_id: str
    nonce: int
    kind: RequestKind
    payload: bytes
    signature: bytes
    digest: bytes = field(init=False, repr=False, compare=False)
    payload_digest: bytes = field(init=False, repr=False, compare=False)
    """`payload.payload_digest(payload)`: an envelope's digest over its items' Merkle root."""
    memo: dict[str, object] = field(init=False, repr=False, compare=False)
    """What the application derived from the payload (the ledger's decoded envelope items),
    computed once per validator when the request is admitted or decoded and handed on to
    execution, instead of decoding the same bytes again at every stage."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "memo", {})
        raw_id = self.client_id.encode()
        if not 1 <= len(raw_id) <= CLIENT_ID_BYTES_MAX:
            raise ValueError(f"client id must be 1 to {CLIENT_ID_BYTES_MAX} bytes")
        if CONTROL_CHARACTERS.search(self.client_id):
            raise ValueError("client id must not contain control characters")
        _check_u64("nonce", self.nonce)
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("a request signature is 64 bytes")
        pd = payload_digest(self.payload)
        object.__setattr__(self, "payload_digest", pd)
        object.__setattr__(self, "digest", request_digest_from(self.client_id, self.nonce,
                                                               self.kind, pd))

    @classmethod
    def stub(cls, client_id: str, nonce: int, kind: RequestKind, payload_digest_: bytes,
             signature: bytes) -> Request:
        """A request known by its payload digest only (a ledger keeps no payload for a
        replayed envelope or for an erased item): enough to replay execution after a restart
        (keys, kinds and digests), never to be sent or re-proposed (`is_stub`)."""
        r = cls(client_id, nonce, kind, b"", signature)
        _check_digest("payload digest", payload_digest_)
        object.__setattr__(r, "payload_digest", payload_digest_)
        object.__setattr__(r, "digest", request_digest_from(client_id, nonce, kind,
                                                            payload_digest_))
        r.memo["stub"] = True
        return r

    @property
    def is_stub(self) -> bool:
        return "stub" in self.memo

    @property
    def key(self) -> tuple[str, int]:
        return (self.client_id, self.nonce)

    @property
    def size_bytes(self) -> int:
        return len(self.payload) + len(self.client_id.encode()) + 80


def request_digest(client_id: str, nonce: int, kind: int, payload: bytes) -> bytes:
    """The request's identity and what its client signs (with the chain id). It commits to the
    payload through `payload_digest`, so withheld payload segments keep it verifiable."""
    return request_digest_from(client_id, nonce, kind, payload_digest(payload))


def request_digest_from(client_id: str, nonce: int, kind: int, digest_of_payload: bytes) -> bytes:
    return tagged_hash(b"consortium/request", client_id.encode(), nonce.to_bytes(8, "big"),
                       bytes([kind]), digest_of_payload)


def request_signing_bytes(chain_id: bytes, digest: bytes) -> bytes:
    """What a client signs: the request digest bound to one chain."""
    return tagged_hash(b"consortium/request-signature", chain_id, digest)


# ----------------------------------------------------------------------------- peer message bodies


BATCH_COUNT_MAX = (1 << 32) - 1


def proposal_digest(root: bytes, count: int, timestamp_ms: int) -> bytes:
    """What PREPAREs, COMMITs and a block's certificate sign for a batch: its Merkle root over
    the request digests, its size (so a proof's tree size is certified) and the primary's
    timestamp (so block time is certified and no client moves it)."""
    return tagged_hash(b"consortium/batch", root, count.to_bytes(4, "big"),
                       timestamp_ms.to_bytes(8, "big"))


NULL_DIGEST = proposal_digest(EMPTY_ROOT, 0, 0)
"""The digest of a null batch (no requests, no time): what a NEW-VIEW re-proposes at a
sequence number no VIEW-CHANGE proves prepared."""


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """The primary's proposal (paper 4.2) as signed: a header that commits to the batch through
    its Merkle root and size. The batch itself travels beside the signed header
    (`SignedMessage.batch`), so what view changes carry, what the consensus log keeps and what a
    block stores for its proposal is this header alone, whatever the batch holds (the paper's
    digest optimisation for large requests, applied to every batch)."""

    epoch: int
    view: int
    seq: int
    root: bytes
    """Merkle root over the batch's request digests (`state.batch_root`)."""
    count: int
    """Number of requests in the batch."""
    timestamp_ms: int
    """The primary's clock when it proposed (0 for a null batch a NEW-VIEW fills in): the
    block's certified time. Backups refuse a proposal far from their own clock."""
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_u64("view", self.view)
        _check_u64("seq", self.seq)
        _check_u64("timestamp_ms", self.timestamp_ms)
        _check_digest("root", self.root)
        if not 0 <= self.count <= BATCH_COUNT_MAX:
            raise ValueError("batch count out of range")
        if self.count == 0 and self.root != EMPTY_ROOT:
            # An empty batch needs no attachment to be "held", so its root must be the one an
            # empty batch has: otherwise a primary could have a block certified whose root
            # matches no contents.
            raise ValueError("an empty batch has the empty Merkle root")
        object.__setattr__(self, "digest", proposal_digest(self.root, self.count,
                                                           self.timestamp_ms))


@dataclass(frozen=True, slots=True)
class Prepare:
    epoch: int
    view: int
    seq: int
    digest: bytes

    def __post_init__(self) -> None:
        _check_u64("view", self.view)
        _check_u64("seq", self.seq)
        _check_digest("digest", self.digest)


@dataclass(frozen=True, slots=True)
class Commit:
    epoch: int
    view: int
    seq: int
    digest: bytes

    def __post_init__(self) -> None:
        _check_u64("view", self.view)
        _check_u64("seq", self.seq)
        _check_digest("digest", self.digest)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    epoch: int
    seq: int
    digest: bytes
    """Digest of the replica's `Snapshot` after executing `seq`."""

    def __post_init__(self) -> None:
        _check_u64("seq", self.seq)
        _check_digest("digest", self.digest)


@dataclass(frozen=True, slots=True)
class PreparedProof:
    """A pre-prepare plus a quorum of matching votes: either 2f PREPAREs from distinct backups, or
    2f+1 COMMITs (each honest committer had prepared, so a commit quorum proves it too)."""

    pre_prepare: SignedMessage
    votes: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    epoch: int
    new_view: int
    stable_seq: int
    stable_proof: tuple[SignedMessage, ...]
    """The 2f+1 CHECKPOINT messages that make `stable_seq` stable (empty for sequence 0 of an
    epoch's start, which is certified by the epoch history)."""
    prepared: tuple[PreparedProof, ...]


@dataclass(frozen=True, slots=True)
class NewView:
    epoch: int
    new_view: int
    view_changes: tuple[SignedMessage, ...]
    pre_prepares: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class Status:
    """Progress gossip; peers answer with what the sender lacks (retransmission)."""

    epoch: int
    view: int
    view_active: bool
    last_executed: int
    stable_seq: int
    sent_ms: int = 0
    """The sender's clock when it sent this STATUS (0: no clock): backups compare how late the
    primary's STATUS arrives with how late the others' do (the slow-primary monitor)."""


@dataclass(frozen=True, slots=True)
class RequestForward:
    """Client requests relayed to the primary (and, on timeout, to everyone)."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class StateRequest:
    """Ask for a stable checkpoint above `after_seq` (the asker's last executed sequence): any
    peer whose stable checkpoint is higher answers with it, so one peer that lied about its
    progress cannot leave the asker waiting for a checkpoint nobody holds."""

    after_seq: int


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Ask for the batch behind `digest` at `seq`: a replica that holds a proposal header (from
    a NEW-VIEW, a commit certificate or its own log) but not the requests fetches them. The
    answer is any PRE-PREPARE of this epoch with that digest, with its batch attached; the batch
    is checked against the header's Merkle root, so it needs no trust in who sent it."""

    epoch: int
    seq: int
    digest: bytes

    def __post_init__(self) -> None:
        _check_u64("seq", self.seq)
        _check_digest("digest", self.digest)


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """Per-client replay state: executed nonces inside the window and where each executed."""

    client_id: str
    executed: tuple[tuple[int, int], ...]
    """(nonce, seq) pairs, sorted by nonce."""


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """How one epoch was certified: the checkpoint that opened it, signed by the previous epoch.

    `previous_state_digest` and `clients_digest` let a verifier recompute the checkpoint digest the
    proof signs and check that it commits to `members`.
    """

    epoch: int
    start_seq: int
    members: tuple[Member, ...]
    state_digest: bytes
    clients_digest: bytes
    proof: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class PendingReconfiguration:
    effective_seq: int
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The replicated state of the consensus layer after executing `seq`.

    The state digest chains every executed batch digest, so it also pins the application's log.
    """

    seq: int
    state_digest: bytes
    epochs: tuple[EpochRecord, ...]
    clients: tuple[ClientEntry, ...]
    pending: PendingReconfiguration | None


@dataclass(frozen=True, slots=True)
class StateResponse:
    snapshot: Snapshot
    proof: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class Reconfiguration:
    """A new validator set approved by a quorum of the current epoch's members."""

    from_epoch: int
    members: tuple[Member, ...]
    approvals: tuple[tuple[int, bytes], ...]
    """(replica_id, signature over `reconfiguration_signing_bytes`)."""


def reconfiguration_signing_bytes(chain_id: bytes, from_epoch: int,
                                  members: tuple[Member, ...]) -> bytes:
    parts = [chain_id, from_epoch.to_bytes(8, "big")]
    parts += [m.replica_id.to_bytes(4, "big") + m.public_key for m in members]
    return tagged_hash(b"consortium/reconfiguration", *parts)


Body = (PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | Status
        | RequestForward | StateRequest | StateResponse | BatchRequest)


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A peer message as it travels: `wire` is its exact encoding (see codec.py)."""

    sender: int
    body: Body
    signature: bytes
    body_bytes: bytes = field(repr=False)
    wire: bytes = field(repr=False, compare=False)
    """The signed message alone (never with a batch attached): what is persisted and nested."""
    batch: tuple[Request, ...] | None = field(default=None, repr=False, compare=False)
    """A PRE-PREPARE's batch, when it arrived with one (unsigned: checked against `root`)."""
