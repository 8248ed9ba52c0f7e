"""Verify a ledger from the genesis file alone, trusting no validator.

`ChainVerifier` checks one validator's chain (or an exported bundle's) block by block:

- each block decodes, its entries hash to the header's Merkle root and its entry count;
- heights are contiguous and every block links to the previous block's hash;
- the block's epoch is the one the chain itself says is in force (validator-set changes are
  replayed from genesis: a RECONFIGURATION approved by a quorum of the current set takes effect
  at the first checkpoint at or after it, exactly as the replicas apply it);
- its commit certificate holds 2f+1 valid COMMIT signatures over (epoch, view, height, root)
  from distinct members of that epoch, and nothing else (no outsider, no repeated signer);
- every application request carries a valid signature of a client from genesis;
- with audit columns (what the validator stores besides the signed bytes: the `hash` column,
  record columns, hashes of the stored ciphertext and wrapped keys), that they agree with the
  signed requests: a row edited directly in PostgreSQL is found and attributed.

`compare_validators` then names validators whose valid chains or entry statuses differ from
the others'. Every check produces a `Problem` (validator, height, kind, detail); nothing is
ever reported ok that was not verified.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from consortium.api.v1 import ledger_pb2 as pb
from consortium.config import Genesis, validator_client_id
from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import GENESIS_PREV_HASH, BlockHeader, EntryStatus
from consortium.ledger.membership import org_client_id
from consortium.ledger.records import InvalidRecord, decode_public
from consortium.ledger.transactions import (
    Erase,
    Grant,
    InvalidTransaction,
    JoinRequest,
    RequestView,
    Revoke,
    TxType,
    Withheld,
    applicant_client_id,
    applicant_key,
    decode_governance_tx,
    decode_record_tx,
)
from consortium.node import wire
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import segment_hash
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    approved_reconfiguration,
    next_state_digest,
    verify_signed,
)
from consortium.pbft.viewchange import verify_pre_prepare_msg


@dataclass(frozen=True, slots=True)
class Problem:
    validator: str
    height: int
    kind: str
    """malformed | missing-block | height | hash-link | merkle-root | stored-hash | epoch |
    state-digest | certificate | pre-prepare | request-signature | record-columns | record-missing |
    ciphertext | keys | erasure | fork | status | reason | unreachable"""
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"validator": self.validator, "height": self.height, "kind": self.kind,
                "detail": self.detail}


def certificate_problem(header: BlockHeader, certificate: tuple[m.SignedMessage, ...],
                        config: EpochConfig, verifier: Verifier) -> str | None:
    """Why `certificate` does not prove `header` (None when it does and holds nothing else)."""
    signers: set[int] = set()
    outsiders, repeated, forged, other = [], [], [], []
    for c in certificate:
        b = c.body
        if not isinstance(b, m.Commit) or (b.epoch, b.view, b.seq, b.digest) != (
                config.epoch, header.view, header.height, header.merkle_root):
            other.append(c.sender)
        elif not config.is_member(c.sender):
            outsiders.append(c.sender)
        elif c.sender in signers:
            repeated.append(c.sender)
        elif not verify_signed(c, config, header.chain_id, verifier):
            forged.append(c.sender)
        else:
            signers.add(c.sender)
    notes = []
    if outsiders:
        notes.append(f"signers outside the epoch {config.epoch} validator set: {outsiders}")
    if repeated:
        notes.append(f"repeated signers: {sorted(set(repeated))}")
    if forged:
        notes.append(f"invalid signatures from: {forged}")
    if other:
        notes.append(f"commits for another block from: {other}")
    if len(signers) < config.quorum:
        return (f"{len(signers)} valid commit signatures from distinct members, "
                f"{config.quorum} needed" + ("; " + "; ".join(notes) if notes else ""))
    return "; ".join(notes) or None


@dataclass
class _RecordKeys:
    """What the chain says a record's wrapped keys should be."""

    hashes: set[bytes] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    erased_at: int | None = None


class ChainVerifier:
    """One validator's chain (or a bundle), fed block by block in height order."""

    def __init__(self, genesis: Genesis, verifier: Verifier, source: str,
                 from_height: int = 1) -> None:
        self.genesis = genesis
        self.verifier = verifier
        self.source = source
        self.chain_id = genesis.chain_id_bytes
        self.client_keys = genesis.client_keys()
        self.genesis_clients = frozenset(self.client_keys)
        self.configs = [genesis.epoch0()]
        self.pending: m.PendingReconfiguration | None = None
        self.k = genesis.protocol.checkpoint_interval
        self.next_height = from_height
        self.prev_hash: bytes | None = GENESIS_PREV_HASH if from_height == 1 else None
        self.prev_state: bytes | None = GENESIS_STATE_DIGEST if from_height == 1 else None
        self.hashes: dict[int, bytes] = {}
        """Height -> hash of every block that verified."""
        self.statuses: dict[tuple[int, int], str] = {}
        self.reasons: dict[tuple[int, int], str] = {}
        self.problems: list[Problem] = []
        self.blocks = 0
        self._keys: dict[str, _RecordKeys] = {}
        self._columns: dict[str, pb.RecordColumns] = {}
        self._erasures: dict[str, int] = {}
        self._record_height: dict[str, int] = {}

    def _problem(self, height: int, kind: str, detail: str) -> None:
        self.problems.append(Problem(self.source, height, kind, detail))

    @property
    def config(self) -> EpochConfig:
        return self.configs[-1]

    def feed(self, msg: pb.Block) -> bool:
        """Verify the next block; returns whether it verified (problems are collected)."""
        before = len(self.problems)
        try:
            header = BlockHeader.decode(bytes(msg.header))
        except ValueError as exc:
            self._problem(self.next_height, "malformed", f"block header does not decode: {exc}")
            self.next_height += 1
            self.prev_hash = None
            self.prev_state = None
            self.blocks += 1  # it was fed: a bundle's end line counts it
            return False
        h = header.height
        if h != self.next_height:
            kind = "missing-block" if h > self.next_height else "height"
            self._problem(self.next_height, kind,
                          f"expected block {self.next_height}, got block {h}")
        self._advance_epoch(h)
        if header.chain_id != self.chain_id:
            self._problem(h, "malformed", "block belongs to another chain")
        if self.prev_hash is not None and header.prev_hash != self.prev_hash and \
                h == self.next_height:
            self._problem(h, "hash-link", f"prev_hash {header.prev_hash.hex()} is not block "
                                          f"{h - 1}'s hash {self.prev_hash.hex()}: block "
                                          f"{h - 1}'s header or this prev_hash was altered")
        if self.prev_state is not None and h == self.next_height and header.state_digest != \
                next_state_digest(self.prev_state, h, header.merkle_root):
            self._problem(h, "state-digest", "the state digest does not follow from the "
                                             "previous block's and this block's Merkle root")
        if msg.stored_hash and bytes(msg.stored_hash) != header.hash():
            self._problem(h, "stored-hash", f"the stored hash column "
                                            f"{bytes(msg.stored_hash).hex()[:16]}… is not the "
                                            f"header's hash {header.hash().hex()[:16]}…")
        if header.epoch != self.config.epoch:
            self._problem(h, "epoch", f"block claims epoch {header.epoch}; the chain puts it "
                                      f"in epoch {self.config.epoch}")
        try:
            wb = wire.block_from_proto(msg, self.chain_id)
        except wire.WireError as exc:
            kind = "merkle-root" if "merkle root" in str(exc) else "malformed"
            self._problem(h, kind, str(exc))
            wb = None
        if wb is not None:
            problem = certificate_problem(header, wb.certificate, self.config, self.verifier)
            if problem is not None:
                self._problem(h, "certificate", problem)
            pp = wb.pre_prepare
            if pp is not None and (verify_pre_prepare_msg(pp, self.config, self.chain_id,
                                                          self.verifier) is None
                                   or getattr(pp.body, "view", None) != header.view):
                self._problem(h, "pre-prepare", "the block carries a pre-prepare that the "
                                                "primary of its view did not sign")
            self._check_entries(wb)
            self._check_columns(wb)
        self.next_height = h + 1
        self.prev_hash = header.hash()
        self.prev_state = header.state_digest
        ok = len(self.problems) == before
        if ok:
            self.hashes[h] = header.hash()
        self.blocks += 1
        return ok

    def _advance_epoch(self, height: int) -> None:
        p = self.pending
        if p is not None and height > p.effective_seq:
            self.configs.append(EpochConfig(self.config.epoch + 1, p.effective_seq, p.members))
            self.pending = None

    def _check_entries(self, wb: wire.WireBlock) -> None:
        h = wb.header.height
        for i, (item, status, reason) in enumerate(zip(wb.items, wb.statuses, wb.reasons,
                                                       strict=True)):
            self.statuses[(h, i)] = status
            self.reasons[(h, i)] = reason
            if item.kind is m.RequestKind.RECONFIGURATION:
                if status == EntryStatus.GOVERNANCE and isinstance(item, m.Request) and \
                        self.pending is None:
                    self.pending = approved_reconfiguration(
                        item.payload, self.config, h, self.k, self.chain_id, self.verifier)
                continue
            key = self.client_keys.get(item.client_id) or applicant_key(item.client_id)
            if key is None or not self.verifier.verify(
                    key, m.request_signing_bytes(self.chain_id, item.digest), item.signature):
                self._problem(h, "request-signature",
                              f"entry {i}: not signed by a known client {item.client_id!r} "
                              "(genesis, or named by an earlier join request)")
                continue
            if status == EntryStatus.RECORDED:
                self._learn_identities(item)
                self._track(h, i, item)

    def _learn_identities(self, item: wire.Item) -> None:
        """A recorded join request names its organisation's client and validator keys: later
        requests signed by them verify (as validators accept them; what they may do is the
        ledger's judgement, replayed in statuses)."""
        view = item if isinstance(item, RequestView) else RequestView.of(item)
        if view.raw is not None or not view.segments:
            return
        seg0 = view.segments[0]
        if not isinstance(seg0, bytes) or seg0[:1] != bytes([TxType.JOIN]):
            return
        try:
            tx = decode_governance_tx(view.present())
        except InvalidTransaction:
            return
        if isinstance(tx, JoinRequest) and item.client_id == applicant_client_id(
                tx.validator_key):
            for client_id, key in ((org_client_id(tx.org), tx.client_key),
                                   (validator_client_id(tx.replica_id), tx.validator_key)):
                if client_id not in self.genesis_clients:
                    self.client_keys[client_id] = key

    def _track(self, h: int, i: int, item: wire.Item) -> None:
        """Follow what the chain says about records' keys (checked against the stored
        columns at the end)."""
        view = item if isinstance(item, RequestView) else RequestView.of(item)
        if view.raw is not None or not view.segments:
            return
        seg0 = view.segments[0]
        assert isinstance(seg0, bytes)
        hashes = [s.hash if isinstance(s, Withheld) else segment_hash(s)
                  for s in view.segments]
        if seg0[:1] == bytes([TxType.RECORD]):
            self._keys[view.record_id] = _RecordKeys(set(hashes[2:]))
            return
        try:
            action = decode_record_tx(view.present())
        except InvalidTransaction:
            return
        rk = self._keys.get(action.record_id)
        if rk is None:
            return  # a record before the verified range
        if isinstance(action, Grant):
            rk.hashes.add(hashes[1])
            rk.revoked.discard(action.org)
        elif isinstance(action, Revoke):
            rk.revoked.add(action.org)
        elif isinstance(action, Erase):
            rk.erased_at = h

    def _check_columns(self, wb: wire.WireBlock) -> None:
        """The validator's stored record columns against the signed requests (audit mode)."""
        if not wb.stored_hash:
            return  # a bundle or a non-audit stream carries no stored columns
        h = wb.header.height
        rows = {c.index: c for c in wb.records}
        for i, (item, status) in enumerate(zip(wb.items, wb.statuses, strict=True)):
            view = item if isinstance(item, RequestView) else RequestView.of(item)
            seg0 = view.segments[0] if view.segments else None
            is_record = isinstance(seg0, bytes) and seg0[:1] == bytes([TxType.RECORD])
            row = rows.pop(i, None)
            if not (is_record and status == EntryStatus.RECORDED):
                if row is not None:
                    self._problem(h, "record-columns",
                                  f"entry {i}: a stored record row for an entry that is not a "
                                  "recorded record")
                continue
            if row is None:
                self._problem(h, "record-missing", f"entry {i}: record {view.record_id} is "
                                                   "missing from the records table")
                continue
            assert isinstance(seg0, bytes)
            self._compare_row(h, i, view, seg0, row)
        for i in rows:
            self._problem(h, "record-columns", f"a stored record row at entry {i}, which the "
                                               "block does not have")

    def _compare_row(self, h: int, i: int, view: RequestView, seg0: bytes,
                     row: pb.RecordColumns) -> None:
        try:
            p = decode_public(seg0)
        except InvalidRecord as exc:
            self._problem(h, "record-columns", f"entry {i}: {exc}")
            return
        stored = (row.record_id, row.kind, row.subject_id, row.event_type, row.submitter_org,
                  row.submitted_at_ms, dict(row.metadata))
        signed = (view.record_id, p.kind.value, p.subject_id, p.event_type, p.submitter_org,
                  p.submitted_at_ms, dict(p.metadata))
        names = ("record_id", "kind", "subject_id", "event_type", "submitter_org",
                 "submitted_at_ms", "metadata")
        for name, a, b in zip(names, stored, signed, strict=True):
            if a != b:
                self._problem(h, "record-columns", f"entry {i}: stored {name} {a!r} differs "
                                                   f"from the signed {b!r}")
        seg1 = view.segments[1] if len(view.segments) > 1 else None
        signed_ct = seg1.hash if isinstance(seg1, Withheld) else \
            (segment_hash(seg1) if seg1 is not None else None)
        stored_ct = bytes(row.ciphertext_segment_hash)
        if stored_ct and stored_ct != signed_ct:
            self._problem(h, "ciphertext", f"entry {i}: the stored ciphertext of record "
                                           f"{view.record_id[:16]}… is not the signed one")
        if not stored_ct and not row.erased_height:
            self._problem(h, "ciphertext", f"entry {i}: record {view.record_id[:16]}… has no "
                                           "ciphertext but was not erased")
        if row.erased_height:
            self._erasures[view.record_id] = int(row.erased_height)
        self._columns[view.record_id] = row
        self._record_height[view.record_id] = h

    def finish(self, to_head: bool) -> list[Problem]:
        """Checks that need the whole range: stored keys against the grants, revocations and
        erasures the chain holds (only meaningful up to the validator's head)."""
        if to_head:
            for record_id, row in self._columns.items():
                rk = self._keys.get(record_id)
                h = self._record_height[record_id]
                if rk is None:
                    continue
                for org, digest in sorted(row.key_segment_hashes.items()):
                    if bytes(digest) not in rk.hashes:
                        self._problem(h, "keys", f"record {record_id[:16]}…: the stored key "
                                                 f"of {org} is not one the chain gave it")
                    elif org in rk.revoked:
                        self._problem(h, "keys", f"record {record_id[:16]}…: {org}'s key is "
                                                 "still stored after its revocation")
                if rk.erased_at is not None and row.key_segment_hashes:
                    self._problem(h, "erasure", f"record {record_id[:16]}…: wrapped keys "
                                                f"remain after the erasure at {rk.erased_at}")
                erased = self._erasures.get(record_id)
                if erased is not None and rk.erased_at != erased:
                    self._problem(h, "erasure", f"record {record_id[:16]}… is marked erased at "
                                                f"{erased} without a committed erasure there")
                if rk.erased_at is not None and erased is None:
                    self._problem(h, "erasure", f"record {record_id[:16]}… was erased at "
                                                f"{rk.erased_at} but is stored as not erased")
        return self.problems


def compare_validators(chains: dict[str, ChainVerifier]) -> list[Problem]:
    """Name the validators whose verified blocks or entry statuses differ from the majority's
    (honest validators agree on every block; more than f differing is itself a finding)."""
    problems = []
    heights = sorted({h for c in chains.values() for h in c.hashes})
    for h in heights:
        votes = Counter(c.hashes[h] for c in chains.values() if h in c.hashes)
        if len(votes) > 1:
            majority, _ = votes.most_common(1)[0]
            for name, c in chains.items():
                if h in c.hashes and c.hashes[h] != majority:
                    problems.append(Problem(name, h, "fork",
                                            f"a validly certified block {c.hashes[h].hex()[:16]}…"
                                            f" differs from the others' "
                                            f"{majority.hex()[:16]}…"))
    # Statuses and reasons ("not a reader", "screening: accepted", why invalid) are execution
    # results: the majority of honest validators sets them.
    for kind in ("status", "reason"):
        tables = {name: c.statuses if kind == "status" else c.reasons
                  for name, c in chains.items()}
        keys = sorted({k for t in tables.values() for k in t})
        for k in keys:
            votes2 = Counter(t[k] for t in tables.values() if k in t)
            if len(votes2) > 1:
                majority2, _ = votes2.most_common(1)[0]
                for name, t in tables.items():
                    if k in t and t[k] != majority2:
                        problems.append(Problem(name, k[0], kind,
                                                f"entry {k[1]} {kind} is {t[k]!r}, the "
                                                f"others say {majority2!r}"))
    return problems

