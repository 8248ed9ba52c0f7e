"""One host's own PostgreSQL: a data directory on a small filesystem of its own, a Unix socket
directory of its own, the server process inside the host's namespace.

The data directory (WAL included) lives on a size-limited tmpfs mounted for this host alone,
so a full disk is made by filling that filesystem and undone by deleting the filler: it hits
one validator's database and nothing else. The server listens on its Unix socket only
(`listen_addresses = ''`): the validator on the same host connects through it, and so does the
checker from the root namespace (a path-bound Unix socket is not scoped by network namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("CONSORTIUM_CHAOS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
FS_SIZE_MIB_DEFAULT = 1024
START_TIMEOUT_S = 60
FILLER = "disk-full.filler"
FILL_MARGIN_BYTES = 1 << 20


class PgError(RuntimeError):
    """A PostgreSQL command failed (the message names the command and its output)."""


def pg_available() -> str | None:
    """None when per-host servers can be made here, else why not."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).exists():
            return (f"{PG_BIN / tool} is missing (apt-get install postgresql-15, or set "
                    "CONSORTIUM_CHAOS_PG_BIN)")
    try:
        import pwd

        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} system user to run PostgreSQL as"
    for tool in ("runuser", "mount", "umount", "fallocate"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command is missing"
    return None


def _run(argv: list[str], what: str, timeout_s: float = START_TIMEOUT_S + 10) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise PgError(f"{what}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return proc.stdout


@dataclass
class HostDatabase:
    """The PostgreSQL server of one host. `root` holds everything: `fs/` (the mount, with
    `fs/data`), `sock/` (the Unix socket) and `postgres.log` (outside the small filesystem,
    so a full disk never hides the server's own account of it)."""

    root: Path
    exec_prefix: list[str]
    fs_size_mib: int = FS_SIZE_MIB_DEFAULT
    mounted: bool = False

    @property
    def mount_point(self) -> Path:
        return self.root / "fs"

    @property
    def data_dir(self) -> Path:
        return self.mount_point / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, database: str) -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&user={PG_USER}"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return [*self.exec_prefix, "runuser", "-u", PG_USER, "--", *argv]

    def create(self) -> None:
        """Mount the host's filesystem and initialise a cluster on it (not started)."""
        import pwd

        pw = pwd.getpwnam(PG_USER)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={self.fs_size_mib}m,mode=0755",
              "tmpfs", str(self.mount_point)], f"mount tmpfs on {self.mount_point}")
        self.mounted = True
        for path in (self.mount_point, self.socket_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        self.log_file.touch()
        os.chown(self.log_file, pw.pw_uid, pw.pw_gid)
        _run(self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U",
                                PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"]),
             f"initdb {self.data_dir}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# consortium chaos: one small server per host\n"
                       "listen_addresses = ''\n"
                       f"unix_socket_directories = '{self.socket_dir}'\n"
                       "max_connections = 40\nshared_buffers = 32MB\n"
                       "max_wal_size = 96MB\nmin_wal_size = 32MB\n"
                       "restart_after_crash = on\n")

    def start(self) -> None:
        _run(self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l",
                                str(self.log_file), "-w", "-t", str(START_TIMEOUT_S),
                                "start"]), f"pg_ctl start {self.data_dir}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (clean shutdown, sessions cut) or `immediate` (as a crash:
        recovery from WAL at the next start)."""
        if not self.running():
            return
        _run(self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode,
                                "-w", "-t", str(START_TIMEOUT_S), "stop"]),
             f"pg_ctl stop {self.data_dir}")

    def running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        proc = subprocess.run(self._as_postgres([str(PG_BIN / "pg_ctl"), "-D",
                                                 str(self.data_dir), "status"]),
                              capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
        return proc.returncode == 0

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def dump(self, database: str, path: Path) -> None:
        """A consistent snapshot of `database` (pg_dump custom format, one transaction) to
        `path`, taken while the validator keeps writing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        import pwd

        pw = pwd.getpwnam(PG_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        _run(self._as_postgres([str(PG_BIN / "pg_dump"), "-h", str(self.socket_dir), "-U",
                                PG_USER, "-Fc", "-f", str(path), database]),
             f"pg_dump {database}")

    def restore(self, database: str, path: Path) -> None:
        """Replace `database` by the dump at `path` (drop, create, pg_restore)."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                      .format(sql.Identifier(database)))
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        _run(self._as_postgres([str(PG_BIN / "pg_restore"), "-h", str(self.socket_dir), "-U",
                                PG_USER, "-d", database, "--exit-on-error", str(path)]),
             f"pg_restore {path}")

    def free_bytes(self) -> int:
        st = os.statvfs(self.mount_point)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Fill the host's filesystem to the last byte; returns the bytes taken. Most of it
        is allocated at once (fallocate of everything free fails with ENOSPC on tmpfs, so a
        margin is left), the margin is then written until the filesystem refuses."""
        filler = self.mount_point / FILLER
        size = self.free_bytes() - FILL_MARGIN_BYTES
        if size > 0:
            _run(["fallocate", "-l", str(size), str(filler)], f"fallocate {filler}")
        with contextlib.suppress(OSError), filler.open("ab") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        return filler.stat().st_size if filler.exists() else 0

    def free(self) -> None:
        (self.mount_point / FILLER).unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop the server (as a crash: nothing is kept), unmount, delete. Never raises."""
        with contextlib.suppress(PgError, OSError, subprocess.SubprocessError):
            self.stop("immediate")
        kill_postmaster(self.data_dir)
        if self.mounted or is_mounted(self.mount_point):
            unmount(self.mount_point)
            self.mounted = False


def kill_postmaster(data_dir: Path) -> None:
    """SIGKILL the postmaster of `data_dir` if it still runs (its children follow it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)


def is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def unmount(path: Path) -> None:
    """Unmount, lazily when still busy (a process that held a file there is being killed)."""
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def mounts_under(prefix: str) -> list[Path]:
    """Mount points whose path contains a directory named with `prefix` (a run's leftovers)."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and any(seg.startswith(prefix) for seg in parts[1].split("/")):
                out.append(Path(parts[1]))
    return sorted(out, key=lambda p: len(p.parts), reverse=True)
