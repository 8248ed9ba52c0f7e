"""`consortium members`: organisations apply to join, validators vote, the validator set changes.

A join request is an ordered transaction signed by the applicant's own validator key. The
admission service posts its advice (approve / reject / review) as a verdict; the current
validators vote, each with its validator key, and an approval also signs the validator-set
change itself. With 2f+1 approvals the change is executed at the next checkpoint: the new
validator catches up by state transfer and takes part in consensus from then on
(docs/admission.md, "Membership"). Removing a member works the same way (`members remove`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from apps.audit import AS_OPTION, DIR_OPTION, JSON_OPTION, validator_client
from consortium.localnet import default_dir

EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium members: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def members() -> None:
    """Membership: apply to join, list requests and the validator set, vote, remove."""


def _host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        _fail(f"{what} must be HOST:PORT, not {value!r}")
    return host, int(port)


def _proposal_json(p: Any) -> dict[str, Any]:
    return {"proposal_id": p.proposal_id, "kind": p.kind, "replica_id": p.replica_id,
            "org": p.org, "name": p.name, "peer_address": p.peer_address,
            "client_address": p.client_address, "statement": p.statement,
            "reason": p.reason, "status": p.status, "height": p.height,
            "decided_height": p.decided_height or None,
            "verdicts": [{"decision": v.decision, "risk": v.risk_milli / 1000}
                         for v in p.verdicts],
            "votes": {"approve": sorted(v.replica_id for v in p.votes if v.approve),
                      "reject": sorted(v.replica_id for v in p.votes if not v.approve)}}


@members.command("apply")
@DIR_OPTION
@click.option("--org", required=True, help="The new organisation's id (a-z, 0-9, '-').")
@click.option("--name", default=None, help="Its display name (default: the id).")
@click.option("--endpoint", required=True,
              help="HOST:PORT where its validator will accept peer connections.")
@click.option("--client-endpoint", default=None,
              help="HOST:PORT for its clients (default: the peer port + 100).")
@click.option("--metrics-endpoint", default=None,
              help="HOST:PORT for its Prometheus metrics (default: the peer port + 2000).")
@click.option("--statement", "statement_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The applicant's statement (who it is, why it joins): free text, or a JSON "
                   "application {statement, sector, country, contact_email, sponsors}.")
@click.option("--keys", "key_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to create (or reuse) the validator's keys and config "
                                 "(default: DIR/validators/<replica id>).")
@click.option("--replica-id", type=click.IntRange(0, 65535), default=None,
              help="The validator id to ask for (default: the next free one).")
@JSON_OPTION
def apply(directory: Path | None, org: str, name: str | None, endpoint: str,
          client_endpoint: str | None, metrics_endpoint: str | None, statement_file: Path,
          key_dir: Path | None, replica_id: int | None, as_json: bool) -> None:
    """Ask to join: create the validator's keys and submit a signed join request."""
    from consortium.client import ConsortiumClient, Identity, SubmitError
    from consortium.client.nonces import NonceFile
    from consortium.config import ConfigError, Genesis
    from consortium.ledger.transactions import (
        ORG_ID_PATTERN,
        STATEMENT_BYTES_MAX,
        JoinRequest,
        applicant_client_id,
    )
    from consortium.localnet import init_applicant

    d = (directory if directory is not None else default_dir()).resolve()
    if not ORG_ID_PATTERN.fullmatch(org):
        _fail("--org is 1 to 32 characters of a-z, 0-9 and '-'")
    host, port = _host_port(endpoint, "--endpoint")
    client_address = client_endpoint or f"{host}:{port + 100}"
    _host_port(client_address, "--client-endpoint")
    metrics_address = metrics_endpoint or f"{host}:{port + 2000}"
    _host_port(metrics_address, "--metrics-endpoint")
    try:
        statement = statement_file.read_text()
        genesis = Genesis.load(d / "genesis.json")
        ca = (d / "ca" / "ca.crt").read_bytes()
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        _fail(str(exc))
    if not 1 <= len(statement.encode()) <= STATEMENT_BYTES_MAX:
        _fail(f"the statement is 1 to {STATEMENT_BYTES_MAX} bytes, not "
              f"{len(statement.encode())}")
    if replica_id is None:
        replica_id = _next_replica_id(d, genesis, ca)
    try:
        applicant = init_applicant(d, org, replica_id, endpoint, client_address,
                                   metrics_address, key_dir)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    identity = Identity(applicant_client_id(applicant.signer.public_key), org,
                        applicant.signer, None, NonceFile(applicant.key_dir / "applicant.nonce"))
    request = JoinRequest(org, name or org, replica_id, applicant.signer.public_key,
                          applicant.client.public_key, applicant.encryption.public_key,
                          endpoint, client_address, statement)
    with ConsortiumClient(genesis, identity, ca) as client:
        try:
            receipt = client.governance(request)
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    data = {**receipt.to_json(), "request_id": receipt.record_id, "org": org,
            "replica_id": replica_id, "keys": str(applicant.key_dir)}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif data["status"] == "recorded":
        click.echo(f"join request {receipt.record_id} recorded at height {receipt.height}: "
                   f"{org} asks to run validator {replica_id} at {endpoint}. Keys and config "
                   f"in {applicant.key_dir}; start it with `consortium up --dir {d}`.")
    else:
        click.echo(f"join request {data['status']}: {data['reason']}")
    sys.exit(0 if data["status"] == "recorded" else EXIT_NOT_OK)


def _next_replica_id(d: Path, genesis: Any, ca: bytes) -> int:
    """One more than any id in genesis, the current set or a proposal (any member's view will
    do: the ledger refuses a taken id, and the applicant can apply again)."""
    from consortium.client import ConsortiumClient, Identity, SubmitError

    used = {v.replica_id for v in genesis.validators}
    orgs = [o.org_id for o in genesis.member_orgs]
    if orgs and (d / "orgs" / orgs[0] / "client.key").exists():
        try:
            with ConsortiumClient(genesis, Identity.from_dir(d, orgs[0]), ca) as client:
                reply = client.list_members()
            used |= {v.replica_id for v in reply.validators}
            used |= {p.replica_id for p in reply.proposals}
        except SubmitError as exc:
            _fail(f"cannot read the membership to pick a replica id ({exc}); pass --replica-id")
    return int(max(used)) + 1


@members.command("list")
@DIR_OPTION
@AS_OPTION
@JSON_OPTION
def list_cmd(directory: Path | None, org: str, as_json: bool) -> None:
    """The current validator set and every membership proposal with its verdicts and votes."""
    from consortium.client import ConsortiumClient, SubmitError
    from consortium.config import ConfigError

    try:
        client = ConsortiumClient.from_dir(directory if directory is not None
                                           else default_dir(), org)
    except (SubmitError, ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))
    with client:
        try:
            reply = client.list_members()
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    data: dict[str, Any] = {"epoch": reply.epoch, "quorum": reply.quorum,
            "validators": [{"replica_id": v.replica_id, "org": v.org,
                            "peer_address": v.peer_address,
                            "client_address": v.client_address} for v in reply.validators],
            "proposals": [_proposal_json(p) for p in reply.proposals]}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"epoch {reply.epoch}: {len(reply.validators)} validators "
               f"({', '.join(f'{v.replica_id}:{v.org}' for v in reply.validators)}); "
               f"votes needed: {reply.quorum}")
    for p in data["proposals"]:
        advice = ", ".join(f"{v['decision']} ({v['risk']:.2f})" for v in p["verdicts"]) or "-"
        click.echo(f"  {p['proposal_id']} {p['kind']} {p['org']} as validator "
                   f"{p['replica_id']}: {p['status']}; advice {advice}; "
                   f"approve={p['votes']['approve']} reject={p['votes']['reject']}")


@members.command("vote")
@DIR_OPTION
@click.argument("request_id")
@click.option("--approve/--reject", "approve", required=True,
              help="Approve the proposal (and sign the validator-set change), or reject it.")
@click.option("--as", "org", required=True,
              help="The organisation whose validator votes (its validator key signs).")
@JSON_OPTION
def vote(directory: Path | None, request_id: str, approve: bool, org: str,
         as_json: bool) -> None:
    """Vote on a join request or removal proposal as your organisation's validator."""
    from consortium.client import SubmitError

    client = validator_client(directory, org, _fail)
    with client:
        try:
            receipt = client.member_vote(request_id, approve)
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    _report(receipt, as_json, "vote")


@members.command("remove")
@DIR_OPTION
@click.argument("replica_id", type=click.IntRange(0, 65535))
@click.option("--reason", default="", help="Why (recorded on the ledger).")
@click.option("--as", "org", required=True,
              help="The organisation whose validator proposes the removal.")
@JSON_OPTION
def remove(directory: Path | None, replica_id: int, reason: str, org: str,
           as_json: bool) -> None:
    """Propose removing a validator; the members then vote on it like on a join request."""
    from consortium.client import SubmitError
    from consortium.ledger.transactions import RemoveRequest

    client = validator_client(directory, org, _fail)
    with client:
        try:
            receipt = client.governance(RemoveRequest(replica_id, reason))
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    _report(receipt, as_json, "removal proposal")


def _report(receipt: Any, as_json: bool, what: str) -> None:
    data = receipt.to_json()
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               f"{what} {data['status']} at height {data['height']}"
               + (f": {data['reason']}" if data["reason"] else "")
               + (f" (id {data['record_id']})" if what != "vote" else ""))
    sys.exit(0 if data["status"] == "recorded" else EXIT_NOT_OK)
