"""Rows of stored secrets (see ``core/secrets.py`` for what they are and how
their values are protected). Values arrive here already encrypted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict
from .db import Database
from .tables import SecretRow

__all__ = ["SecretRecord", "SecretRepository"]


@dataclass(frozen=True, slots=True)
class SecretRecord:
    id: str
    owner: str
    name: str
    kind: str
    host: str | None
    username: str | None
    known_hosts: str | None
    ciphertext: str
    created_at: datetime


def _record(row: SecretRow) -> SecretRecord:
    created = row.created_at
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return SecretRecord(
        row.id, row.owner, row.name, row.kind, row.host, row.username, row.known_hosts,
        row.ciphertext, created,
    )  # fmt: skip


class SecretRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, record: SecretRecord) -> None:
        try:
            async with self.db.session() as s, s.begin():
                s.add(
                    SecretRow(
                        id=record.id, owner=record.owner, name=record.name, kind=record.kind,
                        host=record.host, username=record.username,
                        known_hosts=record.known_hosts, ciphertext=record.ciphertext,
                        created_at=record.created_at,
                    )
                )  # fmt: skip
        except IntegrityError:
            raise Conflict(
                f"a secret named {record.name!r} exists; delete it first",
                details={"name": record.name},
            ) from None

    async def list(self, owner: str) -> list[SecretRecord]:
        async with self.db.session() as s:
            rows = await s.scalars(
                select(SecretRow).where(SecretRow.owner == owner).order_by(SecretRow.name)
            )
            return [_record(r) for r in rows.all()]

    async def get(self, owner: str, name: str) -> SecretRecord | None:
        async with self.db.session() as s:
            row = await s.scalar(
                select(SecretRow).where(SecretRow.owner == owner, SecretRow.name == name)
            )
            return _record(row) if row is not None else None

    async def delete(self, owner: str, name: str) -> bool:
        async with self.db.session() as s, s.begin():
            result = await s.execute(
                delete(SecretRow).where(SecretRow.owner == owner, SecretRow.name == name)
            )
            return bool(getattr(result, "rowcount", 0))
