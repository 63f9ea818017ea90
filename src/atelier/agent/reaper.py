"""Reaping every child as init (PID 1) or as a child subreaper.

asyncio's child watchers are not used: one SIGCHLD handler loops
``waitpid(-1, WNOHANG)`` and hands each status to whoever watches that pid.
A child can exit (and be reaped) before the spawning thread has returned its
pid to the event loop, so while any spawn is in flight the statuses of pids
nobody watches are kept; once no spawn is in flight they belong to orphans and
are dropped (a pid cannot be reused within that window in practice).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Callable

from .common import log

__all__ = ["Reaper", "set_child_subreaper"]

_PR_SET_CHILD_SUBREAPER = 36
_UNCLAIMED_MAX = 4096


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (so it can reap them)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Reaper:
    def __init__(self) -> None:
        self._watchers: dict[int, Callable[[int], None]] = {}
        self._unclaimed: dict[int, int] = {}
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reaped = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if os.getpid() != 1 and not set_child_subreaper():
            log.warning("could not become a child subreaper; orphans will not be reaped")
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler was installed

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)

    def watch(self, pid: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(raw_status)`` (on the loop) once ``pid`` exited."""
        found = self._unclaimed.pop(pid, None)
        if found is not None:
            assert self._loop is not None
            self._loop.call_soon(callback, found)
            return
        self._watchers[pid] = callback

    def spawn_started(self) -> None:
        """A spawn is in flight: keep statuses of unknown pids until it registers."""
        self._in_flight += 1

    def spawn_finished(self) -> None:
        """Call after ``watch`` registered the new pid (or the spawn failed)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._unclaimed.clear()

    def unwatch(self, pid: int) -> None:
        self._watchers.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.reaped += 1
            callback = self._watchers.pop(pid, None)
            if callback is not None:
                try:
                    callback(status)
                except Exception:
                    log.exception("exit callback for pid %d failed", pid)
            else:
                self._remember(pid, status)

    def _remember(self, pid: int, status: int) -> None:
        if self._in_flight == 0:
            return  # an orphan: reaped, nothing else to do
        if len(self._unclaimed) >= _UNCLAIMED_MAX:
            del self._unclaimed[next(iter(self._unclaimed))]
        self._unclaimed[pid] = status
