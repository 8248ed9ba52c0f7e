"""CBV vocabularies and the contradiction table."""

from __future__ import annotations

import json

import pytest

from consortium.formats import cbv
from consortium.formats.errors import VocabularyError
from tests.formats.shared import SHARED, needs_shared


@pytest.mark.parametrize("value", ["shipping", "urn:epcglobal:cbv:bizstep:shipping",
                                   "https://ref.gs1.org/cbv/BizStep-shipping",
                                   "http://ref.gs1.org/cbv/BizStep-shipping"])
def test_every_form_of_a_biz_step_is_its_short_name(value: str) -> None:
    assert cbv.normalise("bizStep", value) == "shipping"


def test_private_vocabulary_is_kept() -> None:
    uri = "https://vocab.example.com/bizstep/blending"
    assert cbv.normalise("bizStep", uri) == uri


@pytest.mark.parametrize(("value", "message"), [
    ("shiping", "unknown bizStep 'shiping'"),
    ("urn:epcglobal:cbv:bizstep:shiping", "CBV 2.0 has no 'shiping'"),
    ("https://ref.gs1.org/cbv/Disp-in_transit", "a CBV namespace"),
    ("https://gs1.org/voc/Bizstep-shipping", "a CBV namespace"),
])
def test_unknown_values_are_refused(value: str, message: str) -> None:
    with pytest.raises(VocabularyError) as info:
        cbv.normalise("bizStep", value)
    assert message in str(info.value)


@pytest.mark.parametrize(("event_type", "action", "step", "disp"), [
    ("ObjectEvent", "OBSERVE", "shipping", "destroyed"),
    ("ObjectEvent", "OBSERVE", "receiving", "dispensed"),
    ("ObjectEvent", "ADD", "commissioning", "in_transit"),
    ("ObjectEvent", "DELETE", "destroying", "sellable_accessible"),
    ("ObjectEvent", "OBSERVE", "void_shipping", "in_transit"),
    ("ObjectEvent", "DELETE", "commissioning", "active"),
    ("ObjectEvent", "ADD", "destroying", "destroyed"),
    ("AggregationEvent", "DELETE", "packing", None),
    ("AggregationEvent", "ADD", "unpacking", None),
])
def test_contradictions(event_type: str, action: str, step: str, disp: str | None) -> None:
    with pytest.raises(VocabularyError, match="contradicts"):
        cbv.check_consistent(event_type, action, step, disp)


@pytest.mark.parametrize(("step", "disp"), [
    ("shipping", "in_transit"), ("receiving", "in_progress"), ("commissioning", "active"),
    ("destroying", "destroyed"), ("inspecting", "destroyed"), ("holding", "recalled"),
    ("shipping", "recalled"), ("receiving", "returned"), ("decommissioning", "inactive"),
])
def test_ordinary_pairs_pass(step: str, disp: str) -> None:
    cbv.check_consistent("ObjectEvent", "OBSERVE", step, disp)


def test_tables_only_name_known_values() -> None:
    for step, disps in cbv.CONTRADICTIONS.items():
        assert step in cbv.BIZ_STEPS and disps <= cbv.DISPOSITIONS


@needs_shared
def test_vocabularies_match_gs1_context() -> None:
    context = json.loads((SHARED / "epcis-context.jsonld").read_text())["@context"]
    assert set(context["bizStep"]["@context"]) - {"@vocab", "@protected"} >= cbv.BIZ_STEPS
    disp = {k for k in context["disposition"]["@context"] if not k.startswith("@")}
    assert disp == cbv.DISPOSITIONS
    steps = {k for k in context["bizStep"]["@context"] if not k.startswith("@")}
    assert steps == cbv.BIZ_STEPS
