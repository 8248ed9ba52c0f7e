"""A join request's structured application: what the applicant says about itself beyond its
statement (sector, country, contact, the members it names as sponsors).

It travels inside the JoinRequest transaction's statement segment as a JSON object
`{"statement", "sector", "country", "contact_email", "sponsors"}` (a plain statement is free
text), so the ledger format does not change and a request from an older client still reads.
The CLI (`members apply --sector --country --contact-email`) and SDK users build it with
`application_statement`, which refuses malformed fields at once (a one-line error before
anything is signed); the admission service reads it back with `parse_application`.

A field the applicant did not give is absent, not bad: the rules judge only what is there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

SECTORS = frozenset({"manufacturer", "distributor", "wholesaler", "logistics", "pharmacy",
                     "hospital", "clinic", "laboratory", "regulator", "research"})
"""The sectors the consortium serves (medicine supply and care)."""
COUNTRY = re.compile(r"^[A-Z]{2}$")
EMAIL = re.compile(r"^[a-z0-9._%+-]{1,64}@([a-z0-9-]+\.)+[a-z]{2,}$")


@dataclass(frozen=True, slots=True)
class Application:
    statement: str
    sector: str = ""
    country: str = ""
    contact_email: str = ""
    sponsors: tuple[str, ...] = ()


def application_statement(statement: str, *, sector: str = "", country: str = "",
                          contact_email: str = "", sponsors: Iterable[str] = ()) -> str:
    """The statement segment of a JoinRequest: `statement` itself when no field is given,
    else the JSON application. Raises ValueError naming the first malformed field."""
    if not statement.strip():
        raise ValueError("the statement is empty")
    sector, country, contact_email = normalise_fields(sector, country, contact_email)
    names = tuple(sponsors)
    if not (sector or country or contact_email or names):
        return statement
    doc: dict[str, object] = {"statement": statement}
    for key, value in (("sector", sector), ("country", country),
                       ("contact_email", contact_email)):
        if value:
            doc[key] = value
    if names:
        doc["sponsors"] = sorted(set(names))
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def normalise_fields(sector: str, country: str, contact_email: str) -> tuple[str, str, str]:
    """(sector, country, contact email) normalised; ValueError naming a malformed one. An
    empty field is not given, and fine."""
    sector, country = sector.strip().lower(), country.strip().upper()
    contact_email = contact_email.strip().lower()
    if sector and sector not in SECTORS:
        raise ValueError(f"sector {sector!r} is not one of {', '.join(sorted(SECTORS))}")
    if country and not COUNTRY.match(country):
        raise ValueError(f"country {country!r} is not an ISO 3166 two-letter code")
    if contact_email and not EMAIL.match(contact_email):
        raise ValueError(f"contact email {contact_email!r} is malformed")
    return sector, country, contact_email


def parse_application(text: str) -> Application:
    """A statement segment read back: a JSON application, or free text as the statement.
    Fields of the wrong type are dropped (absent), never guessed."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return Application(text)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("statement", text), str):
        return Application(text)

    def field(name: str) -> str:
        value = parsed.get(name, "")
        return value if isinstance(value, str) else ""

    sponsors = parsed.get("sponsors", ())
    return Application(str(parsed.get("statement", text)), field("sector"), field("country"),
                       field("contact_email"),
                       tuple(x for x in sponsors if isinstance(x, str))
                       if isinstance(sponsors, list) else ())
