"""`consortium`: the command line of a local consortium (thin over the library).

Every command takes --help; errors are one readable line on stderr and a non-zero exit code;
--json output is stable for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from apps import records_file
from consortium.localnet import default_dir
from consortium.pbft.payload import ENVELOPE_ITEMS_MAX

TLS_WARNING_DAYS = 30
"""`status` flags a TLS certificate this close to its expiry (as the validator's health log
and its consortium_tls_cert_expiry_days gauge do)."""

DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="Consortium directory (default: $CONSORTIUM_HOME, else "
                               "./.consortium).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _dir(directory: Path | None) -> Path:
    return directory if directory is not None else default_dir()


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"consortium: {message}", err=True)
    sys.exit(code)


def emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run and use a consortium ledger: a permissioned BFT ledger for provenance and patient
    records."""


@main.command()
@DIR_OPTION
@click.option("--validators", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Member organisations, one validator each.")
@click.option("--force", is_flag=True, help="Overwrite an existing consortium in DIR.")
@click.option("--k8s", "k8s_dir", type=click.Path(path_type=Path), default=None,
              help="Also write Kubernetes Secrets and ConfigMaps for the material to this "
                   "directory (never commit it; see docs/deploy.md).")
@JSON_OPTION
@click.option("--no-admission", is_flag=True,
              help="No admission service: records are accepted without screening.")
@click.option("--admission-model", type=click.Choice(
    ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]),
              default="qwen2.5-coder-1.5b", show_default=True,
              help="The embedded model the admission service runs (`up --backend rules` "
                   "runs none).")
def init(directory: Path | None, validators: int, force: bool, k8s_dir: Path | None,
         no_admission: bool, admission_model: str, as_json: bool) -> None:
    """Create keys, the CA and TLS certificates, org and client keys, the admission service's
    identity, and genesis.json."""
    from consortium.localnet import init as do_init

    d = _dir(directory)
    written: list[Path] = []
    try:
        if (d / "genesis.json").exists() and k8s_dir is not None and not force:
            genesis = None  # existing consortium: only (re)generate the Kubernetes material
        else:
            genesis = do_init(d, validators, force=force, admission=not no_admission,
                              admission_model=admission_model)
        if k8s_dir is not None:
            from consortium.k8s import write_k8s_material

            written = write_k8s_material(d, k8s_dir)
    except (FileExistsError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {d}: {exc.strerror or exc}")
    from consortium.config import Genesis

    genesis = genesis or Genesis.load(d / "genesis.json")
    emit({"dir": str(d), "chain_id": genesis.chain_id, "validators": len(genesis.validators),
          "orgs": [o.org_id for o in genesis.member_orgs],
          "admission_client": genesis.admission_client, "k8s": [str(p) for p in written]},
         as_json,
         f"initialised {genesis.chain_id} with {len(genesis.validators)} validators in {d}"
         + (f"; Kubernetes material in {k8s_dir}" if k8s_dir is not None else ""))


@main.command()
@DIR_OPTION
@click.option("--dsn", default=None, help="PostgreSQL server DSN (default: $CONSORTIUM_DSN, "
                                          "else an embedded PostgreSQL in DIR/pgdata).")
@click.option("--detach", is_flag=True, help="Return once every validator is healthy.")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for health.")
@click.option("--no-admission", is_flag=True,
              help="Do not start the admission service (records then wait in "
                   "pending-screening).")
@click.option("--backend", type=click.Choice(["embedded", "rules"]), default=None,
              help="The admission reviewer (default: the service's config, the embedded "
                   "model; without it installed, the rules with a warning).")
@JSON_OPTION
def up(directory: Path | None, dsn: str | None, detach: bool, timeout: float,
       no_admission: bool, backend: str | None, as_json: bool) -> None:
    """Start every validator of DIR that is not running, then the admission service
    (idempotent)."""
    from consortium import process
    from consortium.config import ConfigError

    d = _dir(directory)
    try:
        started = process.up(d, dsn)
        with click.progressbar(length=len(started), label="waiting for validators",
                               file=sys.stderr) as bar:
            process.wait_healthy(d, timeout, on_progress=lambda _rid: bar.update(1))
        reviewer = None if no_admission else process.admission_plan(d, backend)
        if reviewer is not None and reviewer.warning:
            click.echo(f"consortium: WARNING: {reviewer.warning}", err=True)
        elif reviewer is not None and reviewer.backend == "embedded" \
                and process.admission_pid(d) is None:
            click.echo(f"admission service: loading the embedded model {reviewer.model} "
                       "(the first start joins and verifies the model file; progress in "
                       f"{d}/admission/admission.log)", err=True)
        admission_pid = None if reviewer is None else process.admission_up(
            d, reviewer.backend)
    except (process.ProcessError, ConfigError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{d}: {exc.strerror or exc}")
    data = [{"id": s.replica_id, "pid": s.pid, "already_running": s.already_running}
            for s in started]
    text = "\n".join(f"validator {s.replica_id}: pid {s.pid}"
                     + (" (already running)" if s.already_running else " started")
                     for s in started)
    if admission_pid is not None:
        text += f"\nadmission service: pid {admission_pid} (log: {d}/admission/admission.log)"
    emit({"validators": data, "admission_pid": admission_pid,
          "admission": None if reviewer is None else {
              "backend": reviewer.backend, "model": reviewer.model,
              "warning": reviewer.warning}} if as_json else data, as_json,
         text)
    if not detach:
        click.echo("validators running; Ctrl-C stops them", err=True)
        try:
            while True:
                import time
                time.sleep(3600)
        except KeyboardInterrupt:
            process.down(d)


@main.command()
@DIR_OPTION
@JSON_OPTION
def status(directory: Path | None, as_json: bool) -> None:
    """Per validator: id, org, pid, address, database, height, view, epoch, last block hash,
    health, whether it is serving (and why not: its database is down...) and the primary it
    follows, its signing key (hex; the next one during a rotation) and the expiry of the TLS
    certificate it serves (flagged 30 days before); the primary, as the validators in the
    highest view name it; and the admission reviewer (backend, model and sha256, model verdict
    latency p50/p95, backlog)."""
    from consortium import process

    try:
        rows = process.status(_dir(directory))
    except process.ProcessError as exc:
        fail(str(exc))
    primary = process.primary_of(rows)
    lines = [f"primary: validator {primary['id']} at {primary['address']} (view "
             f"{primary['view']}; {primary['agreeing']} of {primary['answered']} validators "
             "agree)" if primary is not None else "primary: unknown (no validator answered)"]
    for r in rows:
        serving = "-" if r["serving"] is None else "yes" if r["serving"] else "NO"
        lines.append(f"{r['id']:>3} {r['org']:<8} pid={r['pid'] or '-':<8} "
                     f"height={r['height']!s:<7} view={r['view']!s:<4} "
                     f"healthy={r['healthy']!s:<5} serving={serving:<3} {r['address']}  "
                     f"db={r['database']}" + (f"  problem: {r['problem']}" if r["problem"]
                                              else ""))
        if r["signing_key"]:
            lines.append(f"      key={r['signing_key'][:16]}…"
                         + (f" next={r['signing_key_next'][:16]}…" if r["signing_key_next"]
                            else "")
                         + (f" tls-expires={r['tls_not_after']} ({r['tls_days_left']} days"
                            + (", ROTATE IT" if r["tls_days_left"] < TLS_WARNING_DAYS else "")
                            + ")" if r["tls_not_after"] else ""))
    reviewer = process.admission_status(_dir(directory))
    if reviewer is not None:
        lines.append(_reviewer_line(reviewer))
    emit({"validators": rows, "primary": primary, "admission": reviewer}, as_json,
         "\n".join(lines))


def _reviewer_line(r: dict[str, Any]) -> str:
    model = f" {r['model']} (sha256 {r['model_sha256'][:16]}…)" if r["model_sha256"] else (
        f" {r['model']}" if r["model"] else "")
    if not r["running"]:
        return (f"reviewer: {r['backend']}{model}: "
                + ("not answering yet (starting or loading the model)" if r["pid"]
                   else "not running"))
    return (f"reviewer: {r['backend']}{model}, model verdict latency p50 "
            f"{r['latency_p50_ms']} ms (p95 {r['latency_p95_ms']} ms), backlog {r['backlog']}, "
            f"posted {r['verdicts_posted']}, model reviews {r['model_reviews']}, busy "
            f"{r['model_busy']}" + (f", last error: {r['last_error']}" if r["last_error"]
                                    else ""))


@main.command()
@DIR_OPTION
@JSON_OPTION
def down(directory: Path | None, as_json: bool) -> None:
    """Stop what `up` started in DIR: the admission service, the validators (SIGTERM, then
    SIGKILL after 15 s) and the embedded PostgreSQL when `up` started it (a server given with
    --dsn or CONSORTIUM_DSN keeps running). Idempotent."""
    from consortium import process

    try:
        stopped = process.down(_dir(directory))
    except process.ProcessError as exc:
        fail(str(exc))
    text = f"stopped validators {stopped.validators}"
    if stopped.admission:
        text += "; the admission service"
    if stopped.embedded_postgres is not None:
        text += f"; the embedded PostgreSQL (pid {stopped.embedded_postgres})"
    emit({"stopped": stopped.validators, "admission": stopped.admission,
          "embedded_postgres_pid": stopped.embedded_postgres}, as_json, text)


SUBMIT_FILE_OPTIONS = ("directory", "org", "records_file", "envelope", "skip_invalid", "ids_out",
                       "as_json")


@main.group(invoke_without_command=True, no_args_is_help=True,
            epilog=records_file.FORMAT)
@DIR_OPTION
@click.option("--as", "org", default=None, help="Submitting organisation (e.g. org0).")
@click.option("--file", "records_file", type=click.File("r", encoding="utf-8"), default=None,
              help="Records to submit, one JSON object per line (format below; - for stdin).")
@click.option("--envelope", type=click.IntRange(1, ENVELOPE_ITEMS_MAX), default=256,
              show_default=True, help="Records per envelope (one signature each).")
@click.option("--skip-invalid", is_flag=True,
              help="Submit the good lines and report the bad ones (default: a bad line means "
                   "nothing is submitted).")
@click.option("--ids-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the recorded records' ids to this file, one a line in file order "
                   "(instead of listing them in the --json output).")
@JSON_OPTION
@click.pass_context
def submit(ctx: click.Context, directory: Path | None, org: str | None, records_file: Any,
           envelope: int, skip_invalid: bool, ids_out: Path | None, as_json: bool) -> None:
    """Submit signed, encrypted records and wait for their verified receipts: one with
    `submit provenance` or `submit patient`, or a file of them with `submit --file FILE --as
    ORG` (sent in envelopes on one stream to the primary; a progress bar on stderr)."""
    if ctx.invoked_subcommand is not None:
        given = [p.opts[0] for p in ctx.command.params if p.name in SUBMIT_FILE_OPTIONS
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            fail(f"{', '.join(given)} given before `{ctx.invoked_subcommand}`: options of "
                 "`submit --file`; give the subcommand's options after its name", 2)
        return
    if records_file is None or org is None:
        fail("give --file FILE and --as ORG, or a subcommand (provenance, patient); see "
             "`consortium submit --help`", 2)
    _submit_file(directory, org, records_file, envelope, skip_invalid, ids_out, as_json)


def _submit_file(directory: Path | None, org: str, records: Any, envelope: int,
                 skip_invalid: bool, ids_out: Path | None, as_json: bool) -> None:
    from tqdm import tqdm

    from consortium.client import SubmitError

    name = getattr(records, "name", "records")
    try:
        lines, bad = records_file.parse_lines(records)
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {name}: {exc}", 2)
    total = len(lines) + len(bad)
    if total == 0:
        fail(f"{name} holds no records", 2)
    with _client(directory, org) as client:
        items, unsealable = records_file.build_items(client, lines)
        bad = sorted(bad + unsealable)
        if bad and not skip_invalid:
            if as_json:
                click.echo(json.dumps({"submitted": 0, "bad_lines": [
                    {"line": n, "error": why} for n, why in bad]}, indent=2, sort_keys=True))
            fail(records_file.bad_lines_message(name, bad, total), 2)
        for n, why in bad:
            click.echo(f"consortium: {name} line {n} skipped: {why}", err=True)
        envelopes = len(client.core.envelopes([item for _, item in items], envelope)) \
            if items else 0
        with tqdm(total=len(items), unit="rec", desc="submitting", file=sys.stderr,
                  disable=None) as bar:
            try:
                results = client.submit_many([item for _, item in items],
                                             envelope_items=envelope, on_progress=bar.update) \
                    if items else []
            except SubmitError as exc:
                fail(str(exc))
    data = records_file.report(items, results, envelopes)
    data["bad_lines"] = [{"line": n, "error": why} for n, why in bad]
    if ids_out is not None:
        try:
            ids_out.write_text("".join(f"{i}\n" for i in data["record_ids"]))
        except OSError as exc:
            fail(f"cannot write {ids_out}: {exc.strerror or exc}")
        data["ids_out"] = str(ids_out)
        del data["record_ids"]
    span = f"heights {data['first_height']}-{data['last_height']}" \
        if data["first_height"] is not None else "nothing committed"
    emit(data, as_json, f"{data['recorded']} of {total} records recorded in {envelopes} "
                        f"envelopes ({span}); {len(data['invalid'])} refused by the ledger, "
                        f"{len(data['failed'])} not committed, {len(bad)} bad lines skipped")
    for problem in data["invalid"][:records_file.BAD_LINES_SHOWN] if not as_json else ():
        click.echo(f"consortium: line {problem['line']} refused: {problem['reason']}", err=True)
    for problem in data["failed"][:records_file.BAD_LINES_SHOWN] if not as_json else ():
        click.echo(f"consortium: line {problem['line']} not committed: {problem['error']}",
                   err=True)
    ok = data["recorded"] > 0 and not data["invalid"] and not data["failed"]
    sys.exit(0 if ok else 1)  # every submitted record recorded (bad lines skipped on request)


def _client(directory: Path | None, org: str) -> Any:
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError

    try:
        return ConsortiumClient.from_dir(_dir(directory), org)
    except (SubmitError, ConfigError, FileNotFoundError) as exc:
        fail(str(exc))


@submit.command("provenance")
@DIR_OPTION
@click.option("--as", "org", required=True, help="Submitting organisation (e.g. org0).")
@click.option("--product", required=True,
              help="A GS1 identifier in any form (SGTIN, LGTIN, SSCC; EPC URN, Digital Link "
                   "or element string), another URI, or a plain lot name.")
@click.option("--event", required=True, type=click.Choice(
    ["manufactured", "shipped", "received", "inspected", "recalled", "destroyed"]))
@click.option("--location", default=None,
              help="Where it happened (required): an SGLN in any form, or a site name.")
@click.option("--from", "custodian_from", default=None,
              help="Source owning party: a member org, a PGLN, or a party name.")
@click.option("--to", "custodian_to", default=None,
              help="Destination owning party (required for shipped).")
@click.option("--quantity", type=click.IntRange(1), default=None)
@click.option("--disposition", default=None,
              help="CBV disposition overriding the event's (e.g. conformant after inspected).")
@click.option("--document", "documents", multiple=True, help="A document hash (repeatable).")
@click.option("--readers", default="", help="Comma-separated orgs that may read the payload.")
@JSON_OPTION
def submit_provenance(directory: Path | None, org: str, product: str, event: str,
                      location: str | None, custodian_from: str | None,
                      custodian_to: str | None, quantity: int | None, disposition: str | None,
                      documents: tuple[str, ...], readers: str, as_json: bool) -> None:
    """A supply-chain provenance event, as one EPCIS 2.0 ObjectEvent built from the flags
    (event -> CBV bizStep and disposition, --from/--to -> owning parties, --location ->
    bizLocation; see docs/records.md). Documents in EPCIS already: `submit epcis`."""
    from consortium.client import SubmitError
    from consortium.formats.errors import FormatError

    reader_list = [x for x in readers.split(",") if x]
    with _client(directory, org) as client:
        try:
            client.ensure_readers(reader_list)
            client.refresh_directory()  # members admitted since genesis: their PGLNs
            item = client.aio.shorthand_item(
                product, event, location=location, custodian_from=custodian_from,
                custodian_to=custodian_to, quantity=quantity, documents=documents,
                disposition=disposition, readers=reader_list)
        except (FormatError, SubmitError) as exc:
            fail(str(exc), 2)
        submit_one(client, item, as_json)


def submit_one(client: Any, item: bytes, as_json: bool) -> None:
    """Submit one sealed record, print its verified receipt, exit 1 unless it was recorded."""
    from consortium.client import SubmitError

    try:
        r = client.submit_item(item)
    except SubmitError as exc:
        fail(str(exc))
    emit(r.to_json(), as_json, f"{r.record_id} committed at height {r.height} ({r.status})")
    sys.exit(0 if r.status == "recorded" else 1)


@submit.command("patient")
@DIR_OPTION
@click.option("--as", "org", required=True, help="Submitting organisation.")
@click.option("--patient", required=True, help="Pseudonymous patient id.")
@click.option("--type", "record_type", default=None,
              type=click.Choice(["lab-result", "prescription", "encounter", "imaging"]),
              help="Checked against the FHIR resource when given (it follows from it).")
@click.option("--file", "payload_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="A FHIR R4 resource or Bundle (JSON), encrypted before it leaves this "
                   "machine.")
@click.option("--readers", default="", help="Comma-separated orgs that may read the payload.")
@JSON_OPTION
def submit_patient(directory: Path | None, org: str, patient: str, record_type: str | None,
                   payload_file: Path, readers: str, as_json: bool) -> None:
    """A patient record: a FHIR R4 payload (the same as `submit fhir`)."""
    from apps.submit_formats import submit_fhir_file
    from consortium.client.formats import fhir_record
    from consortium.formats.errors import FhirError

    if record_type is not None:
        try:
            derived = fhir_record(payload_file.read_bytes(), patient).record_type
        except OSError as exc:
            fail(f"cannot read {payload_file}: {exc.strerror or exc}", 2)
        except FhirError as exc:
            fail(f"{payload_file}: {exc}", 2)
        if derived != record_type:
            fail(f"--type {record_type}, but {payload_file} is a {derived} record", 2)
    submit_fhir_file(directory, org, patient, [x for x in readers.split(",") if x],
                     payload_file, as_json)


@main.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--decrypt", is_flag=True, help="Decrypt the payload (needs --as, a reader).")
@click.option("--as", "org", default=None, help="Organisation to read as.")
@JSON_OPTION
def get(directory: Path | None, record_id: str, decrypt: bool, org: str | None,
        as_json: bool) -> None:
    """Fetch a record: public metadata, and the payload when decrypting as a reader."""
    from consortium.client import SubmitError

    if decrypt and org is None:
        fail("--decrypt needs --as ORG")
    with _client(directory, org or "org0") as client:
        try:
            view = client.get(record_id, decrypt=decrypt)
        except SubmitError as exc:
            fail(str(exc))
    data = view.to_json()
    emit(data, as_json, json.dumps(data, indent=2, sort_keys=True))


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", required=True, type=click.Path(path_type=Path, exists=True),
              help="The validator's config.json.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning"]))
def validator(config: Path, log_level: str) -> None:
    """Run one validator in the foreground until SIGTERM."""
    from consortium.node.__main__ import main as node_main

    sys.exit(node_main(["--config", str(config), "--log-level", log_level]))


from apps.bench import bench  # noqa: E402, I001
main.add_command(bench)
from apps.access import access  # noqa: E402
from apps.audit import audit  # noqa: E402
from apps.ca import ca  # noqa: E402
from apps.keys import keys  # noqa: E402
from apps.members import members  # noqa: E402
from apps.review import review  # noqa: E402

main.add_command(audit)
main.add_command(access)
main.add_command(review)
main.add_command(members)
main.add_command(keys)
main.add_command(ca)
from apps.admission import admission  # noqa: E402

main.add_command(admission)
from apps.chaos import chaos  # noqa: E402

main.add_command(chaos)
import apps.submit_formats  # noqa: E402, F401  (registers submit epcis, submit fhir)

if __name__ == "__main__":
    main()
