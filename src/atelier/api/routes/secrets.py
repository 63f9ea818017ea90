"""Stored secrets (git credentials) of the calling token: values go in, never out."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response

from ..deps import Auth, Ctx
from ..schemas import SecretCreate, SecretList, SecretOut

__all__ = ["router"]

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


@router.post("", status_code=201, response_model=SecretOut)
async def put_secret(body: SecretCreate, ctx: Ctx, principal: Auth) -> SecretOut:
    """Store a git host token (``git-token``) or SSH private key (``ssh-key``),
    encrypted at rest, usable only by this token's workspaces and git calls
    (by name, or automatically for its ``host``). 409 if the name exists."""
    info = await ctx.secrets.put(
        principal.token_id,
        body.name,
        kind=body.kind,
        value=body.value,
        host=body.host,
        username=body.username,
        known_hosts=body.known_hosts,
    )
    return SecretOut(**asdict(info))


@router.get("", response_model=SecretList)
async def list_secrets(ctx: Ctx, principal: Auth) -> SecretList:
    infos = await ctx.secrets.list(principal.token_id)
    return SecretList(secrets=[SecretOut(**asdict(i)) for i in infos])


@router.delete("/{name}", status_code=204, response_class=Response)
async def delete_secret(name: str, ctx: Ctx, principal: Auth) -> Response:
    await ctx.secrets.delete(principal.token_id, name)
    return Response(status_code=204)
