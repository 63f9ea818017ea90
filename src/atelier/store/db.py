"""Engine, sessions and migrations (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

__all__ = ["Database"]

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_in_transaction(connection: Any) -> bool:
    """Whether SQLite has a transaction open on ``connection`` (True when unsure).

    ``connection`` is what SQLAlchemy hands the dialect: a pooled proxy of the
    aiosqlite adapter. The flag is read from the underlying ``sqlite3``
    connection directly, without a trip to aiosqlite's worker thread.
    """
    try:
        adapted = getattr(connection, "dbapi_connection", connection)
        return bool(adapted._connection.in_transaction)
    except Exception:
        return True


def _skip_idle_transaction_ends(dialect: Any) -> None:
    """Make COMMIT/ROLLBACK with no open SQLite transaction cost nothing.

    ``sqlite3`` itself ignores them then, but through aiosqlite each one is
    still a round trip to its worker thread, and SQLAlchemy issues one or two
    per session (session close, then the pool's reset-on-return) even for a
    plain read. An API request does several reads (token, sandbox), so the
    skipped round trips are a measurable part of its latency. Behaviour is
    unchanged: the calls that are skipped are the ones ``sqlite3`` would
    have ignored.
    """
    rollback, commit = dialect.do_rollback, dialect.do_commit

    def do_rollback(connection: Any) -> None:
        if _sqlite_in_transaction(connection):
            rollback(connection)

    def do_commit(connection: Any) -> None:
        if _sqlite_in_transaction(connection):
            commit(connection)

    dialect.do_rollback, dialect.do_commit = do_rollback, do_commit


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            _skip_idle_transaction_ends(self.engine.sync_engine.dialect)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self._upgrade)

    @staticmethod
    def _upgrade(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        await self.engine.dispose()
