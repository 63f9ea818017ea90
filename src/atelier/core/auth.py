"""API tokens: creation, verification, the first admin token.

Tokens look like ``atl_<id>_<secret>``; only the SHA-256 of the whole token is
stored, so a database leak does not leak usable tokens.

Verified tokens are remembered for :data:`CACHE_SECONDS` (every API call
authenticates, and the database read is a large part of a small call's cost).
A revocation through this process takes effect at once; through another
server process sharing the database, within that many seconds.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthenticationError, PermissionDenied, TokenNotFound
from ..store.repository import Repository
from .models import TokenRecord

__all__ = ["CACHE_SECONDS", "Principal", "TokenService"]

CACHE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id and whether it is an admin."""

    token_id: str
    name: str
    admin: bool

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDenied("this action needs an admin token")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, repo: Repository, clock: Callable[[], float] = time.monotonic) -> None:
        self.repo = repo
        self._clock = clock
        self._verified: dict[str, tuple[float, Principal]] = {}  # token hash → (until, who)

    async def create(self, name: str, admin: bool = False) -> tuple[TokenRecord, str]:
        token_id = secrets.token_hex(6)
        token = f"atl_{token_id}_{secrets.token_urlsafe(32)}"
        record = await self.repo.add_token(token_id, name, _hash(token), admin)
        return record, token

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AuthenticationError("missing API token (Authorization: Bearer <token>)")
        digest = _hash(token)
        now = self._clock()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.repo.token_by_hash(digest)
        if record is None:
            self._verified.pop(digest, None)
            raise AuthenticationError("invalid API token")
        principal = Principal(record.id, record.name, record.admin)
        if len(self._verified) > 10_000:  # bounded: drop whatever has expired
            self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
        self._verified[digest] = (now + CACHE_SECONDS, principal)
        return principal

    async def revoke(self, token_id: str) -> None:
        self._verified = {k: v for k, v in self._verified.items() if v[1].token_id != token_id}
        if not await self.repo.revoke_token(token_id):
            raise TokenNotFound(f"token {token_id} does not exist")

    async def ensure_admin_token(self, token_file: Path) -> str | None:
        """Create the first admin token if none exists; write it 0600 to ``token_file``.

        Returns the new token, or ``None`` if an admin token already existed.
        """
        if await self.repo.has_admin_token():
            return None
        _, token = await self.create("admin", admin=True)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, token_file)
        return token
