"""The campaign's clients: `python -m consortium.chaos.load`, run inside the client host.

Each worker is one organisation's SDK client submitting provenance records, one at a time, at
a bounded rate. A request whose submission gives up (every validator unreachable for the SDK's
timeout) is submitted again unchanged, same nonce, until it is acknowledged or the run stops:
if it had committed meanwhile, a validator answers ALREADY_EXISTS with its receipt. A record
counts as acknowledged only when the SDK returned a receipt verified against genesis (commit
certificate and inclusion proof); each is appended to the events file at once (one JSON object
per line: `ack`, `error`, `unknown`), which is what the checker holds the validators to.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from consortium.client import ConsortiumClient, SubmitError
from consortium.client.core import Signed
from consortium.config import Genesis
from consortium.ledger.records import RecordKind

SUBMIT_TIMEOUT_S = 20.0
ERROR_PAUSE_S = 0.5


class EventLog:
    """Appends JSON lines from many threads; each line is flushed before the call returns."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, **event: Any) -> None:
        line = json.dumps({"t": time.time(), **event}, sort_keys=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def worker(directory: Path, org: str, index: int, interval_s: float, stop: threading.Event,
           log: EventLog) -> None:
    with ConsortiumClient.from_dir(directory, org, timeout_s=SUBMIT_TIMEOUT_S) as client:
        sequence = 0
        while not stop.is_set():
            started = time.monotonic()
            item = client.core.record_item(RecordKind.PROVENANCE, f"CHAOS-{org}-{index}",
                                           "shipped", {"quantity": str(sequence)},
                                           b'{"chaos": true}', [org])
            _submit_until_acknowledged(client, client.core.sign([item]), index, stop, log)
            sequence += 1
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def _submit_until_acknowledged(client: ConsortiumClient, signed: Signed, index: int,
                               stop: threading.Event, log: EventLog) -> None:
    attempts = 0
    while True:
        attempts += 1
        try:
            # After a first attempt that got no answer, a retry: any validator takes it in.
            receipt = client.submit_signed(signed, retry=attempts > 1)[0]
        except SubmitError as exc:
            log.write(event="error", worker=index, attempt=attempts,
                      code=exc.code.name if exc.code is not None else None,
                      error=str(exc)[:300])
            if exc.code is not None and exc.code.name in ("FAILED_PRECONDITION",
                                                          "INVALID_ARGUMENT",
                                                          "PERMISSION_DENIED"):
                return  # refused for good: never committed, nothing to hold anyone to
            if stop.wait(ERROR_PAUSE_S):
                log.write(event="unknown", worker=index, client=signed.request.client_id,
                          nonce=signed.request.nonce)
                return
            continue
        log.write(event="ack", worker=index, record_id=receipt.record_id,
                  height=receipt.height, block_hash=receipt.block_hash,
                  status=receipt.status, validator=receipt.validator, attempts=attempts)
        return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m consortium.chaos.load",
                                 description="Submit records through the SDK until SIGTERM; "
                                             "every verified receipt goes to --events.")
    ap.add_argument("--dir", required=True, type=Path, help="consortium directory")
    ap.add_argument("--events", required=True, type=Path, help="JSON-lines output file")
    ap.add_argument("--workers", type=int, default=4, help="concurrent clients (one per org, "
                                                           "cycling through the orgs)")
    ap.add_argument("--rate", type=float, default=20.0,
                    help="records per second per worker, at most")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.rate <= 0:
        print("consortium chaos load: --workers and --rate must be positive", file=sys.stderr)
        return 2
    orgs = [o.org_id for o in Genesis.load(args.dir / "genesis.json").member_orgs]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with args.events.open("a") as stream:
        log = EventLog(stream)
        log.write(event="start", workers=args.workers, rate=args.rate)
        threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True,
                                    args=(args.dir, orgs[i % len(orgs)], i, 1.0 / args.rate,
                                          stop, log))
                   for i in range(args.workers)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and not stop.is_set():
            stop.wait(0.5)
        for t in threads:
            t.join(SUBMIT_TIMEOUT_S + 5)
        log.write(event="stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
