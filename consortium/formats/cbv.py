"""GS1 Core Business Vocabulary 2.0: business steps, dispositions, and which contradict.

EPCIS 2.0 JSON writes CBV values by their short names (`shipping`, `in_transit`); older data and
other syntaxes use the URN form (`urn:epcglobal:cbv:bizstep:shipping`) or the web form
(`https://ref.gs1.org/cbv/BizStep-shipping`). All three are read; the short name is the
canonical form (it is what the EPCIS 2.0 JSON Schema accepts for a CBV value).

A value in neither CBV form nor short-name form is a private vocabulary URI (EPCIS allows
them: `https://example.com/bizstep/blending`): it is kept as is and nothing is inferred from
it. A bare word that is not a CBV name, or a URI in a CBV namespace naming nothing CBV knows,
is refused: that is a typo, not a private vocabulary.

The contradiction tables are deliberately small and certain: every validator refuses a record
on them at consensus time, so a pair is listed only when no real supply chain could produce it
(a shipment whose goods are destroyed, a commissioning of goods already sold). Everything that
needs judgement (a sale after a recall, an odd but possible pairing) is left to the admission
service.
"""

from __future__ import annotations

from collections.abc import Mapping

from consortium.formats.errors import VocabularyError

BIZ_STEPS = frozenset({
    "accepting", "arriving", "assembling", "collecting", "commissioning", "consigning",
    "creating_class_instance", "cycle_counting", "decommissioning", "departing", "destroying",
    "disassembling", "dispensing", "encoding", "entering_exiting", "holding", "inspecting",
    "installing", "killing", "loading", "other", "packing", "picking", "receiving", "removing",
    "repackaging", "repairing", "replacing", "reserving", "retail_selling", "sampling",
    "sensor_reporting", "shipping", "staging_outbound", "stock_taking", "stocking", "storing",
    "transporting", "unloading", "unpacking", "void_shipping",
})
"""CBV 2.0 business steps (section 7.1), 41 values."""

DISPOSITIONS = frozenset({
    "active", "available", "completeness_inferred", "completeness_verified", "conformant",
    "container_closed", "container_open", "damaged", "destroyed", "dispensed", "disposed",
    "encoded", "expired", "in_progress", "in_transit", "inactive", "mismatch_class",
    "mismatch_instance", "mismatch_quantity", "needs_replacement", "no_pedigree_match",
    "non_conformant", "non_sellable_other", "partially_dispensed", "recalled", "reserved",
    "retail_sold", "returned", "sellable_accessible", "sellable_not_accessible", "stolen",
    "unavailable", "unknown",
})
"""CBV 2.0 dispositions (section 7.2), 33 values."""

SOURCE_DEST_TYPES = frozenset({"owning_party", "possessing_party", "location"})
BIZ_TRANSACTION_TYPES = frozenset({"bol", "cert", "desadv", "inv", "pedigree", "po", "poc",
                                   "prodorder", "recadv", "rma", "testprd", "testres", "upevt"})
ERROR_REASONS = frozenset({"did_not_occur", "incorrect_data"})

_VOCABULARIES: Mapping[str, tuple[frozenset[str], str, str]] = {
    "bizStep": (BIZ_STEPS, "urn:epcglobal:cbv:bizstep:", "https://ref.gs1.org/cbv/BizStep-"),
    "disposition": (DISPOSITIONS, "urn:epcglobal:cbv:disp:", "https://ref.gs1.org/cbv/Disp-"),
    "source/destination type": (SOURCE_DEST_TYPES, "urn:epcglobal:cbv:sdt:",
                                "https://ref.gs1.org/cbv/SDT-"),
    "bizTransaction type": (BIZ_TRANSACTION_TYPES, "urn:epcglobal:cbv:btt:",
                            "https://ref.gs1.org/cbv/BTT-"),
    "error reason": (ERROR_REASONS, "urn:epcglobal:cbv:er:", "https://ref.gs1.org/cbv/ER-"),
}
_CBV_NAMESPACES = ("urn:epcglobal:cbv:", "https://ref.gs1.org/cbv/", "http://ref.gs1.org/cbv/",
                   "https://ns.gs1.org/cbv/", "http://ns.gs1.org/cbv/", "https://gs1.org/voc/",
                   "http://gs1.org/voc/")


def normalise(vocabulary: str, value: object) -> str:
    """A CBV value in any form -> its short name; a private vocabulary URI -> itself.

    `vocabulary` is one of bizStep, disposition, source/destination type, bizTransaction type,
    error reason. Raises VocabularyError for an unknown value."""
    names, urn_prefix, web_prefix = _VOCABULARIES[vocabulary]
    if not isinstance(value, str) or not value:
        raise VocabularyError(f"{vocabulary} must be a non-empty string")
    if value in names:
        return value
    for prefix in (urn_prefix, web_prefix, web_prefix.replace("https://", "http://")):
        if value.startswith(prefix):
            short = value[len(prefix):]
            if short in names:
                return short
            raise VocabularyError(f"unknown {vocabulary} {value!r} (CBV 2.0 has no "
                                  f"{short!r})")
    if ":" not in value:
        raise VocabularyError(f"unknown {vocabulary} {value!r}; CBV 2.0 names are "
                              f"{_sample(names)}, or use a URI for a private vocabulary")
    if value.startswith(_CBV_NAMESPACES):
        raise VocabularyError(f"unknown {vocabulary} {value!r} (a CBV namespace, but not a "
                              f"{vocabulary} CBV 2.0 defines)")
    return value


def _sample(names: frozenset[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:6]) + f"... ({len(ordered)} values)"


def web_uri(vocabulary: str, short: str) -> str:
    """The GS1 web vocabulary URI of a CBV short name (private URIs come back unchanged)."""
    names, _, web_prefix = _VOCABULARIES[vocabulary]
    return web_prefix + short if short in names else short


GONE = frozenset({"destroyed", "disposed", "retail_sold", "dispensed"})
"""Dispositions saying the goods left the supply chain: no longer exist, or reached the
consumer or patient."""

_MOVING_OR_HANDLING = ("shipping", "departing", "transporting", "loading", "unloading",
                       "arriving", "receiving", "accepting", "packing", "unpacking", "picking",
                       "staging_outbound", "stocking", "storing", "consigning", "assembling",
                       "disassembling", "repackaging", "encoding", "installing", "reserving")

CONTRADICTIONS: Mapping[str, frozenset[str]] = {
    **{step: GONE for step in _MOVING_OR_HANDLING},
    "commissioning": GONE | {"partially_dispensed", "in_transit", "returned", "expired",
                             "inactive"},
    "destroying": frozenset({"active", "available", "encoded", "in_transit", "reserved",
                             "sellable_accessible", "sellable_not_accessible", "retail_sold",
                             "dispensed", "partially_dispensed"}),
    "decommissioning": frozenset({"active", "available", "encoded", "in_transit",
                                  "sellable_accessible", "sellable_not_accessible",
                                  "retail_sold", "dispensed"}),
    "killing": frozenset({"active", "encoded", "in_transit", "sellable_accessible"}),
    "retail_selling": frozenset({"destroyed", "disposed", "in_transit", "dispensed",
                                 "partially_dispensed", "encoded"}),
    "dispensing": frozenset({"destroyed", "disposed", "in_transit", "retail_sold", "encoded"}),
    "void_shipping": frozenset({"in_transit"}),
}
"""bizStep -> dispositions that contradict it (CBV 2.0 short names). Why each:
- moving or handling goods (shipping ... reserving) contradicts a disposition saying the goods
  are gone (destroyed, disposed, sold at retail, dispensed to a patient);
- commissioning brings objects into existence: they cannot be gone already, in transit,
  returned, expired or decommissioned (inactive) at that moment;
- destroying and decommissioning end an object's life: it cannot be active, sellable, in
  transit, reserved, sold or dispensed by that same step;
- killing (a tag) leaves it neither active nor encoded nor moving;
- retail selling and dispensing hand goods to a consumer or patient: they are then neither
  destroyed nor in transit, nor handed over the other way (sold vs dispensed);
- void_shipping cancels a shipment: the goods are not in transit.
Inspecting, holding, sampling, stock taking and cycle counting may observe goods in any state
(an inspector witnesses a destruction), so they contradict nothing."""

ACTION_CONTRADICTIONS: Mapping[tuple[str, str], frozenset[str]] = {
    ("ObjectEvent", "commissioning"): frozenset({"DELETE"}),
    ("ObjectEvent", "decommissioning"): frozenset({"ADD"}),
    ("ObjectEvent", "destroying"): frozenset({"ADD"}),
    ("ObjectEvent", "killing"): frozenset({"ADD"}),
    ("AggregationEvent", "packing"): frozenset({"DELETE"}),
    ("AggregationEvent", "unpacking"): frozenset({"ADD"}),
}
"""(event type, bizStep) -> actions that contradict it: commissioning adds objects, it cannot
delete them; decommissioning, destroying and killing remove them, they cannot add them;
packing adds children to a parent, unpacking removes them."""


def check_consistent(event_type: str, action: str | None, biz_step: str | None,
                     disposition: str | None) -> None:
    """Raise VocabularyError when the disposition or the action contradicts the bizStep
    (the tables above; private vocabulary values are never judged)."""
    if biz_step is None:
        return
    if disposition is not None and disposition in CONTRADICTIONS.get(biz_step, frozenset()):
        raise VocabularyError(f"disposition {disposition} contradicts bizStep {biz_step}")
    if action is not None and action in ACTION_CONTRADICTIONS.get((event_type, biz_step),
                                                                  frozenset()):
        raise VocabularyError(f"action {action} contradicts bizStep {biz_step} in an "
                              f"{event_type}")
