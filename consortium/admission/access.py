"""What the admission service may reveal, and to whom.

Its answers are derived from payloads, so it answers only members, and a patient record's
findings only to a reader of the record, against an Access of the caller's own on the ledger
(issue 12, finding 3). These functions judge that from the subject's ledger history; they do
no I/O (`read_quorum` only picks whom to ask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grpc

from consortium.client.core import ClientCore
from consortium.ledger.blocks import ACCESS_DENIED
from consortium.ledger.items import ItemView
from consortium.ledger.transactions import TEXT_BYTES_MAX, Access, Erase, RecordTx, Revoke
from consortium.wire import Receipt, pb


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """A member's client that signed a ReadAuth for the Admission service."""

    client_id: str
    org: str


@dataclasses.dataclass(frozen=True, slots=True)
class SubjectEvent:
    """One recorded transaction on a record of a subject, as one validator lists it
    (ListSubject): what `check_read` needs to know about reads, revocations and erasures."""

    tx_id: str
    height: int
    client_id: str
    action: RecordTx
    reason: str
    """The executing validator's reason ("" when it took effect; ACCESS_DENIED for a refused
    read)."""
    receipt: pb.Receipt
    """Its receipt, to verify when this is the Access an answer is given against."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReadCheck:
    """`check_read`'s outcome: the caller's Access an answer may be given against, or the
    status and one-line reason of the refusal."""

    access: SubjectEvent | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    problem: str = ""


def answer_purpose(caller: Caller, access_id: str) -> str:
    """The purpose of the service's own read of a payload for a ScreenRecord answer: it names
    the caller's Access (so the access log links the two, and that Access is used up) and the
    caller when that fits the ledger's purpose limit."""
    long = f"screening for {caller.client_id} (access {access_id})"
    return long if len(long.encode()) <= TEXT_BYTES_MAX else f"screening (access {access_id})"


def check_read(events: Sequence[SubjectEvent], caller: Caller, record_id: str,
               service_client: str, now_ms: int, ttl_ms: int) -> ReadCheck:
    """Whether one validator's list of a subject's transactions lets the service answer
    `caller` with what it derives from `record_id`'s payload: an Access by the caller's own
    client to that record that the ledger granted (the caller's organisation was a reader when
    it executed), made within `ttl_ms` of `now_ms` by its signed time, not followed by a
    revocation of that organisation or the record's erasure, and not yet used by an answer
    (the service's own read for an answer names the Access it answered against: one Access,
    one answer). The same rules as a validator's release of a patient record's key
    (`GetRecord` with `access_id`), so ScreenRecord reveals nothing the caller could not
    decrypt itself, and every answer is a read of the caller's on the ledger."""
    granted: list[SubjectEvent] = []
    denied = False
    answered: list[str] = []
    for ev in events:
        a = ev.action
        if a.record_id != record_id:
            continue
        if isinstance(a, Erase) and ev.reason == "":
            return ReadCheck(code=grpc.StatusCode.FAILED_PRECONDITION,
                             problem=f"record {record_id} was erased")
        if isinstance(a, Revoke) and a.org == caller.org and ev.reason == "":
            granted.clear()
            denied = True
        elif isinstance(a, Access) and ev.client_id == service_client:
            answered.append(a.purpose)
        elif isinstance(a, Access) and ev.client_id == caller.client_id:
            if ev.reason == "":
                granted.append(ev)
                denied = False
            elif ev.reason == ACCESS_DENIED:
                denied = True
    if denied:
        return ReadCheck(code=grpc.StatusCode.PERMISSION_DENIED,
                         problem=f"{caller.org} is not a reader of record {record_id}")
    fresh = [ev for ev in granted if isinstance(ev.action, Access)
             and abs(now_ms - ev.action.requested_at_ms) <= ttl_ms]
    unused = [ev for ev in fresh if not any(ev.tx_id in p for p in answered)]
    if unused:
        return ReadCheck(access=unused[-1])
    ttl_s = ttl_ms // 1000
    if fresh:
        return ReadCheck(code=grpc.StatusCode.FAILED_PRECONDITION,
                         problem=f"access {fresh[-1].tx_id} already answered a screening: "
                                 "commit a new Access to ask again")
    if granted:
        return ReadCheck(code=grpc.StatusCode.FAILED_PRECONDITION,
                         problem=f"the Access of {caller.client_id} to record {record_id} is "
                                 f"older than {ttl_s} s: commit a new one")
    return ReadCheck(code=grpc.StatusCode.FAILED_PRECONDITION,
                     problem=f"no Access of {caller.client_id} to record {record_id} on the "
                             f"ledger: a patient record is screened for its readers only, "
                             f"within {ttl_s} s of an Access of theirs (the SDK's access())")


def read_quorum(core: ClientCore) -> tuple[list[str], int]:
    """Who confirms a caller's read, and how many must: the validators of the latest epoch
    this client verified from genesis (not every address it ever learnt: a removed validator
    still answering is no longer counted), f+1 of them."""
    config = core.epochs[max(core.epochs)]
    addresses = [core.validators[r] for r in config.replica_ids if r in core.validators]
    return addresses, config.f + 1


def shown_segments(r: Receipt) -> list[bytes | None]:
    """The segments of a receipt's item (withheld ones as None)."""
    view = r.item if isinstance(r.item, ItemView) else ItemView.of(r.item)
    return view.present()
