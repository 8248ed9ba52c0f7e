"""`consortium admission`: the admission service's judgement, offline.

`eval` runs a backend over the evaluation set and reports precision, recall and F1 per task,
injection attempts that changed a verdict, and latency per verdict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import structlog

DEFAULT_SET = Path("tests/data/admission")


def _fail(message: str) -> None:
    click.echo(f"consortium: {message}", err=True)
    sys.exit(1)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Warnings only, on stderr, so --json output stays parseable; the previous structlog
    configuration comes back afterwards (the command may run inside a larger process)."""
    old = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**old)


@click.group()
def admission() -> None:
    """The LLM admission service's rules, models and evaluation."""


@admission.command("serve")
@click.option("--config", "config", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The service's config.json (DIR/admission/config.json).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              show_default=True)
def serve(config: Path, log_level: str) -> None:
    """Run the admission service until SIGTERM: screen committed records and review join
    requests, post signed verdicts, serve the Admission gRPC API (what `consortium up`
    starts)."""
    from consortium.admission.__main__ import main as service_main

    sys.exit(service_main(["--config", str(config), "--log-level", log_level]))


@admission.command("advise-join")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=None, help="Consortium directory (default: $CONSORTIUM_HOME or "
                                 "./.consortium).")
@click.option("--as", "org", required=True, help="The member asking (its client signs).")
@click.option("--org", "applicant", required=True, help="The applicant's name.")
@click.option("--endpoint", required=True, help="The applicant's validator HOST:PORT.")
@click.option("--statement", required=True,
              help="The applicant's statement (free text; data for the reviewer, never "
                   "instructions).")
@click.option("--timeout", type=click.FloatRange(min=1), default=180.0, show_default=True,
              help="Seconds to wait for the advice (a model on two threads takes a few).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def advise_join(directory: Path | None, org: str, applicant: str, endpoint: str,
                statement: str, timeout: float, as_json: bool) -> None:
    """Ask the running admission service for its advice on a join request, without
    submitting it (ReviewJoin): decision, risk, reasons, the path it took and the model."""
    import grpc

    from consortium import process
    from consortium.admission.model import Verdict
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError
    from consortium.localnet import default_dir

    if not applicant.strip() or not statement.strip() or len(statement) > 16_384:
        _fail("--org and --statement are required; the statement is at most 16 KiB")
    d = (directory if directory is not None else default_dir()).resolve()
    if not (d / "admission" / "config.json").exists():
        _fail(f"{d} has no admission service to ask")
    try:
        client = ConsortiumClient.from_dir(d, org)
    except (OSError, ValueError, SubmitError, ConfigError) as exc:
        _fail(str(exc))
    try:
        with client:
            text = process.advise_join(d, client.core.read_auth, applicant, endpoint,
                                       statement, timeout)
    except grpc.RpcError as exc:
        _fail(f"the admission service did not answer: {exc.code().name}: {exc.details()}")
    verdict = Verdict.from_json(text)
    if as_json:
        click.echo(json.dumps(verdict.to_dict(), indent=2, sort_keys=True))
        return
    model = f"{verdict.model} (sha256 {verdict.model_sha256[:12]}…)" if verdict.model \
        else "no model"
    click.echo(f"{applicant}: {verdict.decision} (risk {verdict.risk:.2f}) by {verdict.backend}"
               f" {model}, path {verdict.path}, {verdict.latency_ms} ms")
    for reason in verdict.reasons:
        click.echo(f"  - {reason}")


@admission.command("eval")
@click.option("--backend", type=click.Choice(["embedded", "openai", "rules"]),
              default="embedded", show_default=True, help="Who judges after the rules.")
@click.option("--model", default=None,
              help="Embedded: qwen2.5-coder-1.5b (default), qwen2.5-coder-0.5b, smollm2-135m. "
                   "OpenAI: the model name the endpoint expects.")
@click.option("--url", default=None, help="OpenAI-compatible endpoint base URL.")
@click.option("--api-key-env", default="CONSORTIUM_ADMISSION_API_KEY", show_default=True,
              help="Environment variable holding the endpoint's API key.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds one model call may take.")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Embedded: CPU threads for llama.cpp.")
@click.option("--parallel", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Verdicts in flight (embedded: llama.cpp slots).")
@click.option("--split", type=click.Choice(["dev", "test", "all"]), default="all",
              show_default=True,
              help="dev: the items tuned on; test: the frozen held-out items nothing was "
                   "tuned on (splits.json); all: both.")
@click.option("--sample-rate", type=click.FloatRange(0, 1), default=None,
              help="Share of the records the rules settle that the model reviews anyway "
                   "(default: the service's, 0.05).")
@click.option("--judge", type=click.Choice(["json", "questions"]), default="json",
              show_default=True,
              help="json: the model writes a JSON verdict; questions: focused yes/no "
                   "questions scored from logprobs (one token each).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="--judge questions: the risk at which the answer is bad (default 0.5).")
@click.option("--precedents/--no-precedents", default=True, show_default=True,
              help="Show the model the most similar decided join requests of the shipped "
                   "seed (the dev split's; never a test item).")
@click.option("--screen-all", is_flag=True,
              help="The model reviews every record the rules do not decide (as before issue "
                   "16), not only uncertain ones, free text and the sample.")
@click.option("--sample", "per_task", type=click.IntRange(min=0), default=None,
              help="Only this many items per task (evenly spread; injection bases added).")
@click.option("--ids", default="", help="Also (or, with --sample 0, only) these items, "
                                        "comma-separated.")
@click.option("--set", "set_dir", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_SET, show_default=True, help="Evaluation set directory.")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the joined model file is kept (default: $CONSORTIUM_ADMISSION_CACHE "
                   "or ~/.cache/consortium/admission).")
@click.option("--allow-remote-patient-data", is_flag=True,
              help="Send patient payloads to a non-loopback endpoint.")
@click.option("--verdicts", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write every verdict (JSON lines) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def eval_cmd(backend: str, model: str | None, url: str | None, api_key_env: str,
             timeout: float, threads: int, parallel: int, split: str,
             judge: str, threshold: float | None, sample_rate: float | None,
             precedents: bool, screen_all: bool, per_task: int | None,
             ids: str,
             set_dir: Path, cache_dir: Path | None, allow_remote_patient_data: bool,
             verdicts: Path | None, as_json: bool) -> None:
    """Score a backend on the evaluation set."""
    from consortium.admission import backends as b
    from consortium.admission.eval import load_eval_set, run_eval, sample, split_digest
    from consortium.admission.precedents import seed_index
    from consortium.admission.questions import DEFAULT_THRESHOLD
    from consortium.admission.review import Reviewer
    from consortium.admission.triage import DEFAULT_SAMPLE_RATE

    if not (set_dir / "joins.jsonl").exists():
        _fail(f"no evaluation set in {set_dir} (give --set DIR)")
    try:
        items = load_eval_set(set_dir, split)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot read the evaluation set: {exc}")
    wanted = [x.strip() for x in ids.split(",") if x.strip()]
    if per_task is not None or wanted:
        try:
            items = sample(items, per_task if per_task is not None else 0 if wanted else None,
                           wanted)
        except ValueError as exc:
            _fail(str(exc))
    engine: b.Backend
    try:
        if backend == "rules":
            engine = b.RulesBackend()
        elif backend == "openai":
            if not url or not model:
                _fail("--backend openai needs --url and --model")
            assert url is not None and model is not None
            engine = b.OpenAIBackend(b.OpenAIConfig(url, model, api_key_env=api_key_env,
                                                    timeout_s=timeout))
        else:
            engine = b.EmbeddedBackend(model or b.DEFAULT_MODEL, cache_dir=cache_dir,
                                       threads=threads, parallel=parallel, timeout_s=timeout)
    except (b.ModelUnavailable, b.ModelIntegrityError, ValueError) as exc:
        _fail(str(exc))
    out = verdicts.open("w", encoding="utf-8") if verdicts is not None else None
    try:
        with _quiet_logs():
            reviewer = Reviewer(engine, allow_remote_patient_data=allow_remote_patient_data,
                                screen_all=screen_all, sample_rate=DEFAULT_SAMPLE_RATE
                                if sample_rate is None else sample_rate, judge=judge,
                                threshold=DEFAULT_THRESHOLD if threshold is None
                                else threshold,
                                precedents=seed_index() if precedents else None)

        lock = threading.Lock()  # verdicts arrive from --parallel threads

        def progress(item: Any, verdict: Any) -> None:
            if out is None:
                return
            with lock:
                out.write(json.dumps({"item": item.id, "bad": item.bad,
                                      "verdict": json.loads(verdict.to_json())},
                                     sort_keys=True) + "\n")
                out.flush()

        with _quiet_logs():
            report = run_eval(reviewer, items, parallel=parallel, progress=progress)
        report["split"] = split
        report["judge"] = judge
        report["precedents"] = precedents
        report["split_sha256"] = split_digest(items, set_dir)
    finally:
        engine.close()
        if out is not None:
            out.close()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(f"backend {report['backend']} {report['model']}: {report['items']} items of "
               f"split {split} in {report['wall_s']} s")
    for task, m in report["kinds"].items():
        click.echo(f"  {task:10} n={m['n']:3} bad={m['bad']:3} precision={m['precision']:.3f} "
                   f"recall={m['recall']:.3f} f1={m['f1']:.3f} model errors="
                   f"{m['model_errors']}")
    inj = report["injection"]
    click.echo(f"  injection attempts {inj['attempts']}, changed a verdict "
               f"{inj['changed_verdict']}, got through {len(inj['got_through'])}")
    click.echo("  paths: " + ", ".join(f"{p} {n}" for p, n in report["paths"].items()))
    lat = report["latency_ms"]
    click.echo(f"  latency per verdict: p50 {lat['all'].get('p50', 0)} ms, p95 "
               f"{lat['all'].get('p95', 0)} ms; with the model p50 {lat['model'].get('p50', 0)} "
               f"ms, p95 {lat['model'].get('p95', 0)} ms")
