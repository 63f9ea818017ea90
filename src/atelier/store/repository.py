"""Data access for the control plane. Rows in, domain records out.

All timestamps are UTC; SQLite drops the zone, so values are re-tagged on read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update

from ..core.models import SandboxRecord, SandboxState, TokenRecord
from ..errors import SandboxNotFound
from .db import Database
from .tables import EventRow, SandboxLabelRow, SandboxRow, TokenRow

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
