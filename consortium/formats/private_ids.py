"""The consortium's private identifiers, for names that are not GS1 identifiers.

Legacy scripts name lots, organisations and sites by plain text (`--product LOT-1 --from org0
--location "Basel plant"`). EPCIS needs URIs there, and guessing a GS1 identifier for them
would invent a GTIN or a GLN nobody assigned. So a plain name becomes a URI in a private,
unregistered URN namespace, one scheme per role, and nothing else:

    urn:consortium:lot:<name>    a lot (a class: it goes in a quantityList)
    urn:consortium:org:<name>    a party (an organisation without a registered PGLN)
    urn:consortium:site:<name>   a location (a site without a registered SGLN)

`<name>` is the text percent-encoded (RFC 3986: everything but unreserved characters,
sub-delimiters, ":" and "@"), so the mapping is one-to-one and the same on every machine:
`LOT-1` -> `urn:consortium:lot:LOT-1`, `Basel plant` -> `urn:consortium:site:Basel%20plant`.
A lot id names the same lot whoever reports it (it does not include the submitter), because a
legacy chain spans organisations under one lot id.
"""

from __future__ import annotations

import enum
from urllib.parse import quote, unquote

from consortium.formats.errors import FormatError

PRIVATE_PREFIX = "urn:consortium:"
NAME_CHARS_MAX = 200
_SAFE = "-._~!$&'()*+,;=:@"


class PrivateRole(enum.StrEnum):
    LOT = "lot"
    ORG = "org"
    SITE = "site"


def private_uri(role: PrivateRole, name: str) -> str:
    """The private URI of a plain name in a role. Raises FormatError for an empty, overlong
    or control-character name."""
    if not name or len(name) > NAME_CHARS_MAX or not name.isprintable() or name != name.strip():
        raise FormatError(f"{role.value} name {name!r} must be 1 to {NAME_CHARS_MAX} printable "
                          "characters without leading or trailing spaces")
    return f"{PRIVATE_PREFIX}{role.value}:{quote(name, safe=_SAFE)}"


def parse_private(uri: str) -> tuple[PrivateRole, str]:
    """(role, plain name) of a private URI. Raises FormatError when it is not one."""
    if not uri.startswith(PRIVATE_PREFIX):
        raise FormatError(f"{uri!r} is not a consortium private identifier")
    role_text, sep, encoded = uri[len(PRIVATE_PREFIX):].partition(":")
    try:
        role = PrivateRole(role_text)
    except ValueError:
        raise FormatError(f"{uri!r}: unknown private identifier kind {role_text!r} (lot, org, "
                          "site)") from None
    name = unquote(encoded)
    if not sep or private_uri(role, name) != uri:
        raise FormatError(f"{uri!r} is not in canonical form (expected "
                          f"{private_uri(role, name) if name else 'a name after the kind'})")
    return role, name
