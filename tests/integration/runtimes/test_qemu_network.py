"""QEMU sandboxes with a network: the real QEMU (TCG here), ip, nft and the
gVisor runtime's NetworkManager, through a TAP device in the sandbox's netns.

Like test_gvisor_network.py, each module uses its own nftables table, address
pool and "remote" namespace (``atltest-<rand>``) with TCP servers; traffic
goes only to loopback and to addresses inside namespaces the test made.
Every sandbox is destroyed (or crashed and reconciled) and checked to leave
no QEMU process, netns (with its tap and bridge), veth, lease or nft objects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from atelier.config import Settings
from atelier.core.agent_client import AgentClient
from atelier.errors import InvalidRequest
from atelier.images.store import TemplateInfo
from atelier.network import NetworkPolicy, firewall, netns
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.qemu import QemuRuntime
from atelier.runtimes.qemu.process import find_processes, read_pid
from ci_support import skip_unless_ci
from netns_remote import (
    PORT,
    SERVER_SCRIPT,
    TOKEN,
    HostServer,
    Remote,
    new_net_ids,
    remote_namespace,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

BOOT_TIMEOUT = 300.0  # cold boot to agent ready under TCG on a loaded host
DNS = "10.255.0.53"  # named in resolv.conf, never contacted

# What a TCP connect from inside the guest reads ('' = not reachable).
REACH = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:
        print(c.recv(64).decode().strip())
except OSError:
    pass
"""
# The guest's source address towards an address (a UDP connect sends nothing).
SOURCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 9))
print(s.getsockname()[0])
"""


@pytest.fixture(scope="module")
def net_ids() -> dict[str, str]:
    return new_net_ids()


@pytest.fixture(scope="module")
def remote(net_ids: dict[str, str]) -> Iterator[Remote]:
    with remote_namespace(net_ids) as r:
        yield r


@pytest.fixture(scope="module")
def denied_remote(remote: Remote) -> Iterator[str]:
    """A second address in the remote namespace, with its own server (denied by policy)."""
    ip = str(ipaddress.IPv4Address(remote.ip) + 10)
    subprocess.run(
        ["ip", "-n", remote.name, "addr", "add", f"{ip}/24", "dev", "eth0"],
        check=True,
        capture_output=True,
    )
    argv = [sys.executable, "-c", SERVER_SCRIPT, ip, str(PORT), "denied-ok"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", remote.name, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # the host reaches it: the server works
            with (
                contextlib.suppress(OSError),
                socket.create_connection((ip, PORT), timeout=3) as conn,
            ):
                if conn.recv(64).strip() == b"denied-ok":
                    break
            threading.Event().wait(0.05)
        else:
            raise AssertionError(f"the server on {ip} did not answer the host")
        yield ip
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def settings(test_data_dir: Path, net_ids: dict[str, str]) -> Iterator[Settings]:
    path = Path(tempfile.mkdtemp(prefix="atl-qn-", dir="/var/tmp"))
    shared = test_data_dir / "kernels"
    shared.mkdir(parents=True, exist_ok=True)
    (path / "kernels").symlink_to(shared)  # the guest kernel: fetched once per machine
    yield Settings(
        data_dir=path,
        network_pool=net_ids["pool"],
        network_nft_table=net_ids["table"],
        network_dns=[DNS],
    )
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def runtime(settings: Settings, remote: Remote) -> AsyncIterator[QemuRuntime]:
    rt = QemuRuntime(settings)
    status = rt.availability()
    if not status.available:
        skip_unless_ci(f"qemu runtime unavailable: {status.reason}")
    try:
        yield rt
    finally:
        for sid in await rt.list_ids():
            with contextlib.suppress(Exception):
                await rt.destroy(sid)
        await rt.aclose()
        subprocess.run(
            ["nft", "delete", "table", "inet", settings.network_nft_table], capture_output=True
        )


def new_spec(rootfs: Path, network: NetworkPolicy | None) -> SandboxSpec:
    sid = f"qn-{uuid.uuid4().hex[:10]}"
    return SandboxSpec(
        sandbox_id=sid,
        template="base",
        rootfs=rootfs,
        memory_mib=256,
        disk_mib=1024,
        hostname=sid,
        network=network,
    )


async def run(agent: AgentClient, *argv: str) -> str:
    result = await agent.run(argv=list(argv), user="root", timeout=120)
    assert result.exit_code == 0, (argv, result.stdout, result.stderr)
    return result.stdout.decode().strip()


async def reach(agent: AgentClient, ip: str, port: int = PORT) -> str:
    return await run(agent, "python3", "-c", REACH, ip, str(port))


async def assert_no_trace(rt: QemuRuntime, sid: str) -> None:
    mgr = rt.network
    host_if = mgr.host_ifname(sid)
    assert find_processes(str(rt.files(sid).base) + "/") == [], "a QEMU process is left"
    assert not rt.files(sid).base.exists(), "sandbox dir left behind"
    assert not netns.exists(netns.netns_name(sid)), "netns (tap, bridge) left behind"
    assert not netns.link_exists(host_if), "veth left behind"
    assert sid not in mgr.ipam.leases(), "lease left behind"
    names = await firewall.list_ifnames(mgr.firewall.table)
    assert host_if not in (names or set()), "nftables objects left behind"


def ns_links(name: str) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", name, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


async def test_egress_through_a_tap(
    runtime: QemuRuntime,
    base_template: TemplateInfo,
    remote: Remote,
    denied_remote: str,
    settings: Settings,
) -> None:
    policy = NetworkPolicy(mode="egress", allow=(remote.subnet,), deny=(f"{denied_remote}/32",))
    spec = new_spec(base_template.rootfs, policy)
    sid = spec.sandbox_id
    crashed = False
    try:
        await runtime.create(spec)
        await runtime.start(sid)
        info = runtime.network.info(sid)
        assert info is not None and info.netns is not None
        assert {"eth0", "br0", "tap0"} <= ns_links(info.netns)
        # the namespace's end of the veth has no address: the guest has it
        addrs = subprocess.run(
            ["ip", "-n", info.netns, "-4", "-o", "addr", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert addrs.strip() == ""
        servers = [HostServer("127.0.0.1", "host-lo"), HostServer(str(info.gateway), "host-gw")]
        try:
            async with await AgentClient.connect(
                runtime.agent_socket(sid), timeout=BOOT_TIMEOUT
            ) as agent:
                assert await run(agent, "python3", "-c", SOURCE, remote.ip) == str(info.address)
                assert await reach(agent, remote.ip) == TOKEN
                assert await reach(agent, denied_remote) == ""
                assert await reach(agent, "127.0.0.1", servers[0].port) == ""
                assert await reach(agent, str(info.gateway), servers[1].port) == ""
                assert servers[0].hits == servers[1].hits == 0
                assert f"nameserver {DNS}" in await run(agent, "cat", "/etc/resolv.conf")
        finally:
            for s in servers:
                s.close()
        # memory state of a networked VM is refused, and the VM keeps running
        with pytest.raises(InvalidRequest, match="network"):
            await runtime.hibernate(sid)
        with pytest.raises(InvalidRequest, match="network"):
            await runtime.snapshot(sid, Path(settings.data_dir) / "snap")
        # stop + start: the same address, reachable again
        await runtime.stop(sid)
        await runtime.start(sid)
        assert runtime.network.info(sid) == info
        async with await AgentClient.connect(
            runtime.agent_socket(sid), timeout=BOOT_TIMEOUT
        ) as agent:
            assert await reach(agent, remote.ip) == TOKEN
        # a crash: QEMU killed, the server gone; a new runtime finds and removes all
        pid = read_pid(runtime.files(sid).pidfile)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        crashed = True
        after = QemuRuntime(settings)
        assert sid in await after.list_ids()
        await after.destroy(sid)
        await assert_no_trace(after, sid)
        await after.aclose()
    finally:
        if not crashed:
            await runtime.destroy(sid)
            await assert_no_trace(runtime, sid)


async def test_mode_none_has_no_nic(
    runtime: QemuRuntime, base_template: TemplateInfo, remote: Remote
) -> None:
    spec = new_spec(base_template.rootfs, None)
    sid = spec.sandbox_id
    try:
        await runtime.create(spec)
        await runtime.start(sid)
        async with await AgentClient.connect(
            runtime.agent_socket(sid), timeout=BOOT_TIMEOUT
        ) as agent:
            assert (await run(agent, "ls", "/sys/class/net")).split() == ["lo"]
            assert await reach(agent, remote.ip) == ""
        assert runtime.network.info(sid) is None
        assert not netns.exists(netns.netns_name(sid))
        assert runtime.info(sid)["network"] == {"mode": "none"}
    finally:
        await runtime.destroy(sid)
        await assert_no_trace(runtime, sid)
