"""Focused yes/no questions scored from logprobs (issue 16): the probability is read from
the first token's top logprobs, the questions combine into a risk, and anything unusable
falls back like any model failure (a failure never approves)."""

from __future__ import annotations

import pytest

from consortium.admission import questions
from consortium.admission.backends import BackendError, OpenAIBackend, OpenAIConfig
from consortium.admission.model import JoinContext, JoinRequest
from consortium.admission.prompts import join_prompt
from consortium.admission.review import Reviewer
from tests.admission.fakes import fake_server

REQ = JoinRequest("r1", "Fjord Apotek", "validator.fjord.example:7050", "", "", "",
                  "We run 41 community pharmacies in Norway and record receipts of packs.",
                  (), 0, "Northwind Pharma")
CTX = JoinContext(frozenset({"Northwind Pharma"}), frozenset(), 0)


def test_yes_probability_reads_yes_and_no_tokens_whatever_their_case_and_spaces() -> None:
    top = [{"token": " Yes", "logprob": -0.5}, {"token": "no", "logprob": -1.5},
           {"token": "YES", "logprob": -3.0}, {"token": "Maybe", "logprob": -0.1}]
    p = questions.yes_probability(top)
    assert p is not None and 0.7 < p < 0.76
    assert questions.yes_probability([{"token": "The", "logprob": -0.1}]) is None


def test_combine_takes_the_strongest_bad_sign_and_names_it() -> None:
    scored = questions.combine("join", {"activity": 0.9, "purpose": 0.8, "evasion": 0.1,
                                        "manipulation": 0.05})
    assert scored.bad and scored.risk == 0.8
    assert scored.reasons[0].startswith("wants data for a purpose outside supply and care")
    clean = questions.combine("join", {"activity": 0.95, "purpose": 0.1, "evasion": 0.1,
                                       "manipulation": 0.1})
    assert not clean.bad and abs(clean.risk - 0.1) < 1e-9
    with pytest.raises(ValueError):
        questions.combine("join", {})


def test_question_prompts_keep_the_data_block_and_end_with_the_question() -> None:
    prompt = join_prompt(REQ, CTX, [])
    messages = questions.question_messages(prompt, questions.QUESTIONS["join"][1])
    user = messages[-1]["content"]
    assert "<data>" in user and user.rstrip().endswith("Answer yes or no.")
    assert "JSON object only" not in user
    other = questions.question_messages(prompt, questions.QUESTIONS["join"][2])
    prefix = user.split("Question:")[0]
    assert other[-1]["content"].startswith(prefix)  # the subject is a shared, cached prefix


@pytest.mark.parametrize("p_yes", [0.1, 0.9])
def test_reviewer_scores_a_join_by_its_questions(p_yes: float) -> None:
    """Every question gets the same P(yes): "activity" counts a no against the applicant,
    the others a yes, so a constant answer is always bad somewhere: 0.1 means no activity,
    0.9 a bad purpose."""
    with fake_server([f"yes={p_yes}"]) as server:
        backend = OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None))
        verdict = Reviewer(backend, judge="questions").review_join(REQ, CTX)
    assert len(server.requests) == len(questions.QUESTIONS["join"])
    assert all(r["max_tokens"] == 1 and r["logprobs"] is True for r in server.requests)
    assert verdict.decision == "reject" and abs(verdict.risk - 0.9) < 1e-6
    expected = "no real activity" if p_yes < 0.5 else "wants data for a purpose"
    assert verdict.reasons[0].startswith(expected)
    assert verdict.path == "model:join" and verdict.model_decision == "reject"
    assert verdict.prompt_sha256 == questions.template_sha256("join")


def test_a_clean_score_approves_and_an_answer_without_logprobs_is_a_failure() -> None:
    script = ["yes=0.95", "yes=0.05", "yes=0.05", "yes=0.05"]  # activity yes, others no
    with fake_server(script) as server:
        backend = OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None))
        verdict = Reviewer(backend, judge="questions").review_join(REQ, CTX)
    assert verdict.decision == "approve" and verdict.risk < 0.1
    with fake_server(["no-logprobs"]) as server:
        backend = OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None))
        with pytest.raises(BackendError):
            backend.yes_probability(({"role": "user", "content": "x"},))
        verdict = Reviewer(backend, judge="questions").review_join(REQ, CTX)
    assert verdict.decision == "review" and verdict.model_error is not None


def test_an_unknown_judge_is_refused() -> None:
    with pytest.raises(ValueError, match="judge must be one of"):
        Reviewer(OpenAIBackend(OpenAIConfig("http://127.0.0.1:9", "x", api_key_env=None)),
                 judge="vibes")
