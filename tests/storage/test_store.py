"""LedgerStore (the writer) and LedgerReader (the read pool) against a real PostgreSQL: schema
and the refusal of a format-1 ledger, block round trips, records and their readers, erasure,
paginated queries, atomicity, crash recovery of the consensus log, database ownership, outages,
and a bulk-write smoke run.

Blocks come from real PBFT: either a 4-replica in-memory cluster (tests/pbft/harness.Cluster)
whose actions are replayed into the store as the validator's driver does, or `Execute` actions
built directly with real Ed25519 signatures (client envelopes, the primary's proposal header,
2f+1 COMMITs). Record items are real `Submission`s sealed with the envelope encryption, and
blocks are executed with the record states read back from the database, as the driver does.

pytest-asyncio is not a dependency: each test runs its coroutine with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from consortium import wire
from consortium.crypto.envelope import OrgKeyPair, open_sealed, seal, wrap_key
from consortium.crypto.signing import Ed25519Signer
from consortium.ledger.blocks import (
    ACCESS_DENIED,
    Block,
    BlockHeader,
    ClientOrgs,
    EntryStatus,
    EnvelopeStatus,
    Governance,
    RecordState,
    Screening,
    build_block,
    referenced_records,
)
from consortium.ledger.effects import LedgerState
from consortium.ledger.items import ItemView, is_record_id, record_id
from consortium.ledger.records import (
    RecordKind,
    Submission,
    public_part,
    submission_from_segments,
)
from consortium.ledger.transactions import (
    Access,
    Erase,
    Grant,
    JoinRequest,
    Revoke,
    applicant_client_id,
    encode_governance_tx,
    encode_tx,
    sponsor_join,
)
from consortium.node.views import receipt_from_material, stored_block_to_proto
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.payload import (
    encode_envelope,
    envelope_digest_of,
    item_digest,
    split_envelope,
    split_segments,
)
from consortium.pbft.replica import Recovered
from consortium.pbft.state import GENESIS_STATE_DIGEST, batch_root, next_state_digest
from consortium.storage import (
    LATEST_VERSION,
    BlockRejected,
    LedgerReader,
    LedgerStore,
    StoreUnavailable,
    WrongDatabase,
    migrate,
)
from consortium.storage.reads import START, Cursor
from consortium.storage.rows import StoredBlock
from consortium.storage.schema import MIGRATIONS
from consortium.verify import ChainVerifier, verify_receipt
from tests.pbft import harness as h
from tests.storage.conftest import ADMIN_DSN

T = TypeVar("T")
CHAIN = h.CHAIN_ID
ORG_KEYS = {org: OrgKeyPair(hashlib.sha256(org.encode()).digest())
            for org in ("acme", "globex", "regulator")}
SIGNERS = {**h.CLIENT_SIGNERS, "dave": Ed25519Signer(hashlib.sha256(b"dave").digest())}
ORGS_MAP = {"alice": "acme", "bob": "globex", "carol": "acme", "dave": "regulator"}
ORGS = ClientOrgs(dict(ORGS_MAP), {"acme", "globex", "regulator"})
AT_MS = 1_700_000_000_000
"""Submission time of the records (the block times below are a minute later)."""
BLOCK_MS = AT_MS + 60_000


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def with_store(dsn: str, body: Callable[[LedgerStore, LedgerReader], Awaitable[T]], *,
               chain_id: bytes = CHAIN, replica_id: int = 1) -> T:
    async def main() -> T:
        store = await LedgerStore.open(dsn, chain_id=chain_id, replica_id=replica_id)
        try:
            reader = await LedgerReader.open(dsn, size=2)
            try:
                return await body(store, reader)
            finally:
                await reader.close()
        finally:
            await store.close()
    return asyncio.run(main())


async def fetch(store: LedgerStore, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the writer's connection (white-box checks of what is stored)."""
    async with store._transaction() as cur:
        await cur.execute(query.encode(), args)
        return list(await cur.fetchall())


# ------------------------------------------------------------------------------- builders

def submission(org: str, subject: str, *, event: str = "shipped", at_ms: int = AT_MS,
               kind: RecordKind = RecordKind.PROVENANCE, readers: Sequence[str] = ("regulator",),
               metadata: dict[str, str] | None = None, body: bytes = b"bill of lading",
               also: tuple[str, ...] = ()) -> Submission:
    meta = tuple(sorted((metadata if metadata is not None else {"location": "Rotterdam"})
                        .items()))
    ad = public_part(kind, subject, event, org, at_ms, meta, also)
    sealed = seal(body, ad, {o: ORG_KEYS[o].public_key for o in {org, *readers}})
    return Submission(kind, subject, event, org, at_ms, meta, sealed.ciphertext,
                      tuple(sorted(sealed.wrapped_keys.items())), also)


def patient(org: str, subject: str, *, event: str = "lab-result", **kw: Any) -> Submission:
    return submission(org, subject, kind=RecordKind.PATIENT, event=event, **kw)


def envelope(client: str, nonce: int, items: Sequence[bytes | Submission]) -> m.Request:
    """A client's signed request whose payload is an envelope of these items."""
    return raw_request(client, nonce, encode_envelope(
        [i.encode() if isinstance(i, Submission) else i for i in items]))


def raw_request(client: str, nonce: int, payload: bytes) -> m.Request:
    signer = SIGNERS.get(client, h.OUTSIDER)
    digest = m.request_digest(client, nonce, m.RequestKind.APPLICATION, payload)
    return m.Request(client, nonce, m.RequestKind.APPLICATION, payload,
                     signer.sign(m.request_signing_bytes(CHAIN, digest)))


@dataclass(frozen=True)
class Replay:
    """A request ordered again (a client's retry) that the replica does not execute."""

    request: m.Request


Batch = Sequence[m.Request | Replay]


def execute(seq: int, batch: Batch, *, prev_state: bytes = GENESIS_STATE_DIGEST,
            view: int = 0) -> ev.Execute:
    """A committed batch with real signatures: the primary's proposal header (a minute after
    the records were signed) and 2f+1 COMMITs."""
    reqs = tuple(r.request if isinstance(r, Replay) else r for r in batch)
    pp = h.pre_prepare(view, seq, reqs, timestamp_ms=BLOCK_MS + seq)
    digest = h.digest_of(pp)
    cert = tuple(h.commit(s, view, seq, digest) for s in (0, 1, 2))
    executed = tuple(r for r in batch if not isinstance(r, Replay))
    return ev.Execute(seq=seq, view=view, epoch=0, digest=digest, requests=reqs,
                      executed=executed, pre_prepare=pp, certificate=cert,
                      state_digest=next_state_digest(prev_state, seq, digest))


def build(batches: Sequence[Batch], prev: BlockHeader | None = None,
          state: dict[str, RecordState] | None = None) -> list[Block]:
    """Blocks for consecutive batches on top of `prev` (no stored state: for blocks that act on
    no earlier record, or that are refused before execution matters)."""
    out = []
    for batch in batches:
        seq = 1 if prev is None else prev.height + 1
        block = build_block(execute(seq, batch, prev_state=GENESIS_STATE_DIGEST if prev is None
                                    else prev.state_digest), CHAIN, prev, ORGS, state)
        out.append(block)
        prev = block.header
    return out


async def extend(store: LedgerStore, reader: LedgerReader, *batches: Batch) -> list[Block]:
    """Execute and store batches one by one as the driver does: the record states a batch's
    transactions act on are read from the database first."""
    out = []
    for batch in batches:
        head = await store.head()
        reqs = [r.request if isinstance(r, Replay) else r for r in batch]
        state = dict(await reader.record_states(referenced_records(reqs)))
        block = build([batch], head, state)[0]
        await store.append_blocks([block])
        out.append(block)
    return out


def simple_blocks(count: int, envelopes: int = 2, items: int = 2) -> list[Block]:
    """`count` blocks of `envelopes` envelopes of `items` provenance records each."""
    nonce = 0
    batches = []
    for seq in range(1, count + 1):
        batch = []
        for e in range(envelopes):
            client = ("alice", "bob")[e % 2]
            nonce += 1
            batch.append(envelope(client, nonce, [
                submission(ORGS.org_of(client) or "", f"lot-{seq}-{e}-{i}")
                for i in range(items)]))
        batches.append(batch)
    return build(batches)


def split_items(r: m.Request) -> list[bytes]:
    items = split_envelope(r.payload)
    assert items is not None
    return items


def submission_of(item: bytes) -> Submission:
    segs = split_segments(item)
    assert segs is not None
    return submission_from_segments(segs)


def rid(r: m.Request, index: int = 0) -> str:
    return record_id(r.digest, index)


def verify_stored_chain(stored: Sequence[StoredBlock]) -> None:
    """The stored blocks, served as a validator serves them, verify from genesis: the chain
    links, every executed envelope's items match its signed digest, the proposal header and
    the certificate are signed by the validators."""
    checker = ChainVerifier(CHAIN, {0: h.GENESIS}, h.VERIFIER)
    for s in stored:
        checker.check(wire.block_from_proto(stored_block_to_proto(s), CHAIN))


async def verify_receipt_of(reader: LedgerReader, record: str, client: str) -> wire.Receipt:
    """Build an entry's receipt from what the reader returns and verify it, the client's
    signature included; returns it."""
    ref = await reader.find_entry(record)
    assert ref is not None
    mat = await reader.receipt_material(ref.height, ref.idx)
    assert mat is not None
    receipt = wire.receipt_from_proto(receipt_from_material(mat, CHAIN), CHAIN)
    assert receipt.record_id == record
    assert verify_receipt(receipt, h.GENESIS, h.VERIFIER,
                          client_key=SIGNERS[client].public_key) is None
    return receipt


# ---------------------------------------------------------------------------------- schema

FORMAT_2_TABLES = ["blocks", "envelopes", "entries", "record_subjects", "access_log",
                   "verdicts", "review_votes", "proposals", "member_votes", "consensus_log",
                   "checkpoint", "meta"]


def test_migrations_apply_once_and_are_idempotent(fresh_dsn: str) -> None:
    """Format 2 drops the format-1 tables that copied request bytes (records, wrapped_keys)."""
    async def body() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            assert await migrate(conn) == LATEST_VERSION
            assert await migrate(conn) == LATEST_VERSION
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [r[0] for r in await cur.fetchall()] == list(range(1, LATEST_VERSION + 1))
            cur = await conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "ORDER BY table_name")
            tables = {r[0] for r in await cur.fetchall()}
            assert set(FORMAT_2_TABLES) <= tables
            assert not {"records", "wrapped_keys"} & tables
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


def _apply_format_1(dsn: str, *, with_block: bool) -> None:
    """A database as the format-1 release left it: migrations 1 to 5, and a block if asked."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, statement in MIGRATIONS[:5]:
            conn.execute(statement.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        if with_block:
            conn.execute(
                "INSERT INTO blocks (height, hash, prev_hash, epoch, view, merkle_root, "
                "state_digest, entry_count, timestamp_ms, header, pre_prepare, certificate) "
                "VALUES (1, %s, %s, 0, 0, %s, %s, 0, 1, '\\x00', '\\x00', '{}')",
                (b"\x01" * 32, bytes(32), bytes(32), bytes(32)))


def test_a_format_1_ledger_is_refused_not_converted(fresh_dsn: str) -> None:
    """Migration 6 replaces the format-1 tables; a database that holds a format-1 ledger is
    refused with a message that says what to do, and left exactly as it was."""
    _apply_format_1(fresh_dsn, with_block=True)

    async def body() -> None:
        with pytest.raises(WrongDatabase, match=r"earlier release \(format 1\).*consortium init"):
            await LedgerStore.open(fresh_dsn, chain_id=CHAIN, replica_id=0)
    run(body())
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (5,)
        assert conn.execute("SELECT height FROM blocks").fetchall() == [(1,)]
        assert conn.execute("SELECT to_regclass('wrapped_keys') IS NOT NULL").fetchone() == (
            True,)


def test_an_empty_format_1_database_is_upgraded(fresh_dsn: str) -> None:
    """No ledger yet (created by the old release, never used): nothing is lost by migrating."""
    _apply_format_1(fresh_dsn, with_block=False)

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(simple_blocks(1))
        assert await reader.head_height() == 1
    with_store(fresh_dsn, body)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (
            LATEST_VERSION,)


def test_a_database_with_unsponsored_join_requests_is_refused(fresh_dsn: str) -> None:
    """Migration 7 (sponsored, expiring join requests): join requests stored before it are in
    an encoding this release no longer reads, so such a database is refused and left as it
    was; a database with removals only is upgraded, each removal timed by its block."""
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, statement in MIGRATIONS[:6]:
            conn.execute(statement.encode())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        conn.execute("INSERT INTO blocks (height, hash, epoch, timestamp_ms, header, "
                     "pre_prepare, certificate) VALUES (1, %s, 0, 1234, '\\x00', '\\x00', "
                     "'{}')", (b"\x01" * 32,))
        conn.execute("INSERT INTO proposals (proposal_id, kind, replica_id, org, height, idx) "
                     "VALUES ('rm', 'remove', 3, 'org3', 1, 0), ('j', 'join', 4, 'acme', 1, 1)")

    async def body() -> None:
        with pytest.raises(WrongDatabase, match=r"join requests of an earlier development "
                                                r"release \(unsponsored\).*consortium init"):
            await LedgerStore.open(fresh_dsn, chain_id=CHAIN, replica_id=0)
    run(body())
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (6,)
        conn.execute("DELETE FROM proposals WHERE kind = 'join'")

    async def upgrade() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_dsn, autocommit=True) as conn:
            assert await migrate(conn) == LATEST_VERSION
    run(upgrade())
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT proposal_id, sponsor, recorded_ms FROM proposals"
                            ).fetchall() == [("rm", "", 1234)]


def test_a_join_requests_sponsor_and_block_time_are_stored(dsn: str) -> None:
    """The store keeps what judging later join requests and votes needs: the sponsor (its
    quota) and the recording block's time (the expiry)."""
    applicant = Ed25519Signer(hashlib.sha256(b"applicant").digest())
    orgs = ClientOrgs(dict(ORGS_MAP), {"acme", "globex", "regulator"},
                      keys={c: SIGNERS[c].public_key for c in ORGS_MAP})
    tx = sponsor_join(JoinRequest("newco0", "NewCo", 10, applicant.public_key,
                                  Ed25519Signer.generate().public_key,
                                  Ed25519Signer.generate().public_key, "p:1", "c:1",
                                  "We make vaccines."), "acme", SIGNERS["alice"], CHAIN)
    payload = encode_envelope([encode_governance_tx(tx)])
    client = applicant_client_id(applicant.public_key)
    digest = m.request_digest(client, 1, m.RequestKind.APPLICATION, payload)
    first = m.Request(client, 1, m.RequestKind.APPLICATION, payload,
                      applicant.sign(m.request_signing_bytes(CHAIN, digest)))
    gov = Governance.of(None, h.GENESIS, h.VERIFIER)
    block = build_block(execute(1, [first]), CHAIN, None, orgs, gov=gov)
    assert [(e.status, e.reason) for e in block.entries] == [("recorded", "")]

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks([block])
        members = await reader.membership()
        (p,) = members.proposals.values()
        assert (p.org, p.sponsor, p.recorded_ms) == ("newco0", "acme", block.header.timestamp_ms)
        (shown,) = await reader.proposals()
        assert (shown.sponsor, shown.recorded_ms) == ("acme", block.header.timestamp_ms)
    with_store(dsn, body)


# --------------------------------------------------------------------------------- ownership

def test_a_database_of_another_chain_or_replica_is_refused(dsn: str) -> None:
    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(simple_blocks(1))
    with_store(dsn, body, replica_id=1)
    with pytest.raises(WrongDatabase, match="chain_id"):
        with_store(dsn, body, chain_id=b"another-chain", replica_id=1)
    with pytest.raises(WrongDatabase, match="replica_id"):
        with_store(dsn, body, replica_id=2)

    async def height(store: LedgerStore, reader: LedgerReader) -> int | None:
        head = await store.head()
        return None if head is None else head.height
    assert with_store(dsn, height, replica_id=1) == 1


def test_a_second_process_for_the_same_validator_is_refused(dsn: str) -> None:
    """Two processes with one validator's keys could equivocate: the second open fails while
    the first holds the database, and succeeds once it closed."""
    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        with pytest.raises(WrongDatabase, match="another process"):
            await LedgerStore.open(dsn, chain_id=CHAIN, replica_id=1)
        await store.close()
        again = await LedgerStore.open(dsn, chain_id=CHAIN, replica_id=1)
        await again.close()
    with_store(dsn, body)


# ------------------------------------------------------------------------------------ blocks

def _mixed_batches() -> tuple[list[Batch], dict[str, m.Request]]:
    """Two batches with every kind of envelope: executed (one and several items), one that
    breaks a record rule (wrong organisation), one that is not an envelope, and a replay."""
    r = {
        "multi": envelope("alice", 1, [submission("acme", "lot-1", event="manufactured"),
                                       submission("acme", "lot-1", also=("pallet-9",)),
                                       submission("acme", "lot-2", readers=("globex",))]),
        "single": envelope("bob", 1, [submission("globex", "lot-1", event="received")]),
        "wrong_org": envelope("bob", 2, [submission("globex", "lot-3"),
                                         submission("acme", "lot-3")]),
        "garbage": raw_request("carol", 1, b"not an envelope"),
    }
    return [[r["multi"], r["single"]],
            [r["wrong_org"], r["garbage"], Replay(r["multi"])]], r


def test_block_round_trip_is_byte_exact_and_verifies(dsn: str) -> None:
    batches, _r = _mixed_batches()
    blocks = build(batches)
    assert [e.status for e in blocks[1].envelopes] == [
        EnvelopeStatus.INVALID, EnvelopeStatus.INVALID, EnvelopeStatus.DUPLICATE]

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        assert await store.head() is None
        assert await reader.get_block(1) is None
        assert await reader.head_height() == 0
        for b in blocks:
            await store.append_blocks([b])
        assert await store.head() == blocks[-1].header
        assert await reader.head_height() == 2
        for b in blocks:
            got = await reader.get_block(b.header.height)
            assert got is not None
            assert (got.height, got.hash) == (b.header.height, b.hash)
            assert got.header == b.header.encode()
            assert BlockHeader.decode(got.header) == b.header
            assert [(e.index, e.client_id, e.nonce, e.kind, e.signature, e.payload_digest,
                     e.status, e.reason, e.first_entry, e.entry_count, e.raw)
                    for e in got.envelopes] == [
                (e.index, e.client_id, e.nonce, int(e.kind), e.signature, e.payload_digest,
                 e.status, e.reason, e.first_entry, e.entry_count, e.raw) for e in b.envelopes]
            assert [(i.data, i.redacted, i.status, i.reason) for i in got.items] == [
                (e.item, False, e.status, e.reason) for e in b.entries]
            assert got.pre_prepare == b.pre_prepare.wire
            assert codec.decode_signed(got.pre_prepare, CHAIN) == b.pre_prepare
            assert got.certificate == tuple(c.wire for c in b.certificate)
            # What is stored is enough to recompute what the client signed and the block root.
            for e in got.envelopes:
                if e.status == EnvelopeStatus.EXECUTED:
                    items = [i.data for i in got.items[e.first_entry:
                                                       e.first_entry + e.entry_count]]
                    assert envelope_digest_of(items) == e.payload_digest
        b2 = await reader.get_block(2)
        assert b2 is not None
        assert b2.items == ()  # nothing of a refused envelope or a replay is kept but digests
        assert b2.envelopes[1].raw == b"not an envelope"
        assert b2.envelopes[0].reason == "item 1: client bob does not belong to acme"
        verify_stored_chain(await reader.get_blocks(1, 2, 10))
        assert [s.height for s in await reader.get_blocks(2, 10, 100)] == [2]
        assert [s.height for s in await reader.get_blocks(1, 3, 1)] == [1]
        assert await reader.get_blocks(3, 1, 10) == []
        assert await reader.get_blocks(1, 3, 0) == []
        assert await reader.get_block(2**64 - 1) is None  # u64 heights from a client are fine
        assert [s.height for s in await reader.get_blocks(0, 2**64 - 1, 5)] == [1, 2]
        assert await reader.stored_merkle_root(1) == blocks[0].header.merkle_root
        assert await reader.stored_merkle_root(3) is None
    with_store(dsn, body)


def test_an_empty_block_is_stored_like_any_other(dsn: str) -> None:
    """A null batch (view change fills gaps with them) is a block with no envelopes."""
    blocks = build([[]])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(blocks)
        got = await reader.get_block(1)
        assert got is not None and got.envelopes == () and got.items == ()
        assert got.header == blocks[0].header.encode()
        verify_stored_chain([got])
    with_store(dsn, body)


async def _counts(store: LedgerStore) -> tuple[int, ...]:
    out = []
    for t in ("blocks", "envelopes", "entries", "record_subjects", "consensus_log"):
        rows = await fetch(store, f"SELECT count(*) FROM {t}")
        out.append(int(rows[0][0]))
    return tuple(out)


def test_blocks_that_do_not_extend_the_head_are_refused_and_leave_nothing(dsn: str) -> None:
    blocks = simple_blocks(3)

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        with pytest.raises(BlockRejected, match="height 2"):
            await store.append_blocks([blocks[1]])  # the first block must be height 1
        await store.append_blocks([blocks[0]])
        before = await _counts(store)
        assert before[:3] == (1, 2, 4)
        extra = (h.prepare(1, 0, 9, bytes(32)),)
        with pytest.raises(BlockRejected, match="height"):
            await store.append_blocks([blocks[2]], also_persist=extra)  # a gap
        with pytest.raises(BlockRejected, match="height"):
            await store.append_blocks([blocks[0]], also_persist=extra)  # a repeat
        b1 = blocks[1]
        forged = Block(replace(b1.header, prev_hash=bytes(32)), b1.envelopes, b1.entries,
                       b1.pre_prepare, b1.certificate)
        with pytest.raises(BlockRejected, match="prev_hash"):
            await store.append_blocks([forged], also_persist=extra)
        wrong_chain = Block(replace(b1.header, chain_id=b"x"), b1.envelopes, b1.entries,
                            b1.pre_prepare, b1.certificate)
        with pytest.raises(BlockRejected, match="chain"):
            await store.append_blocks([wrong_chain])
        short = Block(b1.header, b1.envelopes, b1.entries[:-1], b1.pre_prepare, b1.certificate)
        with pytest.raises(BlockRejected, match="entries"):
            await store.append_blocks([short])  # the header counts what the block carries
        b2 = blocks[2]
        unlinked = Block(replace(b2.header, prev_hash=bytes(32)), b2.envelopes, b2.entries,
                         b2.pre_prepare, b2.certificate)
        with pytest.raises(BlockRejected, match="prev_hash"):
            await store.install_blocks([b1, unlinked])  # the second does not link
        assert await _counts(store) == before
        assert await store.head() == blocks[0].header
        await store.install_blocks(blocks[1:])
        assert await store.head() == blocks[2].header
        assert await reader.head_height() == 3
    with_store(dsn, body)


def test_a_write_that_fails_inside_the_database_is_rolled_back_entirely(dsn: str) -> None:
    """Atomicity when PostgreSQL itself refuses a row half-way (here: a record id that is
    already stored, which only a bug could produce): the block row, its envelopes, entries,
    further subjects and the consensus messages of the round go too."""
    first = build([[envelope("alice", 1, [submission("acme", "x", also=("y",))])]])
    fresh = envelope("carol", 50, [submission("acme", "z", also=("w",))])
    good = build([[fresh, envelope("alice", 2, [submission("acme", "x", also=("y",))])]],
                 first[0].header)[0]

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(first)
        before = await _counts(store)
        # Block 2 with its second record under block 1's record id (only a bug could execute
        # a request twice): a unique violation half-way through the entries COPY.
        bad = Block(good.header, good.envelopes, (good.entries[0], replace(
            good.entries[1], record_id=first[0].entries[0].record_id)), good.pre_prepare,
            good.certificate)
        with pytest.raises(psycopg.errors.UniqueViolation):
            await store.append_blocks([bad], also_persist=(h.prepare(1, 0, 2, bytes(32)),))
        assert await _counts(store) == before
        assert await store.head() == first[0].header
        assert await reader.get_block(2) is None
        assert await reader.find_entry(good.entries[0].record_id) is None
        recovered, _ = await store.load_recovered()
        assert recovered.messages == ()
        await store.append_blocks([good])  # the chain goes on from the head
        assert (await store.head()) == good.header
    with_store(dsn, body)


def test_concurrent_tasks_share_the_store_safely(dsn: str) -> None:
    """The driver appends on the writer while query handlers read through the pool."""
    blocks = simple_blocks(6)

    async def writer(store: LedgerStore) -> None:
        for b in blocks:
            await store.append_blocks([b])
            await asyncio.sleep(0)

    async def read(reader: LedgerReader) -> int:
        seen = 0
        for _ in range(30):
            got = await reader.get_blocks(1, 10, 10)
            assert [s.height for s in got] == list(range(1, len(got) + 1))
            assert all(len(s.items) == 4 for s in got)  # never a block half-written
            await reader.find_entry(blocks[0].entries[0].record_id)
            seen = max(seen, len(got))
            await asyncio.sleep(0)
        return seen

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await asyncio.gather(writer(store), read(reader), read(reader))
        assert [s.height for s in await reader.get_blocks(1, 10, 10)] == [1, 2, 3, 4, 5, 6]
    with_store(dsn, body)


# ----------------------------------------------------------------------------------- records

def test_records_are_queryable_and_readable_by_their_readers(dsn: str) -> None:
    batches, r = _mixed_batches()
    s_patient = patient("acme", "patient-7", body=b"hb 13.2")
    r_patient = envelope("carol", 5, [s_patient])
    batches[0] = [*batches[0], r_patient]
    multi = split_items(r["multi"])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await extend(store, reader, *batches)
        rec = await reader.get_record(rid(r["multi"], 0))
        assert rec is not None
        assert (rec.height, rec.idx, rec.envelope, rec.status, rec.kind, rec.subject_id,
                rec.event_type, rec.submitter_org, rec.submitted_at_ms) == (
            1, 0, 0, "recorded", "provenance", "lot-1", "manufactured", "acme", AT_MS)
        assert rec.metadata == {"location": "Rotterdam"}
        assert rec.item == multi[0] and not rec.redacted
        assert rec.readers == ("acme", "regulator")
        assert rec.erasure is None and rec.screening == Screening.ACCEPTED
        # A reader org opens it with what the store returns; others get no key.
        sub = submission_of(multi[0])
        key = await reader.reader_key(rec, "regulator")
        assert key is not None
        assert open_sealed(sub.ciphertext, sub.associated_data(), key,
                           ORG_KEYS["regulator"]) == b"bill of lading"
        assert await reader.reader_key(rec, "globex") is None

        trail = await reader.records_for_subject("provenance", "lot-1")
        assert [(x.height, x.idx, x.event_type) for x in trail] == [
            (1, 0, "manufactured"), (1, 1, "shipped"), (1, 3, "received")]
        # A further subject finds its records too.
        assert [x.record_id for x in await reader.records_for_subject(
            "provenance", "pallet-9")] == [rid(r["multi"], 1)]
        assert [x.record_id for x in await reader.records_for_subject(
            "patient", "patient-7")] == [rid(r_patient)]
        assert await reader.records_for_subject("patient", "lot-1") == []

        ref = await reader.find_entry(rid(r["multi"], 2))
        assert ref is not None and (ref.height, ref.idx, ref.envelope, ref.status) == (
            1, 2, 0, "recorded")
        # Envelopes that did not execute have no entries, only their outcome.
        assert await reader.find_entry(rid(r["wrong_org"], 0)) is None
        assert await reader.find_envelope("bob", 2) == (2, 0, "invalid")
        assert await reader.find_envelope("carol", 5) == (1, 2, "executed")
        # A replay is found where it took effect, not where it was a duplicate.
        assert await reader.find_envelope("alice", 1) == (1, 0, "executed")
        assert await reader.find_envelope("alice", 99) is None
        # Malformed ids are simply unknown.
        assert await reader.find_entry("zz") is None
        assert await reader.get_record("\x00" * 64) is None
        assert await reader.get_record(rid(r["multi"]).upper()) is None

        states = await reader.record_states([rid(r["multi"], 2), rid(r_patient), "zz"])
        assert states == {
            rid(r["multi"], 2): RecordState(RecordKind.PROVENANCE, "lot-2", "acme",
                                            frozenset({"acme", "globex"})),
            rid(r_patient): RecordState(RecordKind.PATIENT, "patient-7", "acme",
                                        frozenset({"acme", "regulator"}))}
        for n in range(3):
            await verify_receipt_of(reader, rid(r["multi"], n), "alice")
        await verify_receipt_of(reader, rid(r_patient), "carol")
        columns = await reader.record_columns(1, 2)
        assert [(c.height, c.idx, c.subject_id, c.readers) for c in columns] == [
            (1, 0, "lot-1", ("acme", "regulator")), (1, 1, "lot-1", ("acme", "regulator")),
            (1, 2, "lot-2", ("acme", "globex")), (1, 3, "lot-1", ("globex", "regulator")),
            (1, 4, "patient-7", ("acme", "regulator"))]
    with_store(dsn, body)


def test_hostile_text_and_huge_nonces_cannot_stall_the_store(dsn: str) -> None:
    """A well-signed envelope whose record carries NUL or other control characters (which
    PostgreSQL text cannot hold) becomes an INVALID envelope on every validator alike, and the
    block still stores (a failing append would halt the validator); a u64 nonce round-trips;
    legitimate non-ASCII text (U+FFFD included) is stored as it is."""
    clean = submission("acme", "lotXA", metadata={"kX": "vX", "note": "caf\u00e9 \ufffd"})
    hostile = clean.encode().replace(b"lotXA", b"lot\x00A").replace(b"kX", b"k\x00")
    r_nul = envelope("alice", 2**64 - 1, [hostile])
    plain_sub = submission("acme", "lot\ufffdA", metadata={"note": "caf\u00e9 \ufffd"})
    r_plain = envelope("carol", 3, [plain_sub])
    r_bad_client = envelope("mallory", 1, [submission("acme", "lot-1")])
    blocks = build([[r_nul, r_plain, r_bad_client]])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(blocks)
        assert await reader.find_envelope("alice", 2**64 - 1) == (1, 0, "invalid")
        assert await reader.find_entry(rid(r_nul)) is None
        stored = await reader.get_block(1)
        assert stored is not None
        assert "item 0" in stored.envelopes[0].reason
        assert "control character" in stored.envelopes[0].reason
        assert stored.envelopes[0].nonce == 2**64 - 1
        assert stored.envelopes[2].status == "invalid"
        trail = await reader.records_for_subject("provenance", "lot\ufffdA")
        assert [x.record_id for x in trail] == [rid(r_plain)]
        assert trail[0].metadata == {"note": "caf\u00e9 \ufffd"}
        assert trail[0].item == plain_sub.encode()
        recovered, _ = await store.load_recovered()
        rebuilt = recovered.executed[0].requests
        assert rebuilt[0].nonce == 2**64 - 1 and rebuilt[0].digest == r_nul.digest
        assert [x.digest for x in rebuilt[:2]] == [r_nul.digest, r_plain.digest]
    with_store(dsn, body)


def test_a_client_id_with_a_control_character_is_refused() -> None:
    """A client id is stored as PostgreSQL text (no NUL) and printed in logs and reports: one
    with a control character cannot be a request at all, so it never reaches storage."""
    for bad in ("mal\x00lory", "mal\nlory", "mal\x7flory"):
        with pytest.raises(ValueError, match="control characters"):
            envelope(bad, 1, [submission("acme", "lot-1")])


# ------------------------------------------------------------------------ every byte once

def _cluster_run(rounds: int, items: int = 2) -> h.Cluster:
    """Four real replicas order `rounds` x 3 envelopes of `items` records (checkpoint every 4
    blocks)."""
    cluster = h.Cluster(h.params(batch_requests_max=2))
    nonce = 0
    for rnd in range(rounds):
        for client in ("alice", "bob", "carol"):
            nonce += 1
            org = ORGS.org_of(client) or ""
            cluster.submit(0, envelope(client, nonce, [
                submission(org, f"lot-{rnd}-{i}", body=bytes([nonce]) * 2000)
                for i in range(items)]))
        cluster.run()
    return cluster


def _drive(store: LedgerStore, actions: Sequence[ev.Action], prev: BlockHeader | None,
           *, batch_persist_with_blocks: bool) -> Callable[[], Awaitable[BlockHeader | None]]:
    """Carry out a replica's actions as the validator's driver does."""
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
                await store.append_blocks([block], also_persist=pending)
                pending = []
                head = block.header
            elif isinstance(a, ev.PersistSnapshot):
                await store.persist_messages(pending)
                pending = []
                await store.persist_snapshot(a.snapshot, a.proof)
        await store.persist_messages(pending)
        return head
    return go


async def _byte_columns(store: LedgerStore) -> list[tuple[str, str, bool]]:
    """(table, column, is an array) of every bytea column of the schema."""
    rows = await fetch(store, "SELECT table_name, column_name, data_type = 'ARRAY' "
                       "FROM information_schema.columns WHERE table_schema = 'public' AND "
                       "udt_name IN ('bytea', '_bytea') ORDER BY table_name, column_name")
    return [(str(t), str(c), bool(a)) for t, c, a in rows]


@pytest.mark.parametrize("together", [True, False], ids=["log-with-blocks", "log-first"])
def test_each_request_byte_is_stored_once(dsn: str, together: bool) -> None:
    """An item's bytes are stored in `entries.item` and nowhere else: the stored proposal is
    the signed header, not the batch; the consensus log holds headers and votes (a proposal's
    batch, persisted with it until its block is stored, is dropped then); the checkpoint and
    the envelope rows hold digests and signatures only."""
    cluster = _cluster_run(rounds=3)
    node = cluster.nodes[1]
    assert node.snapshot is not None
    items = [i for b in node.executed for r in b.requests for i in split_items(r)]
    assert len(items) == 18
    # Each item's ciphertext segment is unique (fresh keys and nonces): where it shows, a
    # copy of the item (or of its confidential part) was stored.
    needles = [submission_of(i).ciphertext for i in items]

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await _drive(store, node.log, None, batch_persist_with_blocks=together)()
        found: dict[tuple[str, str], list[int]] = {}
        for table, column, array in await _byte_columns(store):
            values = [v for (v,) in await fetch(store, f"SELECT {column} FROM {table}")]
            blobs = [bytes(x) for v in values if v is not None for x in (v if array else [v])]
            found[(table, column)] = [sum(n in blob for blob in blobs) for n in needles]
        assert ("blocks", "pre_prepare") in found and ("consensus_log", "data") in found
        for where, counts in found.items():
            assert counts == [1 if where == ("entries", "item") else 0] * len(items), where
        assert found[("entries", "item")] == [1] * len(items)
        # The stored proposal is the header the primary signed; the log holds no batch.
        for height, pp in await fetch(store, "SELECT height, pre_prepare FROM blocks"):
            msg = codec.decode_signed(bytes(pp), CHAIN)
            assert isinstance(msg.body, m.PrePrepare) and msg.body.seq == height
            assert msg.batch is None and len(bytes(pp)) < 400
        kinds = {k for (k,) in await fetch(store, "SELECT DISTINCT kind FROM consensus_log")}
        assert kinds and kinds <= {"PRE_PREPARE", "PREPARE", "COMMIT"}
        for (data,) in await fetch(store, "SELECT data FROM consensus_log"):
            assert codec.decode_signed(bytes(data), CHAIN).batch is None
            assert len(bytes(data)) < 400
    with_store(dsn, body)


# ------------------------------------------------------------------------------ crash recovery

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

    async def body(store: LedgerStore,
                   reader: LedgerReader) -> tuple[Recovered, BlockHeader | None]:
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
        assert [r.payload for r in b.requests] == [r.payload for r in by_seq[b.seq].requests]
    assert list(recovered.messages) == _expected_log(node.persisted, node.snapshot.seq)
    assert [msg.wire for msg in recovered.messages] == [
        msg.wire for msg in _expected_log(node.persisted, node.snapshot.seq)]

    # The replica rebuilt from the database is where the live one was.
    rebuilt = h.make_node(1, node.replica.params, recovered=recovered)
    assert rebuilt.replica.last_executed == node.replica.last_executed
    assert rebuilt.replica.stable_seq == node.replica.stable_seq
    assert rebuilt.replica.view == node.replica.view
    assert rebuilt.replica.state_digest == node.replica.state_digest


def test_load_recovered_rebuilds_requests_that_hash_to_the_stored_digests(dsn: str) -> None:
    """Each executed batch comes back with requests whose digests are the batch's: full
    requests where every item is kept (or the payload was not an envelope), stubs (digest
    only) for replays, refused envelopes and envelopes with an erased item, since those bytes
    are not stored. A replica rebuilt from them reaches the same state."""
    batches, r = _mixed_batches()
    rec = patient("acme", "patient-9")
    r_patient = envelope("carol", 7, [rec, submission("acme", "lot-5")])
    batches[0] = [*batches[0], r_patient]
    r_erase = envelope("carol", 8, [encode_tx(Erase(rid(r_patient), "patient-9", "consent"))])
    batches.append([r_erase])

    async def body(store: LedgerStore, reader: LedgerReader) -> Recovered:
        blocks = await extend(store, reader, *batches)
        assert blocks[2].entries[0].status == EntryStatus.RECORDED
        recovered, head = await store.load_recovered()
        assert head == blocks[-1].header
        return recovered

    recovered = with_store(dsn, body)
    assert recovered.snapshot is None and recovered.messages == ()
    assert [b.seq for b in recovered.executed] == [1, 2, 3]
    originals = [[x.request if isinstance(x, Replay) else x for x in b] for b in batches]
    for b, orig in zip(recovered.executed, originals, strict=True):
        assert [x.digest for x in b.requests] == [x.digest for x in orig]
        pp = b.pre_prepare.body
        assert isinstance(pp, m.PrePrepare) and batch_root(b.requests) == pp.root
    first, second, third = (b.requests for b in recovered.executed)
    assert [x.is_stub for x in first] == [False, False, True]  # carol's record was erased
    assert first[0] == r["multi"] and first[1] == r["single"]
    assert first[2].signature == r_patient.signature and first[2].payload == b""
    assert second[0].is_stub and second[2].is_stub  # a refused envelope, a replay
    assert third[0] == r_erase
    rebuilt = h.make_node(1, recovered=recovered)
    assert rebuilt.replica.last_executed == 3


def test_a_payload_that_is_not_an_envelope_is_kept_as_it_came(dsn: str) -> None:
    """`Envelope.raw` keeps the payload of a request that is not an envelope, so a restart
    rebuilds the request itself rather than a stub, whichever order the validator parsed
    it in (the driver asks `referenced_records` before `build_block`)."""
    batches, r = _mixed_batches()

    async def body(store: LedgerStore, reader: LedgerReader) -> Recovered:
        await extend(store, reader, *batches)
        stored = await reader.get_block(2)
        assert stored is not None and stored.envelopes[1].raw == b"not an envelope"
        recovered, _ = await store.load_recovered()
        return recovered
    recovered = with_store(dsn, body)
    assert recovered.executed[1].requests[1] == r["garbage"]


def test_an_empty_store_recovers_nothing(dsn: str) -> None:
    async def body(store: LedgerStore,
                   reader: LedgerReader) -> tuple[Recovered, BlockHeader | None]:
        return await store.load_recovered()
    assert with_store(dsn, body) == (Recovered(), None)


def test_snapshot_prunes_votes_and_keeps_only_the_latest_view_messages(dsn: str) -> None:
    cluster = _cluster_run(rounds=3, items=1)
    node = cluster.nodes[2]
    snap, proof = node.snapshot, node.snapshot_proof
    assert snap is not None
    d = bytes(32)
    votes = [h.header_of(h.pre_prepare(0, s, [])) for s in (snap.seq - 1, snap.seq, snap.seq + 1)]
    votes += [h.prepare(2, 0, s, d) for s in (snap.seq, snap.seq + 1)]
    votes += [h.commit(2, 0, s, d) for s in (snap.seq, snap.seq + 2)]
    vc1 = h.view_change(2, 1)
    nv1 = h.new_view(1, 1, [h.view_change(i, 1) for i in (0, 1, 2)], [])
    vc2 = h.view_change(2, 2)
    log = [*votes[:3], vc1, nv1, *votes[3:], vc2]

    async def body(store: LedgerStore, reader: LedgerReader) -> Recovered:
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
    cluster = _cluster_run(rounds=5, items=1)
    node = cluster.nodes[1]
    snaps = [a for a in node.log if isinstance(a, ev.PersistSnapshot)]
    assert len(snaps) >= 2

    async def body(store: LedgerStore, reader: LedgerReader) -> Recovered:
        for a in snaps:
            await store.persist_snapshot(a.snapshot, a.proof)
        recovered, _ = await store.load_recovered()
        return recovered
    recovered = with_store(dsn, body)
    assert recovered.snapshot == snaps[-1].snapshot
    assert recovered.snapshot_proof == snaps[-1].proof


def test_persisting_a_non_protocol_message_is_a_bug(dsn: str) -> None:
    status = h.sign(1, m.Status(0, 0, True, 0, 0))

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        with pytest.raises(ValueError, match="Status"):
            await store.persist_messages([status])
    with_store(dsn, body)


# ------------------------------------------------------------------------ readers and erasure

def _regrant(sub: Submission, holder: str, to: str) -> bytes:
    """The record key of `sub`, unwrapped by `holder` and wrapped for `to` (a grant's key)."""
    key = ORG_KEYS[holder].unwrap(dict(sub.wrapped_keys)[holder])
    return wrap_key(key, ORG_KEYS[to].public_key)


def test_reader_keys_come_from_the_item_or_from_the_latest_grant(dsn: str) -> None:
    sub = submission("acme", "lot-7", readers=("regulator",), body=b"certificate of origin")
    r_rec = envelope("alice", 1, [sub])
    record = rid(r_rec)
    key1, key2 = _regrant(sub, "acme", "globex"), _regrant(sub, "regulator", "globex")
    assert key1 != key2

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await extend(store, reader, [r_rec])

        async def key_of(org: str) -> bytes | None:
            rec = await reader.get_record(record)
            assert rec is not None
            return await reader.reader_key(rec, org)

        assert await key_of("regulator") == dict(sub.wrapped_keys)["regulator"]
        assert await key_of("globex") is None
        await extend(store, reader, [envelope("alice", 2, [encode_tx(Grant(record, "globex",
                                                                           key1))])])
        assert await key_of("globex") == key1
        assert open_sealed(sub.ciphertext, sub.associated_data(), key1,
                           ORG_KEYS["globex"]) == b"certificate of origin"
        revoke = envelope("carol", 1, [encode_tx(Revoke(record, "globex"))])
        await extend(store, reader, [revoke])
        assert await key_of("globex") is None
        rec = await reader.get_record(record)
        assert rec is not None and rec.readers == ("acme", "regulator")
        # Granted again with another wrapping: the latest grant's key is the one served.
        await extend(store, reader, [envelope("alice", 3, [encode_tx(Grant(record, "globex",
                                                                           key2))])])
        assert await key_of("globex") == key2
        # A grant the ledger refused (already a reader) changes nothing.
        blocks = await extend(store, reader, [envelope("alice", 4, [encode_tx(Grant(
            record, "globex", key1))])])
        assert blocks[0].entries[0].status == EntryStatus.INVALID
        assert await key_of("globex") == key2
        history = await reader.record_history([record])
        assert [(x.height, x.target_record_id, x.status) for x in history] == [
            (1, None, "recorded"), (2, record, "recorded"), (3, record, "recorded"),
            (4, record, "recorded"), (5, record, "invalid")]
    with_store(dsn, body)


@pytest.mark.parametrize("deletes_ciphertext", [True, False])
def test_erasure_turns_items_into_views_with_the_same_digests(dsn: str,
                                                              deletes_ciphertext: bool) -> None:
    """Right to be forgotten: the record's item and every grant of it become views whose
    digests are the items' (receipts and the chain still verify), its readers are emptied,
    no key is served any more, and by policy the ciphertext goes too."""
    sub = patient("acme", "patient-3", readers=("regulator",), body=b"hb 9.1")
    other = patient("acme", "patient-3", readers=("regulator",), metadata={"lab": "north"})
    r_rec = envelope("carol", 1, [sub, other])
    record = rid(r_rec)
    granted_key = _regrant(sub, "acme", "globex")
    r_grant = envelope("alice", 1, [encode_tx(Grant(record, "globex", granted_key))])
    r_access = envelope("dave", 1, [encode_tx(Access(record, "treatment", AT_MS))])
    r_erase = envelope("carol", 2, [encode_tx(Erase(record, "patient-3", "patient request"))])
    r_late = envelope("alice", 2, [encode_tx(Grant(record, "regulator",
                                                   _regrant(sub, "acme", "regulator")))])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        store.erasure_deletes_ciphertext = deletes_ciphertext
        blocks = await extend(store, reader, [r_rec, r_grant], [r_access], [r_erase],
                              [r_late])
        erase_block = blocks[2].header
        rec = await reader.get_record(record)
        assert rec is not None and rec.redacted and rec.readers == ()
        assert rec.erasure is not None
        assert (rec.erasure.height, rec.erasure.by_org, rec.erasure.at_ms,
                rec.erasure.reason) == (3, "acme", erase_block.timestamp_ms, "patient request")
        view = ItemView.decode(rec.item)
        assert view.digest == item_digest(sub.encode())
        shown = view.present()
        assert shown[0] == sub.associated_data()
        assert shown[1] == (None if deletes_ciphertext else sub.ciphertext)
        assert shown[2:] == [None, None]  # every wrapped key is gone
        for org in ("acme", "regulator", "globex"):
            assert await reader.reader_key(rec, org) is None
        # The grant's key went too; its view keeps the grant's digest.
        stored = await reader.get_block(1)
        assert stored is not None
        grant_item = stored.items[2]
        assert grant_item.redacted
        grant_view = ItemView.decode(grant_item.data)
        assert grant_view.digest == item_digest(split_items(r_grant)[0])
        assert grant_view.present()[1] is None
        # The envelope's other record is untouched; the patient's history lists the erasure.
        kept = await reader.get_record(rid(r_rec, 1))
        assert kept is not None and not kept.redacted and kept.item == other.encode()
        assert [x.record_id for x in await reader.records_for_subject(
            "patient", "patient-3")] == [record, rid(r_rec, 1)]
        history = await reader.subject_history("patient", "patient-3")
        assert [(x.height, x.idx) for x in history] == [(1, 0), (1, 1), (1, 2), (2, 0),
                                                        (3, 0), (4, 0)]
        assert history[-1].status == "invalid"  # a grant after the erasure is refused
        # Receipts of the erased record and of the grant still verify, and so does the chain.
        receipt = await verify_receipt_of(reader, record, "carol")
        assert isinstance(receipt.item, ItemView) and receipt.item.digest == view.digest
        await verify_receipt_of(reader, rid(r_grant), "alice")
        verify_stored_chain(await reader.get_blocks(1, 4, 10))
        # Nothing of the erased keys is left anywhere in the database.
        for table, column, array in await _byte_columns(store):
            for (v,) in await fetch(store, f"SELECT {column} FROM {table}"):
                for blob in (v if array else [v]) if v is not None else []:
                    for key in [k for _o, k in sub.wrapped_keys] + [granted_key]:
                        assert key not in bytes(blob), (table, column)
        access = await reader.access_log(record)
        assert [(a.org, a.granted) for a in access] == [("regulator", True)]
    with_store(dsn, body)


# -------------------------------------------------------------------------------- pagination

def _pages(fetch_page: Callable[[Cursor, int], Awaitable[Sequence[Any]]], limit: int,
           bound: int, full: int = 3) -> Callable[[], Awaitable[list[list[Any]]]]:
    """Every page of a paginated query, following the cursor (height, idx of the last row)
    until a page shorter than `limit` (or `full`, the page size, for limit 0); each page must
    respect `bound`."""
    async def go() -> list[list[Any]]:
        out: list[list[Any]] = []
        after = START
        while True:
            page = list(await fetch_page(after, limit))
            assert len(page) <= bound
            out.append(page)
            if len(page) < (limit or full):
                return out
            after = (page[-1].height, page[-1].idx)
            assert len(out) < 100, "pagination does not end"
    return go


def _positions(rows: Sequence[Any]) -> list[tuple[int, int]]:
    return [(x.height, x.idx) for x in rows]


def test_paginated_queries_list_everything_once_in_bounded_pages(dsn: str) -> None:
    """records_for_subject, subject_history, access_log and records_by_screening: pages hold
    at most the reader's page size plus the one row that tells whether another page follows,
    whatever limit is asked, follow the (height, idx) cursor
    strictly after it, and list every row exactly once in ledger order, even when blocks are
    appended between two pages."""
    subject = "patient-7"
    recs = [patient("acme", subject, metadata={"n": str(i)}) for i in range(7)]
    others = [patient("acme", f"patient-{k}", also=(subject,)) for k in (8, 9)]
    r1 = envelope("carol", 1, recs[:3])
    r2 = envelope("carol", 2, [others[0], recs[3]])
    r3 = envelope("alice", 1, [*recs[4:], others[1]])
    unrelated = envelope("alice", 2, [patient("acme", "patient-1")])
    target = rid(r1, 0)
    accesses = [envelope("carol", 10 + i, [encode_tx(Access(target, f"visit {i}", AT_MS))])
                for i in range(5)]
    denied = envelope("bob", 1, [encode_tx(Access(target, "curiosity", AT_MS))])
    grant = envelope("carol", 20, [encode_tx(Grant(target, "globex",
                                                   _regrant(recs[0], "acme", "globex")))])
    late = envelope("carol", 30, [patient("acme", subject, event="prescription"),
                                  encode_tx(Access(target, "follow-up", AT_MS))])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        store.initial_screening = Screening.PENDING
        await extend(store, reader, [r1, unrelated], [r2, accesses[0]], [r3, *accesses[1:3]],
                     [denied, grant, *accesses[3:]])
        reader.page_size_max = 3
        subject_records = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2),
                           (3, 3)]
        history = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2),
                   (3, 3), (3, 4), (3, 5), (4, 0), (4, 1), (4, 2), (4, 3)]
        access = [(2, 2), (3, 4), (3, 5), (4, 0), (4, 2), (4, 3)]

        queries: dict[str, tuple[Callable[[Cursor, int], Awaitable[Sequence[Any]]], int,
                                 list[tuple[int, int]]]] = {
            "records_for_subject": (lambda a, n: reader.records_for_subject(
                "patient", subject, after=a, limit=n), 4, subject_records),
            "subject_history": (lambda a, n: reader.subject_history(
                "patient", subject, after=a, limit=n), 4, history),
            "access_log": (lambda a, n: reader.access_log(target, after=a, limit=n), 4,
                           access),
            "records_by_screening": (lambda a, n: reader.records_by_screening(
                Screening.PENDING, after=a, limit=n), 4,
                [(1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2),
                 (3, 3)]),
        }
        for name, (query, bound, expected) in queries.items():
            # limit 0 means a full page; a larger limit is capped at the bound.
            assert len(await query(START, 10_000)) == bound, name
            assert _positions(await query(START, 0)) == expected[:3], name
            assert _positions(await query(START, 2)) == expected[:2], name
            assert _positions(await query(expected[3], 2)) == expected[4:6], name
            assert await query(expected[-1], 0) == [], name
            for limit in (0, 1, 2):
                pages = await _pages(query, limit, bound)()
                listed = [p for page in pages for p in _positions(page)]
                assert listed == expected, (name, limit)
                assert all(len(p) == (limit or 3) for p in pages[:-1]), (name, limit)
        denied_rows = [x for x in await reader.access_log(target, after=(3, 5), limit=1)]
        assert [(x.client_id, x.org, x.granted) for x in denied_rows] == [
            ("bob", "globex", False)]

        # Blocks appended between two pages: the cursor resumes after the last row seen.
        first = await reader.records_for_subject("patient", subject, limit=3)
        blocks = await extend(store, reader, [late])
        assert blocks[0].entries[1].reason == ""
        rest = await _pages(lambda a, n: reader.records_for_subject(
            "patient", subject, after=a if a != START else (first[-1].height, first[-1].idx),
            limit=n), 0, 3)()
        listed = _positions(first) + [p for page in rest for p in _positions(page)]
        assert listed == [*subject_records, (5, 0)]
        log_after = await _pages(lambda a, n: reader.access_log(target, after=a, limit=n),
                                 0, 3)()
        assert [p for page in log_after for p in _positions(page)] == [*access, (5, 1)]
    with_store(dsn, body)


# ------------------------------------------------------------------------------------ outages

def _set_connections(dsn: str, allowed: bool) -> None:
    """Allow or refuse new connections to the test's database, and when refusing, end the
    ones it has (pg_terminate_backend): the database is gone until allowed again."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(str(name)), sql.SQL("true" if allowed else "false")))
        if not allowed:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_a_lost_database_raises_store_unavailable_and_the_store_recovers(fresh_dsn: str) -> None:
    """The database goes away mid-run: every write and read says StoreUnavailable (the
    validator stops serving on it), nothing is half-written, and once the database is back
    the writer reconnects by itself (re-taking its lock) and the read pool serves again."""
    blocks = simple_blocks(3)

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.append_blocks(blocks[:1])
        assert await reader.head_height() == 1
        _set_connections(fresh_dsn, False)
        try:
            with pytest.raises(StoreUnavailable, match="PostgreSQL"):
                await store.append_blocks(blocks[1:2], also_persist=(h.prepare(1, 0, 2,
                                                                               bytes(32)),))
            with pytest.raises(StoreUnavailable):  # reconnecting fails while it is gone
                await store.ping()
            with pytest.raises(StoreUnavailable):
                await store.check_writable()
            with pytest.raises(StoreUnavailable):
                await store.persist_messages([h.prepare(1, 0, 2, bytes(32))])
            with pytest.raises(StoreUnavailable):
                await reader.get_block(1)
        finally:
            _set_connections(fresh_dsn, True)
        await store.ping()
        await store.check_writable()  # and what it wrote is gone
        assert await store.head() == blocks[0].header  # nothing of the failed round
        recovered, _ = await store.load_recovered()
        assert recovered.messages == ()
        await store.append_blocks(blocks[1:2])
        deadline = time.monotonic() + 30
        while True:
            try:
                got = await reader.get_blocks(1, 5, 5)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the read pool did not recover"
                await asyncio.sleep(0.2)
        assert [s.height for s in got] == [1, 2]
        # The writer holds the one-process lock again after reconnecting.
        with pytest.raises(WrongDatabase, match="another process"):
            await LedgerStore.open(fresh_dsn, chain_id=CHAIN, replica_id=1)
    with_store(fresh_dsn, body)


# ------------------------------------------------------------------------------- throughput

def test_bulk_append_smoke_50_blocks_of_200_records(dsn: str) -> None:
    """Smoke check of the hot path (no timing assertion): 10,000 records in 50 blocks of 20
    envelopes of 10 items, appended one round of 5 blocks at a time."""
    envelopes, items, count = 20, 10, 50
    subs = [submission(("acme", "globex")[i // items], f"lot-{i % 37}",
                       metadata={"location": f"dock {i}"}) for i in range(2 * items)]
    batches, nonce = [], 0
    for _seq in range(count):
        batch = []
        for e in range(envelopes):
            nonce += 1
            client = ("alice", "bob")[e % 2]
            batch.append(envelope(client, nonce, subs[(e % 2) * items:(e % 2 + 1) * items]))
        batches.append(batch)
    blocks = build(batches)

    async def body(store: LedgerStore, reader: LedgerReader) -> float:
        t0 = time.perf_counter()
        for i in range(0, count, 5):
            await store.append_blocks(blocks[i:i + 5])
        elapsed = time.perf_counter() - t0
        rows = await fetch(store, "SELECT (SELECT count(*) FROM blocks), (SELECT count(*) FROM "
                           "envelopes), (SELECT count(*) FROM entries WHERE kind IS NOT NULL)")
        assert rows == [(count, count * envelopes, count * envelopes * items)]
        assert store.rows_written == count * (1 + envelopes + envelopes * items)
        assert store.bytes_written == sum(len(e.item) for b in blocks for e in b.entries
                                          if isinstance(e.item, bytes))
        page = await reader.records_for_subject("provenance", "lot-0")
        assert page and all(is_record_id(x.record_id) for x in page)
        return elapsed

    elapsed = with_store(dsn, body)
    print(f"\nappend_blocks: {count * envelopes * items / elapsed:,.0f} records/s "
          f"({count / elapsed:,.1f} blocks/s of {envelopes * items})")


def test_access_denied_is_logged_not_granted(dsn: str) -> None:
    """An Access by an org that may not read the record is recorded (the attempt is on the
    ledger) and logged as not granted; its reason says why."""
    rec = patient("acme", "patient-5")
    r_rec = envelope("carol", 1, [rec])
    r_denied = envelope("bob", 1, [encode_tx(Access(rid(r_rec), "curiosity", AT_MS + 5))])

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        blocks = await extend(store, reader, [r_rec], [r_denied])
        entry = blocks[1].entries[0]
        assert (entry.status, entry.reason) == (EntryStatus.RECORDED, ACCESS_DENIED)
        row = await reader.access_at(2, 0)
        assert row is not None
        assert (row.record_id, row.client_id, row.org, row.purpose, row.granted,
                row.at_ms) == (rid(r_rec), "bob", "globex", "curiosity", False, AT_MS + 5)
    with_store(dsn, body)


# --------------------------------------------------- PostgreSQL against the pure model

def _random_batches(rng: random.Random, count: int) -> list[list[m.Request]]:
    """Random envelopes of record submissions and transactions on earlier records (grants,
    revocations, erasures, accesses; some refused by the ledger: not a reader, unknown
    record, already erased), from all four clients."""
    clients = ["alice", "bob", "carol", "dave"]
    nonces = dict.fromkeys(clients, 0)
    records: list[tuple[str, Submission]] = []
    batches = []
    for seq in range(count):
        batch = []
        for _ in range(rng.randint(1, 3)):
            client = rng.choice(clients)
            org = ORGS.org_of(client) or ""
            nonces[client] += 1
            items: list[bytes | Submission] = []
            for k in range(rng.randint(1, 3)):
                op = rng.random() if records else 0.0
                if op < 0.5:
                    kind = rng.choice([RecordKind.PATIENT, RecordKind.PROVENANCE])
                    subject = f"{'P' if kind is RecordKind.PATIENT else 'lot'}-{seq}-{k}"
                    readers = tuple(sorted(rng.sample(sorted(ORG_KEYS), rng.randint(1, 2))))
                    items.append((patient if kind is RecordKind.PATIENT else submission)(
                        org, subject, readers=readers))
                    continue
                target, sub = rng.choice(records)
                to = rng.choice(sorted(ORG_KEYS))
                holder = next(iter(dict(sub.wrapped_keys)))
                tx = (Grant(target, to, _regrant(sub, holder, to)) if op < 0.7
                      else Revoke(target, to) if op < 0.8
                      else Erase(target, sub.subject_id, "asked") if op < 0.85
                      else Access(target, "treatment", AT_MS))
                items.append(encode_tx(tx))
            r = envelope(client, nonces[client], items)
            records += [(record_id(r.digest, k), i) for k, i in enumerate(items)
                        if isinstance(i, Submission)]
            batch.append(r)
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_postgresql_applies_block_effects_as_the_pure_model_does(dsn: str, seed: int) -> None:
    """`ledger.effects.LedgerState` is what the simulator's storage runs on; PostgreSQL applies
    the same effects with SQL. Blocks built from either's record states are the same blocks,
    and after every block both give the same state for every record."""
    batches = _random_batches(random.Random(seed), 12)
    model = LedgerState()

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        ids: set[str] = set()
        prev: BlockHeader | None = None
        for batch in batches:
            refs = referenced_records(batch)
            stored = await extend(store, reader, batch)
            mine = build([batch], prev, model.record_states(refs))[0]
            assert mine.header == stored[0].header
            assert [(e.status, e.reason) for e in mine.entries] == \
                [(e.status, e.reason) for e in stored[0].entries]
            model.apply(mine)
            prev = mine.header
            ids |= {e.record_id for e in mine.entries} | refs
            assert dict(await reader.record_states(ids)) == model.record_states(ids)
        statuses = [i.status for b in await reader.get_blocks(1, 100, 100) for i in b.items]
        assert "invalid" in statuses and "recorded" in statuses  # both paths were taken
    with_store(dsn, body)


def test_a_proposals_batch_is_kept_until_its_block_is_stored(dsn: str) -> None:
    """A replica persists a proposal with its batch before it prepares it: a restart (of
    every replica holding that batch) gets it back; once the block is stored, the log keeps
    the header only (the block holds the bytes)."""
    r = envelope("alice", 1, [submission("acme", "lot-kept")])
    a = execute(1, [r])
    with_batch = replace(a.pre_prepare, batch=(r,))

    async def body(store: LedgerStore, reader: LedgerReader) -> None:
        await store.persist_messages([with_batch, h.prepare(2, 0, 1, a.digest)])
        recovered, _ = await store.load_recovered()
        assert [x.batch for x in recovered.messages] == [(r,), None]
        assert recovered.messages[0].batch[0].digest == r.digest  # type: ignore[index]
        await store.append_blocks(build([[r]]))
        recovered, _ = await store.load_recovered()
        assert [x.batch for x in recovered.messages] == [None, None]
        assert recovered.messages[0].wire == a.pre_prepare.wire
    with_store(dsn, body)
