"""The firecracker runtime against a real Firecracker and KVM.

Runs only where the runtime says it is available (a firecracker binary that
answers ``--version`` and a KVM that can boot a standard guest) *and* the
guest pieces exist: a ``vmlinux`` (``ATELIER_FIRECRACKER_KERNEL`` or the
suite's ``<data dir>/kernels/``), an initramfs whose init starts the agent on
vsock port ``AGENT_PORT`` (``ATELIER_FIRECRACKER_INITRD``) and the ``base``
template's raw ext4 image. Where the runtime is unavailable every test is
skipped with the reason ``availability()`` gives (a limit of the host), e.g. on the
development machines: "firecracker binary not found (set
ATELIER_FIRECRACKER_BIN or put firecracker on PATH); kvm: /dev/kvm is a PVM
host that cannot boot a standard guest".

Where it is available but a guest piece is missing, the tests skip on a
developer's machine and fail in CI (``skip_unless_ci``).

The same checks as the QEMU runtime's: boot and exec through the agent,
files, pause/resume, snapshot/restore, stop/start keeps the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.agent.protocol import Connection
from atelier.config import Settings
from atelier.core.agent_client import READ_LIMIT, AgentClient
from atelier.images.store import TemplateInfo
from atelier.runtimes.base import RuntimeState, SandboxSpec
from atelier.runtimes.firecracker import AGENT_PORT, FirecrackerRuntime, template_disk
from atelier.runtimes.firecracker.host import FirecrackerOptions, default_guest_boot
from ci_support import skip_unless_ci


def _availability() -> tuple[bool, str]:
    probe_dir = Path(tempfile.gettempdir()) / "atelier-fc-probe"
    status = FirecrackerRuntime(Settings(data_dir=probe_dir)).availability()
    return status.available, status.reason


AVAILABLE, REASON = _availability()

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not AVAILABLE, reason=f"firecracker runtime unavailable: {REASON}"),
]

Make = Callable[..., Awaitable[SandboxSpec]]


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # short: unix socket paths under it must stay below 108 bytes
    path = Path(tempfile.mkdtemp(prefix="atl-fc-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(data_dir: Path, test_data_dir: Path, base_template: TemplateInfo) -> FirecrackerRuntime:
    settings = Settings(data_dir=data_dir)
    # the kernel: ATELIER_FIRECRACKER_KERNEL, else the suite's <data dir>/kernels/
    boot = default_guest_boot(Settings(data_dir=test_data_dir), FirecrackerOptions.from_env())
    if boot is None:
        skip_unless_ci("no guest vmlinux (set ATELIER_FIRECRACKER_KERNEL or build the kernel)")
    if boot.initrd is None:
        skip_unless_ci(
            "no guest initramfs (set ATELIER_FIRECRACKER_INITRD to one whose init starts "
            f"the agent on vsock port {AGENT_PORT})"
        )
    disk = template_disk(_spec(base_template, "probe"))
    if not disk.is_file():
        skip_unless_ci(
            f"the base template has no raw disk image {disk} (built by images.diskimage)"
        )
    assert boot is not None and boot.initrd is not None  # skip_unless_ci did not return
    return FirecrackerRuntime(settings, guest_boot=lambda: boot)


def _spec(template: TemplateInfo, sid: str, **kw: Any) -> SandboxSpec:
    return SandboxSpec(sandbox_id=sid, template=template.name, rootfs=template.rootfs, **kw)


@pytest.fixture
async def make(
    runtime: FirecrackerRuntime, base_template: TemplateInfo, request: pytest.FixtureRequest
) -> AsyncIterator[Make]:
    made: list[str] = []
    failed_before = request.session.testsfailed

    async def factory(start: bool = True, snapshot: Path | None = None, **kw: Any) -> SandboxSpec:
        sid = f"t-{uuid.uuid4().hex[:10]}"
        spec = _spec(base_template, sid, **kw)
        made.append(sid)
        if snapshot is None:
            await runtime.create(spec)
        else:
            await runtime.create_from_snapshot(spec, snapshot)
        if start:
            await runtime.start(sid)
        return spec

    yield factory
    failed = request.session.testsfailed > failed_before
    for sid in made:
        files = runtime.files(sid)
        if failed and files.base.exists():  # keep the logs of a failed test
            keep = Path(tempfile.gettempdir()) / "atelier-test-logs" / request.node.name / sid
            keep.mkdir(parents=True, exist_ok=True)
            for log in (files.console, files.log):
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep / log.name)
        await runtime.destroy(sid)
        assert not files.base.exists()


@contextlib.asynccontextmanager
async def agent(
    runtime: FirecrackerRuntime, sandbox_id: str, timeout: float = 60
) -> AsyncIterator[AgentClient]:
    """An AgentClient over the hybrid vsock (retrying until the agent listens)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            reader, writer = await runtime.open_agent(sandbox_id, limit=READ_LIMIT)
            break
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
    conn = Connection(reader, writer)
    client = AgentClient(
        conn, loop.create_task(conn.serve()), str(runtime.agent_socket(sandbox_id))
    )
    try:
        await asyncio.wait_for(client.ping(), timeout)
        yield client
    finally:
        await client.close()


async def sh(client: AgentClient, script: str) -> str:
    res = await client.run(argv=["/bin/sh", "-c", script], timeout=60)
    assert res.exit_code == 0, f"{script!r} failed: {res.stdout!r} {res.stderr!r}"
    return res.stdout.decode()


async def test_boot_and_exec(runtime: FirecrackerRuntime, make: Make) -> None:
    spec = await make(vcpus=2, memory_mib=256, hostname="fc-box")
    assert await runtime.state(spec.sandbox_id) == RuntimeState.RUNNING
    async with agent(runtime, spec.sandbox_id) as client:
        assert (await sh(client, "echo hi")).strip() == "hi"
        assert (await sh(client, "nproc")).strip() == "2"
        assert (await sh(client, "hostname")).strip() == "fc-box"


async def test_files(runtime: FirecrackerRuntime, make: Make) -> None:
    spec = await make()
    async with agent(runtime, spec.sandbox_id) as client:
        payload = os.urandom(300_000)
        await client.write_file("/tmp/x/blob", payload)
        size, chunks = await client.read_file("/tmp/x/blob")
        assert size == len(payload)
        assert b"".join([c async for c in chunks]) == payload


async def test_pause_resume(runtime: FirecrackerRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    async with agent(runtime, sid) as client:
        await sh(client, "date +%s > /tmp/before")
    await runtime.pause(sid)
    assert await runtime.state(sid) == RuntimeState.PAUSED
    await runtime.resume(sid)
    assert await runtime.state(sid) == RuntimeState.RUNNING
    async with agent(runtime, sid) as client:
        assert (await sh(client, "cat /tmp/before")).strip().isdigit()


async def test_snapshot_restore(runtime: FirecrackerRuntime, make: Make, data_dir: Path) -> None:
    spec = await make(memory_mib=256)
    async with agent(runtime, spec.sandbox_id) as client:
        await sh(client, "echo on-disk > /root/mark; sync")
        await sh(client, "echo in-ram > /dev/shm/mark")
    snap = data_dir / f"snap-{uuid.uuid4().hex[:8]}"
    try:
        await runtime.snapshot(spec.sandbox_id, snap)
        assert await runtime.state(spec.sandbox_id) == RuntimeState.RUNNING
        clone = await make(snapshot=snap, memory_mib=256)
        async with agent(runtime, clone.sandbox_id) as client:
            assert (await sh(client, "cat /root/mark")).strip() == "on-disk"
            assert (await sh(client, "cat /dev/shm/mark")).strip() == "in-ram"
    finally:
        shutil.rmtree(snap, ignore_errors=True)


async def test_stop_start_keeps_the_disk(runtime: FirecrackerRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    async with agent(runtime, sid) as client:
        await sh(client, "echo kept > /root/kept; sync")
    await runtime.stop(sid)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    await runtime.start(sid)
    async with agent(runtime, sid) as client:
        assert (await sh(client, "cat /root/kept")).strip() == "kept"
