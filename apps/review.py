"""`consortium review`: the records the admission service flagged, and the validators' votes.

A flagged record is `quarantined` until 2f+1 validators vote: 2f+1 accepts make it `accepted`,
2f+1 rejects `rejected` (it stays on the ledger, marked). Votes are signed by each
organisation's validator key (its `validator-<id>` client) and ordered like any transaction.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from apps.audit import AS_OPTION, DIR_OPTION, JSON_OPTION, validator_client

STATUSES = ["pending-screening", "quarantined", "accepted", "rejected"]
EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium review: {message}", err=True)
    sys.exit(code)


def _client(directory: Path | None, org: str) -> Any:
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError
    from consortium.localnet import default_dir

    try:
        return ConsortiumClient.from_dir(directory if directory is not None else default_dir(),
                                         org)
    except (SubmitError, ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def review() -> None:
    """The screening queue: list flagged records, vote to accept or reject them."""


@review.command("list")
@DIR_OPTION
@click.option("--status", "screening", type=click.Choice(STATUSES), default="quarantined",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@AS_OPTION
@JSON_OPTION
def list_cmd(directory: Path | None, screening: str, limit: int, org: str,
             as_json: bool) -> None:
    """Records in one screening status, with the admission service's verdicts and the votes
    so far."""
    from consortium.client import SubmitError

    with _client(directory, org) as client:
        try:
            reply = client.list_screening(screening, limit=limit)
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    rows: list[dict[str, Any]] = []
    for r in reply.records:
        verdicts = []
        for v in r.verdicts:
            reasons: list[str] = []
            if v.verdict_json:
                try:
                    reasons = list(json.loads(v.verdict_json).get("reasons", []))
                except ValueError:
                    reasons = ["(unparsable verdict)"]
            verdicts.append({"decision": v.decision, "risk": v.risk_milli / 1000,
                             "reasons": reasons})
        rows.append({"record_id": r.record_id, "height": r.height, "kind": r.kind,
                     "subject_id": r.subject_id, "event_type": r.event_type,
                     "submitter_org": r.submitter_org, "screening": r.screening,
                     "verdicts": verdicts,
                     "votes": {"accept": sorted(v.replica_id for v in r.votes if v.accept),
                               "reject": sorted(v.replica_id for v in r.votes if not v.accept)},
                     "quorum": reply.quorum})
    if as_json:
        click.echo(json.dumps({"status": screening, "records": rows}, indent=2,
                              sort_keys=True))
        return
    click.echo(f"{len(rows)} records {screening} (votes needed: {reply.quorum})")
    for row in rows:
        why = "; ".join(r for v in row["verdicts"] for r in v["reasons"]) or "-"
        click.echo(f"  {row['record_id']} {row['kind']} {row['subject_id']} "
                   f"{row['event_type']} by {row['submitter_org']} (block {row['height']}) "
                   f"accept={row['votes']['accept']} reject={row['votes']['reject']}: {why}")


@review.command("vote")
@DIR_OPTION
@click.argument("record_id")
@click.option("--accept/--reject", "accept", required=True,
              help="Accept the quarantined record, or reject it.")
@click.option("--as", "org", required=True,
              help="The organisation whose validator votes (its validator key signs).")
@JSON_OPTION
def vote(directory: Path | None, record_id: str, accept: bool, org: str,
         as_json: bool) -> None:
    """Vote on a quarantined record as your organisation's validator."""
    from consortium.client import SubmitError

    client = validator_client(directory, org, _fail)
    with client:
        try:
            receipt = client.review_vote(record_id, accept)
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    data = receipt.to_json()
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               f"vote {data['status']} at height {data['height']}"
               + (f": {data['reason']}" if data["reason"] else ""))
    sys.exit(0 if data["status"] == "recorded" else EXIT_NOT_OK)
