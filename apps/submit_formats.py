"""`consortium submit epcis` and `consortium submit fhir`: the members' own formats in.

Both validate everything before anything is sent (consortium.formats): an EPCIS document with a
bad event is refused whole, each bad event named by index with the reason, unless
`--skip-invalid`; a FHIR payload that breaks a rule (no Observation code, a patient named by
name, not FHIR at all) is refused with the rule and the path. See docs/records.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from apps.cli import DIR_OPTION, JSON_OPTION, _client, emit, fail, submit

BAD_EVENTS_SHOWN = 5


def _readers(value: str) -> list[str]:
    return [x for x in value.split(",") if x]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", 2)


@submit.command("epcis")
@DIR_OPTION
@click.option("--as", "org", required=True, help="Submitting organisation (e.g. org0).")
@click.option("--readers", default="",
              help="Comma-separated orgs that may read the encrypted part (private fields).")
@click.option("--skip-invalid", is_flag=True,
              help="Submit the good events of a document with bad ones (default: nothing).")
@click.argument("document", type=click.Path(dir_okay=False, path_type=Path))
@JSON_OPTION
def submit_epcis(directory: Path | None, org: str, readers: str, skip_invalid: bool,
                 document: Path, as_json: bool) -> None:
    """Submit the events of an EPCIS 2.0 JSON/JSON-LD document (an EPCISDocument, an
    EPCISQueryDocument or one event), one provenance record per event.

    \b
    Each event is validated first (GS1 identifiers and check digits, URN or Digital Link
    form; CBV bizStep and disposition; readPoint or bizLocation required). Its public part is
    the event itself; extension fields in the namespace urn:consortium:private: (prices,
    patient links) are encrypted for --readers instead. Events go out in envelopes, with a
    progress bar on stderr; --json prints the record id and height of each, by index.
    """
    from consortium.client import SubmitError
    from consortium.formats import epcis

    data = _read(document)
    with _client(directory, org) as client:
        try:
            client.ensure_readers(_readers(readers))
            items, bad = client.aio.epcis_items(data, readers=_readers(readers),
                                                skip_invalid=skip_invalid)
        except epcis.EpcisDocumentError as exc:
            if as_json:
                click.echo(json.dumps({"submitted": 0, "bad_events": [
                    {"index": e.index, "error": e.message} for e in exc.errors]},
                    indent=2, sort_keys=True))
            fail(f"{document}: {exc}; nothing submitted (fix them or pass --skip-invalid)", 2)
        except (epcis.EpcisError, SubmitError) as exc:
            fail(f"{document}: {exc}", 2)
        for e in bad if not as_json else ():
            click.echo(f"consortium: {document} {e.message} (skipped)", err=True)
        with tqdm(total=len(items), unit="event", desc="submitting", file=sys.stderr,
                  disable=None) as bar:
            try:
                results = client.submit_many([i for _, i in items], on_progress=bar.update) \
                    if items else []
            except SubmitError as exc:
                fail(str(exc))
    events: list[dict[str, Any]] = []
    recorded = 0
    for (index, _), r in zip(items, results, strict=True):
        if isinstance(r, SubmitError):
            events.append({"index": index, "error": str(r).splitlines()[0] if str(r) else
                           "failed"})
            continue
        recorded += r.status == "recorded"
        events.append({"index": index, "record_id": r.record_id, "height": r.height,
                       "status": r.status, **({"reason": r.reason} if r.reason else {})})
    out = {"submitted": len(items), "recorded": recorded, "events": events,
           "bad_events": [{"index": e.index, "error": e.message} for e in bad]}
    emit(out, as_json, f"{recorded} of {len(items) + len(bad)} events recorded; "
                       f"{len(items) - recorded} not recorded, {len(bad)} bad events skipped")
    for e in [e for e in events if "error" in e or e.get("status") != "recorded"][
            :BAD_EVENTS_SHOWN] if not as_json else ():
        click.echo(f"consortium: event {e['index']} not recorded: "
                   f"{e.get('error') or e.get('reason')}", err=True)
    sys.exit(0 if items and recorded == len(items) else 1)


@submit.command("fhir")
@DIR_OPTION
@click.option("--as", "org", required=True, help="Submitting organisation.")
@click.option("--patient", required=True,
              help="The pseudonymous patient id: the payload's subject is Patient/<ID>.")
@click.option("--readers", default="", help="Comma-separated orgs that may read the record.")
@click.argument("payload", type=click.Path(dir_okay=False, path_type=Path))
@JSON_OPTION
def submit_fhir(directory: Path | None, org: str, patient: str, readers: str, payload: Path,
                as_json: bool) -> None:
    """Submit a FHIR R4 resource (Observation, MedicationRequest, Encounter,
    DiagnosticReport, ImagingStudy) or a Bundle of them as one patient record.

    Validated before it is encrypted (validators only see ciphertext): subject Patient/<ID>,
    no patient name, an Observation's LOINC code and UCUM units. Public: the resource types
    and code systems, never codes or values.
    """
    submit_fhir_file(directory, org, patient, _readers(readers), payload, as_json)


def submit_fhir_file(directory: Path | None, org: str, patient: str, readers: list[str],
                     payload: Path, as_json: bool) -> None:
    """`submit fhir`, and `submit patient --file` (which takes FHIR only)."""
    from consortium.client import SubmitError
    from consortium.formats.errors import FhirError

    data = _read(payload)
    with _client(directory, org) as client:
        try:
            client.ensure_readers(readers)
            item = client.aio.fhir_item(patient, data, readers=readers)
        except FhirError as exc:
            fail(f"{payload}: {exc}", 2)
        except SubmitError as exc:
            fail(str(exc), 2)
        try:
            r = client.submit_item(item)
        except SubmitError as exc:
            fail(str(exc))
    emit(r.to_json(), as_json, f"{r.record_id} committed at height {r.height} ({r.status})")
    sys.exit(0 if r.status == "recorded" else 1)
