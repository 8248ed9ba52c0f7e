"""The blocking SDK client: `AsyncConsortiumClient`'s code on a private event loop in a
background thread, so blocking callers (and many threads at once) share one channel per
validator, one code path, and the coalescer's envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from consortium.client.core import (
    ENVELOPE_ITEMS_MAX,
    Identity,
    RecordView,
    Signed,
    SubmitError,
    VerifiedReceipt,
)
from consortium.client.sdk import AsyncConsortiumClient, EpcisSubmission
from consortium.config import Genesis
from consortium.formats.directory import Gs1Directory
from consortium.ledger.transactions import GovernanceTx, RecordTx
from consortium.wire import Receipt, pb

T = TypeVar("T")


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

    def refresh_directory(self) -> Gs1Directory:
        return self._run(self.aio.refresh_directory())

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
