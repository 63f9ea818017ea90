"""Idle auto-stop: activity tracking and the policy loop that pauses, hibernates
and deletes sandboxes nobody uses.

A sandbox is *idle* while nothing uses it: no call that needs its agent (exec,
files, code, ports...; :meth:`SandboxService.agent` touches it), no proxied
preview request, and no attached session (an open PTY, SSH session, port
tunnel, WebSocket, streaming command or code run: :meth:`ActivityTracker.attached`).
Its :class:`~atelier.core.models.AutoStop` policy then says after how long it is
paused, hibernated and deleted. A paused or hibernated sandbox wakes by itself
on the next call that needs it, so the policy is invisible to clients except
for the wait. The last activity is saved on the sandbox row now and then
(``last_active_at``) so a server restart does not reset the idle clocks.
See docs/lifecycle.md.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from ..config import Settings
from ..errors import AtelierError, InvalidRequest
from ..runtimes.base import Capability
from ..store.repository import utcnow
from .models import AutoStop, SandboxRecord, SandboxState
from .periodic import Periodic

if TYPE_CHECKING:
    from .service import SandboxService

__all__ = ["ActivityTracker", "IdlePolicy", "default_auto_stop", "validate_auto_stop"]

log = logging.getLogger("atelier.idle")
S = SandboxState
Clock = Callable[[], datetime]
T = TypeVar("T")
SAVE_EVERY = timedelta(seconds=60)  # how stale a row's last_active_at may get


def validate_auto_stop(policy: AutoStop | None) -> AutoStop | None:
    """``policy`` if it makes sense (``None`` when empty); :class:`InvalidRequest` otherwise."""
    if policy is None or policy.empty:
        return None
    steps = [
        ("pause_after", policy.pause_after),
        ("hibernate_after", policy.hibernate_after),
        ("delete_after", policy.delete_after),
    ]
    for name, value in steps:
        if value is not None and not value > 0:
            raise InvalidRequest(f"auto_stop.{name} must be a positive number of seconds")
    given = [(name, value) for name, value in steps if value is not None]
    for (a, va), (b, vb) in itertools.pairwise(given):
        assert va is not None and vb is not None
        if not vb > va:
            raise InvalidRequest(
                f"auto_stop.{b} ({vb:g} s) must be longer than auto_stop.{a} ({va:g} s)",
                details={a: va, b: vb},
            )
    return policy


def default_auto_stop(settings: Settings) -> AutoStop | None:
    """The server's default policy (settings ``auto_stop_*``), or ``None``."""
    return validate_auto_stop(
        AutoStop(
            pause_after=settings.auto_stop_pause_after,
            hibernate_after=settings.auto_stop_hibernate_after,
            delete_after=settings.auto_stop_delete_after,
        )
    )


class ActivityTracker:
    """When each sandbox was last used, and how many sessions hold it now (in memory)."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self._last: dict[str, datetime] = {}
        self._attached: dict[str, int] = {}

    def touch(self, sandbox_id: str) -> None:
        self._last[sandbox_id] = self.clock()

    @contextlib.contextmanager
    def attached(self, sandbox_id: str) -> Iterator[None]:
        """Counts as activity for as long as the block runs (a session, a stream)."""
        self._attached[sandbox_id] = self._attached.get(sandbox_id, 0) + 1
        self.touch(sandbox_id)
        try:
            yield
        finally:
            self.touch(sandbox_id)
            left = self._attached.get(sandbox_id, 1) - 1
            if left > 0:
                self._attached[sandbox_id] = left
            else:
                self._attached.pop(sandbox_id, None)

    async def hold(self, sandbox_id: str, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """``stream``, with the sandbox :meth:`attached` while it is consumed
        (a streaming response: a command's or a code cell's events)."""
        with self.attached(sandbox_id):
            try:
                async for item in stream:
                    yield item
            finally:  # its own clean-up runs now, not when it is collected
                if isinstance(stream, AsyncGenerator):
                    await stream.aclose()

    def busy(self, sandbox_id: str) -> bool:
        return self._attached.get(sandbox_id, 0) > 0

    def last(self, sandbox_id: str) -> datetime | None:
        return self._last.get(sandbox_id)

    def seed(self, sandbox_id: str, when: datetime) -> datetime:
        """The last activity, taking ``when`` (e.g. from the row) if none is known."""
        return self._last.setdefault(sandbox_id, when)

    def forget(self, sandbox_id: str) -> None:
        self._last.pop(sandbox_id, None)
        self._attached.pop(sandbox_id, None)


class IdlePolicy:
    """The background loop applying each sandbox's :class:`AutoStop` policy."""

    def __init__(self, service: SandboxService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._loop = Periodic("idle-policy", interval, self.tick, log)

    @property
    def activity(self) -> ActivityTracker:
        return self.service.activity

    def idle_for(self, rec: SandboxRecord) -> timedelta | None:
        """How long ``rec`` has been idle (``None``: a session holds it)."""
        if self.activity.busy(rec.id):
            return None
        since = rec.last_active_at or rec.started_at or rec.created_at
        last = self.activity.seed(rec.id, since)
        return self.activity.clock() - last

    def due(self, rec: SandboxRecord) -> str | None:
        """What the policy asks for now: ``delete``, ``hibernate``, ``pause`` or nothing."""
        policy = rec.auto_stop
        idle = self.idle_for(rec)
        if policy is None or idle is None:
            return None
        seconds = idle.total_seconds()
        caps = self.service.runtimes.get(rec.runtime).capabilities()
        if policy.delete_after is not None and seconds >= policy.delete_after:
            return "delete"
        if rec.state not in (S.RUNNING, S.PAUSED):
            return None
        if (
            policy.hibernate_after is not None
            and seconds >= policy.hibernate_after
            and Capability.HIBERNATE in caps
        ):
            return "hibernate"
        if (
            rec.state == S.RUNNING
            and policy.pause_after is not None
            and seconds >= policy.pause_after
            and Capability.PAUSE in caps
        ):
            return "pause"
        return None

    async def tick(self) -> None:
        service = self.service
        records = await service.repo.list_sandboxes(
            states=[S.RUNNING, S.PAUSED, S.HIBERNATED, S.STOPPED]
        )
        for rec in records:
            try:
                await self._apply(rec)
            except AtelierError as exc:
                log.warning("idle policy on %s failed: %s", rec.id, exc)
        with contextlib.suppress(AtelierError):
            await service.snapshots.collect_garbage()

    async def _apply(self, rec: SandboxRecord) -> None:
        service = self.service
        async with service.lock(rec.id):
            try:  # re-read under the lock: a caller may just have used or woken it
                rec = await service.repo.get_sandbox(rec.id)
            except AtelierError:
                return
            await self._save_last_active(rec)
            action = self.due(rec)
            if action is None:
                return
            idle = self.idle_for(rec)
            if action == "pause":
                await service.pause_locked(rec)
            elif action == "hibernate":
                await service.hibernate_locked(rec)
        if action == "delete":
            await service.delete(None, rec.id)
            self.activity.forget(rec.id)
        await service.repo.record_event(
            f"auto_{action}",
            rec.id,
            "system",
            idle_seconds=round(idle.total_seconds()) if idle else None,
        )
        log.info("sandbox %s idle: %s", rec.id, action)

    async def _save_last_active(self, rec: SandboxRecord) -> None:
        last = self.activity.last(rec.id)
        if last is None:
            return
        saved = rec.last_active_at
        if saved is None or last - saved >= SAVE_EVERY:
            await self.service.repo.update_sandbox(rec.id, last_active_at=last)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
