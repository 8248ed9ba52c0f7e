"""Domain-separated SHA-256.

Every hash in the system is taken over a domain tag first, so that bytes hashed for one purpose
(a request, a batch, a block) can never be confused with bytes hashed for another.
"""

from __future__ import annotations

import hashlib

DIGEST_BYTES = 32


def tagged_hash(tag: bytes, *parts: bytes) -> bytes:
    """SHA-256 over a tag and length-prefixed parts (unambiguous: no two part lists collide)."""
    h = hashlib.sha256()
    h.update(len(tag).to_bytes(2, "big"))
    h.update(tag)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
