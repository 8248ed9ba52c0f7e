"""The structured application a join request may carry (issue 16): built by the CLI and SDK
users, read back by the admission service; absent fields stay absent."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from consortium.admission.application import application_statement, parse_application

TEXT = "We run community pharmacies in Norway and record receipts of serialised packs."


def test_a_statement_alone_stays_free_text() -> None:
    assert application_statement(TEXT) == TEXT
    app = parse_application(TEXT)
    assert (app.statement, app.sector, app.country, app.contact_email) == (TEXT, "", "", "")


def test_given_fields_travel_and_come_back() -> None:
    text = application_statement(TEXT, sector="Pharmacy", country="no",
                                 contact_email="IT@Fjord.example", sponsors=["b", "a", "a"])
    assert json.loads(text) == {"statement": TEXT, "sector": "pharmacy", "country": "NO",
                                "contact_email": "it@fjord.example", "sponsors": ["a", "b"]}
    app = parse_application(text)
    assert (app.sector, app.country, app.contact_email, app.sponsors) == (
        "pharmacy", "NO", "it@fjord.example", ("a", "b"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("sector", "crypto", "sector 'crypto' is not one of"),
    ("country", "Norway", "not an ISO 3166 two-letter code"),
    ("contact_email", "nope", "contact email 'nope' is malformed"),
])
def test_malformed_fields_are_refused_before_signing(field: str, value: str,
                                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        application_statement(TEXT, **{field: value})


def test_fields_of_the_wrong_type_are_dropped_not_guessed() -> None:
    app = parse_application(json.dumps({"statement": TEXT, "sector": 3, "sponsors": "x"}))
    assert (app.statement, app.sector, app.sponsors) == (TEXT, "", ())
    assert parse_application("[1, 2]").statement == "[1, 2]"


def test_members_apply_refuses_a_malformed_sector_in_one_line(tmp_path: object) -> None:
    from apps.cli import main

    statement = tmp_path / "s.txt"  # type: ignore[operator]
    statement.write_text(TEXT)
    result = CliRunner().invoke(main, [
        "members", "apply", "--dir", str(tmp_path), "--org", "fjord", "--endpoint",
        "127.0.0.1:7150", "--statement", str(statement), "--sponsorship", "0" * 128,
        "--sponsor", "org1", "--sector", "crypto"])
    assert result.exit_code != 0
    assert "sector 'crypto' is not one of" in result.output
