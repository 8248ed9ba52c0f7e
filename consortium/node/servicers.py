"""The validator's gRPC servicers: thin. They check input, answer with precise statuses,
register waiting submissions (submissions.py) and read through the read pool (storage/reads.py),
never through the consensus loop's database connection. They see the replica only through the
validator's read-only view (`Validator.nonce_status`, `.replica.stable_checkpoint`, ...)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import grpc

from consortium.ledger import membership as ms
from consortium.ledger.blocks import Screening
from consortium.ledger.items import is_record_id
from consortium.ledger.reads import read_signing_bytes
from consortium.ledger.records import RecordKind, decode_public
from consortium.ledger.transactions import InvalidTransaction, applicant_key
from consortium.node import metrics, views
from consortium.node.submissions import (
    Replayed,
    StreamSink,
    SubmitFailed,
    UnarySink,
    check_content,
    check_signature,
    error_to_proto,
)
from consortium.node.transport import COALESCE_MESSAGES_MAX
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import decode_request, encode_epoch_records
from consortium.pbft.state import NonceStatus
from consortium.storage.reads import BLOCKS_PER_QUERY_MAX
from consortium.wire import (
    TooLarge,
    WireError,
    block_receipts_to_proto,
    checkpoint_to_proto,
    pb,
    pb_grpc,
    submit_request_from_proto,
)

if TYPE_CHECKING:
    from consortium.node.validator import Validator

MIN_HEIGHT_WAIT_S = 5.0
STREAM_IN_FLIGHT_BYTES_MAX = 32 << 20
"""Request bytes one SubmitStream may have waiting for their commit (flow control beyond)."""
STREAM_SUBSCRIBERS_MAX = 256
"""StreamBlocks subscribers one validator serves at once (RESOURCE_EXHAUSTED beyond)."""
CLIENT_BLOCKS_CACHED = 64
"""Client views of recent blocks kept encoded: every StreamBlocks subscriber gets the same
object, so fan-out costs a send each, not a query and an encoding each."""


def _common_name(context: grpc.aio.ServicerContext) -> str | None:
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


class ReplicaService(pb_grpc.ReplicaServicer):
    """Peer-facing: mutual TLS with a certificate of the consortium CA, and of a current
    validator (`validator-<id>` of the current or incoming validator set): the admission
    service's or another member's certificate does not get full blocks."""

    def __init__(self, v: Validator) -> None:
        self.v = v

    async def _peer(self, context: grpc.aio.ServicerContext) -> None:
        if not self.v.is_current_validator_cert(_common_name(context)):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "peer RPCs are for the consortium's current validators")

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        await self._peer(context)
        received = 0
        limit = self.v.genesis.protocol.message_bytes_max
        async for msg in request_iterator:
            received += 1
            while self.v.inbound_full(len(msg.data) + sum(len(d) for d in msg.batch)):
                await asyncio.sleep(0.005)  # back-pressure: gRPC flow control slows the peer
            if not self.v.serving:
                continue  # no database: what it sends is retransmitted once we are back
            for data in (msg.data, *msg.batch[:COALESCE_MESSAGES_MAX]):  # honest peers: <=
                if data and len(data) <= limit:
                    self.v.submit_event(ev.PeerMessage(data))
            if received % 1024 == 0:
                yield pb.PeerAck(received=received)

    async def FetchCheckpoint(self, request, context):  # type: ignore[no-untyped-def]
        await self._peer(context)
        snapshot, proof = self.v.replica.stable_checkpoint
        if snapshot is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no stable checkpoint yet")
        assert snapshot is not None
        return checkpoint_to_proto(snapshot, proof)

    async def FetchBlocks(self, request, context):  # type: ignore[no-untyped-def]
        await self._peer(context)
        if request.to_height < request.from_height or request.from_height < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad height range")
        to = min(request.to_height, request.from_height + BLOCKS_PER_QUERY_MAX - 1)
        for stored in await self.v.reads.get_blocks(request.from_height, to,
                                                    BLOCKS_PER_QUERY_MAX):
            yield views.stored_block_to_proto(stored)


async def _check_record_id(record_id: str, context: grpc.aio.ServicerContext,
                           what: str = "a record id") -> None:
    """A record id is 64 lowercase hex digits; anything else is answered without echoing it."""
    if not is_record_id(record_id):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{what} is 64 lowercase hex digits (got {len(record_id)} "
                            "characters)")


class LedgerService(pb_grpc.LedgerServicer):
    """Client-facing. Every input is validated and answered with a precise status."""

    def __init__(self, v: Validator) -> None:
        self.v = v
        self._subscribers = 0
        self._client_blocks: dict[int, pb.Block] = {}

    # ------------------------------------------------------------------------- submissions

    def _admit(self, msg: pb.SubmitRecordRequest) -> m.Request:
        """Decode and check one submission; raises SubmitFailed."""
        v = self.v
        if not v.accepting:
            raise SubmitFailed(grpc.StatusCode.UNAVAILABLE,
                               f"validator is not serving: {v.problem or 'shutting down'}")
        try:
            req = submit_request_from_proto(msg, v.genesis.protocol.request_bytes_max)
        except TooLarge as exc:
            raise SubmitFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
        except WireError as exc:
            raise SubmitFailed(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        problem = check_signature(req, v.clients.client_key(req.client_id), v.submit_rules)
        if problem is not None:
            raise problem
        # A signed request seen before is answered as such before its content is judged
        # against today's ledger, which it is already part of (a join request's own proposal
        # holds its keys and organisation id): a client that lost the first answer gets its
        # receipts, not a refusal.
        status = v.nonce_status(req.client_id, req.nonce)
        if status is NonceStatus.STALE:
            raise SubmitFailed(grpc.StatusCode.FAILED_PRECONDITION,
                               f"nonce {req.nonce} is below {req.client_id}'s replay window")
        if status is NonceStatus.EXECUTED:
            raise Replayed(req)
        problem = check_content(req, v.submit_rules)
        if problem is not None:
            raise problem
        if v.inbound_full(req.size_bytes):
            raise SubmitFailed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "validator is overloaded; retry later or elsewhere")
        return req

    async def _original(self, req: m.Request) -> SubmitFailed:
        """A replayed request: ALREADY_EXISTS with where it committed, or FAILED_PRECONDITION
        when another request used its nonce."""
        found = await self.v.reads.find_envelope(req.client_id, req.nonce)
        if found is None:
            return SubmitFailed(grpc.StatusCode.UNAVAILABLE,
                                "the request executed but is not in this validator's ledger yet; "
                                "retry")
        height, index, _status = found
        stored = await self.v.reads.get_block(height)
        assert stored is not None
        if views.request_digest(stored.envelopes[index]) != req.digest:
            return SubmitFailed(grpc.StatusCode.FAILED_PRECONDITION,
                                f"nonce {req.nonce} of {req.client_id} was already used by "
                                "another request; sign again with a fresh nonce")
        original = block_receipts_to_proto(views.block_receipts_from_stored(
            stored, [index], self.v.chain_id))
        return SubmitFailed(grpc.StatusCode.ALREADY_EXISTS,
                            f"request {req.client_id}/{req.nonce} was already committed at "
                            f"height {height}; its receipts are attached", original=original)

    async def SubmitRecord(self, request, context):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        v = self.v
        sink = UnarySink()
        req: m.Request | None = None
        try:
            try:
                req = self._admit(request)
                v.submissions.expect(req, sink)
                v.submit_event(ev.ClientRequest(req, retry=request.retry))
                wait_ms = min(request.wait_ms or v.config.submit_wait_ms_max,
                              v.config.submit_wait_ms_max)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(sink.future), wait_ms / 1000)
                except TimeoutError as exc:
                    raise SubmitFailed(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"not committed within {wait_ms} ms; retrying the same request is "
                        "safe (it executes at most once)") from exc
            except Replayed as exc:
                raise await self._original(exc.request) from exc
        except SubmitFailed as exc:
            await self._abort(context, exc)
        finally:
            if req is not None:
                v.submissions.discard(req.key, sink)
        metrics.submit_latency.observe(time.monotonic() - started)
        return reply

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: SubmitFailed) -> None:
        trailers: list[tuple[str, str | bytes]] = []
        if exc.original is not None:
            trailers.append(("receipts-bin", exc.original.SerializeToString()))
        if exc.primary is not None:
            trailers.append(("consortium-primary", str(exc.primary)))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        await context.abort(exc.code, exc.message)

    async def SubmitStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        """Many requests on one stream, answered per block (see proto)."""
        v = self.v
        sink = StreamSink(STREAM_IN_FLIGHT_BYTES_MAX)
        waiting: set[tuple[str, int]] = set()

        async def replays() -> None:
            while True:
                req = await sink.replayed.get()
                sink.failed(req.key, await self._original(req))

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    try:
                        req = self._admit(msg)
                    except Replayed as exc:
                        sink.replayed.put_nowait(exc.request)
                        continue
                    except SubmitFailed as exc:
                        key = _key_of(msg)
                        sink.replies.put_nowait(pb.SubmitReply(error=error_to_proto(key, exc)))
                        continue
                    await sink.reserve(req.key, req.size_bytes)
                    waiting.add(req.key)
                    v.submissions.expect(req, sink)
                    v.submit_event(ev.ClientRequest(req, retry=msg.retry))
                while sink.bytes > 0 or not sink.replayed.empty():
                    await asyncio.sleep(0.05)
            finally:
                sink.replies.put_nowait(None)

        reader = asyncio.create_task(read())
        replayer = asyncio.create_task(replays())
        try:
            while (reply := await sink.replies.get()) is not None:
                yield reply
        finally:
            reader.cancel()
            replayer.cancel()
            for key in waiting:
                v.submissions.discard(key, sink)

    # --------------------------------------------------------------------------- reads

    async def _authorize(self, auth: pb.ReadAuth, method: str, argument: str,
                         context: grpc.aio.ServicerContext) -> str:
        """The organisation of the member whose signed ReadAuth this is, or abort with
        UNAUTHENTICATED."""
        v = self.v
        key = v.clients.client_key(auth.client_id) if auth.client_id else None
        org = v.submit_rules.orgs.org_of(auth.client_id) if auth.client_id else None
        if key is None or org is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "reads need a signed ReadAuth from a member's client key")
        assert key is not None and org is not None
        await self._check_read_signature(auth, method, argument, context, key)
        return org

    async def _check_read_signature(self, auth: pb.ReadAuth, method: str, argument: str,
                                    context: grpc.aio.ServicerContext,
                                    key: bytes | None) -> None:
        v = self.v
        if key is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad read signature")
        assert key is not None
        skew = abs(int(time.time() * 1000) - auth.timestamp_ms)
        if skew > v.genesis.policy.read_clock_skew_ms:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"read timestamp is {skew} ms away from the validator's clock "
                                f"(limit {v.genesis.policy.read_clock_skew_ms} ms)")
        signed = read_signing_bytes(v.chain_id, auth.client_id, auth.timestamp_ms, method,
                                    argument)
        if len(auth.signature) != 64 or not v.verifier.verify(key, signed, auth.signature):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad read signature")

    async def _receipt(self, height: int, idx: int,
                       context: grpc.aio.ServicerContext, show: Any = None) -> pb.Receipt:
        material = await self.v.reads.receipt_material(height, idx)
        if material is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no entry at {height}/{idx}")
        assert material is not None
        return views.receipt_from_material(material, self.v.chain_id, show=show)

    async def GetReceipt(self, request, context):  # type: ignore[no-untyped-def]
        await _check_record_id(request.record_id, context)
        await self._authorize(request.auth, "GetReceipt", request.record_id, context)
        found = await self.v.reads.find_entry(request.record_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id}")
        assert found is not None
        return await self._receipt(found.height, found.idx, context)

    async def GetRecord(self, request, context):  # type: ignore[no-untyped-def]
        await _check_record_id(request.record_id, context)
        if request.access_id:
            await _check_record_id(request.access_id, context, "an access id")
        org = await self._authorize(request.auth, "GetRecord",
                                    f"{request.record_id}/{request.access_id}", context)
        v = self.v
        if request.min_height and not await v.wait_height(request.min_height,
                                                          MIN_HEIGHT_WAIT_S):
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"this validator is at height {v.height}, below "
                                f"{request.min_height}: ask another or retry")
        rec = await v.reads.get_record(request.record_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id}")
        assert rec is not None
        view = views.record_view(rec)
        keys: dict[str, bytes] = {}
        withheld = ""
        if rec.erasure is not None:
            withheld = "the record was erased"
        elif org not in rec.readers:
            withheld = f"{org} is not a reader of this record"
        elif rec.kind == RecordKind.PATIENT.value:
            withheld = await self._access_problem(request.access_id, rec.record_id, org)
        if not withheld:
            key = await v.reads.reader_key(rec, org)
            if key is None:
                withheld = f"no key of {org} is stored for this record"
            else:
                keys = {org: key}
        receipt = await self._receipt(rec.height, rec.idx, context, show=view)
        public = view.present()[0]
        also: tuple[str, ...] = ()
        document = b""
        if public is not None:
            try:
                p = decode_public(public)
                also, document = p.also, p.document
            except InvalidTransaction:
                pass
        return views.record_to_proto(rec, view, keys, receipt, withheld, document, also)

    async def _access_problem(self, access_id: str, record_id: str, org: str) -> str:
        """Why a committed Access does not (or no longer) let `org` read `record_id`'s key;
        "" when it does."""
        if not access_id:
            return ("a patient record's key is released only against a committed Access "
                    "transaction (access_id)")
        found = await self.v.reads.find_entry(access_id)
        row = None if found is None else await self.v.reads.access_at(found.height, found.idx)
        if row is None or row.record_id != record_id:
            return f"no committed access {access_id} to this record"
        if row.org != org:
            return "the access was made by another organisation"
        if not row.granted:
            return f"{org} is not a reader of this record"
        age = abs(int(time.time() * 1000) - row.at_ms)
        if age > self.v.genesis.policy.access_ttl_ms:
            return (f"the access is {age // 1000} s old; the limit is "
                    f"{self.v.genesis.policy.access_ttl_ms // 1000} s: access again")
        return ""

    async def _client_block(self, height: int, audit: bool) -> pb.Block | None:
        cached = None if audit else self._client_blocks.get(height)
        if cached is not None:
            return cached
        stored = await self.v.reads.get_block(height)
        if stored is None:
            return None
        msg = views.stored_block_to_proto(stored, for_client=True)
        if audit:
            msg.stored_hash = stored.hash
            for c in await self.v.reads.record_columns(stored.height, stored.height):
                msg.records.append(views.record_columns_to_proto(c))
        else:
            self._client_blocks[height] = msg
            while len(self._client_blocks) > CLIENT_BLOCKS_CACHED:
                del self._client_blocks[min(self._client_blocks)]
        return msg

    async def GetBlock(self, request, context):  # type: ignore[no-untyped-def]
        await self._authorize(request.auth, "GetBlock", str(request.height), context)
        msg = await self._client_block(request.height, request.audit)
        if msg is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no block at height {request.height}")
        return msg

    async def StreamBlocks(self, request, context):  # type: ignore[no-untyped-def]
        await self._authorize(request.auth, "StreamBlocks",
                              f"{request.from_height}-{request.to_height}", context)
        if self._subscribers >= STREAM_SUBSCRIBERS_MAX:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"this validator serves at most {STREAM_SUBSCRIBERS_MAX} block "
                                "streams; retry later or ask another validator")
        self._subscribers += 1
        try:
            height = max(1, request.from_height)
            last = request.to_height or (1 << 63)
            while height <= last:
                head = self.v.height
                if height > head:
                    if request.to_height:
                        return  # a bounded range past the head: nothing more to send
                    async with self.v.new_blocks:
                        await self.v.new_blocks.wait()
                    continue
                msg = await self._client_block(height, request.audit)
                if msg is not None:
                    yield msg
                height += 1
        finally:
            self._subscribers -= 1

    async def ListScreening(self, request, context):  # type: ignore[no-untyped-def]
        if request.screening not in {Screening.PENDING, Screening.ACCEPTED,
                                     Screening.QUARANTINED, Screening.REJECTED}:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "screening is pending-screening, accepted, quarantined or "
                                "rejected")
        org = await self._authorize(request.auth, "ListScreening",
                                    f"{request.screening}/{request.after_height}", context)
        v = self.v
        limit = min(request.limit or v.reads.page_size_max, v.reads.page_size_max)
        after = (request.after_height, request.after_index) if request.after_height else (0, -1)
        records = await v.reads.records_by_screening(request.screening, after=after,
                                                     limit=limit + 1)
        reply = pb.ScreeningReply(quorum=v.replica.config.quorum)
        if len(records) > limit:
            last = records[limit - 1]
            reply.more, reply.next_height, reply.next_index = True, last.height, last.idx
        page = records[:limit]
        states = await v.reads.review_states([rec.record_id for rec in page])
        for rec in page:
            votes, verdicts = states[rec.record_id]
            readable = rec.kind != RecordKind.PATIENT.value or org in rec.readers
            reply.records.append(pb.ScreeningEntry(
                record_id=rec.record_id, height=rec.height, kind=rec.kind,
                subject_id=rec.subject_id, event_type=rec.event_type,
                submitter_org=rec.submitter_org, screening=rec.screening,
                verdicts=[pb.VerdictInfo(decision=d if readable else "",
                                         risk_milli=r if readable else 0,
                                         verdict_json=j if readable else "")
                          for d, r, j in verdicts],
                votes=[pb.ReviewVoteInfo(replica_id=r, accept=a) for r, a in votes]))
        return reply

    async def ListSubject(self, request, context):  # type: ignore[no-untyped-def]
        if request.kind not in {k.value for k in RecordKind}:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "kind is provenance or patient")
        if not 1 <= len(request.subject_id.encode()) <= 256:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "subject_id must be 1 to 256 bytes")
        await self._authorize(request.auth, "ListSubject",
                              f"{request.kind}/{request.subject_id}", context)
        reads = self.v.reads
        limit = min(request.limit or reads.page_size_max, reads.page_size_max)
        after = (request.after_height, request.after_index) if request.after_height else (0, -1)
        history = await reads.subject_history(request.kind, request.subject_id, after=after,
                                              limit=limit + 1)
        reply = pb.SubjectReply()
        for entry in history[:limit]:
            reply.entries.append(pb.SubjectEntry(
                receipt=await self._receipt(entry.height, entry.idx, context),
                target_record_id=entry.target_record_id or ""))
        if len(history) > limit:
            last = history[limit - 1]
            reply.more, reply.next_height, reply.next_index = True, last.height, last.idx
        return reply

    async def ListMembers(self, request, context):  # type: ignore[no-untyped-def]
        v = self.v
        auth = request.auth
        if applicant_key(auth.client_id) is not None:
            # An applicant may see the queue (to pick a free replica id and follow its own
            # request), without other applicants' statements.
            await self._check_read_signature(auth, "ListMembers", "", context,
                                             applicant_key(auth.client_id))
            org = None
        else:
            org = await self._authorize(auth, "ListMembers", "", context)
        config = v.replica.config
        proposals = await v.reads.proposals()
        ttl_ms = v.genesis.policy.join_pending_ttl_ms
        head = v.driver.ledger.head if v.driver is not None else None
        block_ms = 0 if head is None else head.timestamp_ms
        reply = pb.MembersReply(epoch=config.epoch, quorum=config.quorum)
        addresses = {x.replica_id: (x.org, x.peer_address, x.client_address)
                     for x in v.genesis.validators}
        for p in reversed(proposals):  # oldest first: addresses of admitted validators
            if p.kind == "join" and p.status == ms.ProposalStatus.APPROVED:
                addresses[p.replica_id] = (p.org, p.peer_address, p.client_address)
        for p in proposals:
            reply.proposals.append(pb.ProposalInfo(
                proposal_id=p.proposal_id, kind=p.kind, replica_id=p.replica_id,
                org=p.org or addresses.get(p.replica_id, ("",))[0],
                name=p.name, peer_address=p.peer_address, client_address=p.client_address,
                statement=p.statement if org is not None else "", reason=p.reason,
                status=ms.ProposalStatus.EXPIRED if ms.expired(
                    p.kind, p.status, p.recorded_ms, block_ms, ttl_ms) else p.status,
                height=p.height, decided_height=p.decided_height or 0,
                validator_key=p.validator_key, client_key=p.client_key,
                encryption_key=p.encryption_key, sponsor=p.sponsor, gs1=p.gs1.decode(),
                expires_ms=ms.join_expires_ms(p.recorded_ms, ttl_ms) if p.kind == "join" else 0,
                verdicts=[pb.VerdictInfo(decision=d, risk_milli=r) for d, r in p.verdicts],
                votes=[pb.MemberVoteInfo(epoch=x.epoch, replica_id=x.replica_id,
                                         approve=x.approve) for x in p.votes]))
        for member in config.members:
            org_name, peer, client = addresses.get(member.replica_id, ("", "", ""))
            reply.validators.append(pb.MemberInfo(
                replica_id=member.replica_id, org=org_name, public_key=member.public_key,
                peer_address=peer, client_address=client))
        return reply

    async def GetEpochs(self, request, context):  # type: ignore[no-untyped-def]
        return pb.EpochsReply(epochs=encode_epoch_records(self.v.replica.epoch_records))

    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        v = self.v
        if v.driver is None:
            return pb.StatusReply(replica_id=v.me.replica_id, org=v.me.org, serving=False,
                                  problem=v.problem)
        r = v.replica
        head = v.driver.ledger.head
        return pb.StatusReply(replica_id=v.me.replica_id, org=v.me.org,
                              height=0 if head is None else head.height, view=r.view,
                              epoch=r.config.epoch, view_active=r.view_active,
                              last_block_hash=b"" if head is None else head.hash(),
                              stable_checkpoint=r.stable_seq, primary=r.primary,
                              primary_client_address=v.primary_client_address(),
                              serving=v.serving, problem=v.problem)


def _key_of(msg: pb.SubmitRecordRequest) -> tuple[str, int]:
    """(client, nonce) of a submission that may not decode (for its error reply)."""
    try:
        return decode_request(bytes(msg.request)).key
    except ValueError:
        return ("", 0)

