"""SSH keys of the calling token, and what a client needs to reach the SSH gateway."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from ...sshgw import SSHGateway
from ...sshgw.keys import NAME_PATTERN, SSHKeyInfo
from ..deps import Auth

__all__ = ["router"]

router = APIRouter(tags=["ssh"])


class SSHKeyCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique per token, e.g. 'laptop'.")
    public_key: str = Field(
        min_length=1,
        max_length=16384,
        description="One OpenSSH public key line (the .pub file): ssh-ed25519, ecdsa or rsa.",
    )


class SSHKeyOut(BaseModel):
    name: str
    public_key: str
    fingerprint: str = Field(description="SHA256:..., as `ssh-keygen -l` prints it.")
    created_at: datetime


class SSHKeyList(BaseModel):
    keys: list[SSHKeyOut]


class SSHGatewayOut(BaseModel):
    enabled: bool = Field(description="False when the server runs without ssh_port.")
    host: str | None = Field(description="Host name to use; null: the API URL's host.")
    port: int | None
    host_keys: list[str] = Field(description="The gateway's host keys, OpenSSH public key lines.")


def _gateway(request: Request) -> SSHGateway:
    gateway: SSHGateway = request.app.state.sshgw
    return gateway


Gateway = Annotated[SSHGateway, Depends(_gateway)]


def _out(info: SSHKeyInfo) -> SSHKeyOut:
    return SSHKeyOut(
        name=info.name,
        public_key=info.public_key,
        fingerprint=info.fingerprint,
        created_at=info.created_at,
    )


@router.post("/v1/ssh-keys", status_code=201, response_model=SSHKeyOut)
async def add_ssh_key(body: SSHKeyCreate, gateway: Gateway, principal: Auth) -> SSHKeyOut:
    """Register a public key: logging in to the SSH gateway with it reaches the sandboxes
    this token may reach. 409 if the name, or the same key, is already registered."""
    return _out(await gateway.keys.add(principal.token_id, body.name, body.public_key))


@router.get("/v1/ssh-keys", response_model=SSHKeyList)
async def list_ssh_keys(gateway: Gateway, principal: Auth) -> SSHKeyList:
    return SSHKeyList(keys=[_out(k) for k in await gateway.keys.list(principal.token_id)])


@router.delete("/v1/ssh-keys/{name}", status_code=204, response_class=Response)
async def delete_ssh_key(name: str, gateway: Gateway, principal: Auth) -> Response:
    await gateway.keys.delete(principal.token_id, name)
    return Response(status_code=204)


@router.get("/v1/ssh-gateway", response_model=SSHGatewayOut)
async def ssh_gateway_info(gateway: Gateway, principal: Auth) -> SSHGatewayOut:
    """Where the SSH gateway listens and its host keys (for known_hosts)."""
    info = gateway.info()
    return SSHGatewayOut(
        enabled=info.enabled, host=info.host, port=info.port, host_keys=info.host_keys
    )
