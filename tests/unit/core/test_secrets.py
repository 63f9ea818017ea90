"""Stored secrets: encrypted at rest, per owner, picked by name or by host."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from atelier.config import Settings
from atelier.core.secrets import SecretService
from atelier.errors import Conflict, InvalidRequest, SecretNotFound
from atelier.git import parse_git_url
from atelier.store.db import Database
from atelier.store.secrets import SecretRepository

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
def service(tmp_path: Path, db: Database) -> SecretService:
    return SecretService(Settings(data_dir=tmp_path), SecretRepository(db))


async def test_values_are_encrypted_at_rest_under_a_private_key_file(
    service: SecretService, db: Database, tmp_path: Path
) -> None:
    info = await service.put("o", "gh", kind="git-token", value="s3cr3t", host="github.com")
    assert (info.name, info.kind, info.host) == ("gh", "git-token", "github.com")
    async with db.engine.connect() as conn:
        stored = (await conn.execute(text("select ciphertext from secrets"))).scalar_one()
    assert "s3cr3t" not in stored
    mode = stat.S_IMODE((tmp_path / "secret-key").stat().st_mode)
    assert mode == 0o600


async def test_secrets_are_found_by_name_or_by_host_and_transport(service: SecretService) -> None:
    await service.put(
        "owner1", "gl", kind="git-token", value="tok", host="gitlab.com", username="me"
    )
    await service.put("owner1", "key", kind="ssh-key", value=KEY, host="gitlab.com")
    https = await service.credentials_for("owner1", parse_git_url("https://gitlab.com/a/b.git"))
    assert https is not None and (https.token, https.username) == ("tok", "me")
    ssh = await service.credentials_for("owner1", parse_git_url("git@gitlab.com:a/b.git"))
    assert ssh is not None and ssh.ssh_private_key == KEY
    other = await service.credentials_for("owner1", parse_git_url("https://github.com/a/b"))
    assert other is None
    named = await service.credentials_for(
        "owner1", parse_git_url("https://github.com/a/b"), name="gl"
    )
    assert named is not None and named.token == "tok"
    # another owner sees none of them
    assert await service.list("owner2") == []
    assert await service.credentials_for("owner2", parse_git_url("https://gitlab.com/a/b")) is None
    with pytest.raises(SecretNotFound):
        await service.credentials_for("owner2", parse_git_url("https://gitlab.com/a"), name="gl")


async def test_bad_secrets_are_refused_and_names_are_unique(service: SecretService) -> None:
    with pytest.raises(InvalidRequest, match="kind"):
        await service.put("o", "x", kind="password", value="v")
    with pytest.raises(InvalidRequest, match="private key"):
        await service.put("o", "x", kind="ssh-key", value="not a key")
    with pytest.raises(InvalidRequest, match="name"):
        await service.put("o", "../x", kind="git-token", value="v")
    await service.put("o", "x", kind="git-token", value="v")
    with pytest.raises(Conflict):
        await service.put("o", "x", kind="git-token", value="w")
    await service.delete("o", "x")
    with pytest.raises(SecretNotFound):
        await service.delete("o", "x")
