"""Client SDK: one code path to build, encrypt and sign a submission, two transports.

`ConsortiumClient` (blocking) and `AsyncConsortiumClient` (asyncio) connect to any validator and
move on to the next when one is down or slow. A submission is only reported as done once its
receipt verifies against the genesis file: a commit certificate of 2f+1 validator signatures
over the block's Merkle root, and the record's inclusion proof under that root. No single
validator is trusted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client.nonces import NonceFile
from consortium.config import Genesis
from consortium.crypto import envelope
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger.records import RecordKind, Submission, public_part
from consortium.localnet import read_seed
from consortium.node import wire
from consortium.pbft import codec
from consortium.pbft import messages as m

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
    status: str
    payload: Any | None = None
    """Decrypted payload (parsed JSON when it is JSON), when asked for and permitted."""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("record_id", "height", "kind", "subject_id",
                                             "event_type", "submitter_org", "submitted_at_ms",
                                             "metadata", "status")}
        out["readers"] = list(self.readers)
        if self.payload is not None:
            out["payload"] = self.payload
        return out


class _Core:
    """Everything that is not transport: building, sealing, signing, verifying."""

    def __init__(self, genesis: Genesis, identity: Identity) -> None:
        self.genesis = genesis
        self.identity = identity
        self.chain_id = genesis.chain_id_bytes
        self.verifier = CachingVerifier(Ed25519Verifier(), 4096)
        self.addresses = [v.client_address for v in genesis.validators]

    def readers_keys(self, readers: Sequence[str]) -> dict[str, bytes]:
        names = sorted({self.identity.org, *readers})
        try:
            return {o: self.genesis.org(o).encryption_key for o in names}
        except Exception as exc:
            raise SubmitError(str(exc)) from exc

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

    def verify(self, reply: pb.Receipt, request: m.Request, address: str) -> VerifiedReceipt:
        try:
            receipt = wire.receipt_from_proto(reply, self.chain_id)
        except wire.WireError as exc:
            raise SubmitError(f"validator {address} sent a malformed receipt: {exc}") from exc
        if receipt.request.digest != request.digest:
            raise SubmitError(f"validator {address} sent a receipt for another request")
        problem = wire.verify_receipt(receipt, self.genesis.epoch0(), self.verifier)
        if problem is not None:
            raise SubmitError(f"validator {address} sent a receipt that does not verify: "
                              f"{problem}")
        return VerifiedReceipt(receipt.record_id, receipt.height, receipt.status,
                               receipt.reason, receipt.header.hash().hex(), address, receipt)

    def record_view(self, r: pb.RecordReply, decrypt: bool) -> RecordView:
        payload: Any | None = None
        readers = tuple(w.org for w in r.wrapped_keys)
        if decrypt:
            keys = self.identity.org_keys
            mine = next((w.wrapped_key for w in r.wrapped_keys if w.org == self.identity.org),
                        None)
            if keys is None or mine is None:
                raise SubmitError(f"organisation {self.identity.org} is not a reader of record "
                                  f"{r.record_id}", grpc.StatusCode.PERMISSION_DENIED)
            aad = public_part(RecordKind(r.kind), r.subject_id, r.event_type, r.submitter_org,
                              r.submitted_at_ms, tuple(sorted(r.metadata.items())))
            try:
                raw = envelope.open_sealed(r.ciphertext, aad, mine, keys)
            except envelope.DecryptionError as exc:
                raise SubmitError(f"record {r.record_id} does not decrypt: {exc}") from exc
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.hex()
        return RecordView(r.record_id, r.height, r.kind, r.subject_id, r.event_type,
                          r.submitter_org, r.submitted_at_ms, dict(r.metadata), readers,
                          r.status, payload)

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
        self._core = _Core(genesis, identity)
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

    def get(self, record_id: str, *, decrypt: bool = False) -> RecordView:
        last: Exception | None = None
        not_found = 0
        for address in self._core.order():
            try:
                reply = self._stub(address).GetRecord(pb.GetRecordRequest(record_id=record_id),
                                                      timeout=self._timeout_s)
                return self._core.record_view(reply, decrypt)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise SubmitError(str(exc.details()), exc.code()) from exc
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    not_found += 1  # this validator may just be behind: ask the others
                last = exc
        if not_found:
            raise SubmitError(f"no record {record_id}", grpc.StatusCode.NOT_FOUND)
        raise SubmitError(f"no validator answered: {last}", grpc.StatusCode.UNAVAILABLE)


class AsyncConsortiumClient:
    """asyncio client: the same operations, awaitable."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes, *,
                 timeout_s: float = 30.0) -> None:
        self._core = _Core(genesis, identity)
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

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
        details = kw.pop("details", None)
        readers = kw.pop("readers", ())
        meta = provenance_fields(product, event, kw.get("location"), kw.get("custodian_from"),
                                 kw.get("custodian_to"), kw.get("quantity"),
                                 kw.get("documents", ()))
        payload = json.dumps(details or {}, sort_keys=True).encode()
        return self._core.build(RecordKind.PROVENANCE, product, event, meta, payload, readers)

    async def submit_provenance(self, product: str, event: str, **kw: Any) -> VerifiedReceipt:
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
                    return self._core.verify(reply, request, address)
                except grpc.aio.AioRpcError as exc:
                    done = self._core.after_rpc_error(exc, request, address, errors)
                    if done is not None:
                        return done
                except SubmitError as exc:
                    errors.append(str(exc))
            await asyncio.sleep(0.2 * (attempt + 1))
        raise self._core.gave_up(errors)


def _receipt_from_trailers(trailers: Any) -> pb.Receipt | None:
    for key, value in trailers or ():
        if key == "receipt-bin":
            reply = pb.Receipt()
            reply.ParseFromString(value)
            return reply
    return None
