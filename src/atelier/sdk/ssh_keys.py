"""``SSHKeys`` / ``AsyncSSHKeys``: public keys for the SSH gateway, and where it listens.

::

    from atelier.sdk import SSHKeys

    with SSHKeys() as keys:
        keys.add("laptop", Path("~/.ssh/id_ed25519.pub").expanduser().read_text())
        print(keys.gateway())  # host, port, host keys
    # then: ssh -p 2222 sb-3f9c2a1b7d@<server>

A key belongs to the token that registered it: logging in with it reaches the
sandboxes that token may reach (see docs/ssh.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from atelier.sdk._base import Call, parse_none
from atelier.sdk._client import ApiClient, AsyncApiClient

__all__ = ["AsyncSSHKeys", "SSHGatewayInfo", "SSHKeyInfo", "SSHKeys"]


@dataclass(frozen=True)
class SSHKeyInfo:
    name: str
    public_key: str
    fingerprint: str  # SHA256:...
    created_at: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SSHKeyInfo:
        return cls(
            name=str(data["name"]),
            public_key=str(data["public_key"]),
            fingerprint=str(data["fingerprint"]),
            created_at=str(data.get("created_at", "")),
        )


@dataclass(frozen=True)
class SSHGatewayInfo:
    enabled: bool
    host: str | None  # None: use the API URL's host
    port: int | None
    host_keys: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SSHGatewayInfo:
        return cls(
            enabled=bool(data.get("enabled")),
            host=data.get("host"),
            port=data.get("port"),
            host_keys=[str(k) for k in data.get("host_keys") or []],
        )


def _add_call(name: str, public_key: str) -> Call[SSHKeyInfo]:
    body = {"name": name, "public_key": public_key}
    return Call("POST", "/v1/ssh-keys", lambda r: SSHKeyInfo.from_json(r.json()), json=body)


def _list_call() -> Call[list[SSHKeyInfo]]:
    return Call(
        "GET", "/v1/ssh-keys", lambda r: [SSHKeyInfo.from_json(k) for k in r.json()["keys"]]
    )


def _delete_call(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/ssh-keys/{quote(name, safe='')}", parse_none)


def _gateway_call() -> Call[SSHGatewayInfo]:
    return Call("GET", "/v1/ssh-gateway", lambda r: SSHGatewayInfo.from_json(r.json()))


class SSHKeys(ApiClient):
    """The calling token's SSH public keys, and the gateway's address."""

    def add(self, name: str, public_key: str) -> SSHKeyInfo:
        """Register an OpenSSH public key line; 409 if the name or the key is registered."""
        return self._http.call(_add_call(name, public_key))

    def list(self) -> list[SSHKeyInfo]:
        return self._http.call(_list_call())

    def delete(self, name: str) -> None:
        self._http.call(_delete_call(name))

    def gateway(self) -> SSHGatewayInfo:
        """Whether the SSH gateway runs, its port and host keys."""
        return self._http.call(_gateway_call())


class AsyncSSHKeys(AsyncApiClient):
    """The async :class:`SSHKeys`."""

    async def add(self, name: str, public_key: str) -> SSHKeyInfo:
        return await self._http.call(_add_call(name, public_key))

    async def list(self) -> list[SSHKeyInfo]:
        return await self._http.call(_list_call())

    async def delete(self, name: str) -> None:
        await self._http.call(_delete_call(name))

    async def gateway(self) -> SSHGatewayInfo:
        return await self._http.call(_gateway_call())
