"""Rules first, then the model; the stricter advice wins.

How a verdict comes about:
1. The deterministic rules run. A `certain` finding decides (reject / flag) and the model is not
   asked: nothing it could say would change the outcome.
2. Otherwise the model is asked (unless the backend is `rules`). Its answer must parse against
   the strict schema and be consistent (approve/ok with risk <= 0.5, reject/flag with risk >=
   0.5). An unusable answer (timeout, server error, bad JSON, contradiction) becomes review
   (joins) or flag (records): a failure never approves.
3. The model cannot clear what the rules flagged: certain findings decide before it is asked;
   suspect findings go to the model as evidence, and the final decision is the stricter of
   the model's and the rules' (suspect alone: review / flag). The model can only add.
4. Records only: the model reviews what the rules leave uncertain, free text, and a sample
   (triage.py); every verdict records the path it took (`Verdict.path`).
5. A patient payload goes to the model only when the backend is on loopback or the operator
   allowed remote endpoints explicitly; otherwise the record is judged by the rules alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from consortium.admission import questions, triage
from consortium.admission.backends import Backend, BackendError
from consortium.admission.model import (
    Finding,
    JoinContext,
    JoinRequest,
    PatientRecordInput,
    ProvenanceEvent,
    RecordContext,
    Severity,
    Task,
    Verdict,
    canonical_json,
    sha256_hex,
    strictest,
)
from consortium.admission.precedents import PrecedentIndex
from consortium.admission.prompts import (
    Prompt,
    join_prompt,
    patient_prompt,
    provenance_prompt,
    template_sha256,
)
from consortium.admission.rules import check_join, check_patient, check_provenance, rules_outcome
from consortium.admission.schema import Answer, AnswerError, parse_answer

log = structlog.get_logger("consortium.admission")

FALLBACK = {Task.JOIN: "review", Task.RECORD: "flag"}
JUDGES = ("json", "questions")
FALLBACK_RISK = 0.5


class Reviewer:
    """Turns join requests and records into verdicts. Thread-safe when the backend is (all
    backends here are), so an embedded server with several slots can be fed in parallel."""

    def __init__(self, backend: Backend, *, allow_remote_patient_data: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sample_rate: float = triage.DEFAULT_SAMPLE_RATE,
                 screen_all: bool = False, judge: str = "json",
                 threshold: float = questions.DEFAULT_THRESHOLD,
                 precedents: PrecedentIndex | None = None) -> None:
        """`sample_rate`: the share of records the rules settle that the model reviews all
        the same; `screen_all`: the model reviews every record the rules do not decide (the
        behaviour before issue 16; an evaluation option); `judge`: "json" (the model writes a
        JSON verdict) or "questions" (focused yes/no questions scored from logprobs, combined
        at `threshold`: questions.py)."""
        self.backend = backend
        self.allow_remote_patient_data = allow_remote_patient_data
        self._clock = clock
        self.sample_rate = sample_rate
        self.screen_all = screen_all
        if judge not in JUDGES:
            raise ValueError(f"judge must be one of {', '.join(JUDGES)}, not {judge!r}")
        self.judge = judge
        self.threshold = threshold
        self.precedents = precedents
        """Decided join requests shown to the model as worked examples (None: none)."""
        self.stats = triage.ModelStats()
        if backend.uses_model and not backend.is_loopback() and not allow_remote_patient_data:
            log.warning("admission.remote_endpoint", backend=backend.name,
                        note="patient payloads will not be sent; those records get the "
                             "rules alone")

    def review_join(self, request: JoinRequest, context: JoinContext) -> Verdict:
        """Advice on a join request: approve / reject / review."""
        start = self._clock()
        findings = check_join(request, context)
        input_doc = {"request": request.to_dict(), "context": context.to_dict()}
        shown = self.precedents.nearest(request.statement) \
            if self.precedents is not None and self.backend.uses_model else []
        prompt = join_prompt(request, context, findings,
                             [(p.text, p.decision) for p, _ in shown])
        return self._decide(Task.JOIN, request.request_id, findings, prompt, input_doc, start,
                            subject_input=request, precedents=tuple(p.ref for p, _ in shown))

    def screen_record(self, record: ProvenanceEvent | PatientRecordInput,
                      context: RecordContext, *, model_allowed: bool = True) -> Verdict:
        """Advice on a new record: ok / flag. `model_allowed` False: the caller's model
        budget is spent, so a record the model should read gets the busy path (triage.py)."""
        start = self._clock()
        if isinstance(record, ProvenanceEvent):
            findings = check_provenance(record, context)
            input_doc = {"record": record.to_dict(),
                         "history": [h.to_dict() for h in context.history],
                         "registry": context.registry.to_dict(), "now_ms": context.now_ms}
            prompt: Prompt | None = provenance_prompt(record, context, findings)
        else:
            findings = check_patient(record, context)
            # No plaintext in the hash: the verdict is public to the members.
            input_doc = {"record": record.public_dict(), "payload_read": record.payload
                         is not None, "recent": sorted(s.record_id for s in context.recent),
                         "now_ms": context.now_ms}
            prompt = patient_prompt(record, findings)
            if record.payload is None:
                prompt = None  # nothing for the model to read: metadata only, said as such
            elif self.backend.uses_model \
                    and not self.backend.is_loopback() and not self.allow_remote_patient_data:
                findings = [*findings, Finding(
                    "policy.remote-endpoint", Severity.INFO,
                    "patient payload not sent to a non-loopback model endpoint")]
                prompt = None
        return self._decide(Task.RECORD, record.record_id, findings, prompt, input_doc, start,
                            kind="provenance" if isinstance(record, ProvenanceEvent)
                            else "patient", subject_input=record,
                            model_allowed=model_allowed)

    def _decide(self, task: Task, subject: str, findings: Sequence[Finding],
                prompt: Prompt | None, input_doc: object, start: float,
                kind: str = "join",
                subject_input: JoinRequest | ProvenanceEvent | PatientRecordInput | None = None,
                model_allowed: bool = True, precedents: tuple[str, ...] = ()) -> Verdict:
        rule_decision, rule_risk = rules_outcome(task, findings)
        certain = [f for f in findings if f.severity is Severity.CERTAIN]
        answer: Answer | None = None
        error: str | None = None
        model_decision: str | None = None
        reason = None
        if subject_input is not None and not certain:
            reason = triage.model_reason(subject_input, findings, self.sample_rate) or (
                "all" if self.screen_all else None)
        if certain:
            decision, risk, path = rule_decision, rule_risk, triage.RULES_CERTAIN
            reasons = [f.message for f in certain[:3]]
        elif not self.backend.uses_model or prompt is None or reason is None \
                or not model_allowed:
            decision, risk = rule_decision, rule_risk
            reasons = [f.message for f in findings if f.severity is Severity.SUSPECT][:3] or [
                "no rule finding" if decision in ("approve", "ok")
                else "rule findings need a human look"]
            path = triage.RULES_CLEAR if reason is None else triage.RULES_NO_MODEL
            if not self.backend.uses_model:
                path = triage.RULES_NO_MODEL
            elif isinstance(subject_input, PatientRecordInput) and subject_input.payload is None:
                path = triage.METADATA_ONLY
                reasons = [*reasons[:2], "screened on metadata only: the payload was not "
                                         "shared with the reviewer"]
            elif prompt is None:
                path = triage.RULES_POLICY
                reasons = [*reasons[:2], "judged by the rules alone (patient data policy)"]
            elif reason is not None and not model_allowed:
                path = f"{triage.MODEL_BUSY}:{reason}"
                if reason == triage.FREE_TEXT:  # unread text is never silently accepted
                    decision, risk = strictest([FALLBACK[task], decision]), max(
                        risk, FALLBACK_RISK)
                    reasons = [*reasons[:2], "free text not read: the model's budget was "
                                             "spent; needs a human look"]
        else:
            path = f"model:{reason}"
            answer, error = self._ask(task, prompt)
            if answer is None:
                decision = strictest([FALLBACK[task], rule_decision])
                risk = max(FALLBACK_RISK, rule_risk)
                reasons = [f"model gave no usable answer ({error})"]
            else:
                model_decision = answer.decision
                decision, risk = answer.decision, answer.risk
                reasons = list(answer.reasons)
                stricter = strictest([decision, rule_decision])
                if stricter != decision:  # a suspect finding: the model cannot clear it
                    decision, risk = stricter, max(risk, rule_risk)
                    reasons = [*reasons[:2], "rule findings need a human look"]
        latency_ms = int((self._clock() - start) * 1000)
        self.stats.record(path, latency_ms, path.startswith("model:"))
        verdict = Verdict(
            subject=subject, task=task, decision=decision,
            risk=round(min(max(risk, 0.0), 1.0), 4),
            reasons=tuple(r[:200] for r in reasons[:3]), findings=tuple(findings),
            backend=self.backend.name, model=self.backend.model,
            model_sha256=self.backend.model_sha256,
            prompt_sha256=("" if not self.backend.uses_model else
                           questions.template_sha256(kind) if self.judge == "questions"
                           else template_sha256(kind)),
            input_sha256=sha256_hex(canonical_json(input_doc)), latency_ms=latency_ms,
            model_decision=model_decision, model_error=error, path=path,
            precedents=precedents if path.startswith("model:") else ())
        log.info("admission.verdict", subject=subject, task=task.value, decision=decision,
                 model_decision=model_decision, model_error=error, latency_ms=latency_ms,
                 findings=[f.rule for f in findings])
        return verdict

    def _ask(self, task: Task, prompt: Prompt) -> tuple[Answer | None, str | None]:
        if self.judge == "questions":
            return self._score(task, prompt)
        try:
            text = self.backend.complete(prompt)
        except BackendError as exc:
            return None, str(exc)[:200]
        try:
            return parse_answer(task, text), None
        except AnswerError as exc:
            return None, f"unusable answer: {exc}"[:200]

    def _score(self, task: Task, prompt: Prompt) -> tuple[Answer | None, str | None]:
        """The focused questions of the prompt's kind, each scored by P(yes), combined into an
        answer (questions.py). Any unusable question makes the whole answer unusable: a
        partial score would understate the risk."""
        p_yes: dict[str, float] = {}
        try:
            for q in questions.QUESTIONS[prompt.kind]:
                p_yes[q.id] = self.backend.yes_probability(
                    questions.question_messages(prompt, q))
        except BackendError as exc:
            return None, str(exc)[:200]
        scored = questions.combine(prompt.kind, p_yes, self.threshold)
        bad, good = ("reject", "approve") if task is Task.JOIN else ("flag", "ok")
        return Answer(bad if scored.bad else good, scored.risk, scored.reasons), None
