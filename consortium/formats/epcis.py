"""EPCIS 2.0 provenance events: the one module the ledger, SDK and CLI import.

    parse_document(data, prefix_length=None, all_errors=False) -> list[Event]
    validate_document(data, prefix_length=None) -> (good [(index, Event)], bad [EventError])
    Event.public_json() -> bytes; Event.identifiers() -> tuple[str, ...]
    event_from_public_json(data: bytes) -> Event
    check_event_at_consensus(event_public_json, block_time_ms, clock_skew_ms) -> None
    export_document(events_with_extensions, creation_time_ms=..., id_form="urn") -> dict
    object_event_from_shorthand(product, event, from_org, to_org, location, quantity, ...)

See docs/records.md. Each function lives in a module of its own (epcis_model, epcis_parse,
epcis_export, epcis_consensus, shorthand); this facade only re-exports them.
"""

from consortium.formats.epcis_consensus import (
    PUBLIC_JSON_BYTES_MAX,
    check_event_at_consensus,
    event_from_public_json,
)
from consortium.formats.epcis_export import EventWithExtensions, export_document
from consortium.formats.epcis_model import (
    CONSORTIUM_NAMESPACE,
    CONSORTIUM_PREFIX,
    GS1_CONTEXT_URL,
    BizTransaction,
    ErrorDeclaration,
    Event,
    EventType,
    Party,
    Quantity,
    canonical_json,
    format_time_ms,
)
from consortium.formats.epcis_parse import (
    EpcisDocumentError,
    EventError,
    load_json,
    parse_document,
    parse_event,
    validate_document,
)
from consortium.formats.errors import EpcisError
from consortium.formats.shorthand import LEGACY_EVENTS, object_event_from_shorthand

__all__ = [
    "CONSORTIUM_NAMESPACE", "CONSORTIUM_PREFIX", "GS1_CONTEXT_URL", "LEGACY_EVENTS",
    "PUBLIC_JSON_BYTES_MAX", "BizTransaction", "EpcisDocumentError", "EpcisError",
    "ErrorDeclaration", "Event", "EventError", "EventType", "EventWithExtensions", "Party",
    "Quantity", "canonical_json", "check_event_at_consensus", "event_from_public_json",
    "export_document", "format_time_ms", "load_json", "object_event_from_shorthand",
    "parse_document", "parse_event", "validate_document",
]
