"""Offline audit bundles: a range of blocks in one file that a regulator verifies with nothing
but the genesis file (docs/audit.md, "Bundle format").

The file is UTF-8 JSON Lines, version 2 (ledger format 2):

    line 1      {"format": "consortium-audit-bundle", "version": 2, "ledger_format": 2,
                 "chain_id": ..., "genesis_sha256": ..., "genesis": {...},
                 "from_height": A, "to_height": B, "exported_from": ..., "exported_at_ms": ...}
    line 2      {"epochs": base64(codec.encode_epoch_records)}    the epoch history
    lines 3..   {"height": H, "block": base64(protobuf consortium.v1.Block)}   (A..B in order)
    last line   {"end": true, "blocks": N, "sha256": hex}

Blocks are as validators serve them to members: envelopes (client, nonce, kind, signature,
digest, status), their items as public views (every item's public header, the hashes of the
rest: no ciphertext, no wrapped key), the signed proposal header and the commit certificate.
The embedded genesis says which genesis file the exporter used; only the one the auditor
supplies is trusted, and it must be the same. The epoch history is verified from that genesis
before any block is checked against it. The trailing sha256 (over every byte before the last
line) only catches truncation and accidental damage; authenticity comes from verifying every
block against genesis with `client.audit.ChainAudit`, which an edited bundle cannot pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError as ProtoDecodeError

from consortium.client.audit import (
    ChainAudit,
    Problem,
    Progress,
    no_progress,
    verified_epochs,
)
from consortium.config import LEDGER_FORMAT, Genesis
from consortium.crypto.signing import Verifier
from consortium.verify import UnverifiableHistory
from consortium.wire import pb

if TYPE_CHECKING:
    from consortium.client.sync import ConsortiumClient

FORMAT = "consortium-audit-bundle"
VERSION = 2
LINE_BYTES_MAX = 256 << 20
"""A block line longer than this is refused (a block is at most message_bytes_max)."""
STATUSES_NOTE = ("request and entry statuses and reasons are the exporting validator's "
                 "execution results, not covered by commit certificates; compare validators "
                 "with `consortium audit verify --all`")


class BundleError(ValueError):
    """The file is not a well-formed bundle (truncated, edited framing, wrong chain...)."""


def genesis_sha256(genesis: Genesis) -> str:
    """A stable fingerprint of the genesis content (canonical JSON)."""
    return _sha256_of(genesis.to_json())


def _sha256_of(obj: Any) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def write_bundle(path: Path, genesis: Genesis, epochs: bytes, blocks: Iterable[pb.Block], *,
                 from_height: int, to_height: int, exported_from: str) -> int:
    """Write the epoch history and blocks from_height..to_height (in order) to `path`, through a
    partial file renamed at the end; returns how many blocks."""
    digest = hashlib.sha256()
    count = 0
    tmp = path.with_name(path.name + ".partial")
    try:
        with tmp.open("wb") as out:
            def line(obj: dict[str, Any]) -> None:
                data = _line(obj)
                digest.update(data)
                out.write(data)

            line({"format": FORMAT, "version": VERSION, "ledger_format": LEDGER_FORMAT,
                  "chain_id": genesis.chain_id, "genesis_sha256": genesis_sha256(genesis),
                  "genesis": genesis.to_json(), "from_height": from_height,
                  "to_height": to_height, "exported_from": exported_from,
                  "exported_at_ms": int(time.time() * 1000)})
            line({"epochs": base64.b64encode(epochs).decode()})
            for blk in blocks:
                count += 1
                line({"height": from_height + count - 1,
                      "block": base64.b64encode(blk.SerializeToString()).decode()})
            out.write(_line({"end": True, "blocks": count, "sha256": digest.hexdigest()}))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half bundle left behind (a stream cut, ^C)
        raise
    return count


@dataclass(frozen=True)
class Exported:
    blocks: int
    from_height: int
    to_height: int
    validator: int


def export_bundle(client: ConsortiumClient, path: Path, *, from_height: int = 1,
                  to_height: int | None = None, validator_id: int | None = None,
                  progress: Progress = no_progress) -> Exported:
    """Export blocks and the epoch history from one validator (`validator_id`, or the first
    that answers). Raises BundleError when none answers or the range is not on it."""
    genesis = client.core.genesis
    ids = [validator_id] if validator_id is not None else sorted(client.core.validators)
    for vid in ids:
        address = client.core.validators[vid]
        try:
            head = int(client.status(address).height)
            epochs = client.epoch_history(address)
        except grpc.RpcError:
            continue
        last = head if to_height is None else to_height
        if last > head or last < from_height:
            raise BundleError(f"validator {vid} has heights 1..{head}; cannot export "
                              f"{from_height}..{last}")
        try:
            with progress("export", last - from_height + 1) as tick:
                blocks = _ticking(client.stream_blocks(from_height, last, address=address),
                                  tick)
                count = write_bundle(path, genesis, epochs, blocks, from_height=from_height,
                                     to_height=last, exported_from=f"validator {vid}")
        except grpc.RpcError as exc:
            raise BundleError(f"export from validator {vid} failed: {exc.details()}") from exc
        except OSError as exc:
            raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return Exported(count, from_height, last, vid)
    raise BundleError("no validator answered" if validator_id is None else
                      f"validator {validator_id} did not answer")


def _ticking(blocks: Iterable[pb.Block], tick: Callable[[], None]) -> Iterator[pb.Block]:
    for blk in blocks:
        tick()
        yield blk


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                if len(raw) > LINE_BYTES_MAX:
                    raise BundleError(f"line {n}: longer than {LINE_BYTES_MAX} bytes")
                yield n, raw
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _json(n: int, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"line {n}: not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise BundleError(f"line {n}: not a JSON object")
    return obj


def _b64(n: int, value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"line {n}: {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleError(f"line {n}: {what} is not base64 ({exc})") from exc


def _check_header(obj: dict[str, Any], genesis: Genesis) -> None:
    if obj.get("format") != FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} file")
    if obj.get("version") == 1:
        raise BundleError("a version 1 bundle (ledger format 1) cannot be verified by this "
                          "release, which reads version 2 (ledger format 2): verify it with the "
                          "release that exported it, or export the ledger again")
    if obj.get("version") != VERSION or obj.get("ledger_format") != LEDGER_FORMAT:
        raise BundleError(f"line 1: not a {FORMAT} version {VERSION} file of ledger format "
                          f"{LEDGER_FORMAT}")
    if obj.get("chain_id") != genesis.chain_id:
        raise BundleError(f"bundle is for chain {obj.get('chain_id')!r}, the genesis file for "
                          f"{genesis.chain_id!r}")
    expected = genesis_sha256(genesis)
    if obj.get("genesis_sha256") != expected or _sha256_of(obj.get("genesis")) != expected:
        raise BundleError("bundle was exported under a different genesis file")
    start, end = obj.get("from_height"), obj.get("to_height")
    if not isinstance(start, int) or start < 1 or not isinstance(end, int) or end < start:
        raise BundleError("line 1: bad from_height/to_height")


def verify_bundle(path: Path, genesis: Genesis, verifier: Verifier) -> dict[str, Any]:
    """Verify a bundle offline. Raises BundleError when the file is not a bundle of this chain
    (one line); returns {"ok", "from_height", "to_height", "from_genesis", "blocks",
    "head_hash", "epochs", "problems", "warnings", "statuses_verified", "statuses_note"}."""
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    chain: ChainAudit | None = None
    end: dict[str, Any] | None = None
    epochs = 0
    history_problem: Problem | None = None
    for n, raw in _lines(path):
        if end is not None:
            raise BundleError(f"line {n}: data after the end line")
        obj = _json(n, raw)
        if header is None:
            _check_header(obj, genesis)
            header = obj
            digest.update(raw)
            continue
        if obj.get("end") is True:
            end = obj
            continue
        digest.update(raw)
        if chain is None:
            if set(obj) != {"epochs"}:
                raise BundleError(f"line {n}: the epoch history line holds only \"epochs\"")
            configs = {0: genesis.epoch0()}
            try:
                configs.update(verified_epochs(genesis, _b64(n, obj["epochs"], "the epoch "
                                                                               "history"),
                                               verifier))
            except UnverifiableHistory as exc:
                history_problem = Problem("bundle", 0, "epoch-history", str(exc))
            epochs = len(configs)
            chain = ChainAudit(genesis, configs, verifier, "bundle", header["from_height"])
            continue
        if not isinstance(obj.get("height"), int) or "block" not in obj:
            raise BundleError(f"line {n}: a block line has an integer height and a base64 "
                              "block")
        try:
            msg = pb.Block.FromString(_b64(n, obj["block"], f"block {obj['height']}"))
        except ProtoDecodeError as exc:
            raise BundleError(f"line {n}: block {obj['height']} does not decode: "
                              f"{exc}") from exc
        chain.feed(msg)
    if header is None:
        raise BundleError("empty file: not a bundle")
    if end is None:
        raise BundleError("no end line: the bundle is truncated")
    if chain is None:
        raise BundleError("no epoch history line: not a version 2 bundle")
    if end.get("blocks") != chain.blocks or end.get("sha256") != digest.hexdigest():
        raise BundleError("the end line does not match the content (lines were added, "
                          "removed or edited)")
    problems = ([history_problem] if history_problem else []) + chain.finish(to_head=False)
    if chain.next_height - 1 != header["to_height"]:
        problems.append(Problem("bundle", chain.next_height, "missing-block",
                                f"bundle ends at {chain.next_height - 1}, its header says "
                                f"{header['to_height']}"))
    last = max(chain.hashes) if chain.hashes else None
    return {"ok": not problems, "from_height": header["from_height"],
            "to_height": header["to_height"], "from_genesis": header["from_height"] == 1,
            "blocks": chain.blocks, "epochs": epochs,
            "head_hash": chain.hashes[last].hex() if last is not None else None,
            "statuses_verified": False, "statuses_note": STATUSES_NOTE,
            "problems": [p.to_json() for p in problems],
            "warnings": [w.to_json() for w in chain.warnings]}
