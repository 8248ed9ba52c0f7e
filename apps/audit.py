"""`consortium audit`: verify the ledger from the genesis file alone, trace products, show a
patient's record history, check proofs, export and verify offline bundles (docs/audit.md).
Thin over `consortium.client.audit`, `.subjects` and `.bundle`.

Exit codes: 0 verified / ok; 1 the ledger (or bundle, or proof) does not verify, or problems
found; 2 bad input (unknown record, malformed bundle, unreachable consortium, usage).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import grpc
from tqdm import tqdm

from consortium.localnet import default_dir

if TYPE_CHECKING:
    from consortium.client.audit import Progress

DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="Consortium directory (default: $CONSORTIUM_HOME, else "
                               "./.consortium).")
AS_OPTION = click.option("--as", "org", default="org0", show_default=True,
                         help="Member organisation whose client key signs the reads.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium audit: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _client(directory: Path | None, org: str) -> Any:
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError

    d = directory if directory is not None else default_dir()
    try:
        return ConsortiumClient.from_dir(d, org)
    except (SubmitError, ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))


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


def _genesis(path: Path) -> Any:
    """The genesis file an offline check trusts (one line on stderr when it is no genesis)."""
    from consortium.config import ConfigError, Genesis

    try:
        return Genesis.load(path)
    except (ConfigError, OSError, ValueError) as exc:
        _fail(f"{path}: {exc}" if isinstance(exc, OSError) else str(exc))


def _progress(as_json: bool) -> Progress:
    """Progress bars on a terminal (never in --json output or a pipe)."""
    @contextlib.contextmanager
    def bar(name: str, total: int) -> Iterator[Callable[[], None]]:
        with tqdm(total=total, desc=name if name == "export" else f"validator {name}",
                  unit="block", disable=as_json or not sys.stderr.isatty(), leave=False) as t:
            yield lambda: t.update(1)
    return bar


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


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
    """Walk the chain from genesis: Merkle roots, envelopes against their signed digests, hash
    links, state digests, block times, proposal signatures, commit certificates of each epoch
    (history verified from genesis), client signatures and the stored record rows; with --all,
    compare validators (blocks, statuses, reasons) and name any whose data differs. Block
    times far from their neighbours are warnings."""
    from consortium.client.audit import audit_validators

    if validator_id is not None and all_validators:
        _fail("use --validator ID or --all, not both")
    client = _client(directory, org)
    ids = sorted(client.core.validators)
    if validator_id is not None:
        if validator_id not in ids:
            _fail(f"no validator {validator_id} in genesis (validators: {ids})")
        ids = [validator_id]
    try:
        report = audit_validators(client, ids, from_height=from_height, to_height=to_height,
                                  first_answering=not all_validators and validator_id is None,
                                  progress=_progress(as_json))
    finally:
        client.close()
    lines = [f"validator {vid}: {'ok' if v['ok'] else 'PROBLEMS'} (height {v.get('height')}, "
             f"verified {v.get('verified_from')}..{v.get('verified_to')})"
             for vid, v in report.validators.items()]
    lines += [f"  validator {p.validator} height {p.height}: {p.kind}: {p.detail}"
              for p in report.problems]
    lines += [f"  warning: validator {w.validator} height {w.height}: {w.detail}"
              for w in report.warnings]
    lines.append("verified: the chain checks out from genesis" if report.ok else "NOT OK")
    _emit(report.to_json(), as_json, "\n".join(lines))
    sys.exit(0 if report.ok else EXIT_NOT_OK)


# ------------------------------------------------------------------------------------ trace

TRACE_COLUMNS = ["height", "request", "item", "time", "event", "submitter", "location", "from",
                 "to", "quantity", "proof", "flags", "record_id"]


@audit.command()
@DIR_OPTION
@click.option("--product", required=True,
              help="An EPC class or instance URI (urn:epc:class:lgtin:4012345.012345.LOT-A1), "
                   "the same identifier as a GS1 Digital Link, or a lot name.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "epcis"]),
              default="table", show_default=True,
              help="epcis: an EPCIS 2.0 document GS1 tools read (each event with "
                   "consortium:height and consortium:proof).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (same as --format json).")
@AS_OPTION
def trace(directory: Path | None, product: str, fmt: str, as_json: bool, org: str) -> None:
    """A product's chain of custody in ledger order, each event with its block and proof
    status, and the inconsistencies found (received before shipped, custody gaps, events
    after a recall or destruction, quantities that grow...)."""
    import time

    from consortium.client import SubmitError
    from consortium.client.subjects import trace as trace_of
    from consortium.formats import epcis
    from consortium.formats.errors import FormatError

    fmt = "json" if as_json else fmt
    client = _client(directory, org)
    try:
        result = trace_of(client, product)
    except SubmitError as exc:
        _fail(str(exc))
    except FormatError as exc:
        _fail(f"--product: {exc}")
    finally:
        client.close()
    if not result.events and not result.malformed:
        _fail(f"no provenance records for product {product!r}")
    if fmt == "epcis":
        doc = epcis.export_document(result.epcis_events,
                                    creation_time_ms=int(time.time() * 1000))
        # key order as exported, not sorted: GS1's reference event hash reads a business
        # transaction's type and id in the order written
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    elif fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(TRACE_COLUMNS)
        for r in result.events:
            w.writerow([("; ".join(r[c]) if c == "flags" else r[c]) for c in TRACE_COLUMNS])
        click.echo(buf.getvalue(), nl=False)
    else:
        click.echo(f"chain of custody of {product} ({len(result.events)} events)")
        for r in result.events:
            click.echo(f"  #{r['height']}.{r['request']}.{r['item']} {r['time']} "
                       f"{r['event']:<12} by {r['submitter']:<8} {r['from'] or '-'} -> "
                       f"{r['to'] or '-'} at {r['location'] or '-'} qty {r['quantity'] or '-'} "
                       f"[{r['proof']}]")
            for f in r["flags"]:
                click.echo(f"      ! {f}")
        for line in result.malformed:
            click.echo(f"  ! {line}")
    sys.exit(0 if result.ok else EXIT_NOT_OK)


# ------------------------------------------------------------------------------------ record

@audit.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--proof", "with_proof", is_flag=True,
              help="Include the receipt: item, envelope and block proofs and the commit "
                   "certificate (check offline with `consortium audit check-proof`).")
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
    from consortium.client.audit import receipt_to_json
    from consortium.ledger.items import is_record_id

    if not is_record_id(record_id):
        _fail(f"{record_id!r} is not a record id (64 lowercase hex digits)")
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
        data["receipt"] = receipt_to_json(view.receipt)
    _emit(data, as_json, "\n".join(f"{k}: {v}" for k, v in sorted(data.items())))


@audit.command("check-proof")
@click.argument("proof_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--genesis", "genesis_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False))
@JSON_OPTION
def check_proof_cmd(proof_file: Path, genesis_path: Path, as_json: bool) -> None:
    """Check offline the output of `audit record --proof --json` (or its "receipt" part):
    item -> envelope -> block -> commit certificate of the genesis validator set."""
    from consortium.client.audit import NotAProof, check_proof, load_json
    from consortium.crypto.signing import Ed25519Verifier

    genesis = _genesis(genesis_path)
    try:
        r, problem = check_proof(load_json(proof_file.read_text(errors="replace")), genesis,
                                 Ed25519Verifier())
    except OSError as exc:
        _fail(f"cannot read {proof_file}: {exc.strerror or exc}")
    except NotAProof as exc:
        _fail(f"not a proof file: {exc}")
    data = {"ok": problem is None, "record_id": r.record_id, "height": r.height,
            "block_hash": r.header.hash().hex(), "problem": problem}
    _emit(data, as_json, f"proof of {r.record_id} at height {r.height}: "
                         + ("verified" if problem is None else f"DOES NOT VERIFY: {problem}"))
    sys.exit(0 if problem is None else EXIT_NOT_OK)


# ----------------------------------------------------------------------------------- patient

@audit.command()
@DIR_OPTION
@click.option("--patient", required=True, help="Pseudonymous patient id.")
@AS_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "json", "fhir"]), default="table",
              show_default=True,
              help="fhir: a FHIR R4 Bundle: the records --as reads (each read is logged), "
                   "public metadata only for the others, the access log as AuditEvents.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (same as --format json).")
def patient(directory: Path | None, patient: str, org: str, fmt: str, as_json: bool) -> None:
    """A patient's records and everything that happened to them: who was granted or revoked
    access, who read the keys (the access log on the ledger), erasures (when, by whom)."""
    import time

    from consortium.client import SubmitError
    from consortium.client.fhir_export import patient_bundle
    from consortium.client.subjects import patient_history
    from consortium.formats.errors import FhirError

    client = _client(directory, org)
    try:
        data = patient_history(client, patient)
        if not data["records"] and not data["malformed"]:
            _fail(f"no records for patient {patient!r}")
        if fmt == "fhir":
            doc = patient_bundle(client, patient, data, int(time.time() * 1000))
            click.echo(json.dumps(doc, indent=2, sort_keys=True))
            return
    except (SubmitError, FhirError) as exc:
        _fail(str(exc))
    finally:
        client.close()
    records = data["records"]
    if fmt == "json" or as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"patient {patient}: {len(records)} records")
    for rec in records:
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
    for line in data["malformed"]:
        click.echo(f"  ! {line}")


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
    """Write blocks and the epoch history to a self-contained bundle file that `audit
    verify-bundle` checks with no network, from the genesis file alone."""
    from consortium.client.bundle import BundleError, export_bundle

    client = _client(directory, org)
    if validator_id is not None and validator_id not in client.core.validators:
        client.close()
        _fail(f"no validator {validator_id} in genesis "
              f"(validators: {sorted(client.core.validators)})")
    try:
        done = export_bundle(client, out, from_height=from_height, to_height=to_height,
                             validator_id=validator_id, progress=_progress(as_json))
    except BundleError as exc:
        _fail(str(exc))
    finally:
        client.close()
    data = {"out": str(out), "from_height": done.from_height, "to_height": done.to_height,
            "blocks": done.blocks, "exported_from": done.validator}
    _emit(data, as_json, f"wrote {done.blocks} blocks ({done.from_height}..{done.to_height}) "
                         f"to {out}")


@audit.command("verify-bundle")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--genesis", "genesis_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The consortium's genesis.json: the only thing trusted.")
@JSON_OPTION
def verify_bundle_cmd(bundle: Path, genesis_path: Path, as_json: bool) -> None:
    """Verify an exported bundle with no network at all."""
    from consortium.client.bundle import BundleError, verify_bundle
    from consortium.crypto.signing import CachingVerifier, Ed25519Verifier

    genesis = _genesis(genesis_path)
    try:
        result = verify_bundle(bundle, genesis, CachingVerifier(Ed25519Verifier(), 1 << 16))
    except BundleError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "problems": []}, indent=2,
                                  sort_keys=True))
        _fail(f"{bundle}: {exc}")
    lines = [f"{bundle}: blocks {result['from_height']}..{result['to_height']}: "
             + ("verified against genesis" if result["ok"] else "DOES NOT VERIFY")]
    lines += [f"  height {p['height']}: {p['kind']}: {p['detail']}" for p in result["problems"]]
    lines += [f"  warning: height {w['height']}: {w['detail']}" for w in result["warnings"]]
    _emit(result, as_json, "\n".join(lines))
    sys.exit(0 if result["ok"] else EXIT_NOT_OK)
