"""The consortium under test: a fresh local one (started and always torn down here) or a
running one (`--dir`), seen through what the harness needs: pids, databases, addresses.

A fresh consortium is `consortium.localnet.init` plus `consortium.process.up`, exactly what
`consortium init` / `consortium up` do, on ports leased with the same lock files as the e2e
tests (so a benchmark and a test run on one machine never take each other's ports), with one
database per validator named after the random chain id. Teardown stops the validators and
drops those databases whatever happened (failure, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from consortium import localnet, process
from consortium.config import Genesis
from consortium.pbft.params import ProtocolParams

DEFAULT_LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
HEALTHY_TIMEOUT_S = 90.0
PORT_SLOT_VALIDATORS = 10
"""The e2e tests' slot scheme: base P serves validators P+i, P+100+i, P+200+i for i < 10."""


class BenchError(RuntimeError):
    """A readable reason the benchmark cannot run (no database, ports, a dead validator)."""


# ------------------------------------------------------------------------------- database

def resolve_server_dsn(dsn: str | None) -> str | None:
    """--dsn, else $CONSORTIUM_DSN, else the local trust-auth server when it answers; None
    means the embedded PostgreSQL that `consortium.process` starts in the consortium dir."""
    if dsn:
        return dsn
    env = os.environ.get("CONSORTIUM_DSN")
    if env:
        return env
    try:
        with psycopg.connect(DEFAULT_LOCAL_DSN, connect_timeout=3):
            return DEFAULT_LOCAL_DSN
    except psycopg.Error:
        return None


def with_database(server_dsn: str, name: str) -> str:
    """The DSN of database `name` on the server of `server_dsn` (as process.py builds it)."""
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))


def admin_dsn(any_dsn: str) -> str:
    """A DSN on the same server, in the `postgres` maintenance database (to create and drop
    databases: one cannot drop the database one is connected to)."""
    return with_database(any_dsn, "postgres")


def create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn(server_dsn), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_dsn, name)


def drop_databases(server_dsn: str, names: list[str]) -> None:
    with psycopg.connect(admin_dsn(server_dsn), autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def existing_databases(server_dsn: str, names: list[str]) -> list[str]:
    with psycopg.connect(admin_dsn(server_dsn), autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                            (names,)).fetchall()
    return sorted(str(r[0]) for r in rows)


# ---------------------------------------------------------------------------------- ports

@dataclass
class PortLease:
    base: int
    fds: list[int]

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def lease_ports(validators: int) -> PortLease:
    """Free ports for `validators` validators, held by exclusive file locks shared with the e2e
    tests (tests/e2e/conftest.py: bases 20000 + 300q + 10r in $TMPDIR/consortium-e2e-ports).
    More than 10 validators take several consecutive slots of one row."""
    slots_needed = -(-validators // PORT_SLOT_VALIDATORS)
    if slots_needed > 10:
        raise BenchError("at most 100 validators on one machine")
    lock_dir = Path(tempfile.gettempdir()) / "consortium-e2e-ports"
    lock_dir.mkdir(exist_ok=True)
    rng = random.SystemRandom()
    starts = [(q, r) for q in range(30) for r in range(11 - slots_needed)]
    rng.shuffle(starts)
    for q, r in starts:
        base = 20000 + 300 * q + 10 * r
        fds: list[int] = []
        ok = True
        for k in range(slots_needed):
            fd = os.open(lock_dir / f"{base + 10 * k}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                ok = False
                break
            fds.append(fd)
        lease = PortLease(base, fds)
        if ok and all(_port_free(base + off + i) for off in (0, 100, 200)
                      for i in range(validators)):
            return lease
        lease.release()
    raise BenchError("no free port slot for a benchmark consortium")


# ------------------------------------------------------------------------------ consortium

@dataclass
class Consortium:
    """What the harness observes of a running consortium."""

    directory: Path
    genesis: Genesis
    databases: list[str]
    server_dsn: str | None
    """The PostgreSQL server holding the validators' databases (None: unknown)."""
    fresh: bool
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.genesis.validators)

    def pids(self) -> dict[int, int]:
        out = {}
        for v in self.genesis.validators:
            pid = process.read_pid(self.directory / "validators" / str(v.replica_id))
            if pid is None:
                raise BenchError(f"validator {v.replica_id} is not running; see "
                                 f"{self.directory}/validators/{v.replica_id}/validator.log")
            out[v.replica_id] = pid
        return out

    def metrics_urls(self) -> dict[int, str]:
        out = {}
        for v in self.genesis.validators:
            config = json.loads((self.directory / "validators" / str(v.replica_id)
                                 / "config.json").read_text())
            out[v.replica_id] = f"http://{config['listen_metrics']}/metrics"
        return out

    def client_ports(self) -> set[int]:
        return {int(v.client_address.rpartition(":")[2]) for v in self.genesis.validators}

    def peer_ports(self) -> set[int]:
        return {int(v.peer_address.rpartition(":")[2]) for v in self.genesis.validators}


def _raise_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that teardown (stop validators, drop databases) runs."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def fresh_consortium(validators: int, dsn: str | None, *, protocol: ProtocolParams,
                     keep_dir: Path | None = None) -> Iterator[Consortium]:
    """Init and start `validators` validators on their own new databases; on exit (always)
    stop them and drop the databases. The consortium directory is temporary unless
    `keep_dir` names where to keep it (validator logs, for a post-mortem)."""
    server_dsn = resolve_server_dsn(dsn)
    lease = lease_ports(validators)
    tmp = Path(tempfile.mkdtemp(prefix="consortium-bench-"))
    directory = tmp / "consortium"
    genesis: Genesis | None = None
    try:
        genesis = localnet.init(directory, validators,
                                ports=localnet.Ports(peer_base=lease.base,
                                                     client_base=lease.base + 100,
                                                     metrics_base=lease.base + 200),
                                protocol=protocol)
        names = [process.database_name(genesis, i) for i in range(validators)]
        env_dsn = os.environ.pop("CONSORTIUM_DSN", None)  # resolved above; up() must not
        try:                                              # pick it over the embedded server
            process.up(directory, server_dsn)
        except process.ProcessError as exc:
            raise BenchError(str(exc)) from exc
        finally:
            if env_dsn is not None:
                os.environ["CONSORTIUM_DSN"] = env_dsn
        if server_dsn is None:  # embedded: its URI is in the validators' configs
            config = json.loads((directory / "validators" / "0" / "config.json").read_text())
            server_dsn = admin_dsn(str(config["dsn"]))
        try:
            process.wait_healthy(directory, HEALTHY_TIMEOUT_S)
        except process.ProcessError as exc:
            raise BenchError(str(exc)) from exc
        yield Consortium(directory, genesis, names, server_dsn, fresh=True)
    finally:
        with contextlib.suppress(process.ProcessError, OSError):
            process.down(directory)
        if genesis is not None and server_dsn is not None \
                and not (directory / "pgdata").exists():
            with contextlib.suppress(psycopg.Error):
                drop_databases(server_dsn, [process.database_name(genesis, i)
                                            for i in range(validators)])
        if keep_dir is not None and directory.exists():
            keep_dir.mkdir(parents=True, exist_ok=True)
            for vdir in (directory / "validators").glob("*"):
                log = vdir / "validator.log"
                if log.exists():
                    shutil.copy(log, keep_dir / f"validator-{vdir.name}.log")
        shutil.rmtree(tmp, ignore_errors=True)  # an embedded server's data goes with it
        lease.release()


def running_consortium(directory: Path) -> Consortium:
    """A consortium someone else started (`consortium up --dir DIR`): nothing is started,
    stopped or dropped, except the harness's own scratch database."""
    directory = directory.resolve()
    try:
        genesis = Genesis.load(directory / "genesis.json")
    except Exception as exc:
        raise BenchError(f"{directory}: {exc}") from exc
    databases = []
    server: str | None = None
    for v in genesis.validators:
        config = json.loads((directory / "validators" / str(v.replica_id)
                             / "config.json").read_text())
        dsn = str(config.get("dsn") or "")
        if dsn:
            databases.append(urlsplit(dsn).path.lstrip("/"))
            server = server or admin_dsn(dsn)
    c = Consortium(directory, genesis, databases, server, fresh=False)
    c.pids()  # every validator must be running
    return c
