"""GS1 identifiers as EPCIS uses them: SGTIN, LGTIN, GTIN classes, SSCC, SGLN, PGLN and GRAI.

One canonical value (`Identifier`) comes out of any of the three written forms:

- the EPC URN (`urn:epc:id:sgtin:4012345.011111.987`, `urn:epc:class:lgtin:4012345.012345.A1`,
  `urn:epc:idpat:sgtin:4012345.012345.*` for a whole GTIN), which states where the GS1 company
  prefix ends;
- the GS1 Digital Link URI on any host (`https://id.gs1.org/01/04012345111118/21/987`), which
  does not: the prefix length comes from the caller (the members' registered prefixes, see
  `directory.Gs1Directory.prefix_length`) and otherwise from GS1's published prefix-length
  table as bundled with `biip`;
- a GS1 element string in human-readable form (`(01)04012345111118(21)987`).

Each identifier has a normalised URN form (what the ledger stores and indexes) and a Digital
Link form (what GS1's event hash and web resolvers use).

Why two implementations live here: the URN parser is hand-written because validators run it at
consensus time for every identifier of every record: it must be fast (a few microseconds, a
precompiled regular expression and digit arithmetic; `biip` takes 10-40 us per value) and must
not change with a library upgrade (a validator with another `biip` would judge differently).
URNs carry no check digit, so the URN checks are the company-prefix/reference split, digits and
the GS1 character set. Digital Link URIs and element strings are parsed with `biip`, which
knows the Digital Link grammar, the application identifiers' formats and GS1's company prefix
lengths; that only happens at submission, where the result is turned into the URN form before
anything is stored. Check digits of Digital Link keys are verified here first, so the error
reads the same whatever the form.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from consortium.formats.errors import Gs1Error

PrefixLength = Callable[[str], int | None]
"""Given a GS1 key's digits (without indicator or extension digit), how many of the leading
digits are the company prefix, or None when unknown."""

COMPANY_PREFIX_DIGITS_MIN = 6
COMPANY_PREFIX_DIGITS_MAX = 12
COMPONENT_CHARS_MAX = 20
"""Serial numbers, lots and SGLN extensions: GS1 AIs 21, 10 and 254 are X..20."""
GRAI_SERIAL_CHARS_MAX = 16
DIGITAL_LINK_HOST = "id.gs1.org"

_SET_82 = frozenset("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
                    "abcdefghijklmnopqrstuvwxyz")
"""GS1 AI encodable character set 82: what serials, lots and extensions may contain."""
_URN_ESCAPED = {'"': "%22", "%": "%25", "&": "%26", "/": "%2F", "<": "%3C", ">": "%3E",
                "?": "%3F"}
"""Characters of set 82 that an EPC URN writes percent-encoded (EPC Tag Data Standard)."""
DIGITAL_LINK_PRIMARY_KEYS = frozenset({"00", "01", "253", "255", "401", "402", "414", "417",
                                       "8003", "8004", "8006", "8010", "8013", "8017", "8018"})
"""Application identifiers that start a GS1 Digital Link path: a web URI with one of these as
a path segment claims to be a Digital Link and is parsed strictly."""


class Gs1Kind(enum.StrEnum):
    SGTIN = "sgtin"
    """One serialised trade item (GTIN + serial): an instance."""
    LGTIN = "lgtin"
    """A lot of a trade item (GTIN + lot): a class."""
    GTIN = "gtin"
    """All items of a GTIN (`urn:epc:idpat:sgtin:...*`): a class."""
    SSCC = "sscc"
    """A logistic unit (pallet, case): an instance."""
    SGLN = "sgln"
    """A physical location (GLN + extension)."""
    PGLN = "pgln"
    """A party (organisation)."""
    GRAI = "grai"
    """A returnable asset (crate, roll container) with its serial: an instance."""


INSTANCE_KINDS = frozenset({Gs1Kind.SGTIN, Gs1Kind.SSCC, Gs1Kind.GRAI})
CLASS_KINDS = frozenset({Gs1Kind.LGTIN, Gs1Kind.GTIN})


def check_digit(body: str) -> int:
    """The GS1 standard check digit (mod 10, weights 3 and 1 from the right) of `body`."""
    total = 0
    for position, ch in enumerate(reversed(body)):
        total += (ord(ch) - 48) * (3 if position % 2 == 0 else 1)
    return (10 - total % 10) % 10


@dataclass(frozen=True, slots=True)
class Identifier:
    """A GS1 identifier in canonical form.

    `reference` is the part after the company prefix as the EPC URN writes it: indicator digit
    plus item reference (SGTIN, LGTIN, GTIN), extension digit plus serial reference (SSCC),
    location reference (SGLN), party reference (PGLN), asset type (GRAI). `component` is the
    serial (SGTIN, GRAI), the lot (LGTIN) or the SGLN extension ("0" means none), unescaped.
    """

    kind: Gs1Kind
    company_prefix: str
    reference: str
    component: str | None = None

    @property
    def is_instance(self) -> bool:
        return self.kind in INSTANCE_KINDS

    @property
    def is_class(self) -> bool:
        return self.kind in CLASS_KINDS

    @property
    def key(self) -> str:
        """The GS1 key with its check digit: GTIN-14, SSCC-18, GLN-13 or GRAI-13."""
        cp, ref = self.company_prefix, self.reference
        if self.kind in (Gs1Kind.SGTIN, Gs1Kind.LGTIN, Gs1Kind.GTIN, Gs1Kind.SSCC):
            body = ref[0] + cp + ref[1:]
        else:
            body = cp + ref
        return body + str(check_digit(body))

    @property
    def urn(self) -> str:
        cp, ref, comp = self.company_prefix, self.reference, self.component
        if self.kind is Gs1Kind.SGTIN:
            return f"urn:epc:id:sgtin:{cp}.{ref}.{_urn_escape(comp or '')}"
        if self.kind is Gs1Kind.LGTIN:
            return f"urn:epc:class:lgtin:{cp}.{ref}.{_urn_escape(comp or '')}"
        if self.kind is Gs1Kind.GTIN:
            return f"urn:epc:idpat:sgtin:{cp}.{ref}.*"
        if self.kind is Gs1Kind.SSCC:
            return f"urn:epc:id:sscc:{cp}.{ref}"
        if self.kind is Gs1Kind.SGLN:
            return f"urn:epc:id:sgln:{cp}.{ref}.{_urn_escape(comp or '0')}"
        if self.kind is Gs1Kind.PGLN:
            return f"urn:epc:id:pgln:{cp}.{ref}"
        return f"urn:epc:id:grai:{cp}.{ref}.{_urn_escape(comp or '')}"

    def digital_link(self, host: str = DIGITAL_LINK_HOST) -> str:
        """The GS1 Digital Link URI (canonical on id.gs1.org unless another host is given)."""
        base = f"https://{host}"
        comp = quote(self.component or "", safe="")
        if self.kind is Gs1Kind.SGTIN:
            return f"{base}/01/{self.key}/21/{comp}"
        if self.kind is Gs1Kind.LGTIN:
            return f"{base}/01/{self.key}/10/{comp}"
        if self.kind is Gs1Kind.GTIN:
            return f"{base}/01/{self.key}"
        if self.kind is Gs1Kind.SSCC:
            return f"{base}/00/{self.key}"
        if self.kind is Gs1Kind.SGLN:
            ext = "" if self.component in (None, "0") else f"/254/{comp}"
            return f"{base}/414/{self.key}{ext}"
        if self.kind is Gs1Kind.PGLN:
            return f"{base}/417/{self.key}"
        return f"{base}/8003/0{self.key}{comp}"

    def gtin_class(self) -> Identifier | None:
        """The GTIN class an SGTIN or LGTIN belongs to (None for other kinds)."""
        if self.kind in (Gs1Kind.SGTIN, Gs1Kind.LGTIN):
            return Identifier(Gs1Kind.GTIN, self.company_prefix, self.reference)
        return None


def _urn_escape(text: str) -> str:
    return "".join(_URN_ESCAPED.get(ch, ch) for ch in text)


def _urn_unescape(text: str, what: str) -> str:
    """Decode %XX escapes; every character must be in GS1 set 82."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            hex2 = text[i + 1:i + 3]
            if len(hex2) != 2 or any(c not in "0123456789abcdefABCDEF" for c in hex2):
                raise Gs1Error(f"{what}: malformed percent escape {text[i:i + 3]!r}")
            ch = chr(int(hex2, 16))
            if ch not in _SET_82:
                raise Gs1Error(f"{what}: {ch!r} is not in the GS1 character set")
            i += 3
        else:
            if ch not in _SET_82 or ch in _URN_ESCAPED:
                raise Gs1Error(f"{what}: character {ch!r} is not allowed (GS1 set 82; "
                               "\" % & / < > ? must be percent-encoded)")
            i += 1
        out.append(ch)
    return "".join(out)


def _check_component(value: str, what: str, max_chars: int = COMPONENT_CHARS_MAX) -> None:
    if not 1 <= len(value) <= max_chars:
        raise Gs1Error(f"{what} must be 1 to {max_chars} characters, got {len(value)}")
    bad = sorted({ch for ch in value if ch not in _SET_82})
    if bad:
        raise Gs1Error(f"{what} contains {''.join(bad)!r}, outside the GS1 character set")


def _check_split(cp: str, ref: str, total: int, what: str) -> None:
    if not cp.isdigit() or not ref.isdigit() or not cp.isascii() or not ref.isascii():
        raise Gs1Error(f"{what}: company prefix and reference must be digits")
    if not COMPANY_PREFIX_DIGITS_MIN <= len(cp) <= COMPANY_PREFIX_DIGITS_MAX:
        raise Gs1Error(f"{what}: company prefix {cp} has {len(cp)} digits, expected "
                       f"{COMPANY_PREFIX_DIGITS_MIN} to {COMPANY_PREFIX_DIGITS_MAX}")
    if len(cp) + len(ref) != total:
        raise Gs1Error(f"{what}: company prefix ({len(cp)} digits) and reference "
                       f"({len(ref)} digits) must have {total} digits together")


_URN = re.compile(r"urn:epc:(id|class|idpat):([a-z]+):([^.]*)\.([^.]*)(?:\.(.*))?")

_URN_SHAPES: Mapping[tuple[str, str], tuple[Gs1Kind, int, bool]] = {
    ("id", "sgtin"): (Gs1Kind.SGTIN, 13, True),
    ("class", "lgtin"): (Gs1Kind.LGTIN, 13, True),
    ("idpat", "sgtin"): (Gs1Kind.GTIN, 13, True),
    ("id", "sscc"): (Gs1Kind.SSCC, 17, False),
    ("id", "sgln"): (Gs1Kind.SGLN, 12, True),
    ("id", "pgln"): (Gs1Kind.PGLN, 12, False),
    ("id", "grai"): (Gs1Kind.GRAI, 12, True),
}
"""(URN family, scheme) -> kind, digits of company prefix + reference, has a third part."""


@functools.lru_cache(maxsize=65536)
def parse_urn(text: str) -> Identifier:
    """Parse an EPC URN (pure identity, class, or GTIN pattern). Raises Gs1Error.

    Deterministic and library-free: this is what validators run at consensus time."""
    m = _URN.fullmatch(text)
    if m is None:
        raise Gs1Error(f"{text!r} is not an EPC URN (urn:epc:id|class|idpat:SCHEME:...)")
    family, scheme, cp, ref, third = m.groups()
    shape = _URN_SHAPES.get((family, scheme))
    if shape is None:
        raise Gs1Error(f"{text!r}: EPC scheme urn:epc:{family}:{scheme} is not supported "
                       "(sgtin, lgtin, sgtin pattern, sscc, sgln, pgln, grai)")
    kind, total, has_third = shape
    what = f"{kind.value.upper()} {text}"
    _check_split(cp, ref, total, what)
    if has_third != (third is not None):
        raise Gs1Error(f"{what}: expected {3 if has_third else 2} dot-separated parts")
    component: str | None = None
    if kind is Gs1Kind.GTIN:
        if third != "*":
            raise Gs1Error(f"{what}: a GTIN pattern ends in .* (only whole GTINs are supported)")
    elif third is not None:
        label = {Gs1Kind.LGTIN: "lot", Gs1Kind.SGLN: "extension"}.get(kind, "serial")
        component = _urn_unescape(third, f"{what}: {label}")
        _check_component(component, f"{what}: {label}",
                         GRAI_SERIAL_CHARS_MAX if kind is Gs1Kind.GRAI else COMPONENT_CHARS_MAX)
        if kind is Gs1Kind.SGLN and component == "0":
            component = None
    return Identifier(kind, cp, ref, component)


_WHITESPACE = re.compile(r"\s")


@functools.lru_cache(maxsize=65536)
def urn_kind(text: str) -> tuple[Gs1Kind, str]:
    """(kind, normalised URN) of an EPC URN, cached: the consensus path's hot spot."""
    ident = parse_urn(text)
    return ident.kind, ident.urn


def looks_like_digital_link(text: str) -> bool:
    """A web URI one of whose path segments is a GS1 primary-key AI claims to be a GS1 Digital
    Link (and must then parse as one); other web URIs are private identifiers."""
    if not text.startswith(("https://", "http://")):
        return False
    return any(seg in DIGITAL_LINK_PRIMARY_KEYS for seg in urlsplit(text).path.split("/"))


def parse_identifier(text: str, prefix_length: PrefixLength | None = None) -> Identifier:
    """Any written form of a GS1 identifier -> the canonical Identifier. Raises Gs1Error.

    `prefix_length` tells the company prefix length for Digital Links and element strings
    (e.g. `Gs1Directory.prefix_length`); GS1's prefix-length table is the fallback."""
    if not isinstance(text, str) or not text:
        raise Gs1Error("a GS1 identifier must be a non-empty string")
    if _WHITESPACE.search(text):
        raise Gs1Error(f"{text!r}: a GS1 identifier contains no whitespace")
    if text.startswith("urn:epc:"):
        return parse_urn(text)
    if text.startswith(("https://", "http://")):
        return _from_elements(_digital_link_elements(text), text, prefix_length)
    if text.startswith("("):
        return _from_elements(_element_string_elements(text), text, prefix_length)
    raise Gs1Error(f"{text!r} is not a GS1 identifier (expected an EPC URN urn:epc:..., a GS1 "
                   "Digital Link https://.../01/..., or an element string (01)...)")


def _check_key_digits(ai: str, value: str) -> None:
    """Digits and check digit of a Digital Link's or element string's GS1 key, with the error
    worded the same way for every form."""
    lengths = {"01": (8, 12, 13, 14), "00": (18,), "414": (13,), "417": (13,)}
    label = {"01": "GTIN", "00": "SSCC", "414": "GLN", "417": "GLN", "8003": "GRAI"}[ai]
    key = value[1:14] if ai == "8003" else value
    if ai == "8003" and (len(value) < 14 or value[0] != "0"):
        raise Gs1Error(f"GRAI {value}: AI 8003 starts with 0 and the 13-digit GRAI")
    if not key.isascii() or not key.isdigit() or (ai != "8003" and len(key) not in lengths[ai]):
        expected = "13" if ai == "8003" else " or ".join(str(n) for n in lengths[ai])
        raise Gs1Error(f"{label} {key}: expected {expected} digits")
    got, want = int(key[-1]), check_digit(key[:-1])
    if got != want:
        raise Gs1Error(f"{label} check digit is {got}, expected {want} in {key}")


def _digital_link_elements(text: str) -> dict[str, str]:
    # biip is imported here, not at the top: the consensus path (URNs only) never loads it
    from biip import ParseError
    from biip.gs1_digital_link_uris import GS1DigitalLinkURI

    parts = urlsplit(text)
    segments = parts.path.split("/")
    for i, seg in enumerate(segments):
        if seg in ("01", "00", "414", "417", "8003") and i + 1 < len(segments):
            value = unquote(segments[i + 1])
            if seg == "01":
                value = value.zfill(14) if value.isdigit() else value
            _check_key_digits(seg, value)
            break
    if parts.fragment:
        raise Gs1Error(f"{text!r}: a GS1 Digital Link identifier has no #fragment")
    try:
        uri = GS1DigitalLinkURI.parse(text)
    except ParseError as exc:
        raise Gs1Error(f"{text!r} is not a valid GS1 Digital Link: {exc}") from exc
    elements = {es.ai.ai: es.value for es in uri.element_strings}
    query_ais = sorted(set(elements) - _path_ais(parts.path))
    if query_ais:
        raise Gs1Error(f"{text!r}: Digital Link attributes ({', '.join(query_ais)}) are data, "
                       "not part of an identifier; drop the ?query (put data in ilmd)")
    return elements


def _path_ais(path: str) -> set[str]:
    segments = [s for s in path.split("/") if s]
    for i, seg in enumerate(segments):
        if seg in DIGITAL_LINK_PRIMARY_KEYS:
            return set(segments[i::2])
    return set()


def _element_string_elements(text: str) -> dict[str, str]:
    from biip import ParseError
    from biip.gs1_messages import GS1Message

    try:
        message = GS1Message.parse_hri(text)
    except ParseError as exc:
        raise Gs1Error(f"{text!r} is not a valid GS1 element string: {exc}") from exc
    elements = {es.ai.ai: es.value for es in message.element_strings}
    for ai in ("01", "00", "414", "417", "8003"):
        if ai in elements:
            _check_key_digits(ai, elements[ai])
    extra = sorted(set(elements) - {"01", "10", "21", "00", "414", "254", "417", "8003"})
    if extra:
        raise Gs1Error(f"{text!r}: element strings ({', '.join(extra)}) are data, not part of "
                       "an identifier (expiry dates, weights...): keep only the key and its "
                       "lot or serial")
    return elements


def _from_elements(el: Mapping[str, str], text: str,
                   prefix_length: PrefixLength | None) -> Identifier:
    if "01" in el:
        gtin = el["01"].zfill(14)
        cp = _company_prefix(gtin[1:13], text, prefix_length)
        ref = gtin[0] + gtin[1 + len(cp):13]
        if "10" in el and "21" in el:
            raise Gs1Error(f"{text!r} has both a lot (10) and a serial (21): an EPC names a "
                           "serialised item by GTIN and serial only (keep the lot in ilmd)")
        if "21" in el:
            _check_component(el["21"], f"SGTIN {text}: serial")
            return Identifier(Gs1Kind.SGTIN, cp, ref, el["21"])
        if "10" in el:
            _check_component(el["10"], f"LGTIN {text}: lot")
            return Identifier(Gs1Kind.LGTIN, cp, ref, el["10"])
        return Identifier(Gs1Kind.GTIN, cp, ref)
    if "00" in el:
        sscc = el["00"]
        cp = _company_prefix(sscc[1:17], text, prefix_length)
        return Identifier(Gs1Kind.SSCC, cp, sscc[0] + sscc[1 + len(cp):17])
    if "414" in el:
        gln = el["414"]
        cp = _company_prefix(gln[:12], text, prefix_length)
        ext = el.get("254")
        if ext is not None:
            _check_component(ext, f"SGLN {text}: extension")
        return Identifier(Gs1Kind.SGLN, cp, gln[len(cp):12], None if ext in (None, "0") else ext)
    if "417" in el:
        gln = el["417"]
        cp = _company_prefix(gln[:12], text, prefix_length)
        return Identifier(Gs1Kind.PGLN, cp, gln[len(cp):12])
    if "8003" in el:
        value = el["8003"]
        serial = value[14:]
        if not serial:
            raise Gs1Error(f"{text!r}: a GRAI without serial is an asset type, not an EPC")
        _check_component(serial, f"GRAI {text}: serial", GRAI_SERIAL_CHARS_MAX)
        cp = _company_prefix(value[1:13], text, prefix_length)
        return Identifier(Gs1Kind.GRAI, cp, value[1 + len(cp):13], serial)
    raise Gs1Error(f"{text!r}: only GTIN (01), SSCC (00), GLN (414, 417) and GRAI (8003) keys "
                   "are supported")


def _company_prefix(digits: str, text: str, prefix_length: PrefixLength | None) -> str:
    """Where the company prefix ends, which a Digital Link does not say: the registered
    members' prefixes first, then GS1's prefix-length table (bundled with biip)."""
    length = prefix_length(digits) if prefix_length is not None else None
    if length is None:
        from biip import ParseError
        from biip.gs1_prefixes import GS1CompanyPrefix

        try:
            found = GS1CompanyPrefix.extract(digits)
        except ParseError:
            found = None
        length = len(found.value) if found is not None else None
    if length is None or not COMPANY_PREFIX_DIGITS_MIN <= length <= COMPANY_PREFIX_DIGITS_MAX:
        raise Gs1Error(f"{text!r}: cannot tell where the GS1 company prefix ends; register the "
                       "prefix in the member's GS1 identity or use the EPC URN form")
    return digits[:length]


def canonical_urn(text: str, prefix_length: PrefixLength | None = None) -> str:
    """Shorthand: any written form -> the normalised EPC URN."""
    return parse_identifier(text, prefix_length).urn
