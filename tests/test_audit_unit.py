"""Issue 4 on ledger format 2, without processes: the audit of chains built in memory
(`client.audit.ChainAudit` over `verify.ChainVerifier`), the offline bundle format (version 2),
offline receipt checks, item views and segment digests, record-transaction encodings and the
execution rules of grant / revoke / erase / access.

Blocks are built exactly as a validator builds them (`ledger.blocks.build_block` on a PBFT
`Execute` with real Ed25519 signatures: client envelopes, the primary's proposal header and
2f+1 COMMITs) and served as a validator serves them to members
(`wire.block_to_proto(..., for_client=True)`); the audit columns a validator adds in audit mode
are derived here from an independent model of what the store keeps (`Ledger._track`).

What format 2 removed on purpose, compared with the format-1 tests:
- a certificate's problem is no longer diagnosed commit by commit (which signer is an outsider,
  repeated or forged): `verify.verify_certificate` is the one certificate counter and says
  whether a quorum holds; the audit adds only how many entries are not valid commits;
- stored ciphertexts and wrapped keys are no longer columns beside the signed request: they are
  the stored item itself, so an edit of them breaks the envelope's digest (`items`), and the
  stored key-segment hashes gave way to the stored readers (`readers`);
- a served block carries its proposal header (a header only: no request travels in it), and a
  block without one, or with one the primary did not sign, does not verify.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError as ProtoDecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortium.api.v1 import ledger_pb2 as pb
from consortium.client.audit import (
    ChainAudit,
    NotAProof,
    Problem,
    check_proof,
    compare_validators,
    receipt_from_json,
    receipt_to_json,
    verified_epochs,
)
from consortium.client.bundle import BundleError, genesis_sha256, verify_bundle, write_bundle
from consortium.config import ClientInfo, ConfigError, DataPolicy, Genesis, OrgInfo, ValidatorInfo
from consortium.crypto.envelope import OrgKeyPair, seal, wrap_key
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger.blocks import (
    ACCESS_DENIED,
    Block,
    BlockHeader,
    ClientOrgs,
    EntryStatus,
    EnvelopeStatus,
    RecordState,
    build_block,
    parse_item,
    referenced_records,
)
from consortium.ledger.items import ItemView, Withheld, record_id
from consortium.ledger.records import RecordKind, Submission, public_part
from consortium.ledger.transactions import (
    TEXT_BYTES_MAX,
    WRAPPED_KEY_BYTES,
    Access,
    Erase,
    Grant,
    InvalidTransaction,
    RecordTx,
    Revoke,
    TxType,
    decode_record_tx,
    encode_tx,
    key_segment,
)
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import DecodeError, Writer
from consortium.pbft.membership import EpochConfig
from consortium.pbft.params import ProtocolParams
from consortium.pbft.payload import (
    encode_envelope,
    encode_segments,
    item_digest,
    payload_digest,
    segment_hash,
    split_segments,
)
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    batch_root,
    checkpoint_digest,
    next_state_digest,
)
from consortium.verify import UnverifiableHistory
from consortium.verify.chain import TIME_JUMP_MS_MAX
from consortium.wire import block_to_proto, receipt_of

APP = m.RequestKind.APPLICATION


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(("tests/test_audit_unit", *parts)).encode()).digest()


CHAIN_ID = "audit-unit-chain"
CHAIN = CHAIN_ID.encode()
VALIDATOR_KEYS = {i: Ed25519Signer(_seed("validator", i)) for i in range(4)}
OUTSIDER = Ed25519Signer(_seed("outsider"))
"""A key of no validator and no client."""
JOINER = Ed25519Signer(_seed("validator", 4))
"""Validator 4, a member from epoch 1 on (`epoch_history`)."""
SIGNERS = {**VALIDATOR_KEYS, 4: JOINER}
ORG_KEYS = {o: OrgKeyPair(_seed("org", o)) for o in ("acme", "globex", "regulator", "hospital")}
CLIENTS = {"alice": "acme", "bob": "globex", "rita": "regulator", "hana": "hospital"}
CLIENT_KEYS = {c: Ed25519Signer(_seed("client", c)) for c in CLIENTS}
T0 = 1_700_000_000_000
"""Time of the ledgers built here: block h is proposed at T0 + 1000 h."""


def make_genesis(chain_id: str = CHAIN_ID, **policy_or_protocol: Any) -> Genesis:
    return Genesis(
        chain_id, ProtocolParams(checkpoint_interval=4, log_window=8),
        tuple(ValidatorInfo(i, list(ORG_KEYS)[i], s.public_key, f"127.0.0.1:{7100 + i}",
                            f"127.0.0.1:{7200 + i}") for i, s in VALIDATOR_KEYS.items()),
        tuple(OrgInfo(o, o.title(), k.public_key) for o, k in ORG_KEYS.items()),
        tuple(ClientInfo(c, org, CLIENT_KEYS[c].public_key) for c, org in CLIENTS.items()),
        **policy_or_protocol)


GENESIS = make_genesis()
ORGS = ClientOrgs(GENESIS.client_orgs(), {o.org_id for o in GENESIS.orgs})
VERIFIER = CachingVerifier(Ed25519Verifier(), 1 << 16)
EPOCH0 = {0: GENESIS.epoch0()}
NO_EPOCHS = codec.encode_epoch_records(())


def commit_msg(sender: int, seq: int, digest: bytes, *, view: int = 0, epoch: int = 0,
               key: Ed25519Signer | None = None) -> m.SignedMessage:
    """COMMIT(view, seq, digest) signed as `sender` (with `key` instead of its own: a forgery
    or an outsider)."""
    signer = key if key is not None else SIGNERS[sender]
    return codec.sign_message(signer, CHAIN, sender, m.Commit(epoch, view, seq, digest))


def proposal(seq: int, requests: Sequence[m.Request], *, view: int = 0, proposed_ms: int = 0,
             sender: int | None = None, epoch: int = 0) -> m.SignedMessage:
    """The proposal header (PRE-PREPARE, no batch attached) of `requests`, signed by the primary
    of `view` (or by `sender`)."""
    signer = view % 4 if sender is None else sender
    body = m.PrePrepare(epoch, view, seq, batch_root(requests), len(requests), proposed_ms)
    return codec.sign_message(SIGNERS[signer], CHAIN, signer, body)


# --------------------------------------------------------------------------------- the ledger

class Ledger:
    """Blocks built as a validator builds them, plus an independent model of what a validator
    stores about records afterwards (readers, erasures), for the audit columns."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.batches: list[tuple[m.Request, ...]] = []
        self.state: dict[str, RecordState] = {}
        self.readers: dict[str, set[str]] = {}
        self.erased: dict[str, int] = {}
        self.record_key: dict[str, bytes] = {}
        self.subs: dict[str, Submission] = {}
        self._nonces = itertools.count(1)
        self._state_digest = GENESIS_STATE_DIGEST

    # requests
    def sign(self, client: str, items: Sequence[bytes], *,
             signer: Ed25519Signer | None = None) -> m.Request:
        """One envelope of `items` signed as `client` (by `signer` instead: a forgery)."""
        payload = encode_envelope(list(items))
        nonce = next(self._nonces)
        digest = m.request_digest(client, nonce, APP, payload)
        s = signer if signer is not None else CLIENT_KEYS.get(client, OUTSIDER)
        return m.Request(client, nonce, APP, payload,
                         s.sign(m.request_signing_bytes(CHAIN, digest)))

    def record_item(self, client: str, subject: str = "lot-1", *,
                    kind: RecordKind = RecordKind.PROVENANCE, event: str | None = None,
                    readers: Sequence[str] = (), metadata: dict[str, str] | None = None,
                    body: bytes = b'{"temperature": 4}') -> bytes:
        org = CLIENTS[client]
        event = event or ("shipped" if kind is RecordKind.PROVENANCE else "lab-result")
        meta = tuple(sorted((metadata if metadata is not None
                             else {"location": "Rotterdam"}).items()))
        at_ms = T0 + len(self.subs)
        aad = public_part(kind, subject, event, org, at_ms, meta)
        sealed = seal(body, aad, {o: ORG_KEYS[o].public_key for o in {org, *readers}})
        sub = Submission(kind, subject, event, org, at_ms, meta, sealed.ciphertext,
                         tuple(sorted(sealed.wrapped_keys.items())))
        item = sub.encode()
        self.subs[hashlib.sha256(item).hexdigest()] = sub
        self.record_key[hashlib.sha256(item).hexdigest()] = ORG_KEYS[org].unwrap(
            sealed.wrapped_keys[org])
        return item

    def record(self, client: str, subject: str = "lot-1", **kw: Any) -> m.Request:
        return self.sign(client, [self.record_item(client, subject, **kw)])

    def tx(self, client: str, tx: RecordTx) -> m.Request:
        return self.sign(client, [encode_tx(tx)])

    def grant(self, client: str, rid: str, org: str) -> m.Request:
        return self.tx(client, self.grant_tx(rid, org))

    def grant_tx(self, rid: str, org: str) -> Grant:
        key = self.key_of(rid)
        return Grant(rid, org, wrap_key(key, ORG_KEYS[org].public_key))

    def key_of(self, rid: str) -> bytes:
        for block in self.blocks:
            for e in block.entries:
                if e.record_id == rid and isinstance(e.item, bytes):
                    return self.record_key.get(hashlib.sha256(e.item).hexdigest(), bytes(32))
        return bytes(32)

    # blocks
    def execute(self, requests: Sequence[m.Request], *, executed: Sequence[m.Request] | None =
                None, proposed_ms: int | None = None, view: int = 0, epoch: int = 0,
                proposer: int | None = None, committers: Sequence[int] = (0, 1, 2)
                ) -> ev.Execute:
        """The next sequence number's committed batch: the proposal header of the primary of
        `view` in epoch 0 (or `proposer`'s) and the COMMITs of `committers`."""
        seq = len(self.blocks) + 1
        reqs = tuple(requests)
        pp = proposal(seq, reqs, view=view, epoch=epoch, sender=proposer,
                      proposed_ms=T0 + 1000 * seq if proposed_ms is None else proposed_ms)
        body = pp.body
        assert isinstance(body, m.PrePrepare)
        return ev.Execute(seq=seq, view=view, epoch=epoch, digest=body.digest, requests=reqs,
                          executed=reqs if executed is None else tuple(executed),
                          pre_prepare=pp,
                          certificate=tuple(commit_msg(i, seq, body.digest, view=view,
                                                       epoch=epoch) for i in committers),
                          state_digest=next_state_digest(self._state_digest, seq, body.digest))

    def commit(self, *requests: m.Request, executed: Sequence[m.Request] | None = None,
               proposed_ms: int | None = None, epoch: int = 0, proposer: int | None = None,
               committers: Sequence[int] = (0, 1, 2)) -> Block:
        """Order `requests` as the next block."""
        a = self.execute(requests, executed=executed, proposed_ms=proposed_ms, epoch=epoch,
                         proposer=proposer, committers=committers)
        self._state_digest = a.state_digest
        before = {r: self.state[r] for r in referenced_records(a.requests) if r in self.state}
        block = build_block(a, CHAIN, self.blocks[-1].header if self.blocks else None, ORGS,
                            before)
        self.blocks.append(block)
        self.batches.append(a.requests)
        self._track(block)
        return block

    def _track(self, block: Block) -> None:
        """What the store keeps after this block (the documented effects, modelled here)."""
        for e in block.entries:
            if e.status != EntryStatus.RECORDED:
                continue
            rid = e.record_id
            if e.submission is not None:
                sub = e.submission
                self.state[rid] = RecordState(sub.kind, sub.subject_id, sub.submitter_org,
                                              frozenset(sub.readers))
                self.readers[rid] = set(sub.readers)
                continue
            a = e.action
            if a is None or e.reason:
                continue
            target = a.record_id
            if isinstance(a, Grant):
                self.state[target] = replace(self.state[target],
                                             readers=self.state[target].readers | {a.org})
                self.readers[target].add(a.org)
            elif isinstance(a, Revoke):
                self.state[target] = replace(self.state[target],
                                             readers=self.state[target].readers - {a.org})
                self.readers[target].discard(a.org)
            elif isinstance(a, Erase):
                self.state[target] = replace(self.state[target], readers=frozenset(),
                                             erased=True)
                self.readers[target] = set()
                self.erased[target] = block.header.height

    # what a validator serves
    def columns(self, index: int, rid: str, item: bytes) -> pb.RecordColumns:
        sub = self.subs[hashlib.sha256(item).hexdigest()]
        return pb.RecordColumns(
            index=index, record_id=rid, kind=sub.kind.value, subject_id=sub.subject_id,
            event_type=sub.event_type, submitter_org=sub.submitter_org,
            submitted_at_ms=sub.submitted_at_ms, metadata=dict(sub.metadata),
            readers=sorted(self.readers[rid]), erased_height=self.erased.get(rid, 0))

    def proto(self, height: int, *, audit: bool = False) -> pb.Block:
        block = self.blocks[height - 1]
        msg = block_to_proto(block, for_client=True)
        if audit:
            msg.stored_hash = block.hash
            for e in block.entries:
                if e.submission is not None and e.status == EntryStatus.RECORDED:
                    assert isinstance(e.item, bytes)
                    msg.records.append(self.columns(e.index, e.record_id, e.item))
        return msg

    def protos(self, *, audit: bool = False) -> list[pb.Block]:
        return [self.proto(h, audit=audit) for h in range(1, len(self.blocks) + 1)]


def rid_of(r: m.Request, index: int = 0) -> str:
    return record_id(r.digest, index)


@functools.cache
def scenario() -> Ledger:
    """Five blocks touching every rule once:
    1. records: a lot by acme read by globex (entry 0), a patient record by hospital read by
       regulator (1), and one envelope of globex with two lots (2, 3);
    2. a grant by a reader, an access by a reader and one by a non-reader, a revocation by a
       non-submitter, invalid (entries 0..3);
    3. a null batch, as a view change makes (no request, no proposal time);
    4. a revocation by the submitter, a grant by the submitter of the patient record, an
       envelope that is invalid as a whole (its second item does not decode) and a grant of
       the lot by its submitter;
    5. an erasure, and an erasure of a provenance record, invalid."""
    lg = Ledger()
    lot = lg.record("alice", "lot-1", readers=["globex"])
    pat = lg.record("hana", "patient-1", kind=RecordKind.PATIENT, readers=["regulator"])
    lots = lg.sign("bob", [lg.record_item("bob", "lot-2", event="received"),
                           lg.record_item("bob", "lot-3", event="inspected")])
    lg.commit(lot, pat, lots)
    lot_id, pat_id = rid_of(lot), rid_of(pat)
    lg.commit(lg.grant("bob", lot_id, "regulator"),
              lg.tx("rita", Access(pat_id, "treatment", T0 + 500)),
              lg.tx("bob", Access(pat_id, "curiosity", T0 + 600)),
              lg.tx("bob", Revoke(lot_id, "regulator")))
    lg.commit(proposed_ms=0)
    lg.commit(lg.tx("alice", Revoke(lot_id, "regulator")), lg.grant("hana", pat_id, "acme"),
              lg.sign("alice", [encode_tx(Access(lot_id, "x", T0)), b"\xc0SEG not segments"]),
              lg.grant("alice", lot_id, "hospital"))
    lg.commit(lg.tx("hana", Erase(pat_id, "patient-1", "patient request")),
              lg.tx("alice", Erase(lot_id, "lot-1", "")))
    return lg


def verify_all(blocks: Iterable[pb.Block], *, genesis: Genesis = GENESIS, to_head: bool = True,
               source: str = "v2", from_height: int = 1,
               configs: dict[int, EpochConfig] | None = None) -> tuple[ChainAudit, list[Problem]]:
    chain = ChainAudit(genesis, EPOCH0 if configs is None else configs, VERIFIER, source,
                       from_height)
    for b in blocks:
        chain.feed(b)
    return chain, chain.finish(to_head)


def kinds_at(problems: Iterable[Problem]) -> set[tuple[int, str]]:
    return {(p.height, p.kind) for p in problems}


def copy_blocks(blocks: Iterable[pb.Block]) -> list[pb.Block]:
    out = []
    for b in blocks:
        c = pb.Block()
        c.CopyFrom(b)
        out.append(c)
    return out


def test_the_scenario_is_what_its_docstring_says() -> None:
    """The tests below rely on these statuses."""
    lg = scenario()
    rows = [[(e.status, e.reason) for e in b.entries] for b in lg.blocks]
    assert [len(r) for r in rows] == [4, 4, 0, 3, 2]
    assert rows[1][2] == (EntryStatus.RECORDED, ACCESS_DENIED)
    assert rows[1][3][0] == EntryStatus.INVALID
    assert [e.status for e in lg.blocks[3].envelopes] == [
        EnvelopeStatus.EXECUTED, EnvelopeStatus.EXECUTED, EnvelopeStatus.INVALID,
        EnvelopeStatus.EXECUTED]
    assert rows[4] == [(EntryStatus.RECORDED, ""),
                       (EntryStatus.INVALID, "only patient records are erased")]
    assert lg.blocks[2].header.proposed_ms == 0 and lg.blocks[2].header.request_count == 0


# =============================================================================================
# ChainAudit
# =============================================================================================

def test_an_honest_chain_verifies_with_and_without_audit_columns() -> None:
    """Every height verifies (no problem, a hash per height) both as a member streams it and
    with the stored columns a validator adds in audit mode."""
    lg = scenario()
    for audit in (False, True):
        chain, problems = verify_all(lg.protos(audit=audit))
        assert problems == []
        assert sorted(chain.hashes) == [1, 2, 3, 4, 5]
        assert chain.hashes[5] == lg.blocks[-1].hash
        assert chain.blocks == 5 and chain.warnings == []
        assert chain.statuses[(2, "entry", 2)] == EntryStatus.RECORDED
        assert chain.reasons[(2, "entry", 2)] == ACCESS_DENIED
        assert chain.statuses[(2, "entry", 3)] == EntryStatus.INVALID
        assert chain.statuses[(4, "request", 2)] == EnvelopeStatus.INVALID


def test_served_blocks_hold_no_ciphertext_and_no_key() -> None:
    """What a member receives: every item as a view with all segments but the public header
    withheld (same digests), and a proposal header that carries no request."""
    lg = scenario()
    for h, block in enumerate(lg.blocks, start=1):
        msg = lg.proto(h)
        assert sorted(msg.views) == list(range(len(block.entries)))
        pp = codec.decode_signed(msg.pre_prepare, CHAIN)
        assert pp.batch is None and isinstance(pp.body, m.PrePrepare)
        raw = msg.SerializeToString()
        for e, data in zip(block.entries, msg.items, strict=True):
            view = ItemView.decode(data)
            assert isinstance(view.segments[0], bytes)
            assert all(isinstance(s, Withheld) for s in view.segments[1:])
            assert view.digest == e.digest
            assert isinstance(e.item, bytes)
            for seg in (split_segments(e.item) or [])[1:]:
                assert seg not in raw, f"block {h} entry {e.index} leaks a withheld segment"


def _set_certificate(msg: pb.Block, commits: Sequence[m.SignedMessage]) -> None:
    del msg.certificate[:]
    msg.certificate.extend(c.wire for c in commits)


NO_QUORUM = "no valid commit certificate of 3 validators of epoch 0"
CERTIFICATE_FORGERIES: dict[str, tuple[Callable[[int, bytes], list[m.SignedMessage]], str]] = {
    "f+1 signers": (lambda h, d: [commit_msg(0, h, d), commit_msg(1, h, d)], NO_QUORUM),
    "no commit at all": (lambda h, d: [], NO_QUORUM),
    "an outsider completing a quorum": (
        lambda h, d: [commit_msg(0, h, d), commit_msg(1, h, d),
                      commit_msg(9, h, d, key=OUTSIDER)], NO_QUORUM),
    "a repeated signer completing a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 1)], NO_QUORUM),
    "a forged signature": (
        lambda h, d: [commit_msg(0, h, d), commit_msg(1, h, d),
                      commit_msg(3, h, d, key=VALIDATOR_KEYS[0])], NO_QUORUM),
    "commits for the Merkle root, not the proposal digest": (
        lambda h, d: [commit_msg(i, h, scenario().blocks[h - 1].header.merkle_root)
                      for i in (0, 1, 2)], NO_QUORUM),
    "an outsider besides a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 2)]
        + [commit_msg(4, h, d, key=OUTSIDER)],
        "1 of its 4 commits are not valid commits of this block"),
    "a repeated signer besides a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 2, 1)],
        "1 of its 4 commits are not valid commits"),
    "a commit for another height besides a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 2)] + [commit_msg(3, h + 1, d)],
        "1 of its 4 commits"),
    "a commit for another view besides a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 2)] + [commit_msg(3, h, d, view=1)],
        "1 of its 4 commits"),
    "a commit for another digest besides a quorum": (
        lambda h, d: [commit_msg(i, h, d) for i in (0, 1, 2)]
        + [commit_msg(3, h, bytes(32))], "1 of its 4 commits"),
}


@pytest.mark.parametrize("case", list(CERTIFICATE_FORGERIES))
def test_certificate_forgeries_are_found_at_their_height(case: str) -> None:
    """A certificate that does not hold 2f+1 distinct valid members' COMMITs of the block's
    proposal digest, or holds anything besides them, is one `certificate` problem at its
    height; the other heights still verify."""
    make, detail = CERTIFICATE_FORGERIES[case]
    lg = scenario()
    for audit in (False, True):
        blocks = copy_blocks(lg.protos(audit=audit))
        header = lg.blocks[1].header
        _set_certificate(blocks[1], make(header.height, header.digest))
        chain, problems = verify_all(blocks)
        assert [(p.validator, p.height, p.kind) for p in problems] == [("v2", 2, "certificate")]
        assert detail in problems[0].detail, problems[0].detail
        assert 2 not in chain.hashes and sorted(chain.hashes) == [1, 3, 4, 5]


def test_a_certificate_entry_that_is_not_a_commit_is_malformed() -> None:
    lg = scenario()
    blocks = copy_blocks(lg.protos())
    h = lg.blocks[2].header
    prepare = codec.sign_message(VALIDATOR_KEYS[3], CHAIN, 3,
                                 m.Prepare(0, 0, h.height, h.digest))
    blocks[2].certificate.append(prepare.wire)
    _, problems = verify_all(blocks)
    assert kinds_at(problems) == {(3, "malformed")}
    assert "expected a Commit message" in problems[0].detail


def _edit_header(msg: pb.Block, **changes: Any) -> None:
    header = BlockHeader.decode(msg.header)
    msg.header = replace(header, **changes).encode()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"prev_hash": bytes(32)}, {(4, "hash-link"), (5, "hash-link")}),
    ({"state_digest": bytes(32)}, {(4, "state-digest"), (5, "hash-link")}),
    ({"timestamp_ms": 1}, {(4, "time"), (5, "hash-link")}),
    ({"epoch": 1}, {(4, "proposal"), (5, "hash-link")}),
    ({"proposed_ms": T0}, {(4, "proposal"), (5, "hash-link")}),
    ({"height": 9}, {(4, "missing-block"), (10, "height")}),
    ({"merkle_root": bytes(32)}, {(4, "merkle-root"), (5, "hash-link")}),
    ({"request_count": 3}, {(4, "malformed"), (5, "hash-link")}),
    ({"entry_count": 4}, {(4, "malformed"), (5, "hash-link")}),
    ({"chain_id": b"other"}, {(4, "malformed"), (5, "hash-link")}),
], ids=["prev_hash", "state_digest", "timestamp", "epoch", "proposed_ms", "height",
        "merkle_root", "request_count", "entry_count", "chain_id"])
def test_an_edited_header_is_found_at_its_height(changes: dict[str, Any],
                                                 expected: set[tuple[int, str]]) -> None:
    """Block 4's header edited: the edit is reported at 4 where the block itself shows it
    (its links, its time, its agreement with the signed proposal header, its counts), and at
    5 (its prev_hash no longer names block 4); blocks 1 to 3 stay verified."""
    lg = scenario()
    blocks = copy_blocks(lg.protos())
    _edit_header(blocks[3], **changes)
    chain, problems = verify_all(blocks)
    assert expected <= kinds_at(problems), problems
    assert not {1, 2, 3} & {p.height for p in problems}, problems
    assert {1, 2, 3} <= set(chain.hashes) and 5 not in chain.hashes


def test_a_block_time_that_is_not_the_max_of_the_previous_and_proposed_is_found() -> None:
    """Block time is derived, not chosen: max(previous block time, certified proposal time).
    A primary whose clock went back gives a block the previous time (that verifies); a header
    whose time is anything else does not, even with the next block's link fixed."""
    lg = Ledger()
    lg.commit(lg.record("alice"))
    back = lg.commit(lg.record("bob"), proposed_ms=T0 + 500)
    assert back.header.timestamp_ms == T0 + 1000 and back.header.proposed_ms == T0 + 500
    assert verify_all(lg.protos())[1] == []
    blocks = copy_blocks(lg.protos())
    _edit_header(blocks[1], timestamp_ms=T0 + 500)
    _, problems = verify_all(blocks)
    assert kinds_at(problems) == {(2, "time")}
    assert "block time is not max(previous, proposed)" in problems[0].detail


def test_a_proposal_time_far_from_its_neighbours_is_a_warning() -> None:
    """Issue 12, finding 5: a primary's broken clock shows as a proposal time days away from
    the blocks around it. The chain is valid (time is certified), so it is a warning at the
    blocks where the jump happens, not a problem."""
    lg = Ledger()
    lg.commit(proposed_ms=T0)
    lg.commit(proposed_ms=T0 + TIME_JUMP_MS_MAX + 3_600_000)
    lg.commit(proposed_ms=T0 + TIME_JUMP_MS_MAX + 3_601_000)
    lg.commit(proposed_ms=T0 + 5_000)
    chain, problems = verify_all(lg.protos())
    assert problems == []
    assert [(w.height, w.kind) for w in chain.warnings] == [(2, "clock"), (4, "clock")]
    assert "proposal time jumps 90000 s from block 1" in chain.warnings[0].detail


def test_missing_duplicated_and_reordered_blocks_are_named() -> None:
    lg = scenario()
    blocks = lg.protos()
    _, problems = verify_all([blocks[0], blocks[1], blocks[3], blocks[4]])
    assert kinds_at(problems) == {(3, "missing-block")}
    _, problems = verify_all([blocks[0], blocks[1], blocks[1], blocks[2]])
    assert kinds_at(problems) == {(3, "height")}
    _, problems = verify_all([blocks[0], blocks[2], blocks[1]])
    assert {(2, "missing-block"), (4, "height")} <= kinds_at(problems)


def test_a_block_after_a_gap_is_still_checked_for_what_it_proves_alone() -> None:
    """A validator that deleted block 3 and serves block 4 with a forged certificate: the gap
    is one problem, and block 4's own proof is still checked."""
    lg = scenario()
    blocks = copy_blocks(lg.protos())
    del blocks[3].certificate[1:]
    _, problems = verify_all([blocks[0], blocks[1], blocks[3], blocks[4]])
    assert kinds_at(problems) == {(3, "missing-block"), (4, "certificate")}


def _swap_envelopes(msg: pb.Block, i: int, j: int) -> None:
    """Swap two one-item envelopes of a block, with their items (the block stays decodable)."""
    envs = list(msg.envelopes)
    envs[i], envs[j] = envs[j], envs[i]
    items = list(msg.items)
    items[i], items[j] = items[j], items[i]
    del msg.envelopes[:]
    msg.envelopes.extend(envs)
    msg.items[:] = items


def test_swapped_or_replaced_envelopes_break_the_merkle_root() -> None:
    """Two requests of one block swapped, or a request of another block put in: the Merkle root
    over the request digests no longer matches the certified header."""
    lg = scenario()
    blocks = copy_blocks(lg.protos())
    _swap_envelopes(blocks[1], 0, 1)
    _, problems = verify_all(blocks)
    assert kinds_at(problems) == {(2, "merkle-root")}
    blocks = copy_blocks(lg.protos())
    one, two = blocks[1], blocks[4]
    one_env, one_item = pb.Envelope(), one.items[1]
    one_env.CopyFrom(one.envelopes[1])
    one.envelopes[1].CopyFrom(two.envelopes[0])
    one.items[1] = two.items[0]
    two.envelopes[0].CopyFrom(one_env)
    two.items[0] = one_item
    _, problems = verify_all(blocks)
    assert {(2, "merkle-root"), (5, "merkle-root")} <= kinds_at(problems)


def _view_with(data: bytes, index: int, segment: bytes | Withheld) -> bytes:
    view = ItemView.decode(data)
    segs = list(view.segments)
    segs[index] = segment
    return ItemView(tuple(segs)).encode()


def test_a_tampered_item_breaks_its_envelopes_signed_digest() -> None:
    """An item edited inside an envelope (its public header, the hash of its ciphertext as a
    database edit of the ciphertext shows, or its place in the envelope): the items no
    longer hash to the digest the client signed, named at the block with the request."""
    lg = scenario()
    edits: dict[str, Callable[[pb.Block], None]] = {
        "public header": lambda b: b.items.__setitem__(0, _view_with(
            b.items[0], 0, ItemView.decode(b.items[1]).segments[0])),
        "ciphertext": lambda b: b.items.__setitem__(1, _view_with(
            b.items[1], 1, Withheld(segment_hash(b"another ciphertext")))),
        "order within an envelope": lambda b: b.items.__setitem__(
            slice(2, 4), [b.items[3], b.items[2]]),
        "an item of another envelope": lambda b: b.items.__setitem__(2, b.items[0]),
    }
    for name, edit in edits.items():
        blocks = copy_blocks(lg.protos(audit=True))
        edit(blocks[0])
        _, problems = verify_all(blocks)
        assert kinds_at(problems) == {(1, "items")}, (name, problems)
        assert "its items do not match its digest" in problems[0].detail


def test_a_request_not_signed_by_a_known_client_is_named() -> None:
    """A block whose request was signed by no known client (validators refuse those before
    ordering) or by another client's key."""
    lg = Ledger()
    lg.commit(lg.record("alice"), lg.sign("mallory", [b"raw op"]),
              lg.sign("bob", [b"raw op 2"], signer=CLIENT_KEYS["alice"]))
    _, problems = verify_all(lg.protos())
    assert [(p.height, p.kind) for p in problems] == [(1, "request-signature")] * 2
    assert "request 1: not signed by a known client 'mallory'" in problems[0].detail
    assert "request 2: not signed by a known client 'bob'" in problems[1].detail


def test_an_edited_request_signature_is_named() -> None:
    """The signature is not part of the request digest: only the signature check sees an
    edit of it."""
    blocks = copy_blocks(scenario().protos())
    sig = bytearray(blocks[1].envelopes[2].signature)
    sig[5] ^= 1
    blocks[1].envelopes[2].signature = bytes(sig)
    _, problems = verify_all(blocks)
    assert kinds_at(problems) == {(2, "request-signature")}


def test_a_proposal_header_must_be_signed_by_the_primary_of_its_view() -> None:
    """The block's proposal header (PRE-PREPARE) certifies who proposed it: one signed by a
    backup, one with a zeroed signature, one of another block, and none at all are all
    `proposal` problems at the block's height."""
    lg = scenario()
    block = lg.blocks[1]
    by_backup = proposal(2, lg.batches[1], proposed_ms=block.header.proposed_ms, sender=1)
    zeroed = codec.resign_message(block.pre_prepare.sender, block.pre_prepare.body, bytes(64))
    cases = {"signed by a backup": (by_backup.wire, "not signed by the primary of its view"),
             "zeroed signature": (zeroed.wire, "not signed by the primary"),
             "another block's": (lg.blocks[3].pre_prepare.wire,
                                 "the proposal header differs from the block header"),
             "none": (b"", "carries no proposal header")}
    for name, (wire_bytes, detail) in cases.items():
        blocks = copy_blocks(lg.protos())
        blocks[1].pre_prepare = wire_bytes
        _, problems = verify_all(blocks)
        assert kinds_at(problems) == {(2, "proposal")}, (name, problems)
        assert detail in problems[0].detail, (name, problems[0].detail)


def test_a_block_in_an_epoch_the_history_does_not_put_it_in_is_named() -> None:
    """With a verified history in which epoch 1 opened after height 2 (a checkpoint at 2),
    block 3 claiming epoch 0 (certified by epoch 0's validators, which no longer sign at that
    height) is an `epoch` problem; so is a block of an epoch the history lacks."""
    lg = scenario()
    configs = {0: GENESIS.epoch0(), 1: replace(GENESIS.epoch0(), epoch=1, start_seq=2)}
    _, problems = verify_all(lg.protos()[:3], configs=configs)
    assert kinds_at(problems) == {(3, "epoch")}
    assert "block 3 claims epoch 0; the verified history puts it in epoch 1" in \
        problems[0].detail
    later = Ledger()
    later.commit(later.record("alice"), epoch=5)
    _, problems = verify_all(later.protos())
    assert kinds_at(problems) == {(1, "epoch")}
    assert "from epoch 5, which the verified epoch history does not hold" in problems[0].detail


EPOCH1_MEMBERS = (1, 2, 3, 4)
"""Epoch 1: validator 0 removed, validator 4 (JOINER) admitted; its primary of view 0 is 1."""


@functools.cache
def two_epochs() -> tuple[Ledger, bytes]:
    """Blocks 1..4 in epoch 0; a checkpoint at 4 (signed by 0, 1, 2) opens epoch 1; blocks 5
    and 6 proposed by 1 and committed by 1, 2 and 4. Returns the ledger and the encoded epoch
    history a validator serves."""
    lg = Ledger()
    for k in range(4):
        lg.commit(lg.record("alice", f"lot-{k}"))
    members = tuple(replace(GENESIS.epoch0().members[0], replica_id=i,
                            public_key=SIGNERS[i].public_key) for i in EPOCH1_MEMBERS)
    state, clients = lg.blocks[3].header.state_digest, bytes(32)
    history = [(0, 0, GENESIS.epoch0().members), (1, 4, members)]
    digest = checkpoint_digest(4, state, clients, history, None)
    proof = tuple(codec.sign_message(VALIDATOR_KEYS[i], CHAIN, i, m.Checkpoint(0, 4, digest))
                  for i in (0, 1, 2))
    record = m.EpochRecord(1, 4, members, state, clients, proof)
    for k in range(2):
        lg.commit(lg.record("bob", f"lot-e1-{k}"), epoch=1, proposer=1, committers=(1, 2, 4))
    return lg, codec.encode_epoch_records((record,))


def test_blocks_of_a_later_epoch_verify_against_the_history_verified_from_genesis(
        tmp_path: Path) -> None:
    """The epoch history a validator serves is verified link by link from genesis; blocks of
    epoch 1 then verify against epoch 1's validators (one of them unknown to genesis). Without
    the history they do not verify; nor does an epoch-1 block committed by epoch 0's set, or
    proposed by epoch 0's primary; and a bundle carries the history for offline checks."""
    lg, epochs = two_epochs()
    configs = verified_epochs(GENESIS, epochs, VERIFIER)
    assert sorted(configs) == [0, 1] and configs[1].replica_ids == EPOCH1_MEMBERS
    chain, problems = verify_all(lg.protos(audit=True), configs=configs)
    assert problems == [] and sorted(chain.hashes) == [1, 2, 3, 4, 5, 6]
    assert chain.last is not None and chain.last.epoch == 1
    _, problems = verify_all(lg.protos())
    assert kinds_at(problems) == {(5, "epoch"), (6, "epoch")}
    assert "from epoch 1, which the verified epoch history does not hold" in problems[0].detail
    old_set = copy_blocks(lg.protos())
    header = lg.blocks[4].header
    _set_certificate(old_set[4], [commit_msg(i, 5, header.digest, epoch=1) for i in (0, 1, 2)])
    _, problems = verify_all(old_set, configs=configs)
    assert kinds_at(problems) == {(5, "certificate")}
    old_primary = copy_blocks(lg.protos())
    old_primary[4].pre_prepare = proposal(5, lg.batches[4], proposed_ms=header.proposed_ms,
                                          epoch=1, sender=0).wire
    _, problems = verify_all(old_primary, configs=configs)
    assert kinds_at(problems) == {(5, "proposal")}

    path = export(tmp_path / "b.jsonl", lg.protos(), epochs=epochs)
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result["ok"] is True and result["epochs"] == 2, result["problems"]
    path = export(tmp_path / "c.jsonl", lg.protos())
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert [(p["height"], p["kind"]) for p in result["problems"]] == [(5, "epoch"), (6, "epoch")]


def test_an_epoch_history_that_genesis_does_not_certify_is_refused() -> None:
    """A history whose epoch 1 checkpoint is signed by fewer than 2f+1 of epoch 0, or by
    outsiders, or that does not decode, does not verify."""
    _, epochs = two_epochs()
    [record] = codec.decode_epoch_records(epochs, CHAIN)
    for proof in (record.proof[:2],
                  tuple(codec.resign_message(p.sender, p.body, bytes(64)) for p in record.proof)):
        bad = codec.encode_epoch_records((replace(record, proof=proof),))
        with pytest.raises(UnverifiableHistory):
            verified_epochs(GENESIS, bad, VERIFIER)
    with pytest.raises(UnverifiableHistory, match="does not decode"):
        verified_epochs(GENESIS, epochs[:-5], VERIFIER)


def _column(blocks: list[pb.Block], height: int, index: int) -> pb.RecordColumns:
    return next(c for c in blocks[height - 1].records if c.index == index)


def _set_readers(row: pb.RecordColumns, readers: Iterable[str]) -> None:
    del row.readers[:]
    row.readers.extend(sorted(readers))


COLUMN_EDITS: dict[str, tuple[Callable[[list[pb.Block]], None], tuple[int, str], str]] = {
    "stored hash": (lambda b: setattr(b[1], "stored_hash", bytes(32)), (2, "stored-hash"),
                    "the stored hash column"),
    "record id": (lambda b: setattr(_column(b, 1, 0), "record_id", "ab" * 32),
                  (1, "record-columns"), "entry 0: stored record_id 'abab"),
    "subject": (lambda b: setattr(_column(b, 1, 0), "subject_id", "lot-9"),
                (1, "record-columns"), "stored subject_id 'lot-9' differs from the signed"),
    "metadata": (lambda b: _column(b, 1, 0).metadata.__setitem__("location", "Oslo"),
                 (1, "record-columns"), "stored metadata"),
    "submitter": (lambda b: setattr(_column(b, 1, 3), "submitter_org", "acme"),
                  (1, "record-columns"), "entry 3: stored submitter_org 'acme'"),
    "time": (lambda b: setattr(_column(b, 1, 1), "submitted_at_ms", 5),
             (1, "record-columns"), "stored submitted_at_ms 5"),
    "row missing": (lambda b: b[0].records.pop(), (1, "record-missing"),
                    "is missing from the stored records"),
    "row for a transaction": (
        lambda b: b[1].records.append(pb.RecordColumns(index=0, record_id="x")),
        (2, "record-columns"), "entry 0: a stored record row for an entry that is not"),
    "row past the block": (
        lambda b: b[0].records.append(pb.RecordColumns(index=7, record_id="x")),
        (1, "record-columns"), "a stored record row at entry 7"),
    "a reader the chain never gave": (
        lambda b: _column(b, 1, 2).readers.append("acme"), (1, "readers"),
        "are not what the chain gives it (sealed for 1 organisations including globex"),
    "the submitter dropped": (lambda b: _set_readers(_column(b, 1, 3), []), (1, "readers"),
                              "the stored readers [] are not what the chain gives it"),
    "a revoked reader still stored": (
        lambda b: _column(b, 1, 0).readers.append("regulator"), (1, "readers"),
        "regulator is still a stored reader after its revocation at 4"),
    "a granted reader missing": (
        lambda b: _set_readers(_column(b, 1, 0), ["acme", "globex"]), (1, "readers"),
        "the stored readers lack hospital, granted at 4"),
    "readers kept after the erasure": (
        lambda b: _column(b, 1, 1).readers.append("hospital"), (1, "erasure"),
        "readers ['hospital'] remain after the erasure at 5"),
    "erasure not stored": (lambda b: setattr(_column(b, 1, 1), "erased_height", 0),
                           (1, "erasure"), "was erased at 5 but is stored as not erased"),
    "erasure at another height": (lambda b: setattr(_column(b, 1, 1), "erased_height", 4),
                                  (1, "erasure"), "stored as erased at 4"),
    "erasure stored without one": (lambda b: setattr(_column(b, 1, 2), "erased_height", 3),
                                   (1, "erasure"), "is marked erased at 3 without a committed"),
}


@pytest.mark.parametrize("case", list(COLUMN_EDITS))
def test_edited_audit_columns_are_found_and_attributed(case: str) -> None:
    """What a validator stores besides the signed items, edited as a row edited in PostgreSQL
    would show: reported with the record's height and a precise detail."""
    edit, where, detail = COLUMN_EDITS[case]
    blocks = copy_blocks(scenario().protos(audit=True))
    edit(blocks)
    _, problems = verify_all(blocks)
    assert problems, f"{case}: not detected"
    assert where in kinds_at(problems), problems
    assert {p.height for p in problems} == {where[0]}, problems
    assert any(detail in p.detail for p in problems if p.kind == where[1]), problems
    assert all(p.validator == "v2" for p in problems)


def test_stored_readers_are_only_judged_up_to_the_head() -> None:
    """Verifying a prefix (`--to` below the head) must not judge today's stored readers against
    only part of the chain (a later grant would look like a reader the chain never gave)."""
    blocks = scenario().protos(audit=True)
    assert verify_all(blocks[:3], to_head=False)[1] == []
    _, problems = verify_all(blocks[:3], to_head=True)
    assert kinds_at(problems) == {(1, "readers"), (1, "erasure")}


def test_compare_validators_names_the_odd_validator() -> None:
    """Honest validators agree; one whose validly certified block differs (a fork: the same
    height with another batch, certified) or whose entry status differs is named."""
    lg = scenario()
    chains = {str(i): verify_all(lg.protos(), source=str(i))[0] for i in range(4)}
    assert compare_validators(chains) == []

    # Validator 3 holds another, validly certified block 5 (a fork) ...
    other = Ledger()
    for batch, block in zip(lg.batches[:4], lg.blocks[:4], strict=True):
        other.commit(*batch, proposed_ms=block.header.proposed_ms)
    other.commit(other.record("bob", "lot-fork"))
    assert other.blocks[3].hash == lg.blocks[3].hash
    chains["3"] = verify_all(other.protos(), source="3")[0]
    # ... and validator 1 says the invalid revocation at (2, 3) was recorded.
    odd = copy_blocks(lg.protos())
    odd[1].statuses[3] = EntryStatus.RECORDED
    chains["1"] = verify_all(odd, source="1")[0]
    problems = compare_validators(chains)
    assert {(p.validator, p.height, p.kind) for p in problems} == {("3", 5, "fork"),
                                                                   ("1", 2, "status")}
    status = next(p for p in problems if p.kind == "status")
    assert status.detail.startswith("entry 3 ") and "'recorded'" in status.detail
    assert "the others say 'invalid'" in status.detail


def test_compare_validators_names_an_odd_refusal_reason() -> None:
    """docs/audit.md: statuses and refusal reasons are execution results that `--all`
    compares. One validator whose refused access (block 2, entry 2) carries no reason (so it
    reads as granted) is named at that height; another whose invalid envelope (block 4,
    request 2) says another reason too."""
    lg = scenario()
    chains = {str(i): verify_all(lg.protos(), source=str(i))[0] for i in range(4)}
    odd = copy_blocks(lg.protos())
    odd[1].reasons[2] = ""
    chains["2"] = verify_all(odd, source="2")[0]
    odd = copy_blocks(lg.protos())
    odd[3].envelopes[2].reason = "item 1: fine, really"
    chains["0"] = verify_all(odd, source="0")[0]
    problems = compare_validators(chains)
    assert sorted((p.validator, p.height, p.kind) for p in problems) == [
        ("0", 4, "reason"), ("2", 2, "reason")], problems
    details = {p.validator: p.detail for p in problems}
    assert details["2"].startswith("entry 2 reason is ''")
    assert details["0"].startswith("request 2 reason is 'item 1: fine, really'")


# =============================================================================================
# Receipts checked offline
# =============================================================================================

def _receipt_doc(height: int, entry: int) -> dict[str, Any]:
    return {"verified": True, "receipt": receipt_to_json(receipt_of(
        scenario().blocks[height - 1], entry))}


def test_a_receipt_checks_offline_from_genesis() -> None:
    """`audit record --proof` output: item -> envelope -> block -> certificate, from the
    genesis file alone; JSON round trip is exact; an erased record's view still proves."""
    for height, entry in ((1, 0), (1, 3), (2, 2), (5, 0)):
        doc = json.loads(json.dumps(_receipt_doc(height, entry)))
        r, problem = check_proof(doc, GENESIS, VERIFIER)
        assert problem is None, (height, entry, problem)
        assert r.record_id == scenario().blocks[height - 1].entries[entry].record_id
        assert receipt_to_json(r) == doc["receipt"]
    block = scenario().blocks[0]
    erased = ItemView.of(block.entries[1].item).withhold(frozenset())
    r = receipt_of(block, 1, item=erased)
    assert check_proof(receipt_to_json(r), GENESIS, VERIFIER)[1] is None


def test_a_receipt_whose_item_proof_is_for_another_envelope_does_not_verify() -> None:
    """Block 1's entry 3 (item 1 of globex's two-lot envelope) with the item proof, or the item
    and its proof, of another envelope (alice's, or globex's item 0): the item no longer leads
    to the request the receipt names."""
    mine = _receipt_doc(1, 3)["receipt"]
    for other_entry, fields in ((0, ("item_proof",)), (0, ("item_proof", "item_view")),
                                (2, ("item_proof",)), (2, ("item_view",))):
        other = _receipt_doc(1, other_entry)["receipt"]
        forged = {**mine, **{f: other[f] for f in fields}}
        _, problem = check_proof(forged, GENESIS, VERIFIER)
        assert problem is not None, (other_entry, fields)
    forged = {**mine, **{f: _receipt_doc(1, 0)["receipt"][f] for f in
                         ("item_proof", "item_view", "request_proof")}}
    assert check_proof(forged, GENESIS, VERIFIER)[1] is not None


EDITED_RECEIPTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "certificate of f+1": (lambda r: r.__setitem__("certificate", r["certificate"][:2]),
                           "certificate lacks 3 valid commits"),
    "one commit thrice": (lambda r: r.__setitem__("certificate", [r["certificate"][0]] * 3),
                          "certificate lacks"),
    "another record id": (lambda r: r.__setitem__("record_id", "ab" * 32),
                          "record id is not the item's"),
    "another client": (lambda r: r.__setitem__("client_id", "bob"),
                       "record id is not the item's"),
    "another block's header": (lambda r: r.update(
        block_header=scenario().blocks[3].header.encode().hex(), height=4), "inclusion proof"),
    "another height": (lambda r: r.__setitem__("height", 3), "receipt height 3 differs"),
}


@pytest.mark.parametrize("case", list(EDITED_RECEIPTS))
def test_an_edited_receipt_does_not_verify(case: str) -> None:
    edit, detail = EDITED_RECEIPTS[case]
    doc = _receipt_doc(2, 1)["receipt"]
    edit(doc)
    _, problem = check_proof(doc, GENESIS, VERIFIER)
    assert problem is not None and detail in problem, problem


@pytest.mark.parametrize("doc", [
    [1, 2, 3], "text", None, {"receipt": {"record_id": "x"}},
    {**receipt_to_json(receipt_of(scenario().blocks[0], 0)), "block_header": "zz"},
    {**receipt_to_json(receipt_of(scenario().blocks[0], 0)), "item_view": "00"},
    {**receipt_to_json(receipt_of(scenario().blocks[0], 0)), "kind": 99},
    {**receipt_to_json(receipt_of(scenario().blocks[0], 0)), "nonce": -1},
], ids=["list", "string", "null", "fields missing", "bad hex", "bad view", "bad kind",
        "negative nonce"])
def test_a_document_that_is_not_a_receipt_is_not_a_proof(doc: Any) -> None:
    with pytest.raises(NotAProof) as info:
        receipt_from_json(doc, CHAIN)
    assert "\n" not in str(info.value) and str(info.value)


def test_a_receipt_of_a_later_epoch_needs_the_epoch_history() -> None:
    doc = _receipt_doc(1, 0)["receipt"]
    doc["block_header"] = replace(scenario().blocks[0].header, epoch=2).encode().hex()
    _, problem = check_proof(doc, GENESIS, VERIFIER)
    assert problem is not None and "only epoch 0 (genesis) is known" in problem


# =============================================================================================
# Bundles
# =============================================================================================

def export(path: Path, blocks: Sequence[pb.Block], *, from_height: int = 1,
           genesis: Genesis = GENESIS, epochs: bytes = NO_EPOCHS) -> Path:
    write_bundle(path, genesis, epochs, blocks, from_height=from_height,
                 to_height=from_height + len(blocks) - 1, exported_from="unit test")
    return path


def rewrite(path: Path, edit: Callable[[list[bytes]], list[bytes]], *,
            fix_end: bool) -> None:
    """Edit a bundle's lines; with fix_end, recompute the end line (count and sha256) as a
    careful forger would."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines = edit(lines)
    if fix_end:
        body = lines[:-1]
        digest = hashlib.sha256(b"".join(body)).hexdigest()
        end = json.loads(lines[-1])
        end.update(blocks=len(body) - 2, sha256=digest)
        lines = [*body, (json.dumps(end, sort_keys=True, separators=(",", ":")) + "\n")
                 .encode()]
    path.write_bytes(b"".join(lines))


def edit_json_line(n: int, change: Callable[[dict[str, Any]], None]
                   ) -> Callable[[list[bytes]], list[bytes]]:
    def edit(lines: list[bytes]) -> list[bytes]:
        obj = json.loads(lines[n - 1])
        change(obj)
        lines[n - 1] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
        return lines
    return edit


def edit_block_line(n: int, change: Callable[[bytes], bytes]) -> Callable[[list[bytes]],
                                                                        list[bytes]]:
    """An edit of line n's base64 block (protobuf bytes in, protobuf bytes out)."""
    def obj_edit(obj: dict[str, Any]) -> None:
        obj["block"] = base64.b64encode(change(base64.b64decode(obj["block"]))).decode()
    return edit_json_line(n, obj_edit)


def proto_edit(change: Callable[[pb.Block], None]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        msg = pb.Block.FromString(data)
        change(msg)
        return msg.SerializeToString()
    return edit


def flip(bit: int) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)
    return edit


def test_a_bundle_verifies_offline_from_genesis_alone(tmp_path: Path) -> None:
    lg = scenario()
    path = export(tmp_path / "b.jsonl", lg.protos())
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result.pop("statuses_verified") is False and result.pop("statuses_note")
    assert result == {"ok": True, "from_height": 1, "to_height": 5, "from_genesis": True,
                      "blocks": 5, "epochs": 1, "head_hash": lg.blocks[-1].hash.hex(),
                      "problems": [], "warnings": []}
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "consortium-audit-bundle" and header["version"] == 2
    assert header["ledger_format"] == 2
    assert header["chain_id"] == CHAIN_ID and header["genesis_sha256"] == genesis_sha256(GENESIS)
    assert header["genesis"] == GENESIS.to_json()
    assert base64.b64decode(json.loads(lines[1])["epochs"]) == NO_EPOCHS
    assert [json.loads(x)["height"] for x in lines[2:-1]] == [1, 2, 3, 4, 5]
    assert json.loads(lines[-1])["end"] is True
    assert not (tmp_path / "b.jsonl.partial").exists()


def test_an_export_cut_short_leaves_no_file(tmp_path: Path) -> None:
    """A stream that fails mid-export (a validator gone, ^C) leaves neither a bundle nor a
    partial file that could be mistaken for one."""
    def blocks() -> Iterable[pb.Block]:
        yield from scenario().protos()[:2]
        raise ConnectionError("stream cut")
    with pytest.raises(ConnectionError):
        write_bundle(tmp_path / "b.jsonl", GENESIS, NO_EPOCHS, blocks(), from_height=1,
                     to_height=5, exported_from="unit test")
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_of_a_middle_range_verifies(tmp_path: Path) -> None:
    """A range that does not start at genesis: its first block's links cannot be checked (and
    the result says it does not start at genesis), everything else is (its proof, and the
    links and times inside the range)."""
    lg = scenario()
    path = export(tmp_path / "b.jsonl", lg.protos()[1:4], from_height=2)
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result["ok"] is True and result["blocks"] == 3, result
    assert result["from_genesis"] is False
    assert result["head_hash"] == lg.blocks[3].hash.hex()
    blocks = copy_blocks(lg.protos()[1:4])
    del blocks[0].certificate[2:]
    path = export(tmp_path / "c.jsonl", blocks, from_height=2)
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert [(p["height"], p["kind"]) for p in result["problems"]] == [(2, "certificate")]


def test_a_bundle_with_a_history_that_does_not_verify_is_not_ok(tmp_path: Path) -> None:
    """An epoch history that genesis does not certify (an epoch 1 no quorum of epoch 0 opened)
    is a problem, and blocks are checked against genesis alone."""
    fake = m.EpochRecord(1, 2, GENESIS.epoch0().members, bytes(32), bytes(32), ())
    path = export(tmp_path / "b.jsonl", scenario().protos(),
                  epochs=codec.encode_epoch_records((fake,)))
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result["ok"] is False and result["epochs"] == 1
    assert [(p["height"], p["kind"]) for p in result["problems"]] == [(0, "epoch-history")]


def _lines_of(n: int) -> Callable[[list[bytes]], list[bytes]]:
    return lambda lines: lines[:n]


FRAMING: dict[str, tuple[Callable[[list[bytes]], list[bytes]] | bytes, str]] = {
    "empty file": (b"", "empty file: not a bundle"),
    "not JSON": (b"\x00\x01garbage\n", "line 1: not JSON"),
    "JSON but not an object": (b"[1, 2]\n", "line 1: not a JSON object"),
    "another format": (b'{"format": "tarball", "version": 2}\n',
                       "not a consortium-audit-bundle file"),
    "a format-1 bundle": (b'{"format": "consortium-audit-bundle", "version": 1}\n',
                          "a version 1 bundle (ledger format 1) cannot be verified"),
    "another version": (b'{"format": "consortium-audit-bundle", "version": 3}\n',
                        "version 2 file of ledger format 2"),
    "another ledger format": (edit_json_line(1, lambda o: o.__setitem__("ledger_format", 1)),
                              "version 2 file of ledger format 2"),
    "end line cut": (lambda lines: lines[:-1], "no end line: the bundle is truncated"),
    "cut inside a line": (lambda lines: [*lines[:4], lines[4][:40]], "line 5: not JSON"),
    "only the header": (_lines_of(1), "no end line"),
    "no epoch history line": (lambda lines: [lines[0], *lines[2:]],
                              "line 2: the epoch history line holds only \"epochs\""),
    "an epoch history that is not base64": (
        edit_json_line(2, lambda o: o.__setitem__("epochs", "***")),
        "line 2: the epoch history is not base64"),
    "a block line removed": (lambda lines: [*lines[:3], *lines[4:]],
                             "the end line does not match the content"),
    "two block lines swapped": (lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]],
                                "the end line does not match the content"),
    "data after the end": (lambda lines: [*lines, b'{"x": 1}\n'], "line 9: data after the end"),
    "a block that is not base64": (
        lambda lines: [*lines[:3], b'{"height": 2, "block": "***"}\n', *lines[4:]],
        "line 4: block 2 is not base64"),
    "a block line without a height": (
        lambda lines: [*lines[:3], b'{"block": "AA=="}\n', *lines[4:]],
        "line 4: a block line has an integer height and a base64 block"),
    "bad heights": (lambda lines: [lines[0].replace(b'"from_height":1', b'"from_height":0'),
                                   *lines[1:]], "line 1: bad from_height/to_height"),
    "another chain": (lambda lines: [lines[0].replace(b'"chain_id":"' + CHAIN,
                                                      b'"chain_id":"other-chain'), *lines[1:]],
                      "bundle is for chain 'other-chain'"),
    "another genesis fingerprint": (
        lambda lines: [lines[0].replace(b'"genesis_sha256":"', b'"genesis_sha256":"0'),
                       *lines[1:]], "bundle was exported under a different genesis file"),
    "an edited embedded genesis": (
        edit_json_line(1, lambda o: o["genesis"]["policy"].__setitem__("access_ttl_ms", 9999)),
        "bundle was exported under a different genesis file"),
}


@pytest.mark.parametrize("case", list(FRAMING))
def test_a_malformed_bundle_is_a_precise_bundle_error(tmp_path: Path, case: str) -> None:
    edit, message = FRAMING[case]
    path = export(tmp_path / "b.jsonl", scenario().protos())
    if isinstance(edit, bytes):
        path.write_bytes(edit)
    else:
        rewrite(path, edit, fix_end=False)
    with pytest.raises(BundleError) as info:
        verify_bundle(path, GENESIS, VERIFIER)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bundle_checked_with_another_genesis_file_is_refused(tmp_path: Path) -> None:
    path = export(tmp_path / "b.jsonl", scenario().protos())
    with pytest.raises(BundleError, match="bundle is for chain 'audit-unit-chain'"):
        verify_bundle(path, make_genesis("some-other-chain"), VERIFIER)
    with pytest.raises(BundleError, match="different genesis file"):
        verify_bundle(path, make_genesis(policy=DataPolicy(access_ttl_ms=5_000)), VERIFIER)
    with pytest.raises(BundleError, match="cannot read"):
        verify_bundle(tmp_path / "missing.jsonl", GENESIS, VERIFIER)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda lines: [*lines[:3], *lines[4:]], {(2, "missing-block")}),
    (lambda lines: [*lines[:2], lines[3], lines[2], *lines[4:]], {(1, "missing-block")}),
    (lambda lines: [*lines[:4], lines[3], *lines[4:]], {(3, "height")}),
    (lambda lines: lines[:-2] + lines[-1:], {(5, "missing-block")}),
], ids=["block removed", "blocks swapped", "block repeated", "last block removed"])
def test_reframed_bundles_with_a_recomputed_end_line_do_not_verify(
        tmp_path: Path, edit: Callable[[list[bytes]], list[bytes]],
        expected: set[tuple[int, str]]) -> None:
    """A forger who also fixes the end line (count and sha256): the chain checks catch it."""
    path = export(tmp_path / "b.jsonl", scenario().protos())
    rewrite(path, edit, fix_end=True)
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result["ok"] is False
    assert expected <= {(p["height"], p["kind"]) for p in result["problems"]}, result


def test_an_edited_block_without_a_recomputed_end_line_is_a_bundle_error(
        tmp_path: Path) -> None:
    path = export(tmp_path / "b.jsonl", scenario().protos())
    rewrite(path, edit_block_line(4, flip(8 * 40 + 3)), fix_end=False)
    with pytest.raises(BundleError, match="the end line does not match the content"):
        verify_bundle(path, GENESIS, VERIFIER)


def test_an_edited_block_with_a_recomputed_end_line_does_not_verify(tmp_path: Path) -> None:
    """Certificate, header, envelope, item and status edits of block 2, end line fixed: not
    ok, with the problem named."""
    lg = scenario()
    edits: list[tuple[Callable[[pb.Block], None], str]] = [
        (lambda b: b.certificate.pop(), "certificate"),
        (lambda b: _edit_header(b, timestamp_ms=5), "time"),
        (lambda b: _swap_envelopes(b, 0, 1), "merkle-root"),
        (lambda b: b.items.__setitem__(1, b.items[2]), "items"),
        (lambda b: b.statuses.__setitem__(0, "approved"), "malformed"),
        (lambda b: setattr(b, "pre_prepare", b""), "proposal"),
    ]
    for change, kind in edits:
        path = export(tmp_path / "b.jsonl", lg.protos())
        rewrite(path, edit_block_line(4, proto_edit(change)), fix_end=True)
        result = verify_bundle(path, GENESIS, VERIFIER)
        assert result["ok"] is False, kind
        assert kind in {p["kind"] for p in result["problems"]}, result


def _changed_fields(msg: pb.Block, original: pb.Block) -> tuple[str, ...]:
    """The fields a flip changed; an envelope edit that only touches its (unsigned) reason is
    `envelopes.reason`."""
    changed = [f.name for f in pb.Block.DESCRIPTOR.fields
               if getattr(msg, f.name) != getattr(original, f.name)]
    if "envelopes" in changed and len(msg.envelopes) == len(original.envelopes):
        def signed(envs: Iterable[pb.Envelope]) -> list[bytes]:
            out = []
            for e in envs:
                c = pb.Envelope()
                c.CopyFrom(e)
                c.reason = ""
                out.append(c.SerializeToString())
            return out
        if signed(msg.envelopes) == signed(original.envelopes):
            changed[changed.index("envelopes")] = "envelopes.reason"
    return tuple(changed)


def _sweep(target: int, skip_fields: frozenset[str]) -> list[tuple[int, tuple[str, ...]]]:
    """Flip one bit in every byte of block `target`'s protobuf bytes (a different bit from byte
    to byte); return the flips that still verify, with the fields they changed."""
    protos = scenario().protos()
    original = protos[target - 1]
    raw = original.SerializeToString()
    passed = []
    for byte in range(len(raw)):
        bit = 8 * byte + byte % 8
        try:
            msg = pb.Block.FromString(flip(bit)(raw))
        except ProtoDecodeError:
            continue  # verify_bundle: "block H does not decode"
        changed = _changed_fields(msg, original)
        if set(changed) <= skip_fields and changed:
            continue
        blocks = [*protos[:target - 1], msg, *protos[target:target + 1]]
        _, problems = verify_all(blocks, to_head=False)
        if not problems:
            passed.append((bit, changed))
    return passed


@pytest.mark.parametrize("target", [1, 2, 4])
def test_any_flipped_bit_in_a_block_line_is_detected(target: int) -> None:
    """One bit flipped in each byte of a served block (header, envelopes, items, views,
    statuses, proposal header, certificate), the next block kept: the block never verifies.
    Request and entry reasons are no certificate's business (the next test)."""
    passed = _sweep(target, frozenset({"reasons", "envelopes.reason"}))
    assert passed == [], f"edits of block {target} that verify: {passed[:10]}"


def test_a_bundle_says_its_statuses_and_reasons_are_not_proven(tmp_path: Path) -> None:
    """Statuses and reasons are execution results that no certificate signs (docs/audit.md):
    `audit verify --all` compares them across validators, but a bundle holds one validator's
    copy. So the bundle's result must say they are unproven rather than imply it checked them:
    an edited status still leaves every block verified, and the result keeps saying so."""
    lg = scenario()
    assert lg.blocks[1].entries[3].status == EntryStatus.INVALID
    assert lg.blocks[1].entries[2].reason == ACCESS_DENIED
    path = export(tmp_path / "b.jsonl", lg.protos())
    clean = verify_bundle(path, GENESIS, VERIFIER)
    assert clean["ok"] and clean["statuses_verified"] is False
    assert "not covered" in clean["statuses_note"]
    rewrite(path, edit_block_line(4, proto_edit(
        lambda b: b.statuses.__setitem__(3, EntryStatus.RECORDED))), fix_end=True)
    edited = verify_bundle(path, GENESIS, VERIFIER)
    assert edited["ok"] and edited["statuses_verified"] is False


def test_a_block_whose_header_does_not_decode_is_a_problem_at_its_height(
        tmp_path: Path) -> None:
    """Regression: a block line whose header bytes are damaged (end line recomputed) is a
    `malformed` problem at its height, not a framing error about the end line (the verifier
    counted only blocks whose header decoded)."""
    def damage(msg: pb.Block) -> None:
        msg.header = msg.header[:-3]
    path = export(tmp_path / "b.jsonl", scenario().protos())
    rewrite(path, edit_block_line(4, proto_edit(damage)), fix_end=True)
    result = verify_bundle(path, GENESIS, VERIFIER)
    assert result["ok"] is False and result["blocks"] == 5
    assert (2, "malformed") in {(p["height"], p["kind"]) for p in result["problems"]}
    assert "block header does not decode" in result["problems"][0]["detail"]


# =============================================================================================
# Item views and segment digests
# =============================================================================================

segment_lists = st.lists(st.binary(max_size=48), min_size=1, max_size=8)
items = segment_lists.map(encode_segments)
keeps = st.frozensets(st.integers(0, 9), max_size=10)
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(items, keeps, keeps)
def test_a_view_keeps_the_item_digest_whatever_it_withholds(
        item: bytes, keep: frozenset[int], keep2: frozenset[int]) -> None:
    """The digest (so the envelope's Merkle root, the client signature and the block's proofs)
    of any view of an item is the item's own digest; withholding more never changes it and is
    idempotent; segment 0 is always shown; shown segments are the item's bytes."""
    segs = split_segments(item)
    assert segs is not None
    view = ItemView.of(item, keep)
    assert view.digest == item_digest(item) == payload_digest(item)
    narrower = view.withhold(keep2)
    assert narrower.digest == view.digest
    assert narrower.withhold(keep2) == narrower
    assert narrower == ItemView.of(item, keep & keep2)
    shown = view.present()
    assert shown[0] == segs[0]
    for i, s in enumerate(segs):
        assert shown[i] == (s if i == 0 or i in keep else None)
        if shown[i] is None:
            assert view.segments[i] == Withheld(segment_hash(s))
    assert view.complete == all(i == 0 or i in keep for i in range(len(segs)))
    assert ItemView.of(item).complete and ItemView.of(item).to_item() == item
    if view.complete:
        assert view.to_item() == item
    else:
        with pytest.raises(ValueError, match="withheld"):
            view.to_item()


@PROPERTY
@given(items, keeps)
def test_a_view_encoding_round_trips(item: bytes, keep: frozenset[int]) -> None:
    view = ItemView.of(item, keep)
    data = view.encode()
    assert ItemView.decode(data) == view
    assert ItemView.decode(data).digest == item_digest(item)


@PROPERTY
@given(items, keeps, st.data())
def test_a_changed_segment_changes_the_digest(item: bytes, keep: frozenset[int],
                                              data: st.DataObject) -> None:
    """Nothing shown or withheld can be swapped without changing the digest: another segment
    value, another withheld hash, another segment count."""
    view = ItemView.of(item, keep)
    i = data.draw(st.integers(0, len(view.segments) - 1))
    seg = view.segments[i]
    if isinstance(seg, Withheld):
        other: bytes | Withheld = Withheld(bytes(b ^ 1 for b in seg.hash))
    else:
        other = seg + b"\x00"
    changed = replace(view, segments=(*view.segments[:i], other, *view.segments[i + 1:]))
    assert changed.digest != view.digest
    assert replace(view, segments=(*view.segments, b"")).digest != view.digest
    shown_as_hash = replace(view, segments=tuple(Withheld(segment_hash(s)) if
                                                 isinstance(s, bytes) else s
                                                 for s in view.segments))
    assert shown_as_hash.digest == view.digest, "withholding is what keeps the digest"


@PROPERTY
@given(st.binary(max_size=64).filter(lambda b: split_segments(b) is None))
def test_a_raw_item_is_never_withheld(raw: bytes) -> None:
    view = ItemView.of(raw, frozenset())
    assert view.raw == raw and view.segments == ()
    assert view.withhold(frozenset()) is view
    assert view.digest == item_digest(raw) and view.to_item() == raw
    assert ItemView.decode(view.encode()) == view
    assert payload_digest(raw) != payload_digest(encode_segments([raw]))


@PROPERTY
@given(items, keeps, st.data())
def test_a_damaged_view_encoding_raises_decode_error_or_is_canonical(
        item: bytes, keep: frozenset[int], data: st.DataObject) -> None:
    """Any byte changed, inserted or cut: DecodeError, or a view whose own encoding is exactly
    the damaged bytes (one view, one encoding: a stored or served view cannot be re-encoded
    into other bytes unnoticed). Never another exception."""
    good = ItemView.of(item, keep).encode()
    how = data.draw(st.sampled_from(["set", "insert", "cut"]))
    pos = data.draw(st.integers(0, len(good) - 1))
    if how == "set":
        bad = good[:pos] + bytes([data.draw(st.integers(0, 255))]) + good[pos + 1:]
    elif how == "insert":
        bad = good[:pos] + data.draw(st.binary(min_size=1, max_size=4)) + good[pos:]
    else:
        bad = good[:pos]
    try:
        view = ItemView.decode(bad)
    except DecodeError:
        return
    assert view.encode() == bad
    assert isinstance(view.segments[0], bytes) if view.raw is None else True


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_view_decoder(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ItemView.decode(b"\x02" + data)


def test_a_view_without_segment_zero_or_with_a_bad_form_is_refused() -> None:
    hidden0 = b"\x02\x01" + (1).to_bytes(4, "big") + b"\x00" + bytes(32)
    with pytest.raises(DecodeError, match="always shows segment 0"):
        ItemView.decode(hidden0)
    with pytest.raises(DecodeError, match="form"):
        ItemView.decode(b"\x02\x02")
    with pytest.raises(DecodeError, match="version"):
        ItemView.decode(b"\x01\x01" + (0).to_bytes(4, "big"))
    shown_flag_2 = b"\x02\x01" + (1).to_bytes(4, "big") + b"\x02" + (0).to_bytes(4, "big")
    with pytest.raises(DecodeError):
        ItemView.decode(shown_flag_2)


# =============================================================================================
# Record transactions
# =============================================================================================

texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF,
                              blacklist_categories=("Cs",)).filter(
    lambda c: not 0x7F <= ord(c) < 0xA0), min_size=1, max_size=40).filter(
    lambda t: len(t.encode()) <= TEXT_BYTES_MAX)
record_ids = st.binary(min_size=32, max_size=32).map(bytes.hex)
transactions = st.one_of(
    st.builds(Grant, record_ids, texts, st.binary(min_size=WRAPPED_KEY_BYTES,
                                                  max_size=WRAPPED_KEY_BYTES)),
    st.builds(Revoke, record_ids, texts),
    st.builds(Erase, record_ids, texts, st.one_of(st.just(""), texts)),
    st.builds(Access, record_ids, st.one_of(st.just(""), texts), st.integers(0, (1 << 63) - 1)),
)
SIGNATURE = bytes(range(64))


@PROPERTY
@given(transactions)
def test_record_transactions_round_trip(tx: RecordTx) -> None:
    """encode -> segments -> decode gives the transaction back; the header byte names its type;
    only a grant has a second (withholdable) segment, holding the key wrapped for its org."""
    payload = encode_tx(tx)
    segs = split_segments(payload)
    assert segs is not None
    assert decode_record_tx(list(segs)) == tx
    assert segs[0][0] == {Grant: TxType.GRANT, Revoke: TxType.REVOKE, Erase: TxType.ERASE,
                          Access: TxType.ACCESS}[type(tx)]
    assert len(segs) == (2 if isinstance(tx, Grant) else 1)
    if isinstance(tx, Grant):
        assert segs[1] == key_segment(tx.org, tx.wrapped_key)
        withheld = decode_record_tx([segs[0], None])
        assert withheld == Grant(tx.record_id, tx.org, b"")
    assert parse_item(payload).tx == tx
    req = m.Request("alice", 1, APP, encode_envelope([payload]), SIGNATURE)
    assert referenced_records([req]) == {tx.record_id}


RID = "ab" * 32


def _grant_segments(org: str = "globex", key_org: str | None = None,
                    key: bytes = bytes(WRAPPED_KEY_BYTES)) -> list[bytes | None]:
    segs: list[bytes | None] = list(Grant(RID, org, key).segments())
    if key_org is not None:
        segs[1] = key_segment(key_org, key)
    return segs


def _header_with(kind: int, *parts: bytes) -> bytes:
    return bytes([kind]) + bytes.fromhex(RID) + b"".join(parts)


def _text(t: str) -> bytes:
    w = Writer()
    w.text(t)
    return w.getvalue()


MALFORMED: dict[str, tuple[list[bytes | None], str]] = {
    "no segments": ([], "transaction header missing"),
    "header withheld": ([None], "transaction header missing"),
    "empty header": ([b""], "empty transaction header"),
    "unknown type": ([_header_with(42, _text("x"))], "unknown transaction type 42"),
    "record type": ([_header_with(1, _text("x"))], "record is not a record transaction"),
    "truncated record id": ([bytes([2]) + bytes(10)], "malformed grant transaction"),
    "trailing bytes": ([_header_with(3, _text("globex"), b"\x00")], "malformed revoke"),
    "grant without key": (_grant_segments()[:1], "a grant transaction has 2 segment(s)"),
    "revoke with a key": ([_header_with(3, _text("globex")), b"k"],
                          "a revoke transaction has 1 segment(s)"),
    "key for another org": (_grant_segments(key_org="acme"),
                            "the grant's key is wrapped for another org"),
    "short key": (_grant_segments(key=bytes(79)), "a wrapped key is 80 bytes"),
    "malformed key segment": ([_grant_segments()[0], b"\x00"], "malformed wrapped key"),
    "empty org": ([_header_with(3, _text(""))], "org must be 1 to 256 bytes"),
    "long org": ([_header_with(3, _text("o" * 257))], "org must be 1 to 256 bytes"),
    "control character": ([_header_with(3, _text("glo\x00bex"))], "control character"),
    "C1 control in a reason": ([_header_with(4, _text("p-1"), _text("why\x85"))],
                               "reason contains a control character"),
    "not UTF-8": ([_header_with(3, b"\x00\x02\xff\xfe")], "not UTF-8"),
    "empty subject": ([_header_with(4, _text(""), _text(""))], "subject_id must be 1 to 256"),
    "access time out of range": ([_header_with(5, _text("p"), (1 << 63).to_bytes(8, "big"))],
                                 "requested_at_ms out of range"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_record_transactions_are_refused(case: str) -> None:
    segments, message = MALFORMED[case]
    with pytest.raises(InvalidTransaction) as info:
        decode_record_tx(segments)
    assert message in str(info.value)


@pytest.mark.parametrize("rid", ["AB" * 32, "ab" * 31, "zz" * 32, "ab" * 33, ""])
def test_a_transaction_needs_a_lowercase_hex_record_id(rid: str) -> None:
    with pytest.raises(InvalidTransaction, match="64 lowercase hex digits"):
        encode_tx(Revoke(rid, "globex"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=60)), max_size=4),
       st.integers(0, 7))
def test_arbitrary_segments_decode_or_raise_invalid_transaction(
        segments: list[bytes | None], kind: int) -> None:
    if segments and segments[0] is not None:
        segments[0] = bytes([kind]) + segments[0]
    with contextlib.suppress(InvalidTransaction):
        decode_record_tx(segments)
    payload = encode_segments([s or b"" for s in segments]) if segments else b""
    parsed = parse_item(payload or b"x")  # never raises: an error names what is wrong
    assert parsed.error or parsed.tx is not None or parsed.submission is not None


# =============================================================================================
# build_block: the record transaction rules
# =============================================================================================

class Setup:
    """Block 1 of a fresh ledger: a provenance lot by acme (alice) read by globex, and a patient
    record by hospital (hana) for patient-1 read by regulator."""

    def __init__(self) -> None:
        self.lg = Ledger()
        lot = self.lg.record("alice", "lot-1", readers=["globex"])
        pat = self.lg.record("hana", "patient-1", kind=RecordKind.PATIENT,
                             readers=["regulator"])
        self.lg.commit(lot, pat)
        self.lot, self.pat = rid_of(lot), rid_of(pat)

    def run(self, *requests: m.Request) -> list[tuple[str, str]]:
        """Each item's (status, reason); an envelope that did not execute as a whole gives its
        own status and reason, once."""
        block = self.lg.commit(*requests)
        out = []
        for env in block.envelopes:
            if env.status != EnvelopeStatus.EXECUTED:
                out.append((env.status, env.reason))
            out.extend((e.status, e.reason) for e in block.entries_of(env))
        return out


RECORDED, INVALID = EntryStatus.RECORDED, EntryStatus.INVALID
RULES: dict[str, tuple[Callable[[Setup], m.Request], str, str]] = {
    "grant by the submitter": (lambda s: s.lg.grant("alice", s.lot, "regulator"), RECORDED, ""),
    "grant by a reader": (lambda s: s.lg.grant("bob", s.lot, "regulator"), RECORDED, ""),
    "grant by a non-reader": (lambda s: s.lg.grant("rita", s.lot, "regulator"), INVALID,
                              "regulator is neither the submitter nor a reader of the record"),
    "grant to a non-member": (
        lambda s: s.lg.tx("alice", Grant(s.lot, "nobody", bytes(WRAPPED_KEY_BYTES))), INVALID,
        "nobody is not a member organisation"),
    "grant to a current reader": (lambda s: s.lg.grant("alice", s.lot, "globex"), INVALID,
                                  "globex already reads the record"),
    "revoke by the submitter": (lambda s: s.lg.tx("alice", Revoke(s.lot, "globex")),
                                RECORDED, ""),
    "revoke by a reader": (lambda s: s.lg.tx("bob", Revoke(s.lot, "globex")), INVALID,
                           "only the submitter's organisation revokes readers"),
    "revoke of the submitter": (lambda s: s.lg.tx("alice", Revoke(s.lot, "acme")), INVALID,
                                "the submitter's organisation cannot revoke itself"),
    "revoke of a non-reader": (lambda s: s.lg.tx("alice", Revoke(s.lot, "regulator")),
                               INVALID, "regulator does not read the record"),
    "erase by the submitter": (lambda s: s.lg.tx("hana", Erase(s.pat, "patient-1", "asked")),
                               RECORDED, ""),
    "erase by a reader": (lambda s: s.lg.tx("rita", Erase(s.pat, "patient-1", "")), INVALID,
                          "only the submitter's organisation erases a record"),
    "erase naming another patient": (lambda s: s.lg.tx("hana", Erase(s.pat, "patient-2", "")),
                                     INVALID, "the erasure names another patient"),
    "erase of a provenance record": (lambda s: s.lg.tx("alice", Erase(s.lot, "lot-1", "")),
                                     INVALID, "only patient records are erased"),
    "access by a reader": (lambda s: s.lg.tx("rita", Access(s.pat, "care", 1)), RECORDED, ""),
    "access by the submitter": (lambda s: s.lg.tx("hana", Access(s.pat, "", 1)), RECORDED, ""),
    "access by a non-reader": (lambda s: s.lg.tx("bob", Access(s.pat, "care", 1)), RECORDED,
                               ACCESS_DENIED),
    "a transaction on no record": (lambda s: s.lg.tx("alice", Revoke(RID, "globex")), INVALID,
                                   f"no record {RID}"),
    "a transaction on a transaction": (
        lambda s: s.lg.tx("alice", Revoke(s.lg.blocks[0].entries[0].record_id[::-1],
                                          "globex")), INVALID, "no record"),
    "a client of no member organisation": (
        lambda s: s.lg.sign("mallory", [encode_tx(Access(s.pat, "", 1))]), INVALID,
        "the client belongs to no member organisation"),
    "a key wrapped for another org (the whole envelope)": (
        lambda s: s.lg.sign("alice", [encode_segments(
            [Grant(s.lot, "regulator", bytes(80)).segments()[0],
             key_segment("globex", bytes(80))])]), EnvelopeStatus.INVALID,
        "item 0: the grant's key is wrapped for another org"),
}


@pytest.mark.parametrize("case", list(RULES))
def test_record_transaction_rules(case: str) -> None:
    """Each rule of docs (grant: submitter or reader, to a new member; revoke and erase: the
    submitter only; erase: patient records, naming their patient; access: logged for anyone,
    granted to readers only) as `build_block` judges it."""
    make, status, reason = RULES[case]
    s = Setup()
    [(got_status, got_reason)] = s.run(make(s))
    assert got_status == status, got_reason
    if reason:
        assert reason in got_reason
    else:
        assert got_reason == ""


def test_state_carries_from_one_transaction_to_the_next_within_a_batch() -> None:
    """A grant takes effect for the next request of the same batch (the new reader may access
    and grant on), a revocation too, and after an erasure nothing acts on the record."""
    s = Setup()
    results = s.run(s.lg.grant("alice", s.lot, "regulator"),
                    s.lg.grant("rita", s.lot, "hospital"),
                    s.lg.tx("alice", Revoke(s.lot, "regulator")),
                    s.lg.grant("rita", s.lot, "regulator"),
                    s.lg.tx("hana", Erase(s.pat, "patient-1", "")),
                    s.lg.tx("rita", Access(s.pat, "care", 1)),
                    s.lg.grant("hana", s.pat, "acme"),
                    s.lg.tx("hana", Erase(s.pat, "patient-1", "again")))
    assert results == [
        (RECORDED, ""), (RECORDED, ""), (RECORDED, ""),
        (INVALID, "regulator is neither the submitter nor a reader of the record"),
        (RECORDED, ""),
        (INVALID, "the record was erased"), (INVALID, "the record was erased"),
        (INVALID, "the record was erased")]
    assert s.lg.state[s.lot].readers == {"acme", "globex", "hospital"}
    assert s.lg.state[s.pat].erased and not s.lg.state[s.pat].readers


def test_items_of_one_envelope_act_in_order_and_fail_together() -> None:
    """An envelope's items execute in order (a grant, then the revocation it allows); one item
    that breaks the rules on its own makes the whole envelope invalid, naming it, and none of
    its items takes effect."""
    s = Setup()
    results = s.run(s.lg.sign("alice", [encode_tx(s.lg.grant_tx(s.lot, "regulator")),
                                        encode_tx(Revoke(s.lot, "regulator"))]))
    assert results == [(RECORDED, ""), (RECORDED, "")]
    results = s.run(s.lg.sign("alice", [encode_tx(s.lg.grant_tx(s.lot, "hospital")),
                                        b"not a transaction"]))
    assert results == [(EnvelopeStatus.INVALID,
                        "item 1: not a transaction (no public header segment)")]
    assert s.lg.state[s.lot].readers == {"acme", "globex"}


def test_a_record_and_its_transactions_in_one_batch() -> None:
    """A record submitted and granted in the same batch: the grant sees the record (its id is
    known as soon as its envelope is signed)."""
    s = Setup()
    rec = s.lg.record("bob", "lot-7")
    rid = rid_of(rec)
    grant = s.lg.tx("bob", Grant(rid, "acme", bytes(WRAPPED_KEY_BYTES)))
    results = s.run(rec, grant, s.lg.tx("alice", Revoke(rid, "acme")))
    assert results == [(RECORDED, ""), (RECORDED, ""),
                       (INVALID, "only the submitter's organisation revokes readers")]


def test_build_block_leaves_the_given_state_alone_and_is_deterministic() -> None:
    """The executor passes the stored state of the referenced records: build_block must not
    modify it, and two runs over the same input build the same block."""
    s = Setup()
    reqs = (s.lg.grant("alice", s.lot, "regulator"),
            s.lg.tx("hana", Erase(s.pat, "patient-1", "")))
    before = dict(s.lg.state)
    snapshot = dict(before)
    a = s.lg.execute(reqs)
    one = build_block(a, CHAIN, s.lg.blocks[0].header, ORGS, before)
    two = build_block(a, CHAIN, s.lg.blocks[0].header, ORGS, before)
    assert before == snapshot
    assert one.hash == two.hash and one.entries == two.entries
    assert [e.status for e in one.entries] == [RECORDED, RECORDED]


def test_a_replayed_transaction_is_a_duplicate_without_effect() -> None:
    """Requests PBFT ordered but did not execute (replays) are `duplicate`, keep no entries
    and take no effect: the grant did not make regulator a reader, so revoking it afterwards
    is invalid."""
    s = Setup()
    grant = s.lg.grant("alice", s.lot, "regulator")
    block = s.lg.commit(grant, s.lg.tx("alice", Revoke(s.lot, "regulator")), executed=[])
    assert [e.status for e in block.envelopes] == [EnvelopeStatus.DUPLICATE] * 2
    assert block.entries == ()
    assert s.lg.state[s.lot].readers == {"acme", "globex"}
    [(status, reason)] = s.run(s.lg.tx("alice", Revoke(s.lot, "regulator")))
    assert (status, reason) == (INVALID, "regulator does not read the record")


def test_recorded_transactions_carry_what_the_store_applies() -> None:
    """The store applies a recorded entry's `action` for its `sender_org`; an access logs
    whether it was granted through the reason."""
    s = Setup()
    block = s.lg.commit(s.lg.tx("bob", Access(s.pat, "curious", 7)),
                        s.lg.tx("rita", Access(s.pat, "care", 8)))
    denied, granted = block.entries
    assert denied.action == Access(s.pat, "curious", 7) and denied.sender_org == "globex"
    assert denied.reason == ACCESS_DENIED and granted.reason == ""
    assert granted.sender_org == "regulator"


OPS = st.lists(st.tuples(st.sampled_from(list(CLIENTS)),
                         st.sampled_from(["grant", "revoke", "erase", "access"]),
                         st.integers(0, 1), st.sampled_from(list(ORG_KEYS))),
               min_size=1, max_size=10)


def model(ops: Sequence[tuple[str, str, int, str]]) -> list[bool]:
    """The documented rules, independently: which operations take effect (for an access:
    is it granted)."""
    readers = [{"acme", "globex"}, {"hospital", "regulator"}]
    submitter, kind = ["acme", "hospital"], ["provenance", "patient"]
    erased = [False, False]
    out = []
    for client, op, r, org in ops:
        sender = CLIENTS[client]
        ok = False
        if not erased[r]:
            if op == "access":
                ok = sender in readers[r]
            elif op == "grant":
                ok = (sender == submitter[r] or sender in readers[r]) and org not in readers[r]
                if ok:
                    readers[r].add(org)
            elif op == "revoke":
                ok = sender == submitter[r] and org != submitter[r] and org in readers[r]
                if ok:
                    readers[r].discard(org)
            else:
                ok = kind[r] == "patient" and sender == submitter[r]
                if ok:
                    erased[r], readers[r] = True, set()
        out.append(ok)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_batching_does_not_change_outcomes_and_matches_the_rules(
        ops: list[tuple[str, str, int, str]]) -> None:
    """The same signed transactions ordered in one batch or one per block get the same statuses
    and reasons, and those are what the documented rules say."""
    s = Setup()
    ids = [s.lot, s.pat]
    subjects = ["lot-1", "patient-1"]
    reqs = []
    for client, op, r, org in ops:
        if op == "grant":
            reqs.append(s.lg.tx(client, Grant(ids[r], org, bytes(WRAPPED_KEY_BYTES))))
        elif op == "revoke":
            reqs.append(s.lg.tx(client, Revoke(ids[r], org)))
        elif op == "erase":
            reqs.append(s.lg.tx(client, Erase(ids[r], subjects[r], "")))
        else:
            reqs.append(s.lg.tx(client, Access(ids[r], "p", 1)))
    split = Ledger()
    split.commit(*s.lg.batches[0])
    batched = s.run(*reqs)
    one_by_one = [(e.status, e.reason) for r in reqs for e in split.commit(r).entries]
    assert batched == one_by_one
    took_effect = [status == RECORDED and reason == "" for status, reason in batched]
    assert took_effect == model(ops), list(zip(ops, batched, strict=True))


@pytest.mark.parametrize("where", ["client", "org"])
def test_a_genesis_with_a_control_character_in_an_id_is_refused(where: str) -> None:
    """Ids are stored as text, printed in reports and signed over: a NUL or a newline in one is
    refused when the genesis file is loaded, with a line naming it."""
    data = GENESIS.to_json()
    if where == "client":
        data["clients"][0]["id"] = "mal\nlory"
    else:
        old = data["organisations"][0]["id"]
        data["organisations"][0]["id"] = "ac\x00me"
        for entry in data["validators"] + data["clients"]:
            if entry["org"] == old:
                entry["org"] = "ac\x00me"
    with pytest.raises(ConfigError, match="control character"):
        Genesis.from_json(data)
