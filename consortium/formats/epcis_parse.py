"""Reading EPCIS 2.0 JSON / JSON-LD: documents and events -> canonical `Event`s.

Everything a submitter sends is checked here, with an error that names the event (0-based
index in the document's eventList) and the field: `event 3: epcList[1]: GTIN check digit is
7, expected 3`. What is required at submission beyond the EPCIS schema (the consortium's rules,
so that a record is refused at once instead of being quarantined later):

- every event has a bizStep, and a readPoint or a bizLocation (where it happened);
- an ObjectEvent names at least one object (epcList or quantityList); an AggregationEvent that
  adds or observes names its parent and at least one child; a TransformationEvent has inputs
  and outputs (or a transformationID);
- GS1 identifiers are valid and in the right place: instances (SGTIN, SSCC, GRAI) in EPC
  lists and parentID, classes (LGTIN, GTIN) in quantity lists, SGLNs as locations, PGLNs or
  SGLNs as parties;
- CBV values are known and consistent (cbv.CONTRADICTIONS), quantities are positive and
  whole unless a unit (uom) is given;
- extension fields use a namespace prefix declared in the @context (or are absolute IRIs).

Identifiers that are neither GS1 nor the consortium's private ones are accepted as opaque URIs
(EPCIS allows any URI), but a URI that claims to be GS1 (`urn:epc:...`, a web URI with a GS1
key AI in its path) must parse as GS1.

Size: EPCIS 2.0 JSON-LD parsing and its validation are one pass over a document; the model,
the export, CBV vocabularies and GS1 identifiers are separate modules.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consortium.formats import cbv, gs1
from consortium.formats.epcis_model import (
    CONSORTIUM_NAMESPACE,
    CONSORTIUM_PREFIX,
    GS1_PREFIXES,
    BizTransaction,
    ErrorDeclaration,
    Event,
    EventType,
    Json,
    Party,
    Quantity,
    canonical_json,
)
from consortium.formats.errors import EpcisError, FormatError
from consortium.formats.private_ids import PRIVATE_PREFIX, PrivateRole, parse_private

ACTIONS = frozenset({"ADD", "OBSERVE", "DELETE"})
UNSUPPORTED_EVENT_TYPES = frozenset({"TransactionEvent", "AssociationEvent"})
URI_CHARS_MAX = 2048
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_OFFSET = re.compile(r"[+-]((0\d|1[0-3]):[0-5]\d|14:00)")
_UOM = re.compile(r"[A-Z0-9]{2,3}")
_CBV_BT = re.compile(r"urn:epcglobal:cbv:bt:(\d{13}):(.+)")

STANDARD_FIELDS: Mapping[EventType, frozenset[str]] = {
    EventType.OBJECT: frozenset({"epcList", "quantityList", "action", "bizStep", "disposition",
                                 "persistentDisposition", "readPoint", "bizLocation",
                                 "bizTransactionList", "sourceList", "destinationList",
                                 "sensorElementList", "ilmd"}),
    EventType.AGGREGATION: frozenset({"parentID", "childEPCs", "childQuantityList", "action",
                                      "bizStep", "disposition", "readPoint", "bizLocation",
                                      "bizTransactionList", "sourceList", "destinationList",
                                      "sensorElementList"}),
    EventType.TRANSFORMATION: frozenset({"inputEPCList", "inputQuantityList", "outputEPCList",
                                         "outputQuantityList", "transformationID", "bizStep",
                                         "disposition", "persistentDisposition", "readPoint",
                                         "bizLocation", "bizTransactionList", "sourceList",
                                         "destinationList", "sensorElementList", "ilmd"}),
}
COMMON_FIELDS = frozenset({"@context", "type", "eventTime", "recordTime", "eventTimeZoneOffset",
                           "eventID", "certificationInfo", "errorDeclaration"})
VERBATIM_FIELDS = frozenset({"sensorElementList", "certificationInfo", "recordTime"})
"""Standard fields this model does not interpret: kept as they are."""


@dataclass(frozen=True, slots=True)
class Role:
    """Where an identifier stands, and which GS1 kinds (and private kinds) may stand there."""

    name: str
    kinds: frozenset[gs1.Gs1Kind]
    private: PrivateRole | None


INSTANCE = Role("an instance (SGTIN, SSCC or GRAI)", gs1.INSTANCE_KINDS, None)
CLASS = Role("a class (LGTIN or GTIN)", gs1.CLASS_KINDS, PrivateRole.LOT)
LOCATION = Role("a location (SGLN)", frozenset({gs1.Gs1Kind.SGLN}), PrivateRole.SITE)
PARTY = Role("a party (PGLN or SGLN)", frozenset({gs1.Gs1Kind.PGLN, gs1.Gs1Kind.SGLN}),
             PrivateRole.ORG)


@dataclass(frozen=True, slots=True)
class EventError:
    """One invalid event of a document."""

    index: int
    message: str


class EpcisDocumentError(EpcisError):
    """Several invalid events (parse_document(..., all_errors=True))."""

    def __init__(self, errors: Iterable[EventError], total: int) -> None:
        self.errors = tuple(errors)
        shown = "; ".join(e.message for e in self.errors[:5])
        more = f"; and {len(self.errors) - 5} more" if len(self.errors) > 5 else ""
        super().__init__(f"{len(self.errors)} of {total} events are invalid: {shown}{more}")


@dataclass
class _Ctx:
    prefix_length: gs1.PrefixLength | None
    declared: dict[str, str]
    urn_only: bool = False
    """Consensus time: GS1 identifiers must already be EPC URNs (no library, no lookup)."""
    used: dict[str, str] = field(default_factory=dict)


def _fail(path: str, message: str) -> EpcisError:
    return EpcisError(f"{path}: {message}" if path else message)


def load_json(data: bytes | str | Mapping[str, Json]) -> Json:
    """Bytes or text -> JSON (duplicate keys, NaN and Infinity refused); a mapping is used as
    is."""
    if isinstance(data, Mapping):
        return data
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise EpcisError(f"not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise EpcisError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from exc


def _no_duplicates(pairs: list[tuple[str, Json]]) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for k, v in pairs:
        if k in out:
            raise EpcisError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def _no_constant(name: str) -> Json:
    raise EpcisError(f"{name} is not a JSON number")


def namespaces_of(context: Json, path: str = "@context") -> dict[str, str]:
    """Prefix -> IRI declared by an @context (a URL, an object, or a list of them)."""
    items = context if isinstance(context, list) else [context]
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, str):
            continue
        if not isinstance(item, dict):
            raise _fail(path, "must be a URL, an object, or a list of them")
        for prefix, value in item.items():
            if prefix.startswith("@"):
                continue
            iri = value.get("@id") if isinstance(value, dict) else value
            if isinstance(iri, str) and ":" in iri:
                out[prefix] = iri
    if out.get(CONSORTIUM_PREFIX, CONSORTIUM_NAMESPACE) != CONSORTIUM_NAMESPACE:
        raise _fail(path, f"the prefix {CONSORTIUM_PREFIX!r} is reserved for "
                          f"{CONSORTIUM_NAMESPACE}")
    return out


def event_list(doc: Json) -> tuple[list[Json], dict[str, str]]:
    """The events of a document (or the one standalone event) and the document's namespaces."""
    if not isinstance(doc, dict):
        raise EpcisError("not an EPCIS document: the top level is not a JSON object")
    kind = doc.get("type")
    declared = namespaces_of(doc["@context"]) if "@context" in doc else {}
    if kind in {t.value for t in EventType} or kind in UNSUPPORTED_EVENT_TYPES:
        return [doc], declared
    if kind not in ("EPCISDocument", "EPCISQueryDocument"):
        raise EpcisError(f"not an EPCIS document: type is {kind!r} (expected EPCISDocument, "
                         "EPCISQueryDocument or an event type)")
    version = doc.get("schemaVersion")
    if not isinstance(version, str) or not re.fullmatch(r"2(\.\d+)*", version):
        raise EpcisError(f"schemaVersion must be \"2.0\" (EPCIS 2.0), got {version!r}")
    if "creationDate" not in doc:
        raise EpcisError(f"{kind} needs creationDate")
    _time_ms(doc["creationDate"], "creationDate")
    body = doc.get("epcisBody")
    if kind == "EPCISQueryDocument":
        body = (body or {}).get("queryResults", {}).get("resultsBody") \
            if isinstance(body, dict) else None
    events = body.get("eventList") if isinstance(body, dict) else None
    if not isinstance(events, list):
        raise EpcisError(f"{kind} has no epcisBody eventList")
    return events, declared


def validate_document(data: bytes | str | Mapping[str, Json],
                      prefix_length: gs1.PrefixLength | None = None
                      ) -> tuple[list[tuple[int, Event]], list[EventError]]:
    """Every event of a document judged on its own: (index, event) of the good ones and the
    errors of the bad ones (what `--skip-invalid` needs). Raises EpcisError when the document
    itself is unreadable."""
    events, declared = event_list(load_json(data))
    good: list[tuple[int, Event]] = []
    bad: list[EventError] = []
    for i, raw in enumerate(events):
        try:
            good.append((i, parse_event(raw, index=i, prefix_length=prefix_length,
                                        declared=declared)))
        except FormatError as exc:
            bad.append(EventError(i, str(exc)))
    return good, bad


def parse_document(data: bytes | str | Mapping[str, Json], *,
                   prefix_length: gs1.PrefixLength | None = None,
                   all_errors: bool = False) -> list[Event]:
    """An EPCISDocument (or EPCISQueryDocument, or one standalone event) -> its events, in
    order. Raises EpcisError naming the first bad event, or with `all_errors`
    EpcisDocumentError listing every bad event (`.errors`)."""
    if not all_errors:
        events, declared = event_list(load_json(data))
        return [parse_event(raw, index=i, prefix_length=prefix_length, declared=declared)
                for i, raw in enumerate(events)]
    good, bad = validate_document(data, prefix_length)
    if bad:
        raise EpcisDocumentError(bad, len(good) + len(bad))
    return [e for _, e in good]


def parse_event(raw: Json, *, index: int = 0, prefix_length: gs1.PrefixLength | None = None,
                declared: Mapping[str, str] | None = None, urn_only: bool = False) -> Event:
    """One event object -> Event. Errors read `event INDEX: FIELD: what is wrong`.

    `urn_only` refuses GS1 identifiers that are not EPC URNs instead of converting them: what
    validators use, so that no library or prefix table takes part in consensus."""
    try:
        return _event(raw, _Ctx(prefix_length, dict(declared or {}), urn_only))
    except FormatError as exc:
        raise EpcisError(f"event {index}: {exc}") from None


def _event(raw: Json, ctx: _Ctx) -> Event:
    if not isinstance(raw, dict):
        raise _fail("", "an event must be a JSON object")
    kind = raw.get("type")
    if kind in UNSUPPORTED_EVENT_TYPES:
        raise _fail("type", f"{kind} is not supported (ObjectEvent, AggregationEvent, "
                            "TransformationEvent)")
    try:
        etype = EventType(str(kind))
    except ValueError:
        raise _fail("type", f"{kind!r} is not an EPCIS event type") from None
    if "@context" in raw:
        ctx.declared.update(namespaces_of(raw["@context"], "@context"))
    for key in raw:
        if key not in COMMON_FIELDS and key not in STANDARD_FIELDS[etype]:
            _extension_key(key, ctx, key, etype)
    if "eventTime" not in raw:
        raise _fail("eventTime", "required")
    if "eventTimeZoneOffset" not in raw:
        raise _fail("eventTimeZoneOffset", "required")
    offset = raw["eventTimeZoneOffset"]
    if not isinstance(offset, str) or not _OFFSET.fullmatch(offset):
        raise _fail("eventTimeZoneOffset", f"{offset!r} is not +hh:mm or -hh:mm (-14:00 to "
                                           "+14:00)")
    fields: dict[str, Any] = {"type": etype, "event_time_ms": _time_ms(raw["eventTime"],
                                                                       "eventTime"),
                              "time_zone_offset": offset}
    action = raw.get("action")
    if etype is EventType.TRANSFORMATION:
        if action is not None:
            raise _fail("action", "a TransformationEvent has no action")
    elif action not in ACTIONS:
        raise _fail("action", f"required: ADD, OBSERVE or DELETE (got {action!r})")
    fields["action"] = action
    fields["biz_step"] = _vocab(raw, "bizStep", "bizStep", required=True)
    fields["disposition"] = _vocab(raw, "disposition", "disposition")
    for key, name in (("readPoint", "read_point"), ("bizLocation", "biz_location")):
        if key in raw:
            fields[name] = _place(raw[key], key, ctx)
    if "readPoint" not in raw and "bizLocation" not in raw:
        raise _fail("readPoint", "an event needs a readPoint or a bizLocation (where it "
                                 "happened)")
    if "eventID" in raw:
        fields["event_id"] = _uri(raw["eventID"], "eventID")
    _objects(raw, etype, ctx, fields)
    fields["biz_transactions"] = _biz_transactions(raw.get("bizTransactionList", []))
    fields["sources"] = _parties(raw.get("sourceList", []), "sourceList", "source", ctx)
    fields["destinations"] = _parties(raw.get("destinationList", []), "destinationList",
                                      "destination", ctx)
    if "persistentDisposition" in raw:
        fields["persistent_disposition_set"], fields["persistent_disposition_unset"] = \
            _persistent(raw["persistentDisposition"])
    if "ilmd" in raw:
        if etype is EventType.OBJECT and action != "ADD":
            raise _fail("ilmd", "instance/lot master data only comes with action ADD")
        if not isinstance(raw["ilmd"], dict):
            raise _fail("ilmd", "must be a JSON object")
        _nested_keys(raw["ilmd"], ctx, "ilmd")
        fields["ilmd"] = canonical_json(raw["ilmd"]).decode()
    if "errorDeclaration" in raw:
        fields["error_declaration"] = _error_declaration(raw["errorDeclaration"], ctx)
    extensions = []
    for key, value in raw.items():
        if key in VERBATIM_FIELDS or (key not in COMMON_FIELDS
                                      and key not in STANDARD_FIELDS[etype]):
            if key == "recordTime":
                _time_ms(value, key)
            _nested_keys(value, ctx, key)
            extensions.append((key, canonical_json(value).decode()))
    fields["extensions"] = tuple(sorted(extensions))
    fields["namespaces"] = tuple(sorted(ctx.used.items()))
    event = Event(**fields)
    try:
        cbv.check_consistent(etype.value, event.action, event.biz_step, event.disposition)
    except FormatError as exc:
        raise _fail("disposition" if "disposition" in str(exc) else "action", str(exc)) \
            from None
    return event


def _objects(raw: Mapping[str, Json], etype: EventType, ctx: _Ctx,
             fields: dict[str, Any]) -> None:
    def epcs(key: str) -> tuple[str, ...]:
        return _id_list(raw.get(key, []), key, INSTANCE, ctx)

    def quantities(key: str) -> tuple[Quantity, ...]:
        return _quantities(raw.get(key, []), key, ctx)

    if etype is EventType.OBJECT:
        fields["epc_list"], fields["quantity_list"] = epcs("epcList"), quantities(
            "quantityList")
        if not fields["epc_list"] and not fields["quantity_list"]:
            raise _fail("epcList", "an ObjectEvent names at least one object (epcList or "
                                   "quantityList)")
    elif etype is EventType.AGGREGATION:
        fields["child_epcs"] = epcs("childEPCs")
        fields["child_quantity_list"] = quantities("childQuantityList")
        if "parentID" in raw:
            fields["parent_id"] = _id(raw["parentID"], "parentID", INSTANCE, ctx)
        elif fields["action"] != "OBSERVE":
            raise _fail("parentID", f"required when action is {fields['action']}")
        if fields["action"] != "DELETE" and not fields["child_epcs"] \
                and not fields["child_quantity_list"]:
            raise _fail("childEPCs", "an aggregation that adds or observes names at least one "
                                     "child (childEPCs or childQuantityList)")
    else:
        for key, name in (("inputEPCList", "input_epc_list"),
                          ("outputEPCList", "output_epc_list")):
            fields[name] = epcs(key)
        for key, name in (("inputQuantityList", "input_quantity_list"),
                          ("outputQuantityList", "output_quantity_list")):
            fields[name] = quantities(key)
        if "transformationID" in raw:
            fields["transformation_id"] = _uri(raw["transformationID"], "transformationID")
        has_in = fields["input_epc_list"] or fields["input_quantity_list"]
        has_out = fields["output_epc_list"] or fields["output_quantity_list"]
        if not (has_in and has_out) and "transformation_id" not in fields:
            raise _fail("inputEPCList", "a TransformationEvent needs inputs and outputs (or a "
                                        "transformationID linking it to others)")


def _time_ms(value: Json, path: str) -> int:
    """An RFC 3339 date-time with offset -> ms since the epoch, rounded to the millisecond
    half-to-even, as GS1's event hash does."""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _fail(path, f"{value!r} is not an RFC 3339 date-time with a time zone "
                          "(2026-03-01T12:00:00.000+01:00 or ...Z)")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(path, f"{value!r} is not a valid date-time ({exc})") from None
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    ms, rest = divmod(micros, 1000)
    if rest > 500 or (rest == 500 and ms % 2 == 1):
        ms += 1
    return ms


def _uri(value: Json, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, "must be a non-empty URI string")
    if len(value) > URI_CHARS_MAX or not _URI.fullmatch(value) or _PERCENT.search(value):
        raise _fail(path, f"{value[:80]!r} is not a URI (scheme:..., no spaces, % only in "
                          "%XX escapes)")
    return value


def _id(value: Json, path: str, role: Role, ctx: _Ctx) -> str:
    """An identifier in a role -> canonical form (GS1 -> EPC URN)."""
    text = _uri(value, path)
    if ctx.urn_only and gs1.looks_like_digital_link(text):
        raise _fail(path, f"{text} is a Digital Link; the ledger stores GS1 identifiers as EPC "
                          "URNs")
    if text.startswith("urn:epc:") or gs1.looks_like_digital_link(text):
        try:
            if text.startswith("urn:epc:"):
                kind, urn = gs1.urn_kind(text)
            else:
                ident = gs1.parse_identifier(text, ctx.prefix_length)
                kind, urn = ident.kind, ident.urn
        except FormatError as exc:
            raise _fail(path, str(exc)) from None
        if kind not in role.kinds:
            raise _fail(path, f"{urn} is a {kind.value.upper()}; this field takes {role.name}")
        return urn
    if text.startswith(PRIVATE_PREFIX):
        try:
            private_role, _ = parse_private(text)
        except FormatError as exc:
            raise _fail(path, str(exc)) from None
        if private_role is not role.private:
            raise _fail(path, f"{text} is a private {private_role.value} id; this field takes "
                              f"{role.name}")
    return text


def _id_list(values: Json, path: str, role: Role, ctx: _Ctx) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise _fail(path, "must be a list")
    out = tuple(_id(v, f"{path}[{i}]", role, ctx) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        dup = next(x for i, x in enumerate(out) if x in out[:i])
        raise _fail(path, f"{dup} is listed twice")
    return out


def _quantities(values: Json, path: str, ctx: _Ctx) -> tuple[Quantity, ...]:
    if not isinstance(values, list):
        raise _fail(path, "must be a list")
    out: list[Quantity] = []
    for i, item in enumerate(values):
        p = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise _fail(p, "must be an object with epcClass, quantity, uom")
        unknown = sorted(set(item) - {"epcClass", "quantity", "uom"})
        if unknown:
            raise _fail(p, f"unknown field(s) {', '.join(unknown)} (epcClass, quantity, uom)")
        if "epcClass" not in item:
            raise _fail(f"{p}.epcClass", "required")
        epc_class = _id(item["epcClass"], f"{p}.epcClass", CLASS, ctx)
        uom = item.get("uom")
        if uom is not None and (not isinstance(uom, str) or not _UOM.fullmatch(uom)):
            raise _fail(f"{p}.uom", f"{uom!r} is not a UN/ECE Rec 20 code (KGM, LTR, ...)")
        quantity = _quantity(item.get("quantity"), uom, f"{p}.quantity")
        if uom is not None and quantity is None:
            raise _fail(f"{p}.uom", "a uom needs a quantity")
        out.append(Quantity(epc_class, quantity, uom))
    return tuple(out)


def _quantity(value: Json, uom: str | None, path: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise _fail(path, f"{value!r} is not a number")
    if value <= 0:
        raise _fail(path, f"must be positive, got {value}")
    number: int | float = int(value) if isinstance(value, float) and value.is_integer() \
        else value
    if uom is None and not isinstance(number, int):
        raise _fail(path, f"{number} items: without a uom the quantity is a count and must be "
                          "whole")
    return number


def _vocab(raw: Mapping[str, Json], key: str, vocabulary: str,
           required: bool = False) -> str | None:
    if key not in raw:
        if required:
            raise _fail(key, f"required (a CBV {vocabulary} such as shipping, receiving, "
                             "commissioning)")
        return None
    try:
        return cbv.normalise(vocabulary, raw[key])
    except FormatError as exc:
        raise _fail(key, str(exc)) from None


def _place(value: Json, path: str, ctx: _Ctx) -> str:
    if not isinstance(value, dict) or "id" not in value:
        raise _fail(path, "must be an object {\"id\": SGLN or URI}")
    if set(value) != {"id"}:
        raise _fail(path, f"only id is supported, found {', '.join(sorted(set(value)))}")
    return _id(value["id"], f"{path}.id", LOCATION, ctx)


def _biz_transactions(values: Json) -> tuple[BizTransaction, ...]:
    path = "bizTransactionList"
    if not isinstance(values, list):
        raise _fail(path, "must be a list")
    out = []
    for i, item in enumerate(values):
        p = f"{path}[{i}]"
        if not isinstance(item, dict) or "bizTransaction" not in item:
            raise _fail(p, "must be an object with bizTransaction (a URI) and an optional type")
        unknown = sorted(set(item) - {"bizTransaction", "type"})
        if unknown:
            raise _fail(p, f"unknown field(s) {', '.join(unknown)}")
        bt = _uri(item["bizTransaction"], f"{p}.bizTransaction")
        m = _CBV_BT.fullmatch(bt)
        if bt.startswith("urn:epcglobal:cbv:bt:"):
            if m is None:
                raise _fail(f"{p}.bizTransaction", "a CBV transaction id is "
                                                   "urn:epcglobal:cbv:bt:GLN:ID")
            gln = m.group(1)
            if int(gln[-1]) != gs1.check_digit(gln[:-1]):
                raise _fail(f"{p}.bizTransaction", f"GLN check digit is {gln[-1]}, expected "
                                                   f"{gs1.check_digit(gln[:-1])} in {gln}")
        btype = None
        if "type" in item:
            try:
                btype = cbv.normalise("bizTransaction type", item["type"])
            except FormatError as exc:
                raise _fail(f"{p}.type", str(exc)) from None
        out.append(BizTransaction(bt, btype))
    return tuple(out)


def _parties(values: Json, path: str, key: str, ctx: _Ctx) -> tuple[Party, ...]:
    if not isinstance(values, list):
        raise _fail(path, "must be a list")
    out = []
    for i, item in enumerate(values):
        p = f"{path}[{i}]"
        if not isinstance(item, dict) or set(item) != {"type", key}:
            raise _fail(p, f"must be an object with exactly type and {key}")
        try:
            ptype = cbv.normalise("source/destination type", item["type"])
        except FormatError as exc:
            raise _fail(f"{p}.type", str(exc)) from None
        role = LOCATION if ptype == "location" else PARTY
        out.append(Party(ptype, _id(item[key], f"{p}.{key}", role, ctx)))
    return tuple(out)


def _persistent(value: Json) -> tuple[tuple[str, ...], tuple[str, ...]]:
    path = "persistentDisposition"
    if not isinstance(value, dict) or not value or set(value) - {"set", "unset"}:
        raise _fail(path, "must be an object with set and/or unset lists")
    out: list[tuple[str, ...]] = []
    for key in ("set", "unset"):
        items = value.get(key, [])
        if not isinstance(items, list):
            raise _fail(f"{path}.{key}", "must be a list")
        try:
            out.append(tuple(cbv.normalise("disposition", x) for x in items))
        except FormatError as exc:
            raise _fail(f"{path}.{key}", str(exc)) from None
    return out[0], out[1]


def _error_declaration(value: Json, ctx: _Ctx) -> ErrorDeclaration:
    path = "errorDeclaration"
    if not isinstance(value, dict) or "declarationTime" not in value:
        raise _fail(path, "must be an object with declarationTime")
    reason = None
    if "reason" in value:
        try:
            reason = cbv.normalise("error reason", value["reason"])
        except FormatError as exc:
            raise _fail(f"{path}.reason", str(exc)) from None
    ids = value.get("correctiveEventIDs", [])
    if not isinstance(ids, list):
        raise _fail(f"{path}.correctiveEventIDs", "must be a list")
    extensions = []
    for key, v in value.items():
        if key not in ("declarationTime", "reason", "correctiveEventIDs"):
            _extension_key(key, ctx, f"{path}.{key}", None)
            _nested_keys(v, ctx, f"{path}.{key}")
            extensions.append((key, canonical_json(v).decode()))
    return ErrorDeclaration(
        _time_ms(value["declarationTime"], f"{path}.declarationTime"), reason,
        tuple(_uri(x, f"{path}.correctiveEventIDs[{i}]") for i, x in enumerate(ids)),
        tuple(sorted(extensions)))


def _extension_key(key: str, ctx: _Ctx, path: str, etype: EventType | None) -> None:
    prefix, sep, local = key.partition(":")
    if not sep or not prefix or not local:
        known = sorted(COMMON_FIELDS | (STANDARD_FIELDS[etype] if etype else frozenset()))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise _fail(path, f"unknown field{hint}; an extension field needs a namespace prefix "
                          "declared in @context (ex:field)")
    if prefix in ("http", "https", "urn") or prefix in GS1_PREFIXES:
        return
    if prefix == CONSORTIUM_PREFIX:
        ctx.used[prefix] = CONSORTIUM_NAMESPACE
    elif prefix in ctx.declared:
        ctx.used[prefix] = ctx.declared[prefix]
    else:
        raise _fail(path, f"uses prefix {prefix!r}, which the @context does not declare")


def _nested_keys(value: Json, ctx: _Ctx, path: str) -> None:
    """Namespaced keys inside extension values and ilmd must be declared too."""
    if isinstance(value, dict):
        for k, v in value.items():
            if ":" in k and not k.startswith("@"):
                _extension_key(k, ctx, f"{path}.{k}", None)
            _nested_keys(v, ctx, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nested_keys(v, ctx, f"{path}[{i}]")

