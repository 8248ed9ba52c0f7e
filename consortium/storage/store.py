"""The validator's durable state in PostgreSQL: blocks, records, the consensus log, checkpoints.

One `LedgerStore` owns one `psycopg.AsyncConnection` (autocommit mode, so that every
`conn.transaction()` is a real BEGIN/COMMIT); an asyncio lock serialises the tasks that share
it (the driver writing, query handlers reading). Every write method is one transaction: after
a crash either all of it is there or none of it.

The store holds no consensus logic. It checks only what keeps the stored chain well-formed
(heights contiguous, `prev_hash` linking to the stored head, the chain id of the database) and
hands back, on restart, exactly what the driver persisted (`load_recovered`).

Hot path: `append_block` writes entries, records and wrapped keys with binary COPY.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from consortium.crypto.hashing import DIGEST_BYTES
from consortium.ledger.blocks import GENESIS_PREV_HASH, Block, BlockHeader, EntryStatus
from consortium.ledger.records import InvalidRecord, Submission, decode_submission
from consortium.pbft import messages as m
from consortium.pbft.codec import (
    DecodeError,
    decode_request,
    decode_signed,
    decode_snapshot,
    encode_request,
    encode_snapshot,
)
from consortium.pbft.replica import ExecutedBatch, Recovered
from consortium.storage.schema import migrate

BLOCKS_PER_QUERY_MAX = 1000
"""Most blocks one `get_blocks` call returns, whatever limit the caller asks for."""
RECORDS_PER_QUERY_MAX = 10_000
"""Most records one `records_for_subject` call returns."""

_VOTE_KINDS = ("PRE_PREPARE", "PREPARE", "COMMIT", "CHECKPOINT")
_VIEW_KINDS = ("VIEW_CHANGE", "NEW_VIEW")
_REPLACEMENT = "\ufffd"


class StoreError(Exception):
    """Base class of the storage layer's own errors."""


class WrongDatabase(StoreError):
    """The database belongs to another chain or another replica."""


class BlockRejected(StoreError):
    """A block that does not extend the stored chain (wrong height, prev_hash or chain id).
    Nothing of it was written."""


class StoreCorrupted(StoreError):
    """Stored bytes that do not decode: the database was damaged or edited."""


@dataclass(frozen=True, slots=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    """`BlockHeader.encode()`, byte-exact."""
    requests: tuple[bytes, ...]
    """`codec.encode_request` of every entry, in batch (Merkle leaf) order."""
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    pre_prepare: bytes
    """Wire bytes of the signed PRE-PREPARE."""
    certificate: tuple[bytes, ...]
    """Wire bytes of the 2f+1 signed COMMITs."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    record_id: str
    height: int
    idx: int
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: dict[str, str]
    ciphertext: bytes
    content_hash: bytes
    """SHA-256 of `ciphertext`."""
    wrapped_keys: dict[str, bytes]
    """Reader organisation -> record key sealed to it."""
    request: bytes
    """The signed request exactly as ordered (`codec.encode_request`)."""
    status: str
    reason: str


def _pg_text(s: str) -> str:
    """PostgreSQL text cannot hold NUL; store U+FFFD instead (readers recover the exact value
    from the signed request bytes, see `_record_from_row`)."""
    return s.replace("\x00", _REPLACEMENT) if "\x00" in s else s


def _message_row(msg: m.SignedMessage) -> tuple[int, int | None, int | None, str, bytes]:
    """(epoch, view, seq, kind, wire) of a message the driver persists."""
    b = msg.body
    if isinstance(b, m.PrePrepare):
        return (b.epoch, b.view, b.seq, "PRE_PREPARE", msg.wire)
    if isinstance(b, m.Prepare):
        return (b.epoch, b.view, b.seq, "PREPARE", msg.wire)
    if isinstance(b, m.Commit):
        return (b.epoch, b.view, b.seq, "COMMIT", msg.wire)
    if isinstance(b, m.Checkpoint):
        return (b.epoch, None, b.seq, "CHECKPOINT", msg.wire)
    if isinstance(b, m.ViewChange):
        return (b.epoch, b.new_view, None, "VIEW_CHANGE", msg.wire)
    if isinstance(b, m.NewView):
        return (b.epoch, b.new_view, None, "NEW_VIEW", msg.wire)
    raise ValueError(f"{type(b).__name__} is not a message the consensus log persists")


class LedgerStore:
    """A validator's PostgreSQL store. Create with `await LedgerStore.open(...)`."""

    def __init__(self, conn: AsyncConnection, chain_id: bytes, replica_id: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        """Serialises use of the one connection: gRPC handlers may query while the driver
        writes, and interleaved transactions on one connection would nest or commit early."""
        self.chain_id = chain_id
        self.replica_id = replica_id

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncCursor[Any]]:
        async with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[AsyncCursor[Any]]:
        async with self._lock, self._conn.cursor() as cur:
            yield cur

    # ------------------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, dsn: str, *, chain_id: bytes, replica_id: int) -> LedgerStore:
        """Connect, migrate, and bind the database to (chain_id, replica_id): a database that
        already belongs to another chain or replica is refused with `WrongDatabase`."""
        if not chain_id:
            raise ValueError("chain_id must not be empty")
        if not 0 <= replica_id < 1 << 16:
            raise ValueError("replica_id must be a u16")
        conn = await AsyncConnection.connect(dsn, autocommit=True)
        try:
            await migrate(conn)
            await cls._bind(conn, chain_id, replica_id)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, chain_id, replica_id)

    @staticmethod
    async def _bind(conn: AsyncConnection, chain_id: bytes, replica_id: int) -> None:
        wanted = {"chain_id": chain_id.hex(), "replica_id": str(replica_id)}
        async with conn.transaction():
            await conn.execute("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
            cur = await conn.execute("SELECT key, value FROM meta WHERE key = ANY(%s)",
                                     (list(wanted),))
            stored = {str(k): str(v) for k, v in await cur.fetchall()}
            for key, value in wanted.items():
                if key in stored and stored[key] != value:
                    raise WrongDatabase(f"this database belongs to {key} {stored[key]}, "
                                        f"not {value}: refusing to open it")
            missing = [(k, v) for k, v in wanted.items() if k not in stored]
            if missing:
                async with conn.cursor() as cur2:
                    await cur2.executemany("INSERT INTO meta (key, value) VALUES (%s, %s)",
                                           missing)
        # One process per validator: a second one would share its keys and could equivocate.
        # A session-level advisory lock is held for as long as this connection lives.
        digest = hashlib.sha256(chain_id + replica_id.to_bytes(4, "big")).digest()
        lock_key = int.from_bytes(digest[:8], "big", signed=True)
        cur3 = await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,))
        row = await cur3.fetchone()
        if row is None or not row[0]:
            raise WrongDatabase(f"another process already runs validator {replica_id} on this "
                                "database; refusing to start a second one")

    async def close(self) -> None:
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> LedgerStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------- consensus log

    async def persist_messages(self, msgs: Sequence[m.SignedMessage]) -> None:
        """Append signed messages (a `Persist` action) to the consensus log, in order."""
        if not msgs:
            return
        rows = [_message_row(msg) for msg in msgs]
        async with self._transaction() as cur:
            await self._insert_messages(cur, rows)

    @staticmethod
    async def _insert_messages(cur: AsyncCursor[Any],
                               rows: list[tuple[int, int | None, int | None, str, bytes]]
                               ) -> None:
        if rows:
            await cur.executemany(
                "INSERT INTO consensus_log (epoch, view, seq, kind, data) "
                "VALUES (%s, %s, %s, %s, %s)", rows)

    async def persist_snapshot(self, snapshot: m.Snapshot,
                               proof: Sequence[m.SignedMessage]) -> None:
        """Store a stable checkpoint (a `PersistSnapshot` action) and prune the consensus log:
        votes at or below its sequence number go, and of the VIEW-CHANGE / NEW-VIEW messages
        only those of the latest (epoch, view) stay."""
        data = encode_snapshot(snapshot)
        async with self._transaction() as cur:
            await cur.execute(
                "INSERT INTO checkpoint (singleton, seq, snapshot, proof) "
                "VALUES (true, %s, %s, %s::bytea[]) ON CONFLICT (singleton) DO UPDATE "
                "SET seq = excluded.seq, snapshot = excluded.snapshot, proof = excluded.proof",
                (snapshot.seq, data, [p.wire for p in proof]))
            await cur.execute(
                "DELETE FROM consensus_log WHERE seq <= %s AND kind = ANY(%s)",
                (snapshot.seq, list(_VOTE_KINDS)))
            await cur.execute(
                "DELETE FROM consensus_log WHERE kind = ANY(%(kinds)s) AND (epoch, view) < ("
                " SELECT epoch, view FROM consensus_log WHERE kind = ANY(%(kinds)s)"
                " ORDER BY epoch DESC, view DESC LIMIT 1)",
                {"kinds": list(_VIEW_KINDS)})

    async def load_recovered(self) -> tuple[Recovered, BlockHeader | None]:
        """What a restarting replica needs: the stable checkpoint and its proof, every executed
        block above it, and the consensus log in the order it was written; plus the head."""
        async with self._transaction() as cur:
            await cur.execute("SELECT snapshot, proof FROM checkpoint")
            row = await cur.fetchone()
            snapshot: m.Snapshot | None = None
            proof: tuple[m.SignedMessage, ...] = ()
            if row is not None:
                try:
                    snapshot = decode_snapshot(bytes(row[0]), self.chain_id)
                except DecodeError as exc:
                    raise StoreCorrupted(f"stored checkpoint does not decode: {exc}") from exc
                proof = tuple(self._decode_signed(bytes(p), "checkpoint proof")
                              for p in row[1])
            above = -1 if snapshot is None else snapshot.seq
            await cur.execute(
                "SELECT height, pre_prepare, certificate FROM blocks WHERE height > %s "
                "ORDER BY height", (above,))
            executed = tuple(
                ExecutedBatch(int(h), self._decode_signed(bytes(pp), f"block {h} pre-prepare"),
                              tuple(self._decode_signed(bytes(c), f"block {h} certificate")
                                    for c in cert))
                for h, pp, cert in await cur.fetchall())
            await cur.execute("SELECT id, data FROM consensus_log ORDER BY id")
            messages = tuple(self._decode_signed(bytes(d), f"consensus log row {i}")
                             for i, d in await cur.fetchall())
            head = await self._head(cur)
        return Recovered(snapshot, proof, executed, messages), head

    def _decode_signed(self, data: bytes, what: str) -> m.SignedMessage:
        try:
            return decode_signed(data, self.chain_id)
        except DecodeError as exc:
            raise StoreCorrupted(f"stored {what} does not decode: {exc}") from exc

    # ----------------------------------------------------------------------------- blocks

    async def append_block(self, block: Block, *,
                           also_persist: Sequence[m.SignedMessage] = ()) -> None:
        """Write one executed block (header, entries, records, wrapped keys) and optionally
        consensus messages, in one transaction. Raises `BlockRejected` unless the block is
        head+1 and links to the head's hash; then nothing is written."""
        rows = [_message_row(msg) for msg in also_persist]
        async with self._transaction() as cur:
            head = await self._head(cur)
            self._check_extends(head, block)
            await self._insert_blocks(cur, [block])
            await self._insert_messages(cur, rows)

    async def install_blocks(self, blocks: Sequence[Block]) -> None:
        """State transfer: write fetched blocks (already verified by the caller) in one
        transaction, with the same chain checks as `append_block`."""
        if not blocks:
            return
        async with self._transaction() as cur:
            prev = await self._head(cur)
            for b in blocks:
                self._check_extends(prev, b)
                prev = b.header
            await self._insert_blocks(cur, blocks)

    def _check_extends(self, head: BlockHeader | None, block: Block) -> None:
        h = block.header
        if h.chain_id != self.chain_id:
            raise BlockRejected(f"block {h.height} is for chain {h.chain_id.hex()}, "
                                f"not {self.chain_id.hex()}")
        expected_height = 1 if head is None else head.height + 1
        if h.height != expected_height:
            raise BlockRejected(f"block height {h.height} does not extend the stored head "
                                f"(expected height {expected_height})")
        expected_prev = GENESIS_PREV_HASH if head is None else head.hash()
        if h.prev_hash != expected_prev:
            raise BlockRejected(f"block {h.height} prev_hash {h.prev_hash.hex()} does not match "
                                f"the stored head hash {expected_prev.hex()}")
        if h.entry_count != len(block.entries):
            raise BlockRejected(f"block {h.height} header says {h.entry_count} entries, "
                                f"carries {len(block.entries)}")

    async def _insert_blocks(self, cur: AsyncCursor[Any], blocks: Sequence[Block]) -> None:
        block_rows = []
        entry_rows: list[tuple[Any, ...]] = []
        record_rows: list[tuple[Any, ...]] = []
        key_rows: list[tuple[str, str, bytes]] = []
        for block in blocks:
            h = block.header
            block_rows.append((h.height, block.hash, h.prev_hash, h.epoch, h.view, h.merkle_root,
                               h.state_digest, h.entry_count, h.timestamp_ms, h.encode(),
                               block.pre_prepare.wire, [c.wire for c in block.certificate]))
            for e in block.entries:
                r = e.request
                record_id = e.record_id
                entry_rows.append((h.height, e.index, record_id, _pg_text(r.client_id), r.nonce,
                                   e.status, _pg_text(e.reason), encode_request(r)))
                sub = e.submission
                if e.status != EntryStatus.RECORDED or sub is None:
                    continue
                record_rows.append((
                    record_id, h.height, e.index, sub.kind.value, _pg_text(sub.subject_id),
                    _pg_text(sub.event_type), _pg_text(sub.submitter_org), sub.submitted_at_ms,
                    Jsonb({_pg_text(k): _pg_text(v) for k, v in sub.metadata}),
                    sub.ciphertext, hashlib.sha256(sub.ciphertext).digest()))
                key_rows.extend((record_id, _pg_text(org), key) for org, key in sub.wrapped_keys)
        await cur.executemany(
            "INSERT INTO blocks (height, hash, prev_hash, epoch, view, merkle_root, "
            "state_digest, entry_count, timestamp_ms, header, pre_prepare, certificate) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bytea[])", block_rows)
        await _copy(cur, "entries", ("height", "idx", "record_id", "client_id", "nonce", "status",
                                     "reason", "request"),
                    ("int8", "int4", "text", "text", "numeric", "text", "text", "bytea"),
                    entry_rows)
        await _copy(cur, "records", ("record_id", "height", "idx", "kind", "subject_id",
                                     "event_type", "submitter_org", "submitted_at_ms", "metadata",
                                     "ciphertext", "content_hash"),
                    ("text", "int8", "int4", "text", "text", "text", "text", "int8", "jsonb",
                     "bytea", "bytea"), record_rows)
        await _copy(cur, "wrapped_keys", ("record_id", "org", "wrapped_key"),
                    ("text", "text", "bytea"), key_rows)

    # ----------------------------------------------------------------------------- queries

    async def head(self) -> BlockHeader | None:
        async with self._cursor() as cur:
            return await self._head(cur)

    async def _head(self, cur: AsyncCursor[Any]) -> BlockHeader | None:
        await cur.execute("SELECT header FROM blocks ORDER BY height DESC LIMIT 1")
        row = await cur.fetchone()
        if row is None:
            return None
        try:
            return BlockHeader.decode(bytes(row[0]))
        except DecodeError as exc:
            raise StoreCorrupted(f"stored head header does not decode: {exc}") from exc

    async def get_block(self, height: int) -> StoredBlock | None:
        blocks = await self.get_blocks(height, height, 1)
        return blocks[0] if blocks else None

    async def get_blocks(self, from_h: int, to_h: int, limit: int) -> list[StoredBlock]:
        """Blocks with from_h <= height <= to_h, ascending, at most
        min(limit, BLOCKS_PER_QUERY_MAX) of them."""
        limit = min(limit, BLOCKS_PER_QUERY_MAX)
        if limit < 1 or to_h < from_h:
            return []
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT height, hash, header, pre_prepare, certificate FROM blocks "
                "WHERE height BETWEEN %s AND %s ORDER BY height LIMIT %s", (from_h, to_h, limit))
            rows = await cur.fetchall()
            if not rows:
                return []
            await cur.execute(
                "SELECT height, request, status, reason FROM entries "
                "WHERE height BETWEEN %s AND %s ORDER BY height, idx",
                (int(rows[0][0]), int(rows[-1][0])))
            entries: dict[int, list[tuple[bytes, str, str]]] = {}
            for h, req, status, reason in await cur.fetchall():
                entries.setdefault(int(h), []).append((bytes(req), str(status), str(reason)))
        out = []
        for h, block_hash, header, pp, cert in rows:
            es = entries.get(int(h), [])
            out.append(StoredBlock(
                height=int(h), hash=bytes(block_hash), header=bytes(header),
                requests=tuple(e[0] for e in es), statuses=tuple(e[1] for e in es),
                reasons=tuple(e[2] for e in es), pre_prepare=bytes(pp),
                certificate=tuple(bytes(c) for c in cert)))
        return out

    async def find_entry(self, record_id: str) -> tuple[int, int, str, str] | None:
        """(height, idx, status, reason) of the entry that carried this request: the one that
        took effect if any, else the earliest."""
        if not _is_record_id(record_id):
            return None
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, status, reason FROM entries WHERE record_id = %s "
                "ORDER BY (status = 'duplicate'), height, idx LIMIT 1", (record_id,))
            row = await cur.fetchone()
        if row is None:
            return None
        return int(row[0]), int(row[1]), str(row[2]), str(row[3])

    async def get_record(self, record_id: str) -> StoredRecord | None:
        if not _is_record_id(record_id):
            return None
        async with self._cursor() as cur:
            await cur.execute(_RECORD_SELECT + "WHERE r.record_id = %s", (record_id,))
            row = await cur.fetchone()
        return None if row is None else _record_from_row(row)

    async def records_for_subject(self, kind: str, subject_id: str) -> list[StoredRecord]:
        """Records of one product/lot or patient, in ledger order (height, idx); at most
        RECORDS_PER_QUERY_MAX."""
        async with self._cursor() as cur:
            await cur.execute(
                _RECORD_SELECT + "WHERE r.kind = %s AND r.subject_id = %s "
                "ORDER BY r.height, r.idx LIMIT %s",
                (_pg_text(kind), _pg_text(subject_id), RECORDS_PER_QUERY_MAX))
            rows = await cur.fetchall()
        out = [_record_from_row(row) for row in rows]
        # Two subject ids that differ only where one has NUL and the other U+FFFD share a
        # stored value; the exact one comes from the signed request.
        return [r for r in out if r.subject_id == subject_id and r.kind == kind]


_RECORD_SELECT = (
    "SELECT r.record_id, r.height, r.idx, r.kind, r.subject_id, r.event_type, r.submitter_org, "
    "r.submitted_at_ms, r.metadata::text, r.ciphertext, r.content_hash, "
    "coalesce((SELECT array_agg(w.org ORDER BY w.org) FROM wrapped_keys w "
    "          WHERE w.record_id = r.record_id), '{}'), "
    "coalesce((SELECT array_agg(w.wrapped_key ORDER BY w.org) FROM wrapped_keys w "
    "          WHERE w.record_id = r.record_id), '{}'), "
    "e.request, e.status, e.reason "
    "FROM records r JOIN entries e ON e.height = r.height AND e.idx = r.idx ")


def _is_record_id(record_id: str) -> bool:
    if len(record_id) != 2 * DIGEST_BYTES:
        return False
    try:
        bytes.fromhex(record_id)
    except ValueError:
        return False
    return record_id == record_id.lower()


def _record_from_row(row: tuple[Any, ...]) -> StoredRecord:
    (record_id, height, idx, kind, subject_id, event_type, submitter_org, submitted_at_ms,
     metadata_json, ciphertext, content_hash, orgs, keys, request, status, reason) = row
    metadata = json.loads(metadata_json)
    if not isinstance(metadata, dict):
        raise StoreCorrupted(f"record {record_id}: metadata is not an object")
    rec = StoredRecord(
        record_id=str(record_id), height=int(height), idx=int(idx), kind=str(kind),
        subject_id=str(subject_id), event_type=str(event_type),
        submitter_org=str(submitter_org), submitted_at_ms=int(submitted_at_ms),
        metadata={str(k): str(v) for k, v in metadata.items()}, ciphertext=bytes(ciphertext),
        content_hash=bytes(content_hash),
        wrapped_keys={str(o): bytes(k) for o, k in zip(orgs, keys, strict=True)},
        request=bytes(request), status=str(status), reason=str(reason))
    texts: Iterable[str] = (rec.subject_id, rec.event_type, rec.submitter_org,
                            *rec.metadata, *rec.metadata.values(), *rec.wrapped_keys)
    if any(_REPLACEMENT in t for t in texts):
        return _exact_record(rec)
    return rec


def _exact_record(rec: StoredRecord) -> StoredRecord:
    """The record's text fields as signed (the stored columns had NUL replaced)."""
    try:
        sub: Submission = decode_submission(decode_request(rec.request).payload)
    except (DecodeError, InvalidRecord) as exc:
        raise StoreCorrupted(f"record {rec.record_id}: stored request does not decode: "
                             f"{exc}") from exc
    return StoredRecord(
        record_id=rec.record_id, height=rec.height, idx=rec.idx, kind=sub.kind.value,
        subject_id=sub.subject_id, event_type=sub.event_type, submitter_org=sub.submitter_org,
        submitted_at_ms=sub.submitted_at_ms, metadata=dict(sub.metadata),
        ciphertext=rec.ciphertext, content_hash=rec.content_hash,
        wrapped_keys=dict(sub.wrapped_keys), request=rec.request, status=rec.status,
        reason=rec.reason)


async def _copy(cur: AsyncCursor[Any], table: str, columns: tuple[str, ...],
                types: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Binary COPY of `rows` into `table` (identifiers are this module's constants)."""
    if not rows:
        return
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    async with cur.copy(statement.encode()) as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)
