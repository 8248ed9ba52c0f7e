"""What goes into a replica (events) and what comes out (actions).

The driver must carry out actions in the order given. `Persist`, `PersistSnapshot` and `Execute`
must be durable before any later `Send` leaves the process ("durability before speech"): that is
what stops a restarted replica from signing something that conflicts with what it signed before.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from consortium.pbft.membership import EpochConfig
from consortium.pbft.messages import Request, SignedMessage, Snapshot


class TimerKind(enum.Enum):
    BATCH = "batch"
    """Primary: cut a partial batch."""
    REQUEST = "request"
    """Backup: the oldest known request waited too long; start a view change."""
    VIEW_CHANGE = "view-change"
    """No NEW-VIEW arrived in time; try the next view."""
    STATUS = "status"
    """Gossip progress to peers."""


# --------------------------------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A client submitted a request to this replica."""

    request: Request
    retry: bool = False
    """The client already sent it (to the primary) and got no answer in time: it suspects the
    primary, so a backup takes the request in, relays it and times it (paper 4.1: a client
    that times out broadcasts to all replicas). A first submission to a backup is answered
    with NOT_PRIMARY instead, naming the primary."""


@dataclass(frozen=True, slots=True)
class PeerMessage:
    """Raw bytes from a peer connection. The replica decodes and verifies them itself."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TimerFired:
    kind: TimerKind
    token: int
    """The token of the `SetTimer` that armed it; a stale token is ignored."""


Event = ClientRequest | PeerMessage | TimerFired


# -------------------------------------------------------------------------------------- actions

@dataclass(frozen=True, slots=True)
class Send:
    to: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    """Signed messages that must be durable before anything later is sent: this replica's own
    votes and the proof it acted on (a prepared certificate before its COMMIT)."""

    messages: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class PersistSnapshot:
    """A stable checkpoint. The driver may now forget persisted messages at or below `seq`."""

    snapshot: Snapshot
    proof: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class Execute:
    """Apply a committed batch. `executed` are the requests that take effect, in order; the rest
    of the batch were duplicates or invalid and are skipped by every honest replica alike."""

    seq: int
    view: int
    epoch: int
    digest: bytes
    requests: tuple[Request, ...]
    executed: tuple[Request, ...]
    pre_prepare: SignedMessage
    """The proposal header (signed by the primary of `view`, or of an earlier view that
    proposed the same batch): root, count and timestamp of the batch."""
    certificate: tuple[SignedMessage, ...]
    """2f+1 signed COMMITs for (view, seq, digest): checkable offline against the epoch's keys."""
    state_digest: bytes


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """State transfer: the replica jumped to a verified stable checkpoint. The application must
    fetch and verify the blocks up to `snapshot.seq` before relying on them."""

    snapshot: Snapshot
    proof: tuple[SignedMessage, ...]


@dataclass(frozen=True, slots=True)
class SetTimer:
    kind: TimerKind
    token: int
    delay_ms: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: TimerKind


class RejectReason(enum.Enum):
    STALE = "stale"
    """The nonce is below the client's replay window."""
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_CLIENT = "unknown-client"
    TOO_LARGE = "too-large"
    OVERLOADED = "overloaded"
    """Too many requests or bytes pending (in total or for this client): retry later."""
    NOT_PRIMARY = "not-primary"
    """A first submission reached a backup: send it to the primary (`RejectRequest.primary`)."""


@dataclass(frozen=True, slots=True)
class RejectRequest:
    request: Request
    reason: RejectReason
    primary: int | None = None
    """The current primary, with NOT_PRIMARY (a redirect)."""


@dataclass(frozen=True, slots=True)
class AlreadyExecuted:
    """A retried request that already executed: answer with the original result at `seq`."""

    request: Request
    seq: int


@dataclass(frozen=True, slots=True)
class ViewEntered:
    view: int
    primary: int


@dataclass(frozen=True, slots=True)
class EpochEntered:
    config: EpochConfig


@dataclass(frozen=True, slots=True)
class PeerFault:
    """A peer sent something invalid. For logs and metrics; the replica already ignored it."""

    sender: int | None
    reason: str


Action = (Send | Persist | PersistSnapshot | Execute | InstallSnapshot | SetTimer | CancelTimer
          | RejectRequest | AlreadyExecuted | ViewEntered | EpochEntered | PeerFault)
