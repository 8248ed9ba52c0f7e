"""Issue 4 end to end on ledger format 2, on one real consortium (four validator processes,
gRPC over TLS, one PostgreSQL database each): reads need a member's signed ReadAuth and never
expose keys or ciphertext beyond the rules; patient records release keys only against a
committed Access, and the access log shows every attempt; grant, revoke and erase as their
rules say; and the auditor's tools (`consortium audit ...`, `consortium access ...`) find a byte
edited in one validator's database, verify and refuse bundles, check proofs and trace chains of
custody.

The CLI runs in process through click's CliRunner (exit codes and stdout/stderr as a user sees
them, without a Python start-up per command) except where a test says otherwise. Database
edits go straight to one validator's PostgreSQL database and are undone afterwards (the rows
of the affected heights are saved and written back), so the module shares one consortium.

What format 2 changed on purpose, compared with the format-1 tests: ciphertexts and wrapped
keys are no longer tables beside the signed request but the stored item itself, so an edit of
them is an envelope whose items no longer match the digest its client signed (`items`), and a
key given to a non-reader is a stored reader the chain never gave (`readers`); a certificate
is judged by the one certificate counter (a quorum, and nothing but valid commits besides),
not commit by commit; an edited block time is found by the block itself (`time`: it must be
max(previous, certified proposal time)); a served block carries its proposal header (a header,
no request in it), which must be signed by the primary.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.types.json import Jsonb

from apps.access import access as access_cli
from apps.audit import audit as audit_cli
from consortium import localnet, process
from consortium.api.v1 import ledger_pb2 as pb
from consortium.client import SubmitError
from consortium.client.core import VerifiedReceipt
from consortium.crypto import envelope
from consortium.crypto.signing import Ed25519Signer
from consortium.ledger.blocks import ACCESS_DENIED, BlockHeader
from consortium.ledger.items import ItemView, Withheld, digest_of
from consortium.ledger.reads import read_signing_bytes
from consortium.ledger.transactions import Grant
from consortium.localnet import read_seed
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.payload import split_segments
from tests.e2e.conftest import ADMIN_DSN, Cluster, wait_for
from tests.formats import fhir_samples

pytestmark = pytest.mark.e2e

VICTIM = 2
"""The validator whose database the tamper tests edit."""
OTHERS = [0, 1, 3]


# ------------------------------------------------------------------------------ CLI helpers

@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_line(self, *fragments: str) -> str:
        """The one stderr line of a failed command (never a traceback)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one error line, got:\n{self.stderr}"
        assert lines[0].startswith("consortium "), lines[0]
        for f in fragments:
            assert f in lines[0], f"{f!r} not in {lines[0]!r}"
        return lines[0]


def run(group: click.Group, *args: str) -> Ran:
    result = CliRunner().invoke(group, list(args))
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"{group.name} {' '.join(args)} raised:\n"
                             + "".join(traceback.format_exception(exc)))
    out = Ran(result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    return out


def audit(*args: str) -> Ran:
    return run(audit_cli, *args)


def access(*args: str) -> Ran:
    return run(access_cli, *args)


def consortium_bin() -> Path:
    for candidate in (Path(sys.prefix) / "bin" / "consortium",
                      Path(__file__).resolve().parents[2] / ".venv" / "bin" / "consortium"):
        if candidate.exists():
            return candidate
    pytest.skip("the consortium console script is not installed")


def cli_process(*args: str) -> Ran:
    """The real `consortium` command in a subprocess (real exit code, real stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONSORTIUM_DSN", "CONSORTIUM_HOME")}
    res = subprocess.run([str(consortium_bin()), *args], capture_output=True, text=True,
                         timeout=120, env=env, stdin=subprocess.DEVNULL, check=False)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
    return Ran(res.returncode, res.stdout, res.stderr)


def verify_all(cluster: Cluster) -> tuple[Ran, dict[str, Any]]:
    ran = audit("verify", "--dir", str(cluster.directory), "--all", "--json")
    return ran, ran.json()


def assert_verified(cluster: Cluster, *validators: int) -> None:
    """`audit verify` finds nothing (every validator, or the ones named)."""
    d = str(cluster.directory)
    for args in ([["--all"]] if not validators else
                 [["--validator", str(v)] for v in validators]):
        ran = audit("verify", "--dir", d, *args, "--json")
        data = ran.json()
        assert ran.code == 0 and data["ok"] is True, data["problems"]


# ----------------------------------------------------------------------------- DB helpers

def dsn(cluster: Cluster, i: int) -> str:
    return psycopg.conninfo.make_conninfo(ADMIN_DSN,
                                          dbname=process.database_name(cluster.genesis, i))


@contextlib.contextmanager
def database(cluster: Cluster, i: int) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn(cluster, i), autocommit=True, connect_timeout=5) as conn:
        yield conn


SAVED_TABLES = ("blocks", "envelopes", "entries", "record_subjects", "access_log")
"""Every table with rows per height that the tamper tests edit or delete."""


@contextlib.contextmanager
def tampered(cluster: Cluster, heights: Sequence[int]) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the victim's database; on exit every row of `heights` (blocks,
    envelopes, entries with their record columns, subjects, access log) is put back exactly
    as it was."""
    hs = sorted(set(heights))
    with database(cluster, VICTIM) as conn:
        saved: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
        for table in SAVED_TABLES:
            cur = conn.execute(sql.SQL("SELECT * FROM {} WHERE height = ANY(%s)")
                               .format(sql.Identifier(table)), (hs,))
            assert cur.description is not None
            saved[table] = ([d.name for d in cur.description], cur.fetchall())
        try:
            yield conn
        finally:
            with conn.transaction():
                for table in SAVED_TABLES:
                    conn.execute(sql.SQL("DELETE FROM {} WHERE height = ANY(%s)")
                                 .format(sql.Identifier(table)), (hs,))
                for table in SAVED_TABLES:
                    cols, rows = saved[table]
                    if not rows:
                        continue
                    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                        sql.SQL(", ").join(sql.Placeholder() * len(cols)))
                    with conn.cursor() as cur:
                        cur.executemany(stmt, [tuple(Jsonb(v) if isinstance(v, dict) else v
                                                     for v in row) for row in rows])


def flip_byte(data: bytes, at: int = 0) -> bytes:
    b = bytearray(data)
    b[at % len(b)] ^= 0x01
    return bytes(b)


def entry_at(conn: psycopg.Connection[Any], rid: str) -> tuple[int, int, int]:
    """(height, entry index, envelope index) of an entry, by its record id."""
    row = conn.execute("SELECT height, idx, envelope FROM entries WHERE record_id = %s",
                       (rid,)).fetchone()
    assert row is not None, rid
    return int(row[0]), int(row[1]), int(row[2])


def item_of(conn: psycopg.Connection[Any], rid: str) -> bytes:
    row = conn.execute("SELECT item FROM entries WHERE record_id = %s", (rid,)).fetchone()
    assert row is not None
    return bytes(row[0])


def all_bytes(conn: psycopg.Connection[Any]) -> list[tuple[str, bytes]]:
    """Every bytea value a validator stores where item bytes can be: entries, envelopes' raw
    payloads, blocks' proposal headers and certificates, the consensus log and the stable
    checkpoint."""
    out: list[tuple[str, bytes]] = []
    for h, i, item in conn.execute("SELECT height, idx, item FROM entries"):
        out.append((f"entries({h},{i}).item", bytes(item)))
    for h, i, raw in conn.execute("SELECT height, idx, raw FROM envelopes WHERE raw IS NOT NULL"):
        out.append((f"envelopes({h},{i}).raw", bytes(raw)))
    for h, pp in conn.execute("SELECT height, pre_prepare FROM blocks"):
        out.append((f"blocks({h}).pre_prepare", bytes(pp)))
    for i, kind, data in conn.execute("SELECT id, kind, data FROM consensus_log"):
        out.append((f"consensus_log({i},{kind})", bytes(data)))
    for snap, proof in conn.execute("SELECT snapshot, proof FROM checkpoint"):
        out.append(("checkpoint.snapshot", bytes(snap)))
        out.extend(("checkpoint.proof", bytes(p)) for p in proof)
    return out


# ---------------------------------------------------------------------------- chain helpers

def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def height_now(cluster: Cluster) -> int:
    return cluster.wait_converged(30.0)


def signed_auth(cluster: Cluster, method: str, argument: str, *, org: str = "org0",
                timestamp_ms: int | None = None, client_id: str | None = None,
                key: Ed25519Signer | None = None) -> pb.ReadAuth:
    """A ReadAuth with every part under the test's control."""
    signer = key or Ed25519Signer(read_seed(cluster.directory / "orgs" / org / "client.key"))
    cid = client_id or f"{org}-client"
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    sig = signer.sign(read_signing_bytes(cluster.genesis.chain_id_bytes, cid, ts, method,
                                         argument))
    return pb.ReadAuth(client_id=cid, timestamp_ms=ts, signature=sig)


def validator_key(cluster: Cluster, replica_id: int) -> Ed25519Signer:
    return Ed25519Signer(read_seed(cluster.vdir(replica_id) / "signing.key"))


def commit(cluster: Cluster, signer_id: int, header: BlockHeader, *,
           key: Ed25519Signer | None = None, view: int = 0) -> bytes:
    """COMMIT(epoch, view, height, proposal digest) of `header` signed as validator
    `signer_id` (with its key from the consortium directory, or `key`); a certificate is
    2f+1 of one view, whichever view it is."""
    msg = codec.sign_message(key or validator_key(cluster, signer_id),
                             cluster.genesis.chain_id_bytes, signer_id,
                             m.Commit(header.epoch, view, header.height, header.digest))
    return msg.wire


def submit_together(cluster: Cluster, count: int) -> list[VerifiedReceipt]:
    """`count` provenance records from all four organisations released at once (so that some
    share a block)."""
    orgs = [f"org{i % 4}" for i in range(count)]
    barrier = threading.Barrier(count)
    out: list[VerifiedReceipt | BaseException] = [RuntimeError("not run")] * count

    def one(k: int) -> None:
        barrier.wait()
        try:
            out[k] = cluster.client(orgs[k]).submit_provenance(
                unique("lot-multi"), "inspected", location="Gdansk")
        except BaseException as exc:
            out[k] = exc
    threads = [threading.Thread(target=one, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    receipts = []
    for r in out:
        if isinstance(r, BaseException):
            raise r
        receipts.append(r)
    return receipts


def single_item_envelopes(receipts: Sequence[VerifiedReceipt]) -> list[VerifiedReceipt]:
    """Receipts of records alone in their envelope that share a block with another such one
    (distinct requests of one block, as many as found at the best height)."""
    by_height: dict[int, dict[int, VerifiedReceipt]] = {}
    for r in receipts:
        if r.receipt.item_proof.size == 1:
            by_height.setdefault(r.height, {})[r.receipt.request_proof.index] = r
    best = max(by_height.values(), key=len, default={})
    return list(best.values())


# --------------------------------------------------------------------------------- fixture

@dataclass
class Base:
    """Records every tamper test can use, committed before any test edits anything."""

    a: VerifiedReceipt
    """org0 provenance record, read by org1."""
    b: VerifiedReceipt
    """org1 provenance record, read by org2."""
    c: VerifiedReceipt
    """org2 patient record, read by org3."""
    d: VerifiedReceipt
    e: VerifiedReceipt
    pair: list[VerifiedReceipt]
    """Two records of org3 in one envelope."""
    invalid_revoke: VerifiedReceipt
    """org1 revoking a reader of org0's record: invalid."""
    denied_access: VerifiedReceipt
    """org0 reading org2's patient record: recorded, refused."""
    multi: list[VerifiedReceipt]
    """Records alone in their envelopes, sharing one block."""

    @property
    def heights(self) -> list[int]:
        return sorted({r.height for r in (self.a, self.b, self.c, self.d, self.e, *self.pair,
                                          self.invalid_revoke, self.denied_access,
                                          *self.multi)})


@pytest.fixture(scope="module")
def base(cluster: Cluster) -> Base:
    c0, c1, c2, c3 = (cluster.client(f"org{i}") for i in range(4))
    a = c0.submit_provenance(unique("lot-a"), "manufactured", location="Plant A", quantity=10,
                             readers=["org1"], details={"batch": "A-1"})
    b = c1.submit_provenance(unique("lot-b"), "shipped", location="Rotterdam",
                             custodian_from="org1", custodian_to="org2", readers=["org2"])
    base = unique("patient-base")
    c = c2.submit_patient(base, "lab-result", fhir_samples.about(base, fhir_samples.glucose()),
                          readers=["org3"])
    d = c3.submit_provenance(unique("lot-d"), "inspected", location="Lyon")
    e = c0.submit_provenance(unique("lot-e"), "received", location="Oslo")
    pair = c3.submit_items([c3.aio.provenance_item(unique("lot-pair"), "inspected",
                                                   location="Turin"),
                            c3.aio.provenance_item(unique("lot-pair"), "recalled",
                                                   location="Turin")])
    assert [r.receipt.item_proof.size for r in pair] == [2, 2]
    invalid_revoke = c1.revoke(a.record_id, "org1")
    assert invalid_revoke.status == "invalid"
    denied_access = c0.access(c.record_id, "curiosity")
    assert (denied_access.status, denied_access.reason) == ("recorded", ACCESS_DENIED)
    for _ in range(6):
        multi = single_item_envelopes(submit_together(cluster, 8))
        if len(multi) >= 2:
            break
    else:
        pytest.fail("no two lone records of eight concurrent submissions shared a block, "
                    "six times")
    # Blocks after these, so that none of the records above is in the head block.
    c3.submit_provenance(unique("lot-pad"), "inspected", location="Lyon")
    cluster.wait_converged(30.0)
    return Base(a, b, c, d, e, pair, invalid_revoke, denied_access, multi)


# =============================================================================================
# 2. Reader access control
# =============================================================================================

READS: dict[str, Callable[[Cluster, Base, pb.ReadAuth | None], Any]] = {
    "GetRecord": lambda c, b, auth: c.ledger(1).GetRecord(
        pb.GetRecordRequest(record_id=b.a.record_id, auth=auth), timeout=10),
    "GetBlock": lambda c, b, auth: c.ledger(1).GetBlock(
        pb.GetBlockRequest(height=b.a.height, auth=auth), timeout=10),
    "StreamBlocks": lambda c, b, auth: list(c.ledger(1).StreamBlocks(
        pb.StreamBlocksRequest(from_height=1, to_height=2, auth=auth), timeout=10)),
    "GetReceipt": lambda c, b, auth: c.ledger(1).GetReceipt(
        pb.GetRecordRequest(record_id=b.a.record_id, auth=auth), timeout=10),
    "ListSubject": lambda c, b, auth: c.ledger(1).ListSubject(
        pb.ListSubjectRequest(kind="provenance", subject_id=c_subject(c, b), auth=auth),
        timeout=10),
    "ListScreening": lambda c, b, auth: c.ledger(1).ListScreening(
        pb.ListScreeningRequest(screening="accepted", auth=auth), timeout=10),
    "ListMembers": lambda c, b, auth: c.ledger(1).ListMembers(
        pb.ListMembersRequest(auth=auth), timeout=10),
}


def c_subject(cluster: Cluster, base: Base) -> str:
    return cluster.client("org0").get(base.a.record_id).subject_id


def read_argument(method: str, cluster: Cluster, base: Base) -> str:
    """What the caller signs for each read (see LedgerService)."""
    return {"GetRecord": f"{base.a.record_id}/", "GetBlock": str(base.a.height),
            "StreamBlocks": "1-2", "GetReceipt": base.a.record_id,
            "ListSubject": f"provenance/{c_subject(cluster, base)}",
            "ListScreening": "accepted/0", "ListMembers": ""}[method]


@pytest.mark.parametrize("method", list(READS))
def test_reads_without_a_valid_read_auth_are_unauthenticated(cluster: Cluster, base: Base,
                                                             method: str) -> None:
    """Every read RPC: no ReadAuth, an unknown client, a signature by another key, a signature
    over another argument, a timestamp beyond the allowed skew (past or future) - all
    UNAUTHENTICATED; the same call with a proper ReadAuth answers."""
    call = READS[method]
    arg = read_argument(method, cluster, base)
    skew = cluster.genesis.policy.read_clock_skew_ms
    now = int(time.time() * 1000)
    outsider = Ed25519Signer.generate()
    bad: dict[str, pb.ReadAuth | None] = {
        "none": None,
        "empty": pb.ReadAuth(),
        "unknown client": signed_auth(cluster, method, arg, client_id="mallory-client",
                                      key=outsider),
        "another key": signed_auth(cluster, method, arg, key=outsider),
        "another member's key": signed_auth(cluster, method, arg, client_id="org0-client",
                                            key=Ed25519Signer(read_seed(
                                                cluster.directory / "orgs" / "org1" /
                                                "client.key"))),
        "another argument": signed_auth(cluster, method, arg + "0"),
        "another method": signed_auth(cluster, "GetStatus", arg),
        "stale": signed_auth(cluster, method, arg, timestamp_ms=now - skew - 60_000),
        "future": signed_auth(cluster, method, arg, timestamp_ms=now + skew + 60_000),
        "truncated signature": pb.ReadAuth(client_id="org0-client", timestamp_ms=now,
                                           signature=signed_auth(cluster, method, arg)
                                           .signature[:63]),
    }
    for name, auth in bad.items():
        with pytest.raises(grpc.RpcError) as info:
            call(cluster, base, auth)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, \
            f"{method} with {name}: {info.value.code()} {info.value.details()}"
    assert call(cluster, base, signed_auth(cluster, method, arg))


def test_a_reader_decrypts_and_a_non_reader_cannot(cluster: Cluster, base: Base) -> None:
    """org0's record is read by org1: both decrypt; org2 and org3 get PERMISSION_DENIED from the
    SDK, and GetRecord gives them no key, with key_withheld saying why."""
    rid = base.a.record_id
    for org in ("org0", "org1"):
        view = cluster.client(org).get(rid, decrypt=True)
        assert view.payload == {"batch": "A-1"}, org
        assert view.readers == (org,)
    for org in ("org2", "org3"):
        with pytest.raises(SubmitError) as info:
            cluster.client(org).get(rid, decrypt=True)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert f"{org} is not a reader" in str(info.value)
        reply = cluster.ledger(3).GetRecord(pb.GetRecordRequest(
            record_id=rid, auth=cluster.auth("GetRecord", f"{rid}/", org)), timeout=10)
        assert list(reply.wrapped_keys) == []
        assert reply.key_withheld == f"{org} is not a reader of this record"


def test_get_record_returns_only_the_callers_own_key(cluster: Cluster, base: Base) -> None:
    """Each reader receives exactly its own wrapped key; the reply (with its receipt and view)
    carries no other reader's key bytes, and the view shows the ciphertext but no key
    segment."""
    rid = base.a.record_id
    replies = {org: cluster.ledger(i).GetRecord(pb.GetRecordRequest(
        record_id=rid, auth=cluster.auth("GetRecord", f"{rid}/", org)), timeout=10)
        for i, org in enumerate(("org0", "org1"))}
    keys = {}
    for org, reply in replies.items():
        assert [w.org for w in reply.wrapped_keys] == [org]
        assert reply.key_withheld == "" and reply.record_id == rid
        keys[org] = reply.wrapped_keys[0].wrapped_key
        view = ItemView.decode(reply.item_view)
        assert isinstance(view.segments[1], bytes) and view.segments[1] == reply.ciphertext
        assert all(isinstance(s, Withheld) for s in view.segments[2:])
        assert len(view.segments) == 4  # header, ciphertext, org0's and org1's keys
        assert view.digest == digest_of(base.a.receipt.item)
    assert keys["org0"] != keys["org1"]
    assert keys["org1"] not in replies["org0"].SerializeToString()
    assert keys["org0"] not in replies["org1"].SerializeToString()


def test_blocks_served_to_members_hold_no_ciphertext_and_no_key(cluster: Cluster,
                                                                base: Base) -> None:
    """GetBlock and StreamBlocks (plain and audit) of the whole chain: every item is a view
    showing only its public header, the proposal header carries no request, and none of the
    ciphertexts or wrapped keys a reader can obtain appears anywhere in the served bytes."""
    secrets = []
    for r, org in ((base.a, "org1"), (base.b, "org2"), (base.a, "org0")):
        reply, _ = cluster.client(org).get_record_reply(r.record_id)
        secrets += [reply.ciphertext, *(w.wrapped_key for w in reply.wrapped_keys)]
    assert all(len(s) >= 32 for s in secrets)
    head = height_now(cluster)
    served = [cluster.client("org3").get_block(base.a.height, address=cluster.client_address(0)),
              cluster.client("org3").get_block(base.a.height, audit=True)]
    for audit_mode in (False, True):
        served += list(cluster.client("org3").stream_blocks(1, head, audit=audit_mode,
                                                            address=cluster.client_address(2)))
    assert len(served) == 2 + 2 * head
    for blk in served:
        header = BlockHeader.decode(blk.header)
        pp = codec.decode_signed(blk.pre_prepare, cluster.genesis.chain_id_bytes)
        assert isinstance(pp.body, m.PrePrepare) and pp.batch is None, header.height
        assert sorted(blk.views) == list(range(len(blk.items))), header.height
        for i, data in enumerate(blk.items):
            view = ItemView.decode(data)
            assert view.raw is None and isinstance(view.segments[0], bytes)
            assert all(isinstance(s, Withheld) for s in view.segments[1:]), (header.height, i)
        raw = blk.SerializeToString()
        for s in secrets:
            assert s not in raw, f"block {header.height} carries a ciphertext or key"


def test_receipts_and_subject_listings_hold_no_key(cluster: Cluster, base: Base) -> None:
    """GetReceipt and ListSubject show the public header only (their views withhold the
    ciphertext and every key)."""
    rid = base.c.record_id
    reply, _ = cluster.client("org3").get_record_reply(rid)
    reply2, _ = cluster.client("org2").get_record_reply(rid)
    secrets = [reply.ciphertext, *(w.wrapped_key for w in reply.wrapped_keys),
               *(w.wrapped_key for w in reply2.wrapped_keys)]
    receipt = cluster.ledger(0).GetReceipt(pb.GetRecordRequest(
        record_id=rid, auth=cluster.auth("GetReceipt", rid, "org1")), timeout=10)
    listing, _ = cluster.client("org1").list_subject("patient", reply.subject_id)
    assert listing[0].receipt.record_id == rid
    for msg in (receipt, *listing):
        raw = msg.SerializeToString()
        assert all(s not in raw for s in secrets)
    view = ItemView.decode(receipt.item_view)
    assert all(isinstance(s, Withheld) for s in view.segments[1:])


# =============================================================================================
# 3. Patient records: keys only against a committed Access; the access log
# =============================================================================================

def get_record(cluster: Cluster, rid: str, org: str, access_id: str = "",
               validator: int = 0) -> pb.RecordReply:
    reply: pb.RecordReply = cluster.ledger(validator).GetRecord(pb.GetRecordRequest(
        record_id=rid, access_id=access_id,
        auth=cluster.auth("GetRecord", f"{rid}/{access_id}", org)), timeout=10)
    return reply


def test_a_patient_record_key_is_released_only_against_the_callers_access(
        cluster: Cluster, base: Base) -> None:
    """org0's patient record read by org1: no key without an access id, with another
    organisation's access, with an access to another record, or with an id that is no
    access; the key with org1's own committed Access, on every validator."""
    patient = unique("patient")
    prescription = fhir_samples.about(patient, fhir_samples.prescription())
    rec = cluster.client("org0").submit_patient(patient, "prescription", prescription,
                                                readers=["org1"])
    rid = rec.record_id
    assert "committed Access" in get_record(cluster, rid, "org1").key_withheld
    assert not get_record(cluster, rid, "org1").wrapped_keys

    own = cluster.client("org1").access(rid, "treatment")
    assert (own.status, own.reason) == ("recorded", "")
    cluster.wait_converged(30.0, min_height=own.height)
    for i in cluster.ids:
        reply = get_record(cluster, rid, "org1", own.record_id, validator=i)
        assert [w.org for w in reply.wrapped_keys] == ["org1"] and not reply.key_withheld
    other_org = get_record(cluster, rid, "org0", own.record_id)
    assert not other_org.wrapped_keys
    assert other_org.key_withheld == "the access was made by another organisation"
    elsewhere = cluster.client("org3").access(base.c.record_id, "care")  # org3 reads base.c
    assert elsewhere.reason == ""
    for wrong in (elsewhere.record_id, rid, base.a.record_id, "ab" * 32):
        reply = get_record(cluster, rid, "org1", wrong)
        assert not reply.wrapped_keys, wrong
        assert reply.key_withheld == f"no committed access {wrong} to this record"
    view = cluster.client("org1").get(rid, decrypt=True, purpose="treatment")
    assert view.payload == json.loads(prescription) and view.access_id


def test_the_access_log_lists_every_read_with_org_and_purpose(cluster: Cluster) -> None:
    """Two reads by org1 (a reader), one refused attempt by org2 (not a reader, which gets
    PERMISSION_DENIED and no key even with its own access id), and the submitter's own read:
    `audit patient --format json` lists each with org, purpose and whether it was granted,
    every entry proven."""
    patient = unique("patient-log")
    rec = cluster.client("org3").submit_patient(
        patient, "encounter", fhir_samples.about(patient, fhir_samples.encounter()),
        readers=["org1"])
    rid = rec.record_id
    assert cluster.client("org1").get(rid, decrypt=True, purpose="treatment").payload
    assert cluster.client("org1").get(rid, decrypt=True, purpose="second opinion").payload
    with pytest.raises(SubmitError) as info:
        cluster.client("org2").get(rid, decrypt=True, purpose="curiosity")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "org2 is not a reader of this record" in str(info.value)
    refused = cluster.client("org2").access(rid, "insurance")
    assert (refused.status, refused.reason) == ("recorded", ACCESS_DENIED)
    reply = get_record(cluster, rid, "org2", refused.record_id)
    assert not reply.wrapped_keys and reply.key_withheld == "org2 is not a reader of this record"
    assert cluster.client("org3").get(rid, decrypt=True, purpose="own copy").payload
    cluster.wait_converged(30.0)

    ran = audit("patient", "--dir", str(cluster.directory), "--patient", patient,
                "--as", "org2", "--format", "json")
    assert ran.code == 0, ran.stderr
    data = ran.json()
    assert data["patient"] == patient and data["malformed"] == []
    [record] = data["records"]
    assert record["record_id"] == rid and record["submitter_org"] == "org3"
    assert record["proof"] == "verified" and record["erased"] is None
    log = [(a["by_org"], a["purpose"], a["granted"]) for a in record["access_log"]]
    assert log == [("org1", "treatment", True), ("org1", "second opinion", True),
                   ("org2", "curiosity", False), ("org2", "insurance", False),
                   ("org3", "own copy", True)]
    heights = [a["height"] for a in record["access_log"]]
    assert heights == sorted(heights) and heights[0] > record["height"]
    assert all(a["proof"] == "verified" for a in record["access_log"])
    table = audit("patient", "--dir", str(cluster.directory), "--patient", patient)
    assert table.code == 0
    assert "read by org2" in table.stdout and "(refused: not a reader)" in table.stdout
    assert audit("patient", "--dir", str(cluster.directory), "--patient",
                 unique("nobody")).error_line("no records for patient")


# =============================================================================================
# 4. Grant and revoke
# =============================================================================================

def stored_readers(cluster: Cluster, i: int, rid: str) -> list[str]:
    with database(cluster, i) as conn:
        row = conn.execute("SELECT readers FROM entries WHERE record_id = %s",
                           (rid,)).fetchone()
    assert row is not None
    return sorted(row[0])


def test_grant_then_decrypt_revoke_then_refused(cluster: Cluster) -> None:
    """org1 (a reader) grants org2 with `consortium access grant`: org2 decrypts. org1 may not
    revoke (only the submitter): recorded invalid with the reason, exit 1. org0 (the submitter)
    revokes org2: org2 can no longer decrypt and no validator counts it as a reader."""
    d = str(cluster.directory)
    rec = cluster.client("org0").submit_provenance(unique("lot-grant"), "shipped",
                                                   location="Hamburg", readers=["org1"],
                                                   details={"seal": 42})
    rid = rec.record_id
    with pytest.raises(SubmitError) as info:
        cluster.client("org2").get(rid, decrypt=True)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED

    granted = access("grant", "--dir", d, rid, "--to", "org2", "--as", "org1", "--json")
    assert granted.code == 0, granted.stderr
    assert granted.json()["status"] == "recorded" and granted.json()["reason"] == ""
    assert cluster.client("org2").get(rid, decrypt=True).payload == {"seal": 42}

    not_submitter = access("revoke", "--dir", d, rid, "--org", "org2", "--as", "org1", "--json")
    assert not_submitter.code == 1
    assert not_submitter.json()["status"] == "invalid"
    assert not_submitter.json()["reason"] == "only the submitter's organisation revokes readers"
    assert cluster.client("org2").get(rid, decrypt=True).payload == {"seal": 42}

    revoked = access("revoke", "--dir", d, rid, "--org", "org2", "--as", "org0")
    assert revoked.code == 0 and revoked.stdout.startswith("recorded at height"), revoked.stdout
    height = int(revoked.stdout.split()[-1])
    cluster.wait_converged(30.0, min_height=height)
    with pytest.raises(SubmitError) as info:
        cluster.client("org2").get(rid, decrypt=True)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    for i in cluster.ids:
        assert stored_readers(cluster, i, rid) == ["org0", "org1"], f"validator {i}"
    assert cluster.client("org1").get(rid, decrypt=True).payload == {"seal": 42}
    again = access("revoke", "--dir", d, rid, "--org", "org2", "--as", "org0", "--json")
    assert again.code == 1 and again.json()["reason"] == "org2 does not read the record"


def test_a_grant_by_a_non_reader_is_invalid(cluster: Cluster) -> None:
    """org3 reads nothing of org0's record: the CLI cannot even unwrap a key (exit 1, one
    line); a grant org3 signs anyway (with a key of its own making) is ordered and recorded
    invalid with the reason, and gives org3 nothing."""
    d = str(cluster.directory)
    rec = cluster.client("org0").submit_provenance(unique("lot-nogrant"), "inspected",
                                                   location="Turin", readers=["org1"])
    rid = rec.record_id
    cli = access("grant", "--dir", d, rid, "--to", "org3", "--as", "org3")
    assert cli.code == 1
    cli.error_line("org3 is not a reader")
    forged_key = envelope.wrap_key(os.urandom(32), cluster.genesis.org("org3").encryption_key)
    org3 = cluster.client("org3")
    [receipt] = org3.submit_items([org3.core.tx_item(Grant(rid, "org3", forged_key))])
    assert receipt.status == "invalid"
    assert receipt.reason == "org3 is neither the submitter nor a reader of the record"
    with pytest.raises(SubmitError) as info:
        org3.get(rid, decrypt=True)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    twice = access("grant", "--dir", d, rid, "--to", "org1", "--as", "org0", "--json")
    assert twice.code == 1 and twice.json()["reason"] == "org1 already reads the record"
    unknown = access("grant", "--dir", d, rid, "--to", "org9", "--as", "org0")
    assert unknown.code != 0
    unknown.error_line("org9")
    assert_verified(cluster, 0)


# =============================================================================================
# 7. Bad input to `audit record` and `audit check-proof`
# =============================================================================================

def test_audit_record_of_an_unknown_or_malformed_id_is_bad_input(cluster: Cluster) -> None:
    d = str(cluster.directory)
    unknown = "cd" * 32
    audit("record", "--dir", d, unknown).error_line(f"no record {unknown}")
    assert audit("record", "--dir", d, unknown).code == 2
    for bad in ("xyz", "AB" * 32, "ab" * 33, "g" * 64):
        ran = audit("record", "--dir", d, bad)
        assert ran.code == 2, (bad, ran.stderr)
        ran.error_line("64 lowercase hex digits")
    process_run = cli_process("audit", "record", "--dir", d, unknown)
    assert process_run.code == 2
    process_run.error_line("no record")


def test_check_proof_accepts_a_real_proof_and_refuses_edited_or_garbage_ones(
        cluster: Cluster, base: Base, tmp_path: Path) -> None:
    """`audit record --proof --json` output checks offline (exit 0), for a record alone in its
    envelope and for one of two in an envelope; the same proof with its certificate cut to f+1
    commits, one commit's signature altered, one commit thrice, another record's id, or the
    item proof of the other item of its envelope does not (exit 1); a file that is not a proof
    is bad input (exit 2, one line)."""
    d = str(cluster.directory)
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes((cluster.directory / "genesis.json").read_bytes())
    docs = {}
    for name, r, org in (("b", base.b, "org2"), ("pair0", base.pair[0], "org3"),
                         ("pair1", base.pair[1], "org0")):
        ran = audit("record", "--dir", d, r.record_id, "--proof", "--json", "--as", org)
        assert ran.code == 0, ran.stderr
        doc = ran.json()
        assert doc["verified"] is True and len(doc["receipt"]["certificate"]) >= 3
        docs[name] = doc
        good = tmp_path / f"{name}.json"
        good.write_text(json.dumps(doc))
        ok = audit("check-proof", str(good), "--genesis", str(genesis), "--json")
        assert ok.code == 0 and ok.json()["ok"] is True, ok.stdout
        assert ok.json()["record_id"] == r.record_id
    doc = docs["b"]

    def edited(name: str, change: Callable[[dict[str, Any]], None],
               source: dict[str, Any] = doc) -> Path:
        copy = json.loads(json.dumps(source))
        change(copy["receipt"])
        path = tmp_path / name
        path.write_text(json.dumps(copy))
        return path

    def cut(rj: dict[str, Any]) -> None:
        rj["certificate"] = rj["certificate"][:2]

    def resign(rj: dict[str, Any]) -> None:
        rj["certificate"] = rj["certificate"][:3]
        raw = bytes.fromhex(rj["certificate"][0])
        rj["certificate"][0] = flip_byte(raw, len(raw) - 1).hex()

    def duplicate(rj: dict[str, Any]) -> None:
        rj["certificate"] = [rj["certificate"][0]] * 3

    def other_record(rj: dict[str, Any]) -> None:
        rj["record_id"] = base.a.record_id

    def other_item_proof(rj: dict[str, Any]) -> None:
        rj["item_proof"] = docs["pair0"]["receipt"]["item_proof"]

    for name, change, source in (("cut", cut, doc), ("resigned", resign, doc),
                                 ("duplicate", duplicate, doc),
                                 ("other-record", other_record, doc),
                                 ("other-item-proof", other_item_proof, docs["pair1"])):
        bad = audit("check-proof", str(edited(f"{name}.json", change, source)), "--genesis",
                    str(genesis), "--json")
        assert bad.code == 1, (name, bad.stdout, bad.stderr)
        assert bad.json()["ok"] is False and bad.json()["problem"], name
    text = audit("check-proof", str(edited("cut2.json", cut)), "--genesis", str(genesis))
    assert text.code == 1 and "DOES NOT VERIFY" in text.stdout

    garbage = {"binary.json": os.urandom(300), "text.json": b"this is not a proof\n",
               "list.json": b"[1, 2, 3]\n", "empty.json": b"",
               "fields.json": json.dumps({"receipt": {"record_id": "x"}}).encode(),
               "hex.json": json.dumps({**doc["receipt"], "block_header": "zz"}).encode()}
    for name, data in garbage.items():
        path = tmp_path / name
        path.write_bytes(data)
        ran = audit("check-proof", str(path), "--genesis", str(genesis))
        assert ran.code == 2, (name, ran.stdout, ran.stderr)
        ran.error_line("not a proof file")
    audit("check-proof", str(tmp_path / "absent.json"), "--genesis",
          str(genesis)).error_line("cannot read")
    real = cli_process("audit", "check-proof", str(tmp_path / "binary.json"), "--genesis",
                       str(genesis))
    assert real.code == 2
    real.error_line("not a proof file")


# =============================================================================================
# 8. Chain of custody
# =============================================================================================

def test_trace_lists_a_clean_chain_of_custody_and_exits_zero(cluster: Cluster) -> None:
    product = unique("lot-clean")
    events = [("org0", "manufactured", dict(location="Plant A", custodian_to="org0",
                                           quantity=5)),
              ("org0", "shipped", dict(location="Plant A", custodian_from="org0",
                                       custodian_to="org1", quantity=5)),
              ("org1", "received", dict(location="Warehouse B", custodian_from="org0",
                                        custodian_to="org1", quantity=5))]
    receipts = [cluster.client(org).submit_provenance(product, ev, **kw)
                for org, ev, kw in events]
    cluster.wait_converged(30.0, min_height=receipts[-1].height)
    ran = audit("trace", "--dir", str(cluster.directory), "--product", product, "--format",
                "json")
    assert ran.code == 0, ran.stdout + ran.stderr
    data = ran.json()
    assert data["ok"] is True and data["product"] == product and data["malformed"] == []
    assert [e["event"] for e in data["events"]] == ["manufactured", "shipped", "received"]
    assert [e["record_id"] for e in data["events"]] == [r.record_id for r in receipts]
    assert all(e["proof"] == "verified" and e["flags"] == [] for e in data["events"])


def test_trace_flags_an_inconsistent_chain_of_custody(cluster: Cluster) -> None:
    """Received before it was shipped, a quantity that grows, an event after the lot was
    destroyed: every event listed in ledger order with a verified proof, each inconsistency
    flagged on its event, exit 1, in every format."""
    product = unique("lot-bad")
    events = [("org0", "manufactured", dict(location="Plant A", custodian_to="org0",
                                           quantity=10)),
              ("org1", "received", dict(location="Warehouse B", custodian_from="org0",
                                        custodian_to="org1", quantity=10)),
              ("org0", "shipped", dict(location="Plant A", custodian_from="org0",
                                       custodian_to="org1", quantity=12)),
              ("org1", "destroyed", dict(location="Warehouse B")),
              ("org2", "inspected", dict(location="Warehouse B"))]
    receipts = [cluster.client(org).submit_provenance(product, ev, **kw)
                for org, ev, kw in events]
    cluster.wait_converged(30.0, min_height=receipts[-1].height)
    d = str(cluster.directory)
    ran = audit("trace", "--dir", d, "--product", product, "--format", "json")
    assert ran.code == 1, ran.stdout + ran.stderr
    data = ran.json()
    assert data["ok"] is False
    rows = data["events"]
    assert [r["event"] for r in rows] == [e[1] for e in events]
    assert [r["record_id"] for r in rows] == [r.record_id for r in receipts]
    order = [(r["height"], r["request"], r["item"]) for r in rows]
    assert order == sorted(order)
    assert all(r["proof"] == "verified" for r in rows)
    flags = [" | ".join(r["flags"]) for r in rows]
    assert flags[0] == ""
    assert "custody.received-without-shipment" in flags[1]
    assert "quantity.grew" in flags[2]
    assert "lot.destroyed" in flags[4]
    assert rows[2]["quantity"] == "12" and rows[2]["from"] == "org0" and rows[2]["to"] == "org1"

    csv_run = audit("trace", "--dir", d, "--product", product, "--format", "csv")
    assert csv_run.code == 1
    lines = csv_run.stdout.strip().splitlines()
    assert lines[0].startswith("height,request,item,time,event")
    assert len(lines) == 6 and "quantity.grew" in lines[3] and "lot.destroyed" in lines[5]
    table = audit("trace", "--dir", d, "--product", product)
    assert table.code == 1
    assert f"chain of custody of {product} (5 events)" in table.stdout
    assert table.stdout.count("[verified]") == 5
    assert "! lot.destroyed" in table.stdout
    audit("trace", "--dir", d, "--product", unique("lot-none")).error_line(
        "no provenance records")


# =============================================================================================
# 1. Tamper detection: one byte edited in one validator's database
# =============================================================================================

def _header(conn: psycopg.Connection[Any], height: int) -> BlockHeader:
    row = conn.execute("SELECT header FROM blocks WHERE height = %s", (height,)).fetchone()
    assert row is not None
    return BlockHeader.decode(bytes(row[0]))


def _set_certificate(cluster: Cluster, conn: psycopg.Connection[Any], height: int,
                     make: Callable[[BlockHeader], list[bytes]]) -> None:
    conn.execute("UPDATE blocks SET certificate = %s::bytea[] WHERE height = %s",
                 (make(_header(conn, height)), height))


def _swap_envelopes(conn: psycopg.Connection[Any], one: VerifiedReceipt,
                    two: VerifiedReceipt) -> None:
    """Swap two single-item envelopes (what the client signed) and their items, leaving
    positions alone: each block stays internally consistent but holds other requests."""
    pos = [(r.height, r.receipt.request_proof.index) for r in (one, two)]
    conn.execute(
        "UPDATE envelopes e SET client_id = o.client_id, nonce = o.nonce, kind = o.kind, "
        "signature = o.signature, payload_digest = o.payload_digest FROM envelopes o "
        "WHERE (e.height, e.idx, o.height, o.idx) IN ((%s, %s, %s, %s), (%s, %s, %s, %s))",
        (*pos[0], *pos[1], *pos[1], *pos[0]))
    entries = [entry_at(conn, r.record_id)[:2] for r in (one, two)]
    conn.execute(
        "UPDATE entries e SET item = o.item, redacted = o.redacted FROM entries o "
        "WHERE (e.height, e.idx, o.height, o.idx) IN ((%s, %s, %s, %s), (%s, %s, %s, %s))",
        (*entries[0], *entries[1], *entries[1], *entries[0]))


Expectation = list[tuple[int, str, str]]
"""(height, problem kind, fragment of the detail) that `audit verify` must report."""
ITEMS = "its items do not match its digest"


def t_ciphertext(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """One byte of a record's ciphertext, inside its stored item."""
    item = item_of(conn, b.a.record_id)
    segments = split_segments(item)
    assert segments is not None
    at = item.index(segments[1]) + 20
    conn.execute("UPDATE entries SET item = %s WHERE record_id = %s",
                 (flip_byte(item, at), b.a.record_id))
    return [(b.a.height, "items", f"request {b.a.receipt.request_proof.index}: {ITEMS}")]


def t_item_of_a_pair(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """One byte of the public header of the second item of a two-item envelope."""
    item = item_of(conn, b.pair[1].record_id)
    conn.execute("UPDATE entries SET item = %s WHERE record_id = %s",
                 (flip_byte(item, 12), b.pair[1].record_id))
    return [(b.pair[1].height, "items", ITEMS)]


def t_block_hash(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    conn.execute("UPDATE blocks SET hash = set_byte(hash, 7, get_byte(hash, 7) # 1) "
                 "WHERE height = %s", (b.d.height,))
    return [(b.d.height, "stored-hash", "the stored hash column")]


def t_deleted_block(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    h = b.c.height
    with conn.transaction():
        for table in SAVED_TABLES:
            conn.execute(sql.SQL("DELETE FROM {} WHERE height = %s").format(
                sql.Identifier(table)), (h,))
    return [(h, "missing-block", f"expected block {h}, got block {h + 1}")]


def t_swapped_items(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    ia, ib = item_of(conn, b.a.record_id), item_of(conn, b.b.record_id)
    conn.execute("UPDATE entries SET item = CASE record_id WHEN %s THEN %s::bytea "
                 "ELSE %s::bytea END WHERE record_id IN (%s, %s)",
                 (b.a.record_id, ib, ia, b.a.record_id, b.b.record_id))
    return [(b.a.height, "items", ITEMS), (b.b.height, "items", ITEMS)]


def t_swapped_requests_in_a_block(cluster: Cluster, conn: psycopg.Connection[Any],
                                  b: Base) -> Expectation:
    one, two = b.multi[0], b.multi[1]
    _swap_envelopes(conn, one, two)
    return [(one.height, "merkle-root", "requests do not match the header's merkle root")]


def t_swapped_requests_across_blocks(cluster: Cluster, conn: psycopg.Connection[Any],
                                     b: Base) -> Expectation:
    _swap_envelopes(conn, b.d, b.e)
    return [(b.d.height, "merkle-root", "merkle root"), (b.e.height, "merkle-root",
                                                         "merkle root")]


def t_signature(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """A client's signature (not part of the request digest: only its check sees it)."""
    conn.execute("UPDATE envelopes SET signature = set_byte(signature, 3, "
                 "get_byte(signature, 3) # 1) WHERE height = %s AND idx = %s",
                 (b.d.height, b.d.receipt.request_proof.index))
    return [(b.d.height, "request-signature",
             f"request {b.d.receipt.request_proof.index}: not signed by a known client "
             "'org3-client'")]


NO_QUORUM = "no valid commit certificate of 3 validators of epoch 0"


def t_cert_f_plus_1(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 3)])
    return [(b.b.height, "certificate", NO_QUORUM)]


def t_cert_outsider(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    outsider = Ed25519Signer.generate()
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 1, 3)]
                     + [commit(cluster, 4, hd, key=outsider)])
    return [(b.b.height, "certificate", "1 of its 4 commits are not valid commits of this "
                                        "block by distinct members of epoch 0")]


def t_cert_outsider_completing(cluster: Cluster, conn: psycopg.Connection[Any],
                               b: Base) -> Expectation:
    outsider = Ed25519Signer.generate()
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 1)]
                     + [commit(cluster, 7, hd, key=outsider)])
    return [(b.b.height, "certificate", NO_QUORUM)]


def t_cert_repeated(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 1, 1)])
    return [(b.b.height, "certificate", NO_QUORUM)]


def t_cert_repeated_extra(cluster: Cluster, conn: psycopg.Connection[Any],
                          b: Base) -> Expectation:
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 1, 2, 2)])
    return [(b.b.height, "certificate", "1 of its 4 commits are not valid")]


def t_cert_forged(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    mine = validator_key(cluster, VICTIM)
    _set_certificate(cluster, conn, b.b.height,
                     lambda hd: [commit(cluster, i, hd) for i in (0, 1)]
                     + [commit(cluster, 3, hd, key=mine)])
    return [(b.b.height, "certificate", NO_QUORUM)]


def t_proposal(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """The victim re-signs a block's proposal header as its own (it was not the primary)."""
    row = conn.execute("SELECT pre_prepare FROM blocks WHERE height = %s",
                       (b.d.height,)).fetchone()
    assert row is not None
    pp = codec.decode_signed(bytes(row[0]), cluster.genesis.chain_id_bytes)
    assert pp.sender != VICTIM
    forged = codec.sign_message(validator_key(cluster, VICTIM), cluster.genesis.chain_id_bytes,
                                VICTIM, pp.body)
    conn.execute("UPDATE blocks SET pre_prepare = %s WHERE height = %s",
                 (forged.wire, b.d.height))
    return [(b.d.height, "proposal", "its proposal is not signed by the primary")]


def t_extra_reader(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """A non-reader slipped into a record's readers (what a bribed DBA would do)."""
    conn.execute("UPDATE entries SET readers = array_append(readers, 'org3') "
                 "WHERE record_id = %s", (b.a.record_id,))
    return [(b.a.height, "readers", "['org0', 'org1', 'org3'] are not what the chain gives it")]


def t_erasure_mark(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    conn.execute("UPDATE entries SET erased_height = %s WHERE record_id = %s",
                 (b.e.height, b.b.record_id))
    return [(b.b.height, "erasure", f"is marked erased at {b.e.height} without a committed")]


def t_subject(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    conn.execute("UPDATE entries SET subject_id = subject_id || 'x' WHERE record_id = %s",
                 (b.e.record_id,))
    return [(b.e.height, "record-columns", "stored subject_id")]


def t_header(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """The header's state digest edited (and the hash column with it, as a careful forger
    would): its own state-digest check and the next block's link fail."""
    from dataclasses import replace
    hd = _header(conn, b.d.height)
    forged = replace(hd, state_digest=bytes(32))
    conn.execute("UPDATE blocks SET header = %s, hash = %s WHERE height = %s",
                 (forged.encode(), forged.hash(), b.d.height))
    return [(b.d.height, "state-digest", "state digest does not chain"),
            (b.d.height + 1, "hash-link", f"prev_hash does not match block {b.d.height}")]


def t_timestamp(cluster: Cluster, conn: psycopg.Connection[Any], b: Base) -> Expectation:
    """The block time edited with the hash column to match: block time is max(previous,
    certified proposal time), so the block itself shows it, and the next block's link."""
    from dataclasses import replace
    hd = _header(conn, b.d.height)
    forged = replace(hd, timestamp_ms=hd.timestamp_ms + 1)
    conn.execute("UPDATE blocks SET header = %s, hash = %s WHERE height = %s",
                 (forged.encode(), forged.hash(), b.d.height))
    return [(b.d.height, "time", "block time is not max(previous, proposed)"),
            (b.d.height + 1, "hash-link", f"prev_hash does not match block {b.d.height}")]


TAMPER: dict[str, Callable[[Cluster, psycopg.Connection[Any], Base], Expectation]] = {
    "a ciphertext byte": t_ciphertext,
    "an item of a two-item envelope": t_item_of_a_pair,
    "a block hash byte": t_block_hash,
    "a block deleted": t_deleted_block,
    "two items swapped": t_swapped_items,
    "two requests of one block swapped": t_swapped_requests_in_a_block,
    "two requests of two blocks swapped": t_swapped_requests_across_blocks,
    "a client signature": t_signature,
    "a certificate of f+1 commits": t_cert_f_plus_1,
    "a certificate with an outsider": t_cert_outsider,
    "a quorum completed by an outsider": t_cert_outsider_completing,
    "a quorum completed by a repeated signer": t_cert_repeated,
    "a certificate with a repeated signer": t_cert_repeated_extra,
    "a commit signed with another validator's key": t_cert_forged,
    "a proposal header signed by a backup": t_proposal,
    "a reader the chain never gave": t_extra_reader,
    "an erasure the chain never made": t_erasure_mark,
    "a subject id": t_subject,
    "a header's state digest": t_header,
    "a header's timestamp": t_timestamp,
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_audit_verify_finds_an_edit_in_one_validators_database(cluster: Cluster, base: Base,
                                                               case: str) -> None:
    """`audit verify --all --json`: exit 1, ok false, the edited validator named at the right
    height with the right kind and a precise detail, every other validator ok; after the rows
    are put back, the victim verifies again."""
    with tampered(cluster, base.heights) as conn:
        expected = TAMPER[case](cluster, conn, base)
        ran, data = verify_all(cluster)
    assert ran.code == 1, ran.stderr
    assert data["ok"] is False
    problems = data["problems"]
    assert {p["validator"] for p in problems} == {str(VICTIM)}, problems
    assert data["validators"][str(VICTIM)]["ok"] is False
    for v in OTHERS:
        assert data["validators"][str(v)]["ok"] is True, v
    for height, kind, fragment in expected:
        assert any(p["height"] == height and p["kind"] == kind and fragment in p["detail"]
                   for p in problems), f"no {kind} at {height} ({fragment!r}): {problems}"
    if case != "a block deleted":  # (see test_a_deleted_block_is_the_only_problem)
        assert {p["height"] for p in problems} == {h for h, _, _ in expected}, problems
    assert_verified(cluster, VICTIM)


def test_a_deleted_block_is_the_only_problem(cluster: Cluster, base: Base) -> None:
    """A block deleted in the middle of the victim's chain is exactly one problem: the missing
    block. Nothing is reported past the victim's head (a validator streaming a chain with a
    gap must not serve a block twice, which reads as a second, wrong problem)."""
    with tampered(cluster, base.heights) as conn:
        [(h, _, _)] = t_deleted_block(cluster, conn, base)
        head = int(conn.execute("SELECT max(height) FROM blocks").fetchone()[0])
        ran, data = verify_all(cluster)
        served = [BlockHeader.decode(b.header).height for b in cluster.client("org0")
                  .stream_blocks(1, head, audit=True, address=cluster.client_address(VICTIM))]
    assert ran.code == 1
    assert [(p["validator"], p["height"], p["kind"]) for p in data["problems"]] == [
        (str(VICTIM), h, "missing-block")], data["problems"]
    assert served == [x for x in range(1, head + 1) if x != h], served


def test_an_edited_entry_status_is_outvoted(cluster: Cluster, base: Base) -> None:
    """An invalid entry (org1 revoking a reader of org0's record) rewritten as recorded in one
    validator's database: statuses are not signed, so `--all` compares them and names it."""
    with tampered(cluster, base.heights) as conn:
        h, i, _ = entry_at(conn, base.invalid_revoke.record_id)
        conn.execute("UPDATE entries SET status = 'recorded' WHERE height = %s AND idx = %s",
                     (h, i))
        ran, data = verify_all(cluster)
    assert ran.code == 1 and data["ok"] is False
    found = {(p["validator"], p["height"], p["kind"]): p["detail"] for p in data["problems"]}
    # The comparison names the status; and since the revocation now "took effect", org1 reads
    # as a stored reader the chain revoked.
    assert set(found) == {(str(VICTIM), h, "status"), (str(VICTIM), base.a.height, "readers")}
    assert found[(str(VICTIM), h, "status")].startswith(f"entry {i} ")
    assert "'recorded'" in found[(str(VICTIM), h, "status")]
    assert "the others say 'invalid'" in found[(str(VICTIM), h, "status")]
    assert f"org1 is still a stored reader after its revocation at {h}" in \
        found[(str(VICTIM), base.a.height, "readers")]


def test_an_edited_refusal_reason_is_found(cluster: Cluster, base: Base) -> None:
    """docs/audit.md: "Request and entry statuses and reasons are validators' execution
    results: honest validators agree, `audit verify --all` compares them". A refused access
    whose reason is removed in one validator's database reads as a granted one (`audit
    patient` reports granted = reason == ""), so `--all` must name that validator."""
    with tampered(cluster, base.heights) as conn:
        h, i, _ = entry_at(conn, base.denied_access.record_id)
        conn.execute("UPDATE entries SET reason = '' WHERE height = %s AND idx = %s", (h, i))
        conn.execute("UPDATE access_log SET granted = true WHERE height = %s AND idx = %s",
                     (h, i))
        ran, data = verify_all(cluster)
    assert ran.code == 1 and data["ok"] is False, "an edited refusal reason verified"
    assert {(p["validator"], p["height"], p["kind"]) for p in data["problems"]} == {
        (str(VICTIM), h, "reason")}


def test_verify_reports_every_validator_and_its_epoch(cluster: Cluster, base: Base) -> None:
    """The clean report: every validator verified from 1 to its head in epoch 0, no problem,
    a warnings list (empty on a ledger whose primary's clock is sane), and one validator by
    default (the first that answers)."""
    ran, data = verify_all(cluster)
    assert ran.code == 0, data["problems"]
    assert set(data) == {"ok", "height", "validators", "problems", "warnings"}
    assert data["problems"] == []
    assert all(w["kind"] == "unjudged" for w in data["warnings"]), data["warnings"]
    for v in map(str, cluster.ids):
        entry = data["validators"][v]
        assert entry["ok"] is True and entry["verified_from"] == 1
        assert entry["verified_to"] == entry["height"] == entry["blocks"] >= base.heights[-1]
        assert entry["epoch"] == 0
    one = audit("verify", "--dir", str(cluster.directory), "--json")
    assert one.code == 0 and len(one.json()["validators"]) == 1
    text = audit("verify", "--dir", str(cluster.directory), "--validator", "1", "--from",
                 str(base.a.height), "--to", str(base.e.height))
    assert text.code == 0 and "verified: the chain checks out from genesis" in text.stdout
    assert f"verified {base.a.height}..{base.e.height}" in text.stdout
    audit("verify", "--dir", str(cluster.directory), "--validator", "9").error_line(
        "no validator 9")
    audit("verify", "--dir", str(cluster.directory), "--validator", "1",
          "--all").error_line("not both")


# =============================================================================================
# 5. Erasure
# =============================================================================================

def test_erasure_leaves_no_key_and_no_ciphertext_on_any_validator(cluster: Cluster) -> None:
    """A patient record read by org1 and granted to org2, erased by its submitter org0:

    - an erasure by a reader (org1), or naming another patient, is recorded invalid (exit 1);
    - afterwards every validator stores no reader and withholds the key and ciphertext
      segments: the items of the record and of its grant are stored redacted, and no key or
      ciphertext byte (as stored before) is anywhere (entries, envelopes, proposal headers,
      consensus log, checkpoint: blocks and the log keep proposal headers, not requests);
    - once a stable checkpoint covers those heights, still nowhere;
    - `audit verify --all` still says ok; `audit patient` shows the erasure (height, org,
      reason); no organisation can decrypt; any later access is invalid."""
    d = str(cluster.directory)
    patient = unique("patient-erase")
    scan = fhir_samples.about(patient, fhir_samples.imaging())
    rec = cluster.client("org0").submit_patient(patient, "imaging", scan, readers=["org1"])
    rid = rec.record_id
    assert cluster.client("org1").get(rid, decrypt=True, purpose="diagnosis").payload
    grant = cluster.client("org0").grant(rid, "org2")
    assert (grant.status, grant.reason) == ("recorded", "")
    assert cluster.client("org2").get(rid, decrypt=True, purpose="consult").payload == \
        json.loads(scan)
    cluster.wait_converged(30.0, min_height=grant.height)

    secrets: set[bytes] = set()
    for i in cluster.ids:
        with database(cluster, i) as conn:
            assert stored_readers(cluster, i, rid) == ["org0", "org1", "org2"], i
            segments = split_segments(item_of(conn, rid))
            assert segments is not None
            secrets |= set(segments[1:])
            grant_item = split_segments(item_of(conn, grant.record_id))
            assert grant_item is not None
            secrets.add(grant_item[1])
            hits = {name for name, data in all_bytes(conn) if any(s in data for s in secrets)}
            h, idx, _ = entry_at(conn, rid)
            assert f"entries({h},{idx}).item" in hits  # the search works
    assert len(secrets) == 4, "validators store the same ciphertext and keys"

    by_reader = access("erase", "--dir", d, rid, "--patient", patient, "--as", "org1", "--json")
    assert by_reader.code == 1
    assert by_reader.json()["reason"] == "only the submitter's organisation erases a record"
    other = access("erase", "--dir", d, rid, "--patient", "someone-else", "--as", "org0",
                   "--json")
    assert other.code == 1
    assert other.json()["reason"] == "the erasure names another patient than the record's"
    erased = access("erase", "--dir", d, rid, "--patient", patient, "--reason",
                    "patient request", "--as", "org0", "--json")
    assert erased.code == 0, erased.stdout + erased.stderr
    at = erased.json()["height"]
    assert erased.json()["status"] == "recorded"
    cluster.wait_converged(30.0, min_height=at)

    for i in cluster.ids:
        with database(cluster, i) as conn:
            row = conn.execute("SELECT readers, erased_height, erased_by, erase_reason "
                               "FROM entries WHERE record_id = %s", (rid,)).fetchone()
            assert row is not None
            assert (list(row[0]), row[1], row[2], row[3]) == ([], at, "org0",
                                                              "patient request"), i
            affected = {entry_at(conn, rid)[:2], entry_at(conn, grant.record_id)[:2]}
            stored = {(int(h), int(x)): bool(red) for h, x, red in conn.execute(
                "SELECT height, idx, redacted FROM entries WHERE record_id = %s "
                "OR target_record_id = %s", (rid, rid))}
            for pos in affected:
                assert stored[pos], f"validator {i}: entry {pos} is not stored redacted"
            leaks = [name for name, data in all_bytes(conn) if any(s in data for s in secrets)]
            assert leaks == [], f"validator {i} still stores key or ciphertext bytes: {leaks}"

    # Pass a stable checkpoint covering the record's and the grant's blocks: pruning and the
    # checkpoint's snapshot bring nothing back.
    k = cluster.genesis.protocol.checkpoint_interval
    target = (max(rec.height, grant.height, at) // k + 1) * k

    def covered() -> bool:
        if min(cluster.status(i).stable_checkpoint for i in cluster.ids) >= target:
            return True
        cluster.client("org3").submit_provenance(unique("lot-filler"), "inspected",
                                                 location="Lyon")
        return False
    wait_for(f"a stable checkpoint at {target} on every validator", covered, 90.0, 0.1,
             describe=cluster.describe)
    for i in cluster.ids:
        with database(cluster, i) as conn:
            leaks = [name for name, data in all_bytes(conn) if any(s in data for s in secrets)]
            assert leaks == [], f"validator {i} still stores key or ciphertext bytes: {leaks}"

    assert_verified(cluster)
    ran = audit("patient", "--dir", d, "--patient", patient, "--format", "json")
    assert ran.code == 0, ran.stderr
    [record] = ran.json()["records"]
    assert record["erased"] == {"height": at, "by_org": "org0", "reason": "patient request",
                                "proof": "verified"}
    assert record["proof"] == "verified"
    assert [c["org"] for c in record["readers_changes"]] == ["org2"]
    assert {a["by_org"] for a in record["access_log"]} >= {"org1", "org2"}
    for org in ("org0", "org1", "org2", "org3"):
        with pytest.raises(SubmitError) as info:
            cluster.client(org).get(rid, decrypt=True)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, org
        assert "erased" in str(info.value) or "not a reader" in str(info.value), org
        reply = get_record(cluster, rid, org)
        assert not reply.wrapped_keys and not reply.ciphertext
        assert reply.erasure.height == at and reply.erasure.by_org == "org0"
    late = cluster.client("org1").access(rid, "after the erasure")
    assert (late.status, late.reason) == ("invalid", "the record was erased")
    assert audit("record", "--dir", d, rid, "--decrypt", "--as", "org1").code == 1
    proof = audit("record", "--dir", d, rid, "--proof", "--json", "--as", "org3")
    assert proof.code == 0 and proof.json()["verified"] is True
    path = Path(d) / "erased-proof.json"
    path.write_text(proof.stdout)
    assert audit("check-proof", str(path), "--genesis", str(Path(d) / "genesis.json")).code == 0


# =============================================================================================
# 6. Bundles
# =============================================================================================

def _bundle_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write_lines(path: Path, lines: list[bytes], *, fix_end: bool) -> Path:
    if fix_end:
        body = lines[:-1]
        end = json.loads(lines[-1])
        end.update(blocks=len(body) - 2, sha256=hashlib.sha256(b"".join(body)).hexdigest())
        lines = [*body, (json.dumps(end, sort_keys=True, separators=(",", ":")) + "\n")
                 .encode()]
    path.write_bytes(b"".join(lines))
    return path


def _block_line(lines: list[bytes], height: int) -> int:
    return next(k for k, line in enumerate(lines[2:-1], start=2)
                if json.loads(line)["height"] == height)


def _edit_block(lines: list[bytes], height: int, change: Callable[[bytes], bytes]
                ) -> list[bytes]:
    out = list(lines)
    n = _block_line(out, height)
    obj = json.loads(out[n])
    obj["block"] = base64.b64encode(change(base64.b64decode(obj["block"]))).decode()
    out[n] = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    return out


def test_an_exported_bundle_verifies_offline_and_an_edited_one_never_does(
        cluster: Cluster, base: Base, tmp_path: Path) -> None:
    d = str(cluster.directory)
    head = height_now(cluster)
    bundle = tmp_path / "chain.jsonl"
    ran = audit("export", "--dir", d, "--out", str(bundle), "--validator", "1", "--json")
    assert ran.code == 0, ran.stderr
    assert ran.json()["blocks"] == ran.json()["to_height"] >= head
    assert ran.json()["exported_from"] == 1
    offline = tmp_path / "auditor"
    offline.mkdir()
    genesis = offline / "genesis.json"
    genesis.write_bytes((cluster.directory / "genesis.json").read_bytes())

    # Verified with the genesis file alone, by the real command, in a directory that holds
    # nothing of the consortium.
    real = cli_process("audit", "verify-bundle", str(bundle), "--genesis", str(genesis),
                       "--json")
    assert real.code == 0, real.stdout + real.stderr
    result = real.json()
    assert result["ok"] is True and result["problems"] == [] and result["from_genesis"]
    assert result["blocks"] == ran.json()["blocks"] and result["epochs"] == 1
    head_block = cluster.client("org0").get_block(result["to_height"])
    assert result["head_hash"] == BlockHeader.decode(head_block.header).hash().hex()

    lines = _bundle_lines(bundle)
    target = base.a.height
    raw_len = len(base64.b64decode(json.loads(lines[_block_line(lines, target)])["block"]))
    cases = 0
    for at in [0, 1, 9, 40, raw_len // 3, raw_len // 2, raw_len - 70, raw_len - 33,
               raw_len - 1]:
        for bit in (0, 5):
            def change(data: bytes, at: int = at, bit: int = bit) -> bytes:
                b = bytearray(data)
                b[at] ^= 1 << bit
                return bytes(b)
            edited = _edit_block(lines, target, change)
            plain = audit("verify-bundle", str(_write_lines(tmp_path / "e1.jsonl", edited,
                                                            fix_end=False)),
                          "--genesis", str(genesis))
            assert plain.code == 2, (at, bit, plain.stdout)
            line = plain.error_line()
            assert "the end line does not match the content" in line or \
                f"block {target} does not decode" in line, line
            fixed = audit("verify-bundle", str(_write_lines(tmp_path / "e2.jsonl", edited,
                                                            fix_end=True)),
                          "--genesis", str(genesis), "--json")
            assert fixed.code in (1, 2), (at, bit, fixed.stdout)
            assert fixed.json()["ok"] is False
            if fixed.code == 1:
                assert any(p["height"] in (target, target + 1)
                           for p in fixed.json()["problems"]), fixed.json()
            else:
                fixed.error_line(f"block {target} does not decode")
            cases += 1
    assert cases == 18

    # A certificate edited precisely: the problem names it.
    def cut_certificate(data: bytes) -> bytes:
        msg = pb.Block.FromString(data)
        del msg.certificate[1:]
        return msg.SerializeToString()
    edited = _write_lines(tmp_path / "cert.jsonl", _edit_block(lines, target, cut_certificate),
                          fix_end=True)
    cert = audit("verify-bundle", str(edited), "--genesis", str(genesis), "--json")
    assert cert.code == 1
    assert [(p["height"], p["kind"]) for p in cert.json()["problems"]] == [(target,
                                                                            "certificate")]
    text = audit("verify-bundle", str(edited), "--genesis", str(genesis))
    assert text.code == 1 and "DOES NOT VERIFY" in text.stdout
    assert f"height {target}: certificate" in text.stdout


def test_malformed_bundles_are_bad_input_with_one_line(cluster: Cluster, base: Base,
                                                       tmp_path: Path) -> None:
    """Truncated, empty, non-JSON, a format-1 bundle, another chain's genesis: exit 2 and one
    line (and with --json, {"ok": false, "error": ...} on stdout)."""
    bundle = tmp_path / "b.jsonl"
    ran = audit("export", "--dir", str(cluster.directory), "--out", str(bundle), "--from", "2",
                "--to", str(base.e.height))
    assert ran.code == 0, ran.stderr
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes((cluster.directory / "genesis.json").read_bytes())
    middle = audit("verify-bundle", str(bundle), "--genesis", str(genesis), "--json")
    assert middle.code == 0 and middle.json()["from_genesis"] is False
    lines = _bundle_lines(bundle)
    other = localnet.init(tmp_path / "other", 4)
    other_genesis = tmp_path / "other" / "genesis.json"
    edited_genesis = tmp_path / "edited-genesis.json"
    g = json.loads(genesis.read_text())
    g["policy"]["access_ttl_ms"] = 60_000
    edited_genesis.write_text(json.dumps(g))
    format_1 = json.dumps({"format": "consortium-audit-bundle", "version": 1,
                           "chain_id": cluster.genesis.chain_id, "from_height": 1,
                           "to_height": 1}).encode() + b"\n"
    cases: list[tuple[str, bytes | None, Path, str]] = [
        ("end line cut", b"".join(lines[:-1]), genesis, "no end line: the bundle is truncated"),
        ("cut mid-line", b"".join(lines)[:-len(lines[-1]) - 30], genesis, "not JSON"),
        ("only the header", lines[0], genesis, "no end line"),
        ("empty", b"", genesis, "empty file: not a bundle"),
        ("not JSON", b"PK\x03\x04 zip file\n", genesis, "line 1: not JSON"),
        ("JSON, not a bundle", b'{"hello": "world"}\n', genesis, "not a consortium-audit"),
        ("a format-1 bundle", format_1, genesis,
         "a version 1 bundle (ledger format 1) cannot be verified by this release"),
        ("another chain's genesis", None, other_genesis,
         f"bundle is for chain {cluster.genesis.chain_id!r}, the genesis file for "
         f"{other.chain_id!r}"),
        ("an edited genesis", None, edited_genesis, "exported under a different genesis"),
        ("no such file", None, genesis, "cannot read"),
    ]
    for name, data, gpath, message in cases:
        path = tmp_path / f"{name}.jsonl"
        if data is not None:
            path.write_bytes(data)
        elif name != "no such file":
            path = bundle
        for as_json in (False, True):
            ran = audit("verify-bundle", str(path), "--genesis", str(gpath),
                        *(["--json"] if as_json else []))
            assert ran.code == 2, (name, ran.stdout, ran.stderr)
            ran.error_line(message)
            if as_json:
                assert ran.json()["ok"] is False and message in ran.json()["error"], name
    bad_genesis = tmp_path / "bad-genesis.json"
    bad_genesis.write_text("{")
    audit("verify-bundle", str(bundle), "--genesis", str(bad_genesis)).error_line()
    audit("verify-bundle", str(bundle), "--genesis", str(tmp_path / "none.json")).error_line(
        "no such file")
    real = cli_process("audit", "verify-bundle", str(tmp_path / "empty.jsonl"), "--genesis",
                       str(genesis))
    assert real.code == 2
    real.error_line("empty file")
    real = cli_process("audit", "verify-bundle", str(tmp_path / "a format-1 bundle.jsonl"),
                       "--genesis", str(genesis))
    assert real.code == 2
    real.error_line("a version 1 bundle")


def test_export_refuses_a_range_the_validator_does_not_hold(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    head = height_now(cluster)
    ran = audit("export", "--dir", str(cluster.directory), "--out", str(tmp_path / "x.jsonl"),
                "--from", "1", "--to", str(head + 1000), "--validator", "0")
    assert ran.code == 2
    ran.error_line("cannot export")
    assert not (tmp_path / "x.jsonl").exists()
    audit("export", "--dir", str(cluster.directory), "--out", str(tmp_path / "y.jsonl"),
          "--validator", "7").error_line("no validator 7")
