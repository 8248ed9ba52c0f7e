"""Envelope encryption of record payloads, done by the submitting client.

A fresh 256-bit key per record encrypts the payload with XChaCha20-Poly1305; the record's public
metadata is the associated data, so ciphertext cannot be moved to another record. The record key
is then sealed (X25519 + XSalsa20-Poly1305, libsodium's sealed box) to each reader organisation's
public key. Validators store all of it and can read none of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.utils

KEY_BYTES = 32
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES


class DecryptionError(ValueError):
    """The key is not for this reader, or the ciphertext or its metadata was altered."""


@dataclass(frozen=True, slots=True)
class Sealed:
    ciphertext: bytes
    """nonce (24 bytes) || XChaCha20-Poly1305 ciphertext and tag."""
    wrapped_keys: dict[str, bytes]
    """Reader organisation id -> the record key sealed to that organisation."""


class OrgKeyPair:
    """An organisation's X25519 key pair for reading records."""

    __slots__ = ("_private",)

    def __init__(self, private_key: bytes) -> None:
        self._private = nacl.public.PrivateKey(private_key)

    @classmethod
    def generate(cls) -> OrgKeyPair:
        return cls(bytes(nacl.public.PrivateKey.generate()))

    @property
    def private_key(self) -> bytes:
        return bytes(self._private)

    @property
    def public_key(self) -> bytes:
        return bytes(self._private.public_key)

    def unwrap(self, wrapped_key: bytes) -> bytes:
        try:
            key = nacl.public.SealedBox(self._private).decrypt(wrapped_key)
        except nacl.exceptions.CryptoError as exc:
            raise DecryptionError("this record key was not wrapped for this organisation") from exc
        if len(key) != KEY_BYTES:
            raise DecryptionError("wrapped record key has the wrong length")
        return key


def wrap_key(record_key: bytes, reader_public_key: bytes) -> bytes:
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(reader_public_key)).encrypt(
        record_key))


def seal(payload: bytes, associated_data: bytes, readers: dict[str, bytes]) -> Sealed:
    """Encrypt `payload` under a fresh key and wrap that key for every reader's public key."""
    if not readers:
        raise ValueError("a record needs at least one reader organisation")
    key = nacl.utils.random(KEY_BYTES)
    nonce = nacl.utils.random(NONCE_BYTES)
    ct = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, associated_data,
                                                                   nonce, key)
    return Sealed(nonce + ct, {org: wrap_key(key, pk) for org, pk in sorted(readers.items())})


def open_with_key(ciphertext: bytes, associated_data: bytes, record_key: bytes) -> bytes:
    if len(ciphertext) < NONCE_BYTES + 16:
        raise DecryptionError("ciphertext is truncated")
    try:
        return bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext[NONCE_BYTES:], associated_data, ciphertext[:NONCE_BYTES], record_key))
    except nacl.exceptions.CryptoError as exc:
        raise DecryptionError("ciphertext or metadata was altered") from exc


def open_sealed(ciphertext: bytes, associated_data: bytes, wrapped_key: bytes,
                reader: OrgKeyPair) -> bytes:
    """Decrypt as `reader`: unwrap its copy of the record key, then the payload."""
    return open_with_key(ciphertext, associated_data, reader.unwrap(wrapped_key))
