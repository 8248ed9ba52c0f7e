"""`consortium ca`: roll the consortium CA over by vote, with both CAs trusted for a while.

1. `ca add --as ORG` makes a new CA (DIR/ca/next/) and proposes trusting it; 2f+1 validators
   approve with `members vote`: from then on every validator trusts certificates it issues
   (it reloads its trusted CAs at the next TLS handshake).
2. `ca activate` makes the new CA the one that issues (DIR/ca/ca.key) and adds it to the
   bundle clients trust (DIR/ca/ca.crt), keeping the old certificate as DIR/ca/old-<fp>.crt;
   then each validator's certificate is reissued: `keys rotate --validator ID --tls-only`.
3. `ca retire --cert DIR/ca/old-<fp>.crt --as ORG` proposes retiring the old CA; once 2f+1
   approve, no validator trusts it any more (whatever its files hold).
docs/deploy.md, "Rotation and revocation".
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from apps.audit import DIR_OPTION, JSON_OPTION, consortium_dir, validator_client

EXIT_NOT_OK = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    click.echo(f"consortium ca: {' '.join(message.split())}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def ca() -> None:
    """Roll the consortium CA over by vote: add a CA, activate it, retire the old one."""


def _propose(d: Path, as_org: str, add: bool, pem: bytes, as_json: bool) -> NoReturn:
    from consortium.client import SubmitError
    from consortium.ledger.ca import NotACa, fingerprint
    from consortium.ledger.transactions import CaChange, InvalidTransaction

    try:
        fp = fingerprint(pem)
    except NotACa as exc:
        _fail(str(exc))
    client = validator_client(d, as_org, _fail)
    with client:
        try:
            receipt = client.governance(CaChange(add, pem))
        except (SubmitError, InvalidTransaction) as exc:
            _fail(str(exc), EXIT_NOT_OK)
    data: dict[str, Any] = receipt.to_json()
    data.update(proposal_id=data["record_id"], fingerprint=fp.hex(),
                action="add" if add else "retire")
    ok = data["status"] == "recorded" and not data["reason"]
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else (
        f"CA {data['action']} proposed: {data['proposal_id']} (fingerprint {fp.hex()[:16]}…); "
        "validators approve it with `consortium members vote PROPOSAL_ID --approve`" if ok
        else f"CA {data['action']} refused at height {data['height']}: {data['reason']}"))
    sys.exit(0 if ok else EXIT_NOT_OK)


@ca.command("add")
@DIR_OPTION
@click.option("--as", "as_org", required=True, help="The organisation whose validator proposes.")
@click.option("--cert", "cert_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="The CA certificate (PEM) to trust (default: make a new CA in "
                                 "DIR/ca/next/).")
@JSON_OPTION
def add(directory: Path | None, as_org: str, cert_file: Path | None, as_json: bool) -> None:
    """Propose trusting another CA (a new one by default) next to the current one."""
    from cryptography.hazmat.primitives import serialization

    from consortium.config import ConfigError, Genesis
    from consortium.localnet import make_ca

    d = consortium_dir(directory, _fail)
    if cert_file is not None:
        try:
            pem = cert_file.read_bytes()
        except OSError as exc:
            _fail(str(exc))
        _propose(d, as_org, True, pem, as_json)
    nxt = d / "ca" / "next"
    if not (nxt / "ca.crt").is_file():
        try:
            chain_id = Genesis.load(d / "genesis.json").chain_id
        except ConfigError as exc:
            _fail(str(exc))
        # a subject of its own: TLS libraries find a certificate's issuer by name
        key, cert = make_ca(f"{chain_id} {datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}")
        nxt.mkdir(parents=True, exist_ok=True)
        fd = os.open(nxt / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        (nxt / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _propose(d, as_org, True, (nxt / "ca.crt").read_bytes(), as_json)


@ca.command("activate")
@DIR_OPTION
@JSON_OPTION
def activate(directory: Path | None, as_json: bool) -> None:
    """Make the CA in DIR/ca/next/ the issuing one (after the validators approved it): its
    certificate joins DIR/ca/ca.crt, the old one is kept as DIR/ca/old-<fp>.crt."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from consortium.ledger.ca import fingerprint
    from consortium.localnet import load_ca

    d = consortium_dir(directory, _fail)
    nxt = d / "ca" / "next"
    if not (nxt / "ca.key").is_file() or not (nxt / "ca.crt").is_file():
        _fail(f"no new CA in {nxt} (make one with `consortium ca add`)")
    try:
        _, old_cert = load_ca(d)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    old_pem = old_cert.public_bytes(serialization.Encoding.PEM)
    old_file = d / "ca" / f"old-{fingerprint(old_pem).hex()[:16]}.crt"
    old_file.write_bytes(old_pem)
    new_pem = (nxt / "ca.crt").read_bytes()
    bundle = (d / "ca" / "ca.crt").read_bytes()
    known = {fingerprint(c.public_bytes(serialization.Encoding.PEM))
             for c in x509.load_pem_x509_certificates(bundle)}
    if fingerprint(new_pem) not in known:
        (d / "ca" / "ca.crt").write_bytes(bundle.rstrip(b"\n") + b"\n" + new_pem)
    os.replace(d / "ca" / "ca.key", d / "ca" / f"old-{fingerprint(old_pem).hex()[:16]}.key")
    os.replace(nxt / "ca.key", d / "ca" / "ca.key")
    (nxt / "ca.crt").unlink()
    nxt.rmdir()
    data = {"issuing": fingerprint(new_pem).hex(), "old_cert": str(old_file),
            "bundle": str(d / "ca" / "ca.crt")}
    click.echo(json.dumps(data, indent=2, sort_keys=True) if as_json else
               f"the new CA issues from now on; reissue every validator's certificate "
               f"(`consortium keys rotate --validator ID --tls-only`), then retire the old CA "
               f"(`consortium ca retire --cert {old_file} --as ORG`)")


@ca.command("retire")
@DIR_OPTION
@click.option("--as", "as_org", required=True, help="The organisation whose validator proposes.")
@click.option("--cert", "cert_file", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The CA certificate (PEM) no validator should trust any more.")
@JSON_OPTION
def retire(directory: Path | None, as_org: str, cert_file: Path, as_json: bool) -> None:
    """Propose that no validator trusts a CA any more (once another added by vote is)."""
    d = consortium_dir(directory, _fail)
    try:
        pem = cert_file.read_bytes()
    except OSError as exc:
        _fail(str(exc))
    _propose(d, as_org, False, pem, as_json)
