"""The attack campaign's breaks (issue 12), replayed against real validators.

Each test reproduces one finding on a real local consortium (processes, gRPC over mutual TLS,
PostgreSQL) and checks that it no longer breaks anything:
1. legal 1 MB records plus a paused primary used to halt the chain for good (the view change
   carried whole batches and grew past every message limit);
2. one Byzantine validator claiming an absurd stable checkpoint used to stall an honest one's
   catch-up, and the ledger stopped when the liar fell silent;
6. memory was bounded by request count, not bytes;
7. one heavy read (a subject with thousands of entries, in one message) starved consensus.
The simulator covers 1 and 2 on thousands of seeds (scenarios big-batches and lying-status);
these tests check the real processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from consortium.client import ConsortiumClient
from consortium.client.sdk import SubmitError
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.wire import pb, pb_grpc
from tests.e2e.conftest import Cluster, running_consortium, wait_for

pytestmark = pytest.mark.e2e


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pid(cluster: Cluster, i: int) -> int:
    pid = int((cluster.vdir(i) / "validator.pid").read_text())
    return pid


def _start_one(cluster: Cluster, i: int) -> None:
    """Start validator i alone (as `consortium up` would, but only that one)."""
    vdir = cluster.vdir(i)
    with open(vdir / "validator.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "consortium.node", "--config",
                                 str(vdir / "config.json")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=vdir)
    (vdir / "validator.pid").write_text(str(proc.pid))
    wait_for(f"validator {i} healthy", lambda: cluster.healthy(i) or None, 60.0)


# ------------------------------------------------------------------- 1 and 6: big records

def test_big_records_and_a_paused_primary_do_not_halt_the_chain(tmp_path: Path) -> None:
    """Finding 1: 30 records of ~1 MB, then the primary paused (SIGSTOP) for 20 s. The view
    change carries proposal headers only, so it stays small and succeeds; the chain goes on,
    every record commits, every validator agrees; memory stays bounded by bytes (finding 6)."""
    with running_consortium(tmp_path / "c") as cluster:
        client = ConsortiumClient.from_dir(cluster.directory, "org0", timeout_s=120)
        payload = os.urandom(450 * 1024).hex()  # 900 KB of JSON-safe payload, one record each
        items = [client.aio.provenance_item(f"BIG-{i}", "shipped", location="dock",
                                            details={"blob": payload}) for i in range(30)]
        results: list[object] = []
        submitter = threading.Thread(target=lambda: results.extend(
            client.submit_many(items[:20], envelope_items=1)))
        submitter.start()
        wait_for("some big records committed", lambda: cluster.status(1).height >= 2 or None,
                 60.0, interval_s=0.05)
        primary = cluster.status(1).primary
        pid = _pid(cluster, primary)
        os.kill(pid, signal.SIGSTOP)
        # More big records while the primary is paused: their client times out and retries at
        # the backups, which then replace the primary (a view change with big batches
        # prepared and in flight).
        during = threading.Thread(target=lambda: results.extend(
            client.submit_many(items[20:], envelope_items=1)))
        during.start()
        peak: dict[int, float] = {}
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                for i in cluster.ids:
                    if i != primary:
                        peak[i] = max(peak.get(i, 0.0), _rss_mb(_pid(cluster, i)))
                time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        for t in (submitter, during):
            t.join(timeout=180)
            assert not t.is_alive(), "the big records never all committed"
        failed = [r for r in results if isinstance(r, SubmitError)]
        assert len(results) == 30 and not failed, failed[:3]
        views = {i: cluster.status(i).view for i in cluster.ids}
        assert any(v > 0 for v in views.values()), f"no view change happened: {views}"
        after = client.submit_provenance("after-pause", "inspected", location="lab")
        assert after.status == "recorded"
        cluster.assert_same_chain()
        assert max(peak.values()) < 1500, f"validators' RSS peaked at {peak} MB"
        for i in cluster.ids:
            log = (cluster.vdir(i) / "validator.log").read_text()
            assert "exceeds the limit" not in log, f"validator {i} dropped an oversized message"
        client.close()


# ------------------------------------------------------------------ 2: one liar, catch-up

async def _lie(address: str, tls_dir: Path, ca: bytes, signer: Ed25519Signer, sender: int,
               chain_id: bytes, seconds: float) -> int:
    """Be validator `sender` (its key and TLS certificate) and tell `address` every 200 ms
    that our stable checkpoint is 2^62."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca,
                                         private_key=(tls_dir / "tls.key").read_bytes(),
                                         certificate_chain=(tls_dir / "tls.crt").read_bytes())
    lie = codec.sign_message(signer, chain_id, sender,
                             m.Status(0, 0, True, 1 << 62, 1 << 62)).wire
    sent = 0

    async def messages():  # type: ignore[no-untyped-def]
        nonlocal sent
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sent += 1
            yield pb.PeerMessage(data=lie)
            await asyncio.sleep(0.2)

    async with grpc.aio.secure_channel(address, creds) as channel:
        call = pb_grpc.ReplicaStub(channel).Connect(messages())
        async for _ack in call:
            pass
    return sent


def test_one_liar_cannot_stall_a_catch_up(tmp_path: Path) -> None:
    """Finding 2: a validator that missed several checkpoints must state-transfer; validator 3
    (Byzantine) tells it, signed, that the stable checkpoint is 2^62, then falls silent. The
    claim counts only as far as f+1 members back it, so the lagging validator catches up from
    the honest ones and, with the liar gone, the three honest validators go on."""
    with running_consortium(tmp_path / "c") as cluster:
        lagging, liar = 2, 3
        client = ConsortiumClient.from_dir(cluster.directory, "org0", timeout_s=60)
        client.submit_provenance("before", "inspected", location="lab")
        cluster.kill9(lagging)
        k = cluster.genesis.protocol.checkpoint_interval
        for j in range(3 * k + 2):  # one block each: past three stable checkpoints
            client.submit_provenance(f"while-down-{j}", "inspected", location="lab")
        target = cluster.status(0).height
        cluster.kill9(liar)
        _start_one(cluster, lagging)
        vdir = cluster.vdir(liar)
        signer = Ed25519Signer(read_seed(vdir / "signing.key"))
        sent = asyncio.run(_lie(cluster.peer_address(lagging), vdir, cluster.ca, signer, liar,
                                cluster.genesis.chain_id_bytes, 5.0))
        assert sent >= 10
        wait_for(f"validator {lagging} caught up to {target}",
                 lambda: cluster.status(lagging).height >= target or None, 30.0)
        # The liar stays silent: validators 0, 1 and 2 (a quorum) must commit on their own.
        after = client.submit_provenance("after-the-lie", "inspected", location="lab")
        assert after.height > target
        cluster.assert_same_chain(ids=[0, 1, lagging])
        client.close()


# ------------------------------------------------------------- 7: heavy reads, many streams

def test_heavy_reads_do_not_starve_consensus(cluster: Cluster) -> None:
    """Finding 7: six readers listing a subject with 2,500 entries, over and over, while a
    submitter commits: listing is paged (bounded per call), reads go through their own
    connection pool, and commits neither stall nor cause a view change."""
    client = cluster.client("org0")
    items = [client.aio.provenance_item("LOT-HEAVY", "inspected", location="lab",
                                        quantity=i) for i in range(2500)]
    results = client.submit_many(items)
    assert all(not isinstance(r, SubmitError) for r in results)
    # A quorum answered the submitter; the reader (another client, no read-your-writes
    # floor) may ask a validator still storing the last blocks, so let all of them reach it.
    last = max(r.height for r in results if not isinstance(r, SubmitError))
    for i in cluster.ids:
        cluster.wait_height(i, last, 60.0)
    reader = cluster.client("org3")  # not a reader of the records: public views only
    entries, _ = reader.list_subject("provenance", "LOT-HEAVY")
    assert len(entries) == 2500
    first = cluster.ledger(0).ListSubject(pb.ListSubjectRequest(
        kind="provenance", subject_id="LOT-HEAVY", after_index=-1,
        auth=cluster.auth("ListSubject", "provenance/LOT-HEAVY", org="org3")), timeout=60)
    assert len(first.entries) <= 1000 and first.more
    views_before = {i: cluster.status(i).view for i in cluster.ids}
    stop = threading.Event()
    listed = [0]

    def read_forever() -> None:
        while not stop.is_set():
            got, _ = reader.list_subject("provenance", "LOT-HEAVY")
            listed[0] += len(got)

    threads = [threading.Thread(target=read_forever) for _ in range(6)]
    for t in threads:
        t.start()
    latencies = []
    try:
        for j in range(15):
            t0 = time.monotonic()
            client.submit_provenance(f"during-reads-{j}", "inspected", location="lab")
            latencies.append(time.monotonic() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert listed[0] >= 2500, "the readers never finished a listing"
    assert statistics.median(latencies) < 2.0, f"commit latencies under reads: {latencies}"
    assert {i: cluster.status(i).view for i in cluster.ids} == views_before, \
        "heavy reads caused a view change"


def test_block_subscribers_are_bounded_and_all_served(cluster: Cluster) -> None:
    """A validator serves at most STREAM_SUBSCRIBERS_MAX block streams (RESOURCE_EXHAUSTED
    beyond); those it serves all get every new block, from one cached encoding."""
    from consortium.node.servicers import STREAM_SUBSCRIBERS_MAX

    async def run() -> tuple[int, int, grpc.StatusCode | None]:
        creds = grpc.ssl_channel_credentials(root_certificates=cluster.ca)
        start = cluster.status(0).height + 1
        got = [0]
        async with grpc.aio.secure_channel(cluster.client_address(0), creds) as ch:
            stub = pb_grpc.LedgerStub(ch)
            auth = cluster.auth("StreamBlocks", f"{start}-0")
            calls = [stub.StreamBlocks(pb.StreamBlocksRequest(from_height=start, auth=auth))
                     for _ in range(STREAM_SUBSCRIBERS_MAX)]

            async def first_block(call) -> None:  # type: ignore[no-untyped-def]
                async for _ in call:
                    got[0] += 1
                    return

            readers = [asyncio.create_task(first_block(c)) for c in calls]
            await asyncio.sleep(2.0)  # every stream is open and waiting
            refused: grpc.StatusCode | None = None
            try:
                extra = stub.StreamBlocks(pb.StreamBlocksRequest(from_height=start, auth=auth))
                async for _ in extra:
                    break
            except grpc.aio.AioRpcError as exc:
                refused = exc.code()
            await asyncio.to_thread(cluster.client("org1").submit_provenance, "fan-out",
                                    "inspected", location="lab")
            await asyncio.wait_for(asyncio.gather(*readers), 60)
            for c in calls:
                c.cancel()
        return got[0], len(calls), refused

    served, opened, refused = asyncio.run(run())
    assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served == opened


def test_status_reports_the_primary_and_serving(cluster: Cluster) -> None:
    s = cluster.status(1)
    assert s.serving and not s.problem
    assert s.primary_client_address == json.loads(
        (cluster.vdir(s.primary) / "config.json").read_text())["listen_client"]
