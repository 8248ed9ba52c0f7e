"""A real local consortium for the end-to-end tests.

Each test module that asks for `cluster` gets four validator processes (started with
`consortium.process.up`, exactly as `consortium up` does), each with its own database on the
PostgreSQL server at CONSORTIUM_TEST_PG_ADMIN_DSN (default: the local trust-auth cluster), TLS
from a fresh consortium CA, and fast protocol timers. Teardown always stops every validator and
drops every database the run created, whatever the outcome; on failure the tail of every
validator log is printed.

Collision-free under `pytest -n N`: ports come from slots leased with an exclusive file lock (and
checked free by binding), and database names derive from the random chain id.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from psycopg import sql

from consortium import localnet, process
from consortium.api.v1 import ledger_pb2 as pb
from consortium.api.v1 import ledger_pb2_grpc as pb_grpc
from consortium.client import ConsortiumClient
from consortium.config import Genesis
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.blocks import BlockHeader
from consortium.pbft.params import ProtocolParams
from consortium.verify import verify_certificate
from consortium.wire import block_from_proto

ADMIN_DSN = os.environ.get("CONSORTIUM_TEST_PG_ADMIN_DSN",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
VALIDATORS = 4
PROTOCOL = ProtocolParams(checkpoint_interval=8, log_window=16, request_timeout_ms=1000,
                          view_change_timeout_ms=1000, status_interval_ms=200, batch_delay_ms=2)
HEALTHY_TIMEOUT_S = 60.0
KILL_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

T = TypeVar("T")

# Every consortium directory this process currently runs (for log tails on failure).
ACTIVE_DIRS: list[Path] = []


# ------------------------------------------------------------------------------ pytest hooks

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests (real validator processes, "
                                       "gRPC over TLS, PostgreSQL)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `-n N` with the default `--dist load`, keep each module on one worker (loadscope):
    every module shares one consortium, and spreading a module over workers would start one
    per worker. An explicit other --dist is respected."""
    if config.getoption("dist", "no") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling
    return LoadScopeScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"_e2e_report_{report.when}", report)


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "_e2e_report_call", None)
    if report is not None and report.failed and not hasattr(report, "wasxfail"):
        for directory in list(ACTIVE_DIRS):
            print_log_tails(directory)


# ---------------------------------------------------------------------------------- helpers

def wait_for(what: str, predicate: Callable[[], T | None], timeout_s: float,
             interval_s: float = 0.2, describe: Callable[[], str] | None = None) -> T:
    """Poll until `predicate()` returns something truthy; fail clearly after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


def print_log_tails(directory: Path, lines: int = LOG_TAIL_LINES) -> None:
    vroot = directory / "validators"
    if not vroot.is_dir():
        return
    for vdir in sorted(vroot.iterdir(), key=lambda p: p.name):
        log = vdir / "validator.log"
        if not log.exists():
            continue
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"\n----- {log} (last {len(tail)} lines) -----")
        for line in tail:
            print(line[:400])


@dataclass
class PortLease:
    base: int
    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def lease_ports(validators: int = VALIDATORS) -> PortLease:
    """A base P such that P+i, P+100+i and P+200+i (i < validators) are free, held for this
    process by an exclusive lock so that parallel workers never pick overlapping ports. Bases
    are 20000 + 300*q + 10*r: distinct slots never overlap, and all stay below the kernel's
    ephemeral range (so no outgoing connection can take them meanwhile) and away from the
    defaults 7100/7200/9100."""
    assert validators <= 10
    lock_dir = Path(tempfile.gettempdir()) / "consortium-e2e-ports"
    lock_dir.mkdir(exist_ok=True)
    rng = random.SystemRandom()
    slots = [(q, r) for q in range(30) for r in range(10)]
    rng.shuffle(slots)
    for q, r in slots:
        base = 20000 + 300 * q + 10 * r
        fd = os.open(lock_dir / f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        ports = [base + off + i for off in (0, 100, 200) for i in range(validators)]
        if all(_port_free(p) for p in ports):
            return PortLease(base, fd)
        PortLease(base, fd).release()
    raise RuntimeError("no free port slot for a test consortium")


def drop_databases(names: Iterable[str]) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def recreate_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                      .format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def require_postgres() -> None:
    try:
        with psycopg.connect(ADMIN_DSN, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {ADMIN_DSN}: {exc}")


def kill9(directory: Path, replica_id: int) -> int:
    """SIGKILL one validator and wait (bounded) until it is gone. Returns its pid."""
    vdir = directory / "validators" / str(replica_id)
    pid = process.read_pid(vdir)
    assert pid is not None, f"validator {replica_id} is not running"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while process.read_pid(vdir) is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        if time.monotonic() > deadline:
            raise AssertionError(f"validator {replica_id} (pid {pid}) survived SIGKILL")
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return pid


def header_of(block: pb.Block) -> BlockHeader:
    return BlockHeader.decode(bytes(block.header))


@dataclass
class Cluster:
    directory: Path
    genesis: Genesis
    ca: bytes
    ports: PortLease
    _channels: dict[int, grpc.Channel] = field(default_factory=dict)
    _clients: dict[str, ConsortiumClient] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.genesis.validators)

    @property
    def ids(self) -> list[int]:
        return [v.replica_id for v in self.genesis.validators]

    @property
    def databases(self) -> list[str]:
        return [process.database_name(self.genesis, i) for i in self.ids]

    def vdir(self, i: int) -> Path:
        return self.directory / "validators" / str(i)

    def client_address(self, i: int) -> str:
        return self.genesis.validator(i).client_address

    def peer_address(self, i: int) -> str:
        return self.genesis.validator(i).peer_address

    def channel(self, i: int) -> grpc.Channel:
        ch = self._channels.get(i)
        if ch is None:
            ch = grpc.secure_channel(self.client_address(i),
                                     grpc.ssl_channel_credentials(root_certificates=self.ca))
            self._channels[i] = ch
        return ch

    def ledger(self, i: int) -> pb_grpc.LedgerStub:
        return pb_grpc.LedgerStub(self.channel(i))

    def client(self, org: str) -> ConsortiumClient:
        c = self._clients.get(org)
        if c is None:
            c = ConsortiumClient.from_dir(self.directory, org)
            self._clients[org] = c
        return c

    def auth(self, method: str, argument: str, org: str = "org0") -> pb.ReadAuth:
        """A signed ReadAuth of `org`'s client (validators refuse unauthenticated reads)."""
        return self.client(org).core.read_auth(method, argument)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        for ch in self._channels.values():
            ch.close()
        self._clients.clear()
        self._channels.clear()

    # ------------------------------------------------------------------ observing the chain

    def status(self, i: int, timeout_s: float = 2.0) -> pb.StatusReply:
        return self.ledger(i).GetStatus(pb.GetStatusRequest(), timeout=timeout_s)

    def try_status(self, i: int) -> pb.StatusReply | None:
        try:
            return self.status(i)
        except grpc.RpcError:
            return None

    def running(self) -> list[int]:
        return [i for i in self.ids if process.read_pid(self.vdir(i)) is not None]

    def describe(self, ids: Iterable[int] | None = None) -> str:
        rows = []
        for i in (self.ids if ids is None else ids):
            s = self.try_status(i)
            rows.append(f"v{i}: " + ("unreachable" if s is None else
                                     f"height={s.height} view={s.view} primary={s.primary} "
                                     f"active={s.view_active} "
                                     f"hash={s.last_block_hash.hex()[:12]}"))
        return "; ".join(rows)

    def healthy(self, i: int) -> bool:
        return process.healthy(self.client_address(i), self.ca)

    def wait_converged(self, timeout_s: float, ids: Iterable[int] | None = None,
                       min_height: int = 0) -> int:
        """Wait until the validators `ids` report one height (>= min_height) and one last
        block hash; return that height."""
        ids = list(self.ids if ids is None else ids)

        def same() -> int | None:
            sts = [self.try_status(i) for i in ids]
            if any(s is None for s in sts):
                return None
            heights = {s.height for s in sts if s is not None}
            hashes = {bytes(s.last_block_hash) for s in sts if s is not None}
            if len(heights) == 1 and len(hashes) == 1:
                h = heights.pop()
                if h >= min_height:
                    return h if h > 0 else None
            return None

        return wait_for(f"validators {ids} to agree on height and hash (>= {min_height})",
                        same, timeout_s, describe=lambda: self.describe(ids))

    def wait_height(self, i: int, height: int, timeout_s: float) -> int:
        def reached() -> int | None:
            s = self.try_status(i)
            return s.height if s is not None and s.height >= height else None
        return wait_for(f"validator {i} to reach height {height}", reached, timeout_s,
                        describe=lambda: self.describe())

    def blocks(self, i: int, upto: int, from_height: int = 1,
               timeout_s: float = 60.0) -> list[pb.Block]:
        """Blocks from_height..upto of validator i, streamed (StreamBlocks)."""
        out: list[pb.Block] = []
        if upto < from_height:
            return out
        call = self.ledger(i).StreamBlocks(
            pb.StreamBlocksRequest(from_height=from_height,
                                   auth=self.auth("StreamBlocks", f"{from_height}-0")),
            timeout=timeout_s)
        try:
            for blk in call:
                out.append(blk)
                if header_of(blk).height >= upto:
                    break
        finally:
            call.cancel()
        return out

    def chain(self, i: int, upto: int, *, verify: bool = True) -> list[bytes]:
        """Block hashes of heights 1..upto on validator i (index h-1), checking on the way that
        heights are contiguous, hashes link, and (verify) every certificate holds a quorum."""
        config = self.genesis.epoch0()
        verifier = Ed25519Verifier()
        hashes: list[bytes] = []
        prev = bytes(32)
        blocks = self.blocks(i, upto)
        assert len(blocks) == upto, f"validator {i} streamed {len(blocks)} of {upto} blocks"
        for expected, blk in enumerate(blocks, start=1):
            header = header_of(blk)
            assert header.height == expected, f"v{i}: block {header.height} at {expected}"
            assert header.prev_hash == prev, f"v{i}: block {expected} does not link"
            if verify:
                wb = block_from_proto(blk, self.genesis.chain_id_bytes)
                assert verify_certificate(wb.header, wb.certificate, config, verifier), \
                    f"v{i}: block {expected} lacks a valid commit certificate"
            prev = header.hash()
            hashes.append(prev)
        return hashes

    def assert_same_chain(self, ids: Iterable[int] | None = None,
                          upto: int | None = None) -> int:
        """Every validator in `ids` holds the same block hash at every height 1..upto (default:
        the converged height). Returns upto."""
        ids = list(self.ids if ids is None else ids)
        if upto is None:
            upto = self.wait_converged(30.0, ids)
        chains = {i: self.chain(i, upto) for i in ids}
        first = chains[ids[0]]
        for i in ids[1:]:
            for h, (a, b) in enumerate(zip(first, chains[i], strict=True), start=1):
                if a != b:
                    ha = header_of(self.ledger(ids[0]).GetBlock(pb.GetBlockRequest(
                        height=h, auth=self.auth("GetBlock", str(h)))))
                    hb = header_of(self.ledger(i).GetBlock(pb.GetBlockRequest(
                        height=h, auth=self.auth("GetBlock", str(h)))))
                    raise AssertionError(
                        f"validators {ids[0]} and {i} disagree at height {h}: {a.hex()[:16]} "
                        f"vs {b.hex()[:16]}\n  v{ids[0]}: {ha}\n  v{i}: {hb}")
        return upto

    def snapshot(self) -> dict[int, tuple[int, bytes]]:
        """(height, last block hash) of every validator."""
        out = {}
        for i in self.ids:
            s = self.status(i)
            out[i] = (s.height, bytes(s.last_block_hash))
        return out

    # ------------------------------------------------------------------------- processes

    def kill9(self, i: int) -> int:
        return kill9(self.directory, i)

    def up(self) -> list[process.Started]:
        started = process.up(self.directory, None)
        process.wait_healthy(self.directory, HEALTHY_TIMEOUT_S)
        return started


@contextlib.contextmanager
def running_consortium(directory: Path, validators: int = VALIDATORS,
                       protocol: ProtocolParams = PROTOCOL) -> Iterator[Cluster]:
    """Init, start and (always) tear down a consortium in `directory`."""
    require_postgres()
    lease = lease_ports(validators)
    genesis: Genesis | None = None
    cluster: Cluster | None = None
    ACTIVE_DIRS.append(directory)
    ok = False
    try:
        genesis = localnet.init(directory, validators,
                                ports=localnet.Ports(peer_base=lease.base,
                                                     client_base=lease.base + 100,
                                                     metrics_base=lease.base + 200,
                                                     admission=lease.base + 9),
                                protocol=protocol)
        cluster = Cluster(directory, genesis, (directory / "ca" / "ca.crt").read_bytes(), lease)
        process.up(directory, ADMIN_DSN)
        process.wait_healthy(directory, HEALTHY_TIMEOUT_S)
        yield cluster
        ok = True
    finally:
        if not ok:
            print_log_tails(directory)
        if cluster is not None:
            cluster.close()
        with contextlib.suppress(process.ProcessError):
            process.down(directory)
        if genesis is not None:
            drop_databases(process.database_name(genesis, i) for i in range(validators))
        ACTIVE_DIRS.remove(directory)
        lease.release()


def use_rules_backend(directory: Path) -> None:
    """Point the consortium's admission service at the rules backend (no model: fast and
    deterministic); a running service is restarted with it."""
    config = directory / "admission" / "config.json"
    data = json.loads(config.read_text())
    data["backend"] = "rules"
    config.write_text(json.dumps(data))
    if process.admission_pid(directory) is not None:
        process.admission_down(directory)
        process.admission_up(directory)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_consortium(tmp_path_factory.mktemp("consortium")) as c:
        yield c
