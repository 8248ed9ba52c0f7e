"""The consortium directory of a chaos run: `localnet.init`'s key material, readdressed for
the namespaces.

`localnet.init` writes loopback addresses and certificates whose only IP SAN is 127.0.0.1.
Here every validator listens on its host's address, peers reach each other through the fault
proxy in the hub (genesis `peer_address` = the proxy's port for that validator), and each TLS
certificate is reissued by the run's own CA with the host's address and the hub's address in its
SANs (peers dial the hub address, clients dial the host's). localnet.py is not changed: this
module writes what it would need an option for (see docs/reliability.md, integration notes).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium import localnet
from consortium.chaos import netns
from consortium.config import Genesis
from consortium.pbft.params import ProtocolParams

PEER_PORT = 7100
CLIENT_PORT = 7200
METRICS_PORT = 9100
PROXY_PORT_BASE = 7100
"""The proxy in the hub listens on PROXY_PORT_BASE + i for validator i."""
CERT_VALIDITY_DAYS = 30

CHAOS_PROTOCOL = ProtocolParams(checkpoint_interval=16, log_window=64, request_timeout_ms=2000,
                                view_change_timeout_ms=2000, status_interval_ms=300,
                                batch_delay_ms=5)
"""Timers a little faster than the defaults (faults come every few seconds) but slow enough
that the proxy's latency (up to a few hundred ms) is not mistaken for a faulty primary."""


@dataclass(frozen=True)
class ValidatorPlace:
    replica_id: int
    host: str
    """The host (namespace suffix) it runs on: `v<i>`."""
    address: str
    peer_listen: str
    client_address: str
    proxy_address: str
    """Where its peers dial it: the fault proxy in the hub."""
    config: Path


def proxy_address(replica_id: int) -> str:
    return f"{netns.HUB_ADDRESS}:{PROXY_PORT_BASE + replica_id}"


def write_consortium(directory: Path, validators: int, dsns: dict[int, str],
                     protocol: ProtocolParams = CHAOS_PROTOCOL) -> list[ValidatorPlace]:
    """Create the consortium in `directory` (no admission service: the campaign measures the
    ledger, not screening) with every validator addressed for its namespace."""
    genesis = localnet.init(directory, validators, protocol=protocol, admission=False)
    ca_key = serialization.load_pem_private_key((directory / "ca" / "ca.key").read_bytes(),
                                                password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory}/ca/ca.key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate((directory / "ca" / "ca.crt").read_bytes())
    places = []
    infos = []
    for v in genesis.validators:
        i = v.replica_id
        address = netns.host_address(i)
        vdir = directory / "validators" / str(i)
        place = ValidatorPlace(i, f"v{i}", address, f"{address}:{PEER_PORT}",
                               f"{address}:{CLIENT_PORT}", proxy_address(i),
                               vdir / "config.json")
        key, cert = issue_cert(ca_key, ca_cert, f"validator-{i}",
                               [address, netns.HUB_ADDRESS, "127.0.0.1"],
                               ["localhost", f"validator-{i}"])
        _write_secret(vdir / "tls.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (vdir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        config = json.loads(place.config.read_text())
        config.update(listen_peer=place.peer_listen, listen_client=place.client_address,
                      listen_metrics=f"{address}:{METRICS_PORT}", dsn=dsns[i])
        place.config.write_text(json.dumps(config, indent=2) + "\n")
        infos.append(dataclasses.replace(v, peer_address=place.proxy_address,
                                         client_address=place.client_address))
        places.append(place)
    readdressed = dataclasses.replace(genesis, validators=tuple(infos))
    (directory / "genesis.json").write_text(json.dumps(readdressed.to_json(), indent=2) + "\n")
    Genesis.load(directory / "genesis.json")  # what the validators will read must load
    return places


def issue_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
               ip_addresses: list[str], dns_names: list[str]
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server-and-client TLS certificate with IP SANs (gRPC checks an IP target against the
    certificate's IP SANs, never against a DNS SAN spelling the address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
