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
from dataclasses import dataclass, replace
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from consortium.crypto.hashing import DIGEST_BYTES
from consortium.ledger.blocks import (
    GENESIS_PREV_HASH,
    SCREENING_OUTCOME,
    Block,
    BlockHeader,
    Entry,
    EntryStatus,
    RecordState,
    Screening,
)
from consortium.ledger.membership import MEMBERSHIP_OUTCOME, MembershipState, Proposal, Vote
from consortium.ledger.records import (
    InvalidRecord,
    PublicRecord,
    RecordKind,
    decode_public,
)
from consortium.ledger.transactions import (
    Access,
    Erase,
    Grant,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RemoveRequest,
    RequestView,
    ReviewVote,
    Revoke,
    Verdict,
    key_segment,
    parse_key_segment,
    target_of,
)
from consortium.pbft import messages as m
from consortium.pbft.codec import (
    DecodeError,
    decode_request,
    decode_signed,
    decode_snapshot,
    encode_request,
    encode_snapshot,
)
from consortium.pbft.payload import segment_hash
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
class StoredProposal:
    proposal_id: str
    kind: str
    replica_id: int
    org: str
    name: str
    peer_address: str
    client_address: str
    statement: str
    reason: str
    status: str
    height: int
    decided_height: int | None
    validator_key: bytes
    client_key: bytes
    encryption_key: bytes
    verdicts: list[tuple[str, int]]
    """(decision, risk in thousandths) of the admission service's verdicts, oldest first."""
    votes: list[Vote]


@dataclass(frozen=True, slots=True)
class StoredBlock:
    height: int
    hash: bytes
    header: bytes
    """`BlockHeader.encode()`, byte-exact."""
    requests: tuple[bytes, ...]
    """`codec.encode_request` of every entry, in batch (Merkle leaf) order; for an entry in
    `redacted`, the `RequestView` encoding kept after an erasure instead."""
    redacted: tuple[bool, ...]
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    pre_prepare: bytes
    """Wire bytes of the signed PRE-PREPARE; empty once an erased entry's block dropped it."""
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
    """The signed request exactly as ordered (`codec.encode_request`), or its `RequestView`
    encoding when `redacted`."""
    status: str
    reason: str
    redacted: bool = False
    erasure: Erasure | None = None
    screening: str = Screening.ACCEPTED


@dataclass(frozen=True, slots=True)
class Erasure:
    height: int
    by_org: str
    at_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class AccessRow:
    height: int
    idx: int
    record_id: str
    client_id: str
    org: str
    purpose: str
    granted: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry as stored, for histories: a record and the transactions that acted on it."""

    height: int
    idx: int
    record_id: str
    target_record_id: str | None
    status: str
    reason: str
    request: bytes
    redacted: bool


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """What a validator stores about one record outside the signed request, as an auditor
    compares it with the request: hashes of the stored ciphertext and wrapped keys."""

    height: int
    idx: int
    record_id: str
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: dict[str, str]
    ciphertext_segment_hash: bytes | None
    """None when the ciphertext was deleted by an erasure."""
    key_segment_hashes: dict[str, bytes]
    erased_height: int | None


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
        self.erasure_deletes_ciphertext = True
        """Genesis policy (DataPolicy): the validator sets it after opening."""
        self.initial_screening = Screening.ACCEPTED
        """pending-screening when genesis names an admission service (the validator sets
        it)."""

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
            await self._drop_redacted_pre_prepares(cur)

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
            batches = []
            for h, pp, cert in await cur.fetchall():
                if not pp:
                    # Installed by state transfer from a peer that had dropped the pre-prepare
                    # (an erased entry): the replica recovers up to here and the validator
                    # recognises the rest as already stored.
                    break
                batches.append(ExecutedBatch(
                    int(h), self._decode_signed(bytes(pp), f"block {h} pre-prepare"),
                    tuple(self._decode_signed(bytes(c), f"block {h} certificate")
                          for c in cert)))
            executed = tuple(batches)
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

    async def append_blocks(self, blocks: Sequence[Block], *,
                            also_persist: Sequence[m.SignedMessage] = ()) -> None:
        """Several consecutive executed blocks and consensus messages in one transaction (a
        consensus round's worth: one commit, one fsync). Same checks as `append_block`."""
        rows = [_message_row(msg) for msg in also_persist]
        async with self._transaction() as cur:
            prev = await self._head(cur)
            for b in blocks:
                self._check_extends(prev, b)
                prev = b.header
            await self._insert_blocks(cur, blocks)
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
                               b"" if block.pre_prepare is None else block.pre_prepare.wire,
                               [c.wire for c in block.certificate]))
            for e in block.entries:
                record_id = e.record_id
                target = None if e.action is None else target_of(e.action)
                stored = encode_request(e.request) if e.request is not None else \
                    e.view.encode()
                entry_rows.append((h.height, e.index, record_id, _pg_text(e.client_id), e.nonce,
                                   e.status, _pg_text(e.reason), stored, target,
                                   e.request is None))
                if e.status != EntryStatus.RECORDED or e.action is not None:
                    continue
                row = _record_row(h.height, e)
                if row is None:
                    continue
                record_rows.append(row[0])
                key_rows.extend(row[1])
        await cur.executemany(
            "INSERT INTO blocks (height, hash, prev_hash, epoch, view, merkle_root, "
            "state_digest, entry_count, timestamp_ms, header, pre_prepare, certificate) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bytea[])", block_rows)
        await _copy(cur, "entries", ("height", "idx", "record_id", "client_id", "nonce", "status",
                                     "reason", "request", "target_record_id", "redacted"),
                    ("int8", "int4", "text", "text", "numeric", "text", "text", "bytea", "text",
                     "bool"), entry_rows)
        await _copy(cur, "records", ("record_id", "height", "idx", "kind", "subject_id",
                                     "event_type", "submitter_org", "submitted_at_ms", "metadata",
                                     "ciphertext", "content_hash", "screening"),
                    ("text", "int8", "int4", "text", "text", "text", "text", "int8", "jsonb",
                     "bytea", "bytea", "text"),
                    [(*row, self.initial_screening) for row in record_rows])
        await _copy(cur, "wrapped_keys", ("record_id", "org", "wrapped_key"),
                    ("text", "text", "bytea"), key_rows)
        for block in blocks:
            for e in block.entries:
                if e.status == EntryStatus.RECORDED and e.action is not None:
                    await self._apply_action(cur, block.header, e)

    async def _apply_action(self, cur: AsyncCursor[Any], header: BlockHeader, e: Entry) -> None:
        """The effect of a recorded grant/revoke/erase/access (judged by `build_block`, or by
        the peer a state-transferred block came from)."""
        a = e.action
        org = _pg_text(e.sender_org or "")
        if isinstance(a, Grant):
            if a.wrapped_key:  # withheld when the record was erased since
                await cur.execute(
                    "INSERT INTO wrapped_keys (record_id, org, wrapped_key) "
                    "SELECT %s, %s, %s WHERE EXISTS (SELECT 1 FROM records WHERE record_id = %s "
                    "AND erased_height IS NULL) ON CONFLICT (record_id, org) DO NOTHING",
                    (a.record_id, _pg_text(a.org), a.wrapped_key, a.record_id))
        elif isinstance(a, Revoke):
            await cur.execute("DELETE FROM wrapped_keys WHERE record_id = %s AND org = %s",
                              (a.record_id, _pg_text(a.org)))
        elif isinstance(a, Access):
            await cur.execute(
                "INSERT INTO access_log (height, idx, record_id, client_id, org, purpose, "
                "granted, at_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (header.height, e.index, a.record_id, _pg_text(e.client_id), org,
                 _pg_text(a.purpose), e.reason == "", a.requested_at_ms))
        elif isinstance(a, Erase):
            await self._erase(cur, a.record_id, header, org, _pg_text(a.reason))
        elif isinstance(a, Verdict):
            await cur.execute(
                "INSERT INTO verdicts (height, idx, record_id, decision, risk_milli, verdict) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (header.height, e.index, a.record_id, a.decision, a.risk_milli,
                 _pg_text(a.verdict_json)))
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
            epoch = a.from_epoch
            await cur.execute(
                "INSERT INTO member_votes (proposal_id, epoch, replica_id, approve, approval, "
                "height, idx) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (a.proposal_id, epoch, voter, a.approve, a.approval, header.height, e.index))
            if e.reason.startswith(MEMBERSHIP_OUTCOME):
                await cur.execute(
                    "UPDATE proposals SET status = %s, decided_height = %s "
                    "WHERE proposal_id = %s",
                    (e.reason.removeprefix(MEMBERSHIP_OUTCOME), header.height, a.proposal_id))
        if e.reason.startswith(SCREENING_OUTCOME) and isinstance(a, Verdict | ReviewVote):
            await cur.execute("UPDATE records SET screening = %s WHERE record_id = %s",
                              (e.reason.removeprefix(SCREENING_OUTCOME), a.record_id))

    @staticmethod
    async def _insert_proposal(cur: AsyncCursor[Any], header: BlockHeader, e: Entry,
                               a: JoinRequest | RemoveRequest) -> None:
        if isinstance(a, JoinRequest):
            row: tuple[Any, ...] = (
                e.record_id, "join", a.replica_id, a.org, _pg_text(a.name), a.validator_key,
                a.client_key, a.encryption_key, _pg_text(a.peer_address),
                _pg_text(a.client_address), _pg_text(a.statement), "")
        else:
            await cur.execute("SELECT org FROM proposals WHERE kind = 'join' AND replica_id = %s "
                              "AND status = 'approved'", (a.replica_id,))
            found = await cur.fetchone()
            org = str(found[0]) if found else ""
            row = (e.record_id, "remove", a.replica_id, org, "", b"", b"", b"", "", "", "",
                   _pg_text(a.reason))
        await cur.execute(
            "INSERT INTO proposals (proposal_id, kind, replica_id, org, name, validator_key, "
            "client_key, encryption_key, peer_address, client_address, statement, reason, "
            "height, idx) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING", (*row, header.height, e.index))

    async def membership(self) -> MembershipState:
        """Every membership proposal with its votes (what executing a governance transaction
        needs; a handful of rows)."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT proposal_id, kind, replica_id, org, name, validator_key, client_key, "
                "encryption_key, peer_address, client_address, status FROM proposals")
            rows = await cur.fetchall()
            await cur.execute("SELECT proposal_id, epoch, replica_id, approve, approval "
                              "FROM member_votes ORDER BY height, idx")
            votes: dict[str, list[Vote]] = {}
            for pid, epoch, rid, approve, approval in await cur.fetchall():
                votes.setdefault(str(pid), []).append(
                    Vote(int(epoch), int(rid), bool(approve), bytes(approval)))
        return MembershipState({
            str(pid): Proposal(str(pid), str(kind), int(rid), str(org), str(name), bytes(vk),
                               bytes(ck), bytes(ek), str(peer), str(client), str(status),
                               tuple(votes.get(str(pid), ())))
            for pid, kind, rid, org, name, vk, ck, ek, peer, client, status in rows})

    async def proposals(self) -> list[StoredProposal]:
        """Membership proposals for display (newest first), with verdicts and votes."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT p.proposal_id, p.kind, p.replica_id, p.org, p.name, p.peer_address, "
                "p.client_address, p.statement, p.reason, p.status, p.height, "
                "p.decided_height, p.validator_key, p.client_key, p.encryption_key, "
                "coalesce((SELECT array_agg(v.decision || ':' || v.risk_milli ORDER BY "
                "v.height, v.idx) FROM verdicts v WHERE v.record_id = p.proposal_id), '{}') "
                "FROM proposals p ORDER BY p.height DESC, p.idx DESC")
            rows = await cur.fetchall()
        state = await self.membership()
        out = []
        for (pid, kind, rid, org, name, peer, client, statement, reason, status, height,
             decided, vk, ck, ek, verdicts) in rows:
            out.append(StoredProposal(
                str(pid), str(kind), int(rid), str(org), str(name), str(peer), str(client),
                str(statement), str(reason), str(status), int(height),
                None if decided is None else int(decided), bytes(vk), bytes(ck), bytes(ek),
                [(str(v).rsplit(":", 1)[0], int(str(v).rsplit(":", 1)[1])) for v in verdicts],
                list(state.proposals[str(pid)].votes)))
        return out

    async def _erase(self, cur: AsyncCursor[Any], record_id: str, header: BlockHeader,
                     by_org: str, reason: str) -> None:
        """Right to be forgotten: delete the record's wrapped keys everywhere they are stored
        (wrapped_keys, the record's entries, grants of it), and by policy its ciphertext; the
        entries keep request views whose digests still verify. Blocks holding those requests
        drop their pre-prepare once a stable checkpoint covers them (recovery replays the
        pre-prepares above the checkpoint)."""
        delete_ct = self.erasure_deletes_ciphertext
        await cur.execute(
            "UPDATE records SET erased_height = %s, erased_by = %s, erased_at_ms = %s, "
            "erase_reason = %s, ciphertext = CASE WHEN %s THEN ''::bytea ELSE ciphertext END "
            "WHERE record_id = %s AND erased_height IS NULL",
            (header.height, by_org, header.timestamp_ms, reason, delete_ct, record_id))
        await cur.execute("DELETE FROM wrapped_keys WHERE record_id = %s", (record_id,))
        await cur.execute(
            "SELECT height, idx, request, redacted, record_id = %s FROM entries "
            "WHERE record_id = %s OR target_record_id = %s", (record_id, record_id, record_id))
        updates = []
        for height, idx, request, redacted, own in await cur.fetchall():
            try:
                view = RequestView.decode(bytes(request)) if redacted else \
                    RequestView.of(decode_request(bytes(request)))
            except DecodeError as exc:
                raise StoreCorrupted(f"entry ({height}, {idx}) does not decode: {exc}") from exc
            keep = frozenset({1}) if own and not delete_ct else frozenset()
            new = view.withhold(keep)
            if new != view:
                updates.append((new.encode(), int(height), int(idx)))
        if updates:
            await cur.executemany(
                "UPDATE entries SET request = %s, redacted = true WHERE height = %s AND idx = %s",
                updates)
            await cur.execute(
                "UPDATE blocks SET redact_pre_prepare = true WHERE height = ANY(%s)",
                (sorted({h for _, h, _ in updates}),))
            await self._drop_redacted_pre_prepares(cur)

    @staticmethod
    async def _drop_redacted_pre_prepares(cur: AsyncCursor[Any]) -> None:
        await cur.execute(
            "UPDATE blocks SET pre_prepare = ''::bytea, redact_pre_prepare = false "
            "WHERE redact_pre_prepare AND height <= (SELECT coalesce(max(seq), 0) "
            "FROM checkpoint)")

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
                "SELECT height, request, status, reason, redacted FROM entries "
                "WHERE height BETWEEN %s AND %s ORDER BY height, idx",
                (int(rows[0][0]), int(rows[-1][0])))
            entries: dict[int, list[tuple[bytes, str, str, bool]]] = {}
            for h, req, status, reason, redacted in await cur.fetchall():
                entries.setdefault(int(h), []).append((bytes(req), str(status), str(reason),
                                                       bool(redacted)))
        out = []
        for h, block_hash, header, pp, cert in rows:
            es = entries.get(int(h), [])
            out.append(StoredBlock(
                height=int(h), hash=bytes(block_hash), header=bytes(header),
                requests=tuple(e[0] for e in es), redacted=tuple(e[3] for e in es),
                statuses=tuple(e[1] for e in es),
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

    async def record_states(self, record_ids: Iterable[str]) -> dict[str, RecordState]:
        """The execution state (kind, subject, submitter, readers, erased) of existing records:
        what `build_block` needs for the transactions of a batch."""
        ids = [r for r in set(record_ids) if _is_record_id(r)]
        if not ids:
            return {}
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT r.record_id, r.kind, r.subject_id, r.submitter_org, "
                "r.erased_height IS NOT NULL, coalesce((SELECT array_agg(w.org) "
                "FROM wrapped_keys w WHERE w.record_id = r.record_id), '{}'), e.request, "
                "e.redacted, r.screening, coalesce((SELECT array_agg(v.replica_id || ':' || "
                "v.accept::int) FROM review_votes v WHERE v.record_id = r.record_id), '{}') "
                "FROM records r JOIN entries e ON e.height = r.height "
                "AND e.idx = r.idx WHERE r.record_id = ANY(%s)", (ids,))
            rows = await cur.fetchall()
        out = {}
        for (record_id, kind, subject, org, erased, readers, request, redacted, screening,
             votes) in rows:
            texts = (str(subject), str(org), *(str(o) for o in readers))
            if any(_REPLACEMENT in t for t in texts):
                exact = _exact_record(StoredRecord(
                    str(record_id), 0, 0, str(kind), str(subject), "", str(org), 0, {}, b"",
                    b"", {str(o): b"" for o in readers}, bytes(request), "", "",
                    bool(redacted)))
                subject, org, readers = exact.subject_id, exact.submitter_org, \
                    list(exact.wrapped_keys)
            out[str(record_id)] = RecordState(
                RecordKind(str(kind)), str(subject), str(org),
                frozenset(str(o) for o in readers), bool(erased), str(screening),
                frozenset((int(v.split(":")[0]), v.split(":")[1] == "1") for v in votes))
        return out

    async def screening_counts(self) -> dict[str, int]:
        """Records per screening status other than accepted (the backlog is a metric)."""
        async with self._cursor() as cur:
            await cur.execute("SELECT screening, count(*) FROM records "
                              "WHERE screening <> 'accepted' GROUP BY screening")
            rows = await cur.fetchall()
        return {str(s): int(n) for s, n in rows}

    async def records_by_screening(self, screening: str, after_height: int,
                                   limit: int) -> list[StoredRecord]:
        """Records in one screening status, in ledger order from after_height."""
        async with self._cursor() as cur:
            await cur.execute(
                _RECORD_SELECT + "WHERE r.screening = %s AND r.height > %s "
                "ORDER BY r.height, r.idx LIMIT %s",
                (screening, after_height, min(limit, RECORDS_PER_QUERY_MAX)))
            rows = await cur.fetchall()
        return [_record_from_row(row) for row in rows]

    async def review_state(self, record_id: str) -> tuple[list[tuple[int, bool]],
                                                          list[tuple[str, int, str]]]:
        """(votes as (replica id, accept), verdicts as (decision, risk_milli, verdict json))."""
        async with self._cursor() as cur:
            await cur.execute("SELECT replica_id, accept FROM review_votes WHERE record_id = %s "
                              "ORDER BY height, idx", (record_id,))
            votes = [(int(r), bool(a)) for r, a in await cur.fetchall()]
            await cur.execute("SELECT decision, risk_milli, verdict FROM verdicts "
                              "WHERE record_id = %s ORDER BY height, idx", (record_id,))
            verdicts = [(str(d), int(r), str(v)) for d, r, v in await cur.fetchall()]
        return votes, verdicts

    async def record_history(self, record_ids: Sequence[str]) -> list[StoredEntry]:
        """The entries of these records and of every transaction that acted on them, in
        ledger order (at most RECORDS_PER_QUERY_MAX)."""
        ids = [r for r in record_ids if _is_record_id(r)]
        if not ids:
            return []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, target_record_id, status, reason, request, "
                "redacted FROM entries WHERE record_id = ANY(%s) OR target_record_id = ANY(%s) "
                "ORDER BY height, idx LIMIT %s", (ids, ids, RECORDS_PER_QUERY_MAX))
            rows = await cur.fetchall()
        return [StoredEntry(int(h), int(i), str(r), None if t is None else str(t), str(st),
                            str(re), bytes(req), bool(red))
                for h, i, r, t, st, re, req, red in rows]

    async def access_log(self, record_id: str) -> list[AccessRow]:
        if not _is_record_id(record_id):
            return []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, client_id, org, purpose, granted, at_ms "
                "FROM access_log WHERE record_id = %s ORDER BY height, idx LIMIT %s",
                (record_id, RECORDS_PER_QUERY_MAX))
            rows = await cur.fetchall()
        return [AccessRow(int(h), int(i), str(r), str(c), str(o), str(p), bool(g), int(t))
                for h, i, r, c, o, p, g, t in rows]

    async def record_columns(self, from_h: int, to_h: int) -> list[RecordColumns]:
        """The stored record columns of the records in blocks from_h..to_h, for audits."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT r.height, r.idx, r.record_id, r.kind, r.subject_id, r.event_type, "
                "r.submitter_org, r.submitted_at_ms, r.metadata::text, r.ciphertext, "
                "r.erased_height, coalesce((SELECT array_agg(w.org ORDER BY w.org) "
                "FROM wrapped_keys w WHERE w.record_id = r.record_id), '{}'), "
                "coalesce((SELECT array_agg(w.wrapped_key ORDER BY w.org) FROM wrapped_keys w "
                "WHERE w.record_id = r.record_id), '{}') FROM records r "
                "WHERE r.height BETWEEN %s AND %s ORDER BY r.height, r.idx LIMIT %s",
                (from_h, to_h, RECORDS_PER_QUERY_MAX))
            rows = await cur.fetchall()
        out = []
        for (h, i, rid, kind, subject, event, org, at_ms, meta, ct, erased_h, orgs,
             keys) in rows:
            try:
                metadata = json.loads(meta)
            except ValueError:
                metadata = {}
            erased = None if erased_h is None else int(erased_h)
            ct_hash = None if erased is not None and not ct else segment_hash(bytes(ct))
            out.append(RecordColumns(
                int(h), int(i), str(rid), str(kind), str(subject), str(event), str(org),
                int(at_ms), {str(k): str(v) for k, v in metadata.items()}
                if isinstance(metadata, dict) else {}, ct_hash,
                {str(o): segment_hash(key_segment(str(o), bytes(k)))
                 for o, k in zip(orgs, keys, strict=True)}, erased))
        return out

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
    "e.request, e.status, e.reason, e.redacted, r.erased_height, r.erased_by, r.erased_at_ms, "
    "r.erase_reason, r.screening "
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
     metadata_json, ciphertext, content_hash, orgs, keys, request, status, reason, redacted,
     erased_height, erased_by, erased_at_ms, erase_reason, screening) = row
    metadata = json.loads(metadata_json)
    if not isinstance(metadata, dict):
        raise StoreCorrupted(f"record {record_id}: metadata is not an object")
    erasure = None if erased_height is None else Erasure(
        int(erased_height), str(erased_by), int(erased_at_ms), str(erase_reason))
    rec = StoredRecord(
        record_id=str(record_id), height=int(height), idx=int(idx), kind=str(kind),
        subject_id=str(subject_id), event_type=str(event_type),
        submitter_org=str(submitter_org), submitted_at_ms=int(submitted_at_ms),
        metadata={str(k): str(v) for k, v in metadata.items()}, ciphertext=bytes(ciphertext),
        content_hash=bytes(content_hash),
        wrapped_keys={str(o): bytes(k) for o, k in zip(orgs, keys, strict=True)},
        request=bytes(request), status=str(status), reason=str(reason),
        redacted=bool(redacted), erasure=erasure, screening=str(screening))
    texts: Iterable[str] = (rec.subject_id, rec.event_type, rec.submitter_org,
                            *rec.metadata, *rec.metadata.values(), *rec.wrapped_keys)
    if any(_REPLACEMENT in t for t in texts):
        return _exact_record(rec)
    return rec


def _exact_record(rec: StoredRecord) -> StoredRecord:
    """The record's text fields as signed (the stored columns had NUL replaced)."""
    try:
        view = RequestView.decode(rec.request) if rec.redacted else \
            RequestView.of(decode_request(rec.request))
        shown = view.present()
        if not shown or shown[0] is None:
            raise InvalidRecord("no public part")
        p = decode_public(shown[0])
        keys = dict(parse_key_segment(k) for k in shown[2:] if k is not None)
    except (DecodeError, InvalidTransaction) as exc:
        raise StoreCorrupted(f"record {rec.record_id}: stored request does not decode: "
                             f"{exc}") from exc
    return replace(rec, kind=p.kind.value, subject_id=p.subject_id, event_type=p.event_type,
                   submitter_org=p.submitter_org, submitted_at_ms=p.submitted_at_ms,
                   metadata=dict(p.metadata),
                   wrapped_keys={o: k for o, k in keys.items() if o in rec.wrapped_keys})


def _record_row(height: int, e: Entry) -> tuple[tuple[Any, ...], list[tuple[str, str, bytes]]] \
        | None:
    """The records row and wrapped-key rows of a recorded submission, from the full request
    or, after an erasure, from what its view still shows."""
    sub = e.submission
    if sub is not None:
        public = PublicRecord(sub.kind, sub.subject_id, sub.event_type, sub.submitter_org,
                              sub.submitted_at_ms, sub.metadata)
        ciphertext: bytes = sub.ciphertext
        keys = list(sub.wrapped_keys)
    else:
        view = e.view
        shown = view.present()
        if not shown or shown[0] is None:
            return None
        try:
            public = decode_public(shown[0])
            keys = [parse_key_segment(k) for k in shown[2:] if k is not None]
        except InvalidTransaction:
            return None
        ciphertext = shown[1] if len(shown) > 1 and shown[1] is not None else b""
    record_id = e.record_id
    row = (record_id, height, e.index, public.kind.value, _pg_text(public.subject_id),
           _pg_text(public.event_type), _pg_text(public.submitter_org), public.submitted_at_ms,
           Jsonb({_pg_text(k): _pg_text(v) for k, v in public.metadata}),
           ciphertext, hashlib.sha256(ciphertext).digest())
    return row, [(record_id, _pg_text(org), key) for org, key in keys]


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
