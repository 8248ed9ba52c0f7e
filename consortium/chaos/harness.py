"""A consortium on separate hosts, built and always torn down: the namespaces, each host's
PostgreSQL, the consortium directory, the fault proxy in the hub, the validators, the observer
and (on request) the load generator in the client host.

`Harness` is a context manager: leaving it, by return, exception or Ctrl-C, stops every process
it started, stops every PostgreSQL server, unmounts every filesystem and deletes every
namespace. `cleanup_stale()` does the same by prefix for runs that died without it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psycopg

from consortium.chaos import checker, layout, netns, pg
from consortium.chaos.nodes import ValidatorProcess, consortium_command
from consortium.chaos.proxy import ProxyControl

T = TypeVar("T")
READY_TIMEOUT_S = 90.0
AUDIT_TIMEOUT_S = 600.0
DATABASE = "consortium"


class HarnessError(RuntimeError):
    """The topology could not be built or did not come up (a readable message)."""


def wait_for(what: str, predicate: Callable[[], T | None], timeout_s: float,
             interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def unavailable_reason() -> str | None:
    """None when this machine can run a campaign, else why not (tests skip with it)."""
    return netns.ip_available() or pg.pg_available()


@dataclass
class Harness:
    validators: int = 4
    seed: int = 1
    workdir: Path = Path("/tmp")
    fs_size_mib: int = pg.FS_SIZE_MIB_DEFAULT
    keep: bool = False
    """Keep the run directory (consortium, logs, events) after teardown."""
    log: Callable[[str], None] = lambda _msg: None
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    topology: netns.Topology | None = None
    databases: dict[int, pg.HostDatabase] = field(default_factory=dict)
    nodes: dict[int, ValidatorProcess] = field(default_factory=dict)
    proxy: ProxyControl | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.workdir / f"{netns.PREFIX}{self.run_id}"

    @property
    def consortium_dir(self) -> Path:
        return self.run_dir / "consortium"

    @property
    def events_file(self) -> Path:
        return self.run_dir / "events.jsonl"

    @property
    def timeline_file(self) -> Path:
        return self.run_dir / "timeline.jsonl"

    # ---------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Harness:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # an interrupted run is not a failed one: its directory goes too (unless kept)
        self.teardown(failed=exc is not None and not isinstance(exc, KeyboardInterrupt))

    def build(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise HarnessError(reason)
        _check_reachable(self.workdir)
        self.run_dir.mkdir(parents=True)
        self.run_dir.chmod(0o755)
        names = [f"v{i}" for i in range(self.validators)] + ["client"]
        self.log(f"run {self.run_id}: namespaces {netns.PREFIX}{self.run_id}-*")
        self.topology = netns.Topology(self.run_id, names)
        self.topology.create()
        dsns = {}
        for i in range(self.validators):
            db = pg.HostDatabase(self.run_dir / "hosts" / f"v{i}" / "pg",
                                 self.host(i).exec_prefix(), self.fs_size_mib)
            self.databases[i] = db
            db.create()
            db.start()
            dsns[i] = db.create_database(DATABASE)
        self.log(f"run {self.run_id}: {self.validators} PostgreSQL servers up")
        places = layout.write_consortium(self.consortium_dir, self.validators, dsns)
        self._start_proxy()
        for place in places:
            node = ValidatorProcess(place.replica_id, self.host(place.replica_id), place.config,
                                    place.config.parent / "validator.log")
            self.nodes[place.replica_id] = node
            node.start()
        self._start_in_client("observer", [
            sys.executable, "-m", "consortium.chaos.observe", "--dir",
            str(self.consortium_dir), "--status", str(self.run_dir / "status.json"),
            "--timeline", str(self.timeline_file)])
        self.wait_all_serving(READY_TIMEOUT_S)
        self.log(f"run {self.run_id}: {self.validators} validators serving")

    def host(self, replica_id: int) -> netns.Host:
        assert self.topology is not None
        return self.topology.hosts[f"v{replica_id}"]

    def _start_proxy(self) -> None:
        assert self.topology is not None
        config = {"seed": self.seed,
                  "routes": [{"dst": i, "listen": [netns.HUB_ADDRESS,
                                                   layout.PROXY_PORT_BASE + i],
                              "upstream": [netns.host_address(i), layout.PEER_PORT]}
                             for i in range(self.validators)],
                  "senders": {netns.host_address(i): i for i in range(self.validators)}}
        (self.run_dir / "proxy.json").write_text(json.dumps(config, indent=2))
        control = self.run_dir / "proxy.sock"
        self._spawn("proxy", ["ip", "netns", "exec", self.topology.hub, sys.executable, "-m",
                              "consortium.chaos.proxy", "--config",
                              str(self.run_dir / "proxy.json"), "--control", str(control)])
        self.proxy = ProxyControl(control)

        def ready() -> bool:
            if self._procs["proxy"].poll() is not None:
                raise HarnessError(f"the fault proxy exited; see {self.run_dir}/proxy.log")
            if not control.exists():
                return False
            try:
                assert self.proxy is not None
                return bool(self.proxy.call(op="ping")["ok"])
            except OSError:
                if self.proxy is not None:
                    self.proxy.close()
                return False

        wait_for("the fault proxy", ready, 30.0)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.run_dir / f"{name}.log").open("ab") as out:
            self._procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL,
                                                 start_new_session=True)

    def _start_in_client(self, name: str, argv: list[str]) -> None:
        assert self.topology is not None
        self._spawn(name, [*self.topology.hosts["client"].exec_prefix(), *argv])

    def start_load(self, workers: int, rate_per_worker: float) -> None:
        self._start_in_client("load", [
            sys.executable, "-m", "consortium.chaos.load", "--dir", str(self.consortium_dir),
            "--events", str(self.events_file), "--workers", str(workers), "--rate",
            str(rate_per_worker)])

    def stop_load(self, timeout_s: float = 40.0) -> None:
        self._stop_process("load", timeout_s)

    def _stop_process(self, name: str, timeout_s: float) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def teardown(self, failed: bool = False) -> None:
        """Stop and remove everything this run made. Never raises; safe to call twice; a
        second Ctrl-C or SIGTERM meanwhile does not cut it short."""
        with _signals_deferred():
            self._teardown(failed)

    def _teardown(self, failed: bool) -> None:
        for name in ("load", "observer"):
            with contextlib.suppress(Exception):
                self._stop_process(name, 30.0)
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.terminate()
        if self.proxy is not None:
            self.proxy.close()
        with contextlib.suppress(Exception):
            self._stop_process("proxy", 10.0)
        for db in self.databases.values():
            db.destroy()
        if self.topology is not None:
            self.topology.destroy()
        for mount in pg.mounts_under(f"{netns.PREFIX}{self.run_id}"):
            pg.unmount(mount)
        if not self.keep and not failed:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------- observing

    def status(self) -> dict[int, dict[str, Any]]:
        """The observer's latest round: per validator, reachable/health/height/view/primary."""
        try:
            data = json.loads((self.run_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        if time.time() - float(data.get("t", 0)) > 10:
            return {}  # stale: the observer is not keeping up
        return {int(k): v for k, v in data["validators"].items()}

    def serving(self) -> list[int]:
        return sorted(i for i, row in self.status().items() if row.get("health") == "SERVING")

    def wait_all_serving(self, timeout_s: float) -> None:
        def all_up() -> bool:
            self.supervise()
            return len(self.serving()) == self.validators

        wait_for(f"all {self.validators} validators to serve (logs in "
                 f"{self.consortium_dir}/validators/*/validator.log)", all_up, timeout_s, 0.5)

    def primary(self) -> int:
        """The primary of the highest active view any reachable validator reports (view mod n
        before anything answered)."""
        rows = [r for r in self.status().values() if r.get("view") is not None]
        if not rows:
            return 0
        best = max(rows, key=lambda r: (r["view"], bool(r.get("view_active"))))
        return int(best.get("primary", best["view"] % self.validators))

    def heights(self) -> dict[int, int]:
        return {i: int(r["height"]) for i, r in self.status().items()
                if r.get("height") is not None}

    def supervise(self) -> list[tuple[int, int]]:
        """Restart validators that exited unasked; (replica id, return code) of new exits."""
        out = []
        for i, node in self.nodes.items():
            exit_ = node.supervise()
            if exit_ is not None and not exit_.requested:
                out.append((i, exit_.returncode))
        return out

    def ledgers(self, record_ids: list[str]) -> dict[int, checker.Ledger]:
        """Every validator's chain and which of `record_ids` it stores, from its database."""
        return {i: checker.read_ledger(db.dsn(DATABASE), record_ids)
                for i, db in self.databases.items()}

    def check(self) -> checker.Verdict:
        """The checker's verdict on the acknowledged records so far."""
        acks = checker.read_events(self.events_file).acks
        return checker.check(acks, self.ledgers([a.record_id for a in acks]))

    def wait_converged(self, timeout_s: float,
                       on_tick: Callable[[], None] = lambda: None) -> bool:
        """Wait (supervising) until every validator's database holds the same head block."""
        deadline = time.monotonic() + timeout_s
        while True:
            heads: set[tuple[int, bytes] | None] = set()
            for db in self.databases.values():
                try:
                    hashes = checker.read_ledger(db.dsn(DATABASE), []).hashes
                except psycopg.Error:  # a server still restarting: not converged yet
                    heads.add(None)
                    continue
                heads.add((len(hashes), hashes[-1] if hashes else b""))
            if len(heads) == 1 and None not in heads:
                return True
            if time.monotonic() > deadline:
                return False
            on_tick()
            time.sleep(1.0)

    def run_in_client(self, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        assert self.topology is not None
        return subprocess.run([*self.topology.hosts["client"].exec_prefix(), *argv],
                              capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)

    def audit(self) -> dict[str, Any]:
        """`consortium audit verify --all --json` from the client host: {ok, height,
        problems} (ok False with the reason when it failed to run)."""
        try:
            proc = self.run_in_client([*consortium_command(), "audit", "verify", "--dir",
                                       str(self.consortium_dir), "--all", "--json"],
                                      AUDIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"ok": False, "problems": [f"did not finish in {AUDIT_TIMEOUT_S:.0f} s"]}
        (self.run_dir / "audit.json").write_text(proc.stdout + proc.stderr)
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            return {"ok": False, "exit": proc.returncode, "problems": lines[-1:]}
        return {"ok": proc.returncode == 0 and bool(data.get("ok")),
                "height": data.get("height"), "problems": list(data.get("problems", []))[:10]}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP meanwhile (main thread only: elsewhere signals cannot
    be set, and are not delivered anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN)
             for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _check_reachable(workdir: Path) -> None:
    """PostgreSQL runs as its own user: it must be able to traverse down to the run
    directory (pytest's and mktemp's private directories are 0700)."""
    for path in [workdir.resolve(), *workdir.resolve().parents]:
        if path.exists() and not path.stat().st_mode & 0o001:
            raise HarnessError(f"--workdir {workdir}: {path} is not reachable by the "
                               f"{pg.PG_USER} user (needs o+x); use another directory")


def cleanup_stale(workdir: Path = Path("/tmp"), prefix: str = netns.PREFIX) -> dict[str, Any]:
    """Remove what runs that died left behind: processes and namespaces named `prefix*`,
    PostgreSQL servers and mounts under `workdir/prefix*`, and those directories."""
    removed: dict[str, Any] = {"namespaces": [], "servers": [], "mounts": [], "dirs": []}
    for run_dir in sorted(workdir.glob(f"{prefix}*")):
        for data_dir in run_dir.glob("hosts/*/pg/fs/data"):
            if (data_dir / "postmaster.pid").exists():
                pg.kill_postmaster(data_dir)
                removed["servers"].append(str(data_dir))
    for namespace in netns.stale_namespaces(prefix):
        netns.remove_namespace(namespace)
        removed["namespaces"].append(namespace)
    for mount in pg.mounts_under(prefix):
        pg.unmount(mount)
        removed["mounts"].append(str(mount))
    for run_dir in sorted(workdir.glob(f"{prefix}*")):
        if run_dir.is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed["dirs"].append(str(run_dir))
    return removed
