"""The background loop of prebuilds: polls the remotes of prebuilds that ask
for it (hosts without webhooks) and retries snapshot removals the retention
policy had to defer. Started and stopped by the app lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .service import PrebuildService

__all__ = ["PrebuildPoller"]

log = logging.getLogger("atelier.prebuilds")


class PrebuildPoller:
    def __init__(
        self, service: PrebuildService, tick: float = 1.0, collect_every: int = 60
    ) -> None:
        self.service = service
        self.tick = tick
        self.collect_every = collect_every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="prebuilds")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        rounds = 0
        while True:
            try:
                await self.service.poll_once()
                if rounds % self.collect_every == 0:
                    await self.service.collect_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not stop the loop
                log.exception("prebuild poll round failed")
            rounds += 1
            await asyncio.sleep(self.tick)
