"""Request payloads: raw, segmented (parts can be withheld) or an envelope of many items.

A request payload is one of three forms, told apart by its first bytes:

    raw        = any bytes that are neither of the forms below
    segmented  = SEG_MAGIC | count:u16 | (length:u32 | bytes){count}
    envelope   = ENV_MAGIC | count:u32 | (length:u32 | item){count}     item = raw or segmented

The digest a client signs commits to a payload through hashes, never through its bytes alone:

    payload_digest(raw)       = H("consortium/payload-raw", raw)
    payload_digest(segmented) = H("consortium/payload-segments", H_seg(s0), H_seg(s1), ...)
    payload_digest(envelope)  = H("consortium/envelope", count:u32, merkle_root(item digests))
    item digest               = payload_digest of the item (raw or segmented)

*Segments* let a ledger keep or show a record with some parts replaced by their hashes (a patient
record's wrapped keys erased, another organisation's key withheld from a reader) while anyone can
still recompute the digest, check the client's signature and the Merkle inclusion.

*Envelopes* make a batch of records the unit a client signs: one Ed25519 signature covers the
Merkle root over its items' digests (RFC 6962, `crypto/merkle.py`), so a validator checks one
signature per envelope, and a record's receipt proves item -> envelope root -> block root ->
commit certificate. A withheld item keeps its digest leaf, so erasure still verifies.

The consensus core treats payloads as opaque bytes; only these digest rules know their forms.
Each form hashes under its own tag and a payload has exactly one form (the first one it parses
as), so every byte string has exactly one digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from consortium.crypto.hashing import tagged_hash
from consortium.crypto.merkle import merkle_root

MAGIC = b"\xc0SEG"
ENVELOPE_MAGIC = b"\xc0ENV"
SEGMENTS_MAX = 1024
ENVELOPE_ITEMS_MAX = 65536
"""Items per envelope (the request size limit bounds an envelope's bytes first in practice)."""
_TAG_RAW = b"consortium/payload-raw"
_TAG_SEGMENTS = b"consortium/payload-segments"
_TAG_SEGMENT = b"consortium/payload-segment"
_TAG_ENVELOPE = b"consortium/envelope"


def _tag_state(tag: bytes) -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(len(tag).to_bytes(2, "big"))
    h.update(tag)
    return h


_SEGMENT_STATE = _tag_state(_TAG_SEGMENT)
"""The tag prefix of a segment hash, hashed once: `segment_hash` copies it (per-record hot path;
the result equals `tagged_hash(_TAG_SEGMENT, segment)`)."""


def encode_segments(segments: Sequence[bytes]) -> bytes:
    if not 1 <= len(segments) <= SEGMENTS_MAX:
        raise ValueError(f"a segmented payload has 1 to {SEGMENTS_MAX} segments")
    parts = [MAGIC, len(segments).to_bytes(2, "big")]
    for s in segments:
        parts.append(len(s).to_bytes(4, "big"))
        parts.append(s)
    return b"".join(parts)


def split_segments(payload: bytes) -> list[bytes] | None:
    """The segments of a segmented payload, or None when `payload` is not one."""
    if not payload.startswith(MAGIC) or len(payload) < len(MAGIC) + 2:
        return None
    pos = len(MAGIC)
    count = int.from_bytes(payload[pos:pos + 2], "big")
    pos += 2
    if not 1 <= count <= SEGMENTS_MAX:
        return None
    out = []
    size = len(payload)
    for _ in range(count):
        if pos + 4 > size:
            return None
        n = int.from_bytes(payload[pos:pos + 4], "big")
        pos += 4
        if pos + n > size:
            return None
        out.append(payload[pos:pos + n])
        pos += n
    return out if pos == size else None


def encode_envelope(items: Sequence[bytes]) -> bytes:
    """An envelope of items (each raw or segmented; an item may not itself be an envelope)."""
    if not 1 <= len(items) <= ENVELOPE_ITEMS_MAX:
        raise ValueError(f"an envelope holds 1 to {ENVELOPE_ITEMS_MAX} items")
    parts = [ENVELOPE_MAGIC, len(items).to_bytes(4, "big")]
    for item in items:
        if item.startswith(ENVELOPE_MAGIC):
            raise ValueError("an envelope item cannot be an envelope")
        parts.append(len(item).to_bytes(4, "big"))
        parts.append(item)
    return b"".join(parts)


def split_envelope(payload: bytes) -> list[bytes] | None:
    """The items of an envelope, or None when `payload` is not a well-formed envelope (an item
    that is itself an envelope makes the whole payload malformed, hence not an envelope)."""
    if not payload.startswith(ENVELOPE_MAGIC) or len(payload) < len(ENVELOPE_MAGIC) + 4:
        return None
    pos = len(ENVELOPE_MAGIC)
    count = int.from_bytes(payload[pos:pos + 4], "big")
    pos += 4
    size = len(payload)
    if not 1 <= count <= ENVELOPE_ITEMS_MAX or count * 4 > size - pos:
        return None
    out = []
    for _ in range(count):
        if pos + 4 > size:
            return None
        n = int.from_bytes(payload[pos:pos + 4], "big")
        pos += 4
        if pos + n > size:
            return None
        item = payload[pos:pos + n]
        if item.startswith(ENVELOPE_MAGIC):
            return None
        out.append(item)
        pos += n
    return out if pos == size else None


def segment_hash(segment: bytes) -> bytes:
    h = _SEGMENT_STATE.copy()
    h.update(len(segment).to_bytes(8, "big"))
    h.update(segment)
    return h.digest()


def digest_of_segment_hashes(hashes: Sequence[bytes]) -> bytes:
    return tagged_hash(_TAG_SEGMENTS, *hashes)


def item_digest(item: bytes) -> bytes:
    """The digest of one envelope item (a record): its leaf in the envelope's Merkle tree."""
    segments = split_segments(item)
    if segments is None:
        return tagged_hash(_TAG_RAW, item)
    return digest_of_segment_hashes([segment_hash(s) for s in segments])


def envelope_digest(count: int, root: bytes) -> bytes:
    """What an envelope contributes to its request digest: its item count and Merkle root."""
    return tagged_hash(_TAG_ENVELOPE, count.to_bytes(4, "big"), root)


def envelope_digest_of(items: Sequence[bytes]) -> bytes:
    return envelope_digest(len(items), merkle_root([item_digest(i) for i in items]))


def payload_digest(payload: bytes) -> bytes:
    if payload.startswith(ENVELOPE_MAGIC):
        items = split_envelope(payload)
        if items is not None:
            return envelope_digest_of(items)
    return item_digest(payload)
