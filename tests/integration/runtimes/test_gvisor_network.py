"""Sandbox networking with the real runsc, ip and nft: what a sandbox can reach.

Every test uses its own nftables table, address pool and "remote" network
namespace (``atltest-<rand>``: a veth into the root namespace on a test-only
subnet, with TCP servers in it). Traffic goes only to loopback and to
addresses inside namespaces the test made. Everything made is removed in
finally blocks / fixture teardown, and checked to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.images.store import TemplateInfo
from atelier.network import NetworkPolicy, firewall, netns
from atelier.runtimes.base import SandboxSpec
from atelier.runtimes.gvisor import GVisorRuntime, layers
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

pytestmark = pytest.mark.integration

SLEEP_INIT = ["/bin/sh", "-c", "exec sleep infinity"]

Make = Callable[..., Awaitable[SandboxSpec]]


@pytest.fixture(scope="module")
def net_ids() -> dict[str, str]:
    return new_net_ids()


@pytest.fixture(scope="module")
def remote(net_ids: dict[str, str]) -> Iterator[Remote]:
    with remote_namespace(net_ids) as r:
        yield r


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atl-gn-", dir="/var/tmp"))
    yield path
    if not layers.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(data_dir: Path, net_ids: dict[str, str]) -> Settings:
    return Settings(
        data_dir=data_dir,
        network_pool=net_ids["pool"],
        network_nft_table=net_ids["table"],
        network_dns=["10.255.0.53"],  # never contacted by these tests
    )


@pytest.fixture
async def runtime(settings: Settings, remote: Remote) -> AsyncIterator[GVisorRuntime]:
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
        # the table is the test's own: remove it whatever happened
        subprocess.run(
            ["nft", "delete", "table", "inet", settings.network_nft_table], capture_output=True
        )


@pytest.fixture
async def make(runtime: GVisorRuntime, base_template: TemplateInfo) -> AsyncIterator[Make]:
    made: list[str] = []

    async def factory(network: NetworkPolicy | None, **kw: Any) -> SandboxSpec:
        sid = kw.pop("sandbox_id", None) or f"n-{uuid.uuid4().hex[:10]}"
        spec = SandboxSpec(
            sandbox_id=sid,
            template="test",
            rootfs=base_template.rootfs,
            network=network,
            **kw,
        )
        made.append(sid)
        await runtime.create(spec)
        await runtime.start(sid)
        return spec

    try:
        yield factory
    finally:
        for sid in made:
            await runtime.destroy(sid)
            await assert_no_network_trace(runtime, sid)


async def assert_no_network_trace(rt: GVisorRuntime, sid: str) -> None:
    mgr = rt.network
    host_if = mgr.host_ifname(sid)
    assert not netns.exists(netns.netns_name(sid)), "netns left behind"
    assert not netns.link_exists(host_if), "veth left behind"
    assert sid not in mgr.ipam.leases(), "lease left behind"
    names = await firewall.list_ifnames(mgr.firewall.table)
    assert host_if not in (names or set()), "nftables objects left behind"


def policy(mode: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> NetworkPolicy:
    return NetworkPolicy(mode=mode, allow=allow, deny=deny)  # type: ignore[arg-type]


async def reach(rt: GVisorRuntime, sid: str, ip: str, port: int = PORT) -> str:
    """What a TCP connect from inside the sandbox reads ('' = not reachable)."""
    script = f"exec 3<>/dev/tcp/{ip}/{port} && head -n1 <&3"
    res = await rt.exec(sid, ["timeout", "3", "bash", "-c", script], timeout=20)
    return res.stdout.strip() if res.returncode == 0 else ""


# -- tests ------------------------------------------------------------------------


async def test_open_mode_reaches_outside_but_not_host_or_other_sandboxes(
    runtime: GVisorRuntime, make: Make, remote: Remote
) -> None:
    a = await make(policy("open"))
    b = await make(policy("open"))
    info_a = runtime.network.info(a.sandbox_id)
    info_b = runtime.network.info(b.sandbox_id)
    assert info_a is not None and info_b is not None
    assert info_a.address != info_b.address
    assert await reach(runtime, a.sandbox_id, remote.ip) == TOKEN

    # the host's services: its loopback and the host side of the sandbox's veth
    servers = [HostServer("127.0.0.1", "host-lo"), HostServer(str(info_a.gateway), "host-gw")]
    try:
        assert await reach(runtime, a.sandbox_id, "127.0.0.1", servers[0].port) == ""
        assert await reach(runtime, a.sandbox_id, str(info_a.gateway), servers[1].port) == ""
        assert servers[0].hits == servers[1].hits == 0
        # ... which the host itself does reach (the servers work)
        with socket.create_connection((str(info_a.gateway), servers[1].port), timeout=3) as c:
            assert c.recv(64).strip() == b"host-gw"
    finally:
        for s in servers:
            s.close()

    # another sandbox: a server inside b answers b itself, never a
    serve = (
        f"nohup python3 -c '{SERVER_SCRIPT}' {info_b.address} {PORT} sandbox-b "
        ">/dev/null 2>&1 </dev/null &"
    )
    res = await runtime.exec(b.sandbox_id, ["/bin/sh", "-c", serve])
    assert res.returncode == 0, res.stderr
    for _ in range(50):
        if await reach(runtime, b.sandbox_id, str(info_b.address)) == "sandbox-b":
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the server inside sandbox b did not answer b")
    assert await reach(runtime, a.sandbox_id, str(info_b.address)) == ""


async def test_egress_allow_and_deny_lists(
    runtime: GVisorRuntime, make: Make, remote: Remote
) -> None:
    allowed = await make(policy("egress", allow=(f"{remote.ip}/32",)))
    other = await make(policy("egress", allow=(str(ipaddress.IPv4Address(remote.ip) + 50),)))
    denied = await make(policy("egress", allow=(remote.subnet,), deny=(remote.ip,)))
    assert await reach(runtime, allowed.sandbox_id, remote.ip) == TOKEN
    assert await reach(runtime, other.sandbox_id, remote.ip) == ""
    assert await reach(runtime, denied.sandbox_id, remote.ip) == ""
    # the sandbox's resolv.conf names the configured resolver
    res = await runtime.exec(allowed.sandbox_id, ["cat", "/etc/resolv.conf"])
    assert "nameserver 10.255.0.53" in res.stdout


async def test_none_mode_has_only_loopback(
    runtime: GVisorRuntime, make: Make, remote: Remote
) -> None:
    spec = await make(None)
    res = await runtime.exec(spec.sandbox_id, ["cat", "/proc/net/route", "/proc/net/dev"])
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Iface")
    devices = [ln.split(":")[0].strip() for ln in lines if ":" in ln and "|" not in ln]
    assert devices == ["lo"], res.stdout
    routes = [ln for ln in lines[1:] if ln.split() and not ln.startswith(("Inter-", " face"))]
    assert not [r for r in routes if ":" not in r], f"routes in a none sandbox: {routes}"
    assert await reach(runtime, spec.sandbox_id, remote.ip) == ""
    assert runtime.network.info(spec.sandbox_id) is None
    assert not netns.exists(netns.netns_name(spec.sandbox_id))


async def test_network_survives_stop_and_start(
    runtime: GVisorRuntime, make: Make, remote: Remote
) -> None:
    spec = await make(policy("open"))
    before = runtime.network.info(spec.sandbox_id)
    await runtime.stop(spec.sandbox_id)
    await runtime.start(spec.sandbox_id)  # runsc stripped the address: it is re-added
    assert runtime.network.info(spec.sandbox_id) == before
    assert await reach(runtime, spec.sandbox_id, remote.ip) == TOKEN


async def test_reconcile_removes_leftovers_of_a_killed_runtime(
    runtime: GVisorRuntime, make: Make, remote: Remote, settings: Settings
) -> None:
    mgr = runtime.network
    # a sandbox network whose sandbox is gone (the runtime died mid-create)
    ghost = f"g-{uuid.uuid4().hex[:8]}"
    info = await mgr.setup(ghost, policy("open"))
    assert info.netns_path is not None and info.netns_path.exists()
    assert ghost in await runtime.list_ids()  # the server's reconciler sees it ...
    await runtime.destroy(ghost)  # ... and destroying it removes the network
    await assert_no_network_trace(runtime, ghost)

    # a running sandbox whose runsc processes were killed; reconcile without it
    spec = await make(policy("open"))
    sid = spec.sandbox_id
    await runtime.runsc.kill(runtime.files(sid).cid, "KILL", check=False)
    stray = mgr.host_ifname("atl-stray")
    await firewall.apply(
        firewall.base_script(mgr.firewall)
        + firewall.sandbox_script(mgr.firewall, firewall.SandboxRules(stray, "open"))
    )
    removed = await mgr.reconcile(known_ids=[])
    assert removed == [sid]
    await assert_no_network_trace(runtime, sid)
    names = await firewall.list_ifnames(mgr.firewall.table)
    assert stray not in (names or set())
    # a second pass finds nothing; the rest of the sandbox is still destroyable
    assert await mgr.reconcile(known_ids=[]) == []
