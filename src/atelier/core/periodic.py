"""A background pass run every few seconds: the reconciler, the idle policy and
the prebuild poller are each one. Started and stopped by the app lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Periodic"]


class Periodic:
    """Run ``step`` every ``interval`` seconds until :meth:`stop`; a failing
    pass is logged and the next one runs as usual."""

    def __init__(
        self,
        name: str,
        interval: float,
        step: Callable[[], Awaitable[None]],
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:  # one bad pass must not stop the loop
                self._log.exception("%s pass failed", self.name)
            await asyncio.sleep(self.interval)
