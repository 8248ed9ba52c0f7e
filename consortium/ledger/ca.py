"""The CA certificates the validators trust for TLS, as the ledger changes them by vote.

Each validator starts from the CA bundle in its files (`ca.crt`, from `consortium init`). A
`CaChange` proposal approved by 2f+1 validators adds a CA certificate to what every validator
trusts, or retires one (also one from the files): a CA is rolled over by adding the new one,
reissuing the validators' certificates from it while both are trusted, then retiring the old
one. A CA is retired only while another, added by vote, stays trusted, so the ledger never
leaves the validators without one.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

CA = "ca"
"""The kind of a CA proposal (name: "add" or "retire", validator_key: the fingerprint)."""


class NotACa(ValueError):
    """A certificate that cannot be a consortium CA (the reason says why)."""


def fingerprint(pem: bytes) -> bytes:
    """SHA-256 of the certificate's DER encoding. Raises NotACa."""
    return hashlib.sha256(_load(pem).public_bytes(serialization.Encoding.DER)).digest()


def _load(pem: bytes) -> x509.Certificate:
    try:
        pem.decode("ascii")  # stored as text: every validator must keep it byte for byte
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise NotACa(f"not a PEM certificate: {exc}") from exc


def ca_problem(pem: bytes, block_ms: int) -> str:
    """Why `pem` cannot be trusted as a CA as of block time `block_ms` ("" when it can)."""
    try:
        cert = _load(pem)
    except NotACa as exc:
        return str(exc)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "the certificate is not a CA (no basic constraints)"
    if not constraints.ca:
        return "the certificate is not a CA (basic constraints: CA false)"
    at = datetime.datetime.fromtimestamp(block_ms / 1000, datetime.UTC)
    if block_ms and not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        return (f"the certificate is valid {cert.not_valid_before_utc.isoformat()} to "
                f"{cert.not_valid_after_utc.isoformat()}, not at block time")
    return ""


@dataclass(frozen=True, slots=True)
class CaTrust:
    """What the ledger says about CAs: the ones it added (fingerprint -> PEM) and the ones it
    retired (fingerprints)."""

    added: Mapping[bytes, bytes]
    retired: frozenset[bytes]

    def bundle(self, files: bytes) -> bytes:
        """The PEM bundle to trust: the files' CAs that are not retired, and the added ones."""
        out = []
        for cert in x509.load_pem_x509_certificates(files):
            pem = cert.public_bytes(serialization.Encoding.PEM)
            if fingerprint(pem) not in self.retired:
                out.append(pem)
        known = {fingerprint(p) for p in out}
        out += [pem for fp, pem in sorted(self.added.items()) if fp not in known]
        return b"".join(out)


NO_CHANGE = CaTrust({}, frozenset())
