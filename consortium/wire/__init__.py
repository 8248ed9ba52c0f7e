"""The codec between the protobuf wire contract (proto/consortium/v1/ledger.proto) and domain
objects, for both sides: validators and clients. Besides the generated code it imports only
ledger, pbft and crypto types, never storage or the validator: importing the SDK pulls in no
database driver and no replica.

Consensus-level objects travel as their canonical encodings inside `bytes` fields, so encoding
copies bytes and decoding decodes and cross-checks them. Every function here is pure. Anything
malformed raises `WireError` (a `ValueError`; a server maps it to INVALID_ARGUMENT) and never
another exception. Decoding checks structure and internal consistency (counts, Merkle roots),
never signatures: that is `consortium.verify`'s job, with the right epoch's validator set.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.crypto.hashing import DIGEST_BYTES
from consortium.crypto.merkle import InclusionProof, merkle_root
from consortium.ledger.blocks import (
    Block,
    BlockHeader,
    EntryStatus,
    Envelope,
    EnvelopeStatus,
    envelope_payload_digest,
)
from consortium.ledger.items import Item, ItemView, public_view
from consortium.pbft import codec
from consortium.pbft import messages as m

T = TypeVar("T")

__all__ = ["pb", "pb_grpc"]
"""Besides its own names: the generated messages (`pb`) and gRPC stubs and servicers
(`pb_grpc`), which other modules take from here (the one importer of generated code)."""

ENTRY_STATUSES = frozenset({EntryStatus.RECORDED, EntryStatus.INVALID})
ENVELOPE_STATUSES = frozenset({EnvelopeStatus.EXECUTED, EnvelopeStatus.DUPLICATE,
                               EnvelopeStatus.INVALID, EnvelopeStatus.GOVERNANCE})
PROOF_PATH_MAX = 64
"""An inclusion proof in a tree of at most 2**32 leaves has at most 32 hashes; 64 is slack."""


class WireError(ValueError):
    """A protobuf message whose content is malformed or inconsistent (the sender's fault)."""


class TooLarge(WireError):
    """A request over the configured size limit (the server answers RESOURCE_EXHAUSTED)."""


def decode(what: str, fn: Callable[[], T]) -> T:
    """Run a decoder, turning any decoding failure into a WireError that names the field."""
    try:
        return fn()
    except WireError:
        raise
    except (ValueError, struct.error, RecursionError) as exc:
        raise WireError(f"{what}: {exc}") from exc


def signed(what: str, data: bytes, chain_id: bytes,
           body_type: type[object]) -> m.SignedMessage:
    msg = decode(what, lambda: codec.decode_signed(bytes(data), chain_id))
    if not isinstance(msg.body, body_type) or msg.batch is not None:
        raise WireError(f"{what}: expected a {body_type.__name__} message, "
                        f"got {type(msg.body).__name__}")
    return msg


def header_from_bytes(data: bytes, chain_id: bytes) -> BlockHeader:
    header = decode("block header", lambda: BlockHeader.decode(bytes(data)))
    if header.chain_id != chain_id:
        raise WireError("block header: belongs to another chain")
    return header


def commits(what: str, certificate: Iterable[bytes],
            chain_id: bytes) -> tuple[m.SignedMessage, ...]:
    return tuple(signed(f"{what}[{i}]", c, chain_id, m.Commit)
                 for i, c in enumerate(certificate))


def request_from_bytes(what: str, data: bytes) -> m.Request:
    return decode(what, lambda: codec.decode_request(bytes(data)))


def item_view(what: str, data: bytes) -> ItemView:
    return decode(what, lambda: ItemView.decode(bytes(data)))


def _status(what: str, status: str, allowed: frozenset[str]) -> str:
    if status not in allowed:
        raise WireError(f"{what}: unknown status {status!r}")
    return status


def _path(what: str, path: Sequence[bytes]) -> tuple[bytes, ...]:
    if len(path) > PROOF_PATH_MAX:
        raise WireError(f"{what}: path longer than {PROOF_PATH_MAX} hashes")
    for i, h in enumerate(path):
        if len(h) != DIGEST_BYTES:
            raise WireError(f"{what}: path[{i}] is not a {DIGEST_BYTES}-byte hash")
    return tuple(bytes(h) for h in path)


def proof_to_proto(p: InclusionProof) -> pb.InclusionProof:
    return pb.InclusionProof(index=p.index, size=p.size, path=list(p.path))


def proof_from_proto(what: str, msg: pb.InclusionProof) -> InclusionProof:
    return InclusionProof(index=msg.index, size=msg.size, path=_path(what, msg.path))


# -------------------------------------------------------------------------------------- blocks

@dataclass(frozen=True)
class WireBlock:
    """A block as received: decoded and internally consistent (the Merkle root over its
    requests, each executed envelope's items against its digest), signatures not yet
    verified."""

    header: BlockHeader
    envelopes: tuple[Envelope, ...]
    items: tuple[Item, ...]
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    pre_prepare: m.SignedMessage
    certificate: tuple[m.SignedMessage, ...]
    stored_hash: bytes = b""
    records: tuple[pb.RecordColumns, ...] = ()

    def items_of(self, envelope: Envelope) -> tuple[Item, ...]:
        return self.items[envelope.first_entry: envelope.first_entry + envelope.entry_count]


def envelope_to_proto(e: Envelope) -> pb.Envelope:
    return pb.Envelope(client_id=e.client_id, nonce=e.nonce, kind=int(e.kind),
                       signature=e.signature, payload_digest=e.payload_digest, status=e.status,
                       reason=e.reason, entry_count=e.entry_count, raw=e.raw or b"")


def block_to_proto(block: Block, *, for_client: bool = False) -> pb.Block:
    """A block for a peer (items in full, views only where erased) or for a client (public
    views of every item: key material is only read through the access rules)."""
    items: list[Item] = [e.item for e in block.entries]
    if for_client:
        items = [public_view(i) for i in items]
    return pb.Block(
        header=block.header.encode(), envelopes=[envelope_to_proto(e) for e in block.envelopes],
        items=[i.encode() if isinstance(i, ItemView) else i for i in items],
        views=[n for n, i in enumerate(items) if isinstance(i, ItemView)],
        statuses=[e.status for e in block.entries], reasons=[e.reason for e in block.entries],
        pre_prepare=block.pre_prepare.wire, certificate=[c.wire for c in block.certificate])


def block_from_proto(msg: pb.Block, chain_id: bytes) -> WireBlock:
    """Decode a block and check that its parts agree: request and entry counts, each executed
    envelope's items against its payload digest, the Merkle root over the request digests,
    and the proposal header (same epoch, sequence, root, size and time). Certificate entries
    must be COMMITs; whether they sign this block is `consortium.verify`'s job."""
    header = header_from_bytes(msg.header, chain_id)
    h = header.height
    if len(msg.envelopes) != header.request_count:
        raise WireError(f"block {h}: header says {header.request_count} requests, got "
                        f"{len(msg.envelopes)}")
    n = header.entry_count
    if len(msg.items) != n or len(msg.statuses) != n or len(msg.reasons) not in (0, n):
        raise WireError(f"block {h}: header says {n} entries, got {len(msg.items)} items, "
                        f"{len(msg.statuses)} statuses and {len(msg.reasons)} reasons")
    views = set(msg.views)
    if len(views) != len(msg.views) or any(v >= n for v in views):
        raise WireError(f"block {h}: bad view indexes")
    items: tuple[Item, ...] = tuple(
        item_view(f"block {h} item {i}", it) if i in views else bytes(it)
        for i, it in enumerate(msg.items))
    statuses = tuple(_status(f"block {h} item {i}", s, ENTRY_STATUSES)
                     for i, s in enumerate(msg.statuses))
    reasons = tuple(str(r) for r in msg.reasons) if msg.reasons else ("",) * n
    envelopes = []
    first = 0
    for i, e in enumerate(msg.envelopes):
        status = _status(f"block {h} request {i}", e.status, ENVELOPE_STATUSES)
        if len(e.payload_digest) != DIGEST_BYTES or len(e.signature) != 64:
            raise WireError(f"block {h} request {i}: malformed digest or signature")
        count = e.entry_count if status == EnvelopeStatus.EXECUTED else 0
        if first + count > n:
            raise WireError(f"block {h} request {i}: more items than the block holds")
        try:
            kind = m.RequestKind(e.kind)
        except ValueError as exc:
            raise WireError(f"block {h} request {i}: unknown kind {e.kind}") from exc
        env = Envelope(i, e.client_id, e.nonce, kind, bytes(e.signature),
                       bytes(e.payload_digest), status, e.reason, first, count,
                       bytes(e.raw) if e.raw or status == EnvelopeStatus.GOVERNANCE else None)
        if count and envelope_payload_digest(items[first:first + count]) != env.payload_digest:
            raise WireError(f"block {h} request {i}: its items do not match its digest")
        if env.raw is not None and m.request_digest(env.client_id, env.nonce, env.kind,
                                                    env.raw) != env.digest:
            raise WireError(f"block {h} request {i}: its payload does not match its digest")
        envelopes.append(env)
        first += count
    if first != n:
        raise WireError(f"block {h}: {n - first} items belong to no executed request")
    if merkle_root([e.digest for e in envelopes]) != header.merkle_root:
        raise WireError(f"block {h}: requests do not match the header's merkle root")
    if not msg.pre_prepare:
        raise WireError(f"block {h} carries no proposal header")
    pre_prepare = signed(f"block {h} pre_prepare", msg.pre_prepare, chain_id, m.PrePrepare)
    pp = pre_prepare.body
    assert isinstance(pp, m.PrePrepare)
    # The proposal header may be of any view (a replica that fetched the batch after missing a
    # NEW-VIEW holds the first primary's header for the same digest): it proves the same
    # contents and time, the digest binding root, count and time.
    if (pp.epoch, pp.seq, pp.root, pp.count, pp.timestamp_ms) != (
            header.epoch, h, header.merkle_root, header.request_count, header.proposed_ms):
        raise WireError(f"block {h}: the proposal header differs from the block header")
    certificate = commits(f"block {h} certificate", msg.certificate, chain_id)
    if msg.stored_hash and len(msg.stored_hash) != DIGEST_BYTES:
        raise WireError(f"block {h}: stored hash is not {DIGEST_BYTES} bytes")
    return WireBlock(header, tuple(envelopes), items, statuses, reasons, pre_prepare,
                     certificate, bytes(msg.stored_hash), tuple(msg.records))


# ------------------------------------------------------------------------------------ receipts

@dataclass(frozen=True)
class Receipt:
    """Proof that one item was committed (see `consortium.verify.receipts`)."""

    record_id: str
    height: int
    header: BlockHeader
    certificate: tuple[m.SignedMessage, ...]
    request_proof: InclusionProof
    client_id: str
    nonce: int
    kind: m.RequestKind
    signature: bytes
    item_proof: InclusionProof
    item: Item
    status: str
    reason: str


def receipt_to_proto(r: Receipt) -> pb.Receipt:
    out = pb.Receipt(
        record_id=r.record_id, height=r.height, block_header=r.header.encode(),
        certificate=[c.wire for c in r.certificate],
        request_proof=proof_to_proto(r.request_proof), client_id=r.client_id, nonce=r.nonce,
        kind=int(r.kind), signature=r.signature, item_proof=proof_to_proto(r.item_proof),
        status=r.status, reason=r.reason)
    if isinstance(r.item, ItemView):
        out.item_view = r.item.encode()
    else:
        out.item = r.item
    return out


def receipt_from_proto(msg: pb.Receipt, chain_id: bytes) -> Receipt:
    """Decode a receipt. Structural checks only; `consortium.verify` says whether it proves
    anything."""
    header = header_from_bytes(msg.block_header, chain_id)
    certificate = commits("receipt certificate", msg.certificate, chain_id)
    if not msg.HasField("request_proof") or not msg.HasField("item_proof"):
        raise WireError("receipt: missing inclusion proof")
    if msg.item and msg.item_view:
        raise WireError("receipt: both an item and an item view")
    item: Item = item_view("receipt item view", msg.item_view) if msg.item_view \
        else bytes(msg.item)
    kind = decode("receipt kind", lambda: m.RequestKind(msg.kind))
    if len(msg.signature) != 64:
        raise WireError("receipt: a request signature is 64 bytes")
    return Receipt(record_id=msg.record_id, height=msg.height, header=header,
                   certificate=certificate,
                   request_proof=proof_from_proto("receipt request proof", msg.request_proof),
                   client_id=msg.client_id, nonce=msg.nonce, kind=kind,
                   signature=bytes(msg.signature),
                   item_proof=proof_from_proto("receipt item proof", msg.item_proof),
                   item=item, status=_status("receipt", msg.status, ENTRY_STATUSES),
                   reason=msg.reason)


@dataclass(frozen=True)
class EnvelopeResult:
    """What one block says about one of a client's requests."""

    client_id: str
    nonce: int
    request_proof: InclusionProof
    status: str
    reason: str
    item_statuses: tuple[str, ...]
    item_reasons: tuple[str, ...]


@dataclass(frozen=True)
class BlockReceipts:
    """One block's answer to a client: header and certificate once, a result per request."""

    height: int
    header: BlockHeader
    certificate: tuple[m.SignedMessage, ...]
    envelopes: tuple[EnvelopeResult, ...]


def block_receipts_to_proto(r: BlockReceipts) -> pb.BlockReceipts:
    return pb.BlockReceipts(
        height=r.height, block_header=r.header.encode(),
        certificate=[c.wire for c in r.certificate],
        envelopes=[pb.EnvelopeResult(
            client_id=e.client_id, nonce=e.nonce, request_index=e.request_proof.index,
            request_path=list(e.request_proof.path), status=e.status, reason=e.reason,
            item_statuses=list(e.item_statuses), item_reasons=list(e.item_reasons))
            for e in r.envelopes])


def block_receipts_from_proto(msg: pb.BlockReceipts, chain_id: bytes) -> BlockReceipts:
    header = header_from_bytes(msg.block_header, chain_id)
    if msg.height != header.height:
        raise WireError(f"receipts: height {msg.height} differs from the header's "
                        f"{header.height}")
    out = []
    for i, e in enumerate(msg.envelopes):
        what = f"receipts for request {i}"
        status = _status(what, e.status, ENVELOPE_STATUSES)
        if len(e.item_reasons) not in (0, len(e.item_statuses)):
            raise WireError(f"{what}: item reasons do not match item statuses")
        out.append(EnvelopeResult(
            e.client_id, e.nonce,
            InclusionProof(e.request_index, header.request_count, _path(what, e.request_path)),
            status, e.reason,
            tuple(_status(what, s, ENTRY_STATUSES) for s in e.item_statuses),
            tuple(e.item_reasons) or ("",) * len(e.item_statuses)))
    return BlockReceipts(header.height, header, commits("receipts certificate", msg.certificate,
                                                        chain_id), tuple(out))


def block_receipts_of(block: Block, indexes: Iterable[int]) -> BlockReceipts:
    """The receipts a block gives for some of its requests (by index)."""
    results = []
    for i in indexes:
        env = block.envelopes[i]
        entries = block.entries_of(env)
        results.append(EnvelopeResult(
            env.client_id, env.nonce, block.request_proof(i), env.status, env.reason,
            tuple(e.status for e in entries), tuple(e.reason for e in entries)))
    return BlockReceipts(block.header.height, block.header, block.certificate, tuple(results))


def receipt_of(block: Block, entry_index: int, *, for_client: bool = True,
               item: Item | None = None) -> Receipt:
    """The receipt of one entry of a block (its item as a public view for a client, unless
    `item` says what to show)."""
    e = block.entries[entry_index]
    env = block.envelopes[e.envelope]
    shown = item if item is not None else (public_view(e.item) if for_client else e.item)
    return Receipt(record_id=e.record_id, height=block.header.height, header=block.header,
                   certificate=block.certificate, request_proof=block.request_proof(env.index),
                   client_id=env.client_id, nonce=env.nonce, kind=env.kind,
                   signature=env.signature, item_proof=block.item_proof(e), item=shown,
                   status=e.status, reason=e.reason)


# ------------------------------------------------------------------------------------ requests

def submit_request_from_proto(msg: pb.SubmitRecordRequest, request_bytes_max: int) -> m.Request:
    """The client request inside a submission. Raises TooLarge over the size limit (checked
    before decoding) and WireError when it does not decode."""
    if len(msg.request) > request_bytes_max:
        raise TooLarge(f"request is {len(msg.request)} bytes, the limit is {request_bytes_max}")
    return request_from_bytes("request", msg.request)


# ------------------------------------------------------------------------------ state transfer

def checkpoint_to_proto(snapshot: m.Snapshot,
                        proof: Iterable[m.SignedMessage]) -> pb.Checkpoint:
    return pb.Checkpoint(snapshot=codec.encode_snapshot(snapshot),
                         proof=[p.wire for p in proof])


def checkpoint_from_proto(msg: pb.Checkpoint,
                          chain_id: bytes) -> tuple[m.Snapshot, tuple[m.SignedMessage, ...]]:
    """Decode a stable checkpoint. The proof entries must be CHECKPOINTs for the snapshot's
    sequence; that they are a quorum signing its digest is for `verify_checkpoint_proof`."""
    snapshot = decode("checkpoint snapshot",
                      lambda: codec.decode_snapshot(bytes(msg.snapshot), chain_id))
    proof = tuple(signed(f"checkpoint proof[{i}]", p, chain_id, m.Checkpoint)
                  for i, p in enumerate(msg.proof))
    for i, p in enumerate(proof):
        assert isinstance(p.body, m.Checkpoint)
        if p.body.seq != snapshot.seq:
            raise WireError(f"checkpoint proof[{i}]: for sequence {p.body.seq}, the snapshot "
                            f"is at {snapshot.seq}")
    return snapshot, proof


def epochs_from_bytes(data: bytes, chain_id: bytes) -> tuple[m.EpochRecord, ...]:
    return decode("epoch history", lambda: codec.decode_epoch_records(bytes(data), chain_id))
