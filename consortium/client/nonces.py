"""Nonce allocation for one client identity.

Validators execute each (client, nonce) at most once and refuse nonces far below the highest
they executed. So an identity needs one increasing sequence, even across processes and crashes:
a `NonceFile` reserves blocks of nonces under an exclusive file lock and persists the end of the
reserved block before handing any out, so a crash skips nonces but never reuses one.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

RESERVE_BLOCK = 32
"""Small, so that many short-lived instances of one identity (CLI runs) stay inside the
validators' replay window (`client_nonce_window`, 16,384 by default) of each other."""


class NonceFile:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._next = 0
        self._end = 0

    def next(self) -> int:
        with self._lock:
            if self._next >= self._end:
                self._reserve()
            n = self._next
            self._next += 1
            return n

    def skip(self) -> None:
        """Abandon the rest of the current block (after a STALE answer: other instances of this
        identity have moved the sequence far ahead)."""
        with self._lock:
            self._reserve()

    def _reserve(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.read(fd, 64).decode().strip()
            start = int(raw) if raw else 1
            end = start + RESERVE_BLOCK
            # Crash-safe: the new value goes to a temporary file that replaces the old one
            # atomically, so the file is never empty or half-written.
            tmp = self._path.with_suffix(".tmp")
            tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(tfd, str(end).encode())
                os.fsync(tfd)
            finally:
                os.close(tfd)
            os.replace(tmp, self._path)
            dfd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._next, self._end = start, end


class MemoryNonces:
    """For a process that owns its identity alone and starts from a known nonce (tests)."""

    def __init__(self, start: int = 1) -> None:
        self._next = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            n = self._next
            self._next += 1
            return n

    def skip(self) -> None:
        """Nothing to skip: this process owns the sequence."""


class ClockNonces:
    """Microseconds since the epoch, strictly increasing: for a process that owns its identity
    alone and has no writable state (the admission service in a container). A restart moves
    on past every nonce it used, as long as the clock does not go back by more than the
    replay window's worth of submissions."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last

    def skip(self) -> None:
        """Nothing to skip to: the clock is already ahead of every earlier nonce."""

