"""Blocks: one per executed sequence number, hash-chained, carrying their commit certificate.

    header = chain_id | height:u64 | epoch:u32 | view:u64 | prev_hash:32 | merkle_root:32
             | entry_count:u32 | state_digest:32 | timestamp_ms:u64
    block hash = tagged SHA-256 over the header encoding

`height` is the PBFT sequence number, `merkle_root` is the batch digest that the 2f+1 COMMITs
of the certificate sign, and `entry_count` binds the size of the Merkle tree (an inclusion proof
states its tree size; an auditor checks it against this). So a block is verifiable offline from
the genesis keys: recompute the root from the entries, check the certificate signs (view,
height, root), check prev_hash against the previous block.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from consortium.crypto.hashing import DIGEST_BYTES, tagged_hash
from consortium.crypto.merkle import InclusionProof, inclusion_proof
from consortium.crypto.signing import Verifier
from consortium.ledger.records import InvalidRecord, Submission, decode_submission
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import Reader, Writer
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import batch_digest, verify_signed

GENESIS_PREV_HASH = bytes(DIGEST_BYTES)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: bytes
    height: int
    epoch: int
    view: int
    prev_hash: bytes
    merkle_root: bytes
    entry_count: int
    state_digest: bytes
    timestamp_ms: int

    def encode(self) -> bytes:
        w = Writer()
        w.blob(self.chain_id)
        w.u64(self.height)
        w.u32(self.epoch)
        w.u64(self.view)
        w.fixed(self.prev_hash)
        w.fixed(self.merkle_root)
        w.u32(self.entry_count)
        w.fixed(self.state_digest)
        w.u64(self.timestamp_ms)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> BlockHeader:
        rd = Reader(data)
        h = cls(rd.blob(), rd.u64(), rd.u32(), rd.u64(), rd.fixed(DIGEST_BYTES),
                rd.fixed(DIGEST_BYTES), rd.u32(), rd.fixed(DIGEST_BYTES), rd.u64())
        rd.end()
        return h

    def hash(self) -> bytes:
        return tagged_hash(b"consortium/block", self.encode())


class EntryStatus:
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    """Already executed (a replay or retry): ordered, but without effect."""
    INVALID = "invalid"
    """Well-signed request whose payload breaks the record rules."""
    GOVERNANCE = "governance"
    """A consensus-level request (validator-set change)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One request of a committed batch, in batch order (its index is its Merkle leaf index)."""

    index: int
    request: m.Request
    status: str
    submission: Submission | None
    reason: str = ""

    @property
    def record_id(self) -> str:
        return self.request.digest.hex()


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    entries: tuple[Entry, ...]
    pre_prepare: m.SignedMessage
    certificate: tuple[m.SignedMessage, ...]

    @property
    def hash(self) -> bytes:
        return self.header.hash()

    def proof(self, index: int) -> InclusionProof:
        """Inclusion proof of entry `index`: leaf = request digest, root = merkle_root."""
        return inclusion_proof([e.request.digest for e in self.entries], index)


class ClientOrgs:
    """Which organisation each client identity belongs to, and which organisations exist
    (from genesis)."""

    def __init__(self, orgs: dict[str, str], known_orgs: set[str] | None = None) -> None:
        self._orgs = orgs
        self.known = frozenset(known_orgs if known_orgs is not None else orgs.values())

    def org_of(self, client_id: str) -> str | None:
        return self._orgs.get(client_id)


def _timestamp(previous_ms: int, submissions: list[Submission]) -> int:
    """Deterministic block time: the median of the records' signed submission times, never
    earlier than the previous block (a lone lying client cannot move time in a busy block)."""
    if not submissions:
        return previous_ms
    return max(previous_ms, int(statistics.median_low(s.submitted_at_ms for s in submissions)))


def build_block(a: ev.Execute, chain_id: bytes, prev: BlockHeader | None,
                orgs: ClientOrgs) -> Block:
    """Execute one committed batch into a block. Pure and deterministic: every honest validator
    builds the same block from the same `Execute`."""
    executed = {id(r) for r in a.executed}
    entries = []
    accepted: list[Submission] = []
    for i, r in enumerate(a.requests):
        if id(r) not in executed:
            entries.append(Entry(i, r, EntryStatus.DUPLICATE, None))
            continue
        if r.kind is m.RequestKind.RECONFIGURATION:
            entries.append(Entry(i, r, EntryStatus.GOVERNANCE, None))
            continue
        try:
            sub = decode_submission(r.payload)
        except InvalidRecord as exc:
            entries.append(Entry(i, r, EntryStatus.INVALID, None, str(exc)))
            continue
        if orgs.org_of(r.client_id) != sub.submitter_org:
            entries.append(Entry(i, r, EntryStatus.INVALID, None,
                                 f"client {r.client_id} does not belong to {sub.submitter_org}"))
            continue
        unknown = [o for o in sub.readers if o not in orgs.known]
        if unknown:
            entries.append(Entry(i, r, EntryStatus.INVALID, None,
                                 f"readers {unknown} are not member organisations"))
            continue
        entries.append(Entry(i, r, EntryStatus.RECORDED, sub))
        accepted.append(sub)
    header = BlockHeader(
        chain_id=chain_id, height=a.seq, epoch=a.epoch, view=a.view,
        prev_hash=GENESIS_PREV_HASH if prev is None else prev.hash(),
        merkle_root=a.digest, entry_count=len(a.requests), state_digest=a.state_digest,
        timestamp_ms=_timestamp(0 if prev is None else prev.timestamp_ms, accepted))
    if batch_digest(a.requests) != a.digest:
        raise AssertionError(f"batch digest mismatch at seq {a.seq}: a bug, not a peer fault")
    return Block(header, tuple(entries), a.pre_prepare, a.certificate)


def verify_certificate(header: BlockHeader, certificate: tuple[m.SignedMessage, ...],
                       config: EpochConfig, verifier: Verifier) -> bool:
    """2f+1 distinct members of the block's epoch signed COMMIT(view, height, merkle_root)."""
    signers: set[int] = set()
    for c in certificate:
        b = c.body
        if (isinstance(b, m.Commit) and (b.epoch, b.view, b.seq, b.digest)
                == (config.epoch, header.view, header.height, header.merkle_root)
                and c.sender not in signers
                and verify_signed(c, config, header.chain_id, verifier)):
            signers.add(c.sender)
    return len(signers) >= config.quorum
