"""Chains: the one verifier of a sequence of blocks from genesis (or from a trusted header).

Used by the audit tool (`audit verify`, offline bundles) and by a validator's state transfer
alike: each block must extend the previous one (height, `prev_hash`), chain the state digest
(`pbft.state.next_state_digest` over the certified digest), keep block time monotonic
(`timestamp_ms = max(previous, proposed_ms)`), carry a proposal header signed by the primary of
its view and a commit certificate of 2f+1 validators of its epoch (from the verified epoch
history), and be internally consistent (`wire.block_from_proto` already checked the Merkle
roots).
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import GENESIS_PREV_HASH, BlockHeader
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import GENESIS_STATE_DIGEST, next_state_digest
from consortium.pbft.viewchange import verify_pre_prepare_msg
from consortium.verify.certificates import verify_certificate
from consortium.wire import WireBlock

TIME_JUMP_MS_MAX = 24 * 3600 * 1000
"""A block whose proposal time is this far from its predecessor's is flagged (a warning, not a
break: a consortium may be idle for a day; a jump of years is a primary's broken clock)."""


class ChainBroken(ValueError):
    """A block that does not extend the verified chain, or does not prove itself. `kind` names
    the rule it breaks, for reports that attribute problems (the audit tool): chain | height |
    hash-link | state-digest | time | epoch | proposal | certificate."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class ChainVerifier:
    """Verifies blocks in order. Start from genesis (`prev=None`) or from a header already
    verified (a validator resuming state transfer from its own head)."""

    chain_id: bytes
    configs: dict[int, EpochConfig]
    verifier: Verifier
    prev: BlockHeader | None = None
    warnings: list[str] | None = None

    def check(self, wb: WireBlock) -> None:
        """Raise ChainBroken unless `wb` extends the chain verified so far; then it becomes the
        head. Time anomalies that are not breaks go to `warnings`."""
        h = wb.header
        prev = self.prev
        height = 1 if prev is None else prev.height + 1
        if h.chain_id != self.chain_id:
            raise ChainBroken(f"block {h.height} belongs to another chain", "chain")
        if h.height != height:
            raise ChainBroken(f"block {h.height} does not follow height {height - 1}", "height")
        if h.prev_hash != (GENESIS_PREV_HASH if prev is None else prev.hash()):
            raise ChainBroken(f"block {h.height}: prev_hash does not match block {height - 1}",
                              "hash-link")
        previous_state = GENESIS_STATE_DIGEST if prev is None else prev.state_digest
        if h.state_digest != next_state_digest(previous_state, h.height, h.digest):
            raise ChainBroken(f"block {h.height}: state digest does not chain", "state-digest")
        previous_ms = 0 if prev is None else prev.timestamp_ms
        if h.timestamp_ms != max(previous_ms, h.proposed_ms):
            raise ChainBroken(f"block {h.height}: block time is not max(previous, proposed)",
                              "time")
        self.check_proof(wb)
        if (self.warnings is not None and prev is not None and prev.proposed_ms
                and h.proposed_ms and abs(h.proposed_ms - prev.proposed_ms) > TIME_JUMP_MS_MAX):
            jump_s = (h.proposed_ms - prev.proposed_ms) // 1000
            self.warnings.append(f"block {h.height}: proposal time jumps {jump_s} s from block "
                                 f"{height - 1} (a primary's clock?)")
        self.prev = h

    def check_proof(self, wb: WireBlock) -> None:
        """Raise ChainBroken unless `wb` proves itself, whatever precedes it: its epoch is in
        the verified history, its proposal header is signed by the primary of its view and its
        certificate holds. `check` does this after the links; alone it is all that can be
        checked of a block whose predecessor is not at hand (the first block of a range that
        does not start at genesis, a block after a gap)."""
        h = wb.header
        config = self.configs.get(h.epoch)
        if config is None:
            raise ChainBroken(f"block {h.height} is from epoch {h.epoch}, which the verified "
                              "epoch history does not hold", "epoch")
        if verify_pre_prepare_msg(wb.pre_prepare, config, self.chain_id, self.verifier) is None:
            raise ChainBroken(f"block {h.height}: its proposal is not signed by the primary "
                              "of its view", "proposal")
        if not verify_certificate(h, wb.certificate, config, self.verifier):
            raise ChainBroken(f"block {h.height}: no valid commit certificate of {config.quorum} "
                              f"validators of epoch {h.epoch}", "certificate")
