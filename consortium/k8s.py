"""Kubernetes material from a `consortium init` directory (deploy/k8s, docs/deploy.md).

`write_k8s_material(DIR, OUT)` writes, never to be committed (deploy/k8s/generated/ is ignored):

    OUT/kustomization.yaml                     lists every validator's directory
    OUT/validator-<id>/kustomization.yaml      namespace consortium-<org>
    OUT/validator-<id>/genesis-configmap.json  ConfigMap consortium-genesis (genesis.json)
    OUT/validator-<id>/keys-secret.json        Secret validator-keys (signing.key, tls.crt,
                                               tls.key, ca.crt: never the CA's private key)
    OUT/validator-<id>/db-secret.json          Secret validator-db (libpq PG* settings for the
                                               in-cluster PostgreSQL; the password is kept when
                                               the file already exists)
    OUT/admission/keys-secret.json             Secret admission-keys (components/admission), in
                                               the first organisation's namespace

Pure: reads files and writes files, no cluster access. Manifests are JSON (valid YAML).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from consortium.config import Genesis, ValidatorInfo
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed

PEER_PORT = 7100
CLIENT_PORT = 7200
DEMO_ADDRESS_TEMPLATE = "validator-{id}:{port}"
"""Matches the TLS names `consortium init` issues (validator-<id>) and demo-4's peer-names."""
NAMESPACE_TEMPLATE = "consortium-{org}"
KEY_FILES = {"signing.key": "validators/{id}/signing.key", "tls.crt": "validators/{id}/tls.crt",
             "tls.key": "validators/{id}/tls.key", "ca.crt": "ca/ca.crt"}
"""Secret key -> file of the init directory (the paths config.json points at)."""
DB_NAME = "consortium"
DB_USER = "consortium"
DB_HOST = "postgres"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _labels(v: ValidatorInfo) -> dict[str, str]:
    return {"app.kubernetes.io/name": "consortium", "app.kubernetes.io/part-of": "consortium",
            "app.kubernetes.io/instance": v.org}


def _write(path: Path, data: Any, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(data, indent=2) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(text)
    return path


def _k8s_genesis(genesis: Genesis, address_template: str | None) -> dict[str, Any]:
    data = genesis.to_json()
    if address_template is not None:
        for v in data["validators"]:
            v["peer_address"] = address_template.format(id=v["id"], port=PEER_PORT)
            v["client_address"] = address_template.format(id=v["id"], port=CLIENT_PORT)
    return data


def _existing_password(path: Path) -> str | None:
    try:
        secret = json.loads(path.read_text())
        return base64.b64decode(secret["data"]["PGPASSWORD"]).decode()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_k8s_material(consortium_dir: Path, out_dir: Path, *,
                       address_template: str | None = DEMO_ADDRESS_TEMPLATE,
                       namespace_template: str = NAMESPACE_TEMPLATE) -> list[Path]:
    """Turn a `consortium init` directory into Secret/ConfigMap manifests; return the files.

    `address_template` rewrites every validator's peer and client address in the genesis
    ConfigMap (`{id}`, `{port}`) to names that resolve in the cluster and match the validators'
    TLS certificates; None keeps the genesis addresses (an existing consortium's external ones).
    Only network addresses change: chain id and every key stay as generated.
    """
    genesis = Genesis.load(consortium_dir / "genesis.json")
    genesis_json = json.dumps(_k8s_genesis(genesis, address_template), indent=2) + "\n"
    written: list[Path] = []
    dirs: list[str] = []
    for v in sorted(genesis.validators, key=lambda v: v.replica_id):
        files = {key: consortium_dir / rel.format(id=v.replica_id)
                 for key, rel in KEY_FILES.items()}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"validator {v.replica_id}: missing {', '.join(missing)}")
        key_file = files["signing.key"]
        rotated = any(key_file.parent.glob(key_file.name + ".replaced-*"))
        if Ed25519Signer(read_seed(key_file)).public_key != v.public_key and not rotated:
            raise ValueError(f"{key_file} does not hold validator {v.replica_id}'s "
                             "key from the genesis file")
        pending = key_file.with_name(key_file.name + ".next")
        if pending.is_file():  # a rotation under way: the validator loads it (docs/deploy.md)
            files["signing.key.next"] = pending
        name = f"validator-{v.replica_id}"
        vdir = out_dir / name
        labels = _labels(v)
        written.append(_write(vdir / "genesis-configmap.json", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "consortium-genesis", "labels": labels},
            "data": {"genesis.json": genesis_json}}))
        written.append(_write(vdir / "keys-secret.json", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "validator-keys", "labels": labels},
            "data": {key: _b64(path.read_bytes()) for key, path in files.items()}},
            private=True))
        db_path = vdir / "db-secret.json"
        password = _existing_password(db_path) or secrets.token_urlsafe(32)
        db = {"PGHOST": DB_HOST, "PGPORT": "5432", "PGDATABASE": DB_NAME, "PGUSER": DB_USER,
              "PGPASSWORD": password, "PGSSLMODE": "prefer", "PGCONNECT_TIMEOUT": "10"}
        written.append(_write(db_path, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "validator-db", "labels": labels},
            "data": {k: _b64(val.encode()) for k, val in db.items()}}, private=True))
        written.append(_write(vdir / "kustomization.yaml", {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": namespace_template.format(org=v.org, id=v.replica_id),
            "resources": ["genesis-configmap.json", "keys-secret.json", "db-secret.json"]}))
        dirs.append(name)
    admission = _admission_material(consortium_dir, genesis, out_dir, namespace_template)
    if admission:
        written.extend(admission)
        dirs.append("admission")
    written.append(_write(out_dir / "kustomization.yaml", {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": dirs}))
    return written


def _admission_material(consortium_dir: Path, genesis: Genesis, out_dir: Path,
                        namespace_template: str) -> list[Path]:
    """Secret admission-keys for components/admission, in the namespace of the first
    validator's organisation (the host; move it by editing the kustomization)."""
    adir = consortium_dir / "admission"
    files = {key: adir / key for key in ("client.key", "encryption.key", "tls.crt", "tls.key")}
    files["ca.crt"] = consortium_dir / "ca" / "ca.crt"
    if genesis.admission_client is None or not all(p.is_file() for p in files.values()):
        return []
    host = min(genesis.validators, key=lambda v: v.replica_id)
    labels = {"app.kubernetes.io/name": "consortium", "app.kubernetes.io/component": "admission"}
    return [
        _write(out_dir / "admission" / "keys-secret.json", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "admission-keys", "labels": labels},
            "data": {key: _b64(path.read_bytes()) for key, path in files.items()}},
            private=True),
        _write(out_dir / "admission" / "kustomization.yaml", {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": namespace_template.format(org=host.org, id=host.replica_id),
            "resources": ["keys-secret.json"]}),
    ]
