"""Validator sets and epochs.

An epoch is a validator set in force over a range of sequence numbers. Epoch 0 is the genesis set;
a reconfiguration executed at sequence s opens the next epoch at the first checkpoint at or after s.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.hashing import tagged_hash
from consortium.crypto.signing import PUBLIC_KEY_BYTES
from consortium.pbft.quorum import faults_tolerated, quorum, weak_quorum

REPLICA_ID_MAX = 1 << 16
MEMBERS_MAX = 256


@dataclass(frozen=True, slots=True)
class Member:
    replica_id: int
    public_key: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.replica_id < REPLICA_ID_MAX:
            raise ValueError(f"replica id {self.replica_id} out of range")
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise ValueError("a member's public key is 32 bytes")


@dataclass(frozen=True, slots=True)
class EpochConfig:
    """One validator set. Members are sorted by id; the primary of view v is members[v mod n]."""

    epoch: int
    start_seq: int
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.members) <= MEMBERS_MAX:
            raise ValueError(f"an epoch has 1 to {MEMBERS_MAX} members")
        ids = [m.replica_id for m in self.members]
        if ids != sorted(set(ids)):
            raise ValueError("members must be sorted by replica id, without duplicates")
        if self.epoch < 0 or self.start_seq < 0:
            raise ValueError("epoch and start_seq are non-negative")

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        return faults_tolerated(self.n)

    @property
    def quorum(self) -> int:
        return quorum(self.n)

    @property
    def weak_quorum(self) -> int:
        return weak_quorum(self.n)

    @property
    def replica_ids(self) -> tuple[int, ...]:
        return tuple(m.replica_id for m in self.members)

    def primary(self, view: int) -> int:
        return self.members[view % self.n].replica_id

    def key_of(self, replica_id: int) -> bytes | None:
        for m in self.members:
            if m.replica_id == replica_id:
                return m.public_key
        return None

    def is_member(self, replica_id: int) -> bool:
        return self.key_of(replica_id) is not None

    def digest(self) -> bytes:
        parts = [self.epoch.to_bytes(8, "big"), self.start_seq.to_bytes(8, "big")]
        for m in self.members:
            parts.append(m.replica_id.to_bytes(4, "big") + m.public_key)
        return tagged_hash(b"consortium/epoch-config", *parts)
