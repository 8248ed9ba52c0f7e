"""Offline audit bundles: a range of blocks in one file that a regulator verifies with nothing
but the genesis file (docs/audit.md, "Bundle format").

The file is UTF-8 JSON Lines:

    line 1      {"format": "consortium-audit-bundle", "version": 1, "chain_id": ...,
                 "genesis_sha256": ..., "from_height": A, "to_height": B,
                 "exported_from": ..., "exported_at_ms": ...}
    lines 2..   {"height": H, "block": base64(protobuf consortium.v1.Block)}   (A..B in order)
    last line   {"end": true, "blocks": N, "sha256": hex}

Blocks are as validators serve them to members: request views with the public header of every
request and the hashes of everything else (no ciphertext, no wrapped keys), the commit
certificate and the header. The trailing sha256 (over every byte before the last line) only
catches truncation and accidental damage; authenticity comes from verifying every block
against genesis (certificates, hash links, Merkle roots, client signatures), which an edited
bundle cannot pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError as ProtoDecodeError

from consortium.api.v1 import ledger_pb2 as pb
from consortium.client.audit import ChainVerifier, Problem
from consortium.config import Genesis
from consortium.crypto.signing import Verifier

FORMAT = "consortium-audit-bundle"
VERSION = 1
LINE_BYTES_MAX = 256 << 20
"""A block line longer than this is refused (a block is at most message_bytes_max)."""


class BundleError(ValueError):
    """The file is not a well-formed bundle (truncated, edited framing, wrong chain...)."""


def genesis_sha256(genesis: Genesis) -> str:
    """A stable fingerprint of the genesis content (canonical JSON)."""
    data = json.dumps(genesis.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def write_bundle(path: Path, genesis: Genesis, blocks: Iterable[pb.Block], *, from_height: int,
                 to_height: int, exported_from: str) -> int:
    """Write blocks from_height..to_height (in order) to `path`; returns how many."""
    digest = hashlib.sha256()
    count = 0
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as out:
        def line(obj: dict[str, Any]) -> None:
            data = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
            digest.update(data)
            out.write(data)

        line({"format": FORMAT, "version": VERSION, "chain_id": genesis.chain_id,
              "genesis_sha256": genesis_sha256(genesis), "from_height": from_height,
              "to_height": to_height, "exported_from": exported_from,
              "exported_at_ms": int(time.time() * 1000)})
        for blk in blocks:
            count += 1
            line({"height": from_height + count - 1,
                  "block": base64.b64encode(blk.SerializeToString()).decode()})
        out.write((json.dumps({"end": True, "blocks": count, "sha256": digest.hexdigest()},
                              sort_keys=True, separators=(",", ":")) + "\n").encode())
    tmp.replace(path)
    return count


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


def verify_bundle(path: Path, genesis: Genesis, verifier: Verifier) -> dict[str, Any]:
    """Verify a bundle offline. Raises BundleError when the file is not a bundle of this
    chain; returns {"ok", "from_height", "to_height", "blocks", "head_hash", "problems"}."""
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    chain: ChainVerifier | None = None
    end: dict[str, Any] | None = None
    for n, raw in _lines(path):
        if end is not None:
            raise BundleError(f"line {n}: data after the end line")
        obj = _json(n, raw)
        if header is None:
            header = obj
            if obj.get("format") != FORMAT or obj.get("version") != VERSION:
                raise BundleError(f"line 1: not a {FORMAT} version {VERSION} file")
            if obj.get("chain_id") != genesis.chain_id:
                raise BundleError(f"bundle is for chain {obj.get('chain_id')!r}, the genesis "
                                  f"file for {genesis.chain_id!r}")
            if obj.get("genesis_sha256") != genesis_sha256(genesis):
                raise BundleError("bundle was exported under a different genesis file")
            start = obj.get("from_height")
            if not isinstance(start, int) or start < 1 or not isinstance(
                    obj.get("to_height"), int) or obj["to_height"] < start:
                raise BundleError("line 1: bad from_height/to_height")
            chain = ChainVerifier(genesis, verifier, "bundle", from_height=start)
            digest.update(raw)
            continue
        if obj.get("end") is True:
            end = obj
            continue
        digest.update(raw)
        assert chain is not None
        blob = obj.get("block")
        if not isinstance(blob, str) or not isinstance(obj.get("height"), int):
            raise BundleError(f"line {n}: a block line has an integer height and a base64 "
                              "block")
        try:
            msg = pb.Block.FromString(base64.b64decode(blob, validate=True))
        except (binascii.Error, ProtoDecodeError, ValueError) as exc:
            raise BundleError(f"line {n}: block {obj['height']} does not decode: "
                              f"{exc}") from exc
        chain.feed(msg)
    if header is None or chain is None:
        raise BundleError("empty file: not a bundle")
    if end is None:
        raise BundleError("no end line: the bundle is truncated")
    if end.get("blocks") != chain.blocks or end.get("sha256") != digest.hexdigest():
        raise BundleError("the end line does not match the content (lines were added, "
                          "removed or edited)")
    problems: list[Problem] = chain.finish(to_head=False)
    if chain.next_height - 1 != header["to_height"]:
        problems.append(Problem("bundle", chain.next_height, "missing-block",
                                f"bundle ends at {chain.next_height - 1}, its header says "
                                f"{header['to_height']}"))
    last = max(chain.hashes) if chain.hashes else None
    return {"ok": not problems, "from_height": header["from_height"],
            "to_height": header["to_height"], "blocks": chain.blocks,
            "head_hash": chain.hashes[last].hex() if last is not None else None,
            "statuses_verified": False,
            "statuses_note": "entry statuses and reasons are the exporting validator's "
                             "execution results, not covered by commit certificates; compare "
                             "validators with `consortium audit verify --all`",
            "problems": [p.to_json() for p in problems]}
