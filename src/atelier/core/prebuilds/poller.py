"""The background loop of prebuilds: polls the remotes of prebuilds that ask
for it (hosts without webhooks) and retries snapshot removals the retention
policy had to defer. Started and stopped by the app lifespan."""

from __future__ import annotations

import logging

from ..periodic import Periodic
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
        self._rounds = 0
        self._loop = Periodic("prebuilds", tick, self._round, log)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _round(self) -> None:
        rounds, self._rounds = self._rounds, self._rounds + 1
        await self.service.poll_once()
        if rounds % self.collect_every == 0:
            await self.service.collect_all()
