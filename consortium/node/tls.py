"""Live TLS certificate reload: a validator's servers take the certificate, key and trusted CA
bundle from their files at every new handshake when the files changed, so a certificate is
rotated (or the CA rolled over) without a restart and without dropping a connection.

The files are replaced one by one (`consortium keys rotate --validator` writes the key, then
the certificate, each with an atomic rename), so a handshake may see a new key with the old
certificate: a pair whose key does not match its certificate is never served, the previous
one is, until both have arrived.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from consortium.config import TlsFiles
from consortium.ledger.ca import NO_CHANGE, CaTrust

log = structlog.get_logger("consortium.tls")


@dataclass(frozen=True)
class TlsMaterial:
    key: bytes
    cert: bytes
    ca: bytes
    not_after: datetime.datetime
    generation: int


def _stamp(files: TlsFiles) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns for p in (files.key, files.cert, files.ca_cert))


def load_material(files: TlsFiles, generation: int, trust: CaTrust = NO_CHANGE) -> TlsMaterial:
    """The files' key and certificate, and the CAs to trust: the files' bundle as the ledger's
    CA changes amend it. Raises ValueError when the key is not the certificate's (a rotation
    half done) or a file does not parse, OSError when unreadable."""
    key, cert = files.key.read_bytes(), files.cert.read_bytes()
    ca = trust.bundle(files.ca_cert.read_bytes())
    parsed = x509.load_pem_x509_certificate(cert)
    private = serialization.load_pem_private_key(key, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != parsed.public_key().public_bytes(*spki):
        raise ValueError(f"{files.key} is not the key of {files.cert}")
    x509.load_pem_x509_certificates(ca)
    return TlsMaterial(key, cert, ca, parsed.not_valid_after_utc, generation)


class TlsReloader:
    """The current TLS material of one validator, reloaded when its files change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = _stamp(files)
        self.trust = NO_CHANGE
        self.material = load_material(files, 0)

    def set_trust(self, trust: CaTrust) -> None:
        """The ledger's CA changes (`MembershipState.ca_trust`): taken up at the next
        refresh."""
        with self._lock:
            if trust != self.trust:
                self.trust = trust
                self._stamp = None

    def refresh(self) -> TlsMaterial:
        """The material, reloaded first if a file changed and the new set is whole. Called
        from gRPC's handshake threads and the event loop alike."""
        with self._lock:
            try:
                stamp = _stamp(self.files)
                if stamp != self._stamp:
                    material = load_material(self.files, self.material.generation + 1,
                                             self.trust)
                    self._stamp = stamp
                    self.material = material
                    log.info("TLS certificate reloaded", cert=str(self.files.cert),
                             not_after=material.not_after.isoformat())
            except (OSError, ValueError) as exc:
                log.debug("TLS files not reloaded (yet)", error=str(exc)[:200])
            return self.material

    def server_credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials that serve the current material to every new handshake."""
        served = self.material.generation

        def configuration(m: TlsMaterial) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration([(m.key, m.cert)],
                                                             root_certificates=m.ca)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            material = self.refresh()
            if material.generation == served:
                return None  # gRPC keeps serving what it has
            served = material.generation
            return configuration(material)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self.material), fetch, require_client_authentication=require_client_auth)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side of mutual TLS with the current material (new connections)."""
        m = self.refresh()
        return grpc.ssl_channel_credentials(root_certificates=m.ca, private_key=m.key,
                                            certificate_chain=m.cert)

    def days_left(self, now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(
            datetime.UTC)) -> int:
        return (self.refresh().not_after - now()).days


def served_certificate(address: str, timeout_s: float = 2.0) -> x509.Certificate:
    """The certificate a server presents to a new connection at `address` (HOST:PORT): what
    clients see now, whatever its files say. Not verified here (the expiry is what is asked).
    Raises OSError when nothing answers."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise OSError(f"{address} presented no certificate")
    return x509.load_der_x509_certificate(der)
