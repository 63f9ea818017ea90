"""SSH keys: validation, fingerprints (as ssh-keygen prints them), per-token storage, and
who a login is granted to (owner, admin, another token)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest

from atelier.core.auth import Principal
from atelier.core.models import SandboxRecord, SandboxState
from atelier.errors import Conflict, InvalidRequest, NotFound, SandboxNotFound
from atelier.sshgw.auth import authorize
from atelier.sshgw.keys import SSHKeyService, parse_public_key
from atelier.store.db import Database
from atelier.store.repository import Repository
from atelier.store.ssh_keys import SSHKeyRepository


def _pub(key: asyncssh.SSHKey, comment: str = "me@laptop") -> str:
    key.set_comment(comment)
    return key.export_public_key("openssh").decode()


@pytest.fixture
def ed25519() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await database.migrate()
    yield database  # type: ignore[misc]
    await database.close()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key_file = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key_file], check=True)
    text = (tmp_path / "id.pub").read_text()
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", tmp_path / "id.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    parsed = parse_public_key(text)
    assert parsed.fingerprint == printed
    assert parsed.public_key == " ".join(text.split()[:2])  # comment dropped
    assert parsed.algorithm == "ssh-ed25519"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("ssh-ed25519 not-base64!", "not a valid"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", "private"),
    ],
)
def test_bad_keys_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_public_key(text)


def test_two_keys_in_one_string_are_refused(ed25519: asyncssh.SSHKey) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(InvalidRequest, match="one line"):
        parse_public_key(_pub(ed25519) + _pub(other))


def test_short_rsa_keys_are_refused() -> None:
    weak = asyncssh.generate_private_key("ssh-rsa", key_size=1024)
    with pytest.raises(InvalidRequest, match="2048"):
        parse_public_key(_pub(weak))
    strong = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    assert parse_public_key(_pub(strong)).algorithm == "ssh-rsa"


async def test_keys_are_per_token_and_unique(db: Database, ed25519: asyncssh.SSHKey) -> None:
    keys = SSHKeyService(SSHKeyRepository(db))
    info = await keys.add("tok1", "laptop", _pub(ed25519))
    assert info.fingerprint == ed25519.get_fingerprint("sha256")
    with pytest.raises(Conflict, match="already registered as 'laptop'"):
        await keys.add("tok1", "again", _pub(ed25519, "other comment"))
    with pytest.raises(Conflict):
        await keys.add("tok1", "laptop", _pub(asyncssh.generate_private_key("ssh-ed25519")))
    await keys.add("tok2", "shared", _pub(ed25519))  # another token may register it too
    assert [k.name for k in await keys.list("tok1")] == ["laptop"]
    assert [k.name for k in await keys.list("tok2")] == ["shared"]
    with pytest.raises(InvalidRequest, match="key name"):
        await keys.add("tok1", "bad name", _pub(ed25519))
    await keys.delete("tok1", "laptop")
    assert await keys.list("tok1") == []
    with pytest.raises(NotFound):
        await keys.delete("tok1", "laptop")


async def test_principals_skip_revoked_tokens(db: Database, ed25519: asyncssh.SSHKey) -> None:
    repo = Repository(db)
    alive = await repo.add_token("alive", "alive", "h1", admin=False)
    revoked = await repo.add_token("revoked", "revoked", "h2", admin=True)
    keys = SSHKeyService(SSHKeyRepository(db))
    await keys.add(alive.id, "k", _pub(ed25519))
    await keys.add(revoked.id, "k", _pub(ed25519))
    await repo.revoke_token(revoked.id)
    found = await keys.principals(ed25519)
    assert found == [(Principal("alive", "alive", False), "k")]
    assert await keys.principals(asyncssh.generate_private_key("ssh-ed25519")) == []


def sandbox_record(sandbox_id: str, owner: str | None = None) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, owner=owner, template="base", runtime="gvisor",
        state=SandboxState.RUNNING, vcpus=1, memory_mib=512, disk_mib=2048, env={},
        labels={}, timeout=None, expires_at=None, created_at=datetime.now(UTC),
    )  # fmt: skip


# -- authorization ---------------------------------------------------------------------------
class _Keys:
    def __init__(self, owners: list[tuple[Principal, str]]) -> None:
        self.owners = owners

    async def principals(self, key: asyncssh.SSHKey) -> list[tuple[Principal, str]]:
        return list(self.owners)


class _Sandboxes:
    """Like SandboxService.get: owners and admins see a sandbox, nobody else."""

    def __init__(self, owner_of: dict[str, str]) -> None:
        self.owner_of = owner_of

    async def get(self, principal: Principal, sandbox_id: str) -> SandboxRecord:
        owner = self.owner_of.get(sandbox_id)
        if owner is None or (not principal.admin and owner != principal.token_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        return sandbox_record(sandbox_id, owner)


OWNER = Principal("owner", "owner", False)
OTHER = Principal("other", "other", False)
ADMIN = Principal("admin", "admin", True)


@pytest.mark.parametrize(
    "owners, sandbox, granted",
    [
        ([(OWNER, "k")], "sb-mine", "owner"),
        ([(ADMIN, "k")], "sb-mine", "admin"),
        ([(OTHER, "k")], "sb-mine", None),
        ([(OWNER, "k")], "sb-nope", None),
        ([], "sb-mine", None),
        ([(ADMIN, "a"), (OWNER, "o")], "sb-mine", "owner"),  # the owner's token first
        ([(OTHER, "x"), (OWNER, "o")], "sb-mine", "owner"),
    ],
)
async def test_authorize(
    owners: list[tuple[Principal, str]], sandbox: str, granted: str | None
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    grant = await authorize(_Keys(owners), _Sandboxes({"sb-mine": "owner"}), sandbox, key)
    if granted is None:
        assert grant is None
    else:
        assert grant is not None
        assert grant.principal.token_id == granted
        assert grant.sandbox_id == sandbox
