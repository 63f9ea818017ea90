"""Sandbox lifecycle use cases: the control plane's one entry point.

The API calls this; this calls the runtime (through the registry) and the
store. Every lifecycle change is checked against the state machine, done
under a per-sandbox lock, written to the audit trail, and undone on failure
so that nothing is left half-created.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from .idle import ActivityTracker, default_auto_stop, validate_auto_stop
from .models import (
    AutoStop,
    CreateRequest,
    SandboxRecord,
    SandboxState,
    SnapshotRecord,
    check_transition,
    require_running,
)
from .preboot import Preboots, PrebootShape, SnapshottingRuntime
from .snapshots import SnapshotService
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
        self.activity = ActivityTracker()  # for the idle policy: core/idle.py
        self.snapshots = SnapshotService(self)

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
        """The running sandbox and a live connection to its agent. A paused or
        hibernated sandbox is resumed or woken first (the caller just waits;
        concurrent callers share the one wake). Counts as activity (core/idle.py)."""
        # one read of the row, under the lock that orders this use against the
        # idle policy's moves (the exec path's cost is mostly such reads)
        try:
            async with self.lock(sandbox_id):
                rec = await self._ensure_running(await self.get(principal, sandbox_id))
                self.activity.touch(rec.id)
        except SandboxNotFound:
            self._locks.pop(sandbox_id, None)
            raise
        return rec, await self.agents.get(rec.id, rec.runtime)

    async def use(self, sandbox_id: str) -> tuple[SandboxRecord, AgentClient]:
        """:meth:`agent` for a caller that checked access itself (the preview proxy)."""
        async with self.lock(sandbox_id):  # orders this use against the idle policy's moves
            rec = await self.ensure_running(sandbox_id)
            self.activity.touch(rec.id)
        return rec, await self.agents.get(rec.id, rec.runtime)

    async def ensure_running(self, sandbox_id: str) -> SandboxRecord:
        """Resume a paused or wake a hibernated sandbox; raise a 409 saying what to
        do if it is in any other state but running. The caller holds :meth:`lock`."""
        return await self._ensure_running(await self.repo.get_sandbox(sandbox_id))

    async def _ensure_running(self, rec: SandboxRecord) -> SandboxRecord:
        if rec.state == S.PAUSED:
            await self.runtimes.get(rec.runtime).resume(rec.id)
            rec = await self.repo.update_sandbox(rec.id, state=S.RUNNING)
            await self.repo.record_event("auto_resume", rec.id, SYSTEM)
        elif rec.state == S.HIBERNATED:
            rec = await self._wake_locked(rec)
            await self.repo.record_event("auto_wake", rec.id, SYSTEM)
        require_running(rec.id, rec.state)
        return rec

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
        validate_auto_stop(req.auto_stop)
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
                f"use network mode 'none' or the gvisor or qemu runtime",
                details={"runtime": runtime.name, "network": policy.mode},
            )

    def network_policy(self, req: CreateRequest) -> NetworkPolicy | None:
        """The request's network policy, else the server's default mode."""
        if req.network is not None:
            return req.network
        default = self.settings.network_default_mode
        return NetworkPolicy(mode=default) if default != "none" else None

    async def create(self, principal: Principal, req: CreateRequest) -> SandboxRecord:
        if req.snapshot is not None:  # never from the pool
            return await self.create_unpooled(principal, req)
        self.validate(req)
        req = self._with_default_auto_stop(req)
        pooled = await self.claim_pooled(req, principal)
        if pooled is not None:
            if req.auto_stop is not None:
                pooled = await self.repo.update_sandbox(pooled.id, auto_stop=req.auto_stop)
            await self.repo.record_event("create", pooled.id, principal.token_id, pooled=True)
            return pooled
        # shielded: a client that hangs up mid-create must not leave half a sandbox
        return await asyncio.shield(self.provision(req, owner=principal.token_id))

    async def create_unpooled(self, principal: Principal, req: CreateRequest) -> SandboxRecord:
        """Create a sandbox of its own (a workspace's: never taken from the pool);
        from ``req.snapshot`` when set."""
        snapshot = None
        if req.snapshot is not None:
            snapshot = await self.snapshots.reserve(principal, req.snapshot)
            self.snapshots.check_request(snapshot, req)
        self.validate(req)
        req = self._with_default_auto_stop(req)
        return await asyncio.shield(
            self.provision(req, owner=principal.token_id, from_snapshot=snapshot)
        )

    def _with_default_auto_stop(self, req: CreateRequest) -> CreateRequest:
        if req.auto_stop is not None:
            return req
        return dataclasses.replace(req, auto_stop=default_auto_stop(self.settings))

    async def provision(
        self,
        req: CreateRequest,
        owner: str | None,
        pooled: bool = False,
        from_snapshot: SnapshotRecord | None = None,
    ) -> SandboxRecord:
        """Create and boot a sandbox (from ``from_snapshot`` if given); on any
        failure remove every trace of it."""
        if from_snapshot is not None:
            return await self._provision_from_snapshot(req, owner, from_snapshot)
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
            auto_stop=None if pooled else req.auto_stop,
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
            # a pre-booted snapshot has no network: networked sandboxes boot cold
            prebootable = self.preboots.supported(runtime) and not (
                spec.network is not None and spec.network.enabled
            )
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

    async def _provision_from_snapshot(
        self, req: CreateRequest, owner: str | None, snap: SnapshotRecord
    ) -> SandboxRecord:
        """Create a sandbox whose disk starts as ``snap``'s (its layer chain above the
        template version it pins) and, if it has memory, whose processes too."""
        if snap.template_version is not None:
            template = self.templates.get_version(snap.template, snap.template_version)
        else:  # a snapshot of a sandbox older than versioned templates
            template = self.templates.get(snap.template)
        runtime = self.runtimes.get(snap.runtime)
        chain = await self.snapshots.chain(snap)
        rec = SandboxRecord(
            id=new_sandbox_id(),
            owner=owner,
            template=snap.template,
            runtime=runtime.name,
            state=S.CREATING,
            vcpus=req.vcpus,
            memory_mib=req.memory_mib,
            disk_mib=req.disk_mib,
            env=dict(req.env),
            labels=dict(req.labels),
            timeout=req.timeout,
            expires_at=None,
            created_at=utcnow(),
            auto_stop=req.auto_stop,
            snapshot_id=snap.id,
        )
        async with self.lock(rec.id):
            async with self.snapshots.lock(snap.id):  # not deleted meanwhile
                await self.snapshots.still_there(snap)
                await self.repo.add_sandbox(rec)  # from here on the row keeps it in use
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
                layers=self.snapshots.layers(chain),
            )
            try:
                t0 = time.perf_counter()
                await runtime.create_from_snapshot(spec, self.snapshots.path(snap.id))
                await runtime.start(rec.id)
                agent = await self.agents.get(rec.id, rec.runtime, timeout=AGENT_READY_TIMEOUT)
                if snap.has_memory:  # the clone still has the source's identity
                    renamed = await agent.run(
                        argv=["sh", "-c", RENAME_SCRIPT, "sh", rec.id], user="root"
                    )
                    if renamed.exit_code != 0:  # e.g. no CAP_SYS_ADMIN for sethostname
                        why = renamed.stderr.decode(errors="replace").strip()
                        log.warning("could not rename %s: %s", rec.id, why)
                t1 = time.perf_counter()
            except BaseException as exc:
                await self._discard(rec.id, rec.runtime)
                log.warning("create of %s from %s failed: %s", rec.id, snap.id, exc)
                if isinstance(exc, AtelierError | asyncio.CancelledError):
                    raise
                raise RuntimeFailure(f"could not start sandbox from snapshot: {exc}") from exc
            rec = await self.repo.update_sandbox(
                rec.id, state=S.RUNNING, started_at=utcnow(), expires_at=_expiry(rec.timeout)
            )
        log.info(
            "sandbox %s running from snapshot %s in %.0f ms%s",
            rec.id,
            snap.id,
            (t1 - t0) * 1000,
            " (memory restored)" if snap.has_memory else "",
        )
        await self.repo.record_event(
            "create",
            rec.id,
            owner,
            template=rec.template,
            template_version=template.version,
            snapshot=snap.id,
            memory=snap.has_memory,
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
            if rec.state == S.HIBERNATED:  # start of a hibernated one wakes it
                rec = await self._wake_locked(rec)
                await self.repo.record_event("wake", rec.id, principal.token_id)
                return rec
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
        """Thaw a paused sandbox (one read of the row, under the lock); wake a hibernated one."""
        try:
            async with self.lock(sandbox_id):
                rec = await self.get(principal, sandbox_id)
                if rec.state != S.HIBERNATED:
                    return await self._freeze_locked(principal, rec, S.RUNNING, "resume")
        except SandboxNotFound:
            self._locks.pop(sandbox_id, None)
            raise
        return await self.wake(principal, sandbox_id)

    async def pause_locked(self, rec: SandboxRecord) -> SandboxRecord:
        """Pause (the idle policy; the caller holds :meth:`lock` and checked PAUSE)."""
        check_transition(rec.id, rec.state, S.PAUSED)
        await self.runtimes.get(rec.runtime).pause(rec.id)
        return await self.repo.update_sandbox(rec.id, state=S.PAUSED)

    async def hibernate(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        """Save the sandbox's memory to disk and free its RAM; it wakes on next use."""
        await self.get(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            rec = await self.hibernate_locked(rec)
        await self.repo.record_event("hibernate", rec.id, principal.token_id)
        return rec

    async def hibernate_locked(self, rec: SandboxRecord) -> SandboxRecord:
        """Hibernate ``rec`` (the caller holds :meth:`lock`). A failure leaves the
        sandbox in the state its runtime reports (error if it is gone)."""
        runtime = self.runtimes.get(rec.runtime)
        if Capability.HIBERNATE not in runtime.capabilities():
            raise InvalidRequest(
                f"the {runtime.name} runtime cannot hibernate sandboxes",
                details={"runtime": runtime.name},
            )
        check_transition(rec.id, rec.state, S.HIBERNATED)
        await self.agents.drop(rec.id)  # the agent lets go of its host socket
        try:
            await runtime.hibernate(rec.id)
        except BaseException as exc:
            await self._settle_after_failure(rec, runtime, exc)
            if isinstance(exc, AtelierError | asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"could not hibernate sandbox {rec.id}: {exc}") from exc
        return await self.repo.update_sandbox(rec.id, state=S.HIBERNATED)

    async def wake(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        """Bring a hibernated (or paused) sandbox back running; a running one as is."""
        await self.get(principal, sandbox_id)
        async with self.lock(sandbox_id):
            rec = await self.repo.get_sandbox(sandbox_id)
            if rec.state == S.RUNNING:
                return rec
            if rec.state == S.PAUSED:
                await self.runtimes.get(rec.runtime).resume(rec.id)
                rec = await self.repo.update_sandbox(rec.id, state=S.RUNNING)
            else:
                check_transition(rec.id, rec.state, S.RUNNING, "wake")
                rec = await self._wake_locked(rec)
        await self.repo.record_event("wake", rec.id, principal.token_id)
        return rec

    async def _wake_locked(self, rec: SandboxRecord) -> SandboxRecord:
        runtime = self.runtimes.get(rec.runtime)
        t0 = time.perf_counter()
        try:
            await runtime.wake(rec.id)
            await self.agents.get(rec.id, rec.runtime, timeout=AGENT_READY_TIMEOUT)
        except BaseException as exc:
            await self.agents.drop(rec.id)
            await self._settle_after_failure(rec, runtime, exc)
            if isinstance(exc, AtelierError | asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"could not wake sandbox {rec.id}: {exc}") from exc
        log.info("sandbox %s woke in %.0f ms", rec.id, (time.perf_counter() - t0) * 1000)
        return await self.repo.update_sandbox(rec.id, state=S.RUNNING, error=None)

    async def _settle_after_failure(
        self, rec: SandboxRecord, runtime: Runtime, exc: BaseException
    ) -> None:
        """After a failed hibernate or wake, record what the runtime says is left."""
        try:
            state = await runtime.state(rec.id)
        except Exception:
            state = RuntimeState.ABSENT
        actual = {
            RuntimeState.RUNNING: S.RUNNING,
            RuntimeState.PAUSED: S.PAUSED,
            RuntimeState.HIBERNATED: S.HIBERNATED,
        }.get(state)
        message = exc.message if isinstance(exc, AtelierError) else str(exc)
        if actual is None:
            await self.repo.update_sandbox(rec.id, state=S.ERROR, error=message, expires_at=None)
        elif actual != rec.state:
            await self.repo.update_sandbox(rec.id, state=actual)

    async def set_auto_stop(
        self, principal: Principal, sandbox_id: str, policy: AutoStop | None
    ) -> SandboxRecord:
        """Replace the sandbox's idle policy (``None``: never auto-stop)."""
        policy = validate_auto_stop(policy)
        rec = await self.get(principal, sandbox_id)
        self.activity.touch(rec.id)  # the idle clock restarts with the new policy
        rec = await self.repo.update_sandbox(rec.id, auto_stop=policy)
        await self.repo.record_event(
            "set_auto_stop",
            rec.id,
            principal.token_id,
            auto_stop=policy.to_json() if policy else None,
        )
        return rec

    async def _freeze(
        self, principal: Principal, sandbox_id: str, target: SandboxState, verb: str
    ) -> SandboxRecord:
        try:
            async with self.lock(sandbox_id):
                return await self._freeze_locked(
                    principal, await self.get(principal, sandbox_id), target, verb
                )
        except SandboxNotFound:
            self._locks.pop(sandbox_id, None)
            raise

    async def _freeze_locked(
        self, principal: Principal, rec: SandboxRecord, target: SandboxState, verb: str
    ) -> SandboxRecord:
        """Pause or resume ``rec`` (read under the lock the caller holds)."""
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
        self.activity.forget(sandbox_id)
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
            if rec.state in (S.RUNNING, S.PAUSED, S.HIBERNATED):
                state = await runtime.state(rec.id)
                adopted = {
                    RuntimeState.RUNNING: S.RUNNING,
                    RuntimeState.PAUSED: S.PAUSED,
                    RuntimeState.HIBERNATED: S.HIBERNATED,
                }
                if state in adopted:
                    # adopted as is (the agent connection opens on first use); a
                    # crash between the runtime's pause/resume/hibernate/wake and
                    # the database write is settled in the runtime's favour
                    actual = adopted[state]
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
