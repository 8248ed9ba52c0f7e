"""Commit certificates: the one check of "2f+1 validators of the block's epoch committed it"."""

from __future__ import annotations

from collections.abc import Iterable

from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import BlockHeader
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import certificate_signers


def commit_signers(header: BlockHeader, certificate: Iterable[m.SignedMessage],
                   config: EpochConfig, verifier: Verifier) -> set[int]:
    """The distinct members of the block's epoch (`config`) whose COMMIT(epoch, view, height,
    digest) in `certificate` is valid for this block, counted in the one view that gathers the
    most (a quorum is of one view: PBFT's committed predicate); none for a config of another
    epoch. A validator stores only such commits, so the audit tool also flags a certificate
    that holds a quorum and something else besides (an edit that left the proof intact)."""
    if config.epoch != header.epoch:
        return set()
    certificate = tuple(certificate)
    views = {c.body.view for c in certificate if isinstance(c.body, m.Commit)}
    best: set[int] = set()
    for view in sorted(views):
        signers = certificate_signers(certificate, config,
                                      (header.epoch, view, header.height, header.digest),
                                      m.Commit, header.chain_id, verifier)
        if len(signers) > len(best):
            best = signers
    return best


def verify_certificate(header: BlockHeader, certificate: Iterable[m.SignedMessage],
                       config: EpochConfig, verifier: Verifier) -> bool:
    """2f+1 distinct members of the block's epoch (`config`) signed COMMIT(epoch, view, height,
    digest) in one view, the digest certifying the block's Merkle root, request count and
    proposal time."""
    return len(commit_signers(header, certificate, config, verifier)) >= config.quorum
