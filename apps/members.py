"""`consortium members`: organisations apply to join, validators vote, the validator set changes.

A join request is an ordered transaction signed by the applicant's own validator key and
sponsored by a member: the applicant prepares its application (`members apply --prepare`: keys
and an application file), a member signs it with one of its client keys (`members sponsor`),
and the applicant submits it with that sponsorship (`members apply --sponsorship`). The
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
    """Membership: apply to join, sponsor an applicant, list requests and the validator set,
    vote, remove."""


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
            "decided_height": p.decided_height or None, "sponsor": p.sponsor or None,
            "expires_ms": p.expires_ms or None,
            "gs1": json.loads(p.gs1) if p.gs1 else None,
            "verdicts": [{"decision": v.decision, "risk": v.risk_milli / 1000}
                         for v in p.verdicts],
            "votes": {"approve": sorted(v.replica_id for v in p.votes if v.approve),
                      "reject": sorted(v.replica_id for v in p.votes if not v.approve)}}


APPLICATION_FILE = "application.json"
"""What `members apply --prepare` writes into the applicant's key directory."""


def _application_json(tx: Any, chain_id: str) -> dict[str, Any]:
    """An application as a member reads and sponsors it (`members sponsor`): what the
    sponsorship signs, plus the endpoints for the reader; with the sponsorship once signed."""
    out: dict[str, Any] = {
        "chain_id": chain_id, "org": tx.org, "name": tx.name, "replica_id": tx.replica_id,
        "validator_key": tx.validator_key.hex(), "client_key": tx.client_key.hex(),
        "encryption_key": tx.encryption_key.hex(), "peer_address": tx.peer_address,
        "client_address": tx.client_address}
    if tx.gs1:
        out["gs1"] = json.loads(tx.gs1)
    if tx.sponsor:
        out.update(sponsor=tx.sponsor, sponsorship=tx.sponsorship.hex())
    return out


def _key(value: Any, what: str, size: int = 32) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raw = b""
    if len(raw) != size:
        _fail(f"{what} must be {2 * size} hex digits")
    return raw


def _read_application(path: Path) -> tuple[Any, str]:
    """(the application as a JoinRequest without statement, its chain id) from a file that
    `members apply --prepare` or `members sponsor --out` wrote."""
    from consortium.ledger.transactions import JoinRequest

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"{path}: {exc}")
    if not isinstance(data, dict):
        _fail(f"{path}: not an application (a JSON object)")
    try:
        tx = JoinRequest(str(data["org"]), str(data["name"]), int(data["replica_id"]),
                         _key(data["validator_key"], f"{path}: validator_key"),
                         _key(data["client_key"], f"{path}: client_key"),
                         _key(data["encryption_key"], f"{path}: encryption_key"),
                         str(data.get("peer_address", "")), str(data.get("client_address", "")),
                         "", str(data.get("sponsor", "")),
                         _key(data["sponsorship"], f"{path}: sponsorship", 64)
                         if data.get("sponsorship") else b"",
                         _gs1_of(str(data["org"]), data.get("gs1"), str(path)))
    except (KeyError, TypeError, ValueError) as exc:
        _fail(f"{path}: missing or malformed field: {exc}")
    return tx, str(data.get("chain_id", ""))


def _gs1_of(org: str, raw: Any, where: str) -> bytes:
    """An application's GS1 identity ({company_prefixes, pglns, sglns}) as canonical bytes."""
    from consortium.formats.directory import MemberGs1
    from consortium.formats.errors import FormatError

    if raw is None:
        return b""
    if not isinstance(raw, dict):
        _fail(f"{where}: gs1 must be an object {{company_prefixes, pglns, sglns}}")
    try:
        return MemberGs1.from_dict({"org": org, **raw}).canonical()
    except FormatError as exc:
        _fail(f"{where}: gs1: {exc}")


def _sponsorship(value: str, sponsor: str | None, replica_id: int | None,
                 chain_id: str) -> tuple[Any | None, str, bytes]:
    """--sponsorship: (the sponsored application from a file, or None), sponsor, signature."""
    if len(value) == 128 and all(c in "0123456789abcdefABCDEF" for c in value):
        if not sponsor or replica_id is None:
            _fail("a hex --sponsorship needs --sponsor and --replica-id (who signed it, for "
                  "which validator id)")
        assert sponsor is not None
        return None, sponsor, bytes.fromhex(value)
    path = Path(value)
    if not path.is_file():
        _fail(f"--sponsorship is 128 hex digits or a file `members sponsor --out` wrote; "
              f"{value!r} is neither")
    sponsored, signed_chain = _read_application(path)
    if signed_chain and signed_chain != chain_id:
        _fail(f"{path} is sponsored on chain {signed_chain!r}, not this consortium's "
              f"({chain_id!r})")
    if not sponsored.sponsor or not sponsored.sponsorship:
        _fail(f"{path} holds an application nobody sponsored yet (`consortium members "
              "sponsor` signs it)")
    if sponsor and sponsor != sponsored.sponsor:
        _fail(f"--sponsor {sponsor} but {path} is sponsored by {sponsored.sponsor}")
    return sponsored, sponsored.sponsor, sponsored.sponsorship


@members.command("apply")
@DIR_OPTION
@click.option("--org", required=True, help="The new organisation's id (a-z, 0-9, '-').")
@click.option("--name", default=None,
              help="Its display name (default: the id, or the sponsored application's).")
@click.option("--endpoint", required=True,
              help="HOST:PORT where its validator will accept peer connections.")
@click.option("--client-endpoint", default=None,
              help="HOST:PORT for its clients (default: the peer port + 100).")
@click.option("--metrics-endpoint", default=None,
              help="HOST:PORT for its Prometheus metrics (default: the peer port + 2000).")
@click.option("--statement", "statement_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The applicant's statement (who it is, why it joins): free text, or a JSON "
                   "application {statement, sector, country, contact_email, sponsors}. "
                   "Required unless --prepare.")
@click.option("--sector", default="",
              help="What the applicant is (manufacturer, distributor, wholesaler, logistics, "
                   "pharmacy, hospital, clinic, laboratory, regulator, research); optional, "
                   "checked by the reviewer's rules when given.")
@click.option("--country", default="", help="ISO 3166 two-letter country code (optional).")
@click.option("--contact-email", default="",
              help="A contact at the organisation's own domain (optional).")
@click.option("--prepare", is_flag=True,
              help="Only create (or reuse) the keys and write the application a member "
                   f"sponsors (KEYDIR/{APPLICATION_FILE}); submit nothing.")
@click.option("--sponsorship", default=None,
              help="A member's sponsorship of this application: the file `members sponsor "
                   "--out` wrote, or its 128 hex digits (then with --sponsor).")
@click.option("--sponsor", default=None,
              help="The member organisation that signed --sponsorship.")
@click.option("--keys", "key_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to create (or reuse) the validator's keys and config "
                                 "(default: DIR/validators/<replica id>).")
@click.option("--replica-id", type=click.IntRange(0, 65535), default=None,
              help="The validator id to ask for (default: the sponsored application's, else "
                   "the next free one).")
@click.option("--gs1-prefix", "gs1_prefixes", multiple=True,
              help="A GS1 company prefix of the organisation (6 to 12 digits; repeatable).")
@click.option("--pgln", "pglns", multiple=True,
              help="Its party GLN (EPC URN, Digital Link or element string; repeatable).")
@click.option("--sgln", "sglns", multiple=True,
              help="The GLN of one of its sites (any GS1 form; repeatable).")
@JSON_OPTION
def apply(directory: Path | None, org: str, name: str | None, endpoint: str,
          client_endpoint: str | None, metrics_endpoint: str | None,
          statement_file: Path | None, sector: str, country: str, contact_email: str,
          prepare: bool, sponsorship: str | None, sponsor: str | None, key_dir: Path | None,
          replica_id: int | None, gs1_prefixes: tuple[str, ...], pglns: tuple[str, ...],
          sglns: tuple[str, ...], as_json: bool) -> None:
    """Ask to join: create the validator's keys and submit a signed, sponsored join request.

    \b
    1. consortium members apply --org ORG --endpoint HOST:PORT --prepare
    2. a member: consortium members sponsor --as MEMBER KEYDIR/application.json --out FILE
    3. consortium members apply --org ORG --endpoint HOST:PORT --statement FILE
           --sponsorship FILE

    The GS1 identity (--gs1-prefix, --pgln, --sgln) is part of the application: once
    admitted, EPCIS events naming those parties, sites and prefixes resolve to the member.
    """
    from consortium.admission.application import application_statement, normalise_fields
    from consortium.client import ConsortiumClient, Identity, SubmitError
    from consortium.client.nonces import NonceFile
    from consortium.config import ConfigError, Genesis
    from consortium.ledger.transactions import (
        ORG_ID_PATTERN,
        STATEMENT_BYTES_MAX,
        JoinRequest,
        applicant_client_id,
    )
    from consortium.localnet import applicant_key_files, init_applicant

    d = (directory if directory is not None else default_dir()).resolve()
    if not ORG_ID_PATTERN.fullmatch(org):
        _fail("--org is 1 to 32 characters of a-z, 0-9 and '-'")
    try:
        normalise_fields(sector, country, contact_email)
    except ValueError as exc:
        _fail(str(exc))
    host, port = _host_port(endpoint, "--endpoint")
    client_address = client_endpoint or f"{host}:{port + 100}"
    _host_port(client_address, "--client-endpoint")
    metrics_address = metrics_endpoint or f"{host}:{port + 2000}"
    _host_port(metrics_address, "--metrics-endpoint")
    if prepare and (sponsorship or sponsor):
        _fail("--prepare writes the application to sponsor; --sponsorship submits it: "
              "one or the other")
    if not prepare and not sponsorship:
        _fail("a join request needs a member's sponsorship: run this with --prepare, have a "
              "member sign the application (consortium members sponsor), then apply with "
              "--sponsorship FILE")
    if not prepare and statement_file is None:
        _fail("--statement is required to apply (who the applicant is, why it joins)")
    statement = ""
    try:
        if statement_file is not None:
            statement = statement_file.read_text()
        genesis = Genesis.load(d / "genesis.json")
        ca = (d / "ca" / "ca.crt").read_bytes()
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        _fail(str(exc))
    if not prepare and (sector or country or contact_email):
        try:
            statement = application_statement(statement, sector=sector, country=country,
                                              contact_email=contact_email)
        except ValueError as exc:
            _fail(str(exc))
    if not prepare and not 1 <= len(statement.encode()) <= STATEMENT_BYTES_MAX:
        _fail(f"the statement is 1 to {STATEMENT_BYTES_MAX} bytes, not "
              f"{len(statement.encode())}")
    gs1 = _gs1_of(org, {"company_prefixes": list(gs1_prefixes), "pglns": list(pglns),
                        "sglns": list(sglns)}, "--gs1-prefix/--pgln/--sgln")
    sponsored, sponsor_org, signature = (None, "", b"") if sponsorship is None else \
        _sponsorship(sponsorship, sponsor, replica_id, genesis.chain_id)
    if sponsored is not None:
        if (gs1_prefixes or pglns or sglns) and gs1 != sponsored.gs1:
            _fail("the GS1 identity given differs from the sponsored application's")
        gs1 = sponsored.gs1
        if sponsored.org != org:
            _fail(f"the sponsorship is for {sponsored.org!r}, not {org!r}")
        for what, given, signed in (("--replica-id", replica_id, sponsored.replica_id),
                                    ("--name", name, sponsored.name)):
            if given is not None and given != signed:
                _fail(f"{what} {given} differs from the sponsored application's ({signed})")
        replica_id, name = sponsored.replica_id, sponsored.name
    if replica_id is None:
        replica_id = _next_replica_id(d, genesis, ca)
    if not prepare and not all(p.exists() for p in applicant_key_files(d, org, replica_id,
                                                                        key_dir)):
        _fail(f"no keys of {org}'s validator {replica_id} to apply with: the sponsorship "
              "signs the keys `members apply --prepare` created")
    try:
        applicant = init_applicant(d, org, replica_id, endpoint, client_address,
                                   metrics_address, key_dir)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    request = JoinRequest(org, name or org, replica_id, applicant.signer.public_key,
                          applicant.client.public_key, applicant.encryption.public_key,
                          endpoint, client_address, statement, sponsor_org, signature, gs1)
    if prepare:
        _prepared(d, request, genesis.chain_id, applicant.key_dir / APPLICATION_FILE, as_json)
        return
    if sponsored is not None and (sponsored.validator_key, sponsored.client_key,
                                  sponsored.encryption_key) != (
            request.validator_key, request.client_key, request.encryption_key):
        _fail(f"the sponsorship is for other keys than those in {applicant.key_dir}")
    identity = Identity(applicant_client_id(applicant.signer.public_key), org,
                        applicant.signer, None, NonceFile(applicant.key_dir / "applicant.nonce"))
    with ConsortiumClient(genesis, identity, ca) as client:
        try:
            receipt = client.governance(request)
        except SubmitError as exc:
            _fail(str(exc), EXIT_NOT_OK)
    data = {**receipt.to_json(), "request_id": receipt.record_id, "org": org,
            "replica_id": replica_id, "sponsor": sponsor_org, "keys": str(applicant.key_dir)}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif data["status"] == "recorded":
        click.echo(f"join request {receipt.record_id} recorded at height {receipt.height}: "
                   f"{org} asks to run validator {replica_id} at {endpoint}, sponsored by "
                   f"{sponsor_org}. Keys and config in {applicant.key_dir}; start it with "
                   f"`consortium up --dir {d}`.")
    else:
        click.echo(f"join request {data['status']}: {data['reason']}")
    sys.exit(0 if data["status"] == "recorded" else EXIT_NOT_OK)


def _prepared(d: Path, request: Any, chain_id: str, path: Path, as_json: bool) -> None:
    """Write the application a member sponsors, and say what comes next."""
    try:
        path.write_text(json.dumps(_application_json(request, chain_id), indent=2,
                                   sort_keys=True) + "\n")
    except OSError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps({"status": "prepared", "application": str(path),
                               "org": request.org, "replica_id": request.replica_id,
                               "keys": str(path.parent)}, indent=2, sort_keys=True))
        return
    click.echo(f"application of {request.org} for validator {request.replica_id} written to "
               f"{path}. A member sponsors it: `consortium members sponsor --dir {d} --as "
               f"MEMBER {path} --out sponsorship.json`; then apply again with --statement FILE "
               "--sponsorship sponsorship.json.")


@members.command("sponsor")
@DIR_OPTION
@click.argument("application", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as", "org", required=True,
              help="The sponsoring member organisation (its client key signs).")
@click.option("--applicant-org", default=None,
              help="Without APPLICATION: the applicant's organisation id.")
@click.option("--name", default=None,
              help="Without APPLICATION: its display name (default: the id).")
@click.option("--replica-id", type=click.IntRange(0, 65535), default=None,
              help="Without APPLICATION: the validator id it asks for.")
@click.option("--validator-key", default=None, help="Without APPLICATION: hex, 32 bytes.")
@click.option("--client-key", default=None, help="Without APPLICATION: hex, 32 bytes.")
@click.option("--encryption-key", default=None, help="Without APPLICATION: hex, 32 bytes.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the sponsored application here (for `members apply "
                                 "--sponsorship FILE`).")
@JSON_OPTION
def sponsor_cmd(directory: Path | None, application: Path | None, org: str,
                applicant_org: str | None, name: str | None, replica_id: int | None,
                validator_key: str | None, client_key: str | None,
                encryption_key: str | None, out_file: Path | None, as_json: bool) -> None:
    """Sponsor an application to join: sign it with your organisation's client key.

    A pending join request holds one of the few slots for the members' votes, so it needs a
    member's word; each member sponsors at most 2 pending requests at a time. The signature
    covers the applicant's organisation id and name, validator id and keys, on this chain.
    The application is the file `members apply --prepare` wrote, or the same fields as options.
    """
    from consortium.client import Identity, SubmitError
    from consortium.config import ConfigError, Genesis
    from consortium.ledger.transactions import JoinRequest, sponsor_join

    d = (directory if directory is not None else default_dir()).resolve()
    flags = (applicant_org, name, replica_id, validator_key, client_key, encryption_key)
    if application is not None:
        if any(f is not None for f in flags):
            _fail("give the application as a file or as options, not both")
        tx, chain_id = _read_application(application)
    else:
        if applicant_org is None or replica_id is None or None in (
                validator_key, client_key, encryption_key):
            _fail("give the application file, or --applicant-org, --replica-id, "
                  "--validator-key, --client-key and --encryption-key")
        assert applicant_org is not None and replica_id is not None
        tx = JoinRequest(applicant_org, name or applicant_org, replica_id,
                         _key(validator_key, "--validator-key"),
                         _key(client_key, "--client-key"),
                         _key(encryption_key, "--encryption-key"), "", "", "")
        chain_id = ""
    try:
        genesis = Genesis.load(d / "genesis.json")
        identity = Identity.from_dir(d, org)
    except (OSError, ValueError, ConfigError, SubmitError) as exc:
        _fail(str(exc))
    if chain_id and chain_id != genesis.chain_id:
        _fail(f"the application is for chain {chain_id!r}, not this consortium's "
              f"({genesis.chain_id!r})")
    sponsored = sponsor_join(tx, org, identity.signer, genesis.chain_id_bytes)
    data = _application_json(sponsored, genesis.chain_id)
    if out_file is not None:
        try:
            out_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(f"{org} sponsors {tx.org} ({tx.name}) as validator {tx.replica_id}: "
                   f"sponsorship {sponsored.sponsorship.hex()}"
                   + (f" (written to {out_file})" if out_file is not None else ""))


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
        sponsored = f", sponsored by {p['sponsor']}" if p["sponsor"] else ""
        click.echo(f"  {p['proposal_id']} {p['kind']} {p['org']} as validator "
                   f"{p['replica_id']}{sponsored}: {p['status']}; advice {advice}; "
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
