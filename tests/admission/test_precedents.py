"""Precedents (issue 16): the most similar decided join requests, shown to the model and
named in the verdict; the shipped seed holds dev split items only."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from consortium.admission.backends import OpenAIBackend, OpenAIConfig
from consortium.admission.eval import load_eval_set
from consortium.admission.model import JoinContext, JoinRequest, Verdict
from consortium.admission.precedent_seed import SEED
from consortium.admission.precedents import Precedent, PrecedentIndex, seed_index
from consortium.admission.review import Reviewer
from tests.admission.fakes import fake_server

SET = Path(__file__).resolve().parents[1] / "data" / "admission"
PHARMACY = ("We run community pharmacies in the north and want to record receipts and "
            "dispensing of serialised packs.")


def test_the_seed_is_dev_only_and_matches_its_generator() -> None:
    test = load_eval_set(SET, "test")
    test_ids = {i.id for i in test}
    test_texts = {i.subject.statement for i in test if i.kind == "join"}  # type: ignore[union-attr]
    assert SEED and not {i for i, _, _ in SEED} & test_ids
    assert not {t for _, _, t in SEED} & test_texts
    dev = {i.id: i for i in load_eval_set(SET, "dev")}
    for ident, decision, text in SEED:
        assert dev[ident].subject.statement == text  # type: ignore[union-attr]
        assert decision == ("reject" if dev[ident].bad else "approve")
    spec = importlib.util.spec_from_file_location("make_precedent_seed",
                                                  SET / "make_precedent_seed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text(encoding="utf-8") == module.build()


def test_nearest_finds_similar_cases_and_never_the_case_itself() -> None:
    index = PrecedentIndex([
        Precedent("a", "approve", "Community pharmacy chain recording receipts of packs."),
        Precedent("b", "reject", "We resell health data to advertisers and insurers."),
        Precedent("c", "approve", PHARMACY)])
    found = index.nearest(PHARMACY)
    assert [p.id for p, _ in found][:1] == ["a"] and "c" not in [p.id for p, _ in found]
    assert index.nearest("Advertisers buy the health data we resell.")[0][0].id == "b"
    assert index.nearest("zzz qqq") == []
    assert re.fullmatch(r"a:[0-9a-f]{16}", found[0][0].ref)


def test_the_model_sees_the_precedents_and_the_verdict_names_them() -> None:
    req = JoinRequest("r1", "Fjord Apotek", "validator.fjord.example:7050", "", "", "",
                      PHARMACY, (), 0, "Northwind Pharma")
    ctx = JoinContext(frozenset({"Northwind Pharma"}), frozenset(), 0)
    with fake_server(["ok"]) as server:
        backend = OpenAIBackend(OpenAIConfig(server.url, "fake", api_key_env=None))
        verdict = Reviewer(backend, precedents=seed_index()).review_join(req, ctx)
    user = server.requests[0]["messages"][1]["content"]
    assert "similar_decided_cases" in user and "members_decided" in user
    assert 1 <= len(verdict.precedents) <= 3
    seed_ids = {i for i, _, _ in SEED}
    assert all(ref.split(":")[0] in seed_ids for ref in verdict.precedents)
    assert Verdict.from_json(verdict.to_json()).precedents == verdict.precedents
    assert json.loads(verdict.to_json())["precedents"] == list(verdict.precedents)


def test_no_precedents_without_a_model_or_an_index() -> None:
    from consortium.admission.backends import RulesBackend

    req = JoinRequest("r1", "Fjord Apotek", "validator.fjord.example:7050", "", "", "",
                      PHARMACY, (), 0, "Northwind Pharma")
    ctx = JoinContext(frozenset({"Northwind Pharma"}), frozenset(), 0)
    assert Reviewer(RulesBackend(), precedents=seed_index()).review_join(
        req, ctx).precedents == ()
