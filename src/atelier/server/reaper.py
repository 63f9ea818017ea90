"""Make the server the reaper of the sandbox processes runsc leaves behind.

``runsc create`` forks the sandbox and gofer processes and exits, so they are
re-parented to the nearest *subreaper*, normally PID 1. ``runsc delete``
then waits until the killed sandbox is reaped, and a PID 1 that reaps rarely
(a container init, some VM inits: about once a second here) makes every stop
and delete that slow. As a subreaper the server adopts them and reaps them as
soon as SIGCHLD says they died.

Only adopted zombies whose command name is ``exe`` (runsc re-executes itself
through ``/proc/self/exe``) are reaped here; the server's own subprocesses
belong to asyncio, which waits for them itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

__all__ = ["SandboxReaper"]

log = logging.getLogger("atelier.reaper")
PR_SET_CHILD_SUBREAPER = 36
ADOPTED_COMM = "exe"


def _children(proc: Path = Path("/proc/self/task")) -> list[int]:
    pids: list[int] = []
    for task in proc.iterdir():
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in (task / "children").read_text().split())
    return pids


def _is_adopted_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2 : stat.rindex(")") + 3]
    return state == "Z" and comm == ADOPTED_COMM


class SandboxReaper:
    def __init__(self) -> None:
        self.enabled = False
        self._task: asyncio.Task[None] | None = None

    def reap(self) -> int:
        reaped = 0
        for pid in _children():
            if _is_adopted_zombie(pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                    reaped += 1
        return reaped

    def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))
            return
        self.enabled = True
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self._task = loop.create_task(self._sweep(), name="reaper")

    async def _sweep(self) -> None:
        while True:  # a safety net for coalesced signals
            await asyncio.sleep(5)
            self.reap()

    async def stop(self) -> None:
        if not self.enabled:
            return
        asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.enabled = False
