"""The fault proxy on real loopback sockets: what it adds, resets and repeats from a seed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from consortium.chaos.proxy import (
    FaultProxy,
    LinkFaults,
    ProxyControl,
    Route,
    handle_command,
    serve_control,
)

SENDER = 1
DST = 2


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _with_proxy(seed: int, body: Callable[[FaultProxy, int],
                                                Coroutine[Any, Any, None]]) -> FaultProxy:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    proxy = FaultProxy([Route(DST, ("127.0.0.1", 0), ("127.0.0.1", port))],
                       {"127.0.0.1": SENDER}, seed, record_trace=True)
    await proxy.start()
    try:
        await body(proxy, proxy.bound_port(DST))
    finally:
        await proxy.close()
        echo.close()
        await echo.wait_closed()
    return proxy


async def _round_trip(port: int, payload: bytes = b"ping\n") -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert got == payload
        return time.monotonic() - started
    finally:
        writer.close()


def test_no_faults_forwards_bytes_unchanged() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        assert await _round_trip(port, b"x" * 200_000) < 2.0

    proxy = asyncio.run(_with_proxy(1, body))
    assert proxy.stats()[f"{SENDER}->{DST}"]["bytes_forwarded"] >= 400_000


def test_latency_is_added_both_ways() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        baseline = await _round_trip(port)
        proxy.set_faults(SENDER, DST, LinkFaults(latency_ms=150))
        slowed = await _round_trip(port)
        assert slowed >= 0.29, f"round trip {slowed:.3f} s with 150 ms each way"
        assert slowed - baseline >= 0.28
        proxy.set_faults(SENDER, DST, LinkFaults())
        assert await _round_trip(port) < 0.15

    asyncio.run(_with_proxy(1, body))


def test_faults_on_another_link_do_not_apply() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        proxy.set_faults(DST, SENDER, LinkFaults(latency_ms=500))
        assert await _round_trip(port) < 0.3

    asyncio.run(_with_proxy(1, body))


def test_reset_kills_open_connections_with_rst() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a\n")
        await writer.drain()
        assert await reader.readexactly(2) == b"a\n"
        assert proxy.reset(SENDER, DST) == 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        assert await _round_trip(port) < 1.0  # new connections still go through

    asyncio.run(_with_proxy(1, body))


def test_stall_holds_bytes_until_it_ends() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        proxy.set_faults(SENDER, DST, LinkFaults(stalled=True))
        task = asyncio.create_task(_round_trip(port))
        await asyncio.sleep(0.5)
        assert not task.done()
        proxy.set_faults(SENDER, DST, LinkFaults())
        assert await asyncio.wait_for(task, 5) >= 0.5

    asyncio.run(_with_proxy(1, body))


def test_blackhole_discards_then_resets_on_heal() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        proxy.set_faults(SENDER, DST, LinkFaults(blackholed=True))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"lost\n")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(5), 0.5)
        proxy.set_faults(SENDER, DST, LinkFaults())
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(5), 5)
        writer.close()
        assert await _round_trip(port) < 1.0

    proxy = asyncio.run(_with_proxy(1, body))
    assert proxy.stats()[f"{SENDER}->{DST}"]["chunks_dropped"] >= 1


def test_bandwidth_cap_slows_a_transfer() -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        proxy.set_faults(SENDER, DST, LinkFaults(bandwidth_bytes_per_s=200_000))
        took = await _round_trip(port, b"y" * 100_000)
        assert took >= 0.45, f"100 kB at 200 kB/s each way took {took:.3f} s"

    asyncio.run(_with_proxy(1, body))


def _loss_trace(seed: int) -> list[tuple[Any, ...]]:
    async def body(proxy: FaultProxy, port: int) -> None:
        proxy.set_faults(SENDER, DST, LinkFaults(jitter_ms=3, loss_per_chunk=0.2))
        for _ in range(30):
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await asyncio.wait_for(_round_trip(port), 2)

    proxy = asyncio.run(_with_proxy(seed, body))
    return list(proxy.trace)


def test_same_seed_same_decisions_other_seed_others() -> None:
    first, again, other = _loss_trace(7), _loss_trace(7), _loss_trace(8)
    assert any(entry[5] == "reset" for entry in first), "20 % loss over 30 connections"
    assert first == again
    assert first != other


def test_control_socket_round_trip(tmp_path: Path) -> None:
    async def body(proxy: FaultProxy, port: int) -> None:
        path = tmp_path / "control.sock"
        server = await serve_control(proxy, path)
        control = ProxyControl(path)
        try:
            reply = await asyncio.to_thread(control.call, op="set", src=SENDER, dst=None,
                                            faults={"latency_ms": 40})
            assert reply == {"ok": True}
            assert proxy.faults(SENDER, DST).latency_ms == 40
            with pytest.raises(ValueError, match="unknown link fault"):
                await asyncio.to_thread(control.call, op="set", src=1, dst=2,
                                        faults={"latency": 40})
            await asyncio.to_thread(control.call, op="clear")
            assert proxy.faults(SENDER, DST) == LinkFaults()
        finally:
            control.close()
            server.close()

    asyncio.run(_with_proxy(1, body))


def test_bad_commands_are_refused() -> None:
    async def run() -> None:
        proxy = FaultProxy([], {}, 1)
        with pytest.raises(ValueError, match="unknown op"):
            await handle_command(proxy, {"op": "explode"})
        with pytest.raises(ValueError, match="out of range"):
            await handle_command(proxy, {"op": "set", "faults": {"loss_per_chunk": 2}})

    asyncio.run(run())
