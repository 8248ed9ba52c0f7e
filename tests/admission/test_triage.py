"""Which records the model reviews (issue 16): rules on every record, the model on uncertain
ones, free text and a sample, every verdict with its path, and a spent model budget that
never lets unread free text through."""

from __future__ import annotations

from pathlib import Path

from consortium.admission import triage
from consortium.admission.backends import OpenAIBackend, OpenAIConfig, RulesBackend
from consortium.admission.eval import EvalItem, load_eval_set
from consortium.admission.model import PatientRecordInput, RecordContext, Verdict
from consortium.admission.review import Reviewer
from tests.admission.fakes import fake_server

SET = Path(__file__).resolve().parents[1] / "data" / "admission"
OK = {"decision": "ok", "risk": 0.1, "reasons": ["consistent"]}


def _items() -> dict[str, EvalItem]:
    return {i.id: i for i in load_eval_set(SET, "dev")}


def test_sampling_is_deterministic_and_near_its_rate() -> None:
    ids = [f"record-{n}" for n in range(4000)]
    chosen = [i for i in ids if triage.sampled(i, 0.05)]
    assert chosen == [i for i in ids if triage.sampled(i, 0.05)]
    assert 140 <= len(chosen) <= 260
    assert not any(triage.sampled(i, 0.0) for i in ids[:100])
    assert all(triage.sampled(i, 1.0) for i in ids[:100])


def test_free_text_is_notes_and_narrative_not_product_names() -> None:
    items = _items()
    noted = [i.subject for i in items.values() if isinstance(i.subject, PatientRecordInput)
             and i.subject.payload is not None and "note" in str(i.subject.payload)]
    assert noted and all(triage.has_free_text(s) for s in noted[:5])
    plain = items["rec-001"].subject  # a commissioning event: product name, no note
    assert not isinstance(plain, PatientRecordInput)
    assert not triage.has_free_text(plain)


def _screen(reviewer: Reviewer, item: EvalItem, **kw: bool) -> Verdict:
    assert isinstance(item.context, RecordContext) and not hasattr(item.subject, "org_name")
    return reviewer.screen_record(item.subject, item.context, **kw)  # type: ignore[arg-type]


def test_every_verdict_records_its_path_and_the_model_sees_only_what_needs_it() -> None:
    items = _items()
    records = [i for i in items.values() if i.task.value == "record"]
    with fake_server(["ok"], OK) as server:
        reviewer = Reviewer(OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None)))
        verdicts = [(_screen(reviewer, i), i) for i in records]
    paths = {v.path for v, _ in verdicts}
    assert paths <= {"rules:certain", "rules:clear", "rules:metadata-only", "model:uncertain",
                     "model:free-text", "model:sample"}
    asked = [v for v, _ in verdicts if v.path.startswith("model:")]
    assert len(server.requests) == len(asked) < len(records) // 2
    assert all(v.model_decision is None for v, _ in verdicts if v.path.startswith("rules:"))
    clear = [v for v, _ in verdicts if v.path == "rules:clear"]
    assert clear and all(v.decision == "ok" for v in clear)
    assert Verdict.from_json(asked[0].to_json()).path == asked[0].path
    assert reviewer.stats.count("model:") == len(asked)


def test_a_spent_budget_flags_unread_free_text_and_skips_the_sample() -> None:
    items = _items()
    reviewer = Reviewer(OpenAIBackend(OpenAIConfig("http://127.0.0.1:9", "fake",
                                                   api_key_env=None)), sample_rate=1.0)
    seen: dict[str, Verdict] = {}
    for item in items.values():
        if item.task.value != "record" or item.bad:
            continue
        v = _screen(reviewer, item, model_allowed=False)
        seen.setdefault(v.path, v)
    assert seen["rules:model-busy:free-text"].decision == "flag"
    assert "free text not read" in " ".join(seen["rules:model-busy:free-text"].reasons)
    assert seen["rules:model-busy:sample"].decision == "ok"


def test_screen_all_asks_the_model_on_every_record_the_rules_do_not_decide() -> None:
    items = _items()
    records = [i for i in items.values() if i.task.value == "record"][:40]
    with fake_server(["ok"], OK):
        pass
    rules_only = Reviewer(RulesBackend(), screen_all=True)
    assert {_screen(rules_only, i).path for i in records} <= {"rules:certain",
                                                              "rules:no-model"}
    with fake_server(["ok"], OK) as server:
        reviewer = Reviewer(OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None)),
                            screen_all=True)
        verdicts = [_screen(reviewer, i) for i in records]
    assert all(v.path.startswith("model:") for v in verdicts if v.path != "rules:certain")
    assert len(server.requests) == sum(v.path.startswith("model:") for v in verdicts)


def test_a_payload_not_shared_is_screened_on_metadata_only_not_reflex_flagged() -> None:
    """Issue 16: the model used to flag every record it could not read (payload.unreadable,
    risk 0.7). Now the verdict says what happened and the rules judge the metadata."""
    unread = [i for i in _items().values() if isinstance(i.subject, PatientRecordInput)
              and i.subject.payload is None and not i.bad]
    assert unread
    with fake_server(["ok"], OK) as server:
        reviewer = Reviewer(OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None)),
                            sample_rate=1.0)
        verdicts = [_screen(reviewer, i) for i in unread]
    assert not server.requests
    assert all(v.path == "rules:metadata-only" and v.decision == "ok" for v in verdicts)
    assert all("screened on metadata only" in " ".join(v.reasons) for v in verdicts)
