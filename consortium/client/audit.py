"""Verify a ledger from the genesis file alone, trusting no validator (docs/audit.md).

`ChainAudit` follows one validator's chain (or an offline bundle's) block by block. The chain
rules are `consortium.verify`'s, applied once: `wire.block_from_proto` checks that a block is
internally consistent (its requests hash to the header's Merkle root, each executed envelope's
items to the digest its client signed) and `verify.ChainVerifier` that it extends the chain
(height, hash link, state digest, block time = max(previous, proposed)), that its proposal
header is signed by the primary of its view and that 2f+1 validators of its epoch (from the
epoch history verified from genesis) committed it. On top of that, what a header chain cannot
show:

- every request is signed by a client the ledger knows (genesis, or a join request before it);
- the block's epoch is the one the verified history puts its height in;
- the certificate holds nothing but valid commits of this block (an honest validator stores
  nothing else, so anything more is an edit);
- in audit mode (stored columns beside each block): the stored hash column is the header's
  hash, each record's stored columns are its signed public header, and (up to the head) its
  stored readers and erasure are what the chain's grants, revocations and erasures give it;
- proposal times far from their neighbours are flagged as warnings (issue 12, finding 5).

`compare_validators` then names validators whose verified blocks, or whose request and entry
statuses and reasons (execution results no certificate covers), differ from the others'.
`audit_validators` runs all of it against a consortium. Every finding is a `Problem`
(validator, height, kind, detail); nothing is reported ok that was not verified.

Size: the chain audit is one walk over the chain with the checks it makes on the way; the
verification itself is `consortium.verify`, bundles and subjects are separate modules.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from consortium.config import Genesis, validator_client_id
from consortium.crypto.signing import CachingVerifier, Ed25519Verifier, Verifier
from consortium.ledger.blocks import BlockHeader, EntryStatus
from consortium.ledger.items import Item, ItemView, record_id
from consortium.ledger.membership import VALIDATOR_PREFIX, org_client_id
from consortium.ledger.records import decode_public
from consortium.ledger.transactions import (
    Erase,
    Grant,
    InvalidTransaction,
    JoinRequest,
    Revoke,
    TxType,
    applicant_client_id,
    decode_governance_tx,
    decode_record_tx,
)
from consortium.pbft import messages as m
from consortium.pbft.codec import DecodeError
from consortium.pbft.membership import EpochConfig
from consortium.pbft.state import signing_config
from consortium.verify import (
    ChainBroken,
    ChainVerifier,
    UnverifiableHistory,
    commit_signers,
    epoch_configs,
    verify_receipt,
)
from consortium.verify.signers import ClientSigners
from consortium.wire import (
    Receipt,
    WireBlock,
    WireError,
    block_from_proto,
    epochs_from_bytes,
    pb,
    receipt_from_proto,
    receipt_to_proto,
)

if TYPE_CHECKING:
    from consortium.client.sync import ConsortiumClient

VERIFIER_CACHE = 1 << 16
"""Signatures remembered while verifying (validators' commits repeat across `--all`)."""
FOLLOW_ROUNDS = 5
"""Times `audit verify` follows a ledger that grew while it was verified, before it judges
stored columns against the chain anyway (the records that changed meanwhile are left
unjudged)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding, attributed to the validator (or bundle) whose data shows it."""

    validator: str
    height: int
    kind: str
    """malformed | merkle-root | items | proposal | missing-block | height | hash-link |
    state-digest | time | epoch | certificate | stored-hash | request-signature |
    record-columns | record-missing | readers | erasure | epoch-history | fork | status |
    reason | unreachable; warnings: clock | unjudged"""
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"validator": self.validator, "height": self.height, "kind": self.kind,
                "detail": self.detail}


def _wire_kind(exc: WireError) -> str:
    """The problem kind of a block that does not decode consistently (`block_from_proto`).
    A WireError names its field in words, not in a code, so the kind is read from them; the
    unit tests pin each kind to the edit that causes it."""
    text = str(exc)
    if "merkle root" in text:
        return "merkle-root"
    if "do not match its digest" in text:
        return "items"
    if "proposal header" in text:
        return "proposal"
    return "malformed"


CHAIN_KINDS = {"chain": "malformed"}
"""`ChainBroken.kind` values reported under another name (the rest are kept as they are)."""


def view_of(item: Item) -> ItemView:
    return item if isinstance(item, ItemView) else ItemView.of(item)


def public_header(item: Item) -> bytes:
    """An item's segment 0 (its transaction type and public fields); b"" for an unsegmented
    item, which is no transaction."""
    view = view_of(item)
    return b"" if view.raw is not None else view.present()[0] or b""


@dataclass
class _RecordTrack:
    """What the chain says about one record of the verified range, and what the validator
    stores about it (from its audit columns), compared at the end."""

    height: int
    submitter: str
    signed_readers: int
    """Key segments in the signed item: how many organisations it was sealed for."""
    events: list[tuple[int, str, str]] = field(default_factory=list)
    """(height, grant | revoke, org) of the recorded grants and revocations, in ledger order."""
    erased_at: int | None = None
    row: pb.RecordColumns | None = None


class ChainAudit:
    """One validator's chain (or a bundle's), fed block by block in height order. `configs` is
    the epoch history, verified from genesis (`verify.epoch_configs`)."""

    def __init__(self, genesis: Genesis, configs: Mapping[int, EpochConfig],
                 verifier: Verifier, source: str, from_height: int = 1) -> None:
        self.genesis = genesis
        self.source = source
        self.chain_id = genesis.chain_id_bytes
        self.verifier = verifier
        self.configs = dict(configs)
        self._in_force = sorted(self.configs.values(), key=lambda c: c.epoch)
        self.chain = ChainVerifier(self.chain_id, self.configs, verifier, warnings=[])
        self.from_height = from_height
        self.next_height = from_height
        self._linked = from_height == 1
        """Whether `chain.prev` is the header before `next_height` (from genesis, or the block
        just fed): when not, a block is checked for what it proves alone."""
        self.signers = ClientSigners(self.chain_id, verifier, genesis.client_keys())
        self._genesis_clients = frozenset(self.signers.keys)
        self.hashes: dict[int, bytes] = {}
        """Height -> hash of every block that verified."""
        self.statuses: dict[tuple[int, str, int], str] = {}
        """(height, "request" | "entry", index) -> status, for `compare_validators`."""
        self.reasons: dict[tuple[int, str, int], str] = {}
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.blocks = 0
        self.last: BlockHeader | None = None
        self._records: dict[str, _RecordTrack] = {}

    def _problem(self, height: int, kind: str, detail: str) -> None:
        self.problems.append(Problem(self.source, height, kind, detail))

    def feed(self, msg: pb.Block) -> bool:
        """Verify the next block; returns whether it verified (problems are collected)."""
        before = len(self.problems)
        expected = self.next_height
        self.blocks += 1  # fed, whatever follows: a bundle's end line counts it
        try:
            header = BlockHeader.decode(bytes(msg.header))
        except (DecodeError, ValueError) as exc:
            self._problem(expected, "malformed", f"block header does not decode: {exc}")
            self.next_height += 1
            self._linked = False
            return False
        h = header.height
        linked = self._linked
        if h != expected:
            self._problem(expected, "missing-block" if h > expected else "height",
                          f"expected block {expected}, got block {h}")
            linked = False
        if msg.stored_hash and bytes(msg.stored_hash) != header.hash():
            self._problem(h, "stored-hash", f"the stored hash column "
                                            f"{bytes(msg.stored_hash).hex()[:16]}… is not the "
                                            f"header's hash {header.hash().hex()[:16]}…")
        try:
            wb: WireBlock | None = block_from_proto(msg, self.chain_id)
        except WireError as exc:
            self._problem(h, _wire_kind(exc), str(exc))
            wb = None
        if wb is not None:
            self._check_chain(wb, linked)
            self._check_epoch(wb)
            self._check_requests(wb)
            self._check_columns(wb)
        self.chain.prev = header
        self._linked = True
        self.next_height = h + 1
        self.last = header
        ok = len(self.problems) == before
        if ok:
            self.hashes[h] = header.hash()
        return ok

    def _check_chain(self, wb: WireBlock, linked: bool) -> None:
        h = wb.header.height
        warned = len(self.chain.warnings or ())
        try:
            if linked:
                self.chain.check(wb)
            else:
                self.chain.check_proof(wb)
        except ChainBroken as exc:
            self._problem(h, CHAIN_KINDS.get(exc.kind, exc.kind), str(exc))
            return
        for text in (self.chain.warnings or [])[warned:]:
            self.warnings.append(Problem(self.source, h, "clock", text))
        config = self.configs[wb.header.epoch]
        signers = commit_signers(wb.header, wb.certificate, config, self.verifier)
        extra = len(wb.certificate) - len(signers)
        if extra > 0:
            self._problem(h, "certificate", f"{extra} of its {len(wb.certificate)} commits are "
                                            "not valid commits of this block by distinct "
                                            f"members of epoch {config.epoch}")

    def _check_epoch(self, wb: WireBlock) -> None:
        """The epoch a block claims is the one in force at its height (the last one opened
        before it: `pbft.state.signing_config`)."""
        h = wb.header
        if h.epoch not in self.configs:
            return  # the chain verifier named it
        in_force = signing_config(self._in_force, h.height).epoch
        if in_force != h.epoch:
            self._problem(h.height, "epoch", f"block {h.height} claims epoch {h.epoch}; the "
                                             f"verified history puts it in epoch {in_force}")

    def _check_requests(self, wb: WireBlock) -> None:
        """Client signatures, statuses for the comparison, identities from join requests and
        what the chain does to records (in ledger order: a key learnt from a join request
        verifies the requests after it)."""
        h = wb.header.height
        for env in wb.envelopes:
            self.statuses[(h, "request", env.index)] = env.status
            self.reasons[(h, "request", env.index)] = env.reason
            if env.kind is not m.RequestKind.RECONFIGURATION:
                problem = self.signers.problem(env.client_id, env.digest, env.signature,
                                               env.status,
                                               self._epoch_keys(wb.header.epoch, env.client_id))
                if problem:
                    self._problem(h, "request-signature", f"request {env.index}: {problem}")
            for k, item in enumerate(wb.items_of(env)):
                n = env.first_entry + k
                status, reason = wb.statuses[n], wb.reasons[n]
                self.statuses[(h, "entry", n)] = status
                self.reasons[(h, "entry", n)] = reason
                if status == EntryStatus.RECORDED:
                    self._follow(h, env.client_id, record_id(env.digest, k), item, reason)

    def _epoch_keys(self, epoch: int, client_id: str) -> tuple[bytes, ...]:
        """For validator client `client_id`: the key epoch `epoch` (its block's) names for it,
        then every other key the verified epoch history gave it (none for other clients)."""
        config = self.configs.get(epoch)
        if not client_id.startswith(VALIDATOR_PREFIX) or config is None:
            return ()
        try:
            rid = int(client_id.removeprefix(VALIDATOR_PREFIX))
        except ValueError:
            return ()
        current = config.key_of(rid)
        if current is None:
            return ()
        others = {k for c in self._in_force if (k := c.key_of(rid)) is not None} - {current}
        return (current, *sorted(others))

    def _follow(self, h: int, client_id: str, rid: str, item: Item, reason: str) -> None:
        """A recorded entry: a record starts being tracked; a grant, revocation or erasure of a
        tracked record is noted; a client key change (or the vote approving one) changes who
        signs for the client from the next request on; a join request's keys become known
        signers (as validators
        accept them; what they may do is the ledger's judgement, replayed in statuses)."""
        view = view_of(item)
        if view.raw is not None:
            return
        segments = view.present()
        seg0 = segments[0]
        if not seg0:
            return
        try:
            if seg0[0] == TxType.RECORD:
                p = decode_public(seg0)
                self._records[rid] = _RecordTrack(h, p.submitter_org, len(segments) - 2)
            elif seg0[0] == TxType.JOIN:
                tx = decode_governance_tx(segments)
                if isinstance(tx, JoinRequest) and client_id == applicant_client_id(
                        tx.validator_key):
                    for cid, key in ((org_client_id(tx.org), tx.client_key),
                                     (validator_client_id(tx.replica_id), tx.validator_key)):
                        if cid not in self._genesis_clients:
                            self.signers.learn(cid, key)
            elif seg0[0] in (TxType.CLIENT_KEY, TxType.MEMBER_VOTE):
                self.signers.follow(h, rid, decode_governance_tx(segments), reason)
            elif seg0[0] in (TxType.GRANT, TxType.REVOKE, TxType.ERASE):
                action = decode_record_tx(segments)
                track = self._records.get(action.record_id)
                if track is None:
                    return  # a record before the verified range
                if isinstance(action, Grant):
                    track.events.append((h, "grant", action.org))
                elif isinstance(action, Revoke):
                    track.events.append((h, "revoke", action.org))
                elif isinstance(action, Erase) and track.erased_at is None:
                    track.erased_at = h
        except InvalidTransaction:
            return  # a recorded entry decodes (validators parsed it); a stored row says more

    def _check_columns(self, wb: WireBlock) -> None:
        """The validator's stored record columns against the signed items (audit mode)."""
        if not wb.stored_hash:
            return  # a bundle or a plain stream carries no stored columns
        h = wb.header.height
        rows = {c.index: c for c in wb.records}
        for env in wb.envelopes:
            for k, item in enumerate(wb.items_of(env)):
                n = env.first_entry + k
                seg0 = public_header(item)
                is_record = seg0[:1] == bytes([TxType.RECORD]) and \
                    wb.statuses[n] == EntryStatus.RECORDED
                row = rows.pop(n, None)
                if not is_record:
                    if row is not None:
                        self._problem(h, "record-columns",
                                      f"entry {n}: a stored record row for an entry that is not "
                                      "a recorded record")
                    continue
                rid = record_id(env.digest, k)
                if row is None:
                    self._problem(h, "record-missing",
                                  f"entry {n}: record {rid} is missing from the stored records")
                    continue
                self._compare_row(h, n, rid, seg0, row)
        for n in sorted(rows):
            self._problem(h, "record-columns", f"a stored record row at entry {n}, which the "
                                               "block does not have")

    def _compare_row(self, h: int, n: int, rid: str, seg0: bytes,
                     row: pb.RecordColumns) -> None:
        try:
            p = decode_public(seg0)
        except InvalidTransaction as exc:
            self._problem(h, "record-columns", f"entry {n}: {exc}")
            return
        stored = (row.record_id, row.kind, row.subject_id, row.event_type, row.submitter_org,
                  row.submitted_at_ms, dict(row.metadata))
        signed = (rid, p.kind.value, p.subject_id, p.event_type, p.submitter_org,
                  p.submitted_at_ms, dict(p.metadata))
        names = ("record_id", "kind", "subject_id", "event_type", "submitter_org",
                 "submitted_at_ms", "metadata")
        for name, a, b in zip(names, stored, signed, strict=True):
            if a != b:
                self._problem(h, "record-columns", f"entry {n}: stored {name} {a!r} differs "
                                                   f"from the signed {b!r}")
        track = self._records.get(rid)
        if track is not None:
            track.row = row

    def finish(self, to_head: bool, settled: int | None = None) -> list[Problem]:
        """Checks that need the whole range: each record's stored readers and erasure against
        the grants, revocations and erasures the chain holds. Stored columns are read as the
        blocks come, so they are judged only when the range reaches the validator's head, and
        (`settled`: the head when the audit began) a record a transaction changed after it is
        left unjudged (its columns may have been read before or after that transaction)."""
        if not to_head:
            return self.problems
        moving = []
        for rid, track in self._records.items():
            row = track.row
            if row is None:
                continue
            if settled is not None and any(
                    h > settled for h in [*(e[0] for e in track.events), track.erased_at or 0]):
                moving.append(rid)
                continue
            stored_erasure = int(row.erased_height) or None
            if stored_erasure != track.erased_at:
                self._problem(track.height, "erasure",
                              f"record {rid[:16]}… is marked erased at {stored_erasure} without "
                              "a committed erasure there" if track.erased_at is None else
                              f"record {rid[:16]}… was erased at {track.erased_at} but is "
                              + ("stored as not erased" if stored_erasure is None else
                                 f"stored as erased at {stored_erasure}"))
            if track.erased_at is not None:
                if row.readers:
                    self._problem(track.height, "erasure",
                                  f"record {rid[:16]}…: readers {sorted(row.readers)} remain "
                                  f"after the erasure at {track.erased_at}")
                continue
            for detail in readers_problems(track, set(row.readers)):
                self._problem(track.height, "readers", f"record {rid[:16]}…: {detail}")
        if moving:
            self.warnings.append(Problem(
                self.source, settled or 0, "unjudged",
                f"{len(moving)} records changed while the ledger was audited (from "
                f"{moving[0][:16]}…): their stored readers and erasures were not judged"))
        return self.problems


def readers_problems(track: _RecordTrack, stored: set[str]) -> list[str]:
    """Why a record's stored readers are not what the chain gives it. An organisation the
    chain granted or revoked is a reader by its last such transaction; the others are readers
    because the record was sealed for them, which the chain shows only as a count of key
    segments (their names are withheld), with the submitter always among them."""
    out = []
    first: dict[str, str] = {}
    last: dict[str, tuple[int, str]] = {}
    for height, change, org in track.events:
        first.setdefault(org, change)
        last[org] = (height, change)
    for org, (height, change) in sorted(last.items()):
        if change == "grant" and org not in stored:
            out.append(f"the stored readers lack {org}, granted at {height}")
        elif change == "revoke" and org in stored:
            out.append(f"{org} is still a stored reader after its revocation at {height}")
    sealed_for = {o for o in stored if o not in last} | {
        o for o, change in first.items() if change == "revoke"}
    if len(sealed_for) != track.signed_readers or track.submitter not in sealed_for:
        out.append(f"the stored readers {sorted(stored)} are not what the chain gives it (sealed "
                   f"for {track.signed_readers} organisations including {track.submitter}, "
                   f"then {len(track.events)} grants and revocations)")
    return out


def compare_validators(chains: Mapping[str, ChainAudit]) -> list[Problem]:
    """Name the validators whose verified blocks, or whose statuses and reasons, differ from
    the majority's (honest validators agree on all of them; more than f differing is itself a
    finding)."""
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
                                            f" differs from the others' {majority.hex()[:16]}…"))
    # Request and entry statuses and reasons ("not a reader", "screening: accepted", why
    # invalid) are execution results: the majority of honest validators sets them.
    for kind in ("status", "reason"):
        tables = {name: c.statuses if kind == "status" else c.reasons
                  for name, c in chains.items()}
        for key in sorted({k for t in tables.values() for k in t}):
            votes2 = Counter(t[key] for t in tables.values() if key in t)
            if len(votes2) > 1:
                majority2, _ = votes2.most_common(1)[0]
                height, what, index = key
                for name, t in tables.items():
                    if key in t and t[key] != majority2:
                        problems.append(Problem(name, height, kind,
                                                f"{what} {index} {kind} is {t[key]!r}, the "
                                                f"others say {majority2!r}"))
    return problems


# ------------------------------------------------------------------------------- epochs

def verified_epochs(genesis: Genesis, data: bytes, verifier: Verifier) -> dict[int, EpochConfig]:
    """Every epoch's validator set from an epoch history, each certified by the one before it
    from genesis on. Raises UnverifiableHistory (malformed bytes included)."""
    try:
        records = epochs_from_bytes(data, genesis.chain_id_bytes)
    except WireError as exc:
        raise UnverifiableHistory(f"the epoch history does not decode: {exc}") from exc
    return epoch_configs(genesis.epoch0(), records, genesis.chain_id_bytes, verifier)


def merge_epochs(known: dict[int, EpochConfig], new: Mapping[int, EpochConfig]) -> list[int]:
    """Add a verified history to the ones known; returns the epochs where it differs from them
    (two histories verified from genesis can only differ if more than f validators of an epoch
    signed both)."""
    conflicts = []
    for epoch, config in new.items():
        if known.setdefault(epoch, config) != config:
            conflicts.append(epoch)
    return conflicts


# -------------------------------------------------------------------------- audit verify

Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[], None]]]
"""(validator, blocks to verify) -> a context whose value is called once per block."""


@contextlib.contextmanager
def no_progress(_source: str, _total: int) -> Iterator[Callable[[], None]]:
    yield lambda: None


@dataclass
class VerifyReport:
    """What `consortium audit verify` prints (`--json` is `to_json()`)."""

    validators: dict[str, dict[str, Any]]
    problems: list[Problem]
    warnings: list[Problem]
    height: int

    @property
    def ok(self) -> bool:
        return not self.problems and any(v["ok"] for v in self.validators.values())

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "height": self.height, "validators": self.validators,
                "problems": [p.to_json() for p in self.problems],
                "warnings": [w.to_json() for w in self.warnings]}


def _stream(client: ConsortiumClient, chain: ChainAudit, address: str, from_height: int,
            to_height: int, progress: Progress) -> str | None:
    """Feed blocks from_height..to_height of one validator (audit mode); why the stream
    failed, if it did."""
    if to_height < from_height:
        return None
    try:
        with progress(chain.source, to_height - from_height + 1) as tick:
            for blk in client.stream_blocks(from_height, to_height, audit=True,
                                            address=address):
                chain.feed(blk)
                tick()
    except grpc.RpcError as exc:
        return str(exc.details())
    return None


def audit_validators(client: ConsortiumClient, ids: Sequence[int], *, from_height: int = 1,
                     to_height: int | None = None, first_answering: bool = False,
                     progress: Progress = no_progress) -> VerifyReport:
    """Verify the chains of validators `ids` (with `first_answering`, only the first that
    answers) from `from_height` to `to_height` (default: each one's head), then compare them.
    Each validator's epoch history is verified from genesis; blocks are checked against every
    history that verified."""
    genesis = client.core.genesis
    verifier = CachingVerifier(Ed25519Verifier(), VERIFIER_CACHE)
    configs: dict[int, EpochConfig] = {0: genesis.epoch0()}
    chains: dict[str, ChainAudit] = {}
    report: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for n, vid in enumerate(ids):
        name = str(vid)
        address = client.core.validators[vid]
        try:
            head = int(client.status(address).height)
            history = verified_epochs(genesis, client.epoch_history(address),
                                      verifier)
        except grpc.RpcError as exc:
            if first_answering and n < len(ids) - 1:
                continue  # the default: the first validator that answers
            problems.append(Problem(name, 0, "unreachable", str(exc.details())))
            report[name] = {"ok": False, "height": None}
            continue
        except UnverifiableHistory as exc:
            problems.append(Problem(name, 0, "epoch-history", str(exc)))
            history = {}
        for epoch in merge_epochs(configs, history):
            problems.append(Problem(name, 0, "epoch-history",
                                    f"its verified history differs from another validator's at "
                                    f"epoch {epoch} (more than f validators signed both)"))
        last = head if to_height is None else min(to_height, head)
        chain = ChainAudit(genesis, configs, verifier, name, from_height)
        failed = _stream(client, chain, address, from_height, last, progress)
        # A live ledger grows while it is audited: follow it (up to `to_height`) to a head that
        # holds still, so that the stored columns, read as the blocks came, meet every
        # transaction they may show.
        grown = last
        for _ in range(FOLLOW_ROUNDS):
            if failed is not None:
                break
            with contextlib.suppress(grpc.RpcError):
                grown = int(client.status(address).height)
            target = grown if to_height is None else min(grown, to_height)
            if target <= last:
                break
            failed = _stream(client, chain, address, last + 1, target, progress)
            last = target
        else:
            with contextlib.suppress(grpc.RpcError):
                grown = int(client.status(address).height)
        if failed is not None:
            problems.append(Problem(name, chain.next_height, "unreachable",
                                    f"stream failed: {failed}"))
        if chain.next_height <= last:
            problems.append(Problem(name, chain.next_height, "missing-block",
                                    f"validator served blocks up to {chain.next_height - 1} "
                                    f"of {last}"))
        to_head = failed is None and chain.next_height > last and grown <= last
        if not to_head and (to_height is None or to_height >= head):
            warnings.append(Problem(name, grown, "unjudged",
                                    f"the ledger kept growing past {last} during the audit: "
                                    "stored readers and erasures were not judged (audit "
                                    "again when it is quieter)"))
        problems.extend(chain.finish(to_head, settled=head))
        warnings.extend(chain.warnings)
        chains[name] = chain
        report[name] = {"height": last, "verified_from": from_height, "verified_to": last,
                        "blocks": chain.blocks,
                        "epoch": None if chain.last is None else chain.last.epoch}
        if first_answering:
            break
    if len(chains) > 1:
        problems.extend(compare_validators(chains))
    bad = {p.validator for p in problems}
    for name, entry in report.items():
        entry["ok"] = name not in bad and entry.get("height") is not None
    height = max((c.next_height - 1 for c in chains.values()), default=0)
    return VerifyReport(report, problems, warnings, height)


# ---------------------------------------------------------------------------- receipts

def receipt_to_json(r: Receipt) -> dict[str, Any]:
    """A receipt as a self-contained JSON proof (checked by `audit check-proof`): the protobuf
    receipt's fields, bytes in hex, plus the block hash and signers for a reader."""
    msg = receipt_to_proto(r)

    def proof(p: pb.InclusionProof) -> dict[str, Any]:
        return {"index": p.index, "size": p.size, "path": [x.hex() for x in p.path]}
    return {"record_id": r.record_id, "height": r.height, "status": r.status,
            "reason": r.reason, "block_header": r.header.encode().hex(),
            "block_hash": r.header.hash().hex(),
            "certificate": [c.wire.hex() for c in r.certificate],
            "certificate_signers": sorted(c.sender for c in r.certificate),
            "request_proof": proof(msg.request_proof), "client_id": r.client_id,
            "nonce": r.nonce, "kind": int(r.kind), "signature": r.signature.hex(),
            "item_proof": proof(msg.item_proof),
            "item": msg.item.hex() if msg.item else None,
            "item_view": msg.item_view.hex() if msg.item_view else None}


class NotAProof(ValueError):
    """A file that is not a receipt in the `receipt_to_json` form."""


def receipt_from_json(doc: Any, chain_id: bytes) -> Receipt:
    """Decode `receipt_to_json` output (or a document holding it under "receipt"). Raises
    NotAProof with one line saying what is wrong."""
    try:
        rj = doc.get("receipt", doc) if isinstance(doc, dict) else doc

        def proof(p: Any) -> pb.InclusionProof:
            return pb.InclusionProof(index=int(p["index"]), size=int(p["size"]),
                                     path=[bytes.fromhex(x) for x in p["path"]])
        msg = pb.Receipt(
            record_id=str(rj["record_id"]), height=int(rj["height"]),
            block_header=bytes.fromhex(rj["block_header"]),
            certificate=[bytes.fromhex(c) for c in rj["certificate"]],
            request_proof=proof(rj["request_proof"]), client_id=str(rj["client_id"]),
            nonce=int(rj["nonce"]), kind=int(rj["kind"]),
            signature=bytes.fromhex(rj["signature"]), item_proof=proof(rj["item_proof"]),
            status=str(rj["status"]), reason=str(rj.get("reason", "")))
        if rj.get("item_view"):
            msg.item_view = bytes.fromhex(rj["item_view"])
        else:
            msg.item = bytes.fromhex(rj["item"])
        return receipt_from_proto(msg, chain_id)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise NotAProof(" ".join(detail.split())) from exc


def check_proof(doc: Any, genesis: Genesis, verifier: Verifier) -> tuple[Receipt, str | None]:
    """A proof document checked offline against the genesis validator set (the only one known
    without the epoch history): (receipt, None when it proves its item, else why not). Raises
    NotAProof."""
    r = receipt_from_json(doc, genesis.chain_id_bytes)
    if r.header.epoch != 0:
        return r, (f"the block is from epoch {r.header.epoch}; offline, only epoch 0 (genesis) "
                   "is known: verify it with `audit verify` or a bundle")
    return r, verify_receipt(r, genesis.epoch0(), verifier)


def load_json(text: str) -> Any:
    """JSON from a proof file; NotAProof when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NotAProof(f"not JSON ({exc})") from exc
