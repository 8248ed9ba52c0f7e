"""`consortium submit --file`: records from a JSON-lines file, checked in full before any is sent.

A file is all or nothing by default: every line is parsed and sealed into an envelope item
before the first envelope goes out, so a typo on line 90,000 is reported (by line number, with
the reason) before 89,999 records are on an append-only ledger. `--skip-invalid` submits the
good lines and reports the others.

The fields of a line are those of `consortium submit provenance` and `consortium submit
patient` (FORMAT below, which `--help` shows); unknown fields are refused, so a misspelt
optional field is an error, not a silently missing value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.ledger.records import PATIENT_RECORD_TYPES, PROVENANCE_EVENTS

FORMAT = """Records file (--file): one JSON object per line, blank lines skipped. "kind" says
which record a line is ("provenance" or "patient"); without it, a line with "product" is a
provenance record and a line with "patient" a patient record. Unknown fields are refused.

\b
provenance fields:
  product     required
  event       required: {events}
  location    required: where it happened (an SGLN in any form, or a site name)
  from, to    owning parties (a member org, a PGLN, or a name); to: required for shipped
  quantity    a whole number >= 1
  documents   list of document hashes
  details     object (encrypted; readable by the readers)
  readers     list of organisations
\b
patient fields:
  patient     required: the pseudonymous patient id
  type        required: {types}
  payload     required: a FHIR R4 resource or Bundle about Patient/<patient> (encrypted)
  readers     list of organisations
\b
Example:
  {{"product": "lot-7", "event": "shipped", "location": "Basel", "to": "org1", "quantity": 12}}
  {{"patient": "P-1", "type": "encounter", "payload": {{"resourceType": "Encounter",
    "status": "finished", "class": {{"code": "AMB"}}, "subject": {{"reference": "Patient/P-1"}}}}}}
""".format(events=", ".join(sorted(PROVENANCE_EVENTS)),
           types=", ".join(sorted(PATIENT_RECORD_TYPES)))

PROVENANCE_FIELDS = frozenset({"kind", "product", "event", "location", "from", "to",
                               "quantity", "documents", "details", "readers"})
PATIENT_FIELDS = frozenset({"kind", "patient", "type", "payload", "readers"})
BAD_LINES_SHOWN = 5
"""Bad lines named in the one-line error (all of them are in the --json output)."""


class BadLine(ValueError):
    """A line that is not a record this command can submit (the message says why)."""


@dataclass(frozen=True)
class RecordLine:
    """One parsed line: which record, and the keyword arguments of the SDK's item builder."""

    line: int
    kind: str
    subject: str
    event: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def readers(self) -> list[str]:
        readers: list[str] = self.args.get("readers", [])
        return readers


def _text(doc: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise BadLine(f"missing field {name!r}")
        return None
    if not isinstance(value, str) or not value:
        raise BadLine(f"{name!r} must be a non-empty string")
    return value


def _strings(doc: dict[str, Any], name: str) -> list[str]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise BadLine(f"{name!r} must be a list of non-empty strings")
    return list(value)


def parse_line(number: int, text: str) -> RecordLine:
    """One line of the file as a record, or BadLine."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadLine(f"not JSON ({exc.args[0] if exc.args else exc})") from exc
    if not isinstance(doc, dict):
        raise BadLine("not a JSON object")
    kind = doc.get("kind")
    if kind is None:
        if ("product" in doc) == ("patient" in doc):
            raise BadLine('say "kind": "provenance" or "patient"')
        kind = "provenance" if "product" in doc else "patient"
    if kind not in ("provenance", "patient"):
        raise BadLine(f'"kind" is "provenance" or "patient", not {kind!r}')
    allowed = PROVENANCE_FIELDS if kind == "provenance" else PATIENT_FIELDS
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise BadLine(f"unknown field{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(repr(u) for u in unknown)} for a {kind} record")
    readers = _strings(doc, "readers")
    if kind == "provenance":
        product = _text(doc, "product", required=True)
        event = _text(doc, "event", required=True)
        assert product is not None and event is not None
        if event not in PROVENANCE_EVENTS:
            raise BadLine(f"event {event!r} is not one of {', '.join(sorted(PROVENANCE_EVENTS))}")
        quantity = doc.get("quantity")
        if quantity is not None and (not isinstance(quantity, int) or isinstance(quantity, bool)
                                     or quantity < 1):
            raise BadLine("'quantity' must be a whole number >= 1")
        details = doc.get("details", {})
        if not isinstance(details, dict):
            raise BadLine("'details' must be a JSON object")
        return RecordLine(number, kind, product, event, {
            "location": _text(doc, "location"), "custodian_from": _text(doc, "from"),
            "custodian_to": _text(doc, "to"), "quantity": quantity,
            "documents": _strings(doc, "documents"), "details": details, "readers": readers})
    patient = _text(doc, "patient", required=True)
    record_type = _text(doc, "type", required=True)
    assert patient is not None and record_type is not None
    if record_type not in PATIENT_RECORD_TYPES:
        raise BadLine(f"type {record_type!r} is not one of "
                      f"{', '.join(sorted(PATIENT_RECORD_TYPES))}")
    if "payload" not in doc:
        raise BadLine("missing field 'payload'")
    payload = json.dumps(doc["payload"], sort_keys=True, separators=(",", ":")).encode()
    return RecordLine(number, kind, patient, record_type,
                      {"payload": payload, "readers": readers})


def parse_lines(lines: Iterable[str]) -> tuple[list[RecordLine], list[tuple[int, str]]]:
    """Every record of a file and every bad line (number, reason); line numbers from 1."""
    records: list[RecordLine] = []
    bad: list[tuple[int, str]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            records.append(parse_line(number, text))
        except BadLine as exc:
            bad.append((number, str(exc)))
    return records, bad


def bad_lines_message(name: str, bad: Sequence[tuple[int, str]], total: int) -> str:
    """The one-line error for a file with bad lines (the first few named)."""
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:BAD_LINES_SHOWN])
    more = f"; and {len(bad) - BAD_LINES_SHOWN} more" if len(bad) > BAD_LINES_SHOWN else ""
    return (f"{name}: {len(bad)} of {total} lines are not records, nothing submitted (fix "
            f"them or pass --skip-invalid): {shown}{more}")


def build_items(client: Any, records: Sequence[RecordLine]
                ) -> tuple[list[tuple[RecordLine, bytes]], list[tuple[int, str]]]:
    """Seal every record into an envelope item (`client` is a ConsortiumClient): the records
    that cannot be (a reader that is no member, a field over the ledger's limits, an item
    over the request size) are bad lines too, found before anything is sent."""
    from consortium.client import SubmitError
    from consortium.client.formats import fhir_record

    unknown: dict[str, str] = {}
    own = client.core.identity.org  # every record is sealed for its submitter too
    for org in sorted({own} | {o for r in records for o in r.readers}):
        try:
            client.ensure_readers([org])
        except SubmitError as exc:
            unknown[org] = str(exc)
    limit = client.core.envelope_bytes_max
    items: list[tuple[RecordLine, bytes]] = []
    bad: list[tuple[int, str]] = []
    for r in records:
        if own in unknown:
            bad.append((r.line, unknown[own]))
            continue
        missing = [o for o in r.readers if o in unknown]
        if missing:
            bad.append((r.line, f"reader {missing[0]!r} is not a member organisation"))
            continue
        try:
            if r.kind == "provenance":
                item = client.aio.shorthand_item(r.subject, r.event, **r.args)
            else:
                rec = fhir_record(r.args["payload"], r.subject)
                if rec.record_type != r.event:
                    raise BadLine(f"type {r.event!r}, but the payload is a {rec.record_type} "
                                  "record")
                item = client.aio.fhir_item(r.subject, r.args["payload"], readers=r.readers)
        except (SubmitError, ValueError) as exc:
            bad.append((r.line, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        if len(item) > limit:
            bad.append((r.line, f"the sealed record is {len(item)} bytes, over the request "
                                f"size limit ({limit} bytes)"))
            continue
        items.append((r, item))
    return items, bad


def report(submitted: Sequence[tuple[RecordLine, bytes]], results: Sequence[Any],
           envelopes: int) -> dict[str, Any]:
    """The --json document of a run: counts, heights, record ids in line order, and each
    record the ledger did not record (by line)."""
    from consortium.client import SubmitError

    ids: list[str] = []
    heights: list[int] = []
    refused: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for (r, _), result in zip(submitted, results, strict=True):
        if isinstance(result, SubmitError):
            failed.append({"line": r.line, "error": str(result).splitlines()[0]
                           if str(result) else "failed"})
            continue
        heights.append(result.height)
        if result.status == "recorded":
            ids.append(result.record_id)
        else:
            refused.append({"line": r.line, "record_id": result.record_id,
                            "reason": result.reason})
    return {"submitted": len(submitted), "recorded": len(ids), "invalid": refused,
            "failed": failed, "envelopes": envelopes,
            "first_height": min(heights) if heights else None,
            "last_height": max(heights) if heights else None, "record_ids": ids}
