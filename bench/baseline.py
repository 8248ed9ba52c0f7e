"""The unreplicated baseline: the same intrinsic work per record, once, with no consensus.

One process, one PostgreSQL connection, the validators' own code for everything a record needs
to be accepted and stored durably:

- verify the client's Ed25519 signature, once per envelope (the validator's
  `CachingVerifier(Ed25519Verifier())`, which misses on a first sight, as it does for a fresh
  submission);
- decode and check the envelope's items (`ledger.blocks.envelope_problem`, the rules a
  validator applies on arrival and at execution);
- check and record the nonce (`consortium.pbft.state.ClientTable`, the replica's own table);
- build the block (`consortium.ledger.blocks.build_block`: entries, statuses, record ids) and
  store it with `LedgerStore.append_blocks` (the same tables, binary COPY, one transaction per
  block) with the batch size the consortium actually formed, on the same server with the same
  durability settings.

What it leaves out is exactly what replication adds: gRPC, PBFT messages and their signatures,
the consensus log, and doing it all n times. The proposal header and certificate hold messages
of the real sizes with zero signatures (stored, never checked), so the rows weigh the same
without paying for consensus signing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from consortium.client.core import Signed
from consortium.config import Genesis
from consortium.crypto.signing import CachingVerifier, Ed25519Verifier
from consortium.ledger.blocks import (
    BlockHeader,
    ClientOrgs,
    Governance,
    build_block,
    envelope_problem,
    parse_request,
)
from consortium.pbft import events as ev
from consortium.pbft import messages as m
from consortium.pbft.codec import resign_message
from consortium.pbft.state import (
    GENESIS_STATE_DIGEST,
    ClientTable,
    NonceStatus,
    batch_root,
    next_state_digest,
)
from consortium.storage.store import LedgerStore

ZERO_SIGNATURE = bytes(64)


def _admissible(r: m.Request, keys: dict[str, bytes], orgs: ClientOrgs, genesis: Genesis,
                verifier: CachingVerifier, now_ms: int) -> bool:
    """What a validator checks before ordering a submission (`check_signature`,
    `check_content`; the records benchmarked carry no join request)."""
    key = keys.get(r.client_id)
    if key is None or r.kind is not m.RequestKind.APPLICATION:
        return False
    if not verifier.verify(key, m.request_signing_bytes(genesis.chain_id_bytes, r.digest),
                           r.signature):
        return False
    return not envelope_problem(r, parse_request(r), orgs,
                                Governance(genesis.admission_client), genesis.rules(), now_ms)


async def run(dsn: str, genesis: Genesis, envelopes: Sequence[Signed], batch_records: int,
              duration_s: float | None = None) -> dict[str, Any]:
    """Accept and store `envelopes` in blocks of about `batch_records` records; records/s of
    the whole loop. `dsn` is an empty database of the caller's (it is bound to the genesis
    chain id)."""
    chain_id = genesis.chain_id_bytes
    keys = genesis.client_keys()
    orgs = ClientOrgs(genesis.client_orgs(), {o.org_id for o in genesis.orgs})
    verifier = CachingVerifier(Ed25519Verifier(), 1 << 17)
    table = ClientTable(genesis.protocol.client_nonce_window)
    quorum = genesis.epoch0().quorum
    per_block = max(1, round(batch_records / max(1, len(envelopes[0].items)))) \
        if envelopes else 1
    # Fresh request objects: what the bench already decoded is not handed on for free.
    requests = [m.Request(s.request.client_id, s.request.nonce, s.request.kind,
                          s.request.payload, s.request.signature) for s in envelopes]
    store = await LedgerStore.open(dsn, chain_id=chain_id, replica_id=0)
    head: BlockHeader | None = None
    state = GENESIS_STATE_DIGEST
    recorded = blocks = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    try:
        for start in range(0, len(requests), per_block):
            if duration_s is not None and time.perf_counter() - t0 > duration_s:
                break
            chunk = tuple(requests[start:start + per_block])
            now_ms = int(time.time() * 1000)
            executed = []
            for r in chunk:
                if not _admissible(r, keys, orgs, genesis, verifier, now_ms):
                    continue
                status, _ = table.check(r.client_id, r.nonce)
                if status is NonceStatus.FRESH:
                    executed.append(r)
            seq = blocks + 1
            header = m.PrePrepare(0, 0, seq, batch_root(chunk), len(chunk), now_ms)
            state = next_state_digest(state, seq, header.digest)
            pre_prepare = resign_message(0, header, ZERO_SIGNATURE)
            certificate = tuple(resign_message(i, m.Commit(0, 0, seq, header.digest),
                                               ZERO_SIGNATURE) for i in range(quorum))
            block = build_block(ev.Execute(seq, 0, 0, header.digest, chunk, tuple(executed),
                                           pre_prepare, certificate, state),
                                chain_id, head, orgs, rules=genesis.rules())
            await store.append_blocks([block])
            for r in executed:
                table.record(r.client_id, r.nonce, seq)
            head = block.header
            blocks += 1
            recorded += sum(1 for e in block.entries if e.status == "recorded")
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        await store.close()
    return {"records": recorded, "blocks": blocks, "batch": per_block,
            "seconds": round(elapsed, 3),
            "baseline_rps": round(recorded / elapsed, 1) if elapsed > 0 else 0.0,
            "process_cpu_ms_per_record": round(1000 * cpu / recorded, 4) if recorded else None}
