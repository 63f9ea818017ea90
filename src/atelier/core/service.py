"""Sandbox lifecycle use cases: the control plane's one entry point.

The API calls this; this calls the runtime (through the registry) and the
store. Every lifecycle change is checked against the state machine, done
under a per-sandbox lock, written to the audit trail, and undone on failure
so that nothing is left half-created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from ..config import Settings
from ..errors import (
    AtelierError,
    InvalidRequest,
    RuntimeFailure,
    SandboxNotFound,
    TemplateNotFound,
)
from ..images.store import TemplateStore
from ..network import NetworkPolicy
from ..runtimes.base import Capability, Runtime, RuntimeState, SandboxSpec
from ..runtimes.registry import RuntimeRegistry
from ..store.repository import Repository, utcnow
from .agent_client import AgentClient
from .agents import AgentConnections
from .auth import Principal
from .models import (
    CreateRequest,
    SandboxRecord,
    SandboxState,
    check_transition,
    require_running,
)
from .preboot import Preboots, PrebootShape, SnapshottingRuntime
from .workspaces.setup_log import remove_workspace_files, setup_log_path

__all__ = ["SandboxService"]

log = logging.getLogger("atelier.service")
S = SandboxState
AGENT_READY_TIMEOUT = 60.0
SYSTEM = "system"
# A clone restored from a pre-booted snapshot takes its own name ($1).
RENAME_SCRIPT = (
    'hostname "$1" && echo "$1" > /etc/hostname && '
    r'sed -i "s/^127\.0\.1\.1\s.*/127.0.1.1\t$1/" /etc/hosts'
)


def new_sandbox_id() -> str:
    return "sb-" + secrets.token_hex(5)


class SandboxService:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        runtimes: RuntimeRegistry,
        templates: TemplateStore,
        agents: AgentConnections,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.runtimes = runtimes
        self.templates = templates
        self.agents = agents
        self._locks: dict[str, asyncio.Lock] = {}
        self.preboots = Preboots(settings, self._probe_agent)
        self.claim_pooled: Callable[[CreateRequest, Principal], Awaitable[SandboxRecord | None]]
        self.claim_pooled = _no_pool

    async def _restore_or_none(
        self, runtime: Runtime, spec: SandboxSpec, snapshot: Path
    ) -> Path | None:
        """Prepare a restore from ``snapshot``; ``None`` (boot cold) if it cannot be used."""
        try:
            await cast(SnapshottingRuntime, runtime).create_from_snapshot(spec, snapshot)
        except AtelierError as exc:
            log.warning("pre-booted snapshot %s unusable (%s); booting cold", snapshot.name, exc)
            await runtime.destroy(spec.sandbox_id)
            return None
        return snapshot

    async def _probe_agent(self, sandbox_id: str, runtime_name: str) -> None:
        """Wait until a sandbox's agent answers (without caching the connection)."""
        socket = self.runtimes.get(runtime_name).agent_socket(sandbox_id)
        client = await AgentClient.connect(socket, timeout=AGENT_READY_TIMEOUT)
        await client.close()

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # -- queries -------------------------------------------------------------
    async def get(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        rec = await self.repo.get_sandbox(sandbox_id)
        if rec.pooled or (not principal.admin and rec.owner != principal.token_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        return rec

    async def list(
        self,
        principal: Principal,
        states: list[SandboxState] | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[SandboxRecord]:
        owner = None if principal.admin else principal.token_id
        return await self.repo.list_sandboxes(owner=owner, states=states, labels=labels)

    async def agent(
        self, principal: Principal, sandbox_id: str
    ) -> tuple[SandboxRecord, AgentClient]:
        """The running sandbox and a live connection to its agent."""
        rec = await self.get(principal, sandbox_id)
        require_running(rec.id, rec.state)
        return rec, await self.agents.get(rec.id, rec.runtime)

    def runtime_info(self, rec: SandboxRecord) -> dict[str, Any]:
        """How the sandbox runs (accelerator, kernel, platform); empty if unknown."""
        try:
            return self.runtimes.get(rec.runtime).info(rec.id)
        except AtelierError:
            return {}

    async def logs(self, principal: Principal, sandbox_id: str, tail: int | None = None) -> str:
        rec = await self.get(principal, sandbox_id)
        runtime = self.runtimes.get(rec.runtime)
        parts = []
        for title, path in (
            ("workspace setup", setup_log_path(self.settings.data_dir, rec.id)),
            ("runtime", runtime.log_path(rec.id)),
            ("agent", runtime.agent_socket(rec.id).parent / "agent.log"),
        ):
            text = await asyncio.to_thread(_read_tail, path, tail)
            if text:
                parts.append(f"==> {title} log <==\n{text}")
        return "\n".join(parts)

    # -- lifecycle -----------------------------------------------------------
    def validate(self, req: CreateRequest) -> None:
        s = self.settings
        if not 1 <= req.vcpus <= s.max_vcpus:
            raise InvalidRequest(f"vcpus must be between 1 and {s.max_vcpus}, got {req.vcpus}")
        if not 64 <= req.memory_mib <= s.max_memory_mib:
            raise InvalidRequest(
                f"memory_mib must be between 64 and {s.max_memory_mib}, got {req.memory_mib}"
            )
        if not 64 <= req.disk_mib <= s.max_disk_mib:
            raise InvalidRequest(
                f"disk_mib must be between 64 and {s.max_disk_mib}, got {req.disk_mib}"
            )
        if req.timeout is not None and req.timeout <= 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {req.timeout}")
        template = self.templates.get(req.template)
        if not template.ready:
            raise TemplateNotFound(f"template {req.template!r} is not built yet")
        runtime = self.runtimes.get(req.runtime or template.runtime)
        policy = self.network_policy(req)
        if (
            policy is not None
            and policy.enabled
            and Capability.NETWORK not in runtime.capabilities()
        ):
            raise InvalidRequest(
                f"the {runtime.name} runtime has no sandbox networking yet: "
                f"use network mode 'none' or the gvisor runtime",
                details={"runtime": runtime.name, "network": policy.mode},
            )

    def network_policy(self, req: CreateRequest) -> NetworkPolicy | None:
        """The request's network policy, else the server's default mode."""
        if req.network is not None:
            return req.network
        default = self.settings.network_default_mode
        return NetworkPolicy(mode=default) if default != "none" else None

    async def create(self, principal: Principal, req: CreateRequest) -> SandboxRecord:
        self.validate(req)
        pooled = await self.claim_pooled(req, principal)
        if pooled is not None:
            await self.repo.record_event("create", pooled.id, principal.token_id, pooled=True)
            return pooled
        # shielded: a client that hangs up mid-create must not leave half a sandbox
        return await asyncio.shield(self.provision(req, owner=principal.token_id))

    async def create_unpooled(self, principal: Principal, req: CreateRequest) -> SandboxRecord:
        """Create a sandbox of its own (a workspace's: never taken from the pool)."""
        self.validate(req)
        return await asyncio.shield(self.provision(req, owner=principal.token_id))

    async def provision(
        self, req: CreateRequest, owner: str | None, pooled: bool = False
    ) -> SandboxRecord:
        """Create and boot a sandbox; on any failure remove every trace of it."""
        # pinned: the sandbox keeps this version's rootfs whatever is built later
        template = self.templates.checkout(req.template)
        runtime = self.runtimes.get(req.runtime or template.runtime)
        now = utcnow()
        rec = SandboxRecord(
            id=new_sandbox_id(),
            owner=owner,
            template=req.template,
            runtime=runtime.name,
            state=S.CREATING,
            vcpus=req.vcpus,
            memory_mib=req.memory_mib,
            disk_mib=req.disk_mib,
            env=dict(req.env),
            labels=dict(req.labels),
            timeout=None if pooled else req.timeout,
            expires_at=None,
            created_at=now,
            pooled=pooled,
        )
        async with self.lock(rec.id):
            try:
                await self.repo.add_sandbox(rec)
            finally:  # from here on the row keeps the version in use
                self.templates.release(template.name, template.version)
            spec = SandboxSpec(
                sandbox_id=rec.id,
                template=rec.template,
                rootfs=template.rootfs,
                vcpus=rec.vcpus,
                memory_mib=rec.memory_mib,
                disk_mib=rec.disk_mib,
                hostname=rec.id,
                labels=rec.labels,
                network=self.network_policy(req),
            )
            shape = PrebootShape(
                runtime.name,
                template.name,
                template.stamp,
                rec.vcpus,
                rec.memory_mib,
                rec.disk_mib,
            )
            prebootable = self.settings.preboot and Preboots.supported(runtime)
            snapshot = self.preboots.ready(shape) if prebootable else None
            try:
                t0 = time.perf_counter()
                if snapshot is not None:
                    snapshot = await self._restore_or_none(runtime, spec, snapshot)
                if snapshot is None:
                    await runtime.create(spec)
                t1 = time.perf_counter()
                if snapshot is not None:
                    try:
                        await runtime.start(rec.id)
                    except AtelierError as exc:  # e.g. QEMU or its accel changed
                        log.warning("restore of %s failed (%s); booting cold", rec.id, exc)
                        await runtime.destroy(rec.id)
                        self.preboots.discard(shape)
                        snapshot = None
                        await runtime.create(spec)
                        await runtime.start(rec.id)
                else:
                    await runtime.start(rec.id)
                t2 = time.perf_counter()
                agent = await self.agents.get(rec.id, rec.runtime, timeout=AGENT_READY_TIMEOUT)
                if snapshot is not None:  # the clone still has the snapshot's identity
                    await agent.run(argv=["sh", "-c", RENAME_SCRIPT, "sh", rec.id], user="root")
                t3 = time.perf_counter()
            except BaseException as exc:
                await self._discard(rec.id, rec.runtime)
                log.warning("create of %s failed: %s", rec.id, exc)
                if isinstance(exc, AtelierError | asyncio.CancelledError):
                    raise
                raise RuntimeFailure(f"could not start sandbox: {exc}") from exc
            started = utcnow()
            rec = await self.repo.update_sandbox(
                rec.id, state=S.RUNNING, started_at=started, expires_at=_expiry(rec.timeout)
            )
        log.info(
            "sandbox %s running in %.0f ms (disk %.0f, %s %.0f, agent %.0f)%s",
            rec.id,
            (t3 - t0) * 1000,
            (t1 - t0) * 1000,
            "restore" if snapshot is not None else "boot",
            (t2 - t1) * 1000,
            (t3 - t2) * 1000,
            " [pool]" if pooled else "",
        )
        if prebootable and snapshot is None:
            self.preboots.ensure(runtime, shape, spec)
        await self.repo.record_event(
            "create",
            rec.id,
            owner,
            template=rec.template,
            template_version=template.version,
            pooled=pooled,
        )
        return rec

    async def _discard(self, sandbox_id: str, runtime_name: str) -> None:
        await self.agents.drop(sandbox_id)
        with contextlib.suppress(Exception):
            await self.runtimes.get(runtime_name).destroy(sandbox_id)
        with contextlib.suppress(Exception):
            await self.repo.purge_sandbox(sandbox_id)

    async def stop(self, principal: Principal | None, sandbox_id: str) -> SandboxRecord:
        rec = await self._get_for(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            check_transition(rec.id, rec.state, S.STOPPING)
            await self.repo.update_sandbox(rec.id, state=S.STOPPING)
            await self.agents.drop(rec.id)
            try:
                await self.runtimes.get(rec.runtime).stop(rec.id)
            except AtelierError as exc:
                await self.repo.update_sandbox(rec.id, state=S.ERROR, error=exc.message)
                raise
            rec = await self.repo.update_sandbox(rec.id, state=S.STOPPED, expires_at=None)
        await self.repo.record_event("stop", rec.id, _actor(principal))
        return rec

    async def start(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        await self._get_for(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            check_transition(rec.id, rec.state, S.STARTING)
            await self.repo.update_sandbox(rec.id, state=S.STARTING, error=None)
            runtime = self.runtimes.get(rec.runtime)
            try:
                await runtime.start(rec.id)
                await self.agents.get(rec.id, rec.runtime, timeout=AGENT_READY_TIMEOUT)
            except BaseException as exc:
                await self.agents.drop(rec.id)
                with contextlib.suppress(Exception):
                    await runtime.stop(rec.id)
                message = exc.message if isinstance(exc, AtelierError) else str(exc)
                await self.repo.update_sandbox(rec.id, state=S.ERROR, error=message)
                if isinstance(exc, AtelierError | asyncio.CancelledError):
                    raise
                raise RuntimeFailure(f"could not start sandbox {rec.id}: {exc}") from exc
            rec = await self.repo.update_sandbox(
                rec.id, state=S.RUNNING, started_at=utcnow(), expires_at=_expiry(rec.timeout)
            )
        await self.repo.record_event("start", rec.id, principal.token_id)
        return rec

    async def pause(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        """Freeze every process of the sandbox, keeping its memory."""
        return await self._freeze(principal, sandbox_id, S.PAUSED, "pause")

    async def resume(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        return await self._freeze(principal, sandbox_id, S.RUNNING, "resume")

    async def _freeze(
        self, principal: Principal, sandbox_id: str, target: SandboxState, verb: str
    ) -> SandboxRecord:
        await self.get(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            runtime = self.runtimes.get(rec.runtime)
            if Capability.PAUSE not in runtime.capabilities():
                raise InvalidRequest(f"the {runtime.name} runtime cannot {verb} sandboxes")
            check_transition(rec.id, rec.state, target, verb)
            if target == S.PAUSED:
                await runtime.pause(rec.id)
            else:
                await runtime.resume(rec.id)
            rec = await self.repo.update_sandbox(rec.id, state=target)
        await self.repo.record_event(verb, rec.id, principal.token_id)
        return rec

    async def delete(self, principal: Principal | None, sandbox_id: str) -> None:
        rec = await self._get_for(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            check_transition(rec.id, rec.state, S.DELETED)
            await self.agents.drop(rec.id)
            await self.runtimes.get(rec.runtime).destroy(rec.id)
            await self.repo.update_sandbox(rec.id, state=S.DELETED, expires_at=None)
            await asyncio.to_thread(remove_workspace_files, self.settings.data_dir, rec.id)
        self._locks.pop(sandbox_id, None)
        await self.repo.record_event("delete", rec.id, _actor(principal))

    async def set_timeout(
        self, principal: Principal, sandbox_id: str, timeout: int | None
    ) -> SandboxRecord:
        if timeout is not None and timeout <= 0:
            raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout}")
        rec = await self.get(principal, sandbox_id)
        expires = _expiry(timeout) if rec.state == S.RUNNING else None
        rec = await self.repo.update_sandbox(rec.id, timeout=timeout, expires_at=expires)
        await self.repo.record_event("set_timeout", rec.id, principal.token_id, timeout=timeout)
        return rec

    async def _get_for(self, principal: Principal | None, sandbox_id: str) -> SandboxRecord:
        if principal is None:  # the system itself (reconciler, pool)
            return await self.repo.get_sandbox(sandbox_id)
        return await self.get(principal, sandbox_id)

    # -- recovery (used by the reconciler) -----------------------------------
    async def recover(self, rec: SandboxRecord) -> None:
        """Bring one sandbox left mid-operation by a crash to a stable state."""
        runtime = self.runtimes.get(rec.runtime)
        async with self.lock(rec.id):
            if rec.state == S.CREATING:
                log.info("removing half-created sandbox %s", rec.id)
                await self._discard(rec.id, rec.runtime)
                await self.repo.record_event("recover_discard", rec.id, SYSTEM)
                return
            if rec.state in (S.STARTING, S.STOPPING):
                with contextlib.suppress(Exception):
                    await runtime.stop(rec.id)
                await self.repo.update_sandbox(rec.id, state=S.STOPPED, expires_at=None)
                await self.repo.record_event("recover_stop", rec.id, SYSTEM, was=rec.state.value)
                return
            if rec.state in (S.RUNNING, S.PAUSED):
                state = await runtime.state(rec.id)
                if state in (RuntimeState.RUNNING, RuntimeState.PAUSED):
                    # adopted as is (the agent connection opens on first use); a
                    # crash between the runtime's pause/resume and the database
                    # write is settled in the runtime's favour
                    actual = S.PAUSED if state == RuntimeState.PAUSED else S.RUNNING
                    if actual != rec.state:
                        await self.repo.update_sandbox(rec.id, state=actual)
                    return
                log.warning("sandbox %s is no longer running (%s)", rec.id, state.value)
                with contextlib.suppress(Exception):
                    await runtime.stop(rec.id)
                if rec.pooled:
                    await self._discard(rec.id, rec.runtime)
                    return
                await self.repo.update_sandbox(
                    rec.id,
                    state=S.STOPPED,
                    expires_at=None,
                    error=f"sandbox exited ({state.value})",
                )
                await self.repo.record_event("recover_exited", rec.id, SYSTEM)


async def _no_pool(_req: CreateRequest, _principal: Principal) -> SandboxRecord | None:
    return None


def _expiry(timeout: int | None) -> datetime | None:
    return None if timeout is None else utcnow() + timedelta(seconds=timeout)


def _actor(principal: Principal | None) -> str:
    return principal.token_id if principal is not None else SYSTEM


def _read_tail(path: Path, tail: int | None) -> str:
    try:
        with path.open("rb") as fh:
            if tail is None:
                data = fh.read(4 * 1024 * 1024)
            else:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 256 * max(tail, 1)))
                data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode(errors="replace")
    if tail is not None:
        text = "\n".join(text.splitlines()[-tail:])
    return text
