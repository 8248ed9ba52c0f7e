"""What the SDK does besides talking to validators: identities, building and sealing records,
envelopes (many items under one signature), read authorisations, and turning what validators
answer into verified receipts through `consortium.verify`. No I/O here: the client (sdk.py)
does the talking, and this module never imports the validator, storage or a database driver.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from consortium.client.nonces import NonceFile
from consortium.config import Genesis, validator_client_id
from consortium.crypto import envelope
from consortium.crypto.signing import CachingVerifier, Ed25519Signer, Ed25519Verifier
from consortium.ledger.items import ItemView
from consortium.ledger.reads import read_signing_bytes
from consortium.ledger.records import (
    InvalidRecord,
    RecordKind,
    Submission,
    decode_public,
    public_part,
)
from consortium.ledger.transactions import (
    GovernanceTx,
    InvalidTransaction,
    JoinRequest,
    RecordTx,
    decode_governance_tx,
)
from consortium.localnet import read_seed
from consortium.pbft import messages as m
from consortium.pbft.membership import EpochConfig
from consortium.pbft.payload import encode_envelope, encode_segments
from consortium.verify import (
    UnverifiableHistory,
    epoch_configs,
    item_receipts,
    verify_block_receipts,
    verify_envelope_result,
    verify_receipt,
)
from consortium.wire import (
    BlockReceipts,
    Receipt,
    WireError,
    block_receipts_from_proto,
    epochs_from_bytes,
    pb,
    receipt_from_proto,
)

ENVELOPE_ITEMS_MAX = 256
"""Items the SDK puts in one envelope by default (one signature, one decode per validator)."""
ENVELOPE_OVERHEAD_BYTES = 1024
"""Room kept under the request size limit for the request's own fields."""
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
    """An item's commit, verified against the genesis file."""

    record_id: str
    height: int
    status: str
    reason: str
    block_hash: str
    validator: str
    """Which validator answered (the receipt is verified, so this is informational)."""
    receipt: Receipt

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {"record_id": self.record_id, "height": self.height, "status": self.status,
                "reason": self.reason, "block_hash": self.block_hash,
                "validator": self.validator,
                "certificate_signers": sorted(c.sender for c in r.certificate),
                "proof": {"request": {"index": r.request_proof.index,
                                      "size": r.request_proof.size,
                                      "path": [p.hex() for p in r.request_proof.path]},
                          "item": {"index": r.item_proof.index, "size": r.item_proof.size,
                                   "path": [p.hex() for p in r.item_proof.path]}}}


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
    receipt: Receipt | None = None
    """The verified receipt of the record's commit (item view, certificate, proofs)."""
    access_id: str = ""
    """The Access transaction this read was logged under (patient records)."""
    screening: str = ""
    """pending-screening | accepted | quarantined | rejected: a rejected record stays on the
    ledger, marked; only `accepted` records are vouched for by the consortium."""
    also: tuple[str, ...] = ()
    document: bytes = b""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("record_id", "height", "kind", "subject_id",
                                             "event_type", "submitter_org", "submitted_at_ms",
                                             "metadata", "status")}
        out["readers"] = list(self.readers)
        out["verified"] = self.receipt is not None
        if self.also:
            out["also"] = list(self.also)
        if self.document:
            try:
                out["document"] = json.loads(self.document)
            except ValueError:
                out["document"] = self.document.hex()
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


@dataclass(frozen=True)
class Signed:
    """A request this client signed: its items, kept to prove each of them from a block's
    answer."""

    request: m.Request
    items: tuple[bytes, ...]


def provenance_fields(location: str | None, custodian_from: str | None,
                      custodian_to: str | None, quantity: int | None,
                      documents: Sequence[str]) -> dict[str, str]:
    meta = {"location": location, "custodian_from": custodian_from,
            "custodian_to": custodian_to,
            "quantity": None if quantity is None else str(quantity),
            "documents": ",".join(documents) if documents else None}
    return {k: v for k, v in meta.items() if v is not None}


def status_code(value: int) -> grpc.StatusCode:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.UNKNOWN


class ClientCore:
    """Building, sealing, signing and verifying: everything but the transport."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes = b"") -> None:
        self.genesis = genesis
        self.identity = identity
        self.chain_id = genesis.chain_id_bytes
        self.verifier = CachingVerifier(Ed25519Verifier(), 4096)
        self.validators: dict[int, str] = {v.replica_id: v.client_address
                                           for v in genesis.validators}
        """Client addresses of the validators this client knows (genesis, then admitted)."""
        self.primary = min(self.validators) if self.validators else 0
        """Where first submissions go: learnt from NOT_PRIMARY redirects."""
        self.ca_cert = ca_cert
        self.org_keys: dict[str, bytes] = {o.org_id: o.encryption_key for o in genesis.orgs}
        if identity.org_keys is not None:  # an organisation admitted after genesis
            self.org_keys.setdefault(identity.org, identity.org_keys.public_key)
        self.seen_height = 0
        """The highest block this client has a verified receipt from: its reads ask validators
        that have executed that far (read-your-writes), so a read right after a commit never
        shows a record, a grant or an erasure as it was before."""
        self.epochs: dict[int, EpochConfig] = {0: genesis.epoch0()}
        """Validator sets verified from genesis (GetEpochs + verify.epoch_configs)."""
        self.envelope_bytes_max = genesis.protocol.request_bytes_max - ENVELOPE_OVERHEAD_BYTES

    # ------------------------------------------------------------------------------ routing

    def order(self, *, retry: bool = False) -> list[str]:
        """Validators to try: the primary first; on a retry, every validator, the primary
        last (a client that timed out suspects it)."""
        primary = self.validators.get(self.primary)
        others = [a for r, a in sorted(self.validators.items()) if r != self.primary]
        if primary is None:
            return others
        return [*others, primary] if retry else [primary, *others]

    def redirected(self, primary: int) -> None:
        if primary in self.validators:
            self.primary = primary

    # ----------------------------------------------------------------------------- building

    def unknown_orgs(self, orgs: Iterable[str]) -> list[str]:
        """Organisations whose encryption key needs a lookup on the ledger."""
        return [o for o in orgs if o not in self.org_keys]

    def record_item(self, kind: RecordKind, subject_id: str, event_type: str,
                    metadata: dict[str, str], payload: bytes, readers: Sequence[str], *,
                    also: Sequence[str] = (), document: bytes = b"",
                    submitted_at_ms: int | None = None) -> bytes:
        """One sealed record (an envelope item): the payload encrypted under a fresh key
        wrapped for each reader (and the submitter's organisation); the public part is the
        associated data."""
        at_ms = int(time.time() * 1000) if submitted_at_ms is None else submitted_at_ms
        meta = tuple(sorted((k, v) for k, v in metadata.items() if v is not None))
        also_t = tuple(sorted(set(also) - {subject_id}))
        aad = public_part(kind, subject_id, event_type, self.identity.org, at_ms, meta, also_t,
                          document)
        orgs = sorted({self.identity.org, *readers})
        missing = self.unknown_orgs(orgs)
        if missing:
            raise SubmitError(f"organisations {missing} are not known members",
                              grpc.StatusCode.INVALID_ARGUMENT)
        sealed = envelope.seal(payload, aad, {o: self.org_keys[o] for o in orgs})
        try:
            sub = Submission(kind, subject_id, event_type, self.identity.org, at_ms, meta,
                             sealed.ciphertext, tuple(sorted(sealed.wrapped_keys.items())),
                             also_t, document)
        except ValueError as exc:
            raise SubmitError(str(exc), grpc.StatusCode.INVALID_ARGUMENT) from exc
        return sub.encode()

    @staticmethod
    def tx_item(tx: RecordTx | GovernanceTx) -> bytes:
        return encode_segments(tx.segments())

    def sign(self, items: Sequence[bytes]) -> Signed:
        """One request for these items: one nonce, one signature over their Merkle root."""
        payload = encode_envelope(list(items))
        nonce = self.identity.nonces.next()
        digest = m.request_digest(self.identity.client_id, nonce, m.RequestKind.APPLICATION,
                                  payload)
        signature = self.identity.signer.sign(m.request_signing_bytes(self.chain_id, digest))
        return Signed(m.Request(self.identity.client_id, nonce, m.RequestKind.APPLICATION,
                                payload, signature), tuple(items))

    def envelopes(self, items: Sequence[bytes],
                  items_max: int = ENVELOPE_ITEMS_MAX) -> list[list[bytes]]:
        """Items split into envelopes of at most `items_max` items and the request size
        limit."""
        out: list[list[bytes]] = [[]]
        size = 0
        for item in items:
            if len(item) > self.envelope_bytes_max:
                raise SubmitError(f"an item of {len(item)} bytes exceeds the request size limit "
                                  f"({self.envelope_bytes_max} bytes)",
                                  grpc.StatusCode.RESOURCE_EXHAUSTED)
            if out[-1] and (len(out[-1]) >= items_max
                            or size + len(item) + 4 > self.envelope_bytes_max):
                out.append([])
                size = 0
            out[-1].append(item)
            size += len(item) + 4
        return [e for e in out if e]

    def read_auth(self, method: str, argument: str) -> pb.ReadAuth:
        """A signed ReadAuth for one read (validators refuse reads from non-members)."""
        now = int(time.time() * 1000)
        sig = self.identity.signer.sign(read_signing_bytes(
            self.chain_id, self.identity.client_id, now, method, argument))
        return pb.ReadAuth(client_id=self.identity.client_id, timestamp_ms=now, signature=sig)

    # ---------------------------------------------------------------------------- verifying

    def epoch_config(self, epoch: int) -> EpochConfig:
        config = self.epochs.get(epoch)
        if config is None:
            raise UnknownEpoch(epoch)
        return config

    def learn_epochs(self, data: bytes, address: str) -> None:
        """An epoch history a validator sent: verified link by link from genesis, so a
        validator can only tell us what 2f+1 of each previous set signed."""
        try:
            records = epochs_from_bytes(data, self.chain_id)
            self.epochs.update(epoch_configs(self.genesis.epoch0(), records, self.chain_id,
                                             self.verifier))
        except (WireError, UnverifiableHistory) as exc:
            raise SubmitError(f"validator {address} sent an epoch history that does not verify "
                              f"from genesis: {exc}") from exc

    def keep_current_validators(self) -> None:
        """Forget the addresses of validators the latest verified epoch no longer holds, so
        reads and submissions stop going to a removed member."""
        current = set(self.epochs[max(self.epochs)].replica_ids)
        self.validators = {r: a for r, a in self.validators.items() if r in current}
        if self.primary not in self.validators and self.validators:
            self.primary = min(self.validators)

    def block_results(self, reply: pb.BlockReceipts, mine: dict[tuple[str, int], Signed],
                      address: str) -> dict[tuple[str, int], list[VerifiedReceipt] | SubmitError]:
        """For each of `mine` this block answer covers: receipts for every item, verified (the
        certificate once, then each request's inclusion), or why the request failed. Raises
        SubmitError (or UnknownEpoch) when the answer as a whole does not verify."""
        try:
            b = block_receipts_from_proto(reply, self.chain_id)
        except WireError as exc:
            raise SubmitError(f"validator {address} sent malformed receipts: {exc}") from exc
        problem = verify_block_receipts(b, self.epoch_config(b.header.epoch), self.verifier)
        if problem is not None:
            raise SubmitError(f"validator {address} sent a block that does not verify: "
                              f"{problem}")
        out: dict[tuple[str, int], list[VerifiedReceipt] | SubmitError] = {}
        self.seen_height = max(self.seen_height, b.header.height)
        block_hash = b.header.hash().hex()
        for e in b.envelopes:
            key = (e.client_id, e.nonce)
            signed = mine.get(key)
            if signed is None:
                continue  # not ours: ignore what we did not ask
            problem = verify_envelope_result(e, b.header, signed.request)
            if problem is not None:
                raise SubmitError(f"validator {address}: {problem}")
            if e.status == "invalid":
                out[key] = SubmitError(f"ordered at height {b.height} but invalid: {e.reason}",
                                       grpc.StatusCode.INVALID_ARGUMENT)
            elif e.status != "executed":
                out[key] = SubmitError(f"ordered at height {b.height} as a {e.status}: the "
                                       "request executed before", grpc.StatusCode.UNAVAILABLE)
            elif len(e.item_statuses) != len(signed.items):
                raise SubmitError(f"validator {address} reports {len(e.item_statuses)} items "
                                  f"for a request of {len(signed.items)}")
            else:
                out[key] = [VerifiedReceipt(r.record_id, r.height, r.status, r.reason,
                                            block_hash, address, r)
                            for r in item_receipts(e, b, signed.request, signed.items)]
        return out

    def original_of(self, trailers: Any) -> pb.BlockReceipts | None:
        for key, value in trailers or ():
            if key == "receipts-bin":
                reply = pb.BlockReceipts()
                reply.ParseFromString(value)
                return reply
        return None

    @staticmethod
    def primary_of(trailers: Any) -> int | None:
        for key, value in trailers or ():
            if key == "consortium-primary":
                with contextlib.suppress(ValueError):
                    return int(value)
        return None

    def verify_receipt_of(self, reply: pb.Receipt, record_id: str, address: str) -> Receipt:
        """Decode and verify a receipt for `record_id` against genesis; SubmitError if not."""
        try:
            receipt = receipt_from_proto(reply, self.chain_id)
        except WireError as exc:
            raise SubmitError(f"validator {address} sent a malformed receipt: {exc}") from exc
        if receipt.record_id != record_id:
            raise SubmitError(f"validator {address} sent a receipt for another record")
        problem = verify_receipt(receipt, self.epoch_config(receipt.header.epoch),
                                 self.verifier)
        if problem is not None:
            raise SubmitError(f"validator {address} sent a receipt that does not verify: "
                              f"{problem}")
        return receipt

    def join_request_key(self, receipt: Receipt, org: str) -> bytes:
        """The encryption key an admitted organisation named in its (verified) join request."""
        view = receipt.item if isinstance(receipt.item, ItemView) else ItemView.of(receipt.item)
        try:
            tx = decode_governance_tx(view.present())
        except InvalidTransaction as exc:
            raise SubmitError(f"the proposal is not a join request: {exc}") from exc
        if not isinstance(tx, JoinRequest) or tx.org != org:
            raise SubmitError(f"the proposal is not {org}'s join request")
        return tx.encryption_key

    def record_view(self, r: pb.RecordReply, record_id: str, decrypt: bool,
                    address: str) -> RecordView:
        """Check a GetRecord reply against genesis and return what it proves: everything shown
        comes from the signed item view whose commit the receipt proves, not from the
        validator's word (except erasure, status and which key it released)."""
        if not r.HasField("receipt"):
            raise SubmitError(f"validator {address} sent a record without its receipt")
        receipt = self.verify_receipt_of(r.receipt, record_id, address)
        view = receipt.item if isinstance(receipt.item, ItemView) else ItemView.of(receipt.item)
        shown = view.present()
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
                              pub.submitted_at_ms, pub.metadata, pub.also, pub.document)
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
                          r.key_withheld, receipt, also=pub.also, document=pub.document)

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


__all__ = ["BlockReceipts", "ClientCore", "Identity", "RecordView", "Signed", "SubmitError",
           "UnknownEpoch", "VerifiedReceipt", "provenance_fields", "status_code"]
