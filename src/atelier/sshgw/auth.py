"""Who may log in: the sandbox id is the SSH user name, the key picks the token.

A key may be registered by several tokens; the login is allowed if any of
them may reach the sandbox (its owner, or an admin), and runs as that token.
Anything else (unknown sandbox, pooled sandbox, someone else's sandbox,
unregistered key, revoked token) is the same refusal, so a client cannot
probe which sandboxes exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncssh

from ..core.auth import Principal
from ..core.models import SandboxRecord
from ..errors import AtelierError

__all__ = ["Grant", "KeyPrincipals", "SandboxLookup", "authorize"]


class KeyPrincipals(Protocol):
    async def principals(self, key: asyncssh.SSHKey) -> list[tuple[Principal, str]]: ...


class SandboxLookup(Protocol):
    async def get(self, principal: Principal, sandbox_id: str) -> SandboxRecord: ...


@dataclass(frozen=True, slots=True)
class Grant:
    """A successful login: as whom, with which of their keys, to which sandbox."""

    principal: Principal
    key_name: str
    sandbox_id: str


async def authorize(
    keys: KeyPrincipals, sandboxes: SandboxLookup, sandbox_id: str, key: asyncssh.SSHKey
) -> Grant | None:
    """The grant for logging in to ``sandbox_id`` with ``key``, or ``None``.

    The sandbox may be in any state here: a stopped sandbox is reported by the
    session ("start it first"), not by a refused login.
    """
    candidates = await keys.principals(key)
    # prefer the owner's own token over an admin token that registered the same key
    candidates.sort(key=lambda pair: pair[0].admin)
    for principal, key_name in candidates:
        try:
            rec = await sandboxes.get(principal, sandbox_id)
        except AtelierError:
            continue
        return Grant(principal, key_name, rec.id)
    return None
