"""Queries over a validator's ledger, on a connection pool of their own.

The consensus path writes through `LedgerStore`'s one connection; everything here reads through
`LedgerReader`'s pool, so a client's heavy query (a product with thousands of events) neither
waits for a block write nor holds one up. Every list query is paginated: it returns at most
`page_size_max` rows after a (height, idx) cursor, so one call's cost is bounded whatever the
ledger holds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from consortium.ledger.blocks import BlockHeader, RecordState
from consortium.ledger.items import ItemView, is_record_id
from consortium.ledger.membership import MembershipState, Proposal, Vote
from consortium.ledger.records import RecordKind
from consortium.ledger.transactions import (
    InvalidTransaction,
    JoinRequest,
    TxType,
    decode_governance_tx,
    decode_record_tx,
    parse_key_segment,
)
from consortium.pbft.codec import DecodeError
from consortium.pbft.payload import split_segments
from consortium.storage.rows import (
    AccessRow,
    EntryRef,
    Erasure,
    HistoryEntry,
    ReceiptMaterial,
    RecordColumns,
    StoreCorrupted,
    StoredBlock,
    StoredEnvelope,
    StoredItem,
    StoredProposal,
    StoredRecord,
    StoreUnavailable,
)

BLOCKS_PER_QUERY_MAX = 256
"""Most blocks one `get_blocks` call returns, whatever limit the caller asks for."""
PAGE_SIZE_MAX = 1000
"""Most rows one list query returns (records, history entries, access log rows)."""
READ_POOL_SIZE = 4

Cursor = tuple[int, int]
"""(height, idx) of the last row of the previous page; (0, -1) before the first."""
START: Cursor = (0, -1)

_RECORD_SELECT = (
    "SELECT record_id, height, idx, envelope, kind, subject_id, event_type, submitter_org, "
    "submitted_at_ms, metadata::text, item, redacted, readers, status, reason, erased_height, "
    "erased_by, erased_at_ms, erase_reason, screening FROM entries ")


def _record(row: tuple[Any, ...]) -> StoredRecord:
    (record_id, height, idx, envelope, kind, subject_id, event_type, submitter_org,
     submitted_at_ms, metadata_json, item, redacted, readers, status, reason, erased_height,
     erased_by, erased_at_ms, erase_reason, screening) = row
    try:
        metadata = json.loads(metadata_json)
    except ValueError as exc:
        raise StoreCorrupted(f"record {record_id}: metadata is not JSON") from exc
    if not isinstance(metadata, dict):
        raise StoreCorrupted(f"record {record_id}: metadata is not an object")
    erasure = None if erased_height is None else Erasure(
        int(erased_height), str(erased_by), int(erased_at_ms), str(erase_reason))
    return StoredRecord(
        record_id=str(record_id), height=int(height), idx=int(idx), envelope=int(envelope),
        kind=str(kind), subject_id=str(subject_id), also=(), event_type=str(event_type),
        submitter_org=str(submitter_org), submitted_at_ms=int(submitted_at_ms),
        metadata={str(k): str(v) for k, v in metadata.items()}, item=bytes(item),
        redacted=bool(redacted), readers=tuple(sorted(str(o) for o in readers or ())),
        status=str(status), reason=str(reason), erasure=erasure, screening=str(screening))


def item_segments(data: bytes, redacted: bool) -> list[bytes | None]:
    """A stored item's segments (withheld ones None). Raises StoreCorrupted."""
    try:
        if redacted:
            return ItemView.decode(data).present()
        segs = split_segments(data)
    except DecodeError as exc:
        raise StoreCorrupted(f"a stored item does not decode: {exc}") from exc
    if segs is None:
        raise StoreCorrupted("a stored record item is not segmented")
    return list(segs)


def _join_gs1(item: bytes | None, redacted: bool) -> bytes:
    """The GS1 identity a stored join request carries (its public header, never withheld)."""
    if item is None:
        return b""
    header = item_segments(bytes(item), redacted)[0]
    try:
        tx = decode_governance_tx([header, None])
    except InvalidTransaction as exc:
        raise StoreCorrupted(f"a stored join request does not decode: {exc}") from exc
    return tx.gs1 if isinstance(tx, JoinRequest) else b""


class LedgerReader:
    """Read queries over a validator's database. Create with `await LedgerReader.open(...)`."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self.page_size_max = PAGE_SIZE_MAX

    @classmethod
    async def open(cls, dsn: str, *, size: int = READ_POOL_SIZE) -> LedgerReader:
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=size, open=False,
                                   kwargs={"autocommit": True}, timeout=10)
        await pool.open(wait=True, timeout=30)
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[AsyncCursor[Any]]:
        try:
            async with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL: {str(exc).strip()[:300]}") from exc
        except PoolTimeout as exc:
            raise StoreUnavailable("PostgreSQL: no read connection available") from exc

    def _limit(self, limit: int) -> int:
        """A page's row count: at most `page_size_max`, plus the one row a caller may ask for
        beyond it to tell whether another page follows."""
        return max(1, min(limit or self.page_size_max, self.page_size_max + 1))

    # ---------------------------------------------------------------------------- blocks

    async def head_height(self) -> int:
        async with self._cursor() as cur:
            await cur.execute("SELECT coalesce(max(height), 0) FROM blocks")
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def get_block(self, height: int) -> StoredBlock | None:
        blocks = await self.get_blocks(height, height, 1)
        return blocks[0] if blocks else None

    async def get_blocks(self, from_h: int, to_h: int, limit: int) -> list[StoredBlock]:
        """Blocks with from_h <= height <= to_h, ascending, at most
        min(limit, BLOCKS_PER_QUERY_MAX) of them."""
        limit = min(limit, BLOCKS_PER_QUERY_MAX)
        if limit < 1 or to_h < from_h:
            return []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, hash, header, pre_prepare, certificate FROM blocks "
                "WHERE height BETWEEN %s AND %s ORDER BY height LIMIT %s", (from_h, to_h, limit))
            rows = await cur.fetchall()
            if not rows:
                return []
            lo, hi = int(rows[0][0]), int(rows[-1][0])
            await cur.execute(
                "SELECT height, idx, client_id, nonce, kind, signature, payload_digest, status, "
                "reason, first_entry, entry_count, raw FROM envelopes "
                "WHERE height BETWEEN %s AND %s ORDER BY height, idx", (lo, hi))
            envelopes: dict[int, list[StoredEnvelope]] = {}
            for (h, i, cid, nonce, kind, sig, pd, st, re, first, count, raw) in \
                    await cur.fetchall():
                envelopes.setdefault(int(h), []).append(StoredEnvelope(
                    int(i), str(cid), int(nonce), int(kind), bytes(sig), bytes(pd), str(st),
                    str(re), int(first), int(count), None if raw is None else bytes(raw)))
            await cur.execute(
                "SELECT height, item, redacted, status, reason FROM entries "
                "WHERE height BETWEEN %s AND %s ORDER BY height, idx", (lo, hi))
            items: dict[int, list[StoredItem]] = {}
            for h, it, red, st, re in await cur.fetchall():
                items.setdefault(int(h), []).append(StoredItem(bytes(it), bool(red), str(st),
                                                               str(re)))
        return [StoredBlock(int(h), bytes(bh), bytes(header), tuple(envelopes.get(int(h), ())),
                            tuple(items.get(int(h), ())), bytes(pp),
                            tuple(bytes(c) for c in cert))
                for h, bh, header, pp, cert in rows]

    async def stored_merkle_root(self, height: int) -> bytes | None:
        """The Merkle root of the stored block at `height` (None when there is none)."""
        async with self._cursor() as cur:
            await cur.execute("SELECT header FROM blocks WHERE height = %s", (height,))
            row = await cur.fetchone()
        if row is None:
            return None
        try:
            return BlockHeader.decode(bytes(row[0])).merkle_root
        except DecodeError as exc:
            raise StoreCorrupted(f"stored header {height} does not decode: {exc}") from exc

    async def receipt_material(self, height: int, idx: int) -> ReceiptMaterial | None:
        """What the receipt of entry (height, idx) needs (see ReceiptMaterial)."""
        async with self._cursor() as cur:
            await cur.execute("SELECT header, certificate FROM blocks WHERE height = %s",
                              (height,))
            block = await cur.fetchone()
            await cur.execute("SELECT envelope, item_index FROM entries WHERE height = %s "
                              "AND idx = %s", (height, idx))
            entry = await cur.fetchone()
            if block is None or entry is None:
                return None
            envelope, item_index = int(entry[0]), int(entry[1])
            await cur.execute(
                "SELECT idx, client_id, nonce, kind, signature, payload_digest, status, reason, "
                "first_entry, entry_count FROM envelopes WHERE height = %s ORDER BY idx",
                (height,))
            envelopes = tuple(StoredEnvelope(
                int(i), str(cid), int(nonce), int(kind), bytes(sig), bytes(pd), str(st),
                str(re), int(first), int(count), None)
                for i, cid, nonce, kind, sig, pd, st, re, first, count in await cur.fetchall())
            await cur.execute(
                "SELECT item, redacted, status, reason FROM entries WHERE height = %s "
                "AND envelope = %s ORDER BY idx", (height, envelope))
            items = tuple(StoredItem(bytes(it), bool(red), str(st), str(re))
                          for it, red, st, re in await cur.fetchall())
        return ReceiptMaterial(bytes(block[0]), tuple(bytes(c) for c in block[1]), envelopes,
                               envelope, items, item_index)

    # --------------------------------------------------------------------------- entries

    async def find_entry(self, record_id: str) -> EntryRef | None:
        if not is_record_id(record_id):
            return None
        async with self._cursor() as cur:
            await cur.execute("SELECT height, idx, envelope, status, reason FROM entries "
                              "WHERE record_id = %s", (record_id,))
            row = await cur.fetchone()
        if row is None:
            return None
        return EntryRef(int(row[0]), int(row[1]), int(row[2]), str(row[3]), str(row[4]))

    async def find_envelope(self, client_id: str, nonce: int) -> tuple[int, int, str] | None:
        """(height, index, status) of the request (client, nonce) that took effect (executed,
        invalid or governance), else None: the original a replay is answered with."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, status FROM envelopes WHERE client_id = %s AND nonce = %s "
                "AND status <> 'duplicate' ORDER BY height LIMIT 1", (client_id, nonce))
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]), str(row[2]))

    # --------------------------------------------------------------------------- records

    async def get_record(self, record_id: str) -> StoredRecord | None:
        if not is_record_id(record_id):
            return None
        async with self._cursor() as cur:
            await cur.execute(_RECORD_SELECT + "WHERE record_id = %s AND kind IS NOT NULL",
                              (record_id,))
            row = await cur.fetchone()
        return None if row is None else _record(row)

    async def reader_key(self, rec: StoredRecord, org: str) -> bytes | None:
        """`org`'s wrapped key of a record it currently reads: from the record's own item, or
        from the latest recorded grant to it."""
        if org not in rec.readers:
            return None
        for seg in item_segments(rec.item, rec.redacted)[2:]:
            if seg is not None:
                try:
                    seg_org, key = parse_key_segment(seg)
                except InvalidTransaction as exc:
                    raise StoreCorrupted(f"record {rec.record_id}: a key segment does not "
                                         f"decode: {exc}") from exc
                if seg_org == org:
                    return key
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT item, redacted FROM entries WHERE target_record_id = %s AND "
                "tx_type = %s AND status = 'recorded' ORDER BY height DESC, idx DESC",
                (rec.record_id, int(TxType.GRANT)))
            grants = await cur.fetchall()
        for item, redacted in grants:
            try:
                tx = decode_record_tx(item_segments(bytes(item), bool(redacted)))
            except InvalidTransaction:
                continue
            if getattr(tx, "org", None) == org and getattr(tx, "wrapped_key", b""):
                return bytes(tx.wrapped_key)  # type: ignore[union-attr]
        return None

    async def record_states(self, record_ids: Iterable[str]) -> dict[str, RecordState]:
        """The execution state (kind, subject, submitter, readers, erased, screening, votes) of
        existing records: what `build_block` needs for the transactions of a batch."""
        ids = [r for r in set(record_ids) if is_record_id(r)]
        if not ids:
            return {}
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT e.record_id, e.kind, e.subject_id, e.submitter_org, "
                "e.erased_height IS NOT NULL, e.readers, e.screening, "
                "coalesce((SELECT array_agg(v.replica_id || ':' || v.accept::int) "
                "FROM review_votes v WHERE v.record_id = e.record_id), '{}') "
                "FROM entries e WHERE e.record_id = ANY(%s) AND e.kind IS NOT NULL", (ids,))
            rows = await cur.fetchall()
        return {str(rid): RecordState(
            RecordKind(str(kind)), str(subject), str(org), frozenset(str(o) for o in readers),
            bool(erased), str(screening),
            frozenset((int(v.split(":")[0]), v.split(":")[1] == "1") for v in votes))
            for rid, kind, subject, org, erased, readers, screening, votes in rows}

    async def records_for_subject(self, kind: str, subject_id: str, *, after: Cursor = START,
                                  limit: int = 0) -> list[StoredRecord]:
        """Records of one product/lot or patient (its main subject, or one of its further
        subjects), in ledger order after `after`; at most one page."""
        async with self._cursor() as cur:
            await cur.execute(
                _RECORD_SELECT + "WHERE (height, idx) IN ("
                " SELECT height, idx FROM entries WHERE kind = %(k)s AND subject_id = %(s)s"
                " AND (height, idx) > (%(h)s, %(i)s)"
                " UNION ALL SELECT height, idx FROM record_subjects WHERE kind = %(k)s"
                " AND subject_id = %(s)s AND (height, idx) > (%(h)s, %(i)s)) "
                "ORDER BY height, idx LIMIT %(n)s",
                {"k": kind, "s": subject_id, "h": after[0], "i": after[1],
                 "n": self._limit(limit)})
            rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def record_history(self, record_ids: Sequence[str], *, after: Cursor = START,
                             limit: int = 0) -> list[HistoryEntry]:
        """The entries of these records and of every transaction that acted on them, in
        ledger order after `after`; at most one page."""
        ids = [r for r in record_ids if is_record_id(r)]
        if not ids:
            return []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, target_record_id, status, reason FROM entries "
                "WHERE (record_id = ANY(%(ids)s) OR target_record_id = ANY(%(ids)s)) "
                "AND (height, idx) > (%(h)s, %(i)s) ORDER BY height, idx LIMIT %(n)s",
                {"ids": ids, "h": after[0], "i": after[1], "n": self._limit(limit)})
            rows = await cur.fetchall()
        return [HistoryEntry(int(h), int(i), str(r), None if t is None else str(t), str(st),
                             str(re)) for h, i, r, t, st, re in rows]

    async def subject_history(self, kind: str, subject_id: str, *, after: Cursor = START,
                              limit: int = 0) -> list[HistoryEntry]:
        """Every entry of a subject's records (its main subject, or a further one) and of the
        transactions that acted on them, in ledger order after `after`; at most one page
        (`limit` may ask for one more row, to tell whether another page follows)."""
        async with self._cursor() as cur:
            await cur.execute(
                "WITH subject AS ("
                " SELECT record_id, height, idx FROM entries WHERE kind = %(k)s"
                " AND subject_id = %(s)s"
                " UNION SELECT e.record_id, e.height, e.idx FROM record_subjects r"
                " JOIN entries e ON e.height = r.height AND e.idx = r.idx"
                " WHERE r.kind = %(k)s AND r.subject_id = %(s)s) "
                "SELECT height, idx, record_id, target_record_id, status, reason FROM entries "
                "WHERE ((height, idx) IN (SELECT height, idx FROM subject)"
                " OR target_record_id IN (SELECT record_id FROM subject))"
                " AND (height, idx) > (%(h)s, %(i)s) ORDER BY height, idx LIMIT %(n)s",
                {"k": kind, "s": subject_id, "h": after[0], "i": after[1],
                 "n": min(max(1, limit or self.page_size_max), self.page_size_max + 1)})
            rows = await cur.fetchall()
        return [HistoryEntry(int(h), int(i), str(r), None if t is None else str(t), str(st),
                             str(re)) for h, i, r, t, st, re in rows]

    async def access_log(self, record_id: str, *, after: Cursor = START,
                         limit: int = 0) -> list[AccessRow]:
        if not is_record_id(record_id):
            return []
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, client_id, org, purpose, granted, at_ms "
                "FROM access_log WHERE record_id = %s AND (height, idx) > (%s, %s) "
                "ORDER BY height, idx LIMIT %s",
                (record_id, after[0], after[1], self._limit(limit)))
            rows = await cur.fetchall()
        return [AccessRow(int(h), int(i), str(r), str(c), str(o), str(p), bool(g), int(t))
                for h, i, r, c, o, p, g, t in rows]

    async def access_at(self, height: int, idx: int) -> AccessRow | None:
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, client_id, org, purpose, granted, at_ms "
                "FROM access_log WHERE height = %s AND idx = %s", (height, idx))
            row = await cur.fetchone()
        if row is None:
            return None
        h, i, r, c, o, p, g, t = row
        return AccessRow(int(h), int(i), str(r), str(c), str(o), str(p), bool(g), int(t))

    async def record_columns(self, from_h: int, to_h: int) -> list[RecordColumns]:
        """The stored record columns of the records in blocks from_h..to_h, for audits."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT height, idx, record_id, kind, subject_id, event_type, submitter_org, "
                "submitted_at_ms, metadata::text, readers, erased_height FROM entries "
                "WHERE height BETWEEN %s AND %s AND kind IS NOT NULL ORDER BY height, idx "
                "LIMIT %s", (from_h, to_h, 10 * self.page_size_max))
            rows = await cur.fetchall()
        out = []
        for h, i, rid, kind, subject, event, org, at_ms, meta, readers, erased_h in rows:
            try:
                metadata = json.loads(meta)
            except ValueError:
                metadata = {}
            out.append(RecordColumns(
                int(h), int(i), str(rid), str(kind), str(subject), str(event), str(org),
                int(at_ms), {str(k): str(v) for k, v in metadata.items()}
                if isinstance(metadata, dict) else {},
                tuple(sorted(str(o) for o in readers or ())),
                None if erased_h is None else int(erased_h)))
        return out

    # ------------------------------------------------------------------------- screening

    async def screening_counts(self) -> dict[str, int]:
        """Records per screening status other than accepted (the backlog is a metric)."""
        async with self._cursor() as cur:
            await cur.execute("SELECT screening, count(*) FROM entries WHERE screening IS NOT "
                              "NULL AND screening <> 'accepted' GROUP BY screening")
            rows = await cur.fetchall()
        return {str(s): int(n) for s, n in rows}

    async def records_by_screening(self, screening: str, *, after: Cursor = START,
                                   limit: int = 0) -> list[StoredRecord]:
        """Records in one screening status, in ledger order after `after`."""
        async with self._cursor() as cur:
            await cur.execute(
                _RECORD_SELECT + "WHERE screening = %s AND (height, idx) > (%s, %s) "
                "ORDER BY height, idx LIMIT %s",
                (screening, after[0], after[1], self._limit(limit)))
            rows = await cur.fetchall()
        return [_record(row) for row in rows]

    async def review_states(self, record_ids: Sequence[str]) -> dict[
            str, tuple[list[tuple[int, bool]], list[tuple[str, int, str]]]]:
        """Per record: (votes as (replica id, accept), verdicts as (decision, risk_milli,
        verdict json)), in ledger order; two queries for a whole page of records."""
        out: dict[str, tuple[list[tuple[int, bool]], list[tuple[str, int, str]]]] = {
            r: ([], []) for r in record_ids}
        if not out:
            return out
        ids = list(out)
        async with self._cursor() as cur:
            await cur.execute("SELECT record_id, replica_id, accept FROM review_votes "
                              "WHERE record_id = ANY(%s) ORDER BY height, idx", (ids,))
            for rid, r, a in await cur.fetchall():
                out[str(rid)][0].append((int(r), bool(a)))
            await cur.execute("SELECT record_id, decision, risk_milli, verdict FROM verdicts "
                              "WHERE record_id = ANY(%s) ORDER BY height, idx", (ids,))
            for rid, d, r, v in await cur.fetchall():
                out[str(rid)][1].append((str(d), int(r), str(v)))
        return out

    # -------------------------------------------------------------------------- membership

    async def membership(self) -> MembershipState:
        """Every membership proposal with its votes (what executing a governance transaction
        needs; a handful of rows)."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT proposal_id, kind, replica_id, org, name, validator_key, client_key, "
                "encryption_key, peer_address, client_address, status, sponsor, recorded_ms "
                "FROM proposals ORDER BY height, idx")  # ledger order: see client_keys
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
                               tuple(votes.get(str(pid), ())), str(sponsor), int(recorded_ms))
            for (pid, kind, rid, org, name, vk, ck, ek, peer, client, status, sponsor,
                 recorded_ms) in rows})

    async def proposals(self) -> list[StoredProposal]:
        """Membership proposals for display (newest first), with verdicts and votes."""
        async with self._cursor() as cur:
            await cur.execute(
                "SELECT p.proposal_id, p.kind, p.replica_id, p.org, p.name, p.peer_address, "
                "p.client_address, p.statement, p.reason, p.status, p.height, "
                "p.decided_height, p.validator_key, p.client_key, p.encryption_key, "
                "coalesce((SELECT array_agg(v.decision || ':' || v.risk_milli ORDER BY "
                "v.height, v.idx) FROM verdicts v WHERE v.record_id = p.proposal_id), '{}'), "
                "p.sponsor, p.recorded_ms, e.item, e.redacted FROM proposals p "
                "LEFT JOIN entries e ON e.record_id = p.proposal_id "
                "ORDER BY p.height DESC, p.idx DESC")
            rows = await cur.fetchall()
        state = await self.membership()
        out = []
        for (pid, kind, rid, org, name, peer, client, statement, reason, status, height,
             decided, vk, ck, ek, verdicts, sponsor, recorded_ms, item, redacted) in rows:
            out.append(StoredProposal(
                str(pid), str(kind), int(rid), str(org), str(name), str(peer), str(client),
                str(statement), str(reason), str(status), int(height),
                None if decided is None else int(decided), bytes(vk), bytes(ck), bytes(ek),
                [(str(v).rsplit(":", 1)[0], int(str(v).rsplit(":", 1)[1])) for v in verdicts],
                list(state.proposals[str(pid)].votes), str(sponsor), int(recorded_ms),
                _join_gs1(item, bool(redacted)) if kind == "join" else b""))
        return out
