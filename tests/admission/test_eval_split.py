"""The evaluation set's splits: the test split is frozen (issue 16), so its figures are on
items no prompt, pattern or threshold was tuned on."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from consortium.admission.eval import load_eval_set, split_digest

SET = Path(__file__).resolve().parents[1] / "data" / "admission"

FROZEN_TEST_SHA256 = "71cb8aabdf3b24c0c5ac20d5a85c741142948800459a0f42bf8117416ef6e539"
"""The test split's digest when it was frozen (2026-12-06, before any backend ran on the
unseen items). Changing a test item changes it: that is a new test split, and the figures
measured on the old one no longer apply. Say so in docs/admission.md if it ever happens."""


def test_the_test_split_is_the_frozen_one() -> None:
    items = load_eval_set(SET, "test")
    assert len(items) >= 50
    assert split_digest(items, SET) == FROZEN_TEST_SHA256


def test_splits_are_disjoint_and_cover_the_set() -> None:
    dev = {i.id for i in load_eval_set(SET, "dev")}
    test = {i.id for i in load_eval_set(SET, "test")}
    every = {i.id for i in load_eval_set(SET)}
    assert not dev & test and dev | test == every


def test_test_split_is_unseen_items_only_with_their_injection_bases() -> None:
    test = load_eval_set(SET, "test")
    ids = {i.id for i in test}
    assert all(i.id.startswith("u-") for i in test)
    assert all(i.base in ids for i in test if i.injection)
    for kind in ("join", "patient", "provenance"):
        group = [i for i in test if i.kind == kind]
        assert len(group) >= 15 and 0.3 <= sum(i.bad for i in group) / len(group) <= 0.6


def test_statement_only_join_requests_are_in_the_test_split() -> None:
    joins = [i for i in load_eval_set(SET, "test") if i.kind == "join"]
    assert all(i.subject.sector == "" and i.subject.contact_email == ""  # type: ignore[union-attr]
               for i in joins)


def assert_generated(script: str) -> None:
    """The files `SET/script`'s build() writes are the committed ones."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), SET / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, text in module.build().items():
        assert (SET / name).read_text(encoding="utf-8") == text, f"{name} is stale"


def test_unseen_files_match_their_generator() -> None:
    assert_generated("make_unseen_set.py")


def test_unknown_split_is_refused() -> None:
    try:
        load_eval_set(SET, "train")
    except ValueError as exc:
        assert "split must be one of" in str(exc)
    else:
        raise AssertionError("an unknown split was accepted")


def test_splits_file_names_every_split() -> None:
    data = json.loads((SET / "splits.json").read_text(encoding="utf-8"))
    assert set(data) >= {"dev", "test", "frozen"}
