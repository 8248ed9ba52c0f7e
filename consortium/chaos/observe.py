"""The campaign's eyes inside the client host: `python -m consortium.chaos.observe`.

Every `--interval-ms` it asks each validator for its status (height, view, primary) and its
gRPC health, writes the latest round to `--status` (replaced atomically, so the harness in the
root namespace always reads a whole file) and appends it to `--timeline` (JSON lines), from
which the tests read when a validator went NOT_SERVING and when it came back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consortium.config import Genesis
from consortium.wire import pb, pb_grpc

RPC_TIMEOUT_S = 1.0


def probe(channel: grpc.Channel) -> dict[str, Any]:
    """One validator's status and health over its `grpc.Channel`; `reachable` False when it
    did not answer."""
    row: dict[str, Any] = {"reachable": False, "health": None}
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=RPC_TIMEOUT_S)
        row["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        row["reachable"] = True
    except grpc.RpcError as exc:
        row["error"] = exc.code().name if hasattr(exc, "code") else "error"
    try:
        s = pb_grpc.LedgerStub(channel).GetStatus(pb.GetStatusRequest(), timeout=RPC_TIMEOUT_S)
        row.update(reachable=True, height=s.height, view=s.view, primary=s.primary,
                   view_active=s.view_active, last_block_hash=s.last_block_hash.hex())
    except grpc.RpcError:
        pass
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m consortium.chaos.observe",
                                 description="Poll every validator's status and health until "
                                             "SIGTERM.")
    ap.add_argument("--dir", required=True, type=Path, help="consortium directory")
    ap.add_argument("--status", required=True, type=Path, help="latest round (JSON)")
    ap.add_argument("--timeline", required=True, type=Path, help="every round (JSON lines)")
    ap.add_argument("--interval-ms", type=int, default=500)
    args = ap.parse_args(argv)
    genesis = Genesis.load(args.dir / "genesis.json")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(args.dir / "ca" / "ca.crt").read_bytes())
    channels = {v.replica_id: grpc.secure_channel(v.client_address, creds)
                for v in genesis.validators}
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tmp = args.status.with_suffix(".tmp")
    with ThreadPoolExecutor(len(channels)) as pool, args.timeline.open("a") as timeline:
        while not stop.is_set():
            started = time.monotonic()
            rows = dict(zip(channels, pool.map(probe, channels.values()), strict=True))
            record = {"t": time.time(), "validators": {str(k): v for k, v in rows.items()}}
            line = json.dumps(record, sort_keys=True)
            tmp.write_text(line)
            os.replace(tmp, args.status)
            timeline.write(line + "\n")
            timeline.flush()
            stop.wait(max(0.0, args.interval_ms / 1000 - (time.monotonic() - started)))
    for ch in channels.values():
        ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
