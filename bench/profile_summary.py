"""Where a validator's (or the client's) time goes, from a py-spy profile.

    py-spy record --pid PID --duration 20 --rate 67 --gil --format raw -o prof.txt
    python -m bench.profile_summary prof.txt [--top 25]

Every sample (a collapsed stack) is put in the first category, in the order below, whose
marker appears anywhere in its stack; so "Ed25519 verify" inside a store call counts as
verify, and "PostgreSQL" is the driver work of the named store method wherever it was called
from. With `--gil` only samples that hold the GIL count: Python CPU time, not waiting (C work
that releases the GIL, such as gRPC's core and TLS, is not in it: compare with the process's
CPU from the bench result).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("Ed25519 verify (pynacl)", ("crypto_sign_open",)),
    ("Ed25519 sign (pynacl)", ("SigningKey.sign",)),
    ("envelope encryption (client)", ("envelope.py",)),
    ("PostgreSQL: block transaction (append_block)", ("LedgerStore.append_block",)),
    ("PostgreSQL: consensus log (persist_messages)", ("LedgerStore.persist_messages",)),
    ("PostgreSQL: checkpoint", ("LedgerStore.persist_snapshot",)),
    ("PostgreSQL: submit lookups (find_entry, receipts)", ("LedgerStore.find_entry",
                                                           "LedgerStore.get_block")),
    ("receipt verification (client)", ("_Core.verify", "verify_receipt")),
    ("build block / execute", ("build_block", "Validator._append")),
    ("PBFT replica logic (Replica.step)", ("Replica.step",)),
    ("SubmitRecord handler (decode, checks, waiting)", ("LedgerService.SubmitRecord",
                                                        "check_signature", "check_content")),
    ("peer stream receive (Connect)", ("ReplicaService.Connect",)),
    ("peer stream send (PeerLink)", ("PeerLink", "_consume_request_iterator")),
    ("gRPC (aio calls, servers, channels)", ("/grpc/", "grpc._cython", "cygrpc", "_call.py",
                                             "_server.py", "_channel.py")),
    ("protobuf / codec", ("codec.py", "protobuf", "wire.py")),
    ("asyncio event loop", ("asyncio/", "events.py", "base_events.py", "selector_events.py",
                            "selectors.py")),
]


def summarise(lines: list[str]) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        for name, markers in CATEGORIES:
            if any(marker in stack for marker in markers):
                categories[name] += n
                break
        else:
            categories["other"] += n
        leaves[stack.rsplit(";", 1)[-1]] += n
    return total, categories, leaves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_summary",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path, help="py-spy --format raw output")
    ap.add_argument("--top", type=int, default=15, help="also list this many hottest leaves")
    args = ap.parse_args(argv)
    total, categories, leaves = summarise(args.profile.read_text().splitlines())
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    for name, n in categories.most_common():
        print(f"{100 * n / total:5.1f}%  {name}")
    print("hottest leaves:")
    for leaf, n in leaves.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {leaf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
