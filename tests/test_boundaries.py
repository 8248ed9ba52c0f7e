"""Mechanical module boundaries (ARCHITECTURE.md, habit 1).

The consensus core must stay pure: no clocks, sockets, randomness, threads or databases; and
production code must not depend on the simulator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "consortium"
FORBIDDEN_IN_CORE = {"asyncio", "grpc", "psycopg", "time", "random", "os", "socket",
                     "threading", "subprocess", "datetime", "secrets", "uuid"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pbft_core_does_no_io() -> None:
    offenders = {}
    for path in (ROOT / "pbft").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in FORBIDDEN_IN_CORE}
        if bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, f"pbft/ must not import I/O modules: {offenders}"


def test_crypto_knows_nothing_of_grpc_or_sql() -> None:
    for path in (ROOT / "crypto").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in {"grpc", "psycopg"}}
        assert not bad, f"{path.name} imports {bad}"


def test_production_code_does_not_import_the_simulator() -> None:
    for path in ROOT.rglob("*.py"):
        if "sim" in path.relative_to(ROOT).parts:
            continue
        bad = {n for n in _imports(path) if n.startswith("consortium.sim")}
        assert not bad, f"{path} imports the simulator: {bad}"


def test_ledger_does_no_network_or_database_io() -> None:
    """The ledger's rules may use the record formats (the consensus-time EPCIS checks), which
    are pure functions too (next test)."""
    for path in (ROOT / "ledger").rglob("*.py"):
        bad = {n for n in _imports(path)
               if n.split(".")[0] in {"grpc", "psycopg", "asyncio", "socket", "consortium"}
               and not n.startswith(("consortium.ledger", "consortium.pbft", "consortium.crypto",
                                     "consortium.formats"))}
        assert not bad, f"{path.name} imports {bad}"


def test_formats_do_no_io_and_know_nothing_of_the_ledger() -> None:
    for path in (ROOT / "formats").rglob("*.py"):
        bad = {n for n in _imports(path)
               if n.split(".")[0] in {"grpc", "psycopg", "asyncio", "socket", "requests",
                                      "urllib3", "http"}
               or (n.startswith("consortium") and not n.startswith("consortium.formats"))}
        assert not bad, f"formats/{path.name} imports {bad}"


def test_only_the_codec_imports_generated_code() -> None:
    """ARCHITECTURE habit 1: the codec (`consortium/wire`) is the one importer of the generated
    protobuf modules; servicers, the transport and the SDK take `pb`/`pb_grpc` from it."""
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"api", "wire"}:
            continue
        bad = {n for n in _imports(path) if n.startswith("consortium.api")}
        assert not bad, f"{rel} imports generated protobuf code: {bad}"


def test_wire_and_verify_import_no_storage_node_or_replica() -> None:
    for package in ("wire", "verify"):
        for path in (ROOT / package).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in {"psycopg", "grpc"}
                   or n.startswith(("consortium.storage", "consortium.node",
                                    "consortium.pbft.replica", "consortium.client"))}
            assert not bad, f"{package}/{path.name} imports {bad}"


def test_importing_the_sdk_pulls_in_no_database_validator_or_replica() -> None:
    """Issue 14's acceptance: a submitter's process loads no psycopg, no storage, no node and
    no replica module when it imports the SDK."""
    code = ("import consortium.client, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('psycopg', 'consortium')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    loaded = ast.literal_eval(out.strip())
    bad = [m for m in loaded if m.split(".")[0] == "psycopg" or m.startswith(
        ("consortium.storage", "consortium.node", "consortium.pbft.replica",
         "consortium.pbft.pool", "consortium.pbft.slots"))]
    assert not bad, f"importing the SDK loaded {bad}"


def test_storage_contains_no_consensus_logic() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] == "grpc"
               or n in {"consortium.pbft.viewchange", "consortium.node"}}
        assert not bad, f"{path.name} imports {bad}"
