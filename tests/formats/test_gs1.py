"""GS1 identifiers: every written form to one canonical value, and precise errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.formats import gs1
from consortium.formats.errors import Gs1Error
from consortium.formats.gs1 import Gs1Kind, parse_identifier

SAME = [
    ("urn:epc:id:sgtin:4012345.011111.987", "https://id.gs1.org/01/04012345111118/21/987",
     Gs1Kind.SGTIN),
    ("urn:epc:class:lgtin:4012345.012345.LOT-A1",
     "https://id.gs1.org/01/04012345123456/10/LOT-A1", Gs1Kind.LGTIN),
    ("urn:epc:idpat:sgtin:4012345.098765.*", "https://id.gs1.org/01/04012345987652",
     Gs1Kind.GTIN),
    ("urn:epc:id:sscc:0614141.1234567890", "https://id.gs1.org/00/106141412345678908",
     Gs1Kind.SSCC),
    ("urn:epc:id:sgln:0614141.07346.1234", "https://id.gs1.org/414/0614141073467/254/1234",
     Gs1Kind.SGLN),
    ("urn:epc:id:sgln:0012345.11111.0", "https://id.gs1.org/414/0012345111112", Gs1Kind.SGLN),
    ("urn:epc:id:pgln:4012345.00000", "https://id.gs1.org/417/4012345000009", Gs1Kind.PGLN),
    ("urn:epc:id:grai:4012345.12345.A%2FB", "https://id.gs1.org/8003/04012345123456A%2FB",
     Gs1Kind.GRAI),
]


@pytest.mark.parametrize(("urn", "link", "kind"), SAME)
def test_urn_and_digital_link_are_one_value(urn: str, link: str, kind: Gs1Kind) -> None:
    a, b = parse_identifier(urn), parse_identifier(link)
    assert a == b and a.kind is kind
    assert a.urn == urn and a.digital_link() == link


def test_digital_link_on_any_host_and_element_strings() -> None:
    want = "urn:epc:class:lgtin:4012345.012345.LOT-A1"
    assert gs1.canonical_urn("https://brand.example/products/01/04012345123456/10/LOT-A1") \
        == want
    assert gs1.canonical_urn("(01)04012345123456(10)LOT-A1") == want
    assert gs1.canonical_urn("https://id.gs1.org/01/4012345123456/10/LOT-A1") == want


def test_registered_prefix_decides_the_split() -> None:
    """A Digital Link does not say where the company prefix ends: a member's registered
    prefix wins over GS1's table."""
    link = "https://id.gs1.org/01/04012345123456/21/X"
    assert parse_identifier(link).company_prefix == "4012345"
    nine = parse_identifier(link, lambda digits: 9 if digits.startswith("401234512") else None)
    assert nine.company_prefix == "401234512" and nine.urn == "urn:epc:id:sgtin:401234512.0345.X"


@pytest.mark.parametrize(("text", "message"), [
    ("https://id.gs1.org/01/04012345123457", "GTIN check digit is 7, expected 6 in "
                                             "04012345123457"),
    ("(01)04012345123450(21)1", "GTIN check digit is 0, expected 6"),
    ("https://id.gs1.org/00/106141412345678907", "SSCC check digit is 7, expected 8"),
    ("https://id.gs1.org/414/4012345000010", "GLN check digit is 0, expected 6"),
    ("urn:epc:id:sgtin:061414.107346.2017", "company prefix (6 digits) and reference (6 "
                                            "digits) must have 13 digits together"),
    ("urn:epc:id:sgtin:06141.1073469.2017", "company prefix 06141 has 5 digits"),
    ("urn:epc:id:sgtin:0614141.10734A.2017", "must be digits"),
    ("urn:epc:id:sgtin:0614141.107346.a/b", "character '/' is not allowed"),
    ("urn:epc:id:sgtin:0614141.107346.a%2", "malformed percent escape"),
    ("urn:epc:id:sgtin:0614141.107346.123456789012345678901", "1 to 20 characters"),
    ("urn:epc:id:sgtin:0614141.107346", "expected 3 dot-separated parts"),
    ("urn:epc:id:sgtn:0614141.107346.1", "scheme urn:epc:id:sgtn is not supported"),
    ("urn:epc:idpat:sgtin:4012345.098765.12", "ends in .*"),
    ("https://id.gs1.org/01/04012345123456/21/1?17=261231", "attributes (17) are data"),
    ("https://id.gs1.org/01/04012345123456/10/A/21/B", "both a lot (10) and a serial (21)"),
    ("(01)04012345123456(17)261231(10)X", "element strings (17) are data"),
    ("LOT-1", "is not a GS1 identifier"),
    ("urn:epc:id:sgtin:0614141.107346.1 2", "contains no whitespace"),
    ("https://id.gs1.org/8003/04012345123456", "GRAI without serial"),
])
def test_bad_identifiers_say_exactly_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(Gs1Error) as info:
        parse_identifier(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_prefix_length_is_an_error_not_a_guess() -> None:
    with pytest.raises(Gs1Error, match="cannot tell where the GS1 company prefix ends"):
        parse_identifier("https://id.gs1.org/01/02000000000015", lambda _: None)


def test_check_digit_against_published_keys() -> None:
    assert gs1.check_digit("0401234512345") == 6
    assert gs1.check_digit("10614141234567890") == 8
    assert gs1.check_digit("061414107346") == 7


SERIAL = st.text(alphabet=sorted(gs1._SET_82), min_size=1, max_size=20)


@given(serial=SERIAL, item=st.integers(0, 999_999), cp_len=st.integers(6, 12))
def test_round_trip_any_serial(serial: str, item: int, cp_len: int) -> None:
    cp = "4" + "0" * (cp_len - 1)
    ref = str(item).zfill(13 - cp_len)[-(13 - cp_len):]
    ident = gs1.Identifier(Gs1Kind.SGTIN, cp, ref, serial)
    assert gs1.parse_urn(ident.urn) == ident
    again = parse_identifier(ident.digital_link(), lambda d: cp_len if d.startswith(cp) else None)
    assert again == ident
