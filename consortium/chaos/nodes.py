"""Validator processes on their hosts, supervised as a pod's container would be.

Each validator runs as `ip netns exec <host> <venv>/bin/consortium validator --config ...`
(`ip netns exec` execs the command, so the child's pid is the validator's). The supervisor
restarts a validator that exits when nobody asked it to, with capped exponential back-off (as
a kubelet does), and counts those exits: a validator that crash-loops through a database
outage shows up here, one that rides it out does not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from consortium.chaos.netns import Host

RESTART_DELAY_S_MIN = 1.0
RESTART_DELAY_S_MAX = 10.0
STABLE_S = 30.0
"""A validator that ran this long without exiting gets its back-off reset."""
STOP_TIMEOUT_S = 10.0


def consortium_command() -> list[str]:
    """The `consortium` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "consortium"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "apps.cli"]


@dataclass
class Exit:
    at: float
    """time.time() when the exit was noticed."""
    returncode: int
    requested: bool
    """True when the harness killed it (a kill -9 fault, the end of the run)."""


@dataclass
class ValidatorProcess:
    replica_id: int
    host: Host
    config: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    """Whether it should be running (the supervisor restarts it when it is not)."""
    stopped: bool = False
    """SIGSTOPped by a fault."""
    exits: list[Exit] = field(default_factory=list)
    starts: int = 0
    _restart_at: float = 0.0
    _delay_s: float = RESTART_DELAY_S_MIN
    _started_at: float = 0.0
    _requested_exit: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.wanted = True
        if self.pid is not None:
            return
        if self.proc is not None:
            self._reap(0)  # it exited and nobody noticed yet
        log = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                [*self.host.exec_prefix(), *consortium_command(), "validator", "--config",
                 str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.config.parent, start_new_session=True)
        finally:
            log.close()
        self.starts += 1
        self.stopped = False
        self._requested_exit = False
        self._started_at = time.monotonic()

    def signal(self, sig: signal.Signals) -> bool:
        pid = self.pid
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return True

    def kill9(self) -> bool:
        """SIGKILL and wait; the supervisor leaves it down until `start()`."""
        self.wanted = False
        self._requested_exit = True
        if not self.signal(signal.SIGKILL):
            return False
        self._reap(STOP_TIMEOUT_S)
        self.stopped = False
        return True

    def sigstop(self) -> bool:
        self.stopped = self.signal(signal.SIGSTOP)
        return self.stopped

    def sigcont(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def terminate(self) -> None:
        """SIGTERM (graceful), SIGKILL after STOP_TIMEOUT_S. Never raises."""
        self.wanted = False
        self._requested_exit = True
        if self.pid is None:
            self._reap(0)
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if not self._reap(STOP_TIMEOUT_S):
            self.signal(signal.SIGKILL)
            self._reap(STOP_TIMEOUT_S)

    def _reap(self, timeout_s: float) -> bool:
        if self.proc is None:
            return True
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        self.exits.append(Exit(time.time(), rc, self._requested_exit))
        self.proc = None
        return True

    def supervise(self) -> Exit | None:
        """Notice an exit and restart after the back-off; returns the exit it noticed."""
        noticed = None
        if self.proc is not None and self.proc.poll() is not None:
            self._reap(0)
            noticed = self.exits[-1]
            if not noticed.requested:
                ran_s = time.monotonic() - self._started_at
                self._delay_s = (RESTART_DELAY_S_MIN if ran_s > STABLE_S
                                 else min(self._delay_s * 2, RESTART_DELAY_S_MAX))
                self._restart_at = time.monotonic() + self._delay_s
        if self.wanted and self.proc is None and time.monotonic() >= self._restart_at:
            self.start()
        return noticed

    @property
    def crashes(self) -> list[Exit]:
        """Exits nobody asked for."""
        return [e for e in self.exits if not e.requested]
