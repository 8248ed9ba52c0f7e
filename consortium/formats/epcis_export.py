"""Writing events back out as an EPCIS 2.0 JSON-LD document that GS1 tools read.

The document carries GS1's @context plus every namespace its events use; each event may carry
extra extension fields given by the caller (the audit trace adds `consortium:height` and
`consortium:proof`). The output validates against GS1's EPCIS 2.0 JSON Schema (tested against
../shared/epcis/EPCIS-JSON-Schema.json). Nothing here reads a clock: the caller gives the
document's creation time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consortium.formats.epcis_model import (
    CONSORTIUM_NAMESPACE,
    CONSORTIUM_PREFIX,
    GS1_PREFIXES,
    Event,
    Json,
    canonical_json,
    context_of,
    format_time_ms,
)
from consortium.formats.errors import EpcisError

EventWithExtensions = Event | tuple[Event, Mapping[str, Json]]


def export_document(events: Iterable[EventWithExtensions], *, creation_time_ms: int,
                    id_form: str = "urn", document_id: str | None = None,
                    namespaces: Mapping[str, str] | None = None) -> dict[str, Json]:
    """An EPCISDocument holding `events` in order.

    Each item is an Event or (Event, {extension key: JSON value}); extension keys are
    namespaced (`consortium:height`, or a prefix declared in `namespaces`). `id_form` "urn"
    writes GS1 identifiers as EPC URNs, "digital_link" as canonical GS1 Digital Link URIs.
    Raises EpcisError for an undeclared prefix or one prefix naming two namespaces."""
    declared: dict[str, str] = {CONSORTIUM_PREFIX: CONSORTIUM_NAMESPACE, **(namespaces or {})}
    used: dict[str, str] = {}
    out: list[Json] = []
    for i, item in enumerate(events):
        event, extra = (item, {}) if isinstance(item, Event) else item
        for prefix, iri in event.namespaces:
            _use(used, prefix, iri, i)
        body = event.to_json(id_form, with_context=False)
        for key, value in extra.items():
            prefix, sep, local = key.partition(":")
            if not sep or not local or prefix not in declared:
                raise EpcisError(f"event {i}: extension {key!r} needs a declared namespace "
                                 "prefix (consortium:..., or one given in namespaces)")
            if key in body:
                raise EpcisError(f"event {i}: extension {key!r} is already in the event")
            canonical_json(value)  # refuses NaN and non-JSON values early
            _use(used, prefix, declared[prefix], i)
            body[key] = value
        out.append(body)
    context_ns = {p: iri for p, iri in sorted(used.items()) if p not in GS1_PREFIXES}
    doc: dict[str, Json] = {"@context": context_of(context_ns), "type": "EPCISDocument",
                            "schemaVersion": "2.0",
                            "creationDate": format_time_ms(creation_time_ms),
                            "epcisBody": {"eventList": out}}
    if document_id is not None:
        doc["id"] = document_id
    return doc


def _use(used: dict[str, str], prefix: str, iri: str, index: int) -> None:
    if used.setdefault(prefix, iri) != iri:
        raise EpcisError(f"event {index}: prefix {prefix!r} means {iri} here but "
                         f"{used[prefix]} in an earlier event")
