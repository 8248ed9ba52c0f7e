"""Epoch histories: which validator set signed which blocks, verified from genesis alone."""

from __future__ import annotations

from consortium.crypto.signing import Verifier
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import verify_epoch_history


class UnverifiableHistory(ValueError):
    """An epoch history whose links do not verify from genesis (a lying or broken source)."""


def epoch_configs(genesis: EpochConfig, records: tuple[m.EpochRecord, ...], chain_id: bytes,
                  verifier: Verifier) -> dict[int, EpochConfig]:
    """Every epoch's validator set by epoch number, each certified by the one before it from
    genesis on. Raises UnverifiableHistory."""
    configs = verify_epoch_history(genesis, records, chain_id, verifier)
    if configs is None:
        raise UnverifiableHistory("the epoch history does not verify from the genesis file")
    return {c.epoch: c for c in configs}
