"""What an operator watches: Prometheus metrics and gRPC health agree with the ledger."""

from __future__ import annotations

import json
import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consortium import process
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from tests.e2e.conftest import Cluster, kill9, wait_for


def _metrics(cluster: Cluster, i: int) -> dict[str, float]:
    config = json.loads((cluster.vdir(i) / "config.json").read_text())
    with urllib.request.urlopen(f"http://{config['listen_metrics']}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("consortium_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_report_the_ledger_state(cluster: Cluster) -> None:
    """Height, view, commits and peer links on the metrics port match GetStatus."""
    cluster.client("org0").submit_provenance("OBS-1", "manufactured", quantity=1)
    for i in cluster.ids:
        status = cluster.ledger(i).GetStatus(pb.GetStatusRequest(), timeout=5)
        metrics = _metrics(cluster, i)
        assert metrics["consortium_up"] == 1
        assert status.serving and status.problem == ""  # consortium_up is GetStatus' serving
        assert metrics["consortium_height"] == status.height
        assert metrics["consortium_view"] == status.view
        assert "consortium_submit_latency_seconds_count" in metrics

        def links_up(i: int = i) -> bool:
            links = [v for k, v in _metrics(cluster, i).items()
                     if k.startswith("consortium_peer_connected")]
            return len(links) == cluster.n - 1 and all(v == 1 for v in links)

        # A link that dialled before its peer was up retries with back-off (at most 2 s).
        wait_for(f"validator {i}'s peer links", links_up, timeout_s=15,
                 describe=lambda i=i: str(_metrics(cluster, i)))


def test_health_is_serving_on_both_ports(cluster: Cluster) -> None:
    """The client port over TLS; the peer port over mutual TLS (a validator's certificate)."""
    client_creds = grpc.ssl_channel_credentials(root_certificates=cluster.ca)
    peer = cluster.vdir(0)
    peer_creds = grpc.ssl_channel_credentials(
        root_certificates=cluster.ca, private_key=(peer / "tls.key").read_bytes(),
        certificate_chain=(peer / "tls.crt").read_bytes())
    for i in cluster.ids:
        for address, creds in ((cluster.client_address(i), client_creds),
                               (cluster.peer_address(i), peer_creds)):
            with grpc.secure_channel(address, creds) as ch:
                reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, address


def test_plaintext_health_port_serves_only_health(cluster: Cluster) -> None:
    """`listen_health` (for the kubelet's native gRPC probes) answers the Health service in
    plaintext and nothing else: the Ledger service is not there."""
    vdir = cluster.vdir(0)
    config_path = vdir / "config.json"
    config = json.loads(config_path.read_text())
    with socket.socket() as s:  # a port the OS says is free (leases cover only their ranges)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config["listen_health"] = f"127.0.0.1:{port}"
    config_path.write_text(json.dumps(config, indent=2))
    kill9(cluster.directory, 0)
    process.up(cluster.directory, None)
    process.wait_healthy(cluster.directory, 60)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.LedgerStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
