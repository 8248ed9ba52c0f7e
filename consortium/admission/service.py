"""The admission service process: screens every committed record, posts signed verdicts.

    consortium admission serve --config DIR/admission/config.json

It is a client of the ledger (its key is genesis' `admission_client`) and a gRPC server
(`Admission`: review a join request, screen a record, report the backlog; gRPC health).

Screening works from the ledger's own queue: every record is committed first (durable,
ordered) with status `pending-screening`; the service asks any validator for that queue
(`ListScreening`), judges each record (rules, then the model: `review.Reviewer`) and submits a
Verdict transaction. The verdict only moves a record out of pending-screening (ok -> accepted,
flag -> quarantined); validators' votes decide what happens to a quarantined record. A queue
query never misses a record, so a service that was down or slow catches up when it returns,
and nothing is silently accepted meanwhile.

Patient payloads are read only when the submitter wrapped the record key for the service, and
every such read is an Access transaction on the ledger first (the SDK's `get(decrypt=True)`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consortium.admission import backends as b
from consortium.admission.model import (
    JoinContext,
    JoinRequest,
    PatientRecordInput,
    ProvenanceEvent,
    RecentSubmission,
    RecordContext,
    Registry,
    Verdict,
)
from consortium.admission.review import Reviewer
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client.nonces import ClockNonces
from consortium.client.sdk import ConsortiumClient, Identity, SubmitError
from consortium.config import ConfigError, Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.formats.directory import EMPTY_DIRECTORY, Gs1Directory
from consortium.ledger.records import decode_public
from consortium.ledger.transactions import RequestView
from consortium.localnet import read_seed
from consortium.node import wire

log = structlog.get_logger("consortium.admission")

RECENT_WINDOW_MS = 10 * 60_000
"""Patient records remembered for the duplicate and burst rules."""
BATCH_MAX = 32
HEALTH_SERVICE = "consortium.v1.Admission"
"""Health of the screening itself ("" is the process): NOT_SERVING while no validator answers
or while the backlog has stayed above one batch for BEHIND_GRACE_S (records wait, never lost:
an alert, not a failure)."""
BEHIND_GRACE_S = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceConfig:
    directory: Path
    """The consortium directory (genesis.json, ca/ca.crt, admission/ keys)."""
    backend: str = "embedded"
    model: str | None = None
    url: str | None = None
    api_key_env: str = "CONSORTIUM_ADMISSION_API_KEY"
    timeout_s: float = 60.0
    threads: int = 2
    parallel: int = 1
    listen: str = "127.0.0.1:7400"
    poll_ms: int = 500
    allow_remote_patient_data: bool = False
    known_locations: tuple[str, ...] = ()
    local_endpoints: bool = False
    """Validators of this consortium run on loopback addresses (a local consortium): the join
    rule that refuses unreachable endpoints accepts them."""

    @classmethod
    def load(cls, path: Path) -> ServiceConfig:
        try:
            data = json.loads(path.read_text())
            base = path.parent
            return cls(
                directory=(base / data.get("directory", "..")).resolve(),
                backend=str(data.get("backend", "embedded")), model=data.get("model"),
                url=data.get("url"),
                api_key_env=str(data.get("api_key_env", "CONSORTIUM_ADMISSION_API_KEY")),
                timeout_s=float(data.get("timeout_s", 60.0)),
                threads=int(data.get("threads", 2)), parallel=int(data.get("parallel", 1)),
                listen=str(data.get("listen", "127.0.0.1:7400")),
                poll_ms=int(data.get("poll_ms", 500)),
                allow_remote_patient_data=bool(data.get("allow_remote_patient_data", False)),
                known_locations=tuple(str(x) for x in data.get("known_locations", ())),
                local_endpoints=bool(data.get("local_endpoints", False)))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: malformed admission config: {exc}") from exc

    def make_backend(self) -> b.Backend:
        if self.backend == "rules":
            return b.RulesBackend()
        if self.backend == "openai":
            if not self.url or not self.model:
                raise ConfigError("the openai backend needs url and model")
            return b.OpenAIBackend(b.OpenAIConfig(self.url, self.model,
                                                  api_key_env=self.api_key_env,
                                                  timeout_s=self.timeout_s))
        if self.backend == "embedded":
            return b.EmbeddedBackend(self.model or b.DEFAULT_MODEL, threads=self.threads,
                                     parallel=self.parallel, timeout_s=self.timeout_s)
        raise ConfigError(f"unknown backend {self.backend!r} (embedded, openai, rules)")


def service_identity(directory: Path, genesis: Genesis) -> Identity:
    """The admission service's client identity (DIR/admission/: client.key, encryption.key).
    Its nonces come from the clock: the service is the identity's only user and may run with
    a read-only directory (a container)."""
    if genesis.admission_client is None:
        raise ConfigError("genesis names no admission service (admission_client)")
    adir = directory / "admission"
    org = genesis.admission_org
    assert org is not None
    return Identity(genesis.admission_client, org,
                    Ed25519Signer(read_seed(adir / "client.key")),
                    envelope.OrgKeyPair(read_seed(adir / "encryption.key")),
                    ClockNonces())


class Screener:
    """Judges records from the ledger's pending-screening queue and posts the verdicts."""

    def __init__(self, client: ConsortiumClient, reviewer: Reviewer, genesis: Genesis,
                 known_locations: tuple[str, ...] = (), loopback_ok: bool = False,
                 directory: Gs1Directory = EMPTY_DIRECTORY) -> None:
        self.client = client
        self.directory = directory
        """The members' GS1 identities (which member an EPCIS party, site or prefix is)."""
        self.loopback_ok = loopback_ok
        """A local consortium: validators on loopback addresses are reachable."""
        self.reviewer = reviewer
        self.registry = Registry(frozenset(o.org_id for o in genesis.member_orgs),
                                 frozenset(known_locations))
        self.recent: collections.deque[RecentSubmission] = collections.deque()
        self.posted = 0
        self.errors = 0
        self.pending = 0
        self.last_error = ""
        self._in_flight: set[str] = set()
        self.reached_ledger = True
        self._behind_since: float | None = None

    def keeping_up(self, now: float) -> bool:
        """The health signal: the ledger answers, and the backlog has not stayed above one
        batch for longer than BEHIND_GRACE_S."""
        if self.pending < BATCH_MAX:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        behind = self._behind_since is not None and now - self._behind_since > BEHIND_GRACE_S
        return self.reached_ledger and not behind

    def once(self) -> int:
        """Screen what is pending now; returns how many verdicts were posted."""
        queue = self.client.list_screening("pending-screening", limit=BATCH_MAX)
        self.pending = len(queue.records)
        done = 0
        for entry in queue.records:
            try:
                verdict = self.judge(entry.record_id, entry.kind)
                receipt = self.client.verdict(entry.record_id, verdict.decision, verdict.risk,
                                              verdict.to_json())
                log.info("verdict posted", record=entry.record_id[:16], kind=entry.kind,
                         decision=verdict.decision, risk=verdict.risk,
                         latency_ms=verdict.latency_ms, height=receipt.height,
                         outcome=receipt.reason)
                self.posted += 1
                done += 1
            except (SubmitError, b.BackendError, ValueError) as exc:
                self.errors += 1
                self.last_error = str(exc)[:300]
                log.warning("screening failed; the record stays pending", record=entry.record_id,
                            error=self.last_error)
        return done

    def review_joins(self) -> int:
        """Review the join requests on the ledger that have no verdict yet; post the advice
        (approve / reject / review) as a verdict on the request."""
        reply = self.client.list_members()
        admitted = {p.org for p in reply.proposals
                    if p.kind == "join" and p.status == "approved"}
        if not admitted <= self.registry.known_orgs:  # their records name known parties now
            self.registry = dataclasses.replace(
                self.registry, known_orgs=self.registry.known_orgs | admitted)
        done = 0
        for p in reversed(reply.proposals):  # oldest first
            if p.kind != "join" or p.status != "pending" or p.verdicts:
                continue
            try:
                verdict = self.judge_join(p, reply)
                receipt = self.client.verdict(p.proposal_id, verdict.decision, verdict.risk,
                                              verdict.to_json())
            except (SubmitError, b.BackendError, ValueError) as exc:
                self.errors += 1
                self.last_error = str(exc)[:300]
                log.warning("join review failed; the request stays unreviewed",
                            request=p.proposal_id, error=self.last_error)
                continue
            log.info("join verdict posted", request=p.proposal_id[:16], org=p.org,
                     decision=verdict.decision, risk=verdict.risk,
                     latency_ms=verdict.latency_ms, height=receipt.height)
            self.posted += 1
            done += 1
        return done

    def judge_join(self, p: pb.ProposalInfo, members: pb.MembersReply) -> Verdict:
        """The applicant's statement is its own words: free text, or a JSON application
        ({"statement", "sector", "country", "contact_email", "sponsors"}); either way data for
        the reviewer, never instructions."""
        fields: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            parsed = json.loads(p.statement)
            if isinstance(parsed, dict):
                fields = parsed
        now = int(time.time() * 1000)
        request = JoinRequest(
            p.proposal_id, p.name or p.org, p.peer_address, str(fields.get("sector", "")),
            str(fields.get("country", "")), str(fields.get("contact_email", "")),
            str(fields.get("statement", p.statement)),
            tuple(str(x) for x in fields.get("sponsors", ()) if isinstance(x, str)), now)
        orgs = set(self.registry.known_orgs) | {x.org for x in members.validators if x.org}
        endpoints = frozenset(x.peer_address for x in members.validators if x.peer_address)
        return self.reviewer.review_join(
            request, JoinContext(frozenset(orgs), endpoints, now, self.loopback_ok))

    def judge(self, record_id: str, kind: str) -> Verdict:
        now_ms = int(time.time() * 1000)
        if kind == "provenance":
            event, history = self._provenance(record_id)
            return self.reviewer.screen_record(
                event, RecordContext(history=tuple(history), registry=self.registry,
                                     now_ms=now_ms, directory=self.directory))
        record = self._patient(record_id)
        while self.recent and self.recent[0].submitted_at_ms < now_ms - RECENT_WINDOW_MS:
            self.recent.popleft()
        verdict = self.reviewer.screen_record(
            record, RecordContext(recent=tuple(self.recent), registry=self.registry,
                                  now_ms=now_ms))
        self.recent.append(RecentSubmission.of(record))
        return verdict

    def _provenance(self, record_id: str) -> tuple[ProvenanceEvent, list[ProvenanceEvent]]:
        """The record and the earlier events of its lot, from verified receipts."""
        rec = self.client.get(record_id)
        reply, _ = self.client.list_subject("provenance", rec.subject_id)
        history: list[ProvenanceEvent] = []
        for e in reply.entries:
            r = wire.receipt_from_proto(e.receipt, self.client.core.chain_id)
            if r.record_id == record_id:
                break
            if r.status != "recorded" or e.target_record_id:
                continue
            view = r.request if isinstance(r.request, RequestView) else \
                RequestView.of(r.request)
            seg0 = view.present()[0]
            if seg0 is None:
                continue
            p = decode_public(seg0)
            history.append(ProvenanceEvent.from_metadata(
                r.record_id, p.subject_id, p.event_type, p.submitter_org, p.submitted_at_ms,
                dict(p.metadata), self.directory))
        event = ProvenanceEvent.from_metadata(record_id, rec.subject_id, rec.event_type,
                                              rec.submitter_org, rec.submitted_at_ms,
                                              rec.metadata, self.directory)
        return event, history

    def _patient(self, record_id: str) -> PatientRecordInput:
        """The record's public part; its payload too when the submitter wrapped the key for
        the service (the read is an Access transaction on the ledger first)."""
        public = self.client.get(record_id)
        payload: Any = None
        try:
            payload = self.client.get(record_id, decrypt=True, purpose="screening").payload
        except SubmitError:
            payload = None  # not wrapped for the service: the metadata alone is screened
        return PatientRecordInput(record_id, public.subject_id, public.event_type,
                                  public.submitter_org, public.submitted_at_ms,
                                  tuple(sorted(public.metadata.items())),
                                  payload if isinstance(payload, dict) else None)


class AdmissionServicer(pb_grpc.AdmissionServicer):
    def __init__(self, screener: Screener, genesis: Genesis) -> None:
        self.screener = screener
        self.genesis = genesis

    def _member(self, auth: pb.ReadAuth, method: str, argument: str,
                context: grpc.ServicerContext) -> None:
        key = self.genesis.client_keys().get(auth.client_id)
        now = int(time.time() * 1000)
        signed = wire.read_signing_bytes(self.genesis.chain_id_bytes, auth.client_id,
                                         auth.timestamp_ms, method, argument)
        if key is None or abs(now - auth.timestamp_ms) > self.genesis.policy.read_clock_skew_ms \
                or not Ed25519Verifier().verify(key, signed, bytes(auth.signature)):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "the admission service answers members only (signed ReadAuth)")

    def ReviewJoin(self, request, context):  # type: ignore[no-untyped-def]
        self._member(request.auth, "ReviewJoin", request.request_id, context)
        if not request.request_id or not request.org or len(request.statement) > 16_384:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "request_id and org are required; statement at most 16 KiB")
        members = frozenset(o.org_id for o in self.genesis.member_orgs)
        endpoints = frozenset(v.peer_address for v in self.genesis.validators)
        verdict = self.screener.reviewer.review_join(
            JoinRequest(request.request_id, request.org, request.endpoint, "", "", "",
                        request.statement, (), int(time.time() * 1000)),
            JoinContext(members, endpoints, int(time.time() * 1000)))
        return pb.VerdictReply(verdict_json=verdict.to_json(), decision=verdict.decision,
                               risk=verdict.risk)

    def ScreenRecord(self, request, context):  # type: ignore[no-untyped-def]
        self._member(request.auth, "ScreenRecord", request.record_id, context)
        try:
            reply = self.screener.client.get(request.record_id)
            verdict = self.screener.judge(request.record_id, reply.kind)
        except SubmitError as exc:
            code = exc.code if exc.code is not None else grpc.StatusCode.UNAVAILABLE
            context.abort(code, str(exc))
        return pb.VerdictReply(verdict_json=verdict.to_json(), decision=verdict.decision,
                               risk=verdict.risk)

    def GetBacklog(self, request, context):  # type: ignore[no-untyped-def]
        s = self.screener
        return pb.BacklogReply(pending=s.pending, verdicts_posted=s.posted, errors=s.errors,
                               backend=s.reviewer.backend.name,
                               model=getattr(s.reviewer.backend, "model", ""),
                               last_error=s.last_error)


def serve(config: ServiceConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    genesis = Genesis.load(config.directory / "genesis.json")
    identity = service_identity(config.directory, genesis)
    ca = (config.directory / "ca" / "ca.crt").read_bytes()
    backend = config.make_backend()
    reviewer = Reviewer(backend, allow_remote_patient_data=config.allow_remote_patient_data)
    client = ConsortiumClient(genesis, identity, ca)
    screener = Screener(client, reviewer, genesis, config.known_locations,
                        config.local_endpoints)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AdmissionServicer_to_server(AdmissionServicer(screener, genesis), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    adir = config.directory / "admission"
    creds = grpc.ssl_server_credentials(
        [((adir / "tls.key").read_bytes(), (adir / "tls.crt").read_bytes())])
    server.add_secure_port(config.listen, creds)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    log.info("admission service serving", listen=config.listen, backend=backend.name)
    try:
        while not stop.is_set():
            try:
                posted = screener.once() + screener.review_joins()
                screener.reached_ledger = True
            except SubmitError as exc:  # no validator answered: keep trying
                screener.last_error = str(exc)[:300]
                screener.reached_ledger = False
                posted = 0
            health_servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING
                                if screener.keeping_up(time.monotonic())
                                else health_pb2.HealthCheckResponse.NOT_SERVING)
            if not posted:
                stop.wait(config.poll_ms / 1000)
    finally:
        health_servicer.enter_graceful_shutdown()
        server.stop(2).wait()
        client.close()
        backend.close()
        log.info("admission service stopped", posted=screener.posted)
    return 0
