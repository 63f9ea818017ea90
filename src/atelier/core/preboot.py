"""Pre-booted templates: creates that restore a memory snapshot instead of booting.

For a runtime with :attr:`Capability.MEMORY_SNAPSHOT`, the first create of a
(template, vcpus, memory, disk) shape boots cold as usual and, in the
background, a throwaway sandbox of that shape is booted, snapshotted once its
agent answers, and destroyed. Later creates of the same shape restore that
snapshot (copy-on-write memory), which under QEMU/TCG here is an order of
magnitude faster than a cold boot.

A snapshot holds the agent's code and the guest kernel in its memory, so its
key includes a digest of the agent sources and the template's build time:
changing either simply leads to a new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from ..agent import bootstrap
from ..config import Settings
from ..runtimes.base import Capability, Runtime, SandboxSpec

__all__ = ["PrebootShape", "Preboots", "SnapshottingRuntime"]

log = logging.getLogger("atelier.preboot")
READY_MARK = "ready"


class SnapshottingRuntime(Protocol):
    async def snapshot(self, sandbox_id: str, dest: Path) -> None: ...

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class PrebootShape:
    runtime: str
    template: str
    template_stamp: str  # when the template was built: a rebuild invalidates
    vcpus: int
    memory_mib: int
    disk_mib: int

    def key(self) -> str:
        parts = (self.runtime, self.template, self.template_stamp, _agent_digest())
        sizes = (self.vcpus, self.memory_mib, self.disk_mib)
        raw = "|".join([*parts, *map(str, sizes)])
        digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
        return f"{self.runtime}-{self.template}-{self.vcpus}c-{self.memory_mib}m-{digest}"


@cache
def _agent_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(bootstrap.package_dir().glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


WaitForAgent = Callable[[str, str], Awaitable[None]]


class Preboots:
    """The snapshot store and the background jobs that fill it."""

    def __init__(self, settings: Settings, wait_for_agent: WaitForAgent) -> None:
        self.root = settings.data_dir / "preboot"
        self.enabled = settings.preboot
        self.runtimes = frozenset(settings.preboot_runtimes)
        self._wait_for_agent = wait_for_agent
        self._jobs: dict[str, asyncio.Task[None]] = {}

    def supported(self, runtime: Runtime) -> bool:
        """Whether creates on ``runtime`` restore pre-booted snapshots (the
        settings' ``preboot`` and ``preboot_runtimes``, and the capability)."""
        return (
            self.enabled
            and runtime.name in self.runtimes
            and Capability.MEMORY_SNAPSHOT in runtime.capabilities()
        )

    def ready(self, shape: PrebootShape) -> Path | None:
        path = self.root / shape.key()
        return path if (path / READY_MARK).exists() else None

    def discard(self, shape: PrebootShape) -> None:
        """Forget a snapshot that could not be restored; the next create makes a new one."""
        shutil.rmtree(self.root / shape.key(), ignore_errors=True)

    def ensure(self, runtime: Runtime, shape: PrebootShape, spec: SandboxSpec) -> None:
        """Start making the snapshot for ``shape`` in the background (once)."""
        key = shape.key()
        if self.ready(shape) is not None or key in self._jobs:
            return
        task = asyncio.get_running_loop().create_task(self._make(runtime, shape, spec))
        self._jobs[key] = task
        task.add_done_callback(lambda _t: self._jobs.pop(key, None))

    async def _make(self, runtime: Runtime, shape: PrebootShape, like: SandboxSpec) -> None:
        sandbox_id = "pb-" + secrets.token_hex(5)
        final = self.root / shape.key()
        work = self.root / f".{shape.key()}.{sandbox_id}"
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template=like.template,
            rootfs=like.rootfs,
            vcpus=like.vcpus,
            memory_mib=like.memory_mib,
            disk_mib=like.disk_mib,
            hostname="sandbox",
        )
        snapshotter: SnapshottingRuntime = runtime
        try:
            await runtime.create(spec)
            await runtime.start(sandbox_id)
            await self._wait_for_agent(sandbox_id, runtime.name)
            work.mkdir(parents=True)
            await snapshotter.snapshot(sandbox_id, work)
            (work / READY_MARK).write_text(shape.key() + "\n")
            if not final.exists():
                work.rename(final)
            log.info("pre-booted %s for %s", final.name, shape.template)
        except Exception as exc:
            log.warning("could not pre-boot %s: %s", shape.key(), exc)
        finally:
            with contextlib.suppress(Exception):
                await runtime.destroy(sandbox_id)
            shutil.rmtree(work, ignore_errors=True)

    async def close(self) -> None:
        for task in list(self._jobs.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
