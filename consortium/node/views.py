"""Server-side conversions: what a validator serves from its database (stored rows to the wire
contract). Only the validator imports this; clients decode with `consortium.wire`.

A receipt is built from `ReceiptMaterial`, not from the whole block: the request's proof needs
every request's digest (stored), the item's proof only the items of its own envelope, so one
receipt from a block of 65,000 records hashes one envelope, not the block.
"""

from __future__ import annotations

from consortium.crypto.merkle import MerkleTree
from consortium.ledger.blocks import EnvelopeStatus
from consortium.ledger.items import Item, ItemView, digest_of, public_view, record_id
from consortium.pbft import messages as m
from consortium.storage.rows import (
    ReceiptMaterial,
    RecordColumns,
    StoredBlock,
    StoredEnvelope,
    StoredItem,
    StoredRecord,
)
from consortium.wire import (
    BlockReceipts,
    EnvelopeResult,
    Receipt,
    WireError,
    commits,
    header_from_bytes,
    item_view,
    pb,
    receipt_to_proto,
)


def stored_item(it: StoredItem, what: str) -> Item:
    return item_view(what, it.data) if it.redacted else it.data


def request_digest(e: StoredEnvelope) -> bytes:
    return m.request_digest_from(e.client_id, e.nonce, m.RequestKind(e.kind), e.payload_digest)


def stored_block_to_proto(stored: StoredBlock, *, for_client: bool = False) -> pb.Block:
    """A stored block for a peer (items as stored) or for a client (public views only)."""
    items: list[Item] = [stored_item(it, f"block {stored.height} item {i}")
                         for i, it in enumerate(stored.items)]
    if for_client:
        items = [public_view(i) for i in items]
    return pb.Block(
        header=stored.header,
        envelopes=[pb.Envelope(client_id=e.client_id, nonce=e.nonce, kind=e.kind,
                               signature=e.signature, payload_digest=e.payload_digest,
                               status=e.status, reason=e.reason,
                               entry_count=e.entry_count
                               if e.status == EnvelopeStatus.EXECUTED else 0,
                               raw=e.raw or b"") for e in stored.envelopes],
        items=[i.encode() if isinstance(i, ItemView) else i for i in items],
        views=[n for n, i in enumerate(items) if isinstance(i, ItemView)],
        statuses=[it.status for it in stored.items], reasons=[it.reason for it in stored.items],
        pre_prepare=stored.pre_prepare, certificate=list(stored.certificate))


def receipt_from_material(mat: ReceiptMaterial, chain_id: bytes, *,
                          show: Item | None = None) -> pb.Receipt:
    """One entry's receipt; its item shown as `show`, else as its public view."""
    header = header_from_bytes(mat.header, chain_id)
    env = mat.envelopes[mat.envelope]
    items = [stored_item(it, f"block {header.height} item") for it in mat.items]
    if len(items) != env.entry_count or not 0 <= mat.item_index < len(items):
        raise WireError(f"block {header.height}: stored envelope {env.index} has "
                        f"{len(items)} items, {env.entry_count} expected")
    request_tree = MerkleTree([request_digest(e) for e in mat.envelopes])
    item_tree = MerkleTree([digest_of(i) for i in items])
    item = items[mat.item_index]
    entry = mat.items[mat.item_index]
    return receipt_to_proto(Receipt(
        record_id=record_id(request_digest(env), mat.item_index), height=header.height,
        header=header, certificate=commits("stored certificate", mat.certificate, chain_id),
        request_proof=request_tree.proof(env.index), client_id=env.client_id, nonce=env.nonce,
        kind=m.RequestKind(env.kind), signature=env.signature,
        item_proof=item_tree.proof(mat.item_index),
        item=show if show is not None else public_view(item), status=entry.status,
        reason=entry.reason))


def block_receipts_from_stored(stored: StoredBlock, indexes: list[int],
                               chain_id: bytes) -> BlockReceipts:
    """What a stored block says about some of its requests (a replay's original)."""
    header = header_from_bytes(stored.header, chain_id)
    tree = MerkleTree([request_digest(e) for e in stored.envelopes])
    results = []
    for i in indexes:
        e = stored.envelopes[i]
        items = stored.items[e.first_entry: e.first_entry + e.entry_count] \
            if e.status == EnvelopeStatus.EXECUTED else ()
        results.append(EnvelopeResult(e.client_id, e.nonce, tree.proof(i), e.status, e.reason,
                                      tuple(it.status for it in items),
                                      tuple(it.reason for it in items)))
    return BlockReceipts(header.height, header, commits("stored certificate",
                                                        stored.certificate, chain_id),
                         tuple(results))


def record_view(rec: StoredRecord) -> ItemView:
    """A record's item as a reader sees it: public header and ciphertext, keys withheld."""
    item = item_view("stored record", rec.item) if rec.redacted else ItemView.of(rec.item)
    return item.withhold(frozenset({1}))


def record_to_proto(rec: StoredRecord, view: ItemView, wrapped_keys: dict[str, bytes],
                    receipt: pb.Receipt | None, key_withheld: str,
                    document: bytes, also: tuple[str, ...]) -> pb.RecordReply:
    shown = view.present()
    ciphertext = shown[1] if len(shown) > 1 and shown[1] is not None else b""
    reply = pb.RecordReply(
        record_id=rec.record_id, height=rec.height, kind=rec.kind, subject_id=rec.subject_id,
        event_type=rec.event_type, submitter_org=rec.submitter_org,
        submitted_at_ms=rec.submitted_at_ms, metadata=rec.metadata, ciphertext=ciphertext,
        wrapped_keys=[pb.WrappedKey(org=o, wrapped_key=k)
                      for o, k in sorted(wrapped_keys.items())],
        item_view=view.encode(), status=rec.status, key_withheld=key_withheld,
        screening=rec.screening, also=list(also), document=document)
    if rec.erasure is not None:
        reply.erasure.CopyFrom(pb.Erasure(height=rec.erasure.height, by_org=rec.erasure.by_org,
                                          at_ms=rec.erasure.at_ms, reason=rec.erasure.reason))
    if receipt is not None:
        reply.receipt.CopyFrom(receipt)
    return reply


def record_columns_to_proto(c: RecordColumns) -> pb.RecordColumns:
    return pb.RecordColumns(
        index=c.idx, record_id=c.record_id, kind=c.kind, subject_id=c.subject_id,
        event_type=c.event_type, submitter_org=c.submitter_org,
        submitted_at_ms=c.submitted_at_ms, metadata=c.metadata, readers=list(c.readers),
        erased_height=c.erased_height or 0)
