"""The QEMU runtime with real QEMU (TCG where KVM cannot boot a guest), the
real Debian cloud kernel and the suite's ``base`` template.

Needs root and qemu-system-x86 (scripts/setup.sh). The guest kernel is
fetched once into ``$ATELIER_TEST_DATA_DIR/kernels`` and shared by sessions;
everything else lives in a per-session data dir under /var/tmp, removed at
the end. Every sandbox is made through ``make``, which destroys it and checks
that nothing is left (QEMU process, sockets, overlay, cgroups). Deadlines are
generous: a TCG boot takes seconds to tens of seconds on a busy host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.core.agent_client import AgentClient, Output
from atelier.errors import InvalidRequest, InvalidStateTransition
from atelier.images.store import TemplateInfo
from atelier.runtimes.base import Capability, RuntimeState, SandboxSpec
from atelier.runtimes.qemu import QemuRuntime
from atelier.runtimes.qemu.cgroups import VmCgroup
from atelier.runtimes.qemu.process import find_processes
from ci_support import skip_unless_ci

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

BOOT_TIMEOUT = 300.0  # cold boot to agent ready under TCG on a loaded host
MEMORY_MIB = 256
DISK_MIB = 1024

Make = Callable[..., Awaitable[SandboxSpec]]


@pytest.fixture(scope="session")
def qemu_data_dir(test_data_dir: Path) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atl-qemu-", dir="/var/tmp"))
    shared = test_data_dir / "kernels"
    shared.mkdir(parents=True, exist_ok=True)
    (path / "kernels").symlink_to(shared)  # the guest kernel: fetched once per machine
    yield path
    rt = QemuRuntime(Settings(data_dir=path))

    async def destroy_all() -> None:
        for sid in await rt.list_ids():
            with contextlib.suppress(Exception):
                await rt.destroy(sid)

    asyncio.run(destroy_all())
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(qemu_data_dir: Path) -> QemuRuntime:
    rt = QemuRuntime(Settings(data_dir=qemu_data_dir))
    status = rt.availability()
    if not status.available:
        skip_unless_ci(f"qemu runtime unavailable: {status.reason}")
    return rt


@pytest.fixture
def rootfs(base_template: TemplateInfo) -> Path:
    if not (base_template.rootfs / "usr/bin/python3").exists():
        pytest.fail(f"{base_template.rootfs} is not a rootfs with python3")
    return base_template.rootfs


def assert_no_trace(rt: QemuRuntime, sid: str) -> None:
    files = rt.files(sid)
    assert not files.base.exists(), f"{files.base} left behind"
    assert find_processes(str(files.base) + "/") == [], "a QEMU process is left"
    assert VmCgroup(sid).pids() == set()
    assert not any(d.exists() for d in VmCgroup(sid).dirs()), "cgroups left behind"


@pytest.fixture
async def make(
    runtime: QemuRuntime, rootfs: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Make]:
    made: list[str] = []
    failed_before = request.session.testsfailed

    async def factory(start: bool = True, snapshot: Path | None = None, **kw: Any) -> SandboxSpec:
        sid = kw.pop("sandbox_id", None) or f"q-{uuid.uuid4().hex[:10]}"
        kw.setdefault("memory_mib", MEMORY_MIB)
        kw.setdefault("disk_mib", DISK_MIB)
        kw.setdefault("hostname", sid)
        spec = SandboxSpec(sandbox_id=sid, template="base", rootfs=rootfs, **kw)
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
            for log in (files.console, files.qemu_log):
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep / log.name)
        await runtime.destroy(sid)
        assert_no_trace(runtime, sid)


async def connect(rt: QemuRuntime, sid: str, timeout: float = BOOT_TIMEOUT) -> AgentClient:
    return await AgentClient.connect(rt.agent_socket(sid), timeout=timeout)


async def sh(agent: AgentClient, script: str, user: str = "root") -> str:
    result = await agent.run(argv=["sh", "-c", script], user=user, timeout=120)
    assert result.exit_code == 0, (script, result.stdout, result.stderr)
    return result.stdout.decode()


async def test_boot_exec_isolation(runtime: QemuRuntime, make: Make) -> None:
    spec = await make(vcpus=1)
    assert await runtime.state(spec.sandbox_id) == RuntimeState.RUNNING
    marker = Path("/var/tmp") / f"atelier-host-only-{uuid.uuid4().hex}"
    marker.write_text("host secret\n")
    try:
        async with await connect(runtime, spec.sandbox_id) as agent:
            assert (await agent.ping()).pid == 1  # the agent is the guest's init
            kernel = runtime.kernel()
            assert kernel is not None
            release = (await sh(agent, "uname -r")).strip()
            assert release == kernel.version and release.startswith("6.1.")
            assert release != os.uname().release  # the guest kernel, not the host's
            assert (await sh(agent, "hostname")).strip() == spec.sandbox_id
            # host files and processes are not visible
            assert (await agent.run(argv=["cat", str(marker)])).exit_code != 0
            procs = await sh(agent, "ps -eo comm")
            assert "pytest" not in procs and "qemu-system" not in procs
            assert str(os.getpid()) not in (await sh(agent, "ls /proc")).split()
            assert (await sh(agent, "nproc")).strip() == "1"
            mem_kib = int((await sh(agent, "awk '/MemTotal/ {print $2}' /proc/meminfo")).strip())
            assert 0.7 * MEMORY_MIB * 1024 < mem_kib <= MEMORY_MIB * 1024
            # the disk size limit is real: the filesystem was grown to disk_mib
            size_mib = int((await sh(agent, "df -m --output=size / | tail -1")).strip())
            assert 0.9 * DISK_MIB < size_mib <= DISK_MIB
            full = await agent.run(argv=["fallocate", "-l", f"{DISK_MIB}M", "/home/user/big"])
            assert full.exit_code != 0 and b"No space left" in full.stderr
            assert (await sh(agent, "id -un", user="user")).strip() == "user"
    finally:
        marker.unlink()
    info = runtime.info(spec.sandbox_id)
    assert info["accel"] == runtime.accel().name and info["mode"] == "cold"


async def test_files_pty_and_stdin(runtime: QemuRuntime, make: Make) -> None:
    spec = await make()
    async with await connect(runtime, spec.sandbox_id) as agent:
        payload = os.urandom(3 * 1024 * 1024 + 17)
        await agent.write_file("/home/user/blob.bin", payload)
        size, chunks = await agent.read_file("/home/user/blob.bin")
        assert size == len(payload)
        assert b"".join([c async for c in chunks]) == payload
        result = await agent.run(argv=["wc", "-c"], input=b"x" * 1000)
        assert result.stdout.strip() == b"1000"
        session = await agent.pty(argv=["/bin/sh", "-c", "tty; echo pty-ok"])
        out = b""
        async for event in session:
            if isinstance(event, Output):
                out += event.data
        assert b"pty-ok" in out and b"/dev/pts/" in out


async def test_stop_start_keeps_files(runtime: QemuRuntime, make: Make) -> None:
    spec = await make(start=False)
    sid = spec.sandbox_id
    assert await runtime.state(sid) == RuntimeState.CREATED
    await runtime.start(sid)
    async with await connect(runtime, sid) as agent:
        await agent.write_file("/home/user/keep.txt", b"still here\n")
        await sh(agent, "echo unsynced > /root/late.txt")  # flushed by stop's guest sync
    await runtime.stop(sid)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    files = runtime.files(sid)
    assert find_processes(str(files.qmp)) == []
    assert not files.memory.exists() and files.overlay.exists()
    await runtime.stop(sid)  # idempotent
    await runtime.start(sid)
    await runtime.start(sid)  # already running: no-op
    async with await connect(runtime, sid) as agent:
        assert (await sh(agent, "cat /home/user/keep.txt /root/late.txt")) == (
            "still here\nunsynced\n"
        )


async def test_pause_resume(runtime: QemuRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    async with await connect(runtime, sid) as agent:
        counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
        session = await agent.exec(argv=["sh", "-c", counter], background=True)
        await session.detach()
        await asyncio.sleep(1)
        await runtime.pause(sid)
        assert await runtime.state(sid) == RuntimeState.PAUSED
        await runtime.pause(sid)  # idempotent at QMP level
        await runtime.resume(sid)
        assert await runtime.state(sid) == RuntimeState.RUNNING
        first = int(await sh(agent, "cat /tmp/n"))
        await asyncio.sleep(1)
        assert int(await sh(agent, "cat /tmp/n")) > first
    await runtime.stop(sid)
    with pytest.raises(InvalidStateTransition):
        await runtime.pause(sid)


async def test_hibernate_and_wake(runtime: QemuRuntime, make: Make) -> None:
    assert Capability.HIBERNATE in runtime.capabilities()
    spec = await make()
    sid = spec.sandbox_id
    async with await connect(runtime, sid) as agent:
        counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
        ticking = await agent.exec(argv=["sh", "-c", counter], background=True)
        await ticking.detach()
        await agent.write_file("/home/user/kept.txt", b"kept\n")
        await asyncio.sleep(1)
    t0 = time.perf_counter()
    await runtime.hibernate(sid)
    hibernate_s = time.perf_counter() - t0
    assert await runtime.state(sid) == RuntimeState.HIBERNATED
    assert find_processes(str(runtime.files(sid).base) + "/") == []  # RAM released
    await runtime.hibernate(sid)  # idempotent
    t0 = time.perf_counter()
    await runtime.start(sid)  # start wakes it
    async with await connect(runtime, sid, timeout=60) as agent:
        print(
            f"\nqemu hibernate {hibernate_s:.2f} s, wake to agent {time.perf_counter() - t0:.2f} s"
        )
        assert runtime.info(sid)["mode"] == "wake"
        procs = await agent.list_processes()
        assert any(p["pid"] == ticking.pid and p["running"] for p in procs)  # the same process
        first = int(await sh(agent, "cat /tmp/n"))
        await asyncio.sleep(1)
        assert int(await sh(agent, "cat /tmp/n")) > first
        assert (await sh(agent, "cat /home/user/kept.txt")) == "kept\n"
    assert not (runtime.files(sid).base / "hibernate").exists()
    # hibernated, then stopped: the image is discarded, the next start boots cold
    await runtime.hibernate(sid)
    await runtime.stop(sid)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    with pytest.raises(InvalidStateTransition):
        await runtime.wake(sid)
    await runtime.start(sid)
    assert runtime.info(sid)["mode"] == "cold"


async def test_snapshot_restore_clone(
    runtime: QemuRuntime, make: Make, qemu_data_dir: Path
) -> None:
    assert Capability.MEMORY_SNAPSHOT in runtime.capabilities()
    source = await make()
    async with await connect(runtime, source.sandbox_id) as agent:
        await agent.write_file("/home/user/before.txt", b"written before the snapshot\n")
        sleeper = await agent.exec(argv=["sleep", "1000"], background=True, tag="sleeper")
        await sleeper.detach()
        counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
        ticking = await agent.exec(argv=["sh", "-c", counter], background=True)
        await ticking.detach()
        await asyncio.sleep(1)
        snap = qemu_data_dir / "snapshots" / f"s-{uuid.uuid4().hex[:8]}"
        # the host stays connected across the snapshot (a server's AgentClient does)
        await runtime.snapshot(source.sandbox_id, snap)
        assert {p.name for p in snap.iterdir()} == {
            "state",
            "memory",
            "disk.qcow2",
            "snapshot.json",
        }
        # the source keeps running and answering
        assert (await sh(agent, "cat /home/user/before.txt")) == "written before the snapshot\n"
        await agent.write_file("/home/user/after.txt", b"source only\n")
    with pytest.raises(InvalidRequest):  # a clone keeps the snapshot's shape
        await make(snapshot=snap, start=False, memory_mib=MEMORY_MIB * 2)

    clone = await make(snapshot=snap)
    sid = clone.sandbox_id
    assert await runtime.state(sid) == RuntimeState.RUNNING
    assert runtime.info(sid)["mode"] == "restore"
    async with await connect(runtime, sid, timeout=60) as agent:
        assert (await sh(agent, "cat /home/user/before.txt")) == "written before the snapshot\n"
        assert (await agent.run(argv=["cat", "/home/user/after.txt"])).exit_code != 0
        procs = await agent.list_processes()
        assert any(p["argv"] == ["sleep", "1000"] and p["running"] for p in procs)
        first = int(await sh(agent, "cat /tmp/n"))
        await asyncio.sleep(1)
        assert int(await sh(agent, "cat /tmp/n")) > first  # the process kept running
        # the clock was set from the host, not left at the snapshot's time
        guest_now = float(await sh(agent, "date +%s.%N"))
        assert abs(guest_now - time.time()) < 30
    with pytest.raises(InvalidStateTransition):  # its memory is a copy-on-write map
        await runtime.snapshot(sid, qemu_data_dir / "snapshots" / "of-a-clone")
    # a second clone from the same snapshot
    other = await make(snapshot=snap)
    async with await connect(runtime, other.sandbox_id, timeout=60) as agent:
        assert (await sh(agent, "cat /home/user/before.txt")) == "written before the snapshot\n"
    # a clone (RAM a copy-on-write map) hibernates with its RAM in the state stream
    await runtime.hibernate(other.sandbox_id)
    assert await runtime.state(other.sandbox_id) == RuntimeState.HIBERNATED
    await runtime.wake(other.sandbox_id)
    async with await connect(runtime, other.sandbox_id, timeout=60) as agent:
        procs = await agent.list_processes()
        assert any(p["argv"] == ["sleep", "1000"] and p["running"] for p in procs)
    # a stopped clone boots cold from its own disk (backed by the snapshot's)
    await runtime.stop(sid)
    await runtime.start(sid)
    assert runtime.info(sid)["mode"] == "cold"
    async with await connect(runtime, sid) as agent:
        assert (await sh(agent, "cat /home/user/before.txt")) == "written before the snapshot\n"


async def test_reconnect_and_destroy(runtime: QemuRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    for _ in range(3):  # the agent serves one host after another (a restarted server)
        async with await connect(runtime, sid) as agent:
            assert (await agent.ping()).pid == 1
    files = runtime.files(sid)
    assert files.agent_socket.is_socket() and files.qmp.is_socket()
    group = VmCgroup(sid)
    assert group.pids(), "QEMU runs in its cgroup"
    await runtime.destroy(sid)
    assert_no_trace(runtime, sid)
    assert await runtime.state(sid) == RuntimeState.ABSENT
    await runtime.destroy(sid)  # idempotent


async def test_invalid_specs(runtime: QemuRuntime, make: Make) -> None:
    with pytest.raises(InvalidRequest, match="smaller than the template"):
        await make(start=False, disk_mib=128)
    with pytest.raises(InvalidRequest):
        await make(start=False, hostname="bad name")
