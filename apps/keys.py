"""`consortium keys`: revoke and rotate keys without rebuilding the consortium.

A client key that leaked signs records until it is revoked: `keys revoke --client ORG --as ORG`
has the organisation's own validator sign a revocation, in force in the block that records it
(later requests signed with that key are refused, earlier records stay valid); signed by
another organisation's validator it is a proposal the validators vote on (`members vote`).
`keys rotate --client ORG` makes a new client key and has the organisation's validator install
it in place of the current one (revoked or not).

`keys rotate --validator ID` makes a new signing key and TLS certificate for a validator: the
certificate is served from the next handshake on (the CA vouches for it, no vote needed), the
key is proposed to the validators (signed with the old key and the new one) and, once 2f+1
approve (`members vote`), signs from the next epoch on. docs/deploy.md, "Rotation and
revocation".
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from apps.audit import DIR_OPTION, JSON_OPTION, consortium_dir, validator_client

EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2
NEXT_SUFFIX = ".next"
"""A new client key waits under this suffix until the ledger has installed it."""


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium keys: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def keys() -> None:
    """Revoke and rotate client keys; rotate validators' signing keys and TLS certificates."""


def current_client_key(genesis: Any, reply: Any, client_id: str) -> tuple[bytes, bool]:
    """(the key in force for `client_id`, whether it is revoked), from the genesis file and the
    membership proposals a validator lists (join requests and key changes): the same fold the
    validators apply (`membership.key_states`)."""
    from consortium.ledger import membership as ms

    state = ms.from_listing(reply.proposals)
    base = {**state.client_keys(), **genesis.client_keys()}
    if client_id not in base:
        _fail(f"{client_id!r} is not a client of a member organisation")
    changed = state.key_states(base).get(client_id)
    if changed is None:
        return base[client_id], False
    return changed.key, changed.revoked_by is not None


def _change(directory: Path, as_org: str, org: str, new_key: bytes, reason: str) -> Any:
    """Submit a key change of `org`'s client signed by `as_org`'s validator; its receipt."""
    from consortium.client import SubmitError
    from consortium.config import ConfigError, Genesis
    from consortium.ledger.membership import org_client_id
    from consortium.ledger.transactions import ClientKeyChange, InvalidTransaction

    try:
        genesis = Genesis.load(directory / "genesis.json")
    except (ConfigError, OSError) as exc:
        _fail(str(exc))
    client = validator_client(directory, as_org, _fail)
    client_id = org_client_id(org)
    with client:
        try:
            old_key, _ = current_client_key(genesis, client.list_members(), client_id)
            if old_key == new_key:
                return None  # already installed (an earlier run was interrupted)
            return client.governance(ClientKeyChange(org, client_id, old_key, new_key, reason))
        except (SubmitError, InvalidTransaction) as exc:
            _fail(str(exc), EXIT_NOT_OK)


def _report(data: dict[str, Any], as_json: bool, text: str) -> NoReturn:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else text)
    sys.exit(0 if data["status"] == "recorded" else EXIT_NOT_OK)


@keys.command("revoke")
@DIR_OPTION
@click.option("--client", "org", required=True,
              help="The organisation whose client key is revoked (client ORG-client).")
@click.option("--as", "as_org", required=True,
              help="The organisation whose validator signs: the client's own (in force at "
                   "once) or another (a proposal the validators vote on).")
@click.option("--reason", default="", help="Why (recorded on the ledger).")
@JSON_OPTION
def revoke(directory: Path | None, org: str, as_org: str, reason: str, as_json: bool) -> None:
    """Revoke an organisation's client key: requests signed with it after the revocation are
    refused; records it signed before stay valid."""
    from consortium.ledger.membership import KEY_CHANGED, org_client_id

    d = consortium_dir(directory, _fail)
    receipt = _change(d, as_org, org, b"", reason)
    data = receipt.to_json()
    in_force = data["reason"].startswith(KEY_CHANGED)
    data.update(client_id=org_client_id(org), proposal_id=data["record_id"],
                in_force=in_force)
    if data["status"] != "recorded":
        text = f"revocation refused at height {data['height']}: {data['reason']}"
    elif in_force:
        text = (f"{org_client_id(org)}'s key revoked at height {data['height']} "
                f"(revocation {data['record_id']})")
    else:
        text = (f"revocation of {org_client_id(org)}'s key proposed: {data['record_id']}; "
                "validators approve it with `consortium members vote PROPOSAL_ID --approve`")
    _report(data, as_json, text)


@keys.command("rotate")
@DIR_OPTION
@click.option("--client", "org", default=None,
              help="The organisation whose client key is replaced (its validator signs).")
@click.option("--validator", "replica_id", type=click.IntRange(0, 65535), default=None,
              help="The validator whose signing key and TLS certificate are replaced.")
@click.option("--tls-only", is_flag=True,
              help="With --validator: a new TLS certificate only (an expiring certificate, a "
                   "new CA), no key change and no vote.")
@click.option("--reason", default="", help="Why (recorded on the ledger; client keys).")
@JSON_OPTION
def rotate(directory: Path | None, org: str | None, replica_id: int | None, tls_only: bool,
           reason: str, as_json: bool) -> None:
    """Replace a client key (--client ORG: installed on the ledger at once, the key file
    replaced then) or a validator's signing key and TLS certificate (--validator ID: the
    certificate at once, the key by vote from the next epoch on; prints the proposal id)."""
    if (org is None) == (replica_id is None):
        _fail("name exactly one of --client ORG and --validator ID")
    if tls_only and replica_id is None:
        _fail("--tls-only goes with --validator ID")
    d = consortium_dir(directory, _fail)
    if replica_id is not None:
        _rotate_validator(d, replica_id, tls_only, as_json)
    assert org is not None
    _rotate_client(d, org, reason, as_json)


def _rotate_client(d: Path, org: str, reason: str, as_json: bool) -> NoReturn:
    from consortium.crypto.signing import Ed25519Signer
    from consortium.ledger.membership import KEY_CHANGED, org_client_id
    from consortium.localnet import read_seed

    key_file = d / "orgs" / org / "client.key"
    if not key_file.is_file():
        _fail(f"no client key of organisation {org!r} in {d} ({key_file})")
    pending = key_file.with_name(key_file.name + NEXT_SUFFIX)
    try:  # a key an interrupted run made may already be on the ledger: finish with it
        seed = read_seed(pending) if pending.is_file() else os.urandom(32)
        new_key = Ed25519Signer(seed).public_key
    except ValueError as exc:
        _fail(f"{pending}: {exc}")
    _write_secret(pending, seed.hex().encode())
    receipt = _change(d, org, org, new_key, reason)
    data: dict[str, Any] = {"client_id": org_client_id(org), "new_key": new_key.hex(),
                            "status": "recorded", "reason": KEY_CHANGED + "replaced",
                            "height": None, "record_id": None}
    if receipt is not None:
        data.update(receipt.to_json())
        data["new_key"] = new_key.hex()
    if data["status"] != "recorded" or not data["reason"].startswith(KEY_CHANGED):
        pending.unlink(missing_ok=True)
        _report(data, as_json, f"rotation refused at height {data['height']}: "
                               f"{data['reason']}")
    old = key_file.with_name(f"client.key.replaced-{data['height'] or 'earlier'}")
    key_file.replace(old)
    pending.replace(key_file)
    data["old_key_file"] = str(old)
    _report(data, as_json, f"{org_client_id(org)} signs with its new key {new_key.hex()[:16]}… "
                           f"from height {data['height']} on (the old key file is {old})")


def _rotate_validator(d: Path, replica_id: int, tls_only: bool, as_json: bool) -> NoReturn:
    """New key (left as signing.key.next for the validator to load) and certificate (in
    place, the validator reloads it), then the proposal signed by the old and the new key."""
    from consortium.client import ConsortiumClient, Identity, SubmitError
    from consortium.config import ConfigError, Genesis, ValidatorConfig
    from consortium.crypto.signing import Ed25519Signer
    from consortium.ledger.transactions import ValidatorKeyChange, validator_key_signing_bytes
    from consortium.localnet import issue_validator_cert, read_seed

    vdir = d / "validators" / str(replica_id)
    try:
        genesis = Genesis.load(d / "genesis.json")
        config = ValidatorConfig.load(vdir / "config.json")
        old = Ed25519Signer(read_seed(config.signing_key))
    except (ConfigError, OSError, ValueError) as exc:
        _fail(f"validator {replica_id}: {exc}")
    if tls_only:
        try:
            cert = issue_validator_cert(d, replica_id, config.tls.key, config.tls.cert)
        except (OSError, ValueError) as exc:
            _fail(f"a new TLS certificate for validator {replica_id}: {exc}")
        _report({"status": "recorded", "replica_id": replica_id, "tls_cert": str(config.tls.cert),
                 "tls_not_after": cert.not_valid_after_utc.isoformat(),
                 "tls_issuer": cert.issuer.rfc4514_string()}, as_json,
                f"validator {replica_id}: new TLS certificate in place (until "
                f"{cert.not_valid_after_utc.isoformat()}); it serves it from the next "
                "connection on")
    pending = config.signing_key.with_name(config.signing_key.name + NEXT_SUFFIX)
    try:  # a key an interrupted run left is proposed again rather than lost
        seed = read_seed(pending) if pending.is_file() else os.urandom(32)
        new = Ed25519Signer(seed)
    except ValueError as exc:
        _fail(f"{pending}: {exc}")
    _write_secret(pending, seed.hex().encode())
    try:
        cert = issue_validator_cert(d, replica_id, config.tls.key, config.tls.cert)
    except (OSError, ValueError) as exc:
        _fail(f"a new TLS certificate for validator {replica_id}: {exc}")
    org = next((v.org for v in genesis.validators if v.replica_id == replica_id),
               config.org or "")
    tx = ValidatorKeyChange(replica_id, old.public_key, new.public_key, new.sign(
        validator_key_signing_bytes(genesis.chain_id_bytes, replica_id, old.public_key,
                                    new.public_key)))
    try:
        with ConsortiumClient(genesis, Identity.validator(d, org),
                              (d / "ca" / "ca.crt").read_bytes()) as client:
            receipt = client.governance(tx)
    except (SubmitError, ConfigError, OSError) as exc:
        _fail(str(exc), EXIT_NOT_OK)
    data = receipt.to_json()
    data.update(proposal_id=data["record_id"], replica_id=replica_id,
                signing_key=new.public_key.hex(), old_signing_key=old.public_key.hex(),
                tls_cert=str(config.tls.cert),
                tls_not_after=cert.not_valid_after_utc.isoformat())
    if data["status"] != "recorded":
        _report(data, as_json, f"key rotation refused at height {data['height']}: "
                               f"{data['reason']}")
    _report(data, as_json, f"validator {replica_id}: new TLS certificate in place (until "
                           f"{data['tls_not_after']}); key rotation proposed: "
                           f"{data['proposal_id']} - validators approve it with `consortium "
                           "members vote PROPOSAL_ID --approve`; it takes effect at the next "
                           "epoch")


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
