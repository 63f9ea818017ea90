"""Bandwidth limits and the DNS forwarder, with the real runsc, ip, tc and nft.

Like test_gvisor_network.py: an own nftables table, address pool and "remote"
namespace (``netns_remote``); traffic goes only to loopback and into
namespaces this module made. Speeds are not asserted (bench/network.py
measures them): the tests check that the qdiscs are there, that the
sandbox's packets go through them, and that they vanish with the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.images.store import TemplateInfo
from atelier.network import NetworkPolicy, bandwidth, firewall, netns
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import GVisorRuntime, layers
from ci_support import skip_unless_ci
from fake_dns import FakeDns
from netns_remote import PORT, TOKEN, Remote, new_net_ids, remote_namespace

pytestmark = pytest.mark.integration

SLEEP_INIT = ["/bin/sh", "-c", "exec sleep infinity"]

Make = Callable[..., Awaitable[SandboxSpec]]


@pytest.fixture(scope="module")
def net_ids() -> dict[str, str]:
    return new_net_ids()


@pytest.fixture(scope="module")
def remote(net_ids: dict[str, str]) -> Iterator[Remote]:
    if shutil.which("tc") is None:
        skip_unless_ci("tc (iproute2) is not installed")
    with remote_namespace(net_ids) as r:
        yield r


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atl-nx-", dir="/var/tmp"))
    yield path
    if not layers.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(data_dir: Path, net_ids: dict[str, str]) -> Settings:
    return Settings(
        data_dir=data_dir,
        network_pool=net_ids["pool"],
        network_nft_table=net_ids["table"],
        network_dns=["10.255.0.53"],  # never contacted by the bandwidth tests
    )


@contextlib.asynccontextmanager
async def gvisor(settings: Settings) -> AsyncIterator[GVisorRuntime]:
    rt = GVisorRuntime(settings, init_argv=SLEEP_INIT)
    status = rt.availability()
    if not status.available:
        skip_unless_ci(f"gvisor runtime unavailable: {status.reason}")
    try:
        yield rt
    finally:
        for sid in await rt.list_ids():
            with contextlib.suppress(Exception):
                await rt.destroy(sid)
        await rt.network.aclose()
        subprocess.run(
            ["nft", "delete", "table", "inet", settings.network_nft_table], capture_output=True
        )


@pytest.fixture
async def runtime(settings: Settings, remote: Remote) -> AsyncIterator[GVisorRuntime]:
    async with gvisor(settings) as rt:
        yield rt


async def start(rt: GVisorRuntime, template: TemplateInfo, network: NetworkPolicy) -> str:
    sid = f"x-{uuid.uuid4().hex[:10]}"
    spec = SandboxSpec(sandbox_id=sid, template="test", rootfs=template.rootfs, network=network)
    await rt.create(spec)
    await rt.start(sid)
    return sid


async def assert_no_network_trace(rt: GVisorRuntime, sid: str) -> None:
    mgr = rt.network
    host_if = mgr.host_ifname(sid)
    assert not netns.exists(netns.netns_name(sid)), "netns left behind"
    assert not netns.link_exists(host_if), "veth left behind"
    assert await bandwidth.qdiscs(host_if) == [], "qdisc left behind"
    assert sid not in mgr.ipam.leases(), "lease left behind"
    assert host_if not in (await firewall.list_ifnames(mgr.firewall.table) or set())


def _tbf(qdiscs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((q for q in qdiscs if q.get("kind") == "tbf" and q.get("root")), None)


SINK_PORT = 8799
SINK = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
while True:
    c, _ = s.accept()
    n = 0
    while (d := c.recv(65536)):
        n += len(d)
    c.sendall(str(n).encode())
    c.close()
"""
UPLOAD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(b"x" * int(sys.argv[3]))
s.shutdown(socket.SHUT_WR)
print(s.recv(64).decode())
"""


@pytest.fixture
def sink(remote: Remote) -> Iterator[None]:
    """A TCP server in the remote namespace that counts what it receives."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", remote.name, sys.executable, "-c", SINK, remote.ip,
         str(SINK_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            out = subprocess.run(
                ["ip", "netns", "exec", remote.name, "ss", "-Hltn", f"sport = :{SINK_PORT}"],
                capture_output=True, text=True,
            ).stdout  # fmt: skip
            if out.strip():
                break
            time.sleep(0.05)
        yield
    finally:
        proc.kill()
        proc.wait()


async def test_bandwidth_limits_are_qdiscs_the_traffic_goes_through(
    runtime: GVisorRuntime, base_template: TemplateInfo, remote: Remote, sink: None
) -> None:
    policy = NetworkPolicy(mode="open", egress_mbit=20, ingress_mbit=10)
    sid = await start(runtime, base_template, policy)
    try:
        info = runtime.network.info(sid)
        assert info is not None and info.netns and info.host_ifname
        down = _tbf(await bandwidth.qdiscs(info.host_ifname))
        up = _tbf(await bandwidth.qdiscs(netns.GUEST_IFNAME, info.netns))
        assert down is not None and down["options"]["rate"] == 10_000_000 // 8
        assert up is not None and up["options"]["rate"] == 20_000_000 // 8
        up_before, down_before = up["bytes"], down["bytes"]

        # 1 MB over TCP out of the sandbox, and a TCP greeting into it
        argv = ["python3", "-c", UPLOAD, remote.ip, str(SINK_PORT), str(1_000_000)]
        res = await runtime.exec(sid, argv, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() == "1000000", res.stderr
        script = f"exec 3<>/dev/tcp/{remote.ip}/{PORT} && head -n1 <&3"
        res = await runtime.exec(sid, ["timeout", "5", "bash", "-c", script], timeout=30)
        assert res.stdout.strip() == TOKEN

        up = _tbf(await bandwidth.qdiscs(netns.GUEST_IFNAME, info.netns))
        down = _tbf(await bandwidth.qdiscs(info.host_ifname))
        assert up is not None and down is not None
        assert up["bytes"] - up_before >= 1_000_000  # gVisor's frames go through the qdisc
        assert down["bytes"] > down_before

        # a restart re-applies them (runsc strips the namespace side at start)
        await runtime.stop(sid)
        await runtime.start(sid)
        assert _tbf(await bandwidth.qdiscs(netns.GUEST_IFNAME, info.netns)) is not None
        assert _tbf(await bandwidth.qdiscs(info.host_ifname)) is not None
    finally:
        await runtime.destroy(sid)
    await assert_no_network_trace(runtime, sid)


async def test_no_limit_no_qdisc(
    runtime: GVisorRuntime, base_template: TemplateInfo, remote: Remote
) -> None:
    sid = await start(runtime, base_template, NetworkPolicy(mode="open"))
    try:
        info = runtime.network.info(sid)
        assert info is not None and info.host_ifname and info.netns
        assert _tbf(await bandwidth.qdiscs(info.host_ifname)) is None
        assert _tbf(await bandwidth.qdiscs(netns.GUEST_IFNAME, info.netns)) is None
    finally:
        await runtime.destroy(sid)
    await assert_no_network_trace(runtime, sid)


# -- DNS forwarder (a host whose resolv.conf names only a loopback stub) ---------------
TCP_QUERY = """
import socket, struct, sys
name = sys.argv[2]
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0"
q += struct.pack("!HH", 1, 1)
s = socket.create_connection((sys.argv[1], 53), timeout=10)
s.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", s.recv(2))[0]
a = b""
while len(a) < n:
    a += s.recv(n - len(a))
print(socket.inet_ntoa(a[-4:]))
"""


class _HostServer:
    """A TCP server on this host that greets with a token (must stay unreachable)."""

    def __init__(self, addr: str) -> None:
        self.sock = socket.create_server((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.sendall(b"host-service\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _lo_addresses() -> set[str]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    return {a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])}


async def test_dns_forwarder_for_a_loopback_stub_resolver(
    base_template: TemplateInfo, remote: Remote, net_ids: dict[str, str], data_dir: Path
) -> None:
    stub = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    upstream = FakeDns(stub, 53, {"remote.atelier.test": remote.ip})
    host_resolv = data_dir / "host-resolv.conf"
    host_resolv.write_text(f"# a systemd-resolved-like host\nnameserver {stub}\n")
    settings = Settings(
        data_dir=data_dir,
        network_pool=net_ids["pool"],
        network_nft_table=net_ids["table"],
        network_resolv_conf=host_resolv,
    )
    host_service: _HostServer | None = None
    try:
        async with gvisor(settings) as rt:
            # egress: only the remote's address is allowed, DNS works all the same
            policy = NetworkPolicy(mode="egress", allow=(f"{remote.ip}/32",))
            sid = await start(rt, base_template, policy)
            fwd = str(rt.network.dns_address)
            assert fwd in _lo_addresses()
            res = await rt.exec(sid, ["cat", "/etc/resolv.conf"])
            assert f"nameserver {fwd}" in res.stdout and stub not in res.stdout

            res = await rt.exec(sid, ["getent", "ahostsv4", "remote.atelier.test"], timeout=30)
            assert res.returncode == 0 and remote.ip in res.stdout, res.stderr
            script = f"exec 3<>/dev/tcp/remote.atelier.test/{PORT} && head -n1 <&3"
            res = await rt.exec(sid, ["timeout", "10", "bash", "-c", script], timeout=30)
            assert res.stdout.strip() == TOKEN  # by name, through the forwarder
            res = await rt.exec(sid, ["python3", "-c", TCP_QUERY, fwd, "remote.atelier.test"])
            assert res.stdout.strip() == remote.ip, res.stderr  # DNS over TCP too
            res = await rt.exec(sid, ["getent", "ahostsv4", "unknown.atelier.test"], timeout=30)
            assert res.returncode != 0
            assert {"remote.atelier.test", "unknown.atelier.test"} <= set(upstream.queries)

            # the forwarder's address serves DNS only: another service there is out of reach
            host_service = _HostServer(fwd)
            script = f"exec 3<>/dev/tcp/{fwd}/{host_service.port} && head -n1 <&3"
            res = await rt.exec(sid, ["timeout", "3", "bash", "-c", script], timeout=20)
            assert res.returncode != 0 and host_service.hits == 0
            await rt.destroy(sid)
            await assert_no_network_trace(rt, sid)
        # the forwarder stopped with the manager, its address is gone from lo
        assert fwd not in _lo_addresses()
    finally:
        if host_service is not None:
            host_service.close()
        upstream.close()
