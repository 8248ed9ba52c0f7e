"""Cost of the PBFT core itself: messages processed per second per replica.

Runs an in-memory cluster (no network, no simulator faults): messages are delivered FIFO, each
replica's `step` is timed on its own, and the figures are that replica's messages per CPU-second
of protocol work. Verification ON (Ed25519, a per-replica cache) and OFF (NullVerifier) run side
by side in one invocation, so the ratio holds even on a noisy machine.

    python -m bench.core --validators 4 --requests 20000 --batch 256 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import deque
from typing import Any

from consortium.crypto.signing import (
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    NullVerifier,
    Verifier,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.replica import Replica

CHAIN = b"bench-chain"


class Clients:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def client_key(self, client_id: str) -> bytes | None:
        return self.key


def make_requests(count: int, payload_bytes: int) -> tuple[bytes, list[m.Request]]:
    signer = Ed25519Signer(bytes(32))
    payload = bytes(payload_bytes)
    out = []
    for i in range(count):
        client, nonce = f"client-{i % 16}", i // 16 + 1
        digest = m.request_digest(client, nonce, m.RequestKind.APPLICATION, payload)
        out.append(m.Request(client, nonce, m.RequestKind.APPLICATION, payload,
                             signer.sign(m.request_signing_bytes(CHAIN, digest))))
    return signer.public_key, out


def run(validators: int, requests: list[m.Request], client_key: bytes, batch: int,
        verify: bool) -> dict[str, Any]:
    signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(validators)]
    genesis = EpochConfig(0, 0, tuple(Member(i, s.public_key) for i, s in enumerate(signers)))
    params = ProtocolParams(checkpoint_interval=64, log_window=256, pipeline_depth=8,
                            batch_requests_max=batch, batch_delay_ms=0,
                            pending_requests_max=len(requests) + 1)
    replicas = []
    for i, s in enumerate(signers):
        verifier: Verifier = CachingVerifier(Ed25519Verifier()) if verify else NullVerifier()
        replicas.append(Replica(replica_id=i, signer=s, chain_id=CHAIN, genesis=genesis,
                                params=params, verifier=verifier, clients=Clients(client_key)))
    busy_s = [0.0] * validators
    handled = [0] * validators
    executed = [0] * validators
    inbox: deque[tuple[int, ev.Event]] = deque()

    def apply(i: int, actions: list[ev.Action]) -> None:
        for a in actions:
            if isinstance(a, ev.Send):
                for to in a.to:
                    inbox.append((to, ev.PeerMessage(a.data)))
            elif isinstance(a, ev.Execute):
                executed[i] += len(a.executed)

    def step(i: int, event: ev.Event) -> None:
        t0 = time.perf_counter()
        actions = replicas[i].step(event)
        busy_s[i] += time.perf_counter() - t0
        if isinstance(event, ev.PeerMessage):
            handled[i] += 1
        apply(i, actions)

    for i in range(validators):
        apply(i, replicas[i].start())
    wall0 = time.perf_counter()
    # Offered load: a pipeline's worth of full batches arrives, then the cluster drains it, so
    # batches fill as they would under sustained load.
    chunk = batch * params.pipeline_depth
    for start in range(0, len(requests), chunk):
        for r in requests[start : start + chunk]:
            step(0, ev.ClientRequest(r))
        while inbox:
            step(*inbox.popleft())
    while inbox:
        step(*inbox.popleft())
    wall_s = time.perf_counter() - wall0
    if min(executed) != len(requests):
        raise SystemExit(f"benchmark cluster did not execute everything: {executed}")
    per_replica = [handled[i] / busy_s[i] for i in range(validators)]
    return {
        "verify": verify,
        "messages_per_s_per_replica": round(statistics.median(per_replica)),
        "messages_per_s_primary": round(per_replica[0]),
        "requests_per_s_per_replica_cpu": round(len(requests) / statistics.median(busy_s)),
        "messages_per_request": round(sum(handled) / len(requests), 3),
        "wall_s": round(wall_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split("\n\n")[0])
    ap.add_argument("--validators", type=int, default=4)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256, help="batch_requests_max")
    ap.add_argument("--payload-bytes", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    key, requests = make_requests(args.requests, args.payload_bytes)
    results = [run(args.validators, requests, key, args.batch, verify) for verify in (True, False)]
    on, off = results
    report = {"validators": args.validators, "requests": args.requests, "batch": args.batch,
              "payload_bytes": args.payload_bytes, "verify_on": on, "verify_off": off,
              "verify_cost_ratio": round(off["messages_per_s_per_replica"]
                                         / on["messages_per_s_per_replica"], 2)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            label = "verify ON " if r["verify"] else "verify OFF"
            print(f"{label}: {r['messages_per_s_per_replica']:>8} msgs/s/replica  "
                  f"{r['requests_per_s_per_replica_cpu']:>8} requests/s/replica-CPU  "
                  f"{r['messages_per_request']} msgs/request")
        print(f"verification costs x{report['verify_cost_ratio']} in messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
