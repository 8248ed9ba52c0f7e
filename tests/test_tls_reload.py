"""Live TLS reload (consortium/node/tls.py) on a real gRPC server: a certificate replaced in its
files is served to the next connection without a restart, a half-replaced pair (new key, old
certificate) is never served, and the expiry the metric reports follows the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from consortium.config import TlsFiles
from consortium.localnet import issue_validator_cert, make_ca
from consortium.node.tls import TlsReloader, served_certificate


def _consortium_dir(tmp_path: Path) -> TlsFiles:
    ca_key, ca_cert = make_ca("tls-reload-test")
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.key").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "ca" / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files = TlsFiles(tmp_path / "ca" / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key")
    issue_validator_cert(tmp_path, 0, files.key, files.cert)
    return files


def _served(port: int) -> bytes:
    return served_certificate(f"127.0.0.1:{port}").public_bytes(serialization.Encoding.DER)


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def test_a_rotated_certificate_is_served_to_the_next_connection(tmp_path: Path) -> None:
    files = _consortium_dir(tmp_path)
    reloader = TlsReloader(files)
    first = _der(files.cert)

    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        port = server.add_secure_port("127.0.0.1:0",
                                      reloader.server_credentials(require_client_auth=False))
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, _served, port) == first
            # half a rotation: a new key with the old certificate is not a pair to serve
            old_key = files.key.read_bytes()
            issue_validator_cert(tmp_path, 0, files.key, tmp_path / "other.crt")
            assert await loop.run_in_executor(None, _served, port) == first
            assert reloader.material.generation == 0
            (tmp_path / "other.crt").replace(files.cert)
            second = _der(files.cert)
            assert second != first and files.key.read_bytes() != old_key
            assert await loop.run_in_executor(None, _served, port) == second
            assert reloader.material.generation == 1
        finally:
            await server.stop(None)

    asyncio.run(main())
    not_after = x509.load_pem_x509_certificate(files.cert.read_bytes()).not_valid_after_utc
    now = datetime.datetime.now(datetime.UTC)
    assert reloader.days_left(lambda: now) == (not_after - now).days


def test_the_healthcheck_warns_30_days_before_the_certificate_expires(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from consortium.config import ValidatorConfig

    spec = importlib.util.spec_from_file_location(
        "healthcheck", Path(__file__).resolve().parents[1] / "deploy" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    healthcheck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(healthcheck)
    files = _consortium_dir(tmp_path)
    config = ValidatorConfig(0, tmp_path / "genesis.json", tmp_path / "signing.key", files,
                             "127.0.0.1:1", "127.0.0.1:2", "", "")
    healthcheck._warn_expiry(config)
    assert capsys.readouterr().err == ""  # 825 days left
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    soon = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=12, hours=1))
            .sign(key, hashes.SHA256()))
    files.cert.write_bytes(soon.public_bytes(serialization.Encoding.PEM))
    healthcheck._warn_expiry(config)
    err = capsys.readouterr().err
    assert "expires in 12 days" in err and "--validator 0 --tls-only" in err
