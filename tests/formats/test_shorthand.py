"""The CLI's legacy flags -> one ObjectEvent; members' GS1 identities."""

from __future__ import annotations

import pytest

from consortium.formats import epcis
from consortium.formats.directory import Gs1Directory, MemberGs1
from consortium.formats.errors import FormatError

T0 = 1772366400000
DIRECTORY = Gs1Directory([
    MemberGs1("org0", ("4012345",), ("urn:epc:id:pgln:4012345.00000",),
              ("https://id.gs1.org/414/4012345000016",)),
    MemberGs1("org2", ("5412345",), ("https://id.gs1.org/417/5412345000013",)),
])


def shorthand(product: str, event: str, from_org: str | None = None, to_org: str | None = None,
              location: str | None = "Basel", quantity: int | None = 500,
              **kw: object) -> epcis.Event:
    return epcis.object_event_from_shorthand(product, event, from_org, to_org, location,
                                             quantity, submitter_org="org1", event_time_ms=T0,
                                             directory=DIRECTORY, **kw)  # type: ignore[arg-type]


def test_the_demo_shipment() -> None:
    e = shorthand("LOT-42", "shipped", "org0", "org2", note="carrier pickup")
    assert (e.biz_step, e.disposition, e.action) == ("shipping", "in_transit", "OBSERVE")
    assert e.party("source", "owning_party") == "urn:epc:id:pgln:4012345.00000"
    assert e.party("destination", "owning_party") == "urn:epc:id:pgln:5412345.00001"
    assert e.identifiers() == ("urn:consortium:lot:LOT-42",)
    assert e.quantity_list[0].quantity == 500
    assert e.biz_location == "urn:consortium:site:Basel"
    assert e.extension("consortium:note") == "carrier pickup"
    epcis.check_event_at_consensus(e.public_json(), T0, 0)


@pytest.mark.parametrize(("event", "step", "disp", "action"), [
    ("manufactured", "commissioning", "active", "ADD"),
    ("received", "receiving", "in_progress", "OBSERVE"),
    ("inspected", "inspecting", None, "OBSERVE"),
    ("recalled", "holding", "recalled", "OBSERVE"),
    ("destroyed", "destroying", "destroyed", "DELETE"),
])
def test_event_table(event: str, step: str, disp: str | None, action: str) -> None:
    e = shorthand("LOT-1", event)
    assert (e.biz_step, e.disposition, e.action) == (step, disp, action)


def test_received_defaults_to_the_submitter_and_non_members_are_named_privately() -> None:
    e = shorthand("LOT-1", "received", from_org="Polar Cold Chain")
    assert e.party("destination", "owning_party") == "urn:consortium:org:org1"
    assert e.party("source", "owning_party") == "urn:consortium:org:Polar%20Cold%20Chain"
    assert DIRECTORY.org_of("urn:consortium:org:Polar%20Cold%20Chain") is None


def test_gs1_products_and_locations() -> None:
    e = shorthand("https://id.gs1.org/01/04012345123456/10/LOT-A1", "manufactured",
                  location="urn:epc:id:sgln:4012345.00001.0", quantity=50000)
    assert e.quantity_list[0].epc_class == "urn:epc:class:lgtin:4012345.012345.LOT-A1"
    item = shorthand("urn:epc:id:sgtin:4012345.012345.77", "inspected", quantity=None,
                     disposition="conformant")
    assert item.epc_list == ("urn:epc:id:sgtin:4012345.012345.77",)
    assert item.disposition == "conformant"


@pytest.mark.parametrize(("kw", "message"), [
    ({"location": None}, "--location is required"),
    ({"event": "teleported"}, "--event 'teleported': expected one of"),
    ({"event": "shipped"}, "--to is required for shipped"),
    ({"product": "urn:epc:id:sgtin:4012345.012345.77"}, "is one item"),
    ({"product": "https://id.gs1.org/01/04012345123457"}, "GTIN check digit is 7, expected 6"),
    ({"quantity": 0}, "--quantity 0: a positive whole number"),
    ({"disposition": "destroyed", "event": "received"}, "disposition destroyed contradicts "
                                                        "bizStep receiving"),
])
def test_shorthand_errors(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"product": "LOT-1", "event": "received", **kw}
    with pytest.raises(FormatError) as info:
        shorthand(**args)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_directory_resolves_parties_locations_and_epcs() -> None:
    assert DIRECTORY.org_of("urn:epc:id:sgln:4012345.00001.0") == "org0"
    assert DIRECTORY.org_of("urn:epc:id:sgln:4012345.00077.0") == "org0"  # by prefix
    assert DIRECTORY.org_of("urn:epc:class:lgtin:5412345.012345.A") == "org2"
    assert DIRECTORY.org_of("urn:epc:id:pgln:0614141.00000") is None
    assert DIRECTORY.org_of("urn:consortium:org:org0") == "org0"
    assert DIRECTORY.prefix_length("5412345000013") == 7
    assert DIRECTORY.party_uri("org9") == "urn:consortium:org:org9"
    member = DIRECTORY.member("org0")
    assert member is not None and MemberGs1.from_dict(member.to_dict()) == member


@pytest.mark.parametrize(("members", "message"), [
    ([MemberGs1("a", ("4012345",)), MemberGs1("b", ("40123456",))], "overlaps one of a"),
    ([MemberGs1("a", (), ("urn:epc:id:pgln:4012345.00000",)),
      MemberGs1("b", (), ("urn:epc:id:pgln:4012345.00000",))], "is registered by a and b"),
])
def test_directory_conflicts(members: list[MemberGs1], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Gs1Directory(members)


def test_member_identity_validation() -> None:
    with pytest.raises(FormatError, match="must be 6 to 12 digits"):
        MemberGs1("a", ("12345",))
    with pytest.raises(FormatError, match="is a SGLN, not a PGLN"):
        MemberGs1("a", (), ("urn:epc:id:sgln:4012345.00001.0",))
