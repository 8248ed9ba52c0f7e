"""Client submissions at a validator: checks on arrival, and answers per block.

A submission is checked before it is ordered, with the rules execution applies
(`ledger.blocks.envelope_problem`; for a join request also `ledger.blocks.judge_governance`, as
of this validator's head block), so the client gets a precise error naming the item; its
decoded items are kept on the request (`Request.memo`) and not decoded again at execution.

Waiting callers are registered by (client, nonce) with a *sink*. When a round's blocks are
durable, each sink gets one call per block with all of its requests that block committed: a
stream answers with one reply per (stream, block), header and certificate once and a proof per
request (`SubmitReply.receipts`), never echoing a request back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from consortium.crypto.signing import Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    ClientOrgs,
    Governance,
    Parsed,
    Rules,
    envelope_problem,
    judge_governance,
    parse_request,
)
from consortium.ledger.items import record_id
from consortium.ledger.transactions import JoinRequest, applicant_key
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.wire import block_receipts_of, block_receipts_to_proto, pb

Key = tuple[str, int]

REJECT_CODES = {
    ev.RejectReason.BAD_SIGNATURE: grpc.StatusCode.UNAUTHENTICATED,
    ev.RejectReason.UNKNOWN_CLIENT: grpc.StatusCode.UNAUTHENTICATED,
    ev.RejectReason.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ev.RejectReason.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ev.RejectReason.STALE: grpc.StatusCode.FAILED_PRECONDITION,
    ev.RejectReason.NOT_PRIMARY: grpc.StatusCode.FAILED_PRECONDITION,
}
REJECT_MESSAGES = {
    ev.RejectReason.BAD_SIGNATURE: "bad request signature (or signed for another chain)",
    ev.RejectReason.UNKNOWN_CLIENT: "unknown client",
    ev.RejectReason.TOO_LARGE: "the request is over the size limit",
    ev.RejectReason.OVERLOADED: ("too many requests or bytes in flight (this client's share or "
                                 "the validator's); retry later"),
    ev.RejectReason.STALE: "the nonce is below this client's replay window",
    ev.RejectReason.NOT_PRIMARY: "not the primary",
}


class SubmitFailed(Exception):
    """A submission answered with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, message: str, *,
                 original: pb.BlockReceipts | None = None, primary: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.original = original
        self.primary = primary


class Sink(Protocol):
    """Where the outcome of waiting requests goes."""

    def committed(self, block: Block, indexes: list[int]) -> None: ...

    def failed(self, key: Key, error: SubmitFailed) -> None: ...

    def already(self, request: m.Request) -> None:
        """The request executed before (a replay): answer with where it committed."""


@dataclass
class _Waiting:
    digest: bytes
    sink: Sink
    size: int


class Submissions:
    """The requests this validator was asked to answer, by (client, nonce)."""

    def __init__(self) -> None:
        self._waiting: dict[Key, list[_Waiting]] = {}
        self.bytes = 0
        """Request bytes waiting for their commit (all callers)."""

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, r: m.Request, sink: Sink) -> None:
        self._waiting.setdefault(r.key, []).append(_Waiting(r.digest, sink, r.size_bytes))
        self.bytes += r.size_bytes

    def discard(self, key: Key, sink: Sink) -> None:
        waiting = self._waiting.get(key)
        if not waiting:
            return
        for w in [w for w in waiting if w.sink is sink]:
            waiting.remove(w)
            self.bytes -= w.size
        if not waiting:
            del self._waiting[key]

    def _take(self, key: Key) -> list[_Waiting]:
        waiting = self._waiting.pop(key, [])
        self.bytes -= sum(w.size for w in waiting)
        return waiting

    def committed(self, blocks: Sequence[Block]) -> None:
        """Blocks are durable: each sink hears once per block about its requests in it."""
        if not self._waiting:
            return
        for block in blocks:
            per_sink: dict[int, tuple[Sink, list[int]]] = {}
            for env in block.envelopes:
                for w in self._take(env.key) if env.key in self._waiting else ():
                    if w.digest == env.digest:
                        per_sink.setdefault(id(w.sink), (w.sink, []))[1].append(env.index)
                    else:
                        w.sink.failed(env.key, SubmitFailed(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"nonce {env.nonce} of {env.client_id} was used by another request "
                            f"(committed at height {block.header.height}); sign again with a "
                            "fresh nonce"))
            for sink, indexes in per_sink.values():
                sink.committed(block, indexes)

    def rejected(self, r: m.Request, reason: ev.RejectReason, primary: int | None) -> None:
        for w in self._take(r.key):
            if w.digest != r.digest:
                self._waiting.setdefault(r.key, []).append(w)
                self.bytes += w.size
                continue
            w.sink.failed(r.key, SubmitFailed(
                REJECT_CODES[reason],
                f"not the primary: send to validator {primary}" if primary is not None
                else f"request rejected: {REJECT_MESSAGES[reason]}", primary=primary))

    def already_executed(self, r: m.Request) -> None:
        for w in self._take(r.key):
            w.sink.already(r)

    def fail_all(self, message: str) -> None:
        """Answer every waiting caller UNAVAILABLE (the validator lost its database)."""
        for key in list(self._waiting):
            for w in self._take(key):
                w.sink.failed(key, SubmitFailed(grpc.StatusCode.UNAVAILABLE, message))


# --------------------------------------------------------------------------------- checks

class RateLimit:
    """At most `limit` distinct keys in any `window_s` seconds (a key seen again inside the
    window costs nothing: a replayed request does not use up the quota)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[bytes, float] = {}

    def take(self, key: bytes, now: float) -> bool:
        self._seen = {k: t for k, t in self._seen.items() if t > now - self.window_s}
        if key in self._seen:
            return True
        if len(self._seen) >= self.limit:
            return False
        self._seen[key] = now
        return True


APPLICANT_REQUESTS_PER_MINUTE = 30
"""Distinct join requests (from applicants, who need no standing) one validator takes per
minute; a replayed request is not counted again."""


@dataclass
class SubmissionRules:
    """What a validator checks a submission against on arrival (the same rules as execution,
    as of its current ledger state)."""

    chain_id: bytes
    verifier: Verifier
    orgs: ClientOrgs
    gov: Governance
    """The current epoch's (its validator set judges join requests)."""
    rules: Rules
    applicants: RateLimit = field(default_factory=lambda: RateLimit(
        APPLICANT_REQUESTS_PER_MINUTE, 60.0))
    membership: ms.MembershipState = ms.EMPTY
    """The membership proposals as of this validator's head block."""
    block_ms: int = 0
    """The head block's time: join requests are judged as of it (a pending one expires by
    certified block time, never by this validator's clock)."""


def check_signature(req: m.Request, key: bytes | None,
                    rules: SubmissionRules) -> SubmitFailed | None:
    """Why a submission is not a request this validator takes from anyone (with the status
    to answer), or None: what is checked before asking whether it was executed already. A
    request signed with a revoked or replaced key is refused naming the change (as of this
    validator's head; execution decides alike for one that gets through)."""
    if req.kind is not m.RequestKind.APPLICATION:
        return SubmitFailed(grpc.StatusCode.PERMISSION_DENIED,
                            "clients submit application requests only")
    changed = rules.orgs.key_states.get(req.client_id)
    if changed is not None:
        signed = m.request_signing_bytes(rules.chain_id, req.digest)
        if changed.revoked_by is not None or (
                not rules.verifier.verify(changed.key, signed, req.signature)
                and any(rules.verifier.verify(k, signed, req.signature) for k in changed.keys)):
            return SubmitFailed(grpc.StatusCode.UNAUTHENTICATED, changed.refusal())
    if key is None:
        return SubmitFailed(grpc.StatusCode.UNAUTHENTICATED, f"unknown client {req.client_id!r}")
    if not rules.verifier.verify(key, m.request_signing_bytes(rules.chain_id, req.digest),
                                 req.signature):
        return SubmitFailed(grpc.StatusCode.UNAUTHENTICATED,
                            "bad request signature (or another chain)")
    return None


def check_content(req: m.Request, rules: SubmissionRules) -> SubmitFailed | None:
    """Why a new, correctly signed submission must be refused now (with the status to
    answer), or None."""
    parsed = parse_request(req)
    problem = envelope_problem(req, parsed, rules.orgs, rules.gov, rules.rules,
                               int(time.time() * 1000))
    if problem:
        code = grpc.StatusCode.PERMISSION_DENIED if (
            "applicants submit" in problem or "does not belong" in problem
            or "advises or votes" in problem) else grpc.StatusCode.INVALID_ARGUMENT
        return SubmitFailed(code, problem)
    problem = _join_problem(req, parsed or [], rules)
    if problem:
        code = grpc.StatusCode.FAILED_PRECONDITION if ms.SLOTS_TAKEN in problem \
            else grpc.StatusCode.INVALID_ARGUMENT
        return SubmitFailed(code, problem)
    if applicant_key(req.client_id) is not None and \
            not rules.applicants.take(req.digest, time.monotonic()):
        return SubmitFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this validator takes at most {APPLICANT_REQUESTS_PER_MINUTE} "
                            "distinct join requests a minute; retry later")
    return None


def _join_problem(req: m.Request, parsed: list[Parsed], rules: SubmissionRules) -> str:
    """Why one of the request's join requests would be refused if it executed on top of this
    validator's head ("" when none would): execution's own judgement (sponsorship, free slots,
    expiry, taken ids and keys), on a copy of the proposals, as of the head's block time. The
    block that executes it is no earlier, so a request refused here for want of a slot may
    pass later, and one taken in here may still be refused at execution if the ledger moved."""
    proposals: dict[str, ms.Proposal] | None = None
    for k, p in enumerate(parsed):
        if not isinstance(p.tx, JoinRequest):
            continue
        if proposals is None:
            proposals = dict(rules.membership.proposals)
        problem = judge_governance(p.tx, req.client_id, record_id(req.digest, k), proposals,
                                   rules.orgs, rules.gov, rules.rules, rules.chain_id,
                                   rules.block_ms)
        if problem:
            return f"item {k}: {problem}"
    return ""


# ---------------------------------------------------------------------------------- sinks

class UnarySink:
    """One SubmitRecord call waiting for its request."""

    def __init__(self) -> None:
        self.future: asyncio.Future[pb.BlockReceipts] = \
            asyncio.get_running_loop().create_future()
        self.request: m.Request | None = None
        self.on_already: asyncio.Future[m.Request] | None = None

    def committed(self, block: Block, indexes: list[int]) -> None:
        if not self.future.done():
            self.future.set_result(block_receipts_to_proto(block_receipts_of(block, indexes)))

    def failed(self, key: Key, error: SubmitFailed) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def already(self, request: m.Request) -> None:
        if not self.future.done():
            self.future.set_exception(_Replayed(request))


class _Replayed(Exception):
    """Internal: the request executed before; the caller looks up where."""

    def __init__(self, request: m.Request) -> None:
        super().__init__("already executed")
        self.request = request


Replayed = _Replayed


class StreamSink:
    """One SubmitStream: replies per (stream, block), errors per request."""

    def __init__(self, bytes_max: int) -> None:
        self.replies: asyncio.Queue[pb.SubmitReply | None] = asyncio.Queue()
        self.bytes = 0
        self.bytes_max = bytes_max
        self.sizes: dict[Key, int] = {}
        self._room = asyncio.Event()
        self._room.set()
        self.replayed: asyncio.Queue[m.Request] = asyncio.Queue()

    async def reserve(self, key: Key, size: int) -> None:
        """Wait until this stream has room for `size` more bytes in flight (gRPC flow control
        then slows the client)."""
        while self.bytes and self.bytes + size > self.bytes_max:
            self._room.clear()
            await self._room.wait()
        self.bytes += size
        self.sizes[key] = self.sizes.get(key, 0) + size

    def release(self, key: Key) -> None:
        size = self.sizes.pop(key, 0)
        self.bytes -= size
        self._room.set()

    def committed(self, block: Block, indexes: list[int]) -> None:
        for i in indexes:
            self.release(block.envelopes[i].key)
        self.replies.put_nowait(pb.SubmitReply(
            receipts=block_receipts_to_proto(block_receipts_of(block, indexes))))

    def failed(self, key: Key, error: SubmitFailed) -> None:
        self.release(key)
        self.replies.put_nowait(pb.SubmitReply(error=error_to_proto(key, error)))

    def already(self, request: m.Request) -> None:
        self.replayed.put_nowait(request)


def error_to_proto(key: Key, error: SubmitFailed) -> pb.SubmitError:
    out = pb.SubmitError(client_id=key[0], nonce=key[1], code=error.code.value[0],
                         message=error.message, redirect=error.primary is not None,
                         primary=error.primary or 0)
    if error.original is not None:
        out.original.CopyFrom(error.original)
    return out
