"""Health, server info, audit trail and tokens (templates: ``routes/templates.py``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ... import __version__
from ..deps import Auth, Ctx
from ..schemas import (
    EventList,
    EventOut,
    HealthOut,
    InfoOut,
    PoolOut,
    RuntimeOut,
    TemplateOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
)

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", response_model=HealthOut, tags=["system"])
async def healthz() -> HealthOut:
    return HealthOut(status="ok", version=__version__)


def _templates(ctx: Ctx) -> list[TemplateOut]:
    return [
        TemplateOut(name=t.name, runtime=t.runtime, ready=t.ready, size_bytes=t.size_bytes)
        for t in ctx.templates.list()
    ]


@router.get("/v1/info", response_model=InfoOut, tags=["system"])
async def info(ctx: Ctx, _principal: Auth) -> InfoOut:
    runtimes = [
        RuntimeOut(name=a.name, available=a.available, reason=a.reason)
        for a in ctx.runtimes.availability()
    ]
    pool = ctx.pool
    status = PoolOut(
        template=pool.settings.default_template, target=pool.size, ready=await pool.ready()
    )
    return InfoOut(version=__version__, runtimes=runtimes, templates=_templates(ctx), pool=status)


@router.get("/v1/events", response_model=EventList, tags=["audit"])
async def all_events(
    ctx: Ctx, principal: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> EventList:
    """The whole audit trail, newest ``limit`` entries, oldest first (admin only)."""
    principal.require_admin()
    return EventList(
        events=[EventOut.model_validate(e) for e in await ctx.repo.events(limit=limit)]
    )


@router.post("/v1/tokens", status_code=201, response_model=TokenCreated, tags=["tokens"])
async def create_token(body: TokenCreate, ctx: Ctx, principal: Auth) -> TokenCreated:
    principal.require_admin()
    rec, token = await ctx.tokens.create(body.name, admin=body.admin)
    await ctx.repo.record_event("token_create", None, principal.token_id, token_id=rec.id)
    return TokenCreated(
        id=rec.id, name=rec.name, admin=rec.admin, created_at=rec.created_at, token=token
    )


@router.get("/v1/tokens", response_model=TokenList, tags=["tokens"])
async def list_tokens(ctx: Ctx, principal: Auth) -> TokenList:
    principal.require_admin()
    return TokenList(
        tokens=[
            TokenOut(id=t.id, name=t.name, admin=t.admin, created_at=t.created_at)
            for t in await ctx.repo.list_tokens()
        ]
    )


@router.delete("/v1/tokens/{token_id}", status_code=204, response_class=Response, tags=["tokens"])
async def revoke_token(token_id: str, ctx: Ctx, principal: Auth) -> Response:
    principal.require_admin()
    await ctx.tokens.revoke(token_id)
    await ctx.repo.record_event("token_revoke", None, principal.token_id, token_id=token_id)
    return Response(status_code=204)
