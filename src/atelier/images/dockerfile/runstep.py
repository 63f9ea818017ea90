"""One RUN step in a throwaway gVisor sandbox over a read-only view.

create (rootfs = the view) -> start -> agent -> [mkdir WORKDIR] -> the command,
output streamed -> stop -> mount the stopped sandbox's disk read-only -> copy
its overlay upper dir (the step's diff) -> destroy. The sandbox is destroyed
on every path, including failure and cancellation.

The runtime's own writes are not part of the step: ``/etc/hostname`` and
``/etc/hosts`` (written at create, unless the command changed them) and the
mount points runsc creates (``/.atelier``, ``/run/atelier``) are removed from
the diff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...agent import bootstrap
from ...core.agent_client import AgentClient, Exit, Output
from ...runtimes.base import SandboxSpec
from ...runtimes.gvisor import GVisorRuntime
from . import overlay

__all__ = ["BUILD_HOSTNAME", "RunOutcome", "run_in_sandbox", "strip_runtime_files"]

BUILD_HOSTNAME = "atelier-build"
AGENT_TIMEOUT = 60.0
_TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class RunOutcome:
    exit_code: int
    signal: str | None
    tail: tuple[str, ...]  # the last lines of output
    seconds: float


class _Lines:
    """Bytes -> lines for ``on_log``, keeping the last lines for errors."""

    def __init__(self, on_log: Callable[[str], None] | None) -> None:
        self.on_log = on_log
        self.partial = {1: b"", 2: b""}
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

    def feed(self, channel: int, data: bytes) -> None:
        buf = self.partial.get(channel, b"") + data
        *lines, rest = buf.split(b"\n")
        self.partial[channel] = rest
        for raw in lines:
            self.emit(raw)

    def emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def flush(self) -> None:
        for channel, rest in self.partial.items():
            if rest:
                self.emit(rest)
            self.partial[channel] = b""


def _identity_texts(hostname: str) -> dict[str, str]:
    hosts = (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
    return {"etc/hostname": f"{hostname}\n", "etc/hosts": hosts}


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def strip_runtime_files(diff: Path, view: Path, hostname: str = BUILD_HOSTNAME) -> None:
    """Remove what the runtime (not the command) wrote into a RUN's diff."""
    for rel, text in _identity_texts(hostname).items():
        path = diff / rel
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    path.unlink()
    mount_points = [
        bootstrap.RUNTIME_MOUNT,
        f"{bootstrap.AGENT_MOUNT}/agent",
        bootstrap.AGENT_MOUNT,
        bootstrap.RUN_DIR,
    ]
    for point in mount_points:
        path = diff / point.lstrip("/")
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
    # directories only copied up to hold those files: empty, not opaque, in the view
    for rel in ("etc", "run"):
        path = diff / rel
        if (
            path.is_dir()
            and not path.is_symlink()
            and not any(path.iterdir())
            and not _is_opaque(path)
            and (view / rel).is_dir()
        ):
            st_view, st_diff = os.lstat(view / rel), os.lstat(path)
            if (st_view.st_mode, st_view.st_uid, st_view.st_gid) == (
                st_diff.st_mode,
                st_diff.st_uid,
                st_diff.st_gid,
            ):
                path.rmdir()


async def run_in_sandbox(
    runtime: GVisorRuntime,
    view: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    user: str,
    diff: Path,
    scratch: Path,
    on_log: Callable[[str], None] | None = None,
    on_sandbox: Callable[[str], None] | None = None,
    resources: Mapping[str, int] | None = None,
) -> RunOutcome:
    """Run ``argv`` in a sandbox over ``view``; on exit 0 copy the changes into
    ``diff``. ``scratch`` is an empty dir for a temporary mount point."""
    sid = f"build-{uuid.uuid4().hex[:12]}"
    res = dict(resources or {})
    spec = SandboxSpec(
        sandbox_id=sid,
        template="dockerfile-build",
        rootfs=view,
        vcpus=res.get("vcpus", 1),
        memory_mib=res.get("memory_mib", 1024),
        disk_mib=res.get("disk_mib", 4096),
        hostname=BUILD_HOSTNAME,
        labels={"atelier.build": "dockerfile"},
    )
    lines = _Lines(on_log)
    started = time.monotonic()
    try:
        await runtime.create(spec)
        if on_sandbox is not None:
            on_sandbox(sid)
        await runtime.start(sid)
        exit_ = await _run(runtime, sid, argv, env, cwd, user, lines)
        await runtime.stop(sid)
        outcome = RunOutcome(
            exit_.exit_code, exit_.signal, tuple(lines.tail), time.monotonic() - started
        )
        if exit_.exit_code == 0 and exit_.signal is None:
            mnt = scratch / f"disk-{sid}"
            await overlay.mount_disk_readonly(runtime.files(sid).layers.disk, mnt)
            try:
                upper = mnt / "upper"
                await overlay.copy_tree(upper, diff)
            finally:
                await overlay.unmount(mnt)
                with contextlib.suppress(OSError):
                    mnt.rmdir()
            await asyncio.to_thread(strip_runtime_files, diff, view)
        return outcome
    finally:
        await _destroy(runtime, sid)  # also when cancelled: finally still awaits


async def _destroy(runtime: GVisorRuntime, sid: str) -> None:
    await runtime.destroy(sid)
    base = runtime.files(sid).base
    if base.exists() and not overlay.has_mounts(base):
        shutil.rmtree(base, ignore_errors=True)


async def _run(
    runtime: GVisorRuntime,
    sid: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    user: str,
    lines: _Lines,
) -> Exit:
    agent = await AgentClient.connect(runtime.agent_socket(sid), timeout=AGENT_TIMEOUT)
    try:
        if cwd != "/":
            made = await agent.run(argv=["mkdir", "-p", cwd], user="root", cwd="/")
            if made.exit_code != 0:
                lines.emit(made.stderr.rstrip())
                return Exit(made.exit_code, None, False)
        session = await agent.exec(argv=list(argv), env=dict(env), cwd=cwd, user=user)
        try:
            async for event in session:
                if isinstance(event, Output):
                    lines.feed(event.channel, event.data)
        finally:
            await session.detach()
        lines.flush()
        if session.exit is None:
            return Exit(255, None, False)
        return session.exit
    finally:
        await agent.close()
