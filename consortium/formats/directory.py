"""Members' GS1 identities: which member a party, a location or an EPC belongs to.

A member registers its GS1 company prefixes, its party GLNs (PGLN) and the GLNs of its sites
(SGLN) with its membership (genesis or join request). From them the directory answers:
- who a party or location of an event is (an explicit PGLN/SGLN first, then the member whose
  company prefix allocated the key: GS1 keys under a prefix are that company's);
- where a Digital Link's company prefix ends (members' prefixes are known exactly);
- how to name a member in an EPCIS event (its first PGLN, else its private org id).
Parties and places that belong to no member are allowed (a contract carrier): they resolve
to None, and the event still stands.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consortium.formats import gs1
from consortium.formats.errors import FormatError
from consortium.formats.private_ids import PRIVATE_PREFIX, PrivateRole, parse_private, private_uri

IDENTITY_BYTES_MAX = 4096
"""Largest GS1 identity a join request may carry (a few prefixes and a few dozen sites)."""


@dataclass(frozen=True, slots=True)
class MemberGs1:
    """One member's GS1 identity. PGLNs and SGLNs may be given in any written form; they are
    stored as EPC URNs (the first PGLN is how events name the member)."""

    org: str
    company_prefixes: tuple[str, ...] = ()
    pglns: tuple[str, ...] = ()
    sglns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.org:
            raise FormatError("a member's GS1 identity needs its org")
        for cp in self.company_prefixes:
            if not cp.isascii() or not cp.isdigit() or not (
                    gs1.COMPANY_PREFIX_DIGITS_MIN <= len(cp) <= gs1.COMPANY_PREFIX_DIGITS_MAX):
                raise FormatError(f"{self.org}: company prefix {cp!r} must be 6 to 12 digits")
        object.__setattr__(self, "pglns", self._normalise(self.pglns, gs1.Gs1Kind.PGLN))
        object.__setattr__(self, "sglns", self._normalise(self.sglns, gs1.Gs1Kind.SGLN))

    def _prefix_length(self, digits: str) -> int | None:
        return max((len(cp) for cp in self.company_prefixes if digits.startswith(cp)),
                   default=None)

    def _normalise(self, values: tuple[str, ...], kind: gs1.Gs1Kind) -> tuple[str, ...]:
        out = []
        for v in values:
            ident = gs1.parse_identifier(v, self._prefix_length)
            if ident.kind is not kind:
                raise FormatError(f"{self.org}: {v} is a {ident.kind.value.upper()}, not a "
                                  f"{kind.value.upper()}")
            out.append(ident.urn)
        return tuple(out)

    def to_dict(self) -> dict[str, list[str] | str]:
        return {"org": self.org, "company_prefixes": list(self.company_prefixes),
                "pglns": list(self.pglns), "sglns": list(self.sglns)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> MemberGs1:
        def strings(key: str) -> tuple[str, ...]:
            value = d.get(key, [])
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise FormatError(f"{key} must be a list of strings")
            return tuple(value)

        return cls(str(d.get("org", "")), strings("company_prefixes"), strings("pglns"),
                   strings("sglns"))

    def canonical(self) -> bytes:
        """The identity as a join request carries it: canonical JSON without the org (the
        request names it), EPC URNs, empty when the member registers nothing."""
        if not (self.company_prefixes or self.pglns or self.sglns):
            return b""
        body = {k: v for k, v in self.to_dict().items() if k != "org"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_canonical(cls, org: str, data: bytes) -> MemberGs1:
        """What every validator reads from a join request: `canonical()` bytes and nothing
        else (EPC URNs only, so no library or prefix table takes part; one identity, one
        encoding). Raises FormatError with a one-line reason."""
        if not data:
            return cls(org)
        if len(data) > IDENTITY_BYTES_MAX:
            raise FormatError(f"a GS1 identity is at most {IDENTITY_BYTES_MAX} bytes")
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            raise FormatError("the GS1 identity is not JSON") from None
        if not isinstance(raw, dict) or set(raw) != {"company_prefixes", "pglns", "sglns"}:
            raise FormatError("the GS1 identity has exactly company_prefixes, pglns, sglns")
        for key in ("pglns", "sglns"):
            for v in raw[key] if isinstance(raw[key], list) else ():
                if not isinstance(v, str) or not v.startswith("urn:epc:id:"):
                    raise FormatError(f"{key}: {v!r} is not an EPC URN")
        member = cls.from_dict({"org": org, **raw})
        if member.canonical() != data:
            raise FormatError("the GS1 identity is not in canonical form "
                              "(MemberGs1.canonical(): sorted keys, no whitespace, EPC URNs)")
        return member


class Gs1Directory:
    """Org -> GS1 identity, and back. Immutable once built; deterministic lookups."""

    def __init__(self, members: Iterable[MemberGs1] = ()) -> None:
        self._members: dict[str, MemberGs1] = {}
        self._prefixes: dict[str, str] = {}
        self._glns: dict[str, str] = {}
        for m in members:
            if m.org in self._members:
                raise FormatError(f"{m.org} has two GS1 identities")
            self._members[m.org] = m
            for cp in m.company_prefixes:
                clash = next((o for p, o in self._prefixes.items()
                              if o != m.org and (p.startswith(cp) or cp.startswith(p))), None)
                if clash is not None:
                    raise FormatError(f"company prefix {cp} of {m.org} overlaps one of {clash}")
                self._prefixes[cp] = m.org
            for urn in (*m.pglns, *m.sglns):
                if self._glns.setdefault(urn, m.org) != m.org:
                    raise FormatError(f"{urn} is registered by {self._glns[urn]} and {m.org}")

    @property
    def members(self) -> tuple[MemberGs1, ...]:
        return tuple(self._members.values())

    def member(self, org: str) -> MemberGs1 | None:
        return self._members.get(org)

    def prefix_length(self, digits: str) -> int | None:
        """The registered company prefix `digits` starts with (its length), if any."""
        return max((len(cp) for cp in self._prefixes if digits.startswith(cp)), default=None)

    def org_of(self, uri: str) -> str | None:
        """The member a party, location or EPC (canonical URI) belongs to, or None."""
        if uri in self._glns:
            return self._glns[uri]
        if uri.startswith(PRIVATE_PREFIX):
            try:
                role, name = parse_private(uri)
            except FormatError:
                return None
            return name if role is PrivateRole.ORG and name in self._members else None
        if not uri.startswith("urn:epc:"):
            return None
        try:
            ident = gs1.parse_urn(uri)
        except FormatError:
            return None
        return self._prefixes.get(ident.company_prefix)

    def party_uri(self, org: str) -> str:
        """How an event names an organisation: the member's first PGLN, else its private id
        (also for non-members named by plain text)."""
        m = self._members.get(org)
        if m is not None and m.pglns:
            return m.pglns[0]
        return private_uri(PrivateRole.ORG, org)


EMPTY_DIRECTORY = Gs1Directory()
