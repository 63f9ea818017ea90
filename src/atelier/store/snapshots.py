"""Rows of snapshots (see ``core/snapshots.py`` for what a snapshot is and how its
files on disk are kept): records in, records out."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ..core.models import SandboxState, SnapshotRecord
from ..errors import Conflict
from .db import Database
from .tables import SandboxRow, SnapshotLabelRow, SnapshotRow

__all__ = ["SnapshotRepository"]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _record(row: SnapshotRow) -> SnapshotRecord:
    return SnapshotRecord(
        id=row.id,
        name=row.name,
        owner=row.owner,
        sandbox_id=row.sandbox_id,
        template=row.template,
        runtime=row.runtime,
        labels={lbl.key: lbl.value for lbl in row.labels},
        has_memory=row.has_memory,
        size_bytes=row.size_bytes,
        created_at=_utc(row.created_at),
        template_version=row.template_version,
        parent_id=row.parent_id,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        env=dict(row.env or {}),
        state=row.state,
        internal=row.internal,
    )


class SnapshotRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rec: SnapshotRecord) -> None:
        """Insert ``rec``; :class:`Conflict` if its owner already has one of that name."""
        row = SnapshotRow(
            id=rec.id,
            name=rec.name,
            owner=rec.owner,
            sandbox_id=rec.sandbox_id,
            template=rec.template,
            template_version=rec.template_version,
            runtime=rec.runtime,
            has_memory=rec.has_memory,
            parent_id=rec.parent_id,
            vcpus=rec.vcpus,
            memory_mib=rec.memory_mib,
            disk_mib=rec.disk_mib,
            env=rec.env,
            size_bytes=rec.size_bytes,
            state=rec.state,
            internal=rec.internal,
            created_at=rec.created_at,
        )
        row.labels = [SnapshotLabelRow(key=k, value=v) for k, v in rec.labels.items()]
        try:
            async with self.db.session() as s, s.begin():
                s.add(row)
        except IntegrityError:
            raise Conflict(
                f"a snapshot named {rec.name!r} already exists", details={"name": rec.name}
            ) from None

    async def get(self, snapshot_id: str) -> SnapshotRecord | None:
        async with self.db.session() as s:
            row = await s.get(SnapshotRow, snapshot_id)
            return None if row is None else _record(row)

    async def by_name(self, name: str, owner: str | None) -> list[SnapshotRecord]:
        """Snapshots called ``name`` (of ``owner``; of anyone when ``owner`` is None)."""
        q = select(SnapshotRow).where(SnapshotRow.name == name)
        if owner is not None:
            q = q.where(SnapshotRow.owner == owner)
        async with self.db.session() as s:
            return [_record(r) for r in (await s.scalars(q)).all()]

    async def list(
        self,
        *,
        owner: str | None = None,
        labels: dict[str, str] | None = None,
        include_internal: bool = False,
        state: str | None = None,
    ) -> list[SnapshotRecord]:
        q = select(SnapshotRow).order_by(SnapshotRow.created_at)
        if owner is not None:
            q = q.where(SnapshotRow.owner == owner)
        if not include_internal:
            q = q.where(SnapshotRow.internal.is_(False))
        if state is not None:
            q = q.where(SnapshotRow.state == state)
        for key, value in (labels or {}).items():
            q = q.where(
                SnapshotRow.id.in_(
                    select(SnapshotLabelRow.snapshot_id).where(
                        SnapshotLabelRow.key == key, SnapshotLabelRow.value == value
                    )
                )
            )
        async with self.db.session() as s:
            return [_record(r) for r in (await s.scalars(q)).all()]

    async def update(self, snapshot_id: str, **fields: Any) -> SnapshotRecord:
        async with self.db.session() as s, s.begin():
            row = await s.get(SnapshotRow, snapshot_id)
            if row is None:
                raise KeyError(snapshot_id)
            for key, value in fields.items():
                setattr(row, key, value)
            await s.flush()
            return _record(row)

    async def remove(self, snapshot_id: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SnapshotRow).where(SnapshotRow.id == snapshot_id))

    async def users(self, snapshot_id: str) -> builtins.list[str]:
        """What keeps ``snapshot_id`` in use: the sandboxes (not deleted) made from it
        and the snapshots whose parent it is."""
        async with self.db.session() as s:
            sandboxes = (
                await s.scalars(
                    select(SandboxRow.id)
                    .where(SandboxRow.snapshot_id == snapshot_id)
                    .where(SandboxRow.state != SandboxState.DELETED.value)
                    .order_by(SandboxRow.created_at)
                )
            ).all()
            children = (
                await s.scalars(
                    select(SnapshotRow.id)
                    .where(SnapshotRow.parent_id == snapshot_id)
                    .order_by(SnapshotRow.created_at)
                )
            ).all()
        return [*sandboxes, *children]
