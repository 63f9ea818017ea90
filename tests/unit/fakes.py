"""A runtime for unit tests of the layers above the runtime contract.

It runs the real agent as a plain host process (no isolation at all), so the
control plane and API can be tested against the real agent protocol without
runsc. Never used outside tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

from atelier.agent import bootstrap
from atelier.errors import InvalidRequest, RuntimeFailure
from atelier.runtimes.base import Capability, RuntimeAvailability, RuntimeState, SandboxSpec


class ProcessRuntime:
    name = "gvisor"  # stands in for the default runtime

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_on: set[str] = set()

    def capabilities(self) -> Capability:
        return Capability.PERSISTENT_DISK

    def availability(self) -> RuntimeAvailability:
        return RuntimeAvailability(self.name, True, "host processes (unit tests)")

    def _dir(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    async def create(self, spec: SandboxSpec) -> None:
        self.calls.append(("create", spec.sandbox_id))
        (self._dir(spec.sandbox_id) / "run").mkdir(parents=True)
        mount = self._dir(spec.sandbox_id) / "mount"
        mount.mkdir()
        (mount / "agent").symlink_to(bootstrap.package_dir())
        if "create" in self.fail_on:
            raise RuntimeFailure("injected create failure")

    async def start(self, sandbox_id: str) -> None:
        self.calls.append(("start", sandbox_id))
        if "start" in self.fail_on:
            raise RuntimeFailure("injected start failure")
        d = self._dir(sandbox_id)
        argv = bootstrap.agent_argv(
            python=sys.executable, mount=str(d / "mount"), run_dir=str(d / "run")
        )
        self.procs[sandbox_id] = await asyncio.create_subprocess_exec(
            *argv, start_new_session=True, stdout=asyncio.subprocess.DEVNULL
        )

    async def stop(self, sandbox_id: str) -> None:
        self.calls.append(("stop", sandbox_id))
        proc = self.procs.pop(sandbox_id, None)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def pause(self, sandbox_id: str) -> None:
        raise NotImplementedError

    async def resume(self, sandbox_id: str) -> None:
        raise NotImplementedError

    async def destroy(self, sandbox_id: str) -> None:
        self.calls.append(("destroy", sandbox_id))
        await self.stop(sandbox_id)
        shutil.rmtree(self._dir(sandbox_id), ignore_errors=True)

    async def state(self, sandbox_id: str) -> RuntimeState:
        proc = self.procs.get(sandbox_id)
        if proc is not None and proc.returncode is None:
            return RuntimeState.RUNNING
        return RuntimeState.STOPPED if self._dir(sandbox_id).exists() else RuntimeState.ABSENT

    async def list_ids(self) -> list[str]:
        return [p.name for p in self.root.iterdir()] if self.root.exists() else []

    def agent_socket(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "run" / bootstrap.SOCKET_NAME

    async def aclose(self) -> None:
        """Nothing runs in the background."""

    def info(self, sandbox_id: str) -> dict[str, str]:
        return {"isolation": "none (unit tests)"}

    def log_path(self, sandbox_id: str) -> Path:
        return self._dir(sandbox_id) / "run" / bootstrap.LOG_NAME


class HibernatingRuntime(ProcessRuntime):
    """:class:`ProcessRuntime` with the optional verbs of issue 6, faked for the
    control plane's unit tests: pause/resume and hibernate/wake stop and continue
    the agent process (SIGSTOP/SIGCONT: memory kept, not saved); ``snapshot``
    writes the snapshot directory's files (a ``layer/`` holding one marker file,
    ``memory/`` if asked, ``snapshot.json``); ``create_from_snapshot`` records
    the layers it was given."""

    def __init__(self, root: Path, *, memory: bool = True) -> None:
        super().__init__(root)
        self.memory = memory  # whether memory snapshots are allowed
        self.hibernated: set[str] = set()
        self.paused: set[str] = set()
        self.layers: dict[str, tuple[Path, ...]] = {}
        self.wake_delay = 0.0  # seconds a wake takes (to overlap concurrent callers)

    def capabilities(self) -> Capability:
        return (
            Capability.PERSISTENT_DISK
            | Capability.PAUSE
            | Capability.HIBERNATE
            | Capability.MEMORY_SNAPSHOT
        )

    def _signal(self, sandbox_id: str, sig: int) -> None:
        proc = self.procs.get(sandbox_id)
        if proc is None or proc.returncode is not None:
            raise RuntimeFailure(f"{sandbox_id} is not running")
        os.killpg(proc.pid, sig)

    async def pause(self, sandbox_id: str) -> None:
        self.calls.append(("pause", sandbox_id))
        self._signal(sandbox_id, signal.SIGSTOP)
        self.paused.add(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        self.calls.append(("resume", sandbox_id))
        self._signal(sandbox_id, signal.SIGCONT)
        self.paused.discard(sandbox_id)

    async def hibernate(self, sandbox_id: str) -> None:
        self.calls.append(("hibernate", sandbox_id))
        if "hibernate" in self.fail_on:
            raise RuntimeFailure("injected hibernate failure")
        self._signal(sandbox_id, signal.SIGSTOP)
        self.paused.discard(sandbox_id)
        self.hibernated.add(sandbox_id)

    async def wake(self, sandbox_id: str) -> None:
        self.calls.append(("wake", sandbox_id))
        await asyncio.sleep(self.wake_delay)
        if "wake" in self.fail_on:
            raise RuntimeFailure("injected wake failure")
        self._signal(sandbox_id, signal.SIGCONT)
        self.hibernated.discard(sandbox_id)

    async def stop(self, sandbox_id: str) -> None:
        proc = self.procs.get(sandbox_id)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
        self.hibernated.discard(sandbox_id)
        self.paused.discard(sandbox_id)
        await super().stop(sandbox_id)

    async def state(self, sandbox_id: str) -> RuntimeState:
        if sandbox_id in self.hibernated:
            return RuntimeState.HIBERNATED
        if sandbox_id in self.paused:
            return RuntimeState.PAUSED
        return await super().state(sandbox_id)

    async def snapshot(self, sandbox_id: str, dest: Path, *, memory: bool) -> None:
        self.calls.append(("snapshot", sandbox_id))
        if "snapshot" in self.fail_on:
            raise RuntimeFailure("injected snapshot failure")
        if memory and not self.memory:
            raise InvalidRequest("memory snapshots are refused here")
        (dest / "layer").mkdir()
        (dest / "layer" / "marker").write_text(sandbox_id)
        if memory:
            (dest / "memory").mkdir()
            (dest / "memory" / "image").write_bytes(b"\0" * 8192)
        (dest / "snapshot.json").write_text(json.dumps({"memory": memory}))

    async def create_from_snapshot(self, spec: SandboxSpec, snapshot: Path) -> None:
        self.calls.append(("create_from_snapshot", spec.sandbox_id))
        assert (snapshot / "snapshot.json").exists()
        self.layers[spec.sandbox_id] = spec.layers
        await self.create(spec)
