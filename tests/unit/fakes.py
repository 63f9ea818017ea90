"""A runtime for unit tests of the layers above the runtime contract.

It runs the real agent as a plain host process (no isolation at all), so the
control plane and API can be tested against the real agent protocol without
runsc. Never used outside tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

from atelier.agent import bootstrap
from atelier.errors import RuntimeFailure
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
