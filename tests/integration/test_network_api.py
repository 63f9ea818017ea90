"""Sandbox networks through the API: the request's ``network`` reaches the
runtime (gVisor, and QEMU through a TAP), bad policies are 4xx, nothing is left.

The "outside" is a namespace this module makes (``netns_remote``); traffic
goes nowhere else.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import Sandbox
from atelier.errors import InvalidRequest, ValidationFailed
from atelier.images.store import TemplateInfo
from netns_remote import PORT, TOKEN, Remote, new_net_ids, remote_namespace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(
    base_template: TemplateInfo, test_data_dir: Path
) -> Iterator[tuple[ServerProcess, Remote]]:
    ids = new_net_ids()
    with remote_namespace(ids) as remote:
        server = new_server(
            base_template,
            ATELIER_NETWORK_POOL=ids["pool"],
            ATELIER_NETWORK_NFT_TABLE=ids["table"],
            ATELIER_NETWORK_DNS=json.dumps(["10.255.0.53"]),  # never contacted here
        )
        kernels = test_data_dir / "kernels"  # the QEMU guest kernel, fetched once per machine
        if kernels.is_dir():
            server.data_dir.mkdir(parents=True, exist_ok=True)
            (server.data_dir / "kernels").symlink_to(kernels)
        server.start()
        try:
            yield server, remote
        finally:
            shut_down(server)
            subprocess.run(["nft", "delete", "table", "inet", ids["table"]], capture_output=True)


def _reach(sb: Sandbox, remote: Remote) -> str:
    script = f"exec 3<>/dev/tcp/{remote.ip}/{PORT} && head -n1 <&3"
    result = sb.commands.run(argv=["timeout", "3", "bash", "-c", script], timeout=20)
    return result.stdout.strip() if result.exit_code == 0 else ""


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_the_requested_network_is_what_the_sandbox_gets(
    world: tuple[ServerProcess, Remote],
) -> None:
    server, remote = world
    sdk = {"api_url": server.url, "token": server.token}
    with Sandbox.create(network={"mode": "open"}, **sdk) as sb:
        assert _reach(sb, remote) == TOKEN
        info = sb.get_info().runtime_info["network"]
        assert info["mode"] == "open" and info["address"]
        opened = sb.id
    assert f"atl-{opened}" not in _namespaces()
    allow_other = {"mode": "egress", "allow": ["10.254.254.0/24"]}
    with Sandbox.create(network=allow_other, **sdk) as sb:
        assert _reach(sb, remote) == ""
    with Sandbox.create(network={"mode": "egress", "allow": [remote.subnet]}, **sdk) as sb:
        assert _reach(sb, remote) == TOKEN
    with Sandbox.create(**sdk) as sb:  # the default: no network at all
        assert _reach(sb, remote) == ""
        assert sb.get_info().runtime_info["network"] == {"mode": "none"}


@pytest.mark.slow
def test_a_qemu_sandbox_gets_its_network_through_a_tap(
    world: tuple[ServerProcess, Remote],
) -> None:
    server, remote = world
    sdk = {"api_url": server.url, "token": server.token, "runtime": "qemu", "memory_mib": 256}
    with Sandbox.create(network={"mode": "egress", "allow": [remote.subnet]}, **sdk) as sb:
        info = sb.get_info()
        assert info.runtime == "qemu"
        net = info.runtime_info["network"]
        assert net["mode"] == "egress" and net["address"]
        assert _reach(sb, remote) == TOKEN
        assert "nameserver 10.255.0.53" in sb.files.read_text("/etc/resolv.conf")
        lines = server.log_file.read_text().splitlines()
        line = next(ln for ln in lines if f"sandbox {sb.id} running" in ln)
        assert "boot" in line and "restore" not in line, line
        # no pre-boot is made for (or used by) a networked sandbox
        assert not any((server.data_dir / "qemu").glob("pb-*"))
        vm = sb.id
    assert f"atl-{vm}" not in _namespaces()


def test_bad_network_requests_are_refused_and_leave_nothing(
    world: tuple[ServerProcess, Remote],
) -> None:
    server, _ = world
    sdk = {"api_url": server.url, "token": server.token}
    before = _namespaces()
    with pytest.raises(ValidationFailed):
        Sandbox.create(network={"mode": "bogus"}, **sdk)
    with pytest.raises(InvalidRequest, match="allow"):
        Sandbox.create(network={"mode": "egress", "allow": ["not a cidr!"]}, **sdk)
    with pytest.raises(InvalidRequest, match="allow, deny"):
        Sandbox.create(network={"mode": "none", "allow": ["10.0.0.0/8"]}, **sdk)
    assert _namespaces() == before
