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
from consortium.crypto.hashing import DIGEST_BYTES
from consortium.crypto.merkle import InclusionProof
from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import Block, BlockHeader, Entry, EntryStatus, verify_certificate
from consortium.ledger.records import InvalidRecord, decode_submission
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import batch_digest
from consortium.storage.store import StoredBlock, StoredRecord

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

@dataclass(frozen=True)
class WireBlock:
    """A block as received: decoded and internally consistent, signatures not yet verified."""

    header: BlockHeader
    requests: tuple[m.Request, ...]
    statuses: tuple[str, ...]
    pre_prepare: m.SignedMessage
    certificate: tuple[m.SignedMessage, ...]


def block_to_proto(block: Block) -> pb.Block:
    return pb.Block(
        header=block.header.encode(),
        requests=[codec.encode_request(e.request) for e in block.entries],
        statuses=[e.status for e in block.entries],
        pre_prepare=block.pre_prepare.wire,
        certificate=[c.wire for c in block.certificate])


def block_from_proto(msg: pb.Block, chain_id: bytes) -> WireBlock:
    """Decode a block and check that its parts agree: entry counts, the Merkle root over the
    requests, and the pre-prepare (same sequence, digest and requests). Certificate entries must
    be COMMITs; whether they sign this block is `verify_certificate`'s job."""
    header = _header(msg.header, chain_id)
    n = header.entry_count
    if len(msg.requests) != n or len(msg.statuses) != n:
        raise WireError(f"block {header.height}: header says {n} entries, got "
                        f"{len(msg.requests)} requests and {len(msg.statuses)} statuses")
    requests = tuple(_request(f"block request[{i}]", r) for i, r in enumerate(msg.requests))
    statuses = tuple(_status(f"block status[{i}]", s) for i, s in enumerate(msg.statuses))
    if batch_digest(requests) != header.merkle_root:
        raise WireError(f"block {header.height}: requests do not match the header's merkle root")
    pre_prepare = _signed("block pre_prepare", msg.pre_prepare, chain_id, m.PrePrepare)
    pp = pre_prepare.body
    assert isinstance(pp, m.PrePrepare)
    if pp.digest != header.merkle_root:
        raise WireError(f"block {header.height}: pre-prepare digest differs from the header")
    if (pp.epoch, pp.seq) != (header.epoch, header.height):
        raise WireError(f"block {header.height}: pre-prepare is for epoch {pp.epoch} "
                        f"sequence {pp.seq}")
    if pp.requests != requests:
        raise WireError(f"block {header.height}: pre-prepare requests differ from the block's")
    certificate = _commits("block certificate", msg.certificate, chain_id)
    return WireBlock(header, requests, statuses, pre_prepare, certificate)


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
    request: m.Request
    status: str
    reason: str


def receipt_to_proto(r: Receipt) -> pb.Receipt:
    return pb.Receipt(
        record_id=r.record_id, height=r.height, block_header=r.header.encode(),
        certificate=[c.wire for c in r.certificate],
        proof=pb.InclusionProof(index=r.proof.index, size=r.proof.size, path=list(r.proof.path)),
        request=codec.encode_request(r.request), status=r.status, reason=r.reason)


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
    request = _request("receipt request", msg.request)
    status = _status("receipt", msg.status)
    return Receipt(record_id=msg.record_id, height=msg.height, header=header,
                   certificate=certificate, proof=proof, request=request, status=status,
                   reason=msg.reason)


def verify_receipt(r: Receipt, config: EpochConfig, verifier: Verifier) -> str | None:
    """None when the receipt proves that `r.request` was committed at `r.height` by a quorum of
    `config` (the validator set of the block's epoch), else why not."""
    if r.record_id != r.request.digest.hex():
        return "record id is not the request digest"
    if r.height != r.header.height:
        return f"receipt height {r.height} differs from the block header's {r.header.height}"
    if r.proof.size != r.header.entry_count:
        return (f"inclusion proof is for {r.proof.size} entries, the block has "
                f"{r.header.entry_count}")
    if not merkle.verify_inclusion(r.request.digest, r.proof, r.header.merkle_root):
        return "inclusion proof does not lead to the block's merkle root"
    if config.epoch != r.header.epoch:
        return f"block is from epoch {r.header.epoch}, validator set given for {config.epoch}"
    if not verify_certificate(r.header, r.certificate, config, verifier):
        return f"certificate lacks {config.quorum} valid commits from the epoch's validators"
    return None


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

def stored_block_to_proto(stored: StoredBlock) -> pb.Block:
    return pb.Block(header=stored.header, requests=list(stored.requests),
                    statuses=list(stored.statuses), pre_prepare=stored.pre_prepare,
                    certificate=list(stored.certificate))


def receipt_from_block(block: Block, index: int) -> Receipt:
    entry = block.entries[index]
    return Receipt(record_id=entry.record_id, height=block.header.height, header=block.header,
                   certificate=block.certificate, proof=block.proof(index),
                   request=entry.request, status=entry.status, reason=entry.reason)


def receipt_from_stored(stored: StoredBlock, index: int, chain_id: bytes) -> pb.Receipt:
    """A receipt built from the database copy of a block (bytes passed through as stored)."""
    header = _header(stored.header, chain_id)
    requests = [_request(f"stored request[{i}]", r) for i, r in enumerate(stored.requests)]
    proof = merkle.inclusion_proof([r.digest for r in requests], index)
    return pb.Receipt(
        record_id=requests[index].digest.hex(), height=header.height, block_header=stored.header,
        certificate=list(stored.certificate),
        proof=pb.InclusionProof(index=proof.index, size=proof.size, path=list(proof.path)),
        request=stored.requests[index], status=stored.statuses[index],
        reason=stored.reasons[index])


def record_to_proto(rec: StoredRecord) -> pb.RecordReply:
    return pb.RecordReply(
        record_id=rec.record_id, height=rec.height, kind=rec.kind, subject_id=rec.subject_id,
        event_type=rec.event_type, submitter_org=rec.submitter_org,
        submitted_at_ms=rec.submitted_at_ms, metadata=rec.metadata, ciphertext=rec.ciphertext,
        wrapped_keys=[pb.WrappedKey(org=o, wrapped_key=k)
                      for o, k in sorted(rec.wrapped_keys.items())],
        request=rec.request, status=rec.status)


def block_from_wire(w: WireBlock) -> Block:
    """Rebuild a ledger block from a verified wire block (state transfer). Entry statuses come
    from the sender; records are re-decoded, so a RECORDED entry must hold a valid submission."""
    entries = []
    for i, (r, status) in enumerate(zip(w.requests, w.statuses, strict=True)):
        sub = None
        if status == EntryStatus.RECORDED:
            try:
                sub = decode_submission(r.payload)
            except InvalidRecord as exc:
                raise WireError(f"block {w.header.height} entry {i} is marked recorded but "
                                f"{exc}") from exc
        entries.append(Entry(i, r, status, sub))
    return Block(w.header, tuple(entries), w.pre_prepare, w.certificate)
