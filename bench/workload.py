"""The offered load: real records through the real SDK (`AsyncConsortiumClient`).

Every record is a provenance event with a `payload_bytes` JSON payload, sealed with a fresh
XChaCha20-Poly1305 key wrapped for the submitter and one other organisation, signed by the
organisation's client key with its own nonce, sent with `SubmitRecord` over TLS, and counted
only when the SDK returns a receipt it verified against genesis (commit certificate and
inclusion proof).

Records are prepared (built, encrypted, signed) before the timed window by default, as a fleet
of submitters on other machines would have done; their CPU cost is measured and reported
apart. `inline=True` builds each record inside the window instead (the whole-box figure).

Two shapes of load:
- closed loop: `clients` workers, each submitting its next record when the previous one's
  receipt arrived (throughput at saturation);
- open loop (`rate`): submissions start on a fixed schedule whatever the answers, and latency
  is measured from the scheduled start (so a stalled system cannot hide its queueing).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consortium.client import AsyncConsortiumClient
from consortium.client.nonces import MemoryNonces
from consortium.client.sdk import Identity, SubmitError
from consortium.config import Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from consortium.pbft import codec
from consortium.pbft import messages as m

OPEN_LOOP_IN_FLIGHT_MAX = 20_000
"""Open loop: more submissions than this in flight means the system has fallen behind for good;
new ones then wait (and the result says so)."""
DETAILS_OVERHEAD = len('{"notes": ""}')


@dataclass
class Sample:
    """One submission: when it started (or was scheduled to), when its verified receipt came
    back (or it failed), and its size on the gRPC request."""

    start: float
    done: float = 0.0
    ok: bool = False
    request_bytes: int = 0
    error: str = ""


@dataclass
class LoadResult:
    samples: list[Sample]
    t0: float
    submit_end: float
    """When the last submission started: the end of steady state."""
    in_flight_capped: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    built: list[m.Request] = field(default_factory=list)
    """Inline mode: the records built in the window (the baseline replays them)."""
    build_cpu_s: float = 0.0


def identities(directory: Path, genesis: Genesis, fresh: bool) -> list[Identity]:
    """One identity per organisation. A fresh consortium's nonces start at 1 in memory (this
    process owns them); a running one's come from its nonce files, as the CLI's do."""
    out = []
    for org in genesis.member_orgs:
        if not fresh:
            out.append(Identity.from_dir(directory, org.org_id))
            continue
        odir = directory / "orgs" / org.org_id
        out.append(Identity(f"{org.org_id}-client", org.org_id,
                            Ed25519Signer(read_seed(odir / "client.key")),
                            envelope.OrgKeyPair(read_seed(odir / "encryption.key")),
                            MemoryNonces()))
    return out


def make_clients(directory: Path, genesis: Genesis, ids: list[Identity],
                 count: int) -> list[AsyncConsortiumClient]:
    """`count` SDK clients (each its own channels), identity k mod organisations."""
    ca = (directory / "ca" / "ca.crt").read_bytes()
    return [AsyncConsortiumClient(genesis, ids[k % len(ids)], ca, timeout_s=60.0)
            for k in range(count)]


class RecordFactory:
    """Builds record i with the SDK's own code path (`build_provenance`)."""

    def __init__(self, builders: list[AsyncConsortiumClient], orgs: list[str],
                 payload_bytes: int) -> None:
        self._builders = builders
        self._orgs = orgs
        notes = max(0, payload_bytes - DETAILS_OVERHEAD)
        self._details = {"notes": os.urandom(notes // 2 + 1).hex()[:notes]}

    def build(self, i: int) -> m.Request:
        k = i % len(self._builders)
        reader = self._orgs[(k + 1) % len(self._orgs)]
        return self._builders[k].build_provenance(
            f"LOT-{i}", "shipped", location="bench", custodian_from=self._orgs[k],
            custodian_to=reader, quantity=i, details=self._details, readers=[reader])


def prepare(factory: RecordFactory, count: int,
            progress: Callable[[int], None] | None = None) -> tuple[list[m.Request], float]:
    """Build `count` records; (records, CPU seconds spent building them)."""
    cpu0 = time.process_time()
    out = []
    for i in range(count):
        out.append(factory.build(i))
        if progress is not None:
            progress(1)
    return out, time.process_time() - cpu0


async def run(clients: list[AsyncConsortiumClient], records: list[m.Request] | None,
              factory: RecordFactory | None, count: int, *, rate: float | None,
              duration_s: float | None, on_done: Callable[[Sample], None],
              on_steady_end: Callable[[], None], stream: int = 0) -> LoadResult:
    """Submit up to `count` records (prepared `records`, or built by `factory` inline) until
    they are exhausted or `duration_s` has passed; wait for every started submission."""
    samples: list[Sample] = []
    built: list[m.Request] = []
    build_cpu = [0.0]
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    deadline = None if duration_s is None else t0 + duration_s
    state = {"next": 0, "submit_end": 0.0, "capped": False}

    def take() -> int | None:
        i = state["next"]
        if i >= count or (deadline is not None and time.perf_counter() >= deadline):
            if not state["submit_end"]:
                state["submit_end"] = time.perf_counter()
                on_steady_end()
            return None
        state["next"] = i + 1
        return int(i)

    def record(i: int) -> m.Request:
        if records is not None:
            return records[i]
        assert factory is not None
        c0 = time.thread_time()
        r = factory.build(i)
        build_cpu[0] += time.thread_time() - c0
        built.append(r)
        return r

    async def submit(client: AsyncConsortiumClient, i: int, start: float) -> None:
        s = Sample(start)
        samples.append(s)
        r = record(i)
        s.request_bytes = len(codec.encode_request(r))
        try:
            await client.submit(r)
            s.ok = True
        except SubmitError as exc:
            s.error = str(exc)[:200]
            key = exc.code.name if exc.code is not None else "ERROR"
            errors[key] = errors.get(key, 0) + 1
        s.done = time.perf_counter()
        on_done(s)

    async def submit_batch(client: AsyncConsortiumClient, indexes: list[int]) -> None:
        """`stream` records on one SubmitStream: each sample runs from the batch's start to
        its own verified receipt."""
        start = time.perf_counter()
        reqs = [record(i) for i in indexes]
        pending: dict[str, Sample] = {}
        for r in reqs:
            s = Sample(start)
            s.request_bytes = len(codec.encode_request(r))
            samples.append(s)
            pending[r.digest.hex()] = s
        async for r, result in client.submit_stream(reqs):
            s = pending.pop(r.digest.hex())
            if isinstance(result, SubmitError):
                s.error = str(result)[:200]
                key = result.code.name if result.code is not None else "ERROR"
                errors[key] = errors.get(key, 0) + 1
            else:
                s.ok = True
            s.done = time.perf_counter()
            on_done(s)

    if rate is None and stream:
        async def stream_worker(k: int) -> None:
            client = clients[k]
            while True:
                batch: list[int] = []
                while len(batch) < stream and (i := take()) is not None:
                    batch.append(i)
                if not batch:
                    return
                await submit_batch(client, batch)

        await asyncio.gather(*(stream_worker(k) for k in range(len(clients))))
    elif rate is None:
        async def worker(k: int) -> None:
            client = clients[k]
            while (i := take()) is not None:
                await submit(client, i, time.perf_counter())

        await asyncio.gather(*(worker(k) for k in range(len(clients))))
    else:
        interval = 1.0 / rate
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while (i := take()) is not None:
            scheduled = t0 + n * interval
            n += 1
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while len(tasks) >= OPEN_LOOP_IN_FLIGHT_MAX:
                state["capped"] = True
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(submit(clients[i % len(clients)], i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return LoadResult(samples, t0, float(state["submit_end"] or time.perf_counter()),
                      bool(state["capped"]), errors, built, build_cpu[0])
