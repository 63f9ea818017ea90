from datetime import timedelta
from pathlib import Path

import pytest

from atelier.core.auth import CACHE_SECONDS, TokenService
from atelier.core.models import SandboxRecord, SandboxState
from atelier.errors import AuthenticationError, SandboxNotFound
from atelier.store.db import Database
from atelier.store.repository import Repository, utcnow


@pytest.fixture
async def repo(tmp_path: Path) -> Repository:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    await db.migrate()
    yield Repository(db)
    await db.close()


def _rec(sid: str, **kw: object) -> SandboxRecord:
    base = dict(
        id=sid,
        owner="t1",
        template="base",
        runtime="gvisor",
        state=SandboxState.RUNNING,
        vcpus=1,
        memory_mib=512,
        disk_mib=2048,
        env={"A": "1"},
        labels={"team": "ml"},
        timeout=300,
        expires_at=utcnow() + timedelta(seconds=300),
        created_at=utcnow(),
    )
    base.update(kw)
    return SandboxRecord(**base)  # type: ignore[arg-type]


async def test_round_trip_keeps_utc_and_labels(repo: Repository) -> None:
    await repo.add_sandbox(_rec("sb-1"))
    got = await repo.get_sandbox("sb-1")
    assert got.labels == {"team": "ml"} and got.env == {"A": "1"}
    assert got.expires_at is not None and got.expires_at.tzinfo is not None


async def test_label_and_state_filters(repo: Repository) -> None:
    await repo.add_sandbox(_rec("sb-1"))
    await repo.add_sandbox(_rec("sb-2", labels={"team": "web"}, state=SandboxState.STOPPED))
    await repo.add_sandbox(_rec("sb-3", labels={"team": "ml", "x": "y"}))
    ml = await repo.list_sandboxes(labels={"team": "ml"})
    assert [r.id for r in ml] == ["sb-1", "sb-3"]
    assert [r.id for r in await repo.list_sandboxes(labels={"team": "ml", "x": "y"})] == ["sb-3"]
    stopped = await repo.list_sandboxes(states=[SandboxState.STOPPED])
    assert [r.id for r in stopped] == ["sb-2"]


async def test_deleted_sandboxes_are_hidden(repo: Repository) -> None:
    await repo.add_sandbox(_rec("sb-1"))
    await repo.update_sandbox("sb-1", state=SandboxState.DELETED)
    with pytest.raises(SandboxNotFound):
        await repo.get_sandbox("sb-1")
    assert await repo.list_sandboxes() == []


async def test_claim_pooled_is_exclusive(repo: Repository) -> None:
    await repo.add_sandbox(_rec("sb-p", owner=None, pooled=True, labels={}))
    fields = dict(vcpus=1, memory_mib=512, disk_mib=2048, owner="t9", labels={"a": "b"})
    first = await repo.claim_pooled("base", "gvisor", **dict(fields))
    second = await repo.claim_pooled("base", "gvisor", **dict(fields))
    assert first is not None and first.owner == "t9" and not first.pooled
    assert first.labels == {"a": "b"}
    assert second is None


async def test_claim_pooled_requires_matching_resources(repo: Repository) -> None:
    await repo.add_sandbox(_rec("sb-p", owner=None, pooled=True))
    assert await repo.claim_pooled("base", "gvisor", vcpus=2, memory_mib=512, disk_mib=2048) is None


async def test_tokens_hash_and_revoke(repo: Repository, tmp_path: Path) -> None:
    tokens = TokenService(repo)
    token = await tokens.ensure_admin_token(tmp_path / "admin-token")
    assert token is not None and token.startswith("atl_")
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    assert await tokens.ensure_admin_token(tmp_path / "admin-token") is None  # only once
    principal = await tokens.authenticate(token)
    assert principal.admin
    with pytest.raises(AuthenticationError):
        await tokens.authenticate(token + "x")
    with pytest.raises(AuthenticationError):
        await tokens.authenticate(None)
    await tokens.revoke(principal.token_id)
    with pytest.raises(AuthenticationError):
        await tokens.authenticate(token)


async def test_verified_tokens_are_cached_briefly(repo: Repository) -> None:
    now = [100.0]
    tokens = TokenService(repo, clock=lambda: now[0])
    other_process = TokenService(repo, clock=lambda: now[0])
    record, token = await tokens.create("dev")
    assert (await tokens.authenticate(token)).token_id == record.id
    # revoked elsewhere: this process trusts its cache until it expires ...
    await other_process.revoke(record.id)
    assert (await tokens.authenticate(token)).token_id == record.id
    now[0] += CACHE_SECONDS + 0.1
    with pytest.raises(AuthenticationError):
        await tokens.authenticate(token)
    # ... and a revocation through this process takes effect at once
    record2, token2 = await tokens.create("dev2")
    await tokens.authenticate(token2)
    await tokens.revoke(record2.id)
    with pytest.raises(AuthenticationError):
        await tokens.authenticate(token2)


async def test_audit_events(repo: Repository) -> None:
    await repo.record_event("create", "sb-1", "t1", template="base")
    await repo.record_event("stop", "sb-1", "system")
    events = await repo.events("sb-1")
    assert [e["kind"] for e in events] == ["create", "stop"]
    assert events[0]["template"] == "base"
