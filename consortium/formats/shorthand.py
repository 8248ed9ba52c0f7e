"""One EPCIS ObjectEvent from the CLI's legacy shorthand flags.

`consortium submit provenance --product P --event E --from A --to B --location L --quantity N`
keeps working: the flags become one ObjectEvent, validated like any submitted event.

| --event | bizStep | disposition | action |
| --- | --- | --- | --- |
| manufactured | commissioning | active | ADD |
| shipped | shipping | in_transit | OBSERVE |
| received | receiving | in_progress | OBSERVE |
| inspected | inspecting | (none: the flags do not say whether it passed) | OBSERVE |
| recalled | holding | recalled | OBSERVE |
| destroyed | destroying | destroyed | DELETE |

CBV has no "recalling" step: a recall puts stock on hold, so `holding` with disposition
`recalled`. `disposition=` overrides the table (e.g. `conformant` for a passed inspection).

- `--product`: a GS1 identifier in any form (EPC URN, Digital Link, element string). An
  instance (SGTIN, SSCC, GRAI) goes in epcList; a class (LGTIN, GTIN) in quantityList with
  the quantity. Any other URI (it contains "://" or starts with "urn:") is used as a class
  identifier as is. A plain name (`LOT-1`) becomes the private lot `urn:consortium:lot:LOT-1`
  (see private_ids: no GTIN is invented for it).
- `--from` / `--to`: the source and destination owning parties: a PGLN or SGLN in any form,
  a URI, or an organisation name (a member's first registered PGLN, else its private org
  id). A shipment goes from `--from` (default: the submitter) to `--to` (required); a receipt
  arrives at `--to` (default: the submitter), from `--from` when given.
- `--location`: the bizLocation: an SGLN in any form, a URI, or a site name (private site id).
  Required: an event says where it happened.
- notes and document ids, when given, are kept as the extension fields `consortium:note` and
  `consortium:documents`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from consortium.formats import gs1
from consortium.formats.directory import EMPTY_DIRECTORY, Gs1Directory
from consortium.formats.epcis_model import CONSORTIUM_NAMESPACE, Event, Json, format_time_ms
from consortium.formats.epcis_parse import parse_event
from consortium.formats.errors import EpcisError, FormatError
from consortium.formats.private_ids import PrivateRole, private_uri

LEGACY_EVENTS: Mapping[str, tuple[str, str | None, str]] = {
    "manufactured": ("commissioning", "active", "ADD"),
    "shipped": ("shipping", "in_transit", "OBSERVE"),
    "received": ("receiving", "in_progress", "OBSERVE"),
    "inspected": ("inspecting", None, "OBSERVE"),
    "recalled": ("holding", "recalled", "OBSERVE"),
    "destroyed": ("destroying", "destroyed", "DELETE"),
}
"""Legacy --event -> (bizStep, disposition, action)."""


def _is_gs1(text: str) -> bool:
    return text.startswith(("urn:epc:", "(")) or gs1.looks_like_digital_link(text)


def _is_uri(text: str) -> bool:
    return "://" in text or text.startswith("urn:")


def _party(text: str, directory: Gs1Directory) -> str:
    if _is_gs1(text) or _is_uri(text):
        return text
    return directory.party_uri(text)


def _location(text: str) -> str:
    if _is_gs1(text) or _is_uri(text):
        return text
    return private_uri(PrivateRole.SITE, text)


def object_event_from_shorthand(product: str, event: str, from_org: str | None,
                                to_org: str | None, location: str | None,
                                quantity: int | None, *, submitter_org: str,
                                event_time_ms: int, time_zone_offset: str = "+00:00",
                                directory: Gs1Directory = EMPTY_DIRECTORY,
                                disposition: str | None = None, note: str | None = None,
                                documents: Sequence[str] = (),
                                extensions: Mapping[str, Json] | None = None) -> Event:
    """The ObjectEvent the legacy flags mean (table in the module docstring). `extensions`
    adds namespaced extension fields (consortium:...). Raises FormatError with a one-line
    reason naming the flag."""
    if event not in LEGACY_EVENTS:
        raise FormatError(f"--event {event!r}: expected one of {', '.join(LEGACY_EVENTS)}")
    biz_step, default_disposition, action = LEGACY_EVENTS[event]
    if not location:
        raise FormatError(f"--location is required: an EPCIS event says where it happened "
                          f"(an SGLN or a site name), also for {event}")
    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)
                                 or quantity <= 0):
        raise FormatError(f"--quantity {quantity!r}: a positive whole number")
    raw: dict[str, Json] = {
        "type": "ObjectEvent", "action": action, "bizStep": biz_step,
        "eventTime": format_time_ms(event_time_ms), "eventTimeZoneOffset": time_zone_offset,
        "bizLocation": {"id": _location(location)}}
    chosen = disposition or default_disposition
    if chosen is not None:
        raw["disposition"] = chosen
    if _is_gs1(product):
        ident = gs1.parse_identifier(product, directory.prefix_length)
        if ident.is_instance:
            if quantity not in (None, 1):
                raise FormatError(f"--quantity {quantity}: {ident.urn} is one item; a quantity "
                                  "applies to a lot or a GTIN")
            raw["epcList"] = [ident.urn]
        elif ident.is_class:
            raw["quantityList"] = [_quantity(ident.urn, quantity)]
        else:
            raise FormatError(f"--product {product}: a {ident.kind.value.upper()} is a place "
                              "or party, not a product")
    else:
        product_id = product if _is_uri(product) else private_uri(PrivateRole.LOT, product)
        raw["quantityList"] = [_quantity(product_id, quantity)]
    sources, destinations = _parties(event, from_org, to_org, submitter_org, directory)
    if sources:
        raw["sourceList"] = [{"type": "owning_party", "source": s} for s in sources]
    if destinations:
        raw["destinationList"] = [{"type": "owning_party", "destination": d}
                                  for d in destinations]
    if note:
        raw["consortium:note"] = note
    if documents:
        raw["consortium:documents"] = list(documents)
    for key, value in (extensions or {}).items():
        if key in raw:
            raise FormatError(f"extension {key!r} would overwrite a field of the event")
        raw[key] = value
    try:
        return parse_event(raw, prefix_length=directory.prefix_length,
                           declared={"consortium": CONSORTIUM_NAMESPACE})
    except EpcisError as exc:
        raise FormatError(str(exc).removeprefix("event 0: ")) from None


def _quantity(epc_class: str, quantity: int | None) -> dict[str, Json]:
    return {"epcClass": epc_class} if quantity is None else {"epcClass": epc_class,
                                                             "quantity": quantity}


def _parties(event: str, from_org: str | None, to_org: str | None, submitter: str,
             directory: Gs1Directory) -> tuple[list[str], list[str]]:
    if event == "shipped":
        if not to_org:
            raise FormatError("--to is required for shipped (who the goods go to)")
        return [_party(from_org or submitter, directory)], [_party(to_org, directory)]
    if event == "received":
        src = [_party(from_org, directory)] if from_org else []
        return src, [_party(to_org or submitter, directory)]
    return ([_party(from_org, directory)] if from_org else [],
            [_party(to_org, directory)] if to_org else [])
