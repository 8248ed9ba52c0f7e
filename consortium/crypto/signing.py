"""Ed25519 signing behind a small interface.

The consensus core only sees `Signer` and `Verifier`; keeping them small lets a driver batch or
cache verifications (see `CachingVerifier`) without touching protocol code.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import nacl.exceptions
import nacl.signing

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class Signer(Protocol):
    """Something that signs bytes with one private key."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a signature against a public key; never raises on bad input."""

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool: ...


class Ed25519Signer:
    """An Ed25519 private key (pynacl / libsodium)."""

    __slots__ = ("_key", "_public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


class Ed25519Verifier:
    """Stateless Ed25519 verification; malformed keys or signatures verify as False."""

    __slots__ = ()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True


class CachingVerifier:
    """Remembers the last `entries_max` successful verifications.

    A signed message is often seen several times (relayed in a view change, in a new view, in a
    retransmission); verifying it once is enough. Only successes are cached, keyed by the full
    (key, message, signature) triple, so a cache hit can never turn a bad signature into a good one.
    """

    __slots__ = ("_entries_max", "_inner", "_ok", "hits", "misses")

    def __init__(self, inner: Verifier, entries_max: int = 65536) -> None:
        if entries_max <= 0:
            raise ValueError("entries_max must be positive")
        self._inner = inner
        self._ok: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
        self._entries_max = entries_max
        self.hits = 0
        self.misses = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = (public_key, message, signature)
        if key in self._ok:
            self.hits += 1
            return True
        self.misses += 1
        if not self._inner.verify(public_key, message, signature):
            return False
        self._ok[key] = None
        if len(self._ok) > self._entries_max:
            self._ok.popitem(last=False)
        return True


class NullVerifier:
    """Accepts every well-sized signature. Only for measuring the cost of the protocol logic
    without cryptography (`bench-core --no-verify`); never used by a validator."""

    __slots__ = ()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return len(signature) == SIGNATURE_BYTES
