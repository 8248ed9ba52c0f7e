"""Which records the model reviews, so screening keeps up with the ledger (issue 16).

The rules run on every record (microseconds). The model, a few seconds per verdict on two
threads, reviews only what the rules cannot settle:
- `uncertain`: a suspect finding (the rules alone would flag it; the model weighs it);
- `free-text`: notes, narrative, conclusions: what no table reads;
- `sample`: a configurable share of the rest, chosen by a hash of the record id (every
  validator's service samples the same records), so the model keeps checking the rules;
and never what a certain finding already decided. Every verdict records the path it took
(`Verdict.path`): `rules:certain`, `rules:clear`, `rules:no-model`, `model:<reason>`, or
`rules:model-busy:<reason>` when the per-poll model budget was spent. A busy record the
model should have read for its free text is flagged (nothing unread is silently accepted);
an uncertain one is flagged by its suspect finding anyway; a sampled one keeps the rules'
verdict (the sample is optional by nature).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import deque
from collections.abc import Sequence

from consortium.admission.model import (
    Finding,
    JoinRequest,
    PatientRecordInput,
    ProvenanceEvent,
    Severity,
)

DEFAULT_SAMPLE_RATE = 0.05
FREE_TEXT_KEYS = re.compile(r"note|comment|remark|description|reason|text", re.IGNORECASE)
FREE_TEXT_MIN_WORDS = 3
"""A string counts as free text from this many words on (a product name does not)."""

RULES_CERTAIN = "rules:certain"
RULES_CLEAR = "rules:clear"
RULES_NO_MODEL = "rules:no-model"
RULES_POLICY = "rules:patient-data-policy"
METADATA_ONLY = "rules:metadata-only"
"""A patient record whose key the submitter did not wrap for the reviewer: the rules judge
its metadata and the verdict says so, instead of a reflex flag for what nobody could read."""
MODEL_BUSY = "rules:model-busy"
UNCERTAIN, FREE_TEXT, SAMPLE, JOIN = "uncertain", "free-text", "sample", "join"


def sampled(record_id: str, rate: float) -> bool:
    """Deterministic: the same records are sampled by every service and every run."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    value = int.from_bytes(hashlib.sha256(f"sample:{record_id}".encode()).digest()[:8], "big")
    return value < rate * 2**64


def _strings(value: object, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(key, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, str(k))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, key)]
    return []


def has_free_text(record: ProvenanceEvent | PatientRecordInput) -> bool:
    """Text a person wrote that the rules do not read: a note, narrative, conclusion or
    description of at least FREE_TEXT_MIN_WORDS words (patient payloads: `note`, `text.div`,
    `conclusion`, `description`, dosage text; EPCIS: extension and ilmd strings)."""
    import json

    if isinstance(record, PatientRecordInput):
        strings = _strings(record.payload) if record.payload is not None else []
    elif record.event is None:
        return True  # unreadable: the rules flag it as malformed anyway
    else:
        strings = [(k or name, v) for name, text in record.event.extensions
                   for k, v in _strings(json.loads(text))]
        if record.event.ilmd is not None:
            strings += _strings(json.loads(record.event.ilmd))
    return any(FREE_TEXT_KEYS.search(k) and len(v.split()) >= FREE_TEXT_MIN_WORDS
               for k, v in strings)


def model_reason(subject: JoinRequest | ProvenanceEvent | PatientRecordInput,
                 findings: Sequence[Finding], sample_rate: float) -> str | None:
    """Why the model should review `subject` (None: the rules settle it). Certain findings
    are handled before this is asked."""
    if isinstance(subject, JoinRequest):
        return JOIN  # rare, and always free text
    if any(f.severity is Severity.SUSPECT for f in findings):
        return UNCERTAIN
    if has_free_text(subject):
        return FREE_TEXT
    if sampled(subject.record_id, sample_rate):
        return SAMPLE
    return None


class ModelStats:
    """Latency of the last model verdicts and counts per path (thread-safe): what
    `consortium status` and the metrics show."""

    WINDOW = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[int] = deque(maxlen=self.WINDOW)
        self.paths: dict[str, int] = {}

    def record(self, path: str, latency_ms: int, asked_model: bool) -> None:
        with self._lock:
            self.paths[path] = self.paths.get(path, 0) + 1
            if asked_model:
                self._latencies.append(latency_ms)

    def percentile(self, q: float) -> int:
        with self._lock:
            values = sorted(self._latencies)
        if not values:
            return 0
        return values[min(len(values) - 1, int(len(values) * q))]

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(n for p, n in self.paths.items() if p.startswith(prefix))
