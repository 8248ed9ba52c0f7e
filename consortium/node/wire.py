"""Conversion between the protobuf wire contract (proto/consortium/v1/ledger.proto) and domain
objects. The only module besides the generated code that imports `consortium.api`.

Consensus-level objects travel as their canonical encodings inside `bytes` fields, so converting
to protobuf copies bytes and converting from protobuf decodes and cross-checks them. Every
function here is pure. Anything malformed raises `WireError` (a `ValueError`; the server maps it
to INVALID_ARGUMENT) and never another exception. Decoding does not check signatures: the
caller does that with the right epoch's configuration (`verify_receipt`,
`consortium.ledger.blocks.verify_certificate`, `consortium.pbft.state.verify_checkpoint_proof`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from consortium.api.v1 import ledger_pb2 as pb
from consortium.crypto import merkle
from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.merkle import InclusionProof
from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import Block, BlockHeader, Entry, EntryStatus, verify_certificate
from consortium.ledger.records import InvalidRecord, decode_submission
from consortium.ledger.transactions import (
    InvalidTransaction,
    RequestView,
    TxType,
    decode_tx,
)
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import split_segments
from consortium.storage.store import RecordColumns, StoredBlock, StoredRecord

T = TypeVar("T")

ENTRY_STATUSES = frozenset({EntryStatus.RECORDED, EntryStatus.INVALID, EntryStatus.DUPLICATE,
                            EntryStatus.GOVERNANCE})
PROOF_PATH_MAX = 64
"""An inclusion proof in a tree of at most 2**32 leaves has at most 32 hashes; 64 is slack."""


class WireError(ValueError):
    """A protobuf message whose content is malformed or inconsistent (the sender's fault)."""


class TooLarge(WireError):
    """A request over the configured size limit (the server answers RESOURCE_EXHAUSTED)."""


def _decode(what: str, fn: Callable[[], T]) -> T:
    """Run a decoder, turning any decoding failure into a WireError that names the field."""
    try:
        return fn()
    except WireError:
        raise
    except (ValueError, struct.error, RecursionError) as exc:
        raise WireError(f"{what}: {exc}") from exc


def _signed(what: str, data: bytes, chain_id: bytes,
            body_type: type[object]) -> m.SignedMessage:
    msg = _decode(what, lambda: codec.decode_signed(bytes(data), chain_id))
    if not isinstance(msg.body, body_type):
        raise WireError(f"{what}: expected a {body_type.__name__} message, "
                        f"got {type(msg.body).__name__}")
    return msg


def _header(data: bytes, chain_id: bytes) -> BlockHeader:
    header = _decode("block header", lambda: BlockHeader.decode(bytes(data)))
    if header.chain_id != chain_id:
        raise WireError("block header: belongs to another chain")
    return header


def _request(what: str, data: bytes) -> m.Request:
    return _decode(what, lambda: codec.decode_request(bytes(data)))


def _status(what: str, status: str) -> str:
    if status not in ENTRY_STATUSES:
        raise WireError(f"{what}: unknown entry status {status!r}")
    return status


def _commits(what: str, certificate: Iterable[bytes],
             chain_id: bytes) -> tuple[m.SignedMessage, ...]:
    return tuple(_signed(f"{what}[{i}]", c, chain_id, m.Commit)
                 for i, c in enumerate(certificate))


# -------------------------------------------------------------------------------------- blocks

Item = m.Request | RequestView
"""An entry's request as carried: in full, or as a view with some segments withheld."""


def public_view(item: Item) -> RequestView:
    """What clients see of any request in a block: its public header only (segment 0)."""
    view = item if isinstance(item, RequestView) else RequestView.of(item)
    return view.withhold(frozenset())


def _item_digest(item: Item) -> bytes:
    return item.digest


@dataclass(frozen=True)
class WireBlock:
    """A block as received: decoded and internally consistent, signatures not yet verified."""

    header: BlockHeader
    items: tuple[Item, ...]
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    pre_prepare: m.SignedMessage | None
    certificate: tuple[m.SignedMessage, ...]
    stored_hash: bytes = b""
    records: tuple[pb.RecordColumns, ...] = ()

    @property
    def requests(self) -> tuple[m.Request, ...]:
        """The full requests (only for a block without views)."""
        return tuple(i for i in self.items if isinstance(i, m.Request))


def block_to_proto(block: Block, *, for_client: bool = False) -> pb.Block:
    """A block for a peer (full requests, views only where erased) or for a client (public
    views of every segmented request, no pre-prepare)."""
    items: list[Item] = [e.request if e.request is not None else e.view for e in block.entries]
    return _block_proto(block.header.encode(), items, [e.status for e in block.entries],
                        [e.reason for e in block.entries],
                        None if block.pre_prepare is None else block.pre_prepare.wire,
                        [c.wire for c in block.certificate], for_client)


def _block_proto(header: bytes, items: list[Item], statuses: list[str], reasons: list[str],
                 pre_prepare: bytes | None, certificate: list[bytes],
                 for_client: bool) -> pb.Block:
    if for_client:
        items = [public_view(i) if isinstance(i, RequestView) or split_segments(i.payload)
                 is not None else i for i in items]
    views = [n for n, i in enumerate(items) if isinstance(i, RequestView)]
    encoded = [i.encode() if isinstance(i, RequestView) else codec.encode_request(i)
               for i in items]
    # Clients get no pre-prepare: the certificate proves the block, and an unverified
    # signature in a reply would only invite trusting it.
    return pb.Block(header=header, requests=encoded, statuses=statuses, reasons=reasons,
                    views=views, pre_prepare=b"" if views or pre_prepare is None or for_client
                    else pre_prepare, certificate=certificate)


def block_from_proto(msg: pb.Block, chain_id: bytes) -> WireBlock:
    """Decode a block and check that its parts agree: entry counts, the Merkle root over the
    request digests, and the pre-prepare when present (same sequence, digest and requests).
    Certificate entries must be COMMITs; whether they sign this block is
    `verify_certificate`'s job."""
    header = _header(msg.header, chain_id)
    n = header.entry_count
    if len(msg.requests) != n or len(msg.statuses) != n:
        raise WireError(f"block {header.height}: header says {n} entries, got "
                        f"{len(msg.requests)} requests and {len(msg.statuses)} statuses")
    if len(msg.reasons) not in (0, n):
        raise WireError(f"block {header.height}: {len(msg.reasons)} reasons for {n} entries")
    views = set(msg.views)
    if len(views) != len(msg.views) or any(v >= n for v in views):
        raise WireError(f"block {header.height}: bad view indexes")
    items = tuple(_view(f"block request[{i}]", r) if i in views
                  else _request(f"block request[{i}]", r) for i, r in enumerate(msg.requests))
    statuses = tuple(_status(f"block status[{i}]", s) for i, s in enumerate(msg.statuses))
    reasons = tuple(str(r) for r in msg.reasons) if msg.reasons else ("",) * n
    if merkle.merkle_root([_item_digest(i) for i in items]) != header.merkle_root:
        raise WireError(f"block {header.height}: requests do not match the header's merkle root")
    pre_prepare = None
    if msg.pre_prepare:
        pre_prepare = _signed("block pre_prepare", msg.pre_prepare, chain_id, m.PrePrepare)
        pp = pre_prepare.body
        assert isinstance(pp, m.PrePrepare)
        if pp.digest != header.merkle_root:
            raise WireError(f"block {header.height}: pre-prepare digest differs from the header")
        if (pp.epoch, pp.seq) != (header.epoch, header.height):
            raise WireError(f"block {header.height}: pre-prepare is for epoch {pp.epoch} "
                            f"sequence {pp.seq}")
        if views or pp.requests != items:
            raise WireError(f"block {header.height}: pre-prepare requests differ from the "
                            "block's")
    certificate = _commits("block certificate", msg.certificate, chain_id)
    if msg.stored_hash and len(msg.stored_hash) != DIGEST_BYTES:
        raise WireError(f"block {header.height}: stored hash is not {DIGEST_BYTES} bytes")
    return WireBlock(header, items, statuses, reasons, pre_prepare, certificate,
                     bytes(msg.stored_hash), tuple(msg.records))


def _view(what: str, data: bytes) -> RequestView:
    return _decode(what, lambda: RequestView.decode(bytes(data)))


# ------------------------------------------------------------------------------------ receipts

@dataclass(frozen=True)
class Receipt:
    """Proof that a request was committed: the block header, its commit certificate and the
    request's inclusion proof under the header's Merkle root."""

    record_id: str
    height: int
    header: BlockHeader
    certificate: tuple[m.SignedMessage, ...]
    proof: InclusionProof
    request: Item
    status: str
    reason: str


def receipt_to_proto(r: Receipt) -> pb.Receipt:
    out = pb.Receipt(
        record_id=r.record_id, height=r.height, block_header=r.header.encode(),
        certificate=[c.wire for c in r.certificate],
        proof=pb.InclusionProof(index=r.proof.index, size=r.proof.size, path=list(r.proof.path)),
        status=r.status, reason=r.reason)
    if isinstance(r.request, RequestView):
        out.request_view = r.request.encode()
    else:
        out.request = codec.encode_request(r.request)
    return out


def receipt_from_proto(msg: pb.Receipt, chain_id: bytes) -> Receipt:
    """Decode a receipt. Structural checks only; `verify_receipt` says whether it proves anything.
    """
    header = _header(msg.block_header, chain_id)
    certificate = _commits("receipt certificate", msg.certificate, chain_id)
    if not msg.HasField("proof"):
        raise WireError("receipt: missing inclusion proof")
    if len(msg.proof.path) > PROOF_PATH_MAX:
        raise WireError(f"receipt proof: path longer than {PROOF_PATH_MAX} hashes")
    for i, h in enumerate(msg.proof.path):
        if len(h) != DIGEST_BYTES:
            raise WireError(f"receipt proof: path[{i}] is not a {DIGEST_BYTES}-byte hash")
    proof = InclusionProof(index=msg.proof.index, size=msg.proof.size,
                           path=tuple(bytes(h) for h in msg.proof.path))
    if msg.request and msg.request_view:
        raise WireError("receipt: both a request and a request view")
    request: Item = _view("receipt request view", msg.request_view) if msg.request_view \
        else _request("receipt request", msg.request)
    status = _status("receipt", msg.status)
    return Receipt(record_id=msg.record_id, height=msg.height, header=header,
                   certificate=certificate, proof=proof, request=request, status=status,
                   reason=msg.reason)


def verify_receipt(r: Receipt, config: EpochConfig, verifier: Verifier) -> str | None:
    """None when the receipt proves that `r.request` was committed at `r.height` by a quorum of
    `config` (the validator set of the block's epoch), else why not."""
    digest = r.request.digest
    if r.record_id != digest.hex():
        return "record id is not the request digest"
    if r.height != r.header.height:
        return f"receipt height {r.height} differs from the block header's {r.header.height}"
    if r.proof.size != r.header.entry_count:
        return (f"inclusion proof is for {r.proof.size} entries, the block has "
                f"{r.header.entry_count}")
    if not merkle.verify_inclusion(digest, r.proof, r.header.merkle_root):
        return "inclusion proof does not lead to the block's merkle root"
    if config.epoch != r.header.epoch:
        return f"block is from epoch {r.header.epoch}, validator set given for {config.epoch}"
    if not verify_certificate(r.header, r.certificate, config, verifier):
        return f"certificate lacks {config.quorum} valid commits from the epoch's validators"
    return None


def read_signing_bytes(chain_id: bytes, client_id: str, timestamp_ms: int, method: str,
                       argument: str) -> bytes:
    """What a member signs to read (ReadAuth)."""
    return tagged_hash(b"consortium/read", chain_id, client_id.encode(),
                       timestamp_ms.to_bytes(8, "big"), method.encode(), argument.encode())


# ------------------------------------------------------------------------------------ requests

def submit_request_from_proto(msg: pb.SubmitRecordRequest, request_bytes_max: int) -> m.Request:
    """The client request inside a submission. Raises TooLarge over the size limit (checked
    before decoding) and WireError when it does not decode."""
    if len(msg.request) > request_bytes_max:
        raise TooLarge(f"request is {len(msg.request)} bytes, the limit is {request_bytes_max}")
    return _request("request", msg.request)


# ------------------------------------------------------------------------------ state transfer

def checkpoint_to_proto(snapshot: m.Snapshot,
                        proof: Iterable[m.SignedMessage]) -> pb.Checkpoint:
    return pb.Checkpoint(snapshot=codec.encode_snapshot(snapshot),
                         proof=[p.wire for p in proof])


def checkpoint_from_proto(msg: pb.Checkpoint,
                          chain_id: bytes) -> tuple[m.Snapshot, tuple[m.SignedMessage, ...]]:
    """Decode a stable checkpoint. The proof entries must be CHECKPOINTs for the snapshot's
    sequence; that they are a quorum signing its digest is `verify_checkpoint_proof`'s job."""
    snapshot = _decode("checkpoint snapshot",
                       lambda: codec.decode_snapshot(bytes(msg.snapshot), chain_id))
    proof = tuple(_signed(f"checkpoint proof[{i}]", p, chain_id, m.Checkpoint)
                  for i, p in enumerate(msg.proof))
    for i, p in enumerate(proof):
        assert isinstance(p.body, m.Checkpoint)
        if p.body.seq != snapshot.seq:
            raise WireError(f"checkpoint proof[{i}]: for sequence {p.body.seq}, the snapshot "
                            f"is at {snapshot.seq}")
    return snapshot, proof


# --------------------------------------------------------------------- server-side conversions

def _stored_item(data: bytes, redacted: bool, what: str) -> Item:
    return _view(what, data) if redacted else _request(what, data)


def stored_block_to_proto(stored: StoredBlock, *, for_client: bool = False) -> pb.Block:
    if not for_client and not any(stored.redacted):
        return pb.Block(header=stored.header, requests=list(stored.requests),
                        statuses=list(stored.statuses), reasons=list(stored.reasons),
                        pre_prepare=stored.pre_prepare, certificate=list(stored.certificate))
    items = [_stored_item(r, red, f"stored request[{i}]")
             for i, (r, red) in enumerate(zip(stored.requests, stored.redacted, strict=True))]
    return _block_proto(stored.header, items, list(stored.statuses), list(stored.reasons),
                        stored.pre_prepare or None, list(stored.certificate), for_client)


def record_columns_to_proto(c: RecordColumns) -> pb.RecordColumns:
    return pb.RecordColumns(
        index=c.idx, record_id=c.record_id, kind=c.kind, subject_id=c.subject_id,
        event_type=c.event_type, submitter_org=c.submitter_org,
        submitted_at_ms=c.submitted_at_ms, metadata=c.metadata,
        ciphertext_segment_hash=c.ciphertext_segment_hash or b"",
        key_segment_hashes=c.key_segment_hashes, erased_height=c.erased_height or 0)


def receipt_from_block(block: Block, index: int, *, for_client: bool = False) -> Receipt:
    entry = block.entries[index]
    item: Item = entry.request if entry.request is not None else entry.view
    if for_client:
        item = public_view(item) if isinstance(item, RequestView) or split_segments(
            item.payload) is not None else item
    return Receipt(record_id=entry.record_id, height=block.header.height, header=block.header,
                   certificate=block.certificate, proof=block.proof(index),
                   request=item, status=entry.status, reason=entry.reason)


def receipt_from_stored(stored: StoredBlock, index: int, chain_id: bytes, *,
                        show: Item | None = None) -> pb.Receipt:
    """A receipt built from the database copy of a block: the request shown is `show`, else the
    entry's public view."""
    header = _header(stored.header, chain_id)
    items = [_stored_item(r, red, f"stored request[{i}]")
             for i, (r, red) in enumerate(zip(stored.requests, stored.redacted, strict=True))]
    proof = merkle.inclusion_proof([i.digest for i in items], index)
    item = items[index]
    shown = show if show is not None else (
        public_view(item) if isinstance(item, RequestView) or split_segments(item.payload)
        is not None else item)
    return receipt_to_proto(Receipt(
        record_id=item.digest.hex(), height=header.height, header=header,
        certificate=tuple(_commits("stored certificate", stored.certificate, chain_id)),
        proof=proof, request=shown, status=stored.statuses[index],
        reason=stored.reasons[index]))


def record_view(rec: StoredRecord) -> RequestView:
    """A record's request as a reader sees it: public header and ciphertext, keys withheld."""
    item = _stored_item(rec.request, rec.redacted, "stored record request")
    view = item if isinstance(item, RequestView) else RequestView.of(item)
    return view.withhold(frozenset({1}))


def record_to_proto(rec: StoredRecord, view: RequestView, wrapped_keys: dict[str, bytes],
                    receipt: pb.Receipt | None, key_withheld: str) -> pb.RecordReply:
    shown = view.present()
    ciphertext = shown[1] if len(shown) > 1 and shown[1] is not None else b""
    reply = pb.RecordReply(
        record_id=rec.record_id, height=rec.height, kind=rec.kind, subject_id=rec.subject_id,
        event_type=rec.event_type, submitter_org=rec.submitter_org,
        submitted_at_ms=rec.submitted_at_ms, metadata=rec.metadata, ciphertext=ciphertext,
        wrapped_keys=[pb.WrappedKey(org=o, wrapped_key=k)
                      for o, k in sorted(wrapped_keys.items())],
        request_view=view.encode(), status=rec.status, key_withheld=key_withheld)
    if rec.erasure is not None:
        reply.erasure.CopyFrom(pb.Erasure(height=rec.erasure.height, by_org=rec.erasure.by_org,
                                          at_ms=rec.erasure.at_ms, reason=rec.erasure.reason))
    if receipt is not None:
        reply.receipt.CopyFrom(receipt)
    return reply


def block_from_wire(w: WireBlock, org_of: Callable[[str], str | None]) -> Block:
    """Rebuild a ledger block from a verified wire block (state transfer). Entry statuses and
    reasons come from the sender; records and transactions are re-decoded, so a RECORDED entry
    must hold a valid submission or transaction."""
    entries = []
    for i, (item, status, reason) in enumerate(zip(w.items, w.statuses, w.reasons,
                                                   strict=True)):
        request = item if isinstance(item, m.Request) else None
        view = item if isinstance(item, RequestView) else None
        sub = None
        action = None
        if status == EntryStatus.RECORDED:
            segments = item.present() if isinstance(item, RequestView) else \
                split_segments(item.payload)
            try:
                if segments and segments[0] and segments[0][0] != TxType.RECORD:
                    action = decode_tx(list(segments))
                elif request is not None:
                    sub = decode_submission(request.payload)
                elif not segments or segments[0] is None:
                    raise InvalidRecord("no public part")
            except InvalidTransaction as exc:
                raise WireError(f"block {w.header.height} entry {i} is marked recorded but "
                                f"{exc}") from exc
        sender = org_of(item.client_id) if action is not None else None
        entries.append(Entry(i, request, status, sub, reason, action, view, sender))
    return Block(w.header, tuple(entries), w.pre_prepare, w.certificate)
