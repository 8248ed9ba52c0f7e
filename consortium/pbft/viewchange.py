"""View change (PBFT paper section 4.4): pure checks and the NEW-VIEW computation.

Kept apart from the replica so that a backup verifies a NEW-VIEW with the very function the new
primary used to build it: the primary cannot choose what to re-propose, only compute it.

VIEW-CHANGE and NEW-VIEW carry proposal *headers* only (a PRE-PREPARE signs its batch's Merkle
root, size and time, not the requests), so their size is bounded by the window and the quorum,
whatever the batches hold; a replica that lacks a re-proposed batch fetches it (BATCH-REQUEST).
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.merkle import EMPTY_ROOT
from consortium.crypto.signing import Verifier
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import verify_checkpoint_proof, verify_signed


@dataclass(frozen=True, slots=True)
class Proposal:
    """One entry of the new view's O set: the batch (by its header fields) to re-propose."""

    seq: int
    root: bytes
    count: int
    timestamp_ms: int

    @property
    def digest(self) -> bytes:
        return m.proposal_digest(self.root, self.count, self.timestamp_ms)


def null_proposal(seq: int) -> Proposal:
    return Proposal(seq, EMPTY_ROOT, 0, 0)


def verify_pre_prepare_msg(msg: m.SignedMessage, config: EpochConfig, chain_id: bytes,
                           verifier: Verifier) -> m.PrePrepare | None:
    """A PRE-PREPARE header signed by the primary of its view in `config`'s epoch."""
    b = msg.body
    if not isinstance(b, m.PrePrepare) or b.epoch != config.epoch:
        return None
    if msg.sender != config.primary(b.view):
        return None
    if not verify_signed(msg, config, chain_id, verifier):
        return None
    return b


def verify_prepared_proof(proof: m.PreparedProof, config: EpochConfig, chain_id: bytes,
                          verifier: Verifier) -> m.PrePrepare | None:
    """The pre-prepare, if the proof holds: 2f PREPAREs from distinct backups or 2f+1 COMMITs,
    all matching its (view, seq, digest)."""
    pp = verify_pre_prepare_msg(proof.pre_prepare, config, chain_id, verifier)
    if pp is None:
        return None
    primary = config.primary(pp.view)
    preparers: set[int] = set()
    committers: set[int] = set()
    for vote in proof.votes:
        b = vote.body
        if not isinstance(b, (m.Prepare, m.Commit)):
            return None
        if (b.epoch, b.view, b.seq, b.digest) != (pp.epoch, pp.view, pp.seq, pp.digest):
            return None
        if not verify_signed(vote, config, chain_id, verifier):
            return None
        if isinstance(b, m.Prepare) and vote.sender != primary:
            preparers.add(vote.sender)
        elif isinstance(b, m.Commit):
            committers.add(vote.sender)
    if len(preparers) >= config.quorum - 1 or len(committers) >= config.quorum:
        return pp
    return None


def view_change_bytes_max(config: EpochConfig, log_window: int) -> int:
    """An upper bound on an honest VIEW-CHANGE's wire size for this configuration: a stable
    proof of quorum CHECKPOINTs plus, per sequence number in the window, one header and quorum
    votes. Independent of what the batches hold (docs/consensus.md, "Limits")."""
    signed = 7 + 64 + 4  # wire envelope + signature + the blob length prefix when nested
    checkpoint = signed + 1 + 4 + 8 + 32
    vote = signed + 1 + 4 + 8 + 8 + 32
    header = signed + 1 + 4 + 8 + 8 + 32 + 4 + 8
    per_seq = header + 4 + config.quorum * vote
    return signed + 1 + 4 + 8 + 8 + 4 + config.quorum * checkpoint + 4 + log_window * per_seq


def new_view_bytes_max(config: EpochConfig, log_window: int) -> int:
    """An upper bound on an honest NEW-VIEW's wire size: quorum VIEW-CHANGEs plus one header per
    sequence number in the window."""
    signed = 7 + 64 + 4
    header = signed + 1 + 4 + 8 + 8 + 32 + 4 + 8
    return (signed + 1 + 4 + 8 + 4 + config.quorum * (view_change_bytes_max(config, log_window)
                                                       + 4) + 4 + log_window * header)


def verify_view_change(msg: m.SignedMessage, config: EpochConfig, chain_id: bytes,
                       verifier: Verifier, log_window: int) -> m.ViewChange | None:
    """A VIEW-CHANGE is valid when it is no larger than an honest one can be
    (`view_change_bytes_max`), signed by a member, its checkpoint is proven stable, and each
    prepared entry is proven, lies above the checkpoint inside the window, from an older view,
    and appears at most once."""
    b = msg.body
    if not isinstance(b, m.ViewChange) or b.epoch != config.epoch:
        return None
    if len(msg.wire) > view_change_bytes_max(config, log_window):
        return None  # padded (say, a vote repeated): it would swell every NEW-VIEW carrying it
    if not verify_signed(msg, config, chain_id, verifier):
        return None
    if b.stable_seq != config.start_seq or b.stable_proof:
        if b.stable_seq < config.start_seq:
            return None
        if not b.stable_proof or not isinstance(b.stable_proof[0].body, m.Checkpoint):
            return None
        digest = b.stable_proof[0].body.digest
        if not verify_checkpoint_proof(b.stable_proof, config, b.stable_seq, digest, chain_id,
                                       verifier):
            return None
    seen: set[int] = set()
    for proof in b.prepared:
        pp = verify_prepared_proof(proof, config, chain_id, verifier)
        if pp is None or pp.seq in seen or pp.view >= b.new_view:
            return None
        if not b.stable_seq < pp.seq <= b.stable_seq + log_window:
            return None
        seen.add(pp.seq)
    return b


def new_view_proposals(view_changes: list[m.ViewChange]) -> tuple[int, list[Proposal]]:
    """PBFT's O set: min-s is the highest stable checkpoint; for every sequence up to the highest
    prepared one, re-propose the batch prepared in the highest view, or a null batch."""
    min_s = max(vc.stable_seq for vc in view_changes)
    best: dict[int, m.PrePrepare] = {}
    for vc in view_changes:
        for proof in vc.prepared:
            pp = proof.pre_prepare.body
            assert isinstance(pp, m.PrePrepare)  # checked by verify_view_change
            if pp.seq > min_s and (pp.seq not in best or pp.view > best[pp.seq].view):
                best[pp.seq] = pp
    max_s = max(best, default=min_s)
    proposals: list[Proposal] = []
    for seq in range(min_s + 1, max_s + 1):
        chosen = best.get(seq)
        if chosen is None:
            proposals.append(null_proposal(seq))
        else:
            proposals.append(Proposal(seq, chosen.root, chosen.count, chosen.timestamp_ms))
    return min_s, proposals


def verify_new_view(msg: m.SignedMessage, config: EpochConfig, chain_id: bytes,
                    verifier: Verifier, log_window: int
                    ) -> tuple[m.NewView, list[m.ViewChange], list[m.SignedMessage]] | None:
    """Check a NEW-VIEW completely: sent by the new primary, no larger than an honest one can be
    (`new_view_bytes_max`), backed by a quorum of valid VIEW-CHANGEs for that view, and carrying
    exactly the pre-prepares `new_view_proposals` gives.
    Returns (new view, its view changes, its pre-prepares in sequence order)."""
    b = msg.body
    if not isinstance(b, m.NewView) or b.epoch != config.epoch:
        return None
    if msg.sender != config.primary(b.new_view):
        return None
    if len(msg.wire) > new_view_bytes_max(config, log_window):
        return None
    if not verify_signed(msg, config, chain_id, verifier):
        return None
    vcs: list[m.ViewChange] = []
    senders: set[int] = set()
    for vc_msg in b.view_changes:
        vc = verify_view_change(vc_msg, config, chain_id, verifier, log_window)
        if vc is None or vc.new_view != b.new_view or vc_msg.sender in senders:
            return None
        senders.add(vc_msg.sender)
        vcs.append(vc)
    if len(senders) < config.quorum:
        return None
    _, proposals = new_view_proposals(vcs)
    if len(proposals) != len(b.pre_prepares):
        return None
    for proposal, pp_msg in zip(proposals, b.pre_prepares, strict=True):
        pp = pp_msg.body
        if not isinstance(pp, m.PrePrepare) or pp_msg.sender != msg.sender:
            return None
        if (pp.epoch, pp.view, pp.seq, pp.root, pp.count, pp.timestamp_ms) != (
                config.epoch, b.new_view, proposal.seq, proposal.root, proposal.count,
                proposal.timestamp_ms):
            return None
        if not verify_signed(pp_msg, config, chain_id, verifier):
            return None
    return b, vcs, list(b.pre_prepares)
