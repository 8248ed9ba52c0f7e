"""A first load figure against a running local consortium (the full harness is issue 7).

    python -m bench.load --dir DIR --records 1000 --clients 8 --payload-bytes 1024

Submits real records through the SDK (encrypted payloads, client signatures, verified receipts)
from `clients` concurrent asyncio tasks and reports committed records/s and submit->receipt
latency percentiles. The machine's noise applies: treat it as an order of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from consortium.client import AsyncConsortiumClient


async def run(directory: Path, records: int, clients: int, payload_bytes: int) -> dict[str, float]:
    genesis_orgs = sorted(p.name for p in (directory / "orgs").iterdir())
    sdk = {org: AsyncConsortiumClient.from_dir(directory, org) for org in genesis_orgs}
    latencies: list[float] = []
    counter = iter(range(records))
    details = {"notes": os.urandom(payload_bytes // 2).hex()}

    async def worker(k: int) -> None:
        client = sdk[genesis_orgs[k % len(genesis_orgs)]]
        for i in counter:
            t0 = time.perf_counter()
            await client.submit_provenance(f"LOT-{k}-{i}", "manufactured", location="bench",
                                           details=details)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    elapsed = time.perf_counter() - t0
    for c in sdk.values():
        await c.close()
    q = statistics.quantiles(latencies, n=100)
    return {"records": records, "clients": clients, "seconds": round(elapsed, 2),
            "records_per_s": round(records / elapsed, 1), "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--payload-bytes", type=int, default=1024)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.dir, args.records, args.clients, args.payload_bytes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
