"""Stored secrets: a user's git credentials, kept by the server for workspaces.

A secret is an HTTPS token (``git-token``) or an SSH private key
(``ssh-key``), optionally bound to a git ``host``, owned by the API token
that stored it and visible to nobody else. The value is encrypted at rest
with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) under a key
generated on first use in ``<data_dir>/secret-key`` (0600); the API returns
metadata only, never a value. A workspace or a git call uses a secret it
names, or else the caller's secret bound to the repository's host (a token
for HTTPS, a key for SSH); credentials given inline win over both.
"""

from __future__ import annotations

import os
import re
import secrets as token_gen
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from ..config import Settings
from ..errors import InvalidRequest, RuntimeFailure, SecretNotFound
from ..git import GitCredentials, GitUrl
from ..store.repository import utcnow
from ..store.secrets import SecretRecord, SecretRepository

__all__ = ["KINDS", "SecretInfo", "SecretService"]

KINDS = ("git-token", "ssh-key")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
MAX_VALUE = 64 * 1024


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What the API shows of a secret."""

    name: str
    kind: str
    host: str | None
    username: str | None
    created_at: str


def _cipher(path: Path) -> Fernet:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key + b"\n")
        finally:
            os.close(fd)
    return Fernet(key)


class SecretService:
    def __init__(self, settings: Settings, repo: SecretRepository) -> None:
        self.repo = repo
        self.key_file = settings.data_dir / "secret-key"
        self._fernet: Fernet | None = None

    @property
    def fernet(self) -> Fernet:
        if self._fernet is None:
            self._fernet = _cipher(self.key_file)
        return self._fernet

    @staticmethod
    def _info(record: SecretRecord) -> SecretInfo:
        return SecretInfo(
            record.name, record.kind, record.host, record.username, record.created_at.isoformat()
        )

    async def put(
        self,
        owner: str,
        name: str,
        *,
        kind: str,
        value: str,
        host: str | None = None,
        username: str | None = None,
        known_hosts: str | None = None,
    ) -> SecretInfo:
        if not _NAME.match(name):
            raise InvalidRequest(f"invalid secret name {name!r}: 1-100 of A-Z a-z 0-9 . _ -")
        if kind not in KINDS:
            raise InvalidRequest(f"secret kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not value or len(value) > MAX_VALUE:
            raise InvalidRequest(f"the secret's value must be 1 to {MAX_VALUE} characters")
        if host is not None and not _HOST.match(host):
            raise InvalidRequest(f"{host!r} is not a host name (host or host:port)")
        if kind == "ssh-key" and "PRIVATE KEY" not in value:
            raise InvalidRequest("an ssh-key secret must be a private key (PEM or OpenSSH format)")
        record = SecretRecord(
            id=token_gen.token_hex(8),
            owner=owner,
            name=name,
            kind=kind,
            host=host.lower() if host else None,
            username=username,
            known_hosts=known_hosts,
            ciphertext=self.fernet.encrypt(value.encode()).decode(),
            created_at=utcnow(),
        )
        await self.repo.add(record)
        return self._info(record)

    async def list(self, owner: str) -> list[SecretInfo]:
        return [self._info(r) for r in await self.repo.list(owner)]

    async def delete(self, owner: str, name: str) -> None:
        if not await self.repo.delete(owner, name):
            raise SecretNotFound(f"no secret named {name!r}", details={"name": name})

    def _credentials(self, record: SecretRecord) -> GitCredentials:
        try:
            value = self.fernet.decrypt(record.ciphertext.encode()).decode()
        except InvalidToken:
            raise RuntimeFailure(
                f"secret {record.name!r} cannot be decrypted (was {self.key_file} replaced?)"
            ) from None
        if record.kind == "ssh-key":
            return GitCredentials(ssh_private_key=value, ssh_known_hosts=record.known_hosts)
        return GitCredentials(username=record.username, token=value)

    async def credentials_for(
        self, owner: str, url: GitUrl, *, name: str | None = None
    ) -> GitCredentials | None:
        """The credentials of secret ``name``, or of the owner's secret for the
        URL's host and transport; None when there is none."""
        if name is not None:
            record = await self.repo.get(owner, name)
            if record is None:
                raise SecretNotFound(f"no secret named {name!r}", details={"name": name})
            return self._credentials(record)
        kind = "ssh-key" if url.scheme == "ssh" else "git-token"
        hosts = {url.host.lower(), f"{url.host.lower()}:{url.effective_port()}"}
        for record in await self.repo.list(owner):
            if record.kind == kind and record.host in hosts:
                return self._credentials(record)
        return None
