"""``Secrets`` / ``AsyncSecrets``: the caller's stored git credentials.

::

    from atelier.sdk import Secrets

    with Secrets() as secrets:
        secrets.put("gitlab", token=os.environ["GITLAB_TOKEN"], host="gitlab.com")
    Sandbox.create(repo="https://gitlab.com/group/app.git")  # uses it for gitlab.com

A secret is stored encrypted by the server and usable only by the token that
stored it; its value is never sent back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from atelier.errors import InvalidRequest
from atelier.sdk._base import Call, parse_none
from atelier.sdk._client import ApiClient, AsyncApiClient

__all__ = ["AsyncSecrets", "SecretInfo", "Secrets"]


@dataclass(frozen=True)
class SecretInfo:
    name: str
    kind: str  # git-token | ssh-key
    host: str | None
    username: str | None
    created_at: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SecretInfo:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            host=data.get("host"),
            username=data.get("username"),
            created_at=str(data.get("created_at", "")),
        )


def _put_call(
    name: str,
    token: str | None,
    ssh_private_key: str | None,
    host: str | None,
    username: str | None,
    known_hosts: str | None,
) -> Call[SecretInfo]:
    if (token is None) == (ssh_private_key is None):
        raise InvalidRequest("give exactly one of token= or ssh_private_key=")
    body: dict[str, Any] = {
        "name": name,
        "kind": "git-token" if token is not None else "ssh-key",
        "value": token if token is not None else ssh_private_key,
        "host": host,
        "username": username,
        "known_hosts": known_hosts,
    }
    return Call("POST", "/v1/secrets", lambda r: SecretInfo.from_json(r.json()), json=body)


def _list_call() -> Call[list[SecretInfo]]:
    return Call(
        "GET", "/v1/secrets", lambda r: [SecretInfo.from_json(s) for s in r.json()["secrets"]]
    )


def _delete_call(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/secrets/{quote(name, safe='')}", parse_none)


class Secrets(ApiClient):
    """The caller's stored secrets."""

    def put(
        self,
        name: str,
        *,
        token: str | None = None,
        ssh_private_key: str | None = None,
        host: str | None = None,
        username: str | None = None,
        known_hosts: str | None = None,
    ) -> SecretInfo:
        """Store an HTTPS token or an SSH key; ``host`` makes it the default for that host."""
        call = _put_call(name, token, ssh_private_key, host, username, known_hosts)
        return self._http.call(call)

    def list(self) -> list[SecretInfo]:
        return self._http.call(_list_call())

    def delete(self, name: str) -> None:
        self._http.call(_delete_call(name))


class AsyncSecrets(AsyncApiClient):
    """The async :class:`Secrets`."""

    async def put(
        self,
        name: str,
        *,
        token: str | None = None,
        ssh_private_key: str | None = None,
        host: str | None = None,
        username: str | None = None,
        known_hosts: str | None = None,
    ) -> SecretInfo:
        call = _put_call(name, token, ssh_private_key, host, username, known_hosts)
        return await self._http.call(call)

    async def list(self) -> list[SecretInfo]:
        return await self._http.call(_list_call())

    async def delete(self, name: str) -> None:
        await self._http.call(_delete_call(name))
