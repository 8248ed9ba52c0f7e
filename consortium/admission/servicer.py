"""The Admission gRPC service: review a join request, screen a record, report the backlog.

It answers members only (a ReadAuth signed by a member's client key) and no more than the
caller may read (`admission.access`); the screening itself is the `Screener`'s.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, NoReturn

import grpc
import structlog

from consortium.admission import backends as b
from consortium.admission import triage
from consortium.admission.access import (
    Caller,
    ReadCheck,
    answer_purpose,
    check_read,
    read_quorum,
)
from consortium.admission.model import JoinRequest, Verdict
from consortium.client.core import SubmitError
from consortium.client.sync import ConsortiumClient
from consortium.config import Genesis
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.reads import read_signing_bytes
from consortium.ledger.records import RecordKind
from consortium.wire import pb, pb_grpc

if TYPE_CHECKING:
    from consortium.admission.service import Screener

log = structlog.get_logger("consortium.admission")

READ_CATCH_UP_S = 5.0
"""How long ScreenRecord waits for more validators to show a caller's Access that one already
shows (a validator a block or two behind the one the caller submitted to)."""
READ_RETRY_S = 0.2


class AdmissionServicer(pb_grpc.AdmissionServicer):
    """The Admission gRPC API. Every answer goes to a member only, and only as far as the
    caller may read what it is derived from: a join review judges the caller's own text
    against the membership (members know it); a provenance record's verdict comes from
    public metadata (every member reads it, as ListScreening shows); a patient record's
    verdict comes from its payload, so only a reader gets it, each time against an Access of
    its own on the ledger (`check_read`), confirmed by f+1 validators (one lying validator
    cannot make the service decrypt for a non-reader). GetBacklog has no ReadAuth in its
    request: it says counts, the backend, and the kind of the last error, never its text."""

    def __init__(self, screener: Screener, genesis: Genesis,
                 catch_up_s: float = READ_CATCH_UP_S) -> None:
        self.screener = screener
        self.genesis = genesis
        self.catch_up_s = catch_up_s
        self._answered: dict[str, float] = {}
        """Access ids this process has answered against (monotonic time): two concurrent
        calls cannot both use one Access before the first answer's read is on the ledger."""
        self._answered_lock = threading.Lock()

    def _member(self, auth: pb.ReadAuth, method: str, argument: str,
                context: grpc.ServicerContext) -> Caller:
        """The member whose client signed `auth` for (method, argument) within the read clock
        skew, or abort with UNAUTHENTICATED."""
        member = self.screener.members.get(auth.client_id)
        now = int(time.time() * 1000)
        signed = read_signing_bytes(self.genesis.chain_id_bytes, auth.client_id,
                                         auth.timestamp_ms, method, argument)
        if member is None or \
                abs(now - auth.timestamp_ms) > self.genesis.policy.read_clock_skew_ms or \
                not Ed25519Verifier().verify(member[1], signed, bytes(auth.signature)):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "the admission service answers members only (a ReadAuth signed by "
                          "a member's client key)")
        assert member is not None
        return Caller(auth.client_id, member[0])

    def ReviewJoin(self, request, context):  # type: ignore[no-untyped-def]
        self._member(request.auth, "ReviewJoin", request.request_id, context)
        if not request.request_id or not request.org or len(request.statement) > 16_384:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "request_id and org are required; statement at most 16 KiB")
        now = int(time.time() * 1000)
        verdict = self.screener.reviewer.review_join(
            JoinRequest(request.request_id, request.org, request.endpoint, "", "", "",
                        request.statement, (), now),
            self.screener.join_context(now))
        return pb.VerdictReply(verdict_json=verdict.to_json(), decision=verdict.decision,
                               risk=verdict.risk)

    def ScreenRecord(self, request, context):  # type: ignore[no-untyped-def]
        caller = self._member(request.auth, "ScreenRecord", request.record_id, context)
        record_id = request.record_id
        if len(record_id) != 64 or not set(record_id) <= set("0123456789abcdef"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a record id is 64 lowercase hex digits (got {len(record_id)} "
                          "characters)")
        s = self.screener
        try:
            public = s.client.get(record_id)
        except SubmitError as exc:
            _abort_ledger(context, exc)
        if public.kind == RecordKind.PROVENANCE.value:
            verdict = self._judge(context, record_id, public.kind)
        else:
            if public.erasure is not None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"record {record_id} was erased")
            access_id = self._confirmed_read(caller, record_id, public.subject_id, context)
            if not self._claim(access_id):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"access {access_id} already answered a screening: commit a "
                              "new Access to ask again")
            try:
                verdict = self._judge(context, record_id, public.kind,
                                      purpose=answer_purpose(caller, access_id))
            except BaseException:
                self._release(access_id)  # not answered: the Access is still the caller's
                raise
            log.info("screening answered", record=record_id[:16], caller=caller.client_id,
                     access=access_id[:16])
        return pb.VerdictReply(verdict_json=verdict.to_json(), decision=verdict.decision,
                               risk=verdict.risk)

    def _judge(self, context: grpc.ServicerContext, record_id: str, kind: str,
               purpose: str = "screening") -> Verdict:
        try:
            return self.screener.judge(record_id, kind, purpose=purpose, remember=False)
        except SubmitError as exc:
            _abort_ledger(context, exc)
        except b.BackendError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the reviewer failed: {exc.kind}")
            raise AssertionError("unreachable: abort raises") from exc

    def _confirmed_read(self, caller: Caller, record_id: str, subject_id: str,
                        context: grpc.ServicerContext) -> str:
        """The id of the caller's Access that f+1 validators show answerable (`check_read`),
        or abort. f+1 because the service decrypts for the caller on their word: one lying
        validator must not be enough. Validators that do not show an Access one of them
        shows are asked again for READ_CATCH_UP_S (they may be a block behind)."""
        s = self.screener
        addresses, need = read_quorum(s.client.core)
        client_of_service = self.genesis.admission_client or ""
        confirmed: dict[str, str] = {}
        """validator -> the Access it shows answerable (its receipt verified)."""
        refusals: dict[str, ReadCheck] = {}
        pending = list(addresses)
        deadline = time.monotonic() + self.catch_up_s
        while True:
            for addr in pending:
                try:
                    events = s.subject_events(subject_id, addr)
                except SubmitError:
                    continue
                check = check_read(events, caller, record_id, client_of_service,
                                   int(time.time() * 1000), self.genesis.policy.access_ttl_ms)
                access = check.access
                if access is None:
                    refusals[addr] = check
                    confirmed.pop(addr, None)
                    continue
                try:  # against its epoch's validator set (fetched from genesis when new)
                    s.client.verify_receipt(access.receipt, access.tx_id, addr)
                except SubmitError as exc:
                    log.warning("a validator showed an access that does not verify",
                                validator=addr, access=access.tx_id, error=str(exc)[:300])
                    continue
                refusals.pop(addr, None)
                confirmed[addr] = access.tx_id
                if sum(1 for x in confirmed.values() if x == access.tx_id) >= need:
                    return access.tx_id
            votes = collections.Counter(confirmed.values())
            if not votes or time.monotonic() > deadline:
                break
            leader = votes.most_common(1)[0][0]
            pending = [a for a in addresses if confirmed.get(a) != leader]
            time.sleep(READ_RETRY_S)
        if not refusals:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "not enough validators answered to confirm the caller's read; "
                          "retry")
        denied = [c for c in refusals.values() if c.code == grpc.StatusCode.PERMISSION_DENIED]
        worst = denied[0] if denied else next(iter(refusals.values()))
        context.abort(worst.code, worst.problem)
        raise AssertionError("unreachable: abort raises")

    def _claim(self, access_id: str) -> bool:
        now = time.monotonic()
        ttl_s = self.genesis.policy.access_ttl_ms / 1000
        with self._answered_lock:
            for old in [a for a, t in self._answered.items() if now - t > 2 * ttl_s]:
                del self._answered[old]  # past its TTL the Access answers nothing anyway
            if access_id in self._answered:
                return False
            self._answered[access_id] = now
            return True

    def _release(self, access_id: str) -> None:
        with self._answered_lock:
            self._answered.pop(access_id, None)

    def GetBacklog(self, request, context):  # type: ignore[no-untyped-def]
        s = self.screener
        stats = s.reviewer.stats
        return pb.BacklogReply(pending=s.pending, verdicts_posted=s.posted, errors=s.errors,
                               backend=s.reviewer.backend.name,
                               model=getattr(s.reviewer.backend, "model", ""),
                               last_error=s.last_error,
                               model_sha256=s.reviewer.backend.model_sha256,
                               latency_p50_ms=stats.percentile(0.5),
                               latency_p95_ms=stats.percentile(0.95),
                               model_reviews=stats.count("model:"),
                               model_busy=stats.count(triage.MODEL_BUSY),
                               model_per_poll=s.model_per_poll)


def _abort_ledger(context: grpc.ServicerContext, exc: SubmitError) -> NoReturn:
    """Answer a failed ledger read: NOT_FOUND and INVALID_ARGUMENT are about the caller's
    request; anything else (the service's own credentials, validators down) is the service
    being unable to answer now."""
    if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        context.abort(exc.code, str(exc).splitlines()[0][:300] if str(exc) else exc.code.name)
    context.abort(grpc.StatusCode.UNAVAILABLE, "the ledger did not answer the admission "
                                               "service; retry")
    raise AssertionError("unreachable: abort raises")


def screen_record(client: ConsortiumClient, stub: pb_grpc.AdmissionStub, record_id: str, *,
                  purpose: str = "screening", timeout_s: float = 120.0) -> pb.VerdictReply:
    """The caller's side of ScreenRecord: for a patient record, commit this organisation's
    Access first (the read the answer is logged under; logged as refused when the caller is
    no reader, and the service then refuses too), then ask. Raises SubmitError when the
    ledger refuses, grpc.RpcError when the service does."""
    record = client.get(record_id)
    if record.kind == RecordKind.PATIENT.value:
        client.access(record_id, purpose)
    reply: pb.VerdictReply = stub.ScreenRecord(
        pb.ScreenRecordRequest(record_id=record_id,
                               auth=client.core.read_auth("ScreenRecord", record_id)),
        timeout=timeout_s)
    return reply

