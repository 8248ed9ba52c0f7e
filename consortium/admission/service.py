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

The gRPC API answers members only (a ReadAuth signed by a member's client key), and no more
than the caller may read: a patient record's verdict is derived from its payload, so
`ScreenRecord` answers only a reader of the record, against an Access of the caller's own on
the ledger (see `check_read` and docs/admission.md, "The Admission gRPC service").
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
from typing import Any, NoReturn

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from consortium.admission import backends as b
from consortium.admission import triage
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
from consortium.client.core import ClientCore
from consortium.client.nonces import ClockNonces
from consortium.client.sdk import Identity, SubmitError, VerifiedReceipt
from consortium.client.sync import ConsortiumClient
from consortium.config import ConfigError, Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.formats.directory import Gs1Directory
from consortium.ledger import membership as ms
from consortium.ledger.blocks import ACCESS_DENIED
from consortium.ledger.items import ItemView
from consortium.ledger.membership import org_client_id, validator_client_id
from consortium.ledger.reads import read_signing_bytes
from consortium.ledger.records import RecordKind, decode_public
from consortium.ledger.transactions import (
    TEXT_BYTES_MAX,
    Access,
    Erase,
    InvalidTransaction,
    RecordTx,
    Revoke,
    TxType,
    decode_record_tx,
)
from consortium.ledger.transactions import Verdict as VerdictTx
from consortium.localnet import read_seed
from consortium.wire import Receipt, WireError, pb, pb_grpc, receipt_from_proto

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
READ_CATCH_UP_S = 5.0
"""How long ScreenRecord waits for more validators to show a caller's Access that one already
shows (a validator a block or two behind the one the caller submitted to)."""
READ_RETRY_S = 0.2


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
                seg0 = _shown(r)[0] if r.status == "recorded" else None
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
                shown = _shown(r)
                if not shown or shown[0] is None or shown[0][:1] == bytes([TxType.RECORD]):
                    continue
                action = decode_record_tx(shown)
            except (WireError, InvalidTransaction, ValueError):
                continue
            if r.status == "recorded":
                out.append(SubjectEvent(r.record_id, r.height, r.client_id, action, r.reason,
                                        e.receipt))
        return out


def _shown(r: Receipt) -> list[bytes | None]:
    """The segments of a receipt's item (withheld ones as None)."""
    view = r.item if isinstance(r.item, ItemView) else ItemView.of(r.item)
    return view.present()


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
