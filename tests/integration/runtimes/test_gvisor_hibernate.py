"""Hibernate, wake, memory and file snapshots of gVisor sandboxes (real runsc).

Every sandbox runs the real agent (it must release its socket for a
checkpoint). A counter served over HTTP on the sandbox's loopback carries
in-memory state: after a wake or in a clone it goes on where it was.
Latencies are printed (``-s``), never asserted; bench/hibernate.py measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atelier.config import Settings
from atelier.core.agent_client import AgentClient
from atelier.errors import Conflict, InvalidRequest, InvalidStateTransition, RuntimeFailure
from atelier.images.store import TemplateInfo
from atelier.runtimes.base import RuntimeState, SandboxSpec
from atelier.runtimes.gvisor import GVisorRuntime, freezer, layers
from atelier.runtimes.gvisor.proc import processes_with_arg
from ci_support import skip_unless_ci

pytestmark = pytest.mark.integration

COUNTER = r"""
import http.server, itertools
count = itertools.count()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(next(count)).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 8080), Handler).serve_forever()
"""
GET = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://127.0.0.1:8080', timeout=10).read().decode())\""
)

Make = Callable[..., Awaitable[SandboxSpec]]


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="atl-hib-", dir="/var/tmp"))
    yield path
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
def runtime(data_dir: Path) -> GVisorRuntime:
    rt = GVisorRuntime(Settings(data_dir=data_dir))
    status = rt.availability()
    if not status.available:
        skip_unless_ci(f"gvisor runtime unavailable: {status.reason}")
    return rt


@pytest.fixture
def rootfs(base_template: TemplateInfo) -> Path:
    return base_template.rootfs


@pytest.fixture
async def make(runtime: GVisorRuntime, rootfs: Path) -> AsyncIterator[Make]:
    made: list[str] = []

    async def factory(snapshot: Path | None = None, **kw: Any) -> SandboxSpec:
        sid = f"h-{uuid.uuid4().hex[:10]}"
        kw.setdefault("memory_mib", 256)
        made.append(sid)
        if snapshot is None:
            spec = SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs, **kw)
            await runtime.create(spec)
        else:
            kw.setdefault("layers", (snapshot / "layer",))
            spec = SandboxSpec(sandbox_id=sid, template="test", rootfs=rootfs, **kw)
            await runtime.create_from_snapshot(spec, snapshot)
        await runtime.start(sid)
        return spec

    yield factory
    for sid in made:
        await runtime.destroy(sid)
        assert_no_trace(runtime, sid)


def assert_no_trace(rt: GVisorRuntime, sid: str) -> None:
    files = rt.files(sid)
    assert str(files.base) not in Path("/proc/mounts").read_text()
    assert not files.base.exists()
    assert not processes_with_arg(str(files.bundle))
    listed = subprocess.run(
        rt.runsc.argv("list", "--quiet"), capture_output=True, text=True, check=True
    ).stdout
    assert files.cid not in listed.split()


async def agent(rt: GVisorRuntime, sid: str) -> AgentClient:
    return await AgentClient.connect(rt.agent_socket(sid), timeout=60)


async def run(rt: GVisorRuntime, sid: str, script: str) -> str:
    async with await agent(rt, sid) as client:
        result = await client.run(script, user="root")
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


async def start_counter(rt: GVisorRuntime, sid: str) -> int:
    async with await agent(rt, sid) as client:
        session = await client.exec(argv=["python3", "-c", COUNTER], background=True)
        await session.detach()
    for _ in range(200):
        with contextlib.suppress(AssertionError):
            await count(rt, sid)
            return session.pid
        await asyncio.sleep(0.1)
    raise AssertionError("the counter server did not come up")


async def count(rt: GVisorRuntime, sid: str) -> int:
    return int((await run(rt, sid, GET)).strip())


def sandbox_rss_kib(rt: GVisorRuntime, sid: str) -> int:
    """RSS of the sandbox's host processes (gofer, sandbox and their children)."""
    roots = set(processes_with_arg(str(rt.files(sid).bundle)))
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    tree = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree and pid not in tree}
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def manifest(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
    )


# -- hibernate / wake ----------------------------------------------------------------------


async def test_hibernate_and_wake_keep_processes(runtime: GVisorRuntime, make: Make) -> None:
    sid = (await make()).sandbox_id
    pid = await start_counter(runtime, sid)
    assert [await count(runtime, sid), await count(runtime, sid)] == [1, 2]
    await run(runtime, sid, "echo kept > /root/file; echo tmp > /tmp/file")
    rss_before = sandbox_rss_kib(runtime, sid)

    t0 = time.perf_counter()
    await runtime.hibernate(sid)
    hibernate_s = time.perf_counter() - t0
    assert await runtime.state(sid) == RuntimeState.HIBERNATED
    rss_after = sandbox_rss_kib(runtime, sid)
    assert rss_before > 10_000 and rss_after == 0  # no process of it is left
    assert not layers.mounts_under(runtime.files(sid).base)
    await runtime.hibernate(sid)  # idempotent
    with pytest.raises(InvalidStateTransition):
        await runtime.pause(sid)

    t0 = time.perf_counter()
    await runtime.start(sid)  # start wakes a hibernated sandbox
    async with await agent(runtime, sid):
        wake_s = time.perf_counter() - t0
    print(
        f"\nhibernate {hibernate_s * 1000:.0f} ms, wake to agent {wake_s * 1000:.0f} ms, "
        f"RSS {rss_before} KiB -> {rss_after} KiB"
    )
    assert await runtime.state(sid) == RuntimeState.RUNNING
    assert await count(runtime, sid) == 3  # the same process, with its memory
    async with await agent(runtime, sid) as client:
        assert pid in [p["pid"] for p in await client.list_processes()]
    assert await run(runtime, sid, "cat /root/file /tmp/file") == "kept\ntmp\n"
    assert not (runtime.files(sid).base / "hibernate").exists()  # the image is gone

    # and once more, through wake()
    await runtime.hibernate(sid)
    await runtime.wake(sid)
    await runtime.wake(sid)  # running: nothing to do
    assert await count(runtime, sid) == 4


async def test_stop_discards_the_hibernation(runtime: GVisorRuntime, make: Make) -> None:
    sid = (await make()).sandbox_id
    await start_counter(runtime, sid)
    await run(runtime, sid, "echo kept > /root/file")
    await runtime.hibernate(sid)
    await runtime.stop(sid)
    assert await runtime.state(sid) == RuntimeState.STOPPED
    assert not (runtime.files(sid).base / "hibernate").exists()
    with pytest.raises(InvalidStateTransition):
        await runtime.wake(sid)
    await runtime.start(sid)  # a cold boot: files kept, processes not
    assert await run(runtime, sid, "cat /root/file") == "kept\n"
    with pytest.raises(AssertionError):
        await run(runtime, sid, GET)


async def test_bound_unix_socket_refuses_and_keeps_running(
    runtime: GVisorRuntime, make: Make
) -> None:
    sid = (await make()).sandbox_id
    await start_counter(runtime, sid)
    async with await agent(runtime, sid) as client:
        session = await client.exec(
            argv=[
                "python3",
                "-c",
                "import socket, time; s = socket.socket(socket.AF_UNIX); "
                "s.bind('/tmp/app.sock'); s.listen(); time.sleep(600)",
            ],
            background=True,
        )
        await session.detach()
    for _ in range(100):
        if "app.sock" in await run(runtime, sid, "ls /tmp"):
            break
        await asyncio.sleep(0.1)
    with pytest.raises(Conflict, match=r"/tmp/app\.sock"):
        await runtime.hibernate(sid)
    with pytest.raises(Conflict, match=r"/tmp/app\.sock"):
        await runtime.snapshot(sid, runtime.files(sid).base.parent / f"{sid}-snap", memory=True)
    assert not (runtime.files(sid).base.parent / f"{sid}-snap").exists()
    # nothing was lost: the sandbox runs, the agent listens, the state is intact
    assert await runtime.state(sid) == RuntimeState.RUNNING
    assert await count(runtime, sid) == 1
    base = runtime.files(sid).base
    assert not (base / "hibernate").exists() and not (base / "hibernate.tmp").exists()
    # once the socket is gone, hibernating works
    async with await agent(runtime, sid) as client:
        await client.signal(session.pid, "KILL")
    # (the socket file stays: gVisor cannot unlink a host-backed one; unbound it is harmless)
    await asyncio.sleep(0.5)
    await runtime.hibernate(sid)
    await runtime.wake(sid)
    assert await count(runtime, sid) == 2


async def test_wake_failure_leaves_nothing_running(runtime: GVisorRuntime, make: Make) -> None:
    sid = (await make()).sandbox_id
    await runtime.hibernate(sid)
    files = runtime.files(sid)
    image = files.base / "hibernate" / "checkpoint.img"
    with image.open("r+b") as fh:
        fh.truncate(100)  # a damaged image
    with pytest.raises(RuntimeFailure):
        await runtime.wake(sid)
    assert not processes_with_arg(str(files.bundle))
    assert not layers.mounts_under(files.base)
    assert await runtime.state(sid) == RuntimeState.HIBERNATED  # the image is kept
    await runtime.stop(sid)  # the way out: discard it
    await runtime.start(sid)
    assert await run(runtime, sid, "echo up") == "up\n"


async def test_hibernate_after_an_interrupted_one(runtime: GVisorRuntime, make: Make) -> None:
    sid = (await make()).sandbox_id
    files = runtime.files(sid)
    (files.base / "hibernate.tmp").mkdir()  # a crash while writing the image
    (files.base / "hibernate.tmp" / "checkpoint.img").write_bytes(b"partial")
    assert await runtime.state(sid) == RuntimeState.RUNNING
    # a capture cut short after the agent released its socket: start re-takes it
    await run(runtime, sid, "true")  # the agent is up (handles USR1)
    await runtime.runsc.kill(files.cid, "USR1")
    for _ in range(200):
        if (files.run_dir / "agent.released").exists():
            break
        await asyncio.sleep(0.05)
    files.agent_socket.unlink()
    await runtime.start(sid)
    assert await run(runtime, sid, "echo back") == "back\n"
    await runtime.hibernate(sid)
    assert await runtime.state(sid) == RuntimeState.HIBERNATED
    assert not (files.base / "hibernate.tmp").exists()
    await runtime.wake(sid)


# -- snapshots ------------------------------------------------------------------------------


async def test_memory_snapshot_forks(runtime: GVisorRuntime, make: Make, data_dir: Path) -> None:
    source = (await make()).sandbox_id
    await start_counter(runtime, source)
    await count(runtime, source)  # 1
    await run(runtime, source, "echo from-source > /root/file; echo t > /tmp/t")
    snap = data_dir / "snaps" / uuid.uuid4().hex[:8]
    snap.mkdir(parents=True)  # an empty dir is fine
    t0 = time.perf_counter()
    await runtime.snapshot(source, snap, memory=True)
    print(f"\nmemory snapshot {(time.perf_counter() - t0) * 1000:.0f} ms")
    assert sorted(p.name for p in snap.iterdir()) == ["layer", "memory", "snapshot.json"]
    assert await runtime.state(source) == RuntimeState.RUNNING
    assert await count(runtime, source) == 2  # the source goes on
    before = manifest(snap)

    a = (await make(snapshot=snap)).sandbox_id
    b = (await make(snapshot=snap)).sandbox_id
    assert [await count(runtime, a), await count(runtime, a)] == [2, 3]
    assert await count(runtime, b) == 2  # independent of a
    await run(runtime, a, "echo from-a > /root/file")
    assert await run(runtime, b, "cat /root/file /tmp/t") == "from-source\nt\n"
    await runtime.destroy(source)
    assert await count(runtime, a) == 4 and await count(runtime, b) == 3
    assert await run(runtime, a, "cat /root/file") == "from-a\n"
    # clones survive a stop/start (booting from their own disk over the layer)
    await runtime.stop(b)
    await runtime.start(b)
    assert await run(runtime, b, "cat /root/file") == "from-source\n"
    assert manifest(snap) == before  # nothing wrote into the shared snapshot
    shutil.rmtree(snap)


async def test_file_snapshot_keeps_layer_details(
    runtime: GVisorRuntime, make: Make, data_dir: Path
) -> None:
    source = (await make()).sandbox_id
    await start_counter(runtime, source)
    await run(
        runtime,
        source,
        "set -e; rm /etc/debian_version; rm -rf /usr/share/doc; mkdir -p /usr/share/doc;"
        " echo new > /usr/share/doc/only; echo data > /root/a; ln /root/a /root/b;"
        " install -m 640 -o 1000 -g 1000 /dev/null /root/owned;"
        " truncate -s 100M /root/sparse; echo x >> /root/sparse; echo t > /tmp/t",
    )
    snap = data_dir / "snaps" / uuid.uuid4().hex[:8]
    await runtime.snapshot(source, snap, memory=False)
    assert sorted(p.name for p in snap.iterdir()) == ["layer", "snapshot.json"]
    assert await count(runtime, source) == 1  # it ran on
    layer = snap / "layer"
    assert (layer / "root/sparse").stat().st_blocks * 512 < 10 * 1024 * 1024

    clone = (await make(snapshot=snap)).sandbox_id
    out = await run(
        runtime,
        clone,
        "test ! -e /etc/debian_version && echo gone; ls /usr/share/doc; cat /root/b;"
        " stat -c '%h %u:%g %a' /root/a /root/owned; stat -c %s /root/sparse; cat /tmp/t",
    )
    assert out.split("\n") == ["gone", "only", "data", "2 0:0 644", "1 1000:1000 640",
                               str(100 * 1024 * 1024 + 2), "t", ""]  # fmt: skip
    with pytest.raises(AssertionError):  # booted fresh: no counter process
        await run(runtime, clone, GET)
    shutil.rmtree(snap)


async def test_snapshot_refusals_leave_nothing(
    runtime: GVisorRuntime, make: Make, data_dir: Path, rootfs: Path
) -> None:
    sid = (await make()).sandbox_id
    taken = data_dir / "snaps" / uuid.uuid4().hex[:8]
    taken.mkdir(parents=True)
    (taken / "junk").write_text("x")
    with pytest.raises(Conflict):
        await runtime.snapshot(sid, taken, memory=False)
    snap = data_dir / "snaps" / uuid.uuid4().hex[:8]
    await runtime.snapshot(sid, snap, memory=True)
    other = f"h-{uuid.uuid4().hex[:10]}"
    wrong = SandboxSpec(
        sandbox_id=other, template="t", rootfs=rootfs, memory_mib=512, layers=(snap / "layer",)
    )
    with pytest.raises(InvalidRequest, match="memory_mib"):
        await runtime.create_from_snapshot(wrong, snap)
    with pytest.raises(InvalidRequest, match="layer"):
        await runtime.create_from_snapshot(
            SandboxSpec(sandbox_id=other, template="t", rootfs=rootfs, layers=(rootfs,)), snap
        )
    with pytest.raises(InvalidRequest):
        await runtime.create_from_snapshot(
            SandboxSpec(sandbox_id=other, template="t", rootfs=rootfs), taken
        )
    assert await runtime.state(other) == RuntimeState.ABSENT
    await runtime.stop(sid)
    with pytest.raises(InvalidStateTransition):
        await runtime.snapshot(sid, data_dir / "snaps" / "never", memory=False)
    assert not (data_dir / "snaps" / "never").exists()
    shutil.rmtree(snap)
    shutil.rmtree(taken)


# -- pause / resume through the freezer ------------------------------------------------------


async def test_pause_freezes_every_process(runtime: GVisorRuntime, make: Make) -> None:
    sid = (await make()).sandbox_id
    await start_counter(runtime, sid)
    async with await agent(runtime, sid) as client:
        ticker = await client.exec(
            "while :; do echo t >> /tmp/ticks; sleep 0.02; done", background=True
        )
        await ticker.detach()
    ticks = runtime.files(sid).layers.tmp / "ticks"
    for _ in range(100):
        if ticks.exists() and ticks.stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    await runtime.pause(sid)
    assert freezer.is_frozen(sid)  # the freezer, not runsc, holds it
    assert await runtime.state(sid) == RuntimeState.PAUSED
    await runtime.pause(sid)  # idempotent
    size = ticks.stat().st_size
    await asyncio.sleep(0.5)
    assert ticks.stat().st_size == size  # nothing inside runs
    await runtime.resume(sid)
    assert await runtime.state(sid) == RuntimeState.RUNNING
    for _ in range(100):
        if ticks.stat().st_size > size:
            break
        await asyncio.sleep(0.05)
    assert ticks.stat().st_size > size
    assert await count(runtime, sid) == 1
    # a paused sandbox hibernates (and wakes running)
    await runtime.pause(sid)
    await runtime.hibernate(sid)
    assert await runtime.state(sid) == RuntimeState.HIBERNATED
    await runtime.wake(sid)
    assert not freezer.is_frozen(sid)
    assert await count(runtime, sid) == 2
