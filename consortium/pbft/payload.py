"""Request payloads whose parts can be withheld without breaking the request's digest.

A request payload is either *raw* (opaque bytes) or *segmented*:

    segmented = MAGIC | count:u16 | (length:u32 | bytes){count}

The digest a client signs commits to a segmented payload through the hashes of its segments,
not their bytes:

    payload_digest(raw)       = H("consortium/payload-raw", raw)
    payload_digest(segmented) = H("consortium/payload-segments", H_seg(s0), H_seg(s1), ...)

So a ledger can later show or keep a request with some segments replaced by their hashes (a
patient record's wrapped keys erased, another organisation's key withheld from a reader) and
anyone can still recompute the request digest, check the client's signature over it and its
Merkle inclusion in a committed block. The consensus core treats payloads as opaque; only this
digest rule knows about segments. Raw and segmented payloads hash under different tags, and a
payload is segmented exactly when it parses as one, so every byte string has one digest.
"""

from __future__ import annotations

from collections.abc import Sequence

from consortium.crypto.hashing import tagged_hash

MAGIC = b"\xc0SEG"
SEGMENTS_MAX = 1024
_TAG_RAW = b"consortium/payload-raw"
_TAG_SEGMENTS = b"consortium/payload-segments"
_TAG_SEGMENT = b"consortium/payload-segment"


def encode_segments(segments: Sequence[bytes]) -> bytes:
    if not 1 <= len(segments) <= SEGMENTS_MAX:
        raise ValueError(f"a segmented payload has 1 to {SEGMENTS_MAX} segments")
    parts = [MAGIC, len(segments).to_bytes(2, "big")]
    for s in segments:
        parts.append(len(s).to_bytes(4, "big"))
        parts.append(s)
    return b"".join(parts)


def split_segments(payload: bytes) -> list[bytes] | None:
    """The segments of a segmented payload, or None when `payload` is raw."""
    if not payload.startswith(MAGIC) or len(payload) < len(MAGIC) + 2:
        return None
    pos = len(MAGIC)
    count = int.from_bytes(payload[pos:pos + 2], "big")
    pos += 2
    if not 1 <= count <= SEGMENTS_MAX:
        return None
    out = []
    for _ in range(count):
        if pos + 4 > len(payload):
            return None
        n = int.from_bytes(payload[pos:pos + 4], "big")
        pos += 4
        if pos + n > len(payload):
            return None
        out.append(payload[pos:pos + n])
        pos += n
    return out if pos == len(payload) else None


def segment_hash(segment: bytes) -> bytes:
    return tagged_hash(_TAG_SEGMENT, segment)


def digest_of_segment_hashes(hashes: Sequence[bytes]) -> bytes:
    return tagged_hash(_TAG_SEGMENTS, *hashes)


def payload_digest(payload: bytes) -> bytes:
    segments = split_segments(payload)
    if segments is None:
        return tagged_hash(_TAG_RAW, payload)
    return digest_of_segment_hashes([segment_hash(s) for s in segments])
