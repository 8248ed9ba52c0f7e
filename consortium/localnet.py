"""A local consortium in one directory: key material, genesis and validator configs.

    DIR/genesis.json                      shared by every member
    DIR/ca/ca.crt, ca.key                 the consortium CA (issues validator TLS certificates)
    DIR/validators/<id>/config.json       one validator's config (paths relative to it)
    DIR/validators/<id>/signing.key       its Ed25519 seed (hex)
    DIR/validators/<id>/tls.crt, tls.key  its TLS identity (SAN: localhost, 127.0.0.1)
    DIR/orgs/<org>/encryption.key         the organisation's X25519 private key (hex)
    DIR/orgs/<org>/client.key             the organisation's submitting client's Ed25519 seed

Private keys are written with mode 0600. Nothing here starts processes (see process.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.config import ClientInfo, Genesis, OrgInfo, ValidatorInfo
from consortium.crypto.envelope import OrgKeyPair
from consortium.crypto.signing import Ed25519Signer
from consortium.formats.directory import MemberGs1
from consortium.pbft.params import ProtocolParams

CERT_VALIDITY_DAYS = 825


@dataclass(frozen=True, slots=True)
class Ports:
    peer_base: int = 7100
    client_base: int = 7200
    metrics_base: int = 9100
    admission: int = 7400


def default_dir() -> Path:
    return Path(os.environ.get("CONSORTIUM_HOME", ".consortium"))


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(chain_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(f"{chain_id} CA")).issuer_name(_name(f"{chain_id} CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
               dns_names: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS certificate usable as both server and client (validators dial each other)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(d) for d in dns_names] + [x509.IPAddress(ipaddress.ip_address(
        "127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
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


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def org_id(i: int) -> str:
    return f"org{i}"


def local_gs1(org: str, i: int) -> MemberGs1:
    """A realistic GS1 identity for local organisation `i`: a 7-digit company prefix
    (4012345, 4013345, ...: the German range GS1's own examples use), its party GLN, and
    two sites (plant or warehouse .00001, dock .00002). Distinct prefixes of one length, so
    no member's prefix is the start of another's."""
    cp = str(4012345 + 1000 * i)
    return MemberGs1(org, (cp,), (f"urn:epc:id:pgln:{cp}.00000",),
                     (f"urn:epc:id:sgln:{cp}.00001.0", f"urn:epc:id:sgln:{cp}.00002.0"))


ADMISSION_ORG = "admission"
ADMISSION_CLIENT = "admission-client"


def init(directory: Path, validators: int, *, ports: Ports = Ports(),
         protocol: ProtocolParams | None = None, force: bool = False,
         admission: bool = True, admission_model: str = "qwen2.5-coder-1.5b") -> Genesis:
    """Create all key material and configs for `validators` member organisations, and (with
    `admission`) the admission service's identity: records then wait in pending-screening
    until it posts a verdict."""
    if validators < 1:
        raise ValueError("a consortium needs at least one validator")
    if (directory / "genesis.json").exists() and not force:
        raise FileExistsError(f"{directory} already holds a consortium (genesis.json exists); "
                              "use another --dir or --force")
    chain_id = f"consortium-{secrets.token_hex(4)}"
    ca_key, ca_cert = make_ca(chain_id)
    _write_secret(directory / "ca" / "ca.key", _pem_key(ca_key))
    (directory / "ca" / "ca.crt").write_bytes(_pem_cert(ca_cert))
    infos, orgs, clients = [], [], []
    for i in range(validators):
        org = org_id(i)
        signer = Ed25519Signer.generate()
        vdir = directory / "validators" / str(i)
        _write_secret(vdir / "signing.key", signer.seed.hex().encode())
        tls_key, tls_cert = issue_cert(ca_key, ca_cert, f"validator-{i}",
                                       ["localhost", f"validator-{i}"])
        _write_secret(vdir / "tls.key", _pem_key(tls_key))
        (vdir / "tls.crt").write_bytes(_pem_cert(tls_cert))
        infos.append(ValidatorInfo(i, org, signer.public_key, f"127.0.0.1:{ports.peer_base + i}",
                                   f"127.0.0.1:{ports.client_base + i}"))
        enc = OrgKeyPair.generate()
        _write_secret(directory / "orgs" / org / "encryption.key", enc.private_key.hex().encode())
        orgs.append(OrgInfo(org, f"Organisation {i}", enc.public_key, local_gs1(org, i)))
        client = Ed25519Signer.generate()
        _write_secret(directory / "orgs" / org / "client.key", client.seed.hex().encode())
        clients.append(ClientInfo(f"{org}-client", org, client.public_key))
        config = {
            "replica_id": i, "genesis": "../../genesis.json", "signing_key": "signing.key",
            "tls": {"ca_cert": "../../ca/ca.crt", "cert": "tls.crt", "key": "tls.key"},
            "listen_peer": f"127.0.0.1:{ports.peer_base + i}",
            "listen_client": f"127.0.0.1:{ports.client_base + i}",
            "listen_metrics": f"127.0.0.1:{ports.metrics_base + i}",
            "dsn": "", "log_file": "validator.log",
        }
        (vdir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    admission_client = None
    if admission:
        adir = directory / "admission"
        enc = OrgKeyPair.generate()
        _write_secret(adir / "encryption.key", enc.private_key.hex().encode())
        orgs.append(OrgInfo(ADMISSION_ORG, "Admission service", enc.public_key))
        client = Ed25519Signer.generate()
        _write_secret(adir / "client.key", client.seed.hex().encode())
        clients.append(ClientInfo(ADMISSION_CLIENT, ADMISSION_ORG, client.public_key))
        admission_client = ADMISSION_CLIENT
        tls_key, tls_cert = issue_cert(ca_key, ca_cert, "admission", ["localhost", "admission"])
        _write_secret(adir / "tls.key", _pem_key(tls_key))
        (adir / "tls.crt").write_bytes(_pem_cert(tls_cert))
        (adir / "config.json").write_text(json.dumps({
            "directory": "..", "backend": "embedded", "model": admission_model,
            "listen": f"127.0.0.1:{ports.admission}", "poll_ms": 500,
            "local_endpoints": True}, indent=2) + "\n")
    genesis = Genesis(chain_id, protocol or ProtocolParams(), tuple(infos), tuple(orgs),
                      tuple(clients), admission_client=admission_client)
    (directory / "genesis.json").write_text(json.dumps(genesis.to_json(), indent=2) + "\n")
    return genesis


@dataclass(frozen=True, slots=True)
class Applicant:
    """The key material of an organisation applying to join (see `init_applicant`)."""

    org: str
    replica_id: int
    key_dir: Path
    signer: Ed25519Signer
    client: Ed25519Signer
    encryption: OrgKeyPair


def applicant_key_files(directory: Path, org: str, replica_id: int,
                        key_dir: Path | None = None) -> tuple[Path, Path, Path]:
    """Where `init_applicant` keeps an applicant's validator signing key, its organisation's
    client key and its encryption key."""
    vdir = key_dir or directory / "validators" / str(replica_id)
    odir = directory / "orgs" / org
    return vdir / "signing.key", odir / "client.key", odir / "encryption.key"


def init_applicant(directory: Path, org: str, replica_id: int, peer_address: str,
                   client_address: str, metrics_address: str,
                   key_dir: Path | None = None) -> Applicant:
    """Create an applicant's keys: its validator (DIR/validators/<id>: signing key, TLS
    identity from the local consortium CA, config.json, so that `consortium up` starts it) and
    its organisation's client and encryption keys (DIR/orgs/<org>). Existing keys are kept, so
    applying again (once sponsored, or after a refusal) reuses them. In a real consortium the
    applicant generates these itself and gets its TLS certificate from the consortium CA out of
    band."""
    signing_path, client_path, enc_path = applicant_key_files(directory, org, replica_id,
                                                              key_dir)
    vdir = signing_path.parent
    if (vdir / "config.json").exists():
        existing = json.loads((vdir / "config.json").read_text())
        if existing.get("org") != org or int(existing.get("replica_id", -1)) != replica_id:
            raise FileExistsError(f"{vdir} already holds validator {existing.get('replica_id')}"
                                  f" of {existing.get('org')!r}")
    seeds = {}
    for path in (signing_path, client_path):
        if path.exists():
            seeds[path] = read_seed(path)
        else:
            seeds[path] = Ed25519Signer.generate().seed
            _write_secret(path, seeds[path].hex().encode())
    if enc_path.exists():
        enc = OrgKeyPair(read_seed(enc_path))
    else:
        enc = OrgKeyPair.generate()
        _write_secret(enc_path, enc.private_key.hex().encode())
    if not (vdir / "tls.crt").exists():
        issue_validator_cert(directory, replica_id, vdir / "tls.key", vdir / "tls.crt")
    genesis_rel = os.path.relpath(directory / "genesis.json", vdir)
    ca_rel = os.path.relpath(directory / "ca" / "ca.crt", vdir)
    config = {
        "replica_id": replica_id, "org": org, "genesis": genesis_rel,
        "signing_key": "signing.key",
        "tls": {"ca_cert": ca_rel, "cert": "tls.crt", "key": "tls.key"},
        "listen_peer": peer_address, "listen_client": client_address,
        "listen_metrics": metrics_address, "dsn": "", "log_file": "validator.log",
    }
    if not (vdir / "config.json").exists():
        (vdir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return Applicant(org, replica_id, vdir, Ed25519Signer(seeds[signing_path]),
                     Ed25519Signer(seeds[client_path]), enc)


def load_ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The consortium CA's key and certificate (the issuing one: the last in ca.crt)."""
    ca_key_path = directory / "ca" / "ca.key"
    if not ca_key_path.exists():
        raise FileNotFoundError(f"{ca_key_path} is missing: get the validator's TLS "
                                "certificate from the consortium CA")
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not an EC private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    for cert in x509.load_pem_x509_certificates((directory / "ca" / "ca.crt").read_bytes()):
        if cert.public_key().public_bytes(*spki) == ca_key.public_key().public_bytes(*spki):
            return ca_key, cert
    raise ValueError(f"{ca_key_path} is the key of no certificate in {directory}/ca/ca.crt")


def issue_validator_cert(directory: Path, replica_id: int, key_path: Path,
                         cert_path: Path) -> x509.Certificate:
    """A new TLS key and certificate for validator `replica_id` from the consortium CA, each
    file replaced atomically, the key first: a reader that sees the new key with the old
    certificate knows to wait (`node.tls`)."""
    ca_key, ca_cert = load_ca(directory)
    tls_key, tls_cert = issue_cert(ca_key, ca_cert, f"validator-{replica_id}",
                                   ["localhost", f"validator-{replica_id}"])
    for path, data, secret in ((key_path, _pem_key(tls_key), True),
                               (cert_path, _pem_cert(tls_cert), False)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        if secret:
            _write_secret(tmp, data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    return tls_cert


def read_seed(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().strip())
