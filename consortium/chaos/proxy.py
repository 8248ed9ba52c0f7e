"""A seeded TCP fault proxy for the peer links.

Validator i reaches validator j by dialing the proxy's port for j (genesis `peer_address`); the
proxy knows i from the source address of the connection, so every directed link i -> j has its
own faults, changed at run time over a Unix control socket (one JSON object per line). Faults
apply to the bytes flowing both ways on that link's connections:

- latency_ms + jitter_ms: each chunk is held latency + uniform(0, jitter) ms, never overtaking
  an earlier chunk of the same stream (TCP cannot reorder within a stream). Reordering happens
  across connections: the links' delays are drawn independently, so a message on one link
  overtakes an earlier one on another.
- bandwidth_bytes_per_s: a token bucket per link and direction.
- stalled: bytes are held until the stall ends, then delivered (a peer that goes quiet).
- loss_per_chunk: TCP cannot lose bytes inside a stream, so loss is modelled the only way a
  stream can show it: with this probability a chunk is dropped and the connection is reset (RST
  to both ends), losing everything in flight; the sender must reconnect and retransmit.
- blackholed: a partition of that link: bytes are read and discarded, new connections are
  accepted and go nowhere; when it heals those connections are reset (their streams lost
  bytes, so they cannot go on).

Every random choice comes from a generator seeded with (seed, link, connection number), so the
same seed and the same traffic give the same decisions (`trace` records them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import socket
import struct
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK_BYTES_MAX = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
TRACE_ENTRIES_MAX = 100_000
ANY = -1
"""The sender id of a connection from an address the proxy does not know."""


@dataclass(frozen=True)
class LinkFaults:
    latency_ms: int = 0
    jitter_ms: int = 0
    bandwidth_bytes_per_s: int = 0
    """0: no cap."""
    loss_per_chunk: float = 0.0
    stalled: bool = False
    blackholed: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinkFaults:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown link fault field(s): {sorted(unknown)}")
        faults = cls(**data)
        if (faults.latency_ms < 0 or faults.jitter_ms < 0 or faults.bandwidth_bytes_per_s < 0
                or not 0.0 <= faults.loss_per_chunk <= 1.0):
            raise ValueError(f"link faults out of range: {data}")
        return faults


NO_FAULTS = LinkFaults()


@dataclass(frozen=True)
class Route:
    """Connections to `listen` are forwarded to `upstream`, validator `dst`."""

    dst: int
    listen: tuple[str, int]
    upstream: tuple[str, int]


@dataclass
class LinkStats:
    connections: int = 0
    bytes_forwarded: int = 0
    chunks_dropped: int = 0
    resets: int = 0


@dataclass(eq=False)
class _Conn:
    src: int
    dst: int
    number: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    lost_bytes: bool = False
    closed: bool = False


class FaultProxy:
    def __init__(self, routes: list[Route], senders: dict[str, int], seed: int, *,
                 record_trace: bool = False) -> None:
        self.routes = routes
        self.senders = senders
        self.seed = seed
        self.record_trace = record_trace
        self.trace: list[tuple[int, int, int, str, int, str, float]] = []
        """(src, dst, connection number, direction, chunk number, action, delay ms)."""
        self._faults: dict[tuple[int, int], LinkFaults] = {}
        self._stats: dict[tuple[int, int], LinkStats] = {}
        self._conn_numbers: dict[tuple[int, int], int] = {}
        self._conns: set[_Conn] = set()
        self._buckets: dict[tuple[int, int, str], float] = {}
        self._servers: list[asyncio.Server] = []

    # ------------------------------------------------------------------------------ control

    def faults(self, src: int, dst: int) -> LinkFaults:
        return self._faults.get((src, dst), NO_FAULTS)

    def _matching(self, src: int | None, dst: int | None) -> list[tuple[int, int]]:
        ids = sorted({r.dst for r in self.routes} | set(self.senders.values()) | {ANY})
        return [(s, d) for s in ids for d in ids
                if s != d and (src is None or s == src) and (dst is None or d == dst)]

    def set_faults(self, src: int | None, dst: int | None, faults: LinkFaults) -> None:
        """Set the faults of the links src -> dst (None: every sender or destination)."""
        for link in self._matching(src, dst):
            was_blackholed = self.faults(*link).blackholed
            self._faults[link] = faults
            if was_blackholed and not faults.blackholed:
                self._reset_where(_lost_on(link))

    def clear(self) -> None:
        for link in list(self._faults):
            self.set_faults(link[0], link[1], NO_FAULTS)

    def reset(self, src: int | None, dst: int | None) -> int:
        """Reset (RST) every open connection of the matching links; how many."""
        return self._reset_where(lambda c: (src is None or c.src == src)
                                 and (dst is None or c.dst == dst))

    def _reset_where(self, pred: Callable[[_Conn], bool]) -> int:
        hit = [c for c in self._conns if pred(c)]
        for conn in hit:
            self._abort(conn)
        return len(hit)

    def stats(self) -> dict[str, Any]:
        return {f"{s}->{d}": dataclasses.asdict(st) for (s, d), st in sorted(self._stats.items())}

    # ---------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for route in self.routes:
            server = await asyncio.start_server(self._acceptor(route), route.listen[0],
                                                route.listen[1], reuse_address=True)
            self._servers.append(server)

    def _acceptor(self, route: Route) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                  Coroutine[Any, Any, None]]:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(route, reader, writer)
        return accept

    def bound_port(self, dst: int) -> int:
        """The port the route to `dst` listens on (when configured with port 0)."""
        for route, server in zip(self.routes, self._servers, strict=True):
            if route.dst == dst:
                return int(server.sockets[0].getsockname()[1])
        raise KeyError(dst)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [t for c in self._conns for t in c.tasks]
        for conn in list(self._conns):
            self._abort(conn)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()

    # ---------------------------------------------------------------------------- the data

    async def _accept(self, route: Route, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        src = self.senders.get(str(peer[0]) if peer else "", ANY)
        link = (src, route.dst)
        number = self._conn_numbers.get(link, 0)
        self._conn_numbers[link] = number + 1
        self._stats.setdefault(link, LinkStats()).connections += 1
        conn = _Conn(src, route.dst, number, [writer])
        self._conns.add(conn)
        rng = random.Random(f"{self.seed}/{src}/{route.dst}/{number}")
        try:
            if self.faults(*link).blackholed:
                conn.lost_bytes = True
                await self._discard(conn, reader)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*route.upstream), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self._abort(conn)
                return
            conn.writers.append(up_writer)
            if conn.closed:
                self._abort(conn)
                return
            conn.tasks = [asyncio.create_task(self._pump(conn, "fwd", reader, up_writer, rng)),
                          asyncio.create_task(self._pump(conn, "back", up_reader, writer, rng))]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._abort(conn)

    async def _discard(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        while not conn.closed:
            try:
                data = await reader.read(CHUNK_BYTES_MAX)
            except (OSError, ConnectionError):
                return
            if not data:
                return
            self._stats[(conn.src, conn.dst)].chunks_dropped += 1

    async def _pump(self, conn: _Conn, direction: str, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, rng: random.Random) -> None:
        """Read chunks, decide each chunk's fate, and hand it to a writer that releases the
        chunks in order at their times."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        link = (conn.src, conn.dst)
        stats = self._stats[link]

        async def release() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    with contextlib.suppress(OSError, ConnectionError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                at, data = item
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                while self.faults(*link).stalled and not conn.closed:
                    await asyncio.sleep(0.05)
                if conn.closed:
                    return
                if self.faults(*link).blackholed:
                    conn.lost_bytes = True
                    stats.chunks_dropped += 1
                    continue
                writer.write(data)
                await writer.drain()
                stats.bytes_forwarded += len(data)

        releaser = asyncio.create_task(release())
        last_at = 0.0
        chunk = 0
        try:
            while not conn.closed:
                data = await reader.read(CHUNK_BYTES_MAX)
                if not data:
                    await queue.put(None)
                    break
                faults = self.faults(*link)
                if faults.blackholed:
                    conn.lost_bytes = True
                    stats.chunks_dropped += 1
                    self._note(conn, direction, chunk, "drop", 0.0)
                    chunk += 1
                    continue
                if faults.loss_per_chunk and rng.random() < faults.loss_per_chunk:
                    stats.chunks_dropped += 1
                    self._note(conn, direction, chunk, "reset", 0.0)
                    self._abort(conn)
                    break
                delay_ms = faults.latency_ms + (rng.uniform(0, faults.jitter_ms)
                                                if faults.jitter_ms else 0.0)
                at = max(loop.time() + delay_ms / 1000, last_at)
                if faults.bandwidth_bytes_per_s:
                    key = (conn.src, conn.dst, direction)
                    free_at = max(self._buckets.get(key, 0.0), loop.time())
                    free_at += len(data) / faults.bandwidth_bytes_per_s
                    self._buckets[key] = free_at
                    at = max(at, free_at)
                last_at = at
                self._note(conn, direction, chunk, "forward", round(delay_ms, 3))
                chunk += 1
                await queue.put((at, data))
            await releaser
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            releaser.cancel()
            self._abort(conn)

    def _note(self, conn: _Conn, direction: str, chunk: int, action: str,
              delay_ms: float) -> None:
        if self.record_trace and len(self.trace) < TRACE_ENTRIES_MAX:
            self.trace.append((conn.src, conn.dst, conn.number, direction, chunk, action,
                               delay_ms))

    def _abort(self, conn: _Conn) -> None:
        """Close both ends with RST (SO_LINGER 0): in-flight bytes are lost, as in a reset."""
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        self._stats.setdefault((conn.src, conn.dst), LinkStats()).resets += 1
        for writer in conn.writers:
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current and not task.done():
                task.cancel()


def _lost_on(link: tuple[int, int]) -> Callable[[_Conn], bool]:
    """Connections of `link` whose stream lost bytes (they cannot continue after a heal)."""
    return lambda c: (c.src, c.dst) == link and c.lost_bytes


# ------------------------------------------------------------------------------ control plane

async def handle_command(proxy: FaultProxy, request: dict[str, Any]) -> dict[str, Any]:
    """One control request: set, reset, clear, stats or ping."""
    op = request.get("op")
    if op == "ping":
        return {"ok": True}
    if op == "set":
        proxy.set_faults(request.get("src"), request.get("dst"),
                         LinkFaults.from_json(request.get("faults", {})))
        return {"ok": True}
    if op == "reset":
        return {"ok": True, "reset": proxy.reset(request.get("src"), request.get("dst"))}
    if op == "clear":
        proxy.clear()
        return {"ok": True}
    if op == "stats":
        return {"ok": True, "links": proxy.stats()}
    raise ValueError(f"unknown op {op!r}")


async def serve_control(proxy: FaultProxy, path: Path) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = await handle_command(proxy, json.loads(line))
                except (ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    path.unlink(missing_ok=True)
    return await asyncio.start_unix_server(client, str(path))


class ProxyControl:
    """The harness's side of the control socket (blocking, one request at a time)."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = b""

    def call(self, **request: Any) -> dict[str, Any]:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(self.timeout_s)
            self._sock.connect(str(self.path))
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while b"\n" not in self._buffer:
            data = self._sock.recv(65536)
            if not data:
                self.close()
                raise ConnectionError("the fault proxy closed its control socket")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ValueError(f"fault proxy: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer = b""


# ------------------------------------------------------------------------------------- main

def load_config(path: Path) -> tuple[list[Route], dict[str, int], int]:
    data = json.loads(path.read_text())
    routes = [Route(int(r["dst"]), (str(r["listen"][0]), int(r["listen"][1])),
                    (str(r["upstream"][0]), int(r["upstream"][1]))) for r in data["routes"]]
    return routes, {str(k): int(v) for k, v in data["senders"].items()}, int(data["seed"])


async def _main(config: Path, control: Path) -> None:
    routes, senders, seed = load_config(config)
    proxy = FaultProxy(routes, senders, seed)
    await proxy.start()
    server = await serve_control(proxy, control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await proxy.close()
    control.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m consortium.chaos.proxy",
                                 description="Run the seeded fault proxy until SIGTERM.")
    ap.add_argument("--config", required=True, type=Path,
                    help="JSON: {seed, routes: [{dst, listen, upstream}], senders: {ip: id}}")
    ap.add_argument("--control", required=True, type=Path, help="Unix control socket path")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_main(args.config, args.control))
    except (OSError, ValueError, KeyError) as exc:
        print(f"fault proxy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
