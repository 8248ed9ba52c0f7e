"""The namespaces of a run: hosts reach each other over the bridge, a link taken down cuts a
host off, the root namespace never changes, and leftovers are removed by prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.chaos import harness, netns, pg

UNAVAILABLE = netns.ip_available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None,
                                reason=f"needs root and `ip netns`: {UNAVAILABLE}")

CONNECT = ("import socket, sys\n"
           "s = socket.socket(); s.settimeout(1.5)\n"
           "sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) in (0, 111) else 1)\n")
"""Exit 0 when the address answers (accepting, or refusing with RST: it is reachable)."""


def root_namespace() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    return links, routes


def reachable(host: netns.Host, address: str) -> bool:
    return subprocess.run([*host.exec_prefix(), sys.executable, "-c", CONNECT, address, "9"],
                          timeout=10).returncode == 0


def test_hosts_reach_each_other_and_a_downed_link_cuts_one_off() -> None:
    before = root_namespace()
    topo = netns.Topology(f"tl{os.getpid()}", ["v0", "v1", "client"])
    topo.create()
    try:
        assert root_namespace() == before, "nothing appears in the root namespace"
        v0, v1 = topo.hosts["v0"], topo.hosts["v1"]
        assert (v0.address, v1.address) == (netns.host_address(0), netns.host_address(1))
        assert reachable(v0, v1.address) and reachable(topo.hosts["client"], v0.address)
        assert reachable(v0, netns.HUB_ADDRESS)
        topo.set_link("v1", False)
        assert not topo.link_is_up("v1")
        assert not reachable(v0, v1.address)
        assert reachable(v0, netns.HUB_ADDRESS), "only v1 is cut off"
        topo.set_link("v1", True)
        assert topo.link_is_up("v1") and reachable(v0, v1.address)
        names = set(netns.stale_namespaces(topo.prefix))
        assert names == {topo.hub, v0.namespace, v1.namespace, topo.hosts["client"].namespace}
    finally:
        topo.destroy()
    assert netns.stale_namespaces(topo.prefix) == []
    assert root_namespace() == before


def test_cleanup_removes_a_dead_runs_namespaces_mounts_and_directory() -> None:
    workdir = Path("/tmp")
    prefix = f"{netns.PREFIX}zz{os.getpid()}"
    topo = netns.Topology(f"zz{os.getpid()}", ["v0"])
    topo.create()
    run_dir = workdir / f"{prefix}-run"
    mount = run_dir / "hosts" / "v0" / "pg" / "fs"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    # a process left running inside the namespace, as a crashed run would leave it
    leftover = subprocess.Popen([*topo.hosts["v0"].exec_prefix(), "sleep", "300"])
    try:
        removed = harness.cleanup_stale(workdir, prefix)
        assert set(removed["namespaces"]) == {topo.hub, topo.hosts["v0"].namespace}
        assert removed["mounts"] == [str(mount)]
        assert removed["dirs"] == [str(run_dir)]
        assert leftover.wait(timeout=10) != 0
        assert not pg.is_mounted(mount) and not run_dir.exists()
        assert netns.stale_namespaces(prefix) == []
    finally:
        leftover.kill()
        topo.destroy()
        if pg.is_mounted(mount):
            pg.unmount(mount)
