"""Rows of prebuild configurations, their builds and webhook deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ...errors import WebhookReplayed
from ...store.db import Database
from ...store.tables import PrebuildBuildRow, PrebuildRow, WebhookDeliveryRow
from .models import BuildState, PrebuildBuild, PrebuildConfig

__all__ = ["PrebuildStore"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _config(row: PrebuildRow) -> PrebuildConfig:
    return PrebuildConfig(
        id=row.id,
        owner=row.owner,
        repo=row.repo,
        branch=row.branch,
        devcontainer=row.devcontainer,
        git_secret=row.git_secret,
        env_secrets={str(k): str(v) for k, v in (row.env_secrets or {}).items()},
        keep=row.keep,
        webhook_provider=row.webhook_provider,
        webhook_secret_enc=row.webhook_secret,
        poll_interval=row.poll_interval,
        runtime=row.runtime,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_mib=row.disk_mib,
        created_at=_utc(row.created_at) or datetime.now(UTC),
        last_polled_at=_utc(row.last_polled_at),
    )


def _build(row: PrebuildBuildRow) -> PrebuildBuild:
    return PrebuildBuild(
        id=row.id,
        prebuild_id=row.prebuild_id,
        commit=row.commit,
        state=BuildState(row.state),
        trigger=row.trigger,
        operation_id=row.operation_id,
        snapshot_id=row.snapshot_id,
        error=row.error,
        created_at=_utc(row.created_at) or datetime.now(UTC),
        started_at=_utc(row.started_at),
        finished_at=_utc(row.finished_at),
        workspace=dict(row.workspace or {}),
    )


class PrebuildStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- configurations ------------------------------------------------------
    async def add_config(self, c: PrebuildConfig) -> None:
        async with self.db.session() as s, s.begin():
            s.add(
                PrebuildRow(
                    id=c.id, owner=c.owner, repo=c.repo, branch=c.branch,
                    devcontainer=c.devcontainer, git_secret=c.git_secret,
                    env_secrets=dict(c.env_secrets), keep=c.keep,
                    webhook_provider=c.webhook_provider, webhook_secret=c.webhook_secret_enc,
                    poll_interval=c.poll_interval, runtime=c.runtime, vcpus=c.vcpus,
                    memory_mib=c.memory_mib, disk_mib=c.disk_mib, created_at=c.created_at,
                    last_polled_at=c.last_polled_at,
                )
            )  # fmt: skip

    async def get_config(self, prebuild_id: str) -> PrebuildConfig | None:
        async with self.db.session() as s:
            row = await s.get(PrebuildRow, prebuild_id)
            return _config(row) if row is not None else None

    async def list_configs(
        self, *, owner: str | None = None, repo: str | None = None
    ) -> list[PrebuildConfig]:
        query = select(PrebuildRow).order_by(PrebuildRow.created_at)
        if owner is not None:
            query = query.where(PrebuildRow.owner == owner)
        if repo is not None:
            query = query.where(PrebuildRow.repo == repo)
        async with self.db.session() as s:
            return [_config(r) for r in (await s.scalars(query)).all()]

    async def delete_config(self, prebuild_id: str) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(
                delete(WebhookDeliveryRow).where(WebhookDeliveryRow.prebuild_id == prebuild_id)
            )
            await s.execute(
                delete(PrebuildBuildRow).where(PrebuildBuildRow.prebuild_id == prebuild_id)
            )
            await s.execute(delete(PrebuildRow).where(PrebuildRow.id == prebuild_id))

    async def set_polled(self, prebuild_id: str, at: datetime) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(PrebuildRow).where(PrebuildRow.id == prebuild_id).values(last_polled_at=at)
            )

    # -- builds --------------------------------------------------------------
    async def add_build(self, b: PrebuildBuild) -> bool:
        """Record a new build; False if this prebuild already has one for the commit."""
        try:
            async with self.db.session() as s, s.begin():
                s.add(
                    PrebuildBuildRow(
                        id=b.id, prebuild_id=b.prebuild_id, commit=b.commit,
                        state=b.state.value, trigger=b.trigger, operation_id=b.operation_id,
                        snapshot_id=b.snapshot_id, error=b.error, workspace=b.workspace or None,
                        created_at=b.created_at, started_at=b.started_at,
                        finished_at=b.finished_at,
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True

    async def update_build(self, build_id: str, **changes: Any) -> PrebuildBuild:
        if "state" in changes and isinstance(changes["state"], BuildState):
            changes["state"] = changes["state"].value
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(PrebuildBuildRow).where(PrebuildBuildRow.id == build_id).values(**changes)
            )
            row = await s.get(PrebuildBuildRow, build_id)
            assert row is not None
            return _build(row)

    async def get_build(self, build_id: str) -> PrebuildBuild | None:
        async with self.db.session() as s:
            row = await s.get(PrebuildBuildRow, build_id)
            return _build(row) if row is not None else None

    async def build_for_commit(self, prebuild_id: str, commit: str) -> PrebuildBuild | None:
        async with self.db.session() as s:
            row = await s.scalar(
                select(PrebuildBuildRow).where(
                    PrebuildBuildRow.prebuild_id == prebuild_id, PrebuildBuildRow.commit == commit
                )
            )
            return _build(row) if row is not None else None

    async def list_builds(
        self, prebuild_id: str, states: Sequence[BuildState] | None = None
    ) -> list[PrebuildBuild]:
        """Newest first."""
        query = (
            select(PrebuildBuildRow)
            .where(PrebuildBuildRow.prebuild_id == prebuild_id)
            .order_by(PrebuildBuildRow.created_at.desc(), PrebuildBuildRow.id)
        )
        if states:
            query = query.where(PrebuildBuildRow.state.in_([s.value for s in states]))
        async with self.db.session() as s:
            return [_build(r) for r in (await s.scalars(query)).all()]

    async def unfinished_builds(self) -> list[PrebuildBuild]:
        query = select(PrebuildBuildRow).where(
            PrebuildBuildRow.state.in_([BuildState.QUEUED.value, BuildState.RUNNING.value])
        )
        async with self.db.session() as s:
            return [_build(r) for r in (await s.scalars(query)).all()]

    # -- webhook deliveries --------------------------------------------------
    async def record_delivery(self, prebuild_id: str, delivery_id: str, at: datetime) -> None:
        """Remember a delivery id; WebhookReplayed if it was seen before."""
        try:
            async with self.db.session() as s, s.begin():
                s.add(
                    WebhookDeliveryRow(
                        prebuild_id=prebuild_id, delivery_id=delivery_id, received_at=at
                    )
                )
        except IntegrityError:
            raise WebhookReplayed(
                f"delivery {delivery_id!r} was received before: refused as a replay",
                details={"delivery_id": delivery_id},
            ) from None

    async def forget_deliveries(self, before: datetime) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(
                delete(WebhookDeliveryRow).where(WebhookDeliveryRow.received_at < before)
            )
