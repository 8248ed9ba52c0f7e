"""The JSON schema of the model's answer, and its strict parsing.

(Patient payloads have no schema of this project's own any more: they are FHIR R4, validated
by formats/fhir.py.)

The model's answer is constrained twice. The schema goes to the server as `response_format`
(strict `json_schema`), so a well-behaved server can only sample conforming JSON; and
`parse_answer` checks the answer again here, because the server may ignore the schema (a hosted
API, an old llama.cpp) and because nothing the model says is trusted. Anything that fails is an
`AnswerError`, which the reviewer turns into review/flag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from consortium.admission.model import MODEL_DECISIONS, Task

REASONS_MIN = 1
REASONS_MAX = 3
REASON_CHARS_MAX = 80
ANSWER_BYTES_MAX = 4096
"""An answer longer than this did not come from a schema-constrained decoder."""
MAX_TOKENS = 256
"""Enough for three reasons at the maximum length and the JSON around them (with the
pretty-printing some models insist on), so the object can close before the limit."""


def answer_schema(task: Task) -> dict[str, Any]:
    """The tight output schema for the model's answer (enum decision, bounded risk, 1-3 short
    reasons)."""
    return {
        "type": "object",
        "properties": {
            "decision": {"type": "string", "enum": list(MODEL_DECISIONS[task])},
            "risk": {"type": "number", "minimum": 0, "maximum": 1},
            "reasons": {"type": "array", "minItems": REASONS_MIN, "maxItems": REASONS_MAX,
                        "items": {"type": "string", "minLength": 1,
                                  "maxLength": REASON_CHARS_MAX}},
        },
        "required": ["decision", "risk", "reasons"],
        "additionalProperties": False,
    }


def response_format(task: Task) -> dict[str, Any]:
    """The OpenAI `response_format` for a task: strict json_schema."""
    return {"type": "json_schema",
            "json_schema": {"name": f"admission_{task.value}_verdict", "strict": True,
                            "schema": answer_schema(task)}}


class AnswerError(ValueError):
    """The model's answer is unusable: not JSON, not the schema, or inconsistent."""


@dataclass(frozen=True, slots=True)
class Answer:
    decision: str
    risk: float
    reasons: tuple[str, ...]


def _clean(text: str) -> str:
    """Reasons end up in logs and on screens: no control characters, single spaces."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def parse_answer(task: Task, text: str) -> Answer:
    """Strictly parse and validate the model's answer; raise AnswerError on anything off."""
    if len(text.encode()) > ANSWER_BYTES_MAX:
        raise AnswerError("answer too long")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise AnswerError(f"answer is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AnswerError("answer is not a JSON object")
    if set(data) != {"decision", "risk", "reasons"}:
        raise AnswerError("answer must have exactly decision, risk and reasons")
    decision, risk, reasons = data["decision"], data["risk"], data["reasons"]
    if not isinstance(decision, str) or decision not in MODEL_DECISIONS[task]:
        raise AnswerError(f"decision must be one of {', '.join(MODEL_DECISIONS[task])}")
    if isinstance(risk, bool) or not isinstance(risk, int | float) or not math.isfinite(risk) \
            or not 0 <= risk <= 1:
        raise AnswerError("risk must be a number within 0..1")
    if not isinstance(reasons, list) or not REASONS_MIN <= len(reasons) <= REASONS_MAX:
        raise AnswerError(f"reasons must be a list of {REASONS_MIN} to {REASONS_MAX} strings")
    cleaned = []
    for r in reasons:
        if not isinstance(r, str) or not 1 <= len(r) <= REASON_CHARS_MAX:
            raise AnswerError(f"each reason must be a string of 1 to {REASON_CHARS_MAX} chars")
        c = _clean(r)
        if not c:
            raise AnswerError("a reason is blank")
        cleaned.append(c)
    answer = Answer(decision, float(risk), tuple(cleaned))
    check_consistent(answer)
    return answer


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_consistent(answer: Answer) -> None:
    """A permissive decision with a high risk (or the reverse) means the model contradicts
    itself, perhaps because injected text pulled the decision one way: not usable."""
    if answer.decision in ("approve", "ok") and answer.risk > 0.5:
        raise AnswerError(f"inconsistent: {answer.decision} with risk {answer.risk:g}")
    if answer.decision in ("reject", "flag") and answer.risk < 0.5:
        raise AnswerError(f"inconsistent: {answer.decision} with risk {answer.risk:g}")
