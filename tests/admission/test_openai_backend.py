"""The OpenAI-compatible backend against a real HTTP server on loopback: a well-behaved one,
and ones that fail in every way a model endpoint fails in production."""

from __future__ import annotations

import time

import pytest

from consortium.admission.backends import BackendError, OpenAIBackend, OpenAIConfig
from consortium.admission.model import JoinContext, JoinRequest, PatientRecordInput, RecordContext
from consortium.admission.prompts import join_prompt
from consortium.admission.review import Reviewer
from consortium.admission.schema import MAX_TOKENS
from tests.admission.fakes import fake_server, fhir_visit

REQ = JoinRequest("req-1", "Alder Generics", "validator.alder.example:7050", "manufacturer",
                  "DE", "it@alder.example", "We manufacture generic tablets at a GMP plant and "
                  "want to record lot releases.", ("Northwind Pharma",))
CTX = JoinContext(frozenset({"Northwind Pharma"}))


def backend(url: str, **kw: object) -> OpenAIBackend:
    cfg = {"timeout_s": 2.0, "retries": 1, "retry_backoff_s": 0.05, **kw}
    return OpenAIBackend(OpenAIConfig(url, "test-model", api_key_env="ADM_TEST_KEY",
                                      **cfg))  # type: ignore[arg-type]


def test_request_is_strict_json_schema_with_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADM_TEST_KEY", "sk-test-123")
    with fake_server(["ok"]) as srv:
        text = backend(srv.url).complete(join_prompt(REQ, CTX, []))
    assert '"approve"' in text
    body = srv.requests[0]
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert schema["properties"]["risk"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert schema["properties"]["reasons"]["maxItems"] == 3
    assert schema["additionalProperties"] is False
    assert body["max_tokens"] == MAX_TOKENS and body["temperature"] == 0
    assert srv.headers_seen[0]["Authorization"] == "Bearer sk-test-123"


def test_url_ending_in_v1_is_not_doubled() -> None:
    with fake_server(["ok"]) as srv:
        b = backend(srv.url + "/v1")
        assert b._path == "/v1/chat/completions"
        b.complete(join_prompt(REQ, CTX, []))


def test_5xx_is_retried_then_succeeds() -> None:
    with fake_server(["5xx", "ok"]) as srv:
        backend(srv.url).complete(join_prompt(REQ, CTX, []))
    assert len(srv.requests) == 2


def test_persistent_5xx_gives_up_after_retries() -> None:
    with fake_server(["5xx"]) as srv, pytest.raises(BackendError) as exc:
        backend(srv.url, retries=2).complete(join_prompt(REQ, CTX, []))
    assert exc.value.kind == "http-503"
    assert len(srv.requests) == 3


def test_429_is_retried() -> None:
    with fake_server(["429", "ok"]) as srv:
        backend(srv.url).complete(join_prompt(REQ, CTX, []))
    assert len(srv.requests) == 2


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_hanging_or_trickling_server_hits_the_deadline(mode: str) -> None:
    with fake_server([mode]) as srv:
        t = time.monotonic()
        with pytest.raises(BackendError) as exc:
            backend(srv.url, timeout_s=0.8).complete(join_prompt(REQ, CTX, []))
        elapsed = time.monotonic() - t
    assert exc.value.kind == "timeout"
    assert elapsed < 2.5, "the deadline covers the whole call, not each read"
    assert len(srv.requests) == 1, "timeouts are not retried"


@pytest.mark.parametrize(("mode", "kind"), [("invalid-json", "invalid-response"),
                                            ("truncated", "truncated")])
def test_unusable_responses(mode: str, kind: str) -> None:
    with fake_server([mode]) as srv, pytest.raises(BackendError) as exc:
        backend(srv.url).complete(join_prompt(REQ, CTX, []))
    assert exc.value.kind == kind


def test_connection_refused_is_a_backend_error() -> None:
    with fake_server(["ok"]) as srv:
        url = srv.url
    with pytest.raises(BackendError) as exc:
        backend(url, retries=0).complete(join_prompt(REQ, CTX, []))
    assert exc.value.kind == "connection"


@pytest.mark.parametrize("mode", ["hang", "5xx", "invalid-json", "bad-answer", "truncated"])
def test_reviewer_turns_every_failure_into_review(mode: str) -> None:
    with fake_server([mode]) as srv:
        verdict = Reviewer(backend(srv.url, timeout_s=0.8, retries=0)).review_join(REQ, CTX)
    assert verdict.decision == "review"
    assert verdict.model_decision is None and verdict.model_error
    assert verdict.backend == "openai" and verdict.model == "test-model"


def test_reviewer_uses_a_good_answer() -> None:
    with fake_server(["ok"]) as srv:
        verdict = Reviewer(backend(srv.url)).review_join(REQ, CTX)
    assert verdict.decision == "approve" and verdict.model_decision == "approve"
    assert verdict.reasons == ("concrete, licensed activity",)
    assert len(verdict.prompt_sha256) == 64 and len(verdict.input_sha256) == 64


def test_inconsistent_answer_is_not_used() -> None:
    with fake_server(["ok"], {"decision": "approve", "risk": 0.97,
                              "reasons": ["looks fine"]}) as srv:
        verdict = Reviewer(backend(srv.url)).review_join(REQ, CTX)
    assert verdict.decision == "review"
    assert "inconsistent" in (verdict.model_error or "")


def test_patient_payload_is_not_sent_to_a_remote_endpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    remote = backend("https://models.example:8443")

    def no_network(self: OpenAIBackend, body: bytes) -> tuple[int, bytes]:
        raise AssertionError("a patient payload was about to leave the host")

    monkeypatch.setattr(OpenAIBackend, "_post", no_network)
    record = PatientRecordInput("pat-1", "P-1", "encounter", "Lakeside Clinic", 1772366400000,
                                payload=fhir_visit())
    verdict = Reviewer(remote).screen_record(record, RecordContext())
    assert verdict.decision == "ok" and verdict.model_decision is None
    assert any(f.rule == "policy.remote-endpoint" for f in verdict.findings)


@pytest.mark.parametrize("allowed", [False, True])
def test_remote_patient_payload_only_when_allowed(allowed: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    record = PatientRecordInput("pat-1", "P-1", "encounter", "Lakeside Clinic", 1772366400000,
                                payload=fhir_visit())
    with fake_server(["ok"], {"decision": "ok", "risk": 0.1, "reasons": ["plausible"]}) as srv:
        b = backend(srv.url)
        monkeypatch.setattr(b, "is_loopback", lambda: False)  # as if it were a hosted API
        verdict = Reviewer(b, allow_remote_patient_data=allowed,
                           sample_rate=1.0).screen_record(record, RecordContext())
    if allowed:
        assert verdict.model_decision == "ok"
        assert "8867-4" in srv.requests[0]["messages"][1]["content"]
    else:
        assert verdict.model_decision is None and not srv.requests
