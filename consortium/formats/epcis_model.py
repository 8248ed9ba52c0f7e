"""The typed, frozen EPCIS 2.0 event, and its canonical JSON.

An `Event` is always in canonical form: GS1 identifiers as normalised EPC URNs, CBV values as
short names, eventTime in UTC at millisecond precision (`2005-04-04T02:33:31.116Z`, rounded as
GS1's event hash rounds it), quantities as integers when whole. Two events that GS1's event
hash calls equal therefore serialise to the same bytes, whichever form (URN or Digital Link,
local time or UTC) they were written in.

`public_json()` is the public part of a provenance record: a standalone EPCIS 2.0 JSON-LD event
(it carries its own `@context`, as the standard requires of an event outside a document),
sorted keys, no whitespace, UTF-8. Extension fields (namespaced keys) and the standard fields
this model does not interpret (`sensorElementList`, `certificationInfo`, `recordTime`) are kept
verbatim in `extensions`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from consortium.formats import gs1

GS1_CONTEXT_URL = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
GS1_CONTEXT_URLS = frozenset({GS1_CONTEXT_URL,
                              "https://ref.gs1.org/standards/epcis/epcis-context.jsonld",
                              "https://gs1.github.io/EPCIS/epcis-context.jsonld"})
"""The @context URLs that name GS1's EPCIS 2.0 context."""
GS1_PREFIXES = frozenset({"epcis", "cbv", "cbvmda", "gs1", "rdfs", "owl", "xsd", "dcterms"})
"""Prefixes GS1's context declares itself (ilmd often uses cbvmda:, gs1:)."""
CONSORTIUM_PREFIX = "consortium"
CONSORTIUM_NAMESPACE = "urn:consortium:epcis:"
"""The namespace of the consortium's own extension fields (`consortium:height`,
`consortium:proof`, `consortium:note`): a private, unregistered URN namespace, declared in
every @context that uses it."""

Json = Any
"""A JSON value (what json.loads returns)."""


class EventType(enum.StrEnum):
    OBJECT = "ObjectEvent"
    AGGREGATION = "AggregationEvent"
    TRANSFORMATION = "TransformationEvent"


@dataclass(frozen=True, slots=True)
class Quantity:
    """A quantityList element: a class identifier and how much of it (None: unspecified)."""

    epc_class: str
    quantity: int | float | None = None
    uom: str | None = None
    """UN/ECE Recommendation 20 unit (KGM, LTR...); None means a count of items."""

    def to_json(self, uri: Callable[[str], str]) -> dict[str, Json]:
        out: dict[str, Json] = {"epcClass": uri(self.epc_class)}
        if self.quantity is not None:
            out["quantity"] = self.quantity
        if self.uom is not None:
            out["uom"] = self.uom
        return out


@dataclass(frozen=True, slots=True)
class Party:
    """A sourceList / destinationList entry: owning_party, possessing_party or location (or a
    private type URI) and its identifier."""

    type: str
    id: str


@dataclass(frozen=True, slots=True)
class BizTransaction:
    id: str
    type: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorDeclaration:
    """The event it sits in is declared wrong (EPCIS 2.0 section 7.4.1.2)."""

    declaration_time_ms: int
    reason: str | None = None
    corrective_event_ids: tuple[str, ...] = ()
    extensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One EPCIS 2.0 event in canonical form (see the module docstring)."""

    type: EventType
    event_time_ms: int
    """eventTime as milliseconds since the Unix epoch (UTC)."""
    time_zone_offset: str
    """eventTimeZoneOffset, e.g. +02:00: the local offset where the event happened."""
    action: str | None = None
    """ADD / OBSERVE / DELETE (ObjectEvent, AggregationEvent); None for TransformationEvent."""
    biz_step: str | None = None
    disposition: str | None = None
    read_point: str | None = None
    biz_location: str | None = None
    epc_list: tuple[str, ...] = ()
    quantity_list: tuple[Quantity, ...] = ()
    parent_id: str | None = None
    child_epcs: tuple[str, ...] = ()
    child_quantity_list: tuple[Quantity, ...] = ()
    input_epc_list: tuple[str, ...] = ()
    input_quantity_list: tuple[Quantity, ...] = ()
    output_epc_list: tuple[str, ...] = ()
    output_quantity_list: tuple[Quantity, ...] = ()
    transformation_id: str | None = None
    biz_transactions: tuple[BizTransaction, ...] = ()
    sources: tuple[Party, ...] = ()
    destinations: tuple[Party, ...] = ()
    persistent_disposition_set: tuple[str, ...] = ()
    persistent_disposition_unset: tuple[str, ...] = ()
    ilmd: str | None = None
    """Instance/lot master data, as canonical JSON text of an object."""
    error_declaration: ErrorDeclaration | None = None
    event_id: str | None = None
    extensions: tuple[tuple[str, str], ...] = ()
    """(key, canonical JSON text of the value), sorted by key."""
    namespaces: tuple[tuple[str, str], ...] = ()
    """(prefix, IRI) of the prefixes the extension keys use, sorted."""

    # --- what the ledger indexes ------------------------------------------------------------

    def identifiers(self) -> tuple[str, ...]:
        """The objects this event concerns, canonical and sorted: instance EPCs, classes,
        the parent and children of an aggregation, inputs and outputs of a transformation.
        Locations and parties are not included (they are where and who, not what)."""
        ids = {*self.epc_list, *self.child_epcs, *self.input_epc_list, *self.output_epc_list}
        for q in (*self.quantity_list, *self.child_quantity_list, *self.input_quantity_list,
                  *self.output_quantity_list):
            ids.add(q.epc_class)
        if self.parent_id is not None:
            ids.add(self.parent_id)
        return tuple(sorted(ids))

    def extension(self, key: str) -> Json:
        """The value of one extension field (None when absent)."""
        for k, v in self.extensions:
            if k == key:
                return json.loads(v)
        return None

    def party(self, side: str, party_type: str) -> str | None:
        """The first source (side="source") or destination of a type, e.g. owning_party."""
        entries = self.sources if side == "source" else self.destinations
        return next((p.id for p in entries if p.type == party_type), None)

    # --- serialisation --------------------------------------------------------------------

    def to_json(self, id_form: str = "urn", with_context: bool = True) -> dict[str, Json]:
        """The event as an EPCIS 2.0 JSON-LD object. `id_form` "urn" writes GS1 identifiers as
        EPC URNs, "digital_link" as canonical GS1 Digital Link URIs."""
        uri = _uri_writer(id_form)
        out: dict[str, Json] = {"type": self.type.value,
                                "eventTime": format_time_ms(self.event_time_ms),
                                "eventTimeZoneOffset": self.time_zone_offset}
        if with_context:
            out["@context"] = context_of(self.namespaces)
        optional: dict[str, Json] = {
            "eventID": self.event_id, "action": self.action, "bizStep": self.biz_step,
            "disposition": self.disposition, "parentID": _opt(uri, self.parent_id),
            "transformationID": self.transformation_id,
            "ilmd": None if self.ilmd is None else json.loads(self.ilmd),
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.read_point is not None:
            out["readPoint"] = {"id": uri(self.read_point)}
        if self.biz_location is not None:
            out["bizLocation"] = {"id": uri(self.biz_location)}
        lists: dict[str, tuple[str, ...]] = {
            "epcList": self.epc_list, "childEPCs": self.child_epcs,
            "inputEPCList": self.input_epc_list, "outputEPCList": self.output_epc_list}
        out.update({k: [uri(x) for x in v] for k, v in lists.items() if v})
        quantities: dict[str, tuple[Quantity, ...]] = {
            "quantityList": self.quantity_list, "childQuantityList": self.child_quantity_list,
            "inputQuantityList": self.input_quantity_list,
            "outputQuantityList": self.output_quantity_list}
        out.update({k: [q.to_json(uri) for q in v] for k, v in quantities.items() if v})
        if self.biz_transactions:
            # type before bizTransaction, as in the standard's examples: GS1's reference
            # hash implementation takes these two in the order it reads them
            out["bizTransactionList"] = [
                {**({"type": b.type} if b.type else {}), "bizTransaction": b.id}
                for b in self.biz_transactions]
        if self.sources:
            out["sourceList"] = [{"type": p.type, "source": uri(p.id)} for p in self.sources]
        if self.destinations:
            out["destinationList"] = [{"type": p.type, "destination": uri(p.id)}
                                      for p in self.destinations]
        if self.persistent_disposition_set or self.persistent_disposition_unset:
            pd: dict[str, Json] = {}
            if self.persistent_disposition_set:
                pd["set"] = list(self.persistent_disposition_set)
            if self.persistent_disposition_unset:
                pd["unset"] = list(self.persistent_disposition_unset)
            out["persistentDisposition"] = pd
        if self.error_declaration is not None:
            e = self.error_declaration
            ed: dict[str, Json] = {"declarationTime": format_time_ms(e.declaration_time_ms)}
            if e.reason is not None:
                ed["reason"] = e.reason
            if e.corrective_event_ids:
                ed["correctiveEventIDs"] = list(e.corrective_event_ids)
            ed.update({k: json.loads(v) for k, v in e.extensions})
            out["errorDeclaration"] = ed
        out.update({k: json.loads(v) for k, v in self.extensions})
        return out

    def public_json(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace, UTF-8): the public part of a provenance
        record. Equal events give equal bytes."""
        return canonical_json(self.to_json())


def _opt(uri: Callable[[str], str], value: str | None) -> str | None:
    return None if value is None else uri(value)


def _uri_writer(id_form: str) -> Callable[[str], str]:
    if id_form == "urn":
        return lambda u: u
    if id_form == "digital_link":
        return _to_digital_link
    raise ValueError(f"id_form is urn or digital_link, not {id_form!r}")


def _to_digital_link(u: str) -> str:
    return gs1.parse_urn(u).digital_link() if u.startswith("urn:epc:") else u


def context_of(namespaces: tuple[tuple[str, str], ...] | Mapping[str, str]) -> Json:
    """The @context of a standalone event or a document: GS1's context, then the namespaces."""
    ns = dict(namespaces)
    return [GS1_CONTEXT_URL, ns] if ns else [GS1_CONTEXT_URL]


def canonical_json(value: Json) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not ASCII-escaped), no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def format_time_ms(ms: int) -> str:
    """Milliseconds since the epoch -> `YYYY-MM-DDTHH:MM:SS.mmmZ` (no locale, no clock)."""
    t = _EPOCH + dt.timedelta(milliseconds=ms)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:" \
           f"{t.second:02d}.{t.microsecond // 1000:03d}Z"
