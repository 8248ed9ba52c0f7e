"""LedgerStore against a real PostgreSQL: schema, block round trips, records, atomicity, crash
recovery of the consensus log, database ownership, and a bulk-write smoke run.

Blocks come from real PBFT: either a 4-replica in-memory cluster (tests/pbft/harness.Cluster)
whose actions are replayed into the store as the validator's driver would, or `Execute` actions
built directly with real Ed25519 signatures (requests, PRE-PREPARE, 2f+1 COMMITs). Record
payloads are real `Submission`s sealed with the envelope encryption.

pytest-asyncio is not a dependency: each test runs its coroutine with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import psycopg
import pytest

from consortium.crypto.envelope import OrgKeyPair, open_sealed, seal
from consortium.ledger.blocks import Block, BlockHeader, ClientOrgs, EntryStatus, build_block
from consortium.ledger.records import RecordKind, Submission, public_part
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.replica import Recovered
from consortium.pbft.state import batch_digest, next_state_digest
from consortium.storage import (
    LATEST_VERSION,
    BlockRejected,
    LedgerStore,
    WrongDatabase,
    migrate,
)
from tests.pbft import harness as h

T = TypeVar("T")
CHAIN = h.CHAIN_ID
ORG_KEYS = {org: OrgKeyPair(hashlib.sha256(org.encode()).digest())
            for org in ("acme", "globex", "regulator")}
ORGS = ClientOrgs({"alice": "acme", "bob": "globex", "carol": "acme"},
                 {"acme", "globex", "regulator"})


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def with_store(dsn: str, body: Callable[[LedgerStore], Awaitable[T]], *,
               chain_id: bytes = CHAIN, replica_id: int = 1) -> T:
    async def main() -> T:
        store = await LedgerStore.open(dsn, chain_id=chain_id, replica_id=replica_id)
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


# ------------------------------------------------------------------------------- builders

def submission(org: str, subject: str, *, event: str = "shipped", at_ms: int = 1_700_000_000_000,
               kind: RecordKind = RecordKind.PROVENANCE, readers: Sequence[str] = ("regulator",),
               metadata: dict[str, str] | None = None, body: bytes = b"bill of lading"
               ) -> Submission:
    meta = tuple(sorted((metadata if metadata is not None else {"location": "Rotterdam"})
                        .items()))
    ad = public_part(kind, subject, event, org, at_ms, meta)
    sealed = seal(body, ad, {o: ORG_KEYS[o].public_key for o in {org, *readers}})
    return Submission(kind, subject, event, org, at_ms, meta, sealed.ciphertext,
                      tuple(sorted(sealed.wrapped_keys.items())))


def client_request(client: str, nonce: int, payload: bytes) -> m.Request:
    signer = h.CLIENT_SIGNERS.get(client, h.OUTSIDER)
    digest = m.request_digest(client, nonce, m.RequestKind.APPLICATION, payload)
    return m.Request(client, nonce, m.RequestKind.APPLICATION, payload,
                     signer.sign(m.request_signing_bytes(CHAIN, digest)))


def execute(seq: int, requests: Sequence[m.Request], *, executed: Sequence[m.Request] | None = None,
            view: int = 0, prev_state: bytes = bytes(32)) -> ev.Execute:
    """A committed batch with real signatures: the primary's PRE-PREPARE and 2f+1 COMMITs."""
    reqs = tuple(requests)
    pp = h.pre_prepare(view, seq, reqs)
    digest = batch_digest(reqs)
    cert = tuple(h.commit(s, view, seq, digest) for s in (0, 1, 2))
    return ev.Execute(seq=seq, view=view, epoch=0, digest=digest, requests=reqs,
                      executed=reqs if executed is None else tuple(executed), pre_prepare=pp,
                      certificate=cert, state_digest=next_state_digest(prev_state, seq, digest))


def chain(executes: Sequence[ev.Execute], prev: BlockHeader | None = None) -> list[Block]:
    out = []
    for a in executes:
        b = build_block(a, CHAIN, prev, ORGS)
        out.append(b)
        prev = b.header
    return out


def simple_blocks(count: int, per_block: int = 3, *, first_nonce: int = 1) -> list[Block]:
    nonce = first_nonce
    exs = []
    for seq in range(1, count + 1):
        reqs = []
        for i in range(per_block):
            client = ("alice", "bob")[i % 2]
            sub = submission(ORGS.org_of(client) or "", f"lot-{seq}-{i}")
            reqs.append(client_request(client, nonce, sub.encode()))
            nonce += 1
        exs.append(execute(seq, reqs))
    return chain(exs)


# ---------------------------------------------------------------------------------- schema

def test_migrations_apply_once_and_are_idempotent(fresh_dsn: str) -> None:
    async def body() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            assert await migrate(conn) == LATEST_VERSION
            assert await migrate(conn) == LATEST_VERSION
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in await cur.fetchall()] == list(range(1, LATEST_VERSION + 1))
            cur = await conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_name = ANY(%s)", (["blocks", "entries", "records", "wrapped_keys",
                                              "consensus_log", "checkpoint", "meta"],))
            assert await cur.fetchone() == (7,)
        # Opening a store migrates too, and reopening changes nothing.
        for _ in range(2):
            store = await LedgerStore.open(fresh_dsn, chain_id=CHAIN, replica_id=0)
            await store.close()
    run(body())


def test_concurrent_migrations_do_not_conflict(fresh_dsn: str) -> None:
    async def one() -> int:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            return await migrate(conn)

    async def body() -> list[int]:
        return list(await asyncio.gather(*(one() for _ in range(4))))
    assert run(body()) == [LATEST_VERSION] * 4


# --------------------------------------------------------------------------------- ownership

def test_a_database_of_another_chain_or_replica_is_refused(dsn: str) -> None:
    async def body(store: LedgerStore) -> None:
        await store.append_block(simple_blocks(1)[0])
    with_store(dsn, body, replica_id=1)
    with pytest.raises(WrongDatabase, match="chain_id"):
        with_store(dsn, body, chain_id=b"another-chain", replica_id=1)
    with pytest.raises(WrongDatabase, match="replica_id"):
        with_store(dsn, body, replica_id=2)

    async def height(store: LedgerStore) -> int | None:
        head = await store.head()
        return None if head is None else head.height
    assert with_store(dsn, height, replica_id=1) == 1


# ------------------------------------------------------------------------------------ blocks

def test_block_round_trip_is_byte_exact(dsn: str) -> None:
    blocks = simple_blocks(3)

    async def body(store: LedgerStore) -> None:
        assert await store.head() is None
        assert await store.get_block(1) is None
        for b in blocks:
            await store.append_block(b)
        assert await store.head() == blocks[-1].header
        for b in blocks:
            got = await store.get_block(b.header.height)
            assert got is not None
            assert got.height == b.header.height
            assert got.hash == b.hash
            assert got.header == b.header.encode()
            assert BlockHeader.decode(got.header) == b.header
            assert got.requests == tuple(codec.encode_request(e.request) for e in b.entries)
            assert tuple(codec.decode_request(r) for r in got.requests) == tuple(
                e.request for e in b.entries)
            assert got.statuses == tuple(e.status for e in b.entries)
            assert got.pre_prepare == b.pre_prepare.wire
            assert got.certificate == tuple(c.wire for c in b.certificate)
            assert codec.decode_signed(got.pre_prepare, CHAIN) == b.pre_prepare
        ranged = await store.get_blocks(2, 10, 100)
        assert [s.height for s in ranged] == [2, 3]
        assert [s.height for s in await store.get_blocks(1, 3, 2)] == [1, 2]
        assert await store.get_blocks(3, 1, 10) == []
        assert await store.get_blocks(1, 3, 0) == []
    with_store(dsn, body)


def test_an_empty_block_is_stored_like_any_other(dsn: str) -> None:
    """A null batch (view change fills gaps with them) is a block with no entries."""
    blocks = chain([execute(1, [])])

    async def body(store: LedgerStore) -> None:
        await store.append_block(blocks[0])
        got = await store.get_block(1)
        assert got is not None and got.requests == () and got.statuses == ()
    with_store(dsn, body)


def test_blocks_that_do_not_extend_the_head_are_refused_and_leave_nothing(dsn: str) -> None:
    blocks = simple_blocks(3)

    async def counts(store: LedgerStore) -> tuple[int, ...]:
        conn = store._conn
        out = []
        for t in ("blocks", "entries", "records", "wrapped_keys", "consensus_log"):
            cur = await conn.execute(f"SELECT count(*) FROM {t}".encode())
            row = await cur.fetchone()
            assert row is not None
            out.append(int(row[0]))
        return tuple(out)

    async def body(store: LedgerStore) -> None:
        with pytest.raises(BlockRejected, match="height 2"):
            await store.append_block(blocks[1])  # the first block must be height 1
        await store.append_block(blocks[0])
        before = await counts(store)
        extra = (h.prepare(1, 0, 9, bytes(32)),)
        with pytest.raises(BlockRejected, match="height"):
            await store.append_block(blocks[2], also_persist=extra)  # a gap
        with pytest.raises(BlockRejected, match="height"):
            await store.append_block(blocks[0], also_persist=extra)  # a repeat
        forged = Block(replace(blocks[1].header, prev_hash=bytes(32)),
                       blocks[1].entries, blocks[1].pre_prepare, blocks[1].certificate)
        with pytest.raises(BlockRejected, match="prev_hash"):
            await store.append_block(forged, also_persist=extra)
        wrong_chain = Block(replace(blocks[1].header, chain_id=b"x"),
                            blocks[1].entries, blocks[1].pre_prepare, blocks[1].certificate)
        with pytest.raises(BlockRejected, match="chain"):
            await store.append_block(wrong_chain)
        unlinked = Block(replace(blocks[2].header, prev_hash=bytes(32)),
                         blocks[2].entries, blocks[2].pre_prepare, blocks[2].certificate)
        with pytest.raises(BlockRejected, match="prev_hash"):
            await store.install_blocks([blocks[1], unlinked])  # the second does not link
        assert await counts(store) == before
        assert await store.head() == blocks[0].header
        await store.install_blocks(blocks[1:])
        assert await store.head() == blocks[2].header
    with_store(dsn, body)


def test_a_write_that_fails_inside_the_database_is_rolled_back_entirely(dsn: str) -> None:
    """Atomicity when PostgreSQL itself refuses a row half-way (here: a record id that is
    already stored, which only a bug could produce): the block row and its entries go too."""
    blocks = simple_blocks(1)
    again = blocks[0].entries[0].request
    bad = chain([execute(2, [client_request("carol", 50, submission("acme", "y").encode()),
                             again])], blocks[0].header)[0]
    assert bad.entries[1].status == EntryStatus.RECORDED  # executed again: a (simulated) bug

    async def body(store: LedgerStore) -> None:
        await store.append_block(blocks[0])
        with pytest.raises(psycopg.errors.UniqueViolation):
            await store.append_block(bad, also_persist=(h.prepare(1, 0, 2, bytes(32)),))
        assert await store.head() == blocks[0].header
        assert await store.get_block(2) is None
        assert await store.find_entry(bad.entries[0].record_id) is None
        recovered, _ = await store.load_recovered()
        assert recovered.messages == ()
        await store.append_block(_relink(blocks[0]))  # the chain goes on from the head
        assert (await store.head()) is not None
    with_store(dsn, body)


def _relink(prev: Block) -> Block:
    """A valid block 2 on top of `prev`."""
    sub = submission("globex", "after-rollback")
    return chain([execute(2, [client_request("bob", 77, sub.encode())])], prev.header)[0]


def test_concurrent_tasks_share_the_store_safely(dsn: str) -> None:
    """The driver appends while query handlers read, on the one connection."""
    blocks = simple_blocks(6)

    async def writer(store: LedgerStore) -> None:
        for b in blocks:
            await store.append_block(b)
            await asyncio.sleep(0)

    async def reader(store: LedgerStore) -> int:
        seen = 0
        for _ in range(30):
            got = await store.get_blocks(1, 10, 10)
            assert [s.height for s in got] == list(range(1, len(got) + 1))
            await store.find_entry(blocks[0].entries[0].record_id)
            seen = max(seen, len(got))
            await asyncio.sleep(0)
        return seen

    async def body(store: LedgerStore) -> None:
        await asyncio.gather(writer(store), reader(store), reader(store))
        assert [s.height for s in await store.get_blocks(1, 10, 10)] == [1, 2, 3, 4, 5, 6]
        assert await store.get_block(2**64 - 1) is None  # u64 heights from a client are fine
        assert await store.get_blocks(0, 2**64 - 1, 2) != []
    with_store(dsn, body)


# ----------------------------------------------------------------------------------- records

def test_records_and_wrapped_keys_are_queryable(dsn: str) -> None:
    s1 = submission("acme", "lot-42", event="manufactured", at_ms=1000,
                    metadata={"location": "Lyon", "quantity": "100"})
    s2 = submission("globex", "lot-42", event="shipped", at_ms=2000, readers=("acme",))
    s3 = submission("acme", "patient-7", kind=RecordKind.PATIENT, event="lab-result",
                    body=b"hb 13.2")
    r1 = client_request("alice", 1, s1.encode())
    r2 = client_request("bob", 1, s2.encode())
    r3 = client_request("carol", 1, s3.encode())
    wrong_org = client_request("bob", 2, submission("acme", "lot-42").encode())  # bob is globex
    garbage = client_request("alice", 2, b"not a submission")
    dup = r1
    blocks = chain([execute(1, [r1, r3]),
                    execute(2, [r2, wrong_org, garbage, dup],
                            executed=[r2, wrong_org, garbage])])

    async def body(store: LedgerStore) -> None:
        for b in blocks:
            await store.append_block(b)
        rec = await store.get_record(r1.digest.hex())
        assert rec is not None
        assert (rec.height, rec.idx, rec.status, rec.kind, rec.subject_id, rec.event_type,
                rec.submitter_org, rec.submitted_at_ms) == (
            1, 0, "recorded", "provenance", "lot-42", "manufactured", "acme", 1000)
        assert rec.metadata == {"location": "Lyon", "quantity": "100"}
        assert rec.ciphertext == s1.ciphertext
        assert rec.content_hash == hashlib.sha256(s1.ciphertext).digest()
        assert rec.wrapped_keys == dict(s1.wrapped_keys)
        assert set(rec.wrapped_keys) == {"acme", "regulator"}
        assert rec.request == codec.encode_request(r1)
        # A reader org can open it with what the store returns.
        assert open_sealed(rec.ciphertext, s1.associated_data(), rec.wrapped_keys["regulator"],
                           ORG_KEYS["regulator"]) == b"bill of lading"

        trail = await store.records_for_subject("provenance", "lot-42")
        assert [(r.height, r.idx, r.event_type) for r in trail] == [
            (1, 0, "manufactured"), (2, 0, "shipped")]
        assert [r.record_id for r in await store.records_for_subject("patient", "patient-7")
                ] == [r3.digest.hex()]
        assert await store.records_for_subject("patient", "lot-42") == []

        # Entries that are not records are findable, with their status and reason.
        assert await store.find_entry(r1.digest.hex()) == (1, 0, "recorded", "")
        found = await store.find_entry(wrong_org.digest.hex())
        assert found is not None and found[:3] == (2, 1, "invalid")
        assert "does not belong to acme" in found[3]
        found = await store.find_entry(garbage.digest.hex())
        assert found is not None and found[:3] == (2, 2, "invalid")
        assert await store.get_record(wrong_org.digest.hex()) is None
        stored = await store.get_block(2)
        assert stored is not None
        assert stored.statuses == ("recorded", "invalid", "invalid", "duplicate")
        # A replayed request is found where it took effect, not where it was a duplicate.
        assert await store.find_entry(dup.digest.hex()) == (1, 0, "recorded", "")
        # Malformed ids are simply unknown.
        assert await store.find_entry("zz") is None
        assert await store.get_record("\x00" * 64) is None
        assert await store.get_record(r1.digest.hex().upper()) is None

        cur = await store._conn.execute(
            "SELECT org, count(*) FROM wrapped_keys GROUP BY org ORDER BY org")
        assert await cur.fetchall() == [("acme", 3), ("globex", 1), ("regulator", 2)]
        cur = await store._conn.execute(
            "SELECT metadata->>'quantity' FROM records WHERE submitter_org = 'acme' "
            "AND subject_id = 'lot-42'")
        assert await cur.fetchall() == [("100",)]
    with_store(dsn, body)


def test_hostile_text_and_huge_nonces_cannot_stall_the_store(dsn: str) -> None:
    """A well-signed request whose record carries NUL or other control characters (which
    PostgreSQL text cannot hold) becomes an INVALID entry on every validator alike, and the
    block still stores (a failing append would halt the validator); a u64 nonce round-trips."""
    clean = submission("acme", "lotXA", metadata={"kX": "vX", "note": "caf\u00e9 \ufffd"})
    hostile = clean.encode().replace(b"lotXA", b"lot\x00A").replace(b"kX", b"k\x00")
    r_nul = client_request("alice", 2**64 - 1, hostile)
    r_plain = client_request("carol", 3, submission("acme", "lot\ufffdA").encode())
    r_bad_client = client_request("mal\x00lory", 1, submission("acme", "lot-1").encode())
    blocks = chain([execute(1, [r_nul, r_plain, r_bad_client])])

    async def body(store: LedgerStore) -> None:
        await store.append_block(blocks[0])
        found = await store.find_entry(r_nul.digest.hex())
        assert found is not None and found[2] == "invalid" and "control character" in found[3]
        assert await store.get_record(r_nul.digest.hex()) is None
        assert [r.record_id for r in await store.records_for_subject("provenance", "lot\ufffdA")
                ] == [r_plain.digest.hex()]
        found = await store.find_entry(r_bad_client.digest.hex())
        assert found is not None and found[2] == "invalid"
        stored = await store.get_block(1)
        assert stored is not None
        assert stored.requests[0] == codec.encode_request(r_nul)
        assert codec.decode_request(stored.requests[0]).nonce == 2**64 - 1
        assert codec.decode_request(stored.requests[2]).client_id == "mal\x00lory"
    with_store(dsn, body)


# ------------------------------------------------------------------------------ crash recovery

def _drive(store: LedgerStore, actions: Sequence[ev.Action], prev: BlockHeader | None,
           *, batch_persist_with_blocks: bool) -> Callable[[], Awaitable[BlockHeader | None]]:
    """Carry out a replica's actions as the validator's driver would."""
    async def go() -> BlockHeader | None:
        head = prev
        pending: list[m.SignedMessage] = []
        for a in actions:
            if isinstance(a, ev.Persist):
                if batch_persist_with_blocks:
                    pending.extend(a.messages)
                else:
                    await store.persist_messages(a.messages)
            elif isinstance(a, ev.Execute):
                block = build_block(a, CHAIN, head, ORGS)
                await store.append_block(block, also_persist=pending)
                pending = []
                head = block.header
            elif isinstance(a, ev.PersistSnapshot):
                await store.persist_messages(pending)
                pending = []
                await store.persist_snapshot(a.snapshot, a.proof)
        await store.persist_messages(pending)
        return head
    return go


def _cluster_run(rounds: int) -> h.Cluster:
    """Four real replicas order `rounds` x 3 record submissions (checkpoint every 4 blocks)."""
    cluster = h.Cluster(h.params(batch_requests_max=2))
    nonce = 0
    for rnd in range(rounds):
        for client in ("alice", "bob", "carol"):
            nonce += 1
            sub = submission(ORGS.org_of(client) or "", f"lot-{rnd}", at_ms=1000 + nonce)
            cluster.submit(0, client_request(client, nonce, sub.encode()))
        cluster.run()
    return cluster


def _expected_log(persisted: Sequence[m.SignedMessage], stable: int) -> list[m.SignedMessage]:
    """The pruning rule: votes above the stable checkpoint, view messages of the latest view."""
    def view_of(msg: m.SignedMessage) -> tuple[int, int]:
        b = msg.body
        assert isinstance(b, (m.ViewChange, m.NewView))
        return (b.epoch, b.new_view)
    view_msgs = [x for x in persisted if isinstance(x.body, (m.ViewChange, m.NewView))]
    latest = max((view_of(x) for x in view_msgs), default=None)
    out = []
    for x in persisted:
        b = x.body
        if isinstance(b, (m.PrePrepare, m.Prepare, m.Commit)):
            if b.seq > stable:
                out.append(x)
        elif view_of(x) == latest:
            out.append(x)
    return out


@pytest.mark.parametrize("batch_persist_with_blocks", [False, True])
def test_load_recovered_returns_what_a_replica_persisted(dsn: str,
                                                         batch_persist_with_blocks: bool) -> None:
    cluster = _cluster_run(rounds=5)
    node = cluster.nodes[1]  # a backup: it persists its own PREPAREs and COMMITs
    assert node.snapshot is not None and node.snapshot.seq >= 4
    last = node.replica.last_executed
    assert last > node.snapshot.seq

    async def body(store: LedgerStore) -> tuple[Recovered, BlockHeader | None]:
        head = await _drive(store, node.log, None,
                            batch_persist_with_blocks=batch_persist_with_blocks)()
        recovered, stored_head = await store.load_recovered()
        assert stored_head == head
        return recovered, stored_head

    recovered, head = with_store(dsn, body)
    assert head is not None and head.height == last
    assert recovered.snapshot == node.snapshot
    assert recovered.snapshot_proof == node.snapshot_proof
    assert [b.seq for b in recovered.executed] == list(range(node.snapshot.seq + 1, last + 1))
    by_seq = {b.seq: b for b in node.executed}
    for b in recovered.executed:
        assert b == by_seq[b.seq]
    assert list(recovered.messages) == _expected_log(node.persisted, node.snapshot.seq)
    assert [msg.wire for msg in recovered.messages] == [
        msg.wire for msg in _expected_log(node.persisted, node.snapshot.seq)]

    # The replica rebuilt from the database is where the live one was.
    rebuilt = h.make_node(1, node.replica.params, recovered=recovered)
    assert rebuilt.replica.last_executed == node.replica.last_executed
    assert rebuilt.replica.stable_seq == node.replica.stable_seq
    assert rebuilt.replica.view == node.replica.view
    assert rebuilt.replica.state_digest == node.replica.state_digest


def test_an_empty_store_recovers_nothing(dsn: str) -> None:
    async def body(store: LedgerStore) -> tuple[Recovered, BlockHeader | None]:
        return await store.load_recovered()
    assert with_store(dsn, body) == (Recovered(), None)


def test_snapshot_prunes_votes_and_keeps_only_the_latest_view_messages(dsn: str) -> None:
    cluster = _cluster_run(rounds=3)
    node = cluster.nodes[2]
    snap, proof = node.snapshot, node.snapshot_proof
    assert snap is not None
    d = bytes(32)
    votes = [h.pre_prepare(0, s, []) for s in (snap.seq - 1, snap.seq, snap.seq + 1)]
    votes += [h.prepare(2, 0, s, d) for s in (snap.seq, snap.seq + 1)]
    votes += [h.commit(2, 0, s, d) for s in (snap.seq, snap.seq + 2)]
    vc1 = h.view_change(2, 1)
    nv1 = h.new_view(1, 1, [h.view_change(i, 1) for i in (0, 1, 2)], [])
    vc2 = h.view_change(2, 2)
    log = [*votes[:3], vc1, nv1, *votes[3:], vc2]

    async def body(store: LedgerStore) -> Recovered:
        await store.persist_messages(log[:4])
        await store.persist_messages(log[4:])
        recovered, _ = await store.load_recovered()
        assert list(recovered.messages) == log  # insertion order, nothing pruned yet
        await store.persist_snapshot(snap, proof)
        recovered, _ = await store.load_recovered()
        return recovered

    recovered = with_store(dsn, body)
    assert recovered.snapshot == snap and recovered.snapshot_proof == proof
    assert list(recovered.messages) == _expected_log(log, snap.seq)
    assert [type(x.body).__name__ for x in recovered.messages] == [
        "PrePrepare", "Prepare", "Commit", "ViewChange"]


def test_a_later_snapshot_replaces_the_earlier_one(dsn: str) -> None:
    cluster = _cluster_run(rounds=5)
    node = cluster.nodes[1]
    snaps = [a for a in node.log if isinstance(a, ev.PersistSnapshot)]
    assert len(snaps) >= 2

    async def body(store: LedgerStore) -> Recovered:
        for a in snaps:
            await store.persist_snapshot(a.snapshot, a.proof)
        recovered, _ = await store.load_recovered()
        return recovered
    recovered = with_store(dsn, body)
    assert recovered.snapshot == snaps[-1].snapshot
    assert recovered.snapshot_proof == snaps[-1].proof


def test_persisting_a_non_protocol_message_is_a_bug(dsn: str) -> None:
    status = h.sign(1, m.Status(0, 0, True, 0, 0))

    async def body(store: LedgerStore) -> None:
        with pytest.raises(ValueError, match="Status"):
            await store.persist_messages([status])
    with_store(dsn, body)


# ------------------------------------------------------------------------------- throughput

def test_bulk_append_smoke_50_blocks_of_200_records(dsn: str) -> None:
    """Smoke check of the hot path (no timing assertion): 10,000 records in 50 blocks."""
    per_block, count = 200, 50
    payloads = [submission(("acme", "globex")[i % 2], f"lot-{i % 37}",
                           metadata={"location": f"dock {i}"}).encode()
                for i in range(per_block)]
    clients = ("alice", "bob")
    exs, state, nonce = [], bytes(32), 0
    for seq in range(1, count + 1):
        reqs = []
        for i in range(per_block):
            nonce += 1
            reqs.append(client_request(clients[i % 2], nonce, payloads[i]))
        a = execute(seq, reqs, prev_state=state)
        state = a.state_digest
        exs.append(a)
    blocks = chain(exs)

    async def body(store: LedgerStore) -> float:
        t0 = time.perf_counter()
        for b in blocks:
            await store.append_block(b)
        elapsed = time.perf_counter() - t0
        cur = await store._conn.execute(
            "SELECT (SELECT count(*) FROM blocks), (SELECT count(*) FROM entries), "
            "(SELECT count(*) FROM records), (SELECT count(*) FROM wrapped_keys)")
        assert await cur.fetchone() == (count, count * per_block, count * per_block,
                                        count * per_block * 2)
        assert len(await store.records_for_subject("provenance", "lot-0")) > 0
        return elapsed

    elapsed = with_store(dsn, body)
    print(f"\nappend_block: {count * per_block / elapsed:,.0f} records/s "
          f"({count / elapsed:,.1f} blocks/s of {per_block})")
