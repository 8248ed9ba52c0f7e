"""Domain-separated SHA-256.

Every hash in the system is taken over a domain tag first, so that bytes hashed for one purpose
(a request, a batch, a block) can never be confused with bytes hashed for another.
"""

from __future__ import annotations

import hashlib

DIGEST_BYTES = 32


_PREFIXES: dict[bytes, hashlib._Hash] = {}
"""The hash state after each tag seen so far (the tags are a fixed set of constants): copying
it saves hashing the tag again on every call (tagged hashes run per record, per segment)."""


def tagged_hash(tag: bytes, *parts: bytes) -> bytes:
    """SHA-256 over a tag and length-prefixed parts (unambiguous: no two part lists collide)."""
    prefix = _PREFIXES.get(tag)
    if prefix is None:
        prefix = hashlib.sha256()
        prefix.update(len(tag).to_bytes(2, "big"))
        prefix.update(tag)
        if len(_PREFIXES) < 256:
            _PREFIXES[tag] = prefix
    h = prefix.copy()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
