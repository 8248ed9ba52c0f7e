"""Client SDK: build, seal and sign records, submit them in envelopes, verify every answer.

`AsyncConsortiumClient` is the implementation (asyncio, grpc.aio); `ConsortiumClient` runs the
same code on a private event loop in a background thread, so blocking callers (and many
threads at once) share one channel per validator and one code path.

Submissions go to the current primary (learnt from redirects). Records submitted one at a time
by concurrent callers are coalesced into envelopes: while an envelope is in flight, new records
wait for the next one (Nagle's rule: a lone caller is never delayed), and each envelope is one
signature, one request, one answer per block. A submission is reported done only once its
receipt verifies against the genesis file (`consortium.verify`): a commit certificate of 2f+1
validators of the block's epoch, the request's inclusion in the block and the item's in the
request. No single validator is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc

from consortium.client.core import (
    ENVELOPE_ITEMS_MAX,
    RETRYABLE,
    ClientCore,
    Identity,
    RecordView,
    Signed,
    SubmitError,
    UnknownEpoch,
    VerifiedReceipt,
    provenance_fields,
    status_code,
)
from consortium.client.formats import epcis_record, fhir_record
from consortium.config import Genesis
from consortium.crypto import envelope
from consortium.formats import epcis
from consortium.formats.directory import Gs1Directory
from consortium.formats.errors import EpcisError, FormatError
from consortium.ledger.membership import changed_members
from consortium.ledger.records import RecordKind
from consortium.ledger.transactions import (
    Access,
    Erase,
    GovernanceTx,
    Grant,
    MemberVote,
    RecordTx,
    ReviewVote,
    Revoke,
    Verdict,
)
from consortium.pbft import codec
from consortium.pbft import messages as m
from consortium.pbft.membership import Member
from consortium.wire import Receipt, pb, pb_grpc

__all__ = [
    "AsyncConsortiumClient",
    "ConsortiumClient",
    "EpcisSubmission",
    "Identity",
    "Receipt",
    "RecordView",
    "SubmitError",
    "VerifiedReceipt",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EpcisSubmission:
    """What `submit_epcis` did: the document index of each submitted event with its result
    (a verified receipt, or the error of its envelope), and the events left out."""

    indexes: list[int]
    results: list[VerifiedReceipt | SubmitError]
    bad: list[epcis.EventError]

ATTEMPT_WAIT_S = 10.0
"""How long one validator may take before the client also tries another (a view change after
a primary crash takes a few request timeouts)."""
STREAM_ENVELOPES_IN_FLIGHT = 16
"""Envelopes one `submit_many` keeps in flight on its stream."""


class AsyncConsortiumClient:
    """The asyncio client."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes, *,
                 timeout_s: float = 30.0, envelope_items_max: int = ENVELOPE_ITEMS_MAX) -> None:
        self.core = ClientCore(genesis, identity, ca_cert)
        self._creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._coalescer = _Coalescer(self, envelope_items_max)
        self._nonce_lock = asyncio.Lock()

    @classmethod
    def from_dir(cls, directory: Path, org: str, **kw: Any) -> AsyncConsortiumClient:
        return cls(Genesis.load(directory / "genesis.json"), Identity.from_dir(directory, org),
                   (directory / "ca" / "ca.crt").read_bytes(), **kw)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def __aenter__(self) -> AsyncConsortiumClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stub(self, address: str) -> pb_grpc.LedgerStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.secure_channel(address, self._creds, options=[
                ("grpc.max_receive_message_length", 64 << 20)])
            self._channels[address] = ch
        return pb_grpc.LedgerStub(ch)

    # ------------------------------------------------------------------------- building

    async def ensure_readers(self, readers: Sequence[str]) -> None:
        """Learn the encryption keys of readers admitted after genesis (from their verified
        join requests on the ledger)."""
        for org in self.core.unknown_orgs(readers):
            self.core.org_keys[org] = await self._admitted_org_key(org)

    def provenance_item(self, product: str, event: str, *, location: str | None = None,
                        custodian_from: str | None = None, custodian_to: str | None = None,
                        quantity: int | None = None, documents: Sequence[str] = (),
                        details: dict[str, Any] | None = None, readers: Sequence[str] = (),
                        also: Sequence[str] = (), document: bytes = b"") -> bytes:
        """One sealed provenance record (no I/O once the readers' keys are known)."""
        meta = provenance_fields(location, custodian_from, custodian_to, quantity, documents)
        payload = json.dumps(details or {}, sort_keys=True).encode()
        return self.core.record_item(RecordKind.PROVENANCE, product, event, meta, payload,
                                     readers, also=also, document=document)

    def epcis_item(self, event: epcis.Event, *, readers: Sequence[str] = (),
                   private: Mapping[str, Any] | None = None) -> bytes:
        """One sealed provenance record of a validated EPCIS event: the public document is the
        event (its private-namespace fields and `private` go into the encrypted payload; see
        client/formats.py). Raises EpcisError or SubmitError (one line)."""
        rec = epcis_record(event, private)
        return self.core.record_item(RecordKind.PROVENANCE, rec.subject_id, rec.event_type, {},
                                     rec.payload, readers, also=rec.also, document=rec.document)

    def shorthand_item(self, product: str, event: str, *, location: str | None,
                       custodian_from: str | None = None, custodian_to: str | None = None,
                       quantity: int | None = None, documents: Sequence[str] = (),
                       details: Mapping[str, Any] | None = None, disposition: str | None = None,
                       readers: Sequence[str] = (), event_time_ms: int | None = None) -> bytes:
        """`submit provenance`'s flags as one EPCIS ObjectEvent (formats/shorthand.py: event ->
        bizStep and disposition, from/to -> owning parties, location -> bizLocation, which is
        required). `details` is encrypted. Raises FormatError naming the flag."""
        at_ms = int(time.time() * 1000) if event_time_ms is None else event_time_ms
        ev = epcis.object_event_from_shorthand(
            product, event, custodian_from, custodian_to, location, quantity,
            submitter_org=self.core.identity.org, event_time_ms=at_ms,
            directory=self.directory, disposition=disposition, documents=documents)
        return self.epcis_item(ev, readers=readers, private=details)

    def epcis_items(self, data: bytes | str | Mapping[str, Any], *,
                    readers: Sequence[str] = (), skip_invalid: bool = False
                    ) -> tuple[list[tuple[int, bytes]], list[epcis.EventError]]:
        """Validate an EPCIS document and seal each good event: ((index, item) in document
        order, the bad events by index with the reason). Without `skip_invalid`, any bad
        event raises EpcisDocumentError before anything is sealed (nothing of a bad document
        is half-submitted). Raises EpcisError when the document itself is unreadable."""
        good, bad = epcis.validate_document(data, self.directory.prefix_length)
        if bad and not skip_invalid:
            raise epcis.EpcisDocumentError(bad, len(good) + len(bad))
        items: list[tuple[int, bytes]] = []
        limit = self.core.envelope_bytes_max
        for index, event in good:
            try:
                item = self.epcis_item(event, readers=readers)
                if len(item) > limit:
                    raise EpcisError(f"the sealed record is {len(item)} bytes, over the "
                                     f"request size limit ({limit} bytes)")
            except (FormatError, SubmitError) as exc:
                bad.append(epcis.EventError(index, f"event {index}: {exc}"))
                continue
            items.append((index, item))
        bad.sort(key=lambda e: e.index)
        if bad and not skip_invalid:
            raise epcis.EpcisDocumentError(bad, len(good) + len(bad) - len(items))
        return items, bad

    def fhir_item(self, patient: str, data: bytes | str | Mapping[str, Any], *,
                  readers: Sequence[str] = ()) -> bytes:
        """One sealed patient record of a FHIR R4 resource or Bundle, validated before it is
        encrypted (validators only see ciphertext); public metadata: resource types and code
        systems. Raises FhirError (one line, naming the path) or SubmitError."""
        rec = fhir_record(data, patient)
        return self.core.record_item(RecordKind.PATIENT, patient, rec.record_type, rec.metadata,
                                     rec.payload, readers)

    @functools.cached_property
    def directory(self) -> Gs1Directory:
        """The genesis members' GS1 identities: where a Digital Link's company prefix ends,
        and how the shorthand names a member (its PGLN)."""
        return self.core.genesis.gs1_directory()

    def patient_item(self, patient: str, record_type: str, payload: bytes, *,
                     readers: Sequence[str] = (), metadata: dict[str, str] | None = None) -> bytes:
        return self.core.record_item(RecordKind.PATIENT, patient, record_type, metadata or {},
                                     payload, readers)

    async def sign(self, items: Sequence[bytes]) -> Signed:
        """One envelope request (nonces are reserved from a file: do it off the loop)."""
        async with self._nonce_lock:
            return await asyncio.to_thread(self.core.sign, items)

    # ------------------------------------------------------------------------ submitting

    async def submit_provenance(self, product: str, event: str, **kw: Any) -> VerifiedReceipt:
        await self.ensure_readers(kw.get("readers", ()))
        return await self.submit_item(self.provenance_item(product, event, **kw))

    async def submit_patient(self, patient: str, record_type: str, payload: bytes, *,
                             readers: Sequence[str] = (),
                             metadata: dict[str, str] | None = None) -> VerifiedReceipt:
        await self.ensure_readers(readers)
        return await self.submit_item(self.patient_item(patient, record_type, payload,
                                                        readers=readers, metadata=metadata))

    async def submit_epcis(self, data: bytes | str | Mapping[str, Any], *,
                           readers: Sequence[str] = (), skip_invalid: bool = False,
                           on_progress: Callable[[int], None] | None = None
                           ) -> EpcisSubmission:
        """Validate an EPCIS document, then submit its events in envelopes (streamed); see
        `epcis_items` for what happens to bad events."""
        await self.ensure_readers(readers)
        items, bad = self.epcis_items(data, readers=readers, skip_invalid=skip_invalid)
        results = await self.submit_many([i for _, i in items], on_progress=on_progress) \
            if items else []
        return EpcisSubmission([i for i, _ in items], results, bad)

    async def submit_fhir(self, patient: str, data: bytes | str | Mapping[str, Any], *,
                          readers: Sequence[str] = ()) -> VerifiedReceipt:
        await self.ensure_readers(readers)
        return await self.submit_item(self.fhir_item(patient, data, readers=readers))

    async def submit_item(self, item: bytes) -> VerifiedReceipt:
        """Submit one item; concurrent calls share envelopes (see the module docstring)."""
        return await self._coalescer.add(item)

    async def submit_tx(self, tx: RecordTx | GovernanceTx) -> VerifiedReceipt:
        return (await self.submit_items([self.core.tx_item(tx)]))[0]

    async def submit_items(self, items: Sequence[bytes]) -> list[VerifiedReceipt]:
        """Submit items in one envelope (one signature), re-signing once with a fresh nonce if
        the first one turned out stale (other instances of this identity moved ahead)."""
        signed = await self.sign(items)
        try:
            return await self.submit_signed(signed)
        except SubmitError as exc:
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION or "nonce" not in str(exc):
                raise
        self.core.identity.nonces.skip()
        return await self.submit_signed(await self.sign(items))

    async def submit_signed(self, signed: Signed, *, retry: bool = False) -> list[VerifiedReceipt]:
        """Send one signed request until a validator returns an answer that verifies: to the
        primary first; after a timeout, as a retry to the others (any validator then takes it
        in, relays it and times the primary). `retry`: it was sent before and not answered
        (start with the others)."""
        data = codec.encode_request(signed.request)
        errors: list[str] = []
        deadline = time.monotonic() + self._timeout_s
        for attempt in range(6):
            redirected = False
            for address in self.core.order(retry=retry):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_s = min(left, ATTEMPT_WAIT_S)
                try:
                    reply = await self._stub(address).SubmitRecord(
                        pb.SubmitRecordRequest(request=data, wait_ms=int(wait_s * 1000),
                                               retry=retry), timeout=wait_s + 1)
                    return await self._receipts(reply, signed, address)
                except grpc.aio.AioRpcError as exc:
                    outcome = await self._after_error(exc, signed, address, errors)
                    if isinstance(outcome, list):
                        return outcome
                    if outcome == "redirect":
                        redirected = True
                        break
                    retry = True
                except SubmitError as exc:
                    errors.append(str(exc))
                    retry = True
            if not redirected:
                await asyncio.sleep(0.1 * (attempt + 1))
            if time.monotonic() >= deadline:
                break
        raise SubmitError("no validator committed the request: " + "; ".join(errors[-4:]),
                          grpc.StatusCode.UNAVAILABLE)

    async def _receipts(self, reply: pb.BlockReceipts, signed: Signed,
                        address: str) -> list[VerifiedReceipt]:
        results = await self._block_results(reply, {signed.request.key: signed}, address)
        result = results.get(signed.request.key)
        if result is None:
            raise SubmitError(f"validator {address} answered for another request")
        if isinstance(result, SubmitError):
            raise result
        return result

    async def _block_results(self, reply: pb.BlockReceipts, mine: dict[tuple[str, int], Signed],
                             address: str) -> dict[tuple[str, int],
                                                   list[VerifiedReceipt] | SubmitError]:
        """Verify a block's answer; the first one from a new epoch fetches (and verifies from
        genesis) that epoch's history first."""
        try:
            return self.core.block_results(reply, mine, address)
        except UnknownEpoch:
            await self.refresh_epochs(address)
            return self.core.block_results(reply, mine, address)

    async def _after_error(self, exc: grpc.aio.AioRpcError, signed: Signed, address: str,
                           errors: list[str]) -> list[VerifiedReceipt] | str:
        """What a failed SubmitRecord means: the original receipts (it committed before), a
        redirect to the primary, "retry" elsewhere, or a final error (raised)."""
        code = exc.code()
        trailers = exc.trailing_metadata()
        if code == grpc.StatusCode.ALREADY_EXISTS:
            original = self.core.original_of(trailers)
            if original is not None:
                try:  # trust nothing one validator says: a bad answer means "ask another"
                    return await self._receipts(original, signed, address)
                except SubmitError as bad:
                    errors.append(f"{address}: {bad}")
                    return "retry"
            errors.append(f"{address}: ALREADY_EXISTS without receipts")
            return "retry"
        primary = self.core.primary_of(trailers)
        if primary is not None:
            self.core.redirected(primary)
            return "redirect"
        if code not in RETRYABLE:
            raise SubmitError(f"{address}: {exc.details()}", code) from exc
        errors.append(f"{address}: {code.name} {exc.details()}")
        return "retry"

    async def submit_many(self, items: Sequence[bytes], *,
                          envelope_items: int = ENVELOPE_ITEMS_MAX,
                          on_progress: Callable[[int], None] | None = None
                          ) -> list[VerifiedReceipt | SubmitError]:
        """Submit many items: envelopes of up to `envelope_items`, streamed to the primary; one
        result per item, in order (a receipt, or the error of its envelope)."""
        chunks = self.core.envelopes(items, envelope_items)
        signed = [await self.sign(c) for c in chunks]
        results: list[VerifiedReceipt | SubmitError] = []
        by_key: dict[tuple[str, int], list[VerifiedReceipt] | SubmitError] = {}
        async for s, outcome in self.submit_stream(signed):
            by_key[s.request.key] = outcome
            if on_progress is not None:
                on_progress(len(s.items))
        for s in signed:
            outcome = by_key.get(s.request.key, SubmitError("not answered"))
            results.extend(outcome if isinstance(outcome, list) else [outcome] * len(s.items))
        return results

    async def submit_stream(self, signed: Sequence[Signed], *, wait_s: float = ATTEMPT_WAIT_S,
                            in_flight: int = STREAM_ENVELOPES_IN_FLIGHT,
                            on_sent: Callable[[Signed], None] | None = None
                            ) -> AsyncIterator[tuple[Signed, list[VerifiedReceipt] | SubmitError]]:
        """Submit signed requests on one stream to the primary, yielding each with its verified
        receipts (or its error) as blocks commit them; at most `in_flight` unanswered at once.
        Requests the stream could not settle (a retryable error, the stream broke) are
        retried one by one through `submit_signed`, which moves between validators.
        `on_sent(signed)` is called as each request goes out (when it gets room)."""
        mine = {s.request.key: s for s in signed}
        settled: set[tuple[str, int]] = set()
        address = self.core.order()[0]
        room = asyncio.Semaphore(in_flight)

        async def outgoing() -> AsyncIterator[pb.SubmitRecordRequest]:
            for s in signed:
                await room.acquire()
                if on_sent is not None:
                    on_sent(s)
                yield pb.SubmitRecordRequest(request=codec.encode_request(s.request),
                                             wait_ms=int(wait_s * 1000))

        retry: list[Signed] = []
        call = self._stub(address).SubmitStream(outgoing())
        try:
            while len(settled) < len(mine):
                try:
                    reply = await asyncio.wait_for(call.read(), wait_s)
                except TimeoutError:
                    break  # the primary is silent or slow: the rest go to the others
                if reply is grpc.aio.EOF:
                    break
                if reply.HasField("receipts"):
                    try:
                        results = await self._block_results(reply.receipts, mine, address)
                    except SubmitError:
                        continue  # an answer that does not verify settles nothing
                    for key, result in results.items():
                        if key in settled:
                            continue
                        settled.add(key)
                        room.release()
                        if isinstance(result, SubmitError) and result.code in RETRYABLE:
                            retry.append(mine[key])
                        else:
                            yield mine[key], result
                elif reply.HasField("error"):
                    e = reply.error
                    key = (e.client_id, e.nonce)
                    if key not in mine or key in settled:
                        continue
                    settled.add(key)
                    room.release()
                    code = status_code(e.code)
                    if e.redirect:
                        self.core.redirected(e.primary)
                        retry.append(mine[key])
                    elif code == grpc.StatusCode.ALREADY_EXISTS and e.HasField("original"):
                        try:
                            yield mine[key], await self._receipts(e.original, mine[key], address)
                        except SubmitError:
                            retry.append(mine[key])
                    elif code in RETRYABLE:
                        retry.append(mine[key])
                    else:
                        yield mine[key], SubmitError(f"{address}: {e.message}", code)
        except grpc.aio.AioRpcError:
            pass  # whatever is unsettled is retried below
        finally:
            call.cancel()
        unanswered = [s for key, s in mine.items() if key not in settled]
        async for done in self._resubmit([(s, False) for s in retry]
                                         + [(s, True) for s in unanswered]):
            yield done

    async def _resubmit(self, pending: list[tuple[Signed, bool]]
                        ) -> AsyncIterator[tuple[Signed, list[VerifiedReceipt] | SubmitError]]:
        """Requests a stream could not settle, each through `submit_signed` (several at once);
        those never answered go out as retries (the primary may be the problem)."""
        room = asyncio.Semaphore(STREAM_ENVELOPES_IN_FLIGHT)

        async def one(s: Signed, retry: bool) -> tuple[Signed,
                                                       list[VerifiedReceipt] | SubmitError]:
            async with room:
                try:
                    return s, await self.submit_signed(s, retry=retry)
                except SubmitError as exc:
                    return s, exc
        for task in asyncio.as_completed([one(s, r) for s, r in pending]):
            yield await task

    # ---------------------------------------------------------------------------- reading

    async def _read(self, call: Callable[[pb_grpc.LedgerStub], Awaitable[T]],
                    address: str | None = None) -> tuple[T, str]:
        """Run a read at `address`, or at one validator after another until one answers
        (NOT_FOUND from one may mean it is behind). Returns (reply, address)."""
        last: Exception | None = None
        not_found: grpc.aio.AioRpcError | None = None
        order = [address] if address else random.sample(
            list(self.core.validators.values()), len(self.core.validators))
        for addr in order:
            try:
                return await call(self._stub(addr)), addr
            except grpc.aio.AioRpcError as exc:
                if exc.code() in {grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.FAILED_PRECONDITION}:
                    raise SubmitError(f"{addr}: {exc.details()}", exc.code()) from exc
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    not_found = exc
                last = exc
        if not_found is not None:
            raise SubmitError(str(not_found.details()), grpc.StatusCode.NOT_FOUND)
        raise SubmitError(f"no validator answered: {last}", grpc.StatusCode.UNAVAILABLE)

    async def epoch_history(self, address: str) -> bytes:
        """The epoch history of the validator at `address` exactly as it sends it (GetEpochs),
        unverified: a bundle carries these bytes so that it can be verified again offline.
        Raises grpc.RpcError as `status` does."""
        reply: pb.EpochsReply = await self._stub(address).GetEpochs(
            pb.GetEpochsRequest(), timeout=self._timeout_s)
        return bytes(reply.epochs)

    async def refresh_epochs(self, address: str | None = None) -> None:
        """Fetch the epoch history and verify it from genesis (a block from a new epoch)."""
        reply, addr = await self._read(
            lambda stub: stub.GetEpochs(pb.GetEpochsRequest(), timeout=self._timeout_s),
            address)
        self.core.learn_epochs(reply.epochs, addr)
        members, _ = await self._read(lambda stub: stub.ListMembers(
            pb.ListMembersRequest(auth=self.core.read_auth("ListMembers", "")),
            timeout=self._timeout_s), address)
        for v in members.validators:
            if v.client_address:
                self.core.validators.setdefault(v.replica_id, v.client_address)
        self.core.keep_current_validators()

    async def verify_receipt(self, reply: pb.Receipt, record_id: str, address: str) -> Receipt:
        try:
            return self.core.verify_receipt_of(reply, record_id, address)
        except UnknownEpoch:
            await self.refresh_epochs(address)
            return self.core.verify_receipt_of(reply, record_id, address)

    async def _admitted_org_key(self, org: str) -> bytes:
        """An organisation admitted after genesis: its encryption key from its join request,
        whose inclusion and commit certificate we verify (the key is the applicant's own signed
        words; that the request was approved is the answering validator's word, and the ledger
        refuses a record naming a reader that is not a member)."""
        errors = []
        for address in list(self.core.validators.values()):
            try:
                members, _ = await self._read(lambda stub: stub.ListMembers(
                    pb.ListMembersRequest(auth=self.core.read_auth("ListMembers", "")),
                    timeout=self._timeout_s), address)
                found = next((p for p in members.proposals if p.kind == "join"
                              and p.org == org and p.status == "approved"), None)
                if found is None:
                    errors.append(f"{address}: not a member")
                    continue
                pid = found.proposal_id
                reply, _ = await self._read(functools.partial(self._get_receipt, pid), address)
                receipt = await self.verify_receipt(reply, pid, address)
                return self.core.join_request_key(receipt, org)
            except SubmitError as exc:
                errors.append(f"{address}: {exc}")
        raise SubmitError(f"organisation {org!r} is neither in the genesis file nor an "
                          f"admitted member ({'; '.join(errors[-2:])})",
                          grpc.StatusCode.INVALID_ARGUMENT)

    def _get_receipt(self, record_id: str, stub: pb_grpc.LedgerStub) -> Any:
        return stub.GetReceipt(pb.GetRecordRequest(
            record_id=record_id, auth=self.core.read_auth("GetReceipt", record_id)),
            timeout=self._timeout_s)

    async def get_receipt(self, record_id: str, *,
                          address: str | None = None) -> tuple[Receipt, str]:
        """A record's receipt, verified against genesis."""
        reply, addr = await self._read(functools.partial(self._get_receipt, record_id), address)
        return await self.verify_receipt(reply, record_id, addr), addr

    async def get_record_reply(self, record_id: str, *, access_id: str = "",
                               min_height: int = 0,
                               address: str | None = None) -> tuple[pb.RecordReply, str]:
        return await self._read(lambda stub: stub.GetRecord(pb.GetRecordRequest(
            record_id=record_id, access_id=access_id, min_height=min_height,
            auth=self.core.read_auth("GetRecord", f"{record_id}/{access_id}")),
            timeout=self._timeout_s), address)

    async def get(self, record_id: str, *, decrypt: bool = False, purpose: str = "read",
                  address: str | None = None, min_height: int = 0) -> RecordView:
        """A record, verified against genesis; with decrypt, its payload. Reading a patient
        record's key first commits an Access transaction (the ledger logs every such read).
        Answered by a validator that has executed at least `min_height` and every block this
        client has a receipt from (read-your-writes)."""
        reply, addr = await self.get_record_reply(
            record_id, min_height=max(min_height, self.core.seen_height), address=address)
        access_id = ""
        if decrypt and reply.kind == RecordKind.PATIENT.value and not reply.HasField("erasure"):
            access = await self.access(record_id, purpose)
            access_id = access.record_id
            # The access (and any grant before it) is committed at access.height: read from a
            # validator that has executed that far.
            reply, addr = await self.get_record_reply(record_id, access_id=access_id,
                                                      min_height=access.height, address=address)
        if decrypt and reply.key_withheld and not access_id and address is None:
            # A validator behind a recent grant says "not a reader": ask the others.
            for other in self.core.validators.values():
                if other == addr:
                    continue
                try:
                    again, _ = await self.get_record_reply(record_id, address=other)
                except SubmitError:
                    continue
                if not again.key_withheld:
                    reply, addr = again, other
                    break
        try:
            view = self.core.record_view(reply, record_id, decrypt, addr)
        except UnknownEpoch:
            await self.refresh_epochs(addr)
            view = self.core.record_view(reply, record_id, decrypt, addr)
        return replace(view, access_id=access_id, screening=reply.screening)

    async def access(self, record_id: str, purpose: str = "read") -> VerifiedReceipt:
        """Commit an Access: the ledger's log entry that lets this org fetch a patient record's
        key (refused reads are logged too)."""
        return await self.submit_tx(Access(record_id, purpose, int(time.time() * 1000)))

    async def grant(self, record_id: str, org: str, *, purpose: str = "grant") -> VerifiedReceipt:
        """Let `org` read a record: unwrap this org's copy of the key, wrap it for `org`."""
        reply, _ = await self.get_record_reply(record_id)
        if reply.kind == RecordKind.PATIENT.value and not reply.HasField("erasure"):
            access = await self.access(record_id, purpose)
            reply, _ = await self.get_record_reply(record_id, access_id=access.record_id,
                                                   min_height=access.height)
        key = self.core.record_key(reply)
        await self.ensure_readers([org])
        wrapped = envelope.wrap_key(key, self.core.org_keys[org])
        return await self.submit_tx(Grant(record_id, org, wrapped))

    async def revoke(self, record_id: str, org: str) -> VerifiedReceipt:
        return await self.submit_tx(Revoke(record_id, org))

    async def erase(self, record_id: str, subject_id: str, reason: str = "") -> VerifiedReceipt:
        return await self.submit_tx(Erase(record_id, subject_id, reason))

    async def review_vote(self, record_id: str, accept: bool) -> VerifiedReceipt:
        """A validator's vote on a quarantined record (this identity must be a validator's)."""
        return await self.submit_tx(ReviewVote(record_id, accept))

    async def verdict(self, record_id: str, decision: str, risk: float,
                      verdict_json: str) -> VerifiedReceipt:
        """The admission service's advice on a record (this identity must be the service)."""
        return await self.submit_tx(Verdict(record_id, decision, round(risk * 1000),
                                            verdict_json))

    async def governance(self, tx: GovernanceTx) -> VerifiedReceipt:
        """Submit a join request (as an applicant identity), a removal proposal or a member
        vote (as a validator identity)."""
        return await self.submit_tx(tx)

    async def member_vote(self, proposal_id: str, approve: bool) -> VerifiedReceipt:
        """This validator's vote on a membership proposal. An approval signs the validator-set
        change with the validator key (the identity's signer), for the current epoch as the
        validators report it; the ledger checks the signature against the real set, so a
        validator that lied about it only gets the vote refused."""
        members = await self.list_members()
        proposal = next((p for p in members.proposals if p.proposal_id == proposal_id), None)
        if proposal is None:
            raise SubmitError(f"no membership proposal {proposal_id}",
                              grpc.StatusCode.NOT_FOUND)
        approval = b""
        if approve:
            current = tuple(Member(v.replica_id, v.public_key) for v in members.validators)
            new = changed_members(current, proposal.kind, proposal.replica_id,
                                  proposal.validator_key)
            approval = self.core.identity.signer.sign(m.reconfiguration_signing_bytes(
                self.core.chain_id, members.epoch, new))
        return await self.governance(MemberVote(proposal_id, approve, members.epoch, approval))

    async def list_members(self, *, address: str | None = None) -> pb.MembersReply:
        reply: pb.MembersReply
        reply, _ = await self._read(lambda stub: stub.ListMembers(
            pb.ListMembersRequest(auth=self.core.read_auth("ListMembers", "")),
            timeout=self._timeout_s), address)
        return reply

    async def list_screening(self, screening: str, *, limit: int = 1000,
                             address: str | None = None) -> pb.ScreeningReply:
        """Up to `limit` records in one screening status, oldest first, page after page from
        one validator (`more` is set when records beyond `limit` remain)."""
        out = pb.ScreeningReply()
        request = pb.ListScreeningRequest(screening=screening, after_index=-1)
        addr = address
        while True:
            request.limit = limit - len(out.records)
            request.auth.CopyFrom(self.core.read_auth(
                "ListScreening", f"{screening}/{request.after_height}"))
            page = pb.ListScreeningRequest()
            page.CopyFrom(request)
            reply: pb.ScreeningReply
            reply, addr = await self._read(functools.partial(self._list_screening_page, page),
                                           addr)
            out.quorum = reply.quorum
            out.records.extend(reply.records)
            out.more = reply.more
            if not reply.more or len(out.records) >= limit:
                return out
            request.after_height, request.after_index = reply.next_height, reply.next_index

    async def get_block(self, height: int, *, audit: bool = False,
                        address: str | None = None) -> pb.Block:
        reply: pb.Block
        reply, _ = await self._read(lambda stub: stub.GetBlock(pb.GetBlockRequest(
            height=height, audit=audit, auth=self.core.read_auth("GetBlock", str(height))),
            timeout=self._timeout_s), address)
        return reply

    async def stream_blocks(self, from_height: int, to_height: int, *, audit: bool = False,
                            address: str) -> AsyncIterator[pb.Block]:
        """Blocks from_height..to_height from one validator, as they come."""
        auth = self.core.read_auth("StreamBlocks", f"{from_height}-{to_height}")
        call = self._stub(address).StreamBlocks(pb.StreamBlocksRequest(
            from_height=from_height, to_height=to_height, auth=auth, audit=audit),
            timeout=max(self._timeout_s, 600))
        async for block in call:
            yield block

    async def status(self, address: str) -> pb.StatusReply:
        reply: pb.StatusReply = await self._stub(address).GetStatus(pb.GetStatusRequest(),
                                                                    timeout=self._timeout_s)
        return reply

    def _list_screening_page(self, page: pb.ListScreeningRequest,
                             stub: pb_grpc.LedgerStub) -> Any:
        return stub.ListScreening(page, timeout=self._timeout_s)

    def _list_subject_page(self, page: pb.ListSubjectRequest, stub: pb_grpc.LedgerStub) -> Any:
        return stub.ListSubject(page, timeout=self._timeout_s)

    async def list_subject(self, kind: str, subject_id: str, *, address: str | None = None,
                           page_size: int = 0) -> tuple[list[pb.SubjectEntry], str]:
        """Every entry of a subject's history, page after page from one validator."""
        entries: list[pb.SubjectEntry] = []
        request = pb.ListSubjectRequest(kind=kind, subject_id=subject_id, after_index=-1,
                                        limit=page_size)
        addr = address
        while True:
            request.auth.CopyFrom(self.core.read_auth("ListSubject", f"{kind}/{subject_id}"))
            page = pb.ListSubjectRequest()
            page.CopyFrom(request)
            reply, addr = await self._read(functools.partial(self._list_subject_page, page),
                                           addr)
            entries.extend(reply.entries)
            if not reply.more:
                return entries, addr
            request.after_height, request.after_index = reply.next_height, reply.next_index


class _Coalescer:
    """Concurrent `submit_item` calls share envelopes: the first goes at once; while envelopes
    are in flight, later items wait for the next one (at most `items_max` per envelope)."""

    IN_FLIGHT_MAX = 4

    def __init__(self, client: AsyncConsortiumClient, items_max: int) -> None:
        self._client = client
        self._items_max = items_max
        self._waiting: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]] = []
        self._in_flight = 0

    async def add(self, item: bytes) -> VerifiedReceipt:
        fut: asyncio.Future[VerifiedReceipt] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        self._pump()
        return await fut

    def _pump(self) -> None:
        # Nagle: send when nothing is in flight, or when a full envelope is waiting.
        while self._waiting and self._in_flight < self.IN_FLIGHT_MAX and (
                self._in_flight == 0 or len(self._waiting) >= self._items_max):
            batch = self._waiting[: self._items_max]
            del self._waiting[: len(batch)]
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[tuple[bytes, asyncio.Future[VerifiedReceipt]]]) -> None:
        try:
            receipts = await self._client.submit_items([item for item, _ in batch])
            for (_, fut), receipt in zip(batch, receipts, strict=True):
                if not fut.done():
                    fut.set_result(receipt)
        except BaseException as exc:  # every waiting caller hears of it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else
                                      SubmitError(repr(exc)))
        finally:
            self._in_flight -= 1
            self._pump()


class ConsortiumClient:
    """The blocking client: the asyncio client's code, on a private event loop in a background
    thread (so many threads share its channels and its envelopes)."""

    def __init__(self, genesis: Genesis, identity: Identity, ca_cert: bytes, *,
                 timeout_s: float = 30.0, envelope_items_max: int = ENVELOPE_ITEMS_MAX) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="consortium-client")
        self._thread.start()

        async def make() -> AsyncConsortiumClient:
            return AsyncConsortiumClient(genesis, identity, ca_cert, timeout_s=timeout_s,
                                         envelope_items_max=envelope_items_max)
        self.aio = self._run(make())
        self.core = self.aio.core

    @classmethod
    def from_dir(cls, directory: Path, org: str, **kw: Any) -> ConsortiumClient:
        return cls(Genesis.load(directory / "genesis.json"), Identity.from_dir(directory, org),
                   (directory / "ca" / "ca.crt").read_bytes(), **kw)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self._run(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> ConsortiumClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit_provenance(self, product: str, event: str, **kw: Any) -> VerifiedReceipt:
        return self._run(self.aio.submit_provenance(product, event, **kw))

    def submit_patient(self, patient: str, record_type: str, payload: bytes, *,
                       readers: Sequence[str] = (),
                       metadata: dict[str, str] | None = None) -> VerifiedReceipt:
        return self._run(self.aio.submit_patient(patient, record_type, payload, readers=readers,
                                                 metadata=metadata))

    def submit_item(self, item: bytes) -> VerifiedReceipt:
        return self._run(self.aio.submit_item(item))

    def submit_epcis(self, data: bytes | str | Mapping[str, Any], **kw: Any) -> EpcisSubmission:
        return self._run(self.aio.submit_epcis(data, **kw))

    def submit_fhir(self, patient: str, data: bytes | str | Mapping[str, Any], *,
                    readers: Sequence[str] = ()) -> VerifiedReceipt:
        return self._run(self.aio.submit_fhir(patient, data, readers=readers))

    def submit_tx(self, tx: RecordTx | GovernanceTx) -> VerifiedReceipt:
        return self._run(self.aio.submit_tx(tx))

    def epoch_history(self, address: str) -> bytes:
        return self._run(self.aio.epoch_history(address))

    def submit_items(self, items: Sequence[bytes]) -> list[VerifiedReceipt]:
        return self._run(self.aio.submit_items(items))

    def submit_many(self, items: Sequence[bytes], **kw: Any) -> list[VerifiedReceipt | SubmitError]:
        return self._run(self.aio.submit_many(items, **kw))

    def submit_signed(self, signed: Signed, *, retry: bool = False) -> list[VerifiedReceipt]:
        return self._run(self.aio.submit_signed(signed, retry=retry))

    def ensure_readers(self, readers: Sequence[str]) -> None:
        self._run(self.aio.ensure_readers(readers))

    def get(self, record_id: str, **kw: Any) -> RecordView:
        return self._run(self.aio.get(record_id, **kw))

    def get_receipt(self, record_id: str, **kw: Any) -> tuple[Receipt, str]:
        return self._run(self.aio.get_receipt(record_id, **kw))

    def get_record_reply(self, record_id: str, **kw: Any) -> tuple[pb.RecordReply, str]:
        return self._run(self.aio.get_record_reply(record_id, **kw))

    def verify_receipt(self, reply: pb.Receipt, record_id: str, address: str) -> Receipt:
        return self._run(self.aio.verify_receipt(reply, record_id, address))

    def access(self, record_id: str, purpose: str = "read") -> VerifiedReceipt:
        return self._run(self.aio.access(record_id, purpose))

    def grant(self, record_id: str, org: str, **kw: Any) -> VerifiedReceipt:
        return self._run(self.aio.grant(record_id, org, **kw))

    def revoke(self, record_id: str, org: str) -> VerifiedReceipt:
        return self._run(self.aio.revoke(record_id, org))

    def erase(self, record_id: str, subject_id: str, reason: str = "") -> VerifiedReceipt:
        return self._run(self.aio.erase(record_id, subject_id, reason))

    def review_vote(self, record_id: str, accept: bool) -> VerifiedReceipt:
        return self._run(self.aio.review_vote(record_id, accept))

    def verdict(self, record_id: str, decision: str, risk: float,
                verdict_json: str) -> VerifiedReceipt:
        return self._run(self.aio.verdict(record_id, decision, risk, verdict_json))

    def governance(self, tx: GovernanceTx) -> VerifiedReceipt:
        return self._run(self.aio.governance(tx))

    def member_vote(self, proposal_id: str, approve: bool) -> VerifiedReceipt:
        return self._run(self.aio.member_vote(proposal_id, approve))

    def list_members(self, **kw: Any) -> pb.MembersReply:
        return self._run(self.aio.list_members(**kw))

    def list_screening(self, screening: str, **kw: Any) -> pb.ScreeningReply:
        return self._run(self.aio.list_screening(screening, **kw))

    def get_block(self, height: int, **kw: Any) -> pb.Block:
        return self._run(self.aio.get_block(height, **kw))

    def stream_blocks(self, from_height: int, to_height: int, *, audit: bool = False,
                      address: str) -> Iterator[pb.Block]:
        """Blocks from one validator, as they come (a blocking iterator)."""
        agen = self.aio.stream_blocks(from_height, to_height, audit=audit, address=address)

        async def next_block() -> pb.Block:
            return await agen.__anext__()
        while True:
            try:
                yield self._run(next_block())
            except StopAsyncIteration:
                return

    def status(self, address: str) -> pb.StatusReply:
        return self._run(self.aio.status(address))

    def list_subject(self, kind: str, subject_id: str,
                     **kw: Any) -> tuple[list[pb.SubjectEntry], str]:
        return self._run(self.aio.list_subject(kind, subject_id, **kw))

    def refresh_epochs(self, address: str | None = None) -> None:
        self._run(self.aio.refresh_epochs(address))
