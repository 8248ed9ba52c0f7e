"""Signed reads: what a member signs to read from a validator (`ReadAuth` on the wire).

The signature binds the chain, the client, its clock, the method and its argument, so a
captured read can be replayed neither on another chain, nor for another record, nor long after
(validators refuse a timestamp further than the genesis policy's read_clock_skew_ms from their
clock).
"""

from __future__ import annotations

from consortium.crypto.hashing import tagged_hash


def read_signing_bytes(chain_id: bytes, client_id: str, timestamp_ms: int, method: str,
                       argument: str) -> bytes:
    return tagged_hash(b"consortium/read", chain_id, client_id.encode(),
                       timestamp_ms.to_bytes(8, "big"), method.encode(), argument.encode())
