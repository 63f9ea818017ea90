"""Data access for the control plane. Rows in, domain records out.

All timestamps are UTC; SQLite drops the zone, so values are re-tagged on read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update

from ..core.models import AutoStop, SandboxRecord, SandboxState, TokenRecord
from ..errors import SandboxNotFound
from .db import Database
from .tables import EventRow, OperationRow, SandboxLabelRow, SandboxRow, SnapshotRow, TokenRow

__all__ = ["Repository", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _record(row: SandboxRow) -> SandboxRecord:
    return SandboxRecord(
        id=row.id,
        owner=row.owner,
        template=row.template,
        runtime=row.runtime,
        state=SandboxState(row.state),
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        env=dict(row.env or {}),
        labels={lbl.key: lbl.value for lbl in row.labels},
        timeout=row.timeout,
        expires_at=_utc(row.expires_at),
        created_at=_utc(row.created_at) or utcnow(),
        started_at=_utc(row.started_at),
        error=row.error,
        pooled=row.pooled,
        workspace=dict(row.workspace) if row.workspace else None,
        auto_stop=AutoStop.from_json(row.auto_stop),
        snapshot_id=row.snapshot_id,
        last_active_at=_utc(row.last_active_at),
    )


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sandboxes -----------------------------------------------------------
    async def add_sandbox(self, rec: SandboxRecord) -> None:
        async with self.db.session() as s, s.begin():
            row = SandboxRow(
                id=rec.id,
                owner=rec.owner,
                template=rec.template,
                runtime=rec.runtime,
                state=rec.state.value,
                vcpus=rec.vcpus,
                memory_mib=rec.memory_mib,
                disk_mib=rec.disk_mib,
                env=rec.env,
                timeout=rec.timeout,
                expires_at=rec.expires_at,
                created_at=rec.created_at,
                started_at=rec.started_at,
                error=rec.error,
                pooled=rec.pooled,
                workspace=rec.workspace,
                auto_stop=rec.auto_stop.to_json() if rec.auto_stop else None,
                snapshot_id=rec.snapshot_id,
                last_active_at=rec.last_active_at,
            )
            row.labels = [SandboxLabelRow(key=k, value=v) for k, v in rec.labels.items()]
            s.add(row)

    async def get_sandbox(self, sandbox_id: str, *, include_deleted: bool = False) -> SandboxRecord:
        async with self.db.session() as s:
            row = await s.get(SandboxRow, sandbox_id)
            if row is None or (row.state == SandboxState.DELETED and not include_deleted):
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
            return _record(row)

    async def list_sandboxes(
        self,
        *,
        owner: str | None = None,
        states: Iterable[SandboxState] | None = None,
        labels: dict[str, str] | None = None,
        pooled: bool | None = False,
        include_deleted: bool = False,
    ) -> list[SandboxRecord]:
        q = select(SandboxRow).order_by(SandboxRow.created_at)
        if owner is not None:
            q = q.where(SandboxRow.owner == owner)
        if states is not None:
            q = q.where(SandboxRow.state.in_([st.value for st in states]))
        elif not include_deleted:
            q = q.where(SandboxRow.state != SandboxState.DELETED.value)
        if pooled is not None:
            q = q.where(SandboxRow.pooled == pooled)
        for key, value in (labels or {}).items():
            q = q.where(
                SandboxRow.id.in_(
                    select(SandboxLabelRow.sandbox_id).where(
                        SandboxLabelRow.key == key, SandboxLabelRow.value == value
                    )
                )
            )
        async with self.db.session() as s:
            return [_record(r) for r in (await s.scalars(q)).all()]

    async def update_sandbox(self, sandbox_id: str, **fields: Any) -> SandboxRecord:
        """Update columns (``state`` may be a :class:`SandboxState`); return the new record."""
        labels = fields.pop("labels", None)
        if isinstance(fields.get("state"), SandboxState):
            fields["state"] = fields["state"].value
        if isinstance(fields.get("auto_stop"), AutoStop):
            fields["auto_stop"] = fields["auto_stop"].to_json()
        async with self.db.session() as s, s.begin():
            row = await s.get(SandboxRow, sandbox_id)
            if row is None:
                raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
            for key, value in fields.items():
                setattr(row, key, value)
            if labels is not None:
                row.labels = [SandboxLabelRow(key=k, value=v) for k, v in labels.items()]
            await s.flush()
            return _record(row)

    async def claim_pooled(
        self, template: str, runtime: str, **fields: Any
    ) -> SandboxRecord | None:
        """Atomically take one running pooled sandbox of ``template``, applying ``fields``."""
        labels = fields.pop("labels", None)
        async with self.db.session() as s, s.begin():
            candidates = (
                await s.scalars(
                    select(SandboxRow.id)
                    .where(
                        SandboxRow.pooled.is_(True),
                        SandboxRow.template == template,
                        SandboxRow.runtime == runtime,
                        SandboxRow.state == SandboxState.RUNNING.value,
                        SandboxRow.vcpus == fields["vcpus"],
                        SandboxRow.memory_mib == fields["memory_mib"],
                        SandboxRow.disk_mib == fields["disk_mib"],
                    )
                    .order_by(SandboxRow.created_at)
                    .limit(1)
                )
            ).all()
            for candidate in candidates:
                # compare-and-set so two claimers never get the same sandbox
                result = await s.execute(
                    update(SandboxRow)
                    .where(SandboxRow.id == candidate, SandboxRow.pooled.is_(True))
                    .values(pooled=False, **fields)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    row = await s.get(SandboxRow, candidate, populate_existing=True)
                    assert row is not None
                    if labels is not None:
                        row.labels = [SandboxLabelRow(key=k, value=v) for k, v in labels.items()]
                    await s.flush()
                    return _record(row)
        return None

    async def purge_sandbox(self, sandbox_id: str) -> None:
        """Forget a sandbox row entirely (used for creations that never completed)."""
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SandboxRow).where(SandboxRow.id == sandbox_id))

    # -- audit ---------------------------------------------------------------
    async def record_event(
        self, kind: str, sandbox_id: str | None, actor: str | None, **detail: Any
    ) -> None:
        async with self.db.session() as s, s.begin():
            s.add(
                EventRow(at=utcnow(), sandbox_id=sandbox_id, actor=actor, kind=kind, detail=detail)
            )

    async def events(self, sandbox_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        q = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if sandbox_id is not None:
            q = q.where(EventRow.sandbox_id == sandbox_id)
        async with self.db.session() as s:
            rows = (await s.scalars(q)).all()
        return [
            {
                "at": _utc(r.at),
                "sandbox_id": r.sandbox_id,
                "actor": r.actor,
                "kind": r.kind,
                **r.detail,
            }
            for r in reversed(rows)
        ]

    # -- tokens --------------------------------------------------------------
    async def add_token(
        self, token_id: str, name: str, secret_hash: str, admin: bool
    ) -> TokenRecord:
        now = utcnow()
        async with self.db.session() as s, s.begin():
            s.add(
                TokenRow(
                    id=token_id, name=name, secret_hash=secret_hash, admin=admin, created_at=now
                )
            )
        return TokenRecord(id=token_id, name=name, admin=admin, created_at=now)

    async def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        async with self.db.session() as s:
            row = (
                await s.scalars(
                    select(TokenRow).where(
                        TokenRow.secret_hash == secret_hash, TokenRow.revoked_at.is_(None)
                    )
                )
            ).first()
        if row is None:
            return None
        return TokenRecord(row.id, row.name, row.admin, _utc(row.created_at) or utcnow())

    async def list_tokens(self) -> list[TokenRecord]:
        async with self.db.session() as s:
            rows = (
                await s.scalars(
                    select(TokenRow)
                    .where(TokenRow.revoked_at.is_(None))
                    .order_by(TokenRow.created_at)
                )
            ).all()
        return [TokenRecord(r.id, r.name, r.admin, _utc(r.created_at) or utcnow()) for r in rows]

    async def revoke_token(self, token_id: str) -> bool:
        async with self.db.session() as s, s.begin():
            result = await s.execute(
                update(TokenRow)
                .where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def has_admin_token(self) -> bool:
        async with self.db.session() as s:
            row = (
                await s.scalars(
                    select(TokenRow.id).where(
                        TokenRow.admin.is_(True), TokenRow.revoked_at.is_(None)
                    )
                )
            ).first()
        return row is not None

    # -- templates in use ------------------------------------------------------
    async def template_usage(self, template: str) -> tuple[list[str], set[int] | None]:
        """(ids of the sandboxes, in any state but deleted, and of the snapshots
        made from ``template``; the template versions they are pinned to). The
        versions are None when a sandbox's version is not known yet (it is being
        created, or it predates versioned templates): the caller then keeps every
        version."""
        async with self.db.session() as s:
            ids = list(
                (
                    await s.scalars(
                        select(SandboxRow.id)
                        .where(SandboxRow.template == template)
                        .where(SandboxRow.state != SandboxState.DELETED.value)
                        .order_by(SandboxRow.created_at)
                    )
                ).all()
            )
            snapshots = (
                await s.execute(
                    select(SnapshotRow.id, SnapshotRow.template_version)
                    .where(SnapshotRow.template == template)
                    .order_by(SnapshotRow.created_at)
                )
            ).all()
            if not ids and not snapshots:
                return [], set()
        pins = await self.template_pins(ids)
        users = ids + [snap_id for snap_id, _version in snapshots]
        if any(sid not in pins for sid in ids) or any(v is None for _i, v in snapshots):
            return users, None
        return users, set(pins.values()) | {v for _i, v in snapshots if v is not None}

    async def template_pins(self, sandbox_ids: list[str]) -> dict[str, int]:
        """The template version each sandbox was created from, as its ``create``
        event recorded it (sandboxes without one are left out)."""
        if not sandbox_ids:
            return {}
        async with self.db.session() as s:
            rows = (
                await s.scalars(
                    select(EventRow).where(
                        EventRow.kind == "create", EventRow.sandbox_id.in_(sandbox_ids)
                    )
                )
            ).all()
        pins: dict[str, int] = {}
        for row in rows:
            version = (row.detail or {}).get("template_version")
            if isinstance(version, int) and row.sandbox_id is not None:
                pins[row.sandbox_id] = version
        return pins

    # -- operations ------------------------------------------------------------
    @staticmethod
    def _operation(row: OperationRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "kind": row.kind,
            "target": row.target,
            "state": row.state,
            "owner": row.owner,
            "error": dict(row.error) if row.error else None,
            "result": dict(row.result) if row.result else None,
            "created_at": _utc(row.created_at),
            "finished_at": _utc(row.finished_at),
        }

    async def add_operation(
        self, op_id: str, kind: str, target: str, owner: str | None
    ) -> dict[str, Any]:
        async with self.db.session() as s, s.begin():
            row = OperationRow(
                id=op_id,
                kind=kind,
                target=target,
                state="running",
                owner=owner,
                created_at=utcnow(),
            )
            s.add(row)
            await s.flush()
            return self._operation(row)

    async def get_operation(self, op_id: str) -> dict[str, Any] | None:
        async with self.db.session() as s:
            row = await s.get(OperationRow, op_id)
            return None if row is None else self._operation(row)

    async def list_operations(
        self, owner: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first; only ``owner``'s when given."""
        q = select(OperationRow).order_by(OperationRow.created_at.desc()).limit(limit)
        if owner is not None:
            q = q.where(OperationRow.owner == owner)
        async with self.db.session() as s:
            return [self._operation(r) for r in (await s.scalars(q)).all()]

    async def finish_operation(
        self,
        op_id: str,
        state: str,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        async with self.db.session() as s, s.begin():
            row = await s.get(OperationRow, op_id)
            if row is None:
                raise KeyError(op_id)
            row.state, row.error, row.result = state, error, result
            row.finished_at = utcnow()
            await s.flush()
            return self._operation(row)

    async def fail_running_operations(self, error: dict[str, Any]) -> list[str]:
        """Mark every ``running`` operation failed (at start-up: none can still run)."""
        async with self.db.session() as s, s.begin():
            ids = list(
                (
                    await s.scalars(select(OperationRow.id).where(OperationRow.state == "running"))
                ).all()
            )
            if ids:
                await s.execute(
                    update(OperationRow)
                    .where(OperationRow.id.in_(ids))
                    .values(state="failed", error=error, finished_at=utcnow())
                )
            return ids
