"""The offered load: real records through the real SDK (`AsyncConsortiumClient`).

Every record is a provenance event with a `payload_bytes` JSON payload, sealed with a fresh
XChaCha20-Poly1305 key wrapped for the submitter and one other organisation. Records go into
envelopes of `envelope` records (0 or 1: one signature per record), each signed by the
organisation's client key with its own nonce, sent with `SubmitRecord` (or on a
`SubmitStream`) over TLS to the primary, and counted only when the SDK returns receipts it
verified against genesis (commit certificate and inclusion proofs).

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
from consortium.client.core import Signed
from consortium.client.nonces import MemoryNonces
from consortium.client.sdk import Identity, SubmitError
from consortium.config import Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from consortium.pbft import codec

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
    built: list[Signed] = field(default_factory=list)
    """Inline mode: the envelopes built in the window (the baseline replays them)."""
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
    """Builds record i with the SDK's own code path (`provenance_item`), and signs envelopes
    of them (`sign`)."""

    def __init__(self, builders: list[AsyncConsortiumClient], orgs: list[str],
                 payload_bytes: int, envelope_records: int) -> None:
        self._builders = builders
        self._orgs = orgs
        self.envelope = max(1, envelope_records)
        notes = max(0, payload_bytes - DETAILS_OVERHEAD)
        self._details = {"notes": os.urandom(notes // 2 + 1).hex()[:notes]}

    def item(self, i: int) -> bytes:
        k = (i // self.envelope) % len(self._builders)
        reader = self._orgs[(k + 1) % len(self._orgs)]
        return self._builders[k].provenance_item(
            f"LOT-{i}", "shipped", location="bench", custodian_from=self._orgs[k],
            custodian_to=reader, quantity=i, details=self._details, readers=[reader])

    def envelope_of(self, first: int, count: int) -> Signed:
        """Records first..first+count-1 in one envelope, signed by one organisation."""
        k = (first // self.envelope) % len(self._builders)
        return self._builders[k].core.sign([self.item(i) for i in range(first, first + count)])


def prepare(factory: RecordFactory, count: int,
            progress: Callable[[int], None] | None = None) -> tuple[list[Signed], float]:
    """Build and sign `count` records in envelopes; (envelopes, CPU seconds spent)."""
    cpu0 = time.process_time()
    out = []
    for first in range(0, count, factory.envelope):
        n = min(factory.envelope, count - first)
        out.append(factory.envelope_of(first, n))
        if progress is not None:
            progress(n)
    return out, time.process_time() - cpu0


async def run(clients: list[AsyncConsortiumClient], prepared: list[Signed] | None,
              factory: RecordFactory, count: int, *, rate: float | None,
              duration_s: float | None, on_done: Callable[[Sample], None],
              on_steady_end: Callable[[], None], stream: int = 0) -> LoadResult:
    """Submit up to `count` records (prepared envelopes, or built by `factory` inline) until
    they are exhausted or `duration_s` has passed; wait for every started submission. The
    unit of submission is an envelope; samples are per record."""
    samples: list[Sample] = []
    built: list[Signed] = []
    build_cpu = [0.0]
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    deadline = None if duration_s is None else t0 + duration_s
    envelopes = (count + factory.envelope - 1) // factory.envelope
    state = {"next": 0, "submit_end": 0.0, "capped": False}

    def take() -> int | None:
        i = state["next"]
        if i >= envelopes or (deadline is not None and time.perf_counter() >= deadline):
            if not state["submit_end"]:
                state["submit_end"] = time.perf_counter()
                on_steady_end()
            return None
        state["next"] = i + 1
        return int(i)

    def envelope_at(i: int) -> Signed:
        if prepared is not None:
            return prepared[i]
        c0 = time.thread_time()
        first = i * factory.envelope
        signed = factory.envelope_of(first, min(factory.envelope, count - first))
        build_cpu[0] += time.thread_time() - c0
        built.append(signed)
        return signed

    def settle(group: list[Sample], outcome: list[object] | SubmitError) -> None:
        now = time.perf_counter()
        for s in group:
            s.done = now
            if isinstance(outcome, SubmitError):
                s.error = str(outcome)[:200]
                key = outcome.code.name if outcome.code is not None else "ERROR"
                errors[key] = errors.get(key, 0) + 1
            else:
                s.ok = True
            on_done(s)

    def samples_for(signed: Signed, start: float) -> list[Sample]:
        size = len(codec.encode_request(signed.request)) // len(signed.items)
        group = [Sample(start, request_bytes=size) for _ in signed.items]
        samples.extend(group)
        return group

    async def submit(client: AsyncConsortiumClient, i: int, start: float) -> None:
        signed = envelope_at(i)
        group = samples_for(signed, start)
        try:
            settle(group, list(await client.submit_signed(signed)))
        except SubmitError as exc:
            settle(group, exc)

    async def submit_batch(client: AsyncConsortiumClient, indexes: list[int]) -> None:
        """Envelopes on one SubmitStream, `stream` records in flight: each sample runs from
        the moment its envelope went out to its verified receipts."""
        start = time.perf_counter()
        batch = [envelope_at(i) for i in indexes]
        groups = {s.request.key: samples_for(s, start) for s in batch}
        in_flight = max(1, stream // factory.envelope)

        def sent(signed: Signed) -> None:
            now = time.perf_counter()
            for sample in groups[signed.request.key]:
                sample.start = now

        async for signed, result in client.submit_stream(batch, in_flight=in_flight,
                                                         on_sent=sent):
            settle(groups.pop(signed.request.key), result if isinstance(result, SubmitError)
                   else list(result))

    if rate is None and stream:
        per_call = max(1, stream // factory.envelope) * 4

        async def stream_worker(k: int) -> None:
            client = clients[k]
            while True:
                batch: list[int] = []
                while len(batch) < per_call and (i := take()) is not None:
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
        interval = factory.envelope / rate
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while (i := take()) is not None:
            scheduled = t0 + n * interval
            n += 1
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            while len(tasks) * factory.envelope >= OPEN_LOOP_IN_FLIGHT_MAX:
                state["capped"] = True
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.create_task(submit(clients[i % len(clients)], i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return LoadResult(samples, t0, float(state["submit_end"] or time.perf_counter()),
                      bool(state["capped"]), errors, built, build_cpu[0])
