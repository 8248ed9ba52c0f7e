#!/usr/bin/env python3
"""consortium-healthcheck: gRPC health of the local validator, over its TLS (the image's
HEALTHCHECK and the Kubernetes exec probes; the kubelet's native gRPC probe cannot speak TLS).

    consortium-healthcheck [--config FILE] [--port client|peer] [--service NAME]

Reads the validator's own config.json (ValidatorConfig), dials 127.0.0.1 on the chosen port
(the validators' certificates carry 127.0.0.1) with the consortium CA, presenting the
validator's certificate (the peer port requires mutual TLS), and exits 0 only when SERVING.
A serving validator whose TLS certificate expires within 30 days gets a warning on stderr (it
still exits 0: a restart would not help; `consortium keys rotate --validator ID --tls-only`
does).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consortium.config import ConfigError, ValidatorConfig


def main() -> int:
    ap = argparse.ArgumentParser(prog="consortium-healthcheck")
    ap.add_argument("--config", type=Path, default=Path(os.environ.get(
        "CONSORTIUM_CONFIG", "/etc/consortium/config/config.json")))
    ap.add_argument("--port", choices=["client", "peer"], default="client")
    ap.add_argument("--service", default="")
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()
    try:
        config = ValidatorConfig.load(args.config)
        listen = config.listen_client if args.port == "client" else config.listen_peer
        port = int(listen.rpartition(":")[2])
        creds = grpc.ssl_channel_credentials(
            root_certificates=config.tls.ca_cert.read_bytes(),
            private_key=config.tls.key.read_bytes(),
            certificate_chain=config.tls.cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"consortium-healthcheck: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"consortium-healthcheck: {exc.code()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"consortium-healthcheck: {status}", file=sys.stderr)
        return 1
    _warn_expiry(config)
    return 0


EXPIRY_WARNING_DAYS = 30


def _warn_expiry(config: ValidatorConfig) -> None:
    try:
        cert = x509.load_pem_x509_certificate(config.tls.cert.read_bytes())
    except (OSError, ValueError):
        return
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    if days < EXPIRY_WARNING_DAYS:
        print(f"consortium-healthcheck: warning: the TLS certificate expires in {days} days "
              f"(consortium keys rotate --validator {config.replica_id} --tls-only)",
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
