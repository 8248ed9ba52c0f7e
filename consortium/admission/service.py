"""The admission service process: screens every committed record, posts signed verdicts.

    consortium admission serve --config DIR/admission/config.json

It is a client of the ledger (its key is genesis' `admission_client`) and a gRPC server
(`Admission`: review a join request, screen a record, report the backlog; gRPC health).

Screening works from the ledger's own queue: every record is committed first (durable,
ordered) with status `pending-screening`; the service asks any validator for that queue
(`ListScreening`), judges each record (rules, then the model: `review.Reviewer`) and submits a
Verdict transaction for each (a poll's verdicts in envelopes: one signature and one round of
ordering for all of them). The verdict only moves a record out of pending-screening (ok -> accepted,
flag -> quarantined); validators' votes decide what happens to a quarantined record. A queue
query never misses a record, so a service that was down or slow catches up when it returns,
and nothing is silently accepted meanwhile.

Patient payloads are read only when the submitter wrapped the record key for the service, and
every such read is an Access transaction on the ledger first (the SDK's `get(decrypt=True)`).

The gRPC API (`admission.servicer`) answers members only (a ReadAuth signed by a member's client
key), and no more than the caller may read: a patient record's verdict is derived from its
payload, so `ScreenRecord` answers only a reader of the record, against an Access of the
caller's own on the ledger (`admission.access.check_read`; docs/admission.md, "The Admission
gRPC service").
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consortium.admission import backends as b
from consortium.admission.access import SubjectEvent, shown_segments
from consortium.admission.application import parse_application
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
from consortium.admission.precedents import Precedent, seed_index
from consortium.admission.review import Reviewer
from consortium.admission.servicer import AdmissionServicer
from consortium.client.nonces import ClockNonces
from consortium.client.sdk import Identity, SubmitError, VerifiedReceipt
from consortium.client.sync import ConsortiumClient
from consortium.config import ConfigError, Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer
from consortium.formats.directory import Gs1Directory
from consortium.ledger import membership as ms
from consortium.ledger.membership import org_client_id, validator_client_id
from consortium.ledger.records import RecordKind, decode_public
from consortium.ledger.transactions import (
    InvalidTransaction,
    TxType,
    decode_record_tx,
)
from consortium.ledger.transactions import Verdict as VerdictTx
from consortium.localnet import read_seed
from consortium.wire import WireError, pb, pb_grpc, receipt_from_proto

log = structlog.get_logger("consortium.admission")

RECENT_WINDOW_MS = 10 * 60_000
"""Patient records remembered for the duplicate and burst rules."""
BATCH_MAX = 32
MODEL_PER_POLL = 8
"""Default model reviews per poll of BATCH_MAX records (a few seconds each on two threads)."""
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
    sample_rate: float = 0.05
    """Share of the records the rules settle that the model reviews anyway (triage.py)."""
    model_per_poll: int = MODEL_PER_POLL
    judge: str = "json"
    """json (a JSON verdict) or questions (focused yes/no questions scored: questions.py)."""
    question_threshold: float = 0.5

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
                local_endpoints=bool(data.get("local_endpoints", False)),
                sample_rate=float(data.get("sample_rate", 0.05)),
                model_per_poll=int(data.get("model_per_poll", MODEL_PER_POLL)),
                judge=str(data.get("judge", "json")),
                question_threshold=float(data.get("question_threshold", 0.5)))
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


def error_summary(exc: BaseException) -> str:
    """What GetBacklog may say about a failure: its kind, never its text. GetBacklog answers
    without authentication (its request has no ReadAuth) and an error's text can carry a
    record id, a validator's reason or a model server's echo of a prompt with a payload in it;
    the full text goes to the service's own log."""
    if isinstance(exc, SubmitError):
        return f"ledger: {exc.code.name if exc.code is not None else 'UNAVAILABLE'}"
    if isinstance(exc, b.BackendError):
        return f"backend: {exc.kind}"
    return f"screening: {type(exc).__name__}"


class Screener:
    """Judges records from the ledger's pending-screening queue and posts the verdicts."""

    def __init__(self, client: ConsortiumClient, reviewer: Reviewer, genesis: Genesis,
                 known_locations: tuple[str, ...] = (), loopback_ok: bool = False,
                 directory: Gs1Directory | None = None,
                 model_per_poll: int = MODEL_PER_POLL) -> None:
        self.client = client
        self.genesis = genesis
        self.directory = genesis.gs1_directory() if directory is None else directory
        """The members' GS1 identities (which member an EPCIS party, site or prefix is):
        genesis', then those of the join requests approved since (`learn_members`)."""
        self.loopback_ok = loopback_ok
        """A local consortium: validators on loopback addresses are reachable."""
        self.reviewer = reviewer
        self.registry = Registry(frozenset(o.org_id for o in genesis.member_orgs),
                                 frozenset(known_locations))
        self._lock = threading.Lock()
        """Guards `recent`: the loop adds to it while ScreenRecord calls read it."""
        self.recent: collections.deque[RecentSubmission] = collections.deque()
        self.posted = 0
        self.errors = 0
        self.pending = 0
        self.last_error = ""
        """What went wrong last, as `error_summary` gives it (the full text is logged)."""
        self._in_flight: set[str] = set()
        self.reached_ledger = True
        self._behind_since: float | None = None
        keys, orgs = genesis.client_keys(), genesis.client_orgs()
        members = {o.org_id for o in genesis.member_orgs}
        self._founders: Mapping[str, tuple[str, bytes]] = {
            cid: (orgs[cid], key) for cid, key in keys.items() if orgs.get(cid) in members}
        self.members = self._founders
        """client id -> (organisation, Ed25519 key) of every member's client: genesis', and
        those of the organisations admitted since (`review_joins` learns them from the
        ledger), as the validators accept them, with the key in force (a revoked client is
        left out). Not the service itself: it is no member."""
        self.validators: tuple[pb.MemberInfo, ...] = ()
        """The current validator set, as the last ListMembers gave it."""
        self.model_per_poll = model_per_poll
        """Model reviews per poll (triage.py): the rest of a poll's records that the model
        should read take the busy path, so no record waits for the model without bound."""

    def keeping_up(self, now: float) -> bool:
        """The health signal: the ledger answers, and the backlog has not stayed above one
        batch for longer than BEHIND_GRACE_S."""
        if self.pending < BATCH_MAX:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        behind = self._behind_since is not None and now - self._behind_since > BEHIND_GRACE_S
        return self.reached_ledger and not behind

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = error_summary(exc)

    def once(self) -> int:
        """Screen what is pending now; returns how many verdicts were posted. The verdicts of
        one poll go to the ledger together (`post_verdicts`)."""
        queue = self.client.list_screening("pending-screening", limit=BATCH_MAX)
        self.pending = len(queue.records)
        judged: list[tuple[pb.ScreeningEntry, Verdict]] = []
        model_left = self.model_per_poll
        for entry in queue.records:
            try:
                verdict = self.judge(entry.record_id, entry.kind, model_allowed=model_left > 0)
                model_left -= verdict.path.startswith("model:")
                judged.append((entry, verdict))
            except (SubmitError, b.BackendError, ValueError) as exc:
                self._failed(exc)
                log.warning("screening failed; the record stays pending", record=entry.record_id,
                            error=str(exc)[:300])
        return self.post_verdicts(judged)

    def post_verdicts(self, judged: Sequence[tuple[pb.ScreeningEntry, Verdict]]) -> int:
        """Submit verdicts in envelopes (`submit_many`: one signature and one ordering round
        for a poll's worth instead of one each). An envelope the ledger refused as a whole (one
        malformed verdict makes its envelope invalid) is retried verdict by verdict, so one
        bad verdict leaves only its own record pending."""
        if not judged:
            return 0
        items = [self.client.core.tx_item(VerdictTx(entry.record_id, v.decision,
                                                    round(v.risk * 1000), v.to_json()))
                 for entry, v in judged]
        try:
            results: list[VerifiedReceipt | SubmitError] = list(self.client.submit_many(items))
        except SubmitError as exc:  # nothing was sent (an item over the size limit...)
            results = [exc] * len(items)
        done = 0
        for (entry, verdict), item, result in zip(judged, items, results, strict=True):
            if isinstance(result, SubmitError) and len(judged) > 1 \
                    and result.code == grpc.StatusCode.INVALID_ARGUMENT:
                try:
                    result = self.client.submit_items([item])[0]
                except SubmitError as exc:
                    result = exc
            if isinstance(result, SubmitError):
                self._failed(result)
                log.warning("posting the verdict failed; the record stays pending",
                            record=entry.record_id, error=str(result)[:300])
                continue
            if result.status != "recorded":  # e.g. screened meanwhile by another instance
                log.info("verdict refused by the ledger", record=entry.record_id[:16],
                         reason=result.reason, height=result.height)
                continue
            log.info("verdict posted", record=entry.record_id[:16], kind=entry.kind,
                     decision=verdict.decision, risk=verdict.risk,
                     latency_ms=verdict.latency_ms, height=result.height,
                     outcome=result.reason)
            self.posted += 1
            done += 1
        return done

    def learn_members(self, reply: pb.MembersReply) -> None:
        """Take the organisations admitted by vote as members (their records name known
        parties, their clients may call the gRPC API) and the current validator set."""
        admitted = [p for p in reply.proposals if p.kind == "join" and p.status == "approved"]
        orgs = {p.org for p in admitted}
        if not orgs <= self.registry.known_orgs:
            self.registry = dataclasses.replace(
                self.registry, known_orgs=self.registry.known_orgs | orgs)
        members = dict(self._founders)
        for p in admitted:
            members.setdefault(org_client_id(p.org), (p.org, bytes(p.client_key)))
            members.setdefault(validator_client_id(p.replica_id), (p.org, bytes(p.validator_key)))
        changed = ms.from_listing(reply.proposals).key_states(
            {cid: key for cid, (_, key) in members.items()})
        for cid, state in changed.items():
            if state.revoked_by is not None:
                del members[cid]
            else:
                members[cid] = (members[cid][0], state.key)
        self.members = members  # one assignment: readers in other threads see old or new
        self.validators = tuple(reply.validators)
        self._learn_gs1(admitted)
        if self.reviewer.precedents is not None:  # the members' decisions teach the reviewer
            for p in reply.proposals:
                if p.kind == "join" and p.status in ("approved", "rejected") and p.statement:
                    self.reviewer.precedents.add(Precedent(
                        f"ledger:{p.proposal_id[:16]}",
                        "approve" if p.status == "approved" else "reject",
                        parse_application(p.statement).statement))

    def _learn_gs1(self, admitted: list[pb.ProposalInfo]) -> None:
        """Add the GS1 identities admitted members registered with their join requests
        (`admitted` newest first, as ListMembers lists them). One that claims a prefix or GLN
        a member registered first is left out (logged): the directory answers one member per
        identifier."""
        self.directory, left_out = self.directory.admitting(
            (p.org, p.gs1.encode()) for p in reversed(admitted))
        for why in left_out:
            log.warning("an admitted member's GS1 identity is left out", error=why[:300])

    def review_joins(self) -> int:
        """Review the join requests on the ledger that have no verdict yet; post the advice
        (approve / reject / review) as a verdict on the request."""
        reply = self.client.list_members()
        if reply.epoch > max(self.client.core.epochs):
            # The validator set changed: fetch the epoch history (verified from genesis) so
            # that ScreenRecord asks the current validators (`read_quorum`).
            self.client.refresh_epochs()
        self.learn_members(reply)
        done = 0
        for p in reversed(reply.proposals):  # oldest first
            if p.kind != "join" or p.status != "pending" or p.verdicts:
                continue
            try:
                verdict = self.judge_join(p)
                receipt = self.client.verdict(p.proposal_id, verdict.decision, verdict.risk,
                                              verdict.to_json())
            except (SubmitError, b.BackendError, ValueError) as exc:
                self._failed(exc)
                log.warning("join review failed; the request stays unreviewed",
                            request=p.proposal_id, error=str(exc)[:300])
                continue
            log.info("join verdict posted", request=p.proposal_id[:16], org=p.org,
                     decision=verdict.decision, risk=verdict.risk,
                     latency_ms=verdict.latency_ms, height=receipt.height)
            self.posted += 1
            done += 1
        return done

    def join_context(self, now_ms: int) -> JoinContext:
        """The membership a join request is judged against: the member organisations and the
        validators' endpoints (the last ListMembers; genesis' before the first)."""
        validators = self.validators or tuple(
            pb.MemberInfo(replica_id=v.replica_id, org=v.org, peer_address=v.peer_address)
            for v in self.genesis.validators)
        orgs = set(self.registry.known_orgs) | {x.org for x in validators if x.org}
        endpoints = frozenset(x.peer_address for x in validators if x.peer_address)
        return JoinContext(frozenset(orgs), endpoints, now_ms, self.loopback_ok)

    def judge_join(self, p: pb.ProposalInfo) -> Verdict:
        """The applicant's statement is its own words: free text, or a JSON application
        ({"statement", "sector", "country", "contact_email", "sponsors"}); either way data for
        the reviewer, never instructions. The sponsor the validators verified (a member's
        signature over the application) is not the applicant's word: the reviewer gets it
        apart from the sponsors the statement names."""
        app = parse_application(p.statement)
        now = int(time.time() * 1000)
        request = JoinRequest(
            p.proposal_id, p.name or p.org, p.peer_address, app.sector, app.country,
            app.contact_email, app.statement, app.sponsors, now, p.sponsor)
        return self.reviewer.review_join(request, self.join_context(now))

    def judge(self, record_id: str, kind: str, *, purpose: str = "screening",
              remember: bool = True, model_allowed: bool = True) -> Verdict:
        """A verdict on a committed record. `purpose` is what the service's read of a patient
        payload is logged for; `remember` adds a patient record to the window the duplicate
        and burst rules look at (the queue does; a ScreenRecord dry run must not, or asking
        twice would count one record twice)."""
        now_ms = int(time.time() * 1000)
        if kind == RecordKind.PROVENANCE.value:
            event, history = self._provenance(record_id)
            return self.reviewer.screen_record(
                event, RecordContext(history=tuple(history), registry=self.registry,
                                     now_ms=now_ms, directory=self.directory),
                model_allowed=model_allowed)
        record = self._patient(record_id, purpose)
        with self._lock:
            while self.recent and self.recent[0].submitted_at_ms < now_ms - RECENT_WINDOW_MS:
                self.recent.popleft()
            recent = tuple(self.recent)
        verdict = self.reviewer.screen_record(
            record, RecordContext(recent=recent, registry=self.registry, now_ms=now_ms),
            model_allowed=model_allowed)
        if remember:
            with self._lock:
                self.recent.append(RecentSubmission.of(record))
        return verdict

    def _provenance(self, record_id: str) -> tuple[ProvenanceEvent, list[ProvenanceEvent]]:
        """The record and the earlier events of what it concerns (ListSubject, every page, for
        each of its subjects: an EPCIS event's lots, items, parent and children): the recorded
        records before this one in ledger order, decoded from the item views their receipts
        carry. An EPCIS record is read from its public event, a legacy one from its
        metadata."""
        rec = self.client.get(record_id)
        found: dict[str, tuple[tuple[int, int, int], ProvenanceEvent]] = {}
        for subject in (rec.subject_id, *rec.also):
            entries, _ = self.client.list_subject(RecordKind.PROVENANCE.value, subject)
            for e in entries:
                if e.target_record_id:
                    continue  # a transaction on a record, not a record
                r = receipt_from_proto(e.receipt, self.client.core.chain_id)
                if r.record_id == record_id:
                    break
                seg0 = shown_segments(r)[0] if r.status == "recorded" else None
                if seg0 is None or r.record_id in found:
                    continue
                p = decode_public(seg0)
                found[r.record_id] = ((r.height, r.request_proof.index, r.item_proof.index),
                                      self._event(r.record_id, p))
        history = [ev for _, ev in sorted(found.values(), key=lambda x: x[0])]
        return self._event(record_id, rec), history

    def _event(self, record_id: str, p: Any) -> ProvenanceEvent:
        """A provenance record's public part (PublicRecord or RecordView) as an event."""
        if p.document:
            return ProvenanceEvent.from_public_json(record_id, p.submitter_org,
                                                    p.submitted_at_ms, p.document)
        return ProvenanceEvent.from_metadata(record_id, p.subject_id, p.event_type,
                                             p.submitter_org, p.submitted_at_ms,
                                             dict(p.metadata), self.directory)

    def _patient(self, record_id: str, purpose: str) -> PatientRecordInput:
        """The record's public part; its payload too when the submitter wrapped the key for
        the service (the read is an Access transaction on the ledger first). A ledger that
        does not answer is an error (the record stays pending), not a payload to screen
        without: that verdict would be posted as if the payload had not been shared."""
        public = self.client.get(record_id)
        payload: Any = None
        try:
            payload = self.client.get(record_id, decrypt=True, purpose=purpose).payload
        except SubmitError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            payload = None  # not wrapped for the service (or erased): the metadata alone
        return PatientRecordInput(record_id, public.subject_id, public.event_type,
                                  public.submitter_org, public.submitted_at_ms,
                                  tuple(sorted(public.metadata.items())),
                                  payload if isinstance(payload, dict) else None)

    def subject_events(self, subject_id: str, address: str) -> list[SubjectEvent]:
        """The recorded transactions on a patient's records, in ledger order, as the validator
        at `address` lists them (ListSubject, every page). Entries that do not decode are
        skipped: they can neither grant nor revoke anything."""
        entries, _ = self.client.list_subject(RecordKind.PATIENT.value, subject_id,
                                              address=address)
        out = []
        for e in entries:
            if not e.target_record_id:
                continue  # a record, not a transaction on one
            try:
                r = receipt_from_proto(e.receipt, self.client.core.chain_id)
                shown = shown_segments(r)
                if not shown or shown[0] is None or shown[0][:1] == bytes([TxType.RECORD]):
                    continue
                action = decode_record_tx(shown)
            except (WireError, InvalidTransaction, ValueError):
                continue
            if r.status == "recorded":
                out.append(SubjectEvent(r.record_id, r.height, r.client_id, action, r.reason,
                                        e.receipt))
        return out


def serve(config: ServiceConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    genesis = Genesis.load(config.directory / "genesis.json")
    identity = service_identity(config.directory, genesis)
    ca = (config.directory / "ca" / "ca.crt").read_bytes()
    backend = config.make_backend()
    reviewer = Reviewer(backend, allow_remote_patient_data=config.allow_remote_patient_data,
                        sample_rate=config.sample_rate, judge=config.judge,
                        threshold=config.question_threshold,
                        precedents=seed_index())
    client = ConsortiumClient(genesis, identity, ca)
    screener = Screener(client, reviewer, genesis, config.known_locations,
                        config.local_endpoints, model_per_poll=config.model_per_poll)
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
                screener.last_error = error_summary(exc)
                log.warning("the ledger did not answer", error=str(exc)[:300])
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
