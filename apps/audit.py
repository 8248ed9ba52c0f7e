"""`consortium audit`: verify the ledger from the genesis file alone, trace products, show a
patient's record history, export and verify offline bundles (docs/audit.md).

Exit codes: 0 verified / ok; 1 the ledger (or bundle) does not verify, or problems found;
2 bad input (unknown record, malformed bundle, unreachable consortium, usage).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from tqdm import tqdm

from consortium.localnet import default_dir

DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="Consortium directory (default: $CONSORTIUM_HOME, else "
                               "./.consortium).")
AS_OPTION = click.option("--as", "org", default="org0", show_default=True,
                         help="Member organisation whose client key signs the reads.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium audit: {message}", err=True)
    sys.exit(code)


def _client(directory: Path | None, org: str) -> Any:
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError

    d = directory if directory is not None else default_dir()
    try:
        return ConsortiumClient.from_dir(d, org)
    except (SubmitError, ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def validator_client(directory: Path | None, org: str,
                     fail: Callable[[str], NoReturn] = _fail) -> Any:
    """A client signing as `org`'s validator (`validator-<id>`): governance votes."""
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.client.sdk import Identity
    from consortium.config import ConfigError, Genesis

    d = directory if directory is not None else default_dir()
    try:
        genesis = Genesis.load(d / "genesis.json")
        return ConsortiumClient(genesis, Identity.validator(d, org),
                                (d / "ca" / "ca.crt").read_bytes())
    except (ConfigError, SubmitError, OSError) as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def audit() -> None:
    """Verify the ledger from genesis alone; trace products; audit patient records."""


# ------------------------------------------------------------------------------------ verify

@audit.command()
@DIR_OPTION
@click.option("--validator", "validator_id", type=int, default=None,
              help="Verify this validator's copy (default: the first that answers).")
@click.option("--all", "all_validators", is_flag=True,
              help="Verify every validator's copy and compare them.")
@click.option("--from", "from_height", type=click.IntRange(1), default=1, show_default=True)
@click.option("--to", "to_height", type=click.IntRange(1), default=None,
              help="Last height (default: each validator's head).")
@AS_OPTION
@JSON_OPTION
def verify(directory: Path | None, validator_id: int | None, all_validators: bool,
           from_height: int, to_height: int | None, org: str, as_json: bool) -> None:
    """Walk the chain: hash links, Merkle roots, commit certificates (following validator-set
    changes), client signatures and the stored record rows; with --all, compare validators and
    name any whose data differs."""
    from consortium.client.audit import ChainVerifier, Problem, compare_validators
    from consortium.crypto.signing import CachingVerifier, Ed25519Verifier

    if validator_id is not None and all_validators:
        _fail("use --validator ID or --all, not both")
    client = _client(directory, org)
    genesis = client.core.genesis
    ids = sorted(v.replica_id for v in genesis.validators)
    if validator_id is not None:
        if validator_id not in ids:
            _fail(f"no validator {validator_id} in genesis (validators: {ids})")
        ids = [validator_id]
    verifier = CachingVerifier(Ed25519Verifier(), 1 << 16)
    chains: dict[str, ChainVerifier] = {}
    report: dict[str, Any] = {}
    problems: list[Problem] = []
    for vid in ids:
        address = genesis.validator(vid).client_address
        try:
            head = int(client.status(address).height)
        except grpc.RpcError as exc:
            if not all_validators and validator_id is None and vid != ids[-1]:
                continue  # the default: the first validator that answers
            problems.append(Problem(str(vid), 0, "unreachable", str(exc.details())))
            report[str(vid)] = {"ok": False, "height": None}
            continue
        last = head if to_height is None else min(to_height, head)
        chain = ChainVerifier(genesis, verifier, str(vid), from_height)
        try:
            if last >= from_height:
                stream = client.stream_blocks(from_height, last, audit=True, address=address)
                with tqdm(total=last - from_height + 1, desc=f"validator {vid}", unit="block",
                          disable=as_json or not sys.stderr.isatty(), leave=False) as bar:
                    for blk in stream:
                        chain.feed(blk)
                        bar.update(1)
        except grpc.RpcError as exc:
            problems.append(Problem(str(vid), chain.next_height, "unreachable",
                                    f"stream failed: {exc.details()}"))
        if chain.next_height <= last:
            problems.append(Problem(str(vid), chain.next_height, "missing-block",
                                    f"validator served blocks up to {chain.next_height - 1} "
                                    f"of {last}"))
        problems.extend(chain.finish(to_head=to_height is None or to_height >= head))
        chains[str(vid)] = chain
        report[str(vid)] = {"height": head, "verified_from": from_height,
                            "verified_to": last, "blocks": chain.blocks,
                            "epoch": chain.config.epoch}
        if not all_validators and validator_id is None:
            break
    if len(chains) > 1:
        problems.extend(compare_validators(chains))
    bad = {p.validator for p in problems}
    for vid, entry in report.items():
        entry["ok"] = vid not in bad and entry.get("height") is not None
    ok = not problems and bool(chains)
    height = max((c.next_height - 1 for c in chains.values()), default=0)
    data = {"ok": ok, "height": height, "validators": report,
            "problems": [p.to_json() for p in problems]}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for vid, entry in report.items():
            click.echo(f"validator {vid}: {'ok' if entry['ok'] else 'PROBLEMS'} "
                       f"(height {entry.get('height')}, verified "
                       f"{entry.get('verified_from')}..{entry.get('verified_to')})")
        for p in problems:
            click.echo(f"  validator {p.validator} height {p.height}: {p.kind}: {p.detail}")
        click.echo("verified: the chain checks out from genesis" if ok else "NOT OK")
    client.close()
    sys.exit(0 if ok else EXIT_NOT_OK)


# ------------------------------------------------------------------------------------ trace

def _receipt_status(client: Any, receipt: Any) -> tuple[Any, str]:
    """(decoded receipt or None, "verified" or why not) against the validator set of its
    block's epoch (the epoch history is verified from genesis, SDK `epoch_config`)."""
    from consortium.client import SubmitError
    from consortium.node import wire

    try:
        r = wire.receipt_from_proto(receipt, client.core.chain_id)
    except wire.WireError as exc:
        return None, f"malformed: {exc}"
    config, why = None, ""
    for address in client.core.order():  # any validator: the history is checked from genesis
        try:
            config = client.core.epoch_config(r.header.epoch, address)
            break
        except SubmitError as exc:
            why = str(exc)
    if config is None:
        return r, f"epoch {r.header.epoch}: {why}"
    problem = wire.verify_receipt(r, config, client.core.verifier)
    return r, "verified" if problem is None else problem


def _subject_entries(client: Any, kind: str, subject: str) -> list[dict[str, Any]]:
    """A subject's entries with their decoded views and proof status, in ledger order."""
    from consortium.client import SubmitError
    from consortium.ledger.records import InvalidRecord, decode_public
    from consortium.ledger.transactions import (
        InvalidTransaction,
        RequestView,
        TxType,
        decode_record_tx,
    )

    try:
        reply, _ = client.list_subject(kind, subject)
    except SubmitError as exc:
        _fail(str(exc))
    out = []
    org_of = client.core.genesis.client_orgs()
    for e in reply.entries:
        r, proof = _receipt_status(client, e.receipt)
        if r is None:
            out.append({"proof": proof})
            continue
        view = r.request if isinstance(r.request, RequestView) else RequestView.of(r.request)
        shown = view.present()
        row: dict[str, Any] = {"record_id": r.record_id, "height": r.height,
                               "index": r.proof.index, "status": r.status,
                               "reason": r.reason, "proof": proof,
                               "client": view.client_id, "org": org_of.get(view.client_id)}
        seg0 = shown[0] if shown else None
        try:
            if seg0 is not None and seg0[:1] == bytes([TxType.RECORD]):
                p = decode_public(seg0)
                row.update(type="record", event_type=p.event_type, subject_id=p.subject_id,
                           submitter_org=p.submitter_org, submitted_at_ms=p.submitted_at_ms,
                           metadata=dict(p.metadata))
            else:
                action = decode_record_tx(shown)
                row.update(type=type(action).__name__.lower(), target=action.record_id,
                           action={k: getattr(action, k) for k in action.__slots__
                                   if k != "wrapped_key"})
        except (InvalidRecord, InvalidTransaction) as exc:
            row.update(type="invalid", detail=str(exc))
        out.append(row)
    return out


@audit.command()
@DIR_OPTION
@click.option("--product", required=True, help="Product or lot id.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (same as --format json).")
@AS_OPTION
def trace(directory: Path | None, product: str, fmt: str, as_json: bool, org: str) -> None:
    """A product's chain of custody in ledger order, each event with its block and proof
    status, and the inconsistencies found (received before shipped, custody gaps, events
    after a recall or destruction, quantities that grow...)."""
    from consortium.admission.model import ProvenanceEvent, RecordContext
    from consortium.admission.rules import check_provenance

    fmt = "json" if as_json else fmt
    client = _client(directory, org)
    entries = [e for e in _subject_entries(client, "provenance", product)
               if e.get("type") == "record" and e.get("status") == "recorded"]
    history: list[ProvenanceEvent] = []
    rows = []
    for e in entries:
        event = ProvenanceEvent.from_metadata(e["record_id"], e["subject_id"], e["event_type"],
                                              e["submitter_org"], e["submitted_at_ms"],
                                              e["metadata"])
        findings = check_provenance(event, RecordContext(history=tuple(history)))
        history.append(event)
        meta = e["metadata"]
        rows.append({"height": e["height"], "index": e["index"], "record_id": e["record_id"],
                     "time": _iso(e["submitted_at_ms"]), "event": e["event_type"],
                     "submitter": e["submitter_org"], "location": meta.get("location", ""),
                     "from": meta.get("custodian_from", ""), "to": meta.get("custodian_to", ""),
                     "quantity": meta.get("quantity", ""), "proof": e["proof"],
                     "flags": [f"{f.rule}: {f.message}" for f in findings]})
    client.close()
    if not rows:
        _fail(f"no provenance records for product {product!r}")
    flagged = sum(1 for r in rows if r["flags"]) + sum(1 for r in rows
                                                       if r["proof"] != "verified")
    if fmt == "json":
        click.echo(json.dumps({"product": product, "events": rows, "ok": flagged == 0},
                              indent=2, sort_keys=True))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        cols = ["height", "index", "time", "event", "submitter", "location", "from", "to",
                "quantity", "proof", "flags", "record_id"]
        w.writerow(cols)
        for r in rows:
            w.writerow([("; ".join(r[c]) if c == "flags" else r[c]) for c in cols])
        click.echo(buf.getvalue(), nl=False)
    else:
        click.echo(f"chain of custody of {product} ({len(rows)} events)")
        for r in rows:
            click.echo(f"  #{r['height']}.{r['index']} {r['time']} {r['event']:<12} "
                       f"by {r['submitter']:<8} {r['from'] or '-'} -> {r['to'] or '-'} "
                       f"at {r['location'] or '-'} qty {r['quantity'] or '-'} "
                       f"[{r['proof']}]")
            for f in r["flags"]:
                click.echo(f"      ! {f}")
    sys.exit(0 if flagged == 0 else EXIT_NOT_OK)


# ------------------------------------------------------------------------------------ record

def receipt_json(r: Any) -> dict[str, Any]:
    """A receipt as a self-contained JSON proof (checked by `audit check-proof`)."""
    from consortium.ledger.transactions import RequestView
    from consortium.pbft import codec

    return {"record_id": r.record_id, "height": r.height, "status": r.status,
            "block_header": r.header.encode().hex(), "block_hash": r.header.hash().hex(),
            "certificate": [c.wire.hex() for c in r.certificate],
            "certificate_signers": sorted(c.sender for c in r.certificate),
            "proof": {"index": r.proof.index, "size": r.proof.size,
                      "path": [p.hex() for p in r.proof.path]},
            "request_view": r.request.encode().hex() if isinstance(r.request, RequestView)
            else None,
            "request": None if isinstance(r.request, RequestView)
            else codec.encode_request(r.request).hex()}


@audit.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--proof", "with_proof", is_flag=True,
              help="Include the inclusion proof and commit certificate (check offline with "
                   "`consortium audit check-proof`).")
@click.option("--decrypt", is_flag=True, help="Decrypt the payload (only for a reader; a "
                                              "patient record's read is logged on the ledger).")
@click.option("--purpose", default="audit", show_default=True,
              help="Purpose recorded in the access log when decrypting a patient record.")
@AS_OPTION
@JSON_OPTION
def record(directory: Path | None, record_id: str, with_proof: bool, decrypt: bool,
           purpose: str, org: str, as_json: bool) -> None:
    """A record, verified against genesis, with its proof; decrypted only for a reader."""
    from consortium.client import SubmitError

    client = _client(directory, org)
    try:
        view = client.get(record_id, decrypt=decrypt, purpose=purpose)
    except SubmitError as exc:
        code = EXIT_NOT_OK if exc.code == grpc.StatusCode.PERMISSION_DENIED else EXIT_BAD_INPUT
        _fail(str(exc), code)
    finally:
        client.close()
    data = view.to_json()
    if with_proof and view.receipt is not None:
        data["receipt"] = receipt_json(view.receipt)
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               "\n".join(f"{k}: {v}" for k, v in sorted(data.items())))


@audit.command("check-proof")
@click.argument("proof_file", type=click.File("r"))
@click.option("--genesis", "genesis_path", required=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False))
@JSON_OPTION
def check_proof(proof_file: Any, genesis_path: Path, as_json: bool) -> None:
    """Check offline the output of `audit record --proof --json` (or its "receipt" part)."""
    from consortium.api.v1 import ledger_pb2 as pb
    from consortium.config import ConfigError, Genesis
    from consortium.crypto.signing import Ed25519Verifier
    from consortium.node import wire

    try:
        genesis = Genesis.load(genesis_path)
        doc = json.load(proof_file)
        rj = doc.get("receipt", doc)
        msg = pb.Receipt(
            record_id=rj["record_id"], height=int(rj["height"]),
            block_header=bytes.fromhex(rj["block_header"]),
            certificate=[bytes.fromhex(c) for c in rj["certificate"]],
            proof=pb.InclusionProof(index=int(rj["proof"]["index"]),
                                    size=int(rj["proof"]["size"]),
                                    path=[bytes.fromhex(p) for p in rj["proof"]["path"]]),
            status=str(rj["status"]))
        if rj.get("request_view"):
            msg.request_view = bytes.fromhex(rj["request_view"])
        else:
            msg.request = bytes.fromhex(rj["request"])
        r = wire.receipt_from_proto(msg, genesis.chain_id_bytes)
    except (ConfigError, ValueError, KeyError, TypeError, AttributeError) as exc:
        _fail(f"not a proof file: {exc}")
    problem = wire.verify_receipt(r, genesis.epoch0(), Ed25519Verifier())
    data = {"ok": problem is None, "record_id": r.record_id, "height": r.height,
            "block_hash": r.header.hash().hex(), "problem": problem}
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               (f"proof of {r.record_id} at height {r.height}: " +
                ("verified" if problem is None else f"DOES NOT VERIFY: {problem}")))
    sys.exit(0 if problem is None else EXIT_NOT_OK)


# ----------------------------------------------------------------------------------- patient

@audit.command()
@DIR_OPTION
@click.option("--patient", required=True, help="Pseudonymous patient id.")
@AS_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (same as --format json).")
def patient(directory: Path | None, patient: str, org: str, fmt: str, as_json: bool) -> None:
    """A patient's records and everything that happened to them: who was granted or revoked
    access, who read the keys (the access log on the ledger), erasures (when, by whom)."""
    fmt = "json" if as_json else fmt
    client = _client(directory, org)
    entries = _subject_entries(client, "patient", patient)
    client.close()
    if not entries:
        _fail(f"no records for patient {patient!r}")
    records: dict[str, dict[str, Any]] = {}
    events = []
    for e in entries:
        if e.get("type") == "record":
            records[e["record_id"]] = {
                "record_id": e["record_id"], "height": e["height"], "type": e["event_type"],
                "submitter_org": e["submitter_org"], "submitted_at": _iso(e["submitted_at_ms"]),
                "status": e["status"], "proof": e["proof"], "erased": None, "access_log": [],
                "readers_changes": []}
            continue
        events.append(e)
    for e in events:
        rec = records.get(e.get("target", ""))
        if rec is None or e.get("status") != "recorded":
            continue
        kind = e["type"]
        item = {"height": e["height"], "by_org": e["org"], "proof": e["proof"]}
        if kind == "access":
            at = e["action"].get("requested_at_ms", 0)
            rec["access_log"].append({**item, "at": _iso(at), "purpose": e["action"]["purpose"],
                                      "granted": e["reason"] == ""})
        elif kind == "erase":
            rec["erased"] = {**item, "reason": e["action"]["reason"]}
        elif kind in ("grant", "revoke"):
            rec["readers_changes"].append({**item, "change": kind, "org": e["action"]["org"]})
    data = {"patient": patient, "records": list(records.values())}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"patient {patient}: {len(records)} records")
    for rec in records.values():
        state = "ERASED" if rec["erased"] else rec["status"]
        click.echo(f"  {rec['record_id'][:16]}… {rec['type']} by {rec['submitter_org']} "
                   f"at {rec['submitted_at']} (block {rec['height']}, {rec['proof']}) {state}")
        for c in rec["readers_changes"]:
            click.echo(f"      {c['change']} {c['org']} by {c['by_org']} (block {c['height']})")
        for a in rec["access_log"]:
            click.echo(f"      read by {a['by_org']} at {a['at']} for {a['purpose']!r}"
                       f"{'' if a['granted'] else ' (refused: not a reader)'} "
                       f"(block {a['height']})")
        if rec["erased"]:
            er = rec["erased"]
            click.echo(f"      erased by {er['by_org']} at block {er['height']}: "
                       f"{er['reason']!r}")


# ---------------------------------------------------------------------------- bundles

@audit.command()
@DIR_OPTION
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--from", "from_height", type=click.IntRange(1), default=1, show_default=True)
@click.option("--to", "to_height", type=click.IntRange(1), default=None,
              help="Last height (default: the validator's head).")
@click.option("--validator", "validator_id", type=int, default=None,
              help="Export from this validator (default: the first that answers).")
@AS_OPTION
@JSON_OPTION
def export(directory: Path | None, out: Path, from_height: int, to_height: int | None,
           validator_id: int | None, org: str, as_json: bool) -> None:
    """Write blocks to a self-contained bundle file that `audit verify-bundle` checks with no
    network, from the genesis file alone."""
    from consortium.client.bundle import write_bundle

    client = _client(directory, org)
    genesis = client.core.genesis
    candidates = [genesis.validator(validator_id)] if validator_id is not None else \
        list(genesis.validators)
    for v in candidates:
        try:
            head = int(client.status(v.client_address).height)
        except grpc.RpcError:
            continue
        last = head if to_height is None else to_height
        if last > head or last < from_height:
            _fail(f"validator {v.replica_id} has heights 1..{head}; cannot export "
                  f"{from_height}..{last}")
        stream = client.stream_blocks(from_height, last, address=v.client_address)
        bar = tqdm(stream, total=last - from_height + 1, unit="block", desc="export",
                   disable=as_json or not sys.stderr.isatty(), leave=False)
        try:
            count = write_bundle(out, genesis, bar, from_height=from_height, to_height=last,
                                 exported_from=f"validator {v.replica_id}")
        except grpc.RpcError as exc:
            _fail(f"export from validator {v.replica_id} failed: {exc.details()}")
        client.close()
        data = {"out": str(out), "from_height": from_height, "to_height": last,
                "blocks": count, "exported_from": v.replica_id}
        click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
                   f"wrote {count} blocks ({from_height}..{last}) to {out}")
        return
    _fail("no validator answered")


@audit.command("verify-bundle")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--genesis", "genesis_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The consortium's genesis.json: the only thing trusted.")
@JSON_OPTION
def verify_bundle_cmd(bundle: Path, genesis_path: Path, as_json: bool) -> None:
    """Verify an exported bundle with no network at all."""
    from consortium.client.bundle import BundleError, verify_bundle
    from consortium.config import ConfigError, Genesis
    from consortium.crypto.signing import CachingVerifier, Ed25519Verifier

    try:
        genesis = Genesis.load(genesis_path)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        result = verify_bundle(bundle, genesis, CachingVerifier(Ed25519Verifier(), 1 << 16))
    except BundleError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "problems": []}, indent=2))
        _fail(f"{bundle}: {exc}")
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(f"{bundle}: blocks {result['from_height']}..{result['to_height']}: "
                   + ("verified against genesis" if result["ok"] else "DOES NOT VERIFY"))
        for p in result["problems"]:
            click.echo(f"  height {p['height']}: {p['kind']}: {p['detail']}")
    sys.exit(0 if result["ok"] else EXIT_NOT_OK)
