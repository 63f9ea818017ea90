"""Snapshots: a sandbox saved as a file layer (and, where the runtime can, its
memory), to start new sandboxes from, and fork.

A snapshot lives in ``<data_dir>/snapshots/<id>/`` (``layer/``, ``memory/``,
``snapshot.json``, written by the runtime's ``snapshot`` verb into a temporary
directory that is renamed when complete). Its layer holds only the source
sandbox's own changes: a sandbox made from a snapshot stacks the snapshot's
layer and its ancestors' (``parent_id``) above the template's rootfs, so layers
are shared, never copied. A snapshot therefore stays on disk, with the
template version it needs pinned, while any sandbox or child snapshot uses it:
deleting one in use is refused with :class:`~atelier.errors.SnapshotInUse`.

A fork's snapshot is ``internal``: hidden from listings and removed by
:meth:`SnapshotService.collect_garbage` once no sandbox uses it. See
docs/lifecycle.md and ADR 0018.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import (
    AtelierError,
    InvalidRequest,
    RuntimeFailure,
    SnapshotInUse,
    SnapshotNotFound,
)
from ..runtimes.base import Capability, Runtime
from ..store.repository import utcnow
from ..store.snapshots import SnapshotRepository
from .auth import Principal
from .models import CreateRequest, SandboxRecord, SnapshotRecord

if TYPE_CHECKING:
    from .service import SandboxService

__all__ = ["FORK_LABEL", "SnapshotService", "new_snapshot_id", "snapshot_capable"]

log = logging.getLogger("atelier.snapshots")
FORK_LABEL = "atelier.fork"  # on a fork's internal snapshot: the source sandbox
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_FORK = 16
AGENT_TIMEOUT = 60.0  # as after a start: the agent re-listens after a capture


def new_snapshot_id() -> str:
    return "snap-" + secrets.token_hex(5)


def snapshot_capable(runtime: Runtime) -> bool:
    """Whether ``runtime`` can save a running sandbox and start sandboxes from it
    (the optional ``snapshot``/``create_from_snapshot`` verbs of runtimes/base.py)."""
    return Capability.MEMORY_SNAPSHOT in runtime.capabilities()


class SnapshotService:
    """Snapshot use cases; owned by the :class:`SandboxService` (``service.snapshots``)."""

    def __init__(self, service: SandboxService) -> None:
        self.service = service
        self.repo = SnapshotRepository(service.repo.db)
        self.root = service.settings.data_dir / "snapshots"
        self._locks: dict[str, asyncio.Lock] = {}
        self._forking: set[str] = set()  # internal snapshots a fork is still using

    def lock(self, snapshot_id: str) -> asyncio.Lock:
        """Held while a snapshot gains a user or is removed."""
        return self._locks.setdefault(snapshot_id, asyncio.Lock())

    def path(self, snapshot_id: str) -> Path:
        return self.root / snapshot_id

    # -- queries -------------------------------------------------------------
    async def get(self, principal: Principal, ref: str) -> SnapshotRecord:
        """A ready snapshot by id or name; SnapshotNotFound if the caller may not see it."""
        rec: SnapshotRecord | None = None
        if ref.startswith("snap-"):
            rec = await self.repo.get(ref)
        if rec is None:
            named = await self.repo.by_name(ref, None if principal.admin else principal.token_id)
            mine = [r for r in named if r.owner == principal.token_id]
            candidates = mine or named
            if len(candidates) > 1:
                raise InvalidRequest(
                    f"several snapshots are named {ref!r}: use an id",
                    details={"ids": [r.id for r in candidates]},
                )
            rec = candidates[0] if candidates else None
        if (
            rec is None
            or rec.state != "ready"
            or (not principal.admin and rec.owner != principal.token_id)
        ):
            raise SnapshotNotFound(f"snapshot {ref} does not exist", details={"snapshot": ref})
        return rec

    async def list(
        self, principal: Principal, labels: dict[str, str] | None = None
    ) -> list[SnapshotRecord]:
        owner = None if principal.admin else principal.token_id
        return await self.repo.list(owner=owner, labels=labels, state="ready")

    def layers(self, chain: builtins.list[SnapshotRecord]) -> tuple[Path, ...]:
        """The overlay layers of a snapshot chain (topmost first)."""
        return tuple(self.path(s.id) / "layer" for s in chain)

    async def chain(self, rec: SnapshotRecord) -> builtins.list[SnapshotRecord]:
        """``rec`` and its ancestors, nearest first."""
        out = [rec]
        while out[-1].parent_id is not None:
            parent = await self.repo.get(out[-1].parent_id)
            if parent is None:  # kept by the ref rules; a broken store otherwise
                raise RuntimeFailure(
                    f"snapshot {rec.id} lacks its parent {out[-1].parent_id}",
                    details={"snapshot": rec.id},
                )
            out.append(parent)
        return out

    # -- use cases -----------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        sandbox_id: str,
        *,
        name: str | None,
        labels: dict[str, str],
        memory: bool | None,
        internal: bool = False,
    ) -> SnapshotRecord:
        """Save a sandbox (woken or resumed first if needed; it keeps running)."""
        if name is not None and (not _NAME.fullmatch(name) or name.startswith("snap-")):
            raise InvalidRequest(
                f"invalid snapshot name {name!r}: letters, digits, '.', '_', '-' "
                "(up to 100, not starting with 'snap-')"
            )
        src = await self.service.get(principal, sandbox_id)
        runtime = self.service.runtimes.get(src.runtime)
        if not snapshot_capable(runtime):
            raise InvalidRequest(
                f"the {runtime.name} runtime cannot snapshot sandboxes",
                details={"runtime": runtime.name},
            )
        pins = await self.service.repo.template_pins([src.id])
        snap = SnapshotRecord(
            id=new_snapshot_id(),
            name=name,
            owner=src.owner,
            sandbox_id=src.id,
            template=src.template,
            runtime=src.runtime,
            labels=dict(labels),
            has_memory=False,
            size_bytes=0,
            created_at=utcnow(),
            template_version=pins.get(src.id),
            parent_id=src.snapshot_id,
            vcpus=src.vcpus,
            memory_mib=src.memory_mib,
            disk_mib=src.disk_mib,
            env=dict(src.env),
            state="creating",
            internal=internal,
        )
        return await asyncio.shield(self._capture(principal, snap, runtime, memory))

    async def _capture(
        self, principal: Principal, snap: SnapshotRecord, runtime: Runtime, memory: bool | None
    ) -> SnapshotRecord:
        # the row first: it reserves the name, pins the template version and the
        # parent, and lets start-up recovery clean an interrupted capture
        if snap.internal:  # not collected before the fork's sandboxes use it
            self._forking.add(snap.id)
        await self.repo.add(snap)
        tmp = self.root / f".tmp-{snap.id}"
        try:
            async with self.service.lock(snap.sandbox_id):
                await self.service.ensure_running(snap.sandbox_id)
                has_memory = await self._snapshot(runtime, snap.sandbox_id, tmp, memory)
            size = await asyncio.to_thread(_disk_usage, tmp)
            await asyncio.to_thread(tmp.rename, self.path(snap.id))
        except BaseException as exc:
            self._forking.discard(snap.id)
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            await self.repo.remove(snap.id)
            log.warning("snapshot of %s failed: %s", snap.sandbox_id, exc)
            if isinstance(exc, AtelierError | asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"could not snapshot sandbox {snap.sandbox_id}: {exc}") from exc
        snap = await self.repo.update(
            snap.id, state="ready", has_memory=has_memory, size_bytes=size
        )
        await self.service.repo.record_event(
            "snapshot",
            snap.sandbox_id,
            principal.token_id,
            snapshot=snap.id,
            name=snap.name,
            memory=has_memory,
            internal=snap.internal,
        )
        return snap

    async def _snapshot(
        self, runtime: Runtime, sandbox_id: str, dest: Path, memory: bool | None
    ) -> bool:
        """Run the runtime's snapshot into ``dest`` (the sandbox lock is held);
        ``memory=None``: with memory, else (the runtime refuses) without."""
        agents = self.service.agents
        want = True if memory is None else memory
        await agents.drop(sandbox_id)  # the agent lets go of its host socket meanwhile
        try:
            await asyncio.to_thread(dest.mkdir, parents=True)
            try:
                await runtime.snapshot(sandbox_id, dest, memory=want)
            except InvalidRequest:
                if memory is not None or not want:
                    raise
                log.info("memory snapshot of %s refused; saving its files only", sandbox_id)
                await asyncio.to_thread(shutil.rmtree, dest, True)
                await asyncio.to_thread(dest.mkdir, parents=True)
                want = False
                await runtime.snapshot(sandbox_id, dest, memory=False)
        finally:
            with contextlib.suppress(AtelierError, OSError, TimeoutError):
                await agents.get(sandbox_id, runtime.name, timeout=AGENT_TIMEOUT)
        return (dest / "memory").exists()

    async def delete(self, principal: Principal, ref: str) -> None:
        """Remove a snapshot nobody uses; :class:`SnapshotInUse` otherwise."""
        rec = await self.get(principal, ref)
        await self._remove(rec, principal.token_id)

    async def _remove(self, rec: SnapshotRecord, actor: str | None) -> None:
        async with self.lock(rec.id):
            users = await self.repo.users(rec.id)
            if users:
                raise SnapshotInUse(
                    f"snapshot {rec.name or rec.id} is in use by {', '.join(users)}",
                    details={"snapshot": rec.id, "users": users},
                )
            await self.repo.remove(rec.id)
            await asyncio.to_thread(_remove_tree, self.path(rec.id))
        self._locks.pop(rec.id, None)
        await self.service.repo.record_event(
            "snapshot_delete", rec.sandbox_id, actor, snapshot=rec.id, name=rec.name
        )

    async def collect_garbage(self) -> builtins.list[str]:
        """Remove internal (fork) snapshots no sandbox uses any more."""
        removed = []
        for rec in await self.repo.list(include_internal=True, state="ready"):
            if not rec.internal or rec.id in self._forking:
                continue
            with contextlib.suppress(SnapshotInUse):
                await self._remove(rec, "system")
                removed.append(rec.id)
        return removed

    async def recover(self) -> None:
        """At start-up: drop captures a crash interrupted and directories without a row."""
        for rec in await self.repo.list(include_internal=True, state="creating"):
            log.info("removing interrupted snapshot %s", rec.id)
            await self.repo.remove(rec.id)
        known = {r.id for r in await self.repo.list(include_internal=True)}
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name not in known:
                log.info("removing stray snapshot directory %s", entry)
                await asyncio.to_thread(_remove_tree, entry)

    async def fork(
        self, principal: Principal, sandbox_id: str, count: int
    ) -> builtins.list[SandboxRecord]:
        """``count`` new sandboxes from one (internal) snapshot of ``sandbox_id``;
        all or none."""
        if not 1 <= count <= MAX_FORK:
            raise InvalidRequest(f"count must be between 1 and {MAX_FORK}, got {count}")
        src = await self.service.get(principal, sandbox_id)
        snap = await self.create(
            principal, sandbox_id, name=None, labels={FORK_LABEL: src.id}, memory=None,
            internal=True,
        )  # fmt: skip
        made: builtins.list[SandboxRecord] = []
        try:
            for _ in range(count):
                req = CreateRequest(
                    template=snap.template,
                    runtime=snap.runtime,
                    vcpus=src.vcpus,
                    memory_mib=src.memory_mib,
                    disk_mib=src.disk_mib,
                    env=dict(src.env),
                    labels={**src.labels, FORK_LABEL: src.id},
                    timeout=src.timeout,
                    snapshot=snap.id,
                    auto_stop=src.auto_stop,
                )
                made.append(await self.service.create_unpooled(principal, req))
        except BaseException:
            for rec in made:
                with contextlib.suppress(AtelierError):
                    await self.service.delete(None, rec.id)
            with contextlib.suppress(AtelierError):
                await self._remove(snap, "system")
            raise
        finally:
            self._forking.discard(snap.id)
        await self.service.repo.record_event(
            "fork", src.id, principal.token_id, snapshot=snap.id, sandboxes=[r.id for r in made]
        )
        return made

    async def reserve(self, principal: Principal, ref: str) -> SnapshotRecord:
        """The snapshot a new sandbox starts from (owner checked); raises if it
        cannot: a different runtime, or one that cannot restore snapshots."""
        rec = await self.get(principal, ref)
        runtime = self.service.runtimes.get(rec.runtime)
        if not snapshot_capable(runtime):
            raise InvalidRequest(f"the {runtime.name} runtime cannot start from snapshots")
        return rec

    def check_request(self, rec: SnapshotRecord, req: CreateRequest) -> None:
        if req.runtime is not None and req.runtime != rec.runtime:
            raise InvalidRequest(
                f"snapshot {rec.name or rec.id} is of the {rec.runtime} runtime, not {req.runtime}",
                details={"snapshot": rec.id, "runtime": rec.runtime},
            )
        if req.template != rec.template:
            raise InvalidRequest(
                f"snapshot {rec.name or rec.id} is of template {rec.template!r}, "
                f"not {req.template!r}",
                details={"snapshot": rec.id, "template": rec.template},
            )
        if req.disk_mib < rec.disk_mib:
            raise InvalidRequest(
                f"disk_mib must be at least the snapshot's {rec.disk_mib}",
                details={"snapshot": rec.id, "disk_mib": rec.disk_mib},
            )
        if rec.has_memory and (req.memory_mib, req.vcpus) != (rec.memory_mib, rec.vcpus):
            # a memory image restores into a machine of exactly its shape
            raise InvalidRequest(
                f"snapshot {rec.name or rec.id} holds memory: a sandbox from it has its "
                f"{rec.vcpus} vcpus and {rec.memory_mib} MiB (leave them out or match them)",
                details={"snapshot": rec.id, "vcpus": rec.vcpus, "memory_mib": rec.memory_mib},
            )

    async def still_there(self, rec: SnapshotRecord) -> None:
        """Raise unless ``rec`` still exists (call under :meth:`lock`)."""
        current = await self.repo.get(rec.id)
        if current is None or current.state != "ready":
            raise SnapshotNotFound(f"snapshot {rec.id} was deleted", details={"snapshot": rec.id})


def _disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (hard links once, links not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for entry in (*dirnames, *filenames):
            try:
                st = os.lstat(os.path.join(dirpath, entry))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _remove_tree(path: Path) -> None:
    """Rename out of the way first, so a crash never leaves half a snapshot under its id."""
    if not path.exists():
        return
    doomed = path.with_name(f".gc-{path.name}-{secrets.token_hex(3)}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)
