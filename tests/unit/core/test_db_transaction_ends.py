"""store/db.py skips COMMIT/ROLLBACK round trips when SQLite has no open transaction,
and only then: real transactions still commit and roll back."""

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import text

from atelier.core.models import SandboxRecord, SandboxState
from atelier.store.db import Database
from atelier.store.repository import Repository, utcnow


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    await database.migrate()
    async with database.session() as s, s.begin():
        await s.execute(text("CREATE TABLE t (x INTEGER)"))
    yield database
    await database.close()


@pytest.fixture
def ends(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many COMMITs/ROLLBACKs reach aiosqlite's worker thread."""
    seen: Counter[str] = Counter()
    for name in ("commit", "rollback"):
        original = getattr(aiosqlite.Connection, name)

        async def counted(self: aiosqlite.Connection, _name: str = name, _f=original) -> None:  # type: ignore[no-untyped-def]
            seen[_name] += 1
            await _f(self)

        monkeypatch.setattr(aiosqlite.Connection, name, counted)
    return seen


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_reads_cost_no_commit_or_rollback(db: Database, ends: Counter[str]) -> None:
    repo = Repository(db)
    rec = SandboxRecord(
        id="sb-1",
        owner="t1",
        template="base",
        runtime="gvisor",
        state=SandboxState.RUNNING,
        vcpus=1,
        memory_mib=512,
        disk_mib=2048,
        env={},
        labels={"a": "b"},
        timeout=None,
        expires_at=None,
        created_at=utcnow(),
    )
    await repo.add_sandbox(rec)
    assert ends["commit"] == 1
    ends.clear()
    assert (await repo.get_sandbox("sb-1")).labels == {"a": "b"}
    assert await repo.token_by_hash("nope") is None
    assert ends == Counter()
    await repo.update_sandbox("sb-1", state=SandboxState.STOPPED)
    assert ends == Counter(commit=1)
    assert (await repo.get_sandbox("sb-1")).state == SandboxState.STOPPED


async def test_a_write_is_committed_for_other_connections(db: Database, tmp_path: Path) -> None:
    async with db.session() as s, s.begin():
        await s.execute(text("INSERT INTO t VALUES (1)"))
    assert _rows(tmp_path / "a.db") == 1


async def test_a_failed_transaction_is_rolled_back(db: Database, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as s, s.begin():
            await s.execute(text("INSERT INTO t VALUES (1)"))
            raise RuntimeError("boom")
    assert _rows(tmp_path / "a.db") == 0
    async with db.session() as s:
        assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 0


async def test_a_connection_closed_mid_transaction_is_rolled_back(
    db: Database, tmp_path: Path, ends: Counter[str]
) -> None:
    async with db.engine.connect() as conn:
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        # closed without commit: its write lock must be released for the next writer
    assert ends["rollback"] >= 1
    assert _rows(tmp_path / "a.db") == 0
    with sqlite3.connect(tmp_path / "a.db", timeout=0.5) as other:
        other.execute("INSERT INTO t VALUES (2)")
    assert _rows(tmp_path / "a.db") == 1
