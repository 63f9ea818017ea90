"""Rows of public keys registered for the SSH gateway (see ``atelier.sshgw``).

A key belongs to one API token (``owner``); the same key may be registered by
several tokens, but only once per token (by name and by fingerprint).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict
from .db import Database
from .tables import SSHKeyRow, TokenRow

__all__ = ["SSHKeyOwner", "SSHKeyRecord", "SSHKeyRepository"]


@dataclass(frozen=True, slots=True)
class SSHKeyRecord:
    id: str
    owner: str
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SSHKeyOwner:
    """A live (not revoked) token that registered a key, and the key's name."""

    token_id: str
    token_name: str
    admin: bool
    key_name: str


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _record(row: SSHKeyRow) -> SSHKeyRecord:
    return SSHKeyRecord(
        row.id, row.owner, row.name, row.public_key, row.fingerprint, _utc(row.created_at)
    )


class SSHKeyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, record: SSHKeyRecord) -> None:
        async with self.db.session() as s:
            clash = await s.scalar(
                select(SSHKeyRow).where(
                    SSHKeyRow.owner == record.owner, SSHKeyRow.fingerprint == record.fingerprint
                )
            )
        if clash is not None:
            raise Conflict(
                f"this key is already registered as {clash.name!r}",
                details={"name": clash.name, "fingerprint": record.fingerprint},
            )
        try:
            async with self.db.session() as s, s.begin():
                s.add(
                    SSHKeyRow(
                        id=record.id,
                        owner=record.owner,
                        name=record.name,
                        public_key=record.public_key,
                        fingerprint=record.fingerprint,
                        created_at=record.created_at,
                    )
                )
        except IntegrityError:
            raise Conflict(
                f"an SSH key named {record.name!r} (or with this fingerprint) exists; "
                "delete it first",
                details={"name": record.name, "fingerprint": record.fingerprint},
            ) from None

    async def list(self, owner: str) -> list[SSHKeyRecord]:
        async with self.db.session() as s:
            rows = await s.scalars(
                select(SSHKeyRow).where(SSHKeyRow.owner == owner).order_by(SSHKeyRow.name)
            )
            return [_record(r) for r in rows.all()]

    async def delete(self, owner: str, name: str) -> bool:
        async with self.db.session() as s, s.begin():
            result = await s.execute(
                delete(SSHKeyRow).where(SSHKeyRow.owner == owner, SSHKeyRow.name == name)
            )
            return bool(getattr(result, "rowcount", 0))

    async def owners(self, fingerprint: str) -> builtins.list[SSHKeyOwner]:
        """The live tokens that registered the key with ``fingerprint``."""
        async with self.db.session() as s:
            rows = await s.execute(
                select(TokenRow.id, TokenRow.name, TokenRow.admin, SSHKeyRow.name)
                .join(TokenRow, TokenRow.id == SSHKeyRow.owner)
                .where(SSHKeyRow.fingerprint == fingerprint, TokenRow.revoked_at.is_(None))
                .order_by(SSHKeyRow.created_at)
            )
            return [SSHKeyOwner(t_id, t_name, bool(admin), k) for t_id, t_name, admin, k in rows]
