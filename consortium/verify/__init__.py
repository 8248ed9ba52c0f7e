"""The one place that verifies what a validator sends: commit certificates, receipts and
inclusion proofs, epoch histories and chains. The SDK, the audit tool, offline bundles, the
admission service and a validator's state transfer all call these, so the security checks
behind "no single validator is trusted" are written once.

Imports the codec (`consortium.wire`) and the ledger/pbft/crypto types only: never storage,
psycopg, the validator or the replica.
"""

from consortium.verify.certificates import commit_signers, verify_certificate
from consortium.verify.chain import ChainBroken, ChainVerifier
from consortium.verify.epochs import UnverifiableHistory, epoch_configs
from consortium.verify.receipts import (
    item_receipts,
    verify_block_receipts,
    verify_envelope_result,
    verify_receipt,
)

__all__ = [
    "ChainBroken",
    "ChainVerifier",
    "UnverifiableHistory",
    "commit_signers",
    "epoch_configs",
    "item_receipts",
    "verify_block_receipts",
    "verify_certificate",
    "verify_envelope_result",
    "verify_receipt",
]
