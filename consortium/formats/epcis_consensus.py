"""What every validator checks on a provenance record's public part, at consensus time.

The public part is the canonical JSON of one EPCIS event (`Event.public_json()`). Validators
judge only what that JSON shows, and judge it identically: the same code path on the same
bytes, no wall clock (the block's time is the reference), no locale, no network, no lookup
table from a third-party library (GS1 identifiers must already be EPC URNs, which this
project's own parser reads). A refused record is ordered with status invalid and the one-line
reason, which is then the same on every validator.

Checked: the bytes are canonical (so one event has one representation, and the identifiers
the ledger indexes are exactly those in the JSON), at most PUBLIC_JSON_BYTES_MAX; the event
parses and validates (every rule of epcis_parse: GS1 identifiers, CBV values and their
consistency, required fields); eventTime (and an errorDeclaration's declarationTime) is not
later than the block time plus the allowed clock skew.

Not checked here, because it needs history or judgement: custody continuity, quantities per
holder, recalls (the admission service, admission/rules.py).

Measured cost (tests/formats/test_consensus.py::test_consensus_check_is_fast, this project's
2-core development machine under load from other test runs): 46 to 54 us per typical event
(one LGTIN quantity, SGLN location, two parties, one business transaction, about 650 bytes;
distinct lots, so the identifier cache does not help); the budget is 100 us.
"""

from __future__ import annotations

import json

from consortium.formats.epcis_model import Event, format_time_ms
from consortium.formats.epcis_parse import parse_event
from consortium.formats.errors import EpcisError

PUBLIC_JSON_BYTES_MAX = 64 * 1024


def event_from_public_json(data: bytes) -> Event:
    """The event of a record's public part. Raises EpcisError when the bytes are not the
    canonical JSON of a valid event."""
    if not isinstance(data, bytes | bytearray):
        raise EpcisError("the public part must be bytes")
    if len(data) > PUBLIC_JSON_BYTES_MAX:
        raise EpcisError(f"the event is {len(data)} bytes, more than {PUBLIC_JSON_BYTES_MAX}")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EpcisError(f"the public part is not JSON: {str(exc).splitlines()[0]}") from None
    event = parse_event(raw, urn_only=True)
    if event.public_json() != data:
        raise EpcisError("the public part is not in canonical form (Event.public_json(): "
                         "sorted keys, no whitespace, EPC URNs, UTC eventTime)")
    return event


def check_event_at_consensus(event_public_json: bytes, block_time_ms: int,
                             clock_skew_ms: int) -> Event:
    """Raise EpcisError (one line) when a validator must refuse the record; return the event
    when the public part is acceptable. Deterministic: same bytes and times, same outcome."""
    event = event_from_public_json(event_public_json)
    latest_ms = block_time_ms + clock_skew_ms
    if event.event_time_ms > latest_ms:
        raise EpcisError(f"eventTime {format_time_ms(event.event_time_ms)} is later than the "
                         f"block time plus the clock skew ({format_time_ms(latest_ms)})")
    return event
    declared = event.error_declaration
    if declared is not None and declared.declaration_time_ms > latest_ms:
        raise EpcisError(f"errorDeclaration.declarationTime "
                         f"{format_time_ms(declared.declaration_time_ms)} is later than the "
                         f"block time plus the clock skew ({format_time_ms(latest_ms)})")
    return event
