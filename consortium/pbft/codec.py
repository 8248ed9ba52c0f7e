"""Canonical binary encoding of protocol messages.

One encoding, used both for signing and on the wire, so there is nothing to canonicalise: integers
are fixed-width big-endian, byte strings and lists are length-prefixed, every body starts with a
type byte, and decoding rejects trailing bytes. Decoding bounds every length before reading it,
so a malicious peer cannot make a replica allocate more than the message it sent.

    wire   = version:u8 | sender:u16 | len:u32 | body | signature:64 | attachment
    signed = sha256-tagged("consortium/pbft-message", chain_id, sender, body)

The attachment is empty except on a PRE-PREPARE that carries its batch:
`count:u32 | request{count}`, with `count` equal to the header's. It is not signed: the header
commits to the batch through its Merkle root, which the receiver recomputes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Signer
from consortium.pbft import messages as m
from consortium.pbft.membership import Member

WIRE_VERSION = 2
LIST_ITEMS_MAX = 1 << 20

T = TypeVar("T")


class DecodeError(ValueError):
    """The bytes are not a well-formed message (a peer's fault, never ours)."""


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self._parts.append(struct.pack(">B", v))

    def u16(self, v: int) -> None:
        self._parts.append(struct.pack(">H", v))

    def u32(self, v: int) -> None:
        self._parts.append(struct.pack(">I", v))

    def u64(self, v: int) -> None:
        self._parts.append(struct.pack(">Q", v))

    def fixed(self, b: bytes) -> None:
        self._parts.append(b)

    def blob(self, b: bytes) -> None:
        self._parts.append(struct.pack(">I", len(b)))
        self._parts.append(b)

    def text(self, s: str) -> None:
        raw = s.encode()
        self._parts.append(struct.pack(">H", len(raw)))
        self._parts.append(raw)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = memoryview(buf)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._buf):
            raise DecodeError("message is truncated")
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def u8(self) -> int:
        return int(self._take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self._take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self._take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self._take(8))[0])

    def fixed(self, n: int) -> bytes:
        return self._take(n)

    def blob(self) -> bytes:
        return self._take(self.u32())

    def text(self) -> str:
        try:
            return self._take(self.u16()).decode()
        except UnicodeDecodeError as exc:
            raise DecodeError("text is not UTF-8") from exc

    def count(self) -> int:
        n = self.u32()
        if n > LIST_ITEMS_MAX or n > len(self._buf) - self._pos:
            raise DecodeError("list length exceeds the message")
        return n

    def items(self, read: Callable[[], T]) -> tuple[T, ...]:
        return tuple(read() for _ in range(self.count()))

    def at_end(self) -> bool:
        """Nothing left to read (a trailing optional field is absent)."""
        return self._pos == len(self._buf)

    def end(self) -> None:
        if self._pos != len(self._buf):
            raise DecodeError("trailing bytes after message")


# ----------------------------------------------------------------------------------- requests

def write_request(w: Writer, r: m.Request) -> None:
    w.text(r.client_id)
    w.u64(r.nonce)
    w.u8(int(r.kind))
    w.blob(r.payload)
    w.fixed(r.signature)


def read_request(rd: Reader) -> m.Request:
    client_id = rd.text()
    nonce = rd.u64()
    kind_raw = rd.u8()
    payload = rd.blob()
    signature = rd.fixed(SIGNATURE_BYTES)
    try:
        kind = m.RequestKind(kind_raw)
        return m.Request(client_id, nonce, kind, payload, signature)
    except ValueError as exc:
        raise DecodeError(f"bad request: {exc}") from exc


def encode_request(r: m.Request) -> bytes:
    w = Writer()
    write_request(w, r)
    return w.getvalue()


def decode_request(data: bytes) -> m.Request:
    rd = Reader(data)
    r = read_request(rd)
    rd.end()
    return r


# ------------------------------------------------------------------------ nested structures

def _write_signed(w: Writer, s: m.SignedMessage) -> None:
    w.blob(s.wire)


def _read_signed(rd: Reader, chain_id: bytes, *allowed: int) -> m.SignedMessage:
    """A nested signed message of one of the `allowed` body types. Checking the type before
    decoding caps nesting at the protocol's own depth (NEW-VIEW > VIEW-CHANGE > PRE-PREPARE),
    so decoding memory stays linear in the message size."""
    data = rd.blob()
    if len(data) < 8 or data[7] not in allowed:
        raise DecodeError("nested message of a type not allowed here")
    msg = decode_signed(data, chain_id)
    if msg.batch is not None:
        raise DecodeError("a nested PRE-PREPARE carries no batch")
    return msg


def _write_members(w: Writer, members: tuple[Member, ...]) -> None:
    w.u32(len(members))
    for mem in members:
        w.u16(mem.replica_id)
        w.fixed(mem.public_key)


def _read_members(rd: Reader) -> tuple[Member, ...]:
    def one() -> Member:
        rid = rd.u16()
        key = rd.fixed(PUBLIC_KEY_BYTES)
        return Member(rid, key)
    return rd.items(one)


def _write_epoch_records(w: Writer, records: tuple[m.EpochRecord, ...]) -> None:
    w.u32(len(records))
    for e in records:
        w.u32(e.epoch)
        w.u64(e.start_seq)
        _write_members(w, e.members)
        w.fixed(e.state_digest)
        w.fixed(e.clients_digest)
        w.u32(len(e.proof))
        for p in e.proof:
            _write_signed(w, p)


def _read_epoch_records(rd: Reader, chain_id: bytes) -> tuple[m.EpochRecord, ...]:
    def epoch_record() -> m.EpochRecord:
        return m.EpochRecord(
            epoch=rd.u32(), start_seq=rd.u64(), members=_read_members(rd),
            state_digest=rd.fixed(DIGEST_BYTES), clients_digest=rd.fixed(DIGEST_BYTES),
            proof=rd.items(lambda: _read_signed(rd, chain_id, MsgType.CHECKPOINT)))

    return rd.items(epoch_record)


def encode_epoch_records(records: tuple[m.EpochRecord, ...]) -> bytes:
    """The epoch history (each epoch's set and the checkpoint proof that opened it)."""
    w = Writer()
    _write_epoch_records(w, records)
    return w.getvalue()


def decode_epoch_records(data: bytes, chain_id: bytes) -> tuple[m.EpochRecord, ...]:
    """Raises DecodeError on malformed bytes."""
    rd = Reader(data)
    try:
        records = _read_epoch_records(rd, chain_id)
    except ValueError as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(str(exc)) from exc
    rd.end()
    return records


def write_snapshot(w: Writer, s: m.Snapshot) -> None:
    w.u64(s.seq)
    w.fixed(s.state_digest)
    _write_epoch_records(w, s.epochs)
    w.u32(len(s.clients))
    for c in s.clients:
        w.text(c.client_id)
        w.u32(len(c.executed))
        for nonce, seq in c.executed:
            w.u64(nonce)
            w.u64(seq)
    if s.pending is None:
        w.u8(0)
    else:
        w.u8(1)
        w.u64(s.pending.effective_seq)
        _write_members(w, s.pending.members)


def read_snapshot(rd: Reader, chain_id: bytes) -> m.Snapshot:
    seq = rd.u64()
    state_digest = rd.fixed(DIGEST_BYTES)

    epochs = _read_epoch_records(rd, chain_id)

    def client() -> m.ClientEntry:
        cid = rd.text()
        executed = rd.items(lambda: (rd.u64(), rd.u64()))
        return m.ClientEntry(cid, executed)

    clients = rd.items(client)
    pending = None
    flag = rd.u8()
    if flag > 1:
        raise DecodeError("bad boolean")
    if flag:
        pending = m.PendingReconfiguration(rd.u64(), _read_members(rd))
    return m.Snapshot(seq, state_digest, epochs, clients, pending)


def encode_snapshot(s: m.Snapshot) -> bytes:
    w = Writer()
    write_snapshot(w, s)
    return w.getvalue()


def decode_snapshot(data: bytes, chain_id: bytes) -> m.Snapshot:
    rd = Reader(data)
    try:
        s = read_snapshot(rd, chain_id)
    except ValueError as exc:  # a Member or dataclass rejected a field
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(str(exc)) from exc
    rd.end()
    return s


def encode_reconfiguration(r: m.Reconfiguration) -> bytes:
    w = Writer()
    w.u32(r.from_epoch)
    _write_members(w, r.members)
    w.u32(len(r.approvals))
    for rid, sig in r.approvals:
        w.u16(rid)
        w.fixed(sig)
    return w.getvalue()


def decode_reconfiguration(data: bytes) -> m.Reconfiguration:
    rd = Reader(data)
    try:
        from_epoch = rd.u32()
        members = _read_members(rd)
        approvals = rd.items(lambda: (rd.u16(), rd.fixed(SIGNATURE_BYTES)))
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc
    rd.end()
    return m.Reconfiguration(from_epoch, members, approvals)


# ------------------------------------------------------------------------------ message bodies

class MsgType:
    PRE_PREPARE = 1
    PREPARE = 2
    COMMIT = 3
    CHECKPOINT = 4
    VIEW_CHANGE = 5
    NEW_VIEW = 6
    STATUS = 7
    REQUEST_FORWARD = 8
    STATE_REQUEST = 9
    STATE_RESPONSE = 10
    BATCH_REQUEST = 11


def encode_body(b: m.Body) -> bytes:
    w = Writer()
    if isinstance(b, m.PrePrepare):
        w.u8(MsgType.PRE_PREPARE)
        w.u32(b.epoch)
        w.u64(b.view)
        w.u64(b.seq)
        w.fixed(b.root)
        w.u32(b.count)
        w.u64(b.timestamp_ms)
    elif isinstance(b, (m.Prepare, m.Commit)):
        w.u8(MsgType.PREPARE if isinstance(b, m.Prepare) else MsgType.COMMIT)
        w.u32(b.epoch)
        w.u64(b.view)
        w.u64(b.seq)
        w.fixed(b.digest)
    elif isinstance(b, m.Checkpoint):
        w.u8(MsgType.CHECKPOINT)
        w.u32(b.epoch)
        w.u64(b.seq)
        w.fixed(b.digest)
    elif isinstance(b, m.ViewChange):
        w.u8(MsgType.VIEW_CHANGE)
        w.u32(b.epoch)
        w.u64(b.new_view)
        w.u64(b.stable_seq)
        w.u32(len(b.stable_proof))
        for s in b.stable_proof:
            _write_signed(w, s)
        w.u32(len(b.prepared))
        for p in b.prepared:
            _write_signed(w, p.pre_prepare)
            w.u32(len(p.votes))
            for v in p.votes:
                _write_signed(w, v)
    elif isinstance(b, m.NewView):
        w.u8(MsgType.NEW_VIEW)
        w.u32(b.epoch)
        w.u64(b.new_view)
        w.u32(len(b.view_changes))
        for s in b.view_changes:
            _write_signed(w, s)
        w.u32(len(b.pre_prepares))
        for s in b.pre_prepares:
            _write_signed(w, s)
    elif isinstance(b, m.Status):
        w.u8(MsgType.STATUS)
        w.u32(b.epoch)
        w.u64(b.view)
        w.u8(1 if b.view_active else 0)
        w.u64(b.last_executed)
        w.u64(b.stable_seq)
        w.u64(b.sent_ms)
    elif isinstance(b, m.RequestForward):
        w.u8(MsgType.REQUEST_FORWARD)
        w.u32(len(b.requests))
        for r in b.requests:
            write_request(w, r)
    elif isinstance(b, m.StateRequest):
        w.u8(MsgType.STATE_REQUEST)
        w.u64(b.after_seq)
    elif isinstance(b, m.BatchRequest):
        w.u8(MsgType.BATCH_REQUEST)
        w.u32(b.epoch)
        w.u64(b.seq)
        w.fixed(b.digest)
    elif isinstance(b, m.StateResponse):
        w.u8(MsgType.STATE_RESPONSE)
        write_snapshot(w, b.snapshot)
        w.u32(len(b.proof))
        for s in b.proof:
            _write_signed(w, s)
    else:  # pragma: no cover - the type union is closed
        raise TypeError(f"not a message body: {type(b).__name__}")
    return w.getvalue()


def _decode_body(data: bytes, chain_id: bytes) -> m.Body:
    rd = Reader(data)
    t = rd.u8()
    body: m.Body
    if t == MsgType.PRE_PREPARE:
        body = m.PrePrepare(rd.u32(), rd.u64(), rd.u64(), rd.fixed(DIGEST_BYTES), rd.u32(),
                            rd.u64())
    elif t in (MsgType.PREPARE, MsgType.COMMIT):
        cls = m.Prepare if t == MsgType.PREPARE else m.Commit
        body = cls(rd.u32(), rd.u64(), rd.u64(), rd.fixed(DIGEST_BYTES))
    elif t == MsgType.CHECKPOINT:
        body = m.Checkpoint(rd.u32(), rd.u64(), rd.fixed(DIGEST_BYTES))
    elif t == MsgType.VIEW_CHANGE:
        epoch, new_view, stable_seq = rd.u32(), rd.u64(), rd.u64()
        stable_proof = rd.items(lambda: _read_signed(rd, chain_id, MsgType.CHECKPOINT))

        def proof() -> m.PreparedProof:
            pp = _read_signed(rd, chain_id, MsgType.PRE_PREPARE)
            votes = rd.items(lambda: _read_signed(rd, chain_id, MsgType.PREPARE, MsgType.COMMIT))
            return m.PreparedProof(pp, votes)

        body = m.ViewChange(epoch, new_view, stable_seq, stable_proof, rd.items(proof))
    elif t == MsgType.NEW_VIEW:
        epoch, new_view = rd.u32(), rd.u64()
        vcs = rd.items(lambda: _read_signed(rd, chain_id, MsgType.VIEW_CHANGE))
        pps = rd.items(lambda: _read_signed(rd, chain_id, MsgType.PRE_PREPARE))
        body = m.NewView(epoch, new_view, vcs, pps)
    elif t == MsgType.STATUS:
        epoch, view, active = rd.u32(), rd.u64(), rd.u8()
        if active > 1:
            raise DecodeError("bad boolean")
        body = m.Status(epoch, view, bool(active), rd.u64(), rd.u64(), rd.u64())
    elif t == MsgType.REQUEST_FORWARD:
        body = m.RequestForward(rd.items(lambda: read_request(rd)))
    elif t == MsgType.STATE_REQUEST:
        body = m.StateRequest(rd.u64())
    elif t == MsgType.BATCH_REQUEST:
        body = m.BatchRequest(rd.u32(), rd.u64(), rd.fixed(DIGEST_BYTES))
    elif t == MsgType.STATE_RESPONSE:
        snap = read_snapshot(rd, chain_id)
        body = m.StateResponse(snap, rd.items(lambda: _read_signed(rd, chain_id,
                                                                   MsgType.CHECKPOINT)))
    else:
        raise DecodeError(f"unknown message type {t}")
    rd.end()
    return body


def signing_bytes(chain_id: bytes, sender: int, body_bytes: bytes) -> bytes:
    return tagged_hash(b"consortium/pbft-message", chain_id, sender.to_bytes(2, "big"), body_bytes)


def _wire(sender: int, body_bytes: bytes, signature: bytes) -> bytes:
    return b"".join((bytes([WIRE_VERSION]), struct.pack(">HI", sender, len(body_bytes)),
                     body_bytes, signature))


def sign_message(signer: Signer, chain_id: bytes, sender: int, body: m.Body) -> m.SignedMessage:
    body_bytes = encode_body(body)
    signature = signer.sign(signing_bytes(chain_id, sender, body_bytes))
    wire = _wire(sender, body_bytes, signature)
    return m.SignedMessage(sender, body, signature, body_bytes, wire)


def resign_message(sender: int, body: m.Body, signature: bytes) -> m.SignedMessage:
    """Assemble a message with a given signature (tests and Byzantine simulation use this)."""
    body_bytes = encode_body(body)
    wire = _wire(sender, body_bytes, signature)
    return m.SignedMessage(sender, body, signature, body_bytes, wire)


def encode_batch(requests: tuple[m.Request, ...]) -> bytes:
    """A PRE-PREPARE's attachment: its batch of requests."""
    w = Writer()
    w.u32(len(requests))
    for r in requests:
        write_request(w, r)
    return w.getvalue()


def wire_with_batch(msg: m.SignedMessage, batch_bytes: bytes) -> bytes:
    """A PRE-PREPARE's wire bytes with its batch (`encode_batch`) attached."""
    if not isinstance(msg.body, m.PrePrepare):
        raise TypeError("only a PRE-PREPARE carries a batch")
    return msg.wire + batch_bytes


def decode_signed(data: bytes, chain_id: bytes) -> m.SignedMessage:
    """Parse a wire message. Raises DecodeError; never anything else for any input bytes."""
    if len(data) < 7 + SIGNATURE_BYTES:
        raise DecodeError("message is truncated")
    if data[0] != WIRE_VERSION:
        raise DecodeError(f"unsupported wire version {data[0]}")
    sender, length = struct.unpack(">HI", data[1:7])
    end = 7 + length + SIGNATURE_BYTES
    if end > len(data):
        raise DecodeError("length prefix does not match the message")
    body_bytes = data[7 : 7 + length]
    signature = data[7 + length : end]
    batch = None
    try:
        body = _decode_body(body_bytes, chain_id)
        if end < len(data):
            if not isinstance(body, m.PrePrepare):
                raise DecodeError("only a PRE-PREPARE carries an attachment")
            rd = Reader(data[end:])
            batch = rd.items(lambda: read_request(rd))
            rd.end()
            if len(batch) != body.count:
                raise DecodeError("the attached batch does not have the header's size")
    except DecodeError:
        raise
    except (ValueError, struct.error, RecursionError) as exc:
        raise DecodeError(f"malformed message: {exc}") from exc
    return m.SignedMessage(sender, body, signature, body_bytes, bytes(data[:end]), batch)
