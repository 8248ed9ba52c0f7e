"""State transfer: fetching the blocks a validator lacks from its peers, verified.

When the replica installs a stable checkpoint from peers (`InstallSnapshot`), or finds its
ledger behind its consensus state at start, the validator fetches the missing blocks over the
peer service (`Replica.FetchBlocks`), verifies each with the one chain verifier
(`consortium.verify.ChainVerifier`: hash links, state digests, block time, proposal signature,
commit certificate of the block's epoch from the verified epoch history) and stores them. It
asks every peer in turn, so one that is down, slow or lying costs one attempt, not the
catch-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import psycopg
import structlog

from consortium.crypto.signing import Verifier
from consortium.ledger.blocks import Block, BlockHeader, Entry, EntryStatus
from consortium.ledger.items import record_id, segments_of
from consortium.ledger.records import InvalidRecord, decode_submission
from consortium.ledger.transactions import InvalidTransaction, TxType, decode_tx
from consortium.pbft.membership import EpochConfig
from consortium.storage.rows import StoreError, StoreUnavailable
from consortium.verify import ChainBroken, ChainVerifier
from consortium.wire import WireBlock, WireError, block_from_proto, pb, pb_grpc

log = structlog.get_logger("consortium.state_transfer")

BLOCKS_PER_CALL_MAX = 256
CALL_TIMEOUT_S = 30.0
RETRY_DELAY_S_MAX = 5.0


def block_from_wire(w: WireBlock, org_of: Callable[[str], str | None]) -> Block:
    """Rebuild a ledger block from a verified wire block. Entry statuses and reasons come from
    the sender (they are execution results honest validators agree on, compared by `audit
    verify --all`); records and transactions are decoded again, so a RECORDED entry must hold a
    valid submission or transaction."""
    entries = []
    for env in w.envelopes:
        for k, item in enumerate(w.items_of(env)):
            idx = env.first_entry + k
            status, reason = w.statuses[idx], w.reasons[idx]
            segments = segments_of(item)
            sub = None
            action = None
            try:
                if segments and segments[0] and segments[0][0] != TxType.RECORD:
                    action = decode_tx(list(segments))
                elif status == EntryStatus.RECORDED:
                    if isinstance(item, bytes):
                        sub = decode_submission(item)
                    elif not segments or segments[0] is None:
                        raise InvalidRecord("no public part")
            except InvalidTransaction as exc:
                if status == EntryStatus.RECORDED:
                    raise WireError(f"block {w.header.height} entry {idx} is marked recorded "
                                    f"but {exc}") from exc
            entries.append(Entry(idx, env.index, k, record_id(env.digest, k), item, status,
                                 sub, reason, action, org_of(env.client_id), env.client_id))
    return Block(w.header, w.envelopes, tuple(entries), w.pre_prepare, w.certificate)


class StateTransfer:
    """Fetches and installs blocks up to a target height."""

    def __init__(self, chain_id: bytes, verifier: Verifier,
                 credentials: Callable[[], grpc.ChannelCredentials],
                 channel_options: Sequence[tuple[str, int]]) -> None:
        self.chain_id = chain_id
        self.verifier = verifier
        self._credentials = credentials
        self._options = list(channel_options)
        self.rounds = 0

    async def fetch(self, target: int, head: Callable[[], BlockHeader | None],
                    peers: Callable[[], list[tuple[int, str]]],
                    configs: Callable[[], dict[int, EpochConfig]],
                    install: Callable[[list[Block]], Awaitable[None]],
                    org_of: Callable[[str], str | None]) -> None:
        """Bring the ledger (whose head `head()` gives) up to `target`, asking every peer in
        turn; `install(blocks)` (awaitable) stores verified blocks."""
        attempts = 0
        while self._height(head()) < target:
            progressed = False
            order = peers()
            if order:
                start = self.rounds % len(order)
                order = order[start:] + order[:start]
            self.rounds += 1
            for peer_id, address in order:
                try:
                    progressed |= await asyncio.wait_for(
                        self._fetch_from(address, target, head, configs, install, org_of),
                        CALL_TIMEOUT_S)
                except StoreUnavailable:
                    raise  # our database, not the peer: the validator stops serving
                except (grpc.aio.AioRpcError, WireError, ChainBroken, TimeoutError, StoreError,
                        psycopg.Error) as exc:
                    log.warning("state transfer from peer failed", peer=peer_id,
                                error=str(exc)[:200])
                if self._height(head()) >= target:
                    return
            if not progressed:
                attempts += 1
                await asyncio.sleep(min(0.1 * 2 ** attempts, RETRY_DELAY_S_MAX))

    @staticmethod
    def _height(h: BlockHeader | None) -> int:
        return 0 if h is None else h.height

    async def _fetch_from(self, address: str, target: int,
                          head: Callable[[], BlockHeader | None],
                          configs: Callable[[], dict[int, EpochConfig]],
                          install: Callable[[list[Block]], Awaitable[None]],
                          org_of: Callable[[str], str | None]) -> bool:
        start = self._height(head()) + 1
        chain = ChainVerifier(self.chain_id, configs(), self.verifier, prev=head())
        fetched: list[Block] = []
        async with grpc.aio.secure_channel(address, self._credentials(),
                                           options=self._options) as channel:
            stream = pb_grpc.ReplicaStub(channel).FetchBlocks(pb.FetchBlocksRequest(
                from_height=start, to_height=min(target, start + BLOCKS_PER_CALL_MAX - 1)))
            async for msg in stream:
                wb = block_from_proto(msg, self.chain_id)
                if wb.header.height > target:
                    break  # never run the ledger ahead of the consensus state
                chain.check(wb)
                fetched.append(block_from_wire(wb, org_of))
        if fetched:
            await install(fetched)
        return bool(fetched)
