"""The Alembic migrations build exactly the schema the SQLAlchemy tables describe:
a column added to ``store/tables.py`` without a migration fails here."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from atelier.store.db import Database
from atelier.store.tables import Base


async def test_migrated_database_has_no_drift(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await db.migrate()

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection)
        return list(compare_metadata(context, Base.metadata))

    try:
        async with db.engine.connect() as conn:
            changes = await conn.run_sync(diff)
    finally:
        await db.close()
    assert changes == []
