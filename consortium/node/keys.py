"""A validator's keys: who may sign requests (clients and validators, as the ledger's key
changes say), and this validator's own signing keys across a rotation.

A rotation (`consortium keys rotate --validator`) leaves the new seed next to the current one
(`signing.key.next`) before it asks the ledger for the change, so the validator holds the new
key before the epoch that names it begins: the replica signs each epoch's messages with the key
that epoch's validator set names (`Replica.add_signer`) and switches without a restart. When
that epoch has begun, the files are promoted (`signing.key` becomes the new key, the old one is
kept as `signing.key.replaced-<epoch>`), so a restart finds the key in force.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import structlog

from consortium.crypto.signing import Ed25519Signer
from consortium.ledger import keyrules as kr
from consortium.ledger import membership as ms
from consortium.ledger.transactions import applicant_key
from consortium.localnet import read_seed

log = structlog.get_logger("consortium.keys")

NEXT_SUFFIX = ".next"


class ClientKeys:
    """Who may sign requests: the genesis clients and validators, the identities named by join
    requests on the ledger (`MembershipState.client_keys`), and applicants, whose client id
    carries their key (what each identity may do is decided at execution); with the key
    revocations and rotations on the ledger (`MembershipState.key_states`,
    `rotated_validator_keys`)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._genesis = keys
        self._ledger: dict[str, bytes] = {}
        self.changed: dict[str, kr.KeyState] = {}
        self._rotated: dict[str, tuple[bytes, ...]] = {}
        self.epoch_key: Callable[[int], bytes | None] = lambda replica_id: None
        """The key the current epoch's validator set names for a validator (None: unknown)."""

    def update(self, membership: ms.MembershipState) -> None:
        self._ledger = {k: v for k, v in membership.client_keys().items()
                        if k not in self._genesis}
        self.changed = membership.key_states({**self._ledger, **self._genesis})
        self._rotated = membership.rotated_validator_keys()

    @staticmethod
    def _own_id(client_id: str) -> str:
        if client_id.startswith(ms.RECONFIG_PREFIX):
            return ms.VALIDATOR_PREFIX + client_id.removeprefix(ms.RECONFIG_PREFIX)
        return client_id

    def base_key(self, client_id: str) -> bytes | None:
        """The key from genesis or the join request (before any change on the ledger)."""
        client_id = self._own_id(client_id)
        key = self._genesis.get(client_id)
        if key is None:
            key = self._ledger.get(client_id)
        return key if key is not None else applicant_key(client_id)

    def client_key(self, client_id: str) -> bytes | None:
        """The key that signs for `client_id` now (None: unknown, or its key is revoked)."""
        client_id = self._own_id(client_id)
        state = self.changed.get(client_id)
        if state is not None:
            return None if state.revoked_by is not None else state.key
        if client_id in self._rotated:
            current = self.epoch_key(int(client_id.removeprefix(ms.VALIDATOR_PREFIX)))
            if current is not None:
                return current
        return self.base_key(client_id)

    def client_keys(self, client_id: str) -> tuple[bytes, ...]:
        """Every key whose signature consensus orders for `client_id` (newest first)."""
        client_id = self._own_id(client_id)
        state = self.changed.get(client_id)
        if state is not None:
            return tuple(reversed(state.keys))
        key = self.base_key(client_id)
        base = () if key is None else (key,)
        return (*reversed(self._rotated.get(client_id, ())), *base)


class ValidatorKeys:
    """This validator's signing keys: the seed file and, during a rotation, the next one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = Ed25519Signer(read_seed(path))
        self.signers: dict[bytes, Ed25519Signer] = {self.current.public_key: self.current}
        self._next: Ed25519Signer | None = None
        self.load_next()

    @property
    def next_path(self) -> Path:
        return self.path.with_name(self.path.name + NEXT_SUFFIX)

    def load_next(self) -> Ed25519Signer | None:
        """The next key, when a rotation left one that is not loaded yet."""
        try:
            signer = Ed25519Signer(read_seed(self.next_path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("the next signing key does not load", path=str(self.next_path),
                      error=str(exc)[:200])
            return None
        if signer.public_key in self.signers:
            return None
        self.signers[signer.public_key] = signer
        self._next = signer
        return signer

    def promote(self, key: bytes, epoch: int) -> None:
        """Epoch `epoch` names `key` for this validator: make it the key file's (the old seed
        stays, renamed, for whoever audits what it signed)."""
        signer = self.signers.get(key)
        if signer is None or signer is self.current:
            return
        self.current = signer
        if self._next is None or self._next.public_key != key or not self.next_path.exists():
            return
        old = self.path.with_name(f"{self.path.name}.replaced-{epoch}")
        try:
            os.replace(self.path, old)
            os.replace(self.next_path, self.path)
        except OSError as exc:  # read-only keys (a Kubernetes Secret): the operator moves them
            log.warning("signing key rotated in memory; the key files are not writable: make "
                        f"{self.path.name} the new key and drop {self.next_path.name}",
                        epoch=epoch, key=key.hex()[:16], error=str(exc)[:200])
            return
        log.info("signing key rotated", epoch=epoch, key=key.hex()[:16], old_file=str(old))
