"""`consortium access`: grant and revoke readers of a record, erase a patient record.

Each is a signed transaction ordered by the validators and judged the same way by all of them
(docs/audit.md): only the submitter's organisation or a current reader grants; only the
submitter's organisation revokes or erases. The command prints the verified receipt; a
transaction the ledger refused comes back with status "invalid" and the reason (exit 1).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from apps.audit import AS_OPTION, DIR_OPTION, JSON_OPTION, _client

BAD_INPUT = {"INVALID_ARGUMENT", "NOT_FOUND"}


def _failed(exc: Any) -> NoReturn:
    """One line; exit 2 for bad input (malformed id, unknown record or org), else 1."""
    click.echo(f"consortium access: {exc}", err=True)
    code = getattr(exc, "code", None)
    sys.exit(2 if code is not None and code.name in BAD_INPUT else 1)


def _transact(directory: Path | None, org: str, as_json: bool,
              call: Callable[[Any], Any]) -> None:
    """Run one access transaction as `org` and report its verified receipt."""
    from consortium.client import SubmitError

    with _client(directory, org) as client:
        try:
            receipt = call(client)
        except SubmitError as exc:
            _failed(exc)
    _done(receipt, as_json)


def _done(receipt: Any, as_json: bool) -> None:
    data = receipt.to_json()
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               f"{data['status']} at height {data['height']}"
               + (f": {data['reason']}" if data["reason"] else ""))
    sys.exit(0 if data["status"] == "recorded" else 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def access() -> None:
    """Grant, revoke and erase access to records (signed ledger transactions)."""


@access.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--to", "to_org", required=True, help="Organisation that may read from now on.")
@AS_OPTION
@JSON_OPTION
def grant(directory: Path | None, record_id: str, to_org: str, org: str, as_json: bool) -> None:
    """Let another organisation read a record: your copy of its key, wrapped for it."""
    _transact(directory, org, as_json, lambda c: c.grant(record_id, to_org))


@access.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--org", "target", required=True, help="Organisation to remove as a reader.")
@AS_OPTION
@JSON_OPTION
def revoke(directory: Path | None, record_id: str, target: str, org: str,
           as_json: bool) -> None:
    """Remove a reader's wrapped key (what it already read, it keeps)."""
    _transact(directory, org, as_json, lambda c: c.revoke(record_id, target))


@access.command()
@DIR_OPTION
@click.argument("record_id")
@click.option("--patient", required=True, help="The record's patient id (must match).")
@click.option("--reason", default="", help="Recorded with the erasure.")
@AS_OPTION
@JSON_OPTION
def erase(directory: Path | None, record_id: str, patient: str, reason: str, org: str,
          as_json: bool) -> None:
    """Right to be forgotten: delete every wrapped key of a patient record (and, by policy, its
    ciphertext) on every validator. The chain still verifies."""
    _transact(directory, org, as_json, lambda c: c.erase(record_id, patient, reason))
