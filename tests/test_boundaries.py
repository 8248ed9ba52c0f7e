"""Mechanical module boundaries (ARCHITECTURE.md, habit 1).

The consensus core must stay pure: no clocks, sockets, randomness, threads or databases; and
production code must not depend on the simulator.
"""

from __future__ import annotations

import ast
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
    for path in (ROOT / "ledger").rglob("*.py"):
        bad = {n for n in _imports(path)
               if n.split(".")[0] in {"grpc", "psycopg", "asyncio", "socket", "consortium"}
               and not n.startswith(("consortium.ledger", "consortium.pbft", "consortium.crypto"))}
        assert not bad, f"{path.name} imports {bad}"


def test_generated_protobuf_stays_at_the_edges() -> None:
    """Only the wire module, the servicers, the transport, the SDK, the process manager and the
    admission service's gRPC server touch generated code; the core, ledger, crypto, storage and
    the admission service's judgement never do."""
    allowed = {"node", "client", "api"}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in allowed or rel.name == "process.py" or rel.parts == (
                "admission", "service.py"):
            continue
        bad = {n for n in _imports(path) if n.startswith("consortium.api")}
        assert not bad, f"{rel} imports generated protobuf code: {bad}"


def test_storage_contains_no_consensus_logic() -> None:
    for path in (ROOT / "storage").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] == "grpc"
               or n in {"consortium.pbft.viewchange", "consortium.node"}}
        assert not bad, f"{path.name} imports {bad}"
