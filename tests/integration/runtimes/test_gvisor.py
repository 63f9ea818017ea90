"""The gVisor runtime against the real runsc, loop devices and overlayfs.

Needs root and runsc; the rootfs is the suite's ``base`` template (or the
directory named by ``ATELIER_TEST_ROOTFS``). Every test gets a fresh runtime; every sandbox is
made through the ``make`` factory, which destroys it afterwards, and the
session checks that nothing (mount, loop device, runsc container, dir) leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.agent import bootstrap
from atelier.config import Settings
from atelier.core.agent_client import AgentClient
from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.images.store import TemplateInfo
from atelier.runtimes.base import Capability, Runtime, RuntimeState, SandboxSpec
from atelier.runtimes.gvisor import GVisorRuntime, layers, oci, proc
from ci_support import skip_unless_ci

pytestmark = pytest.mark.integration

SLEEP_INIT = ["/bin/sh", "-c", "exec sleep infinity"]
HAVE_AGENT = (bootstrap.package_dir() / "__main__.py").exists()
CGROUP = Path("/sys/fs/cgroup")

Make = Callable[..., Awaitable[SandboxSpec]]


def _rootfs(template: TemplateInfo) -> Path:
    value = os.environ.get("ATELIER_TEST_ROOTFS")
    path = Path(value) if value else template.rootfs
    if not (path / "usr/bin/python3").exists():
        pytest.fail(f"{path} is not a rootfs with python3")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atl-gv-", dir="/var/tmp"))
    yield path
    # Last line of defence: destroy whatever a failed test left behind.
    rt = GVisorRuntime(Settings(data_dir=path))
    if rt.availability().available:
        asyncio.run(_destroy_all(rt))
    if not layers.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


async def _destroy_all(rt: GVisorRuntime) -> None:
    for sid in await rt.list_ids():
        with contextlib.suppress(Exception):
            await rt.destroy(sid)


@pytest.fixture
def rootfs(base_template: TemplateInfo) -> Path:
    return _rootfs(base_template)


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir)


@pytest.fixture
def runtime(settings: Settings) -> GVisorRuntime:
    rt = GVisorRuntime(settings, init_argv=SLEEP_INIT)
    status = rt.availability()
    if not status.available:
        skip_unless_ci(f"gvisor runtime unavailable: {status.reason}")
    return rt


@pytest.fixture
async def make(
    runtime: GVisorRuntime, rootfs: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Make]:
    made: list[str] = []
    failed_before = request.session.testsfailed

    async def factory(start: bool = True, **kw: Any) -> SandboxSpec:
        sid = kw.pop("sandbox_id", None) or f"t-{uuid.uuid4().hex[:10]}"
        spec = SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs, **kw)
        made.append(sid)
        await runtime.create(spec)
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
            for log in (files.console, files.runsc_log, files.agent_log):
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep / log.name)
        await runtime.destroy(sid)
        assert_no_trace(runtime, sid)


def assert_no_trace(rt: GVisorRuntime, sid: str) -> None:
    base = rt.files(sid).base
    mounts = Path("/proc/mounts").read_text()
    assert str(base) not in mounts
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    assert str(base) not in loops
    assert not base.exists()
    listed = subprocess.run(
        rt.runsc.argv("list", "--quiet"), capture_output=True, text=True, check=True
    ).stdout
    assert rt.files(sid).cid not in listed.split()
    assert not (CGROUP / "memory" / oci.cgroups_path(sid).strip("/")).exists()


async def sh(rt: GVisorRuntime, sid: str, script: str) -> str:
    res = await rt.exec(sid, ["/bin/sh", "-c", script])
    assert res.returncode == 0, f"{script!r} failed: {res.stdout}{res.stderr}"
    return res.stdout


# -- tests ------------------------------------------------------------------------


def test_conforms_to_protocol(runtime: GVisorRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.capabilities() == (
        Capability.PAUSE
        | Capability.PERSISTENT_DISK
        | Capability.NETWORK
        | Capability.HIBERNATE
        | Capability.MEMORY_SNAPSHOT
    )
    assert "platform" in runtime.availability().reason


async def test_create_start_exec(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make(start=False, hostname="devbox")
    assert await runtime.state(spec.sandbox_id) == RuntimeState.CREATED
    assert spec.sandbox_id in await runtime.list_ids()
    await runtime.start(spec.sandbox_id)
    await runtime.start(spec.sandbox_id)  # idempotent
    assert await runtime.state(spec.sandbox_id) == RuntimeState.RUNNING
    out = await sh(runtime, spec.sandbox_id, "uname -n; id -u; python3 -c 'print(6*7)'")
    assert out.split() == ["devbox", "0", "42"]
    # the overlay really is the root: a file written inside lands in upper/
    await sh(runtime, spec.sandbox_id, "echo hello > /root/hello.txt")
    upper = runtime.files(spec.sandbox_id).layers.upper
    assert (upper / "root/hello.txt").read_text() == "hello\n"
    # the lower rootfs is untouched
    assert not (spec.rootfs / "root/hello.txt").exists()


@pytest.mark.skipif(
    not HAVE_AGENT, reason="the agent (atelier/agent/__main__.py) is not written yet"
)
async def test_agent_socket_appears(settings: Settings, rootfs: Path) -> None:
    rt = GVisorRuntime(settings)
    sid = f"a-{uuid.uuid4().hex[:8]}"
    await rt.create(SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs))
    try:
        await rt.start(sid)
        sock = rt.agent_socket(sid)
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        assert sock.exists(), rt.log_path(sid).read_text(errors="replace")[-2000:]
        # the file appears when the agent binds, a moment before it listens
        async with await AgentClient.connect(sock, timeout=30) as agent:
            assert (await agent.ping()).pid == 1
    finally:
        await rt.destroy(sid)
    assert_no_trace(rt, sid)


async def test_files_persist_across_stop_start(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    await sh(runtime, sid, "echo one > /root/a; echo two > /tmp/b; mkdir -p /srv/x")
    await runtime.stop(sid)
    await runtime.stop(sid)  # idempotent
    assert await runtime.state(sid) == RuntimeState.STOPPED
    assert not layers.mounts_under(runtime.files(sid).base)  # stopped: no mounts held
    await runtime.start(sid)
    assert await sh(runtime, sid, "cat /root/a /tmp/b; test -d /srv/x && echo d") == "one\ntwo\nd\n"


async def test_tmp_is_on_the_disk(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make()
    out = await sh(runtime, spec.sandbox_id, "grep ' /tmp ' /proc/mounts || true")
    assert "tmpfs" not in out
    await sh(runtime, spec.sandbox_id, "echo t > /tmp/t")
    assert (runtime.files(spec.sandbox_id).layers.tmp / "t").read_text() == "t\n"


async def test_disk_limit_enforced(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make(disk_mib=64)
    res = await runtime.exec(
        spec.sandbox_id, ["dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=100"]
    )
    assert res.returncode != 0
    assert "No space left on device" in res.stderr
    # and through /tmp as well: it is the same disk
    res = await runtime.exec(
        spec.sandbox_id, ["dd", "if=/dev/zero", "of=/tmp/big", "bs=1M", "count=10"]
    )
    assert "No space left on device" in res.stderr
    await sh(runtime, spec.sandbox_id, "rm -f /root/big /tmp/big")
    await sh(runtime, spec.sandbox_id, "dd if=/dev/zero of=/root/ok bs=1M count=8 2>/dev/null")


async def test_resource_limits(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make(vcpus=2, memory_mib=384)
    sid = spec.sandbox_id
    rel = oci.cgroups_path(sid).strip("/")
    if (CGROUP / "memory" / rel).is_dir():  # cgroup v1
        limit = (CGROUP / "memory" / rel / "memory.limit_in_bytes").read_text()
        assert int(limit) == 384 * 1024 * 1024
        assert int((CGROUP / "cpu" / rel / "cpu.cfs_quota_us").read_text()) == 200_000
        assert int((CGROUP / "cpu" / rel / "cpu.cfs_period_us").read_text()) == 100_000
        assert (CGROUP / "pids" / rel / "pids.max").read_text().strip() == str(oci.PIDS_LIMIT)
    elif (CGROUP / rel).is_dir():  # cgroup v2
        assert int((CGROUP / rel / "memory.max").read_text()) == 384 * 1024 * 1024
    else:
        pytest.fail(f"no cgroup {rel} for the sandbox")
    # the sandbox's own view matches
    out = await sh(runtime, sid, "nproc; grep MemTotal /proc/meminfo")
    cpus, meminfo = out.splitlines()
    assert cpus == "2"
    assert int(meminfo.split()[1]) == 384 * 1024


async def test_pause_resume(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    await runtime.pause(sid)
    assert await runtime.state(sid) == RuntimeState.PAUSED
    await runtime.resume(sid)
    assert await runtime.state(sid) == RuntimeState.RUNNING
    assert await sh(runtime, sid, "echo back") == "back\n"
    await runtime.pause(sid)
    await runtime.stop(sid)  # stopping a paused sandbox works
    assert await runtime.state(sid) == RuntimeState.STOPPED


async def test_start_after_crash_remounts(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    await sh(runtime, sid, "echo kept > /root/kept")
    # a host crash: the sandbox dies without delete, every mount is gone
    files = runtime.files(sid)
    await runtime.runsc.kill(runtime.files(sid).cid, "KILL", check=False)
    await layers.unmount_all(files.base)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    await runtime.start(sid)
    assert await sh(runtime, sid, "cat /root/kept") == "kept\n"


async def test_destroy_is_idempotent(runtime: GVisorRuntime) -> None:
    await runtime.destroy("never-existed")
    assert await runtime.state("never-existed") == RuntimeState.ABSENT


async def test_destroy_half_created_missing_bundle(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make(start=False)
    shutil.rmtree(runtime.files(spec.sandbox_id).bundle)
    await runtime.destroy(spec.sandbox_id)
    assert_no_trace(runtime, spec.sandbox_id)


async def test_destroy_crash_during_create(runtime: GVisorRuntime, make: Make) -> None:
    # create crashed after mounting, before it wrote spec.json
    spec = await make(start=False)
    runtime.files(spec.sandbox_id).spec.unlink()
    assert await runtime.state(spec.sandbox_id) == RuntimeState.ABSENT
    assert spec.sandbox_id in await runtime.list_ids()
    assert layers.mounts_under(runtime.files(spec.sandbox_id).base)
    # create again redoes it cleanly ...
    await runtime.create(spec)
    assert await runtime.state(spec.sandbox_id) == RuntimeState.CREATED
    # ... and destroy removes a half-created one too
    runtime.files(spec.sandbox_id).spec.unlink()
    await runtime.destroy(spec.sandbox_id)
    assert_no_trace(runtime, spec.sandbox_id)


async def test_destroy_start_killed_midway(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make(start=False)
    task = asyncio.create_task(runtime.start(spec.sandbox_id))
    await asyncio.sleep(0.08)  # inside runsc create
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, RuntimeFailure):
        await task
    await runtime.destroy(spec.sandbox_id)
    assert_no_trace(runtime, spec.sandbox_id)


async def test_create_failure_undoes_everything(
    runtime: GVisorRuntime, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kw: Any) -> Path:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(oci, "write_config", broken)
    spec = SandboxSpec(sandbox_id="t-broken", template="test", rootfs=rootfs)
    with pytest.raises(RuntimeFailure, match="simulated"):
        await runtime.create(spec)
    assert_no_trace(runtime, "t-broken")
    with pytest.raises(InvalidRequest):
        await runtime.create(SandboxSpec("t-bad", "test", rootfs / "nope"))
    assert_no_trace(runtime, "t-bad")


async def test_start_failure_reports_runsc_error(settings: Settings, rootfs: Path) -> None:
    rt = GVisorRuntime(settings, init_argv=["/no/such/binary"])
    sid = "t-noinit"
    await rt.create(SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs))
    try:
        with pytest.raises(RuntimeFailure) as err:
            await rt.start(sid)
        assert "/no/such/binary" in err.value.message
        assert await rt.state(sid) in (RuntimeState.CREATED, RuntimeState.STOPPED)
    finally:
        await rt.destroy(sid)
    assert_no_trace(rt, sid)


async def test_sandboxes_share_the_lower_rootfs(runtime: GVisorRuntime, make: Make) -> None:
    specs = [await make(disk_mib=1024) for _ in range(2)]
    for spec in specs:
        base = runtime.files(spec.sandbox_id).base
        du = subprocess.run(
            ["du", "-sxk", str(base)], capture_output=True, text=True, check=True
        ).stdout
        assert int(du.split()[0]) < 40 * 1024, du  # KiB; the rootfs is ~170 MB
        assert os.stat(base / "disk.img").st_blocks * 512 < 40 * 1024 * 1024


async def test_concurrent_sandboxes(runtime: GVisorRuntime, make: Make) -> None:
    specs = await asyncio.gather(*(make() for _ in range(6)))
    states = await asyncio.gather(*(runtime.state(s.sandbox_id) for s in specs))
    assert set(states) == {RuntimeState.RUNNING}
    outs = await asyncio.gather(*(sh(runtime, s.sandbox_id, "echo ok") for s in specs))
    assert outs == ["ok\n"] * len(specs)
    await asyncio.gather(*(runtime.destroy(s.sandbox_id) for s in specs))
    for spec in specs:
        assert_no_trace(runtime, spec.sandbox_id)


async def test_console_log_keeps_every_run(settings: Settings, rootfs: Path) -> None:
    rt = GVisorRuntime(settings, init_argv=["/bin/sh", "-c", "echo booted; exec sleep infinity"])
    sid = f"t-{uuid.uuid4().hex[:8]}"
    await rt.create(SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs))
    try:
        for _ in range(2):
            await rt.start(sid)
            await sh(rt, sid, "true")  # the init has run by now
            await rt.stop(sid)
        assert rt.log_path(sid).read_text().count("booted\n") == 2
    finally:
        await rt.destroy(sid)
    assert_no_trace(rt, sid)


async def test_init_exit_means_stopped(settings: Settings, rootfs: Path) -> None:
    rt = GVisorRuntime(settings, init_argv=["/bin/true"])
    sid = f"t-{uuid.uuid4().hex[:8]}"
    await rt.create(SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs))
    try:
        await rt.start(sid)
        for _ in range(100):
            if await rt.state(sid) == RuntimeState.STOPPED:
                break
            await asyncio.sleep(0.05)
        assert await rt.state(sid) == RuntimeState.STOPPED
        await rt.stop(sid)
        assert await rt.state(sid) == RuntimeState.STOPPED
    finally:
        await rt.destroy(sid)
    assert_no_trace(rt, sid)


async def test_start_over_a_container_runsc_hint_missed(
    runtime: GVisorRuntime, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = await make()
    sid = spec.sandbox_id
    # leave a "stopped" container in runsc
    await runtime.runsc.kill(runtime.files(sid).cid, "KILL", check=False)
    monkeypatch.setattr(runtime.runsc, "might_exist", lambda cid: False)
    await runtime.start(sid)  # runsc create says "already exists": delete, retry
    monkeypatch.undo()
    assert await runtime.state(sid) == RuntimeState.RUNNING


async def test_ids_that_prefix_each_other(runtime: GVisorRuntime, make: Make) -> None:
    # runsc matches container ids by prefix; "p1" must never act on "p11"
    tag = uuid.uuid4().hex[:6]
    short, long = f"p{tag}", f"p{tag}1"
    await make(sandbox_id=long)
    assert await runtime.state(short) == RuntimeState.ABSENT
    await runtime.destroy(short)  # unknown: must not touch the other one
    assert await runtime.state(long) == RuntimeState.RUNNING
    await make(sandbox_id=short)
    assert await sh(runtime, short, "echo s") == "s\n"
    await runtime.stop(short)
    assert await runtime.state(short) == RuntimeState.STOPPED
    assert await runtime.state(long) == RuntimeState.RUNNING
    await runtime.destroy(short)
    assert await sh(runtime, long, "echo l") == "l\n"


async def test_start_after_host_reboot(runtime: GVisorRuntime, make: Make) -> None:
    spec = await make()
    sid = spec.sandbox_id
    files = runtime.files(sid)
    await sh(runtime, sid, "echo survived > /root/r")
    # power loss: every process dies, runsc's state file stays behind ...
    assert await proc.kill_processes(proc.processes_with_arg(str(files.bundle))) == []
    await layers.unmount_all(files.base)
    # ... and after the reboot the boot id differs
    files.started.write_text("some-earlier-boot")
    assert runtime.runsc.might_exist(files.cid)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    assert not runtime.runsc.might_exist(files.cid)  # the stale record is gone
    await runtime.start(sid)
    assert await sh(runtime, sid, "cat /root/r") == "survived\n"
