"""Receipts: proof that an item (a record or transaction) was committed, checked offline.

    item digest --item proof--> envelope root --(count)--> envelope digest
    --(client, nonce, kind)--> request digest --request proof--> block merkle root
    --(request count, proposal time)--> proposal digest <-- 2f+1 COMMITs of the block's epoch

and the record id is H(request digest, item index). A client that submitted an envelope holds
its items, so a block's answer (`BlockReceipts`) carries only the request's proof: the client
proves every item of it from its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from consortium.crypto import merkle
from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import BlockHeader
from consortium.ledger.items import Item, digest_of, record_id
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import envelope_digest
from consortium.verify.certificates import verify_certificate
from consortium.wire import BlockReceipts, EnvelopeResult, Receipt


def verify_receipt(r: Receipt, config: EpochConfig, verifier: Verifier, *,
                   client_key: bytes | None = None) -> str | None:
    """None when the receipt proves that `r.item` was committed at `r.height` by a quorum of
    `config` (the validator set of the block's epoch), else why not. With `client_key`, the
    client's signature over the request is checked too (non-repudiation)."""
    if r.height != r.header.height:
        return f"receipt height {r.height} differs from the block header's {r.header.height}"
    inner = merkle.root_from_proof(digest_of(r.item), r.item_proof)
    if inner is None:
        return "the item proof does not fit its envelope"
    request = m.request_digest_from(r.client_id, r.nonce, r.kind,
                                    envelope_digest(r.item_proof.size, inner))
    if r.record_id != record_id(request, r.item_proof.index):
        return "record id is not the item's (request digest, index)"
    problem = _request_in_block(request, r.request_proof, r.header)
    if problem:
        return problem
    if client_key is not None and not verifier.verify(
            client_key, m.request_signing_bytes(r.header.chain_id, request), r.signature):
        return "the client's signature does not cover the request"
    if not verify_certificate(r.header, r.certificate, config, verifier):
        return (f"certificate lacks {config.quorum} valid commits from epoch "
                f"{config.epoch}'s validators")
    return None


def _request_in_block(request_digest: bytes, proof: merkle.InclusionProof,
                      header: BlockHeader) -> str:
    if proof.size != header.request_count:
        return (f"inclusion proof is for {proof.size} requests, the block has "
                f"{header.request_count}")
    if not merkle.verify_inclusion(request_digest, proof, header.merkle_root):
        return "the request's inclusion proof does not lead to the block's merkle root"
    return ""


def verify_block_receipts(b: BlockReceipts, config: EpochConfig, verifier: Verifier) -> str | None:
    """The block part of a reply (its certificate), checked once for all its results."""
    if not verify_certificate(b.header, b.certificate, config, verifier):
        return (f"certificate lacks {config.quorum} valid commits from epoch "
                f"{config.epoch}'s validators")
    return None


def verify_envelope_result(e: EnvelopeResult, header: BlockHeader,
                           request: m.Request) -> str | None:
    """That a (certified) block holds this client's request where the result says."""
    if (e.client_id, e.nonce) != request.key:
        return "the result names another request"
    return _request_in_block(request.digest, e.request_proof, header) or None


def item_receipts(e: EnvelopeResult, b: BlockReceipts, request: m.Request,
                  items: Sequence[Item]) -> list[Receipt]:
    """Receipts for every item of a client's own envelope, from a verified block answer."""
    tree = merkle.MerkleTree([digest_of(i) for i in items])
    statuses = e.item_statuses or ("recorded",) * len(items)
    reasons = e.item_reasons or ("",) * len(items)
    return [Receipt(record_id=record_id(request.digest, k), height=b.height, header=b.header,
                    certificate=b.certificate, request_proof=e.request_proof,
                    client_id=request.client_id, nonce=request.nonce, kind=request.kind,
                    signature=request.signature, item_proof=tree.proof(k), item=item,
                    status=statuses[k], reason=reasons[k])
            for k, item in enumerate(items)]
