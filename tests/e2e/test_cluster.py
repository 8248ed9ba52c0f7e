"""Issue acceptance over a real four-validator consortium: throughput with concurrent clients,
agreement on every block, access control on reads, crash faults (backup, then primary) under
load with a view change and catch-up, and state transfer into an empty database."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client import AsyncConsortiumClient, ConsortiumClient, SubmitError
from consortium.ledger.blocks import EntryStatus
from consortium.ledger.items import record_id
from consortium.wire import block_from_proto
from tests.e2e.conftest import PROTOCOL, Cluster, header_of, recreate_database, wait_for

pytestmark = pytest.mark.e2e

ORGS = ["org0", "org1", "org2", "org3"]
RECORDS = 1000
TASKS = 8


@dataclass(frozen=True)
class Submitted:
    record_id: str
    org: str
    readers: tuple[str, ...]
    details: dict[str, object]
    latency_s: float
    height: int


def readers_for(org_index: int, j: int) -> tuple[list[str], str]:
    """The extra readers chosen for a record of org `org_index`, and one org that is not."""
    extra = [ORGS[(org_index + 1) % 4]]
    if j % 2 == 0:
        extra.append(ORGS[(org_index + 3) % 4])
    return extra, ORGS[(org_index + 2) % 4]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def records_on(cluster: Cluster, validator: int, record_ids: Iterable[str]) -> list[str]:
    """The ids among `record_ids` that validator `validator` cannot return (GetRecord)."""

    async def run() -> list[str]:
        creds = grpc.ssl_channel_credentials(root_certificates=cluster.ca)
        async with grpc.aio.secure_channel(cluster.client_address(validator), creds) as ch:
            stub = pb_grpc.LedgerStub(ch)
            sem = asyncio.Semaphore(32)
            missing: list[str] = []

            async def one(rid: str) -> None:
                async with sem:
                    try:
                        r = await stub.GetRecord(pb.GetRecordRequest(
                            record_id=rid, auth=cluster.auth("GetRecord", f"{rid}/")),
                            timeout=10)
                        if r.record_id != rid or r.status != EntryStatus.RECORDED:
                            missing.append(f"{rid} (got {r.record_id} {r.status})")
                    except grpc.aio.AioRpcError as exc:
                        missing.append(f"{rid} ({exc.code().name})")

            await asyncio.gather(*(one(rid) for rid in record_ids))
            return missing

    return asyncio.run(run())


def recorded_ids_in_chain(cluster: Cluster, validator: int, upto: int) -> list[str]:
    out = []
    for blk in cluster.blocks(validator, upto):
        wb = block_from_proto(blk, cluster.genesis.chain_id_bytes)
        for env in wb.envelopes:
            for k in range(env.entry_count):
                if wb.statuses[env.first_entry + k] == EntryStatus.RECORDED:
                    out.append(record_id(env.digest, k))
    return out


# ---------------------------------------------------------------------------------- 1. load

def test_thousand_records_from_eight_concurrent_clients(cluster: Cluster) -> None:
    start_height = cluster.wait_converged(30.0) if cluster.status(0).height else 0

    async def run() -> tuple[list[Submitted], float]:
        clients = {org: AsyncConsortiumClient.from_dir(cluster.directory, org, timeout_s=60.0)
                   for org in ORGS}
        results: list[Submitted] = []
        per_task = RECORDS // TASKS

        async def task(k: int) -> None:
            oi = k % 4
            org = ORGS[oi]
            for j in range(per_task):
                extra, _ = readers_for(oi, j)
                details = {"task": k, "seq": j, "batch": f"lot-{k}-{j}"}
                t0 = time.monotonic()
                r = await clients[org].submit_provenance(
                    f"product-{k}-{j}", "shipped", location="Rotterdam",
                    custodian_from=org, custodian_to=extra[0], quantity=j,
                    details=details, readers=extra)
                results.append(Submitted(r.record_id, org, (org, *extra), details,
                                         time.monotonic() - t0, r.height))
                assert r.status == EntryStatus.RECORDED, r.to_json()

        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(task(k) for k in range(TASKS))), 180)
        finally:
            for c in clients.values():
                await c.close()
        return results, time.monotonic() - t0

    results, elapsed = asyncio.run(run())
    assert len(results) == RECORDS
    assert len({r.record_id for r in results}) == RECORDS
    latencies = [r.latency_s for r in results]
    print(f"\n[e2e] {RECORDS} records from {TASKS} concurrent clients in {elapsed:.2f} s: "
          f"{RECORDS / elapsed:.1f} committed records/s, submit latency "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")

    # Agreement: one height, and the same block hash at every height on every validator.
    height = cluster.wait_converged(30.0, min_height=max(r.height for r in results))
    assert height > start_height
    cluster.assert_same_chain(upto=height)

    # Every record is in the chain exactly once as RECORDED.
    in_chain = recorded_ids_in_chain(cluster, 0, height)
    ours = {r.record_id for r in results}
    counted = [rid for rid in in_chain if rid in ours]
    assert len(counted) == len(set(counted)) == RECORDS

    # Every record is retrievable, decrypts for its readers and not for a non-reader.
    def check(r: Submitted) -> str | None:
        oi = ORGS.index(r.org)
        j = int(r.details["seq"])  # type: ignore[call-overload]
        _, outsider = readers_for(oi, j)
        for org in r.readers:
            view = cluster.client(org).get(r.record_id, decrypt=True)
            if view.payload != r.details or view.submitter_org != r.org:
                return f"{r.record_id}: {org} read {view.payload!r} from {view.submitter_org}"
            if list(view.readers) != [org]:
                return f"{r.record_id}: {org} got the keys of {view.readers}"
        try:
            cluster.client(outsider).get(r.record_id, decrypt=True)
        except SubmitError as exc:
            if exc.code != grpc.StatusCode.PERMISSION_DENIED:
                return f"{r.record_id}: non-reader {outsider} got {exc.code} {exc}"
        else:
            return f"{r.record_id}: non-reader {outsider} decrypted it"
        public = cluster.client(outsider).get(r.record_id)
        if public.payload is not None or public.subject_id == "":
            return f"{r.record_id}: public view {public}"
        return None

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(check, results) if p is not None]
    assert not problems, f"{len(problems)} records failed the read checks: {problems[:5]}"


# ------------------------------------------------------------------------ 2. crash faults

class Load:
    """One submitting thread per organisation until stopped; keeps every verified receipt."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(org,), daemon=True)
                        for org in ORGS]

    def _run(self, org: str) -> None:
        with ConsortiumClient.from_dir(self.cluster.directory, org, timeout_s=45.0) as client:
            j = 0
            while not self.stop.is_set():
                j += 1
                try:
                    r = client.submit_provenance(f"crash-{org}-{j}", "received",
                                                 details={"j": j}, readers=["org0"])
                except SubmitError as exc:
                    with self.lock:
                        self.failures.append(f"{org} #{j}: {exc}")
                    continue
                with self.lock:
                    self.acked.append(r.record_id)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def wait_progress(self, what: str, records: int, timeout_s: float) -> None:
        base = self.count()
        wait_for(f"{records} more acknowledged records {what}",
                 lambda: self.count() >= base + records, timeout_s,
                 describe=lambda: f"acked {self.count() - base}; failures "
                                  f"{self.failures[-3:]}; {self.cluster.describe()}")

    def finish(self, timeout_s: float = 60.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load threads still running after {timeout_s} s: {alive}"


def test_kill_backup_then_primary_under_load(cluster: Cluster) -> None:
    load = Load(cluster)
    load.start()
    try:
        load.wait_progress("before any fault", 20, 30.0)

        # --- a backup dies (kill -9) while submissions run
        before = cluster.status(0)
        primary, view0 = before.primary, before.view
        backup = (primary + 1) % cluster.n
        acked_before_backup = load.count()
        cluster.kill9(backup)
        load.wait_progress(f"with backup {backup} dead (3 of 4)", 30, 45.0)
        cluster.up()  # starts only the dead one
        others = [i for i in cluster.ids if i != backup]
        target = max(cluster.status(i).height for i in others)
        cluster.wait_height(backup, target, 60.0)
        load.wait_progress(f"after backup {backup} restarted", 10, 30.0)

        # --- then the primary dies (kill -9): a view change follows
        alive = [i for i in cluster.ids if i != primary]
        primary = cluster.status(alive[0]).primary
        view1 = max(cluster.status(i).view for i in cluster.ids)
        survivors = [i for i in cluster.ids if i != primary]
        acked_before_primary = load.count()
        cluster.kill9(primary)

        def new_view() -> bool:
            sts = [cluster.try_status(i) for i in survivors]
            return all(s is not None and s.view > view1 and s.view_active and
                       s.primary != primary for s in sts)

        wait_for(f"a view change away from primary {primary} (view > {view1})", new_view,
                 45.0, describe=cluster.describe)
        load.wait_progress(f"with primary {primary} dead (3 of 4)", 30, 60.0)
    finally:
        load.finish()
    assert max(cluster.status(i).view for i in survivors) > view0
    print(f"\n[e2e] crash test: {load.count()} acknowledged ({acked_before_backup} before the "
          f"backup kill, {acked_before_primary} before the primary kill), "
          f"{len(load.failures)} failed submissions; final {cluster.describe()}")

    # --- both restarted: the old primary catches up to the same chain
    started = cluster.up()
    assert [s.replica_id for s in started if not s.already_running] == [primary]
    height = cluster.wait_converged(60.0)
    cluster.assert_same_chain(upto=height)

    # Every acknowledged record survives, on every validator.
    for i in cluster.ids:
        missing = records_on(cluster, i, load.acked)
        assert not missing, f"validator {i} lost {len(missing)} acknowledged records: " \
                            f"{missing[:5]}"
    assert not load.failures, f"submissions failed with at most one validator down: " \
                              f"{load.failures[:5]}"

    # And the restarted cluster keeps committing.
    r = cluster.client("org2").submit_provenance("after-crashes", "inspected")
    cluster.wait_converged(30.0, min_height=r.height)


# ------------------------------------------------------------------------ 3. state transfer

def test_validator_restarted_from_empty_database_catches_up(cluster: Cluster) -> None:
    k = PROTOCOL.checkpoint_interval
    start = cluster.wait_converged(30.0)
    client = cluster.client("org1")

    def submit_blocks(blocks: int, tag: str) -> int:
        """Sequential submissions: at least one block each."""
        last = 0
        for j in range(blocks):
            last = client.submit_provenance(f"{tag}-{j}", "inspected", details={"j": j}).height
        return last

    submit_blocks(3 * k + 4, "before")
    victim = 3
    pid = cluster.kill9(victim)
    db = cluster.databases[victim]
    recreate_database(db)
    # The chain moves on by more checkpoints while the victim is down.
    submit_blocks(2 * k + 2, "while-down")
    log = cluster.vdir(victim) / "validator.log"
    offset = log.stat().st_size
    target = cluster.wait_converged(30.0, ids=[i for i in cluster.ids if i != victim])
    assert target > max(start, 3 * k), (start, target)

    started = cluster.up()
    assert [s.replica_id for s in started if not s.already_running] == [victim]
    assert cluster.vdir(victim).joinpath("validator.pid").read_text().strip() != str(pid)
    cluster.wait_height(victim, target, 60.0)
    # New submissions reach it too.
    last = submit_blocks(2, "after")
    height = cluster.wait_converged(60.0, min_height=last)
    cluster.assert_same_chain(upto=height)

    # It really started from nothing: the restarted process recovered height 0.
    lines = log.read_bytes()[offset:].decode(errors="replace").splitlines()
    recovered = [json.loads(x) for x in lines if '"recovered"' in x]
    assert recovered and recovered[0].get("height") == 0, recovered
    # Its blocks 1..N are the others' (fetched by RPC, compared hash by hash).
    ref = cluster.ledger(0)
    for h in (1, k, 2 * k, 3 * k, height):
        a = header_of(ref.GetBlock(pb.GetBlockRequest(height=h,
                                                      auth=cluster.auth("GetBlock", str(h)))))
        b = header_of(cluster.ledger(victim).GetBlock(pb.GetBlockRequest(
            height=h, auth=cluster.auth("GetBlock", str(h)))))
        assert a.hash() == b.hash(), f"block {h}: {a} vs {b}"
