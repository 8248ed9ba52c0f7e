"""Membership governance without processes: the join / vote / removal transactions and their
encodings, the pure judging rules of consortium/ledger/membership.py (sponsorship, the pending
caps, expiry by block time), how build_block dispatches governance transactions, that a
validator judges a join request on arrival as execution does (node/submissions.check_content),
and the hand-over to the consensus layer (a quorum of committed approvals assembles a
`Reconfiguration` that `pbft.state.approved_reconfiguration` accepts).

Everything is signed with real Ed25519 keys and verified with `Ed25519Verifier`; requests and
blocks are built exactly as a validator builds them (tests/test_audit_unit.py style).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consortium.config import (
    ClientInfo,
    ConfigError,
    DataPolicy,
    Genesis,
    OrgInfo,
    ValidatorInfo,
)
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger import membership as ms
from consortium.ledger.blocks import (
    Block,
    ClientOrgs,
    EntryStatus,
    EnvelopeStatus,
    Governance,
    Rules,
    build_block,
    changes_membership,
)
from consortium.ledger.items import record_id
from consortium.ledger.transactions import (
    STATEMENT_BYTES_MAX,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RemoveRequest,
    Revoke,
    TxType,
    applicant_client_id,
    applicant_key,
    decode_governance_tx,
    decode_tx,
    encode_governance_tx,
    encode_tx,
    sponsor_join,
    sponsorship_signing_bytes,
    target_of,
)
from consortium.node.submissions import SubmissionRules, check_content
from consortium.pbft import codec
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.params import ProtocolParams
from consortium.pbft.payload import encode_envelope, encode_segments, split_segments
from consortium.pbft.state import approved_reconfiguration, batch_root

APP = m.RequestKind.APPLICATION
CHAIN = b"membership-unit-chain"
CHECKPOINT_INTERVAL = 4
VERIFIER = Ed25519Verifier()


def _seed(*parts: object) -> bytes:
    return hashlib.sha256(repr(("tests/test_membership_unit", *parts)).encode()).digest()


VALIDATORS = {i: Ed25519Signer(_seed("validator", i)) for i in range(4)}
OUTSIDER = Ed25519Signer(_seed("outsider"))
"""A key of no validator and no client."""
CONFIG0 = EpochConfig(0, 0, tuple(Member(i, s.public_key) for i, s in VALIDATORS.items()))
GENESIS_ORGS = frozenset({"acme", "globex", "regulator", "hospital"})
VALIDATOR_ORGS = {0: "acme", 1: "globex", 2: "regulator", 3: "hospital"}
CLIENT_ORGS = {
    "alice": "acme", "bob": "globex", "rita": "regulator", "hana": "hospital",
    **{ms.validator_client_id(i): org for i, org in VALIDATOR_ORGS.items()}}
CLIENT_KEYS = {c: Ed25519Signer(_seed("client", c)) for c in CLIENT_ORGS
               if not c.startswith("validator-")}
KNOWN_CLIENTS = frozenset(CLIENT_ORGS)
SPONSORS = {org: CLIENT_KEYS[c] for c, org in CLIENT_ORGS.items() if c in CLIENT_KEYS}
"""Each genesis organisation's one client key, which signs its sponsorships."""
ORGS = ClientOrgs(dict(CLIENT_ORGS), set(GENESIS_ORGS), keys={
    **{c: s.public_key for c, s in CLIENT_KEYS.items()},
    **{ms.validator_client_id(i): s.public_key for i, s in VALIDATORS.items()}},
    keys_in_use=frozenset(s.public_key for s in (*CLIENT_KEYS.values(), *VALIDATORS.values())))
T0 = 1_700_000_000_000
"""The block time the tests judge at (and the time of the blocks `execute` builds)."""
TTL = ms.JOIN_PENDING_TTL_MS

_nonces = itertools.count(1)


def pid(label: str) -> str:
    """A proposal id (64 lowercase hex digits, like a request digest)."""
    return hashlib.sha256(label.encode()).hexdigest()


def voters_of(config: EpochConfig) -> dict[str, int]:
    return {ms.validator_client_id(mem.replica_id): mem.replica_id for mem in config.members}


def context(config: EpochConfig = CONFIG0, *, known_clients: frozenset[str] = KNOWN_CLIENTS,
            known_orgs: frozenset[str] = GENESIS_ORGS, block_ms: int = T0,
            sponsors: dict[str, Ed25519Signer] | None = None) -> ms.Context:
    sponsor_keys = {org: frozenset({s.public_key})
                    for org, s in (SPONSORS if sponsors is None else sponsors).items()}
    return ms.Context(CHAIN, config, voters_of(config), known_orgs, VERIFIER, known_clients,
                      block_ms, TTL, sponsor_keys, ORGS.keys_in_use)


@dataclass(frozen=True)
class Applicant:
    """An organisation that wants to join, with its own (freshly generated) keys."""

    org: str
    replica_id: int
    validator: Ed25519Signer = field(default_factory=Ed25519Signer.generate)
    client: Ed25519Signer = field(default_factory=Ed25519Signer.generate)
    sponsor: str | None = "acme"
    """The member that sponsors its requests (None: unsponsored)."""

    @property
    def client_id(self) -> str:
        return applicant_client_id(self.validator.public_key)

    def request(self, **changes: Any) -> JoinRequest:
        """Its join request with `changes`, sponsored (signed after the changes) by
        `sponsor`."""
        tx = replace(JoinRequest(self.org, f"{self.org.title()} B.V.", self.replica_id,
                                 self.validator.public_key, self.client.public_key,
                                 hashlib.sha256(self.org.encode()).digest(),
                                 f"{self.org}.example:7100", f"{self.org}.example:7200",
                                 "We ship vaccines.\nPlease let us in.\t(thanks)"), **changes)
        if self.sponsor is None:
            return tx
        return sponsor_join(tx, self.sponsor, SPONSORS[self.sponsor], CHAIN)


def join(state: dict[str, ms.Proposal], a: Applicant, proposal_id: str,
         ctx: ms.Context | None = None) -> ms.Proposal:
    """Judge `a`'s join request (must be accepted) and return the new proposal."""
    assert ms.judge_join(a.request(), a.client_id, proposal_id, state, ctx or context()) == ""
    return state[proposal_id]


def approval(signer: Ed25519Signer, p: ms.Proposal, config: EpochConfig = CONFIG0, *,
             chain: bytes = CHAIN, members: tuple[Member, ...] | None = None) -> bytes:
    """A replica-key signature over the validator-set change `p` makes to `config`."""
    new = p.new_members(config) if members is None else members
    return signer.sign(m.reconfiguration_signing_bytes(chain, config.epoch, new))


def approve(voter: int, p: ms.Proposal, config: EpochConfig = CONFIG0,
            signers: dict[int, Ed25519Signer] = VALIDATORS) -> MemberVote:
    return MemberVote(p.proposal_id, True, config.epoch, approval(signers[voter], p, config))


def reject(p: ms.Proposal, config: EpochConfig = CONFIG0) -> MemberVote:
    return MemberVote(p.proposal_id, False, config.epoch, b"")


def vote(tx: MemberVote, voter: int, state: dict[str, ms.Proposal],
         ctx: ms.Context | None = None) -> str:
    return ms.judge_vote(tx, ms.validator_client_id(voter), state, ctx or context())


def approve_all(state: dict[str, ms.Proposal], p: ms.Proposal, voters: tuple[int, ...],
                config: EpochConfig = CONFIG0,
                signers: dict[int, Ed25519Signer] = VALIDATORS) -> list[str]:
    ctx = context(config)
    return [vote(approve(v, state[p.proposal_id], config, signers), v, state, ctx)
            for v in voters]


def reconfigure(p: ms.Proposal, config: EpochConfig, seq: int = 5, *,
                chain: bytes = CHAIN) -> m.PendingReconfiguration | None:
    """What the consensus layer makes of the reconfiguration assembled from `p`'s votes."""
    return approved_reconfiguration(ms.reconfiguration_payload(p, config), config, seq,
                                    CHECKPOINT_INTERVAL, chain, VERIFIER)


# ------------------------------------------------------------------------------ encodings

def _segments(tx: JoinRequest | MemberVote | RemoveRequest) -> list[bytes | None]:
    segs = split_segments(encode_governance_tx(tx))
    assert segs is not None
    return list(segs)


def test_join_request_round_trip() -> None:
    a = Applicant("newco", 4)
    tx = a.request()
    segs = _segments(tx)
    assert len(segs) == 2 and segs[0] is not None and segs[0][0] == TxType.JOIN
    assert segs[1] == tx.statement.encode()
    assert decode_governance_tx(segs) == tx
    assert decode_tx(segs) == tx
    assert target_of(tx) is None


def test_join_request_with_the_longest_org_and_statement_round_trips() -> None:
    tx = Applicant("a" * 32, 65535).request(statement="é" * (STATEMENT_BYTES_MAX // 2))
    assert len(tx.statement.encode()) == STATEMENT_BYTES_MAX
    assert decode_governance_tx(_segments(tx)) == tx


def test_an_unsponsored_join_request_round_trips() -> None:
    """No sponsorship encodes as an empty sponsor and a zero signature, and decodes back to
    none (which execution then refuses, with the reason)."""
    tx = Applicant("newco", 4, sponsor=None).request()
    assert (tx.sponsor, tx.sponsorship) == ("", b"")
    segs = _segments(tx)
    assert segs[0] is not None and segs[0].endswith(b"\x00\x00" + bytes(64))
    assert decode_governance_tx(segs) == tx
    named = replace(tx, sponsor="acme")
    assert decode_governance_tx(_segments(named)) == named


def _sponsor_header(**changes: Any) -> bytes:
    segs = _segments(replace(Applicant("newco", 4).request(), **changes))
    assert segs[0] is not None
    return segs[0]


def test_a_withheld_statement_decodes_as_empty() -> None:
    """A block view may withhold segment 1: the header alone still decodes."""
    tx = Applicant("newco", 4).request()
    segs = _segments(tx)
    assert decode_governance_tx([segs[0], None]) == replace(tx, statement="")


@pytest.mark.parametrize("approve_it", [True, False], ids=["approve", "reject"])
def test_member_vote_round_trip(approve_it: bool) -> None:
    sig = VALIDATORS[1].sign(b"anything") if approve_it else b""
    tx = MemberVote(pid("p"), approve_it, 7, sig)
    segs = _segments(tx)
    assert len(segs) == 1 and segs[0] is not None and segs[0][0] == TxType.MEMBER_VOTE
    assert len(segs[0]) == 1 + 32 + 1 + 4 + 64
    assert decode_governance_tx(segs) == tx
    assert decode_tx(segs) == tx
    assert target_of(tx) == pid("p")


def test_a_rejection_encodes_a_zero_approval_whatever_it_was_given() -> None:
    tx = MemberVote(pid("p"), False, 0, b"\x01" * 64)
    segs = _segments(tx)
    assert segs[0] is not None and segs[0].endswith(bytes(64))
    assert decode_governance_tx(segs) == replace(tx, approval=b"")


def test_remove_request_round_trip() -> None:
    tx = RemoveRequest(3, "unreachable for a month")
    segs = _segments(tx)
    assert len(segs) == 1 and segs[0] is not None and segs[0][0] == TxType.REMOVE
    assert decode_governance_tx(segs) == tx
    assert decode_tx(segs) == tx
    assert target_of(tx) is None
    assert decode_governance_tx(_segments(RemoveRequest(0, ""))) == RemoveRequest(0, "")


def test_decode_tx_dispatches_by_type_byte() -> None:
    join_tx = Applicant("newco", 4).request()
    vote_tx = MemberVote(pid("p"), False, 0, b"")
    remove_tx = RemoveRequest(2, "gone")
    revoke_tx = Revoke(pid("record"), "globex")
    assert [type(decode_tx(_segments(t))) for t in (join_tx, vote_tx, remove_tx)] == \
        [JoinRequest, MemberVote, RemoveRequest]
    record_segs = split_segments(encode_tx(revoke_tx))
    assert record_segs is not None
    assert decode_tx(list(record_segs)) == revoke_tx
    with pytest.raises(InvalidTransaction, match="revoke is not a governance transaction"):
        decode_governance_tx(list(record_segs))
    with pytest.raises(InvalidTransaction, match="unknown transaction type 11"):
        decode_tx([b"\x0b" + bytes(40)])


def _join_header(org: str = "newco", replica_id: int = 4, *, name: str = "NewCo",
                 peer: str = "p:1", client: str = "c:2") -> bytes:
    segs = _segments(Applicant(org, replica_id).request(name=name, peer_address=peer,
                                                        client_address=client))
    assert segs[0] is not None
    return segs[0]


def _vote_header(approve_byte: int, approval: bytes = bytes(64)) -> bytes:
    w = codec.Writer()
    w.u8(int(TxType.MEMBER_VOTE))
    w.fixed(bytes.fromhex(pid("p")))
    w.u8(approve_byte)
    w.u32(0)
    w.fixed(approval)
    return w.getvalue()


def _remove_header() -> bytes:
    segs = _segments(RemoveRequest(1, "why"))
    assert segs[0] is not None
    return segs[0]


_GOOD_STATEMENT = b"hello"
_ORG_MESSAGE = "an organisation id is 1 to 32 characters"

MALFORMED: dict[str, tuple[list[bytes | None], str]] = {
    "org uppercase": ([_join_header("NewCo"), _GOOD_STATEMENT], _ORG_MESSAGE),
    "org leading dash": ([_join_header("-newco"), _GOOD_STATEMENT], _ORG_MESSAGE),
    "org too long": ([_join_header("a" * 33), _GOOD_STATEMENT], _ORG_MESSAGE),
    "org empty": ([_join_header(""), _GOOD_STATEMENT], _ORG_MESSAGE),
    "org with space": ([_join_header("new co"), _GOOD_STATEMENT], _ORG_MESSAGE),
    "org with dot": ([_join_header("new.co"), _GOOD_STATEMENT], _ORG_MESSAGE),
    "empty name": ([_join_header(name=""), _GOOD_STATEMENT], "name must be 1 to 256 bytes"),
    "control char in peer address": ([_join_header(peer="p\x00:1"), _GOOD_STATEMENT],
                                     "peer_address contains a control character"),
    "replica id out of range": ([_join_header(replica_id=1 << 16), _GOOD_STATEMENT],
                                "replica id out of range"),
    "statement oversize": ([_join_header(), b"x" * (STATEMENT_BYTES_MAX + 1)],
                           "a statement is 1 to 4096 bytes"),
    "statement empty": ([_join_header(), b""], "a statement is 1 to 4096 bytes"),
    "statement BEL": ([_join_header(), b"ring \x07 ring"],
                      "the statement contains a control character"),
    "statement ESC": ([_join_header(), b"\x1b[31mred"],
                      "the statement contains a control character"),
    "statement CR": ([_join_header(), b"line\rover"],
                     "the statement contains a control character"),
    "statement C1": ([_join_header(), "next \x85 line".encode()],
                     "the statement contains a control character"),
    "statement DEL": ([_join_header(), b"del \x7f"],
                      "the statement contains a control character"),
    "statement not UTF-8": ([_join_header(), b"\xff\xfe"], "the statement is not UTF-8"),
    "sponsorship without sponsor": ([_sponsor_header(sponsor=""), _GOOD_STATEMENT],
                                    "a sponsorship without a sponsor"),
    "control char in sponsor": ([_sponsor_header(sponsor="ac\nme"), _GOOD_STATEMENT],
                                "sponsor contains a control character"),
    "join one segment": ([_join_header()], "a join request has 2 segments"),
    "join three segments": ([_join_header(), _GOOD_STATEMENT, b"more"],
                            "a join request has 2 segments"),
    "join truncated": ([_join_header()[:-1], _GOOD_STATEMENT],
                       "malformed join transaction: message is truncated"),
    "join type byte only": ([bytes([TxType.JOIN]), _GOOD_STATEMENT],
                            "malformed join transaction: message is truncated"),
    "join trailing byte (a truncated GS1 identity)": (
        [_join_header() + b"\x00", _GOOD_STATEMENT],
        "malformed join transaction: message is truncated"),
    "join trailing bytes after the GS1 identity": (
        [_join_header() + b"\x00\x00\x00\x01{\x00", _GOOD_STATEMENT],
        "malformed join transaction: trailing bytes"),
    "vote approve byte 2": ([_vote_header(2)], "a member vote approves (1) or rejects (0)"),
    "vote approve byte 255": ([_vote_header(255)], "a member vote approves (1) or rejects (0)"),
    "rejection with approval bytes": ([_vote_header(0, b"\x01" * 64)],
                                      "a rejection carries no approval"),
    "vote two segments": ([_vote_header(1), b""], "a member vote has 1 segment"),
    "vote truncated": ([_vote_header(1)[:-1]],
                       "malformed member_vote transaction: message is truncated"),
    "vote header only": ([_vote_header(1)[:33]],
                         "malformed member_vote transaction: message is truncated"),
    "vote trailing bytes": ([_vote_header(0) + b"\x00"],
                            "malformed member_vote transaction: trailing bytes"),
    "remove two segments": ([_remove_header(), b"x"], "a removal proposal has 1 segment"),
    "remove truncated": ([_remove_header()[:3]],
                         "malformed remove transaction: message is truncated"),
    "remove control char in reason": ([_segments(RemoveRequest(1, "a\nb"))[0]],
                                      "reason contains a control character"),
    "no segments": ([], "transaction header missing"),
    "withheld header": ([None], "transaction header missing"),
    "empty header": ([b""], "empty transaction header"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_governance_transactions_are_refused_clearly(name: str) -> None:
    segments, message = MALFORMED[name]
    with pytest.raises(InvalidTransaction) as info:
        decode_governance_tx(list(segments))
    assert message in str(info.value)


def test_statement_allows_newlines_and_tabs() -> None:
    tx = Applicant("newco", 4).request(statement="line one\n\tindented")
    assert decode_governance_tx(_segments(tx)) == tx


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([TxType.JOIN, TxType.MEMBER_VOTE, TxType.REMOVE]),
       st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_decode_governance_tx_raises_only_invalid_transaction(kind: TxType,
                                                              raw: list[bytes]) -> None:
    segments: list[bytes | None] = [bytes([kind]) + raw[0], *raw[1:]]
    try:
        tx = decode_governance_tx(segments)
    except InvalidTransaction:
        return
    assert isinstance(tx, JoinRequest | MemberVote | RemoveRequest)
    assert decode_governance_tx(_segments(tx)) == tx


_VALID_TXS: list[JoinRequest | MemberVote | RemoveRequest] = [
    Applicant("newco", 4).request(),
    MemberVote(pid("p"), True, 3, bytes(range(64))),
    MemberVote(pid("p"), False, 3, b""),
    RemoveRequest(2, "reason"),
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_VALID_TXS), st.integers(min_value=0, max_value=1),
       st.integers(min_value=0), st.sampled_from(["truncate", "flip", "insert"]),
       st.integers(min_value=0, max_value=255))
def test_mutated_governance_txs_decode_or_raise_invalid_transaction(
        tx: JoinRequest | MemberVote | RemoveRequest, which: int, at: int, op: str,
        byte: int) -> None:
    """Near-valid inputs reach deeper than random bytes: whatever decodes re-encodes to
    itself."""
    segments = _segments(tx)
    i = min(which, len(segments) - 1)
    seg = segments[i]
    assert seg is not None
    pos = at % (len(seg) + 1)
    if op == "truncate":
        seg = seg[:pos]
    elif op == "flip" and pos < len(seg):
        seg = seg[:pos] + bytes([seg[pos] ^ (byte or 1)]) + seg[pos + 1:]
    else:
        seg = seg[:pos] + bytes([byte]) + seg[pos:]
    segments[i] = seg
    try:
        decoded = decode_governance_tx(segments)
    except InvalidTransaction:
        return
    assert decode_governance_tx(_segments(decoded)) == decoded


# ------------------------------------------------------------------------ applicant ids

def test_applicant_key_round_trip() -> None:
    key = Ed25519Signer.generate().public_key
    cid = applicant_client_id(key)
    assert cid == "applicant-" + key.hex()
    assert applicant_key(cid) == key
    assert len(cid.encode()) <= m.CLIENT_ID_BYTES_MAX


_HEX = "ab" * 32


@pytest.mark.parametrize("client_id", [
    "applicant-" + _HEX.upper(),
    "applicant-" + "Ab" + _HEX[2:],
    "applicant-" + _HEX[:-2],
    "applicant-" + _HEX + "ab",
    "applicant-" + _HEX[:-1],
    "applicant-" + "zz" * 32,
    "applicant-",
    "Applicant-" + _HEX,
    "validator-" + _HEX,
    "validator-0",
    "alice",
    _HEX,
    "xapplicant-" + _HEX,
])
def test_applicant_key_is_none_for_other_ids(client_id: str) -> None:
    assert applicant_key(client_id) is None


# ------------------------------------------------------------------------------ judge_join

def test_join_accepted_when_signed_by_the_applicants_validator_key() -> None:
    a = Applicant("newco", 4)
    state: dict[str, ms.Proposal] = {}
    p = join(state, a, pid("join"))
    assert state == {pid("join"): p}
    assert (p.kind, p.replica_id, p.org, p.status, p.votes) == \
        ("join", 4, "newco", ms.ProposalStatus.PENDING, ())
    assert (p.validator_key, p.client_key) == (a.validator.public_key, a.client.public_key)
    assert (p.name, p.peer_address, p.client_address) == \
        ("Newco B.V.", "newco.example:7100", "newco.example:7200")
    assert ms.org_client_id(p.org) == "newco-client"


@pytest.mark.parametrize("signer", ["another applicant", "genesis client", "validator"])
def test_join_refused_when_signed_under_another_id(signer: str) -> None:
    a = Applicant("newco", 4)
    client_id = {"another applicant": applicant_client_id(OUTSIDER.public_key),
                 "genesis client": "alice", "validator": "validator-0"}[signer]
    state: dict[str, ms.Proposal] = {}
    reason = ms.judge_join(a.request(), client_id, pid("join"), state, context())
    assert reason.startswith("a join request is signed by the applicant's validator key")
    assert state == {}


def _refused(tx: JoinRequest, client_id: str, state: dict[str, ms.Proposal],
             ctx: ms.Context | None = None) -> str:
    before = dict(state)
    reason = ms.judge_join(tx, client_id, pid("refused"), state, ctx or context())
    assert reason, "expected a refusal"
    assert state == before
    return reason


def test_join_refused_for_a_known_org() -> None:
    a = Applicant("acme", 4)
    assert _refused(a.request(), a.client_id, {}) == \
        "organisation 'acme' is a member or has a join request open"


def test_join_refused_for_an_org_with_an_open_request() -> None:
    state: dict[str, ms.Proposal] = {}
    join(state, Applicant("newco", 4), pid("first"))
    again = Applicant("newco", 5)
    assert _refused(again.request(), again.client_id, state) == \
        "organisation 'newco' is a member or has a join request open"


def test_join_refused_for_a_current_members_replica_id() -> None:
    a = Applicant("newco", 2)
    assert _refused(a.request(), a.client_id, {}) == "replica id 2 is taken"


def test_join_refused_for_another_live_proposals_replica_id() -> None:
    state: dict[str, ms.Proposal] = {}
    join(state, Applicant("newco", 4), pid("first"))
    other = Applicant("otherco", 4)
    assert _refused(other.request(), other.client_id, state) == "replica id 4 is taken"


def test_join_refused_for_a_replica_id_in_known_clients() -> None:
    """A genesis validator removed earlier is no member any more, but its id stays taken."""
    a = Applicant("newco", 7)
    ctx = context(known_clients=KNOWN_CLIENTS | {"validator-7"})
    assert _refused(a.request(), a.client_id, {}, ctx) == "replica id 7 is taken"
    assert ms.judge_join(a.request(), a.client_id, pid("ok"), {}, context()) == ""


def test_join_refused_when_the_orgs_client_id_is_taken() -> None:
    a = Applicant("newco", 4)
    ctx = context(known_clients=KNOWN_CLIENTS | {"newco-client"})
    assert _refused(a.request(), a.client_id, {}, ctx) == "client id newco-client is taken"


REUSED_MEMBER_KEY = ("the join request reuses a key a member already holds; generate new keys "
                     "(consortium members apply)")


def test_join_refused_for_a_validator_key_already_in_use() -> None:
    member = Applicant("newco", 4, validator=VALIDATORS[0])
    assert _refused(member.request(), member.client_id, {}) == REUSED_MEMBER_KEY
    state: dict[str, ms.Proposal] = {}
    first = join(state, Applicant("firstco", 4), pid("first"))
    copycat = Applicant("copyco", 5)
    tx = copycat.request(validator_key=first.validator_key)
    assert _refused(tx, applicant_client_id(first.validator_key), state) == \
        "the join request reuses a key of another open join request"


@pytest.mark.parametrize("key", ["client_key", "encryption_key"])
def test_join_refused_for_a_members_or_an_open_requests_key(key: str) -> None:
    """Issue 12: a request naming org0's client or encryption key would, once approved, let
    org0 act as the new member or read what is shared with it; execution refuses it too (the
    rule is execution's; admission asks it)."""
    a = Applicant("newco", 4)
    assert _refused(a.request(**{key: SPONSORS["globex"].public_key}), a.client_id, {}) == \
        REUSED_MEMBER_KEY
    state: dict[str, ms.Proposal] = {}
    first = join(state, Applicant("firstco", 5), pid("first"))
    assert _refused(a.request(**{key: getattr(first, key)}), a.client_id, state) == \
        "the join request reuses a key of another open join request"
    approve_all(state, first, (0, 1, 2))
    assert _refused(a.request(**{key: getattr(first, key)}), a.client_id, state) == \
        REUSED_MEMBER_KEY


def _fill(state: dict[str, ms.Proposal], count: int = ms.JOINS_PENDING_MAX,
          sponsors: tuple[str, ...] = ("acme", "globex", "regulator", "hospital"),
          at_ms: int = T0) -> list[ms.Proposal]:
    """`count` pending join requests, sponsored in turn by `sponsors`, recorded at `at_ms`."""
    return [join(state, Applicant(f"org{i}", 10 + i, sponsor=sponsors[i % len(sponsors)]),
                 pid(f"join{i}"), context(block_ms=at_ms)) for i in range(count)]


TOTAL_CAP = (f"{ms.SLOTS_TAKEN}{ms.JOINS_PENDING_MAX} join requests are already waiting for "
             "votes; try later")


def test_join_refused_when_joins_pending_max_are_waiting() -> None:
    """8 pending requests by 4 sponsors: a 5th member's sponsorship finds no slot."""
    assert ms.JOINS_PENDING_MAX == 8 and ms.JOINS_PENDING_PER_SPONSOR == 2
    state: dict[str, ms.Proposal] = {}
    _fill(state)
    fifth = {**SPONSORS, "okco": Ed25519Signer(_seed("okco client"))}
    late = Applicant("lateco", 99, sponsor=None)
    tx = sponsor_join(late.request(), "okco", fifth["okco"], CHAIN)
    assert _refused(tx, late.client_id, state, context(sponsors=fifth)) == TOTAL_CAP
    # one decided (rejected) frees a slot
    first = state[pid("join0")]
    assert vote(reject(first), 0, state) == ""
    assert vote(reject(first), 1, state) == "membership: rejected"
    assert ms.judge_join(tx, late.client_id, pid("late"), state, context(sponsors=fifth)) == ""


def test_one_member_sponsors_at_most_two_pending_requests() -> None:
    state: dict[str, ms.Proposal] = {}
    _fill(state, 2, ("acme",))
    third = Applicant("thirdco", 20)
    assert _refused(third.request(), third.client_id, state) == (
        f"{ms.SLOTS_TAKEN}'acme' already sponsors {ms.JOINS_PENDING_PER_SPONSOR} join requests "
        "waiting for votes; try later or ask another member")
    other = Applicant("otherco", 21, sponsor="globex")
    assert ms.judge_join(other.request(), other.client_id, pid("other"), state, context()) == ""
    assert state[pid("other")].sponsor == "globex"
    # a decided request no longer counts against its sponsor
    approve_all(state, state[pid("join0")], (0, 1, 2))
    assert ms.judge_join(third.request(), third.client_id, pid("third"), state,
                         context()) == ""


def test_approved_joins_do_not_count_as_pending() -> None:
    state: dict[str, ms.Proposal] = {}
    _fill(state)
    assert approve_all(state, state[pid("join0")], (0, 1, 2))[-1] == "membership: approved"
    late = Applicant("lateco", 99)  # acme's second request was join0: approved
    assert ms.judge_join(late.request(), late.client_id, pid("late"), state, context()) == ""


# ------------------------------------------------------------------------------ sponsorship

MISSING = ("a join request needs a member's sponsorship (a member signs the application with "
           "`consortium members sponsor`)")
NOT_SIGNED = ("the sponsorship is not a signature of 'acme''s client key over this application "
              "(organisation, name, validator id and keys, on this chain)")


@pytest.mark.parametrize("missing", ["no sponsor", "no signature", "neither"])
def test_join_refused_without_a_sponsorship(missing: str) -> None:
    a = Applicant("newco", 4)
    tx = a.request()
    tx = {"no sponsor": replace(tx, sponsor=""), "no signature": replace(tx, sponsorship=b""),
          "neither": replace(tx, sponsor="", sponsorship=b"")}[missing]
    assert _refused(tx, a.client_id, {}) == MISSING


def _signed_by(tx: JoinRequest, signer: Ed25519Signer, chain: bytes = CHAIN) -> JoinRequest:
    return replace(tx, sponsorship=signer.sign(sponsorship_signing_bytes(chain, tx)))


@pytest.mark.parametrize("forgery", [
    "another member's key", "acme's validator key", "the applicant's own key", "another chain",
    "another replica id", "another org", "another name", "another client key",
    "another encryption key", "another validator key", "zeros", "garbage"])
def test_join_refused_with_an_invalid_sponsorship(forgery: str) -> None:
    """The signature must be the named sponsor's client key over exactly this application:
    a sponsorship copied onto another request, or signed by any other key, is refused."""
    a = Applicant("newco", 4)
    tx = a.request()
    other_key = Ed25519Signer.generate().public_key
    bad = {
        "another member's key": _signed_by(tx, SPONSORS["globex"]),
        "acme's validator key": _signed_by(tx, VALIDATORS[0]),
        "the applicant's own key": _signed_by(tx, a.validator),
        "another chain": _signed_by(tx, SPONSORS["acme"], b"another-chain"),
        "another replica id": replace(tx, replica_id=5),
        "another org": replace(tx, org="otherco"),
        "another name": replace(tx, name="Acme Official"),
        "another client key": replace(tx, client_key=other_key),
        "another encryption key": replace(tx, encryption_key=other_key),
        "another validator key": replace(tx, validator_key=other_key),
        "zeros": replace(tx, sponsorship=bytes(64)),
        "garbage": replace(tx, sponsorship=b"\x01" * 64),
    }[forgery]
    signer_id = applicant_client_id(bad.validator_key)
    assert _refused(bad, signer_id, {}) == NOT_SIGNED
    # the endpoints and the statement are not signed: the applicant may change them
    assert ms.judge_join(replace(tx, peer_address="moved:1", statement="new words"),
                         a.client_id, pid("ok"), {}, context()) == ""


@pytest.mark.parametrize("sponsor", ["outsider", "removed", "admission"])
def test_join_refused_when_the_sponsor_is_no_current_member(sponsor: str) -> None:
    """Only a current member vouches: not an unknown organisation, not one removed since
    (`ClientOrgs` leaves removed organisations out), not the admission service."""
    a = Applicant("newco", 4, sponsor=None)
    signer = {"outsider": OUTSIDER, "removed": SPONSORS["hospital"],
              "admission": Ed25519Signer(_seed("admission"))}[sponsor]
    name = {"outsider": "outsiderco", "removed": "hospital", "admission": "screening"}[sponsor]
    tx = sponsor_join(a.request(), name, signer, CHAIN)
    orgs = ClientOrgs({**{c: o for c, o in CLIENT_ORGS.items() if o != "hospital"},
                       "screening-client": "screening"},
                      set(GENESIS_ORGS - {"hospital"}) | {"screening"},
                      keys={"alice": SPONSORS["acme"].public_key,
                            "screening-client": Ed25519Signer(_seed("admission")).public_key})
    sponsor_keys = orgs.sponsor_keys("screening-client")
    assert sponsor_keys == {"acme": frozenset({SPONSORS["acme"].public_key})}
    ctx = replace(context(), sponsor_keys=sponsor_keys)
    assert _refused(tx, a.client_id, {}, ctx) == \
        f"sponsor {name!r} is not a current member organisation"


def test_validator_keys_do_not_sponsor() -> None:
    assert set(ORGS.sponsor_keys(None)) == set(GENESIS_ORGS)
    assert all(len(keys) == 1 and keys <= {s.public_key for s in SPONSORS.values()}
               for keys in ORGS.sponsor_keys(None).values())


# ------------------------------------------------------------------------------ expiry

def test_a_join_request_expires_after_the_ttl_of_block_time() -> None:
    """It counts while block_ms - recorded_ms <= TTL; one millisecond later it holds nothing:
    not its slot, organisation id, validator id or keys (its applicant may apply again with
    the same keys), nor its sponsor's quota."""
    state: dict[str, ms.Proposal] = {}
    proposals = _fill(state)
    assert {p.recorded_ms for p in proposals} == {T0}
    fifth = {**SPONSORS, "okco": Ed25519Signer(_seed("okco client"))}
    late = Applicant("lateco", 99, sponsor=None)
    tx = sponsor_join(late.request(), "okco", fifth["okco"], CHAIN)
    assert _refused(tx, late.client_id, state,
                    context(block_ms=T0 + TTL, sponsors=fifth)) == TOTAL_CAP
    assert not state[pid("join0")].expired(T0 + TTL, TTL)
    after = context(block_ms=T0 + TTL + 1, sponsors=fifth)
    assert state[pid("join0")].expired(T0 + TTL + 1, TTL)
    assert ms.judge_join(tx, late.client_id, pid("late"), state, after) == ""
    assert state[pid("late")].recorded_ms == T0 + TTL + 1
    # the expired request's org, replica id and keys are free: its applicant applies again
    # (a new client key this time), sponsored by the same member
    first = proposals[0]
    new_client = Ed25519Signer(_seed("org0 new client"))
    again = sponsor_join(replace(Applicant(first.org, first.replica_id).request(),
                                 validator_key=first.validator_key,
                                 client_key=new_client.public_key,
                                 encryption_key=first.encryption_key),
                         first.sponsor, SPONSORS[first.sponsor], CHAIN)
    assert ms.judge_join(again, applicant_client_id(first.validator_key), pid("again"), state,
                         after) == ""
    # the newest request of an organisation is the one whose keys sign for it
    assert ms.MembershipState(state).client_keys()["org0-client"] == new_client.public_key


def test_votes_on_an_expired_join_request_are_refused() -> None:
    state, p, _ = _pending_join()
    assert vote(approve(0, p), 0, state, context(block_ms=T0 + TTL)) == ""
    expired = context(block_ms=T0 + TTL + 1)
    for tx, voter in ((approve(1, state[p.proposal_id]), 1), (reject(p), 2)):
        assert _unchanged(tx, ms.validator_client_id(voter), state, expired) == (
            f"the join request expired: it waited {TTL // 1000} s of block time for a decision "
            f"(until {T0 + TTL} ms); the applicant may apply again")
    assert len(state[p.proposal_id].votes) == 1


def test_an_approved_join_and_a_removal_never_expire() -> None:
    state, p, _ = _pending_join()
    approve_all(state, p, (0, 1, 2))
    assert not state[p.proposal_id].expired(T0 + 10 * TTL, TTL)
    assert ms.judge_remove(RemoveRequest(3, "x"), "validator-0", pid("rm"), state, {},
                           context()) == ""
    assert not state[pid("rm")].expired(T0 + 10 * TTL, TTL)
    assert vote(reject(state[pid("rm")]), 0, state, context(block_ms=T0 + 10 * TTL)) == ""


def test_a_rejected_proposals_org_may_apply_again() -> None:
    a = Applicant("newco", 4)
    state: dict[str, ms.Proposal] = {}
    p = join(state, a, pid("first"))
    assert [vote(reject(p), v, state) for v in (0, 3)] == ["", "membership: rejected"]
    assert state[p.proposal_id].status == ms.ProposalStatus.REJECTED
    # same org, same replica id, same keys: the rejected request no longer stands in the way
    again = join(state, a, pid("second"))
    assert again.status == ms.ProposalStatus.PENDING
    assert set(state) == {pid("first"), pid("second")}


def test_an_approved_joins_org_and_replica_id_stay_taken() -> None:
    a = Applicant("newco", 4)
    state: dict[str, ms.Proposal] = {}
    p = join(state, a, pid("first"))
    approve_all(state, p, (0, 1, 2))
    assert state[p.proposal_id].status == ms.ProposalStatus.APPROVED
    assert _refused(a.request(), a.client_id, state) == \
        "organisation 'newco' is a member or has a join request open"
    other = Applicant("otherco", 4)
    assert _refused(other.request(), other.client_id, state) == "replica id 4 is taken"


# ---------------------------------------------------------------------------- judge_remove

def test_judge_remove() -> None:
    ctx = context()
    state: dict[str, ms.Proposal] = {}
    org_of = {"validator-3": "hospital"}
    assert ms.judge_remove(RemoveRequest(3, "x"), "alice", pid("r0"), state, org_of, ctx) == \
        "removals are proposed by current validators (validator-<id>)"
    assert ms.judge_remove(RemoveRequest(9, "x"), "validator-0", pid("r0"), state, org_of,
                           ctx) == "validator 9 is not a current member"
    assert state == {}
    assert ms.judge_remove(RemoveRequest(3, "x"), "validator-0", pid("r1"), state, org_of,
                           ctx) == ""
    assert state[pid("r1")] == ms.Proposal(pid("r1"), "remove", 3, "hospital",
                                           recorded_ms=T0)
    assert ms.judge_remove(RemoveRequest(3, "y"), "validator-1", pid("r2"), state, org_of,
                           ctx) == "a removal of validator 3 is already open"
    solo = EpochConfig(0, 0, (Member(0, VALIDATORS[0].public_key),))
    assert ms.judge_remove(RemoveRequest(0, "x"), "validator-0", pid("r3"), {}, {},
                           context(solo)) == "the last validator cannot be removed"


# ------------------------------------------------------------------------------ judge_vote

def _pending_join() -> tuple[dict[str, ms.Proposal], ms.Proposal, Applicant]:
    a = Applicant("newco", 4)
    state: dict[str, ms.Proposal] = {}
    return state, join(state, a, pid("join")), a


def _unchanged(tx: MemberVote, client_id: str, state: dict[str, ms.Proposal],
               ctx: ms.Context | None = None) -> str:
    before = dict(state)
    reason = ms.judge_vote(tx, client_id, state, ctx or context())
    assert reason and not reason.startswith(ms.MEMBERSHIP_OUTCOME)
    assert state == before
    return reason


@pytest.mark.parametrize("client_id", ["alice", "validator-4", "validator-", "applicant-00"])
def test_vote_refused_from_a_non_voter(client_id: str) -> None:
    state, p, _ = _pending_join()
    assert _unchanged(approve(0, p), client_id, state) == \
        "membership votes come only from current validators (validator-<id>)"


def test_vote_refused_for_an_unknown_proposal() -> None:
    state, _, _ = _pending_join()
    tx = MemberVote(pid("nothing"), False, 0, b"")
    assert _unchanged(tx, "validator-0", state) == f"no membership proposal {pid('nothing')}"


@pytest.mark.parametrize("from_epoch", [1, 5])
def test_vote_refused_for_another_epoch(from_epoch: int) -> None:
    state, p, _ = _pending_join()
    tx = replace(reject(p), from_epoch=from_epoch)
    assert _unchanged(tx, "validator-0", state) == \
        f"the vote is for epoch {from_epoch}; the validator set is epoch 0 now: vote again"


def test_a_second_vote_in_the_same_epoch_is_refused() -> None:
    state, p, _ = _pending_join()
    assert vote(reject(p), 1, state) == ""
    assert _unchanged(approve(1, p), "validator-1", state) == \
        "validator 1 already voted on this proposal"
    assert _unchanged(reject(p), "validator-1", state) == \
        "validator 1 already voted on this proposal"
    assert len(state[p.proposal_id].votes) == 1


def test_approval_over_another_validator_set_is_refused() -> None:
    state, p, a = _pending_join()
    wrong_sets = {
        "current members": CONFIG0.members,
        "other replica id": (*CONFIG0.members, Member(5, a.validator.public_key)),
        "other key": (*CONFIG0.members, Member(4, OUTSIDER.public_key)),
        "unsorted": (Member(4, a.validator.public_key), *CONFIG0.members),
    }
    for label, members in wrong_sets.items():
        tx = MemberVote(p.proposal_id, True, 0, approval(VALIDATORS[0], p, members=members))
        assert _unchanged(tx, "validator-0", state) == \
            "the approval is not the voter's signature over this validator-set change", label
    other_chain = MemberVote(p.proposal_id, True, 0,
                             approval(VALIDATORS[0], p, chain=b"another-chain"))
    assert _unchanged(other_chain, "validator-0", state).startswith("the approval is not")
    other_epoch = MemberVote(p.proposal_id, True, 0,
                             approval(VALIDATORS[0], p, replace(CONFIG0, epoch=1)))
    assert _unchanged(other_epoch, "validator-0", state).startswith("the approval is not")


@pytest.mark.parametrize("signer", ["another validator", "outsider", "applicant", "empty",
                                    "garbage"])
def test_approval_by_another_key_is_refused(signer: str) -> None:
    state, p, a = _pending_join()
    sig = {"another validator": approval(VALIDATORS[1], p),
           "outsider": approval(OUTSIDER, p),
           "applicant": approval(a.validator, p),
           "empty": b"",
           "garbage": bytes(64)}[signer]
    tx = MemberVote(p.proposal_id, True, 0, sig)
    assert _unchanged(tx, "validator-0", state) == \
        "the approval is not the voter's signature over this validator-set change"


def test_three_approvals_of_four_approve() -> None:
    state, p, _ = _pending_join()
    assert CONFIG0.quorum == 3
    assert approve_all(state, p, (2, 0, 3)) == ["", "", "membership: approved"]
    done = state[p.proposal_id]
    assert done.status == ms.ProposalStatus.APPROVED
    assert [(v.epoch, v.replica_id, v.approve) for v in done.votes] == \
        [(0, 2, True), (0, 0, True), (0, 3, True)]
    assert [rid for rid, _ in done.approvals(0)] == [0, 2, 3]
    assert done.approvals(1) == ()


def test_one_rejection_does_not_stop_three_approvals() -> None:
    state, p, _ = _pending_join()
    assert vote(reject(p), 1, state) == ""
    assert approve_all(state, p, (0, 2, 3)) == ["", "", "membership: approved"]


def test_two_rejections_of_four_reject() -> None:
    state, p, _ = _pending_join()
    assert vote(approve(0, p), 0, state) == ""
    assert vote(reject(p), 1, state) == ""
    assert state[p.proposal_id].status == ms.ProposalStatus.PENDING
    assert vote(reject(p), 2, state) == "membership: rejected"
    assert state[p.proposal_id].status == ms.ProposalStatus.REJECTED


@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_votes_after_the_decision_are_refused(outcome: str) -> None:
    state, p, _ = _pending_join()
    if outcome == "approved":
        approve_all(state, p, (0, 1, 2))
        late = approve(3, state[p.proposal_id])
    else:
        vote(reject(p), 0, state)
        vote(reject(p), 1, state)
        late = reject(p)
    assert _unchanged(late, "validator-3", state) == f"the proposal is already {outcome}"
    assert state[p.proposal_id].status == outcome


def test_only_the_current_epochs_votes_count() -> None:
    """Two approvals cast in epoch 0 do not carry over: in epoch 1 (same validators) one more
    approval leaves the proposal pending, and old voters may vote again."""
    state, p, _ = _pending_join()
    assert approve_all(state, p, (0, 1)) == ["", ""]
    config1 = EpochConfig(1, 8, CONFIG0.members)
    assert approve_all(state, p, (2,), config1) == [""]
    assert state[p.proposal_id].status == ms.ProposalStatus.PENDING
    assert approve_all(state, p, (0, 1), config1) == ["", "membership: approved"]
    assert [rid for rid, _ in state[p.proposal_id].approvals(1)] == [0, 1, 2]


def test_removal_proposal_is_voted_like_a_join() -> None:
    state: dict[str, ms.Proposal] = {}
    assert ms.judge_remove(RemoveRequest(3, "x"), "validator-0", pid("rm"), state, {},
                           context()) == ""
    p = state[pid("rm")]
    assert p.new_members(CONFIG0) == CONFIG0.members[:3]
    assert approve_all(state, p, (0, 1, 3)) == ["", "", "membership: approved"]


# ----------------------------------------------------------- hand-over to the consensus layer

def test_an_approved_join_is_accepted_by_the_consensus_layer() -> None:
    state, p, a = _pending_join()
    approve_all(state, p, (0, 1, 2))
    done = state[p.proposal_id]
    pending = reconfigure(done, CONFIG0, seq=5)
    assert pending is not None
    assert pending.effective_seq == 8
    assert pending.members == (*CONFIG0.members, Member(4, a.validator.public_key))
    on_boundary = reconfigure(done, CONFIG0, seq=8)
    assert on_boundary is not None and on_boundary.effective_seq == 8
    decoded = codec.decode_reconfiguration(ms.reconfiguration_payload(done, CONFIG0))
    assert decoded.from_epoch == 0 and [rid for rid, _ in decoded.approvals] == [0, 1, 2]


def test_a_joiner_with_a_low_replica_id_is_sorted_into_place() -> None:
    config = EpochConfig(0, 0, tuple(Member(i + 10, s.public_key)
                                     for i, s in VALIDATORS.items()))
    signers = {i + 10: s for i, s in VALIDATORS.items()}
    a = Applicant("newco", 1)
    state: dict[str, ms.Proposal] = {}
    p = join(state, a, pid("low"), context(config, known_clients=frozenset(voters_of(config))))
    assert approve_all(state, p, (10, 11, 12), config, signers)[-1] == "membership: approved"
    pending = reconfigure(state[p.proposal_id], config)
    assert pending is not None
    assert [mem.replica_id for mem in pending.members] == [1, 10, 11, 12, 13]


def test_an_approved_proposal_is_refused_for_another_config() -> None:
    state, p, _ = _pending_join()
    approve_all(state, p, (0, 1, 2))
    done = state[p.proposal_id]
    payload = ms.reconfiguration_payload(done, CONFIG0)
    config1 = EpochConfig(1, 8, CONFIG0.members)
    assert approved_reconfiguration(payload, config1, 9, CHECKPOINT_INTERVAL, CHAIN,
                                    VERIFIER) is None
    assert reconfigure(done, config1) is None  # no approvals of epoch 1
    assert reconfigure(done, CONFIG0, chain=b"another-chain") is None
    others = EpochConfig(0, 0, tuple(Member(i, Ed25519Signer(_seed("other", i)).public_key)
                                     for i in range(4)))
    assert approved_reconfiguration(payload, others, 5, CHECKPOINT_INTERVAL, CHAIN,
                                    VERIFIER) is None


def test_a_pending_proposal_is_not_approved_by_the_consensus_layer() -> None:
    state, p, _ = _pending_join()
    approve_all(state, p, (0, 1))
    assert state[p.proposal_id].status == ms.ProposalStatus.PENDING
    assert reconfigure(state[p.proposal_id], CONFIG0) is None


def test_an_approved_removal_excludes_the_removed_replica() -> None:
    state: dict[str, ms.Proposal] = {}
    ms.judge_remove(RemoveRequest(1, "x"), "validator-0", pid("rm"), state, {}, context())
    approve_all(state, state[pid("rm")], (0, 2, 3))
    pending = reconfigure(state[pid("rm")], CONFIG0, seq=3)
    assert pending is not None
    assert pending.effective_seq == 4
    assert [mem.replica_id for mem in pending.members] == [0, 2, 3]
    assert CONFIG0.members[1] not in pending.members


def test_one_change_per_epoch_a_second_approval_waits_for_the_next_epoch() -> None:
    """The consensus layer carries out one validator-set change per epoch and approvals are
    bound to their epoch: while one approved change is waiting, approving votes on another are
    refused (not recorded), and the members vote again in the next epoch, where it passes."""
    state: dict[str, ms.Proposal] = {}
    a, b = Applicant("aco", 4), Applicant("bco", 5)
    pa, pb = join(state, a, pid("a")), join(state, b, pid("b"))
    assert approve_all(state, pa, (0, 1, 2))[-1] == "membership: approved"
    refused = vote(approve(0, state[pb.proposal_id]), 0, state)
    assert "was approved in this epoch" in refused
    assert state[pb.proposal_id].votes == () and state[pb.proposal_id].status == "pending"
    assert vote(reject(state[pb.proposal_id]), 3, state) == ""  # rejections still count
    pending = reconfigure(state[pa.proposal_id], CONFIG0, seq=5)
    assert pending is not None
    config1 = EpochConfig(1, pending.effective_seq, pending.members)
    signers = {**VALIDATORS, 4: a.validator}
    outcomes = [vote(approve(r, state[pb.proposal_id], config1, signers), r, state,
                     context(config1)) for r in (0, 1, 2, 4)]
    assert outcomes[-1] == "membership: approved"
    assert reconfigure(state[pb.proposal_id], config1, seq=9) is not None


# ------------------------------------------------------------------------ MembershipState

def test_client_keys_and_orgs_follow_the_proposals_status() -> None:
    state: dict[str, ms.Proposal] = {}
    pending_a, approved_a, rejected_a = (Applicant("pendco", 6), Applicant("okco", 5),
                                         Applicant("noco", 4, sponsor="globex"))
    join(state, pending_a, pid("pending"))
    approved = join(state, approved_a, pid("approved"))
    rejected = join(state, rejected_a, pid("rejected"))
    approve_all(state, approved, (0, 1, 2))
    vote(reject(rejected), 0, state)
    vote(reject(rejected), 1, state)
    ms.judge_remove(RemoveRequest(3, "x"), "validator-0", pid("rm"), state,
                    {"validator-3": "hospital"}, context())
    members = ms.MembershipState(dict(state))
    assert members.client_keys() == {
        "pendco-client": pending_a.client.public_key,
        "validator-6": pending_a.validator.public_key,
        "okco-client": approved_a.client.public_key,
        "validator-5": approved_a.validator.public_key,
    }
    assert members.client_orgs() == {"okco-client": "okco", "validator-5": "okco"}
    assert [p.org for p in members.joined()] == ["okco"]
    assert ms.EMPTY.client_keys() == {} and ms.EMPTY.client_orgs() == {}


def test_joined_is_in_replica_id_order() -> None:
    state: dict[str, ms.Proposal] = {}
    for org, rid in (("zco", 4), ("yco", 9), ("xco", 6)):
        p = join(state, Applicant(org, rid), pid(org))
        state[p.proposal_id] = dataclasses.replace(p, status=ms.ProposalStatus.APPROVED)
    assert [p.replica_id for p in ms.MembershipState(state).joined()] == [4, 6, 9]


# ------------------------------------------------------------------------------ build_block

GOV = Governance(voters=voters_of(CONFIG0), quorum=CONFIG0.quorum, config=CONFIG0,
                 verifier=VERIFIER)


def signed(client_id: str, signer: Ed25519Signer, *items: bytes) -> m.Request:
    """A request whose payload is an envelope of `items` (one signature over all of them)."""
    nonce = next(_nonces)
    payload = encode_envelope(list(items))
    digest = m.request_digest(client_id, nonce, APP, payload)
    return m.Request(client_id, nonce, APP, payload,
                     signer.sign(m.request_signing_bytes(CHAIN, digest)))


def join_request(a: Applicant, **changes: Any) -> m.Request:
    return signed(a.client_id, a.validator, encode_governance_tx(a.request(**changes)))


def vote_request(voter: int, tx: MemberVote) -> m.Request:
    return signed(ms.validator_client_id(voter), VALIDATORS[voter], encode_governance_tx(tx))


def execute(*requests: m.Request, seq: int = 1, gov: Governance = GOV,
            members: ms.MembershipState = ms.EMPTY,
            executed: tuple[m.Request, ...] | None = None) -> Block:
    reqs = tuple(requests)
    header = m.PrePrepare(0, 0, seq, batch_root(reqs), len(reqs), T0)
    a = ev.Execute(seq=seq, view=0, epoch=0, digest=header.digest, requests=reqs,
                   executed=reqs if executed is None else executed,
                   pre_prepare=codec.sign_message(VALIDATORS[0], CHAIN, 0, header),
                   certificate=(), state_digest=bytes(32))
    return build_block(a, CHAIN, None, ORGS, gov=gov, members=members)


def proposal_id(request: m.Request, item: int = 0) -> str:
    """A join request's proposal id: the record id of its item."""
    return record_id(request.digest, item)


def _join_proposal(a: Applicant, request: m.Request, item: int = 0) -> ms.Proposal:
    """The proposal a validator derives from `a`'s committed join request."""
    tx = a.request()
    return ms.Proposal(proposal_id(request, item), "join", tx.replica_id, tx.org, tx.name,
                       tx.validator_key, tx.client_key, tx.encryption_key, tx.peer_address,
                       tx.client_address, sponsor=tx.sponsor, recorded_ms=T0)


def test_build_block_approves_a_join_in_one_batch() -> None:
    a = Applicant("newco", 4)
    jr = join_request(a)
    proposal = _join_proposal(a, jr)
    votes = [vote_request(v, approve(v, proposal)) for v in (0, 1, 2)]
    block = execute(jr, *votes)
    assert [(e.status, e.reason) for e in block.entries] == [
        (EntryStatus.RECORDED, ""), (EntryStatus.RECORDED, ""), (EntryStatus.RECORDED, ""),
        (EntryStatus.RECORDED, "membership: approved")]
    assert block.entries[0].action == a.request()
    assert block.entries[0].sender_org is None
    assert [e.sender_org for e in block.entries[1:]] == ["acme", "globex", "regulator"]
    assert block.entries[0].record_id == proposal.proposal_id
    assert all(isinstance(e.action, MemberVote) and e.action.proposal_id == proposal.proposal_id
               for e in block.entries[1:])
    assert changes_membership(block)
    # the committed votes alone assemble the reconfiguration the consensus layer accepts
    committed = replace(proposal, status=ms.ProposalStatus.APPROVED, votes=tuple(
        ms.Vote(0, int(e.client_id.removeprefix("validator-")), True, e.action.approval)
        for e in block.entries[1:] if isinstance(e.action, MemberVote)))
    pending = reconfigure(committed, CONFIG0, seq=block.header.height)
    assert pending is not None
    assert Member(4, a.validator.public_key) in pending.members


def test_build_block_votes_on_a_proposal_from_an_earlier_block() -> None:
    a = Applicant("newco", 4)
    jr = join_request(a)
    proposal = _join_proposal(a, jr)
    first = execute(jr)
    assert [(e.status, e.reason) for e in first.entries] == [(EntryStatus.RECORDED, "")]
    assert changes_membership(first)
    votes = [vote_request(v, approve(v, proposal)) for v in (1, 2, 3)]
    known = {proposal.proposal_id: proposal}
    second = execute(*votes, seq=2, members=ms.MembershipState(known))
    assert [e.reason for e in second.entries] == ["", "", "membership: approved"]
    assert known == {proposal.proposal_id: proposal}, "build_block changed its input"
    # without the proposals the votes refer to nothing
    lost = execute(*votes, seq=2)
    assert {(e.status, e.reason) for e in lost.entries} == {
        (EntryStatus.INVALID, f"no membership proposal {proposal.proposal_id}")}
    assert not changes_membership(lost)


def test_build_block_refuses_a_join_signed_by_someone_else() -> None:
    a = Applicant("newco", 4)
    forged = signed("alice", CLIENT_KEYS["alice"], encode_governance_tx(a.request()))
    block = execute(forged)
    (e,) = block.entries
    assert e.status == EntryStatus.INVALID
    assert e.reason.startswith("a join request is signed by the applicant's validator key")
    assert e.action == a.request()
    assert not changes_membership(block)


def test_build_block_refuses_a_malformed_governance_tx() -> None:
    """A malformed item is judged from the envelope alone: the whole envelope is invalid,
    naming the item, and none of its items becomes an entry."""
    a = Applicant("newco", 4)
    segs = _segments(a.request())
    assert segs[0] is not None
    bad = encode_segments([segs[0], b"bell \x07"])
    block = execute(signed(a.client_id, a.validator, encode_governance_tx(a.request()), bad))
    (env,) = block.envelopes
    assert (env.status, env.reason) == \
        (EnvelopeStatus.INVALID, "item 1: the statement contains a control character")
    assert block.entries == ()
    assert not changes_membership(block)


def test_each_join_request_of_an_envelope_is_a_proposal_under_its_record_id() -> None:
    """Two applicants' requests cannot share an envelope (one signer each), but one applicant
    may send a request and a second, refused one together: each item is judged on its own,
    under its own record id."""
    a = Applicant("newco", 4)
    jr = signed(a.client_id, a.validator, encode_governance_tx(a.request()),
                encode_governance_tx(a.request(replica_id=5)))
    block = execute(jr)
    assert [(e.record_id, e.status, e.reason) for e in block.entries] == [
        (proposal_id(jr, 0), EntryStatus.RECORDED, ""),
        (proposal_id(jr, 1), EntryStatus.INVALID,
         "organisation 'newco' is a member or has a join request open")]
    assert proposal_id(jr, 0) != proposal_id(jr, 1) != jr.digest.hex()


def test_a_block_without_governance_transactions_changes_no_membership() -> None:
    revoke = signed("alice", CLIENT_KEYS["alice"], encode_tx(Revoke(pid("rec"), "globex")))
    block = execute(revoke)
    assert [(e.status, e.reason) for e in block.entries] == \
        [(EntryStatus.INVALID, f"no record {pid('rec')}")]
    assert not changes_membership(block)
    assert not changes_membership(execute(seq=2))


def test_governance_without_a_config_refuses_membership_changes() -> None:
    a = Applicant("newco", 4)
    jr = join_request(a)
    proposal = _join_proposal(a, jr)
    reqs = [jr, vote_request(0, approve(0, proposal)),
            signed("validator-1", VALIDATORS[1], encode_governance_tx(RemoveRequest(3, "")))]
    for gov in (Governance(voters=voters_of(CONFIG0), quorum=3, config=None,
                           verifier=VERIFIER),
                Governance(voters=voters_of(CONFIG0), quorum=3, config=CONFIG0,
                           verifier=None),
                Governance()):
        block = execute(*reqs, gov=gov)
        assert {(e.status, e.reason) for e in block.entries} == {
            (EntryStatus.INVALID, "membership changes are not enabled on this ledger")}
        assert [type(e.action) for e in block.entries] == \
            [JoinRequest, MemberVote, RemoveRequest]
        assert not changes_membership(block)


def test_a_duplicate_vote_request_takes_no_effect() -> None:
    """PBFT ordered a replayed vote without executing it: its envelope is `duplicate`, has no
    entries and does not count toward the quorum."""
    a = Applicant("newco", 4)
    jr = join_request(a)
    proposal = _join_proposal(a, jr)
    votes = [vote_request(v, approve(v, proposal)) for v in (0, 1, 2)]
    block = execute(jr, *votes, executed=(jr, votes[0], votes[1]))
    assert [e.status for e in block.envelopes] == [EnvelopeStatus.EXECUTED] * 3 + [
        EnvelopeStatus.DUPLICATE]
    assert [(e.status, e.reason) for e in block.entries] == [
        (EntryStatus.RECORDED, ""), (EntryStatus.RECORDED, ""), (EntryStatus.RECORDED, "")]


def test_build_block_records_the_sponsor_and_the_block_time() -> None:
    a = Applicant("newco", 4, sponsor="regulator")
    jr = join_request(a)
    block = execute(jr)
    assert [(e.status, e.reason) for e in block.entries] == [(EntryStatus.RECORDED, "")]
    assert block.header.timestamp_ms == T0
    assert block.entries[0].action == a.request()
    members = ms.MembershipState({proposal_id(jr): _join_proposal(a, jr)})
    assert members.proposals[proposal_id(jr)].sponsor == "regulator"
    # the same request from an applicant nobody sponsored is an entry refused with the reason
    bare = execute(join_request(replace(a, sponsor=None)), seq=2)
    assert [(e.status, e.reason) for e in bare.entries] == [(EntryStatus.INVALID, MISSING)]
    assert not changes_membership(bare)


# ------------------------------------------------------- the same judgement at admission

def _pending(count: int, at_ms: int, sponsors: tuple[str, ...] = (
        "acme", "globex", "regulator", "hospital")) -> ms.MembershipState:
    state: dict[str, ms.Proposal] = {}
    _fill(state, count, sponsors, at_ms)
    return ms.MembershipState(state)


ADMISSION_CASES: dict[str, tuple[ms.MembershipState, dict[str, Any], str]] = {
    "sponsored": (ms.EMPTY, {}, ""),
    "unsponsored": (ms.EMPTY, {"sponsor": None}, MISSING),
    "forged sponsorship": (ms.EMPTY, {"forge": True}, NOT_SIGNED),
    "sponsor's quota used": (_pending(2, T0, ("acme",)), {},
                             f"{ms.SLOTS_TAKEN}'acme' already sponsors 2 join requests waiting "
                             "for votes; try later or ask another member"),
    "no free slot": (_pending(8, T0), {}, TOTAL_CAP),
    "slots freed by expiry": (_pending(8, T0 - TTL - 1), {}, ""),
    "slots held until the ttl": (_pending(8, T0 - TTL), {}, TOTAL_CAP),
    "a member's org": (ms.EMPTY, {"org": "globex"},
                       "organisation 'globex' is a member or has a join request open"),
    "a member's key": (ms.EMPTY, {"client": CLIENT_KEYS["bob"]}, REUSED_MEMBER_KEY),
}


@pytest.mark.parametrize("case", list(ADMISSION_CASES))
def test_admission_and_execution_judge_a_join_request_alike(case: str) -> None:
    """A validator judges a join request on arrival with execution's own rule, as of its head
    block's time (here the time of the block that then executes it): what it refuses there
    (INVALID_ARGUMENT, or FAILED_PRECONDITION for want of a slot) the block refuses with the
    same reason, and what it takes in the block records."""
    members, changes, reason = ADMISSION_CASES[case]
    forge = changes.pop("forge", False)
    a = Applicant(changes.pop("org", "newco"), 40, sponsor=changes.pop("sponsor", "acme"),
                  **changes)
    tx = a.request()
    if forge:
        tx = _signed_by(tx, SPONSORS["globex"])
    jr = signed(a.client_id, a.validator, encode_governance_tx(tx))
    rules = SubmissionRules(CHAIN, VERIFIER, ORGS, GOV, Rules(), membership=members,
                            block_ms=T0)
    refused = check_content(jr, rules)
    (entry,) = execute(jr, members=members).entries
    assert entry.reason == reason
    if not reason:
        assert refused is None and entry.status == EntryStatus.RECORDED
        return
    assert entry.status == EntryStatus.INVALID
    assert refused is not None and refused.message == f"item 0: {reason}"
    assert refused.code == (grpc.StatusCode.FAILED_PRECONDITION if ms.SLOTS_TAKEN in reason
                            else grpc.StatusCode.INVALID_ARGUMENT)


def test_the_join_ttl_is_a_genesis_policy_with_a_floor() -> None:
    """Execution reads the TTL from the genesis policy (`Genesis.rules`), so every validator
    expires the same requests; a TTL too short for members to vote is refused on load."""
    assert DataPolicy().join_pending_ttl_ms == ms.JOIN_PENDING_TTL_MS == 14 * 24 * 3600 * 1000
    genesis = Genesis(
        "ttl-chain", ProtocolParams(),
        tuple(ValidatorInfo(i, org, VALIDATORS[i].public_key, f"p{i}:1", f"c{i}:1")
              for i, org in VALIDATOR_ORGS.items()),
        tuple(OrgInfo(org, org, hashlib.sha256(org.encode()).digest())
              for org in sorted(GENESIS_ORGS)),
        tuple(ClientInfo(c, CLIENT_ORGS[c], k.public_key) for c, k in CLIENT_KEYS.items()),
        DataPolicy(join_pending_ttl_ms=3_600_000))
    assert Genesis.from_json(genesis.to_json()).rules().join_pending_ttl_ms == 3_600_000
    data = genesis.to_json()
    data["policy"]["join_pending_ttl_ms"] = 59_999
    with pytest.raises(ConfigError, match="join_pending_ttl_ms is at least 60000"):
        Genesis.from_json(data)


def test_a_batch_committed_in_different_views_makes_the_same_block() -> None:
    """A replica may assemble the commit certificate of a batch in view 0 while the others
    commit the same digest again in view 1 after a view change, each with the proposal header
    it holds. The block, and so every later prev_hash, must be the same at all of them: the
    view belongs to each replica's proof, not to the block (the chaos campaign found validators
    forked by exactly this when the view was in the header)."""
    reqs = (vote_request(1, MemberVote("0" * 64, False, 0, b"")),)
    first = m.PrePrepare(0, 0, 1, batch_root(reqs), 1, 1_700_000_000_000)
    again = dataclasses.replace(first, view=1)
    blocks = []
    for view, header, signer in ((0, first, 0), (1, again, 1)):
        commits = tuple(codec.sign_message(VALIDATORS[i], CHAIN, i,
                                           m.Commit(0, view, 1, first.digest))
                        for i in (0, 1, 2))
        a = ev.Execute(seq=1, view=view, epoch=0, digest=first.digest, requests=reqs,
                       executed=reqs,
                       pre_prepare=codec.sign_message(VALIDATORS[signer], CHAIN, signer,
                                                      header),
                       certificate=commits, state_digest=bytes(32))
        blocks.append(build_block(a, CHAIN, None, ORGS, gov=GOV))
    assert blocks[0].header == blocks[1].header
    assert blocks[0].header.hash() == blocks[1].header.hash()
