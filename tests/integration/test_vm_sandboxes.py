"""QEMU microVM sandboxes through the server and SDK, incl. pre-booted restores."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerProcess, new_server, shut_down

from atelier import Sandbox
from atelier.images.store import TemplateInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def vm_server(base_template: TemplateInfo, test_data_dir: Path) -> Iterator[ServerProcess]:
    srv = new_server(base_template)
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    kernels = test_data_dir / "kernels"  # fetched once per machine by the qemu tests
    if kernels.is_dir():
        (srv.data_dir / "kernels").symlink_to(kernels)
    srv.start()
    try:
        yield srv
    finally:
        shut_down(srv)


def wait_for(predicate, deadline_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_vm_sandbox_then_prebooted_clone(vm_server: ServerProcess) -> None:
    srv = vm_server
    opts = {"api_url": srv.url, "token": srv.token, "runtime": "qemu", "memory_mib": 256}
    first = Sandbox.create(**opts)
    try:
        info = first.get_info()
        assert info.runtime == "qemu"
        assert info.runtime_info["accel"] in ("kvm", "tcg")  # tcg on a PVM host
        kernel = first.commands.run("uname -r").stdout.strip()
        assert kernel != os.uname().release and "cloud" in kernel  # the guest's own kernel
        assert first.commands.run("hostname").stdout.strip() == first.id
        first.files.write("/home/user/a.txt", "vm")
        assert first.files.read_text("/home/user/a.txt") == "vm"
        preboot = srv.data_dir / "preboot"
        assert wait_for(lambda: any(preboot.glob("*/ready")), 300), srv.log_tail()
        second = Sandbox.create(**opts)
        try:
            assert f"sandbox {second.id} running" in srv.log_file.read_text()
            line = next(
                ln
                for ln in srv.log_file.read_text().splitlines()
                if f"sandbox {second.id} running" in ln
            )
            assert "restore" in line, line
            assert second.commands.run("hostname").stdout.strip() == second.id
            assert second.id in second.files.read_text("/etc/hosts")
            assert not second.files.exists(
                "/home/user/a.txt"
            )  # a clone of the template, not of `first`
            assert second.commands.run("echo clone").stdout == "clone\n"
        finally:
            second.kill()
    finally:
        first.kill()
