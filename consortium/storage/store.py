"""The validator's durable state in PostgreSQL, written on the consensus path.

`LedgerStore` owns the writer connection (autocommit mode, so every `conn.transaction()` is a
real BEGIN/COMMIT): the consensus log, stable checkpoints, executed blocks and their effects.
Reads that serve clients go through `LedgerReader` (reads.py) on a pool of their own, so a heavy
query never waits for, or holds up, a block write.

The store holds no consensus logic. It checks only what keeps the stored chain well-formed
(heights contiguous, `prev_hash` linking to the stored head, the chain id of the database) and
hands back, on restart, exactly what the driver persisted (`load_recovered`).

Hot path (`append_blocks`): one transaction per consensus round; every table gets one binary
COPY per round; each request's bytes are written once (items in `entries`, the rest of the
request in `envelopes`, the proposal as its signed header in `blocks`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from consortium.ledger.blocks import (
    GENESIS_PREV_HASH,
    SCREENING_OUTCOME,
    Block,
    BlockHeader,
    Entry,
    EntryStatus,
    Envelope,
    Screening,
    stored_request,
)
from consortium.ledger.items import ItemView
from consortium.ledger.membership import MEMBERSHIP_OUTCOME
from consortium.ledger.records import PublicRecord, decode_public
from consortium.ledger.transactions import (
    Access,
    Erase,
    Grant,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RemoveRequest,
    ReviewVote,
    Revoke,
    TxType,
    Verdict,
    parse_key_segment,
    target_of,
)
from consortium.pbft import messages as m
from consortium.pbft.codec import (
    DecodeError,
    decode_signed,
    decode_snapshot,
    encode_batch,
    encode_snapshot,
)
from consortium.pbft.replica import ExecutedBatch, Recovered
from consortium.storage.rows import (
    BlockRejected,
    StoreCorrupted,
    StoreUnavailable,
    WrongDatabase,
)
from consortium.storage.schema import migrate

_VOTE_KINDS = ("PRE_PREPARE", "PREPARE", "COMMIT")
_VIEW_KINDS = ("VIEW_CHANGE", "NEW_VIEW")
_REPLACEMENT = "\ufffd"
WRITE_PROBE_BYTES = 1 << 20
"""What `check_writable` writes (and rolls back): more than a page, so a full disk shows."""

ENTRY_COLUMNS = ("height", "idx", "envelope", "item_index", "record_id", "status", "reason",
                 "tx_type", "target_record_id", "item", "redacted", "kind", "subject_id",
                 "event_type", "submitter_org", "submitted_at_ms", "metadata", "readers",
                 "screening")
ENTRY_TYPES = ("int8", "int4", "int4", "int4", "text", "text", "text", "int2", "text", "bytea",
               "bool", "text", "text", "text", "text", "int8", "jsonb", "text[]", "text")
ENVELOPE_COLUMNS = ("height", "idx", "client_id", "nonce", "kind", "signature",
                    "payload_digest", "status", "reason", "first_entry", "entry_count", "raw")
ENVELOPE_TYPES = ("int8", "int4", "text", "numeric", "int2", "bytea", "bytea", "text", "text",
                  "int4", "int4", "bytea")
BLOCK_COLUMNS = ("height", "hash", "epoch", "timestamp_ms", "header", "pre_prepare",
                 "certificate")
BLOCK_TYPES = ("int8", "bytea", "int8", "int8", "bytea", "bytea", "bytea[]")


def pg_text(s: str) -> str:
    """PostgreSQL text cannot hold NUL; store U+FFFD instead (record fields never contain
    control characters; client ids and reasons might)."""
    return s.replace("\x00", _REPLACEMENT) if "\x00" in s else s


def _message_row(msg: m.SignedMessage
                 ) -> tuple[int, int | None, int | None, str, bytes, bytes | None]:
    """(epoch, view, seq, kind, wire, attached batch) of a message the driver persists."""
    b = msg.body
    if isinstance(b, m.PrePrepare):
        batch = None if msg.batch is None else encode_batch(msg.batch)
        return (b.epoch, b.view, b.seq, "PRE_PREPARE", msg.wire, batch)
    if isinstance(b, m.Prepare):
        return (b.epoch, b.view, b.seq, "PREPARE", msg.wire, None)
    if isinstance(b, m.Commit):
        return (b.epoch, b.view, b.seq, "COMMIT", msg.wire, None)
    if isinstance(b, m.ViewChange):
        return (b.epoch, b.new_view, None, "VIEW_CHANGE", msg.wire, None)
    if isinstance(b, m.NewView):
        return (b.epoch, b.new_view, None, "NEW_VIEW", msg.wire, None)
    raise ValueError(f"{type(b).__name__} is not a message the consensus log persists")


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL: {str(exc).strip().splitlines()[0][:300]}")


async def copy_rows(cur: AsyncCursor[Any], table: str, columns: Sequence[str],
                    types: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Binary COPY of `rows` into `table` (identifiers are this package's constants)."""
    if not rows:
        return
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    async with cur.copy(statement.encode()) as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


class LedgerStore:
    """A validator's PostgreSQL writer. Create with `await LedgerStore.open(...)`."""

    def __init__(self, conn: AsyncConnection, chain_id: bytes, replica_id: int,
                 dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn
        self._lock = asyncio.Lock()
        """Serialises use of the writer connection (the driver and state transfer)."""
        self.chain_id = chain_id
        self.replica_id = replica_id
        self.erasure_deletes_ciphertext = True
        """Genesis policy (DataPolicy): the validator sets it after opening."""
        self.initial_screening = Screening.ACCEPTED
        """pending-screening when genesis names an admission service (the validator sets
        it)."""
        self.rows_written = 0
        self.bytes_written = 0
        """Rows and payload bytes sent to PostgreSQL by block writes (metrics)."""

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncCursor[Any]]:
        async with self._lock:
            if self._conn.closed or self._conn.broken:
                await self._reconnect()
            try:
                async with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except (psycopg.OperationalError, psycopg.errors.DiskFull,
                    psycopg.errors.InsufficientResources) as exc:
                raise _unavailable(exc) from exc

    async def _reconnect(self) -> None:
        """The database went away (restart, network): open a new writer connection, re-taking
        the one-process lock. Raises StoreUnavailable while it cannot."""
        try:
            conn = await AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc
        try:
            await self._bind(conn, self.chain_id, self.replica_id)
        except BaseException:
            await conn.close()
            raise
        old, self._conn = self._conn, conn
        await old.close()

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
        return cls(conn, chain_id, replica_id, dsn)

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

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers (health checks)."""
        async with self._transaction() as cur:
            await cur.execute("SELECT 1")

    async def check_writable(self) -> None:
        """Raise StoreUnavailable unless the database takes `WRITE_PROBE_BYTES` of new data
        (table pages and WAL), then roll it back: a database with a full disk still answers
        reads, and a validator that said SERVING on a ping would fail its next block."""
        async with self._lock:
            if self._conn.closed or self._conn.broken:
                await self._reconnect()
            try:
                async with self._conn.transaction(force_rollback=True), \
                        self._conn.cursor() as cur:
                    await cur.execute(
                        "INSERT INTO write_probe SELECT string_agg(md5(g::text), '') "
                        "FROM generate_series(1, %s) g", (WRITE_PROBE_BYTES // 32,))
            except psycopg.Error as exc:
                raise _unavailable(exc) from exc

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
    async def _insert_messages(
            cur: AsyncCursor[Any],
            rows: list[tuple[int, int | None, int | None, str, bytes, bytes | None]]) -> None:
        await copy_rows(cur, "consensus_log", ("epoch", "view", "seq", "kind", "data", "batch"),
                        ("int8", "int8", "int8", "text", "bytea", "bytea"), rows)

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
        block above it (with its requests, rebuilt from the stored envelopes and items), and
        the consensus log in the order it was written; plus the head."""
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
            blocks = await cur.fetchall()
            requests = await self._requests_above(cur, above)
            executed = tuple(ExecutedBatch(
                int(h), self._decode_signed(bytes(pp), f"block {h} pre-prepare"),
                tuple(self._decode_signed(bytes(c), f"block {h} certificate") for c in cert),
                tuple(requests.get(int(h), ()))) for h, pp, cert in blocks)
            await cur.execute("SELECT id, data, batch FROM consensus_log ORDER BY id")
            messages = tuple(self._decode_signed(bytes(d) + (b"" if b is None else bytes(b)),
                                                 f"consensus log row {i}")
                             for i, d, b in await cur.fetchall())
            head = await self._head(cur)
        return Recovered(snapshot, proof, executed, messages), head

    async def _requests_above(self, cur: AsyncCursor[Any],
                              above: int) -> dict[int, list[m.Request]]:
        """The requests of the blocks above `above`, in batch order: full requests where
        every item is kept, stubs (digest only) for replays, invalid envelopes and erased
        items."""
        await cur.execute(
            "SELECT height, idx, item, redacted FROM entries WHERE height > %s "
            "ORDER BY height, idx", (above,))
        items: dict[tuple[int, int], tuple[bytes, bool]] = {
            (int(h), int(i)): (bytes(it), bool(red)) for h, i, it, red in await cur.fetchall()}
        await cur.execute(
            "SELECT height, client_id, nonce, kind, signature, payload_digest, status, "
            "first_entry, entry_count, raw FROM envelopes WHERE height > %s "
            "ORDER BY height, idx", (above,))
        out: dict[int, list[m.Request]] = {}
        for (h, client_id, nonce, kind, sig, pd, status, first, count, raw) in \
                await cur.fetchall():
            height = int(h)
            try:
                env = Envelope(len(out.get(height, ())), str(client_id), int(nonce),
                               m.RequestKind(int(kind)), bytes(sig), bytes(pd), str(status),
                               first_entry=int(first), entry_count=int(count),
                               raw=None if raw is None else bytes(raw))
                kept = [items[(height, int(first) + k)] for k in range(int(count))]
                r = stored_request(env, [ItemView.decode(d) if red else d
                                         for d, red in kept])
            except (KeyError, ValueError, DecodeError) as exc:
                raise StoreCorrupted(f"block {height}: a stored request does not rebuild: "
                                     f"{exc}") from exc
            out.setdefault(height, []).append(r)
        return out

    def _decode_signed(self, data: bytes, what: str) -> m.SignedMessage:
        try:
            return decode_signed(data, self.chain_id)
        except DecodeError as exc:
            raise StoreCorrupted(f"stored {what} does not decode: {exc}") from exc

    # ----------------------------------------------------------------------------- blocks

    async def append_blocks(self, blocks: Sequence[Block], *,
                            also_persist: Sequence[m.SignedMessage] = (),
                            wait_for_disk: bool = True) -> None:
        """Consecutive executed blocks and consensus messages in one transaction (a consensus
        round's worth: one commit, one fsync). Raises `BlockRejected` unless the blocks extend
        the stored head (height and hash link); then nothing is written.

        `wait_for_disk=False` (only without messages to persist) commits without waiting for
        the WAL flush (PostgreSQL's per-transaction `synchronous_commit = off`): a crash may
        lose the last such blocks, never a part of one, and never a transaction before a later
        one that waited. The driver uses it for rounds that only execute: a committed batch is
        re-executed identically from the consensus log and retransmitted certificates."""
        stored = blocks[-1].header.height if blocks else 0
        # A proposal whose block is in this transaction needs no batch of its own in the log.
        rows = [r if r[2] is None or r[2] > stored else (*r[:5], None)
                for r in (_message_row(msg) for msg in also_persist)]
        async with self._transaction() as cur:
            if not wait_for_disk and not rows:
                await cur.execute("SET LOCAL synchronous_commit = off")
            if blocks:
                prev = await self._head(cur)
                for b in blocks:
                    self._check_extends(prev, b)
                    prev = b.header
                await self._insert_blocks(cur, blocks)
                await cur.execute("UPDATE consensus_log SET batch = NULL WHERE batch IS NOT NULL "
                                  "AND seq <= %s", (stored,))
            await self._insert_messages(cur, rows)

    async def install_blocks(self, blocks: Sequence[Block]) -> None:
        """State transfer: write fetched blocks (already verified by the caller) in one
        transaction, with the same chain checks as `append_blocks`."""
        await self.append_blocks(blocks)

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
        if h.entry_count != len(block.entries) or h.request_count != len(block.envelopes):
            raise BlockRejected(f"block {h.height} header says {h.request_count} requests and "
                                f"{h.entry_count} entries, carries {len(block.envelopes)} and "
                                f"{len(block.entries)}")

    async def _insert_blocks(self, cur: AsyncCursor[Any], blocks: Sequence[Block]) -> None:
        block_rows: list[tuple[Any, ...]] = []
        envelope_rows: list[tuple[Any, ...]] = []
        entry_rows: list[tuple[Any, ...]] = []
        subject_rows: list[tuple[Any, ...]] = []
        size = 0
        for block in blocks:
            h = block.header
            block_rows.append((h.height, block.hash, h.epoch, h.timestamp_ms, h.encode(),
                               block.pre_prepare.wire, [c.wire for c in block.certificate]))
            for env in block.envelopes:
                envelope_rows.append((h.height, env.index, pg_text(env.client_id), env.nonce,
                                      int(env.kind), env.signature, env.payload_digest,
                                      env.status, pg_text(env.reason), env.first_entry,
                                      env.entry_count, env.raw))
                size += 0 if env.raw is None else len(env.raw)
            for e in block.entries:
                row, also = self._entry_row(h.height, e)
                entry_rows.append(row)
                size += len(row[9])
                subject_rows.extend(also)
        await copy_rows(cur, "blocks", BLOCK_COLUMNS, BLOCK_TYPES, block_rows)
        await copy_rows(cur, "envelopes", ENVELOPE_COLUMNS, ENVELOPE_TYPES, envelope_rows)
        await copy_rows(cur, "entries", ENTRY_COLUMNS, ENTRY_TYPES, entry_rows)
        await copy_rows(cur, "record_subjects", ("kind", "subject_id", "height", "idx"),
                        ("text", "text", "int8", "int4"), subject_rows)
        self.rows_written += len(block_rows) + len(envelope_rows) + len(entry_rows) + len(
            subject_rows)
        self.bytes_written += size
        for block in blocks:
            for e in block.entries:
                if e.status == EntryStatus.RECORDED and e.action is not None:
                    await self._apply_action(cur, block.header, e)

    def _entry_row(self, height: int, e: Entry) -> tuple[tuple[Any, ...],
                                                         list[tuple[Any, ...]]]:
        """The entries row of an item, with its record columns when it is a recorded record
        (from the submission, or after an erasure from what the view still shows), and the
        record_subjects rows of its further subjects."""
        if isinstance(e.item, ItemView):
            data, redacted = e.item.encode(), True
        else:
            data, redacted = e.item, False
        target = None if e.action is None else target_of(e.action)
        tx_type = TxType.RECORD if e.action is None else _tx_type(e.action)
        record: tuple[Any, ...] = (None,) * 8
        also: list[tuple[Any, ...]] = []
        public = _public_of(e)
        if public is not None:
            readers = sorted(e.submission.readers) if e.submission is not None else sorted(
                _view_readers(e.item))
            record = (public.kind.value, public.subject_id, public.event_type,
                      public.submitter_org, public.submitted_at_ms,
                      Jsonb(dict(public.metadata)), readers, self.initial_screening)
            also = [(public.kind.value, s, height, e.index) for s in public.also]
        row = (height, e.index, e.envelope, e.item_index, e.record_id, e.status,
               pg_text(e.reason), int(tx_type), target, data, redacted, *record)
        return row, also

    async def _apply_action(self, cur: AsyncCursor[Any], header: BlockHeader, e: Entry) -> None:
        """The effect of a recorded grant/revoke/erase/access/verdict/vote (judged by
        `build_block`, or by the peer a state-transferred block came from)."""
        a = e.action
        org = pg_text(e.sender_org or "")
        if isinstance(a, Grant):
            if a.wrapped_key:  # withheld when the record was erased since
                await cur.execute(
                    "UPDATE entries SET readers = array_append(readers, %(org)s) "
                    "WHERE record_id = %(rid)s AND erased_height IS NULL "
                    "AND NOT (%(org)s = ANY(readers))", {"org": a.org, "rid": a.record_id})
        elif isinstance(a, Revoke):
            await cur.execute("UPDATE entries SET readers = array_remove(readers, %s) "
                              "WHERE record_id = %s", (a.org, a.record_id))
        elif isinstance(a, Access):
            await cur.execute(
                "INSERT INTO access_log (height, idx, record_id, client_id, org, purpose, "
                "granted, at_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (header.height, e.index, a.record_id, pg_text(e.client_id), org,
                 a.purpose, e.reason == "", a.requested_at_ms))
        elif isinstance(a, Erase):
            await self._erase(cur, a.record_id, header, org, a.reason)
        elif isinstance(a, Verdict):
            await cur.execute(
                "INSERT INTO verdicts (height, idx, record_id, decision, risk_milli, verdict) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (header.height, e.index, a.record_id, a.decision, a.risk_milli,
                 pg_text(a.verdict_json)))
        elif isinstance(a, ReviewVote):
            voter = int(e.client_id.removeprefix("validator-"))
            await cur.execute(
                "INSERT INTO review_votes (record_id, replica_id, accept, height, idx) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (a.record_id, voter, a.accept, header.height, e.index))
        elif isinstance(a, JoinRequest | RemoveRequest):
            await self._insert_proposal(cur, header, e, a)
        elif isinstance(a, MemberVote):
            voter = int(e.client_id.removeprefix("validator-"))
            await cur.execute(
                "INSERT INTO member_votes (proposal_id, epoch, replica_id, approve, approval, "
                "height, idx) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (a.proposal_id, a.from_epoch, voter, a.approve, a.approval, header.height,
                 e.index))
            if e.reason.startswith(MEMBERSHIP_OUTCOME):
                await cur.execute(
                    "UPDATE proposals SET status = %s, decided_height = %s "
                    "WHERE proposal_id = %s",
                    (e.reason.removeprefix(MEMBERSHIP_OUTCOME), header.height, a.proposal_id))
        if e.reason.startswith(SCREENING_OUTCOME) and isinstance(a, Verdict | ReviewVote):
            await cur.execute("UPDATE entries SET screening = %s WHERE record_id = %s",
                              (e.reason.removeprefix(SCREENING_OUTCOME), a.record_id))

    @staticmethod
    async def _insert_proposal(cur: AsyncCursor[Any], header: BlockHeader, e: Entry,
                               a: JoinRequest | RemoveRequest) -> None:
        if isinstance(a, JoinRequest):
            row: tuple[Any, ...] = (
                e.record_id, "join", a.replica_id, a.org, a.name, a.validator_key,
                a.client_key, a.encryption_key, a.peer_address, a.client_address,
                a.statement, "", a.sponsor)
        else:
            await cur.execute("SELECT org FROM proposals WHERE kind = 'join' AND replica_id = %s "
                              "AND status = 'approved'", (a.replica_id,))
            found = await cur.fetchone()
            org = str(found[0]) if found else ""
            row = (e.record_id, "remove", a.replica_id, org, "", b"", b"", b"", "", "", "",
                   a.reason, "")
        await cur.execute(
            "INSERT INTO proposals (proposal_id, kind, replica_id, org, name, validator_key, "
            "client_key, encryption_key, peer_address, client_address, statement, reason, "
            "sponsor, recorded_ms, height, idx) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (*row, header.timestamp_ms, header.height, e.index))

    async def _erase(self, cur: AsyncCursor[Any], record_id: str, header: BlockHeader,
                     by_org: str, reason: str) -> None:
        """Right to be forgotten: every wrapped key of the record goes from every entry that
        stores one (the record's item and the grants of it), and by policy its ciphertext; the
        items become views whose digests still verify, so every receipt and block proof
        stays valid."""
        delete_ct = self.erasure_deletes_ciphertext
        await cur.execute(
            "UPDATE entries SET erased_height = %s, erased_by = %s, erased_at_ms = %s, "
            "erase_reason = %s, readers = '{}' WHERE record_id = %s AND erased_height IS NULL",
            (header.height, by_org, header.timestamp_ms, reason, record_id))
        await cur.execute(
            "SELECT height, idx, item, redacted, record_id = %s FROM entries "
            "WHERE record_id = %s OR target_record_id = %s", (record_id, record_id, record_id))
        updates = []
        for height, idx, item, redacted, own in await cur.fetchall():
            try:
                view = ItemView.decode(bytes(item)) if redacted else ItemView.of(bytes(item))
            except DecodeError as exc:
                raise StoreCorrupted(f"entry ({height}, {idx}) does not decode: {exc}") from exc
            keep = frozenset({1}) if own and not delete_ct else frozenset()
            new = view.withhold(keep)
            if new != view:
                updates.append((new.encode(), int(height), int(idx)))
        if updates:
            await cur.executemany(
                "UPDATE entries SET item = %s, redacted = true WHERE height = %s AND idx = %s",
                updates)

    # ----------------------------------------------------------------------------- head

    async def head(self) -> BlockHeader | None:
        async with self._transaction() as cur:
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


def _tx_type(a: object) -> TxType:
    return {Grant: TxType.GRANT, Revoke: TxType.REVOKE, Erase: TxType.ERASE,
            Access: TxType.ACCESS, Verdict: TxType.VERDICT, ReviewVote: TxType.REVIEW_VOTE,
            JoinRequest: TxType.JOIN, MemberVote: TxType.MEMBER_VOTE,
            RemoveRequest: TxType.REMOVE}[type(a)]


def _public_of(e: Entry) -> PublicRecord | None:
    """The public part of a recorded record submission (None for anything else)."""
    if e.status != EntryStatus.RECORDED or e.action is not None:
        return None
    sub = e.submission
    if sub is not None:
        return PublicRecord(sub.kind, sub.subject_id, sub.event_type, sub.submitter_org,
                            sub.submitted_at_ms, sub.metadata, sub.also, sub.document)
    shown = e.item.present() if isinstance(e.item, ItemView) else None
    if not shown or shown[0] is None:
        return None
    try:
        return decode_public(shown[0])
    except InvalidTransaction:
        return None


def _view_readers(item: bytes | ItemView) -> list[str]:
    """The reader orgs of a record item whose key segments a view may hide (only shown ones
    can be named: an erased record has none)."""
    shown = item.present() if isinstance(item, ItemView) else None
    out = []
    for seg in (shown or [])[2:]:
        if seg is None:
            continue
        try:
            out.append(parse_key_segment(seg)[0])
        except InvalidTransaction:
            continue
    return out
