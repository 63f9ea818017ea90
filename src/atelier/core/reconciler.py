"""Reconciler: makes the host match the database, after a crash and every tick.

At start-up (``recover``): sandboxes left mid-operation are finished or
undone, running ones are re-adopted (or marked stopped if they died), and
anything a runtime holds that the database does not know is destroyed.
Every tick (``tick``): sandboxes whose timeout passed are stopped.
"""

from __future__ import annotations

import contextlib
import logging

from ..errors import AtelierError
from ..store.repository import utcnow
from .models import SandboxState
from .periodic import Periodic
from .service import SandboxService

__all__ = ["Reconciler"]

log = logging.getLogger("atelier.reconciler")
S = SandboxState
_LIVE = [
    S.CREATING,
    S.STARTING,
    S.RUNNING,
    S.PAUSED,
    S.HIBERNATED,
    S.STOPPING,
    S.STOPPED,
    S.ERROR,
]


class Reconciler:
    def __init__(self, service: SandboxService, interval: float = 1.0) -> None:
        self.service = service
        self.interval = interval
        self._loop = Periodic("reconciler", interval, self.tick, log)

    async def recover(self) -> None:
        repo = self.service.repo
        records = await repo.list_sandboxes(states=_LIVE, pooled=None)
        known = {rec.id for rec in records}
        await self.service.snapshots.recover()
        for rec in records:
            try:
                await self.service.recover(rec)
            except Exception as exc:
                log.error("could not recover sandbox %s: %s", rec.id, exc)
        for runtime in self.service.runtimes.all():
            if not runtime.availability().available:
                continue
            for orphan in set(await runtime.list_ids()) - known:
                log.info("destroying orphaned %s sandbox %s", runtime.name, orphan)
                with contextlib.suppress(Exception):
                    await runtime.destroy(orphan)
                await repo.record_event("recover_orphan", orphan, "system", runtime=runtime.name)

    async def tick(self) -> None:
        repo = self.service.repo
        now = utcnow()
        for rec in await repo.list_sandboxes(states=[S.RUNNING, S.PAUSED, S.HIBERNATED]):
            if rec.expires_at is not None and rec.expires_at <= now:
                log.info("sandbox %s reached its timeout; stopping it", rec.id)
                try:
                    await self.service.stop(None, rec.id)
                except AtelierError as exc:
                    log.warning("auto-stop of %s failed: %s", rec.id, exc)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
