"""The Admission gRPC servicer without a ledger: who gets an answer, and what it is derived from.

Issue 12, finding 3: `ScreenRecord` gave a non-reader of a patient record the findings of its
payload. These tests drive `AdmissionServicer` with a fake ledger client (records, each
validator's list of the patient's transactions) and a fake gRPC context, so each rule of
`check_read` and of the servicer is pinned down: members only, readers only for a patient
record, an Access of the caller's own confirmed by f+1 validators, one Access per answer, and
nothing of a payload in GetBacklog. tests/e2e/test_screening.py runs the same against real
validators.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from consortium import localnet
from consortium.admission import RulesBackend
from consortium.admission.access import Caller, ReadCheck, SubjectEvent, answer_purpose, check_read
from consortium.admission.model import ProvenanceEvent
from consortium.admission.review import Reviewer
from consortium.admission.service import Screener
from consortium.admission.servicer import AdmissionServicer
from consortium.api.v1 import ledger_pb2 as pb
from consortium.client.core import ClientCore
from consortium.client.sdk import RecordView, SubmitError
from consortium.client.sync import ConsortiumClient
from consortium.config import Genesis
from consortium.ledger.blocks import ACCESS_DENIED
from consortium.ledger.transactions import Access, Erase, Grant, Revoke
from consortium.pbft.membership import EpochConfig, Member
from tests.formats.fhir_samples import impossible_patient

PATIENT = "a1" * 32
LOT = "b2" * 32
PAYLOAD = impossible_patient("P-9")

TTL_MS = 300_000


def tx(n: int) -> str:
    return f"{n:064x}"


def access(n: int, client: str, *, granted: bool = True, record: str = PATIENT,
           at_ms: int | None = None, purpose: str = "read") -> SubjectEvent:
    at = int(time.time() * 1000) if at_ms is None else at_ms
    return SubjectEvent(tx(n), 10 + n, client, Access(record, purpose, at),
                        "" if granted else ACCESS_DENIED, pb.Receipt())


def other(n: int, client: str, action: Any) -> SubjectEvent:
    return SubjectEvent(tx(n), 10 + n, client, action, "", pb.Receipt())


# ------------------------------------------------------------------------------ check_read

ORG0 = Caller("org0-client", "org0")
SERVICE = "admission-client"


def check(events: list[SubjectEvent], caller: Caller = ORG0,
          now_ms: int | None = None) -> ReadCheck:
    return check_read(events, caller, PATIENT, SERVICE,
                      int(time.time() * 1000) if now_ms is None else now_ms, TTL_MS)


def test_no_access_of_the_caller_is_no_answer() -> None:
    got = check([])
    assert got.access is None and got.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no Access of org0-client" in got.problem


def test_a_granted_fresh_access_of_the_caller_is_an_answer() -> None:
    got = check([access(1, "org0-client")])
    assert got.access is not None and got.access.tx_id == tx(1)


def test_a_refused_access_is_permission_denied() -> None:
    got = check([access(1, "org0-client", granted=False)])
    assert got.access is None and got.code == grpc.StatusCode.PERMISSION_DENIED
    assert got.problem == f"org0 is not a reader of record {PATIENT}"


def test_another_client_or_record_or_the_service_does_not_count() -> None:
    events = [access(1, "validator-0"),  # same organisation, another client: not the caller
              access(2, "org0-client", record=LOT),
              access(3, SERVICE)]
    assert check(events).code == grpc.StatusCode.FAILED_PRECONDITION


def test_an_access_past_its_ttl_or_from_the_future_does_not_count() -> None:
    now = int(time.time() * 1000)
    for at in (now - TTL_MS - 1, now + TTL_MS + 1):
        got = check([access(1, "org0-client", at_ms=at)], now_ms=now)
        assert got.access is None and got.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "older than 300 s" in got.problem


def test_an_access_the_service_answered_against_is_used_up() -> None:
    a = access(1, "org0-client")
    used = access(2, SERVICE, purpose=answer_purpose(ORG0, tx(1)))
    got = check([a, used])
    assert got.access is None and got.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already answered" in got.problem
    again = check([a, used, access(3, "org0-client")]).access
    assert again is not None and again.tx_id == tx(3)


def test_a_revocation_after_the_access_takes_it_back() -> None:
    events = [access(1, "org0-client"), other(2, "org1-client", Revoke(PATIENT, "org0"))]
    assert check(events).code == grpc.StatusCode.PERMISSION_DENIED
    # A revocation of someone else does not; a new grant then access does count again.
    assert check([access(1, "org0-client"),
                  other(2, "org1-client", Revoke(PATIENT, "org2"))]).access is not None
    regranted = [*events, other(3, "org1-client", Grant(PATIENT, "org0", b"")),
                 access(4, "org0-client")]
    got = check(regranted).access
    assert got is not None and got.tx_id == tx(4)


def test_an_erased_record_answers_nothing() -> None:
    got = check([access(1, "org0-client"), other(2, "org1-client", Erase(PATIENT, "P", ""))])
    assert got.access is None and got.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "erased" in got.problem


def test_the_answer_purpose_names_the_access_within_the_ledger_limit() -> None:
    assert answer_purpose(ORG0, tx(7)) == f"screening for org0-client (access {tx(7)})"
    long = answer_purpose(Caller("x" * 250, "x"), tx(7))
    assert tx(7) in long and len(long.encode()) <= 256


# ----------------------------------------------------------------------- the servicer

class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Context:
    """A grpc.ServicerContext as far as the servicer uses it: abort raises."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeCore:
    """What the service uses of the SDK's ClientCore: the validators' addresses, the epochs
    verified so far (epoch 0: one validator per address), the chain id, item encoding."""

    def __init__(self, addresses: list[str], chain_id: bytes = b"") -> None:
        self.validators = dict(enumerate(addresses))
        self.epochs = {0: EpochConfig(0, 0, tuple(Member(i, bytes([i + 1]) * 32)
                                                  for i in range(len(addresses))))}
        self.chain_id = chain_id
        self.tx_item = ClientCore.tx_item


class FakeLedger:
    """The service's ledger client: two records (a patient record, a provenance record)."""

    def __init__(self, addresses: list[str]) -> None:
        now = int(time.time() * 1000)
        self.core = FakeCore(addresses)
        self.records = {
            PATIENT: RecordView(PATIENT, 3, "patient", "P-9", "prescription", "org0", now, {},
                                (), "recorded"),
            LOT: RecordView(LOT, 4, "provenance", "lot-1", "manufactured", "org1", now,
                            {"location": "Basel", "quantity": "3"}, (), "recorded")}
        self.reads: list[tuple[str, str]] = []
        """(record id, purpose) of every payload the service decrypted."""
        self.failure: SubmitError | None = None
        self.forged: set[str] = set()
        """Access ids whose receipt does not verify."""
        self.subject: list[pb.SubjectEntry] = []
        """What ListSubject answers (every page)."""

    def verify_receipt(self, reply: pb.Receipt, record_id: str, address: str) -> None:
        if record_id in self.forged:
            raise SubmitError(f"validator {address} sent a receipt that does not verify")

    def get(self, record_id: str, *, decrypt: bool = False, purpose: str = "read",
            address: str | None = None) -> RecordView:
        if self.failure is not None:
            raise self.failure
        rec = self.records.get(record_id)
        if rec is None:
            raise SubmitError(f"no record {record_id}", grpc.StatusCode.NOT_FOUND)
        if not decrypt or rec.kind != "patient":
            return rec
        self.reads.append((record_id, purpose))
        return dataclasses.replace(rec, payload=PAYLOAD)

    def list_subject(self, kind: str, subject_id: str, *,
                     address: str | None = None) -> tuple[list[pb.SubjectEntry], str]:
        return list(self.subject), address or ""


def as_client(fake: FakeLedger) -> ConsortiumClient:
    """The fake where the Screener expects the SDK client (it uses only what FakeLedger has)."""
    return cast(ConsortiumClient, fake)


Events = list[SubjectEvent] | Callable[[], list[SubjectEvent]] | SubmitError


class LedgerScreener(Screener):
    """A Screener whose validators each list the patient's transactions from `events`."""

    events: dict[str, Events]

    def subject_events(self, subject_id: str, address: str) -> list[SubjectEvent]:
        got = self.events[address]
        if isinstance(got, SubmitError):
            raise got
        return got() if callable(got) else list(got)


@dataclasses.dataclass
class Service:
    directory: Path
    genesis: Genesis
    ledger: FakeLedger
    screener: LedgerScreener
    servicer: AdmissionServicer
    addresses: list[str]

    def auth(self, method: str, argument: str, org: str = "org0") -> pb.ReadAuth:
        with ConsortiumClient.from_dir(self.directory, org) as c:
            return c.core.read_auth(method, argument)

    def client_id(self, org: str) -> str:
        return next(c.client_id for c in self.genesis.clients if c.org == org)

    def everywhere(self, events: Events) -> None:
        self.screener.events = {a: events for a in self.addresses}

    def screen(self, record_id: str = PATIENT, org: str = "org0",
               auth: pb.ReadAuth | None = None) -> pb.VerdictReply:
        request = pb.ScreenRecordRequest(
            record_id=record_id, auth=auth or self.auth("ScreenRecord", record_id, org))
        reply: pb.VerdictReply = self.servicer.ScreenRecord(request, Context())
        return reply

    def refused(self, record_id: str = PATIENT, org: str = "org0",
                auth: pb.ReadAuth | None = None) -> Aborted:
        with pytest.raises(Aborted) as info:
            self.screen(record_id, org, auth)
        return info.value


@pytest.fixture(scope="module")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Genesis]]:
    d = tmp_path_factory.mktemp("admission-service")
    yield d, localnet.init(d, 4)


@pytest.fixture
def svc(consortium_dir: tuple[Path, Genesis]) -> Service:
    directory, genesis = consortium_dir
    addresses = [v.client_address for v in genesis.validators]
    ledger = FakeLedger(addresses)
    screener = LedgerScreener(as_client(ledger), Reviewer(RulesBackend()), genesis)
    screener.events = {a: [] for a in addresses}
    servicer = AdmissionServicer(screener, genesis, catch_up_s=0.5)
    return Service(directory, genesis, ledger, screener, servicer, addresses)


def test_a_non_reader_without_an_access_gets_nothing_of_the_payload(svc: Service) -> None:
    """The attack of finding 3: org3 asks about a record wrapped for org0 and the service."""
    err = svc.refused(org="org3")
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "age" not in err.details and "oxycodone" not in err.details
    assert svc.ledger.reads == []  # the service did not even decrypt it


def test_a_non_reader_whose_access_the_ledger_refused_is_permission_denied(
        svc: Service) -> None:
    svc.everywhere([access(1, svc.client_id("org3"), granted=False)])
    err = svc.refused(org="org3")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.details == f"org3 is not a reader of record {PATIENT}"
    assert svc.ledger.reads == []


def test_a_reader_gets_the_findings_against_its_own_access(svc: Service) -> None:
    caller = svc.client_id("org0")
    svc.everywhere([access(1, caller)])
    reply = svc.screen()
    assert reply.decision == "flag"
    messages = [f["message"] for f in json.loads(reply.verdict_json)["findings"]]
    assert any(m.startswith("age 131 at ") and m.endswith("is impossible") for m in messages)
    assert any(m.startswith("oxycodone: 320 mg/day exceeds") for m in messages), messages
    # The service's own read of the payload names the caller and the caller's Access.
    assert svc.ledger.reads == [(PATIENT, f"screening for {caller} (access {tx(1)})")]
    assert not svc.screener.recent  # a dry run does not feed the duplicate and burst rules


def test_one_access_buys_one_answer(svc: Service) -> None:
    svc.everywhere([access(1, svc.client_id("org0"))])
    svc.screen()
    err = svc.refused()  # the service's own read is not on the (fake) ledger: memory refuses
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "already answered" in err.details
    assert len(svc.ledger.reads) == 1


def test_one_lying_validator_is_not_enough(svc: Service) -> None:
    """f+1 = 2 of 4 validators must show the Access: one that claims a non-reader's refused
    Access was granted does not make the service decrypt for it."""
    org3 = svc.client_id("org3")
    svc.everywhere([access(1, org3, granted=False)])
    svc.screener.events[svc.addresses[0]] = [access(1, org3, granted=True)]
    err = svc.refused(org="org3")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert svc.ledger.reads == []


def test_a_removed_validator_is_not_asked(svc: Service) -> None:
    """After validator 3 was removed and validator 4 admitted (epoch 1, verified), f+1 = 2 of
    {0, 1, 2, 4} must show the Access: the removed validator, still answering, and one lying
    member together are not enough (counted among every address ever known, they were)."""
    core = svc.ledger.core
    core.validators[4] = "validator-4:7104"
    core.epochs[1] = EpochConfig(1, 16, tuple(Member(i, bytes([i + 1]) * 32)
                                             for i in (0, 1, 2, 4)))
    org3 = svc.client_id("org3")
    svc.everywhere([access(1, org3, granted=False)])
    svc.screener.events["validator-4:7104"] = [access(1, org3, granted=False)]
    for liar in (svc.addresses[0], svc.addresses[3]):
        svc.screener.events[liar] = [access(1, org3, granted=True)]
    err = svc.refused(org="org3")
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert svc.ledger.reads == []
    # A reader is answered on the current set's word (validator 3 shows nothing now).
    caller = svc.client_id("org0")
    svc.everywhere([access(2, caller)])
    svc.screener.events[svc.addresses[3]] = []
    svc.screener.events["validator-4:7104"] = [access(2, caller)]
    assert svc.screen().decision == "flag"


def test_an_access_whose_receipt_does_not_verify_does_not_count(svc: Service) -> None:
    svc.everywhere([access(1, svc.client_id("org0"))])
    svc.ledger.forged.add(tx(1))
    err = svc.refused()
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert svc.ledger.reads == []


def test_validators_a_block_behind_are_asked_again(svc: Service) -> None:
    """The caller's Access is committed at one validator; the others execute it a moment
    later: the service waits for them (up to catch_up_s) instead of refusing."""
    caller = svc.client_id("org0")
    calls = {"n": 0}

    def lagging() -> list[SubjectEvent]:
        calls["n"] += 1
        return [access(1, caller)] if calls["n"] > 3 else []

    svc.everywhere(lagging)
    svc.screener.events[svc.addresses[0]] = [access(1, caller)]
    assert svc.screen().decision == "flag"
    assert calls["n"] > 3


def test_validators_that_do_not_answer_make_it_unavailable(svc: Service) -> None:
    svc.everywhere(SubmitError("no validator answered", grpc.StatusCode.UNAVAILABLE))
    err = svc.refused()
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert svc.ledger.reads == []


def test_a_provenance_record_is_answered_to_any_member(svc: Service) -> None:
    reply = svc.screen(LOT, org="org3")
    assert reply.decision in ("ok", "flag")
    assert svc.ledger.reads == []


def test_an_erased_patient_record_is_failed_precondition(svc: Service) -> None:
    rec = svc.ledger.records[PATIENT]
    svc.ledger.records[PATIENT] = dataclasses.replace(rec, erasure={"height": 9})
    err = svc.refused()
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and "erased" in err.details


@pytest.mark.parametrize("record_id", ["", "AB" * 32, "a1" * 31, "zz" * 32])
def test_a_malformed_record_id_is_invalid_argument(svc: Service, record_id: str) -> None:
    assert svc.refused(record_id).code == grpc.StatusCode.INVALID_ARGUMENT


def test_ledger_errors_map_to_precise_statuses(svc: Service) -> None:
    assert svc.refused("cd" * 32).code == grpc.StatusCode.NOT_FOUND
    svc.ledger.failure = SubmitError("validator x: bad read signature",
                                     grpc.StatusCode.UNAUTHENTICATED)
    err = svc.refused()
    # The service's own credential problem is not the caller's: it is unavailable.
    assert err.code == grpc.StatusCode.UNAVAILABLE and "\n" not in err.details


def test_non_members_are_unauthenticated(svc: Service) -> None:
    good = svc.auth("ScreenRecord", PATIENT)
    wrong_method = svc.auth("ScreenRecord", LOT)  # signed for another record
    stale = pb.ReadAuth()
    stale.CopyFrom(good)
    stale.timestamp_ms -= 10 * 60_000
    forged = pb.ReadAuth()
    forged.CopyFrom(good)
    forged.signature = bytes(64)
    with ConsortiumClient(svc.genesis, _service_identity(svc), b"") as service:
        own = service.core.read_auth("ScreenRecord", PATIENT)  # the service is no member
    for auth in (pb.ReadAuth(), wrong_method, stale, forged, own):
        err = svc.refused(auth=auth)
        assert err.code == grpc.StatusCode.UNAUTHENTICATED, auth
        assert "members only" in err.details


def _service_identity(svc: Service) -> Any:
    from consortium.admission.service import service_identity
    return service_identity(svc.directory, svc.genesis)


def test_review_join_answers_members_only_and_learns_admitted_ones(svc: Service) -> None:
    request = pb.ReviewJoinRequest(request_id="j1", org="Acme", endpoint="acme.example:7100",
                                   statement="We make vaccines.")
    request.auth.CopyFrom(svc.auth("ReviewJoin", "j1"))
    assert svc.servicer.ReviewJoin(request, Context()).decision in ("approve", "review",
                                                                    "reject")
    # An organisation admitted by vote: unknown until the service has read the ledger's
    # membership, a member afterwards (as validators accept its client then).
    from consortium.crypto.signing import Ed25519Signer
    from consortium.ledger.reads import read_signing_bytes
    signer = Ed25519Signer.generate()
    now = int(time.time() * 1000)
    auth = pb.ReadAuth(client_id="org9-client", timestamp_ms=now, signature=signer.sign(
        read_signing_bytes(svc.genesis.chain_id_bytes, "org9-client", now, "ReviewJoin",
                           "j1")))
    request.auth.CopyFrom(auth)
    with pytest.raises(Aborted) as info:
        svc.servicer.ReviewJoin(request, Context())
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    svc.screener.learn_members(pb.MembersReply(proposals=[pb.ProposalInfo(
        kind="join", status="approved", org="org9", replica_id=9,
        client_key=signer.public_key, validator_key=Ed25519Signer.generate().public_key)]))
    assert svc.servicer.ReviewJoin(request, Context()).decision
    # A pending or rejected applicant is not a member.
    svc.screener.members = {k: v for k, v in svc.screener.members.items()
                            if k != "org9-client"}
    svc.screener.learn_members(pb.MembersReply(proposals=[pb.ProposalInfo(
        kind="join", status="pending", org="org9", replica_id=9,
        client_key=signer.public_key)]))
    with pytest.raises(Aborted):
        svc.servicer.ReviewJoin(request, Context())
    # A member's revoked client key calls no more; the key rotated in after it does.
    joined = pb.ProposalInfo(proposal_id="a0" * 32, kind="join", status="approved", org="org9",
                             replica_id=9, client_key=signer.public_key,
                             validator_key=Ed25519Signer.generate().public_key)
    revoked = pb.ProposalInfo(proposal_id="b0" * 32, kind="client-key", status="approved",
                              org="org9", name="org9-client", validator_key=signer.public_key,
                              decided_height=7)
    svc.screener.learn_members(pb.MembersReply(proposals=[revoked, joined]))
    with pytest.raises(Aborted):
        svc.servicer.ReviewJoin(request, Context())
    rotated = Ed25519Signer.generate()
    svc.screener.learn_members(pb.MembersReply(proposals=[pb.ProposalInfo(
        proposal_id="c0" * 32, kind="client-key", status="approved", org="org9",
        name="org9-client", validator_key=signer.public_key, client_key=rotated.public_key,
        decided_height=8), revoked, joined]))
    assert svc.screener.members["org9-client"] == ("org9", rotated.public_key)


def test_a_join_requests_verified_sponsor_reaches_the_reviewer(
        svc: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sponsor the validators verified is context for the reviewer, apart from the
    sponsors the applicant's statement claims (here none): a sponsored request does not read
    as one nobody vouches for."""
    statement = json.dumps({"statement": "We distribute vaccines to hospitals in Hesse.",
                            "sector": "distributor", "country": "DE",
                            "contact_email": "it@newco.example", "sponsors": []})
    proposal = pb.ProposalInfo(proposal_id="ab" * 32, kind="join", status="pending",
                               org="newco", name="NewCo", peer_address="newco.example:7100",
                               statement=statement)
    seen: list[Any] = []
    review = svc.screener.reviewer.review_join
    monkeypatch.setattr(svc.screener.reviewer, "review_join",
                        lambda request, context: seen.append(request) or review(request,
                                                                               context))
    unsponsored = svc.screener.judge_join(proposal)
    assert "join.no-sponsor" in {f.rule for f in unsponsored.findings}
    proposal.sponsor = "org1"
    verdict = svc.screener.judge_join(proposal)
    assert "join.no-sponsor" not in {f.rule for f in verdict.findings}
    assert [(r.verified_sponsor, r.sponsors) for r in seen] == [("", ()), ("org1", ())]
    assert seen[1].to_dict()["verified_sponsor"] == "org1"
    assert "verified_sponsor" not in seen[0].to_dict()


def test_get_backlog_says_the_kind_of_the_last_error_never_its_text(svc: Service) -> None:
    """GetBacklog's request has no ReadAuth: anyone who reaches the port gets its answer. An
    error's text may carry a record id or a validator's or model server's words."""
    class Queue(FakeLedger):
        def list_screening(self, screening: str, **kw: Any) -> pb.ScreeningReply:
            return pb.ScreeningReply(records=[pb.ScreeningEntry(record_id=PATIENT,
                                                                kind="patient")])

        def submit_many(self, items: Any, **kw: Any) -> Any:
            raise SubmitError(f"record {PATIENT}: age 131 is impossible (validator said)",
                              grpc.StatusCode.UNAVAILABLE)

    ledger = Queue(svc.addresses)
    screener = Screener(as_client(ledger), Reviewer(RulesBackend()), svc.genesis)
    assert screener.once() == 0
    backlog = AdmissionServicer(screener, svc.genesis).GetBacklog(pb.GetBacklogRequest(),
                                                                  Context())
    assert backlog.errors == 1 and backlog.pending == 1
    assert backlog.last_error == "ledger: UNAVAILABLE"


def test_a_ledger_outage_leaves_a_patient_record_pending(svc: Service) -> None:
    """A failed read of the payload because no validator answered is not "the payload was
    not shared": the record stays pending instead of a metadata-only verdict being posted."""
    class Down(FakeLedger):
        def get(self, record_id: str, *, decrypt: bool = False, purpose: str = "read",
                address: str | None = None) -> RecordView:
            if decrypt:
                raise SubmitError("no validator answered", grpc.StatusCode.UNAVAILABLE)
            return super().get(record_id)

    screener = Screener(as_client(Down(svc.addresses)), Reviewer(RulesBackend()), svc.genesis)
    with pytest.raises(SubmitError):
        screener.judge(PATIENT, "patient")

    class NotShared(FakeLedger):
        def get(self, record_id: str, *, decrypt: bool = False, purpose: str = "read",
                address: str | None = None) -> RecordView:
            if decrypt:
                raise SubmitError("not a reader", grpc.StatusCode.PERMISSION_DENIED)
            return super().get(record_id)

    screener = Screener(as_client(NotShared(svc.addresses)), Reviewer(RulesBackend()),
                        svc.genesis)
    verdict = screener.judge(PATIENT, "patient")
    assert any(f.rule == "payload.unreadable" for f in verdict.findings)


# ------------------------------------------------------- the ledger's answers, format 2

class Chain:
    """Blocks built as a validator builds them (`build_block`), and the ListSubject entries a
    validator would answer for them: receipts item -> envelope -> block, as on the wire."""

    def __init__(self, directory: Path, genesis: Genesis) -> None:
        from consortium.client.core import Identity
        self.genesis = genesis
        self.cores = {org: ClientCore(genesis, Identity.from_dir(directory, org))
                      for org in ("org0", "org1", "org3")}
        self.nonce = 0
        self.blocks: list[Any] = []

    def request(self, org: str, items: list[bytes]) -> Any:
        from consortium.pbft import messages as m
        from consortium.pbft.payload import encode_envelope
        self.nonce += 1
        return m.Request(f"{org}-client", self.nonce, m.RequestKind.APPLICATION,
                         encode_envelope(items), bytes(64))

    def commit(self, *requests: Any, state: dict[str, Any] | None = None) -> Any:
        from consortium.crypto.signing import Ed25519Signer
        from consortium.ledger.blocks import ClientOrgs, build_block
        from consortium.pbft import codec
        from consortium.pbft import events as ev
        from consortium.pbft import messages as m
        from consortium.pbft.state import batch_root
        seq = len(self.blocks) + 1
        header = m.PrePrepare(0, 0, seq, batch_root(requests), len(requests),
                              int(time.time() * 1000))
        a = ev.Execute(seq=seq, view=0, epoch=0, digest=header.digest, requests=requests,
                       executed=requests, pre_prepare=codec.sign_message(
                           Ed25519Signer.generate(), self.genesis.chain_id_bytes, 0, header),
                       certificate=(), state_digest=bytes(32))
        orgs = ClientOrgs(self.genesis.client_orgs(), {o.org_id for o in self.genesis.orgs})
        block = build_block(a, self.genesis.chain_id_bytes,
                            self.blocks[-1].header if self.blocks else None, orgs, state)
        self.blocks.append(block)
        return block

    @staticmethod
    def entries(block: Any) -> list[pb.SubjectEntry]:
        from consortium.ledger.transactions import target_of
        from consortium.wire import receipt_of, receipt_to_proto
        return [pb.SubjectEntry(receipt=receipt_to_proto(receipt_of(block, e.index)),
                                target_record_id=(target_of(e.action) or "")
                                if e.action is not None else "")
                for e in block.entries]


@pytest.fixture
def chain(consortium_dir: tuple[Path, Genesis]) -> Chain:
    return Chain(*consortium_dir)


def test_subject_events_come_from_the_receipts_items(svc: Service, chain: Chain) -> None:
    """The events `check_read` judges are decoded from the item each receipt carries, and
    the client is the one whose envelope held it: an Access granted to org0, one refused to
    org3 (logged: ACCESS_DENIED), a revocation; a grant the ledger refused is no event."""
    from consortium.ledger.blocks import RecordState
    from consortium.ledger.records import RecordKind
    from consortium.ledger.transactions import encode_tx
    now = int(time.time() * 1000)
    state = {PATIENT: RecordState(RecordKind.PATIENT, "P-9", "org0", frozenset({"org0"}))}
    block = chain.commit(
        chain.request("org0", [encode_tx(Access(PATIENT, "care", now)),
                               encode_tx(Revoke(PATIENT, "org1"))]),
        chain.request("org3", [encode_tx(Access(PATIENT, "curious", now)),
                               encode_tx(Grant(PATIENT, "org3", bytes(80)))]),
        state=state)
    svc.ledger.core.chain_id = svc.genesis.chain_id_bytes
    svc.ledger.subject = chain.entries(block)
    events = Screener.subject_events(svc.screener, "P-9", svc.addresses[0])
    got = [(e.tx_id, e.height, e.client_id, type(e.action).__name__, e.reason)
           for e in events]
    ids = [e.record_id for e in block.entries]
    assert got == [(ids[0], 1, "org0-client", "Access", ""),
                   (ids[2], 1, "org3-client", "Access", ACCESS_DENIED)], got
    assert [e.receipt.record_id for e in events] == [ids[0], ids[2]]
    # The invalid revocation (org1 reads nothing) and the refused grant are not events.
    assert [e.status for e in block.entries] == ["recorded", "invalid", "recorded", "invalid"]
    # And check_read over them: org0 may be answered, org3 is refused.
    assert check(events).access is not None
    assert check(events, Caller("org3-client", "org3")).code == \
        grpc.StatusCode.PERMISSION_DENIED


def test_a_provenance_verdict_sees_the_lots_earlier_records_only(svc: Service,
                                                                 chain: Chain) -> None:
    """The lot's history for the rules: the records of the lot before the one judged, in
    ledger order, from the receipts' public parts; transactions on records are skipped."""
    from consortium.ledger.records import RecordKind
    from consortium.ledger.transactions import encode_tx
    core = chain.cores["org0"]
    items = [core.record_item(RecordKind.PROVENANCE, "lot-1", event, meta, b"{}", [])
             for event, meta in (("manufactured", {"quantity": "10", "location": "Basel"}),
                                 ("shipped", {"quantity": "10", "custodian_from": "org0",
                                              "custodian_to": "org1"}),
                                 ("received", {"quantity": "99"}))]
    first = chain.commit(chain.request("org0", items[:2]))
    ids = [e.record_id for e in first.entries]
    second = chain.commit(chain.request("org0", [encode_tx(Grant(ids[0], "org1", bytes(80))),
                                                 items[2]]))
    judged = second.entries[1].record_id
    svc.ledger.core.chain_id = svc.genesis.chain_id_bytes
    svc.ledger.subject = chain.entries(first) + chain.entries(second)
    svc.ledger.records[judged] = RecordView(judged, 2, "provenance", "lot-1", "received",
                                            "org0", int(time.time() * 1000),
                                            {"quantity": "99"}, (), "recorded")
    event, history = svc.screener._provenance(judged)
    def summary(e: ProvenanceEvent) -> tuple[str, str | None, list[float | int | None]]:
        assert e.event is not None, e.malformed
        return e.record_id, e.event.biz_step, [q.quantity for q in e.event.quantity_list]
    assert [summary(h) for h in history] == [
        (ids[0], "commissioning", [10]), (ids[1], "shipping", [10])]
    assert summary(event) == (judged, "receiving", [99])
    verdict = svc.screener.judge(judged, "provenance")
    assert verdict.decision == "flag"  # 99 received of a lot of 10


class Posting(FakeLedger):
    """A ledger that answers `submit_many` with `outcomes` (one per item) and records every
    envelope it was given."""

    def __init__(self, addresses: list[str], outcomes: list[str]) -> None:
        super().__init__(addresses)
        self.outcomes = outcomes
        self.envelopes: list[int] = []
        self.singles = 0

    def _result(self, outcome: str, n: int) -> Any:
        from consortium.client.core import VerifiedReceipt
        if outcome == "recorded" or outcome == "refused":
            return cast(Any, VerifiedReceipt(tx(n), 5, "recorded" if outcome == "recorded"
                                             else "invalid", "", "", "", cast(Any, None)))
        code = grpc.StatusCode.INVALID_ARGUMENT if outcome == "invalid-envelope" \
            else grpc.StatusCode.UNAVAILABLE
        return SubmitError("refused", code)

    def submit_many(self, items: list[bytes], **kw: Any) -> list[Any]:
        self.envelopes.append(len(items))
        return [self._result(o, i) for i, o in enumerate(self.outcomes)]

    def submit_items(self, items: list[bytes]) -> list[Any]:
        self.singles += 1
        return [self._result("recorded", 100 + self.singles)]


def _judged(n: int) -> list[tuple[pb.ScreeningEntry, Any]]:
    from consortium.admission.model import Task, Verdict
    return [(pb.ScreeningEntry(record_id=tx(i), kind="provenance"),
             Verdict(subject=tx(i), task=Task.RECORD, decision="ok", risk=0.1,
                     reasons=("fine",), findings=(), backend="rules", model="",
                     model_sha256="", prompt_sha256="", input_sha256="", latency_ms=1))
            for i in range(n)]


def test_verdicts_of_a_poll_go_in_one_submission(svc: Service) -> None:
    ledger = Posting(svc.addresses, ["recorded"] * 3)
    screener = Screener(as_client(ledger), Reviewer(RulesBackend()), svc.genesis)
    assert screener.post_verdicts(_judged(3)) == 3
    assert ledger.envelopes == [3] and ledger.singles == 0
    assert screener.posted == 3 and screener.errors == 0


def test_an_envelope_refused_as_a_whole_is_retried_verdict_by_verdict(svc: Service) -> None:
    ledger = Posting(svc.addresses, ["invalid-envelope", "invalid-envelope", "recorded"])
    screener = Screener(as_client(ledger), Reviewer(RulesBackend()), svc.genesis)
    assert screener.post_verdicts(_judged(3)) == 3
    assert ledger.singles == 2


def test_an_unreachable_ledger_is_not_retried_per_verdict_and_refusals_do_not_count(
        svc: Service) -> None:
    """UNAVAILABLE already waited for the client's timeout: retrying each verdict would wait
    that long again per record. A verdict the ledger refused (the record was screened
    meanwhile) is not counted as posted."""
    ledger = Posting(svc.addresses, ["unavailable", "refused", "recorded"])
    screener = Screener(as_client(ledger), Reviewer(RulesBackend()), svc.genesis)
    assert screener.post_verdicts(_judged(3)) == 1
    assert ledger.singles == 0
    assert screener.errors == 1 and screener.last_error == "ledger: UNAVAILABLE"
