"""Warm pool: pre-started sandboxes of the default template, handed out on create.

A pooled sandbox is an ordinary running sandbox with ``pooled=True`` and no
owner, hidden from every listing. ``claim`` turns one into the caller's
sandbox in a single compare-and-set update, so a create that hits the pool
costs one database write instead of a boot.

Templates are versioned: a pooled sandbox runs the version that was current
when it booted. The pool remembers the template version (``stamp``) its
members were checked against; when the template gets a new version, claims
stop (creates boot cold) until the refill loop has deleted the members of
older versions and booted new ones.

Each new member runs one login shell (``true`` through the agent's shell, as
the default user) before the pool moves on: a claimer's first command then
finds bash, its libraries and ``/etc/profile`` already in the sandbox's page
cache and the agent's spawner for that user started. Under gVisor's ptrace
platform that took 15-30 % off the first command here (first output of
``echo hi``, p50: 178 -> 150 ms through two pooled servers side by side,
148 -> 102 ms on fresh sandboxes). It is best effort; a member claimed while
it runs simply gets its first command next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..config import Settings
from ..errors import AtelierError
from ..store.repository import utcnow
from .auth import Principal
from .models import CreateRequest, SandboxRecord, SandboxState
from .service import SandboxService, _expiry

__all__ = ["WarmPool"]

log = logging.getLogger("atelier.pool")
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 512
DEFAULT_DISK_MIB = 2048
WARMUP_CMD = "true"  # run through the agent's shell (bash -l -c), like a claimer's command
WARMUP_TIMEOUT = 30.0


class WarmPool:
    def __init__(self, settings: Settings, service: SandboxService) -> None:
        self.settings = settings
        self.service = service
        self.size = settings.pool_size
        self._refill: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stamp: str | None = None  # the template version the members are of

    def _current_stamp(self) -> str | None:
        try:
            return self.service.templates.get(self.settings.default_template).stamp
        except AtelierError:
            return None

    def pool_request(self) -> CreateRequest:
        return CreateRequest(
            template=self.settings.default_template,
            runtime=None,
            vcpus=DEFAULT_VCPUS,
            memory_mib=DEFAULT_MEMORY_MIB,
            disk_mib=DEFAULT_DISK_MIB,
            timeout=None,
        )

    def matches(self, req: CreateRequest) -> bool:
        pool = self.pool_request()
        return (
            self.size > 0
            and req.template == pool.template
            and req.runtime in (None, self.settings.default_runtime)
            and req.network is None  # pooled sandboxes have the default network
            and (req.vcpus, req.memory_mib, req.disk_mib)
            == (pool.vcpus, pool.memory_mib, pool.disk_mib)
        )

    async def claim(self, req: CreateRequest, principal: Principal) -> SandboxRecord | None:
        if not self.matches(req):
            return None
        stamp = self._current_stamp()
        if stamp is None or stamp != self._stamp:  # a new version: members are stale
            self._wake.set()
            return None
        rec = await self.service.repo.claim_pooled(
            req.template,
            self.settings.default_runtime,
            vcpus=req.vcpus,
            memory_mib=req.memory_mib,
            disk_mib=req.disk_mib,
            owner=principal.token_id,
            env=dict(req.env),
            labels=dict(req.labels),
            timeout=req.timeout,
            expires_at=_expiry(req.timeout),
            created_at=utcnow(),
        )
        self._wake.set()
        return rec

    async def ready(self) -> int:
        """Pooled sandboxes running and ready to be claimed."""
        members = await self.service.repo.list_sandboxes(states=[SandboxState.RUNNING], pooled=True)
        return len(members)

    async def count(self) -> int:
        members = await self.service.repo.list_sandboxes(
            states=[SandboxState.RUNNING, SandboxState.CREATING], pooled=True
        )
        return len(members)

    async def drop_stale(self) -> int:
        """Delete the pooled sandboxes not made from the template's current version."""
        try:
            current = self.service.templates.get(self.settings.default_template)
        except AtelierError:
            return 0
        members = await self.service.repo.list_sandboxes(pooled=True)
        pins = await self.service.repo.template_pins([m.id for m in members])
        dropped = 0
        for rec in members:
            if rec.state == SandboxState.CREATING:
                continue  # being booted now: checked on the next round
            if rec.template != current.name or pins.get(rec.id) != current.version:
                with contextlib.suppress(Exception):
                    await self.service.delete(None, rec.id)
                    dropped += 1
        if dropped:
            log.info("warm pool: dropped %d sandboxes of older template versions", dropped)
        return dropped

    async def fill_once(self) -> None:
        """Boot pooled sandboxes until the pool has ``size`` members."""
        stamp = self._current_stamp()
        if self.size > 0 and stamp != self._stamp:
            await self.drop_stale()
            self._stamp = stamp
        while self.size > 0 and await self.count() < self.size:
            try:
                self.service.validate(self.pool_request())
                rec = await self.service.provision(self.pool_request(), owner=None, pooled=True)
            except Exception as exc:
                log.warning("warm pool could not start a sandbox: %s", exc)
                return
            await self.warm_up(rec)

    async def warm_up(self, rec: SandboxRecord) -> None:
        """Run :data:`WARMUP_CMD` once in a new member (see the module doc); never raises."""
        try:
            agent = await self.service.agents.get(rec.id, rec.runtime)
            res = await asyncio.wait_for(
                agent.run(
                    WARMUP_CMD,
                    user=rec.default_user,
                    cwd=rec.default_cwd,
                    timeout=WARMUP_TIMEOUT,
                ),
                WARMUP_TIMEOUT + 5,
            )
            if res.exit_code != 0:
                log.info("warm pool: warm-up of %s exited %s", rec.id, res.exit_code)
        except Exception as exc:  # claimed and deleted meanwhile, agent gone: no harm
            log.info("warm pool: could not warm up %s: %s", rec.id, exc)

    async def _run(self) -> None:
        while True:
            await self.fill_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=30)
                # a claim woke us: let the claimer's first commands have the CPUs
                await asyncio.sleep(self.settings.pool_refill_delay)

    def start(self) -> None:
        if self.size > 0 and self._refill is None:
            self._refill = asyncio.get_running_loop().create_task(self._run(), name="warm-pool")

    async def stop(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
            self._refill = None

    async def drain(self) -> None:
        """Delete every pooled sandbox (used when the pool is resized to 0)."""
        for rec in await self.service.repo.list_sandboxes(pooled=True):
            with contextlib.suppress(Exception):
                await self.service.delete(None, rec.id)
