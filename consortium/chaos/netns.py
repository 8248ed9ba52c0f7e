"""Hosts as network namespaces: a hub namespace with a bridge, one namespace per host, veth
pairs between them.

Everything a run creates carries its prefix (`cchaos-<run>-`), so a run that died can be
cleaned by prefix. The root namespace is never changed: each veth pair is created inside the
hub namespace with its peer end born directly in the host's namespace (`ip -n HUB link add ...
peer ... netns HOST`), so no interface or route ever appears in the root namespace. The harness
reaches a namespace only through `ip netns exec` subprocesses and Unix sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

PREFIX = "cchaos-"
SUBNET = ipaddress.ip_network("10.77.0.0/24")
"""The private subnet inside every run's own bridge. Each run has its own hub namespace, so
concurrent runs can use the same subnet without meeting."""
HUB_ADDRESS = "10.77.0.1"
HOST_ADDRESS_BASE = 10
"""Validator i is 10.77.0.(10+i); the client host is 10.77.0.200."""
CLIENT_ADDRESS = "10.77.0.200"
BRIDGE = "br0"
HOST_IFACE = "eth0"
COMMAND_TIMEOUT_S = 20.0


class NetnsError(RuntimeError):
    """An `ip` command failed (the message names the command and its stderr)."""


def ip_available() -> str | None:
    """None when this process can create namespaces, else why not (for skips and errors)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        _ip(["netns", "add", probe])
    except NetnsError as exc:
        return f"`ip netns add` fails here: {exc}"
    _ip(["netns", "del", probe], check=False)
    return None


def _ip(args: Sequence[str], *, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def host_address(index: int) -> str:
    return str(SUBNET.network_address + HOST_ADDRESS_BASE + index)


@dataclass
class Host:
    """One host: its namespace, its address and the hub-side end of its veth pair."""

    name: str
    namespace: str
    address: str
    hub_iface: str

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it on this host."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass
class Topology:
    """The namespaces of one run. `create()` builds them, `destroy()` removes them (also what
    a failed `create()` left)."""

    run_id: str
    host_names: list[str]
    hub: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    _created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hub = f"{PREFIX}{self.run_id}-hub"

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.run_id}-"

    def create(self) -> None:
        try:
            self._add_namespace(self.hub)
            _ip(["-n", self.hub, "link", "set", "lo", "up"])
            _ip(["-n", self.hub, "link", "add", BRIDGE, "type", "bridge"])
            _ip(["-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/{SUBNET.prefixlen}",
                 "dev", BRIDGE])
            _ip(["-n", self.hub, "link", "set", BRIDGE, "up"])
            for index, name in enumerate(self.host_names):
                address = CLIENT_ADDRESS if name == "client" else host_address(index)
                host = Host(name, f"{self.prefix}{name}", address, f"vh{index}")
                self._add_namespace(host.namespace)
                _ip(["-n", host.namespace, "link", "set", "lo", "up"])
                _ip(["-n", self.hub, "link", "add", host.hub_iface, "type", "veth", "peer",
                     "name", HOST_IFACE, "netns", host.namespace])
                _ip(["-n", self.hub, "link", "set", host.hub_iface, "master", BRIDGE])
                _ip(["-n", self.hub, "link", "set", host.hub_iface, "up"])
                _ip(["-n", host.namespace, "addr", "add", f"{address}/{SUBNET.prefixlen}",
                     "dev", HOST_IFACE])
                _ip(["-n", host.namespace, "link", "set", HOST_IFACE, "up"])
                self.hosts[name] = host
        except BaseException:
            self.destroy()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip(["netns", "add", name])
        self._created.append(name)

    def set_link(self, name: str, up: bool) -> None:
        """Take a host's link to the bridge down (a partition: nothing in or out) or up."""
        host = self.hosts[name]
        _ip(["-n", host.namespace, "link", "set", HOST_IFACE, "up" if up else "down"])

    def link_is_up(self, name: str) -> bool:
        """Whether the host's link is administratively up (the flag `set_link` changes)."""
        out = _ip(["-n", self.hosts[name].namespace, "-o", "link", "show", HOST_IFACE])
        flags = out.partition("<")[2].partition(">")[0].split(",")
        return "UP" in flags

    def destroy(self) -> None:
        for namespace in reversed(self._created):
            remove_namespace(namespace)
        self._created.clear()
        self.hosts.clear()


def namespace_pids(namespace: str) -> list[int]:
    out = _ip(["netns", "pids", namespace], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def remove_namespace(namespace: str, grace_s: float = 3.0) -> None:
    """Kill whatever still runs in the namespace (SIGTERM, then SIGKILL), then delete it (its
    veth ends and bridge go with it)."""
    pids = namespace_pids(namespace)
    for sig in (signal.SIGCONT, signal.SIGTERM):  # a stopped process cannot handle SIGTERM
        for pid in pids:
            _signal(pid, sig)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = namespace_pids(namespace)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while namespace_pids(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)
    _ip(["netns", "del", namespace], check=False)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stale_namespaces(prefix: str = PREFIX) -> list[str]:
    out = _ip(["netns", "list"], check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))
