"""Client SDK: one code path to build, encrypt and sign a submission, two transports.

`ConsortiumClient` (blocking) and `AsyncConsortiumClient` (asyncio) connect to any validator and
move on to the next when one is down or slow. A submission is only reported as done once its
receipt verifies against the genesis file: a commit certificate of 2f+1 validator signatures
over the block's Merkle root, and the record's inclusion proof under that root. No single
validator is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client.nonces import NonceFile
from consortium.config import Genesis, validator_client_id
from consortium.crypto import envelope
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger.membership import changed_members
from consortium.ledger.records import (
    InvalidRecord,
    RecordKind,
    Submission,
    decode_public,
    public_part,
)
from consortium.ledger.transactions import (
    Access,
    Erase,
    GovernanceTx,
    Grant,
    InvalidTransaction,
    JoinRequest,
    MemberVote,
    RecordTx,
    RemoveRequest,
    RequestView,
    ReviewVote,
    Revoke,
    Verdict,
    decode_governance_tx,
    encode_governance_tx,
    encode_tx,
)
from consortium.localnet import read_seed
from consortium.node import wire
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig, Member
from consortium.pbft.state import verify_epoch_history

ATTEMPT_WAIT_S = 10.0
"""How long one validator may take before the client also tries another (a view change after
a primary crash takes a few request timeouts)."""
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


class SubmitError(Exception):
    """The submission failed for good (a clear reason), or no validator could commit it."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class UnknownEpoch(SubmitError):
    """A receipt is from an epoch whose validator set this client has not fetched yet."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"receipt from epoch {epoch}, not fetched yet")
        self.epoch = epoch


class NonceSource(Protocol):
    def next(self) -> int: ...

    def skip(self) -> None: ...


@dataclass(frozen=True)
class Identity:
    """Who submits: a client id of an organisation, its signing key, and (to read records) the
    organisation's X25519 key pair."""

    client_id: str
    org: str
    signer: Ed25519Signer
    org_keys: envelope.OrgKeyPair | None
    nonces: NonceSource

    @classmethod
    def from_dir(cls, directory: Path, org: str) -> Identity:
        odir = directory / "orgs" / org
        if not odir.is_dir():
            raise SubmitError(f"no organisation {org!r} in {directory} (see {directory}/orgs)")
        return cls(f"{org}-client", org, Ed25519Signer(read_seed(odir / "client.key")),
                   envelope.OrgKeyPair(read_seed(odir / "encryption.key")),
                   NonceFile(odir / "client.nonce"))

    @classmethod
    def validator(cls, directory: Path, org: str) -> Identity:
        """The validator of `org` as a client (`validator-<id>`, signing with its validator
        key): the identity that casts governance votes."""
        genesis = Genesis.load(directory / "genesis.json")
        ids = [v.replica_id for v in genesis.validators if v.org == org]
        vroot = directory / "validators"
        if not ids and vroot.is_dir():  # a validator admitted after genesis
            for config in sorted(vroot.glob("*/config.json")):
                with contextlib.suppress(ValueError, OSError):
                    if json.loads(config.read_text()).get("org") == org:
                        ids.append(int(config.parent.name))
        if not ids:
            raise SubmitError(f"organisation {org!r} runs no validator")
        vdir = vroot / str(ids[0])
        return cls(validator_client_id(ids[0]), org,
                   Ed25519Signer(read_seed(vdir / "signing.key")), None,
                   NonceFile(vdir / "client.nonce"))


@dataclass(frozen=True)
class VerifiedReceipt:
    record_id: str
    height: int
    status: str
    reason: str
    block_hash: str
    validator: str
    """Which validator answered (the receipt is verified, so this is informational)."""
    receipt: wire.Receipt

    def to_json(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "height": self.height, "status": self.status,
                "reason": self.reason, "block_hash": self.block_hash,
                "validator": self.validator, "certificate_signers": sorted(
                    c.sender for c in self.receipt.certificate),
                "proof": {"index": self.receipt.proof.index, "size": self.receipt.proof.size,
                          "path": [p.hex() for p in self.receipt.proof.path]}}


@dataclass(frozen=True)
class RecordView:
    record_id: str
    height: int
    kind: str
    subject_id: str
    event_type: str
    submitter_org: str
    submitted_at_ms: int
    metadata: dict[str, str]
    readers: tuple[str, ...]
    """The organisations whose wrapped key the validator returned (only the caller's own)."""
    status: str
    payload: Any | None = None
    """Decrypted payload (parsed JSON when it is JSON), when asked for and permitted."""
    erasure: dict[str, Any] | None = None
    key_withheld: str = ""
    receipt: wire.Receipt | None = None
    """The verified receipt of the record's commit (request view, certificate, proof)."""
    access_id: str = ""
    """The Access transaction this read was logged under (patient records)."""
    screening: str = ""
    """pending-screening | accepted | quarantined | rejected: a rejected record stays on the
    ledger, marked; only `accepted` records are vouched for by the consortium."""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("record_id", "height", "kind", "subject_id",
                                             "event_type", "submitter_org", "submitted_at_ms",
                                             "metadata", "status")}
        out["readers"] = list(self.readers)
        out["verified"] = self.receipt is not None
        if self.payload is not None:
            out["payload"] = self.payload
        if self.erasure is not None:
            out["erased"] = self.erasure
        if self.key_withheld:
            out["key_withheld"] = self.key_withheld
        if self.access_id:
            out["access_id"] = self.access_id
        if self.screening:
            out["screening"] = self.screening
        return out


class _Core:
    """Everything that is not transport: building, sealing, signing, verifying."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes = b"", *,
                 fetch_inline: bool = True) -> None:
        self.fetch_inline = fetch_inline
        """Fetch an unknown epoch's history (a blocking gRPC call) when a receipt needs it;
        the asyncio client sets False and fetches in a thread on `UnknownEpoch`."""
        self.genesis = genesis
        self.identity = identity
        self.chain_id = genesis.chain_id_bytes
        self.verifier = CachingVerifier(Ed25519Verifier(), 4096)
        self.addresses = [v.client_address for v in genesis.validators]
        self.ca_cert = ca_cert
        self._org_keys: dict[str, bytes] = {}
        self.epochs: dict[int, EpochConfig] = {0: genesis.epoch0()}
        """Validator sets verified from genesis (GetEpochs + verify_epoch_history)."""

    def epoch_config(self, epoch: int, address: str) -> EpochConfig:
        """The validator set of `epoch`; learnt (once) from `address` and verified link by link
        from genesis, so a validator can only tell us what 2f+1 of each previous set signed."""
        config = self.epochs.get(epoch)
        if config is not None:
            return config
        if not self.fetch_inline:
            raise UnknownEpoch(epoch)
        return self.fetch_epoch(epoch, address)

    def fetch_epoch(self, epoch: int, address: str) -> EpochConfig:
        """Fetch the epoch history from `address` (blocking), verify it from genesis, and
        return the validator set of `epoch`."""
        if not self.ca_cert:
            raise SubmitError(f"a receipt from epoch {epoch}: the validator set has changed "
                              "since genesis, and this client cannot fetch the epoch history")
        try:
            with grpc.secure_channel(address, grpc.ssl_channel_credentials(
                    root_certificates=self.ca_cert)) as channel:
                reply = pb_grpc.LedgerStub(channel).GetEpochs(pb.GetEpochsRequest(), timeout=10)
            records = codec.decode_epoch_records(reply.epochs, self.chain_id)
        except (grpc.RpcError, codec.DecodeError) as exc:
            raise SubmitError(f"validator {address}: epoch history unavailable: {exc}") from exc
        configs = verify_epoch_history(self.genesis.epoch0(), records, self.chain_id,
                                       self.verifier)
        if configs is None:
            raise SubmitError(f"validator {address} sent an epoch history that does not verify "
                              "from genesis")
        for c in configs:
            self.epochs[c.epoch] = c
        if epoch not in self.epochs:
            raise SubmitError(f"validator {address} sent a receipt from epoch {epoch}, which "
                              "its own epoch history does not reach")
        return self.epochs[epoch]

    def readers_keys(self, readers: Sequence[str]) -> dict[str, bytes]:
        return {o: self.org_key(o) for o in sorted({self.identity.org, *readers})}

    def unknown_orgs(self, orgs: Iterable[str]) -> list[str]:
        """Organisations whose encryption key needs a lookup on the ledger."""
        genesis = {o.org_id for o in self.genesis.orgs}
        return [o for o in orgs if o not in genesis and o not in self._org_keys]

    def org_key(self, org: str) -> bytes:
        """An organisation's encryption key: from genesis, or for an organisation admitted
        later from its join request, whose inclusion and commit certificate we verify (the key
        is the applicant's own signed words; that the request was approved is the answering
        validator's word, and the ledger refuses a record naming a reader that is not a
        member)."""
        for o in self.genesis.orgs:
            if o.org_id == org:
                return o.encryption_key
        cached = self._org_keys.get(org)
        if cached is not None:
            return cached
        if not self.ca_cert:
            raise SubmitError(f"organisation {org!r} is not in the genesis file")
        errors = []
        for address in self.order():
            try:
                with grpc.secure_channel(address, grpc.ssl_channel_credentials(
                        root_certificates=self.ca_cert)) as channel:
                    stub = pb_grpc.LedgerStub(channel)
                    members = stub.ListMembers(pb.ListMembersRequest(
                        auth=self.read_auth("ListMembers", "")), timeout=10)
                    found = next((p for p in members.proposals if p.kind == "join"
                                  and p.org == org and p.status == "approved"), None)
                    if found is None:
                        errors.append(f"{address}: not a member")
                        continue
                    reply = stub.GetReceipt(pb.GetRecordRequest(
                        record_id=found.proposal_id,
                        auth=self.read_auth("GetReceipt", found.proposal_id)), timeout=10)
                receipt = self.verify_receipt_of(reply, found.proposal_id, address)
                view = receipt.request if isinstance(receipt.request, RequestView) else \
                    RequestView.of(receipt.request)
                tx = decode_governance_tx(view.present())
                if not isinstance(tx, JoinRequest) or tx.org != org:
                    errors.append(f"{address}: the proposal is not {org}'s join request")
                    continue
            except (grpc.RpcError, SubmitError, InvalidTransaction) as exc:
                errors.append(f"{address}: {exc}")
                continue
            self._org_keys[org] = tx.encryption_key
            return tx.encryption_key
        raise SubmitError(f"organisation {org!r} is neither in the genesis file nor an "
                          f"admitted member ({'; '.join(errors[-2:])})")

    def build(self, kind: RecordKind, subject_id: str, event_type: str,
              metadata: dict[str, str], payload: bytes, readers: Sequence[str]) -> m.Request:
        submitted_at_ms = int(time.time() * 1000)
        meta = tuple(sorted((k, v) for k, v in metadata.items() if v is not None))
        aad = public_part(kind, subject_id, event_type, self.identity.org, submitted_at_ms, meta)
        sealed = envelope.seal(payload, aad, self.readers_keys(readers))
        try:
            sub = Submission(kind, subject_id, event_type, self.identity.org, submitted_at_ms,
                             meta, sealed.ciphertext, tuple(sorted(sealed.wrapped_keys.items())))
        except ValueError as exc:
            raise SubmitError(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from exc
        body = sub.encode()
        nonce = self.identity.nonces.next()
        digest = m.request_digest(self.identity.client_id, nonce, m.RequestKind.APPLICATION,
                                  body)
        signature = self.identity.signer.sign(m.request_signing_bytes(self.chain_id, digest))
        return m.Request(self.identity.client_id, nonce, m.RequestKind.APPLICATION, body,
                         signature)

    def build_tx(self, tx: RecordTx | GovernanceTx) -> m.Request:
        """Sign a record or governance transaction as this identity."""
        body = encode_tx(tx) if not isinstance(tx, JoinRequest | MemberVote | RemoveRequest) \
            else encode_governance_tx(tx)
        nonce = self.identity.nonces.next()
        digest = m.request_digest(self.identity.client_id, nonce, m.RequestKind.APPLICATION,
                                  body)
        signature = self.identity.signer.sign(m.request_signing_bytes(self.chain_id, digest))
        return m.Request(self.identity.client_id, nonce, m.RequestKind.APPLICATION, body,
                         signature)

    def read_auth(self, method: str, argument: str) -> pb.ReadAuth:
        """A signed ReadAuth for one read (validators refuse reads from non-members)."""
        now = int(time.time() * 1000)
        sig = self.identity.signer.sign(wire.read_signing_bytes(
            self.chain_id, self.identity.client_id, now, method, argument))
        return pb.ReadAuth(client_id=self.identity.client_id, timestamp_ms=now, signature=sig)

    def verify_receipt_of(self, reply: pb.Receipt, record_id: str,
                          address: str) -> wire.Receipt:
        """Decode and verify a receipt for `record_id` against genesis; SubmitError if not."""
        try:
            receipt = wire.receipt_from_proto(reply, self.chain_id)
        except wire.WireError as exc:
            raise SubmitError(f"validator {address} sent a malformed receipt: {exc}") from exc
        if receipt.record_id != record_id:
            raise SubmitError(f"validator {address} sent a receipt for another record")
        problem = wire.verify_receipt(receipt, self.epoch_config(receipt.header.epoch, address),
                                      self.verifier)
        if problem is not None:
            raise SubmitError(f"validator {address} sent a receipt that does not verify: "
                              f"{problem}")
        return receipt

    def verify(self, reply: pb.Receipt, request: m.Request, address: str) -> VerifiedReceipt:
        try:
            receipt = wire.receipt_from_proto(reply, self.chain_id)
        except wire.WireError as exc:
            raise SubmitError(f"validator {address} sent a malformed receipt: {exc}") from exc
        if receipt.request.digest != request.digest:
            raise SubmitError(f"validator {address} sent a receipt for another request")
        problem = wire.verify_receipt(receipt, self.epoch_config(receipt.header.epoch, address),
                                      self.verifier)
        if problem is not None:
            raise SubmitError(f"validator {address} sent a receipt that does not verify: "
                              f"{problem}")
        return VerifiedReceipt(receipt.record_id, receipt.height, receipt.status,
                               receipt.reason, receipt.header.hash().hex(), address, receipt)

    def record_view(self, r: pb.RecordReply, record_id: str, decrypt: bool,
                    address: str) -> RecordView:
        """Check a GetRecord reply against genesis and return what it proves: everything shown
        comes from the signed request view whose commit the receipt proves, not from the
        validator's word (except erasure, status and which key it released)."""
        if not r.HasField("receipt"):
            raise SubmitError(f"validator {address} sent a record without its receipt")
        receipt = self.verify_receipt_of(r.receipt, record_id, address)
        view = receipt.request
        shown = view.present() if isinstance(view, RequestView) else \
            RequestView.of(view).present()
        try:
            if not shown or shown[0] is None:
                raise InvalidRecord("no public part")
            pub = decode_public(shown[0])
        except InvalidTransaction as exc:
            raise SubmitError(f"{record_id} is not a record: {exc}") from exc
        ciphertext = shown[1] if len(shown) > 1 else None
        payload: Any | None = None
        readers = tuple(w.org for w in r.wrapped_keys)
        if decrypt:
            keys = self.identity.org_keys
            mine = next((w.wrapped_key for w in r.wrapped_keys if w.org == self.identity.org),
                        None)
            if keys is None or mine is None or ciphertext is None:
                why = r.key_withheld or f"organisation {self.identity.org} is not a reader"
                raise SubmitError(f"record {record_id}: {why}", grpc.StatusCode.PERMISSION_DENIED)
            aad = public_part(pub.kind, pub.subject_id, pub.event_type, pub.submitter_org,
                              pub.submitted_at_ms, pub.metadata)
            try:
                raw = envelope.open_sealed(ciphertext, aad, mine, keys)
            except envelope.DecryptionError as exc:
                raise SubmitError(f"record {record_id} does not decrypt: {exc}") from exc
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.hex()
        erasure = None
        if r.HasField("erasure"):
            erasure = {"height": r.erasure.height, "by_org": r.erasure.by_org,
                       "at_ms": r.erasure.at_ms, "reason": r.erasure.reason}
        return RecordView(record_id, receipt.height, pub.kind.value, pub.subject_id,
                          pub.event_type, pub.submitter_org, pub.submitted_at_ms,
                          dict(pub.metadata), readers, receipt.status, payload, erasure,
                          r.key_withheld, receipt)

    def record_key(self, r: pb.RecordReply) -> bytes:
        """This organisation's copy of a record's key (to grant it to another reader)."""
        keys = self.identity.org_keys
        mine = next((w.wrapped_key for w in r.wrapped_keys if w.org == self.identity.org), None)
        if keys is None or mine is None:
            raise SubmitError(f"record {r.record_id}: "
                              f"{r.key_withheld or 'this organisation holds no key'}",
                              grpc.StatusCode.PERMISSION_DENIED)
        try:
            return keys.unwrap(mine)
        except envelope.DecryptionError as exc:
            raise SubmitError(f"record {r.record_id}: {exc}") from exc

    def after_rpc_error(self, exc: Any, request: m.Request, address: str,
                        errors: list[str]) -> VerifiedReceipt | None:
        """Decide what a failed SubmitRecord means (the same for both transports): a receipt
        (the request was already committed), a final error (raised), or try elsewhere (None)."""
        code = exc.code()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            # Trust nothing one validator says: a bad or missing receipt means "ask another".
            try:
                reply = _receipt_from_trailers(exc.trailing_metadata())
                if reply is not None:
                    return self.verify(reply, request, address)
            except (SubmitError, ValueError) as bad:
                errors.append(f"{address}: {bad}")
                return None
            errors.append(f"{address}: ALREADY_EXISTS without a receipt")
            return None
        if code not in RETRYABLE:
            raise SubmitError(f"{address}: {exc.details()}", code) from exc
        errors.append(f"{address}: {code.name} {exc.details()}")
        return None

    @staticmethod
    def gave_up(errors: list[str]) -> SubmitError:
        return SubmitError("no validator committed the request: " + "; ".join(errors[-4:]),
                           grpc.StatusCode.UNAVAILABLE)

    def order(self) -> list[str]:
        addresses = list(self.addresses)
        random.shuffle(addresses)
        return addresses


def provenance_fields(product: str, event: str, location: str | None, custodian_from: str | None,
                      custodian_to: str | None, quantity: int | None,
                      documents: Sequence[str]) -> dict[str, str]:
    meta = {"location": location, "custodian_from": custodian_from,
            "custodian_to": custodian_to,
            "quantity": None if quantity is None else str(quantity),
            "documents": ",".join(documents) if documents else None}
    return {k: v for k, v in meta.items() if v is not None}


class ConsortiumClient:
    """Blocking client."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes, *,
                 timeout_s: float = 30.0) -> None:
        self._core = _Core(genesis, identity, ca_cert)
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.Channel] = {}

    @classmethod
    def from_dir(cls, directory: Path, org: str, **kw: Any) -> ConsortiumClient:
        return cls(Genesis.load(directory / "genesis.json"), Identity.from_dir(directory, org),
                   (directory / "ca" / "ca.crt").read_bytes(), **kw)

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> ConsortiumClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, address: str) -> pb_grpc.LedgerStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.secure_channel(address, self._creds)
            self._channels[address] = ch
        return pb_grpc.LedgerStub(ch)

    def submit_provenance(self, product: str, event: str, *, location: str | None = None,
                          custodian_from: str | None = None, custodian_to: str | None = None,
                          quantity: int | None = None, documents: Sequence[str] = (),
                          details: dict[str, Any] | None = None,
                          readers: Sequence[str] = ()) -> VerifiedReceipt:
        meta = provenance_fields(product, event, location, custodian_from, custodian_to,
                                 quantity, documents)
        payload = json.dumps(details or {}, sort_keys=True).encode()
        return self._submit_fresh(lambda: self._core.build(RecordKind.PROVENANCE, product, event,
                                                           meta, payload, readers))

    def submit_patient(self, patient: str, record_type: str, payload: bytes, *,
                       readers: Sequence[str] = ()) -> VerifiedReceipt:
        return self._submit_fresh(lambda: self._core.build(RecordKind.PATIENT, patient,
                                                           record_type, {}, payload, readers))

    def _submit_fresh(self, build: Callable[[], m.Request]) -> VerifiedReceipt:
        """Submit; if the nonce was stale (other instances of this identity moved ahead), take
        a fresh nonce and submit once more. Safe: a stale request never executes."""
        try:
            return self.submit(build())
        except SubmitError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        self._core.identity.nonces.skip()
        return self.submit(build())

    def submit(self, request: m.Request) -> VerifiedReceipt:
        """Send to one validator after another until one returns a receipt that verifies."""
        data = codec.encode_request(request)
        errors: list[str] = []
        deadline = time.monotonic() + self._timeout_s
        for attempt in range(3):
            for address in self._core.order():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_s = min(left, ATTEMPT_WAIT_S)
                try:
                    reply = self._stub(address).SubmitRecord(
                        pb.SubmitRecordRequest(request=data, wait_ms=int(wait_s * 1000)),
                        timeout=wait_s + 1)
                    return self._core.verify(reply, request, address)
                except grpc.RpcError as exc:
                    done = self._core.after_rpc_error(exc, request, address, errors)
                    if done is not None:
                        return done
                except SubmitError as exc:
                    errors.append(str(exc))
            time.sleep(0.2 * (attempt + 1))
        raise self._core.gave_up(errors)

    def _read(self, call: Callable[[pb_grpc.LedgerStub, str], Any],
              address: str | None = None) -> tuple[Any, str]:
        """Run a read at `address`, or at one validator after another until one answers
        (NOT_FOUND from one may mean it is behind). Returns (reply, address)."""
        last: Exception | None = None
        not_found: grpc.RpcError | None = None
        for addr in [address] if address else self._core.order():
            try:
                return call(self._stub(addr), addr), addr
            except grpc.RpcError as exc:
                if exc.code() in {grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED}:
                    raise SubmitError(f"{addr}: {exc.details()}", exc.code()) from exc
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    not_found = exc
                last = exc
        if not_found is not None:
            raise SubmitError(str(not_found.details()), grpc.StatusCode.NOT_FOUND)
        raise SubmitError(f"no validator answered: {last}", grpc.StatusCode.UNAVAILABLE)

    def get_record_reply(self, record_id: str, *, access_id: str = "", min_height: int = 0,
                         address: str | None = None) -> tuple[pb.RecordReply, str]:
        def call(stub: pb_grpc.LedgerStub, _addr: str) -> pb.RecordReply:
            auth = self._core.read_auth("GetRecord", f"{record_id}/{access_id}")
            out: pb.RecordReply = stub.GetRecord(
                pb.GetRecordRequest(record_id=record_id, auth=auth, access_id=access_id,
                                    min_height=min_height),
                timeout=self._timeout_s)
            return out
        reply, addr = self._read(call, address)
        assert isinstance(reply, pb.RecordReply)
        return reply, addr

    def get(self, record_id: str, *, decrypt: bool = False, purpose: str = "read",
            address: str | None = None) -> RecordView:
        """A record, verified against genesis; with decrypt, its payload. Reading a patient
        record's key first commits an Access transaction (the ledger logs every such read)."""
        reply, addr = self.get_record_reply(record_id, address=address)
        access_id = ""
        if decrypt and reply.kind == RecordKind.PATIENT.value and not reply.HasField("erasure"):
            access = self.access(record_id, purpose)
            access_id = access.record_id
            # The access (and any grant before it) is committed at access.height: read from a
            # validator that has executed that far.
            reply, addr = self.get_record_reply(record_id, access_id=access_id,
                                                min_height=access.height, address=address)
        if decrypt and reply.key_withheld and not access_id and address is None:
            # A validator behind a recent grant says "not a reader": ask the others.
            for other in self._core.order():
                if other == addr:
                    continue
                try:
                    again, _ = self.get_record_reply(record_id, address=other)
                except SubmitError:
                    continue
                if not again.key_withheld:
                    reply, addr = again, other
                    break
        view = self._core.record_view(reply, record_id, decrypt, addr)
        return dataclasses.replace(view, access_id=access_id, screening=reply.screening)

    def access(self, record_id: str, purpose: str = "read") -> VerifiedReceipt:
        """Commit an Access: the ledger's log entry that lets this org fetch a patient record's
        key (refused reads are logged too)."""
        return self._submit_fresh(lambda: self._core.build_tx(
            Access(record_id, purpose, int(time.time() * 1000))))

    def grant(self, record_id: str, org: str, *, purpose: str = "grant") -> VerifiedReceipt:
        """Let `org` read a record: unwrap this org's copy of the key, wrap it for `org`."""
        reply, _ = self.get_record_reply(record_id)
        if reply.kind == RecordKind.PATIENT.value and not reply.HasField("erasure"):
            access = self.access(record_id, purpose)
            reply, _ = self.get_record_reply(record_id, access_id=access.record_id,
                                             min_height=access.height)
        key = self._core.record_key(reply)
        try:
            reader_key = self._core.org_key(org)
        except Exception as exc:
            raise SubmitError(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from exc
        wrapped = envelope.wrap_key(key, reader_key)
        return self._submit_fresh(lambda: self._core.build_tx(Grant(record_id, org, wrapped)))

    def revoke(self, record_id: str, org: str) -> VerifiedReceipt:
        return self._submit_fresh(lambda: self._core.build_tx(Revoke(record_id, org)))

    def erase(self, record_id: str, subject_id: str, reason: str = "") -> VerifiedReceipt:
        return self._submit_fresh(lambda: self._core.build_tx(
            Erase(record_id, subject_id, reason)))

    def review_vote(self, record_id: str, accept: bool) -> VerifiedReceipt:
        """A validator's vote on a quarantined record (this identity must be a validator's)."""
        return self._submit_fresh(lambda: self._core.build_tx(ReviewVote(record_id, accept)))

    def verdict(self, record_id: str, decision: str, risk: float,
                verdict_json: str) -> VerifiedReceipt:
        """The admission service's advice on a record (this identity must be the service)."""
        return self._submit_fresh(lambda: self._core.build_tx(
            Verdict(record_id, decision, round(risk * 1000), verdict_json)))

    def governance(self, tx: GovernanceTx) -> VerifiedReceipt:
        """Submit a join request (as an applicant identity), a removal proposal or a member
        vote (as a validator identity)."""
        return self._submit_fresh(lambda: self._core.build_tx(tx))

    def member_vote(self, proposal_id: str, approve: bool) -> VerifiedReceipt:
        """This validator's vote on a membership proposal. An approval signs the validator-set
        change with the validator key (the identity's signer), for the current epoch as the
        validators report it; the ledger checks the signature against the real set, so a
        validator that lied about it only gets the vote refused."""
        members = self.list_members()
        proposal = next((p for p in members.proposals if p.proposal_id == proposal_id), None)
        if proposal is None:
            raise SubmitError(f"no membership proposal {proposal_id}",
                              grpc.StatusCode.NOT_FOUND)
        approval = b""
        if approve:
            current = tuple(Member(v.replica_id, v.public_key) for v in members.validators)
            new = changed_members(current, proposal.kind, proposal.replica_id,
                                  proposal.validator_key)
            approval = self._core.identity.signer.sign(m.reconfiguration_signing_bytes(
                self._core.chain_id, members.epoch, new))
        return self.governance(MemberVote(proposal_id, approve, members.epoch, approval))

    def list_members(self, *, address: str | None = None) -> pb.MembersReply:
        def call(stub: pb_grpc.LedgerStub, _addr: str) -> pb.MembersReply:
            auth = self._core.read_auth("ListMembers", "")
            out: pb.MembersReply = stub.ListMembers(pb.ListMembersRequest(auth=auth),
                                                    timeout=self._timeout_s)
            return out
        reply, _ = self._read(call, address)
        assert isinstance(reply, pb.MembersReply)
        return reply

    def list_screening(self, screening: str, *, after_height: int = 0, limit: int = 1000,
                       address: str | None = None) -> pb.ScreeningReply:
        def call(stub: pb_grpc.LedgerStub, _addr: str) -> pb.ScreeningReply:
            auth = self._core.read_auth("ListScreening", f"{screening}/{after_height}")
            out: pb.ScreeningReply = stub.ListScreening(
                pb.ListScreeningRequest(screening=screening, after_height=after_height,
                                        limit=limit, auth=auth), timeout=self._timeout_s)
            return out
        reply, _ = self._read(call, address)
        assert isinstance(reply, pb.ScreeningReply)
        return reply

    def get_block(self, height: int, *, audit: bool = False,
                  address: str | None = None) -> pb.Block:
        def call(stub: pb_grpc.LedgerStub, _addr: str) -> pb.Block:
            auth = self._core.read_auth("GetBlock", str(height))
            out: pb.Block = stub.GetBlock(
                pb.GetBlockRequest(height=height, auth=auth, audit=audit),
                timeout=self._timeout_s)
            return out
        reply, _ = self._read(call, address)
        assert isinstance(reply, pb.Block)
        return reply

    def stream_blocks(self, from_height: int, to_height: int, *, audit: bool = False,
                      address: str) -> Any:
        """Blocks from_height..to_height from one validator, as they come (an iterator)."""
        auth = self._core.read_auth("StreamBlocks", f"{from_height}-{to_height}")
        return self._stub(address).StreamBlocks(
            pb.StreamBlocksRequest(from_height=from_height, to_height=to_height, auth=auth,
                                   audit=audit), timeout=max(self._timeout_s, 600))

    def status(self, address: str) -> pb.StatusReply:
        reply = self._stub(address).GetStatus(pb.GetStatusRequest(), timeout=self._timeout_s)
        assert isinstance(reply, pb.StatusReply)
        return reply

    def list_subject(self, kind: str, subject_id: str, *,
                     address: str | None = None) -> tuple[pb.SubjectReply, str]:
        def call(stub: pb_grpc.LedgerStub, _addr: str) -> pb.SubjectReply:
            auth = self._core.read_auth("ListSubject", f"{kind}/{subject_id}")
            out: pb.SubjectReply = stub.ListSubject(
                pb.ListSubjectRequest(kind=kind, subject_id=subject_id, auth=auth),
                timeout=self._timeout_s)
            return out
        reply, addr = self._read(call, address)
        assert isinstance(reply, pb.SubjectReply)
        return reply, addr

    @property
    def core(self) -> _Core:
        return self._core


class AsyncConsortiumClient:
    """asyncio client: the same operations, awaitable."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes, *,
                 timeout_s: float = 30.0) -> None:
        self._core = _Core(genesis, identity, ca_cert, fetch_inline=False)
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _verify(self, reply: pb.Receipt, request: m.Request,
                      address: str) -> VerifiedReceipt:
        """Verify a receipt; the first one from a new epoch fetches (in a thread, off the event
        loop) and verifies that epoch's history first."""
        try:
            return self._core.verify(reply, request, address)
        except UnknownEpoch as exc:
            await asyncio.to_thread(self._core.fetch_epoch, exc.epoch, address)
            return self._core.verify(reply, request, address)

    @classmethod
    def from_dir(cls, directory: Path, org: str, **kw: Any) -> AsyncConsortiumClient:
        return cls(Genesis.load(directory / "genesis.json"), Identity.from_dir(directory, org),
                   (directory / "ca" / "ca.crt").read_bytes(), **kw)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()

    def _stub(self, address: str) -> pb_grpc.LedgerStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.secure_channel(address, self._creds)
            self._channels[address] = ch
        return pb_grpc.LedgerStub(ch)

    def build_provenance(self, product: str, event: str, **kw: Any) -> m.Request:
        """Build and sign (no I/O once the readers' keys are known: genesis organisations, or
        ones an earlier `submit_provenance` looked up)."""
        details = kw.pop("details", None)
        readers = kw.pop("readers", ())
        meta = provenance_fields(product, event, kw.get("location"), kw.get("custodian_from"),
                                 kw.get("custodian_to"), kw.get("quantity"),
                                 kw.get("documents", ()))
        payload = json.dumps(details or {}, sort_keys=True).encode()
        return self._core.build(RecordKind.PROVENANCE, product, event, meta, payload, readers)

    async def submit_provenance(self, product: str, event: str, **kw: Any) -> VerifiedReceipt:
        # Readers admitted after genesis: their keys are fetched once, off the event loop.
        if self._core.unknown_orgs(kw.get("readers", ())):
            await asyncio.to_thread(self._core.readers_keys, kw.get("readers", ()))
        try:
            return await self.submit(self.build_provenance(product, event, **kw))
        except SubmitError as exc:  # stale nonce: see ConsortiumClient._submit_fresh
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
        self._core.identity.nonces.skip()
        return await self.submit(self.build_provenance(product, event, **kw))

    async def submit(self, request: m.Request) -> VerifiedReceipt:
        data = codec.encode_request(request)
        errors: list[str] = []
        deadline = time.monotonic() + self._timeout_s
        for attempt in range(3):
            for address in self._core.order():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_s = min(left, ATTEMPT_WAIT_S)
                try:
                    reply = await self._stub(address).SubmitRecord(
                        pb.SubmitRecordRequest(request=data, wait_ms=int(wait_s * 1000)),
                        timeout=wait_s + 1)
                    return await self._verify(reply, request, address)
                except grpc.aio.AioRpcError as exc:
                    done = self._core.after_rpc_error(exc, request, address, errors)
                    if done is not None:
                        return done
                except SubmitError as exc:
                    errors.append(str(exc))
            await asyncio.sleep(0.2 * (attempt + 1))
        raise self._core.gave_up(errors)


    async def submit_stream(self, requests: Sequence[m.Request], *,
                            address: str | None = None,
                            wait_s: float = ATTEMPT_WAIT_S) -> AsyncIterator[
                                tuple[m.Request, VerifiedReceipt | SubmitError]]:
        """Submit many requests on one stream to one validator, yielding each with its verified
        receipt (or its error) as it commits. Requests the stream could not settle (the
        validator failed, timed out, or answered a retryable error) are retried one by one
        through `submit`, which moves between validators. Every receipt is verified."""
        by_id = {r.digest.hex(): r for r in requests}
        settled: set[str] = set()
        addr = address or self._core.order()[0]

        async def outgoing() -> AsyncIterator[pb.SubmitRecordRequest]:
            for r in requests:
                yield pb.SubmitRecordRequest(request=codec.encode_request(r),
                                             wait_ms=int(wait_s * 1000))

        call = self._stub(addr).SubmitStream(outgoing(),
                                             timeout=wait_s + 5 + len(requests) / 100)
        retry: list[m.Request] = []
        try:
            async for reply in call:
                request = by_id.get(reply.record_id)
                if request is None or reply.record_id in settled:
                    continue  # not ours, or answered twice: ignore what we did not ask
                code = grpc.StatusCode.OK
                for c in grpc.StatusCode:
                    if c.value[0] == reply.code:
                        code = c
                if reply.code == 0 or code == grpc.StatusCode.ALREADY_EXISTS:
                    try:
                        result: VerifiedReceipt | SubmitError = await self._verify(
                            reply.receipt, request, addr)
                    except SubmitError:
                        retry.append(request)
                        settled.add(reply.record_id)
                        continue
                elif code in RETRYABLE:
                    retry.append(request)
                    settled.add(reply.record_id)
                    continue
                else:
                    result = SubmitError(f"{addr}: {reply.error}", code)
                settled.add(reply.record_id)
                yield request, result
        except grpc.aio.AioRpcError:
            pass  # whatever is unsettled is retried below
        retry.extend(r for rid, r in by_id.items() if rid not in settled)
        for r in retry:
            try:
                yield r, await self.submit(r)
            except SubmitError as exc:
                yield r, exc


def _receipt_from_trailers(trailers: Any) -> pb.Receipt | None:
    for key, value in trailers or ():
        if key == "receipt-bin":
            reply = pb.Receipt()
            reply.ParseFromString(value)
            return reply
    return None
